//! `tailrace tap`: streams copies of live events from the running agent.

use std::io::{BufRead, Write};
use std::process::ExitCode;

use crate::cli::ConfigArgs;

/// Stream live events from the running agent as JSON lines
///
/// Connects to the admin endpoint of the agent running this config and
/// prints, one JSON object per line, the events that pass through it from
/// now on: the payload, the fields (for a source: after its interceptors),
/// and for a sink the topic and key each is sent with. The agent copies
/// events only while a tap is attached, at most --rate per second and
/// component; copies
/// it cannot hand over are dropped (and counted in
/// tailrace_tap_events_dropped_total), never waited for. Exits after
/// --limit events, or at Ctrl-C.
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct TapArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Only this source's events, after its interceptors.
    #[arg(long, value_name = "NAME", conflicts_with = "sink")]
    pub source: Option<String>,
    /// Only this sink's events, with the topic and key they are sent with.
    #[arg(long, value_name = "NAME")]
    pub sink: Option<String>,
    /// Exit after this many events.
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
    /// Copy this fraction of the events, 0 < RATE <= 1.
    #[arg(long, value_name = "RATE", default_value_t = 1.0)]
    pub sample: f64,
    /// At most this many events per second from each component (10000 at
    /// most).
    #[arg(long, value_name = "N", default_value_t = tailrace_api::tap::TAP_MAX_EVENTS_PER_SECOND)]
    pub rate: u32,
}

pub fn main(args: TapArgs) -> ExitCode {
    let config = match crate::cli::load(&args.config.config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if !(args.sample > 0.0 && args.sample <= 1.0) {
        eprintln!("tailrace: --sample {} is not in (0, 1]", args.sample);
        return ExitCode::from(2);
    }
    match run(&config, &args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tailrace: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: &crate::config::Config, args: &TapArgs) -> anyhow::Result<()> {
    let address = super::admin_address(config)?;
    let mut query = format!("/tap?sample={}&rate={}", args.sample, args.rate);
    if let Some(s) = &args.source {
        query.push_str(&format!("&source={s}"));
    }
    if let Some(s) = &args.sink {
        query.push_str(&format!("&sink={s}"));
    }
    if let Some(n) = args.limit {
        query.push_str(&format!("&limit={n}"));
    }
    let (status, reader) = super::get(&address, &query)?;
    if status != 200 {
        let body: Vec<String> = reader.lines().map_while(Result::ok).collect();
        anyhow::bail!("the agent refused the tap ({status}): {}", body.join(" "));
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for (seen, line) in (1u64..).zip(reader.lines()) {
        let line = line?;
        // A closed pipe (`| head`) ends the tap quietly.
        if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
            return Ok(());
        }
        if args.limit.is_some_and(|n| seen >= n) {
            break;
        }
    }
    Ok(())
}
