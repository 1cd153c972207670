//! `control::parse_request` on any line a client may send: a request or a
//! one-line error; a parsed request survives a serialize/parse round trip.
#![no_main]

use fsmon::control::{MAX_REQUEST, parse_request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // What the daemon hands to the parser: one line of at most MAX_REQUEST
    // bytes, newline included, converted lossily to UTF-8.
    let end = data
        .iter()
        .position(|&b| b == b'\n')
        .map_or(data.len(), |i| i + 1);
    let data = &data[..end.min(MAX_REQUEST)];
    let line = String::from_utf8_lossy(data);
    match parse_request(&line) {
        Ok(req) => {
            let json = serde_json::to_string(&req).expect("requests serialize");
            assert!(!json.contains('\n'), "a request must fit on one line");
            let back = parse_request(&json)
                .unwrap_or_else(|e| panic!("round trip of {line:?} via {json:?} fails: {e}"));
            assert_eq!(back, req);
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(
                !msg.chars().any(char::is_control),
                "error not on one line for {line:?}: {msg:?}"
            );
        }
    }
});
