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
//! The client, in turn, talks only to a daemon run by root or by its user
//! (SO_PEERCRED too), within a timeout, and escapes control characters in
//! whatever of the daemon's text it shows.
use std::{
    io::{BufRead, BufReader, Read, Write},
    os::{fd::AsRawFd, unix::net::UnixStream},
    path::{Path, PathBuf},
    time::{Duration, Instant},
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
        /// `filesystem`, `inode` or `auto` (absent: auto).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mark: Option<String>,
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

/// How long the CLI waits, by default, to connect and for each answer.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest response line the CLI reads (a `health` or `monitored` listing
/// of many paths is long; anything past this is not a daemon's answer).
pub const MAX_RESPONSE: usize = 64 << 20;

/// Who the CLI works for: the processes it accepts at the other end of the
/// socket are root's and this user's.
#[derive(Debug, Clone)]
pub struct Peer {
    pub uid: u32,
    pub name: String,
}

/// A connection to the daemon, checked to be served by root or the user.
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    socket: PathBuf,
    timeout: Duration,
}

impl Client {
    /// Connects within `timeout`, then checks who listens (SO_PEERCRED)
    /// before anything is sent: root, or `user` itself.
    pub fn connect(socket: &Path, user: &Peer, timeout: Duration) -> Result<Self> {
        let stream = connect_within(socket, timeout)?;
        check_peer(&stream, socket, user)?;
        let set = |r: std::io::Result<()>| r.map_err(|e| Error::Socket(e.to_string()));
        set(stream.set_read_timeout(Some(timeout)))?;
        set(stream.set_write_timeout(Some(timeout)))?;
        let writer = stream
            .try_clone()
            .map_err(|e| Error::Socket(e.to_string()))?;
        Ok(Self {
            reader: BufReader::new(stream),
            writer,
            socket: socket.to_path_buf(),
            timeout,
        })
    }

    fn timed_out(&self) -> Error {
        Error::Socket(format!(
            "no answer from the daemon on {} within {} s (is it stuck? [socket] timeout_secs sets the wait)",
            self.socket.display(),
            self.timeout.as_secs()
        ))
    }

    fn io_error(&self, doing: &str, e: std::io::Error) -> Error {
        match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => self.timed_out(),
            _ => Error::Socket(format!("{doing} the daemon: {e}")),
        }
    }

    pub fn send(&mut self, req: &Request) -> Result<()> {
        let mut line = serde_json::to_string(req).expect("requests serialize");
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .map_err(|e| self.io_error("sending to", e))
    }

    /// Reads one response line as JSON (at most [`MAX_RESPONSE`] bytes,
    /// within the timeout).
    pub fn recv(&mut self) -> Result<serde_json::Value> {
        read_response(&mut self.reader).map_err(|e| self.io_error("reading from", e))?
    }

    /// Sends a request and returns its response, turning `ok:false` into an
    /// error. A daemon that refuses a connection says why and closes it,
    /// perhaps before the request is written: its answer is read then too.
    pub fn call(&mut self, req: &Request) -> Result<serde_json::Value> {
        let sent = self.send(req);
        let v = match (sent, self.recv()) {
            (_, Ok(v)) => v,
            (Err(e), Err(_)) | (Ok(()), Err(e)) => return Err(e),
        };
        response_result(v)
    }

    /// The raw line reader for a subscribe stream, once its answer was read
    /// with [`recv`](Self::recv) (within the timeout): events may be far
    /// apart, so from here reads wait without limit. Lines are the daemon's
    /// text: escape them ([`crate::error::escape_controls`]) before they
    /// reach a terminal.
    pub fn lines(self) -> Result<std::io::Lines<BufReader<UnixStream>>> {
        self.reader
            .get_ref()
            .set_read_timeout(None)
            .map_err(|e| Error::Socket(e.to_string()))?;
        Ok(self.reader.lines())
    }
}

/// Connects, retrying while the daemon's backlog is full, until `timeout`.
fn connect_within(socket: &Path, timeout: Duration) -> Result<UnixStream> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, connect};
    let deadline = Instant::now() + timeout;
    let addr = UnixAddr::new(socket)
        .map_err(|e| Error::Socket(format!("cannot connect to {}: {e}", socket.display())))?;
    let mut pause = Duration::from_millis(1);
    loop {
        let fd = nix::sys::socket::socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )
        .map_err(|e| Error::Socket(format!("cannot create a socket: {e}")))?;
        match connect(fd.as_raw_fd(), &addr) {
            Ok(()) => {
                let stream = UnixStream::from(fd);
                stream
                    .set_nonblocking(false)
                    .map_err(|e| Error::Socket(e.to_string()))?;
                return Ok(stream);
            }
            // The listen backlog is full: the daemon is slow to accept.
            Err(nix::errno::Errno::EAGAIN) if Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            Err(nix::errno::Errno::EAGAIN) => {
                return Err(Error::Socket(format!(
                    "the daemon on {} did not accept the connection within {} s (is it stuck? [socket] timeout_secs sets the wait)",
                    socket.display(),
                    timeout.as_secs()
                )));
            }
            Err(e) => {
                return Err(Error::Socket(match e {
                    nix::errno::Errno::ENOENT | nix::errno::Errno::ECONNREFUSED => format!(
                        "no fsmon daemon is running (nothing listens on {})",
                        socket.display()
                    ),
                    nix::errno::Errno::EACCES => format!(
                        "permission denied on {} (the daemon belongs to another user)",
                        socket.display()
                    ),
                    e => format!("cannot connect to {}: {e}", socket.display()),
                }));
            }
        }
    }
}

/// The listening process must be root's or the user's: anyone else at the
/// socket's path is standing in for the daemon, and gets no byte from us.
fn check_peer(stream: &UnixStream, socket: &Path, user: &Peer) -> Result<()> {
    let cred = nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(|e| Error::Socket(format!("cannot tell who serves {}: {e}", socket.display())))?;
    let uid = cred.uid();
    if uid == 0 || uid == user.uid {
        return Ok(());
    }
    let owner = match nix::unistd::User::from_uid(uid.into()) {
        Ok(Some(u)) => format!(
            "user {} (uid {uid})",
            crate::error::escape_controls(&u.name)
        ),
        _ => format!("uid {uid}"),
    };
    Err(Error::Socket(format!(
        "refusing {}: it is served by {owner}, not by root or {}: another user may be standing in for the fsmon daemon; nothing was sent",
        socket.display(),
        user.name
    )))
}

/// Reads one response line from `reader`: JSON, or a one-line error (the
/// connection closed, a line over [`MAX_RESPONSE`], not JSON); the outer
/// error is the read's own. What the client runs on the daemon's bytes
/// (and the `socket_response` fuzz target on any bytes).
pub fn read_response(reader: &mut impl BufRead) -> std::io::Result<Result<serde_json::Value>> {
    let mut line = Vec::new();
    let n = reader
        .take(MAX_RESPONSE as u64 + 1)
        .read_until(b'\n', &mut line)?;
    if n == 0 {
        return Ok(Err(Error::Socket(
            "the daemon closed the connection".into(),
        )));
    }
    if n > MAX_RESPONSE {
        return Ok(Err(Error::Socket(format!(
            "bad response from the daemon: longer than {MAX_RESPONSE} bytes"
        ))));
    }
    Ok(parse_response(&line))
}

/// One response line as the CLI reads it: JSON, or a one-line error.
/// Nothing of the daemon's text is quoted raw: errors have control
/// characters escaped.
pub fn parse_response(line: &[u8]) -> Result<serde_json::Value> {
    serde_json::from_slice(line).map_err(|e| {
        let msg = e.to_string();
        let msg = msg.split(" at line ").next().unwrap_or(&msg);
        Error::Socket(format!(
            "bad response from the daemon: {}",
            crate::error::escape_controls(msg)
        ))
    })
}

/// A response's outcome: the response if `ok` is true, else its `error`
/// text (control characters escaped) as an error.
pub fn response_result(v: serde_json::Value) -> Result<serde_json::Value> {
    if v.get("ok") == Some(&serde_json::Value::Bool(true)) {
        return Ok(v);
    }
    let err = v
        .get("error")
        .and_then(|e| e.as_str())
        .unwrap_or("the daemon refused without saying why");
    Err(Error::Socket(crate::error::escape_controls(err)))
}

/// A JSON value as text safe for a terminal: serde_json leaves DEL and the
/// C1 controls (U+0080..U+009F, some terminals act on them) raw inside
/// strings; they become `\u00XX` escapes, so the text stays valid JSON.
pub fn terminal_json(v: &serde_json::Value) -> String {
    let text = v.to_string();
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
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
    fn responses_are_read_safely() {
        assert!(parse_response(b"{\"ok\":true}\n").is_ok());
        let e = parse_response(b"\x1b[31mred").unwrap_err().to_string();
        assert!(!e.chars().any(char::is_control), "{e:?}");
        let v = parse_response(br#"{"ok":false,"error":"x\u001b[2Jy\u009b"}"#).unwrap();
        let e = response_result(v).unwrap_err().to_string();
        assert_eq!(e, "x\\u{1b}[2Jy\\u{9b}");
        let v: serde_json::Value = serde_json::from_str(r#"{"a":"\u007f\u009b\u001b"}"#).unwrap();
        let t = terminal_json(&v);
        assert!(!t.chars().any(char::is_control), "{t:?}");
        assert_eq!(serde_json::from_str::<serde_json::Value>(&t).unwrap(), v);
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
