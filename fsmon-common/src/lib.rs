//! `#[repr(C)]` types and constants shared by the eBPF programs (`fsmon-ebpf`)
//! and the daemon (`fsmon`). Everything here must stay `no_std` and
//! layout-stable: both sides read the same bytes.
#![no_std]

/// Length of a kernel task name (`TASK_COMM_LEN`), NUL padded.
pub const COMM_LEN: usize = 16;

/// Name of the process map: tgid -> [`ProcRecord`] (an LRU hash).
pub const PROC_MAP: &str = "FSMON_PROCS";
/// Name of the tracked-command map: comm (NUL padded) -> bit mask.
pub const TRACKED_MAP: &str = "FSMON_TRACKED";
/// Name of the map that tells `sched_process_fork` which children are
/// processes (not threads): child pid -> 1, filled by `task_newtask`.
pub const NEW_PROCS_MAP: &str = "FSMON_NEW_PROCS";
/// Default capacity of [`PROC_MAP`]; overridable at load time.
pub const DEFAULT_PROC_MAP_CAPACITY: u32 = 65_536;
/// At most this many commands can be tracked at once (one bit each).
pub const MAX_TRACKED_COMMANDS: u32 = 64;

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
/// Times are `CLOCK_BOOTTIME` nanoseconds (`bpf_ktime_get_boot_ns`), the clock
/// `/proc/<pid>/stat` start times are measured on, so seeded and traced
/// records compare directly.
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
    /// Inherited at fork, OR-ed at exec.
    pub tracked: u64,
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
}
