//! The files of one group's log: the live log, the daemon's zstd archives
//! and logrotate's renamed files, read by `query` and `changes` as one log.
//!
//! Names, beside the live log `<group>_log.jsonl`:
//! - `<group>_log.<first>_<last>.jsonl.zst`: an archive made by the daemon
//!   (see `pipeline::write`, retention). `<first>` and `<last>` are the UTC
//!   times of its first and last lines, `20260507T100000.000000Z`, so a
//!   query picks archives by name without opening them. When that name is
//!   taken (by anything), `-1` .. `-9` follow `<last>`.
//! - `<group>_log.jsonl.<N>`, `<group>_log.jsonl.<N>.gz` and
//!   `<group>_log.jsonl.<N>.zst`: what logrotate leaves (`copytruncate`
//!   off; `compress` gives `.gz`, `compresscmd zstd` `.zst`), read the same
//!   way.
//!
//! Order: by the time of each file's first line (from the name, or read
//! from the file for logrotate's), the live log last.
//!
//! A rotation makes an archive of the live log's first lines, then swaps
//! the live log for a copy without them. Between the two renames both hold
//! those lines. The marker `.<group>_log.jsonl.rotating` (written before the
//! archive gets its name, removed after the swap) names the archive and the
//! inode of the live log it was cut from: a reader whose live log has that
//! inode skips the archive, and a daemon that finds a marker at start (a
//! crash between the renames) removes the archive if the swap did not
//! happen. No line is ever read twice or lost.
use std::{
    fs::{self, File},
    io::{self, Read},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{
    error::{Error, Result},
    safefs,
};

pub const ARCHIVE_SUFFIX: &str = ".jsonl.zst";
const MARKER_SUFFIX: &str = ".rotating";
/// How an archive's times are spelled in its name (UTC, no ':').
const NAME_TIME: &str = "%Y%m%dT%H%M%S%.6fZ";

/// First and last line's times.
pub type Span = (DateTime<Utc>, DateTime<Utc>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `<group>_log.jsonl`, binary-searched.
    Live,
    /// logrotate's `<group>_log.jsonl.<N>`, binary-searched.
    Plain,
    /// zstd: the daemon's archives and logrotate's `.<N>.zst`, streamed.
    Zstd,
    /// gzip: logrotate's `.<N>.gz` (its default `compress`), streamed.
    Gzip,
}

impl Kind {
    /// A compressed file: streamed whole, not binary-searched.
    pub fn compressed(self) -> bool {
        matches!(self, Kind::Zstd | Kind::Gzip)
    }
}

/// One file of a group's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub path: PathBuf,
    pub kind: Kind,
    /// First and last line's times, from a daemon archive's name.
    pub range: Option<Span>,
}

/// The spelling of `t` in an archive name.
pub fn name_time(t: DateTime<Utc>) -> String {
    t.format(NAME_TIME).to_string()
}

fn parse_name_time(s: &str) -> Option<DateTime<Utc>> {
    NaiveDateTime::parse_from_str(s, NAME_TIME)
        .ok()
        .map(|n| n.and_utc())
}

/// The archive name for lines from `first` to `last` of the live log
/// `live_name` (`<group>_log.jsonl`); `k` > 0 for the alternatives.
pub fn archive_name(live_name: &str, first: DateTime<Utc>, last: DateTime<Utc>, k: u32) -> String {
    let stem = live_name.strip_suffix(".jsonl").unwrap_or(live_name);
    let alt = if k == 0 {
        String::new()
    } else {
        format!("-{k}")
    };
    format!(
        "{stem}.{}_{}{alt}{ARCHIVE_SUFFIX}",
        name_time(first),
        name_time(last)
    )
}

/// What `name` is among the files of the live log named `live_name`.
pub fn classify(live_name: &str, name: &str) -> Option<(Kind, Option<Span>)> {
    if name == live_name {
        return Some((Kind::Live, None));
    }
    let digits = |s: &str| !s.is_empty() && s.len() <= 9 && s.bytes().all(|b| b.is_ascii_digit());
    if let Some(rest) = name
        .strip_prefix(live_name)
        .and_then(|r| r.strip_prefix('.'))
    {
        if digits(rest) {
            return Some((Kind::Plain, None));
        }
        if rest.strip_suffix(".zst").is_some_and(digits) {
            return Some((Kind::Zstd, None));
        }
        if rest.strip_suffix(".gz").is_some_and(digits) {
            return Some((Kind::Gzip, None));
        }
        return None;
    }
    let stem = live_name.strip_suffix(".jsonl")?;
    let middle = name
        .strip_prefix(stem)?
        .strip_prefix('.')?
        .strip_suffix(ARCHIVE_SUFFIX)?;
    let (first, last) = middle.split_once('_')?;
    let last = match last.split_once('-') {
        Some((t, k)) if k.len() == 1 && k.bytes().all(|b| b.is_ascii_digit()) => t,
        Some(_) => return None,
        None => last,
    };
    let (first, last) = (parse_name_time(first)?, parse_name_time(last)?);
    (first <= last).then_some((Kind::Zstd, Some((first, last))))
}

/// The files of the log whose live file is `live`, not yet ordered; the
/// live log is included if it exists. Symlinks and other non-files with
/// these names are listed too: opening them fails, and the reader says so.
pub fn list(live: &Path) -> Result<Vec<Source>> {
    let (dir, live_name) = split(live)?;
    let entries = fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some((kind, range)) = classify(live_name, name) {
            out.push(Source {
                path: dir.join(name),
                kind,
                range,
            });
        }
    }
    Ok(out)
}

/// The daemon's own archives of the log `live` (times in their names,
/// regular files only: never logrotate's files, never a planted link),
/// with their sizes on disk, oldest first. What `size` counts and what
/// expiry may delete.
pub fn own_archives(live: &Path) -> Result<Vec<(Span, PathBuf, u64)>> {
    let mut out: Vec<(Span, PathBuf, u64)> = list(live)?
        .into_iter()
        .filter_map(|s| {
            let range = s.range?;
            let meta = fs::symlink_metadata(&s.path).ok()?;
            meta.file_type()
                .is_file()
                .then_some((range, s.path, meta.len()))
        })
        .collect();
    out.sort();
    Ok(out)
}

fn split(live: &Path) -> Result<(&Path, &str)> {
    let name = live
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::invalid(format!("{}: not a log file path", live.display())))?;
    let dir = match live.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Ok((dir, name))
}

// ---------------------------------------------------------------------------
// The rotation marker
// ---------------------------------------------------------------------------

/// A rotation in progress (or interrupted by a crash): `archive` holds the
/// first lines of the live log with inode `ino` until it is swapped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    pub archive: String,
    pub ino: u64,
}

/// `.<group>_log.jsonl.rotating`.
pub fn marker_path(live: &Path) -> PathBuf {
    let name = live
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    live.with_file_name(format!(".{name}{MARKER_SUFFIX}"))
}

/// Reads the marker; `None` if there is none or it is not one of ours.
pub fn read_marker(live: &Path) -> Result<Option<Marker>> {
    let path = marker_path(live);
    let file = match safefs::open_read(&path) {
        Ok(f) => f,
        Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let mut text = String::new();
    Read::take(&file, 4096)
        .read_to_string(&mut text)
        .map_err(|e| Error::io(&path, e))?;
    Ok(serde_json::from_str(text.trim()).ok())
}

// ---------------------------------------------------------------------------
// A consistent view for readers
// ---------------------------------------------------------------------------

/// The files a reader reads, live log last, and the inode of the live log
/// as it will be read (`None`: there is no live log).
#[derive(Debug)]
pub struct Snapshot {
    /// Every file but the live one, oldest first.
    pub older: Vec<Source>,
    pub live: Option<File>,
}

/// Opens the live log (if any) and lists the other files, so that a
/// rotation running meanwhile shows each line exactly once: the live log
/// is opened first, the marker read after the listing, and the whole is
/// redone if the live log was swapped in between.
pub fn snapshot(live: &Path) -> Result<Snapshot> {
    for _ in 0..100 {
        let file = match safefs::open_read(live) {
            Ok(f) => Some(f),
            Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let ino = match &file {
            Some(f) => Some(f.metadata().map_err(|e| Error::io(live, e))?.ino()),
            None => None,
        };
        let mut older: Vec<Source> = list(live)?
            .into_iter()
            .filter(|s| s.kind != Kind::Live)
            .collect();
        let marker = read_marker(live)?;
        let now = fs::symlink_metadata(live).ok().map(|m| m.ino());
        if now != ino {
            continue;
        }
        if let (Some(m), Some(ino)) = (marker, ino)
            && m.ino == ino
        {
            older.retain(|s| s.path.file_name().and_then(|n| n.to_str()) != Some(&m.archive));
        }
        order(&mut older);
        return Ok(Snapshot { older, live: file });
    }
    Err(Error::invalid(format!(
        "{}: the log kept changing while it was opened",
        live.display()
    )))
}

/// Oldest first, by the first line's time; a file without a readable first
/// line first (it adds nothing in any order).
fn order(sources: &mut [Source]) {
    type Key = (Option<DateTime<Utc>>, Option<DateTime<Utc>>, Source);
    let mut keyed: Vec<Key> = sources
        .iter()
        .map(|s| {
            let first = match s.range {
                Some((first, _)) => Some(first),
                None => first_time(s),
            };
            (first, s.range.map(|r| r.1), s.clone())
        })
        .collect();
    keyed.sort_by(|a, b| (a.0, a.1, &a.2.path).cmp(&(b.0, b.1, &b.2.path)));
    for (slot, (_, _, s)) in sources.iter_mut().zip(keyed) {
        *slot = s;
    }
}

/// The time of the first valid line of a file without times in its name.
fn first_time(source: &Source) -> Option<DateTime<Utc>> {
    let mut found = None;
    let _ = crate::logfile::scan_source(source, &Default::default(), None, |line| {
        found = Some(line.time.to_utc());
        Ok(std::ops::ControlFlow::Break(()))
    });
    found
}

// ---------------------------------------------------------------------------
// Reading a compressed file
// ---------------------------------------------------------------------------

/// A streaming zstd decoder over a file (O_NOFOLLOW, regular files only).
/// Memory stays bounded: the decoder's window plus the reader's buffer.
pub fn open_zstd(path: &Path) -> Result<impl Read + use<>> {
    let file = safefs::open_read(path)?;
    zstd::stream::read::Decoder::new(file).map_err(|e| Error::io(path, e))
}

/// A streaming gzip decoder over a file (O_NOFOLLOW, regular files only).
/// Multi-member: `gzip` appends a member per `cat a.gz b.gz`, and logrotate
/// with `delaycompress` off may leave such files.
pub fn open_gzip(path: &Path) -> Result<impl Read + use<>> {
    let file = safefs::open_read(path)?;
    Ok(flate2::read::MultiGzDecoder::new(
        io::BufReader::with_capacity(64 * 1024, file),
    ))
}

/// A streaming decoder for a compressed file of the log.
pub fn open_compressed(source: &Source) -> Result<Box<dyn Read>> {
    Ok(match source.kind {
        Kind::Gzip => Box::new(open_gzip(&source.path)?),
        _ => Box::new(open_zstd(&source.path)?),
    })
}

// ---------------------------------------------------------------------------
// Writing an archive
// ---------------------------------------------------------------------------

/// zstd level for archives: fast, and logs compress well at any level.
const LEVEL: i32 = 3;

/// Compresses bytes `[0, cut)` of the log open as `src` into a new hidden
/// file beside `live` (O_EXCL|O_NOFOLLOW, mode `mode`, created with the
/// caller's credentials), synced. Returns its path and file; the caller
/// gives it its name with [`publish`].
pub fn compress_prefix(src: &File, live: &Path, cut: u64, mode: u32) -> Result<(PathBuf, File)> {
    let (_, live_name) = split(live)?;
    let tmp = live.with_file_name(format!(".{live_name}.archive-{}", std::process::id()));
    // A leftover of an interrupted rotation of ours: removing a name never
    // follows it.
    let _ = fs::remove_file(&tmp);
    let file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode_and_flags(0o600)
        .open(&tmp)
        .map_err(|e| Error::io(&tmp, e))?;
    let result = (|| -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(mode & 0o7777))
            .map_err(|e| Error::io(&tmp, e))?;
        crate::system::share(&file, &tmp, mode & 0o7777)?;
        let mut enc = zstd::stream::write::Encoder::new(
            io::BufWriter::with_capacity(256 * 1024, &file),
            LEVEL,
        )
        .map_err(|e| Error::io(&tmp, e))?;
        let mut reader =
            io::BufReader::with_capacity(256 * 1024, Read::take(ReadAt::new(src), cut));
        let copied = io::copy(&mut reader, &mut enc).map_err(|e| Error::io(&tmp, e))?;
        if copied != cut {
            return Err(Error::invalid(format!(
                "{}: the log shrank while it was archived",
                live.display()
            )));
        }
        let mut out = enc.finish().map_err(|e| Error::io(&tmp, e))?;
        io::Write::flush(&mut out).map_err(|e| Error::io(&tmp, e))?;
        drop(out);
        file.sync_all().map_err(|e| Error::io(&tmp, e))
    })();
    match result {
        Ok(()) => Ok((tmp, file)),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// The first archive name for `first`..`last` that nothing has (checked
/// without following anything; `link` refuses a name taken after this).
pub fn free_name(live: &Path, first: DateTime<Utc>, last: DateTime<Utc>) -> Result<String> {
    let (_, live_name) = split(live)?;
    for k in 0..10 {
        let name = archive_name(live_name, first, last, k);
        match fs::symlink_metadata(live.with_file_name(&name)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(name),
            Err(e) => return Err(Error::io(live.with_file_name(&name), e)),
            Ok(_) => log::warn!(
                "{}: the name is taken (not by a rotation of ours); the archive gets another one",
                live.with_file_name(&name).display()
            ),
        }
    }
    Err(Error::invalid(format!(
        "{}: every archive name for {}..{} is taken",
        live.display(),
        name_time(first),
        name_time(last)
    )))
}

/// The name an archive would get (the first alternative), for messages
/// and tests.
pub fn archive_path(live: &Path, first: DateTime<Utc>, last: DateTime<Utc>) -> Result<PathBuf> {
    let (_, live_name) = split(live)?;
    Ok(live.with_file_name(archive_name(live_name, first, last, 0)))
}

/// Writes the marker (synced): a rotation of the live log with inode `ino`
/// into `archive` is under way.
pub fn write_marker(live: &Path, marker: &Marker, mode: u32) -> Result<()> {
    let path = marker_path(live);
    let _ = fs::remove_file(&path);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode_and_flags(0o600)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(mode & 0o7777))
            .map_err(|e| Error::io(&path, e))?;
    }
    crate::system::share(&file, &path, mode & 0o7777)?;
    let mut text = serde_json::to_vec(marker).expect("serializable");
    text.push(b'\n');
    io::Write::write_all(&mut file, &text)
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::io(&path, e))
}

pub fn remove_marker(live: &Path) {
    let _ = fs::remove_file(marker_path(live));
}

/// Settles a marker left by a crash: if the live log still has the inode
/// the archive was cut from, the swap never happened and the archive (a
/// copy of lines still in the live log) goes; otherwise the marker goes.
pub fn recover(live: &Path) -> Result<()> {
    remove_stale_temps(live);
    let Some(marker) = read_marker(live)? else {
        remove_marker(live);
        return Ok(());
    };
    let live_ino = fs::symlink_metadata(live).ok().map(|m| m.ino());
    if live_ino == Some(marker.ino) && classify(split(live)?.1, &marker.archive).is_some() {
        let archive = live.with_file_name(&marker.archive);
        log::warn!(
            "{}: a rotation was interrupted before the swap; its archive {} is removed (the lines are still in the log)",
            live.display(),
            marker.archive
        );
        if let Err(e) = fs::remove_file(&archive)
            && e.kind() != io::ErrorKind::NotFound
        {
            return Err(Error::io(archive, e));
        }
    }
    remove_marker(live);
    Ok(())
}

/// Removes the hidden archives of rotations that a crash interrupted
/// before they got their name (`.<group>_log.jsonl.archive-<pid>`): their
/// lines are still in the live log. Removing a name never follows it.
fn remove_stale_temps(live: &Path) {
    let Ok((dir, live_name)) = split(live) else {
        return;
    };
    let prefix = format!(".{live_name}.archive-");
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name.to_str().is_some_and(|n| n.starts_with(&prefix)) {
            let _ = fs::remove_file(dir.join(name));
        }
    }
}

/// `OpenOptions` with O_NOFOLLOW|O_CLOEXEC and a mode.
trait ModeAndFlags {
    fn mode_and_flags(&mut self, mode: u32) -> &mut Self;
}

impl ModeAndFlags for fs::OpenOptions {
    fn mode_and_flags(&mut self, mode: u32) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.mode(mode)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
    }
}

/// `Read` over a file with `pread` from offset 0 (the writer's descriptor
/// is in append mode; its offset is not ours to move).
struct ReadAt<'a> {
    file: &'a File,
    at: u64,
}

impl<'a> ReadAt<'a> {
    fn new(file: &'a File) -> Self {
        ReadAt { file, at: 0 }
    }
}

impl Read for ReadAt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let n = self.file.read_at(buf, self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    #[test]
    fn names_round_trip_and_strangers_are_ignored() {
        let live = "web_log.jsonl";
        let (a, b) = (
            t("2026-05-07T10:00:00.5Z"),
            t("2026-05-07T11:30:00.000001Z"),
        );
        let name = archive_name(live, a, b, 0);
        assert_eq!(
            name,
            "web_log.20260507T100000.500000Z_20260507T113000.000001Z.jsonl.zst"
        );
        assert_eq!(classify(live, &name), Some((Kind::Zstd, Some((a, b)))));
        let alt = archive_name(live, a, b, 3);
        assert_eq!(classify(live, &alt), Some((Kind::Zstd, Some((a, b)))));
        assert_eq!(classify(live, live), Some((Kind::Live, None)));
        assert_eq!(classify(live, "web_log.jsonl.1"), Some((Kind::Plain, None)));
        assert_eq!(
            classify(live, "web_log.jsonl.12.zst"),
            Some((Kind::Zstd, None))
        );
        assert_eq!(
            classify(live, "web_log.jsonl.1.gz"),
            Some((Kind::Gzip, None))
        );
        for other in [
            "web_log.jsonl.ship-cursor",
            ".web_log.jsonl.rotating",
            "web_log.jsonl.1.gz.zst",
            "web_log.jsonl.x.gz",
            "web_log.jsonl.x",
            "web2_log.jsonl",
            "web_log.garbage_x.jsonl.zst",
            "web_log.20260507T113000.000000Z_20260507T100000.000000Z.jsonl.zst",
            "web_log.foo_log.jsonl",
        ] {
            assert_eq!(classify(live, other), None, "{other}");
        }
    }
}
