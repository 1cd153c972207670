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
pub mod cgroup;
mod ebpf;
pub mod procfs;
pub mod tracefs;
pub mod users;

use std::{
    collections::{HashMap, HashSet},
    fmt::Write as _,
    time::Duration,
};

use fsmon_common::{COMM_LEN, MAX_TRACKED_COMMANDS, ProcRecord, comm_key};
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
    /// Capacity of the eBPF process map (an LRU: never refuses an insert).
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
    Ebpf(EbpfBackend),
    Procfs(ProcfsBackend),
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
                None => EbpfBackend::load(cfg.map_capacity, cfg.debug),
            };
            match loaded {
                Ok(mut b) => {
                    b.seed_from_proc();
                    (Backend::Ebpf(b), None)
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
            Backend::Ebpf(b) => Some(b.take_logger()),
            Backend::Procfs(_) => None,
        }
    }

    /// What is known about process `tgid`, alive or recently exited.
    pub fn record(&mut self, tgid: u32) -> Option<ProcRecord> {
        self.lookups += 1;
        let found = match &mut self.backend {
            Backend::Ebpf(b) => match b.get(tgid) {
                // Created by exec before we seeded it: complete it from /proc.
                Some(r) if r.start_ns == 0 && tgid != 0 => Some(complete_from_proc(b, r)),
                Some(r) => Some(r),
                // Not in the map (older than the daemon and missed by seeding,
                // or evicted): /proc still knows it if it is alive.
                None => procfs::read_process(tgid).inspect(|r| {
                    let _ = b.insert(r, true);
                }),
            },
            Backend::Procfs(p) => p.get(tgid),
        };
        if found.is_none() {
            self.misses += 1;
        }
        found
    }

    /// The map's entry for `tgid`, without the `/proc` fallback of
    /// [`record`](Self::record) (eBPF backend; `None` otherwise).
    pub fn peek(&self, tgid: u32) -> Option<ProcRecord> {
        match &self.backend {
            Backend::Ebpf(b) => b.get(tgid),
            Backend::Procfs(_) => None,
        }
    }

    /// Benchmarks only: forgets cached ancestors (to measure cold chains).
    #[doc(hidden)]
    pub fn forget_ancestors(&mut self) {
        self.ancestors.clear();
    }

    /// Benchmarks only: writes a synthetic record into the eBPF map.
    #[doc(hidden)]
    pub fn insert_for_bench(&mut self, rec: &ProcRecord) -> bool {
        match &mut self.backend {
            Backend::Ebpf(b) => b.insert(rec, false).is_ok(),
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
            let rec = rec.filter(|r| {
                // A different start time means the pid was reused since.
                expected_start == 0 || r.start_ns == 0 || r.start_ns == expected_start
            });
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
        if let Some((r, at)) = self.ancestors.get(&pid) {
            let same = expected_start == 0 || r.start_ns == expected_start;
            if same && now.saturating_sub(*at) < ANCESTOR_TTL_NS {
                return Some(*r);
            }
        }
        let r = self.record(pid)?;
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
        let bit = (0..MAX_TRACKED_COMMANDS)
            .find(|b| used & (1 << b) == 0)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "at most {MAX_TRACKED_COMMANDS} commands can be tracked at once"
                ))
            })?;
        self.tracked.insert(name.to_string(), bit);
        let key = comm_key(name.as_bytes());
        let mask = self.mask_for_key(&key);
        if let Backend::Ebpf(b) = &mut self.backend {
            b.set_tracked_mask(key, mask)?;
            retro_tag(b, &key, 1 << bit);
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
        if let Backend::Ebpf(b) = &mut self.backend {
            b.set_tracked_mask(key, mask)?;
            for mut r in b.snapshot() {
                if r.tracked & (1 << bit) != 0 {
                    r.tracked &= !(1 << bit);
                    let _ = b.update_existing(&r);
                }
            }
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
        match self.backend {
            Backend::Ebpf(_) => rec.tracked & (1 << bit) != 0,
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
            Backend::Ebpf(_) => self
                .record(tgid)
                .is_some_and(|r| r.tracked & (1 << bit) != 0),
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

    /// Deletes exited processes whose exit is older than both the grace
    /// period and `drained_before_ns` (boot-clock ns up to which the caller
    /// has read every file event). An exited process that still has children
    /// in the map is kept, so their chains stay whole; it goes once they do.
    /// Returns how many entries were deleted.
    pub fn collect_exited(&mut self, drained_before_ns: u64) -> usize {
        let Backend::Ebpf(b) = &mut self.backend else {
            return 0;
        };
        let grace_cutoff = boot_ns().saturating_sub(self.exit_grace.as_nanos() as u64);
        let cutoff = grace_cutoff.min(drained_before_ns);
        let all = b.snapshot();
        let mut children: HashMap<u32, u32> = HashMap::new();
        for r in &all {
            *children.entry(r.ppid).or_default() += 1;
        }
        let collectable: HashMap<u32, &ProcRecord> = all
            .iter()
            .filter(|r| r.exit_ns != 0 && r.exit_ns < cutoff)
            .map(|r| (r.tgid, r))
            .collect();
        // Leaves first; a parent becomes a leaf when its last child goes.
        let mut queue: Vec<u32> = collectable
            .keys()
            .copied()
            .filter(|p| children.get(p).copied().unwrap_or(0) == 0)
            .collect();
        let mut removed = HashSet::new();
        while let Some(pid) = queue.pop() {
            if !removed.insert(pid) {
                continue;
            }
            b.remove(pid);
            let ppid = collectable[&pid].ppid;
            if let Some(n) = children.get_mut(&ppid) {
                *n -= 1;
                if *n == 0 && collectable.contains_key(&ppid) {
                    queue.push(ppid);
                }
            }
        }
        removed.len()
    }

    /// Entries in the process map (eBPF) or cache (/proc).
    pub fn entries(&self) -> usize {
        match &self.backend {
            Backend::Ebpf(b) => b.len(),
            Backend::Procfs(p) => p.cache.entry_count() as usize,
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

fn complete_from_proc(b: &mut EbpfBackend, mut r: ProcRecord) -> ProcRecord {
    if let Some(p) = procfs::read_process(r.tgid) {
        r.ppid = p.ppid;
        r.start_ns = p.start_ns;
        r.parent_start_ns = b.get(p.ppid).map_or(0, |pr| pr.start_ns);
        let _ = b.update_existing(&r);
    }
    r
}

/// Marks existing processes that run as `key`, or descend from one, with
/// `bit`. New processes get it from the kernel at exec and fork; this covers
/// those that were already there. A process the kernel updates between our
/// read and our write may lose that update: the window is microseconds and
/// only at `track_command` time.
fn retro_tag(b: &mut EbpfBackend, key: &[u8; COMM_LEN], bit: u64) {
    let all = b.snapshot();
    let by_pid: HashMap<u32, &ProcRecord> = all.iter().map(|r| (r.tgid, r)).collect();
    let mut memo: HashMap<u32, bool> = HashMap::new();
    fn marked(
        pid: u32,
        key: &[u8; COMM_LEN],
        by_pid: &HashMap<u32, &ProcRecord>,
        memo: &mut HashMap<u32, bool>,
        depth: usize,
    ) -> bool {
        if let Some(&m) = memo.get(&pid) {
            return m;
        }
        let m = match by_pid.get(&pid) {
            None => false,
            Some(r) if &r.comm == key => true,
            Some(r) if r.ppid == 0 || r.ppid == pid || depth >= MAX_CHAIN_DEPTH => false,
            Some(r) => marked(r.ppid, key, by_pid, memo, depth + 1),
        };
        memo.insert(pid, m);
        m
    }
    for r in &all {
        if r.tracked & bit == 0
            && marked(r.tgid, key, &by_pid, &mut memo, 0)
            && let Some(mut fresh) = b.get(r.tgid)
        {
            fresh.tracked |= bit;
            let _ = b.update_existing(&fresh);
        }
    }
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
