//! Retention the daemon applies to each group's log: the live log's
//! complete lines move into a zstd archive beside it when it grows past a
//! tenth of `size` or holds lines older than `keep_days`; archives whose
//! last line is older than `keep_days` are deleted, then the oldest ones
//! while the live log and the archives together (compressed bytes on disk)
//! exceed `size`. Runs on the daemon's writer thread between batches, with
//! the user's credentials (see `pipeline::write::LogSet::retain`); file
//! names and the reader's side are in [`crate::archive`].
use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use chrono::{DateTime, Utc};

use crate::{
    archive,
    error::{Error, Result},
    logfile::{LogReader, TrimResult, complete_trim, copy_tail},
};

// ---------------------------------------------------------------------------
// Retention: rotation to zstd archives, and their expiry
// ---------------------------------------------------------------------------

/// What the daemon keeps of each group's log (`[logging] keep_days`,
/// `size`, `retention_interval_secs`).
#[derive(Clone)]
pub struct Retention {
    pub keep_days: u32,
    /// Budget of the live log plus its archives (compressed bytes on disk).
    pub size: u64,
    pub interval: Duration,
    /// Groups shipped to NATS (`Some(None)`: all): their unshipped lines
    /// stay in the live log, where the shipper reads them.
    pub shipped_groups: Option<Option<Vec<String>>>,
    /// The shipper, whose cursor follows a rotation's swap.
    pub ship: Option<Arc<crate::ship::Shipper>>,
}

impl Retention {
    /// The live log is rotated once it holds more than this: a tenth of
    /// the budget, so the archives (about 1/20 of that each) and the live
    /// log fit together.
    pub fn rotate_at(&self) -> u64 {
        (self.size / 10).max(4096)
    }

    fn keep_after(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now - chrono::TimeDelta::days(i64::from(self.keep_days))
    }

    pub fn shipped(&self, group: &str) -> bool {
        self.shipped_groups
            .as_ref()
            .is_some_and(|g| g.as_ref().is_none_or(|g| g.iter().any(|x| x == group)))
    }
}

/// What one retention pass did to a group.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Retained {
    /// The archive made, if any, and the bytes moved into it.
    pub archive: Option<(String, u64)>,
    /// Archives deleted (too old, or beyond the size budget).
    pub deleted: Vec<String>,
}

/// One retention pass over the live log `live` (run with the user's
/// credentials, between batches, with the group's writer closed):
/// rotates its complete lines into an archive when it is larger than
/// `rotate_at` or its first line is older than `keep_days` (never past
/// `cap`, the first line not yet shipped), then deletes archives whose
/// last line is older than `keep_days` and, oldest first, those beyond
/// the size budget. `around_swap` runs the live log's swap (the shipping
/// cursor follows it).
pub fn retain_log(
    live: &Path,
    policy: &Retention,
    cap: Option<u64>,
    now: DateTime<Utc>,
    around_swap: impl FnOnce(u64, u64, &mut dyn FnMut() -> Result<TrimResult>) -> Result<TrimResult>,
) -> Result<Retained> {
    let mut done = Retained::default();
    archive::recover(live)?;
    let keep_after = policy.keep_after(now);
    match LogReader::open(live) {
        Ok(log) => {
            let first = log.first_time()?;
            let old = first.is_some_and(|t| t.to_utc() < keep_after);
            if log.end() > policy.rotate_at() || old {
                let cut = cap.map_or(log.end(), |c| c.min(log.end()));
                if cut > 0 {
                    done.archive = Some((rotate(log, live, cut, now, around_swap)?, cut));
                }
            }
        }
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    // Expiry: only the daemon's archives (times in their names, regular
    // files); logrotate's files are logrotate's to delete.
    let mut archives: Vec<(DateTime<Utc>, DateTime<Utc>, PathBuf, u64)> = archive::list(live)?
        .into_iter()
        .filter_map(|s| {
            let (first, last) = s.range?;
            let meta = std::fs::symlink_metadata(&s.path).ok()?;
            meta.file_type()
                .is_file()
                .then(|| (first, last, s.path, meta.len()))
        })
        .collect();
    archives.sort();
    let live_len = std::fs::symlink_metadata(live).map_or(0, |m| m.len());
    let mut total = live_len + archives.iter().map(|a| a.3).sum::<u64>();
    for (_, last, path, len) in archives {
        if last >= keep_after && total <= policy.size {
            continue;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => {
                total -= len;
                done.deleted.push(
                    path.file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                );
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(path, e)),
        }
    }
    Ok(done)
}

/// Moves bytes `[0, cut)` of the live log into a new archive: compress to
/// a hidden file, copy the rest of the log to another, write the marker,
/// give the archive its name, swap the live log, remove the marker (see
/// `archive` for why no line is lost or read twice). Returns the archive's
/// name.
fn rotate(
    log: LogReader,
    live: &Path,
    cut: u64,
    now: DateTime<Utc>,
    around_swap: impl FnOnce(u64, u64, &mut dyn FnMut() -> Result<TrimResult>) -> Result<TrimResult>,
) -> Result<String> {
    let meta = log.metadata()?;
    let (first, last) = match (log.first_time()?, log.last_time_before(cut)?) {
        (Some(a), Some(b)) if a <= b => (a.to_utc(), b.to_utc()),
        (Some(a), Some(b)) => (b.to_utc(), a.to_utc()),
        // Only corrupt lines (which no query shows): named for now.
        _ => (now, now),
    };
    // Names hold microseconds: round the last time up so the name's range
    // holds every line.
    let last = ceil_micros(last);
    let first = floor_micros(first);
    let (tmp_archive, _) = archive::compress_prefix(log.file(), live, cut, meta.mode())?;
    let cleanup = |e: Error| {
        let _ = std::fs::remove_file(&tmp_archive);
        e
    };
    let prepared = copy_tail(live, cut).map_err(cleanup)?;
    let new_ino = prepared.tmp_ino().map_err(cleanup)?;
    let name = archive::free_name(live, first, last).map_err(cleanup)?;
    archive::write_marker(
        live,
        &archive::Marker {
            archive: name.clone(),
            ino: meta.ino(),
        },
        meta.mode(),
    )
    .map_err(cleanup)?;
    let archive_path = live.with_file_name(&name);
    // `link` never replaces or follows what is at the name (planted after
    // free_name looked): then nothing changes.
    if let Err(e) = std::fs::hard_link(&tmp_archive, &archive_path) {
        archive::remove_marker(live);
        return Err(cleanup(Error::io(&archive_path, e)));
    }
    let _ = std::fs::remove_file(&tmp_archive);
    let mut prepared = Some(prepared);
    let swapped = around_swap(new_ino, cut, &mut || match prepared.take() {
        Some(p) => complete_trim(p, live),
        None => Err(Error::invalid("rotation swap already done")),
    });
    if let Err(e) = swapped {
        // The lines are still in the live log: the archive goes.
        let _ = std::fs::remove_file(&archive_path);
        archive::remove_marker(live);
        return Err(e);
    }
    archive::remove_marker(live);
    Ok(name)
}

fn floor_micros(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

fn ceil_micros(t: DateTime<Utc>) -> DateTime<Utc> {
    let floor = floor_micros(t);
    if floor < t {
        floor + chrono::TimeDelta::microseconds(1)
    } else {
        floor
    }
}

/// Where shipping stands in `live`: the offset of the first line not yet
/// acknowledged by the stream (0 if the group is shipped but nothing is
/// acknowledged yet), `None` if the group is not shipped.
pub fn ship_cap(live: &Path, shipped: bool) -> Option<u64> {
    let cursor = crate::ship::cursor::load(&crate::ship::cursor::cursor_path(live))
        .ok()
        .flatten();
    let meta = std::fs::symlink_metadata(live).ok();
    match (cursor, meta) {
        (Some(c), Some(m)) if (m.dev(), m.ino()) == (c.dev, c.ino) => Some(c.acked_in_file()),
        _ if shipped => Some(0),
        _ => None,
    }
}
