//! The command line: `run`, `validate`, `checkpoints`, `spool`, the
//! operator's `tap`, `top` and `test` (in `ops`), and the hidden `man` and
//! `completions` that write the manual pages and shell completions from
//! these definitions.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use std::sync::Arc;
use std::time::Duration;

use tailrace_api::spool::{header, SpoolStore, SpoolTree};
use tailrace_api::CheckpointStore;
use tracing_subscriber::EnvFilter;

use crate::config::{self, Config, LogFormat};
use crate::registry::Registry;
use crate::store::repair::{self, Salvage, TreeKind};
use crate::store::{OpenError, Store};

/// Bad config or usage (EX_USAGE from sysexits.h).
pub const EXIT_CONFIG: u8 = 64;
/// The store in data_dir is damaged (EX_DATAERR): `run` refuses to start
/// on it and `store check` found damage. Restarting does not help; `store
/// repair` does.
pub const EXIT_STORE_DAMAGED: u8 = 65;
/// The store failed a write and could not be reopened for
/// `store_give_up_after_ms` (EX_IOERR): the file system under data_dir
/// needs an operator. The unit does not restart on it.
pub const EXIT_STORE_FAILED: u8 = 74;

const EXIT_STATUS: &str = "\
Exit status:
  0   success
  1   a failure after the config was accepted (see the message)
  2   the command line was refused
  64  the config was refused; nothing was started
  65  the store in data_dir is damaged (run: tailrace store check, then
      tailrace store repair)
  74  the store in data_dir failed and could not be reopened for
      store_give_up_after_ms (see the message; then tailrace store check)";

const EXIT_STATUS_ROFF: &str = r#".SH "EXIT STATUS"
.TP
0
success
.TP
1
a failure after the config was accepted (see the message)
.TP
2
the command line was refused
.TP
64
the config was refused; nothing was started
.TP
65
the store in data_dir is damaged (run: tailrace store check, then tailrace store repair)
.TP
74
the store in data_dir failed and could not be reopened for store_give_up_after_ms (see the message; then tailrace store check)
"#;

/// Tails log files into Apache Kafka and loses no line.
///
/// tailrace reads log files (following rotation), passes the lines through
/// bounded channels and produces them to Apache Kafka with acks=all and the
/// idempotent producer. A file position is saved only after Kafka
/// acknowledged every line before it; sends that fail are kept in a spool on
/// local disk and produced again. A local HTTP endpoint serves /health,
/// /ready and Prometheus /metrics.
///
/// Every command takes the YAML config with --config FILE (or from the
/// TAILRACE_CONFIG environment variable). --config may name a directory,
/// whose *.yaml files are all read in name order, and may be repeated: the
/// files are merged into one config.
#[derive(Parser, Debug)]
#[command(name = "tailrace", version, propagate_version = true, after_help = EXIT_STATUS)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The config: files and directories, merged.
#[derive(clap::Args, Debug)]
pub struct ConfigArgs {
    /// A YAML config file, or a directory of them (every *.yaml in name
    /// order); repeat to merge several.
    #[arg(
        short,
        long = "config",
        env = "TAILRACE_CONFIG",
        value_name = "FILE|DIR",
        required = true
    )]
    pub config: Vec<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the agent until SIGTERM or SIGINT.
    ///
    /// Opens the sources, channels and sinks of the config and runs until
    /// SIGTERM or SIGINT; then it delivers what is in flight within
    /// shutdown_grace_ms, saves the file positions and exits 0. A second
    /// signal during shutdown exits at once (nothing is lost: lines after the
    /// last saved position are read again at the next start). The config is
    /// checked first, as by `validate`; a refused config starts nothing and
    /// exits 64. Logs go to standard error; RUST_LOG overrides log.level.
    Run {
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Check a config file and exit: 0 when valid, 64 with every error listed.
    ///
    /// Parses and checks the config, connecting to nothing and opening none
    /// of the log files or sockets it names. A kafka sink's producer
    /// properties are checked by librdkafka's own parser, which reads the
    /// TLS files they name. Every error is printed as FILE:LINE:COLUMN:
    /// path: message, and the exit status is 64 when there is any.
    Validate {
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Connect to every sink's cluster with the real credentials and report.
    ///
    /// Validates the config first (exit 64 if refused), then, per sink:
    /// broker reachable, TLS verified, authenticated, the topic and its
    /// partitions, replication factor, min.insync.replicas and
    /// unclean.leader.election.enable, and whether the idempotent producer
    /// is allowed. Exit 0 when every sink can deliver (durability warnings
    /// included), 69 (EX_UNAVAILABLE) otherwise. Suitable for ExecStartPre.
    Check {
        #[command(flatten)]
        config: ConfigArgs,
        /// How long to wait for each answer.
        #[arg(long, default_value_t = 10, value_name = "SECONDS")]
        timeout_s: u64,
    },
    /// Print the saved position of every file, one JSON object per line.
    ///
    /// Reads the checkpoints in the config's data_dir and prints, for each
    /// file source, the path, device, inode and saved offset of every file it
    /// has read. The agent must be stopped (the store is locked while it
    /// runs).
    Checkpoints {
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Look inside the spool of failed sends, replay it, or purge it.
    ///
    /// The spool keeps, in the config's data_dir, the batches Kafka did not
    /// acknowledge; the running agent produces them again on its own. Besides
    /// the pending tree there is a dead-letter tree (records Kafka refused for
    /// good) and a corrupt tree (entries that failed their checksum). The
    /// agent must be stopped (the store is locked while it runs).
    Spool {
        #[command(subcommand)]
        action: SpoolAction,
        /// A YAML config file, or a directory of them (its data_dir and
        /// kafka sinks); repeat to merge several.
        #[arg(
            short,
            long,
            env = "TAILRACE_CONFIG",
            global = true,
            value_name = "FILE|DIR"
        )]
        config: Vec<PathBuf>,
        /// Work on the dead-letter tree (records Kafka refused for good).
        #[arg(long, global = true, conflicts_with = "corrupt")]
        dead_letter: bool,
        /// Work on the entries set aside because they failed their checksum.
        #[arg(long, global = true)]
        corrupt: bool,
        /// Only this sink (default: every kafka sink of the config).
        #[arg(long, global = true, value_name = "NAME")]
        sink: Option<String>,
    },
    /// Show what each disk channel holds.
    ///
    /// Prints one JSON line per disk channel of the config: the batches,
    /// events and payload bytes it holds unacknowledged, the bytes its
    /// segments take on disk, when its oldest unacknowledged batch was read,
    /// and the damage a start would find (torn tails, corrupt frames). It
    /// reads the channel's files and changes nothing, so it works while the
    /// agent is stopped and while it runs (a batch being written at that
    /// moment may show as a torn tail).
    Channel {
        #[command(subcommand)]
        action: ChannelAction,
    },
    /// Check the store in data_dir for damage, or repair it.
    ///
    /// The store holds the checkpoints, the spool, the dead letters and the
    /// corrupt entries. A store damaged by a power cut or a disk error makes
    /// `run` exit 65 with a message naming these commands. Neither writes
    /// to the damaged files: sled is opened on a copy. The agent must be
    /// stopped (the store is locked while it runs).
    Store {
        #[command(subcommand)]
        action: StoreAction,
    },
    Tap(crate::ops::tap::TapArgs),
    Top(crate::ops::top::TopArgs),
    Test(crate::ops::unit::TestArgs),
    /// Write the bash, zsh and fish completions into a directory (used by
    /// packaging/build).
    #[command(hide = true)]
    Completions {
        /// The directory to write tailrace.bash, _tailrace and tailrace.fish into.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Write the manual pages, generated from these definitions, into a
    /// directory (used by packaging/build).
    #[command(hide = true)]
    Man {
        /// The directory to write tailrace.1 and one page per command into.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum ChannelAction {
    /// Batches, events, bytes and the oldest unacknowledged batch of each
    /// disk channel, one JSON line each.
    ///
    /// Per disk channel of the config: "channel", "dir" (data_dir/channels/NAME),
    /// "batches", "events" and "bytes" (payload) not yet acknowledged by
    /// Kafka, "disk_bytes" (its segment files), "oldest_unacknowledged_ms"
    /// (when that batch was read, ms since the epoch; null when empty),
    /// "torn" and "corrupt" (what the next start would cut off or set
    /// aside). Reads only; safe while the agent runs.
    Stats {
        #[command(flatten)]
        config: ConfigArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum SpoolAction {
    /// Entries, events and bytes held per sink, in every tree.
    ///
    /// Prints one JSON line per sink and tree ("spool" for the pending
    /// entries, "dead", "corrupt") with its entries, events and bytes.
    Stats,
    /// One JSON line per entry: id, creation time, events, bytes, reason.
    ///
    /// Lists the entries of the pending tree, or of the tree chosen with
    /// --dead-letter or --corrupt, oldest first.
    List,
    /// Produce the entries to the sink's broker now; each is removed once
    /// Kafka acknowledged all its records.
    ///
    /// Replays the pending tree, or the tree chosen with --dead-letter or
    /// --corrupt, oldest first, to the sink's bootstrap_servers and topic.
    /// Prints one JSON summary line per sink; the exit status is 1 when an
    /// entry was not acknowledged in time (it stays in the spool).
    Replay {
        /// Give up on what is not acknowledged within this many seconds.
        #[arg(long, default_value_t = 120, value_name = "SECONDS")]
        timeout_secs: u64,
    },
    /// Delete the entries. Without --yes, only says what would go.
    ///
    /// Purges the pending tree, or the tree chosen with --dead-letter or
    /// --corrupt. The events in it are lost for good.
    Purge {
        /// Delete for real; without it nothing is deleted.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum StoreAction {
    /// Report, per tree, what is readable and what is damaged.
    ///
    /// Prints one JSON line per tree (checkpoints/SOURCE, spool/SINK,
    /// dead/SINK, corrupt/SINK) with its readable entries, its spool events,
    /// entries whose own checksum fails, and the damage, then a summary
    /// line. Exit 0 when sled found no damage, 65 when it did.
    Check {
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Copy every readable entry into a fresh store; set the damaged one aside.
    ///
    /// Copies the readable checkpoints, spool entries, dead letters and
    /// corrupt entries into a fresh store, renames the damaged one to
    /// store.damaged-<UTC time> beside it, and prints per tree what was
    /// recovered and where entries were lost. A store without damage is
    /// left as it is. Start the agent afterwards: it replays the recovered
    /// spool.
    Repair {
        #[command(flatten)]
        config: ConfigArgs,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { config } => match load(&config.config) {
            Ok(c) => {
                println!(
                    "{}: valid ({} sources, {} channels, {} sinks)",
                    c.describe(),
                    c.sources.len(),
                    c.channels.len(),
                    c.sinks.len()
                );
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Run { config } => {
            let config = match load(&config.config) {
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
                Err(e)
                    if matches!(e.downcast_ref(), Some(OpenError::Damaged { .. }))
                        || crate::store::damage_seen() =>
                {
                    tracing::error!("{e:#}");
                    eprintln!("tailrace: {e:#}");
                    ExitCode::from(EXIT_STORE_DAMAGED)
                }
                Err(e) if e.downcast_ref::<crate::store::GaveUp>().is_some() => {
                    tracing::error!("{e:#}");
                    eprintln!("tailrace: {e:#}");
                    ExitCode::from(EXIT_STORE_FAILED)
                }
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
            if config.is_empty() {
                eprintln!("tailrace: spool needs --config FILE");
                return ExitCode::from(EXIT_CONFIG);
            }
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
        Command::Store { action } => {
            let (StoreAction::Check { config } | StoreAction::Repair { config }) = &action;
            let config = match load(&config.config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match store_command(&config, action) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("tailrace: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Tap(args) => crate::ops::tap::main(args),
        Command::Top(args) => crate::ops::top::main(args),
        Command::Test(args) => crate::ops::unit::main(args),
        Command::Completions { out } => {
            match crate::ops::write_completions(&mut Cli::command(), &out) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!(
                        "tailrace: cannot write the completions into {}: {e}",
                        out.display()
                    );
                    ExitCode::FAILURE
                }
            }
        }
        Command::Man { out } => match write_man_pages(&out) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!(
                    "tailrace: cannot write the manual pages into {}: {e}",
                    out.display()
                );
                ExitCode::FAILURE
            }
        },
        Command::Check { config, timeout_s } => {
            let config = match load(&config.config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            crate::check::run(&config, std::time::Duration::from_secs(timeout_s))
        }
        Command::Channel {
            action: ChannelAction::Stats { config },
        } => {
            let config = match load(&config.config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match channel_stats(&config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("tailrace: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Checkpoints { config } => {
            let config = match load(&config.config) {
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

pub(crate) fn load(paths: &[PathBuf]) -> Result<Config, ExitCode> {
    config::load(paths, &Registry::builtin()).map_err(|errors| {
        eprintln!("{errors}");
        eprintln!(
            "tailrace: {} error(s) in {}; nothing was started",
            errors.errors.len(),
            config::describe(paths)
        );
        ExitCode::from(EXIT_CONFIG)
    })
}

/// Writes `tailrace.1` and one page per visible command (`tailrace-run.1`,
/// `tailrace-spool-stats.1`, ...) into `out`.
fn write_man_pages(out: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(out)?;
    // clap's own `help` command gets no page. Building sets the names the
    // pages use: "tailrace spool stats" in the synopsis, "tailrace-spool-stats"
    // as the page's name.
    let mut cli = Cli::command().disable_help_subcommand(true);
    cli.build();
    write_man_page(&cli, out)
}

fn write_man_page(cmd: &clap::Command, out: &Path) -> std::io::Result<()> {
    let name = cmd
        .get_display_name()
        .unwrap_or_else(|| cmd.get_name())
        .to_string();
    let man = clap_mangen::Man::new(cmd.clone())
        .title(name.to_uppercase())
        .source(format!("tailrace {}", env!("CARGO_PKG_VERSION")))
        .manual("tailrace manual");
    // Man::render, with an EXIT STATUS section on every page in place of
    // the top-level --help's after_help.
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(&mut page)?;
    }
    if cmd.get_subcommands().any(|s| !s.is_hide_set()) {
        man.render_subcommands_section(&mut page)?;
    }
    page.extend_from_slice(EXIT_STATUS_ROFF.as_bytes());
    man.render_version_section(&mut page)?;
    std::fs::write(out.join(format!("{name}.1")), page)?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_man_page(sub, out)?;
    }
    Ok(())
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

/// One JSON line per tree of a salvage, then `summary` with how it opened.
fn print_salvage(salvage: &Salvage, key: &str, mut summary: serde_json::Value) {
    let text = |k: &Option<Vec<u8>>| k.as_ref().map(|k| String::from_utf8_lossy(k).into_owned());
    for tree in &salvage.trees {
        let mut line = serde_json::json!({"tree": tree.name, key: tree.entries.len()});
        if let TreeKind::Spool(_) = tree.kind {
            line["events"] = tree.events().into();
            line["failed_checksum"] = tree.failed_checksum().into();
            line["missing_bodies"] = tree.missing_bodies.into();
        }
        match &tree.damage {
            None => line["damaged"] = false.into(),
            Some(d) => {
                line["damaged"] = true.into();
                line["error"] = d.error.clone().into();
                // Spool keys are ids; checkpoint keys are paths with an
                // identity, shown as text.
                let key_text = |k: &Option<Vec<u8>>| match tree.kind {
                    TreeKind::Spool(_) => k
                        .as_ref()
                        .and_then(|k| <[u8; 8]>::try_from(k.as_slice()).ok())
                        .map(|b| u64::from_be_bytes(b).to_string()),
                    _ => text(k),
                };
                line["lost_after_key"] = key_text(&d.after).into();
                line["lost_before_key"] = key_text(&d.before).into();
            }
        }
        println!("{line}");
    }
    summary["opened"] = salvage.opened.map(|o| o.name()).into();
    summary["open_errors"] = salvage.open_errors.clone().into();
    summary["damaged"] = salvage.is_damaged().into();
    if salvage.opened == Some(repair::Opened::LogOnly) {
        summary["lost"] =
            "what was written after the first damaged record of sled's log (sled cannot say how much)".into();
    }
    println!("{summary}");
}

fn store_command(config: &Config, action: StoreAction) -> anyhow::Result<ExitCode> {
    let data_dir = &config.data_dir;
    match action {
        StoreAction::Check { .. } => {
            let salvage = repair::check(data_dir)?;
            print_salvage(
                &salvage,
                "readable",
                serde_json::json!({"store": data_dir.join("store")}),
            );
            if salvage.is_damaged() {
                eprintln!("tailrace: the store in {} is damaged; `tailrace store repair --config FILE` copies what is readable into a fresh store", data_dir.display());
                Ok(ExitCode::from(EXIT_STORE_DAMAGED))
            } else {
                Ok(ExitCode::SUCCESS)
            }
        }
        StoreAction::Repair { .. } => {
            let repaired = repair::repair(data_dir)?;
            let summary = match &repaired.set_aside {
                Some(aside) => {
                    serde_json::json!({"store": data_dir.join("store"), "set_aside": aside})
                }
                None => {
                    serde_json::json!({"store": data_dir.join("store"), "set_aside": null, "note": "not damaged; left as it is"})
                }
            };
            print_salvage(&repaired.salvage, "recovered", summary);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `tailrace channel stats`: reads each disk channel's log without
/// changing it.
fn channel_stats(config: &Config) -> anyhow::Result<()> {
    use tailrace_api::channel_disk::{channel_dir, stats};
    for c in config.channels.iter().filter(|c| c.disk.is_some()) {
        let dir = channel_dir(&config.data_dir, &c.name);
        let (held, oldest, damage) = stats(&dir)?;
        let oldest_ms = oldest
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as u64);
        println!(
            "{}",
            serde_json::json!({
                "channel": c.name,
                "dir": dir.display().to_string(),
                "batches": held.batches,
                "events": held.events,
                "bytes": held.bytes,
                "disk_bytes": held.disk_bytes,
                "oldest_unacknowledged_ms": oldest_ms,
                "torn": damage.torn,
                "corrupt": damage.corrupt,
            })
        );
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
            config.describe()
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
                    serde_json::json!({"sink": name, "tree": tree.name(), "replayed_entries": report.entries - report.failed_entries, "events": report.events, "failed_entries": report.failed_entries, "dead_lettered_events": report.dead_lettered_events, "corrupt_entries": report.corrupt_entries})
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every visible command has a short and a long description, and every
    /// argument but clap's own --help and --version says what it is for.
    #[test]
    fn every_command_and_argument_has_help() {
        let mut cli = Cli::command();
        cli.build();
        let mut missing = Vec::new();
        check_help(&cli, &mut missing);
        assert!(missing.is_empty(), "no help text for: {missing:#?}");
    }

    fn check_help(cmd: &clap::Command, missing: &mut Vec<String>) {
        let name = cmd.get_bin_name().unwrap_or(cmd.get_name()).to_string();
        if cmd.get_about().is_none() {
            missing.push(format!("{name} (about)"));
        }
        if cmd.get_long_about().is_none() && cmd.get_subcommands().next().is_none() {
            missing.push(format!("{name} (long_about)"));
        }
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if !arg.is_hide_set() && id != "help" && id != "version" && arg.get_help().is_none() {
                missing.push(format!("{name} {id}"));
            }
        }
        for sub in cmd.get_subcommands() {
            if !sub.is_hide_set() && sub.get_name() != "help" {
                check_help(sub, missing);
            }
        }
    }

    #[test]
    fn man_pages_cover_every_visible_command() {
        let dir = tempfile::tempdir().unwrap();
        write_man_pages(dir.path()).unwrap();
        let mut pages: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        pages.sort();
        let expected = [
            "tailrace-channel-stats.1",
            "tailrace-channel.1",
            "tailrace-check.1",
            "tailrace-checkpoints.1",
            "tailrace-run.1",
            "tailrace-spool-list.1",
            "tailrace-spool-purge.1",
            "tailrace-spool-replay.1",
            "tailrace-spool-stats.1",
            "tailrace-spool.1",
            "tailrace-store-check.1",
            "tailrace-store-repair.1",
            "tailrace-store.1",
            "tailrace-tap.1",
            "tailrace-test.1",
            "tailrace-top.1",
            "tailrace-validate.1",
            "tailrace.1",
        ];
        assert_eq!(pages, expected);
        let main = std::fs::read_to_string(dir.path().join("tailrace.1")).unwrap();
        assert!(main.contains("tailrace\\-validate"), "{main}");
        assert!(main.contains(".SH \"EXIT STATUS\""), "{main}");
        assert!(
            !main.contains("tailrace\\-man"),
            "the hidden man command shows: {main}"
        );
        assert!(
            !main.contains("tailrace\\-help"),
            "clap's help command shows: {main}"
        );
    }
}
