//! The path escape (`fsmon::escape`) on any bytes: decoding the encoding
//! gives the bytes back (so encoding is injective), the encoding is valid
//! UTF-8 that decodes without error and re-encodes to itself, and it
//! commutes with joining at '/'. Decoding any text either fails with a
//! one-line error or gives bytes whose encoding decodes to the same bytes.
#![no_main]

use fsmon::escape::{decode, encode, encode_into};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = encode(data);
    let mut appended = String::from("x/");
    encode_into(data, &mut appended);
    assert_eq!(&appended[2..], &*text, "encode_into and encode agree");
    let back = decode(&text).unwrap_or_else(|e| panic!("{data:?} -> {text:?}: {e}"));
    assert_eq!(&*back, data, "round trip of {data:?} via {text:?}");
    assert_eq!(encode(&back), text);
    // Joining at '/' commutes with encoding (prefix matching relies on it).
    if let Some(cut) = data.iter().position(|&b| b == b'/') {
        let joined = format!("{}/{}", encode(&data[..cut]), encode(&data[cut + 1..]));
        assert_eq!(joined, text, "{data:?}");
    }
    // The input as text typed by a user.
    if let Ok(s) = std::str::from_utf8(data) {
        match decode(s) {
            Ok(bytes) => assert_eq!(&*decode(&encode(&bytes)).unwrap(), &*bytes),
            Err(e) => {
                let msg = e.to_string();
                assert!(!msg.chars().any(char::is_control), "{msg:?}");
            }
        }
    }
});
