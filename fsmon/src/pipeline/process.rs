//! The process actor: the thread that owns the [`ProcessTracker`] (through
//! the [`Attributor`]), the groups and the log writers. For each captured
//! event it attributes the process, asks each group what it logs
//! ([`CompiledGroup::logs`](super::filter::CompiledGroup::logs)), stamps the
//! time ([`Clock`]) and emits one line per group and type ([`emit`]).
use std::{
    borrow::Cow,
    collections::HashSet,
    sync::{Arc, mpsc},
    time::{Duration, Instant},
};

use chrono::Utc;

use super::{
    Batch, Captured, Item, SubEvent, attribute::Attributor, clock::Clock, emit::emit,
    filter::GroupSet, queue::InFlight, write::LogSet,
};
use crate::{
    event::{EventType, FileEvent, OVERFLOW_TYPE, TRACKER_LOSS_TYPE},
    metrics::Metrics,
    process::ProcessTracker,
};

/// Messages to the process actor, in event-stream order.
pub enum ToProcess {
    Batch(Batch),
    Groups(Arc<GroupSet>),
    /// Runs a closure against the log set on the process thread, between
    /// batches (used by `clean` to swap a log without losing a line).
    WithLogs(Box<dyn FnOnce(&mut LogSet) + Send>),
    Shutdown,
}

/// The process thread's state.
pub struct Process {
    attributor: Attributor,
    groups: Arc<GroupSet>,
    tracked: HashSet<String>,
    logs: LogSet,
    clock: Clock,
    subscribe: tokio::sync::broadcast::Sender<Arc<SubEvent>>,
    metrics: Arc<Metrics>,
    /// Counter handles by group index x event type, resolved on first use.
    counters: Vec<Option<prometheus::IntCounter>>,
    recycle: mpsc::SyncSender<Batch>,
    in_flight: Arc<InFlight>,
    drained_before: u64,
    sync_interval: Option<Duration>,
    line: String,
    /// Tracker losses already reported in the logs.
    tracker_losses_logged: u64,
}

/// What the process actor is given at start.
pub struct ProcessParts {
    pub tracker: ProcessTracker,
    pub logs: LogSet,
    pub local_time: bool,
    pub subscribe: tokio::sync::broadcast::Sender<Arc<SubEvent>>,
    pub metrics: Arc<Metrics>,
    pub recycle: mpsc::SyncSender<Batch>,
    pub in_flight: Arc<InFlight>,
    pub sync_interval: Option<Duration>,
}

impl Process {
    pub fn new(p: ProcessParts) -> Self {
        Process {
            attributor: Attributor::new(p.tracker),
            groups: Arc::new(GroupSet::default()),
            tracked: HashSet::new(),
            logs: p.logs,
            clock: Clock::new(p.local_time),
            subscribe: p.subscribe,
            metrics: p.metrics,
            counters: Vec::new(),
            recycle: p.recycle,
            in_flight: p.in_flight,
            drained_before: 0,
            sync_interval: p.sync_interval,
            line: String::new(),
            tracker_losses_logged: 0,
        }
    }

    pub fn run(mut self, rx: mpsc::Receiver<ToProcess>) {
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
                self.publish_retention_counts();
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
    /// The writer's retention totals into the counters (by difference:
    /// the counters only go up, and the writer owns the totals).
    fn publish_retention_counts(&self) {
        let c = self.logs.retention_counts;
        let m = &self.metrics;
        for (counter, total) in [
            (&m.log_rotations, c.rotations),
            (&m.log_archives_deleted, c.archives_deleted),
            (&m.log_retention_failures, c.failures),
        ] {
            counter.inc_by(total.saturating_sub(counter.get()));
        }
    }

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

    pub fn set_groups(&mut self, groups: Arc<GroupSet>) {
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
                    Item::Cancelled => {}
                    Item::Event(c) => {
                        self.event(&c, &b.paths[c.path.0 as usize..c.path.1 as usize])
                    }
                }
            }
            self.flush();
        }
        self.in_flight.done(&b);
        b.clear();
        // Kept for reuse while fewer than SPARE_BATCHES wait; else freed.
        let _ = self.recycle.try_send(b);
    }

    fn overflow(&mut self) {
        self.lost_record(OVERFLOW_TYPE);
        self.metrics
            .overflow_records
            .inc_by(self.groups.groups.len() as u64);
    }

    /// One `lost: true` record of `event_type` in every group's log.
    fn lost_record(&mut self, event_type: &'static str) {
        if self.clock.text().is_empty() {
            self.clock.stamp(Utc::now());
        }
        let groups = self.groups.clone();
        for g in &groups.groups {
            let ev = FileEvent {
                lost: true,
                ..FileEvent::bare(self.clock.text(), event_type, "")
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
        // An entry found by a scan has no process: none is made up.
        let rec = if c.scan {
            None
        } else {
            self.attributor.process(c.pid, c.queued_before)
        };
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
            let attributor = &mut self.attributor;
            let types = g.logs(c, path, |cmd| {
                rec.as_ref()
                    .is_some_and(|r| attributor.descends_from(r, cmd))
            });
            if types == 0 {
                continue;
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
                    time: Cow::Borrowed(self.clock.text()),
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
                    scan: c.scan,
                    error: c.fs_error.map(|(e, _)| crate::event::errno_name(e)),
                    error_count: c.fs_error.map(|(_, n)| n),
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

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, path::Path};

    use super::*;
    use crate::{
        pipeline::write::log_path,
        process::{TrackerConfig, boot_ns},
        store::{GLOBAL, Group, PathOptions, Store},
        user::TargetUser,
        userfs::UserFs,
    };

    struct Stage {
        process: Process,
        live: tokio::sync::broadcast::Receiver<Arc<SubEvent>>,
        metrics: Arc<Metrics>,
        logs: tempfile::TempDir,
    }

    /// A process stage with the `/proc` tracker (it knows this test's own
    /// process), logging to a temporary directory, with one subscriber.
    fn stage(groups: Vec<Group>) -> Stage {
        let logs = tempfile::tempdir().unwrap();
        let user = TargetUser::from_uid(nix::unistd::geteuid().as_raw()).unwrap();
        let tracker = ProcessTracker::start(&TrackerConfig {
            force_procfs: true,
            ..TrackerConfig::default()
        })
        .unwrap();
        let (subscribe, live) = tokio::sync::broadcast::channel(1024);
        let metrics = Arc::new(Metrics::new());
        let (recycle, _) = mpsc::sync_channel(crate::pipeline::queue::SPARE_BATCHES);
        let mut process = Process::new(ProcessParts {
            tracker,
            logs: LogSet::new(Some(logs.path().into()), UserFs::new(&user).unwrap()).unwrap(),
            local_time: false,
            subscribe,
            metrics: metrics.clone(),
            recycle,
            in_flight: Arc::new(InFlight::default()),
            sync_interval: None,
        });
        let store = Store {
            groups,
            unparsed: Vec::new(),
        };
        process.set_groups(Arc::new(GroupSet::from_store(&store)));
        Stage {
            process,
            live,
            metrics,
            logs,
        }
    }

    fn group(cmd: &str, paths: &[(&str, bool, &[EventType])]) -> Group {
        Group {
            cmd: cmd.to_string(),
            paths: paths
                .iter()
                .map(|(p, recursive, types)| {
                    (
                        p.to_string(),
                        PathOptions {
                            recursive: *recursive,
                            types: types.to_vec(),
                            size: None,
                            mark: Default::default(),
                        },
                    )
                })
                .collect::<BTreeMap<_, _>>(),
        }
    }

    /// One batch read at `read_at`, of events by this process.
    fn batch(read_at: chrono::DateTime<Utc>, events: &[(&str, u64)]) -> Batch {
        let mut b = Batch {
            read_at: Some(read_at),
            ..Batch::default()
        };
        for (path, types) in events {
            let start = b.paths.len() as u32;
            b.paths.push_str(path);
            b.items.push(Item::Event(Captured {
                types: *types,
                pid: std::process::id(),
                path: (start, b.paths.len() as u32),
                size: 7,
                unresolved: false,
                queued_before: boot_ns(),
                scan: false,
                fs_error: None,
            }));
        }
        b
    }

    fn lines(dir: &Path, group: &str) -> Vec<String> {
        std::fs::read_to_string(log_path(dir, group))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn field(line: &str, key: &str) -> serde_json::Value {
        serde_json::from_str::<serde_json::Value>(line).unwrap()[key].clone()
    }

    const CREATE: u64 = EventType::Create.mask();
    const MODIFY: u64 = EventType::Modify.mask();
    const DELETE: u64 = EventType::Delete.mask();

    #[test]
    fn each_group_logs_its_own_types_one_line_per_type() {
        let mut s = stage(vec![
            group(
                GLOBAL,
                &[
                    ("/w", true, &[EventType::Create, EventType::Modify]),
                    ("/x", false, &[EventType::Delete]),
                ],
            ),
            // A command no process here descends from: it logs nothing.
            group("fsmtnobody", &[("/w", true, &[EventType::Create])]),
        ]);
        s.process.batch(batch(
            Utc::now(),
            &[
                ("/w/a/f", CREATE | MODIFY | DELETE),
                ("/x/g", DELETE | CREATE),
                ("/x/sub/h", DELETE),
                ("/elsewhere", CREATE),
            ],
        ));
        let got: Vec<(String, String)> = lines(s.logs.path(), GLOBAL)
            .iter()
            .map(|l| {
                (
                    field(l, "event_type").as_str().unwrap().to_string(),
                    field(l, "path").as_str().unwrap().to_string(),
                )
            })
            .collect();
        let want: Vec<(String, String)> = [
            ("CREATE", "/w/a/f"),
            ("MODIFY", "/w/a/f"),
            ("DELETE", "/x/g"),
        ]
        .iter()
        .map(|(t, p)| (t.to_string(), p.to_string()))
        .collect();
        assert_eq!(got, want);
        assert!(lines(s.logs.path(), "fsmtnobody").is_empty());
        let logged = |g: &str, t: &str| s.metrics.events_logged.with_label_values(&[g, t]).get();
        assert_eq!(logged(GLOBAL, "CREATE"), 1);
        assert_eq!(logged(GLOBAL, "DELETE"), 1);
        assert_eq!(logged("fsmtnobody", "CREATE"), 0);
        // This process is known to the tracker: attributed.
        let first = &lines(s.logs.path(), GLOBAL)[0];
        assert_eq!(field(first, "pid"), std::process::id());
        assert_eq!(field(first, "file_size"), 7);
    }

    #[test]
    fn the_subscriber_line_is_the_log_line() {
        let mut s = stage(vec![group(
            GLOBAL,
            &[("/w", true, &[EventType::Create, EventType::Modify])],
        )]);
        s.process.batch(batch(
            Utc::now(),
            &[("/w/f", CREATE | MODIFY), ("/w/bad\\xff", CREATE)],
        ));
        let logged = lines(s.logs.path(), GLOBAL);
        assert_eq!(logged.len(), 3);
        for line in &logged {
            let sub = s.live.try_recv().unwrap();
            assert_eq!(&*sub.group, GLOBAL);
            assert_eq!(&*sub.line, line.as_str());
        }
        assert!(s.live.try_recv().is_err(), "one live line per log line");
    }

    #[test]
    fn time_never_goes_backwards_across_batches() {
        let mut s = stage(vec![group(GLOBAL, &[("/w", true, &[EventType::Create])])]);
        let t0 = Utc::now();
        // The clock steps back a minute between reads, then forward again.
        for (i, at) in [
            t0,
            t0 - chrono::Duration::seconds(60),
            t0 + chrono::Duration::microseconds(1),
        ]
        .into_iter()
        .enumerate()
        {
            s.process.batch(batch(at, &[(&format!("/w/f{i}"), CREATE)]));
        }
        // An overflow record in between takes the same clock.
        s.process.batch(Batch {
            items: vec![Item::Overflow],
            read_at: Some(t0 - chrono::Duration::seconds(5)),
            ..Batch::default()
        });
        let times: Vec<String> = lines(s.logs.path(), GLOBAL)
            .iter()
            .map(|l| field(l, "time").as_str().unwrap().to_string())
            .collect();
        assert_eq!(times.len(), 4);
        assert_eq!(times[0], times[1], "a step back keeps the last time");
        assert!(times[2] > times[1]);
        assert_eq!(times[3], times[2]);
    }
}
