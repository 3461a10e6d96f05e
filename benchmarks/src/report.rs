//! The matrix's report: one markdown file with a table per scenario
//! (tailrace beside its baseline, measured in the same run: events/s, CPU
//! per event, peak RSS, delivery latency, lost, duplicated, the ratio),
//! the machine and its load, the command line and the date, and the
//! charts of [`crate::charts`]. [`Report::publish`] puts it in a dated
//! directory under `benchmarks/results/` and rewrites `latest.md` there.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::charts;

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
    /// Delivery latency quantiles from the agent's
    /// `tailrace_delivery_latency_seconds` (read to acknowledged, per
    /// batch); None for kcat, which has no such figure.
    pub p50_seconds: Option<f64>,
    pub p99_seconds: Option<f64>,
    /// Delivered events counted over the run: (seconds since the run
    /// began, delivered so far); empty where nothing sampled (kcat).
    pub timeline: Vec<(f64, u64)>,
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
    v.map_or_else(|| "–".into(), f)
}

fn ms(seconds: Option<f64>) -> String {
    opt(seconds, |s| format!("{:.0} ms", s * 1e3))
}

fn measure_row(out: &mut String, m: &Measure, ratio: &str) {
    let _ = writeln!(
        out,
        "| {} | {} | {:.1} | {} | {} | {} | {} | {} | {} | {} | {} |",
        m.label,
        thousands(m.events),
        m.seconds,
        thousands(m.rate().round() as u64),
        opt(m.cpu_per_million(), |c| format!("{c:.2}")),
        opt(m.peak_rss_mib, |r| format!("{r:.0} MiB")),
        ms(m.p50_seconds),
        ms(m.p99_seconds),
        opt(m.lost, thousands),
        opt(m.duplicated, thousands),
        ratio,
    );
}

impl Report {
    /// The markdown report: the summary, the charts (their paths behind
    /// `images`, a directory ending in `/` or ""), a table per scenario,
    /// the machine.
    pub fn markdown(&self, images: &str) -> String {
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
            "\nEvery run produces with acks=all, idempotence and lz4 to a local tansu broker; `lost` and `dup` are counted by a consumer reading every sequence number back. Latency p50 and p99 are tailrace's own `tailrace_delivery_latency_seconds` histogram (read to acknowledged by Kafka, one observation per batch, interpolated within buckets) at the end of the run; kcat has no such figure, so its cells say –.\n"
        );
        let _ = writeln!(out, "| scenario | tailrace events/s | CPU-s / M | peak RSS | p50 | p99 | baseline | baseline events/s | × baseline | lost | dup |");
        let _ = writeln!(
            out,
            "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|"
        );
        for s in &self.scenarios {
            let rate =
                |m: &Option<Measure>| opt(m.as_ref(), |m| thousands(m.rate().round() as u64));
            let t = s.tailrace.as_ref();
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                s.title,
                rate(&s.tailrace),
                opt(t.and_then(Measure::cpu_per_million), |c| format!("{c:.2}")),
                opt(t.and_then(|t| t.peak_rss_mib), |r| format!("{r:.0} MiB")),
                ms(t.and_then(|t| t.p50_seconds)),
                ms(t.and_then(|t| t.p99_seconds)),
                opt(s.baseline.as_ref(), |b| b.label.clone()),
                rate(&s.baseline),
                opt(s.ratio(), |r| format!("{r:.2}")),
                opt(s.tailrace.as_ref().and_then(|t| t.lost), thousands),
                opt(s.tailrace.as_ref().and_then(|t| t.duplicated), thousands),
            );
        }
        let _ = writeln!(
            out,
            "\n![events/s per scenario]({images}{RATES})\n\n![events/s over time per scenario]({images}{THROUGHPUT})\n\n![CPU seconds per million events]({images}{CPU})\n\n![delivery latency p50 and p99]({images}{LATENCY})"
        );
        for s in &self.scenarios {
            let _ = writeln!(out, "\n## {} (`--targets {}`)\n", s.title, s.name);
            if s.tailrace.is_some() || s.baseline.is_some() {
                let _ = writeln!(out, "| run | events | seconds | events/s | CPU-s / M events | peak RSS | p50 | p99 | lost | dup | × baseline |");
                let _ = writeln!(
                    out,
                    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
                );
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

    /// Writes REPORT.md and the charts (see [`crate::charts`]) into `dir`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("REPORT.md"), self.markdown(""))?;
        for (name, svg) in [
            (RATES, charts::rates(self)?),
            (THROUGHPUT, charts::throughput(self)?),
            (CPU, charts::cpu(self)?),
            (LATENCY, charts::latency(self)?),
        ] {
            std::fs::write(dir.join(name), svg)?;
        }
        Ok(())
    }

    /// Writes the report into a new directory under `results` named by
    /// the run's UTC date (`2026-12-01`, or `2026-12-01.2` and on for a
    /// second run that day), and `results/latest.md`, the same report
    /// with its links into that directory, which the README links to.
    /// Returns the directory.
    pub fn publish(&self, results: &Path) -> anyhow::Result<PathBuf> {
        let dir = results_dir(results, &self.date);
        self.write(&dir)?;
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let md = self.markdown(&format!("{name}/")).replacen(
            "# tailrace benchmark matrix\n",
            &format!("# tailrace benchmark matrix: the latest run, [{name}]({name}/REPORT.md)\n"),
            1,
        );
        std::fs::write(results.join("latest.md"), md)?;
        Ok(dir)
    }
}

/// The charts' file names, beside REPORT.md.
const RATES: &str = "rates.svg";
const THROUGHPUT: &str = "throughput.svg";
const CPU: &str = "cpu.svg";
const LATENCY: &str = "latency.svg";

/// `results/<date>` for the date part of an RFC 3339 `date`, or the first
/// of `<date>.2`, `<date>.3`, ... that does not exist yet.
pub fn results_dir(results: &Path, date: &str) -> PathBuf {
    let day = date.get(..10).unwrap_or("undated");
    let first = results.join(day);
    if !first.exists() {
        return first;
    }
    (2..)
        .map(|n| results.join(format!("{day}.{n}")))
        .find(|d| !d.exists())
        .expect("some suffix is free")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A run at a steady rate, sampled every 200 ms.
    pub(crate) fn measure(label: &str, events: u64, seconds: f64) -> Measure {
        let rate = events as f64 / seconds;
        Measure {
            label: label.into(),
            events,
            seconds,
            cpu_seconds: Some(seconds * 1.5),
            peak_rss_mib: Some(64.0),
            lost: Some(0),
            duplicated: Some(0),
            p50_seconds: None,
            p99_seconds: None,
            timeline: (0..=(seconds * 5.0) as u64)
                .map(|i| (i as f64 * 0.2, (i as f64 * 0.2 * rate) as u64))
                .collect(),
        }
    }

    pub(crate) fn report() -> Report {
        let mut tailrace = measure("tailrace, file", 2_000_000, 2.0);
        tailrace.p50_seconds = Some(0.012);
        tailrace.p99_seconds = Some(0.0456);
        let mut kcat = measure("kcat -P -l, linger.ms=5", 2_000_000, 4.0);
        kcat.timeline.clear();
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
                    tailrace: Some(tailrace),
                    baseline: Some(kcat),
                    notes: vec!["kcat linger.ms sweep: 1 → 400,000".into()],
                },
                Scenario {
                    name: "tls".into(),
                    title: "7. TLS + SASL <&>".into(),
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
    fn the_markdown_has_a_table_per_scenario_with_the_ratio_and_latency() {
        let md = report().markdown("");
        assert!(
            md.contains("## 1. raw file → Kafka (`--targets raw`)"),
            "{md}"
        );
        assert!(
            md.contains("## 7. TLS + SASL <&> (`--targets tls`)"),
            "{md}"
        );
        // Tailrace at 1,000,000/s against kcat's 500,000/s, its latency
        // in milliseconds; kcat has none.
        assert!(
            md.contains(
                "| tailrace, file | 2,000,000 | 2.0 | 1,000,000 | 1.50 | 64 MiB | 12 ms | 46 ms | 0 | 0 | 2.00 |"
            ),
            "{md}"
        );
        assert!(
            md.contains(
                "| kcat -P -l, linger.ms=5 | 2,000,000 | 4.0 | 500,000 | 3.00 | 64 MiB | – | – | 0 | 0 | 1.00 |"
            ),
            "{md}"
        );
        assert!(md.contains("| 1. raw file → Kafka | 1,000,000 | 1.50 | 64 MiB | 12 ms | 46 ms | kcat -P -l, linger.ms=5 | 500,000 | 2.00 | 0 | 0 |"), "{md}");
        // A scenario that failed says so and has no ratio.
        assert!(
            md.contains("| 7. TLS + SASL <&> | – | – | – | – | – | kcat | 100 | – | – | – |"),
            "{md}"
        );
        assert!(md.contains("tls: stunnel did not start"));
        assert!(md.contains("6.51 6.67 5.42") && md.contains("2 × AMD EPYC"));
        assert!(md.contains("--quick"));
        for chart in [RATES, THROUGHPUT, CPU, LATENCY] {
            assert!(md.contains(&format!("]({chart})")), "{chart}: {md}");
        }
        assert!(report()
            .markdown("2026-12-01/")
            .contains("](2026-12-01/throughput.svg)"));
    }

    #[test]
    fn the_report_is_written_to_its_directory_with_its_charts() {
        let dir = tempfile::tempdir().unwrap();
        report().write(&dir.path().join("r")).unwrap();
        let md = std::fs::read_to_string(dir.path().join("r/REPORT.md")).unwrap();
        assert!(md.contains("![events/s per scenario](rates.svg)"));
        for chart in [RATES, THROUGHPUT, CPU, LATENCY] {
            let svg = std::fs::read_to_string(dir.path().join("r").join(chart)).unwrap();
            assert!(
                svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
                "{chart}"
            );
        }
    }

    #[test]
    fn each_run_is_published_in_a_new_dated_directory_and_latest_follows() {
        let results = tempfile::tempdir().unwrap();
        let r = results.path();
        let first = report().publish(r).unwrap();
        assert_eq!(first, r.join("2026-12-01"));
        let latest = std::fs::read_to_string(r.join("latest.md")).unwrap();
        assert!(
            latest.starts_with(
                "# tailrace benchmark matrix: the latest run, [2026-12-01](2026-12-01/REPORT.md)\n"
            ),
            "{latest}"
        );
        assert!(latest.contains("](2026-12-01/rates.svg)"), "{latest}");
        // A second run the same day keeps the first.
        let second = report().publish(r).unwrap();
        assert_eq!(second, r.join("2026-12-01.2"));
        assert!(first.join("REPORT.md").exists() && second.join("cpu.svg").exists());
        let latest = std::fs::read_to_string(r.join("latest.md")).unwrap();
        assert!(
            latest.contains("](2026-12-01.2/REPORT.md)") && !latest.contains("](2026-12-01/"),
            "{latest}"
        );
        assert_eq!(
            results_dir(r, "2026-12-01T23:59:59Z"),
            r.join("2026-12-01.3")
        );
        assert_eq!(results_dir(r, "2026-12-02T00:00:00Z"), r.join("2026-12-02"));
    }
}
