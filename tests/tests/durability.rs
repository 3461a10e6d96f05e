//! Durability of the store (issue 16): a flush that acknowledges is on the
//! platter (seen with strace), and a store that never recovers ends the
//! agent with a status of its own, losing nothing.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tailrace_e2e::{
    free_port, logged_events, run_tailrace, tailrace_bin, wait_until, Agent, Broker, Config,
    Consumer, SeqLines, LINE_LEN,
};

const TOPIC: &str = "logs";
const LINES: u64 = 20_000;

/// `Config::file_to_kafka` with a 3 s delivery timeout, so an absent
/// broker makes the sink spool soon.
fn config(dir: &Path, bootstrap: &str) -> Config {
    Config::file_to_kafka(dir, bootstrap, TOPIC)
        .edit_sink("kafka", |k| k.delivery_timeout_ms(3_000))
}

fn read(path: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}

/// `tailrace run` under `strace -f`, which writes the syscalls named in
/// `trace` with the paths of their descriptors (`-y`) to `trace_log`.
struct Traced {
    strace: Child,
    log: PathBuf,
}

impl Traced {
    fn start(config: &Path, log: &Path, trace_log: &Path, trace: &str) -> Traced {
        let out = File::create(log).unwrap();
        let strace = Command::new("strace")
            .args(["-f", "-qq", "-y", "-s", "200", "--seccomp-bpf", "-e"])
            .arg(format!("trace={trace}"))
            .arg("-o")
            .arg(trace_log)
            .arg(tailrace_bin())
            .arg("run")
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("cannot start strace (apt-get install strace)");
        Traced {
            strace,
            log: log.to_path_buf(),
        }
    }

    /// The agent: strace's only child.
    fn agent_pid(&self) -> libc::pid_t {
        let children = format!("/proc/{0}/task/{0}/children", self.strace.id());
        let mut pid = None;
        assert!(
            wait_until(Duration::from_secs(10), || {
                pid = read(Path::new(&children))
                    .split_whitespace()
                    .next()
                    .and_then(|p| p.parse().ok());
                pid.is_some()
            }),
            "strace started no agent"
        );
        pid.unwrap()
    }

    /// SIGTERM to the agent (strace blocks it for itself); strace exits
    /// with the agent's status.
    fn stop(mut self) -> Option<i32> {
        // SAFETY: a plain syscall on our grandchild, not yet reaped.
        assert_eq!(unsafe { libc::kill(self.agent_pid(), libc::SIGTERM) }, 0);
        let mut status = None;
        assert!(
            wait_until(Duration::from_secs(30), || {
                status = self.strace.try_wait().unwrap();
                status.is_some()
            }),
            "the agent did not stop within 30 s of SIGTERM"
        );
        status.unwrap().code()
    }
}

impl Drop for Traced {
    fn drop(&mut self) {
        if self.strace.try_wait().ok().flatten().is_none() {
            if let Ok(text) = std::fs::read_to_string(&self.log) {
                eprintln!("agent log:\n{text}");
            }
            let _ = self.strace.kill();
            let _ = self.strace.wait();
        }
    }
}

/// Lines of hex digits that lz4 cannot shrink much, so that spool entries
/// of them are large (in sled, over its blob threshold of about 128 KiB,
/// they went to blob files it never syncs; their bodies are now in the
/// store's own segment files).
const NOISE_LINES: u64 = 20_000;

fn write_noise(path: &Path, lines: u64) {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut text = String::new();
    for _ in 0..lines {
        for _ in 0..99 {
            // xorshift64
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            text.push(char::from(b"0123456789abcdef"[(x & 15) as usize]));
        }
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

/// One syscall of an strace log: the thread, the call, its first argument
/// (with `-y`, a descriptor's path in `<...>`).
struct Call<'a> {
    tid: u32,
    name: &'a str,
    args: &'a str,
}

fn calls(trace: &str) -> Vec<Call<'_>> {
    trace
        .lines()
        .filter_map(|l| {
            let (tid, rest) = l.split_once(' ')?;
            let (name, args) = rest.trim_start().split_once('(')?;
            // "<... fdatasync resumed>": counted where it began.
            (!name.starts_with('<')).then_some(Call {
                tid: tid.parse().ok()?,
                name,
                args,
            })
        })
        .collect()
}

/// Thread ids by the names threads gave themselves (`prctl(PR_SET_NAME)`).
fn threads(calls: &[Call]) -> HashMap<String, u32> {
    calls
        .iter()
        .filter(|c| c.name == "prctl" && c.args.starts_with("PR_SET_NAME"))
        .filter_map(|c| Some((c.args.split('"').nth(1)?.to_owned(), c.tid)))
        .collect()
}

fn is_sync_in(c: &Call, store: &str) -> bool {
    matches!(c.name, "fsync" | "fdatasync") && c.args.contains(store)
}

/// Issue 16: sled's flush is `sync_file_range`, not fsync, so a power cut
/// could take back spool entries whose sources were acknowledged and
/// positions saved after them. Under strace: the sink's thread syncs a
/// file of the store before each "events spooled" it logs (the lines are
/// counted as spooled, and acknowledged, only after their flush), every
/// segment file that holds the entries' bodies was synced, and the file
/// source's thread syncs the store when it saves its positions.
#[test]
fn spooled_lines_and_saved_positions_are_fsynced_before_they_count() {
    let dir = tempfile::tempdir().unwrap();
    let mut lines = SeqLines::create(dir.path().join("logs/app.log"));
    lines.append(LINES);
    write_noise(&dir.path().join("logs/noise.log"), NOISE_LINES);
    let config_path = dir.path().join("tailrace.yaml");
    let bootstrap = format!("127.0.0.1:{}", free_port());
    let admin = format!("127.0.0.1:{}", free_port());
    std::fs::write(
        &config_path,
        config(dir.path(), &bootstrap)
            .admin_address(&admin)
            .to_yaml(),
    )
    .unwrap();
    let log = dir.path().join("agent.log");
    let trace_log = dir.path().join("strace.log");
    let agent = Traced::start(
        &config_path,
        &log,
        &trace_log,
        "fsync,fdatasync,sync_file_range,prctl,write",
    );
    let all_spooled = wait_until(Duration::from_secs(60), || {
        logged_events(&read(&log), "events spooled") >= LINES + NOISE_LINES
    });
    assert!(all_spooled, "not every line was spooled:\n{}", read(&log));
    assert_eq!(agent.stop(), Some(0), "exit status after SIGTERM");

    let saved = run_tailrace(["checkpoints", "--config", config_path.to_str().unwrap()]);
    let saved = String::from_utf8_lossy(&saved.stdout).into_owned();
    let offset = saved
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["path"].as_str() == lines.path().to_str())
        .find_map(|v| v["offset"].as_u64());
    assert_eq!(
        offset,
        Some(std::fs::metadata(lines.path()).unwrap().len()),
        "the position moved to the end of the spooled file: {saved}"
    );

    let trace = read(&trace_log);
    let calls = calls(&trace);
    let threads = threads(&calls);
    let store = format!("{}/data/store/", dir.path().display());
    let (Some(&sink), Some(&source)) = (threads.get("kafka-kafka"), threads.get("file-app")) else {
        panic!("no sink or file source thread among {threads:?}");
    };
    // In the sink's thread: each "events spooled" after a sync since the
    // one before it.
    let mut synced = false;
    let mut spooled_logs = 0;
    for c in calls.iter().filter(|c| c.tid == sink) {
        if is_sync_in(c, &store) {
            synced = true;
        } else if c.name == "write" && c.args.contains("events spooled") {
            assert!(
                synced,
                "the sink counted lines as spooled with no fsync or fdatasync of {store} since the last time"
            );
            synced = false;
            spooled_logs += 1;
        }
    }
    assert!(
        spooled_logs > 0,
        "no \"events spooled\" write in the strace log of the sink's thread"
    );
    // The entries' bodies are in segment files of their own (sled keeps
    // only references): each one left must have been synced.
    let segments: Vec<String> = std::fs::read_dir(dir.path().join("data/store/bodies"))
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .filter(|p| p.ends_with(".seg"))
        .collect();
    assert!(
        !segments.is_empty(),
        "no segment file holds the spool's bodies"
    );
    for segment in &segments {
        assert!(
            calls
                .iter()
                .any(|c| c.name == "fdatasync" && c.args.contains(&format!("<{segment}>"))),
            "the spool's segment file {segment} was never synced"
        );
    }
    let source_syncs = calls
        .iter()
        .filter(|c| c.tid == source && is_sync_in(c, &store))
        .count();
    assert!(
        source_syncs > 0,
        "the file source saved its positions without syncing {store}"
    );
}

/// Issue 16: a store whose every reopen fails was reopened for ever. Given
/// up on after `store_give_up_after_ms`, the agent stops with exit 74 and
/// says what to do; started again on a store that works, it reads on from
/// the positions it had saved: every line arrives, every line after the
/// saved position is read again, and none below it twice.
#[test]
fn a_store_that_never_reopens_exits_74_and_the_next_start_loses_nothing() {
    let broker = Broker::start();
    broker.create_topic(TOPIC, 1);
    let dir = tempfile::tempdir().unwrap();
    let yaml = config(dir.path(), &broker.bootstrap())
        .set("store_give_up_after_ms", 2_000)
        .to_yaml();
    // Lines keep coming, so positions keep being saved: the write after
    // the first two saves (and their flushes) fails, and so does every
    // reopen.
    let writer = SeqLines::create(dir.path().join("logs/app.log")).spawn_writer(
        250,
        Duration::from_millis(50),
        LINES,
    );
    let mut agent = Agent::start_with_env(
        dir.path(),
        &yaml,
        &[
            ("TAILRACE_FAULT_STORE_WRITE_FAILURE_AFTER", "4"),
            ("TAILRACE_FAULT_STORE_REOPEN_FAILURES", "1000000"),
        ],
    );
    let status = agent.wait_exit(Duration::from_secs(60));
    let lines = writer.stop();
    assert_eq!(status.code(), Some(74), "{}", agent.log_tail(30));
    let log = agent.log();
    let data_dir = dir.path().join("data").display().to_string();
    for expected in [
        "a store write failed",
        "giving up",
        "tailrace store check --config FILE",
        "tailrace store repair --config FILE",
        data_dir.as_str(),
    ] {
        assert!(
            log.contains(expected),
            "no {expected:?} in the log:\n{}",
            agent.log_tail(30)
        );
    }
    let saved = agent
        .checkpoints()
        .first()
        .map_or(0, |c| c.offset / LINE_LEN as u64);
    assert!(saved > 0, "the first saves worked");

    let mut consumer = Consumer::new(&broker.bootstrap(), TOPIC);
    let before = consumer.read_for(Duration::from_secs(2)).len();
    agent.clear_env();
    agent.restart();
    let read_again = |records: &[tailrace_e2e::Record]| {
        let again = lines.count(records[before..].iter().map(|r| &r.payload));
        (saved..lines.written()).all(|seq| !again.missing.contains(&seq))
    };
    consumer.read_until(Duration::from_secs(120), |r| read_again(r));
    let report = lines.count(consumer.records().iter().map(|r| &r.payload));
    println!(
        "saved position: line {saved} of {}; {report}",
        lines.written()
    );
    assert!(report.is_complete(), "{report}");
    assert!(
        read_again(consumer.records()),
        "the lines after the saved position {saved} were not read again: {report}"
    );
    assert!(
        report.duplicated.iter().all(|&seq| seq >= saved),
        "a line below the saved position {saved} arrived twice: {report}"
    );
    agent.terminate();
    assert_eq!(agent.wait_exit(Duration::from_secs(30)).code(), Some(0));
}

/// Issue 16: a store the file system refuses at start (here `data_dir/store`
/// is a file, which sled cannot make its directory) exited 1, and the unit
/// restarted it every 5 s for ever. It is tried again with backoff: once
/// the cause is gone the agent starts; never gone, it exits 74 after
/// `store_give_up_after_ms`.
#[test]
fn a_store_refused_at_start_is_tried_again_then_given_up_with_74() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("data/store");
    std::fs::create_dir_all(blocker.parent().unwrap()).unwrap();
    std::fs::write(&blocker, b"not a directory").unwrap();
    let yaml = |give_up_ms: u64| {
        config(dir.path(), &format!("127.0.0.1:{}", free_port()))
            .set("store_give_up_after_ms", give_up_ms)
            .to_yaml()
    };
    let mut agent = Agent::start(dir.path(), &yaml(60_000));
    let tried_again = wait_until(Duration::from_secs(30), || {
        agent
            .log()
            .matches("cannot open the store; trying again")
            .count()
            >= 2
    });
    assert!(tried_again, "{}", agent.log_tail(20));
    std::fs::remove_file(&blocker).unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || agent
            .log()
            .contains("tailrace starting")),
        "the agent did not start once the store could be opened:\n{}",
        agent.log_tail(20)
    );
    agent.terminate();
    assert_eq!(agent.wait_exit(Duration::from_secs(30)).code(), Some(0));

    std::fs::remove_dir_all(&blocker).unwrap();
    std::fs::write(&blocker, b"not a directory").unwrap();
    let first_run = agent.log().len();
    let mut agent = Agent::start(dir.path(), &yaml(2_000));
    let status = agent.wait_exit(Duration::from_secs(60));
    assert_eq!(status.code(), Some(74), "{}", agent.log_tail(20));
    let log = agent.log()[first_run..].to_string();
    assert!(
        log.contains("giving up") && log.contains("tailrace store check --config FILE"),
        "{}",
        agent.log_tail(20)
    );
}
