//! The load file in the other shapes the agent reads: a containerd (CRI)
//! log of the same lines, and a journal whose entries carry them as
//! `MESSAGE`, written by Debian's systemd-journal-remote. Each is made
//! once next to the load file and reused.

use std::io::{BufRead as _, BufReader, BufWriter, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context};

/// What containerd writes before each line.
const CRI_PREFIX: &[u8] = b"2026-11-21T10:00:00.123456789Z stdout F ";

/// `DIR/cri.log` next to the load file: every line as a whole CRI record.
pub fn cri_file(load: &Path) -> anyhow::Result<PathBuf> {
    let out = load.with_file_name("cri.log");
    let done = load.with_file_name("cri.complete");
    if done.exists() {
        return Ok(out);
    }
    eprintln!("writing {}", out.display());
    let mut w = BufWriter::with_capacity(1 << 22, std::fs::File::create(&out)?);
    for line in BufReader::with_capacity(1 << 22, std::fs::File::open(load)?).split(b'\n') {
        w.write_all(CRI_PREFIX)?;
        w.write_all(&line?)?;
        w.write_all(b"\n")?;
    }
    w.flush()?;
    std::fs::write(done, b"")?;
    Ok(out)
}

/// `DIR/journal/` next to the load file: one entry per line, with the
/// fields a service's entry has.
pub fn journal_dir(load: &Path) -> anyhow::Result<PathBuf> {
    let dir = load.with_file_name("journal");
    let done = load.with_file_name("journal.complete");
    if done.exists() {
        return Ok(dir);
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    eprintln!("writing a journal into {}", dir.display());
    let remote = "/lib/systemd/systemd-journal-remote";
    let mut child = Command::new(remote)
        .arg(format!("--output={}/bench.journal", dir.display()))
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot run {remote} (apt-get install systemd-journal-remote)"))?;
    {
        let mut w = BufWriter::with_capacity(1 << 22, child.stdin.take().expect("piped"));
        let lines = BufReader::with_capacity(1 << 22, std::fs::File::open(load)?).split(b'\n');
        for (i, line) in lines.enumerate() {
            let t = 1_764_000_000_000_000u64 + i as u64;
            write!(
                w,
                "__REALTIME_TIMESTAMP={t}\n__MONOTONIC_TIMESTAMP={}\n_BOOT_ID=0123456789abcdef0123456789abcdef\n_HOSTNAME=bench-host\n_SYSTEMD_UNIT=app.service\n_PID=4242\n_UID=998\nPRIORITY=6\nSYSLOG_IDENTIFIER=app\nMESSAGE=",
                i + 1
            )?;
            w.write_all(&line?)?;
            w.write_all(b"\n\n")?;
        }
        w.flush()?;
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("{remote} failed: {status}");
    }
    std::fs::write(done, b"")?;
    Ok(dir)
}
