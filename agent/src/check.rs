//! `tailrace check`: every sink's own check against its real cluster,
//! printed one line per finding, with an exit status for ExecStartPre.

use std::process::ExitCode;
use std::time::Duration;

use tailrace_api::Outcome;

use crate::config::Config;

/// EX_UNAVAILABLE: a sink cannot deliver.
pub const EXIT_UNAVAILABLE: u8 = 69;

pub fn run(config: &Config, timeout: Duration) -> ExitCode {
    let mut deliverable = true;
    for sink in &config.sinks {
        let report = sink.config.check(&sink.name, timeout);
        if report.lines.is_empty() {
            println!("sink {}: nothing to check", sink.name);
            continue;
        }
        for line in &report.lines {
            let mark = match line.outcome {
                Outcome::Ok => "ok",
                Outcome::Warn => "warning",
                Outcome::Fail => "FAILED",
            };
            println!("sink {}: {}: {mark}: {}", sink.name, line.what, line.detail);
        }
        if report.deliverable() {
            println!("sink {}: can deliver", sink.name);
        } else {
            println!("sink {}: cannot deliver", sink.name);
            deliverable = false;
        }
    }
    if deliverable {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_UNAVAILABLE)
    }
}
