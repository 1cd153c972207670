//! The library's error type. The binary adds context with `anyhow` at the
//! edges; inside, every failure says what it was about.
use std::{io, path::PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The eBPF tracker could not be loaded or used.
    #[error("eBPF: {0}")]
    Ebpf(String),
    /// A bad setting, value or argument, with what was wrong.
    #[error("{0}")]
    Invalid(String),
    /// An I/O operation on a named path failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A refusal for safety: symlink, wrong owner, not a regular file...
    #[error("refusing {}: {reason}", path.display())]
    Unsafe { path: PathBuf, reason: String },
    /// fanotify could not be set up or read.
    #[error("fanotify: {0}")]
    Fanotify(String),
    /// The daemon's control socket.
    #[error("{0}")]
    Socket(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::Invalid(msg.into())
    }
}

/// `text` with control characters escaped (a newline pasted into an
/// argument, or quoted back by a parser), so a message built from user input
/// stays on one line.
pub fn escape_controls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// A parser's message with what it quotes from the input taken out: text
/// in double or single quotes becomes `"…"`, text in backticks is kept only
/// when it looks like a key or type name (letters, digits, `_ - .`, at
/// most 64 bytes). Errors about a file then never show its content (a
/// config symlinked to a secret file, a store line), only where it is.
pub fn redact_quoted(msg: &str) -> String {
    let is_name = |s: &str| {
        !s.is_empty()
            && s.len() <= 64
            && s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
    };
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(start) = rest.find(['"', '`', '\'']) {
        let quote = rest[start..].chars().next().unwrap();
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        match after.find(quote) {
            Some(end) => {
                let inner = &after[..end];
                out.push(quote);
                let grammar = inner.len() <= 3 && inner.chars().all(|c| c.is_ascii_punctuation());
                if quote == '`' && (is_name(inner) || grammar) {
                    out.push_str(inner);
                } else {
                    out.push('…');
                }
                out.push(quote);
                rest = &after[end + 1..];
            }
            None => {
                // An unclosed quote: drop the rest, it may be content.
                out.push(quote);
                out.push('…');
                rest = "";
            }
        }
    }
    out.push_str(rest);
    escape_controls(&out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn redact_quoted() {
        let r = super::redact_quoted;
        assert_eq!(
            r("invalid type: string \"hunter2\", expected u64"),
            "invalid type: string \"…\", expected u64"
        );
        assert_eq!(
            r("unknown field `bufer_size`, expected one of `a`, `b`"),
            "unknown field `bufer_size`, expected one of `a`, `b`"
        );
        assert_eq!(r("integer `1234`"), "integer `…`");
        assert_eq!(r("key `root:$6$x`"), "key `…`");
        assert_eq!(r("unexpected 'x' then \"open"), "unexpected '…' then \"…");
    }
}
