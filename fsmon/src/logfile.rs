//! Reading and trimming the per-group JSONL logs.
//!
//! A log is append-only, one [`FileEvent`] per line, in non-decreasing time
//! order. Three facts shape this module:
//!
//! - Logs get big (1 GB) and most questions are about the recent end, so a
//!   time window is found by binary search over byte offsets with `pread`:
//!   a query of the last hour reads O(log n) pages plus the lines it prints.
//! - Logs can hold damage: a partial last line after a crash, garbage after a
//!   disk-full incident or a hand edit. A line is *valid* when it parses as a
//!   `FileEvent` whose `time` is RFC 3339; everything else is skipped and
//!   counted, never fatal. The binary search uses the same definition, so it
//!   agrees with the output about which lines exist.
//! - `clean` may run while the daemon appends. Trimming copies the kept tail
//!   to a temp file beside the log, then (with writers paused) appends what
//!   arrived meanwhile and renames the copy over the log: no line is lost.
//!
//! Layout: [`LogReader`] (open, scan, binary search), then [`query`] and
//! [`changes`], then [`plan_clean`], [`copy_tail`] and [`complete_trim`].
use std::{
    cell::Cell,
    collections::HashMap,
    fmt,
    fs::{self, File, OpenOptions},
    io::{self, BufWriter, Read, Seek, SeekFrom, Write},
    ops::ControlFlow,
    os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use chrono::{DateTime, FixedOffset, Offset, SecondsFormat, Utc};

use crate::{
    archive::{self, Kind, Source},
    error::{Error, Result},
    event::{FileEvent, OVERFLOW_TYPE},
    filters::{Bound, TimeFilter, TimeRange, format_size, path_has_prefix},
    safefs,
};

/// Read size when scanning a window line by line.
const SCAN_CHUNK: usize = 64 * 1024;
/// Read size for binary-search probes: one page.
const PROBE_CHUNK: usize = 4096;
/// A "line" longer than this is garbage (a real event is well under 64 KB);
/// it is skipped without being held in memory.
const MAX_LINE: usize = 1 << 20;

// ---------------------------------------------------------------------------
// Lines
// ---------------------------------------------------------------------------

/// One valid line of a log.
#[derive(Debug)]
pub struct Line<'a> {
    /// Byte offset of the line's first byte.
    pub offset: u64,
    /// The line as stored, without its newline.
    pub text: &'a [u8],
    pub event: FileEvent<'a>,
    pub time: DateTime<FixedOffset>,
}

impl Line<'_> {
    /// Offset just past the line's newline: where the next line starts.
    pub fn end(&self) -> u64 {
        self.offset + self.text.len() as u64 + 1
    }
}

/// Parses one line (without newline). `None` means the line is corrupt.
pub fn parse_line(text: &[u8]) -> Option<(FileEvent<'_>, DateTime<FixedOffset>)> {
    let event: FileEvent = serde_json::from_slice(text).ok()?;
    let time = DateTime::parse_from_rfc3339(&event.time).ok()?;
    Some((event, time))
}

/// A line as read, before parsing. `too_long` lines have no text.
struct RawLine<'a> {
    offset: u64,
    text: &'a [u8],
    too_long: bool,
}

/// Splits `[from, to)` of a log into lines, reading `chunk` bytes at a time
/// with `pread`. `from` must be a line start and `to` a line start or the
/// end of the last complete line, so every line found ends with a newline.
struct RawLines<'r> {
    log: &'r LogReader,
    buf: Vec<u8>,
    /// File offset of `buf[0]`.
    buf_offset: u64,
    /// Start of the next line in `buf`.
    head: usize,
    /// Bytes after `head` already searched for a newline.
    scanned: usize,
    /// File offset of the next read.
    next_read: u64,
    to: u64,
    chunk: usize,
}

impl<'r> RawLines<'r> {
    fn new(log: &'r LogReader, from: u64, to: u64, chunk: usize) -> Self {
        RawLines {
            log,
            buf: Vec::new(),
            buf_offset: from,
            head: 0,
            scanned: 0,
            next_read: from,
            to,
            chunk,
        }
    }

    fn next(&mut self) -> Result<Option<RawLine<'_>>> {
        // Set while skipping through an oversized line: where it started.
        let mut too_long_from = None;
        loop {
            let unsearched = &self.buf[self.head + self.scanned..];
            if let Some(i) = unsearched.iter().position(|&b| b == b'\n') {
                let start = self.head;
                let newline = start + self.scanned + i;
                self.head = newline + 1;
                self.scanned = 0;
                return Ok(Some(match too_long_from {
                    Some(offset) => RawLine {
                        offset,
                        text: &[],
                        too_long: true,
                    },
                    None => RawLine {
                        offset: self.buf_offset + start as u64,
                        text: &self.buf[start..newline],
                        too_long: false,
                    },
                }));
            }
            self.scanned = self.buf.len() - self.head;
            if self.scanned >= MAX_LINE {
                too_long_from.get_or_insert(self.buf_offset + self.head as u64);
                self.buf_offset += self.buf.len() as u64;
                self.buf.clear();
                (self.head, self.scanned) = (0, 0);
            }
            // Bytes without a newline at `to` only happen if the file
            // changed under us (it was truncated): they are not a line.
            if !self.refill()? {
                return Ok(None);
            }
        }
    }

    /// Drops consumed bytes and reads the next chunk. False at `to`.
    fn refill(&mut self) -> Result<bool> {
        if self.next_read >= self.to {
            return Ok(false);
        }
        self.buf.drain(..self.head);
        self.buf_offset += self.head as u64;
        self.head = 0;
        // Reads end on chunk-aligned offsets so each one touches as few
        // pages as possible.
        let to_boundary = self.chunk - (self.next_read % self.chunk as u64) as usize;
        let want = to_boundary.min((self.to - self.next_read) as usize);
        let filled = self.buf.len();
        self.buf.resize(filled + want, 0);
        let got = self.log.read_at(&mut self.buf[filled..], self.next_read)?;
        self.buf.truncate(filled + got);
        self.next_read += got as u64;
        if got == 0 {
            // Truncated under us: stop here.
            self.to = self.next_read;
        }
        Ok(got > 0)
    }
}

// ---------------------------------------------------------------------------
// LogReader: open, scan, search
// ---------------------------------------------------------------------------

/// An open log, read with `pread` only (no mmap: the daemon may append, and
/// a truncation would turn an mmap read into SIGBUS).
pub struct LogReader {
    path: PathBuf,
    file: File,
    /// File size when opened (or last refreshed).
    len: u64,
    /// End of the last complete line. Bytes in `[end, len)` are a partial
    /// last line: being written, or left by a crash.
    end: u64,
    /// Bytes read so far, to check that searches stay cheap.
    bytes_read: Cell<u64>,
}

impl LogReader {
    /// Opens a log read-only. Refuses symlinks and non-regular files.
    pub fn open(path: &Path) -> Result<LogReader> {
        LogReader::from_file(path, safefs::open_read(path)?)
    }

    /// A log already opened (with [`safefs::open_read`]).
    pub fn from_file(path: &Path, file: File) -> Result<LogReader> {
        let mut log = LogReader {
            path: path.to_owned(),
            file,
            len: 0,
            end: 0,
            bytes_read: Cell::new(0),
        };
        log.refresh()?;
        Ok(log)
    }

    /// Re-reads the size, to see lines appended since opening.
    fn refresh(&mut self) -> Result<()> {
        self.len = self
            .file
            .metadata()
            .map_err(|e| Error::io(&self.path, e))?
            .len();
        self.end = self.boundary_at_or_before(self.len)?;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// File size at open.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// End of the last complete line.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// Size of a partial last line (no newline yet), ignored by readers.
    pub fn partial_tail(&self) -> u64 {
        self.len - self.end
    }

    pub fn bytes_read(&self) -> u64 {
        self.bytes_read.get()
    }

    /// The zone of the log's times: the offset of its first valid line, UTC
    /// for a log without one. Dates without offset in `-t` are read in it.
    pub fn zone(&self) -> Result<FixedOffset> {
        let first = self.first_valid_line(0, self.end, SCAN_CHUNK)?;
        Ok(first.map_or(Utc.fix(), |(_, _, time)| time.offset().fix()))
    }

    /// Calls `f` with each valid line in `[from, to)` (line boundaries, such
    /// as [`LogReader::window`] returns) until it breaks. Returns the number
    /// of corrupt lines skipped.
    pub fn scan(
        &self,
        from: u64,
        to: u64,
        f: impl FnMut(Line<'_>) -> Result<ControlFlow<()>>,
    ) -> Result<u64> {
        self.scan_filtered(from, to, None, f)
    }

    /// [`LogReader::scan`] in big reads, looking only at the lines `pre`
    /// lets through (all with `None`). Corrupt lines are counted among
    /// those looked at.
    pub fn scan_filtered(
        &self,
        from: u64,
        to: u64,
        pre: Option<&Prefilter>,
        mut f: impl FnMut(Line<'_>) -> Result<ControlFlow<()>>,
    ) -> Result<u64> {
        let to = to.min(self.end);
        let mut at = from;
        let mut corrupt = 0;
        let oversized = for_each_block(
            |buf| {
                let n = (buf.len() as u64).min(to.saturating_sub(at)) as usize;
                let got = self.read_at(&mut buf[..n], at)?;
                at += got as u64;
                Ok(got)
            },
            from,
            |block, offset| scan_block(block, offset, pre, &mut corrupt, &mut f),
        )?;
        Ok(corrupt + oversized)
    }

    fn scan_chunked(
        &self,
        from: u64,
        to: u64,
        chunk: usize,
        mut f: impl FnMut(Line<'_>) -> Result<ControlFlow<()>>,
    ) -> Result<u64> {
        let mut lines = RawLines::new(self, from, to, chunk);
        let mut corrupt = 0;
        while let Some(raw) = lines.next()? {
            let parsed = if raw.too_long {
                None
            } else {
                parse_line(raw.text)
            };
            let Some((event, time)) = parsed else {
                corrupt += 1;
                continue;
            };
            if f(Line {
                offset: raw.offset,
                text: raw.text,
                event,
                time,
            })?
            .is_break()
            {
                break;
            }
        }
        Ok(corrupt)
    }

    /// The byte window `[from, to)` holding the lines inside `range`, found
    /// by binary search. Lines in it may still need [`TimeRange::contains`]
    /// if the log is out of order; corrupt lines in it are skipped by `scan`.
    pub fn window(&self, range: &TimeRange) -> Result<(u64, u64)> {
        let from = match range.since {
            Some(_) => self.partition_point(0, |t| range.after_since(t))?,
            None => 0,
        };
        let to = match range.until {
            Some(_) => self.partition_point(from, |t| range.past_until(t))?,
            None => self.end,
        };
        Ok((from, to))
    }

    /// Binary search over byte offsets. `pred` must be false for early
    /// times and true for late ones. Returns the line boundary in
    /// `[lo, end]` such that every valid line before it fails `pred` and
    /// every valid line from it on passes (`end` if none passes).
    ///
    /// Invariant: `lo` and `hi` are line boundaries; valid lines before `lo`
    /// fail, valid lines from `hi` on pass. Each step probes the line around
    /// the middle and either raises `lo` or lowers `hi`, so it ends.
    fn partition_point(
        &self,
        mut lo: u64,
        pred: impl Fn(&DateTime<FixedOffset>) -> bool,
    ) -> Result<u64> {
        let mut hi = self.end;
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            // The start of the line holding `mid` is in [lo, mid].
            let start = self.boundary_at_or_before(mid)?.max(lo);
            match self.first_valid_line(start, hi, PROBE_CHUNK)? {
                Some((offset, _, time)) if pred(&time) => hi = offset,
                Some((_, next, _)) => lo = next,
                // Only corrupt lines in [start, hi): they decide nothing.
                None => hi = start,
            }
        }
        Ok(lo)
    }

    /// The first valid line starting in `[from, to)`: (offset, end, time).
    fn first_valid_line(
        &self,
        from: u64,
        to: u64,
        chunk: usize,
    ) -> Result<Option<(u64, u64, DateTime<FixedOffset>)>> {
        let mut found = None;
        self.scan_chunked(from, to, chunk, |line| {
            found = Some((line.offset, line.end(), line.time));
            Ok(ControlFlow::Break(()))
        })?;
        Ok(found)
    }

    /// The time of the first valid line.
    pub fn first_time(&self) -> Result<Option<DateTime<FixedOffset>>> {
        Ok(self
            .first_valid_line(0, self.end, SCAN_CHUNK)?
            .map(|(_, _, t)| t))
    }

    /// The time of the last valid line ending at or before `to`.
    pub fn last_time_before(&self, to: u64) -> Result<Option<DateTime<FixedOffset>>> {
        self.last_valid_time_before(to)
    }

    /// The open file (read-only).
    pub fn file(&self) -> &File {
        &self.file
    }

    pub fn metadata(&self) -> Result<fs::Metadata> {
        self.file.metadata().map_err(|e| Error::io(&self.path, e))
    }

    /// The time of the last valid line ending at or before `to`.
    fn last_valid_time_before(&self, to: u64) -> Result<Option<DateTime<FixedOffset>>> {
        let mut hi = to;
        while hi > 0 {
            let start = self.boundary_at_or_before(hi - 1)?;
            if let Some((_, _, time)) = self.first_valid_line(start, hi, PROBE_CHUNK)? {
                return Ok(Some(time));
            }
            hi = start;
        }
        Ok(None)
    }

    /// The largest line boundary `<= pos`: 0 or just after a newline.
    fn boundary_at_or_before(&self, pos: u64) -> Result<u64> {
        let mut buf = [0u8; PROBE_CHUNK];
        let mut block_end = pos;
        while block_end > 0 {
            let block_start = (block_end - 1) / PROBE_CHUNK as u64 * PROBE_CHUNK as u64;
            let got = self.read_at(&mut buf[..(block_end - block_start) as usize], block_start)?;
            if let Some(i) = buf[..got].iter().rposition(|&b| b == b'\n') {
                return Ok(block_start + i as u64 + 1);
            }
            block_end = block_start;
        }
        Ok(0)
    }

    /// The smallest line boundary `>= pos`, at most `end`.
    fn boundary_at_or_after(&self, pos: u64) -> Result<u64> {
        if pos == 0 || pos >= self.end {
            return Ok(pos.min(self.end));
        }
        // A boundary follows a newline: look from the byte before `pos`.
        let mut buf = [0u8; PROBE_CHUNK];
        let mut at = pos - 1;
        while at < self.end {
            let n = (PROBE_CHUNK as u64).min(self.end - at) as usize;
            let got = self.read_at(&mut buf[..n], at)?;
            if let Some(i) = buf[..got].iter().position(|&b| b == b'\n') {
                return Ok(at + i as u64 + 1);
            }
            if got == 0 {
                break;
            }
            at += got as u64;
        }
        Ok(self.end)
    }

    /// Counts newlines (complete lines) in `[from, to)`.
    fn count_lines(&self, from: u64, to: u64) -> Result<u64> {
        let mut buf = vec![0u8; 256 * 1024];
        let (mut at, mut count) = (from, 0u64);
        while at < to {
            let n = (buf.len() as u64).min(to - at) as usize;
            let got = self.read_at(&mut buf[..n], at)?;
            if got == 0 {
                break;
            }
            count += buf[..got].iter().filter(|&&b| b == b'\n').count() as u64;
            at += got as u64;
        }
        Ok(count)
    }

    /// `pread` until `buf` is full or the file ends.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io(&self.path, e)),
            }
        }
        self.bytes_read.set(self.bytes_read.get() + done as u64);
        Ok(done)
    }
}

/// The zone of a log's times (see [`LogReader::zone`]); UTC when the live
/// log is gone (only archives are left).
pub fn log_zone(path: &Path) -> Result<FixedOffset> {
    match LogReader::open(path) {
        Ok(log) => log.zone(),
        Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => Ok(Utc.fix()),
        Err(e) => Err(e),
    }
}

/// Resolves `-t` values for a log: relative ones against `now`, dates
/// without offset in the log's zone. The log is only opened when a value
/// needs its zone.
pub fn resolve_range(path: &Path, filters: &[TimeFilter], now: DateTime<Utc>) -> Result<TimeRange> {
    let zone = if filters.iter().any(TimeFilter::needs_zone) {
        log_zone(path)?
    } else {
        Utc.fix()
    };
    TimeRange::new(filters, now, zone)
}

// ---------------------------------------------------------------------------
// query and changes
// ---------------------------------------------------------------------------

/// Filters shared by `query` and `changes`.
#[derive(Debug, Clone, Default)]
pub struct QueryOptions {
    pub range: TimeRange,
    /// Whole-component path prefix (`/data/a` matches `/data/a/x`, not
    /// `/data/ab`). `Q_OVERFLOW` records pass it: lost events may have been
    /// under any path.
    pub path_prefix: Option<String>,
}

impl QueryOptions {
    fn keeps(&self, line: &Line<'_>) -> bool {
        self.keeps_event(&line.event, &line.time)
    }

    /// The filter on a parsed event (also used by `fleet` on shipped events).
    pub fn keeps_event(&self, event: &FileEvent<'_>, time: &DateTime<FixedOffset>) -> bool {
        self.range.contains(time)
            && match &self.path_prefix {
                None => true,
                Some(prefix) => {
                    event.event_type == OVERFLOW_TYPE
                        || event.lost
                        || path_has_prefix(&event.path, prefix)
                }
            }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryStats {
    /// Lines written.
    pub matched: u64,
    /// Corrupt lines skipped inside the searched window (with a path
    /// filter: among the lines the byte search could not rule out).
    pub skipped_corrupt: u64,
    /// Size of a partial last line that was ignored (being written, or left
    /// by a crash). Not an error.
    pub partial_tail_bytes: u64,
    /// Bytes read from the files (a query of the recent end reads little;
    /// for archives, compressed bytes are not counted).
    pub bytes_read: u64,
    /// Archives or rotated files that could not be read, with why (one
    /// line each, for stderr). Their lines are missing from the output.
    pub unreadable: Vec<String>,
}

impl QueryStats {
    /// The warning a reader prints once per file, if any lines were skipped.
    pub fn corrupt_warning(&self, path: &Path) -> Option<String> {
        (self.skipped_corrupt > 0).then(|| {
            format!(
                "skipped {} corrupt lines in {}",
                self.skipped_corrupt,
                path.display()
            )
        })
    }
}

// ---------------------------------------------------------------------------
// Scanning: big blocks, a byte search before parsing
// ---------------------------------------------------------------------------

/// Read size of a full scan.
const BLOCK: usize = 1 << 20;

/// Rules lines out before they are parsed when only lines under a path
/// prefix can match: a line is parsed only if it holds the prefix's JSON
/// spelling, or a backslash (any escape: `\/`, `\u0061`, fsmon's `\xHH`
/// written as `\\x`, so the path might be spelled otherwise), or could be a
/// record that passes every path filter (`Q_OVERFLOW`, `"lost"`). A line
/// without a backslash spells its path exactly as its decoded value, so
/// one that holds none of these cannot match: the output is the same as
/// parsing every line.
pub struct Prefilter {
    needle: memchr::memmem::Finder<'static>,
    overflow: memchr::memmem::Finder<'static>,
    lost: memchr::memmem::Finder<'static>,
}

impl Prefilter {
    /// For `path_prefix` (as [`QueryOptions::path_prefix`]); `None` when it
    /// cannot rule anything out (`/`).
    pub fn for_prefix(prefix: &str) -> Option<Prefilter> {
        let prefix = prefix.trim_end_matches('/');
        if prefix.is_empty() {
            return None;
        }
        let json = serde_json::to_string(prefix).expect("a string serializes");
        let spelled = &json.as_bytes()[1..json.len() - 1];
        Some(Prefilter {
            needle: memchr::memmem::Finder::new(spelled).into_owned(),
            overflow: memchr::memmem::Finder::new(OVERFLOW_TYPE.as_bytes()).into_owned(),
            lost: memchr::memmem::Finder::new(b"\"lost\"").into_owned(),
        })
    }

    /// Whether the whole `line` may match (for tests and single lines).
    pub fn may_match(&self, line: &[u8]) -> bool {
        let mut c = Candidates::new(self, line);
        c.next_from(0).is_some()
    }
}

/// Positions in a block where a line that may match is, each trigger
/// searched once per block (the next hit of each is remembered).
struct Candidates<'b> {
    pre: &'b Prefilter,
    block: &'b [u8],
    /// Next hit of each trigger at or after the last search start.
    next: [Option<usize>; 4],
}

impl<'b> Candidates<'b> {
    fn new(pre: &'b Prefilter, block: &'b [u8]) -> Self {
        let mut c = Candidates {
            pre,
            block,
            next: [None; 4],
        };
        for i in 0..4 {
            c.next[i] = c.find(i, 0);
        }
        c
    }

    fn find(&self, trigger: usize, from: usize) -> Option<usize> {
        let hay = &self.block[from..];
        let hit = match trigger {
            0 => self.pre.needle.find(hay),
            1 => memchr::memchr(b'\\', hay),
            2 => self.pre.overflow.find(hay),
            _ => self.pre.lost.find(hay),
        };
        hit.map(|i| i + from)
    }

    /// The first hit at or after `pos`.
    fn next_from(&mut self, pos: usize) -> Option<usize> {
        let mut best: Option<usize> = None;
        for i in 0..4 {
            if let Some(at) = self.next[i]
                && at < pos
            {
                self.next[i] = if pos < self.block.len() {
                    self.find(i, pos)
                } else {
                    None
                };
            }
            if let Some(at) = self.next[i] {
                best = Some(best.map_or(at, |b| b.min(at)));
            }
        }
        best
    }
}

/// Calls `f` on the valid lines of `block` (whole lines, each ending with
/// a newline, the first at file offset `offset`) that `pre` lets through.
fn scan_block(
    block: &[u8],
    offset: u64,
    pre: Option<&Prefilter>,
    corrupt: &mut u64,
    f: &mut impl FnMut(Line<'_>) -> Result<ControlFlow<()>>,
) -> Result<ControlFlow<()>> {
    let mut visit = |start: usize, end: usize| -> Result<ControlFlow<()>> {
        let text = &block[start..end];
        let parsed = if text.len() >= MAX_LINE {
            None
        } else {
            parse_line(text)
        };
        match parsed {
            Some((event, time)) => f(Line {
                offset: offset + start as u64,
                text,
                event,
                time,
            }),
            None => {
                *corrupt += 1;
                Ok(ControlFlow::Continue(()))
            }
        }
    };
    match pre {
        None => {
            let mut start = 0;
            for newline in memchr::memchr_iter(b'\n', block) {
                if visit(start, newline)?.is_break() {
                    return Ok(ControlFlow::Break(()));
                }
                start = newline + 1;
            }
        }
        Some(pre) => {
            let mut hits = Candidates::new(pre, block);
            let mut pos = 0;
            while let Some(hit) = hits.next_from(pos) {
                let start = memchr::memrchr(b'\n', &block[pos..hit]).map_or(pos, |i| pos + i + 1);
                let Some(len) = memchr::memchr(b'\n', &block[hit..]) else {
                    break;
                };
                let end = hit + len;
                if visit(start, end)?.is_break() {
                    return Ok(ControlFlow::Break(()));
                }
                pos = end + 1;
                if pos >= block.len() {
                    break;
                }
            }
        }
    }
    Ok(ControlFlow::Continue(()))
}

/// Reads with `read` (0 at the end) from file offset `from` and hands `f`
/// blocks of whole lines with the offset of their first byte. A line
/// longer than [`MAX_LINE`] is skipped without being held (counted by
/// `f`'s caller as corrupt through `scan_block` when it fits a block, by
/// the returned count otherwise). Bytes after the last newline are not a
/// line. Returns the number of oversized lines dropped here.
fn for_each_block(
    mut read: impl FnMut(&mut [u8]) -> Result<usize>,
    from: u64,
    mut f: impl FnMut(&[u8], u64) -> Result<ControlFlow<()>>,
) -> Result<u64> {
    let mut data: Vec<u8> = Vec::with_capacity(BLOCK + SCAN_CHUNK);
    let mut offset = from;
    let mut skipping = false;
    let mut oversized = 0;
    loop {
        let filled = data.len();
        data.resize(filled + BLOCK, 0);
        let got = read(&mut data[filled..])?;
        data.truncate(filled + got);
        if got == 0 {
            return Ok(oversized);
        }
        let mut begin = 0;
        if skipping {
            match memchr::memchr(b'\n', &data) {
                Some(i) => {
                    begin = i + 1;
                    skipping = false;
                }
                None => {
                    offset += data.len() as u64;
                    data.clear();
                    continue;
                }
            }
        }
        match memchr::memrchr(b'\n', &data[begin..]) {
            Some(i) => {
                let end = begin + i + 1;
                if f(&data[begin..end], offset + begin as u64)?.is_break() {
                    return Ok(oversized);
                }
                data.drain(..end);
                offset += end as u64;
            }
            None if data.len() - begin >= MAX_LINE => {
                oversized += 1;
                skipping = true;
                offset += data.len() as u64;
                data.clear();
            }
            None => {
                data.drain(..begin);
                offset += begin as u64;
            }
        }
    }
}

/// What scanning one file found besides its lines.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct SourceScan {
    pub corrupt: u64,
    pub bytes_read: u64,
}

/// Calls `f` with the valid lines of a file that is not the live log, in
/// file order: a plain rotated file through its window in `range`, a
/// compressed one streamed whole (bounded memory). Lines may still need
/// `range` checked.
pub(crate) fn scan_source(
    source: &Source,
    range: &TimeRange,
    pre: Option<&Prefilter>,
    mut f: impl FnMut(Line<'_>) -> Result<ControlFlow<()>>,
) -> Result<SourceScan> {
    match source.kind {
        Kind::Live | Kind::Plain => {
            let log = LogReader::open(&source.path)?;
            let (from, to) = log.window(range)?;
            let corrupt = log.scan_filtered(from, to, pre, f)?;
            Ok(SourceScan {
                corrupt,
                bytes_read: log.bytes_read(),
            })
        }
        Kind::Zstd | Kind::Gzip => {
            let mut reader = archive::open_compressed(source)?;
            let mut corrupt = 0;
            let mut bytes_read = 0u64;
            let path = &source.path;
            let oversized = for_each_block(
                |buf| loop {
                    match reader.read(buf) {
                        Ok(n) => {
                            bytes_read += n as u64;
                            return Ok(n);
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(Error::io(path, e)),
                    }
                },
                0,
                |block, offset| scan_block(block, offset, pre, &mut corrupt, &mut f),
            )?;
            Ok(SourceScan {
                corrupt: corrupt + oversized,
                bytes_read,
            })
        }
    }
}

/// Whether an archive with lines from `first` to `last` can hold a line in
/// `range` (files without times in their name always can).
fn may_overlap(span: Option<(DateTime<Utc>, DateTime<Utc>)>, range: &TimeRange) -> bool {
    match span {
        None => true,
        Some((first, last)) => !range.past_until(&first) && range.after_since(&last),
    }
}

/// The files of the log at `path` (the live log, which may be gone when
/// archives are left): error `NotFound` if there are none.
fn open_all(path: &Path) -> Result<(Vec<Source>, Option<LogReader>)> {
    let snap = archive::snapshot(path)?;
    let live = match snap.live {
        Some(file) => Some(LogReader::from_file(path, file)?),
        None if snap.older.is_empty() => {
            return Err(Error::io(path, io::Error::from(io::ErrorKind::NotFound)));
        }
        None => None,
    };
    Ok((snap.older, live))
}

/// Scans every file of the log in order (archives whose names put them
/// outside the window are not opened), then the live log's window. An
/// archive that cannot be read is reported in `stats.unreadable`; an
/// output error stops everything.
fn scan_all(
    older: &[Source],
    live: Option<&LogReader>,
    opts: &QueryOptions,
    stats: &mut QueryStats,
    mut f: impl FnMut(usize, Line<'_>) -> Result<()>,
) -> Result<()> {
    let pre = opts.path_prefix.as_deref().and_then(Prefilter::for_prefix);
    let mut output_failed = None;
    for (index, source) in older.iter().enumerate() {
        if !may_overlap(source.range, &opts.range) {
            continue;
        }
        let result = scan_source(source, &opts.range, pre.as_ref(), |line| {
            if opts.keeps(&line)
                && let Err(e) = f(index, line)
            {
                output_failed = Some(e);
                return Ok(ControlFlow::Break(()));
            }
            Ok(ControlFlow::Continue(()))
        });
        if let Some(e) = output_failed.take() {
            return Err(e);
        }
        match result {
            Ok(scan) => {
                stats.skipped_corrupt += scan.corrupt;
                stats.bytes_read += scan.bytes_read;
            }
            Err(e) => stats
                .unreadable
                .push(format!("{e}; its lines from there on are left out")),
        }
    }
    if let Some(log) = live {
        let (from, to) = log.window(&opts.range)?;
        stats.skipped_corrupt += log.scan_filtered(from, to, pre.as_ref(), |line| {
            if opts.keeps(&line) {
                f(usize::MAX, line)?;
            }
            Ok(ControlFlow::Continue(()))
        })?;
        stats.partial_tail_bytes = log.partial_tail();
        stats.bytes_read += log.bytes_read();
    }
    Ok(())
}

/// Writes the lines of the log at `path` (its archives and rotated files,
/// then the live log: one time-ordered log) that pass `opts`, verbatim and
/// in order, each ending with a newline. Write errors (a closed pipe) come
/// back as `Error::Io` with the path `<output>`.
pub fn query(path: &Path, opts: &QueryOptions, out: &mut impl Write) -> Result<QueryStats> {
    let (older, live) = open_all(path)?;
    // Our own buffer: stdout is line-buffered, a write per line is slow.
    let mut out = BufWriter::with_capacity(SCAN_CHUNK, out);
    let mut stats = QueryStats::default();
    let mut matched = 0;
    scan_all(&older, live.as_ref(), opts, &mut stats, |_, line| {
        out.write_all(line.text)
            .and_then(|()| out.write_all(b"\n"))
            .map_err(output_error)?;
        matched += 1;
        Ok(())
    })?;
    out.flush().map_err(output_error)?;
    stats.matched = matched;
    Ok(stats)
}

/// Applies `opts`, keeps the latest line per path across all the log's
/// files, and writes those lines verbatim, newest first.
pub fn changes(path: &Path, opts: &QueryOptions, out: &mut impl Write) -> Result<QueryStats> {
    let (older, live) = open_all(path)?;

    // For the live log, remember where each path's latest line is rather
    // than the line itself: memory stays proportional to the number of
    // paths. A line from an archive is kept (it cannot be read back
    // cheaply), until a later one of its path replaces it.
    enum Stored {
        Live { len: usize },
        Text(Box<[u8]>),
    }
    struct Latest {
        time: DateTime<FixedOffset>,
        /// (file index, usize::MAX for the live log; offset in it).
        order: (usize, u64),
        stored: Stored,
    }
    let mut latest: HashMap<String, Latest> = HashMap::new();
    let mut stats = QueryStats::default();
    scan_all(&older, live.as_ref(), opts, &mut stats, |index, line| {
        let entry = Latest {
            time: line.time,
            order: (index, line.offset),
            stored: if index == usize::MAX {
                Stored::Live {
                    len: line.text.len() + 1,
                }
            } else {
                let mut text = Vec::with_capacity(line.text.len() + 1);
                text.extend_from_slice(line.text);
                text.push(b'\n');
                Stored::Text(text.into_boxed_slice())
            },
        };
        match latest.get_mut(line.event.path.as_ref()) {
            Some(slot) => *slot = entry,
            None => {
                latest.insert(line.event.path.into_owned(), entry);
            }
        }
        Ok(())
    })?;

    let scanned = live.as_ref().map_or(0, LogReader::bytes_read);
    let mut picked: Vec<Latest> = latest.into_values().collect();
    picked.sort_unstable_by_key(|l| std::cmp::Reverse((l.time, l.order)));
    let mut out = BufWriter::with_capacity(SCAN_CHUNK, out);
    // Newest first is mostly backwards through the file: read blocks that
    // end at the wanted line, so one read serves the lines just before it.
    let (mut block, mut block_start) = (Vec::new(), 0u64);
    for line in &picked {
        let len = match &line.stored {
            Stored::Text(text) => {
                out.write_all(text).map_err(output_error)?;
                continue;
            }
            Stored::Live { len } => *len,
        };
        let log = live.as_ref().expect("a live line comes from the live log");
        let offset = line.order.1;
        let line_end = offset + len as u64;
        if offset < block_start || line_end > block_start + block.len() as u64 {
            block_start = line_end.saturating_sub(SCAN_CHUNK as u64).min(offset);
            block.resize((line_end - block_start) as usize, 0);
            let got = log.read_at(&mut block, block_start)?;
            block.truncate(got);
        }
        let at = (offset - block_start) as usize;
        match block.get(at..at + len) {
            Some(text) if text.ends_with(b"\n") => out.write_all(text).map_err(output_error)?,
            _ => {
                return Err(Error::invalid(format!(
                    "{}: the log changed while it was read",
                    path.display()
                )));
            }
        }
    }
    out.flush().map_err(output_error)?;
    stats.matched = picked.len() as u64;
    if let Some(log) = &live {
        stats.bytes_read += log.bytes_read() - scanned;
    }
    Ok(stats)
}

fn output_error(e: io::Error) -> Error {
    Error::io("<output>", e)
}

// ---------------------------------------------------------------------------
// clean: plan
// ---------------------------------------------------------------------------

/// What a clean would remove: everything before `cut`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CleanPlan {
    pub path: PathBuf,
    /// Log size when planned.
    pub file_len: u64,
    /// Line boundary: bytes `[0, cut)` go, `[cut, ..)` stay.
    pub cut: u64,
    pub lines_removed: u64,
    /// Complete lines kept (a partial last line is not counted).
    pub lines_kept: u64,
    /// Times of the first and last valid lines removed.
    pub removed_first: Option<DateTime<FixedOffset>>,
    pub removed_last: Option<DateTime<FixedOffset>>,
    /// The size limit moved the cut past what the age limit alone removes.
    pub cut_for_size: Option<u64>,
    /// A partial last line (no newline: a crash's fragment) when planned;
    /// a trim drops it.
    pub partial_tail: u64,
    /// Identity of the planned file, so a plan is not applied to another.
    dev: u64,
    ino: u64,
}

impl CleanPlan {
    pub fn bytes_removed(&self) -> u64 {
        self.cut
    }

    pub fn bytes_kept(&self) -> u64 {
        self.file_len - self.cut
    }

    pub fn is_noop(&self) -> bool {
        self.cut == 0
    }
}

/// One paragraph for `clean --dry-run`.
impl fmt::Display for CleanPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.path.display();
        let kept = format!(
            "{} lines ({})",
            self.lines_kept,
            format_size(self.bytes_kept())
        );
        if self.is_noop() {
            return write!(f, "{path}: nothing to remove; {kept} kept");
        }
        write!(
            f,
            "{path}: would remove {} lines ({})",
            self.lines_removed,
            format_size(self.cut)
        )?;
        if let (Some(first), Some(last)) = (self.removed_first, self.removed_last) {
            let stamp = |t: DateTime<FixedOffset>| t.to_rfc3339_opts(SecondsFormat::AutoSi, false);
            write!(f, " from {} to {}", stamp(first), stamp(last))?;
        }
        if let Some(limit) = self.cut_for_size {
            write!(
                f,
                " (older lines also removed to fit {})",
                format_size(limit)
            )?;
        }
        if self.partial_tail > 0 {
            write!(
                f,
                ", and an unfinished last line of {} bytes",
                self.partial_tail
            )?;
        }
        write!(f, "; {kept} kept")
    }
}

impl CleanPlan {
    /// What a clean that ran removed, exactly: the lines and bytes cut,
    /// the unfinished last line dropped (if any), and the log's new size.
    pub fn done(&self, result: &TrimResult) -> impl fmt::Display + '_ {
        let result = *result;
        DoneReport { plan: self, result }
    }
}

struct DoneReport<'a> {
    plan: &'a CleanPlan,
    result: TrimResult,
}

impl fmt::Display for DoneReport<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (plan, r) = (self.plan, &self.result);
        write!(
            f,
            "{}: removed {} lines ({} bytes)",
            plan.path.display(),
            plan.lines_removed,
            r.bytes_removed
        )?;
        if let (Some(first), Some(last)) = (plan.removed_first, plan.removed_last) {
            let stamp = |t: DateTime<FixedOffset>| t.to_rfc3339_opts(SecondsFormat::AutoSi, false);
            write!(f, " from {} to {}", stamp(first), stamp(last))?;
        }
        if let Some(limit) = plan.cut_for_size {
            write!(
                f,
                " (older lines also removed to fit {})",
                format_size(limit)
            )?;
        }
        if r.dropped_partial_bytes > 0 {
            write!(
                f,
                ", and an unfinished last line of {} bytes",
                r.dropped_partial_bytes
            )?;
        }
        write!(
            f,
            "; the log now holds {} bytes ({})",
            r.new_len,
            format_size(r.new_len)
        )
    }
}

/// Plans a clean of the log at `path`: lines before `keep_after` go; then,
/// if the rest is still larger than `max_bytes`, the oldest remaining lines
/// go until it fits. The cut is always at a line boundary. Reads the file
/// once to count lines.
pub fn plan_clean(
    path: &Path,
    keep_after: Option<Bound>,
    max_bytes: Option<u64>,
) -> Result<CleanPlan> {
    plan_clean_capped(path, keep_after, max_bytes, None)
}

/// [`plan_clean`], removing nothing at or after `cap` (a line boundary:
/// the first line not yet shipped).
pub fn plan_clean_capped(
    path: &Path,
    keep_after: Option<Bound>,
    max_bytes: Option<u64>,
    cap: Option<u64>,
) -> Result<CleanPlan> {
    let log = LogReader::open(path)?;
    let by_time = match keep_after {
        Some(bound) => {
            let keep = TimeRange {
                since: Some(bound),
                until: None,
            };
            log.partition_point(0, |t| keep.after_since(t))?
        }
        None => 0,
    };
    let by_size = match max_bytes {
        Some(max) if log.len > max => log.boundary_at_or_after(log.len - max)?,
        _ => 0,
    };
    let cut = by_time.max(by_size);
    let cut = cap.map_or(cut, |c| cut.min(c));
    let meta = log.file.metadata().map_err(|e| Error::io(path, e))?;
    let (removed_first, removed_last) = if cut == 0 {
        (None, None)
    } else {
        (
            log.first_valid_line(0, cut, SCAN_CHUNK)?.map(|(_, _, t)| t),
            log.last_valid_time_before(cut)?,
        )
    };
    Ok(CleanPlan {
        path: path.to_owned(),
        file_len: log.len,
        cut,
        lines_removed: log.count_lines(0, cut)?,
        lines_kept: log.count_lines(cut, log.end)?,
        removed_first,
        removed_last,
        cut_for_size: max_bytes.filter(|_| by_size > by_time && cut > by_time),
        partial_tail: log.partial_tail(),
        dev: meta.dev(),
        ino: meta.ino(),
    })
}

// ---------------------------------------------------------------------------
// clean: execute
// ---------------------------------------------------------------------------

/// The first half of a trim: the kept tail, copied to a temp file beside
/// the log. Dropping it without [`complete_trim`] deletes the temp file.
#[derive(Debug)]
pub struct PreparedTrim {
    tmp_path: PathBuf,
    tmp: File,
    /// The log as opened by `copy_tail`, read again by `complete_trim`.
    log: LogReader,
    cut: u64,
    copied_until: u64,
    dev: u64,
    ino: u64,
    finished: bool,
}

impl PreparedTrim {
    pub fn tmp_path(&self) -> &Path {
        &self.tmp_path
    }

    /// Log offset up to which lines are in the temp file.
    pub fn copied_until(&self) -> u64 {
        self.copied_until
    }

    /// Inode of the temp file (the log's once swapped).
    pub fn tmp_ino(&self) -> Result<u64> {
        Ok(self
            .tmp
            .metadata()
            .map_err(|e| Error::io(&self.tmp_path, e))?
            .ino())
    }
}

impl PreparedTrim {
    /// Keeps the temp file for another process to finish with
    /// [`finish_trim_at`]: returns its path and `copied_until`.
    pub fn hand_over(mut self) -> (PathBuf, u64) {
        self.finished = true;
        (std::mem::take(&mut self.tmp_path), self.copied_until)
    }
}

impl Drop for PreparedTrim {
    fn drop(&mut self) {
        if !self.finished {
            let _ = fs::remove_file(&self.tmp_path);
        }
    }
}

impl fmt::Debug for LogReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogReader")
            .field("path", &self.path)
            .field("len", &self.len)
            .field("end", &self.end)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrimResult {
    pub bytes_removed: u64,
    /// Size of the log after the trim.
    pub new_len: u64,
    /// A partial last line left by a crash, dropped (the caller guarantees
    /// no writer was mid-line).
    pub dropped_partial_bytes: u64,
}

/// Copies the complete lines from `cut` (a line boundary) to the current
/// end of the log into a new temp file in the log's directory, with the
/// log's owner and mode, synced to disk. Slow part of a trim; writers may
/// keep appending meanwhile.
pub fn copy_tail(log_path: &Path, cut: u64) -> Result<PreparedTrim> {
    let log = LogReader::open(log_path)?;
    if cut > log.end {
        return Err(Error::invalid(format!(
            "{}: cut at byte {cut} is past the last complete line (byte {})",
            log_path.display(),
            log.end
        )));
    }
    if cut > 0 && log.boundary_at_or_before(cut)? != cut {
        return Err(Error::invalid(format!(
            "{}: cut at byte {cut} is not at a line boundary",
            log_path.display()
        )));
    }
    let meta = log.file.metadata().map_err(|e| Error::io(log_path, e))?;
    let (tmp_path, tmp) = create_temp_beside(log_path)?;
    // From here, an error drops `prepared`, which removes the temp file.
    let prepared = PreparedTrim {
        tmp_path,
        tmp,
        copied_until: log.end,
        log,
        cut,
        dev: meta.dev(),
        ino: meta.ino(),
        finished: false,
    };
    copy_owner_and_mode(&prepared.tmp, &meta, &prepared.tmp_path)?;
    copy_range(
        &prepared.log,
        cut,
        prepared.copied_until,
        &prepared.tmp,
        &prepared.tmp_path,
    )?;
    // Sync now, while writers still run, so complete_trim (which runs with
    // writers paused) only syncs the few lines it appends.
    prepared
        .tmp
        .sync_data()
        .map_err(|e| Error::io(&prepared.tmp_path, e))?;
    Ok(prepared)
}

/// Finishes a trim: appends the complete lines written since
/// [`copy_tail`], syncs, and renames the temp file over the log. The caller
/// guarantees no writer appends from now until this returns (no daemon, or
/// the daemon's writer calls this and then reopens the log).
pub fn complete_trim(mut prepared: PreparedTrim, log_path: &Path) -> Result<TrimResult> {
    // The path must still name the file we copied from: no symlink swapped
    // in, no other clean renamed over it meanwhile.
    let meta = fs::symlink_metadata(log_path).map_err(|e| Error::io(log_path, e))?;
    if !meta.file_type().is_file() {
        return Err(Error::Unsafe {
            path: log_path.into(),
            reason: "not a regular file (replaced during clean)".into(),
        });
    }
    if (meta.dev(), meta.ino()) != (prepared.dev, prepared.ino) {
        return Err(Error::invalid(format!(
            "{}: the log was replaced during clean; nothing changed",
            log_path.display()
        )));
    }
    prepared.log.refresh()?;
    append_and_swap(
        &prepared.log,
        &prepared.tmp,
        &prepared.tmp_path,
        prepared.copied_until,
        log_path,
    )?;
    prepared.finished = true;
    Ok(TrimResult {
        bytes_removed: prepared.cut,
        new_len: prepared.log.end - prepared.cut,
        dropped_partial_bytes: prepared.log.partial_tail(),
    })
}

/// [`complete_trim`] for a temp file prepared by another process: the CLI
/// runs [`copy_tail`] and [`PreparedTrim::hand_over`], the daemon's writer
/// calls this. The temp file must be a regular file with one link, owned
/// like the log, and end with the same bytes as the log before
/// `copied_until`, so a request cannot make root write or rename anything
/// else. Returns the bytes appended and what the log became. On error
/// nothing is renamed and the temp file is left for its creator to remove.
pub fn finish_trim_at(tmp_path: &Path, copied_until: u64, log_path: &Path) -> Result<FinishedTrim> {
    let log = LogReader::open(log_path)?;
    let log_meta = log.file.metadata().map_err(|e| Error::io(log_path, e))?;
    let tmp = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(tmp_path)
        .map_err(|e| Error::io(tmp_path, e))?;
    let tmp_meta = tmp.metadata().map_err(|e| Error::io(tmp_path, e))?;
    let refuse = |reason: &str| Error::Unsafe {
        path: tmp_path.into(),
        reason: reason.into(),
    };
    if !tmp_meta.file_type().is_file() || tmp_meta.nlink() != 1 {
        return Err(refuse("not a regular file with a single link"));
    }
    if tmp_meta.uid() != log_meta.uid() || tmp_meta.dev() != log_meta.dev() {
        return Err(refuse("not owned like the log, or on another filesystem"));
    }
    if copied_until > log.end || log.boundary_at_or_before(copied_until)? != copied_until {
        return Err(refuse("the copied size does not match the log"));
    }
    // The temp file is log[cut..copied_until): its end must be the log's.
    let tmp_len = tmp_meta.len();
    if tmp_len > copied_until {
        return Err(refuse("it is larger than the copied part of the log"));
    }
    let k = tmp_len.min(PROBE_CHUNK as u64) as usize;
    let (mut ours, mut theirs) = (vec![0u8; k], vec![0u8; k]);
    let got_ours =
        read_exact_at(&tmp, &mut ours, tmp_len - k as u64).map_err(|e| Error::io(tmp_path, e))?;
    let got_theirs = log.read_at(&mut theirs, copied_until - k as u64)? == k;
    if !(got_ours && got_theirs && ours == theirs) {
        return Err(refuse("its content is not the end of the log"));
    }
    let appended_bytes = append_and_swap(&log, &tmp, tmp_path, copied_until, log_path)?;
    Ok(FinishedTrim {
        appended_bytes,
        new_len: tmp_len + appended_bytes,
        dropped_partial_bytes: log.partial_tail(),
    })
}

/// What [`finish_trim_at`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FinishedTrim {
    /// Lines written since the copy, appended to it.
    pub appended_bytes: u64,
    /// Size of the log after the swap.
    pub new_len: u64,
    /// A partial last line of the old log, not carried over.
    pub dropped_partial_bytes: u64,
}

/// The end of a trim, shared by both ways in: append the complete lines in
/// `[from, end)` of the log to the temp file, sync it, rename it over the
/// log. Returns the bytes appended.
fn append_and_swap(
    log: &LogReader,
    tmp: &File,
    tmp_path: &Path,
    from: u64,
    log_path: &Path,
) -> Result<u64> {
    let to = log.end;
    if to < from {
        return Err(Error::invalid(format!(
            "{}: the log shrank during clean; nothing changed",
            log_path.display()
        )));
    }
    let mut at_end = tmp;
    at_end
        .seek(SeekFrom::End(0))
        .map_err(|e| Error::io(tmp_path, e))?;
    copy_range(log, from, to, tmp, tmp_path)?;
    tmp.sync_all().map_err(|e| Error::io(tmp_path, e))?;
    fs::rename(tmp_path, log_path).map_err(|e| Error::io(log_path, e))?;
    sync_parent_dir(log_path);
    Ok(to - from)
}

/// `pread` of exactly `buf.len()` bytes; false if the file is shorter.
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<bool> {
    match file.read_exact_at(buf, offset) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

/// Applies a plan when no daemon is writing the log: `copy_tail` then
/// `complete_trim`. Refuses if the file at the path is not the one planned.
pub fn clean_now(plan: &CleanPlan) -> Result<TrimResult> {
    clean_now_around(plan, |_, _, swap| swap())
}

/// [`clean_now`] with `around` wrapped about the final swap: it gets the
/// inode of the trimmed copy that will replace the log, the bytes removed
/// from the log's front, and the swap to run (see `ship::cursor::around_swap`).
pub fn clean_now_around(
    plan: &CleanPlan,
    around: impl FnOnce(u64, u64, &mut dyn FnMut() -> Result<TrimResult>) -> Result<TrimResult>,
) -> Result<TrimResult> {
    if plan.is_noop() {
        return Ok(TrimResult {
            bytes_removed: 0,
            new_len: plan.file_len,
            dropped_partial_bytes: 0,
        });
    }
    let prepared = copy_tail(&plan.path, plan.cut)?;
    if (prepared.dev, prepared.ino) != (plan.dev, plan.ino) {
        return Err(Error::invalid(format!(
            "{}: the log was replaced since the plan; nothing changed",
            plan.path.display()
        )));
    }
    let tmp_ino = prepared
        .tmp
        .metadata()
        .map_err(|e| Error::io(&prepared.tmp_path, e))?
        .ino();
    let cut = prepared.cut;
    let mut prepared = Some(prepared);
    around(tmp_ino, cut, &mut || match prepared.take() {
        Some(p) => complete_trim(p, &plan.path),
        None => Err(Error::invalid("trim already done")),
    })
}

/// Creates `.<name>.trim-<pid>-<n>` beside `log_path` with O_EXCL and
/// O_NOFOLLOW, mode 0600: nothing planted there can be followed or reused.
fn create_temp_beside(log_path: &Path) -> Result<(PathBuf, File)> {
    let name = log_path
        .file_name()
        .ok_or_else(|| Error::invalid(format!("{}: not a file path", log_path.display())))?
        .to_string_lossy();
    let seed = Utc::now().timestamp_subsec_nanos();
    for attempt in 0..100u32 {
        let tmp_path = log_path.with_file_name(format!(
            ".{name}.trim-{}-{}",
            std::process::id(),
            seed.wrapping_add(attempt)
        ));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp_path)
        {
            Ok(file) => return Ok((tmp_path, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io(tmp_path, e)),
        }
    }
    Err(Error::invalid(format!(
        "{}: could not create a temp file beside it",
        log_path.display()
    )))
}

/// Gives the temp file the log's owner and mode, through the descriptor.
/// A non-root user cannot give a file away; the copy then stays theirs,
/// which only matters on logs they do not own (and then they would not
/// have been able to read it).
fn copy_owner_and_mode(tmp: &File, log_meta: &fs::Metadata, tmp_path: &Path) -> Result<()> {
    let tmp_meta = tmp.metadata().map_err(|e| Error::io(tmp_path, e))?;
    if (tmp_meta.uid(), tmp_meta.gid()) != (log_meta.uid(), log_meta.gid())
        && let Err(e) = std::os::unix::fs::fchown(tmp, Some(log_meta.uid()), Some(log_meta.gid()))
    {
        log::warn!(
            "{}: could not keep the log's owner: {e}",
            tmp_path.display()
        );
    }
    tmp.set_permissions(fs::Permissions::from_mode(log_meta.mode() & 0o7777))
        .map_err(|e| Error::io(tmp_path, e))
}

/// Appends log bytes `[from, to)` to `dst` (in-kernel copy where possible).
fn copy_range(log: &LogReader, from: u64, to: u64, dst: &File, dst_path: &Path) -> Result<()> {
    let (mut src, mut dst) = (&log.file, dst);
    src.seek(SeekFrom::Start(from))
        .map_err(|e| Error::io(&log.path, e))?;
    let copied = io::copy(&mut io::Read::take(src, to - from), &mut dst)
        .map_err(|e| Error::io(dst_path, e))?;
    if copied != to - from {
        return Err(Error::invalid(format!(
            "{}: the log shrank while it was copied",
            log.path.display()
        )));
    }
    Ok(())
}

/// Makes the rename durable. Best effort: the rename itself has happened.
fn sync_parent_dir(path: &Path) {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
        log::warn!("{}: fsync after rename failed: {e}", dir.display());
    }
}

#[cfg(test)]
mod tests {
    use std::{
        borrow::Cow,
        sync::{
            Arc,
            atomic::{AtomicBool, AtomicU64, Ordering},
        },
    };

    use chrono::TimeDelta;

    use super::*;

    /// A log line as the daemon writes it.
    fn line(time: &str, event_type: &str, path: &str) -> String {
        let event = FileEvent {
            pid: 42,
            cmd: Cow::Borrowed("touch"),
            user: Cow::Borrowed("root"),
            ppid: 1,
            tgid: 42,
            ..FileEvent::bare(time, event_type, path)
        };
        serde_json::to_string(&event).unwrap() + "\n"
    }

    fn base() -> DateTime<FixedOffset> {
        DateTime::parse_from_rfc3339("2026-05-07T10:00:00+00:00").unwrap()
    }

    fn at(seconds: i64) -> String {
        (base() + TimeDelta::seconds(seconds)).to_rfc3339_opts(SecondsFormat::Micros, false)
    }

    fn write_log(dir: &tempfile::TempDir, content: &str) -> PathBuf {
        let path = dir.path().join("_global_log.jsonl");
        fs::write(&path, content).unwrap();
        path
    }

    fn run_query(path: &Path, opts: &QueryOptions) -> (String, QueryStats) {
        let mut out = Vec::new();
        let stats = query(path, opts, &mut out).unwrap();
        (String::from_utf8(out).unwrap(), stats)
    }

    fn range(since: Option<(i64, bool)>, until: Option<(i64, bool)>) -> TimeRange {
        let bound = |(s, inclusive): (i64, bool)| Bound {
            at: (base() + TimeDelta::seconds(s)).to_utc(),
            inclusive,
        };
        TimeRange {
            since: since.map(bound),
            until: until.map(bound),
        }
    }

    /// A small deterministic generator, so failures reproduce.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) % n
        }
    }

    const GARBAGE: [&str; 5] = [
        "not json at all\n",
        "{\"time\":\"2026-05-07T10:00:05+00:00\",\"event_type\":\"CRE\n",
        "{\"time\":\"yesterday\",\"event_type\":\"CREATE\",\"path\":\"/x\",\"pid\":1,\"cmd\":\"a\",\"user\":\"b\",\"file_size\":0,\"ppid\":1,\"tgid\":1}\n",
        "\0\0\0\0\0\0\0\0\n",
        "\n",
    ];

    /// Times with many duplicates, corrupt lines anywhere (including first
    /// and last): every window the binary search finds must hold exactly
    /// the valid lines a linear filter selects (no more: a too-wide window
    /// would still give the right query output, as lines are filtered
    /// again), and the query must print exactly those.
    #[test]
    fn binary_search_matches_linear_filter() {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = Lcg(7);
        for round in 0..6 {
            let mut content = String::new();
            let mut valid = Vec::new(); // (seconds, line, its byte offset)
            let mut t = 0;
            let n = [0, 1, 2, 50, 300, 2000][round];
            if round % 2 == 1 {
                content.push_str(GARBAGE[rng.next(5) as usize]);
            }
            for i in 0..n {
                t += rng.next(3) as i64; // 0: a duplicate time
                let l = line(&at(t), "CREATE", &format!("/d/f{i}"));
                let offset = content.len() as u64;
                content.push_str(&l);
                valid.push((t, l, offset));
                if rng.next(10) == 0 {
                    content.push_str(GARBAGE[rng.next(5) as usize]);
                }
            }
            if round >= 3 {
                content.push_str(GARBAGE[rng.next(4) as usize]);
            }
            let path = write_log(&dir, &content);
            let log = LogReader::open(&path).unwrap();
            let last = t + 2;
            // Every second for small logs, a sample for big ones.
            let step = (last / 40).max(1) as usize;
            let bounds = (-1..=last)
                .step_by(step)
                .flat_map(|s| [(s, true), (s, false)]);
            for since in bounds.clone().map(Some).chain([None]) {
                for until in [
                    None,
                    Some((last / 2, true)),
                    Some((last / 2, false)),
                    Some((last, false)),
                ] {
                    let r = range(since, until);
                    let inside = |s: i64| r.contains(&(base() + TimeDelta::seconds(s)));
                    // The window: every valid line in range inside it, every
                    // other valid line outside (corrupt lines may be either).
                    let (from, to) = log.window(&r).unwrap();
                    for (s, l, offset) in &valid {
                        let end = offset + l.len() as u64;
                        let within = from <= *offset && end <= to;
                        let without = end <= from || to <= *offset;
                        assert!(
                            if inside(*s) { within } else { without },
                            "round {round} since {since:?} until {until:?}: window \
                             {from}..{to}, line {offset}..{end} at {s} s"
                        );
                    }
                    let expected: String = valid
                        .iter()
                        .filter(|(s, _, _)| inside(*s))
                        .map(|(_, l, _)| l.as_str())
                        .collect();
                    let (got, _) = run_query(
                        &path,
                        &QueryOptions {
                            range: r,
                            path_prefix: None,
                        },
                    );
                    assert_eq!(
                        got, expected,
                        "round {round} since {since:?} until {until:?}"
                    );
                }
            }
        }
    }

    /// Corrupt lines are skipped and counted; the partial last line is
    /// ignored without being called corrupt.
    #[test]
    fn corrupt_lines_and_partial_tail() {
        let dir = tempfile::tempdir().unwrap();
        let a = line(&at(1), "CREATE", "/d/a");
        let b = line(&at(2), "CREATE", "/d/b");
        let content = format!(
            "garbage\n{a}{}{b}{}",
            GARBAGE[1], "{\"time\":\"2026-05-07T10:00:03"
        );
        let path = write_log(&dir, &content);
        let (out, stats) = run_query(&path, &QueryOptions::default());
        assert_eq!(out, format!("{a}{b}"));
        assert_eq!(stats.matched, 2);
        assert_eq!(stats.skipped_corrupt, 2);
        assert_eq!(stats.partial_tail_bytes, 28);
        let warning = stats.corrupt_warning(&path).unwrap();
        assert!(
            warning.starts_with("skipped 2 corrupt lines in "),
            "{warning}"
        );
        // A window whose edges are corrupt lines.
        let (out, _) = run_query(
            &path,
            &QueryOptions {
                range: range(Some((2, true)), None),
                path_prefix: None,
            },
        );
        assert_eq!(out, b);
    }

    #[test]
    fn oversized_garbage_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let a = line(&at(1), "CREATE", "/d/a");
        let b = line(&at(2), "CREATE", "/d/b");
        let huge = "x".repeat(MAX_LINE * 2 + 17);
        let path = write_log(&dir, &format!("{a}{huge}\n{b}"));
        let (out, stats) = run_query(&path, &QueryOptions::default());
        assert_eq!((out, stats.skipped_corrupt), (format!("{a}{b}"), 1));
        let (out, _) = run_query(
            &path,
            &QueryOptions {
                range: range(Some((2, true)), None),
                path_prefix: None,
            },
        );
        assert_eq!(out, b);
    }

    #[test]
    fn empty_log_and_missing_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_log(&dir, "");
        let (out, stats) = run_query(
            &path,
            &QueryOptions {
                range: range(Some((0, true)), None),
                path_prefix: None,
            },
        );
        assert_eq!(
            (out.as_str(), stats.matched, stats.skipped_corrupt),
            ("", 0, 0)
        );
        assert_eq!(log_zone(&path).unwrap(), Utc.fix());
        assert!(
            plan_clean(&path, Some(Bound::inclusive(Utc::now())), Some(0))
                .unwrap()
                .is_noop()
        );
        let missing = dir.path().join("nope_log.jsonl");
        let err = query(&missing, &QueryOptions::default(), &mut Vec::new()).unwrap_err();
        assert!(
            matches!(&err, Error::Io { source, .. } if source.kind() == io::ErrorKind::NotFound),
            "{err}"
        );
    }

    #[test]
    fn refuses_symlinked_log() {
        let dir = tempfile::tempdir().unwrap();
        let real = write_log(&dir, &line(&at(1), "CREATE", "/d/a"));
        let link = dir.path().join("link_log.jsonl");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let err = query(&link, &QueryOptions::default(), &mut Vec::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("symbolic link"), "{err}");
        assert!(
            copy_tail(&link, 0)
                .unwrap_err()
                .to_string()
                .contains("symbolic link")
        );
    }

    #[test]
    fn zone_comes_from_first_valid_line() {
        let dir = tempfile::tempdir().unwrap();
        let content = format!(
            "junk\n{}",
            line("2026-05-07T12:00:00+02:00", "CREATE", "/a")
        );
        let path = write_log(&dir, &content);
        assert_eq!(
            log_zone(&path).unwrap(),
            FixedOffset::east_opt(7200).unwrap()
        );
        let filters = [TimeFilter::parse(">=2026-05-07 12:00").unwrap()];
        let r = resolve_range(&path, &filters, Utc::now()).unwrap();
        assert_eq!(
            r.since.unwrap().at,
            DateTime::parse_from_rfc3339("2026-05-07T10:00:00Z").unwrap()
        );
        let (out, _) = run_query(
            &path,
            &QueryOptions {
                range: r,
                path_prefix: None,
            },
        );
        assert_eq!(out.lines().count(), 1);
    }

    #[test]
    fn path_prefix_matches_whole_components() {
        let dir = tempfile::tempdir().unwrap();
        let lines = [
            line(&at(1), "CREATE", "/data/a"),
            line(&at(2), "CREATE", "/data/a/x"),
            line(&at(3), "CREATE", "/data/ab"),
            line(&at(4), OVERFLOW_TYPE, ""),
            line(&at(5), "CREATE", "relative"),
        ];
        let path = write_log(&dir, &lines.concat());
        for prefix in ["/data/a", "/data/a/"] {
            let opts = QueryOptions {
                range: TimeRange::ALL,
                path_prefix: Some(prefix.into()),
            };
            let (out, stats) = run_query(&path, &opts);
            assert_eq!(
                out,
                format!("{}{}{}", lines[0], lines[1], lines[3]),
                "{prefix}"
            );
            assert_eq!(stats.matched, 3);
        }
        let opts = QueryOptions {
            range: TimeRange::ALL,
            path_prefix: Some("/".into()),
        };
        assert_eq!(run_query(&path, &opts).1.matched, 4);
    }

    /// The byte search before parsing never changes what a path query
    /// prints: random paths with quotes, backslashes, fsmon's `\xHH`,
    /// non-ASCII, spelled by other writers with `\/` and `\uXXXX`
    /// escapes, with overflow and lost records and garbage between.
    #[test]
    fn prefilter_is_equivalent_to_parsing_every_line() {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = Lcg(11);
        let parts = ["a", "b", "ab", "\"", "\\x", "\\xff", "é", "x y", "/"];
        let random_path = |rng: &mut Lcg| {
            let mut p = String::new();
            for _ in 0..1 + rng.next(4) {
                p.push('/');
                for _ in 0..1 + rng.next(2) {
                    p.push_str(parts[rng.next(parts.len() as u64) as usize]);
                }
            }
            p
        };
        // Another writer's spelling of the same JSON: `/` as `\/`, ASCII
        // letters as `\u00XX`.
        let respell = |l: &str, rng: &mut Lcg| -> String {
            let mut out = String::new();
            let mut in_path = false;
            let mut rest = l;
            while let Some(c) = rest.chars().next() {
                if rest.starts_with("\"path\":\"") {
                    out.push_str("\"path\":\"");
                    rest = &rest[8..];
                    in_path = true;
                    continue;
                }
                rest = &rest[c.len_utf8()..];
                if in_path && c == '"' {
                    in_path = false;
                } else if in_path && c == '\\' {
                    // keep an escape pair as it is
                    out.push(c);
                    let n = rest.chars().next().unwrap();
                    out.push(n);
                    rest = &rest[n.len_utf8()..];
                    continue;
                } else if in_path && c == '/' && rng.next(2) == 0 {
                    out.push_str("\\/");
                    continue;
                } else if in_path && c.is_ascii_lowercase() && rng.next(2) == 0 {
                    out.push_str(&format!("\\u{:04x}", c as u32));
                    continue;
                }
                out.push(c);
            }
            out
        };
        // Matching lines only found because the search falls back on escapes.
        let mut respelled_found = 0;
        for round in 0..20 {
            let mut content = String::new();
            let mut paths = Vec::new();
            for i in 0..300 {
                let p = random_path(&mut rng);
                let kind = rng.next(20);
                let mut l = if kind == 0 {
                    line(&at(i), OVERFLOW_TYPE, "")
                } else {
                    line(&at(i), "CREATE", &p)
                };
                if kind == 1 {
                    l = l.replace("\"tgid\":42}", "\"tgid\":42,\"lost\":true}");
                }
                if kind < 8 {
                    l = respell(&l, &mut rng);
                }
                if kind == 19 {
                    content.push_str(GARBAGE[rng.next(5) as usize]);
                }
                content.push_str(&l);
                paths.push(p);
            }
            let path = write_log(&dir, &content);
            for k in 0..10 {
                let prefix = match k {
                    0 => "/".to_string(),
                    1 => paths[rng.next(300) as usize].clone() + "/",
                    _ => {
                        let p = &paths[rng.next(300) as usize];
                        // A whole-component prefix of it.
                        let cut = p.match_indices('/').nth(1).map_or(p.len(), |(i, _)| i);
                        p[..cut].to_string()
                    }
                };
                let prefix = crate::escape::encode_path(Path::new(&prefix)).into_owned();
                let opts = QueryOptions {
                    range: TimeRange::ALL,
                    path_prefix: Some(prefix.clone()),
                };
                let want: String = content
                    .split_inclusive('\n')
                    .filter(|l| {
                        parse_line(l.trim_end_matches('\n').as_bytes())
                            .is_some_and(|(e, t)| opts.keeps_event(&e, &t))
                    })
                    .collect();
                let (got, _) = run_query(&path, &opts);
                assert_eq!(got, want, "round {round} prefix {prefix:?}");
                if prefix != "/" {
                    respelled_found += got
                        .lines()
                        .filter(|l| l.contains("\\/") || l.contains("\\u00"))
                        .count();
                }
                let pre = Prefilter::for_prefix(&prefix);
                for l in content.lines() {
                    let keeps =
                        parse_line(l.as_bytes()).is_some_and(|(e, t)| opts.keeps_event(&e, &t));
                    if keeps && let Some(pre) = &pre {
                        assert!(pre.may_match(l.as_bytes()), "{l}");
                    }
                }
            }
        }
        assert!(respelled_found > 20, "{respelled_found}");
    }

    #[test]
    fn changes_latest_per_path_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let lines = [
            line(&at(1), "CREATE", "/d/a"),
            line(&at(2), "CREATE", "/d/b"),
            line(&at(3), "CLOSE_WRITE", "/d/a"),
            line(&at(3), "CREATE", "/d/c"),
            line(&at(4), "DELETE", "/d/b"),
            line(&at(5), "CREATE", "/other/x"),
        ];
        let path = write_log(
            &dir,
            &format!("{}broken\n{}", lines[..3].concat(), lines[3..].concat()),
        );
        let mut out = Vec::new();
        let stats = changes(&path, &QueryOptions::default(), &mut out).unwrap();
        let want = [&lines[5], &lines[4], &lines[3], &lines[2]]
            .map(String::as_str)
            .concat();
        assert_eq!(String::from_utf8(out).unwrap(), want);
        assert_eq!((stats.matched, stats.skipped_corrupt), (4, 1));

        // Filters apply first: before t=4, /d/b's latest is its CREATE.
        let opts = QueryOptions {
            range: range(None, Some((4, false))),
            path_prefix: Some("/d".into()),
        };
        let mut out = Vec::new();
        changes(&path, &opts, &mut out).unwrap();
        let want = [&lines[3], &lines[2], &lines[1]]
            .map(String::as_str)
            .concat();
        assert_eq!(String::from_utf8(out).unwrap(), want);
    }

    /// A query of the last 1% reads O(log n) pages plus what it prints.
    #[test]
    fn recent_query_reads_little() {
        let dir = tempfile::tempdir().unwrap();
        let n = 100_000;
        let content: String = (0..n)
            .map(|i| line(&at(i), "CREATE", &format!("/data/dir/file{i}")))
            .collect();
        let path = write_log(&dir, &content);
        let opts = QueryOptions {
            range: range(Some((n * 99 / 100, true)), None),
            path_prefix: None,
        };
        let (out, stats) = run_query(&path, &opts);
        assert_eq!(stats.matched, 1000);
        let probes = 2 * (n as f64).log2().ceil() as u64 * PROBE_CHUNK as u64;
        assert!(
            stats.bytes_read <= out.len() as u64 + probes + SCAN_CHUNK as u64,
            "read {} bytes for {} bytes of output",
            stats.bytes_read,
            out.len()
        );
    }

    #[test]
    fn clean_plan_by_time_and_size() {
        let dir = tempfile::tempdir().unwrap();
        let lines: Vec<String> = (0..10)
            .map(|i| line(&at(i), "CREATE", &format!("/d/{i}")))
            .collect();
        let path = write_log(&dir, &format!("junk\n{}", lines.concat()));
        let len = fs::metadata(&path).unwrap().len();
        let junk = 5u64;
        let size_of = |range: std::ops::Range<usize>| {
            lines[range].iter().map(|l| l.len() as u64).sum::<u64>()
        };

        // Time: lines before t=4 go (with the junk line before them).
        let keep = Some(Bound::inclusive((base() + TimeDelta::seconds(4)).to_utc()));
        let plan = plan_clean(&path, keep, None).unwrap();
        assert_eq!(plan.cut, junk + size_of(0..4));
        assert_eq!((plan.lines_removed, plan.lines_kept), (5, 6));
        assert_eq!(plan.removed_first, Some(base()));
        assert_eq!(plan.removed_last, Some(base() + TimeDelta::seconds(3)));
        assert_eq!(plan.cut_for_size, None);
        let text = plan.to_string();
        assert!(text.contains("would remove 5 lines"), "{text}");
        assert!(
            text.contains("from 2026-05-07T10:00:00+00:00 to 2026-05-07T10:00:03+00:00"),
            "{text}"
        );
        assert!(text.contains("6 lines"), "{text}");

        // Size: the rest must fit; the cut lands on the next line boundary.
        let max = size_of(7..10) + 3;
        let plan = plan_clean(&path, keep, Some(max)).unwrap();
        assert_eq!(plan.cut, junk + size_of(0..7));
        assert!(plan.bytes_kept() <= max);
        assert_eq!(plan.cut_for_size, Some(max));
        assert!(plan.to_string().contains("to fit"), "{plan}");
        // Exactly fitting keeps the line.
        assert_eq!(
            plan_clean(&path, None, Some(size_of(6..10))).unwrap().cut,
            junk + size_of(0..6)
        );

        // Nothing to do. Corrupt lines just before the first kept line stay.
        let plan = plan_clean(&path, Some(Bound::inclusive(base().to_utc())), Some(len)).unwrap();
        assert!(plan.is_noop());
        let plan = plan_clean(&path, None, Some(len)).unwrap();
        assert!(plan.is_noop());
        assert!(plan.to_string().contains("nothing to remove"), "{plan}");
        // Everything.
        let plan = plan_clean(&path, Some(Bound::inclusive(Utc::now())), None).unwrap();
        assert_eq!((plan.cut, plan.lines_kept), (len, 0));
    }

    #[test]
    fn clean_now_keeps_mode_and_lines() {
        let dir = tempfile::tempdir().unwrap();
        let lines: Vec<String> = (0..10)
            .map(|i| line(&at(i), "CREATE", &format!("/d/{i}")))
            .collect();
        let path = write_log(&dir, &lines.concat());
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let keep = Some(Bound::inclusive((base() + TimeDelta::seconds(6)).to_utc()));
        let plan = plan_clean(&path, keep, None).unwrap();
        let result = clean_now(&plan).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), lines[6..].concat());
        assert_eq!(result.new_len, fs::metadata(&path).unwrap().len());
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o7777,
            0o640
        );
        // No temp file left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        // A stale plan is refused once the log has been replaced.
        assert!(clean_now(&plan).is_err());
    }

    #[test]
    fn copy_tail_refuses_bad_cuts_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let a = line(&at(1), "CREATE", "/d/a");
        let path = write_log(&dir, &format!("{a}{a}"));
        let err = copy_tail(&path, 3).unwrap_err().to_string();
        assert!(err.contains("not at a line boundary"), "{err}");
        assert!(copy_tail(&path, 10_000).is_err());
        let prepared = copy_tail(&path, a.len() as u64).unwrap();
        assert!(prepared.tmp_path().exists());
        drop(prepared);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    /// A partial line at copy time is not copied then; once complete it is
    /// copied by complete_trim, in one piece.
    #[test]
    fn trim_with_partial_line_at_copy_time() {
        let dir = tempfile::tempdir().unwrap();
        let lines: Vec<String> = (0..4)
            .map(|i| line(&at(i), "CREATE", &format!("/d/{i}")))
            .collect();
        let (first, second) = lines[3].split_at(20);
        let path = write_log(&dir, &format!("{}{}{first}", lines[0], lines[1]));
        let cut = lines[0].len() as u64;
        let prepared = copy_tail(&path, cut).unwrap();
        assert_eq!(prepared.copied_until(), cut + lines[1].len() as u64);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(second.as_bytes()).unwrap();
        f.write_all(lines[2].as_bytes()).unwrap();
        f.write_all(b"{\"time\":").unwrap(); // crash leftover, dropped
        let result = complete_trim(prepared, &path).unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            format!("{}{}{}", lines[1], lines[3], lines[2])
        );
        assert_eq!(result.dropped_partial_bytes, 8);
        assert_eq!(result.bytes_removed, cut);
    }

    /// Lines appended while the tail is copied all survive, exactly once:
    /// a line half written when the copy starts (the writer is held in the
    /// middle of it until the copy is done), and the lines after it.
    #[test]
    fn trim_while_appending_loses_nothing() {
        use std::{sync::mpsc, time::Duration, time::Instant};
        let dir = tempfile::tempdir().unwrap();
        let old: Vec<String> = (0..20_000)
            .map(|i| line(&at(i), "CREATE", &format!("/old/{i}")))
            .collect();
        let path = write_log(&dir, &old.concat());
        let cut = old[..10_000].iter().map(|l| l.len() as u64).sum::<u64>();
        let new = |i: u64| line(&at(30_000), "CREATE", &format!("/new/{i}"));
        const HALF: u64 = 100;

        let stop = Arc::new(AtomicBool::new(false));
        let appended = Arc::new(AtomicU64::new(0));
        let (half_written, half_rx) = mpsc::channel();
        let (copied, copied_rx) = mpsc::channel::<()>();
        let writer = {
            let (path, stop, appended) = (path.clone(), stop.clone(), appended.clone());
            std::thread::spawn(move || {
                let mut f = OpenOptions::new().append(true).open(&path).unwrap();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let l = new(i);
                    if i == HALF {
                        let (a, b) = l.split_at(l.len() / 2);
                        f.write_all(a.as_bytes()).unwrap();
                        half_written.send(()).unwrap();
                        copied_rx
                            .recv_timeout(Duration::from_secs(60))
                            .expect("the copy is done");
                        f.write_all(b.as_bytes()).unwrap();
                    } else {
                        // One write per line, as the daemon does.
                        f.write_all(l.as_bytes()).unwrap();
                    }
                    i += 1;
                    appended.store(i, Ordering::Relaxed);
                }
                i
            })
        };
        half_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the writer's half line");
        let prepared = copy_tail(&path, cut).unwrap();
        // The copy stops before the half-written line.
        let half_at =
            old.concat().len() as u64 + (0..HALF).map(|i| new(i).len() as u64).sum::<u64>();
        assert_eq!(prepared.copied_until, half_at);
        copied.send(()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while appended.load(Ordering::Relaxed) < HALF + 500 {
            assert!(
                Instant::now() < deadline && !writer.is_finished(),
                "the writer stopped at {} lines",
                appended.load(Ordering::Relaxed)
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        stop.store(true, Ordering::Relaxed);
        let total = writer.join().unwrap();
        complete_trim(prepared, &path).unwrap();

        let content = fs::read_to_string(&path).unwrap();
        assert!(content.ends_with('\n'));
        let want: String = old[10_000..]
            .iter()
            .cloned()
            .chain((0..total).map(new))
            .collect();
        assert_eq!(content.len(), want.len());
        assert!(content == want, "content differs from the expected lines");
    }

    /// The CLI copies and hands over; the daemon finishes.
    #[test]
    fn trim_handed_over_to_another_process() {
        let dir = tempfile::tempdir().unwrap();
        let lines: Vec<String> = (0..6)
            .map(|i| line(&at(i), "CREATE", &format!("/d/{i}")))
            .collect();
        let path = write_log(&dir, &lines[..4].concat());
        let cut = lines[0].len() as u64 + lines[1].len() as u64;
        let (tmp, copied_until) = copy_tail(&path, cut).unwrap().hand_over();
        assert!(tmp.exists(), "hand_over keeps the temp file");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(lines[4..].concat().as_bytes()).unwrap();

        // Refusals leave everything in place.
        let other = dir.path().join("other_log.jsonl");
        let unrelated: String = (0..6)
            .map(|i| line(&at(i), "DELETE", &format!("/x/{i}")))
            .collect();
        fs::write(&other, unrelated).unwrap();
        let err = finish_trim_at(&tmp, copied_until, &other)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not the end of the log"), "{err}");
        assert!(finish_trim_at(&tmp, copied_until - 1, &path).is_err());
        let link = dir.path().join(".link");
        std::os::unix::fs::symlink(&tmp, &link).unwrap();
        assert!(finish_trim_at(&link, copied_until, &path).is_err());
        let hard = dir.path().join(".hard");
        fs::hard_link(&tmp, &hard).unwrap();
        let err = finish_trim_at(&tmp, copied_until, &path)
            .unwrap_err()
            .to_string();
        assert!(err.contains("single link"), "{err}");
        fs::remove_file(&hard).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), lines.concat());

        let appended = finish_trim_at(&tmp, copied_until, &path)
            .unwrap()
            .appended_bytes;
        assert_eq!(appended, (lines[4].len() + lines[5].len()) as u64);
        assert_eq!(fs::read_to_string(&path).unwrap(), lines[2..].concat());
        assert!(!tmp.exists());
    }

    #[test]
    fn complete_trim_refuses_replaced_log() {
        let dir = tempfile::tempdir().unwrap();
        let a = line(&at(1), "CREATE", "/d/a");
        let path = write_log(&dir, &format!("{a}{a}"));
        let prepared = copy_tail(&path, a.len() as u64).unwrap();
        let tmp = prepared.tmp_path().to_owned();
        fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", &path).unwrap();
        let err = complete_trim(prepared, &path).unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
        assert!(!tmp.exists());
        assert!(
            fs::symlink_metadata(&path)
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }
}
