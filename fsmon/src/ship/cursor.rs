//! The shipping cursor: how far a group's log is in the stream, persisted
//! beside the log as `<group>_log.jsonl.ship-cursor` (one JSON line).
//!
//! # Positions that survive `clean`
//!
//! A message's id must name the same event forever, but `clean` rewrites
//! the log without its oldest lines, so byte offsets in the *file* change.
//! What never changes is an event's offset in the log's whole history:
//! `clean` only ever removes a prefix, so we keep `base`, the number of
//! bytes removed before the current file's byte 0, and name each event by
//! its *logical offset* `base + offset in the file`. Every trim adds its
//! cut to `base` (both ways a trim happens, by the daemon or by the CLI with
//! no daemon, go through [`around_swap`]), so a line keeps its logical
//! offset when it moves to the front of the new file.
//!
//! A log replaced or truncated by other means (by hand, or deleted) cannot
//! be mapped onto the old numbering: it starts a new `log_id` (an epoch)
//! at logical offset 0, so its ids can never collide with ids already used.
//!
//! The message id is `<host>:<group>:<log_id>:<logical offset>`.
use std::{
    io::Write,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::Mutex,
};

use serde::{Deserialize, Serialize};

use crate::{
    error::{Error, Result},
    safefs,
    user::TargetUser,
};

pub const CURSOR_SUFFIX: &str = ".ship-cursor";

/// `<log>.ship-cursor`.
pub fn cursor_path(log_path: &Path) -> PathBuf {
    let mut s = log_path.as_os_str().to_owned();
    s.push(CURSOR_SUFFIX);
    PathBuf::from(s)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// The numbering's epoch: a new one when the log was replaced outside
    /// `clean`.
    pub log_id: String,
    /// Identity of the file that `base` applies to.
    pub dev: u64,
    pub ino: u64,
    /// Logical offset of the file's byte 0 (bytes trimmed before it).
    pub base: u64,
    /// Logical offset up to which every line is acknowledged by the stream.
    pub acked: u64,
    /// Events acknowledged under this `log_id`.
    pub shipped: u64,
    /// Stream sequence of the last acknowledgement.
    #[serde(default)]
    pub stream_seq: u64,
    /// A trim that was about to rename a file with this inode over the log,
    /// removing `cut` bytes. Resolved on load by looking at the log's inode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap: Option<PendingSwap>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingSwap {
    pub ino: u64,
    pub cut: u64,
}

/// How a cursor was matched to the log on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// The cursor applies as it is (or after finishing a recorded trim).
    Continues,
    /// No cursor yet: the log is shipped from its start.
    Fresh,
    /// The log is not the file the cursor was for: new epoch, with why.
    NewEpoch(String),
}

impl Cursor {
    /// A new numbering for the file `(dev, ino)`, from its start.
    pub fn fresh(dev: u64, ino: u64) -> Cursor {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Cursor {
            // Unique per host and group: the time it was made, and the inode.
            log_id: format!("{nanos:x}-{ino:x}"),
            dev,
            ino,
            base: 0,
            acked: 0,
            shipped: 0,
            stream_seq: 0,
            swap: None,
        }
    }

    /// Offset in the current file of the first unacknowledged byte.
    pub fn acked_in_file(&self) -> u64 {
        self.acked.saturating_sub(self.base)
    }

    /// A trim renamed a file with inode `ino` over the log, removing the
    /// first `cut` bytes: every kept line keeps its logical offset. With a
    /// forced trim that removed unshipped lines, those are skipped.
    pub fn apply_swap(&mut self, ino: u64, cut: u64) {
        self.base += cut;
        self.acked = self.acked.max(self.base);
        self.ino = ino;
        self.swap = None;
    }

    /// Matches the cursor to the log whose metadata is `(dev, ino, len)`.
    pub fn resolve(cursor: Option<Cursor>, dev: u64, ino: u64, len: u64) -> (Cursor, Resolved) {
        let Some(mut c) = cursor else {
            return (Cursor::fresh(dev, ino), Resolved::Fresh);
        };
        if let Some(s) = c.swap {
            if s.ino == ino && c.ino != ino {
                c.apply_swap(ino, s.cut);
            } else {
                c.swap = None;
            }
        }
        if (c.dev, c.ino) != (dev, ino) {
            return (
                Cursor::fresh(dev, ino),
                Resolved::NewEpoch("the log was replaced other than by `fsmon clean`".into()),
            );
        }
        if c.acked_in_file() > len {
            return (
                Cursor::fresh(dev, ino),
                Resolved::NewEpoch("the log was truncated other than by `fsmon clean`".into()),
            );
        }
        (c, Resolved::Continues)
    }
}

/// Reads a cursor file; `Ok(None)` if there is none.
pub fn load(path: &Path) -> Result<Option<Cursor>> {
    let file = match safefs::open_read(path) {
        Ok(f) => f,
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::Read::take(&file, 64 * 1024), &mut text)
        .map_err(|e| Error::io(path, e))?;
    serde_json::from_str(text.trim())
        .map(Some)
        .map_err(|e| Error::invalid(format!("{}: not a shipping cursor: {e}", path.display())))
}

/// Writes a cursor file atomically (a new file beside it, renamed over it),
/// owned by `owner`; `durable`: synced to disk first. The shipper's
/// periodic saves are not synced: a process crash keeps them (page cache),
/// and a cursor lost with power is only older, which reconciliation with
/// the stream makes up for. A trim's record is synced: it must not be
/// older than the rename it describes.
pub fn save(path: &Path, owner: &TargetUser, cursor: &Cursor, durable: bool) -> Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    // A leftover of ours (a crash between create and rename), or something
    // planted: removing a name never follows it.
    let _ = std::fs::remove_file(&tmp);
    let mut f = safefs::create_new(&tmp, owner, 0o600)?;
    let mut line = serde_json::to_vec(cursor).expect("serializable");
    line.push(b'\n');
    let written = f
        .write_all(&line)
        .and_then(|()| if durable { f.sync_data() } else { Ok(()) });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(&tmp, e));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

/// Runs `swap` (which renames a trimmed copy with inode `new_ino` over the
/// log, removing its first `cut` bytes) so that the log's cursor, if it has
/// one, follows: the pending trim is recorded durably first, then applied.
/// A crash in between is resolved on load by looking at which inode the log
/// has. `shared` is the shipper's in-memory cursor of this group, if it runs.
pub fn around_swap<T>(
    log_path: &Path,
    owner: &TargetUser,
    new_ino: u64,
    cut: u64,
    shared: Option<&Mutex<Cursor>>,
    swap: impl FnOnce() -> Result<T>,
) -> Result<T> {
    let path = cursor_path(log_path);
    let mut from_file;
    let mut guard;
    let cursor: Option<&mut Cursor> = match shared {
        Some(m) => {
            guard = m.lock().unwrap_or_else(|p| p.into_inner());
            Some(&mut *guard)
        }
        None => {
            from_file = match load(&path) {
                Ok(c) => c,
                Err(e) => {
                    log::warn!("{e}; the cursor is left as it is");
                    None
                }
            };
            from_file.as_mut()
        }
    };
    let Some(cursor) = cursor else {
        return swap();
    };
    // Only a cursor for the file being trimmed moves.
    let current = std::fs::symlink_metadata(log_path).map_err(|e| Error::io(log_path, e))?;
    if (current.dev(), current.ino()) != (cursor.dev, cursor.ino) {
        return swap();
    }
    cursor.swap = Some(PendingSwap { ino: new_ino, cut });
    save(&path, owner, cursor, true)?;
    let result = swap();
    match &result {
        Ok(_) => cursor.apply_swap(new_ino, cut),
        Err(_) => cursor.swap = None,
    }
    if let Err(e) = save(&path, owner, cursor, true) {
        // The pending record on disk still resolves correctly on load.
        log::warn!("{e}");
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logical_offsets_survive_a_trim() {
        let mut c = Cursor::fresh(1, 10);
        c.acked = 500;
        c.apply_swap(11, 300);
        assert_eq!(
            (c.base, c.acked, c.acked_in_file(), c.ino),
            (300, 500, 200, 11)
        );
        // A forced trim past the acknowledged point skips what it removed.
        c.apply_swap(12, 400);
        assert_eq!((c.base, c.acked, c.acked_in_file()), (700, 700, 0));
    }

    #[test]
    fn pending_swap_resolves_by_inode() {
        let mut c = Cursor::fresh(1, 10);
        c.acked = 100;
        c.swap = Some(PendingSwap { ino: 11, cut: 60 });
        // The rename happened.
        let (r, how) = Cursor::resolve(Some(c.clone()), 1, 11, 1000);
        assert_eq!(how, Resolved::Continues);
        assert_eq!(
            (r.base, r.acked, r.ino, r.log_id.clone()),
            (60, 100, 11, c.log_id.clone())
        );
        // It did not.
        let (r, how) = Cursor::resolve(Some(c.clone()), 1, 10, 1000);
        assert_eq!(how, Resolved::Continues);
        assert_eq!((r.base, r.acked, r.swap), (0, 100, None));
        // Something else replaced the log: a new epoch from its start.
        let (r, how) = Cursor::resolve(Some(c.clone()), 1, 99, 1000);
        assert!(matches!(how, Resolved::NewEpoch(_)));
        assert_ne!(r.log_id, c.log_id);
        assert_eq!(r.acked, 0);
        // Truncated in place below the acknowledged point.
        let (_, how) = Cursor::resolve(Some(c), 1, 10, 50);
        assert!(matches!(how, Resolved::NewEpoch(_)));
    }

    #[test]
    fn save_and_load_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let me = TargetUser::from_uid(nix::unistd::geteuid().as_raw()).unwrap();
        let p = d.path().join("g_log.jsonl.ship-cursor");
        assert_eq!(load(&p).unwrap(), None);
        let mut c = Cursor::fresh(3, 4);
        c.acked = 77;
        save(&p, &me, &c, true).unwrap();
        save(&p, &me, &c, false).unwrap();
        assert_eq!(load(&p).unwrap(), Some(c));
    }
}
