//! How a file position is saved.
//!
//! Key: device and inode (16 bytes, big endian). Value: the acknowledged
//! offset, the first bytes of the file (its fingerprint, up to
//! `fingerprint_bytes`, shorter while the file is shorter) and the path it
//! was last seen at. A saved position is resumed only when the file at that
//! device and inode still starts with the saved fingerprint, so a reused
//! inode is read as the new file it is.

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

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Saved {
    pub offset: u64,
    pub fingerprint: Vec<u8>,
    pub path: PathBuf,
}

const VERSION: u8 = 1;

impl Saved {
    pub fn encode(&self) -> Vec<u8> {
        let path = self.path.as_os_str().as_bytes();
        let mut v = Vec::with_capacity(1 + 8 + 4 + self.fingerprint.len() + path.len());
        v.push(VERSION);
        v.extend_from_slice(&self.offset.to_le_bytes());
        v.extend_from_slice(&(self.fingerprint.len() as u32).to_le_bytes());
        v.extend_from_slice(&self.fingerprint);
        v.extend_from_slice(path);
        v
    }

    pub fn decode(v: &[u8]) -> Option<Saved> {
        let (&version, rest) = v.split_first()?;
        if version != VERSION || rest.len() < 12 {
            return None;
        }
        let offset = u64::from_le_bytes(rest[..8].try_into().ok()?);
        let fp_len = u32::from_le_bytes(rest[8..12].try_into().ok()?) as usize;
        let rest = &rest[12..];
        if rest.len() < fp_len {
            return None;
        }
        let path = std::ffi::OsStr::from_bytes(&rest[fp_len..]);
        Some(Saved {
            offset,
            fingerprint: rest[..fp_len].to_vec(),
            path: PathBuf::from(path),
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
            path: "/var/log/a b.log".into(),
        };
        assert_eq!(Saved::decode(&s.encode()), Some(s.clone()));
        let id = FileId { dev: 2049, ino: 99 };
        let info = describe(&id.key(), &s.encode()).unwrap();
        assert_eq!((info.dev, info.inode, info.offset), (2049, 99, 1234));
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
    }
}
