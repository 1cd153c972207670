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
