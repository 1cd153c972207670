//! Inputs the fuzz targets in `tests/fuzz` found to break a rule, replayed
//! as plain tests. Each input is the exact file kept in the seed corpus
//! (`tests/fuzz/corpus/<target>/crash-*`), so the fuzzer starts from it too.
//!
//! The rule they broke: bad input gets a clear one-line error.
use chrono::{DateTime, FixedOffset, Utc};
use fsmon::{
    control::parse_request,
    filters::{SizeFilter, TimeFilter, TimeRange},
};

fn assert_one_line(msg: &str) {
    assert!(
        !msg.chars().any(char::is_control),
        "error not on one line: {msg:?}"
    );
}

/// size_filter: a newline (and NULs) in the value were copied into the
/// message, which then spanned two lines.
#[test]
fn size_filter_error_with_newline_in_value() {
    let input = include_bytes!("../fuzz/corpus/size_filter/crash-multiline-error");
    let text = std::str::from_utf8(input).unwrap();
    let msg = SizeFilter::parse(text).unwrap_err().to_string();
    assert_one_line(&msg);
    assert!(
        msg.starts_with(r"invalid size filter '>4\n\u{0}\u{0}"),
        "{msg}"
    );
    assert!(msg.contains("unknown unit"), "{msg}");
}

/// socket_request: serde quotes an unknown variant name raw, so a `\n`
/// escape in the JSON became a newline in the error sent back.
#[test]
fn socket_request_error_with_newline_in_variant() {
    let input = include_bytes!("../fuzz/corpus/socket_request/crash-multiline-error");
    let line = String::from_utf8_lossy(input);
    let msg = parse_request(&line).unwrap_err().to_string();
    assert_one_line(&msg);
    assert!(
        msg.starts_with(r"bad request: unknown variant `s\n1-2`"),
        "{msg}"
    );
}

/// time_filter: the same flaw, in the parse error and in the messages that
/// quote a filter which parsed (`>` then a newline then `1h` is `>1h`).
#[test]
fn time_filter_errors_with_newline_in_value() {
    let msg = TimeFilter::parse(">\nsoon").unwrap_err().to_string();
    assert_one_line(&msg);
    assert!(msg.starts_with(r"invalid time filter '>\nsoon'"), "{msg}");

    let a = TimeFilter::parse(">\n1h").unwrap();
    let b = TimeFilter::parse(">\t2h").unwrap();
    let now: DateTime<Utc> = DateTime::parse_from_rfc3339("2026-05-07T12:00:00Z")
        .unwrap()
        .to_utc();
    let zone = FixedOffset::east_opt(0).unwrap();
    let msg = TimeRange::new(&[a, b], now, zone).unwrap_err().to_string();
    assert_one_line(&msg);
    assert!(msg.contains(r"'>\n1h' and '>\t2h' are both lower"), "{msg}");
}

/// socket_response: a long float in a daemon's answer. The CLI prints it
/// with its control characters escaped and nothing else changed; the rule
/// that broke was the target's own (serde_json, without `float_roundtrip`,
/// may read a printed float back one ulp off), so the input stays as a
/// seed and this checks what the CLI does with it.
#[test]
fn socket_response_with_a_long_float() {
    use fsmon::control::{read_response, terminal_json};
    let input = include_bytes!("../fuzz/corpus/socket_response/crash-float-roundtrip");
    let mut reader = std::io::BufReader::new(&input[..]);
    // First line: not JSON (raw bytes), a one-line error.
    let first = read_response(&mut reader).unwrap().unwrap_err().to_string();
    assert_one_line(&first);
    assert!(first.starts_with("bad response from the daemon"), "{first}");
    // Second line: the number, printed as serde_json prints it.
    let v = read_response(&mut reader).unwrap().unwrap();
    assert!(v.is_f64(), "{v}");
    assert_eq!(terminal_json(&v), v.to_string());
    assert_one_line(&terminal_json(&v));
}
