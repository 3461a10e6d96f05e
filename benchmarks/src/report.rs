//! The matrix's report: one markdown file with a table per scenario
//! (tailrace beside its baseline, measured in the same run), the machine
//! and its load, the command line and the date, and an SVG bar chart of
//! events/s per scenario. The SVG is written by hand: a few rectangles and
//! labels need no plotting crate.

use std::fmt::Write as _;
use std::path::Path;

/// One measured run: a tailrace run or its baseline.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Measure {
    /// What ran, as the table names it.
    pub label: String,
    pub events: u64,
    pub seconds: f64,
    pub cpu_seconds: Option<f64>,
    pub peak_rss_mib: Option<f64>,
    /// Counted at a consumer afterwards; None where nothing counted.
    pub lost: Option<u64>,
    pub duplicated: Option<u64>,
}

impl Measure {
    pub fn rate(&self) -> f64 {
        if self.seconds > 0.0 {
            self.events as f64 / self.seconds
        } else {
            0.0
        }
    }

    pub fn cpu_per_million(&self) -> Option<f64> {
        let cpu = self.cpu_seconds?;
        (self.events > 0).then(|| cpu / (self.events as f64 / 1e6))
    }
}

/// One scenario of the matrix: tailrace, its baseline, and what the
/// reader must know to read them.
#[derive(Clone, Debug, Default)]
pub struct Scenario {
    /// The name given to `--targets`.
    pub name: String,
    pub title: String,
    pub tailrace: Option<Measure>,
    pub baseline: Option<Measure>,
    /// Why a run is missing, other runs (kcat's linger.ms sweep), goals.
    pub notes: Vec<String>,
}

impl Scenario {
    pub fn measured(&mut self, tailrace: Measure, baseline: Measure) {
        self.tailrace = Some(tailrace);
        self.baseline = Some(baseline);
    }

    pub fn ratio(&self) -> Option<f64> {
        let (t, b) = (self.tailrace.as_ref()?, self.baseline.as_ref()?);
        (b.rate() > 0.0).then(|| t.rate() / b.rate())
    }
}

/// The machine the matrix ran on, read at the start.
#[derive(Clone, Debug, Default)]
pub struct Machine {
    pub cpu_model: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub kernel: String,
    /// `/proc/loadavg`'s first three fields.
    pub load_at_start: String,
}

impl Machine {
    pub fn read() -> Machine {
        let lscpu = std::process::Command::new("lscpu")
            .env("LC_ALL", "C")
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let cpu_model = lscpu
            .lines()
            .find_map(|l| l.strip_prefix("Model name:"))
            .map(|m| m.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let memory_gib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| m.split_whitespace().nth(1)?.parse::<f64>().ok())
            .map_or(0.0, |kib| kib / (1 << 20) as f64);
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        Machine {
            cpu_model,
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            memory_gib,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            load_at_start: load_average(),
        }
    }
}

/// The 1, 5 and 15-minute load averages, as `uptime` prints them.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

pub struct Report {
    pub command: String,
    /// UTC, RFC 3339.
    pub date: String,
    pub machine: Machine,
    pub load_at_end: String,
    /// `--quick`: small line counts; the figures show the harness works,
    /// not what the agent can do.
    pub quick: bool,
    pub scenarios: Vec<Scenario>,
}

/// 1234567 → "1,234,567".
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn opt<T>(v: Option<T>, f: impl Fn(T) -> String) -> String {
    v.map_or_else(|| "-".into(), f)
}

fn measure_row(out: &mut String, m: &Measure, ratio: &str) {
    let _ = writeln!(
        out,
        "| {} | {} | {:.1} | {} | {} | {} | {} | {} | {} |",
        m.label,
        thousands(m.events),
        m.seconds,
        thousands(m.rate().round() as u64),
        opt(m.cpu_per_million(), |c| format!("{c:.2}")),
        opt(m.peak_rss_mib, |r| format!("{r:.0} MiB")),
        opt(m.lost, thousands),
        opt(m.duplicated, thousands),
        ratio,
    );
}

impl Report {
    /// The markdown report: the summary, a table per scenario, the machine.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let m = &self.machine;
        let _ = writeln!(out, "# tailrace benchmark matrix\n");
        let _ = writeln!(
            out,
            "- date: {}\n- command: `{}`\n- machine: {} × {}, {:.0} GiB memory, Linux {}\n- load average at start: {} (at end: {}); the machine is shared with other work, so rates vary from run to run; CPU per event varies less",
            self.date, self.command, m.cores, m.cpu_model, m.memory_gib, m.kernel, m.load_at_start, self.load_at_end
        );
        if self.quick {
            let _ = writeln!(
                out,
                "- **--quick**: small line counts, to show that the harness works; these are not figures to quote"
            );
        }
        let _ = writeln!(
            out,
            "\nEvery run produces with acks=all, idempotence and lz4 to a local tansu broker; `lost` and `dup` are counted by a consumer reading every sequence number back.\n\n![events/s per scenario](matrix.svg)\n"
        );
        let _ = writeln!(out, "| scenario | tailrace events/s | baseline | baseline events/s | × baseline | lost | dup |");
        let _ = writeln!(out, "|---|---:|---|---:|---:|---:|---:|");
        for s in &self.scenarios {
            let rate =
                |m: &Option<Measure>| opt(m.as_ref(), |m| thousands(m.rate().round() as u64));
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} |",
                s.title,
                rate(&s.tailrace),
                opt(s.baseline.as_ref(), |b| b.label.clone()),
                rate(&s.baseline),
                opt(s.ratio(), |r| format!("{r:.2}")),
                opt(s.tailrace.as_ref().and_then(|t| t.lost), thousands),
                opt(s.tailrace.as_ref().and_then(|t| t.duplicated), thousands),
            );
        }
        for s in &self.scenarios {
            let _ = writeln!(out, "\n## {} (`--targets {}`)\n", s.title, s.name);
            if s.tailrace.is_some() || s.baseline.is_some() {
                let _ = writeln!(out, "| run | events | seconds | events/s | CPU-s / M events | peak RSS | lost | dup | × baseline |");
                let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
                if let Some(t) = &s.tailrace {
                    measure_row(&mut out, t, &opt(s.ratio(), |r| format!("{r:.2}")));
                }
                if let Some(b) = &s.baseline {
                    measure_row(&mut out, b, "1.00");
                }
            }
            for n in &s.notes {
                let _ = writeln!(out, "\n{n}");
            }
        }
        out
    }

    /// A horizontal bar chart: per scenario, tailrace's events/s beside its
    /// baseline's, with the figures and the ratio written on it.
    pub fn svg(&self) -> String {
        const LABEL_W: f64 = 300.0;
        const BAR_MAX: f64 = 480.0;
        const BAR_H: f64 = 16.0;
        const GROUP_H: f64 = 50.0;
        const TOP: f64 = 50.0;
        let width = LABEL_W + BAR_MAX + 200.0;
        let max = self
            .scenarios
            .iter()
            .flat_map(|s| [&s.tailrace, &s.baseline])
            .flatten()
            .map(Measure::rate)
            .fold(0.0, f64::max)
            .max(1.0);
        let height = TOP + GROUP_H * self.scenarios.len() as f64 + 30.0;
        let mut out = String::new();
        let _ = writeln!(
            out,
            r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif" font-size="12">"##
        );
        let _ = writeln!(
            out,
            r##"<rect width="100%" height="100%" fill="#ffffff"/>"##
        );
        let _ = writeln!(
            out,
            r##"<text x="10" y="20" font-size="15" font-weight="bold">events/s per scenario: tailrace (blue) beside its baseline (grey){}</text>"##,
            if self.quick { ", --quick size" } else { "" }
        );
        let _ = writeln!(
            out,
            r##"<text x="10" y="38" fill="#555555">{} · {} cores · load {} at start · {}</text>"##,
            escape(&self.machine.cpu_model),
            self.machine.cores,
            escape(&self.machine.load_at_start),
            escape(&self.date)
        );
        for (i, s) in self.scenarios.iter().enumerate() {
            let y = TOP + GROUP_H * i as f64;
            let _ = writeln!(
                out,
                r##"<text x="10" y="{:.0}" font-weight="bold">{}</text>"##,
                y + BAR_H + 4.0,
                escape(&s.title)
            );
            if let Some(r) = s.ratio() {
                let _ = writeln!(
                    out,
                    r##"<text x="10" y="{:.0}" fill="#555555">{r:.2} × baseline</text>"##,
                    y + 2.0 * BAR_H + 8.0
                );
            }
            let names = bar_names(s);
            for (j, (m, fill)) in [(&s.tailrace, "#1f77b4"), (&s.baseline, "#a0a0a0")]
                .into_iter()
                .enumerate()
            {
                let by = y + 4.0 + j as f64 * (BAR_H + 4.0);
                let Some(m) = m else {
                    let _ = writeln!(
                        out,
                        r##"<text x="{LABEL_W}" y="{:.0}" fill="#999999">not measured</text>"##,
                        by + BAR_H - 4.0
                    );
                    continue;
                };
                let w = (m.rate() / max * BAR_MAX).max(1.0);
                let _ = writeln!(
                    out,
                    r##"<rect x="{LABEL_W}" y="{by:.0}" width="{w:.1}" height="{BAR_H}" fill="{fill}"><title>{}</title></rect>"##,
                    escape(&m.label)
                );
                let _ = writeln!(
                    out,
                    r##"<text x="{:.1}" y="{:.0}">{}</text>"##,
                    LABEL_W + w + 6.0,
                    by + BAR_H - 4.0,
                    escape(&format!(
                        "{} ev/s  {}",
                        thousands(m.rate().round() as u64),
                        names[j]
                    ))
                );
            }
        }
        out.push_str("</svg>\n");
        out
    }

    /// Writes REPORT.md and matrix.svg into `dir`.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("REPORT.md"), self.markdown())?;
        std::fs::write(dir.join("matrix.svg"), self.svg())
    }
}

/// The bars' names: each label up to its first comma (what ran, without
/// the detail), or where both begin alike (tailrace beside tailrace), each
/// label's last part (what differs).
fn bar_names(s: &Scenario) -> [String; 2] {
    fn label(m: &Option<Measure>) -> &str {
        m.as_ref().map_or("", |m| m.label.as_str())
    }
    let (t, b) = (label(&s.tailrace), label(&s.baseline));
    let first = |l: &str| l.split(',').next().unwrap_or(l).trim().to_string();
    let last = |l: &str| l.rsplit(',').next().unwrap_or(l).trim().to_string();
    if first(t) == first(b) {
        [last(t), last(b)]
    } else {
        [first(t), first(b)]
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measure(label: &str, events: u64, seconds: f64) -> Measure {
        Measure {
            label: label.into(),
            events,
            seconds,
            cpu_seconds: Some(seconds * 1.5),
            peak_rss_mib: Some(64.0),
            lost: Some(0),
            duplicated: Some(0),
        }
    }

    fn report() -> Report {
        Report {
            command: "tailrace-bench --quick".into(),
            date: "2026-12-01T16:00:00Z".into(),
            machine: Machine {
                cpu_model: "AMD EPYC <test> & co".into(),
                cores: 2,
                memory_gib: 23.4,
                kernel: "6.1.0".into(),
                load_at_start: "6.51 6.67 5.42".into(),
            },
            load_at_end: "5.00 6.00 5.50".into(),
            quick: true,
            scenarios: vec![
                Scenario {
                    name: "raw".into(),
                    title: "1. raw file → Kafka".into(),
                    tailrace: Some(measure("tailrace, file", 2_000_000, 2.0)),
                    baseline: Some(measure("kcat -P -l, linger.ms=5", 2_000_000, 4.0)),
                    notes: vec!["kcat linger.ms sweep: 1 → 400,000".into()],
                },
                Scenario {
                    name: "tls".into(),
                    title: "7. TLS + SASL".into(),
                    tailrace: None,
                    baseline: Some(measure("kcat", 100, 1.0)),
                    notes: vec!["tls: stunnel did not start".into()],
                },
            ],
        }
    }

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn the_markdown_has_a_table_per_scenario_with_the_ratio() {
        let md = report().markdown();
        assert!(
            md.contains("## 1. raw file → Kafka (`--targets raw`)"),
            "{md}"
        );
        assert!(md.contains("## 7. TLS + SASL (`--targets tls`)"), "{md}");
        // Tailrace at 1,000,000/s against kcat's 500,000/s.
        assert!(
            md.contains(
                "| tailrace, file | 2,000,000 | 2.0 | 1,000,000 | 1.50 | 64 MiB | 0 | 0 | 2.00 |"
            ),
            "{md}"
        );
        assert!(md.contains("| 1. raw file → Kafka | 1,000,000 | kcat -P -l, linger.ms=5 | 500,000 | 2.00 | 0 | 0 |"), "{md}");
        // A scenario that failed says so and has no ratio.
        assert!(
            md.contains("| 7. TLS + SASL | - | kcat | 100 | - | - | - |"),
            "{md}"
        );
        assert!(md.contains("tls: stunnel did not start"));
        assert!(md.contains("6.51 6.67 5.42") && md.contains("2 × AMD EPYC"));
        assert!(md.contains("--quick"));
    }

    #[test]
    fn the_svg_draws_bars_to_scale_and_escapes_text() {
        let svg = report().svg();
        assert!(svg.starts_with("<svg ") && svg.trim_end().ends_with("</svg>"));
        let widths: Vec<f64> = svg
            .lines()
            .filter(|l| l.starts_with("<rect x="))
            .map(|l| {
                l.split("width=\"")
                    .nth(1)
                    .unwrap()
                    .split('"')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap()
            })
            .collect();
        // The fastest bar is full length, kcat's half of it, the tiny one
        // still visible.
        assert_eq!(widths, [480.0, 240.0, 1.0]);
        assert!(svg.contains("not measured"));
        assert!(svg.contains("AMD EPYC &lt;test&gt; &amp; co"));
        assert!(!svg.contains("<test>"));
        assert!(svg.contains("2.00 × baseline"));
        assert!(
            svg.contains("1,000,000 ev/s  tailrace<") && svg.contains("500,000 ev/s  kcat -P -l<")
        );
        let mut disk = report().scenarios[0].clone();
        disk.tailrace.as_mut().unwrap().label = "tailrace, file, disk channel".into();
        disk.baseline.as_mut().unwrap().label = "tailrace, file, memory channel".into();
        assert_eq!(bar_names(&disk), ["disk channel", "memory channel"]);
        // Every element opened is closed.
        assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count());
    }

    #[test]
    fn the_report_is_written_to_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        report().write(&dir.path().join("r")).unwrap();
        let md = std::fs::read_to_string(dir.path().join("r/REPORT.md")).unwrap();
        assert!(md.contains("![events/s per scenario](matrix.svg)"));
        assert!(std::fs::read_to_string(dir.path().join("r/matrix.svg"))
            .unwrap()
            .contains("<svg"));
    }
}
