//! The CLI's reading of daemon responses (`control::read_response`,
//! `response_result`, `terminal_json`) on any bytes a process at the socket
//! may send: every line is a value or a one-line error; nothing that reaches
//! the terminal (errors, printed JSON) holds a control character; escaping
//! for the terminal changes no value.
#![no_main]

use fsmon::control::{read_response, response_result, terminal_json};
use libfuzzer_sys::fuzz_target;

fn assert_no_controls(what: &str, text: &str) {
    assert!(
        !text.chars().any(char::is_control),
        "{what} holds a control character: {text:?}"
    );
}

fuzz_target!(|data: &[u8]| {
    let mut reader = std::io::BufReader::new(data);
    // Every line, as a client reading a stream would; reading from a byte
    // slice cannot fail, and each round consumes at least one byte until
    // the end, where the "closed" error comes.
    for _ in 0..=data.len() {
        match read_response(&mut reader).expect("reading a slice") {
            Ok(v) => {
                let printed = terminal_json(&v);
                assert_no_controls("printed JSON", &printed);
                // Escaping changes no meaning: the printed text reads as
                // serde_json's own text does. (Not as `v` itself: without
                // its float_roundtrip feature, serde_json may read a long
                // float back one ulp off; crash-float-roundtrip.)
                let back: serde_json::Value =
                    serde_json::from_str(&printed).expect("printed JSON parses");
                let plain: serde_json::Value =
                    serde_json::from_str(&v.to_string()).expect("JSON parses");
                assert_eq!(back, plain, "escaping changed the value");
                if let Err(e) = response_result(v) {
                    assert_no_controls("the daemon's error", &e.to_string());
                }
            }
            Err(e) => {
                let msg = e.to_string();
                assert_no_controls("a read error", &msg);
                if msg == "the daemon closed the connection" {
                    break;
                }
            }
        }
    }
});
