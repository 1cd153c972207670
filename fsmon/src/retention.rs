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
    logfile::{LogReader, PreparedTrim, TrimResult, complete_trim, copy_tail},
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
    if let Some(p) = prepare_pass(live, policy, cap, now)? {
        let cut = p.cut;
        done.archive = Some((finish_rotation(p, around_swap)?, cut));
    }
    done.deleted = expire(live, policy, now)?;
    Ok(done)
}

/// The part of a retention pass that may run beside the writer: settles
/// an interrupted rotation, and prepares one if the live log is larger
/// than [`Retention::rotate_at`] or starts with lines older than
/// `keep_days` (never past `cap`, the first line not yet shipped).
pub fn prepare_pass(
    live: &Path,
    policy: &Retention,
    cap: Option<u64>,
    now: DateTime<Utc>,
) -> Result<Option<PreparedRotation>> {
    archive::recover(live)?;
    let log = match LogReader::open(live) {
        Ok(log) => log,
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let old = log
        .first_time()?
        .is_some_and(|t| t.to_utc() < policy.keep_after(now));
    if log.end() <= policy.rotate_at() && !old {
        return Ok(None);
    }
    let cut = cap.map_or(log.end(), |c| c.min(log.end()));
    if cut == 0 {
        return Ok(None);
    }
    prepare_rotation(log, live, cut, now).map(Some)
}

/// Deletes archives whose last line is older than `keep_days`, then the
/// oldest while the live log and the archives exceed `size`. Returns the
/// names deleted.
pub fn expire(live: &Path, policy: &Retention, now: DateTime<Utc>) -> Result<Vec<String>> {
    let mut deleted = Vec::new();
    let keep_after = policy.keep_after(now);
    // Only the daemon's archives: logrotate's files are logrotate's to delete.
    let archives = archive::own_archives(live)?;
    // The live log counts for at most the rotation size: what it holds
    // beyond that is about to be archived (a burst must not delete the
    // history it is about to join).
    let live_len = std::fs::symlink_metadata(live).map_or(0, |m| m.len().min(policy.rotate_at()));
    let mut total = live_len + archives.iter().map(|a| a.2).sum::<u64>();
    for ((_, last), path, len) in archives {
        if last >= keep_after && total <= policy.size {
            continue;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => {
                total -= len;
                deleted.push(
                    path.file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                );
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(path, e)),
        }
    }
    Ok(deleted)
}

/// Archives every complete line of the live log now, whatever its size
/// and age (no shipping cursor: for tools and benchmarks on logs no daemon
/// writes). Returns the archive's name, `None` for an empty log.
pub fn rotate_now(live: &Path, now: DateTime<Utc>) -> Result<Option<String>> {
    archive::recover(live)?;
    let log = LogReader::open(live)?;
    let cut = log.end();
    if cut == 0 {
        return Ok(None);
    }
    rotate(log, live, cut, now, |_, _, swap| swap()).map(Some)
}

/// The slow half of a rotation, done off the writer thread: bytes
/// `[0, cut)` of the live log compressed to a hidden file beside it, and
/// the rest of the log copied to another (as `clean` does). Dropping it
/// removes both.
pub struct PreparedRotation {
    live: PathBuf,
    tmp_archive: PathBuf,
    trim: Option<PreparedTrim>,
    cut: u64,
    first: DateTime<Utc>,
    last: DateTime<Utc>,
    mode: u32,
    /// The live log's inode when prepared (the marker names it).
    ino: u64,
}

impl PreparedRotation {
    /// The live log it rotates.
    pub fn live(&self) -> &Path {
        &self.live
    }
}

impl Drop for PreparedRotation {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.tmp_archive);
    }
}

/// Prepares moving bytes `[0, cut)` of the live log into an archive.
/// Writers may go on appending meanwhile.
pub fn prepare_rotation(
    log: LogReader,
    live: &Path,
    cut: u64,
    now: DateTime<Utc>,
) -> Result<PreparedRotation> {
    let meta = log.metadata()?;
    let (first, last) = match (log.first_time()?, log.last_time_before(cut)?) {
        (Some(a), Some(b)) if a <= b => (a.to_utc(), b.to_utc()),
        (Some(a), Some(b)) => (b.to_utc(), a.to_utc()),
        // Only corrupt lines (which no query shows): named for now.
        _ => (now, now),
    };
    let (tmp_archive, _) = archive::compress_prefix(log.file(), live, cut, meta.mode())?;
    let mut prepared = PreparedRotation {
        live: live.to_owned(),
        tmp_archive,
        trim: None,
        cut,
        // Names hold microseconds: round outwards so the name's range
        // holds every line.
        first: floor_micros(first),
        last: ceil_micros(last),
        mode: meta.mode(),
        ino: meta.ino(),
    };
    prepared.trim = Some(copy_tail(live, cut)?);
    Ok(prepared)
}

/// Finishes a rotation with no writer appending (between batches): writes
/// the marker, gives the archive its name, swaps the live log for its
/// copy plus the lines appended since (through `around_swap`, so the
/// shipping cursor follows), removes the marker (see [`crate::archive`]
/// for why no line is lost or read twice). Returns the archive's name.
pub fn finish_rotation(
    mut p: PreparedRotation,
    around_swap: impl FnOnce(u64, u64, &mut dyn FnMut() -> Result<TrimResult>) -> Result<TrimResult>,
) -> Result<String> {
    let live = p.live.clone();
    let trim = p
        .trim
        .take()
        .ok_or_else(|| Error::invalid("rotation already finished"))?;
    let new_ino = trim.tmp_ino()?;
    let name = archive::free_name(&live, p.first, p.last)?;
    archive::write_marker(
        &live,
        &archive::Marker {
            archive: name.clone(),
            ino: p.ino,
        },
        p.mode,
    )?;
    let archive_path = live.with_file_name(&name);
    // `link` never replaces or follows what is at the name (planted after
    // free_name looked): then nothing changes.
    if let Err(e) = std::fs::hard_link(&p.tmp_archive, &archive_path) {
        archive::remove_marker(&live);
        return Err(Error::io(&archive_path, e));
    }
    let _ = std::fs::remove_file(&p.tmp_archive);
    let mut trim = Some(trim);
    let swapped = around_swap(new_ino, p.cut, &mut || match trim.take() {
        Some(t) => complete_trim(t, &live),
        None => Err(Error::invalid("rotation swap already done")),
    });
    if let Err(e) = swapped {
        // The lines are still in the live log: the archive goes.
        let _ = std::fs::remove_file(&archive_path);
        archive::remove_marker(&live);
        return Err(e);
    }
    archive::remove_marker(&live);
    Ok(name)
}

/// Both halves at once (no writer running, or on the writer's thread).
fn rotate(
    log: LogReader,
    live: &Path,
    cut: u64,
    now: DateTime<Utc>,
    around_swap: impl FnOnce(u64, u64, &mut dyn FnMut() -> Result<TrimResult>) -> Result<TrimResult>,
) -> Result<String> {
    finish_rotation(prepare_rotation(log, live, cut, now)?, around_swap)
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

#[cfg(test)]
mod tests {
    use std::{borrow::Cow, fs, io::Write};

    use chrono::{SecondsFormat, TimeDelta};

    use super::*;
    use crate::{
        event::FileEvent,
        filters::{Bound, TimeRange},
        logfile::{self, QueryOptions},
    };

    fn base() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-05-07T10:00:00Z")
            .unwrap()
            .to_utc()
    }

    fn line(i: i64) -> String {
        let time = (base() + TimeDelta::milliseconds(i * 1500))
            .to_rfc3339_opts(SecondsFormat::Micros, false);
        let path = format!("/data/f{}", i % 17);
        let event = FileEvent {
            pid: 42,
            cmd: Cow::Borrowed("writer"),
            user: Cow::Borrowed("root"),
            file_size: i as u64,
            ppid: 1,
            tgid: 42,
            ..FileEvent::bare(&time, "CLOSE_WRITE", &path)
        };
        serde_json::to_string(&event).unwrap() + "\n"
    }

    fn policy(size: u64) -> Retention {
        Retention {
            keep_days: 30,
            size,
            interval: Duration::from_secs(1),
            shipped_groups: None,
            ship: None,
        }
    }

    fn append(live: &Path, lines: &[String]) {
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(live)
            .unwrap();
        f.write_all(lines.concat().as_bytes()).unwrap();
    }

    fn query(live: &Path, range: TimeRange) -> (String, logfile::QueryStats) {
        let mut out = Vec::new();
        let stats = logfile::query(
            live,
            &QueryOptions {
                range,
                path_prefix: None,
            },
            &mut out,
        )
        .unwrap();
        (String::from_utf8(out).unwrap(), stats)
    }

    fn at(i: i64) -> Bound {
        Bound::inclusive(base() + TimeDelta::milliseconds(i * 1500))
    }

    fn retain(live: &Path, p: &Retention, now: DateTime<Utc>) -> Retained {
        retain_log(live, p, None, now, |_, _, swap| swap()).unwrap()
    }

    /// Rotations between appends: every line once, in order, in archives
    /// and the live log; windows across archive boundaries are exact, and
    /// only the archives they need are opened.
    #[test]
    fn rotation_keeps_every_line_once() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("g_log.jsonl");
        let all: Vec<String> = (0..600).map(line).collect();
        let p = policy(100_000); // rotate past 10,000 bytes
        let now = base() + TimeDelta::days(1);
        let mut archives = 0;
        for chunk in all.chunks(45) {
            append(&live, chunk);
            archives += retain(&live, &p, now).archive.is_some() as usize;
        }
        assert!(archives >= 5, "{archives} archives");
        let files = archive::list(&live).unwrap();
        assert_eq!(files.len(), archives + 1);
        assert_eq!(query(&live, TimeRange::ALL).0, all.concat());
        for (since, until) in [
            (0, 599),
            (3, 250),
            (100, 101),
            (299, 300),
            (44, 46),
            (590, 700),
        ] {
            let range = TimeRange {
                since: Some(at(since)),
                until: Some(at(until)),
            };
            let want: String = all[since as usize..=(until as usize).min(599)].concat();
            let (got, stats) = query(&live, range);
            assert_eq!(got, want, "{since}..={until}");
            assert!(stats.unreadable.is_empty());
        }
        // changes: the newest line of each path, across files.
        let mut out = Vec::new();
        logfile::changes(&live, &QueryOptions::default(), &mut out).unwrap();
        let want: String = all[600 - 17..].iter().rev().cloned().collect();
        assert_eq!(String::from_utf8(out).unwrap(), want);
    }

    #[test]
    fn keep_days_and_size_delete_archives() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("g_log.jsonl");
        let all: Vec<String> = (0..600).map(line).collect();
        let p = policy(100_000);
        for chunk in all.chunks(60) {
            append(&live, chunk);
            retain(&live, &p, base() + TimeDelta::days(1));
        }
        let before = archive::list(&live).unwrap().len() - 1;
        // A small budget: the oldest archives go first, the newest stay.
        let archived: u64 = archive::list(&live)
            .unwrap()
            .iter()
            .filter(|s| s.kind == archive::Kind::Zstd)
            .map(|s| fs::metadata(&s.path).unwrap().len())
            .sum();
        let live_len = fs::metadata(&live).unwrap().len();
        let small = Retention {
            size: live_len + archived / 2,
            ..policy(100_000)
        };
        // (no rotation: the live log is small and new)
        let done = retain_log(
            &live,
            &small,
            None,
            base() + TimeDelta::days(1),
            |_, _, s| s(),
        )
        .unwrap();
        assert!(done.archive.is_none());
        assert!(!done.deleted.is_empty() && done.deleted.len() < before);
        let (out, _) = query(&live, TimeRange::ALL);
        assert!(all.concat().ends_with(&out) && !out.is_empty());
        // Past keep_days: the live log is archived and every archive goes.
        append(&live, &[line(600)]);
        let done = retain(&live, &p, base() + TimeDelta::days(40));
        assert!(done.archive.is_some());
        assert_eq!(archive::list(&live).unwrap().len(), 1, "only the live log");
        assert_eq!(query(&live, TimeRange::ALL).0, "");
    }

    /// The rotation's two renames, as a reader or a restarted daemon sees
    /// them between the archive's link and the swap.
    #[test]
    fn marker_hides_an_archive_until_the_swap() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("g_log.jsonl");
        let all: Vec<String> = (0..100).map(line).collect();
        append(&live, &all);
        // What a rotation has done when it crashes before the swap: the
        // archive holds lines still in the live log.
        let copy = dir.path().join("copy");
        fs::copy(&live, &copy).unwrap();
        let reader = LogReader::open(&copy).unwrap();
        let (tmp, _) = archive::compress_prefix(reader.file(), &live, reader.end(), 0o600).unwrap();
        let name = archive::free_name(&live, base(), base() + TimeDelta::hours(1)).unwrap();
        let ino = fs::metadata(&live).unwrap().ino();
        archive::write_marker(
            &live,
            &archive::Marker {
                archive: name.clone(),
                ino,
            },
            0o600,
        )
        .unwrap();
        fs::rename(&tmp, live.with_file_name(&name)).unwrap();
        fs::remove_file(&copy).unwrap();
        assert_eq!(query(&live, TimeRange::ALL).0, all.concat());
        let stale = dir.path().join(".g_log.jsonl.archive-1");
        fs::write(&stale, "half an archive").unwrap();
        archive::recover(&live).unwrap();
        assert!(!stale.exists(), "a crashed rotation's temp file goes");
        assert!(!live.with_file_name(&name).exists());
        assert!(!archive::marker_path(&live).exists());
        assert_eq!(query(&live, TimeRange::ALL).0, all.concat());
    }

    /// Something planted at the archive's name is neither followed nor
    /// replaced; the archive takes the next name and a query says what it
    /// could not read.
    #[test]
    fn planted_symlink_at_archive_name() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("g_log.jsonl");
        let all: Vec<String> = (0..100).map(line).collect();
        append(&live, &all);
        let victim = dir.path().join("victim");
        fs::write(&victim, "precious").unwrap();
        let last = base() + TimeDelta::milliseconds(99 * 1500);
        let planted = archive::archive_path(&live, base(), last).unwrap();
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        let done = retain(&live, &policy(1000), base() + TimeDelta::days(1));
        let (name, _) = done.archive.unwrap();
        assert!(name.ends_with("-1.jsonl.zst"), "{name}");
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
        assert!(fs::symlink_metadata(&planted).unwrap().is_symlink());
        let (out, stats) = query(&live, TimeRange::ALL);
        assert_eq!(out, all.concat());
        assert_eq!(stats.unreadable.len(), 1, "{:?}", stats.unreadable);
    }

    /// logrotate's renamed files are read with the live log, in order.
    #[test]
    fn logrotate_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("g_log.jsonl");
        let all: Vec<String> = (0..120).map(line).collect();
        append(&live.with_file_name("g_log.jsonl.3"), &all[..30]);
        // gzip (logrotate's default `compress`), two members as `cat a.gz
        // b.gz` leaves them: both are read.
        let mut gz = Vec::new();
        for part in [&all[30..45], &all[45..60]] {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(part.concat().as_bytes()).unwrap();
            gz.extend(enc.finish().unwrap());
        }
        fs::write(live.with_file_name("g_log.jsonl.2.gz"), gz).unwrap();
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        enc.write_all(all[60..90].concat().as_bytes()).unwrap();
        fs::write(
            live.with_file_name("g_log.jsonl.1.zst"),
            enc.finish().unwrap(),
        )
        .unwrap();
        append(&live, &all[90..]);
        assert_eq!(query(&live, TimeRange::ALL).0, all.concat());
        let range = TimeRange {
            since: Some(at(20)),
            until: Some(at(95)),
        };
        assert_eq!(query(&live, range).0, all[20..=95].concat());
        // Only rotated files left.
        fs::remove_file(&live).unwrap();
        assert_eq!(query(&live, TimeRange::ALL).0, all[..90].concat());
        // A truncated gzip file: its readable lines, and the reader says so.
        let gz = fs::read(live.with_file_name("g_log.jsonl.2.gz")).unwrap();
        fs::write(live.with_file_name("g_log.jsonl.2.gz"), &gz[..gz.len() / 3]).unwrap();
        let (out, stats) = query(&live, TimeRange::ALL);
        assert!(out.starts_with(&all[..30].concat()), "{out}");
        assert!(out.ends_with(&all[60..90].concat()), "{out}");
        assert_eq!(stats.unreadable.len(), 1, "{:?}", stats.unreadable);
        assert!(
            stats.unreadable[0].contains("g_log.jsonl.2.gz"),
            "{:?}",
            stats.unreadable
        );
    }
}
