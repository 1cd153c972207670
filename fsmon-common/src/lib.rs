//! `#[repr(C)]` types and constants shared by the eBPF programs (`fsmon-ebpf`)
//! and the daemon (`fsmon`). Everything here must stay `no_std` and
//! layout-stable: both sides read the same bytes.
#![no_std]

/// Length of a kernel task name (`TASK_COMM_LEN`), NUL padded.
pub const COMM_LEN: usize = 16;

/// Name of the live-process map: tgid -> [`ProcRecord`], a plain hash.
/// Holds every running process, and exited ones while a child of theirs is
/// still in it (so chains stay whole). Nothing evicts from it: only the
/// kernel's exit path (and the daemon's collection of records the kernel
/// marked exited) removes records. A full map refuses inserts, which the
/// kernel counts ([`counter::LIVE_INSERT_REFUSED`]).
pub const LIVE_MAP: &str = "FSMON_LIVE";
/// Name of the exited-process map: tgid -> [`ProcRecord`], an LRU hash.
/// A process moves here at exit (or when its last child leaves the live
/// map); the daemon deletes it once the events queued before the exit are
/// read and the grace period has passed. Under pressure the oldest give way.
pub const EXITED_MAP: &str = "FSMON_EXITED";
/// Name of the tracked-command map: comm (NUL padded) -> bit mask.
pub const TRACKED_MAP: &str = "FSMON_TRACKED";
/// Name of the map of tracked bits the daemon adds for processes that were
/// already running when their command was tracked: tgid -> [`SeededBits`].
/// Written only by the daemon; the fork program reads it so children
/// inherit the bits.
pub const SEEDED_MAP: &str = "FSMON_SEEDED";
/// Name of the one-slot array of daemon settings the programs read
/// ([`Settings`]). Written only by the daemon.
pub const SETTINGS_MAP: &str = "FSMON_SETTINGS";
/// Name of the per-CPU array of counters, indexed by [`counter`].
pub const COUNTERS_MAP: &str = "FSMON_COUNTERS";
/// Name of the ring buffer of [`ExitNote`]s (kernel -> daemon).
pub const EXITS_RING: &str = "FSMON_EXITS";
/// Name of the map that tells `sched_process_fork` which children are
/// processes (not threads): child pid -> 1, filled by `task_newtask`.
pub const NEW_PROCS_MAP: &str = "FSMON_NEW_PROCS";
/// Default capacity of [`LIVE_MAP`] and [`EXITED_MAP`] (each); overridable
/// at load time.
pub const DEFAULT_PROC_MAP_CAPACITY: u32 = 65_536;
/// Default size of [`EXITS_RING`] in bytes (a power of two; the daemon sets
/// it from the capacity at load). Each note takes 32 bytes with its header:
/// 1 MiB holds 32,768 exits between two reads.
pub const DEFAULT_EXITS_RING_BYTES: u32 = 1024 * 1024;
/// At most this many commands can be tracked at once (one bit each).
pub const MAX_TRACKED_COMMANDS: u32 = 64;

/// Indices of [`COUNTERS_MAP`]. Every one only grows; the daemon sums the
/// per-CPU values.
pub mod counter {
    /// New keys the kernel inserted into the live map.
    pub const LIVE_INSERTED: u32 = 0;
    /// Keys the kernel removed from the live map.
    pub const LIVE_REMOVED: u32 = 1;
    /// Inserts the live map refused (full): a process fsmon will not know.
    pub const LIVE_INSERT_REFUSED: u32 = 2;
    /// A fork found, under the child's pid, a record whose process never
    /// exited as far as the programs saw: its exit was missed (the kernel
    /// skips tracepoint programs on a CPU where a `bpf()` map syscall is in
    /// progress; see `recursion_misses`), and the fork replaces it. Nothing
    /// else ever removes a record of a running process: the live map is a
    /// plain hash, it evicts nothing.
    pub const EXIT_MISSED: u32 = 3;
    /// Moves into the exited map that failed.
    pub const EXITED_INSERT_REFUSED: u32 = 4;
    /// Exit notes the ring buffer had no room for (the record then waits in
    /// the exited map until the LRU lets it go).
    pub const RING_FULL: u32 = 5;
    /// Processes that exited (notes sent).
    pub const EXITS: u32 = 6;
    /// Processes that exited without a record in the live map (older than
    /// the tracker and not seeded, or never recorded).
    pub const EXITS_UNRECORDED: u32 = 7;
    /// Fork tracepoint runs for a process child (not a thread).
    pub const FORKS: u32 = 8;
    pub const COUNT: u32 = 9;
}

/// What the daemon tells the programs ([`SETTINGS_MAP`], index 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// Tracked-command bits that were untracked and may still be set on
    /// records: the programs never propagate them to new records, the
    /// daemon ignores them.
    pub retired_bits: u64,
}

/// Tracked bits the daemon adds to a process that was running before its
/// command was tracked ([`SEEDED_MAP`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeededBits {
    /// The process's start time, so a reused pid does not inherit them.
    pub start_ns: u64,
    pub bits: u64,
}

/// A process ended ([`EXITS_RING`]): the daemon queues it for collection.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitNote {
    pub tgid: u32,
    /// 1 when the record stayed in the live map (it has children there).
    pub kept_live: u32,
    pub start_ns: u64,
    pub exit_ns: u64,
}

/// The tick of `/proc/<pid>/stat` start times (USER_HZ is 100 on every
/// Linux ABI).
pub const PROC_TICK_NS: u64 = 10_000_000;

/// Do two start times name the same process? Start times come from two
/// clocks: the kernel's `bpf_ktime_get_boot_ns` at fork (ns) and `/proc`
/// (clock ticks since boot, converted to ns). Both are compared in ticks,
/// the coarser unit; the fork tracepoint and the kernel's own start stamp
/// may fall on either side of a tick boundary, so one tick apart is the
/// same. A pid cannot be reused within 20 ms (the kernel cycles through the
/// whole pid space first). 0 means unknown and matches anything.
pub fn same_start(a: u64, b: u64) -> bool {
    a == 0 || b == 0 || (a / PROC_TICK_NS).abs_diff(b / PROC_TICK_NS) <= 1
}

/// `CLONE_THREAD` from `<linux/sched.h>`.
pub const CLONE_THREAD: u64 = 0x0001_0000;

/// Names of the globals the daemon patches before loading, so the programs
/// never assume one kernel's tracepoint layout. Offsets are read from
/// tracefs `format` files at load time. [`OFFSET_ABSENT`] marks a field this
/// kernel does not have.
pub mod globals {
    pub const FORK_CHILD_PID: &str = "FORK_CHILD_PID_OFF";
    pub const NEWTASK_PID: &str = "NEWTASK_PID_OFF";
    pub const NEWTASK_CLONE_FLAGS: &str = "NEWTASK_CLONE_FLAGS_OFF";
    pub const EXIT_GROUP_DEAD: &str = "EXIT_GROUP_DEAD_OFF";
    pub const DEBUG: &str = "FSMON_DEBUG";
}
pub const OFFSET_ABSENT: u32 = u32::MAX;

/// What fsmon knows about one process (thread group), keyed by tgid.
///
/// Times are `CLOCK_BOOTTIME` nanoseconds. Records the kernel creates at
/// fork carry `bpf_ktime_get_boot_ns`; records the daemon seeds from `/proc`
/// carry clock ticks converted to ns. Compare start times only with
/// [`same_start`].
///
/// Who writes what (one writer per field, so no stale copy overwrites):
/// - The kernel programs own every record once it is in a map: fork
///   creates it, exec updates comm/uid/gid/exec_ns/cgroup_id/tracked, exit
///   stamps `exit_ns` and moves it to the exited map, and a child's fork
///   and departure update `children`.
/// - The daemon only ever *inserts* a record that is not there
///   (`BPF_NOEXIST`: seeding from `/proc`, a process the map missed) and
///   *deletes* records at collection. It never writes a record back; what
///   it adds (tracked bits of processes older than their tracking, the
///   ppid of a process that exec'd before seeding) lives in its own map or
///   its own memory.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcRecord {
    /// Thread-group id (the pid users see).
    pub tgid: u32,
    /// Parent's tgid at fork time. Kept when the parent exits, so chains
    /// survive reparenting. 0 when unknown.
    pub ppid: u32,
    /// Real uid, as of fork or the last exec.
    pub uid: u32,
    /// Real gid, as of fork or the last exec.
    pub gid: u32,
    /// Task name (comm), updated at exec. NUL padded, not always terminated.
    pub comm: [u8; COMM_LEN],
    /// When the process was forked. With `tgid`, identifies it across pid reuse.
    pub start_ns: u64,
    /// The parent's `start_ns` when known (0 otherwise): a chain walk stops
    /// at a parent whose record has a different start time (pid reused).
    pub parent_start_ns: u64,
    /// When the last thread exited; 0 while the process runs.
    pub exit_ns: u64,
    /// When the process last exec'd; 0 if never seen exec'ing.
    pub exec_ns: u64,
    /// cgroup v2 id at fork/exec (the cgroup directory's inode number).
    pub cgroup_id: u64,
    /// Bit `i` set: this process or an ancestor exec'd tracked command `i`.
    /// Inherited at fork, OR-ed at exec. Bits the daemon adds for processes
    /// older than the tracking live in [`SEEDED_MAP`], not here.
    pub tracked: u64,
    /// Records in the live map whose `ppid` is this process (kept by the
    /// kernel at fork and when a child leaves the live map). An exited
    /// process stays in the live map while this is not 0.
    pub children: u64,
}

impl ProcRecord {
    /// The comm as bytes, without the NUL padding.
    pub fn comm_bytes(&self) -> &[u8] {
        let end = self.comm.iter().position(|&b| b == 0).unwrap_or(COMM_LEN);
        &self.comm[..end]
    }
}

/// Pads a command name the way the kernel stores comm: at most 15 bytes,
/// NUL padded to 16. Longer names are truncated, as the kernel does.
pub fn comm_key(name: &[u8]) -> [u8; COMM_LEN] {
    let mut key = [0u8; COMM_LEN];
    let n = if name.len() < COMM_LEN {
        name.len()
    } else {
        COMM_LEN - 1
    };
    let mut i = 0;
    while i < n {
        key[i] = name[i];
        i += 1;
    }
    key
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: ProcRecord is repr(C), Copy, and every bit pattern is valid.
    unsafe impl aya::Pod for super::ProcRecord {}
    // SAFETY: as above: repr(C), Copy, any bit pattern valid.
    unsafe impl aya::Pod for super::SeededBits {}
    unsafe impl aya::Pod for super::Settings {}
}
