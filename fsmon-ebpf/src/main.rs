//! fsmon's process tracker: keeps a map tgid -> ProcRecord up to date from the
//! scheduler's fork, exec and exit tracepoints, so the daemon can attribute a
//! file event to a process even after that process has exited.
//!
//! Exit does not delete: it stamps `exit_ns`, and the daemon collects the entry
//! once it has drained every fanotify event that may name it.
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_uid_gid, bpf_ktime_get_boot_ns,
    },
    macros::{map, tracepoint},
    maps::{HashMap, LruHashMap},
    programs::TracePointContext,
};
use aya_log_ebpf::debug;
use fsmon_common::{
    ProcRecord, CLONE_THREAD, COMM_LEN, DEFAULT_PROC_MAP_CAPACITY, MAX_TRACKED_COMMANDS,
    OFFSET_ABSENT,
};

// Tracepoint field offsets, patched by the daemon at load time from tracefs
// `format` files (they differ between kernels). The values below are only
// what 6.18 uses; the loader always overrides them.
#[no_mangle]
static FORK_CHILD_PID_OFF: u32 = 20;
#[no_mangle]
static NEWTASK_PID_OFF: u32 = 8;
#[no_mangle]
static NEWTASK_CLONE_FLAGS_OFF: u32 = 32;
#[no_mangle]
static EXIT_GROUP_DEAD_OFF: u32 = 32;
/// 1 when the daemon runs with --debug: emit aya-log messages.
#[no_mangle]
static FSMON_DEBUG: u32 = 0;

/// tgid -> what we know about the process. An LRU so it can never fill and
/// refuse an insert; capacity set at load time.
#[map]
static FSMON_PROCS: LruHashMap<u32, ProcRecord> =
    LruHashMap::with_max_entries(DEFAULT_PROC_MAP_CAPACITY, 0);

/// comm -> bit mask of tracked-command slots, written by the daemon.
#[map]
static FSMON_TRACKED: HashMap<[u8; COMM_LEN], u64> =
    HashMap::with_max_entries(MAX_TRACKED_COMMANDS, 0);

/// Children that are processes, not threads: set by task_newtask (which sees
/// clone_flags), consumed by sched_process_fork (which does not).
#[map]
static FSMON_NEW_PROCS: LruHashMap<u32, u8> = LruHashMap::with_max_entries(8192, 0);

#[inline(always)]
fn global(v: &'static u32) -> u32 {
    // Volatile so the compiler cannot fold the default value in: the loader
    // rewrites it in .rodata before the program is loaded.
    unsafe { core::ptr::read_volatile(v) }
}

#[inline(always)]
fn debug_on() -> bool {
    global(&FSMON_DEBUG) != 0
}

#[tracepoint]
pub fn fsmon_newtask(ctx: TracePointContext) -> u32 {
    let flags_off = global(&NEWTASK_CLONE_FLAGS_OFF);
    let pid_off = global(&NEWTASK_PID_OFF);
    if flags_off == OFFSET_ABSENT || pid_off == OFFSET_ABSENT {
        return 0;
    }
    let Ok(flags) = (unsafe { ctx.read_at::<u64>(flags_off as usize) }) else {
        return 0;
    };
    if flags & CLONE_THREAD != 0 {
        return 0; // a thread: its thread group already has its entry
    }
    let Ok(pid) = (unsafe { ctx.read_at::<i32>(pid_off as usize) }) else {
        return 0;
    };
    let _ = FSMON_NEW_PROCS.insert(&(pid as u32), &1, 0);
    0
}

#[tracepoint]
pub fn fsmon_fork(ctx: TracePointContext) -> u32 {
    let Ok(child) = (unsafe { ctx.read_at::<i32>(global(&FORK_CHILD_PID_OFF) as usize) }) else {
        return 0;
    };
    let child = child as u32;
    // Without task_newtask we cannot tell threads apart; then every child is
    // recorded (threads cost entries but attribution stays right).
    if global(&NEWTASK_PID_OFF) != OFFSET_ABSENT {
        if unsafe { FSMON_NEW_PROCS.get(&child) }.is_none() {
            return 0;
        }
        let _ = FSMON_NEW_PROCS.remove(&child);
    }
    let parent = (bpf_get_current_pid_tgid() >> 32) as u32;
    let ids = bpf_get_current_uid_gid();
    let (parent_start_ns, tracked) = match unsafe { FSMON_PROCS.get(&parent) } {
        Some(p) => (p.start_ns, p.tracked),
        None => (0, 0),
    };
    let record = ProcRecord {
        tgid: child,
        ppid: parent,
        uid: ids as u32,
        gid: (ids >> 32) as u32,
        comm: bpf_get_current_comm().unwrap_or([0; COMM_LEN]),
        start_ns: unsafe { bpf_ktime_get_boot_ns() },
        parent_start_ns,
        exit_ns: 0,
        exec_ns: 0,
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        tracked,
    };
    let _ = FSMON_PROCS.insert(&child, &record, 0);
    if debug_on() {
        debug!(&ctx, "fork {} -> {}", parent, child);
    }
    0
}

#[tracepoint]
pub fn fsmon_exec(ctx: TracePointContext) -> u32 {
    // After exec the current task is the thread-group leader: tgid is the pid.
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let comm = bpf_get_current_comm().unwrap_or([0; COMM_LEN]);
    let bits = unsafe { FSMON_TRACKED.get(&comm) }.copied().unwrap_or(0);
    let ids = bpf_get_current_uid_gid();
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    match FSMON_PROCS.get_ptr_mut(&tgid) {
        Some(p) => unsafe {
            (*p).comm = comm;
            (*p).uid = ids as u32;
            (*p).gid = (ids >> 32) as u32;
            (*p).exec_ns = now;
            (*p).cgroup_id = cgroup_id;
            (*p).tracked |= bits;
        },
        None => {
            // A process that forked before we attached and that the daemon has
            // not seeded yet: ppid and start time unknown (0); the daemon's
            // /proc seeding fills them in.
            let record = ProcRecord {
                tgid,
                ppid: 0,
                uid: ids as u32,
                gid: (ids >> 32) as u32,
                comm,
                start_ns: 0,
                parent_start_ns: 0,
                exit_ns: 0,
                exec_ns: now,
                cgroup_id,
                tracked: bits,
            };
            let _ = FSMON_PROCS.insert(&tgid, &record, 0);
        }
    }
    if debug_on() {
        debug!(&ctx, "exec {} tracked={}", tgid, bits);
    }
    0
}

#[tracepoint]
pub fn fsmon_exit(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (pid, tgid) = (pid_tgid as u32, (pid_tgid >> 32) as u32);
    // sched_process_exit fires once per thread; only the last one ends the
    // process. Kernels without `group_dead` fall back to "the leader exits".
    let off = global(&EXIT_GROUP_DEAD_OFF);
    let group_dead = if off == OFFSET_ABSENT {
        pid == tgid
    } else {
        matches!(unsafe { ctx.read_at::<u8>(off as usize) }, Ok(v) if v != 0)
    };
    if !group_dead {
        return 0;
    }
    if let Some(p) = FSMON_PROCS.get_ptr_mut(&tgid) {
        unsafe { (*p).exit_ns = bpf_ktime_get_boot_ns() };
    }
    if debug_on() {
        debug!(&ctx, "exit {}", tgid);
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 4] = *b"GPL\0";

// Keep the bound visible to readers of the map definitions above.
const _: () = assert!(MAX_TRACKED_COMMANDS <= 64);
