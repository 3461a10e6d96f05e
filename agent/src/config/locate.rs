//! Where each key and item of a YAML document is, so that errors found
//! after parsing (by serde or by `validate`) can name a line and column.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// Positions by path; a path is the list of keys and item indexes from the
/// document's root.
#[derive(Debug, Default)]
pub struct Positions(HashMap<Vec<String>, (usize, usize)>);

impl Positions {
    /// Indexes `text`. A document that does not parse gives an empty index
    /// (serde reports the syntax error with its own position).
    pub fn index(text: &str) -> Positions {
        let mut recv = Receiver::default();
        let mut parser = Parser::new_from_str(text);
        if parser.load(&mut recv, false).is_err() {
            return Positions::default();
        }
        Positions(recv.positions)
    }

    /// Whether the document has exactly this path.
    pub fn contains(&self, path: &[String]) -> bool {
        self.0.contains_key(path)
    }

    /// The (line, column) of `path`, or of its nearest ancestor that has one.
    pub fn find(&self, path: &[String]) -> Option<(usize, usize)> {
        (0..=path.len())
            .rev()
            .find_map(|n| self.0.get(&path[..n]).copied())
    }
}

enum Frame {
    Map {
        path: Vec<String>,
        key: Option<String>,
    },
    Seq {
        path: Vec<String>,
        index: usize,
    },
}

#[derive(Default)]
struct Receiver {
    stack: Vec<Frame>,
    positions: HashMap<Vec<String>, (usize, usize)>,
}

impl Receiver {
    fn record(&mut self, path: &[String], mark: Marker) {
        self.positions
            .entry(path.to_vec())
            .or_insert((mark.line(), mark.col() + 1));
    }

    /// A value starts at `mark`: returns its path.
    fn value_path(&mut self, mark: Marker) -> Vec<String> {
        match self.stack.last_mut() {
            None => Vec::new(),
            Some(Frame::Map { path, key }) => {
                let mut p = path.clone();
                p.push(key.take().unwrap_or_default());
                p
            }
            Some(Frame::Seq { path, index }) => {
                let mut p = path.clone();
                p.push(index.to_string());
                *index += 1;
                self.record(&p, mark);
                p
            }
        }
    }
}

impl MarkedEventReceiver for Receiver {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::MappingStart(..) => {
                let path = self.value_path(mark);
                self.record(&path, mark);
                self.stack.push(Frame::Map { path, key: None });
            }
            Event::SequenceStart(..) => {
                let path = self.value_path(mark);
                self.record(&path, mark);
                self.stack.push(Frame::Seq { path, index: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            Event::Scalar(s, ..) => {
                if let Some(Frame::Map {
                    path,
                    key: key @ None,
                }) = self.stack.last_mut()
                {
                    let mut p = path.clone();
                    p.push(s.clone());
                    *key = Some(s);
                    self.record(&p, mark);
                } else {
                    self.value_path(mark);
                }
            }
            Event::Alias(_) => {
                self.value_path(mark);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, path: &[&str], expected: (usize, usize)) {
        let p: Vec<String> = path.iter().map(|s| s.to_string()).collect();
        assert_eq!(Positions::index(text).find(&p), Some(expected), "{path:?}");
    }

    #[test]
    fn positions() {
        let doc = "data_dir: x\nsources:\n  app:\n    type: file\n    include: [\"/a\", \"/b\"]\n    exclude:\n      - \"*.gz\"\n";
        check(doc, &["data_dir"], (1, 1));
        check(doc, &["sources", "app"], (3, 3));
        check(doc, &["sources", "app", "type"], (4, 5));
        check(doc, &["sources", "app", "include", "1"], (5, 21));
        check(doc, &["sources", "app", "exclude", "0"], (7, 9));
        // a path that does not exist falls back to its nearest ancestor
        check(doc, &["sources", "app", "nope", "deeper"], (3, 3));
    }

    #[test]
    fn keys_with_dots_are_one_segment() {
        let doc = "librdkafka:\n  queue.buffering.max.ms: 5\n";
        check(doc, &["librdkafka", "queue.buffering.max.ms"], (2, 3));
    }
}
