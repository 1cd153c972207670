//! The control socket: newline-delimited JSON, one request per line, one
//! or more response lines.
//!
//! ```text
//! -> {"op":"add","group":"nginx","path":"/var/www","recursive":true,"types":["CREATE"],"size":">=1MB"}
//! <- {"ok":true,"pending":false}
//! -> {"op":"remove","group":"nginx","path":"/var/www"}      (path omitted: the whole group)
//! -> {"op":"monitored"}    <- {"ok":true,"groups":[{"cmd":..,"paths":{..}}]}
//! -> {"op":"health"}       <- {"ok":true,"uptime_secs":..,"tracker":"ebpf",...}
//! -> {"op":"metrics"}      <- {"ok":true,"text":"# HELP ..."}
//! -> {"op":"subscribe","group":"nginx"}  (group optional)
//! <- {"ok":true}  then one line per event: {"group":"nginx","time":..,...}
//!    and, if this client fell behind, {"notice":"missed","missed":N}
//! ```
//! Errors: `{"ok":false,"error":"one line"}`. Only root and the owning user
//! may connect (checked with SO_PEERCRED); the socket file is mode 0600.
use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Longest request line accepted (a path is at most 4 KiB; this is generous).
pub const MAX_REQUEST: usize = 64 * 1024;
/// How long a client may take to send its request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Add {
        group: String,
        path: String,
        #[serde(default)]
        recursive: bool,
        #[serde(default)]
        types: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        size: Option<String>,
    },
    Remove {
        group: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path: Option<String>,
    },
    // Empty struct variants rather than unit variants, so that
    // deny_unknown_fields rejects stray keys for these too.
    Monitored {},
    Health {},
    Metrics {},
    Subscribe {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        group: Option<String>,
    },
    /// Finishes a `clean`: the client copied the kept tail of the group's log
    /// to `tmp` (a file beside the log) up to byte `copied_until`; the daemon
    /// appends what it wrote since and swaps the file in, between batches.
    CleanSwap {
        group: String,
        tmp: String,
        copied_until: u64,
    },
}

/// Parses one request line into a request or a one-line error.
pub fn parse_request(line: &str) -> Result<Request> {
    serde_json::from_str(line.trim()).map_err(|e| {
        let msg = e.to_string();
        let msg = msg.split(" at line ").next().unwrap_or(&msg);
        // serde quotes unknown names raw: escape control characters so the
        // error stays one line.
        Error::Socket(format!(
            "bad request: {}",
            crate::error::escape_controls(msg)
        ))
    })
}

/// A connection to the daemon.
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    pub fn connect(socket: &Path) -> Result<Self> {
        let stream = UnixStream::connect(socket).map_err(|e| {
            Error::Socket(match e.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                    format!(
                        "no fsmon daemon is running (nothing listens on {})",
                        socket.display()
                    )
                }
                std::io::ErrorKind::PermissionDenied => {
                    format!(
                        "permission denied on {} (the daemon belongs to another user)",
                        socket.display()
                    )
                }
                _ => format!("cannot connect to {}: {e}", socket.display()),
            })
        })?;
        let writer = stream
            .try_clone()
            .map_err(|e| Error::Socket(e.to_string()))?;
        Ok(Self {
            reader: BufReader::new(stream),
            writer,
        })
    }

    pub fn send(&mut self, req: &Request) -> Result<()> {
        let mut line = serde_json::to_string(req).expect("requests serialize");
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .map_err(|e| Error::Socket(format!("sending to the daemon: {e}")))
    }

    /// Reads one response line as JSON.
    pub fn recv(&mut self) -> Result<serde_json::Value> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(|e| Error::Socket(format!("reading from the daemon: {e}")))?;
        if n == 0 {
            return Err(Error::Socket("the daemon closed the connection".into()));
        }
        serde_json::from_str(&line)
            .map_err(|e| Error::Socket(format!("bad response from the daemon: {e}")))
    }

    /// Sends a request and returns its response, turning `ok:false` into an
    /// error.
    pub fn call(&mut self, req: &Request) -> Result<serde_json::Value> {
        self.send(req)?;
        let v = self.recv()?;
        if v.get("ok") == Some(&serde_json::Value::Bool(true)) {
            Ok(v)
        } else {
            let err = v
                .get("error")
                .and_then(|e| e.as_str())
                .unwrap_or("unknown error");
            Err(Error::Socket(err.to_string()))
        }
    }

    /// The raw line reader (for subscribe streams).
    pub fn lines(self) -> std::io::Lines<BufReader<UnixStream>> {
        self.reader.lines()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        for line in [
            r#"{"op":"add","group":"nginx","path":"/x","recursive":true,"types":["CREATE"]}"#,
            r#"{"op":"remove","group":"nginx"}"#,
            r#"{"op":"health"}"#,
            r#"{"op":"subscribe","group":"_global"}"#,
            r#"{"op":"clean_swap","group":"g","tmp":"/t","copied_until":5}"#,
        ] {
            let r = parse_request(line).unwrap();
            assert_eq!(
                parse_request(&serde_json::to_string(&r).unwrap()).unwrap(),
                r
            );
        }
    }

    #[test]
    fn garbage_is_a_one_line_error() {
        for bad in [
            "",
            "garbage",
            "{}",
            r#"{"op":"explode"}"#,
            r#"{"op":"health","x":1}"#,
            "[1,2]",
            "{\"op\":",
        ] {
            let e = parse_request(bad).unwrap_err().to_string();
            assert!(e.starts_with("bad request"), "{bad}: {e}");
            assert!(!e.contains('\n'));
        }
    }
}
