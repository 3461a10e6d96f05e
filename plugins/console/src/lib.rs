//! The `console` sink: writes every event to standard output (or standard
//! error), one line each, as a JSON object or as the raw line, and
//! acknowledges a batch once it is written and flushed. For trying
//! tailrace out and for debugging a pipeline.
//!
//! It must never buffer without bound: a batch is flushed before the next
//! one is taken, so a slow terminal slows the source, as a slow broker does.

use std::io::Write;

use serde::Deserialize;
use tailrace_api::{Batch, BuildError, ComponentTask, Record, Rendered, SinkConfig, SinkContext};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// `{"fields":{..},"message":..,"offset":..,"path":..,"source":..}`
    #[default]
    Json,
    /// The line's bytes, exactly, and a newline.
    Raw,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    #[default]
    Stdout,
    Stderr,
}

/// `type: console`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleSinkConfig {
    #[serde(default)]
    pub format: Format,
    #[serde(default)]
    pub target: Target,
}

impl ConsoleSinkConfig {
    /// Appends the line written for `record` (without its newline).
    fn line(&self, batch: &Batch, record: &Record, out: &mut Vec<u8>) {
        match self.format {
            Format::Raw => out.extend_from_slice(&record.payload),
            Format::Json => {
                let mut o = tailrace_api::tap::record_json(batch, record);
                o.insert(
                    "message".into(),
                    String::from_utf8_lossy(&record.payload).into_owned().into(),
                );
                // Writing into a Vec cannot fail.
                let _ = serde_json::to_writer(&mut *out, &serde_json::Value::Object(o));
            }
        }
    }
}

impl SinkConfig for ConsoleSinkConfig {
    fn build(&self, cx: SinkContext) -> Result<ComponentTask, BuildError> {
        let config = self.clone();
        let mut buf = Vec::with_capacity(64 * 1024);
        cx.run_on_thread(move |batch| {
            buf.clear();
            for r in &batch.records {
                config.line(batch, r, &mut buf);
                buf.push(b'\n');
            }
            let written = match config.target {
                Target::Stdout => write_all(std::io::stdout().lock(), &buf),
                Target::Stderr => write_all(std::io::stderr().lock(), &buf),
            };
            written.map_err(|e| format!("cannot write to {:?}: {e}", config.target))
        })
    }

    fn render(&self, batch: &Batch, record: &Record) -> Option<Rendered> {
        let mut value = Vec::new();
        self.line(batch, record, &mut value);
        Some(Rendered {
            topic: None,
            key: None,
            value,
        })
    }
}

fn write_all(mut w: impl Write, buf: &[u8]) -> std::io::Result<()> {
    w.write_all(buf)?;
    w.flush()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::SystemTime;

    use tailrace_api::{Ack, BatchMeta, FieldValue};

    use super::*;

    fn check(format: Format, payload: &[u8], expected: &str) {
        let meta = Arc::new(BatchMeta {
            source: "app".into(),
            path: Some(Arc::from(std::path::Path::new("/var/log/a.log"))),
            stream: None,
            read_at: SystemTime::now(),
        });
        let mut r = Record::new(payload.to_vec().into(), 7);
        r.fields_mut().set("user", FieldValue::text("alice"));
        let b = Batch::new(meta, vec![r], Ack::none());
        let c = ConsoleSinkConfig {
            format,
            target: Target::Stdout,
        };
        let got = c.render(&b, &b.records[0]).unwrap().value;
        assert_eq!(String::from_utf8_lossy(&got), expected);
    }

    #[test]
    fn lines() {
        check(Format::Raw, b"user=alice", "user=alice");
        check(
            Format::Json,
            b"user=alice \"x\"",
            r#"{"fields":{"user":"alice"},"message":"user=alice \"x\"","offset":7,"path":"/var/log/a.log","source":"app"}"#,
        );
    }
}
