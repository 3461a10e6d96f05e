//! How a file position is saved.
//!
//! Key: device and inode (16 bytes, big endian). Value: the acknowledged
//! offset, the first bytes of the file (its fingerprint, up to
//! `fingerprint_bytes`, shorter while the file is shorter), the bytes just
//! before the offset (the check, up to [`CHECK_BYTES`]), its modification
//! time, the path it was read under (its origin, whose directory holds its
//! rotations) and the path it was last seen at. A saved position is resumed only when the file still starts
//! with the fingerprint and still holds the check right before the offset,
//! so a reused inode or a file truncated and written again is read as the
//! new content it is.

use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

impl FileId {
    pub fn key(&self) -> Vec<u8> {
        let mut k = Vec::with_capacity(16);
        k.extend_from_slice(&self.dev.to_be_bytes());
        k.extend_from_slice(&self.ino.to_be_bytes());
        k
    }

    pub fn from_key(k: &[u8]) -> Option<FileId> {
        if k.len() != 16 {
            return None;
        }
        Some(FileId {
            dev: u64::from_be_bytes(k[..8].try_into().ok()?),
            ino: u64::from_be_bytes(k[8..].try_into().ok()?),
        })
    }
}

/// Bytes before a saved position that must still be there to resume at it.
pub const CHECK_BYTES: usize = 256;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Saved {
    pub offset: u64,
    pub fingerprint: Vec<u8>,
    /// The bytes just before `offset` (fewer when `offset` is smaller).
    pub check: Vec<u8>,
    /// Modification time (ns since the epoch) when the position was saved.
    pub mtime: i64,
    /// The name the file was read under; rotations are named after it.
    pub origin: PathBuf,
    /// Where the file was last seen (its rotated name, once rotated).
    pub path: PathBuf,
}

/// Version 1 had no check; it is still read.
const VERSION: u8 = 2;

impl Saved {
    pub fn encode(&self) -> Vec<u8> {
        let path = self.path.as_os_str().as_bytes();
        // An origin equal to the path is stored as empty.
        let origin = match self.origin.as_os_str().as_bytes() {
            o if o == path => &[][..],
            o => o,
        };
        let mut v = Vec::with_capacity(
            1 + 8
                + 4
                + self.fingerprint.len()
                + 2
                + self.check.len()
                + 8
                + 4
                + origin.len()
                + path.len(),
        );
        v.push(VERSION);
        v.extend_from_slice(&self.offset.to_le_bytes());
        v.extend_from_slice(&(self.fingerprint.len() as u32).to_le_bytes());
        v.extend_from_slice(&self.fingerprint);
        let check = &self.check[self.check.len().saturating_sub(u16::MAX as usize)..];
        v.extend_from_slice(&(check.len() as u16).to_le_bytes());
        v.extend_from_slice(check);
        v.extend_from_slice(&self.mtime.to_le_bytes());
        v.extend_from_slice(&(origin.len() as u32).to_le_bytes());
        v.extend_from_slice(origin);
        v.extend_from_slice(path);
        v
    }

    pub fn decode(v: &[u8]) -> Option<Saved> {
        let (&version, rest) = v.split_first()?;
        if !(1..=VERSION).contains(&version) || rest.len() < 12 {
            return None;
        }
        let offset = u64::from_le_bytes(rest[..8].try_into().ok()?);
        let fp_len = u32::from_le_bytes(rest[8..12].try_into().ok()?) as usize;
        let rest = &rest[12..];
        let fingerprint = rest.get(..fp_len)?.to_vec();
        let mut rest = &rest[fp_len..];
        let (mut check, mut mtime, mut origin) = (Vec::new(), 0, None);
        if version >= 2 {
            let len = u16::from_le_bytes(rest.get(..2)?.try_into().ok()?) as usize;
            check = rest.get(2..2 + len)?.to_vec();
            rest = &rest[2 + len..];
            mtime = i64::from_le_bytes(rest.get(..8)?.try_into().ok()?);
            let len = u32::from_le_bytes(rest.get(8..12)?.try_into().ok()?) as usize;
            let o = rest.get(12..12 + len)?;
            if !o.is_empty() {
                origin = Some(PathBuf::from(std::ffi::OsStr::from_bytes(o)));
            }
            rest = &rest[12 + len..];
        }
        let path = PathBuf::from(std::ffi::OsStr::from_bytes(rest));
        Some(Saved {
            offset,
            fingerprint,
            check,
            mtime,
            origin: origin.unwrap_or_else(|| path.clone()),
            path,
        })
    }
}

/// A saved position as the `tailrace checkpoints` command shows it.
#[derive(Debug, PartialEq, Eq)]
pub struct CheckpointInfo {
    pub path: PathBuf,
    pub dev: u64,
    pub inode: u64,
    pub offset: u64,
}

/// Decodes one stored entry of a file source.
pub fn describe(key: &[u8], value: &[u8]) -> Option<CheckpointInfo> {
    let id = FileId::from_key(key)?;
    let saved = Saved::decode(value)?;
    Some(CheckpointInfo {
        path: saved.path,
        dev: id.dev,
        inode: id.ino,
        offset: saved.offset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let s = Saved {
            offset: 1234,
            fingerprint: b"2026-11-21 first line".to_vec(),
            check: b"the end of the last line\n".to_vec(),
            mtime: 1_763_719_194_123_456_789,
            origin: "/var/log/a b.log".into(),
            path: "/var/log/a b.log.1".into(),
        };
        assert_eq!(Saved::decode(&s.encode()), Some(s.clone()));
        let same = Saved {
            origin: s.path.clone(),
            ..s.clone()
        };
        assert_eq!(Saved::decode(&same.encode()), Some(same.clone()));
        let id = FileId { dev: 2049, ino: 99 };
        let info = describe(&id.key(), &s.encode()).unwrap();
        assert_eq!((info.dev, info.inode, info.offset), (2049, 99, 1234));
    }

    #[test]
    fn version_1_is_read_without_a_check() {
        let mut v = vec![1];
        v.extend_from_slice(&77u64.to_le_bytes());
        v.extend_from_slice(&3u32.to_le_bytes());
        v.extend_from_slice(b"abc/l/app.log");
        let want = Saved {
            offset: 77,
            fingerprint: b"abc".to_vec(),
            check: Vec::new(),
            mtime: 0,
            origin: "/l/app.log".into(),
            path: "/l/app.log".into(),
        };
        assert_eq!(Saved::decode(&v), Some(want));
    }

    #[test]
    fn garbage_is_refused_not_misread() {
        assert_eq!(Saved::decode(b""), None);
        assert_eq!(Saved::decode(&[9, 0, 0]), None);
        assert_eq!(
            Saved::decode(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 255, 0, 0, 0]),
            None
        );
        assert_eq!(FileId::from_key(b"short"), None);
        // version 2 with a check length beyond the value
        let mut v = vec![2];
        v.extend_from_slice(&0u64.to_le_bytes());
        v.extend_from_slice(&0u32.to_le_bytes());
        v.extend_from_slice(&9u16.to_le_bytes());
        v.extend_from_slice(b"abc");
        assert_eq!(Saved::decode(&v), None);
    }
}
