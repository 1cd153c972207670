//! The capture actor: the thread that owns the fanotify group, its marks,
//! the [`PathResolver`] and the file-size cache. It keeps the kernel queue
//! drained, resolves paths while the directories still exist, drops what
//! [`filter::at_capture`] rejects, and hands [`Batch`]es to the process
//! actor ([`super::process`]).
use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::{Arc, mpsc},
    time::{Duration, Instant},
};

use chrono::Utc;

use super::{
    Batch, Captured, Item, Status, WatchErrors,
    filter::{self, CaptureVerdict, GroupSet},
    parse::{self, RawEvent},
    process::ToProcess,
    queue::{InFlight, MAX_BATCH_BYTES},
    read::EventReader,
    resolve::PathResolver,
    sizes::FileSizes,
};
use crate::{
    escape,
    event::{EventType, TypeSet},
    fanotify::FAN_Q_OVERFLOW,
    marks::{Marks, ScanFound},
    metrics::Metrics,
    process::boot_ns,
};

/// Events the resolver needs whatever the groups ask for: they keep the
/// directory tree in step (new, renamed and deleted directories).
// MOVE_SELF: a watched root moved away is seen only by its own mark when
// nothing above it is marked (inode marks).
const INTERNAL_MASK: u64 = EventType::Create.mask()
    | EventType::Delete.mask()
    | EventType::MovedFrom.mask()
    | EventType::MovedTo.mask()
    | EventType::MoveSelf.mask();
const DELETE_LIKE: u64 =
    EventType::Delete.mask() | EventType::MovedFrom.mask() | EventType::DeleteSelf.mask();
/// A batch is handed on after this many events even if more are queued.
const MAX_BATCH: usize = 4096;
/// How long the capture thread lets events accumulate after the queue
/// becomes readable (adds at most this much latency).
const COALESCE: Duration = Duration::from_millis(1);

/// Messages to the capture actor.
pub enum ToCapture {
    SetGroups(Arc<GroupSet>, Option<mpsc::Sender<WatchErrors>>),
    Shutdown,
}

/// The capture thread's state.
pub struct Capture {
    reader: EventReader,
    resolver: PathResolver,
    sizes: FileSizes,
    groups: Arc<GroupSet>,
    /// Filesystem and inode marks, per watched path.
    marks: Marks,
    /// Entries found by scans of new directories, not yet reported.
    scans: ScanReports,
    /// Scratch for what one scan finds.
    found: Vec<ScanFound>,
    /// Inode marks and runtime mark errors last shown in health.
    published_marks: (u64, usize),
    /// Event types any group wants (others are only used by the resolver).
    kernel_types: u64,
    out: mpsc::Sender<ToProcess>,
    recycle: mpsc::Receiver<Batch>,
    in_flight: Arc<InFlight>,
    /// The bound in events of the queue to the process thread.
    capacity: usize,
    metrics: Arc<Metrics>,
    status: Arc<Status>,
    self_pid: u32,
    /// The trees were walked again after lost events: the cache is complete
    /// once every event queued before that walk has been read (a read
    /// finds the queue empty). Until then an event in a directory that is
    /// gone and unknown may be from one made and removed in the gap.
    complete_when_empty: bool,
    /// The filesystem each watched root is on (`None`: not there yet), to
    /// notice one mounted or unmounted under it.
    root_fsids: HashMap<String, Option<u64>>,
    /// `/proc/self/mountinfo`, whose `poll` reports a changed mount table:
    /// every root's filesystem is checked only then (a `statfs` can hang on
    /// a dead network mount), roots not there yet every second.
    mountinfo: Option<std::fs::File>,
    stats_interval: Option<Duration>,
}

/// An entry of a directory: (the directory's key, the name).
type EntryKey = (Box<[u8]>, Box<[u8]>);

/// Entries found by the scans of new directories (inode marks), resolved
/// when found and held until the kernel queue is read empty: an entry whose
/// own event (`CREATE`, `MOVED_TO`) is read meanwhile is reported by that
/// event, with its process; the others are reported as found by a scan.
#[derive(Default)]
struct ScanReports {
    batch: Batch,
    keys: HashMap<EntryKey, usize>,
}

impl ScanReports {
    /// Before `ev` is captured: an entry it reports the creation of needs
    /// no scan report; one it deletes or moves is reported now, first.
    fn before_event(&mut self, ev: &RawEvent<'_>, batch: &mut Batch) {
        if self.keys.is_empty() {
            return;
        }
        let (Some(dir), Some(name)) = (ev.dir, ev.name) else {
            return;
        };
        let entry = EventType::Create.mask() | EventType::MovedTo.mask();
        let gone = EventType::Delete.mask() | EventType::MovedFrom.mask();
        if ev.mask & (entry | gone) == 0 {
            return;
        }
        let Some(i) = self.keys.remove(&(Box::from(dir.key), Box::from(name))) else {
            return;
        };
        if ev.mask & gone != 0 && ev.mask & entry == 0 {
            self.move_into(i, batch);
        }
        self.batch.items[i] = Item::Cancelled;
    }

    fn move_into(&self, i: usize, batch: &mut Batch) {
        if let Item::Event(mut c) = self.batch.items[i] {
            let start = batch.paths.len();
            batch
                .paths
                .push_str(&self.batch.paths[c.path.0 as usize..c.path.1 as usize]);
            c.path = (start as u32, batch.paths.len() as u32);
            batch.items.push(Item::Event(c));
        }
    }

    /// The queue is empty: every entry still held is reported.
    fn report_all(&mut self, batch: &mut Batch) {
        if self.batch.items.is_empty() {
            return;
        }
        if batch.read_at.is_none() {
            batch.read_at = Some(Utc::now());
        }
        for i in 0..self.batch.items.len() {
            self.move_into(i, batch);
        }
        self.batch.clear();
        self.keys.clear();
    }
}

/// What the capture actor is given at start.
pub struct CaptureParts {
    pub reader: EventReader,
    pub resolver: PathResolver,
    pub sizes: FileSizes,
    pub marks: Marks,
    pub out: mpsc::Sender<ToProcess>,
    pub recycle: mpsc::Receiver<Batch>,
    pub in_flight: Arc<InFlight>,
    pub capacity: usize,
    pub metrics: Arc<Metrics>,
    pub status: Arc<Status>,
    pub stats_interval: Option<Duration>,
}

impl Capture {
    pub fn new(p: CaptureParts) -> Self {
        Capture {
            reader: p.reader,
            resolver: p.resolver,
            sizes: p.sizes,
            groups: Arc::new(GroupSet::default()),
            marks: p.marks,
            published_marks: (0, 0),
            scans: ScanReports::default(),
            found: Vec::new(),
            kernel_types: 0,
            out: p.out,
            recycle: p.recycle,
            in_flight: p.in_flight,
            capacity: p.capacity,
            metrics: p.metrics,
            status: p.status,
            self_pid: std::process::id(),
            complete_when_empty: false,
            root_fsids: HashMap::new(),
            mountinfo: std::fs::File::open("/proc/self/mountinfo").ok(),
            stats_interval: p.stats_interval,
        }
    }

    pub fn run(mut self, control: mpsc::Receiver<ToCapture>) {
        let mut batch = Batch::default();
        let mut next_sweep = Instant::now() + Duration::from_secs(5);
        let mut next_reach_check = Instant::now() + Duration::from_secs(1);
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
            let mut emptied = self.drain(&mut batch);
            if shutting_down {
                // Everything the kernel queued before the stop is written:
                // held back by the bound, wait for the process thread.
                while !emptied {
                    emptied = self.drain(&mut batch);
                }
                return;
            }
            if Instant::now() >= next_reach_check {
                self.resolver.check_reach();
                self.follow_root_filesystems();
                next_reach_check = Instant::now() + Duration::from_secs(1);
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
                    self.sizes.entries(),
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
        m.file_size_cache_entries.set(self.sizes.entries() as i64);
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

    /// Reads until the kernel queue is empty (true), or until the queue to
    /// the process thread is full (false: backpressure, the rest waits in
    /// the kernel's queue), sending batches on.
    fn drain(&mut self, batch: &mut Batch) -> bool {
        // The read buffer is taken for the loop (and put back), so that the
        // events borrowed from it can go through `&mut self` stages.
        let mut buf = self.reader.take_buffer();
        let emptied = self.drain_with(&mut buf, batch);
        self.reader.put_buffer(buf);
        emptied
    }

    fn drain_with(&mut self, buf: &mut [u8], batch: &mut Batch) -> bool {
        loop {
            if self.in_flight.full(self.capacity) {
                std::thread::sleep(Duration::from_millis(1));
                if self.in_flight.full(self.capacity) {
                    self.send(batch);
                    return false;
                }
            }
            let before = boot_ns();
            let n = match self.reader.fan.read(buf) {
                Ok(n) => n,
                Err(e) => {
                    log::error!("reading fanotify events: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                    return true;
                }
            };
            if n == 0 {
                if std::mem::take(&mut self.complete_when_empty) {
                    self.resolver.mark_complete();
                }
                if self.marks.follows_trees() {
                    // Every event made before `before` has been read: what
                    // the scans of new directories found without an event
                    // of its own is reported now.
                    self.marks.at_queue_empty(&self.resolver);
                    self.scans.report_all(batch);
                }
                batch.drained_before = Some(before);
                self.send(batch);
                self.publish_marks();
                return true;
            }
            let queued_before = boot_ns();
            if batch.read_at.is_none() {
                batch.read_at = Some(Utc::now());
            }
            self.resolver.tick();
            let mut overflowed = false;
            for item in parse::events(&buf[..n]) {
                let ev = match item {
                    Ok(ev) => ev,
                    Err(e) => {
                        log::error!("{e}; skipping the rest of this read");
                        break;
                    }
                };
                self.metrics.kernel_events.inc();
                if ev.mask & FAN_Q_OVERFLOW != 0 {
                    // At once: the events after it in this read may be in
                    // directories made and removed while events were lost.
                    self.resolver.mark_incomplete();
                    self.complete_when_empty = false;
                    overflowed = true;
                    batch.items.push(Item::Overflow);
                    continue;
                }
                if let Some((errno, count)) = ev.error {
                    self.capture_fs_error(&ev, errno, count, batch, queued_before);
                    continue;
                }
                if !self.marks.follows_trees() {
                    self.capture_event(&ev, batch, queued_before, false);
                    continue;
                }
                self.scans.before_event(&ev, batch);
                self.capture_event(&ev, batch, queued_before, false);
                self.marks.on_event(&self.resolver, &ev, &mut self.found);
                if !self.found.is_empty() {
                    // Resolved now (the paths as they are when found), held
                    // until the queue is empty.
                    let found = std::mem::take(&mut self.found);
                    let mut held = std::mem::take(&mut self.scans.batch);
                    for f in &found {
                        let n = held.items.len();
                        self.capture_event(&f.as_event(), &mut held, queued_before, true);
                        if held.items.len() > n {
                            self.scans
                                .keys
                                .insert((f.dir_key.clone(), f.name.clone()), n);
                        }
                    }
                    self.scans.batch = held;
                    self.found = found;
                    self.found.clear();
                }
            }
            if overflowed {
                self.metrics.queue_overflows.inc();
                log::warn!(
                    "the kernel event queue overflowed: events were lost; re-reading the watched trees"
                );
                self.resolver.mark_incomplete();
                if self.marks.follows_trees() {
                    self.marks.after_overflow(&self.resolver);
                }
                self.walk_roots();
            }
            if batch.items.len() >= MAX_BATCH || batch.paths.len() >= MAX_BATCH_BYTES {
                self.send(batch);
            }
        }
    }

    /// Inode marks follow the trees: health shows how many there are, and
    /// a new directory that could not be marked (a kernel limit).
    fn publish_marks(&mut self) {
        let n = self.marks.inode_marks() as u64;
        let errors = self.marks.runtime_errors.len();
        if n == self.published_marks.0 && errors == self.published_marks.1 {
            return;
        }
        self.published_marks = (n, errors);
        let mut info = self.status.info.lock().unwrap();
        info.inode_marks = n;
        for e in &self.marks.runtime_errors[..] {
            if !info.watch_errors.contains(e) {
                info.watch_errors.push(e.clone());
            }
        }
    }

    /// Resolves, filters and sizes one event, and adds it to `batch` if it
    /// is kept. `scan`: an entry found by a scan, not reported by the kernel.
    fn capture_event(
        &mut self,
        ev: &RawEvent<'_>,
        batch: &mut Batch,
        queued_before: u64,
        scan: bool,
    ) {
        let mut types = ev.mask & TypeSet::ALL.0;
        if !self.resolver.keep_self_events(ev) {
            types &= !PathResolver::SELF_EVENTS;
        }
        let start = batch.paths.len();
        let resolution = self.resolver.resolve(ev, &mut batch.paths);
        let (wanted, unresolved) =
            match filter::at_capture(types, self.kernel_types, ev.pid, self.self_pid, resolution) {
                CaptureVerdict::Keep { types, unresolved } => (types, unresolved),
                CaptureVerdict::Hidden => {
                    self.resolver.stats.hidden += 1;
                    batch.paths.truncate(start);
                    return;
                }
                CaptureVerdict::Drop => {
                    batch.paths.truncate(start);
                    return;
                }
            };
        let size = if unresolved {
            0
        } else if wanted & DELETE_LIKE != 0 {
            self.sizes.last(ev).unwrap_or(0)
        } else {
            match self.resolver.current_size(ev, &batch.paths[start..]) {
                // Remembered for its DELETE, when the file is gone.
                Some(size) => {
                    self.sizes.remember(ev, size);
                    size
                }
                None => self.sizes.last(ev).unwrap_or(0),
            }
        };
        batch.items.push(Item::Event(Captured {
            types: wanted,
            pid: ev.pid,
            path: (start as u32, batch.paths.len() as u32),
            size,
            unresolved,
            queued_before,
            scan,
            fs_error: None,
        }));
    }

    /// FS_ERROR names a filesystem, not a file: it is reported at each
    /// watched root on that filesystem (so every group watching there sees
    /// it), with the error and the kernel's count. At every root when the
    /// filesystem cannot be matched to one: never dropped.
    fn capture_fs_error(
        &mut self,
        ev: &RawEvent<'_>,
        errno: i32,
        count: u32,
        batch: &mut Batch,
        queued_before: u64,
    ) {
        let types = ev.mask & self.kernel_types & EventType::FsError.mask();
        if types == 0 {
            return;
        }
        let fsid = ev.object.or(ev.dir).map(|f| f.fsid);
        let roots = &self.resolver.scope().roots;
        let on_fs = |path: &str| {
            fsid.is_some() && crate::fanotify::fsid_of(std::path::Path::new(path)).ok() == fsid
        };
        let any_on_fs = roots.iter().any(|r| on_fs(&r.path));
        for root in roots.iter().filter(|r| !any_on_fs || on_fs(&r.path)) {
            let start = batch.paths.len();
            batch.paths.push_str(&root.path);
            batch.items.push(Item::Event(Captured {
                types,
                pid: ev.pid,
                path: (start as u32, batch.paths.len() as u32),
                size: 0,
                unresolved: false,
                queued_before,
                scan: false,
                fs_error: Some((errno, count)),
            }));
        }
    }

    fn send(&mut self, batch: &mut Batch) {
        if batch.items.is_empty() && batch.drained_before.is_none() {
            return;
        }
        let mut next = self.recycle.try_recv().unwrap_or_default();
        next.clear();
        let full = std::mem::replace(batch, next);
        self.in_flight.add(&full);
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
        // Complete once the events queued before this walk are read.
        self.complete_when_empty = complete;
    }

    /// A watched root now on another filesystem than when it was marked (a
    /// disk or share mounted on it or above it after the daemon started, or
    /// unmounted; or a pending root that appeared): nothing marks that
    /// filesystem yet, so its events would never come. Marks are applied
    /// again and the root walked.
    fn follow_root_filesystems(&mut self) {
        let mounts_changed = self.mountinfo.as_ref().is_none_or(|f| {
            let mut p = libc::pollfd {
                fd: std::os::fd::AsRawFd::as_raw_fd(f),
                events: libc::POLLPRI,
                revents: 0,
            };
            // SAFETY: one valid pollfd; no wait. The kernel notes that this
            // change was reported, so the next poll reports only a new one.
            unsafe {
                libc::poll(&mut p, 1, 0) > 0 && p.revents & (libc::POLLPRI | libc::POLLERR) != 0
            }
        });
        let mut moved = Vec::new();
        for (root, fsid) in self.root_fsids.iter_mut() {
            if !mounts_changed && fsid.is_some() {
                continue;
            }
            let now = crate::fanotify::fsid_of(&escape::as_path(root)).ok();
            if now != *fsid {
                *fsid = now;
                if now.is_some() {
                    moved.push(root.clone());
                }
            }
        }
        if moved.is_empty() {
            return;
        }
        for root in &moved {
            log::info!(
                "{root}: on a filesystem not watched before (mounted, unmounted or appeared): watching it there"
            );
        }
        let groups = self.groups.clone();
        self.set_groups(groups);
        let scope = self.resolver.scope().clone();
        for r in scope.roots.iter().filter(|r| moved.contains(&r.path)) {
            if !self.resolver.prewalk(
                &escape::as_path(&r.path),
                if r.recursive { usize::MAX } else { 1 },
            ) {
                self.resolver.mark_incomplete();
            }
        }
    }

    /// Applies a new set of groups: marks, scope, pre-walks.
    pub fn set_groups(&mut self, groups: Arc<GroupSet>) -> WatchErrors {
        let scope = groups.scope();
        let types = groups.types();
        // A non-root user's view depends on directory permissions: their
        // changes (ATTRIB) are needed whatever the groups ask for.
        let internal_mask = if self.resolver.checks_access() {
            INTERNAL_MASK | EventType::Attrib.mask()
        } else {
            INTERNAL_MASK
        };
        let errors = self.marks.apply(
            &mut self.resolver,
            &groups.marked_roots(),
            types | internal_mask,
        );
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
        self.resolver.check_reach();
        self.root_fsids = scope
            .roots
            .iter()
            .map(|r| {
                (
                    r.path.clone(),
                    crate::fanotify::fsid_of(&escape::as_path(&r.path)).ok(),
                )
            })
            .collect();
        self.kernel_types = types;
        self.groups = groups;
        self.metrics.watched_paths.set(scope.roots.len() as i64);
        self.metrics.groups.set(self.groups.groups.len() as i64);
        for (p, e) in &errors {
            log::error!("cannot watch {p}: {e}");
        }
        let mut info = self.status.info.lock().unwrap();
        info.watch_errors = errors.clone();
        info.marks = self.marks.roots.clone();
        info.inode_marks = self.marks.inode_marks() as u64;
        drop(info);
        self.published_marks = (self.marks.inode_marks() as u64, 0);
        errors
    }
}
