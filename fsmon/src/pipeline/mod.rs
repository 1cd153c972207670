//! The event pipeline, as stages in order:
//!
//! ```text
//!  capture thread                               process thread
//!  read -> parse -> resolve  ==[Batch]==>  attribute -> filter -> write
//! ```
//!
//! The capture thread keeps the kernel queue drained and resolves paths while
//! the directories still exist; it owns the fanotify group, its marks and the
//! [`PathResolver`]. The process thread owns the [`ProcessTracker`], the
//! groups and the log files. They share nothing mutable: batches (recycled,
//! so the steady state allocates nothing) and control messages pass between
//! them in order, so a change of groups takes effect at an exact point of the
//! event stream.
pub mod access;
pub mod attribute;
pub mod filter;
pub mod parse;
pub mod read;
pub mod resolve;
pub mod scope;
pub mod write;

use std::{
    borrow::Cow,
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use chrono::{DateTime, Local, SecondsFormat, Utc};

use crate::{
    escape,
    event::{EventType, FileEvent, OVERFLOW_TYPE, TRACKER_LOSS_TYPE, TypeSet},
    fanotify::{FAN_Q_OVERFLOW, Fanotify},
    metrics::Metrics,
    process::{ProcessTracker, boot_ns},
};
use attribute::Attributor;
use filter::GroupSet;
use read::{EventReader, Waker};
use resolve::{PathResolver, Resolution};
use write::LogSet;

/// Events the resolver needs whatever the groups ask for: they keep the
/// directory tree in step (new, renamed and deleted directories).
const INTERNAL_MASK: u64 = EventType::Create.mask()
    | EventType::Delete.mask()
    | EventType::MovedFrom.mask()
    | EventType::MovedTo.mask();
const DELETE_LIKE: u64 =
    EventType::Delete.mask() | EventType::MovedFrom.mask() | EventType::DeleteSelf.mask();
/// A batch is handed on after this many events even if more are queued.
const MAX_BATCH: usize = 4096;
/// How long the capture thread lets events accumulate after the queue
/// becomes readable (adds at most this much latency).
const COALESCE: Duration = Duration::from_millis(1);

/// One event that survived capture: in some watched tree (or unresolved).
#[derive(Debug, Clone, Copy)]
pub struct Captured {
    /// Event-type bits (several if the kernel merged events).
    pub types: u64,
    pub pid: u32,
    /// Byte range of the path in [`Batch::paths`].
    pub path: (u32, u32),
    pub size: u64,
    pub unresolved: bool,
    /// Boot-clock ns when the read that returned the event ended: the
    /// event was queued before then (pid reuse check of the tracker).
    pub queued_before: u64,
}

#[derive(Debug, Clone, Copy)]
pub enum Item {
    Event(Captured),
    /// The kernel queue overflowed here: events were lost.
    Overflow,
}

/// What the capture thread hands to the process thread.
#[derive(Debug, Default)]
pub struct Batch {
    pub items: Vec<Item>,
    /// All paths of the batch, back to back (one allocation, reused).
    pub paths: String,
    /// Wall-clock time the batch was read.
    pub read_at: Option<DateTime<Utc>>,
    /// Every event generated before this boot-clock time has been read
    /// (the queue was seen empty): exited processes older than that can go.
    pub drained_before: Option<u64>,
}

impl Batch {
    fn clear(&mut self) {
        self.items.clear();
        self.paths.clear();
        self.read_at = None;
        self.drained_before = None;
    }
}

/// A live event for subscribers: the group and the exact log line.
#[derive(Debug)]
pub struct SubEvent {
    pub group: Arc<str>,
    pub line: Box<str>,
}

/// Errors from applying watches, per path.
pub type WatchErrors = Vec<(String, String)>;

enum ToCapture {
    SetGroups(Arc<GroupSet>, Option<mpsc::Sender<WatchErrors>>),
    Shutdown,
}

pub enum ToProcess {
    Batch(Batch),
    Groups(Arc<GroupSet>),
    /// Runs a closure against the log set on the process thread, between
    /// batches (used by `clean` to swap a log without losing a line).
    WithLogs(Box<dyn FnOnce(&mut LogSet) + Send>),
    Shutdown,
}

/// What health reports about the pipeline.
#[derive(Debug, Default, Clone)]
pub struct PipelineInfo {
    pub tracker: String,
    pub tracker_fallback: Option<String>,
    pub watch_errors: WatchErrors,
}

pub struct Status {
    pub ready: AtomicBool,
    pub info: Mutex<PipelineInfo>,
}

pub struct PipelineConfig {
    pub buffer_size: usize,
    pub channel_capacity: Option<usize>,
    pub local_time: bool,
    pub sync_interval: Option<Duration>,
    pub dir_capacity: u64,
    pub dir_ttl: Duration,
    pub file_size_capacity: u64,
    pub stats_interval: Option<Duration>,
    pub subscribe_buf: usize,
    /// The daemon's user when not root: events it may not see are hidden.
    pub user_access: Option<access::UserAccess>,
}

pub struct Pipeline {
    capture_tx: mpsc::Sender<ToCapture>,
    process_tx: mpsc::Sender<ToProcess>,
    waker: Waker,
    capture: Mutex<Option<JoinHandle<()>>>,
    process: Mutex<Option<JoinHandle<()>>>,
    pub subscribe: tokio::sync::broadcast::Sender<Arc<SubEvent>>,
    pub status: Arc<Status>,
}

impl Pipeline {
    pub fn start(
        fan: Fanotify,
        tracker: ProcessTracker,
        logs: LogSet,
        groups: Arc<GroupSet>,
        cfg: PipelineConfig,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Self> {
        let (reader, waker) = EventReader::new(fan, cfg.buffer_size)?;
        let (capture_tx, capture_rx) = mpsc::channel();
        let (process_tx, process_rx) = mpsc::channel();
        let (recycle_tx, recycle_rx) = mpsc::channel();
        let in_flight = Arc::new(AtomicUsize::new(0));
        let (subscribe, _) = tokio::sync::broadcast::channel(cfg.subscribe_buf);
        metrics
            .tracker_active
            .with_label_values(&[tracker.kind().as_str()])
            .set(1);
        let status = Arc::new(Status {
            ready: AtomicBool::new(false),
            info: Mutex::new(PipelineInfo {
                tracker: tracker.kind().as_str().to_string(),
                tracker_fallback: tracker.fallback_reason().map(str::to_string),
                watch_errors: Vec::new(),
            }),
        });

        let mut capture = Capture {
            reader,
            resolver: PathResolver::new(
                cfg.dir_capacity,
                cfg.dir_ttl,
                cfg.file_size_capacity,
                cfg.user_access,
            ),
            groups: Arc::new(GroupSet::default()),
            marks: HashMap::new(),
            kernel_types: 0,
            out: process_tx.clone(),
            recycle: recycle_rx,
            in_flight: in_flight.clone(),
            capacity: cfg.channel_capacity,
            metrics: metrics.clone(),
            status: status.clone(),
            self_pid: std::process::id(),
            stats_interval: cfg.stats_interval,
        };
        // Apply the initial groups before any thread runs, so the daemon is
        // watching everything by the time it says it is ready.
        capture.set_groups(groups.clone());

        let mut process = Process {
            attributor: Attributor::new(tracker),
            groups: Arc::new(GroupSet::default()),
            tracked: HashSet::new(),
            logs,
            clock: Clock {
                local: cfg.local_time,
                last_micros: 0,
                text: String::new(),
            },
            subscribe: subscribe.clone(),
            metrics: metrics.clone(),
            counters: Vec::new(),
            recycle: recycle_tx,
            in_flight,
            drained_before: 0,
            sync_interval: cfg.sync_interval,
            line: String::new(),
            tracker_losses_logged: 0,
        };
        // The tracked commands too: a command group's process that execs
        // right after "ready" must already be marked by the eBPF program
        // (through the process thread's queue it could be late, and its
        // events would be silently left out of the group).
        process.set_groups(groups);
        status.ready.store(true, Ordering::SeqCst);
        let capture_handle = std::thread::Builder::new()
            .name("fsmon-capture".into())
            .spawn(move || capture.run(capture_rx))?;
        let process_handle = std::thread::Builder::new()
            .name("fsmon-process".into())
            .spawn(move || process.run(process_rx))?;
        Ok(Pipeline {
            capture_tx,
            process_tx,
            waker,
            capture: Mutex::new(Some(capture_handle)),
            process: Mutex::new(Some(process_handle)),
            subscribe,
            status,
        })
    }

    /// Changes the groups; returns the per-path errors from marking.
    pub fn set_groups(&self, groups: Arc<GroupSet>) -> WatchErrors {
        let (tx, rx) = mpsc::channel();
        if self
            .capture_tx
            .send(ToCapture::SetGroups(groups, Some(tx)))
            .is_err()
        {
            return vec![("*".into(), "the capture thread has stopped".into())];
        }
        self.waker.wake();
        rx.recv_timeout(Duration::from_secs(120))
            .unwrap_or_default()
    }

    /// Runs `f` on the process thread between batches.
    pub fn with_logs(&self, f: Box<dyn FnOnce(&mut LogSet) + Send>) -> bool {
        self.process_tx.send(ToProcess::WithLogs(f)).is_ok()
    }

    /// Stops reading, drains what the kernel has queued, writes it, and
    /// joins both threads.
    pub fn shutdown(&self) {
        let _ = self.capture_tx.send(ToCapture::Shutdown);
        self.waker.wake();
        if let Some(h) = self.capture.lock().unwrap().take() {
            let _ = h.join();
        }
        let _ = self.process_tx.send(ToProcess::Shutdown);
        if let Some(h) = self.process.lock().unwrap().take() {
            let _ = h.join();
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The capture thread's state.
struct Capture {
    reader: EventReader,
    resolver: PathResolver,
    groups: Arc<GroupSet>,
    /// fsid -> (a path on that filesystem, mask marked).
    marks: HashMap<u64, (PathBuf, u64)>,
    /// Event types any group wants (others are only used by the resolver).
    kernel_types: u64,
    out: mpsc::Sender<ToProcess>,
    recycle: mpsc::Receiver<Batch>,
    in_flight: Arc<AtomicUsize>,
    capacity: Option<usize>,
    metrics: Arc<Metrics>,
    status: Arc<Status>,
    self_pid: u32,
    stats_interval: Option<Duration>,
}

/// The nearest existing path at or above `path` (a pending path is watched
/// on the filesystem of its nearest existing ancestor).
fn nearest_existing(path: &Path) -> Option<&Path> {
    path.ancestors()
        .find(|p| std::fs::symlink_metadata(p).is_ok())
}

impl Capture {
    fn run(mut self, control: mpsc::Receiver<ToCapture>) {
        let mut batch = Batch::default();
        let mut next_sweep = Instant::now() + Duration::from_secs(5);
        let mut next_stats = self.stats_interval.map(|i| Instant::now() + i);
        let mut shutting_down = false;
        loop {
            let ready = self.reader.wait(if shutting_down { 0 } else { 1000 });
            if ready.events && !shutting_down {
                // Let events accumulate for a moment: reading the queue as
                // soon as one event lands costs a poll+read per 1-2 events
                // and contends with the writers on the queue lock. Measured
                // on the create-storm: 8.6 -> 2.5 us of daemon CPU per event,
                // workload slowdown down to that of a no-op reader.
                std::thread::sleep(COALESCE);
            }
            while let Ok(msg) = control.try_recv() {
                match msg {
                    ToCapture::SetGroups(groups, reply) => {
                        // Events already queued were generated under the old
                        // groups: hand them on first.
                        self.drain(&mut batch);
                        let errors = self.set_groups(groups.clone());
                        let _ = self.out.send(ToProcess::Groups(groups));
                        if let Some(r) = reply {
                            let _ = r.send(errors);
                        }
                    }
                    ToCapture::Shutdown => shutting_down = true,
                }
            }
            self.drain(&mut batch);
            if shutting_down {
                return;
            }
            if Instant::now() >= next_sweep {
                self.resolver.sweep();
                self.publish_resolver_stats();
                next_sweep = Instant::now() + Duration::from_secs(5);
            }
            if let (Some(at), Some(every)) = (next_stats, self.stats_interval)
                && Instant::now() >= at
            {
                let s = self.resolver.stats;
                // Routine numbers: debug level (journalctl -p info hides them).
                log::debug!(
                    "cache stats: dir entries {} (hits {}, misses {}, kernel lookups {}, evicted {}), \
                         file sizes {}, unresolved {} (+{} outside)",
                    s.dir_entries,
                    s.dir_hits,
                    s.dir_misses,
                    s.kernel_lookups,
                    s.evicted,
                    s.size_entries,
                    s.unresolved,
                    s.unresolved_outside
                );
                next_stats = Some(at + every);
            }
        }
    }

    /// Copies the resolver's counters into the metrics (counters move by
    /// the difference since the last publication).
    fn publish_resolver_stats(&mut self) {
        let s = self.resolver.stats;
        let m = &self.metrics;
        m.dir_cache_entries.set(s.dir_entries as i64);
        m.file_size_cache_entries.set(s.size_entries as i64);
        let bump = |c: &prometheus::IntCounter, total: u64| c.inc_by(total.saturating_sub(c.get()));
        bump(&m.dir_cache_hits, s.dir_hits);
        bump(&m.dir_cache_misses, s.dir_misses);
        bump(&m.dir_cache_kernel_lookups, s.kernel_lookups);
        bump(&m.dir_cache_evictions, s.evicted);
        bump(
            &m.unresolved_paths.with_label_values(&["maybe_inside"]),
            s.unresolved,
        );
        bump(
            &m.unresolved_paths.with_label_values(&["outside"]),
            s.unresolved_outside,
        );
        bump(&m.events_hidden, s.hidden);
    }

    /// Reads until the queue is empty, sending batches on.
    fn drain(&mut self, batch: &mut Batch) {
        loop {
            // Back-pressure: with a bounded channel, stop reading while the
            // process thread is that far behind (the kernel queue fills, and
            // overflows are reported).
            if let Some(cap) = self.capacity
                && self.in_flight.load(Ordering::Acquire) >= cap
            {
                std::thread::sleep(Duration::from_millis(1));
                if self.in_flight.load(Ordering::Acquire) >= cap {
                    self.send(batch);
                    return;
                }
            }
            let before = boot_ns();
            let data = match self.reader.read() {
                Ok(d) => d,
                Err(e) => {
                    log::error!("reading fanotify events: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                    return;
                }
            };
            if data.is_empty() {
                batch.drained_before = Some(before);
                self.send(batch);
                return;
            }
            let queued_before = boot_ns();
            if batch.read_at.is_none() {
                batch.read_at = Some(Utc::now());
            }
            self.resolver.tick();
            let mut overflowed = false;
            for item in parse::events(data) {
                let ev = match item {
                    Ok(ev) => ev,
                    Err(e) => {
                        log::error!("{e}; skipping the rest of this read");
                        break;
                    }
                };
                self.metrics.kernel_events.inc();
                if ev.mask & FAN_Q_OVERFLOW != 0 {
                    overflowed = true;
                    batch.items.push(Item::Overflow);
                    continue;
                }
                let mut types = ev.mask & TypeSet::ALL.0;
                if !self.resolver.keep_self_events(&ev) {
                    types &= !PathResolver::SELF_EVENTS;
                }
                let start = batch.paths.len();
                let resolution = self.resolver.resolve(&ev, &mut batch.paths);
                let wanted = types & self.kernel_types;
                let reported = wanted != 0 && ev.pid != self.self_pid;
                let keep = reported
                    && matches!(
                        resolution,
                        Resolution::Path {
                            inside: true,
                            visible: true
                        } | Resolution::Unresolved
                    );
                if !keep {
                    if reported
                        && resolution
                            == (Resolution::Path {
                                inside: true,
                                visible: false,
                            })
                    {
                        self.resolver.stats.hidden += 1;
                    }
                    batch.paths.truncate(start);
                    continue;
                }
                let unresolved = resolution == Resolution::Unresolved;
                let size = if unresolved {
                    0
                } else if wanted & DELETE_LIKE != 0 {
                    self.resolver.last_size(&ev).unwrap_or(0)
                } else {
                    match self.resolver.current_size(&ev, &batch.paths[start..]) {
                        // Remembered for its DELETE, when the file is gone.
                        Some(size) => {
                            self.resolver.remember_size(&ev, size);
                            size
                        }
                        None => self.resolver.last_size(&ev).unwrap_or(0),
                    }
                };
                batch.items.push(Item::Event(Captured {
                    types: wanted,
                    pid: ev.pid,
                    path: (start as u32, batch.paths.len() as u32),
                    size,
                    unresolved,
                    queued_before,
                }));
            }
            if overflowed {
                self.metrics.queue_overflows.inc();
                log::warn!(
                    "the kernel event queue overflowed: events were lost; re-reading the watched trees"
                );
                self.resolver.mark_incomplete();
                self.walk_roots();
            }
            if batch.items.len() >= MAX_BATCH {
                self.send(batch);
            }
        }
    }

    fn send(&mut self, batch: &mut Batch) {
        if batch.items.is_empty() && batch.drained_before.is_none() {
            return;
        }
        let mut next = self.recycle.try_recv().unwrap_or_default();
        next.clear();
        let full = std::mem::replace(batch, next);
        self.in_flight.fetch_add(full.items.len(), Ordering::AcqRel);
        let _ = self.out.send(ToProcess::Batch(full));
    }

    fn walk_roots(&mut self) {
        let roots: Vec<(PathBuf, bool)> = self
            .resolver
            .scope()
            .roots
            .iter()
            .map(|r| (escape::as_path(&r.path).into_owned(), r.recursive))
            .collect();
        let mut complete = true;
        for (root, recursive) in roots {
            complete &= self
                .resolver
                .prewalk(&root, if recursive { usize::MAX } else { 1 });
        }
        if complete {
            self.resolver.mark_complete();
        }
    }

    /// Applies a new set of groups: marks, scope, pre-walks.
    fn set_groups(&mut self, groups: Arc<GroupSet>) -> WatchErrors {
        let mut errors = Vec::new();
        let scope = groups.scope();
        let types = groups.types();
        // A non-root user's view depends on directory permissions: their
        // changes (ATTRIB) are needed whatever the groups ask for.
        let internal_mask = if self.resolver.checks_access() {
            INTERNAL_MASK | EventType::Attrib.mask()
        } else {
            INTERNAL_MASK
        };
        // Which filesystems need which events.
        let mut wanted: HashMap<u64, (PathBuf, u64)> = HashMap::new();
        for root in &scope.roots {
            let root_path = escape::as_path(&root.path);
            let Some(existing) = nearest_existing(&root_path) else {
                errors.push((root.path.clone(), "no existing ancestor".into()));
                continue;
            };
            match self.resolver.add_mount(existing) {
                Ok(fsid) => {
                    let e = wanted
                        .entry(fsid)
                        .or_insert_with(|| (existing.to_path_buf(), 0));
                    e.1 |= types | internal_mask;
                }
                Err(e) => errors.push((root.path.clone(), format!("cannot watch: {e}"))),
            }
        }
        for (fsid, (path, mask)) in &wanted {
            let old = self.marks.get(fsid).map_or(0, |m| m.1);
            if let Err(e) = self.reader.fan.add_filesystem_mark(path, *mask) {
                let why = match e.raw_os_error() {
                    Some(libc::EXDEV) => format!(
                        "this filesystem (or subvolume) does not support fanotify filesystem marks: {e}"
                    ),
                    Some(libc::ENODEV) | Some(libc::EOPNOTSUPP) => {
                        format!("this filesystem cannot report file handles: {e}")
                    }
                    _ => e.to_string(),
                };
                for root in scope
                    .roots
                    .iter()
                    .filter(|r| nearest_existing(&escape::as_path(&r.path)) == Some(path.as_path()))
                {
                    errors.push((root.path.clone(), why.clone()));
                }
                continue;
            }
            let dropped = old & !mask;
            if dropped != 0 {
                let _ = self.reader.fan.remove_filesystem_mark(path, dropped);
            }
        }
        for (fsid, (path, mask)) in &self.marks {
            if !wanted.contains_key(fsid) {
                let _ = self.reader.fan.remove_filesystem_mark(path, *mask);
            }
        }
        let old_roots: HashSet<(String, bool)> = self
            .resolver
            .scope()
            .roots
            .iter()
            .map(|r| (r.path.clone(), r.recursive))
            .collect();
        self.resolver.set_scope(scope.clone());
        for r in &scope.roots {
            if !old_roots.contains(&(r.path.clone(), r.recursive))
                && !self.resolver.prewalk(
                    &escape::as_path(&r.path),
                    if r.recursive { usize::MAX } else { 1 },
                )
            {
                self.resolver.mark_incomplete();
            }
        }
        self.marks = wanted;
        self.kernel_types = types;
        self.groups = groups;
        self.metrics.watched_paths.set(scope.roots.len() as i64);
        self.metrics.groups.set(self.groups.groups.len() as i64);
        for (p, e) in &errors {
            log::error!("cannot watch {p}: {e}");
        }
        self.status.info.lock().unwrap().watch_errors = errors.clone();
        errors
    }
}

/// Time stamps: RFC 3339 with microseconds, never going backwards within
/// a run (so logs stay sorted for binary search even if the clock steps).
struct Clock {
    local: bool,
    last_micros: i64,
    text: String,
}

impl Clock {
    fn stamp(&mut self, at: DateTime<Utc>) -> &str {
        let micros = at.timestamp_micros().max(self.last_micros);
        if micros != self.last_micros || self.text.is_empty() {
            self.last_micros = micros;
            let t = DateTime::from_timestamp_micros(micros).unwrap_or(at);
            self.text = if self.local {
                t.with_timezone(&Local)
                    .to_rfc3339_opts(SecondsFormat::Micros, false)
            } else {
                t.to_rfc3339_opts(SecondsFormat::Micros, false)
            };
        }
        &self.text
    }
}

/// The process thread's state.
struct Process {
    attributor: Attributor,
    groups: Arc<GroupSet>,
    tracked: HashSet<String>,
    logs: LogSet,
    clock: Clock,
    subscribe: tokio::sync::broadcast::Sender<Arc<SubEvent>>,
    metrics: Arc<Metrics>,
    /// Counter handles by group index x event type, resolved on first use.
    counters: Vec<Option<prometheus::IntCounter>>,
    recycle: mpsc::Sender<Batch>,
    in_flight: Arc<AtomicUsize>,
    drained_before: u64,
    sync_interval: Option<Duration>,
    line: String,
    /// Tracker losses already reported in the logs.
    tracker_losses_logged: u64,
}

impl Process {
    fn run(mut self, rx: mpsc::Receiver<ToProcess>) {
        let mut next_gc = Instant::now() + Duration::from_secs(1);
        let mut next_sync = self.sync_interval.map(|i| Instant::now() + i);
        loop {
            match rx.recv_timeout(Duration::from_millis(250)) {
                Ok(ToProcess::Batch(b)) => self.batch(b),
                Ok(ToProcess::Groups(g)) => self.set_groups(g),
                Ok(ToProcess::WithLogs(f)) => {
                    self.flush();
                    f(&mut self.logs);
                }
                Ok(ToProcess::Shutdown) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // Whatever the capture thread sent before stopping is
                    // already ahead of Shutdown in the channel.
                    while let Ok(ToProcess::Batch(b)) = rx.try_recv() {
                        self.batch(b);
                    }
                    self.flush();
                    self.logs.sync_all();
                    return;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            // Between batches: finish a rotation prepared meanwhile, start
            // one for a log past its size (cheap when there is none).
            self.flush();
            self.logs.retain();
            let now = Instant::now();
            if now >= next_gc {
                let collected = self.attributor.tracker.collect_exited(self.drained_before);
                self.metrics.ebpf_map_collected.inc_by(collected as u64);
                let (lookups, misses) = self.attributor.tracker.lookup_stats();
                self.metrics
                    .tracker_lookups
                    .inc_by(lookups.saturating_sub(self.metrics.tracker_lookups.get()));
                self.metrics
                    .tracker_misses
                    .inc_by(misses.saturating_sub(self.metrics.tracker_misses.get()));
                self.publish_tracker_state();
                self.logs.maintain();
                next_gc = now + Duration::from_secs(1);
            }
            if let (Some(at), Some(every)) = (next_sync, self.sync_interval)
                && now >= at
            {
                self.logs.sync_all();
                log::debug!("fdatasync of the logs done");
                next_sync = Some(now + every);
            }
        }
    }

    /// Map sizes and losses to the metrics; when a loss counter grew, one
    /// in-band record in every group's log (the tracker cannot tell whose
    /// processes it missed).
    fn publish_tracker_state(&mut self) {
        let t = &self.attributor.tracker;
        let sizes = t.sizes();
        let losses = t.losses();
        let m = &self.metrics;
        m.ebpf_map_entries.set(t.entries() as i64);
        m.ebpf_live_entries.set(sizes.live as i64);
        m.ebpf_exited_entries.set(sizes.exited as i64);
        let set = |kind: &str, total: u64| {
            let c = m.tracker_losses.with_label_values(&[kind]);
            c.inc_by(total.saturating_sub(c.get()));
        };
        set("live_insert_refused", losses.live_insert_refused);
        set("exit_missed", losses.exit_missed);
        set("tracepoint_skipped", losses.tracepoint_skipped);
        set("exited_insert_refused", losses.exited_insert_refused);
        set("ring_full", losses.ring_full);
        set("event_process_unknown", losses.event_process_unknown);
        if losses.total() > self.tracker_losses_logged {
            self.tracker_losses_logged = losses.total();
            log::warn!("the process tracker lost track of processes: {losses:?}");
            self.lost_record(TRACKER_LOSS_TYPE);
        }
    }

    fn set_groups(&mut self, groups: Arc<GroupSet>) {
        let wanted: HashSet<String> = groups.commands().map(str::to_string).collect();
        for gone in self.tracked.difference(&wanted) {
            let _ = self.attributor.tracker.untrack_command(gone);
        }
        for new in wanted.difference(&self.tracked) {
            if let Err(e) = self.attributor.tracker.track_command(new) {
                log::error!("cannot track command {new}: {e}");
            }
        }
        self.tracked = wanted;
        self.counters = vec![None; groups.groups.len() * EventType::ALL.len()];
        self.groups = groups;
    }

    fn flush(&mut self) {
        let f = self.logs.flush_all();
        self.metrics.log_bytes.inc_by(f.bytes);
        self.metrics.events_unwritten.inc_by(f.lost);
    }

    fn batch(&mut self, mut b: Batch) {
        let n = b.items.len();
        if let Some(d) = b.drained_before {
            self.drained_before = self.drained_before.max(d);
        }
        if n > 0 {
            let at = b.read_at.unwrap_or_else(Utc::now);
            self.clock.stamp(at);
            self.attributor.begin_batch();
            for item in &b.items {
                match *item {
                    Item::Overflow => self.overflow(),
                    Item::Event(c) => {
                        self.event(&c, &b.paths[c.path.0 as usize..c.path.1 as usize])
                    }
                }
            }
            self.flush();
        }
        self.in_flight.fetch_sub(n, Ordering::AcqRel);
        b.clear();
        let _ = self.recycle.send(b);
    }

    fn overflow(&mut self) {
        self.lost_record(OVERFLOW_TYPE);
        self.metrics
            .overflow_records
            .inc_by(self.groups.groups.len() as u64);
    }

    /// One `lost: true` record of `event_type` in every group's log.
    fn lost_record(&mut self, event_type: &'static str) {
        if self.clock.text.is_empty() {
            self.clock.stamp(Utc::now());
        }
        let groups = self.groups.clone();
        for g in &groups.groups {
            let ev = FileEvent {
                time: Cow::Borrowed(&self.clock.text),
                event_type: Cow::Borrowed(event_type),
                path: Cow::Borrowed(""),
                pid: 0,
                cmd: Cow::Borrowed(""),
                user: Cow::Borrowed(""),
                file_size: 0,
                ppid: 0,
                tgid: 0,
                chain: None,
                cgroup: None,
                container: None,
                unresolved: false,
                lost: true,
            };
            emit(
                &mut self.logs,
                &self.subscribe,
                &mut self.line,
                &g.name,
                &ev,
            );
        }
        self.flush();
    }

    fn event(&mut self, c: &Captured, path: &str) {
        let rec = self.attributor.process(c.pid, c.queued_before);
        let (ppid, tgid) = rec.map_or((0, c.pid), |r| (r.ppid, r.tgid));
        // Per event, not per group or line: the name borrows the record (no
        // allocation for UTF-8 names), the user is a shared string.
        let comm = rec
            .as_ref()
            .map(|r| String::from_utf8_lossy(r.comm_bytes()));
        let user = rec.map(|r| self.attributor.user(r.uid));
        let cgroup = rec.as_ref().and_then(|r| self.attributor.cgroup(r));
        let groups = self.groups.clone();
        for (gi, g) in groups.groups.iter().enumerate() {
            let types = g.match_types(path, c.types, c.size, c.unresolved);
            if types == 0 {
                continue;
            }
            if let Some(cmd) = &g.cmd {
                match &rec {
                    Some(r) if self.attributor.descends_from(r, cmd) => {}
                    _ => continue,
                }
            }
            // Command groups only match known processes (checked above); the
            // chain is built once per event and borrowed here.
            let chain = match (&g.cmd, &rec) {
                (Some(_), Some(r)) => Some(self.attributor.chain(r)),
                _ => None,
            };
            for t in EventType::ALL {
                if types & t.mask() == 0 {
                    continue;
                }
                let ev = FileEvent {
                    time: Cow::Borrowed(&self.clock.text),
                    event_type: Cow::Borrowed(t.as_str()),
                    path: Cow::Borrowed(path),
                    pid: c.pid,
                    cmd: Cow::Borrowed(comm.as_deref().unwrap_or("")),
                    user: Cow::Borrowed(user.as_deref().unwrap_or("")),
                    file_size: c.size,
                    ppid,
                    tgid,
                    chain: chain.map(Cow::Borrowed),
                    cgroup: cgroup.as_ref().map(|g| Cow::Borrowed(&*g.path)),
                    container: cgroup
                        .as_ref()
                        .and_then(|g| g.container.as_deref())
                        .map(Cow::Borrowed),
                    unresolved: c.unresolved,
                    lost: false,
                };
                emit(
                    &mut self.logs,
                    &self.subscribe,
                    &mut self.line,
                    &g.name,
                    &ev,
                );
                let slot = &mut self.counters[gi * EventType::ALL.len() + t.index()];
                slot.get_or_insert_with(|| {
                    self.metrics
                        .events_logged
                        .with_label_values(&[&g.name, t.as_str()])
                })
                .inc();
            }
        }
    }
}

/// Writes one line to the group's log and to subscribers.
fn emit(
    logs: &mut LogSet,
    subscribe: &tokio::sync::broadcast::Sender<Arc<SubEvent>>,
    line: &mut String,
    group: &Arc<str>,
    ev: &FileEvent<'_>,
) {
    let live = subscribe.receiver_count() > 0;
    if let Some(w) = logs.writer(group) {
        let buf = w.line_buf();
        let start = buf.len();
        serde_json::to_writer(&mut *buf, ev).expect("serializing to memory");
        if live {
            line.clear();
            line.push_str(std::str::from_utf8(&buf[start..]).unwrap_or(""));
        }
        w.end_line();
    } else if live {
        *line = serde_json::to_string(ev).expect("serializing to memory");
    }
    if live {
        let _ = subscribe.send(Arc::new(SubEvent {
            group: group.clone(),
            line: line.as_str().into(),
        }));
    }
}
