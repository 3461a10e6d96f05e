//! Start-up recovery as a pure function: from the saved positions no file
//! at an include path holds, and what is on disk next to their files, to a
//! plan of which rotated files to read on from where.
//!
//! A saved file that left its name while the agent was stopped is looked
//! for among the rotations of the name it was read under (its origin):
//! first by inode (renamed), then by content (`copytruncate` copied it: a
//! rotation that starts with its fingerprint and holds its check right
//! before the saved offset). Rotations modified after an anchor (the found
//! file, or the last save of a file that is gone) that nobody read are then
//! adopted by the caller from their start. The caller does the I/O: it
//! lists siblings and says whether a sibling holds a saved content (handing
//! back whatever it opened to find out).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::checkpoint::{FileId, Saved};
use crate::identity::Sibling;

/// How a saved file was found again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Found {
    /// Same inode under a rotated name.
    Renamed,
    /// Another inode holding its content: the copy `copytruncate` made.
    Copied,
}

/// A rotated file to read on from a saved position.
#[derive(Debug)]
pub struct Resume<H> {
    pub how: Found,
    pub sibling: Sibling,
    /// What the caller opened when it checked the content.
    pub handle: H,
    pub saved: Saved,
}

#[derive(Debug)]
pub struct Plan<H> {
    pub resume: Vec<Resume<H>>,
    /// Saved positions whose file was not found: they wait to expire.
    pub missing: Vec<(FileId, Saved)>,
    /// Saved positions whose inode is among the rotations with other
    /// content (written again, or the inode reused) and whose content was
    /// found nowhere: forgotten, and the sibling read as the new file it is.
    pub replaced: Vec<(FileId, Saved, Sibling)>,
    /// Read the unread rotations of this origin modified at or after this
    /// time (ns).
    pub anchors: Vec<(PathBuf, i128)>,
}

impl<H> Plan<H> {
    /// Reads `sibling` on from `saved`; rotations newer than it that no one
    /// read follow.
    fn resume(
        &mut self,
        how: Found,
        sibling: Sibling,
        handle: H,
        saved: Saved,
        taken: &mut HashSet<FileId>,
    ) {
        taken.insert(sibling.id);
        self.anchors.push((saved.origin.clone(), sibling.mtime));
        self.resume.push(Resume {
            how,
            sibling,
            handle,
            saved,
        });
    }
}

/// The saved positions startup has to look for: no tracked file holds them,
/// or the file at their inode now holds other content. Oldest save first.
pub fn lost(
    known: &HashMap<FileId, Saved>,
    tracked: &HashSet<FileId>,
    replaced: &HashSet<FileId>,
) -> Vec<(FileId, Saved)> {
    let mut lost: Vec<(FileId, Saved)> = known
        .iter()
        .filter(|(id, _)| !tracked.contains(id) || replaced.contains(id))
        .map(|(id, saved)| (*id, saved.clone()))
        .collect();
    lost.sort_by_key(|(id, s)| (s.mtime, *id));
    lost
}

/// The plan for `lost` (see [`lost`]), given the files tracked already,
/// the siblings of an origin, and whether a sibling holds a saved content.
pub fn plan<H>(
    lost: Vec<(FileId, Saved)>,
    tracked: &HashSet<FileId>,
    mut siblings: impl FnMut(&Path) -> Vec<Sibling>,
    mut holds: impl FnMut(&Sibling, &Saved) -> Option<H>,
) -> Plan<H> {
    let mut taken = tracked.clone();
    let mut listings: HashMap<PathBuf, Vec<Sibling>> = HashMap::new();
    let mut plan = Plan {
        resume: Vec::new(),
        missing: Vec::new(),
        replaced: Vec::new(),
        anchors: Vec::new(),
    };
    let mut unresolved = Vec::new();
    // By inode first: the file was renamed.
    for (id, saved) in lost {
        let sibs = listings
            .entry(saved.origin.clone())
            .or_insert_with(|| siblings(&saved.origin));
        let same = sibs.iter().find(|s| s.id == id && !taken.contains(&id));
        let found = same.and_then(|s| Some((s.clone(), holds(s, &saved)?)));
        let same = same.cloned();
        match found {
            Some((sibling, handle)) => {
                plan.resume(Found::Renamed, sibling, handle, saved, &mut taken)
            }
            None => unresolved.push((id, saved, same)),
        }
    }
    // Then by content: copytruncate copied it.
    for (id, saved, other_content) in unresolved {
        let sibs = listings
            .entry(saved.origin.clone())
            .or_insert_with(|| siblings(&saved.origin));
        let found = sibs
            .iter()
            .filter(|s| saved.offset > 0 && !taken.contains(&s.id))
            .find_map(|s| Some((s.clone(), holds(s, &saved)?)));
        match found {
            Some((sibling, handle)) => {
                plan.resume(Found::Copied, sibling, handle, saved, &mut taken)
            }
            None => {
                // The file being written is gone (compressed, deleted):
                // what was written after it may still be there, in
                // rotations newer than its last save.
                if saved.path == saved.origin {
                    plan.anchors
                        .push((saved.origin.clone(), saved.mtime as i128));
                }
                if let Some(sibling) = other_content.filter(|s| !taken.contains(&s.id)) {
                    taken.insert(sibling.id);
                    plan.replaced.push((id, saved, sibling));
                } else if !taken.contains(&id) {
                    plan.missing.push((id, saved));
                }
            }
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saved(path: &str, offset: u64, content: &str, mtime: i64) -> Saved {
        Saved {
            offset,
            fingerprint: content.as_bytes()[..4].to_vec(),
            check: Vec::new(),
            mtime,
            origin: "/l/app.log".into(),
            path: path.into(),
        }
    }

    fn sib(path: &str, ino: u64, mtime: i128) -> Sibling {
        Sibling {
            path: path.into(),
            id: FileId { dev: 1, ino },
            size: 100,
            mtime,
        }
    }

    /// What is on disk: siblings of /l/app.log, and which content each holds.
    fn run(lost: Vec<(FileId, Saved)>, disk: &[(Sibling, &str)]) -> Plan<u64> {
        let sibs: Vec<Sibling> = disk.iter().map(|(s, _)| s.clone()).collect();
        plan(
            lost,
            &HashSet::new(),
            |origin| {
                assert_eq!(origin, Path::new("/l/app.log"));
                sibs.clone()
            },
            |s, saved| {
                let (_, content) = disk.iter().find(|(d, _)| d.id == s.id)?;
                content
                    .as_bytes()
                    .starts_with(&saved.fingerprint)
                    .then_some(s.id.ino)
            },
        )
    }

    #[test]
    fn renamed_by_inode_before_copied_by_content() {
        let a = FileId { dev: 1, ino: 10 };
        let b = FileId { dev: 1, ino: 20 };
        let lost = vec![
            (a, saved("/l/app.log", 50, "aaaa", 1)),
            (b, saved("/l/app.log", 70, "bbbb", 2)),
        ];
        let disk = [
            (sib("/l/app.log.1", 30, 5), "bbbb"),
            (sib("/l/app.log.2", 10, 3), "aaaa"),
        ];
        let p = run(lost, &disk);
        let got: Vec<(Found, u64, u64)> = p
            .resume
            .iter()
            .map(|r| (r.how, r.handle, r.saved.offset))
            .collect();
        assert_eq!(got, [(Found::Renamed, 10, 50), (Found::Copied, 30, 70)]);
        assert!(p.missing.is_empty());
        assert_eq!(p.anchors.len(), 2);
    }

    #[test]
    fn a_gone_file_is_missing_and_anchors_its_rotations_at_its_last_save() {
        let a = FileId { dev: 1, ino: 10 };
        let p = run(vec![(a, saved("/l/app.log", 50, "aaaa", 7))], &[]);
        assert!(p.resume.is_empty());
        assert_eq!(p.missing.len(), 1);
        assert_eq!(p.anchors, [(PathBuf::from("/l/app.log"), 7)]);
        // Last seen as a rotation: no anchor (its origin's writer moved on).
        let p = run(vec![(a, saved("/l/app.log.1", 50, "aaaa", 7))], &[]);
        assert!(p.anchors.is_empty());
    }

    #[test]
    fn an_inode_among_the_rotations_with_other_content_is_replaced() {
        let a = FileId { dev: 1, ino: 10 };
        let p = run(
            vec![(a, saved("/l/app.log", 50, "aaaa", 1))],
            &[(sib("/l/app.log.1", 10, 5), "zzzz")],
        );
        assert!(p.resume.is_empty() && p.missing.is_empty());
        assert_eq!(p.replaced.len(), 1);
    }

    #[test]
    fn one_copy_is_not_resumed_twice_and_offset_zero_is_no_copy() {
        let a = FileId { dev: 1, ino: 10 };
        let b = FileId { dev: 1, ino: 11 };
        let lost = vec![
            (a, saved("/l/app.log", 50, "cccc", 1)),
            (b, saved("/l/app.log", 60, "cccc", 2)),
        ];
        let p = run(lost, &[(sib("/l/app.log.1", 30, 5), "cccc")]);
        assert_eq!(p.resume.len(), 1);
        assert_eq!(p.missing.len(), 1);
        let p = run(
            vec![(a, saved("/l/app.log", 0, "cccc", 1))],
            &[(sib("/l/app.log.1", 30, 5), "cccc")],
        );
        assert!(p.resume.is_empty());
    }
}
