//! The JSONL log reader on any file content: `query`, `changes`,
//! `plan_clean` and `log_zone` never panic, and when the valid lines are in
//! time order (as the daemon writes them) their answers match a
//! straightforward line-by-line reading of the file.
//!
//! Input: 6 control bytes, then the file content.
//! - byte 0: makes the file larger, so the binary search and the chunked
//!   reads cross page (4 KiB) and chunk (64 KiB) boundaries: below 0x80 the
//!   content is repeated 1..=32 times (which usually puts the lines out of
//!   time order); from 0x80 a junk line of up to 4 KiB follows each line
//!   (which keeps their order, so the answers are still checked);
//! - bytes 1, 2: the `since` and `until` bounds of the query (see `bound`);
//! - byte 3: the path prefix;
//! - byte 4: the clean's age limit (`bound`);
//! - byte 5: the clean's size limit, as a fraction of the file size.
//!
//! The file is a temp file in $TMPDIR, removed after each input.
#![no_main]

use std::{collections::HashMap, io::Write, path::Path};

use chrono::{DateTime, FixedOffset, TimeDelta};
use fsmon::{
    event::OVERFLOW_TYPE,
    filters::{Bound, TimeRange, path_has_prefix},
    logfile::{QueryOptions, changes, log_zone, parse_line, plan_clean, query},
};
use libfuzzer_sys::fuzz_target;

/// Times near the seed corpus's lines (2026-05-07T10:00:00+00:00 + n s).
fn bound(b: u8) -> Option<Bound> {
    (b & 0x80 != 0).then(|| Bound {
        at: DateTime::parse_from_rfc3339("2026-05-07T10:00:00Z")
            .unwrap()
            .to_utc()
            + TimeDelta::seconds(i64::from(b & 0x3f)),
        inclusive: b & 0x40 != 0,
    })
}

const PREFIXES: [Option<&str>; 5] = [None, Some("/"), Some("/d"), Some("/data/a"), Some("/d/a/")];

/// A valid line's path, event type and time.
type Parsed = (String, String, DateTime<FixedOffset>);

/// One complete line of the file, read the simple way.
struct Simple<'a> {
    offset: u64,
    text: &'a [u8],
    parsed: Option<Parsed>,
}

fn simple_lines(content: &[u8]) -> Vec<Simple<'_>> {
    let mut lines = Vec::new();
    let mut offset = 0;
    while let Some(i) = content[offset..].iter().position(|&b| b == b'\n') {
        let text = &content[offset..offset + i];
        let parsed =
            parse_line(text).map(|(ev, t)| (ev.path.into_owned(), ev.event_type.into_owned(), t));
        lines.push(Simple {
            offset: offset as u64,
            text,
            parsed,
        });
        offset += i + 1;
    }
    lines
}

fn keeps(opts: &QueryOptions, path: &str, event_type: &str, t: &DateTime<FixedOffset>) -> bool {
    opts.range.contains(t)
        && match &opts.path_prefix {
            None => true,
            Some(p) => event_type == OVERFLOW_TYPE || path_has_prefix(path, p),
        }
}

fn check(log: &Path, content: &[u8], ctl: &[u8]) {
    let lines = simple_lines(content);
    let end = lines
        .last()
        .map_or(0, |l| l.offset + l.text.len() as u64 + 1);
    let valid: Vec<(&Simple, &Parsed)> = lines
        .iter()
        .filter_map(|l| l.parsed.as_ref().map(|p| (l, p)))
        .collect();
    let sorted = valid.windows(2).all(|w| w[0].1.2 <= w[1].1.2);
    let corrupt = (lines.len() - valid.len()) as u64;

    // The zone: the first valid line's offset.
    let zone = log_zone(log).expect("log_zone");
    if let Some((_, (_, _, t))) = valid.first() {
        assert_eq!(zone, *t.offset());
    }

    let opts = QueryOptions {
        range: TimeRange {
            since: bound(ctl[1]),
            until: bound(ctl[2]),
        },
        path_prefix: PREFIXES[ctl[3] as usize % PREFIXES.len()].map(str::to_owned),
    };
    let kept: Vec<_> = valid
        .iter()
        .filter(|(_, (path, ty, t))| keeps(&opts, path, ty, t))
        .collect();

    // query: the kept lines, verbatim, in file order.
    let mut out = Vec::new();
    let stats = query(log, &opts, &mut out).expect("query");
    assert_eq!(stats.partial_tail_bytes, content.len() as u64 - end);
    assert!(stats.skipped_corrupt <= corrupt);
    if sorted {
        let want: Vec<u8> = kept
            .iter()
            .flat_map(|(l, _)| l.text.iter().copied().chain([b'\n']))
            .collect();
        assert_eq!(stats.matched, kept.len() as u64);
        assert!(out == want, "query differs from a line-by-line reading");
    }

    // changes: the latest kept line per path, newest first.
    let mut out = Vec::new();
    let stats = changes(log, &opts, &mut out).expect("changes");
    assert!(stats.skipped_corrupt <= corrupt);
    if sorted {
        let mut latest: HashMap<&str, &Simple> = HashMap::new();
        for (l, (path, _, _)) in &kept {
            latest.insert(path.as_str(), l);
        }
        let mut picked: Vec<&Simple> = latest.into_values().collect();
        picked.sort_by_key(|l| std::cmp::Reverse((l.parsed.as_ref().unwrap().2, l.offset)));
        let want: Vec<u8> = picked
            .iter()
            .flat_map(|l| l.text.iter().copied().chain([b'\n']))
            .collect();
        assert_eq!(stats.matched, picked.len() as u64);
        assert!(out == want, "changes differs from a line-by-line reading");
    }

    // plan_clean: a cut at a line boundary, lines counted on both sides.
    let keep_after = bound(ctl[4]);
    let len = content.len() as u64;
    let max_bytes = (ctl[5] != 0).then(|| len * u64::from(ctl[5] - 1) / 254);
    let plan = plan_clean(log, keep_after, max_bytes).expect("plan_clean");
    let _ = plan.to_string();
    assert_eq!(plan.file_len, len);
    assert!(
        plan.cut <= end,
        "cut {} past the last line end {end}",
        plan.cut
    );
    assert!(
        plan.cut == 0 || content[plan.cut as usize - 1] == b'\n',
        "cut {} not at a line boundary",
        plan.cut
    );
    let removed = lines.iter().filter(|l| l.offset < plan.cut).count() as u64;
    assert_eq!(plan.lines_removed, removed);
    assert_eq!(plan.lines_kept, lines.len() as u64 - removed);
    let removed_valid: Vec<_> = valid.iter().filter(|(l, _)| l.offset < plan.cut).collect();
    assert_eq!(plan.removed_first.is_some(), !removed_valid.is_empty());
    assert_eq!(plan.removed_last.is_some(), !removed_valid.is_empty());
    if let Some(m) = max_bytes {
        assert!(
            plan.bytes_kept() <= m || plan.cut == end,
            "kept {} bytes over the limit {m}",
            plan.bytes_kept()
        );
    }
    if sorted && let Some(b) = keep_after {
        let keep = TimeRange {
            since: Some(b),
            until: None,
        };
        for (l, (_, _, t)) in &valid {
            if l.offset >= plan.cut {
                assert!(keep.after_since(t), "a line to keep was cut");
            } else if plan.cut_for_size.is_none() {
                assert!(!keep.after_since(t), "a line too old was kept");
            }
        }
    }
}

/// `body` with a junk line of about `pad` bytes after each line, the whole
/// at most 1 MiB.
fn pad_lines(body: &[u8], pad: usize) -> Vec<u8> {
    let lines = body.iter().filter(|&&b| b == b'\n').count().max(1);
    let pad = pad.min((1 << 20) / lines);
    let mut junk = vec![b'x'; pad];
    junk.push(b'\n');
    let mut out = Vec::with_capacity(body.len() + lines * junk.len());
    for piece in body.split_inclusive(|&b| b == b'\n') {
        out.extend_from_slice(piece);
        if piece.ends_with(b"\n") {
            out.extend_from_slice(&junk);
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 6 {
        return;
    }
    let (ctl, body) = data.split_at(6);
    let content = if ctl[0] < 0x80 {
        body.repeat(1 + usize::from(ctl[0] % 32))
    } else {
        pad_lines(body, usize::from(ctl[0] & 0x3f) * 67)
    };
    let mut file = tempfile::Builder::new()
        .prefix("fsmon-fuzz-")
        .suffix(".jsonl")
        .tempfile()
        .expect("temp file");
    file.write_all(&content).expect("write temp file");
    file.flush().expect("flush temp file");
    check(file.path(), &content, ctl);
});
