//! `tailrace top`: a terminal view of the running agent, from its own
//! `/metrics` and `/ready`, refreshed every second.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Paragraph, Row, Table};
use ratatui::Frame;

use crate::cli::ConfigArgs;
use crate::config::Config;

/// Show each source, channel and sink of the running agent, live
///
/// A terminal view of the agent running this config, read from its admin
/// endpoint every second: per source events and bytes per second; per
/// channel events in and out per second and how full it is; per sink
/// events and bytes delivered per second, failures, spool and dead-letter
/// size, readiness (the Kafka connection) and delivery latency (p50, p99
/// over the last second); per file the bytes not yet acknowledged (lag).
/// Works over SSH in any terminal. q, Esc or Ctrl-C quits.
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct TopArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Milliseconds between refreshes.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub interval_ms: u64,
}

pub fn main(args: TopArgs) -> ExitCode {
    let config = match crate::cli::load(&args.config.config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let address = match super::admin_address(&config) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("tailrace: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    if !std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        eprintln!("tailrace: top needs a terminal (use `tailrace tap` or /metrics in scripts)");
        return ExitCode::FAILURE;
    }
    let mut terminal = ratatui::init();
    let result = run(
        &mut terminal,
        &config,
        &address,
        Duration::from_millis(args.interval_ms.max(100)),
    );
    ratatui::restore();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tailrace: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(
    terminal: &mut ratatui::DefaultTerminal,
    config: &Config,
    address: &str,
    every: Duration,
) -> anyhow::Result<()> {
    let mut previous: Option<Scrape> = None;
    let mut view = View::default();
    let mut next = Instant::now();
    loop {
        if Instant::now() >= next {
            next = Instant::now() + every;
            view = match scrape(address) {
                Ok(now) => {
                    let v = View::of(config, previous.as_ref(), &now);
                    previous = Some(now);
                    v
                }
                Err(e) => View {
                    status: format!("cannot read {address}: {e:#}"),
                    ..View::default()
                },
            };
            view.address = address.to_string();
            terminal.draw(|f| draw(f, &view))?;
        }
        let wait = next.saturating_duration_since(Instant::now());
        if event::poll(wait.min(Duration::from_millis(200)))? {
            match event::read()? {
                Event::Key(k) if k.kind == KeyEventKind::Press => {
                    let ctrl_c =
                        k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
                    if matches!(k.code, KeyCode::Char('q') | KeyCode::Esc) || ctrl_c {
                        return Ok(());
                    }
                }
                Event::Resize(..) => terminal.draw(|f| draw(f, &view)).map(|_| ())?,
                _ => {}
            }
        }
    }
}

/// One metric sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// Parses the Prometheus text format (what `/metrics` serves).
pub fn parse_exposition(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(parse_sample)
        .collect()
}

fn parse_sample(line: &str) -> Option<Sample> {
    let (series, value) = line.rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let (name, labels) = match series.split_once('{') {
        None => (series, Vec::new()),
        Some((name, rest)) => {
            let rest = rest.strip_suffix('}')?;
            let mut labels = Vec::new();
            let mut chars = rest.chars().peekable();
            loop {
                let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
                if key.is_empty() {
                    break;
                }
                if chars.next() != Some('"') {
                    return None;
                }
                let mut v = String::new();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => match chars.next() {
                            Some('n') => v.push('\n'),
                            Some(o) => v.push(o),
                            None => return None,
                        },
                        '"' => break,
                        c => v.push(c),
                    }
                }
                labels.push((key.trim_start_matches(',').to_string(), v));
                if chars.peek() == Some(&',') {
                    chars.next();
                }
            }
            (name, labels)
        }
    };
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

struct Scrape {
    at: Instant,
    samples: Vec<Sample>,
    /// Component -> why it is not ready.
    not_ready: BTreeMap<String, String>,
}

impl Scrape {
    /// The sum of the samples of `name` whose labels include `with`.
    fn get(&self, name: &str, with: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                with.iter()
                    .all(|(k, v)| s.labels.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|s| s.value)
            .sum::<f64>()
            + 0.0 // an empty sum is -0.0
    }
}

fn scrape(address: &str) -> anyhow::Result<Scrape> {
    let (status, body) = super::get_text(address, "/metrics", Duration::from_secs(5))?;
    if status != 200 {
        anyhow::bail!("/metrics answered {status}");
    }
    let mut not_ready = BTreeMap::new();
    if let Ok((_, ready)) = super::get_text(address, "/ready", Duration::from_secs(5)) {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&ready) {
            for c in v["components"].as_array().into_iter().flatten() {
                if let (Some(name), Some(reason)) = (c["component"].as_str(), c["reason"].as_str())
                {
                    not_ready.insert(name.to_string(), reason.to_string());
                }
            }
        }
    }
    Ok(Scrape {
        at: Instant::now(),
        samples: parse_exposition(&body),
        not_ready,
    })
}

#[derive(Default)]
struct View {
    address: String,
    status: String,
    sources: Vec<Vec<String>>,
    channels: Vec<Vec<String>>,
    sinks: Vec<Vec<String>>,
    files: Vec<Vec<String>>,
}

fn rate(v: f64) -> String {
    match v {
        v if v >= 1e6 => format!("{:.2}M", v / 1e6),
        v if v >= 1e4 => format!("{:.1}k", v / 1e3),
        v => format!("{v:.0}"),
    }
}

fn bytes(v: f64) -> String {
    match v {
        v if v >= 1024.0 * 1024.0 * 1024.0 => format!("{:.1}GiB", v / (1024.0 * 1024.0 * 1024.0)),
        v if v >= 1024.0 * 1024.0 => format!("{:.1}MiB", v / (1024.0 * 1024.0)),
        v if v >= 1024.0 => format!("{:.1}KiB", v / 1024.0),
        v => format!("{v:.0}B"),
    }
}

/// How full a channel is: the larger of its events and bytes fill (a
/// channel is full when either bound is reached; a disk channel without
/// `max_events` has an events bound of usize::MAX, so its bytes count).
fn fill(events: f64, bytes: f64, capacity_events: usize, capacity_bytes: usize) -> String {
    let part = |held: f64, capacity: usize| held / capacity.max(1) as f64;
    let f = part(events, capacity_events).max(part(bytes, capacity_bytes));
    format!("{:.0}%", 100.0 * f)
}

/// The `q` quantile of a histogram's bucket counts over the window.
fn quantile(now: &Scrape, before: Option<&Scrape>, sink: &str, q: f64) -> String {
    let name = "tailrace_delivery_latency_seconds_bucket";
    let mut buckets: Vec<(f64, f64)> = now
        .samples
        .iter()
        .filter(|s| s.name == name && s.labels.iter().any(|(k, v)| k == "sink" && v == sink))
        .filter_map(|s| {
            let text = s.labels.iter().find(|(k, _)| k == "le")?.1.as_str();
            let le: f64 = if text == "+Inf" {
                f64::INFINITY
            } else {
                text.parse().ok()?
            };
            let was = before.map_or(0.0, |b| b.get(name, &[("sink", sink), ("le", text)]));
            Some((le, s.value - was))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last().map_or(0.0, |b| b.1);
    if total <= 0.0 {
        return "-".into();
    }
    match buckets.iter().find(|(_, c)| *c >= q * total) {
        Some((le, _)) if le.is_infinite() => "slow".into(),
        Some((le, _)) if *le < 1.0 => format!("≤{:.0}ms", le * 1000.0),
        Some((le, _)) => format!("≤{le:.1}s"),
        None => "-".into(),
    }
}

impl View {
    fn of(config: &Config, before: Option<&Scrape>, now: &Scrape) -> View {
        let dt = before.map_or(0.0, |b| now.at.duration_since(b.at).as_secs_f64());
        let per_s = |name: &str, with: &[(&str, &str)]| -> f64 {
            match before {
                Some(b) if dt > 0.0 => ((now.get(name, with) - b.get(name, with)) / dt).max(0.0),
                _ => 0.0,
            }
        };
        let mut v = View {
            status: format!(
                "up {:.0}s  rss {}  cpu {:.1}s  {}",
                now.get("tailrace_uptime_seconds", &[]),
                bytes(now.get("process_resident_memory_bytes", &[])),
                now.get("process_cpu_seconds_total", &[]),
                if now.not_ready.is_empty() {
                    "ready".to_string()
                } else {
                    format!("{} not ready", now.not_ready.len())
                },
            ),
            ..View::default()
        };
        for s in &config.sources {
            let l = [("source", s.name.as_str())];
            v.sources.push(vec![
                s.name.clone(),
                s.kind.clone(),
                rate(per_s("tailrace_source_events_total", &l)),
                bytes(per_s("tailrace_source_bytes_total", &l)) + "/s",
                rate(per_s("tailrace_events_filtered_total", &l)),
                rate(now.get("tailrace_source_events_total", &l)),
            ]);
        }
        for c in &config.channels {
            let into: f64 = config
                .sources
                .iter()
                .filter(|s| s.channels.contains(&c.name))
                .map(|s| {
                    let l = [("source", s.name.as_str())];
                    per_s("tailrace_source_events_total", &l)
                        - per_s("tailrace_events_filtered_total", &l)
                })
                .sum();
            let out: f64 = config
                .sinks
                .iter()
                .filter(|s| s.channel == c.name)
                .map(|s| {
                    per_s(
                        "tailrace_sink_events_delivered_total",
                        &[("sink", s.name.as_str())],
                    )
                })
                .sum();
            let l = [("channel", c.name.as_str())];
            let held = now.get("tailrace_channel_events", &l);
            let held_bytes = now.get("tailrace_channel_bytes", &l);
            v.channels.push(vec![
                c.name.clone(),
                rate(into.max(0.0)),
                rate(out),
                rate(held),
                fill(held, held_bytes, c.capacity_events, c.capacity_bytes),
                bytes(held_bytes),
            ]);
        }
        for s in &config.sinks {
            let l = [("sink", s.name.as_str())];
            let state = match now.not_ready.get(&format!("sink {}", s.name)) {
                Some(why) => format!("not ready: {why}"),
                None => "ready".into(),
            };
            v.sinks.push(vec![
                s.name.clone(),
                s.kind.clone(),
                rate(per_s("tailrace_sink_events_delivered_total", &l)),
                bytes(per_s("tailrace_sink_bytes_delivered_total", &l)) + "/s",
                rate(now.get("tailrace_sink_events_failed_total", &l)),
                rate(now.get("tailrace_spool_events", &l)),
                bytes(now.get("tailrace_spool_bytes", &l)),
                rate(now.get("tailrace_dead_letter_events", &l)),
                quantile(now, before, &s.name, 0.5),
                quantile(now, before, &s.name, 0.99),
                state,
            ]);
        }
        let mut lags: Vec<&Sample> = now
            .samples
            .iter()
            .filter(|s| s.name == "tailrace_file_lag_bytes")
            .collect();
        lags.sort_by(|a, b| b.value.total_cmp(&a.value));
        for s in lags.into_iter().take(20) {
            let label = |k: &str| {
                s.labels
                    .iter()
                    .find(|(lk, _)| lk == k)
                    .map_or("", |(_, v)| v.as_str())
                    .to_string()
            };
            v.files
                .push(vec![label("source"), label("path"), bytes(s.value)]);
        }
        v
    }
}

fn table<'a>(
    title: &'a str,
    header: &'a [&'a str],
    rows: &'a [Vec<String>],
    widths: &'a [Constraint],
) -> Table<'a> {
    Table::new(rows.iter().map(|r| Row::new(r.clone())), widths.to_vec())
        .header(Row::new(header.to_vec()).style(Style::new().add_modifier(Modifier::BOLD)))
        .block(Block::bordered().title(title))
}

fn draw(f: &mut Frame, v: &View) {
    let h = |rows: &[Vec<String>]| Constraint::Length(rows.len() as u16 + 3);
    let [top, sources, channels, sinks, files] = Layout::vertical([
        Constraint::Length(1),
        h(&v.sources),
        h(&v.channels),
        h(&v.sinks),
        Constraint::Min(3),
    ])
    .areas(f.area());
    f.render_widget(
        Paragraph::new(Line::from(format!(
            "tailrace top  {}  {}   (q quits)",
            v.address, v.status
        ))),
        top,
    );
    let w = |n: &[u16]| n.iter().map(|&x| Constraint::Length(x)).collect::<Vec<_>>();
    f.render_widget(
        table(
            "Sources",
            &[
                "source",
                "type",
                "events/s",
                "bytes/s",
                "filtered/s",
                "events",
            ],
            &v.sources,
            &w(&[16, 8, 10, 12, 11, 12]),
        ),
        sources,
    );
    f.render_widget(
        table(
            "Channels",
            &["channel", "in/s", "out/s", "held", "fill", "bytes"],
            &v.channels,
            &w(&[16, 10, 10, 10, 6, 10]),
        ),
        channels,
    );
    let mut sink_widths = w(&[16, 8, 10, 12, 8, 8, 10, 8, 8, 8]);
    sink_widths.push(Constraint::Min(10));
    f.render_widget(
        table(
            "Sinks",
            &[
                "sink", "type", "out/s", "bytes/s", "failed", "spool", "spool B", "dead", "p50",
                "p99", "state",
            ],
            &v.sinks,
            &sink_widths,
        ),
        sinks,
    );
    let mut file_widths = w(&[16]);
    file_widths.extend([Constraint::Min(20), Constraint::Length(12)]);
    f.render_widget(
        table(
            "Files (lag)",
            &["source", "path", "lag"],
            &v.files,
            &file_widths,
        ),
        files,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_is_the_fuller_of_events_and_bytes() {
        let check = |events, bytes, cap_events, cap_bytes, want: &str| {
            assert_eq!(fill(events, bytes, cap_events, cap_bytes), want);
        };
        check(50.0, 10.0, 100, 1000, "50%");
        check(10.0, 750.0, 100, 1000, "75%");
        // A disk channel bounded by bytes only.
        check(1e9, 5e9, usize::MAX, 10 << 30, "47%");
        check(0.0, 0.0, 0, 0, "0%");
    }

    #[test]
    fn parses_the_exposition() {
        let text = "# HELP x_total X.\n# TYPE x_total counter\nx_total{sink=\"k\",reason=\"a \\\"b\\\"\"} 3\nup 1.5\n";
        assert_eq!(
            parse_exposition(text),
            vec![
                Sample {
                    name: "x_total".into(),
                    labels: vec![
                        ("sink".into(), "k".into()),
                        ("reason".into(), "a \"b\"".into())
                    ],
                    value: 3.0
                },
                Sample {
                    name: "up".into(),
                    labels: vec![],
                    value: 1.5
                },
            ]
        );
    }
}
