//! The command line: `run`, `validate`, `checkpoints`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
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
            let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
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
        eprintln!("tailrace: {} error(s) in {}; nothing was started", errors.errors.len(), file.display());
        ExitCode::from(EXIT_CONFIG)
    })
}

fn init_logging(config: &Config) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log.level));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match config.log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn print_checkpoints(config: &Config) -> anyhow::Result<()> {
    let store = Store::open(&config.data_dir)?;
    for source in config.sources.iter().filter(|s| s.kind == "file") {
        for (k, v) in store.load(&source.name)? {
            let Some(info) = tailrace_file::describe(&k, &v) else { continue };
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
