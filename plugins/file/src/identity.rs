//! Recognising a file: by device and inode, by its first bytes (the
//! fingerprint), by the bytes just before a position (the check), and
//! finding it again among its rotated siblings.
//!
//! Everything here is called when a file is opened, found changed or found
//! moved, never per line.

use std::ffi::OsStr;
use std::fs::{File, Metadata};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::checkpoint::{FileId, CHECK_BYTES};

impl FileId {
    pub fn of(md: &Metadata) -> FileId {
        FileId {
            dev: md.dev(),
            ino: md.ino(),
        }
    }
}

/// The stream identity of a file's records (see `BatchMeta::stream`): its
/// device, inode and first line (the fingerprint up to its first newline),
/// so that an inode reused by a new file is another stream. The first line
/// does not change once written, and no line is sent before it is
/// complete, so the identity is the same each time the file is read.
/// FNV-1a: stable across builds and machines, unlike std's hasher.
pub fn stream_id(id: FileId, fingerprint: &[u8]) -> u64 {
    let first_line = match memchr::memchr(b'\n', fingerprint) {
        Some(end) => &fingerprint[..end],
        None => fingerprint,
    };
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let words = [id.dev.to_le_bytes(), id.ino.to_le_bytes()];
    for b in words.iter().flatten().chain(first_line) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Modification time in nanoseconds, for ordering rotated files.
pub fn mtime_ns(md: &Metadata) -> i128 {
    md.mtime() as i128 * 1_000_000_000 + md.mtime_nsec() as i128
}

/// The last bytes seen before a position, kept without allocating.
#[derive(Clone, Copy)]
pub struct Tail {
    len: usize,
    bytes: [u8; CHECK_BYTES],
}

impl Default for Tail {
    fn default() -> Tail {
        Tail {
            len: 0,
            bytes: [0; CHECK_BYTES],
        }
    }
}

impl std::fmt::Debug for Tail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tail({:?})", self.as_slice().escape_ascii().to_string())
    }
}

impl Tail {
    pub fn from_slice(data: &[u8]) -> Tail {
        let mut t = Tail::default();
        t.push(data);
        t
    }

    /// Appends `data`, keeping the last [`CHECK_BYTES`].
    pub fn push(&mut self, data: &[u8]) {
        if data.len() >= CHECK_BYTES {
            self.bytes
                .copy_from_slice(&data[data.len() - CHECK_BYTES..]);
            self.len = CHECK_BYTES;
            return;
        }
        let keep = (CHECK_BYTES - data.len()).min(self.len);
        self.bytes.copy_within(self.len - keep..self.len, 0);
        self.bytes[keep..keep + data.len()].copy_from_slice(data);
        self.len = keep + data.len();
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }
}

/// A descriptor read at offsets: a real file, or the model test's fake.
pub trait ReadAt {
    /// Reads into `buf` at `offset`; 0 at the end of the file.
    fn pread(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;

    /// Fills `buf` from `offset`; `UnexpectedEof` if the file is shorter.
    fn pread_exact(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut got = 0;
        while got < buf.len() {
            match self.pread(&mut buf[got..], offset + got as u64) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl ReadAt for File {
    fn pread(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        FileExt::read_at(self, buf, offset)
    }

    fn pread_exact(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }
}

/// Reads up to `len` bytes at `offset`; fewer only at the end of the file.
pub fn read_at(file: &impl ReadAt, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0; len];
    let mut got = 0;
    while got < len {
        match file.pread(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    buf.truncate(got);
    Ok(buf)
}

/// The bytes just before `end` (up to [`CHECK_BYTES`]); read once per
/// chunk, so without allocating. `UnexpectedEof` if the file is shorter.
pub fn check_before(file: &impl ReadAt, end: u64) -> io::Result<Tail> {
    let len = (CHECK_BYTES as u64).min(end) as usize;
    let mut tail = Tail::default();
    file.pread_exact(&mut tail.bytes[..len], end - len as u64)?;
    tail.len = len;
    Ok(tail)
}

/// Whether `file` (of `size` bytes) still starts with `fingerprint` and
/// still holds `check` just before `offset`: the content a position was
/// saved for.
pub fn holds(file: &impl ReadAt, size: u64, fingerprint: &[u8], check: &[u8], offset: u64) -> bool {
    if size < offset || size < fingerprint.len() as u64 || (check.len() as u64) > offset {
        return false;
    }
    let first = read_at(file, 0, fingerprint.len());
    if first.as_deref().ok() != Some(fingerprint) {
        return false;
    }
    if check.is_empty() {
        return true;
    }
    let before = read_at(file, offset - check.len() as u64, check.len());
    before.as_deref().ok() == Some(check)
}

/// A file next to a tracked one whose name says it is a rotation of it.
#[derive(Debug, Clone)]
pub struct Sibling {
    pub path: PathBuf,
    pub id: FileId,
    pub size: u64,
    pub mtime: i128,
}

const COMPRESSED: [&str; 9] = [
    ".gz", ".bz2", ".xz", ".zst", ".lz4", ".lzma", ".Z", ".zip", ".br",
];

/// Whether `candidate` is named like a rotation of `name`: the name followed
/// by `.`, `-` or `_` and a digit (`app.log.1`, `app.log-20261121`), or with
/// the rotation inserted before the extension (`app-20261121.log`, as
/// logrotate's `extension` makes it). Compressed files are not: they cannot
/// be read as they are.
pub fn is_rotation_of(name: &OsStr, candidate: &OsStr) -> bool {
    let (name, cand) = (name.as_bytes(), candidate.as_bytes());
    if cand == name || COMPRESSED.iter().any(|c| cand.ends_with(c.as_bytes())) {
        return false;
    }
    let follows = |prefix: &[u8], rest: &[u8]| -> bool {
        rest.len() > prefix.len() + 1
            && rest.starts_with(prefix)
            && matches!(rest[prefix.len()], b'.' | b'-' | b'_')
            && rest[prefix.len() + 1].is_ascii_digit()
    };
    if follows(name, cand) {
        return true;
    }
    match name.iter().rposition(|&b| b == b'.') {
        Some(dot) if dot > 0 => {
            let (stem, ext) = name.split_at(dot);
            cand.ends_with(ext) && follows(stem, &cand[..cand.len() - ext.len()])
        }
        _ => false,
    }
}

/// The regular files in the directory of `path` named like its rotations.
pub fn siblings(path: &Path) -> Vec<Sibling> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        if !is_rotation_of(name, &entry.file_name()) {
            continue;
        }
        let path = entry.path();
        let Ok(md) = std::fs::metadata(&path) else {
            continue;
        };
        if md.is_file() {
            found.push(Sibling {
                id: FileId::of(&md),
                size: md.len(),
                mtime: mtime_ns(&md),
                path,
            });
        }
    }
    found.sort_by(|a, b| a.path.cmp(&b.path));
    found
}

/// Where an open descriptor's file is named now (it may have been renamed);
/// `None` if it has no name any more.
pub fn current_path(file: &File) -> Option<PathBuf> {
    use std::os::fd::AsRawFd;
    let link = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).ok()?;
    if link.as_os_str().as_bytes().ends_with(b" (deleted)") {
        return None;
    }
    Some(link)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_names() {
        let check = |name: &str, cand: &str, want: bool| {
            assert_eq!(
                is_rotation_of(OsStr::new(name), OsStr::new(cand)),
                want,
                "{name} / {cand}"
            );
        };
        check("app.log", "app.log.1", true);
        check("app.log", "app.log.12", true);
        check("app.log", "app.log-20261121", true);
        check("app.log", "app.log-20261121-1763719194", true);
        check("app.log", "app.log_3", true);
        check("app.log", "app-20261121.log", true);
        check("app.log", "app.1.log", true);
        check("app", "app.1", true);
        check("app.log", "app.log", false);
        check("app.log", "app.log.1.gz", false);
        check("app.log", "app-20261121.log.gz", false);
        check("app.log", "app.log.bak", false);
        check("app.log", "app.log.lock", false);
        check("app.log", "app-debug.log", false);
        check("app.log", "other.log.1", false);
        check("app.log", "app.log.", false);
        check("app.log", "application.log.1", false);
    }

    #[test]
    fn tail_keeps_the_last_bytes() {
        let mut t = Tail::default();
        t.push(b"abc");
        t.push(b"def");
        assert_eq!(t.as_slice(), b"abcdef");
        let long: Vec<u8> = (0..CHECK_BYTES + 10).map(|i| i as u8).collect();
        t.push(&long);
        assert_eq!(t.as_slice(), &long[10..]);
        t.push(b"xy");
        assert_eq!(&t.as_slice()[CHECK_BYTES - 2..], b"xy");
        assert_eq!(t.as_slice()[0], long[12]);
        assert_eq!(t.as_slice().len(), CHECK_BYTES);
    }

    #[test]
    fn holds_checks_the_start_and_the_bytes_before_the_position() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"header\nline one\nline two\n").unwrap();
        let f = File::open(&p).unwrap();
        let size = 25;
        assert!(holds(&f, size, b"header", b"one\n", 16));
        assert!(holds(&f, size, b"", b"", 0));
        assert!(!holds(&f, size, b"HEADER", b"one\n", 16));
        assert!(!holds(&f, size, b"header", b"two\n", 16));
        assert!(!holds(&f, size, b"header", b"", 26), "beyond the end");
        assert!(!holds(&f, size, b"header", b"0123456789abcdefghij", 16));
        assert_eq!(
            check_before(&f, 16).unwrap().as_slice(),
            b"header\nline one\n"
        );
        assert!(check_before(&f, 40).is_err());
    }

    #[test]
    fn siblings_are_the_rotations_in_the_same_directory() {
        let dir = tempfile::tempdir().unwrap();
        for f in [
            "app.log",
            "app.log.1",
            "app.log.2.gz",
            "app.log-20261121",
            "other.log.1",
        ] {
            std::fs::write(dir.path().join(f), f).unwrap();
        }
        std::fs::create_dir(dir.path().join("app.log.3")).unwrap();
        let names: Vec<String> = siblings(&dir.path().join("app.log"))
            .iter()
            .map(|s| s.path.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["app.log-20261121", "app.log.1"]);
    }

    #[test]
    fn current_path_follows_a_rename() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.log");
        std::fs::write(&a, b"x").unwrap();
        let f = File::open(&a).unwrap();
        let b = dir.path().join("a.log.1");
        std::fs::rename(&a, &b).unwrap();
        assert_eq!(current_path(&f), Some(b.clone()));
        std::fs::remove_file(&b).unwrap();
        assert_eq!(current_path(&f), None);
    }
}
