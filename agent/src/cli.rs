//! The command line: `run`, `validate`, `checkpoints`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use std::sync::Arc;
use std::time::Duration;

use tailrace_api::spool::{header, SpoolStore, SpoolTree};
use tailrace_api::CheckpointStore;
use tracing_subscriber::EnvFilter;

use crate::config::{self, Config, LogFormat};
use crate::registry::Registry;
use crate::store::Store;

/// Bad config or usage (EX_USAGE from sysexits.h).
pub const EXIT_CONFIG: u8 = 64;

/// tailrace: tails log files into Apache Kafka and loses no line.
#[derive(Parser, Debug)]
#[command(name = "tailrace", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the agent until SIGTERM or SIGINT.
    Run {
        /// The YAML config file.
        #[arg(short, long, env = "TAILRACE_CONFIG")]
        config: PathBuf,
    },
    /// Check a config file and exit: 0 when valid, 64 with every error listed.
    Validate {
        #[arg(short, long, env = "TAILRACE_CONFIG")]
        config: PathBuf,
    },
    /// Print the saved position of every file, one JSON object per line.
    /// The agent must be stopped.
    Checkpoints {
        #[arg(short, long, env = "TAILRACE_CONFIG")]
        config: PathBuf,
    },
    /// Look inside the spool of failed sends, replay it, or purge it. The
    /// agent must be stopped.
    Spool {
        #[command(subcommand)]
        action: SpoolAction,
        #[arg(short, long, env = "TAILRACE_CONFIG", global = true)]
        config: Option<PathBuf>,
        /// Work on the dead-letter tree (records Kafka refused for good).
        #[arg(long, global = true, conflicts_with = "corrupt")]
        dead_letter: bool,
        /// Work on the entries set aside because they failed their checksum.
        #[arg(long, global = true)]
        corrupt: bool,
        /// Only this sink (default: every kafka sink of the config).
        #[arg(long, global = true)]
        sink: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum SpoolAction {
    /// Entries, events and bytes held per sink, in every tree.
    Stats,
    /// One JSON line per entry: id, creation time, events, bytes, reason.
    List,
    /// Produce the entries to the sink's broker now; each is removed once
    /// Kafka acknowledged all its records.
    Replay {
        /// Give up on what is not acknowledged within this many seconds.
        #[arg(long, default_value_t = 120)]
        timeout_secs: u64,
    },
    /// Delete the entries. Without --yes, only says what would go.
    Purge {
        #[arg(long)]
        yes: bool,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { config } => match load(&config) {
            Ok(c) => {
                println!(
                    "{}: valid ({} sources, {} channels, {} sinks)",
                    config.display(),
                    c.sources.len(),
                    c.channels.len(),
                    c.sinks.len()
                );
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Run { config } => {
            let config = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            init_logging(&config);
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("tailrace: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(crate::runtime::run(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("tailrace: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Spool {
            action,
            config,
            dead_letter,
            corrupt,
            sink,
        } => {
            let Some(config) = config else {
                eprintln!("tailrace: spool needs --config FILE");
                return ExitCode::from(EXIT_CONFIG);
            };
            let config = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let tree = if dead_letter {
                SpoolTree::DeadLetter
            } else if corrupt {
                SpoolTree::Corrupt
            } else {
                SpoolTree::Pending
            };
            match spool_command(&config, action, tree, sink.as_deref()) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("tailrace: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Checkpoints { config } => {
            let config = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match print_checkpoints(&config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("tailrace: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn load(file: &Path) -> Result<Config, ExitCode> {
    config::load(file, &Registry::builtin()).map_err(|errors| {
        eprintln!("{errors}");
        eprintln!(
            "tailrace: {} error(s) in {}; nothing was started",
            errors.errors.len(),
            file.display()
        );
        ExitCode::from(EXIT_CONFIG)
    })
}

fn init_logging(config: &Config) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log.level));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match config.log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn print_checkpoints(config: &Config) -> anyhow::Result<()> {
    let store = Store::open(&config.data_dir)?;
    for source in config.sources.iter().filter(|s| s.kind == "file") {
        for (k, v) in store.load(&source.name)? {
            let Some(info) = tailrace_file::describe(&k, &v) else {
                continue;
            };
            let line = serde_json::json!({
                "source": source.name,
                "path": info.path.to_string_lossy(),
                "dev": info.dev,
                "inode": info.inode,
                "offset": info.offset,
            });
            println!("{line}");
        }
    }
    Ok(())
}

fn spool_command(
    config: &Config,
    action: SpoolAction,
    tree: SpoolTree,
    only: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let store = Arc::new(Store::open(&config.data_dir)?);
    let sinks: Vec<_> = config
        .sinks
        .iter()
        .filter(|s| only.is_none_or(|n| n == s.name))
        .collect();
    if sinks.is_empty() {
        anyhow::bail!(
            "no sink {:?} in {}",
            only.unwrap_or_default(),
            config.file.display()
        );
    }
    let mut code = ExitCode::SUCCESS;
    for sink in sinks {
        let name = sink.name.as_str();
        match action {
            SpoolAction::Stats => {
                for t in [
                    SpoolTree::Pending,
                    SpoolTree::DeadLetter,
                    SpoolTree::Corrupt,
                ] {
                    let u = store.usage(t, name);
                    println!(
                        "{}",
                        serde_json::json!({"sink": name, "tree": t.name(), "entries": u.entries, "events": u.events, "bytes": u.bytes})
                    );
                }
            }
            SpoolAction::List => {
                let mut after = None;
                loop {
                    let page = store.scan(tree, name, after, 256)?;
                    if page.is_empty() {
                        break;
                    }
                    for (id, entry) in page {
                        after = Some(id);
                        let line = match header(&entry) {
                            Ok(h) => {
                                serde_json::json!({"sink": name, "tree": tree.name(), "id": id, "created_ms": h.created_ms, "events": h.events, "bytes": entry.len(), "reason": h.reason})
                            }
                            Err(e) => {
                                serde_json::json!({"sink": name, "tree": tree.name(), "id": id, "bytes": entry.len(), "error": e.to_string()})
                            }
                        };
                        println!("{line}");
                    }
                }
            }
            SpoolAction::Replay { timeout_secs } => {
                let report = sink
                    .config
                    .replay_spool(
                        name,
                        store.clone() as Arc<dyn SpoolStore>,
                        tree,
                        Duration::from_secs(timeout_secs),
                    )
                    .map_err(|e| anyhow::anyhow!(e))?;
                println!(
                    "{}",
                    serde_json::json!({"sink": name, "tree": tree.name(), "replayed_entries": report.entries - report.failed_entries, "events": report.events, "failed_entries": report.failed_entries, "corrupt_entries": report.corrupt_entries})
                );
                if report.failed_entries > 0 {
                    code = ExitCode::FAILURE;
                }
            }
            SpoolAction::Purge { yes } => {
                if yes {
                    let gone = store.purge(tree, name)?;
                    println!(
                        "{}",
                        serde_json::json!({"sink": name, "tree": tree.name(), "purged_entries": gone.entries, "purged_events": gone.events})
                    );
                } else {
                    let u = store.usage(tree, name);
                    println!("would purge {} entries ({} events) of sink {name} from the {} tree; add --yes to do it", u.entries, u.events, tree.name());
                }
            }
        }
    }
    CheckpointStore::flush(&*store)?;
    Ok(code)
}
