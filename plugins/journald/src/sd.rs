//! A small safe wrapper over libsystemd's sd-journal reader.
//!
//! Only what the source needs: open the system journal, a directory or
//! files; add matches; seek; step; read an entry's fields as bytes; get and
//! test cursors; wait for changes. Every `unsafe` block is here. A
//! [`Journal`] is not `Send` (sd-journal objects belong to the thread that
//! opened them), so the reader thread opens its own.

use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::ptr;

use libsystemd_sys::journal as sys;

/// An sd-journal call failed; `errno` is the negative return value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdError {
    pub call: &'static str,
    pub errno: i32,
}

impl std::fmt::Display for SdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = std::io::Error::from_raw_os_error(self.errno);
        write!(f, "{} failed: {text}", self.call)
    }
}

fn check(call: &'static str, rc: libc::c_int) -> Result<libc::c_int, SdError> {
    if rc < 0 {
        Err(SdError { call, errno: -rc })
    } else {
        Ok(rc)
    }
}

/// Which journal files to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Where {
    /// The system's journal (every file the user may read).
    System,
    Directory(PathBuf),
    Files(Vec<PathBuf>),
}

/// What [`Journal::wait`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Nothing,
    /// Entries were appended.
    Appended,
    /// Files were added, removed or rotated.
    Invalidated,
}

pub struct Journal {
    j: *mut sys::sd_journal,
}

fn c_path(p: &Path) -> Result<CString, SdError> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| SdError {
        call: "path with a NUL byte",
        errno: libc::EINVAL,
    })
}

impl Journal {
    pub fn open(at: &Where) -> Result<Journal, SdError> {
        let mut j = ptr::null_mut();
        // SAFETY: `j` is a valid out pointer; the C strings outlive the
        // calls; sd-journal copies what it keeps.
        let rc = unsafe {
            match at {
                Where::System => sys::sd_journal_open(&mut j, sys::SD_JOURNAL_SYSTEM),
                Where::Directory(d) => {
                    let d = c_path(d)?;
                    sys::sd_journal_open_directory(&mut j, d.as_ptr(), 0)
                }
                Where::Files(files) => {
                    let owned: Vec<CString> =
                        files.iter().map(|p| c_path(p)).collect::<Result<_, _>>()?;
                    let mut ptrs: Vec<*const libc::c_char> =
                        owned.iter().map(|c| c.as_ptr()).collect();
                    ptrs.push(ptr::null());
                    sys::sd_journal_open_files(&mut j, ptrs.as_ptr(), 0)
                }
            }
        };
        check("sd_journal_open", rc)?;
        let journal = Journal { j };
        // No size limit on field values: MESSAGE arrives whole and exact.
        // SAFETY: `j` is open.
        check("sd_journal_set_data_threshold", unsafe {
            sys::sd_journal_set_data_threshold(journal.j, 0)
        })?;
        Ok(journal)
    }

    /// Adds a `FIELD=value` match: matches of one field are alternatives,
    /// of different fields all must hold (until a disjunction).
    pub fn add_match(&mut self, data: &[u8]) -> Result<(), SdError> {
        // SAFETY: the pointer and length describe `data`; it is copied.
        check("sd_journal_add_match", unsafe {
            sys::sd_journal_add_match(self.j, data.as_ptr().cast(), data.len())
        })
        .map(drop)
    }

    pub fn seek_head(&mut self) -> Result<(), SdError> {
        // SAFETY: `j` is open.
        check("sd_journal_seek_head", unsafe {
            sys::sd_journal_seek_head(self.j)
        })
        .map(drop)
    }

    pub fn seek_tail(&mut self) -> Result<(), SdError> {
        // SAFETY: `j` is open.
        check("sd_journal_seek_tail", unsafe {
            sys::sd_journal_seek_tail(self.j)
        })
        .map(drop)
    }

    /// Seeks to the entry of `cursor`, or, if it is gone, the closest one.
    pub fn seek_cursor(&mut self, cursor: &str) -> Result<(), SdError> {
        let c = CString::new(cursor).map_err(|_| SdError {
            call: "cursor with a NUL byte",
            errno: libc::EINVAL,
        })?;
        // SAFETY: `j` is open, `c` outlives the call.
        check("sd_journal_seek_cursor", unsafe {
            sys::sd_journal_seek_cursor(self.j, c.as_ptr())
        })
        .map(drop)
    }

    /// Whether the current entry is the one of `cursor`.
    pub fn test_cursor(&mut self, cursor: &str) -> Result<bool, SdError> {
        let Ok(c) = CString::new(cursor) else {
            return Ok(false);
        };
        // SAFETY: `j` is open, `c` outlives the call.
        check("sd_journal_test_cursor", unsafe {
            sys::sd_journal_test_cursor(self.j, c.as_ptr())
        })
        .map(|r| r > 0)
    }

    /// Steps to the next entry; false at the end.
    pub fn next(&mut self) -> Result<bool, SdError> {
        // SAFETY: `j` is open.
        check("sd_journal_next", unsafe { sys::sd_journal_next(self.j) }).map(|r| r > 0)
    }

    /// Steps back one entry; false at the start.
    pub fn previous(&mut self) -> Result<bool, SdError> {
        // SAFETY: `j` is open.
        check("sd_journal_previous", unsafe {
            sys::sd_journal_previous(self.j)
        })
        .map(|r| r > 0)
    }

    /// The current entry's cursor.
    pub fn cursor(&mut self) -> Result<String, SdError> {
        let mut c: *const libc::c_char = ptr::null();
        // SAFETY: `c` is a valid out pointer; on success it points to a
        // malloc'd NUL-terminated string that we own and free.
        unsafe {
            check(
                "sd_journal_get_cursor",
                sys::sd_journal_get_cursor(self.j, &mut c),
            )?;
            let s = CStr::from_ptr(c).to_string_lossy().into_owned();
            libc::free(c as *mut libc::c_void);
            Ok(s)
        }
    }

    /// The current entry's wall-clock time, in microseconds since the epoch.
    pub fn realtime_us(&mut self) -> Result<u64, SdError> {
        let mut t = 0u64;
        // SAFETY: `t` is a valid out pointer.
        check("sd_journal_get_realtime_usec", unsafe {
            sys::sd_journal_get_realtime_usec(self.j, &mut t)
        })?;
        Ok(t)
    }

    /// The oldest and the newest entry's wall-clock time over every file,
    /// if there are entries.
    pub fn span_us(&mut self) -> Option<(u64, u64)> {
        let (mut from, mut to) = (0u64, 0u64);
        // SAFETY: valid out pointers.
        let rc = unsafe { sys::sd_journal_get_cutoff_realtime_usec(self.j, &mut from, &mut to) };
        (rc > 0).then_some((from, to))
    }

    /// Calls `each` with every `FIELD=value` of the current entry (the
    /// slice is valid only during the call); returns how many fields could
    /// not be read and were left out.
    pub fn for_each_field(&mut self, mut each: impl FnMut(&[u8])) -> Result<u64, SdError> {
        let mut skipped = 0;
        // SAFETY: `j` is open and positioned on an entry; the data pointer
        // stays valid until the next enumerate call, and is only read
        // inside this loop.
        unsafe {
            sys::sd_journal_restart_data(self.j);
            loop {
                let mut data: *const u8 = ptr::null();
                let mut len: libc::size_t = 0;
                let rc = sys::sd_journal_enumerate_data(self.j, &mut data, &mut len);
                if rc == 0 {
                    return Ok(skipped);
                }
                if rc < 0 {
                    // A field that cannot be read (a compression this
                    // library lacks, a corrupt object): skip it.
                    if -rc == libc::EBADMSG || -rc == libc::EPROTONOSUPPORT || -rc == libc::E2BIG {
                        skipped += 1;
                        continue;
                    }
                    return Err(SdError {
                        call: "sd_journal_enumerate_data",
                        errno: -rc,
                    });
                }
                each(std::slice::from_raw_parts(data, len));
            }
        }
    }

    /// Waits up to `timeout` for a change to the journal.
    pub fn wait(&mut self, timeout: std::time::Duration) -> Result<Change, SdError> {
        let us = u64::try_from(timeout.as_micros()).unwrap_or(u64::MAX);
        // SAFETY: `j` is open.
        let rc = check("sd_journal_wait", unsafe {
            sys::sd_journal_wait(self.j, us)
        })?;
        Ok(match rc {
            sys::SD_JOURNAL_APPEND => Change::Appended,
            sys::SD_JOURNAL_INVALIDATE => Change::Invalidated,
            _ => Change::Nothing,
        })
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        // SAFETY: `j` was opened by us and is closed once.
        unsafe { sys::sd_journal_close(self.j) }
    }
}

/// This boot's id, as the 32 hex digits of `_BOOT_ID`.
pub fn boot_id() -> Result<String, SdError> {
    let mut id = libsystemd_sys::id128::sd_id128_t { bytes: [0; 16] };
    // SAFETY: `id` is a valid out pointer.
    check("sd_id128_get_boot", unsafe {
        libsystemd_sys::id128::sd_id128_get_boot(&mut id)
    })?;
    Ok(id.bytes.iter().map(|b| format!("{b:02x}")).collect())
}
