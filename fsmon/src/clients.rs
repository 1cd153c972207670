//! Who gets a control-socket connection, and how the daemon lives through
//! accept failures without spinning.
//!
//! - At most `[socket] max_clients` connections are served at once, and at
//!   most `max_clients_per_uid` per connecting user; past that, a new
//!   connection gets a one-line refusal and is closed.
//! - A connection is also refused when taking it would leave fewer than
//!   [`RESERVED_FDS`] free descriptors: capture and logging (directory
//!   handles, log files, /proc) must never run out because of clients.
//! - `accept` errors back off exponentially (5 ms to 1 s). On EMFILE/ENFILE
//!   a spare descriptor is closed to take the waiting connection off the
//!   queue and refuse it, so the listener does not stay readable forever.
//! - Every refusal and failure is counted (`fsmon_socket_refused_total`)
//!   and logged at most once a minute, with the number left unsaid.
use std::{
    collections::HashMap,
    fs::File,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::json;
use tokio::net::{UnixListener, UnixStream};

use crate::metrics::Metrics;

pub const DEFAULT_MAX_CLIENTS: usize = 64;
pub const DEFAULT_MAX_CLIENTS_PER_UID: usize = 16;
/// Descriptors kept free for capture and logging.
pub const RESERVED_FDS: u64 = 16;
/// At most one log line per kind of trouble in this interval.
const LOG_EVERY: Duration = Duration::from_secs(60);
const BACKOFF_MIN: Duration = Duration::from_millis(5);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The one-line error a refused client reads.
pub fn error_line(msg: impl std::fmt::Display) -> String {
    format!("{}\n", json!({"ok": false, "error": msg.to_string()}))
}

/// Tells a connection why it is refused, without waiting (a fresh socket's
/// buffer takes one short line), then lets the caller drop it.
pub fn refuse_now(stream: &UnixStream, msg: &str) {
    let _ = stream.try_write(error_line(msg).as_bytes());
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub total: usize,
    pub per_uid: usize,
}

/// Logs a recurring problem at most once per [`LOG_EVERY`].
#[derive(Default)]
struct RateLimited {
    last: Option<Instant>,
    unsaid: u64,
}

impl RateLimited {
    /// `Some(n)` if a line is due now (n: occurrences left unsaid since
    /// the last line), `None` to stay quiet.
    fn due(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self.last.is_some_and(|t| now.duration_since(t) < LOG_EVERY) {
            self.unsaid += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.unsaid))
    }

    fn warn(&mut self, msg: impl FnOnce() -> String) {
        match self.due() {
            None => {}
            Some(0) => log::warn!("{}", msg()),
            Some(n) => log::warn!("{} ({n} more like it since the last such line)", msg()),
        }
    }
}

/// Counts the connections being served.
pub struct Admission {
    limits: Limits,
    counts: Mutex<Counts>,
    metrics: Arc<Metrics>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_uid: HashMap<u32, usize>,
    log: RateLimited,
}

/// A connection's place; given back when dropped.
pub struct Slot {
    admission: Arc<Admission>,
    uid: u32,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.admission.counts.lock().unwrap();
        c.total -= 1;
        if let Some(n) = c.per_uid.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                c.per_uid.remove(&self.uid);
            }
        }
        self.admission.metrics.socket_clients.dec();
    }
}

impl Admission {
    pub fn new(limits: Limits, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Admission {
            limits,
            counts: Mutex::new(Counts::default()),
            metrics,
        })
    }

    /// A place for a connection from `uid`, or the refusal to send it.
    pub fn admit(self: &Arc<Self>, uid: u32) -> Result<Slot, String> {
        let mut c = self.counts.lock().unwrap();
        let mine = c.per_uid.get(&uid).copied().unwrap_or(0);
        let refusal = if mine >= self.limits.per_uid {
            Some(format!(
                "too many connections from uid {uid} (at most {}, [socket] max_clients_per_uid): close some and try again",
                self.limits.per_uid
            ))
        } else if c.total >= self.limits.total {
            Some(format!(
                "too many connections to the daemon (at most {}, [socket] max_clients): try again later",
                self.limits.total
            ))
        } else {
            None
        };
        if let Some(msg) = refusal {
            self.metrics
                .socket_refused
                .with_label_values(&["limit"])
                .inc();
            c.log
                .warn(|| format!("control socket: refused a connection: {msg}"));
            return Err(msg);
        }
        c.total += 1;
        *c.per_uid.entry(uid).or_default() += 1;
        self.metrics.socket_clients.inc();
        Ok(Slot {
            admission: self.clone(),
            uid,
        })
    }
}

/// Raises the soft limit on open descriptors to the hard one (systemd and
/// shells often start with 1024); the admin's hard limit is respected.
pub fn raise_nofile_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        log::warn!("cannot raise the open-file limit from {soft} to {hard}: {e}");
    }
}

/// True if descriptor `fd` being in use leaves fewer than [`RESERVED_FDS`]
/// free: the kernel hands out the lowest free number, so every number
/// below `fd` is taken.
fn short_of_descriptors(fd: i32) -> bool {
    use nix::sys::resource::{Resource, getrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, _)) => fd as u64 + 1 + RESERVED_FDS > soft,
        Err(_) => false,
    }
}

/// The listening socket, with what it takes to fail gracefully.
pub struct Acceptor {
    listener: UnixListener,
    /// Closed to make room for one accept when descriptors run out.
    spare: Option<File>,
    backoff: Duration,
    log: RateLimited,
    metrics: Arc<Metrics>,
}

const SHORT_OF_FDS: &str = "the daemon is short of file descriptors: try again later";

impl Acceptor {
    pub fn new(listener: UnixListener, metrics: Arc<Metrics>) -> Self {
        Acceptor {
            listener,
            spare: File::open("/dev/null").ok(),
            backoff: Duration::ZERO,
            log: RateLimited::default(),
            metrics,
        }
    }

    fn refused(&mut self, reason: &str, msg: impl FnOnce() -> String) {
        self.metrics
            .socket_refused
            .with_label_values(&[reason])
            .inc();
        self.log.warn(msg);
    }

    /// The next connection the daemon has descriptors to serve. Failures
    /// are dealt with here; cancel-safe (for `select!`).
    pub async fn next(&mut self) -> UnixStream {
        loop {
            if !self.backoff.is_zero() {
                tokio::time::sleep(self.backoff).await;
            }
            match self.listener.accept().await {
                Ok((stream, _)) => {
                    self.backoff = Duration::ZERO;
                    if short_of_descriptors(stream.as_raw_fd()) {
                        refuse_now(&stream, SHORT_OF_FDS);
                        self.refused("descriptors", || {
                            format!(
                                "control socket: refused a connection: fewer than {RESERVED_FDS} file descriptors left (kept for capture and logging)"
                            )
                        });
                        continue;
                    }
                    return stream;
                }
                Err(e) => {
                    let out_of_fds =
                        matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE));
                    self.refused("accept_error", || {
                        format!("accept on the control socket failed: {e}; backing off")
                    });
                    // A waiting connection taken off the queue is progress:
                    // the next try comes soon. Otherwise, wait longer each time.
                    self.backoff = if out_of_fds && self.refuse_one_with_spare() {
                        BACKOFF_MIN
                    } else {
                        (self.backoff * 2).clamp(BACKOFF_MIN, BACKOFF_MAX)
                    };
                }
            }
        }
    }

    /// Out of descriptors: frees the spare one, takes one waiting
    /// connection off the queue, tells it why, closes it, and takes the
    /// spare back. True if a connection was refused this way.
    fn refuse_one_with_spare(&mut self) -> bool {
        if self.spare.take().is_none() {
            self.spare = File::open("/dev/null").ok();
            return false;
        }
        let accepted = nix::sys::socket::accept4(
            self.listener.as_raw_fd(),
            nix::sys::socket::SockFlag::SOCK_CLOEXEC | nix::sys::socket::SockFlag::SOCK_NONBLOCK,
        );
        let refused = match accepted {
            Ok(fd) => {
                // SAFETY: accept4 just returned this descriptor; we own it.
                let conn = unsafe { OwnedFd::from_raw_fd(fd) };
                let _ = nix::sys::socket::send(
                    conn.as_raw_fd(),
                    error_line(SHORT_OF_FDS).as_bytes(),
                    nix::sys::socket::MsgFlags::MSG_DONTWAIT
                        | nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
                );
                true
            }
            Err(_) => false,
        };
        self.spare = File::open("/dev/null").ok();
        refused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_uid_and_in_total() {
        let a = Admission::new(
            Limits {
                total: 3,
                per_uid: 2,
            },
            Arc::new(Metrics::new()),
        );
        let s1 = a.admit(1000).unwrap();
        let _s2 = a.admit(1000).unwrap();
        let e = a.admit(1000).err().unwrap();
        assert!(e.contains("max_clients_per_uid"), "{e}");
        let _s3 = a.admit(0).unwrap();
        let e = a.admit(0).err().unwrap();
        assert!(e.contains("[socket] max_clients)"), "{e}");
        drop(s1);
        assert!(a.admit(1000).is_ok(), "a closed connection frees its place");
        assert_eq!(a.metrics.socket_clients.get(), 2);
    }

    #[test]
    fn rate_limited_log_says_how_much_it_left_unsaid() {
        let mut r = RateLimited::default();
        let said = (0..1000).filter(|_| r.due().is_some()).count();
        assert_eq!(said, 1);
        assert_eq!(r.unsaid, 999);
        // A minute later: one line, which counts the 999.
        r.last = Some(Instant::now() - LOG_EVERY);
        assert_eq!(r.due(), Some(999));
        assert_eq!(r.due(), None);
    }
}
