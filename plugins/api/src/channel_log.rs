//! The disk channel's storage: an append-only log of batches in segment
//! files, with a small cursor file.
//!
//! Each batch is one frame; its body is a spool entry ([`crate::spool`]:
//! LZ4, CRC-32), so the channel reuses the spool's encoding and its
//! checksum. Frames are numbered by a sequence that runs on across
//! segments; a segment is named by its first sequence number.
//!
//! ```text
//! segment: magic "TRCHSEG1" | frame*
//! frame:   len u32 | seq u64 | events u32 | payload_bytes u32
//!          | crc32 of those u32 | spool entry (len bytes)
//! cursor:  first unacknowledged seq u64 | crc32 u32
//! ```
//!
//! A whole segment is deleted once every batch in it is released (the sink
//! had it acknowledged); the cursor (written atomically, by rename) says
//! where the unreleased ones begin, so a restart repeats at most what was
//! released since its last write. Damage is never a crash: a frame header
//! that does not check at the end of the last segment is a torn write (the
//! tail is cut off and counted); elsewhere the rest of the segment is
//! unreadable, counted, and the segment is set aside (renamed
//! `*.seg.corrupt`) once the rest of it is released; a body whose checksum
//! fails is counted, skipped, and sets its segment aside the same way.
//! At most [`MAX_CORRUPT_SEGMENTS`] set-aside segments are kept (the
//! oldest, by sequence, are deleted first, and counted), so damage that
//! repeats cannot fill the disk.
//!
//! The log does I/O but holds no thread and no lock: the disk channel
//! ([`crate::channel_disk`]) drives it.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

const SEGMENT_MAGIC: &[u8; 8] = b"TRCHSEG1";
const FRAME_HEADER: u64 = 24;
/// No batch is this large; a length above it is damage.
const MAX_FRAME: u32 = 1 << 30;
const CURSOR: &str = "cursor";
/// Set-aside (`*.seg.corrupt`) segments kept for a look; each is at most
/// one segment (64 MiB) and a frame.
pub const MAX_CORRUPT_SEGMENTS: usize = 4;
const CORRUPT_SUFFIX: &str = ".seg.corrupt";

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("cannot create disk channel directory {path}: {source} (data_dir must be a directory the agent's user can write)")]
    Create { path: PathBuf, source: io::Error },
    #[error("cannot read disk channel directory {path}: {source}")]
    List { path: PathBuf, source: io::Error },
    #[error("cannot open segment {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("cannot write to segment {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

/// Whether [`SegmentLog::open`] may repair what it finds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The channel's owner: cuts torn tails, sets damaged segments aside,
    /// deletes released ones, appends.
    Owner,
    /// A reader beside the owner or of a stopped agent (`tailrace channel
    /// stats`): changes nothing.
    Inspect,
}

/// What opening found wrong.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Damage {
    /// Half-written frames cut off the end of the last segment.
    pub torn: u64,
    /// Unreadable frames or segment tails elsewhere.
    pub corrupt: u64,
}

/// What the log holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Held {
    pub batches: u64,
    pub events: u64,
    /// Payload bytes (what the memory channel counts).
    pub bytes: u64,
    /// Segment bytes on disk.
    pub disk_bytes: u64,
}

#[derive(Clone, Copy, Debug)]
struct Frame {
    segment: u64,
    offset: u64,
    len: u32,
    events: u32,
    payload_bytes: u64,
}

struct Segment {
    path: PathBuf,
    file: File,
    len: u64,
    live: u64,
    damaged: bool,
}

pub struct SegmentLog {
    dir: PathBuf,
    mode: Mode,
    segment_bytes: u64,
    segments: BTreeMap<u64, Segment>,
    /// Unreleased frames by sequence number.
    frames: BTreeMap<u64, Frame>,
    next_seq: u64,
    /// The segment appended to, if it takes more.
    active: Option<u64>,
    held: Held,
    cursor_written: u64,
    buf: Vec<u8>,
    /// Set-aside segments deleted to stay within [`MAX_CORRUPT_SEGMENTS`]
    /// and not yet taken: (files, bytes).
    corrupt_deleted: (u64, u64),
}

/// A frame's header: what reopening needs without reading the body.
fn frame_header(
    len: u32,
    seq: u64,
    events: u32,
    payload_bytes: u32,
) -> [u8; FRAME_HEADER as usize] {
    let mut h = [0u8; FRAME_HEADER as usize];
    h[0..4].copy_from_slice(&len.to_le_bytes());
    h[4..12].copy_from_slice(&seq.to_le_bytes());
    h[12..16].copy_from_slice(&events.to_le_bytes());
    h[16..20].copy_from_slice(&payload_bytes.to_le_bytes());
    let crc = crc32fast::hash(&h[..20]);
    h[20..24].copy_from_slice(&crc.to_le_bytes());
    h
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

pub(crate) fn segment_name(first: u64) -> String {
    format!("{first:020}.seg")
}

impl SegmentLog {
    /// Opens (or, as [`Mode::Owner`], creates) the log in `dir`: reads the
    /// cursor, scans every segment's frame headers, and returns what is
    /// unreleased, in order, with what was found damaged.
    pub fn open(
        dir: &Path,
        segment_bytes: u64,
        mode: Mode,
    ) -> Result<(SegmentLog, Damage), LogError> {
        if mode == Mode::Owner {
            fs::create_dir_all(dir).map_err(|source| LogError::Create {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let cursor = read_cursor(dir);
        let mut firsts: Vec<u64> = match fs::read_dir(dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name();
                    let name = name.to_str()?;
                    name.strip_suffix(".seg")?.parse().ok()
                })
                .collect(),
            Err(e) if mode == Mode::Inspect && e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(source) => {
                return Err(LogError::List {
                    path: dir.to_path_buf(),
                    source,
                })
            }
        };
        firsts.sort_unstable();
        let mut log = SegmentLog {
            dir: dir.to_path_buf(),
            mode,
            segment_bytes: segment_bytes.max(FRAME_HEADER + SEGMENT_MAGIC.len() as u64),
            segments: BTreeMap::new(),
            frames: BTreeMap::new(),
            next_seq: cursor,
            active: None,
            held: Held::default(),
            cursor_written: cursor,
            buf: Vec::new(),
            corrupt_deleted: (0, 0),
        };
        let mut damage = Damage::default();
        let last = firsts.last().copied();
        for first in firsts {
            log.scan(first, Some(first) == last, cursor, &mut damage)?;
        }
        // Segments that hold nothing unreleased go now, except the one
        // appended to next.
        let empty: Vec<u64> = log
            .segments
            .iter()
            .filter(|(first, s)| s.live == 0 && log.active != Some(**first))
            .map(|(first, _)| *first)
            .collect();
        for first in empty {
            log.retire(first);
        }
        Ok((log, damage))
    }

    fn scan(
        &mut self,
        first: u64,
        last: bool,
        cursor: u64,
        damage: &mut Damage,
    ) -> Result<(), LogError> {
        let path = self.dir.join(segment_name(first));
        let file = match self.mode {
            Mode::Owner => OpenOptions::new().read(true).write(true).open(&path),
            Mode::Inspect => File::open(&path),
        }
        .map_err(|source| LogError::Open {
            path: path.clone(),
            source,
        })?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        let mut magic = [0u8; 8];
        if file.read_exact_at(&mut magic, 0).is_err() || &magic != SEGMENT_MAGIC {
            if last && size < SEGMENT_MAGIC.len() as u64 {
                // Created, then the crash: nothing in it was acknowledged.
                damage.torn += u64::from(size > 0);
                if self.mode == Mode::Owner {
                    let _ = fs::remove_file(&path);
                }
            } else {
                damage.corrupt += 1;
                self.set_aside(&path);
            }
            return Ok(());
        }
        let mut seg = Segment {
            path,
            file,
            len: size,
            live: 0,
            damaged: false,
        };
        let mut at = SEGMENT_MAGIC.len() as u64;
        let mut seq = first;
        let mut header = [0u8; FRAME_HEADER as usize];
        while at < size {
            let good = seg.file.read_exact_at(&mut header, at).is_ok() && {
                let len = u32_at(&header, 0);
                let s = u64::from_le_bytes(header[4..12].try_into().expect("8 bytes"));
                u32_at(&header, 20) == crc32fast::hash(&header[..20])
                    && s == seq
                    && len <= MAX_FRAME
                    && at + FRAME_HEADER + u64::from(len) <= size
            };
            if !good {
                if last {
                    damage.torn += 1;
                    if self.mode == Mode::Owner {
                        let _ = seg.file.set_len(at);
                        let _ = seg.file.sync_data();
                    }
                } else {
                    damage.corrupt += 1;
                    seg.damaged = true;
                }
                seg.len = at;
                break;
            }
            let len = u32_at(&header, 0);
            if seq >= cursor {
                let (events, payload_bytes) = (u32_at(&header, 12), u64::from(u32_at(&header, 16)));
                self.frames.insert(
                    seq,
                    Frame {
                        segment: first,
                        offset: at,
                        len,
                        events,
                        payload_bytes,
                    },
                );
                seg.live += 1;
                self.held.batches += 1;
                self.held.events += u64::from(events);
                self.held.bytes += payload_bytes;
            }
            at += FRAME_HEADER + u64::from(len);
            seq += 1;
        }
        self.held.disk_bytes += seg.len;
        self.next_seq = self.next_seq.max(seq);
        if last && !seg.damaged && seg.len < self.segment_bytes && self.mode == Mode::Owner {
            self.active = Some(first);
        }
        self.segments.insert(first, seg);
        Ok(())
    }

    fn set_aside(&mut self, path: &Path) {
        if self.mode == Mode::Owner {
            let mut aside = path.as_os_str().to_owned();
            aside.push(".corrupt");
            let _ = fs::rename(path, aside);
            self.prune_corrupt();
        }
    }

    /// Deletes the oldest set-aside segments beyond [`MAX_CORRUPT_SEGMENTS`].
    fn prune_corrupt(&mut self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        let mut aside: Vec<(u64, PathBuf)> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let first = e
                    .file_name()
                    .to_str()?
                    .strip_suffix(CORRUPT_SUFFIX)?
                    .parse()
                    .ok()?;
                Some((first, e.path()))
            })
            .collect();
        aside.sort_unstable();
        let over = aside.len().saturating_sub(MAX_CORRUPT_SEGMENTS);
        for (_, path) in aside.into_iter().take(over) {
            let bytes = fs::metadata(&path).map_or(0, |m| m.len());
            if fs::remove_file(&path).is_ok() {
                self.corrupt_deleted.0 += 1;
                self.corrupt_deleted.1 += bytes;
            }
        }
    }

    /// The set-aside segments deleted since the last call: (files, bytes).
    pub fn take_corrupt_deleted(&mut self) -> (u64, u64) {
        std::mem::take(&mut self.corrupt_deleted)
    }

    /// Deletes (or, if damaged, sets aside) a segment nothing needs.
    fn retire(&mut self, first: u64) {
        if let Some(seg) = self.segments.remove(&first) {
            self.held.disk_bytes -= seg.len;
            if self.mode == Mode::Owner {
                if seg.damaged {
                    self.set_aside(&seg.path);
                } else {
                    let _ = fs::remove_file(&seg.path);
                }
            }
        }
    }

    /// Whether a batch of `events` and `bytes` fits under the bounds (an
    /// empty log takes any batch, so none can wedge its source).
    pub fn admits(&self, events: u64, bytes: u64, max_events: u64, max_bytes: u64) -> bool {
        self.frames.is_empty()
            || (self.held.events + events <= max_events && self.held.bytes + bytes <= max_bytes)
    }

    /// Appends one entry (not synced: see [`SegmentLog::sync`]); returns
    /// its sequence number.
    pub fn append(
        &mut self,
        entry: &[u8],
        events: u32,
        payload_bytes: u64,
    ) -> Result<u64, LogError> {
        let len = entry.len() as u32;
        let first = match self.active {
            Some(first)
                if self.segments[&first].len + FRAME_HEADER + u64::from(len)
                    <= self.segment_bytes
                    || self.segments[&first].len == SEGMENT_MAGIC.len() as u64 =>
            {
                first
            }
            _ => self.roll()?,
        };
        let seq = self.next_seq;
        self.buf.clear();
        self.buf
            .extend_from_slice(&frame_header(len, seq, events, payload_bytes as u32));
        self.buf.extend_from_slice(entry);
        let seg = self.segments.get_mut(&first).expect("the active segment");
        let offset = seg.len;
        if let Err(source) = seg.file.write_all_at(&self.buf, offset) {
            // Whatever part was written is cut off again.
            let _ = seg.file.set_len(offset);
            return Err(LogError::Write {
                path: seg.path.clone(),
                source,
            });
        }
        seg.len += self.buf.len() as u64;
        seg.live += 1;
        self.frames.insert(
            seq,
            Frame {
                segment: first,
                offset,
                len,
                events,
                payload_bytes,
            },
        );
        self.next_seq += 1;
        self.held.batches += 1;
        self.held.events += u64::from(events);
        self.held.bytes += payload_bytes;
        self.held.disk_bytes += self.buf.len() as u64;
        Ok(seq)
    }

    /// Seals the active segment (synced, so nothing behind a later sync
    /// is missing) and starts a new one (its directory entry synced too).
    fn roll(&mut self) -> Result<u64, LogError> {
        if let Some(old) = self.active.take() {
            let seg = &self.segments[&old];
            seg.file.sync_data().map_err(|source| LogError::Write {
                path: seg.path.clone(),
                source,
            })?;
            if seg.live == 0 {
                self.retire(old);
            }
        }
        let first = self.next_seq;
        let path = self.dir.join(segment_name(first));
        let write = |source| LogError::Write {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(write)?;
        file.write_all(SEGMENT_MAGIC).map_err(write)?;
        file.sync_all().map_err(write)?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(write)?;
        self.held.disk_bytes += SEGMENT_MAGIC.len() as u64;
        self.segments.insert(
            first,
            Segment {
                path: path.clone(),
                file,
                len: SEGMENT_MAGIC.len() as u64,
                live: 0,
                damaged: false,
            },
        );
        self.active = Some(first);
        Ok(first)
    }

    /// A handle on the segment appended to, to sync it without holding the
    /// log (what was appended before is in it: rolling syncs the old one).
    pub fn sync_handle(&self) -> Option<File> {
        self.active
            .and_then(|first| self.segments[&first].file.try_clone().ok())
    }

    /// Numbers the next batches from `seq` on, if that is past the next
    /// one: a log whose segments were all deleted starts again at 0, and
    /// a store that refers to bodies by number must not see one reused.
    /// The segment appended to is sealed, since numbers within a segment
    /// run on without a gap.
    pub fn advance_to(&mut self, seq: u64) {
        if seq <= self.next_seq {
            return;
        }
        self.next_seq = seq;
        if let Some(first) = self.active.take() {
            if self.segments[&first].live == 0 {
                self.retire(first);
            }
        }
    }

    /// Whether batch `seq` is held (written and not released).
    pub fn holds(&self, seq: u64) -> bool {
        self.frames.contains_key(&seq)
    }

    /// The first unreleased batch at or after `from`.
    pub fn next_from(&self, from: u64) -> Option<u64> {
        self.frames.range(from..).next().map(|(seq, _)| *seq)
    }

    /// The entry of batch `seq` as written (its checksum is checked when
    /// it is decoded).
    pub fn read(&self, seq: u64) -> io::Result<Vec<u8>> {
        let frame = self
            .frames
            .get(&seq)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "batch already released"))?;
        let mut entry = vec![0u8; frame.len as usize];
        self.segments[&frame.segment]
            .file
            .read_exact_at(&mut entry, frame.offset + FRAME_HEADER)?;
        Ok(entry)
    }

    /// Batch `seq` is delivered: its segment goes once nothing in it is
    /// left. Releasing twice, or what reopening already dropped, is a
    /// no-op.
    pub fn release(&mut self, seq: u64) {
        self.drop_frame(seq, false);
    }

    /// Batch `seq` does not decode: it is dropped and its segment set
    /// aside, not deleted, once the rest is released.
    pub fn release_corrupt(&mut self, seq: u64) {
        self.drop_frame(seq, true);
    }

    fn drop_frame(&mut self, seq: u64, damaged: bool) {
        let Some(frame) = self.frames.remove(&seq) else {
            return;
        };
        self.held.batches -= 1;
        self.held.events -= u64::from(frame.events);
        self.held.bytes -= frame.payload_bytes;
        let seg = self
            .segments
            .get_mut(&frame.segment)
            .expect("a frame's segment");
        seg.live -= 1;
        seg.damaged |= damaged;
        if seg.live == 0 && self.active != Some(frame.segment) {
            self.retire(frame.segment);
        }
    }

    pub fn held(&self) -> Held {
        self.held
    }

    /// The first unreleased sequence number.
    pub fn cursor(&self) -> u64 {
        self.frames.keys().next().copied().unwrap_or(self.next_seq)
    }

    /// When the oldest unreleased batch was read (ms since the epoch).
    pub fn oldest_ms(&self) -> Option<i64> {
        let seq = self.next_from(0)?;
        let entry = self.read(seq).ok()?;
        crate::spool::header(&entry).ok().map(|h| h.created_ms)
    }

    /// Writes the cursor if it moved (atomically: a temporary file renamed
    /// over it). Not synced: a lost cursor only repeats batches.
    pub fn write_cursor(&mut self) -> io::Result<()> {
        let cursor = self.cursor();
        if cursor == self.cursor_written || self.mode != Mode::Owner {
            return Ok(());
        }
        let mut bytes = cursor.to_le_bytes().to_vec();
        bytes.extend_from_slice(&crc32fast::hash(&cursor.to_le_bytes()).to_le_bytes());
        let tmp = self.dir.join("cursor.tmp");
        fs::write(&tmp, &bytes)?;
        fs::rename(&tmp, self.dir.join(CURSOR))?;
        self.cursor_written = cursor;
        Ok(())
    }
}

fn read_cursor(dir: &Path) -> u64 {
    match fs::read(dir.join(CURSOR)) {
        Ok(b) if b.len() == 12 => {
            let seq: [u8; 8] = b[..8].try_into().expect("8 bytes");
            let crc = u32::from_le_bytes(b[8..].try_into().expect("4 bytes"));
            if crc == crc32fast::hash(&seq) {
                u64::from_le_bytes(seq)
            } else {
                0
            }
        }
        _ => 0,
    }
}
