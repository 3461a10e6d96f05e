//! The operator's commands beside `run`: `tap` and `top` (clients of the
//! running agent's admin endpoint), `test` (unit tests of a config, without
//! a broker) and the hidden `completions`.
//!
//! They only read: none of them changes the running agent, and none opens
//! the store.

pub mod tap;
pub mod top;
pub mod unit;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use crate::config::Config;

/// The admin endpoint's address from a config, or why there is none.
pub fn admin_address(config: &Config) -> anyhow::Result<String> {
    if !config.admin.enabled {
        anyhow::bail!(
            "the admin endpoint is disabled in {} (admin.enabled: false)",
            config.describe()
        );
    }
    Ok(config.admin.address.clone())
}

/// Sends `GET path` (HTTP/1.0, so the body ends when the connection does)
/// and returns the status and the reader positioned at the body.
pub fn get(address: &str, path: &str) -> anyhow::Result<(u16, BufReader<TcpStream>)> {
    let stream = TcpStream::connect(address).map_err(|e| {
        anyhow::anyhow!("cannot reach the agent's admin endpoint at {address}: {e} (is `tailrace run` running with this config?)")
    })?;
    stream.set_read_timeout(None)?;
    (&stream).write_all(format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").as_bytes())?;
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line)?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("{address} did not answer HTTP: {status_line:?}"))?;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header == "\r\n" || header == "\n" {
            break;
        }
    }
    Ok((status, reader))
}

/// `GET path` and the whole body, within `timeout`.
pub fn get_text(address: &str, path: &str, timeout: Duration) -> anyhow::Result<(u16, String)> {
    let (status, mut reader) = get(address, path)?;
    reader.get_ref().set_read_timeout(Some(timeout))?;
    let mut body = String::new();
    reader.read_to_string(&mut body)?;
    Ok((status, body))
}

/// Writes the bash, zsh and fish completions of `cmd` into `out`.
pub fn write_completions(cmd: &mut clap::Command, out: &Path) -> std::io::Result<()> {
    use clap_complete::Shell;
    std::fs::create_dir_all(out)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, cmd, "tailrace", out)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn completions_for_bash_zsh_and_fish_name_the_operator_commands() {
        let dir = tempfile::tempdir().unwrap();
        super::write_completions(&mut crate::cli::Cli::command(), dir.path()).unwrap();
        for (file, marker) in [
            ("tailrace.bash", "complete -F _tailrace"),
            ("_tailrace", "#compdef tailrace"),
            ("tailrace.fish", "complete -c tailrace"),
        ] {
            let text = std::fs::read_to_string(dir.path().join(file)).unwrap();
            assert!(text.contains(marker), "{file}");
            for cmd in ["run", "validate", "tap", "top", "test"] {
                assert!(text.contains(cmd), "{file} lacks {cmd}");
            }
        }
    }
}
