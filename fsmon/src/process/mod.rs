//! Who did it: the process tracker.
//!
//! [`ProcessTracker`] answers, for a tgid reported by fanotify, what the
//! process was (comm, uid, parent, ...), its ancestry chain, and whether it
//! descends from a process that exec'd a tracked command.
//!
//! Normally the answers come from the eBPF process map, which still holds a
//! process for a grace period after it exits: a `touch` that is gone by the
//! time its event is read is still attributed. When eBPF cannot be loaded the
//! tracker falls back to reading `/proc`, which cannot see processes that
//! have already exited.
//!
//! Layout: `fsmon-ebpf` (the kernel programs), `fsmon_common::ProcRecord`
//! (the record, and who writes which field), `ebpf.rs` (loading and the
//! maps), `collect.rs` (when an exited record may go), this file (lookups,
//! chains, tracked commands).
pub mod cgroup;
mod collect;
mod ebpf;
pub mod procfs;
pub mod tracefs;
pub mod users;

use std::{
    collections::{HashMap, HashSet},
    fmt::Write as _,
    time::Duration,
};

use fsmon_common::{
    COMM_LEN, MAX_TRACKED_COMMANDS, ProcRecord, SeededBits, Settings, comm_key, counter, same_start,
};
use moka::sync::Cache;

use crate::error::{Error, Result};
use ebpf::EbpfBackend;
pub use users::UserNames;

/// Which source of process facts is in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrackerKind {
    Ebpf,
    Procfs,
}

impl TrackerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TrackerKind::Ebpf => "ebpf",
            TrackerKind::Procfs => "procfs",
        }
    }
}

#[derive(Debug, Clone)]
pub struct TrackerConfig {
    /// Capacity of the eBPF live-process map and of the exited-process map
    /// (each).
    pub map_capacity: u32,
    /// How long an exited process stays in the map before collection.
    pub exit_grace: Duration,
    /// Skip eBPF and use `/proc` (for tests, or hosts where eBPF is unwanted).
    pub force_procfs: bool,
    /// Enable aya-log output from the eBPF programs.
    pub debug: bool,
    /// TTL of the `/proc` backend's cache.
    pub proc_ttl: Duration,
    /// Load the eBPF object in a separate process run from this executable
    /// (`<exe> __ebpf-loader`), so this process never holds aya's load-time
    /// memory peak. `None`: load in this process (tests, benchmarks).
    pub loader_exe: Option<std::path::PathBuf>,
}

/// Bounds for `map_capacity`: below this the map cannot hold a busy host's
/// processes; above it the kernel memory it pins is unreasonable.
pub const MIN_MAP_CAPACITY: u32 = 1024;
pub const MAX_MAP_CAPACITY: u32 = 4 * 1024 * 1024;

impl Default for TrackerConfig {
    fn default() -> Self {
        Self {
            map_capacity: fsmon_common::DEFAULT_PROC_MAP_CAPACITY,
            exit_grace: Duration::from_secs(5),
            force_procfs: std::env::var_os("FSMON_TRACKER").is_some_and(|v| v == "procfs"),
            debug: false,
            proc_ttl: Duration::from_secs(600),
            loader_exe: None,
        }
    }
}

impl TrackerConfig {
    pub fn validate(&self) -> Result<()> {
        if !(MIN_MAP_CAPACITY..=MAX_MAP_CAPACITY).contains(&self.map_capacity) {
            return Err(Error::invalid(format!(
                "process map capacity {} is out of range ({MIN_MAP_CAPACITY}..={MAX_MAP_CAPACITY})",
                self.map_capacity
            )));
        }
        Ok(())
    }
}

// One per daemon: the size difference does not matter.
#[allow(clippy::large_enum_variant)]
enum Backend {
    Ebpf(EbpfState),
    Procfs(ProcfsBackend),
}

/// The eBPF backend and what the daemon keeps beside the kernel's maps.
/// Everything here is written by the daemon only.
struct EbpfState {
    b: EbpfBackend,
    collector: collect::Collector,
    /// Tracked bits given to processes that were running when their command
    /// was tracked (mirror of the kernel's seeded map, so lookups need no
    /// syscall).
    seeded: HashMap<u32, SeededBits>,
    /// ppid and start time of records the kernel created at exec without
    /// knowing them (a process older than the daemon, not seeded yet), as
    /// read from `/proc`: (ppid, start_ns, parent_start_ns).
    completed: HashMap<u32, (u32, u64, u64)>,
    /// Tracked bits that were untracked while records still carry them.
    retired: u64,
    /// For each retired bit: the processes whose records may still carry
    /// it. The bit is free again once they are all collected.
    stale: HashMap<u32, HashSet<u32>>,
    /// Records the daemon inserted into (removed from) the live map, for
    /// its size without a walk.
    user_inserted: u64,
    user_removed: u64,
    /// Program runs the kernel skipped, as last read. Evidence of missed
    /// exits (skipped runs + exits found missed by a fork) and the live
    /// map's size as of the last reconciliation, and when that was.
    skipped: u64,
    evidence_reconciled: u64,
    live_reconciled: u64,
    reconciled_at: u64,
}

/// At most one reconciliation of the live map per this long.
const RECONCILE_EVERY_NS: u64 = 10_000_000_000;

/// What the tracker could not keep (all only grow). Any of them growing is
/// logged in-band (see the pipeline) and shown in metrics and `health`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrackerLosses {
    /// The live map was full: a new process is not known to the tracker.
    pub live_insert_refused: u64,
    /// A record whose process's exit was never seen, replaced when its pid
    /// was reused (a live record is never evicted: only a fork of the same
    /// pid, which proves the old holder gone, replaces one).
    pub exit_missed: u64,
    /// Runs of the fork/exec/exit programs the kernel skipped (a `bpf()`
    /// map syscall preempted on that CPU, another BPF program active): each
    /// may be a process, a name or an exit not seen. When it grows, the
    /// daemon reconciles the live map with `/proc`.
    pub tracepoint_skipped: u64,
    /// An exited record could not be moved to the exited map.
    pub exited_insert_refused: u64,
    /// Exit notes the ring buffer had no room for.
    pub ring_full: u64,
    /// File events whose process was found nowhere (not in the maps, not
    /// in `/proc`): its exited record was let go before the event was read
    /// (more processes exited within the grace period than the exited map
    /// holds), or it was never recorded.
    pub event_process_unknown: u64,
}

impl TrackerLosses {
    /// The losses that may have cost attribution (what the in-band record
    /// reports). `exit_missed` is not one: the record stayed until its pid
    /// was reused, so every event of the process was still attributed; it
    /// is shown in metrics and `health` only.
    pub fn total(&self) -> u64 {
        self.live_insert_refused
            + self.tracepoint_skipped
            + self.exited_insert_refused
            + self.ring_full
            + self.event_process_unknown
    }
}

/// Sizes of the tracker's maps, known without walking them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrackerSizes {
    /// Records in the live map (running processes and exited ancestors of
    /// running ones).
    pub live: u64,
    /// Exited records awaiting collection.
    pub exited: u64,
    /// Capacity of each map.
    pub capacity: u64,
}

/// `/proc`-based fallback: a TTL cache in front of `/proc/<pid>/stat`.
struct ProcfsBackend {
    cache: Cache<u32, ProcRecord>,
}

/// Stops a chain walk that would loop (it cannot with sane data, but the
/// map is written concurrently by the kernel).
const MAX_CHAIN_DEPTH: usize = 64;

pub struct ProcessTracker {
    backend: Backend,
    /// Why eBPF is not in use, when it is not.
    fallback_reason: Option<String>,
    users: UserNames,
    /// Tracked command name -> its bit in `ProcRecord::tracked`.
    tracked: HashMap<String, u32>,
    exit_grace: Duration,
    lookups: u64,
    misses: u64,
    /// Event processes the eBPF tracker could not find (see
    /// [`TrackerLosses::event_process_unknown`]).
    unknown_event_processes: u64,
    /// Ancestors looked up recently, with when: consecutive chains share
    /// them (the same shell, sshd, systemd), and each map lookup is a
    /// syscall. Used for ancestors only, never for the event's own process.
    ancestors: HashMap<u32, (ProcRecord, u64)>,
}

/// How long a cached ancestor is trusted. An ancestor that exec'd within
/// this window may show its previous name in a chain.
const ANCESTOR_TTL_NS: u64 = 1_000_000_000;
const ANCESTOR_CACHE_MAX: usize = 4096;

impl ProcessTracker {
    /// Starts the tracker: eBPF when possible, `/proc` otherwise. Fails only
    /// on a bad configuration; an eBPF failure is a warning and a fallback.
    pub fn start(cfg: &TrackerConfig) -> Result<Self> {
        cfg.validate()?;
        check_initial_pid_namespace()?;
        let procfs = || {
            Backend::Procfs(ProcfsBackend {
                cache: Cache::builder()
                    .max_capacity(16_384)
                    .time_to_live(cfg.proc_ttl)
                    .build(),
            })
        };
        let (backend, fallback_reason) = if cfg.force_procfs {
            (
                procfs(),
                Some("the /proc tracker was requested (FSMON_TRACKER=procfs)".to_string()),
            )
        } else {
            let loaded = match &cfg.loader_exe {
                Some(exe) => load_in_child(exe, cfg),
                None => EbpfBackend::load(cfg.map_capacity, cfg.debug, None),
            };
            match loaded {
                Ok(b) => {
                    let mut state = EbpfState {
                        b,
                        collector: collect::Collector::default(),
                        seeded: HashMap::new(),
                        completed: HashMap::new(),
                        retired: 0,
                        stale: HashMap::new(),
                        user_inserted: 0,
                        user_removed: 0,
                        skipped: 0,
                        evidence_reconciled: 0,
                        live_reconciled: 0,
                        reconciled_at: 0,
                    };
                    state.seed_from_proc();
                    (Backend::Ebpf(state), None)
                }
                Err(e) => {
                    log::warn!(
                        "eBPF process tracker unavailable ({e}); falling back to /proc: \
                         processes that exit before their events are read will be reported as unknown"
                    );
                    (procfs(), Some(e.to_string()))
                }
            }
        };
        Ok(Self {
            backend,
            fallback_reason,
            users: UserNames::default(),
            tracked: HashMap::new(),
            exit_grace: cfg.exit_grace,
            lookups: 0,
            misses: 0,
            unknown_event_processes: 0,
            ancestors: HashMap::new(),
        })
    }

    pub fn kind(&self) -> TrackerKind {
        match self.backend {
            Backend::Ebpf(_) => TrackerKind::Ebpf,
            Backend::Procfs(_) => TrackerKind::Procfs,
        }
    }

    /// Why the eBPF tracker is not in use (None when it is).
    pub fn fallback_reason(&self) -> Option<&str> {
        self.fallback_reason.as_deref()
    }

    /// (lookups, misses) since start.
    pub fn lookup_stats(&self) -> (u64, u64) {
        (self.lookups, self.misses)
    }

    /// The aya-log reader, for `--debug` (eBPF backend only).
    pub fn take_ebpf_logger(
        &mut self,
    ) -> Option<Result<aya_log::EbpfLogger<&'static dyn log::Log>>> {
        match &mut self.backend {
            Backend::Ebpf(s) => Some(s.b.take_logger()),
            Backend::Procfs(_) => None,
        }
    }

    /// What is known about process `tgid`, alive or recently exited.
    pub fn record(&mut self, tgid: u32) -> Option<ProcRecord> {
        self.record_at(tgid, u64::MAX)
    }

    /// What is known about the process `tgid` that existed at boot-clock
    /// time `queued_before` (the event naming it was queued before then).
    /// When the pid's running holder started later, the event was caused
    /// by an earlier holder, whose exited record is used if it is still
    /// there.
    pub fn record_at(&mut self, tgid: u32, queued_before: u64) -> Option<ProcRecord> {
        self.lookups += 1;
        let found = match &mut self.backend {
            Backend::Ebpf(s) => {
                let r = s.lookup(tgid, queued_before);
                // Every process the event could be from is recorded from
                // fork to collection: not finding it is a loss.
                if r.is_none() && tgid != 0 && queued_before != u64::MAX {
                    self.unknown_event_processes += 1;
                }
                r
            }
            Backend::Procfs(p) => p.get(tgid),
        };
        if found.is_none() {
            self.misses += 1;
        }
        found
    }

    /// The maps' record for `tgid` (live first, then exited), without the
    /// `/proc` fallback of [`record`](Self::record) (eBPF backend; `None`
    /// otherwise).
    pub fn peek(&self, tgid: u32) -> Option<ProcRecord> {
        match &self.backend {
            Backend::Ebpf(s) => s.get(tgid),
            Backend::Procfs(_) => None,
        }
    }

    /// Benchmarks only: forgets cached ancestors (to measure cold chains).
    #[doc(hidden)]
    pub fn forget_ancestors(&mut self) {
        self.ancestors.clear();
    }

    /// Tests only (walks the live map): records of processes that are not
    /// running and not kept for their children, i.e. whose exit was missed.
    /// The invariant is that there are none.
    #[doc(hidden)]
    pub fn live_records_without_process(&self) -> Vec<ProcRecord> {
        let Backend::Ebpf(s) = &self.backend else {
            return Vec::new();
        };
        s.b.maps
            .live
            .iter()
            .filter_map(|r| r.ok())
            .map(|(_, r)| r)
            .filter(|r| r.exit_ns == 0 && r.tgid != 0)
            .filter(|r| {
                // Gone from /proc (reaped: its exit tracepoint has run), or
                // the pid is another process's now. An exiting process or a
                // zombie may still be between its exit and our program.
                let gone = match procfs::read_process(r.tgid) {
                    None => true,
                    Some(p) => !same_start(p.start_ns, r.start_ns),
                };
                // Re-read: it may have exited (and moved) meanwhile.
                gone && s
                    .b
                    .maps
                    .live
                    .get(&r.tgid, 0)
                    .is_ok_and(|now| now.exit_ns == 0 && same_start(now.start_ns, r.start_ns))
            })
            .collect()
    }

    /// Benchmarks only: writes a synthetic record into the eBPF map.
    #[doc(hidden)]
    pub fn insert_for_bench(&mut self, rec: &ProcRecord) -> bool {
        match &mut self.backend {
            // Synthetic pids: no /proc check (it would remove them).
            Backend::Ebpf(s) => {
                let ok =
                    s.b.maps
                        .live
                        .insert(rec.tgid, *rec, ebpf::BPF_NOEXIST)
                        .is_ok();
                s.user_inserted += ok as u64;
                ok
            }
            Backend::Procfs(p) => {
                p.cache.insert(rec.tgid, *rec);
                true
            }
        }
    }

    pub fn user_name(&mut self, uid: u32) -> &str {
        self.users.name(uid)
    }

    pub fn user_name_rc(&mut self, uid: u32) -> std::sync::Arc<str> {
        self.users.name_rc(uid)
    }

    /// The ancestry chain of `tgid`, the seed's `pid|cmd|user;...` string from
    /// the process up to pid 1. An ancestor that cannot be known (gone from
    /// the map, or its pid reused) ends the chain as `pid|?|?`.
    pub fn chain(&mut self, tgid: u32) -> String {
        let mut out = String::with_capacity(128);
        self.write_chain(tgid, &mut out);
        out
    }

    /// [`chain`](Self::chain), appended to `out` (no allocation when `out`
    /// has room).
    pub fn write_chain(&mut self, tgid: u32, out: &mut String) {
        match self.record(tgid) {
            Some(r) => self.write_chain_from(&r, out),
            None => {
                let _ = write!(out, "{tgid}|?|?");
            }
        }
    }

    /// [`write_chain`](Self::write_chain) for a process whose record the
    /// caller already has (the pipeline looked it up to attribute the event):
    /// only ancestors are looked up.
    pub fn write_chain_from(&mut self, first: &ProcRecord, out: &mut String) {
        let mut pid = first.tgid;
        let mut expected_start = 0u64;
        let now = boot_ns();
        let mut num = itoa::Buffer::new();
        for depth in 0..MAX_CHAIN_DEPTH {
            if depth > 0 {
                out.push(';');
            }
            let rec = if depth == 0 {
                Some(*first)
            } else {
                self.ancestor(pid, expected_start, now)
            };
            // A different start time means the pid was reused since.
            let rec = rec.filter(|r| same_start(r.start_ns, expected_start));
            out.push_str(num.format(pid));
            let Some(r) = rec else {
                out.push_str("|?|?");
                return;
            };
            out.push('|');
            push_comm(out, r.comm_bytes());
            out.push('|');
            out.push_str(self.users.name(r.uid));
            if pid == 1 || r.ppid == 0 || r.ppid == pid {
                return;
            }
            expected_start = r.parent_start_ns;
            pid = r.ppid;
        }
    }

    /// An ancestor's record, from the short-lived cache when it is the same
    /// process (same start time) and fresh.
    fn ancestor(&mut self, pid: u32, expected_start: u64, now: u64) -> Option<ProcRecord> {
        if let Some((r, at)) = self.ancestors.get(&pid)
            && same_start(r.start_ns, expected_start)
            && now.saturating_sub(*at) < ANCESTOR_TTL_NS
        {
            return Some(*r);
        }
        let r = match &mut self.backend {
            // The pid's current holder may be a newer process: then the
            // ancestor is the exited record of the same start time.
            Backend::Ebpf(s) => {
                self.lookups += 1;
                let r = s.lookup_started(pid, expected_start);
                if r.is_none() {
                    self.misses += 1;
                }
                r?
            }
            Backend::Procfs(_) => self.record(pid)?,
        };
        if self.ancestors.len() >= ANCESTOR_CACHE_MAX {
            self.ancestors.clear();
        }
        self.ancestors.insert(pid, (r, now));
        Some(r)
    }

    /// Starts tracking `name`: from now on, processes that exec it and all
    /// their descendants are marked. Processes that already exist are marked
    /// too if they or an ancestor currently run as `name`.
    pub fn track_command(&mut self, name: &str) -> Result<()> {
        if self.tracked.contains_key(name) {
            return Ok(());
        }
        let used: u64 = self.tracked.values().fold(0, |m, &b| m | 1 << b);
        let retired = match &self.backend {
            Backend::Ebpf(s) => s.retired,
            Backend::Procfs(_) => 0,
        };
        let bit = (0..MAX_TRACKED_COMMANDS)
            .find(|b| (used | retired) & (1 << b) == 0)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "at most {MAX_TRACKED_COMMANDS} commands can be tracked at once"
                ))
            })?;
        self.tracked.insert(name.to_string(), bit);
        let key = comm_key(name.as_bytes());
        let mask = self.mask_for_key(&key);
        if let Backend::Ebpf(s) = &mut self.backend {
            s.b.set_tracked_mask(key, mask)?;
            s.retro_tag(&key, 1 << bit);
        }
        Ok(())
    }

    /// Stops tracking `name` and clears its bit everywhere, so the bit can be
    /// reused for another command.
    pub fn untrack_command(&mut self, name: &str) -> Result<()> {
        let Some(bit) = self.tracked.remove(name) else {
            return Ok(());
        };
        let key = comm_key(name.as_bytes());
        let mask = self.mask_for_key(&key);
        if let Backend::Ebpf(s) = &mut self.backend {
            s.b.set_tracked_mask(key, mask)?;
            s.retire(bit)?;
        }
        Ok(())
    }

    /// Does the process of `rec` descend from (or is it) one that exec'd
    /// tracked command `name`? Like [`descends_from`](Self::descends_from)
    /// but without a second lookup of the process itself.
    pub fn record_descends_from(&mut self, rec: &ProcRecord, name: &str) -> bool {
        let Some(&bit) = self.tracked.get(name) else {
            return false;
        };
        match &self.backend {
            Backend::Ebpf(s) => s.tracked_bits(rec) & (1 << bit) != 0,
            Backend::Procfs(_) => self.descends_from(rec.tgid, name),
        }
    }

    /// Commands being tracked.
    pub fn tracked_commands(&self) -> impl Iterator<Item = &str> {
        self.tracked.keys().map(String::as_str)
    }

    /// Bits of every tracked name sharing this comm key (names that differ
    /// only past 15 bytes look the same to the kernel).
    fn mask_for_key(&self, key: &[u8; COMM_LEN]) -> u64 {
        self.tracked
            .iter()
            .filter(|(n, _)| &comm_key(n.as_bytes()) == key)
            .fold(0, |m, (_, &b)| m | 1 << b)
    }

    /// Does `tgid` descend from (or is it) a process that exec'd `name`?
    /// `name` must be tracked ([`track_command`](Self::track_command)).
    pub fn descends_from(&mut self, tgid: u32, name: &str) -> bool {
        let Some(&bit) = self.tracked.get(name) else {
            return false;
        };
        match self.backend {
            Backend::Ebpf(_) => {
                let Some(r) = self.record(tgid) else {
                    return false;
                };
                let Backend::Ebpf(s) = &self.backend else {
                    unreachable!()
                };
                s.tracked_bits(&r) & (1 << bit) != 0
            }
            Backend::Procfs(_) => {
                let key = comm_key(name.as_bytes());
                let mut pid = tgid;
                for _ in 0..MAX_CHAIN_DEPTH {
                    let Some(r) = self.record(pid) else {
                        return false;
                    };
                    if r.comm == key {
                        return true;
                    }
                    if pid == 1 || r.ppid == 0 || r.ppid == pid {
                        return false;
                    }
                    pid = r.ppid;
                }
                false
            }
        }
    }

    /// Collects exited processes whose exit is older than both the grace
    /// period and `drained_before_ns` (boot-clock ns up to which the caller
    /// has read every file event), from the queue the kernel's exit notes
    /// feed (no map walk). An exited process that still has children in the
    /// live map is kept, so their chains stay whole; it goes once they do.
    /// Returns how many records were deleted.
    pub fn collect_exited(&mut self, drained_before_ns: u64) -> usize {
        let Backend::Ebpf(s) = &mut self.backend else {
            return 0;
        };
        let now = boot_ns();
        let grace_cutoff = now.saturating_sub(self.exit_grace.as_nanos() as u64);
        s.collector.receive(&mut s.b.maps);
        // Reconcile the live map with /proc when exits were missed (the
        // kernel skipped a program run, or a fork found a record whose exit
        // was never seen) or when it doubled in size since the last time
        // (a leak of missed exits that nothing counted); never more than
        // once per RECONCILE_EVERY_NS.
        s.skipped = s.b.skipped_runs();
        let evidence = s.skipped + s.b.maps.counter(counter::EXIT_MISSED);
        let live = live_size(s);
        if (evidence > s.evidence_reconciled || live > 2 * s.live_reconciled + 1024)
            && now.saturating_sub(s.reconciled_at) >= RECONCILE_EVERY_NS
        {
            s.reconciled_at = now;
            let n = s.reconcile(now);
            s.evidence_reconciled = evidence;
            s.live_reconciled = live_size(s);
            if evidence > 0 || n > 0 {
                log::warn!(
                    "process tracker: {evidence} signs of missed exits so far; reconciled the \
                     live map with /proc ({n} records of gone processes moved out)"
                );
            }
        }
        let mut gone = Vec::new();
        let collected = s.collector.collect(
            &mut s.b.maps,
            drained_before_ns,
            grace_cutoff,
            now,
            |tgid, start| gone.push((tgid, start)),
        );
        for (tgid, start) in gone {
            s.forget(tgid, start);
        }
        collected
    }

    /// Entries in the process maps (eBPF: live + exited awaiting
    /// collection, counted, not walked) or in the cache (/proc).
    pub fn entries(&self) -> usize {
        match &self.backend {
            Backend::Ebpf(_) => {
                let z = self.sizes();
                (z.live + z.exited) as usize
            }
            Backend::Procfs(p) => p.cache.entry_count() as usize,
        }
    }

    /// Tests only: reconciles the live map with /proc now (the daemon does
    /// it when exits were missed); returns how many records moved out.
    #[doc(hidden)]
    pub fn reconcile_now(&mut self) -> usize {
        match &mut self.backend {
            Backend::Ebpf(s) => s.reconcile(boot_ns()),
            Backend::Procfs(_) => 0,
        }
    }

    /// The kernel counters (`fsmon_common::counter`), for tests and
    /// diagnostics.
    #[doc(hidden)]
    pub fn kernel_counters(&self) -> Vec<u64> {
        match &self.backend {
            Backend::Ebpf(s) => s.b.maps.all_counters().to_vec(),
            Backend::Procfs(_) => Vec::new(),
        }
    }

    /// Sizes of the eBPF maps (zero for the /proc tracker).
    pub fn sizes(&self) -> TrackerSizes {
        let Backend::Ebpf(s) = &self.backend else {
            return TrackerSizes::default();
        };
        let m = &s.b.maps;
        TrackerSizes {
            live: live_size(s),
            exited: s.collector.pending() as u64,
            capacity: m.capacity as u64,
        }
    }

    /// What the tracker could not keep, since start.
    pub fn losses(&self) -> TrackerLosses {
        let Backend::Ebpf(s) = &self.backend else {
            return TrackerLosses::default();
        };
        let c = s.b.maps.all_counters();
        TrackerLosses {
            live_insert_refused: c[counter::LIVE_INSERT_REFUSED as usize],
            exit_missed: c[counter::EXIT_MISSED as usize],
            tracepoint_skipped: s.skipped,
            exited_insert_refused: c[counter::EXITED_INSERT_REFUSED as usize],
            ring_full: c[counter::RING_FULL as usize],
            event_process_unknown: self.unknown_event_processes,
        }
    }
}

/// Records in the live map, from counts of inserts and removals.
fn live_size(s: &EbpfState) -> u64 {
    let m = &s.b.maps;
    let inserted = m.counter(counter::LIVE_INSERTED) + s.user_inserted;
    let removed = m.counter(counter::LIVE_REMOVED) + s.user_removed + s.collector.removed_live;
    inserted.saturating_sub(removed)
}

impl EbpfState {
    /// The maps' record for `tgid`: live first, then exited.
    fn get(&self, tgid: u32) -> Option<ProcRecord> {
        let m = &self.b.maps;
        m.live
            .get(&tgid, 0)
            .or_else(|_| m.exited.get(&tgid, 0))
            .ok()
    }

    /// The record of the process `tgid` that existed at `queued_before`,
    /// completed with what the daemon knows beside the map; `/proc` (and an
    /// insert) when the maps do not have it.
    fn lookup(&mut self, tgid: u32, queued_before: u64) -> Option<ProcRecord> {
        let m = &self.b.maps;
        let found = match m.live.get(&tgid, 0) {
            // Started after the event was read: the event is an earlier
            // holder's of this pid (kernel start times are exact; /proc ones
            // are rounded down, so never "later" by mistake).
            Ok(r) if r.start_ns > queued_before => m.exited.get(&tgid, 0).ok(),
            Ok(r) => Some(r),
            Err(_) => m.exited.get(&tgid, 0).ok(),
        };
        match found {
            Some(r) => Some(self.complete(r)),
            None if tgid != 0 => {
                // Not in the maps (older than the daemon and missed by
                // seeding, or refused when the map was full): /proc still
                // knows it if it runs.
                let (r, exited) = procfs::read_process_state(tgid)?;
                if r.start_ns > queued_before {
                    return None;
                }
                if !exited {
                    self.insert_missing(&r);
                }
                Some(r)
            }
            None => None,
        }
    }

    /// An ancestor's record with the expected start time (live, else the
    /// exited record of the same pid), `/proc` as a last resort.
    fn lookup_started(&mut self, pid: u32, expected_start: u64) -> Option<ProcRecord> {
        let m = &self.b.maps;
        let found = match m.live.get(&pid, 0) {
            Ok(r) if same_start(r.start_ns, expected_start) => Some(r),
            Ok(_) => m
                .exited
                .get(&pid, 0)
                .ok()
                .filter(|r| same_start(r.start_ns, expected_start)),
            Err(_) => m.exited.get(&pid, 0).ok(),
        };
        match found {
            Some(r) => Some(self.complete(r)),
            None => {
                let (r, exited) = procfs::read_process_state(pid)?;
                if !exited {
                    self.insert_missing(&r);
                }
                Some(r)
            }
        }
    }

    /// Fills in what a record made by exec before seeding lacks, from the
    /// daemon's own memory (read from /proc once).
    fn complete(&mut self, mut r: ProcRecord) -> ProcRecord {
        if r.start_ns != 0 || r.tgid == 0 {
            return r;
        }
        let known = match self.completed.get(&r.tgid) {
            Some(&k) => Some(k),
            None => procfs::read_process(r.tgid).map(|p| {
                let parent_start = self.get(p.ppid).map_or(0, |pr| pr.start_ns);
                let k = (p.ppid, p.start_ns, parent_start);
                self.completed.insert(r.tgid, k);
                k
            }),
        };
        if let Some((ppid, start_ns, parent_start_ns)) = known {
            r.ppid = ppid;
            r.start_ns = start_ns;
            r.parent_start_ns = parent_start_ns;
        }
        r
    }

    /// Inserts a record the live map does not have (never overwrites: the
    /// kernel owns records once they are in). A process that exits between
    /// our /proc read and the insert would stay forever: checked after.
    fn insert_missing(&mut self, r: &ProcRecord) -> bool {
        if self
            .b
            .maps
            .live
            .insert(r.tgid, *r, ebpf::BPF_NOEXIST)
            .is_err()
        {
            return false;
        }
        self.user_inserted += 1;
        let alive = procfs::read_process_state(r.tgid)
            .is_some_and(|(p, exited)| !exited && same_start(p.start_ns, r.start_ns));
        if !alive
            && let Ok(now) = self.b.maps.live.get(&r.tgid, 0)
            && now.exit_ns == 0
            && same_start(now.start_ns, r.start_ns)
            && self.b.maps.live.remove(&r.tgid).is_ok()
        {
            self.user_removed += 1;
        }
        true
    }

    /// After the kernel skipped exit programs: moves records of processes
    /// that are gone (not in `/proc`, or their pid is another process's) to
    /// the exited map and queues them for collection, as their exit would
    /// have. The one walk of the live map, and only when a skip was counted.
    fn reconcile(&mut self, now: u64) -> usize {
        let records: Vec<ProcRecord> = self
            .b
            .maps
            .live
            .iter()
            .filter_map(|r| r.ok())
            .map(|(_, r)| r)
            .filter(|r| r.exit_ns == 0 && r.start_ns != 0)
            .collect();
        let mut moved = 0;
        for mut r in records {
            let gone = match procfs::read_process(r.tgid) {
                None => true,
                Some(p) => !same_start(p.start_ns, r.start_ns),
            };
            // Re-read: the kernel may have recorded its exit meanwhile.
            let still = self
                .b
                .maps
                .live
                .get(&r.tgid, 0)
                .is_ok_and(|now| now.exit_ns == 0 && same_start(now.start_ns, r.start_ns));
            if !gone || !still {
                continue;
            }
            r.exit_ns = now;
            let _ = self.b.maps.exited.insert(r.tgid, r, ebpf::BPF_NOEXIST);
            if self.b.maps.live.remove(&r.tgid).is_ok() {
                self.user_removed += 1;
                moved += 1;
                self.collector.push(fsmon_common::ExitNote {
                    tgid: r.tgid,
                    kept_live: 0,
                    start_ns: r.start_ns,
                    exit_ns: now,
                });
            }
        }
        moved
    }

    /// Tracked bits of a record: the kernel's, plus those the daemon gave a
    /// process older than its tracking, minus untracked ones.
    fn tracked_bits(&self, r: &ProcRecord) -> u64 {
        let seeded = self
            .seeded
            .get(&r.tgid)
            .filter(|s| same_start(s.start_ns, r.start_ns))
            .map_or(0, |s| s.bits);
        (r.tracked | seeded) & !self.retired
    }

    /// Adds every process in `/proc` that the map does not know yet, with
    /// its child count. Runs after attach, so nothing that starts from now
    /// on is missed, and never overwrites what the kernel recorded.
    fn seed_from_proc(&mut self) -> usize {
        let mut seeded: HashMap<u32, ProcRecord> = HashMap::new();
        for pid in procfs::all_pids() {
            // Zombies have exited already: their exit was (or was not) seen,
            // and a live record of them would stay forever.
            if let Some((rec, false)) = procfs::read_process_state(pid) {
                seeded.insert(pid, rec);
            }
        }
        let starts: HashMap<u32, u64> = seeded.iter().map(|(&p, r)| (p, r.start_ns)).collect();
        let mut children: HashMap<u32, u64> = HashMap::new();
        for r in seeded.values() {
            *children.entry(r.ppid).or_default() += 1;
        }
        let mut added = 0;
        for (pid, mut rec) in seeded {
            rec.parent_start_ns = starts.get(&rec.ppid).copied().unwrap_or(0);
            rec.children = children.get(&pid).copied().unwrap_or(0);
            match self.get(pid) {
                None => {
                    if self.insert_missing(&rec) {
                        added += 1;
                    }
                }
                Some(known) if known.start_ns == 0 => {
                    self.completed
                        .insert(pid, (rec.ppid, rec.start_ns, rec.parent_start_ns));
                }
                Some(_) => {}
            }
        }
        added
    }

    /// Marks existing processes that run as `key`, or descend from one, with
    /// `bit`, in the daemon's own seeded map (the kernel reads it at fork, so
    /// their future children inherit the bit). New processes get the bit
    /// from the kernel at exec and fork; this covers those already there.
    fn retro_tag(&mut self, key: &[u8; COMM_LEN], bit: u64) {
        /// What two sources say about a process: the map (fork-time parent,
        /// comm as of the last exec the programs saw) and `/proc` (current
        /// parent, comm set at exec before the exec tracepoint runs).
        #[derive(Default)]
        struct Node {
            comms: Vec<[u8; COMM_LEN]>,
            parents: Vec<u32>,
            start_ns: u64,
            running: bool,
        }
        let mut nodes: HashMap<u32, Node> = HashMap::new();
        let raw: Vec<ProcRecord> = self
            .b
            .maps
            .live
            .iter()
            .filter_map(|r| r.ok())
            .map(|(_, v)| v)
            .collect();
        for r in raw.into_iter().map(|r| self.complete(r)) {
            let n = nodes.entry(r.tgid).or_default();
            n.comms.push(r.comm);
            n.parents.push(r.ppid);
            n.start_ns = r.start_ns;
            n.running |= r.exit_ns == 0;
        }
        // /proc as well: the programs' walk of a map that changes meanwhile
        // is no snapshot, and a process exec'ing right now may already show
        // its new name there while its exec tracepoint looked up the tracked
        // mask before it was set.
        for pid in procfs::all_pids() {
            if let Some((p, false)) = procfs::read_process_state(pid) {
                let n = nodes.entry(pid).or_default();
                n.comms.push(p.comm);
                n.parents.push(p.ppid);
                if n.start_ns == 0 {
                    n.start_ns = p.start_ns;
                }
                n.running = true;
            }
        }
        fn marked(
            pid: u32,
            key: &[u8; COMM_LEN],
            nodes: &HashMap<u32, Node>,
            memo: &mut HashMap<u32, bool>,
            depth: usize,
        ) -> bool {
            if let Some(&m) = memo.get(&pid) {
                return m;
            }
            memo.insert(pid, false); // cycle guard
            let m = match nodes.get(&pid) {
                None => false,
                Some(n) if n.comms.iter().any(|c| c == key) => true,
                Some(_) if depth >= MAX_CHAIN_DEPTH => false,
                Some(n) => n
                    .parents
                    .iter()
                    .filter(|&&pp| pp != 0 && pp != pid)
                    .any(|&pp| marked(pp, key, nodes, memo, depth + 1)),
            };
            memo.insert(pid, m);
            m
        }
        let mut memo: HashMap<u32, bool> = HashMap::new();
        let pids: Vec<u32> = nodes.keys().copied().collect();
        for pid in pids {
            let n = &nodes[&pid];
            if !n.running || !marked(pid, key, &nodes, &mut memo, 0) {
                continue;
            }
            let start_ns = n.start_ns;
            let entry = self.seeded.entry(pid).or_default();
            if !same_start(entry.start_ns, start_ns) {
                entry.bits = 0;
            }
            entry.start_ns = start_ns;
            entry.bits |= bit;
            let value = *entry;
            // The daemon is this map's only writer.
            let _ = self.b.maps.seeded.insert(pid, value, 0);
        }
    }

    /// Untracks `bit`: the programs stop propagating it at once, the daemon
    /// ignores it, and it becomes free for another command only once every
    /// record that carries it is collected (records are never rewritten).
    fn retire(&mut self, bit: u32) -> Result<()> {
        let mask = 1u64 << bit;
        self.retired |= mask;
        self.write_settings()?;
        let mut holders = HashSet::new();
        for m in [&self.b.maps.live, &self.b.maps.exited] {
            for (tgid, r) in m.iter().filter_map(|r| r.ok()) {
                if r.tracked & mask != 0 {
                    holders.insert(tgid);
                }
            }
        }
        let mut emptied = Vec::new();
        for (tgid, s) in self.seeded.iter_mut() {
            if s.bits & mask != 0 {
                s.bits &= !mask;
                if s.bits == 0 {
                    emptied.push(*tgid);
                } else {
                    let _ = self.b.maps.seeded.insert(*tgid, *s, 0);
                }
            }
        }
        for tgid in emptied {
            self.seeded.remove(&tgid);
            let _ = self.b.maps.seeded.remove(&tgid);
        }
        if holders.is_empty() {
            self.retired &= !mask;
            self.write_settings()?;
        } else {
            self.stale.insert(bit, holders);
        }
        Ok(())
    }

    fn write_settings(&mut self) -> Result<()> {
        let settings = Settings {
            retired_bits: self.retired,
        };
        self.b
            .maps
            .settings
            .set(0, settings, 0)
            .map_err(|e| Error::Ebpf(format!("{}: {e}", fsmon_common::SETTINGS_MAP)))
    }

    /// A process's record is gone for good: drop what the daemon kept
    /// beside it, and free retired bits nobody carries any more.
    fn forget(&mut self, tgid: u32, start_ns: u64) {
        if let Some(s) = self.seeded.get(&tgid)
            && same_start(s.start_ns, start_ns)
        {
            self.seeded.remove(&tgid);
            let _ = self.b.maps.seeded.remove(&tgid);
        }
        self.completed.remove(&tgid);
        if self.stale.is_empty() {
            return;
        }
        let mut freed = 0u64;
        self.stale.retain(|bit, holders| {
            holders.remove(&tgid);
            if holders.is_empty() {
                freed |= 1 << bit;
            }
            !holders.is_empty()
        });
        if freed != 0 {
            self.retired &= !freed;
            if let Err(e) = self.write_settings() {
                log::error!("{e}");
            }
        }
    }
}

impl ProcfsBackend {
    fn get(&self, tgid: u32) -> Option<ProcRecord> {
        if let Some(r) = self.cache.get(&tgid) {
            return Some(r);
        }
        let r = procfs::read_process(tgid)?;
        self.cache.insert(tgid, r);
        Some(r)
    }
}

/// Runs `<exe> __ebpf-loader`, which loads, attaches and pins the programs,
/// then takes the pins over. The loader's error, if any, is its stderr.
fn load_in_child(exe: &std::path::Path, cfg: &TrackerConfig) -> Result<EbpfBackend> {
    EbpfBackend::remove_stale_pins();
    let dir = ebpf::pin_dir();
    let _ = std::fs::remove_dir_all(&dir);
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("__ebpf-loader")
        .arg("--dir")
        .arg(&dir)
        .arg("--capacity")
        .arg(cfg.map_capacity.to_string());
    if cfg.debug {
        cmd.arg("--debug");
    }
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| Error::Ebpf(format!("starting the loader {}: {e}", exe.display())))?;
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(&dir);
        let msg = String::from_utf8_lossy(&out.stderr);
        let msg = msg
            .trim()
            .trim_start_matches("fsmon: ")
            .trim_start_matches("eBPF: ");
        return Err(Error::Ebpf(if msg.is_empty() {
            format!("the loader failed ({})", out.status)
        } else {
            msg.to_string()
        }));
    }
    EbpfBackend::take_pinned(&dir)
}

/// The `__ebpf-loader` side: load, attach, pin under `dir`, exit.
pub fn run_loader(dir: &std::path::Path, capacity: u32, debug: bool) -> Result<()> {
    EbpfBackend::load_and_pin(dir, capacity, debug)
}

/// `init_pid_ns`'s inode number (`PROC_PID_INIT_INO` in the kernel): what
/// `/proc/self/ns/pid` links to in the initial pid namespace.
const INITIAL_PID_NS_INO: u64 = 0xEFFF_FFFC;

/// The eBPF map is keyed by host pids and fanotify reports pids as seen from
/// the reader's namespace: in a child pid namespace they would not match.
/// fsmon does not translate; it refuses to start.
fn check_initial_pid_namespace() -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let ino = match std::fs::metadata("/proc/self/ns/pid") {
        Ok(m) => m.ino(),
        // No /proc or no namespaces: nothing to compare with.
        Err(_) => return Ok(()),
    };
    if ino != INITIAL_PID_NS_INO {
        return Err(Error::invalid(format!(
            "the daemon must run in the initial pid namespace (this one is pid:[{ino}]): \
             its process tracker is keyed by host pids"
        )));
    }
    Ok(())
}

/// Appends a comm, replacing bytes that would break the chain format.
fn push_comm(out: &mut String, comm: &[u8]) {
    match std::str::from_utf8(comm) {
        Ok(s) if !s.contains(['|', ';']) => out.push_str(s),
        _ => {
            for ch in String::from_utf8_lossy(comm).chars() {
                out.push(if ch == '|' || ch == ';' { '_' } else { ch });
            }
        }
    }
}

/// Now on the boot clock, the clock of `ProcRecord` times.
pub fn boot_ns() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .expect("CLOCK_BOOTTIME is always available on Linux");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}
