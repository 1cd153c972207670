//! `SizeFilter::parse` on any text: a value or a one-line error naming the
//! input; a parsed filter prints as canonical text that parses back to it.
#![no_main]

use fsmon::filters::SizeFilter;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match SizeFilter::parse(text) {
        Ok(filter) => {
            let canonical = filter.to_string();
            let back = SizeFilter::parse(&canonical)
                .unwrap_or_else(|e| panic!("canonical {canonical:?} of {text:?} fails: {e}"));
            assert_eq!(back, filter, "{text:?} -> {canonical:?}");
            // The serde form is the same string.
            let json = serde_json::to_string(&filter).unwrap();
            assert_eq!(serde_json::from_str::<SizeFilter>(&json).unwrap(), filter);
            let bytes = filter.bytes();
            for size in [
                0,
                1,
                bytes.saturating_sub(1),
                bytes,
                bytes.saturating_add(1),
                u64::MAX,
            ] {
                let _ = filter.matches(size);
            }
            let _ = fsmon::filters::format_size(bytes);
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(
                !msg.chars().any(char::is_control),
                "error not on one line for {text:?}: {msg:?}"
            );
            assert!(msg.contains("invalid size filter"), "{msg}");
        }
    }
});
