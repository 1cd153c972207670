//! Shipping: every logged line of the chosen groups to NATS JetStream,
//! exactly once.
//!
//! The JSONL logs are the buffer. A thread of its own (with a small tokio
//! runtime) reads each group's log from a persisted [`cursor::Cursor`],
//! publishes each line with a deterministic `Nats-Msg-Id`, and moves the
//! cursor only over lines the stream acknowledged. Capture never waits for
//! it: the log is written whether NATS is up or not, and the shipper
//! catches up from the file.
//!
//! # Exactly once
//!
//! - *At least once*: the cursor only covers acknowledged lines and is
//!   saved after them, so after any failure (lost connection, timeout,
//!   SIGKILL) shipping resumes at or before the first unacknowledged line.
//! - *At most once*: a message id names an event for good (host, group,
//!   the log's epoch and the event's logical offset, see [`cursor`]), and
//!   JetStream drops a message whose id it stored within the stream's
//!   duplicate window. A message is sent again only in two cases: (1) after
//!   a publish failed or timed out (its ack was lost): it is re-sent as soon
//!   as the connection is back; (2) after a restart, the lines acknowledged
//!   since the last cursor save (saved every [`SAVE_EVERY`], at most
//!   `max_in_flight` lines more) are re-sent. Both happen within seconds of
//!   the first attempt when the daemon and the server are up, so the
//!   default duplicate window (2 minutes) covers them.
//! - The window does not cover a long gap: a server that stored messages,
//!   lost the connection before acknowledging them and stays away for an
//!   hour; a daemon killed and started again the next day. So before it
//!   publishes again (at start, and after every failure) the shipper
//!   *reconciles*: it reads the headers of the messages on its subject
//!   stored after the last acknowledgement it saved (an ordered consumer
//!   from that stream sequence, headers only: a few hundred messages at
//!   most) and skips the lines whose ids are there. The duplicate window
//!   then only has to cover the seconds between a timed-out publish that
//!   the client still delivers later and its retry.
//! - Publishing stops while the client is disconnected, so the client's
//!   buffer does not fill with copies during an outage; memory is bounded
//!   by `max_in_flight` lines per group and one read chunk.
//!
//! # Cost
//!
//! Shipping is deferrable, so it stays out of the way: the thread runs
//! under `SCHED_IDLE` while it is a storm behind (see [`Sched`]), works in
//! bursts ([`BURST_BYTES`], [`BURST_WAIT`]), sends each line as it is with
//! the host and group spliced in, and collects acknowledgements on one
//! subscription per group rather than a request per message.
pub mod config;
pub mod cursor;
pub mod fleet;
pub mod nats;

use std::{
    collections::{BTreeMap, HashSet, VecDeque},
    fs::File,
    os::unix::fs::{FileExt, MetadataExt},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use async_nats::{HeaderMap, jetstream};
use bytes::BytesMut;
use chrono::{DateTime, FixedOffset, Utc};
use futures_util::{FutureExt, StreamExt};
use prometheus::{GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use serde_json::json;

pub use config::ShipConfig;
use cursor::{Cursor, Resolved};

use crate::{
    error::Result, logfile::parse_line, pipeline::write::LOG_SUFFIX, safefs, user::TargetUser,
};

/// Is `text` (a line without its newline) an event to ship: a complete JSON
/// object? Checked without building it (the line is sent as it is, with the
/// host and group spliced in), so a crash's fragment glued to the next line
/// is skipped, not shipped.
fn is_event_line(text: &[u8]) -> bool {
    text.first() == Some(&b'{')
        && text.last() == Some(&b'}')
        && serde_json::from_slice::<serde::de::IgnoredAny>(text).is_ok()
}

/// Cursor saves while shipping.
pub const SAVE_EVERY: Duration = Duration::from_millis(200);
/// How often an idle shipper looks for new lines.
const POLL: Duration = Duration::from_millis(20);
/// Bytes read from a log at a time.
const READ_CHUNK: usize = 256 * 1024;
/// Shipping works in bursts: it waits until this many bytes of new lines
/// are in the log (a few hundred events)...
const BURST_BYTES: u64 = 64 * 1024;
/// ...or the first of them has waited this long. Fewer, larger rounds cost
/// less per event (wake-ups, reads, writes to the server); this is the
/// latency it adds when events are few.
const BURST_WAIT: Duration = Duration::from_millis(100);
/// A line longer than this is not an event (and is skipped).
const MAX_LINE: usize = 1 << 20;
/// Time allowed for one acknowledgement.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// Most ids a reconciliation remembers (beyond, the duplicate window is
/// the safety net).
const RECONCILE_MAX: usize = 1 << 20;

/// A JetStream acknowledgement, read without building it (the client's own
/// publish path buffers it into an intermediate tree and allocates).
#[derive(serde::Deserialize)]
struct PubAck<'a> {
    #[serde(default)]
    seq: u64,
    #[serde(borrow, default)]
    error: Option<PubAckError<'a>>,
}

#[derive(serde::Deserialize)]
struct PubAckError<'a> {
    #[serde(default)]
    code: u16,
    #[serde(borrow, default)]
    description: std::borrow::Cow<'a, str>,
}

/// The connection, as `health` shows it.
#[derive(Debug, Clone, Default)]
struct ConnStatus {
    state: &'static str,
    last_error: Option<String>,
    /// The stream is usable (exists, captures our subjects).
    stream_ok: bool,
}

/// One group's shared state: its cursor (also moved by `clean`) and what
/// `health` shows.
pub struct GroupState {
    group: String,
    log_path: PathBuf,
    cursor: Mutex<Cursor>,
    status: Mutex<GroupStatus>,
}

#[derive(Debug, Clone, Default)]
struct GroupStatus {
    pending_events: u64,
    pending_bytes: u64,
    oldest_unshipped: Option<DateTime<FixedOffset>>,
    skipped_corrupt: u64,
    last_error: Option<String>,
}

struct ShipMetrics {
    shipped: IntCounterVec,
    pending_events: IntGaugeVec,
    pending_bytes: IntGaugeVec,
    oldest_age: GaugeVec,
    connected: IntGauge,
    errors: IntCounterVec,
}

impl ShipMetrics {
    fn new(r: &Registry) -> Self {
        let by_group = |name: &str, help: &str| {
            let v = IntGaugeVec::new(Opts::new(name, help), &["group"]).expect("metric");
            r.register(Box::new(v.clone())).expect("unique metric");
            v
        };
        let shipped = IntCounterVec::new(
            Opts::new(
                "fsmon_ship_events_total",
                "Events acknowledged by the NATS stream, by group",
            ),
            &["group"],
        )
        .expect("metric");
        r.register(Box::new(shipped.clone())).expect("unique");
        let errors = IntCounterVec::new(
            Opts::new(
                "fsmon_ship_errors_total",
                "Publishes that failed or timed out (and were retried), by group",
            ),
            &["group"],
        )
        .expect("metric");
        r.register(Box::new(errors.clone())).expect("unique");
        let oldest_age = GaugeVec::new(
            Opts::new(
                "fsmon_ship_oldest_unshipped_age_seconds",
                "Age of the oldest event not yet acknowledged by the stream (0: none)",
            ),
            &["group"],
        )
        .expect("metric");
        r.register(Box::new(oldest_age.clone())).expect("unique");
        let connected =
            IntGauge::new("fsmon_ship_connected", "1 while connected to NATS").expect("metric");
        r.register(Box::new(connected.clone())).expect("unique");
        ShipMetrics {
            shipped,
            pending_events: by_group(
                "fsmon_ship_pending_events",
                "Logged events not yet acknowledged by the stream",
            ),
            pending_bytes: by_group(
                "fsmon_ship_pending_bytes",
                "Log bytes not yet acknowledged by the stream",
            ),
            oldest_age,
            connected,
            errors,
        }
    }
}

struct Inner {
    cfg: ShipConfig,
    log_dir: PathBuf,
    owner: TargetUser,
    groups: Mutex<BTreeMap<String, Arc<GroupState>>>,
    conn: Mutex<ConnStatus>,
    stop: AtomicBool,
    metrics: ShipMetrics,
    sched: Mutex<Sched>,
}

/// The running shipper.
pub struct Shipper {
    inner: Arc<Inner>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Shipper {
    /// Starts the shipper thread. Problems with the server (unreachable,
    /// refused credentials, a wrong stream) are logged as one line and
    /// shown in `health`; the daemon keeps logging locally either way.
    pub fn start(
        cfg: ShipConfig,
        log_dir: PathBuf,
        owner: TargetUser,
        registry: &Registry,
    ) -> std::io::Result<Shipper> {
        let inner = Arc::new(Inner {
            cfg,
            log_dir,
            owner,
            groups: Mutex::new(BTreeMap::new()),
            conn: Mutex::new(ConnStatus {
                state: "connecting",
                ..Default::default()
            }),
            stop: AtomicBool::new(false),
            sched: Mutex::new(Sched::default()),
            metrics: ShipMetrics::new(registry),
        });
        let run = inner.clone();
        let thread = std::thread::Builder::new()
            .name("fsmon-ship".into())
            .spawn(move || {
                run.sched.lock().unwrap().apply();
                // The logs, cursors and secrets the shipper reads are the
                // user's: it reads them with the user's credentials, like
                // every other file work in the user's locations.
                if let Err(e) = crate::userfs::become_user_on_this_thread(&run.owner) {
                    log::error!("ship: {e}; events are only logged locally");
                    return;
                }
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        log::error!("ship: cannot start: {e}; events are only logged locally");
                        return;
                    }
                };
                rt.block_on(run_shipper(run));
            })?;
        Ok(Shipper {
            inner,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Stops shipping and saves the cursors.
    pub fn shutdown(&self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.lock().unwrap().take() {
            let _ = t.join();
        }
    }

    /// Runs a trim's swap of `group`'s log so its cursor follows (see
    /// [`cursor::around_swap`]).
    pub fn around_swap<T>(
        &self,
        group: &str,
        log_path: &Path,
        new_ino: u64,
        cut: u64,
        swap: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        let groups = self.inner.groups.lock().unwrap();
        match groups.get(group).cloned() {
            Some(gs) => {
                drop(groups);
                cursor::around_swap(
                    log_path,
                    &self.inner.owner,
                    new_ino,
                    cut,
                    Some(&gs.cursor),
                    swap,
                )
            }
            // Keep the map locked: the group's task cannot start (and load
            // the cursor file) while the file is being changed.
            None => cursor::around_swap(log_path, &self.inner.owner, new_ino, cut, None, swap),
        }
    }

    /// The `ship` part of `health`.
    pub fn health(&self) -> serde_json::Value {
        let conn = self.inner.conn.lock().unwrap().clone();
        let now = Utc::now();
        let groups: Vec<serde_json::Value> = self
            .inner
            .groups
            .lock()
            .unwrap()
            .values()
            .map(|g| {
                let st = g.status.lock().unwrap().clone();
                let shipped = g.cursor.lock().unwrap().shipped;
                json!({
                    "group": g.group,
                    "shipped": shipped,
                    "pending_events": st.pending_events,
                    "pending_bytes": st.pending_bytes,
                    "oldest_unshipped_age_secs": st.oldest_unshipped
                        .map(|t| (now - t.with_timezone(&Utc)).num_milliseconds().max(0) as f64 / 1000.0),
                    "skipped_corrupt": st.skipped_corrupt,
                    "last_error": st.last_error,
                })
            })
            .collect();
        let cfg = &self.inner.cfg;
        json!({
            "urls": cfg.urls,
            "stream": cfg.stream,
            "host": cfg.host,
            "connection": conn.state,
            "stream_ok": conn.stream_ok,
            "last_error": conn.last_error,
            "groups": groups,
        })
    }
}

impl Drop for Shipper {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The shipper thread's nice value when it is not idle-only.
const SHIP_NICE: libc::c_int = 10;
/// A group this far behind its log is in a storm (or catching up).
const STORM_BYTES: u64 = READ_CHUNK as u64;
/// A backlog older than this takes the shipper out of `SCHED_IDLE`...
const STARVED_AFTER: Duration = Duration::from_secs(30);
/// ...until its oldest unshipped event is younger than this.
const CAUGHT_UP_BELOW: Duration = Duration::from_secs(2);

/// How the shipper thread is scheduled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Priority {
    /// `SCHED_IDLE`: only CPU time nobody else wants.
    Idle,
    /// An ordinary share at nice [`SHIP_NICE`].
    Niced,
}

/// The shipper thread's scheduling. Shipping is deferrable (the logs are
/// its buffer): while a group is a storm behind ([`STORM_BYTES`]) the
/// thread runs under `SCHED_IDLE`, so the workload and capture come first
/// and the storm is shipped when it ends. With few events shipping costs
/// little and latency matters, so it runs at nice [`SHIP_NICE`] (an idle
/// thread waits up to a second for the CPU on a busy host). And since a
/// host whose CPUs never idle could starve it for good, a backlog older
/// than [`STARVED_AFTER`] also gets the nice share, until it has caught up.
/// Only the shipper thread uses this.
#[derive(Default)]
struct Sched {
    /// The policy set (None: not yet).
    current: Option<Priority>,
    /// Groups a storm behind.
    storming: usize,
    /// A backlog older than [`STARVED_AFTER`], until [`CAUGHT_UP_BELOW`].
    starved: bool,
}

impl Sched {
    /// The policy for the current state.
    fn wanted(&self) -> Priority {
        if self.storming > 0 && !self.starved {
            Priority::Idle
        } else {
            Priority::Niced
        }
    }

    /// Sets the calling thread's policy for the current state.
    fn apply(&mut self) {
        let want = self.wanted();
        if self.current != Some(want) {
            set_priority(want);
            self.current = Some(want);
        }
    }
}

/// Schedules the calling thread (Linux keeps the policy and the nice value
/// per thread: pid 0 and the thread id name this one).
fn set_priority(p: Priority) {
    let policy = match p {
        Priority::Idle => libc::SCHED_IDLE,
        Priority::Niced => libc::SCHED_OTHER,
    };
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` outlives the call; pid 0 is the calling thread.
    let r = unsafe { libc::sched_setscheduler(0, policy, &param) };
    if r != 0 {
        log::debug!(
            "ship: cannot set the shipper's scheduling policy: {}",
            std::io::Error::last_os_error()
        );
    }
    let tid = nix::unistd::gettid().as_raw();
    // SAFETY: setpriority only reads its integer arguments.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, SHIP_NICE) };
    if r != 0 {
        log::debug!(
            "ship: cannot lower the shipper's priority: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Marks the shipper starved while any group's oldest unshipped event is
/// older than [`STARVED_AFTER`], until all are younger than
/// [`CAUGHT_UP_BELOW`].
fn check_starved(inner: &Inner) {
    let now = Utc::now();
    let oldest = inner
        .groups
        .lock()
        .unwrap()
        .values()
        .filter_map(|g| g.status.lock().unwrap().oldest_unshipped)
        .map(|t| (now - t.with_timezone(&Utc)).to_std().unwrap_or_default())
        .max()
        .unwrap_or_default();
    let mut sched = inner.sched.lock().unwrap();
    let starved = match sched.starved {
        false => oldest > STARVED_AFTER,
        true => oldest >= CAUGHT_UP_BELOW,
    };
    if starved != sched.starved {
        if starved {
            log::info!(
                "ship: the oldest unshipped event is {} s old: shipping takes a share of a busy CPU (nice {SHIP_NICE}) until it catches up",
                oldest.as_secs()
            );
        } else {
            log::info!("ship: caught up");
        }
        sched.starved = starved;
        sched.apply();
    }
}

/// Logs a problem once per distinct message (a server that stays down
/// would otherwise log every reconnect attempt).
fn set_conn_error(inner: &Inner, msg: String) {
    let mut c = inner.conn.lock().unwrap();
    if c.last_error.as_deref() != Some(msg.as_str()) {
        log::error!(
            "ship: {msg}; events stay in the local logs and are shipped when this is fixed"
        );
    }
    c.last_error = Some(msg);
}

/// Records a problem for `health` without a log line, unless one is
/// already recorded (the first, most precise message stays).
fn note_conn_error(inner: &Inner, msg: String) {
    let mut c = inner.conn.lock().unwrap();
    if c.last_error.is_none() {
        c.last_error = Some(msg);
    }
}

async fn sleep_unless_stopped(inner: &Inner, d: Duration) {
    let until = Instant::now() + d;
    while !inner.stop.load(Ordering::Relaxed) && Instant::now() < until {
        tokio::time::sleep(POLL.min(until - Instant::now())).await;
    }
}

async fn run_shipper(inner: Arc<Inner>) {
    let cfg = inner.cfg.clone();
    let addrs = match nats::server_addrs(&cfg) {
        Ok(a) => a,
        Err(e) => return set_conn_error(&inner, e),
    };
    let opts = match nats::connect_options(&cfg, &inner.owner).await {
        Ok(o) => o,
        Err(e) => return set_conn_error(&inner, e),
    };
    // One direct attempt first: its error says why (connection refused,
    // authorization violation, TLS...), where the reconnecting client's
    // events only name the kind of error. Then the client that retries.
    let probe = match nats::connect_options(&cfg, &inner.owner).await {
        Ok(o) => o.connect(addrs.clone()).await,
        Err(e) => return set_conn_error(&inner, e),
    };
    match probe {
        Ok(c) => drop(c),
        Err(e) => set_conn_error(
            &inner,
            format!("cannot connect to NATS at {}: {e}", cfg.urls.join(", ")),
        ),
    }
    let events = inner.clone();
    let opts = opts
        .retry_on_initial_connect()
        .max_reconnects(None)
        // Backoff: 0.1 s doubling to 5 s.
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis(100u64.saturating_mul(1 << attempts.min(6)).min(5000))
        })
        .event_callback(move |ev| {
            let inner = events.clone();
            async move {
                use async_nats::Event;
                match ev {
                    Event::Connected => {
                        let mut c = inner.conn.lock().unwrap();
                        log::info!("ship: connected to NATS");
                        c.state = "connected";
                        c.last_error = None;
                        inner.metrics.connected.set(1);
                    }
                    Event::Disconnected => {
                        log::warn!(
                            "ship: lost the connection to NATS; reconnecting, events stay in the local logs meanwhile"
                        );
                        inner.conn.lock().unwrap().state = "disconnected";
                        inner.metrics.connected.set(0);
                    }
                    Event::ServerError(e) => {
                        let connected = inner.conn.lock().unwrap().state == "connected";
                        if connected {
                            set_conn_error(&inner, format!("NATS server: {e}"));
                        } else {
                            note_conn_error(&inner, format!("NATS server: {e}"));
                        }
                    }
                    // Reconnect attempts: in `health`, not one line each.
                    Event::ClientError(e) => note_conn_error(&inner, format!("{e}")),
                    _ => {}
                }
            }
        });
    let client = match opts.connect(addrs).await {
        Ok(c) => c,
        Err(e) => return set_conn_error(&inner, format!("cannot connect: {e}")),
    };
    let js = jetstream::ContextBuilder::new()
        .timeout(ACK_TIMEOUT)
        .build(client.clone());

    let mut tasks = tokio::task::JoinSet::new();
    // Groups that could not be opened, reported once each.
    let mut failing = std::collections::HashSet::new();
    let mut backoff = Duration::from_millis(100);
    while !inner.stop.load(Ordering::Relaxed) {
        check_starved(&inner);
        // Groups get their cursor at once, NATS or not: `clean` reads it to
        // keep what is not shipped, and `health` shows the backlog.
        for group in discover_groups(&inner) {
            match open_group(&inner, &group) {
                Ok(gs) => {
                    tasks.spawn(ship_group(inner.clone(), js.clone(), client.clone(), gs));
                }
                Err(e) => {
                    if failing.insert(group.clone()) {
                        log::error!("ship: group {group}: {e}; retrying");
                    }
                }
            }
        }
        // The stream: checked before the first publish, and again after a
        // problem with it.
        if !inner.conn.lock().unwrap().stream_ok {
            if client.connection_state() != async_nats::connection::State::Connected {
                sleep_unless_stopped(&inner, Duration::from_millis(100)).await;
                continue;
            }
            let sample = nats::subject(&cfg, &cfg.host, "_global");
            match nats::ensure_stream(&js, &cfg, &sample).await {
                Ok(()) => {
                    let mut c = inner.conn.lock().unwrap();
                    c.stream_ok = true;
                    c.last_error = None;
                    backoff = Duration::from_millis(100);
                }
                Err(nats::StreamProblem::Config(m)) => {
                    set_conn_error(&inner, m);
                    sleep_unless_stopped(&inner, Duration::from_secs(30)).await;
                    continue;
                }
                Err(nats::StreamProblem::Unavailable(m)) => {
                    set_conn_error(&inner, format!("stream {}: {m}", cfg.stream));
                    sleep_unless_stopped(&inner, backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
        }
        sleep_unless_stopped(&inner, Duration::from_millis(500)).await;
    }
    while tasks.join_next().await.is_some() {}
}

/// Groups with a log that are to be shipped and have no task yet.
fn discover_groups(inner: &Inner) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(&inner.log_dir) else {
        return Vec::new();
    };
    let running = inner.groups.lock().unwrap();
    let mut found = Vec::new();
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(group) = name.to_str().and_then(|n| n.strip_suffix(LOG_SUFFIX)) else {
            continue;
        };
        if crate::store::validate_group(group).is_err() || running.contains_key(group) {
            continue;
        }
        if let Some(wanted) = &inner.cfg.groups
            && !wanted.iter().any(|g| g == group)
        {
            continue;
        }
        found.push(group.to_string());
    }
    found
}

/// Loads (or starts) a group's cursor and registers the group.
fn open_group(inner: &Inner, group: &str) -> Result<Arc<GroupState>> {
    let mut groups = inner.groups.lock().unwrap();
    let log_path = crate::pipeline::write::log_path(&inner.log_dir, group);
    let meta = std::fs::symlink_metadata(&log_path).map_err(|e| crate::Error::io(&log_path, e))?;
    let cursor_path = cursor::cursor_path(&log_path);
    let saved = match cursor::load(&cursor_path) {
        Ok(c) => c,
        Err(e) => {
            log::warn!("ship: {e}; starting a new one");
            None
        }
    };
    let (c, how) = Cursor::resolve(saved, meta.dev(), meta.ino(), meta.len());
    match how {
        Resolved::Continues => {}
        Resolved::Fresh => log::info!(
            "ship: group {group}: shipping {} from its start",
            log_path.display()
        ),
        Resolved::NewEpoch(why) => {
            log::warn!("ship: group {group}: {why}; shipping it from its start under a new log id")
        }
    }
    cursor::save(&cursor_path, &inner.owner, &c, true)?;
    let gs = Arc::new(GroupState {
        group: group.to_string(),
        log_path,
        cursor: Mutex::new(c),
        status: Mutex::new(GroupStatus::default()),
    });
    groups.insert(group.to_string(), gs.clone());
    Ok(gs)
}

/// A line published (or skipped) and not yet settled. Lines get
/// consecutive tokens; a publish's reply subject ends in its token, so an
/// acknowledgement finds its line by subtraction.
struct InFlight {
    token: u64,
    /// Logical offset just past the line.
    end: u64,
    ack: AckState,
    /// Found in the stream by reconciliation: counts as shipped.
    already_stored: bool,
}

enum AckState {
    /// A corrupt line or one already in the stream: nothing to wait for.
    None,
    /// Published at this time, not acknowledged yet.
    Waiting(Instant),
    /// The stream's answer: its sequence, or why it refused.
    Done(std::result::Result<u64, String>),
}

/// Counts lines not yet read, ahead of the read position, a bounded number
/// of bytes at a time: `pending_events` without re-reading the backlog.
#[derive(Default)]
struct AheadCounter {
    /// Logical offset up to which newlines are counted.
    counted_to: u64,
    /// Newlines in `[next, counted_to)`.
    lines: u64,
}

/// What one group's task keeps between iterations.
struct GroupShipper {
    inner: Arc<Inner>,
    gs: Arc<GroupState>,
    js: jetstream::Context,
    client: async_nats::Client,
    subject: async_nats::Subject,
    /// `{"host":"h","group":"g",` prepended to each line.
    payload_head: Vec<u8>,
    id_head: String,
    /// The open log and its inode.
    file: Option<(File, u64)>,
    /// Logical offset of the next line to publish.
    next: u64,
    in_flight: VecDeque<InFlight>,
    ahead: AheadCounter,
    buf: Vec<u8>,
    backoff: Duration,
    dirty: bool,
    last_save: Instant,
    last_status: Instant,
    /// The oldest unshipped line's time, for the acked offset it was read at.
    oldest_cache: Option<(u64, Option<DateTime<FixedOffset>>)>,
    /// Before publishing: find what the stream already holds (at start and
    /// after a failure).
    needs_reconcile: bool,
    /// Logical offsets of lines found in the stream past the cursor.
    stored: HashSet<u64>,
    /// Since when fewer than [`BURST_BYTES`] of new lines wait.
    waiting_since: Option<Instant>,
    /// At least [`STORM_BYTES`] behind the log (counted in [`Sched`]).
    storming: bool,
    /// This group's `fsmon_ship_events_total`.
    shipped_total: IntCounter,
    /// Acknowledgements: one subscription on `<inbox>.*` for the task's
    /// life (the client renews it after a reconnect), rather than a
    /// request, reply channel and timer per message.
    acks: async_nats::Subscriber,
    /// `<inbox>.`, the head of every reply subject.
    reply_head: String,
    /// The next line's token (never reused, so a late acknowledgement of a
    /// line given up after a failure matches nothing).
    next_token: u64,
    /// Payloads are cut from this buffer (one allocation per many messages).
    out: BytesMut,
    /// Read buffer for counting the lines ahead.
    count_buf: Vec<u8>,
}

async fn ship_group(
    inner: Arc<Inner>,
    js: jetstream::Context,
    client: async_nats::Client,
    gs: Arc<GroupState>,
) {
    let cfg = &inner.cfg;
    let subject = nats::subject(cfg, &cfg.host, &gs.group);
    let payload_head = format!(
        "{{\"host\":{},\"group\":{},",
        serde_json::to_string(&cfg.host).expect("string"),
        serde_json::to_string(&gs.group).expect("string")
    )
    .into_bytes();
    let next = gs.cursor.lock().unwrap().acked;
    let group = gs.group.clone();
    let inbox = client.new_inbox();
    let acks = match client.subscribe(format!("{inbox}.*")).await {
        Ok(sub) => sub,
        Err(e) => {
            log::error!(
                "ship: group {group}: cannot subscribe for acknowledgements: {e}; events are only logged locally"
            );
            return;
        }
    };
    let mut s = GroupShipper {
        id_head: format!("{}:{}:", cfg.host, gs.group),
        inner: inner.clone(),
        gs,
        js,
        client,
        subject: subject.into(),
        payload_head,
        file: None,
        next,
        in_flight: VecDeque::new(),
        ahead: AheadCounter {
            counted_to: next,
            lines: 0,
        },
        buf: Vec::with_capacity(READ_CHUNK),
        backoff: Duration::from_millis(100),
        dirty: false,
        last_save: Instant::now(),
        last_status: Instant::now() - Duration::from_secs(1),
        oldest_cache: None,
        needs_reconcile: true,
        stored: HashSet::new(),
        waiting_since: None,
        storming: false,
        shipped_total: inner.metrics.shipped.with_label_values(&[&group]),
        acks,
        reply_head: format!("{inbox}."),
        next_token: 0,
        out: BytesMut::new(),
        count_buf: vec![0u8; 256 * 1024],
    };
    while !inner.stop.load(Ordering::Relaxed) {
        match s.step().await {
            Ok(true) => {}
            Ok(false) => tokio::time::sleep(POLL).await,
            Err(e) => s.failed(e).await,
        }
        // Saved at least every SAVE_EVERY while shipping, and at once when
        // everything published is settled: a `clean` run without the daemon
        // reads the file, and should not keep lines `health` shows shipped.
        if s.dirty && (s.in_flight.is_empty() || s.last_save.elapsed() >= SAVE_EVERY) {
            s.save();
        }
        if s.last_status.elapsed() >= Duration::from_millis(250) {
            s.refresh_status();
        }
    }
    s.save();
}

impl GroupShipper {
    /// One round: follow the file, publish what the window allows, settle
    /// acknowledgements. False when there was nothing to do.
    async fn step(&mut self) -> std::result::Result<bool, String> {
        let (_, base) = self.sync_file()?;
        let Some((file, _)) = &self.file else {
            return Ok(false);
        };
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let storming = len.saturating_sub(self.next - base) >= STORM_BYTES;
        if storming != self.storming {
            self.storming = storming;
            let mut sched = self.inner.sched.lock().unwrap();
            if storming {
                sched.storming += 1;
            } else {
                sched.storming -= 1;
            }
            sched.apply();
        }
        let mut did = false;
        let connected = self.client.connection_state() == async_nats::connection::State::Connected
            && self.inner.conn.lock().unwrap().stream_ok;
        if connected && self.needs_reconcile && self.in_flight.is_empty() {
            self.reconcile().await?;
            self.needs_reconcile = false;
        }
        if connected && !self.needs_reconcile && self.in_flight.len() < self.inner.cfg.max_in_flight
        {
            let phys = self.next - base;
            if phys < len && self.burst_ready(len - phys) {
                did |= self.publish_from(phys, len, base).await?;
                self.waiting_since = None;
            }
        }
        did |= self.settle().await?;
        Ok(did)
    }

    /// Whether `available` bytes of new lines are worth a round now (see
    /// [`BURST_BYTES`]).
    fn burst_ready(&mut self, available: u64) -> bool {
        if available >= BURST_BYTES || self.inner.stop.load(Ordering::Relaxed) {
            return true;
        }
        self.waiting_since
            .get_or_insert_with(Instant::now)
            .elapsed()
            >= BURST_WAIT
    }

    /// Makes `self.file` the log the cursor is for. Returns the cursor's
    /// `(ino, base)`.
    fn sync_file(&mut self) -> std::result::Result<(u64, u64), String> {
        let (ino, base, acked) = {
            let c = self.gs.cursor.lock().unwrap();
            (c.ino, c.base, c.acked)
        };
        if self.next < acked {
            // A forced trim removed lines we had not shipped.
            self.next = acked;
            self.ahead = AheadCounter {
                counted_to: acked,
                lines: 0,
            };
        }
        if self.file.as_ref().is_some_and(|(_, i)| *i == ino) {
            let path_ino = std::fs::symlink_metadata(&self.gs.log_path).map(|m| m.ino());
            match path_ino {
                Ok(p) if p == ino => {
                    // Truncated in place below what we read: a new epoch.
                    let len = self
                        .file
                        .as_ref()
                        .unwrap()
                        .0
                        .metadata()
                        .map(|m| m.len())
                        .unwrap_or(0);
                    if self.next - base > len
                        && self.in_flight.is_empty()
                        && self.new_epoch(ino, false)
                    {
                        return self.sync_file();
                    }
                    return Ok((ino, base));
                }
                Ok(_) if self.in_flight.is_empty() => {
                    // Replaced by something other than `clean` (which moves
                    // the cursor before we get here): finish the old file
                    // first, then start the new one under a new epoch.
                    let (file, _) = self.file.as_ref().unwrap();
                    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
                    if self.next - base < complete_end(file, len) {
                        return Ok((ino, base));
                    }
                    if self.new_epoch(ino, true) {
                        return self.sync_file();
                    }
                    return Ok((ino, base));
                }
                _ => return Ok((ino, base)),
            }
        }
        self.file = None;
        match safefs::open_read(&self.gs.log_path) {
            Ok(f) => {
                let meta = f.metadata().map_err(|e| e.to_string())?;
                if meta.ino() == ino {
                    self.file = Some((f, ino));
                } else if self.in_flight.is_empty() && self.new_epoch(ino, true) {
                    return self.sync_file();
                }
                Ok((ino, base))
            }
            // Removed (and not yet written again): nothing to ship.
            Err(crate::Error::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Ok((ino, base))
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// Reads the ids of this group's messages stored after the saved
    /// acknowledgement, so lines already in the stream are not sent again.
    async fn reconcile(&mut self) -> std::result::Result<(), String> {
        use jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
        self.stored.clear();
        let (seq, acked, prefix) = {
            let c = self.gs.cursor.lock().unwrap();
            (
                c.stream_seq,
                c.acked,
                format!("{}{}:", self.id_head, c.log_id),
            )
        };
        if seq == 0 {
            // Nothing acknowledged yet under this log id: a first start.
            return Ok(());
        }
        let err = |e: &dyn std::fmt::Display| format!("reading back the stream: {e}");
        let stream = self
            .js
            .get_stream_no_info(&self.inner.cfg.stream)
            .await
            .map_err(|e| err(&e))?;
        let consumer = stream
            .create_consumer(OrderedConfig {
                filter_subject: self.subject.to_string(),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: seq + 1,
                },
                headers_only: true,
                ..Default::default()
            })
            .await
            .map_err(|e| err(&e))?;
        if consumer.cached_info().num_pending == 0 {
            return Ok(());
        }
        let mut messages = consumer.messages().await.map_err(|e| err(&e))?;
        while let Some(msg) = tokio::time::timeout(ACK_TIMEOUT, messages.next())
            .await
            .map_err(|_| err(&"timed out"))?
        {
            let msg = msg.map_err(|e| err(&e))?;
            let offset = msg
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Msg-Id"))
                .and_then(|id| {
                    id.as_str()
                        .strip_prefix(prefix.as_str())?
                        .parse::<u64>()
                        .ok()
                });
            if let Some(o) = offset.filter(|&o| o >= acked) {
                self.stored.insert(o);
            }
            let pending = msg.info().map(|i| i.pending).unwrap_or(0);
            if pending == 0 || self.stored.len() >= RECONCILE_MAX {
                break;
            }
        }
        if !self.stored.is_empty() {
            log::info!(
                "ship: group {}: {} events past the saved cursor are already in the stream; not sending them again",
                self.gs.group,
                self.stored.len()
            );
        }
        Ok(())
    }

    /// Starts a new numbering for the file now at the log's path, unless
    /// the cursor moved on from `seen_ino` meanwhile (a `clean` holds the
    /// cursor's lock from before its rename until the cursor follows it, so
    /// deciding under that lock cannot mistake a trim for a replacement).
    fn new_epoch(&mut self, seen_ino: u64, replaced: bool) -> bool {
        let mut c = self.gs.cursor.lock().unwrap();
        let meta = std::fs::symlink_metadata(&self.gs.log_path);
        let (dev, ino) = meta.map(|m| (m.dev(), m.ino())).unwrap_or((0, 0));
        if c.ino != seen_ino || (replaced && ino == c.ino) {
            return false;
        }
        let why = if replaced {
            "the log was replaced other than by `fsmon clean`"
        } else {
            "the log was truncated other than by `fsmon clean`"
        };
        log::warn!(
            "ship: group {}: {why}; shipping it from its start under a new log id",
            self.gs.group
        );
        *c = Cursor::fresh(dev, ino);
        drop(c);
        self.file = None;
        self.next = 0;
        self.ahead = AheadCounter::default();
        self.oldest_cache = None;
        self.dirty = true;
        true
    }

    /// Reads complete lines from `phys` and publishes them while the window
    /// has room.
    async fn publish_from(
        &mut self,
        phys: u64,
        len: u64,
        base: u64,
    ) -> std::result::Result<bool, String> {
        let (file, _) = self.file.as_ref().unwrap();
        let want = ((len - phys) as usize).min(READ_CHUNK);
        self.buf.resize(want, 0);
        let got = read_full_at(file, &mut self.buf, phys).map_err(|e| e.to_string())?;
        self.buf.truncate(got);
        let mut start = 0usize;
        let mut published = false;
        let max = self.inner.cfg.max_in_flight;
        // One id prefix per chunk (the epoch only changes between rounds).
        let id_head = {
            let c = self.gs.cursor.lock().unwrap();
            format!("{}{}:", self.id_head, c.log_id)
        };
        while self.in_flight.len() < max {
            let Some(nl) = self.buf[start..].iter().position(|&b| b == b'\n') else {
                break;
            };
            let line_start = base + phys + start as u64;
            let end = line_start + nl as u64 + 1;
            let text = &self.buf[start..start + nl];
            start += nl + 1;
            let already_stored = !self.stored.is_empty() && self.stored.remove(&line_start);
            let token = self.next_token;
            self.next_token += 1;
            let ack = if already_stored {
                AckState::None
            } else if is_event_line(text) {
                // The line as it is, with the host and group spliced in.
                let size = self.payload_head.len() + text.len() - 1;
                if self.out.capacity() < size {
                    self.out.reserve(size.max(READ_CHUNK));
                }
                self.out.extend_from_slice(&self.payload_head);
                self.out.extend_from_slice(&text[1..]);
                let payload = self.out.split().freeze();
                let mut id = String::with_capacity(id_head.len() + 20);
                id.push_str(&id_head);
                id.push_str(itoa::Buffer::new().format(line_start));
                let mut headers = HeaderMap::new();
                headers.insert(async_nats::header::NATS_MESSAGE_ID, id);
                let mut reply = String::with_capacity(self.reply_head.len() + 20);
                reply.push_str(&self.reply_head);
                reply.push_str(itoa::Buffer::new().format(token));
                tokio::time::timeout(
                    ACK_TIMEOUT,
                    self.client.publish_with_reply_and_headers(
                        self.subject.clone(),
                        reply,
                        headers,
                        payload,
                    ),
                )
                .await
                .map_err(|_| "publish timed out".to_string())?
                .map_err(|e| format!("publish: {e}"))?;
                AckState::Waiting(Instant::now())
            } else {
                self.gs.status.lock().unwrap().skipped_corrupt += 1;
                AckState::None
            };
            self.in_flight.push_back(InFlight {
                token,
                end,
                ack,
                already_stored,
            });
            if end <= self.ahead.counted_to {
                self.ahead.lines = self.ahead.lines.saturating_sub(1);
            } else {
                self.ahead.counted_to = end;
            }
            self.next = end;
            published = true;
        }
        if !published && start == 0 && got == READ_CHUNK {
            // A "line" longer than a read chunk: skip it as garbage up to
            // its newline, or MAX_LINE.
            let skip_to = skip_long_line(file, phys, len).map_err(|e| e.to_string())?;
            if skip_to > phys {
                let token = self.next_token;
                self.next_token += 1;
                self.in_flight.push_back(InFlight {
                    token,
                    end: base + skip_to,
                    ack: AckState::None,
                    already_stored: false,
                });
                self.next = base + skip_to;
                self.gs.status.lock().unwrap().skipped_corrupt += 1;
                published = true;
            }
        }
        Ok(published)
    }

    /// Records an acknowledgement (or the server's "no responders") for
    /// the line its reply subject names; one for a line no longer in flight
    /// (given up after a failure) is dropped.
    fn take_ack(&mut self, msg: async_nats::Message) {
        let token = msg
            .subject
            .as_str()
            .strip_prefix(self.reply_head.as_str())
            .and_then(|t| t.parse::<u64>().ok());
        let Some(front) = self.in_flight.front() else {
            return;
        };
        let Some(entry) = token
            .and_then(|t| t.checked_sub(front.token))
            .and_then(|i| self.in_flight.get_mut(i as usize))
        else {
            return;
        };
        if !matches!(entry.ack, AckState::Waiting(_)) {
            return;
        }
        let result = if msg.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
            Err(format!(
                "publish: no responders (no stream captures {})",
                self.subject
            ))
        } else {
            match serde_json::from_slice::<PubAck>(&msg.payload) {
                Ok(PubAck { error: None, seq }) => Ok(seq),
                Ok(PubAck { error: Some(e), .. }) => {
                    Err(format!("publish: {} (code {})", e.description, e.code))
                }
                Err(e) => Err(format!("publish: unreadable acknowledgement: {e}")),
            }
        };
        entry.ack = AckState::Done(result);
    }

    /// Settles acknowledgements in order. Waits (briefly) for the oldest
    /// when nothing else was settled.
    async fn settle(&mut self) -> std::result::Result<bool, String> {
        // Take every acknowledgement that has arrived.
        while let Some(next) = self.acks.next().now_or_never() {
            match next {
                Some(msg) => self.take_ack(msg),
                None => return Err("the acknowledgement subscription ended".into()),
            }
        }
        let mut did = false;
        while let Some(front) = self.in_flight.front() {
            let (shipped, seq) = match &front.ack {
                AckState::None => (front.already_stored, 0),
                AckState::Done(Ok(seq)) => (true, *seq),
                AckState::Done(Err(e)) => return Err(e.clone()),
                AckState::Waiting(sent) => {
                    if sent.elapsed() >= ACK_TIMEOUT {
                        return Err("publish: no acknowledgement within 10 s".into());
                    }
                    if did {
                        break;
                    }
                    match tokio::time::timeout(POLL, self.acks.next()).await {
                        Ok(Some(msg)) => {
                            self.take_ack(msg);
                            continue;
                        }
                        Ok(None) => {
                            return Err("the acknowledgement subscription ended".into());
                        }
                        Err(_) => break,
                    }
                }
            };
            let end = front.end;
            {
                let mut c = self.gs.cursor.lock().unwrap();
                c.shipped += u64::from(shipped);
                c.stream_seq = c.stream_seq.max(seq);
                c.acked = c.acked.max(end);
            }
            if shipped {
                self.shipped_total.inc();
            }
            self.in_flight.pop_front();
            self.dirty = true;
            did = true;
            self.backoff = Duration::from_millis(100);
        }
        Ok(did)
    }

    /// After a failure: forget what is in flight (it is published again from
    /// the cursor, with the same ids), wait, retry.
    async fn failed(&mut self, e: String) {
        self.inner
            .metrics
            .errors
            .with_label_values(&[&self.gs.group])
            .inc();
        let first = {
            let mut st = self.gs.status.lock().unwrap();
            let first = st.last_error.as_deref() != Some(e.as_str());
            st.last_error = Some(e.clone());
            first
        };
        if first {
            log::warn!(
                "ship: group {}: {e}; retrying from the last acknowledged event",
                self.gs.group
            );
        }
        if e.contains("stream not found") || e.contains("no responders") {
            self.inner.conn.lock().unwrap().stream_ok = false;
        }
        self.in_flight.clear();
        self.needs_reconcile = true;
        let acked = self.gs.cursor.lock().unwrap().acked;
        self.next = acked;
        self.ahead = AheadCounter {
            counted_to: acked,
            lines: 0,
        };
        sleep_unless_stopped(&self.inner, self.backoff).await;
        self.backoff = (self.backoff * 2).min(Duration::from_secs(5));
    }

    fn save(&mut self) {
        let c = self.gs.cursor.lock().unwrap();
        let path = cursor::cursor_path(&self.gs.log_path);
        match cursor::save(&path, &self.inner.owner, &c, false) {
            Ok(()) => self.dirty = false,
            Err(e) => {
                let mut st = self.gs.status.lock().unwrap();
                let msg = format!("saving the cursor: {e}");
                if st.last_error.as_deref() != Some(msg.as_str()) {
                    log::error!("ship: group {}: {msg}", self.gs.group);
                }
                st.last_error = Some(msg);
            }
        }
        self.last_save = Instant::now();
    }

    /// Pending events and bytes, the oldest unshipped event's time.
    fn refresh_status(&mut self) {
        self.last_status = Instant::now();
        let (base, acked) = {
            let c = self.gs.cursor.lock().unwrap();
            (c.base, c.acked)
        };
        let Some((file, _)) = &self.file else {
            return;
        };
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        // Count newlines ahead of the read position, at most 4 MiB a round.
        let end = base + len;
        let mut budget = 4usize << 20;
        let chunk = &mut self.count_buf;
        while self.ahead.counted_to < end && budget > 0 {
            let at = self.ahead.counted_to.max(self.next);
            self.ahead.counted_to = at;
            let n = ((end - at) as usize).min(chunk.len());
            let Ok(got) = file.read_at(&mut chunk[..n], at - base) else {
                break;
            };
            if got == 0 {
                break;
            }
            self.ahead.lines += chunk[..got].iter().filter(|&&b| b == b'\n').count() as u64;
            self.ahead.counted_to += got as u64;
            budget = budget.saturating_sub(got);
        }
        let pending_events = self.in_flight.len() as u64 + self.ahead.lines;
        let pending_bytes = end.saturating_sub(acked);
        let oldest = if pending_events == 0 {
            None
        } else {
            match self.oldest_cache {
                Some((at, t)) if at == acked => t,
                _ => {
                    let t = first_line_time(file, acked - base);
                    self.oldest_cache = Some((acked, t));
                    t
                }
            }
        };
        let group = &self.gs.group;
        let m = &self.inner.metrics;
        m.pending_events
            .with_label_values(&[group])
            .set(pending_events as i64);
        m.pending_bytes
            .with_label_values(&[group])
            .set(pending_bytes as i64);
        let age = oldest.map_or(0.0, |t| {
            (Utc::now() - t.with_timezone(&Utc))
                .num_milliseconds()
                .max(0) as f64
                / 1000.0
        });
        m.oldest_age.with_label_values(&[group]).set(age);
        let mut st = self.gs.status.lock().unwrap();
        st.pending_events = pending_events;
        st.pending_bytes = pending_bytes;
        st.oldest_unshipped = oldest;
        if pending_events == 0 && self.in_flight.is_empty() {
            st.last_error = None;
        }
    }
}

/// `pread` until `buf` is full or the file ends.
fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// End of the last complete line of a file of length `len`.
fn complete_end(file: &File, len: u64) -> u64 {
    let mut buf = [0u8; 4096];
    let mut end = len;
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let n = (end - start) as usize;
        match read_full_at(file, &mut buf[..n], start) {
            Ok(got) if got == n => {}
            _ => return 0,
        }
        if let Some(i) = buf[..n].iter().rposition(|&b| b == b'\n') {
            return start + i as u64 + 1;
        }
        end = start;
    }
    0
}

/// Where an over-long line starting at `from` ends (just past its newline),
/// or `from` if it has none yet and is shorter than [`MAX_LINE`].
fn skip_long_line(file: &File, from: u64, len: u64) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut at = from;
    while at < len {
        let n = ((len - at) as usize).min(buf.len());
        let got = read_full_at(file, &mut buf[..n], at)?;
        if got == 0 {
            break;
        }
        if let Some(i) = buf[..got].iter().position(|&b| b == b'\n') {
            return Ok(at + i as u64 + 1);
        }
        at += got as u64;
        if at - from > MAX_LINE as u64 {
            // Not a line at all: skip what is there.
            return Ok(at);
        }
    }
    Ok(from)
}

/// The time of the valid line starting at `offset`, if any.
fn first_line_time(file: &File, offset: u64) -> Option<DateTime<FixedOffset>> {
    let mut buf = vec![0u8; 64 * 1024];
    let got = read_full_at(file, &mut buf, offset).ok()?;
    let nl = buf[..got].iter().position(|&b| b == b'\n')?;
    parse_line(&buf[..nl]).map(|(_, t)| t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_lines_are_complete_json_objects() {
        assert!(is_event_line(br#"{"time":"t","path":"/a\"b}"}"#));
        assert!(!is_event_line(br#"{"time":"t","path":"/a"#));
        // A crash's fragment glued to the next line.
        assert!(!is_event_line(
            br#"{"time":"t","pa{"time":"u","path":"/b"}"#
        ));
        assert!(!is_event_line(b"[1]"));
        assert!(!is_event_line(b""));
    }

    #[test]
    fn acknowledgements_are_read_without_building_them() {
        let ok: PubAck = serde_json::from_slice(br#"{"stream":"S","seq":42}"#).unwrap();
        assert_eq!((ok.seq, ok.error.is_none()), (42, true));
        let dup: PubAck =
            serde_json::from_slice(br#"{"stream":"S","seq":7,"duplicate":true}"#).unwrap();
        assert_eq!(dup.seq, 7);
        let err: PubAck = serde_json::from_slice(
            br#"{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"}}"#,
        )
        .unwrap();
        let e = err.error.unwrap();
        assert_eq!(
            (e.code, e.description.as_ref()),
            (503, "maximum messages exceeded")
        );
    }

    #[test]
    fn the_shipper_idles_only_while_a_storm_behind_and_not_starved() {
        let s = |storming, starved| Sched {
            current: None,
            storming,
            starved,
        };
        assert_eq!(s(0, false).wanted(), Priority::Niced);
        assert_eq!(s(1, false).wanted(), Priority::Idle);
        assert_eq!(s(2, false).wanted(), Priority::Idle);
        assert_eq!(s(1, true).wanted(), Priority::Niced);
        assert_eq!(s(0, true).wanted(), Priority::Niced);
    }
}
