//! `TimeFilter::parse` and `TimeRange::new` on any text. The first 12 bytes
//! choose "now" and the log's zone; the rest, split at `|`, are the `-t`
//! values (which may hold newlines, as a pasted argument can). Every step returns a value or a one-line
//! error; a range that is built selects a non-empty window.
#![no_main]

use chrono::{DateTime, FixedOffset, TimeDelta, Utc};
use fsmon::filters::{TimeFilter, TimeRange};
use libfuzzer_sys::fuzz_target;

fn one_line(msg: &str, input: &str) {
    assert!(
        !msg.chars().any(char::is_control),
        "error not on one line for {input:?}: {msg:?}"
    );
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 12 {
        return;
    }
    let (head, rest) = data.split_at(12);
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    // Any representable instant as "now" (the latest one for the rest), any
    // offset within a day.
    let secs = i64::from_le_bytes(head[..8].try_into().unwrap());
    let now = DateTime::<Utc>::from_timestamp(secs, 0).unwrap_or(DateTime::<Utc>::MAX_UTC);
    let offset = i32::from_le_bytes(head[8..12].try_into().unwrap()) % 86_400;
    let zone = FixedOffset::east_opt(offset).unwrap();

    let mut filters = Vec::new();
    for value in text.split('|') {
        match TimeFilter::parse(value) {
            Ok(f) => {
                // What the user typed, trimmed: it parses back to the same
                // filter (control characters are shown escaped).
                if !value.chars().any(char::is_control) {
                    let back = TimeFilter::parse(&f.to_string()).expect("display parses back");
                    assert_eq!(back, f);
                }
                match f.resolve(now, zone) {
                    Ok(_) => {}
                    Err(e) => one_line(&e.to_string(), value),
                }
                filters.push(f);
            }
            Err(e) => {
                let msg = e.to_string();
                one_line(&msg, value);
                assert!(msg.contains("invalid time filter"), "{msg}");
            }
        }
    }
    match TimeRange::new(&filters, now, zone) {
        Ok(range) => {
            if let (Some(since), Some(until)) = (range.since, range.until) {
                assert!(since.at <= until.at, "empty window accepted: {text:?}");
            }
            for t in [range.since, range.until].into_iter().flatten() {
                for d in [-1, 0, 1] {
                    if let Some(at) = t.at.checked_add_signed(TimeDelta::nanoseconds(d)) {
                        let _ = range.contains(&at);
                    }
                }
            }
            let _ = range.contains(&now);
        }
        Err(e) => one_line(&e.to_string(), text),
    }
});
