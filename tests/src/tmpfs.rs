//! [`Tmpfs`]: a small file system of its own for a test's data_dir, so the
//! test can fill it (the tests run as root, which `mount` needs).

use std::path::{Path, PathBuf};

/// A tmpfs of a given size mounted on a directory for one test, unmounted
/// (lazily) on drop.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Creates `dir` and mounts a tmpfs of `size` (`24m`) on it.
    pub fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("mount runs");
        assert!(
            status.success(),
            "cannot mount a tmpfs on {} (root needed)",
            dir.display()
        );
        Tmpfs(dir.to_path_buf())
    }

    /// Bytes free on it.
    pub fn free(&self) -> u64 {
        let out = std::process::Command::new("df")
            .args(["-B1", "--output=avail"])
            .arg(&self.0)
            .output()
            .expect("df runs");
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .expect("df's avail")
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}
