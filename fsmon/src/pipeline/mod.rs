//! The event pipeline, as stages in order:
//!
//! ```text
//!  capture thread                                    process thread
//!  read -> parse -> resolve -> filter  ==[Batch]==>  attribute -> filter -> emit -> write
//! ```
//!
//! One home per actor: [`capture`] (the fanotify group, its marks, the
//! [`PathResolver`](resolve::PathResolver) and the [`FileSizes`](sizes::FileSizes)
//! cache) keeps the kernel queue drained and resolves paths while the
//! directories still exist; [`process`] owns the
//! [`ProcessTracker`], the groups and the log files. Each stage is a module
//! they call; every filtering decision is in [`filter`], time stamps in
//! [`clock`], the line written in [`emit`]. This file holds what passes
//! between them and starts both threads. They share nothing mutable: batches (recycled,
//! so the steady state allocates nothing) and control messages pass between
//! them in order, so a change of groups takes effect at an exact point of the
//! event stream.
pub mod access;
pub mod attribute;
pub mod capture;
pub mod clock;
pub mod emit;
pub mod filter;
pub mod parse;
pub mod process;
pub mod queue;
pub mod read;
pub mod resolve;
pub mod scope;
pub mod sizes;
pub mod write;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::Duration,
};

use chrono::{DateTime, Utc};

use crate::{fanotify::Fanotify, metrics::Metrics, process::ProcessTracker};
use capture::{Capture, CaptureParts, ToCapture};
use filter::GroupSet;
use process::{Process, ProcessParts, ToProcess};
use read::{EventReader, Waker};
use resolve::PathResolver;
use sizes::FileSizes;
use write::LogSet;

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
    /// Found by the scan of a new directory (inode marks), not reported by
    /// the kernel: `pid` is 0, the process is not known.
    pub scan: bool,
    /// FS_ERROR: the filesystem's error (errno) and how many errors the
    /// kernel merged into this event.
    pub fs_error: Option<(i32, u32)>,
}

#[derive(Debug, Clone, Copy)]
pub enum Item {
    Event(Captured),
    /// The kernel queue overflowed here: events were lost.
    Overflow,
    /// Nothing (an entry found by a scan whose own event came after all).
    Cancelled,
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
    pub fn clear(&mut self) {
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

/// What health reports about the pipeline.
#[derive(Debug, Default, Clone)]
pub struct PipelineInfo {
    pub tracker: String,
    pub tracker_fallback: Option<String>,
    pub watch_errors: WatchErrors,
    /// What each watched path got (filesystem or inode marks) and why.
    pub marks: Vec<crate::marks::RootMark>,
    /// Directories carrying an inode mark.
    pub inode_marks: u64,
}

pub struct Status {
    pub ready: AtomicBool,
    pub info: Mutex<PipelineInfo>,
}

pub struct PipelineConfig {
    pub buffer_size: usize,
    /// Bound of the capture -> process queue, in events (see [`queue`]).
    pub channel_capacity: usize,
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
        let marks = crate::marks::Marks::new(&fan)?;
        let target_fid = fan.reports_target_fid();
        let (reader, waker) = EventReader::new(fan, cfg.buffer_size)?;
        let mut resolver = PathResolver::new(cfg.dir_capacity, cfg.dir_ttl, cfg.user_access);
        if !target_fid {
            // New directories are not learned from their events: the cache
            // can never be sure it knows every watched one.
            resolver.never_complete();
        }
        let (capture_tx, capture_rx) = mpsc::channel();
        let (process_tx, process_rx) = mpsc::channel();
        let (recycle_tx, recycle_rx) = mpsc::sync_channel(queue::SPARE_BATCHES);
        let in_flight = Arc::new(queue::InFlight::default());
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
                marks: Vec::new(),
                inode_marks: 0,
            }),
        });

        let mut capture = Capture::new(CaptureParts {
            reader,
            resolver,
            sizes: FileSizes::new(cfg.file_size_capacity),
            marks,
            out: process_tx.clone(),
            recycle: recycle_rx,
            in_flight: in_flight.clone(),
            capacity: cfg.channel_capacity,
            metrics: metrics.clone(),
            status: status.clone(),
            stats_interval: cfg.stats_interval,
        });
        // Apply the initial groups before any thread runs, so the daemon is
        // watching everything by the time it says it is ready.
        capture.set_groups(groups.clone());

        let mut process = Process::new(ProcessParts {
            tracker,
            logs,
            local_time: cfg.local_time,
            subscribe: subscribe.clone(),
            metrics: metrics.clone(),
            recycle: recycle_tx,
            in_flight,
            sync_interval: cfg.sync_interval,
        });
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
