//! The eBPF backend of the process tracker: loads `fsmon-ebpf`, attaches its
//! tracepoints, and reads and maintains the process map.
use std::collections::HashMap as StdHashMap;

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData, MapError},
    programs::TracePoint,
};
use fsmon_common::{
    COMM_LEN, NEW_PROCS_MAP, OFFSET_ABSENT, PROC_MAP, ProcRecord, TRACKED_MAP, globals,
};

use super::{procfs, tracefs};
use crate::error::{Error, Result};

/// The object built by `cargo xtask build-ebpf`, embedded by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/fsmon.bpf.o"));

const BPF_NOEXIST: u64 = 1;
const BPF_EXIST: u64 = 2;

pub struct EbpfBackend {
    /// Owns the loaded programs; dropping it detaches them.
    ebpf: Ebpf,
    procs: HashMap<MapData, u32, ProcRecord>,
    tracked: HashMap<MapData, [u8; COMM_LEN], u64>,
}

fn ebpf_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Ebpf(format!("{what}: {e}"))
}

impl EbpfBackend {
    /// Loads and attaches the programs. `capacity` is the process map's size.
    pub fn load(capacity: u32, debug: bool) -> Result<Self> {
        tracefs::ensure_mounted()?;
        let fork_child = tracefs::event_field_offset("sched", "sched_process_fork", "child_pid")?;
        if fork_child == OFFSET_ABSENT {
            return Err(Error::Ebpf(
                "sched_process_fork has no child_pid field".into(),
            ));
        }
        // task_newtask tells threads from processes; without it every child
        // is recorded (correct, just more entries).
        let (newtask_pid, newtask_flags) =
            match tracefs::event_field_offset("task", "task_newtask", "pid") {
                Ok(pid) => (
                    pid,
                    tracefs::event_field_offset("task", "task_newtask", "clone_flags")?,
                ),
                Err(_) => (OFFSET_ABSENT, OFFSET_ABSENT),
            };
        let (newtask_pid, newtask_flags) =
            if newtask_pid == OFFSET_ABSENT || newtask_flags == OFFSET_ABSENT {
                (OFFSET_ABSENT, OFFSET_ABSENT)
            } else {
                (newtask_pid, newtask_flags)
            };
        let group_dead = tracefs::event_field_offset("sched", "sched_process_exit", "group_dead")?;
        let debug_flag: u32 = debug.into();

        // Note: EbpfLoader::new() parses the kernel's BTF (/sys/kernel/btf/vmlinux,
        // ~5.5 MB) eagerly, even though our programs need no CO-RE relocation;
        // that is the one-time memory peak at load. We drop it right away with
        // btf(None) and the daemon trims the heap once loading is done.
        let mut loader = EbpfLoader::new();
        loader
            .btf(None)
            .map_max_entries(PROC_MAP, capacity)
            .override_global(globals::FORK_CHILD_PID, &fork_child, true)
            .override_global(globals::NEWTASK_PID, &newtask_pid, true)
            .override_global(globals::NEWTASK_CLONE_FLAGS, &newtask_flags, true)
            .override_global(globals::EXIT_GROUP_DEAD, &group_dead, true)
            .override_global(globals::DEBUG, &debug_flag, true);
        let mut ebpf = loader
            .load(OBJECT)
            .map_err(|e| ebpf_err("loading the object", e))?;

        let mut attach = |prog: &str, category: &str, event: &str| -> Result<()> {
            let tp: &mut TracePoint = ebpf
                .program_mut(prog)
                .ok_or_else(|| Error::Ebpf(format!("program {prog} missing from the object")))?
                .try_into()
                .map_err(|e| ebpf_err(prog, e))?;
            tp.load()
                .map_err(|e| ebpf_err(&format!("loading {prog}"), e))?;
            tp.attach(category, event)
                .map_err(|e| ebpf_err(&format!("attaching {prog} to {category}/{event}"), e))?;
            Ok(())
        };
        if newtask_pid != OFFSET_ABSENT {
            attach("fsmon_newtask", "task", "task_newtask")?;
        }
        attach("fsmon_fork", "sched", "sched_process_fork")?;
        attach("fsmon_exec", "sched", "sched_process_exec")?;
        attach("fsmon_exit", "sched", "sched_process_exit")?;

        let take = |ebpf: &mut Ebpf, name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| Error::Ebpf(format!("map {name} missing from the object")))
        };
        let procs =
            HashMap::try_from(take(&mut ebpf, PROC_MAP)?).map_err(|e| ebpf_err(PROC_MAP, e))?;
        let tracked = HashMap::try_from(take(&mut ebpf, TRACKED_MAP)?)
            .map_err(|e| ebpf_err(TRACKED_MAP, e))?;
        let _ = NEW_PROCS_MAP; // stays owned by `ebpf`, used only in the kernel
        Ok(Self {
            ebpf,
            procs,
            tracked,
        })
    }

    /// The aya-log ring for `--debug`: drive it from the daemon's runtime.
    pub fn take_logger(&mut self) -> Result<aya_log::EbpfLogger<&'static dyn log::Log>> {
        aya_log::EbpfLogger::init(&mut self.ebpf).map_err(|e| ebpf_err("aya-log", e))
    }

    pub fn get(&self, tgid: u32) -> Option<ProcRecord> {
        self.procs.get(&tgid, 0).ok()
    }

    pub fn insert(&mut self, record: &ProcRecord, only_if_absent: bool) -> Result<(), MapError> {
        let flags = if only_if_absent { BPF_NOEXIST } else { 0 };
        self.procs.insert(record.tgid, *record, flags)
    }

    pub fn update_existing(&mut self, record: &ProcRecord) -> Result<(), MapError> {
        self.procs.insert(record.tgid, *record, BPF_EXIST)
    }

    pub fn remove(&mut self, tgid: u32) {
        let _ = self.procs.remove(&tgid);
    }

    /// A snapshot of the whole map. Entries may change while we iterate;
    /// callers treat the result as advisory.
    pub fn snapshot(&self) -> Vec<ProcRecord> {
        self.procs
            .iter()
            .filter_map(|r| r.ok())
            .map(|(_, v)| v)
            .collect()
    }

    pub fn len(&self) -> usize {
        self.procs.keys().filter(|k| k.is_ok()).count()
    }

    /// Sets the tracked-command mask for a comm key (0 removes it).
    pub fn set_tracked_mask(&mut self, key: [u8; COMM_LEN], mask: u64) -> Result<()> {
        let r = if mask == 0 {
            match self.tracked.remove(&key) {
                Err(MapError::KeyNotFound) => Ok(()),
                other => other,
            }
        } else {
            self.tracked.insert(key, mask, 0)
        };
        r.map_err(|e| ebpf_err(TRACKED_MAP, e))
    }

    /// Adds every process in `/proc` that the map does not know yet, and
    /// completes records that exec created without a fork (ppid unknown).
    /// Runs after attach, so nothing that starts from now on is missed, and
    /// never overwrites what the kernel recorded.
    pub fn seed_from_proc(&mut self) -> usize {
        let mut seeded: StdHashMap<u32, ProcRecord> = StdHashMap::new();
        for pid in procfs::all_pids() {
            if let Some(rec) = procfs::read_process(pid) {
                seeded.insert(pid, rec);
            }
        }
        let mut added = 0;
        let starts: StdHashMap<u32, u64> = seeded.iter().map(|(&p, r)| (p, r.start_ns)).collect();
        for (pid, mut rec) in seeded {
            rec.parent_start_ns = starts.get(&rec.ppid).copied().unwrap_or(0);
            match self.get(pid) {
                None => {
                    if self.insert(&rec, true).is_ok() {
                        added += 1;
                    }
                }
                Some(mut known) if known.start_ns == 0 => {
                    known.ppid = rec.ppid;
                    known.start_ns = rec.start_ns;
                    known.parent_start_ns = rec.parent_start_ns;
                    let _ = self.update_existing(&known);
                }
                Some(_) => {}
            }
        }
        added
    }
}
