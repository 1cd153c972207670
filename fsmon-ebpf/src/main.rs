//! fsmon's process tracker: keeps a record of every process, from the
//! scheduler's fork, exec and exit tracepoints, so the daemon can attribute a
//! file event to a process even after that process has exited.
//!
//! Two maps, so that no running process is ever forgotten under churn:
//! - `FSMON_LIVE`, a plain hash: every running process, and an exited one
//!   while a child of it is still there (its `children` count is not 0), so
//!   chains stay whole. Nothing evicts from it; a full map refuses an insert,
//!   which is counted.
//! - `FSMON_EXITED`, an LRU hash: a process moves there when it exits (or,
//!   if it still had children, when its last child leaves the live map).
//!   Under pressure the oldest exited records give way.
//!
//! Every exit is announced on the `FSMON_EXITS` ring buffer; the daemon
//! collects the record once the events queued before the exit have been read
//! and the grace period has passed. Nothing walks the maps.
//!
//! Who writes what is written down once, on `ProcRecord` (fsmon-common).
#![no_std]
#![no_main]
#![feature(asm_experimental_arch)]

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_uid_gid, bpf_ktime_get_boot_ns,
    },
    macros::{map, tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::TracePointContext,
};
use aya_log_ebpf::debug;
use fsmon_common::{
    counter, same_start, ExitNote, ProcRecord, SeededBits, Settings, CLONE_THREAD, COMM_LEN,
    DEFAULT_EXITS_RING_BYTES, DEFAULT_PROC_MAP_CAPACITY, MAX_TRACKED_COMMANDS, OFFSET_ABSENT,
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

/// Running processes (and exited ancestors of records still here).
#[map]
static FSMON_LIVE: HashMap<u32, ProcRecord> =
    HashMap::with_max_entries(DEFAULT_PROC_MAP_CAPACITY, 0);

/// Exited processes awaiting collection; the oldest give way under pressure.
#[map]
static FSMON_EXITED: LruHashMap<u32, ProcRecord> =
    LruHashMap::with_max_entries(DEFAULT_PROC_MAP_CAPACITY, 0);

/// comm -> bit mask of tracked-command slots, written by the daemon.
#[map]
static FSMON_TRACKED: HashMap<[u8; COMM_LEN], u64> =
    HashMap::with_max_entries(MAX_TRACKED_COMMANDS, 0);

/// tgid -> tracked bits the daemon gave a process that was running before
/// its command was tracked. Written by the daemon only; read at fork. Not
/// preallocated (BPF_F_NO_PREALLOC): it is usually near empty, and only the
/// daemon inserts, so its memory follows its use.
#[map]
static FSMON_SEEDED: HashMap<u32, SeededBits> =
    HashMap::with_max_entries(DEFAULT_PROC_MAP_CAPACITY, BPF_F_NO_PREALLOC);

/// Daemon settings (index 0), written by the daemon only.
#[map]
static FSMON_SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);

/// Counters, indexed by `fsmon_common::counter`.
#[map]
static FSMON_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// One note per exit, for the daemon's collection queue.
#[map]
static FSMON_EXITS: RingBuf = RingBuf::with_byte_size(DEFAULT_EXITS_RING_BYTES, 0);

/// Children that are processes, not threads: set by task_newtask (which sees
/// clone_flags), consumed by sched_process_fork (which does not).
#[map]
static FSMON_NEW_PROCS: LruHashMap<u32, u8> = LruHashMap::with_max_entries(8192, 0);

/// How far up an exit may move exited ancestors out of the live map in one
/// go (each level is a parent whose last child just left). Deeper chains of
/// exited ancestors are finished by the daemon's collection.
const MAX_CASCADE: usize = 8;

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

#[inline(always)]
fn count(index: u32) {
    if let Some(c) = FSMON_COUNTERS.get_ptr_mut(index) {
        // Per-CPU: no other CPU writes this slot.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
fn retired_bits() -> u64 {
    FSMON_SETTINGS.get(0).map_or(0, |s| s.retired_bits)
}

/// Adds `delta` to a record's child count. Atomic (BPF_XADD): children on
/// several CPUs fork and exit at once. The add returns nothing (a fetching
/// add needs BPF v3 atomics); callers re-read the field.
#[inline(always)]
fn add_children(p: *mut ProcRecord, delta: u64) {
    unsafe {
        let field = core::ptr::addr_of_mut!((*p).children);
        core::arch::asm!(
            "lock *(u64 *)({0} + 0) += {1}",
            in(reg) field,
            in(reg) delta,
        );
    }
}

/// A child count read back; a count that went below zero (a child the
/// kernel never saw fork, e.g. one the daemon seeded) reads as 0.
#[inline(always)]
fn children_of(p: *const ProcRecord) -> u64 {
    let n = unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*p).children)) };
    if n > 1 << 30 {
        0
    } else {
        n
    }
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
    count(counter::FORKS);
    let parent = (bpf_get_current_pid_tgid() >> 32) as u32;
    let ids = bpf_get_current_uid_gid();
    let (parent_start_ns, mut tracked) = match unsafe { FSMON_LIVE.get(&parent) } {
        Some(p) => (p.start_ns, p.tracked),
        None => (0, 0),
    };
    if let Some(s) = unsafe { FSMON_SEEDED.get(&parent) } {
        if same_start(s.start_ns, parent_start_ns) {
            tracked |= s.bits;
        }
    }
    tracked &= !retired_bits();
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
        children: 0,
    };
    let inserted = match unsafe { FSMON_LIVE.get(&child) } {
        // The pid is taken again while a record of its previous holder is
        // still live: either the previous holder's exit was never seen
        // (counted: a pid is only reused once its holder is gone), or it is
        // an exited ancestor kept for its children, which goes to the exited
        // map (its children's chains find it there by start time).
        Some(old) => {
            if old.exit_ns == 0 {
                count(counter::EXIT_MISSED);
            } else {
                let old = *old;
                if FSMON_EXITED.insert(&child, &old, 0).is_err() {
                    count(counter::EXITED_INSERT_REFUSED);
                }
            }
            FSMON_LIVE.insert(&child, &record, 0).is_ok()
        }
        None => match FSMON_LIVE.insert(&child, &record, BPF_NOEXIST as u64) {
            Ok(()) => {
                count(counter::LIVE_INSERTED);
                true
            }
            Err(_) => {
                count(counter::LIVE_INSERT_REFUSED);
                false
            }
        },
    };
    if inserted {
        if let Some(p) = FSMON_LIVE.get_ptr_mut(&parent) {
            add_children(p, 1);
        }
    }
    if debug_on() {
        debug!(&ctx, "fork {} -> {}", parent, child);
    }
    0
}

#[tracepoint]
pub fn fsmon_exec(ctx: TracePointContext) -> u32 {
    // After exec the current task is the thread-group leader: tgid is the
    // pid, also when a thread other than the leader called exec.
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let comm = bpf_get_current_comm().unwrap_or([0; COMM_LEN]);
    let bits = unsafe { FSMON_TRACKED.get(&comm) }.copied().unwrap_or(0);
    let retired = retired_bits();
    let ids = bpf_get_current_uid_gid();
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    match FSMON_LIVE.get_ptr_mut(&tgid) {
        Some(p) => unsafe {
            (*p).comm = comm;
            (*p).uid = ids as u32;
            (*p).gid = (ids >> 32) as u32;
            (*p).exec_ns = now;
            (*p).cgroup_id = cgroup_id;
            (*p).tracked = ((*p).tracked | bits) & !retired;
        },
        None => {
            // A process that forked before we attached and that the daemon has
            // not seeded yet: ppid and start time unknown (0); the daemon
            // completes them from /proc in its own memory.
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
                tracked: bits & !retired,
                children: 0,
            };
            match FSMON_LIVE.insert(&tgid, &record, BPF_NOEXIST as u64) {
                Ok(()) => count(counter::LIVE_INSERTED),
                // Lost a race with seeding (the record is there now): fine.
                Err(_) if unsafe { FSMON_LIVE.get(&tgid) }.is_some() => {}
                Err(_) => count(counter::LIVE_INSERT_REFUSED),
            }
        }
    }
    if debug_on() {
        debug!(&ctx, "exec {} tracked={}", tgid, bits);
    }
    0
}

/// Moves `tgid`'s record (at `p`) from the live map to the exited map, then
/// walks up: each parent loses a child, and an exited parent whose last
/// child that was goes too.
#[inline(always)]
fn leave_live(tgid: u32, p: *const ProcRecord) {
    let mut tgid = tgid;
    let mut rec = unsafe { *p };
    for _ in 0..MAX_CASCADE {
        if FSMON_EXITED.insert(&tgid, &rec, 0).is_err() {
            count(counter::EXITED_INSERT_REFUSED);
        }
        if FSMON_LIVE.remove(&tgid).is_err() {
            return; // another CPU moved it first
        }
        count(counter::LIVE_REMOVED);
        let Some(parent) = FSMON_LIVE.get_ptr_mut(&rec.ppid) else {
            return;
        };
        let parent_start = unsafe { (*parent).start_ns };
        if rec.ppid == tgid || !same_start(parent_start, rec.parent_start_ns) {
            return; // not the parent this process was forked from
        }
        if children_of(parent) > 0 {
            add_children(parent, u64::MAX); // - 1
        }
        if unsafe { (*parent).exit_ns } == 0 || children_of(parent) != 0 {
            return;
        }
        tgid = rec.ppid;
        rec = unsafe { *parent };
    }
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
    let Some(p) = FSMON_LIVE.get_ptr_mut(&tgid) else {
        count(counter::EXITS_UNRECORDED);
        return 0;
    };
    let now = unsafe { bpf_ktime_get_boot_ns() };
    unsafe { (*p).exit_ns = now };
    let start_ns = unsafe { (*p).start_ns };
    let kept_live = children_of(p) != 0;
    if !kept_live {
        leave_live(tgid, p);
    }
    count(counter::EXITS);
    let note = ExitNote {
        tgid,
        kept_live: kept_live as u32,
        start_ns,
        exit_ns: now,
    };
    if FSMON_EXITS.output::<ExitNote>(&note, 0).is_err() {
        count(counter::RING_FULL);
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
