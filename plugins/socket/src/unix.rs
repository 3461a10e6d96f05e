//! Unix socket files: replacing a stale one at start, setting the mode,
//! removing ours at the end.

use std::io::ErrorKind;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use tailrace_api::BuildError;
use tracing::info;

/// Makes `path` free to bind: nothing there, or a socket file that no
/// program listens on any more (left by a crash), which is removed. A
/// socket in use, or a file that is not a socket, is an error.
pub(crate) fn claim(path: &Path, source: &str) -> Result<(), BuildError> {
    let shown = path.display();
    let md = match std::fs::symlink_metadata(path) {
        Ok(md) => md,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(BuildError(format!("cannot inspect {shown}: {e}"))),
    };
    if !md.file_type().is_socket() {
        return Err(BuildError(format!(
            "{shown} exists and is not a socket; remove it or choose another address"
        )));
    }
    match UnixStream::connect(path) {
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
            std::fs::remove_file(path)
                .map_err(|e| BuildError(format!("cannot remove the stale socket {shown}: {e}")))?;
            info!(source, path = %shown, "removed a stale socket file left by an earlier run");
            Ok(())
        }
        // EPROTOTYPE: a datagram socket is bound there.
        Ok(_) => Err(in_use(path)),
        Err(e) if e.raw_os_error() == Some(libc::EPROTOTYPE) => Err(in_use(path)),
        Err(e) => Err(BuildError(format!(
            "cannot check whether {shown} is in use: {e}"
        ))),
    }
}

fn in_use(path: &Path) -> BuildError {
    BuildError(format!(
        "{} is in use by a running program (another tailrace, or the system logger?)",
        path.display()
    ))
}

/// A socket file this source bound; removed when dropped, unless another
/// file took its place meanwhile.
#[derive(Debug)]
pub(crate) struct SocketFile {
    path: PathBuf,
    inode: u64,
}

impl SocketFile {
    /// Records the file just bound at `path` and sets its mode.
    pub(crate) fn bound(path: &Path, mode: Option<u32>) -> Result<SocketFile, BuildError> {
        if let Some(mode) = mode {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|e| {
                BuildError(format!(
                    "cannot set mode {mode:o} on {}: {e}",
                    path.display()
                ))
            })?;
        }
        let inode = std::fs::symlink_metadata(path)
            .map_err(|e| BuildError(format!("cannot inspect {}: {e}", path.display())))?
            .ino();
        Ok(SocketFile {
            path: path.to_path_buf(),
            inode,
        })
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if std::fs::symlink_metadata(&self.path).is_ok_and(|md| md.ino() == self.inode) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}
