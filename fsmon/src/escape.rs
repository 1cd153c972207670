//! Paths are bytes; logs, the store and the command line are text. This is
//! the one place where one becomes the other, losslessly and unambiguously:
//!
//! - valid UTF-8 is written as is, except a backslash, written `\\`;
//! - every byte that is not part of valid UTF-8 is written `\xHH` (two
//!   lowercase hex digits).
//!
//! So `bad\xff` (the byte 0xFF), `bad\u{fffd}` (the character U+FFFD, valid
//! UTF-8) and a name that literally contains the four characters `\xff`
//! (written `bad\\xff`) are three different strings. [`decode`] inverts
//! [`encode`] exactly: `decode(encode(b)) == b` for every byte string, so
//! `encode` is injective (fuzzed in `tests/fuzz`, target `path_escape`).
//!
//! `encode` keeps ASCII bytes as they are, so it commutes with joining at
//! `/`: `encode(a/b) == encode(a) + "/" + encode(b)`. That is what lets the
//! daemon match encoded event paths against encoded watch roots by string
//! prefix, component by component, exactly as it would the raw bytes.
use std::{
    borrow::Cow,
    ffi::OsStr,
    os::unix::ffi::{OsStrExt, OsStringExt},
    path::{Path, PathBuf},
};

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Appends the text form of `bytes` to `out`. The common case (valid UTF-8
/// without a backslash) is one validation, one search and one copy; nothing
/// is allocated beyond `out`'s own growth.
pub fn encode_into(bytes: &[u8], out: &mut String) {
    if let Ok(s) = std::str::from_utf8(bytes)
        && !s.as_bytes().contains(&b'\\')
    {
        out.push_str(s);
        return;
    }
    encode_slow(bytes, out);
}

#[cold]
fn encode_slow(bytes: &[u8], out: &mut String) {
    for chunk in bytes.utf8_chunks() {
        for (i, part) in chunk.valid().split('\\').enumerate() {
            if i > 0 {
                out.push_str("\\\\");
            }
            out.push_str(part);
        }
        for &b in chunk.invalid() {
            out.push_str("\\x");
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 0xf) as usize] as char);
        }
    }
}

/// The text form of `bytes`; borrowed when nothing needs escaping.
pub fn encode(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(s) if !s.contains('\\') => Cow::Borrowed(s),
        _ => {
            let mut out = String::with_capacity(bytes.len() + 8);
            encode_slow(bytes, &mut out);
            Cow::Owned(out)
        }
    }
}

/// The text form of a path.
pub fn encode_path(path: &Path) -> Cow<'_, str> {
    encode(path.as_os_str().as_bytes())
}

/// Text that is not a valid encoded path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "bad escape at byte {at} of '{}': write a backslash as \\\\ and a byte that is not UTF-8 as \\xHH",
    crate::error::escape_controls(text)
)]
pub struct DecodeError {
    pub text: String,
    pub at: usize,
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The bytes a text form stands for. Accepts what [`encode`] writes, plus
/// `\xHH` for any byte (upper-case hex too): `dir/\xc3\xa9` is `dir/é`.
/// Any other backslash is an error, so a typo is never taken literally.
pub fn decode(text: &str) -> Result<Cow<'_, [u8]>, DecodeError> {
    let bytes = text.as_bytes();
    let Some(first) = bytes.iter().position(|&b| b == b'\\') else {
        return Ok(Cow::Borrowed(bytes));
    };
    let mut out = Vec::with_capacity(bytes.len());
    out.extend_from_slice(&bytes[..first]);
    let mut i = first;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'\\' {
            out.push(b);
            i += 1;
            continue;
        }
        let bad = || DecodeError {
            text: text.to_string(),
            at: i,
        };
        match bytes.get(i + 1) {
            Some(b'\\') => {
                out.push(b'\\');
                i += 2;
            }
            Some(b'x') => {
                let hi = bytes.get(i + 2).copied().and_then(hex).ok_or_else(bad)?;
                let lo = bytes.get(i + 3).copied().and_then(hex).ok_or_else(bad)?;
                out.push(hi << 4 | lo);
                i += 4;
            }
            _ => return Err(bad()),
        }
    }
    Ok(Cow::Owned(out))
}

/// The path a text form stands for.
pub fn decode_path(text: &str) -> Result<PathBuf, DecodeError> {
    Ok(PathBuf::from(OsStr::from_bytes(&decode(text)?)))
}

/// The filesystem path of an encoded path that the daemon itself built
/// (a watch root from the store, an event path): those always decode.
/// Borrowed in the common case (no backslash).
pub fn as_path(text: &str) -> Cow<'_, Path> {
    match decode(text) {
        Ok(Cow::Borrowed(b)) => Cow::Borrowed(Path::new(OsStr::from_bytes(b))),
        Ok(Cow::Owned(v)) => Cow::Owned(PathBuf::from(std::ffi::OsString::from_vec(v))),
        // Not produced by encode (a hand-edited store): taken literally.
        Err(_) => Cow::Borrowed(Path::new(text)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(b: &[u8]) -> String {
        let mut s = String::new();
        encode_into(b, &mut s);
        assert_eq!(s, encode(b), "encode_into and encode agree");
        s
    }

    #[test]
    fn the_four_look_alikes_are_distinct() {
        let names: [&[u8]; 5] = [
            b"bad\xff",
            "bad\u{fffd}".as_bytes(),
            b"bad\xff\xfe",
            b"bad\xfe\xff",
            b"bad\\xff",
        ];
        let encoded: Vec<String> = names.iter().map(|n| enc(n)).collect();
        assert_eq!(
            encoded,
            [
                "bad\\xff",
                "bad\u{fffd}",
                "bad\\xff\\xfe",
                "bad\\xfe\\xff",
                "bad\\\\xff"
            ]
        );
        for (n, e) in names.iter().zip(&encoded) {
            assert_eq!(&*decode(e).unwrap(), *n);
        }
    }

    #[test]
    fn plain_utf8_is_borrowed_and_unchanged() {
        assert!(matches!(
            encode("/var/www/é.txt".as_bytes()),
            Cow::Borrowed(_)
        ));
        assert!(matches!(decode("/var/www/é.txt"), Ok(Cow::Borrowed(_))));
        assert_eq!(enc("/a b/ü/日本".as_bytes()), "/a b/ü/日本");
    }

    #[test]
    fn truncated_and_overlong_sequences_are_bytes() {
        // A cut-off 3-byte sequence, an overlong '/', a surrogate.
        assert_eq!(enc(b"a\xe6\x97"), "a\\xe6\\x97");
        assert_eq!(enc(b"\xc0\xaf"), "\\xc0\\xaf");
        assert_eq!(enc(b"\xed\xa0\x80"), "\\xed\\xa0\\x80");
        // Joining at '/' commutes with encoding.
        assert_eq!(enc(b"a\xe6/b"), format!("{}/{}", enc(b"a\xe6"), enc(b"b")));
    }

    #[test]
    fn decode_rejects_stray_backslashes_and_accepts_upper_hex() {
        for bad in ["a\\", "a\\b", "a\\x", "a\\xf", "a\\xzz", "\\u00ff"] {
            let e = decode(bad).unwrap_err();
            assert!(e.to_string().contains("bad escape"), "{e}");
        }
        assert_eq!(&*decode("a\\xFF").unwrap(), b"a\xff");
        assert_eq!(&*decode("\\xc3\\xa9").unwrap(), "é".as_bytes());
    }

    #[test]
    fn round_trip_over_every_short_byte_string() {
        // Every string of up to 2 bytes, and 3-byte strings over a set of
        // interesting bytes: decode(encode(b)) == b, and no two collide.
        let mut seen = std::collections::HashSet::new();
        let mut check = |b: &[u8]| {
            let e = enc(b);
            assert_eq!(&*decode(&e).unwrap(), b, "{e}");
            assert!(seen.insert(e), "collision for {b:?}");
        };
        check(b"");
        for x in 0..=255u8 {
            check(&[x]);
            for y in 0..=255u8 {
                check(&[x, y]);
            }
        }
        let picks = [
            b'\\', b'x', b'f', b'/', 0x7f, 0x80, 0xbf, 0xc3, 0xe6, 0xf0, 0xff,
        ];
        for &a in &picks {
            for &b in &picks {
                for &c in &picks {
                    check(&[a, b, c]);
                }
            }
        }
    }
}
