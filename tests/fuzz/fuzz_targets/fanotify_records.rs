//! `parse::events` over arbitrary bytes, as if read from a fanotify fd:
//! never panics, yields at most one item per 24-byte record plus one error,
//! stops after the first error, and every borrowed slice is consistent.
#![no_main]

use fsmon::pipeline::parse::{self, ParseError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut events = parse::events(data);
    let mut items = 0usize;
    while let Some(item) = events.next() {
        items += 1;
        assert!(items <= data.len() / 24 + 1, "more items than records fit");
        match item {
            Ok(ev) => {
                for fid in [ev.dir, ev.object].into_iter().flatten() {
                    // key = fsid (8 bytes) + handle; handle = handle_bytes
                    // (4) + handle_type (4) + f_handle (at most 128).
                    assert_eq!(fid.key.len(), fid.handle.len() + 8);
                    assert_eq!(&fid.key[8..], fid.handle);
                    assert_eq!(fid.fsid.to_ne_bytes(), fid.key[..8]);
                    assert!((8..=136).contains(&fid.handle.len()));
                    let handle_bytes = u32::from_ne_bytes(fid.handle[..4].try_into().unwrap());
                    assert_eq!(handle_bytes as usize, fid.handle.len() - 8);
                }
                if let Some(name) = ev.name {
                    assert!(!name.contains(&0), "name keeps its NUL");
                    assert!(ev.dir.is_some(), "a name without its directory");
                }
            }
            Err(e) => {
                if let ParseError::Truncated { offset } = e {
                    assert!(offset < data.len(), "error offset {offset} past the buffer");
                }
                assert!(!e.to_string().contains('\n'));
                assert!(events.next().is_none(), "items after an error");
                break;
            }
        }
    }
});
