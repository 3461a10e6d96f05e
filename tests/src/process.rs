//! Child-process plumbing shared by [`crate::Broker`] and [`crate::Agent`].

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

/// Spawns `cmd` with stdout and stderr appended to `log`. The child gets
/// SIGKILL if the thread that spawned it dies, so a test killed by the runner
/// leaves no broker or agent behind.
pub(crate) fn spawn_logged(cmd: &mut Command, log: &Path) -> Child {
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", log.display()));
    let err = out.try_clone().expect("cannot clone a log file handle");
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", cmd.get_program()))
}

pub(crate) fn signal(child: &Child, sig: libc::c_int) {
    let pid = libc::pid_t::try_from(child.id()).expect("pid fits in pid_t");
    // SAFETY: plain syscall on a pid we own and have not reaped yet.
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(
        rc,
        0,
        "kill({pid}, {sig}) failed: {}",
        std::io::Error::last_os_error()
    );
}

/// Waits for the child to exit; `None` if it is still running after `timeout`.
pub(crate) fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let mut status = None;
    let exited = crate::wait_until(timeout, || {
        status = child.try_wait().expect("waitpid failed");
        status.is_some()
    });
    exited.then(|| status.expect("status is set when the child exited"))
}

/// SIGKILLs the child unless it already exited, and reaps it.
pub(crate) fn kill_and_reap(child: &mut Child) -> ExitStatus {
    if let Some(status) = child.try_wait().expect("waitpid failed") {
        return status;
    }
    // Child::kill sends SIGKILL.
    child.kill().expect("cannot SIGKILL a child process");
    child.wait().expect("waitpid failed")
}

/// The last `n` lines of a log file, lossily decoded, for failure messages.
pub(crate) fn tail(log: &Path, n: usize) -> String {
    let bytes = std::fs::read(log).unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
