//! The eBPF backend of the process tracker: loads `fsmon-ebpf`, attaches its
//! tracepoints, and reads and maintains the process map.
use std::{
    collections::HashMap as StdHashMap,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, Map, MapData, MapError},
    programs::{
        TracePoint,
        links::{FdLink, PinnedLink},
        trace_point::TracePointLinkId,
    },
};
use fsmon_common::{COMM_LEN, OFFSET_ABSENT, PROC_MAP, ProcRecord, TRACKED_MAP, globals};

use super::{procfs, tracefs};
use crate::error::{Error, Result};

/// The object built by `cargo xtask build-ebpf`, embedded by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/fsmon.bpf.o"));

const BPF_NOEXIST: u64 = 1;
const BPF_EXIST: u64 = 2;

pub struct EbpfBackend {
    /// Owns the loaded programs when they were loaded in this process;
    /// dropping it detaches them.
    ebpf: Option<Ebpf>,
    /// The attachments, when the programs were loaded by a loader process
    /// and handed over through bpffs: closing these detaches them.
    _links: Vec<FdLink>,
    /// A program id, for aya-log's reader (handed-over programs).
    prog_id: Option<u32>,
    /// Attachments made by `load`, by program name (for pinning).
    attached: Vec<(&'static str, TracePointLinkId)>,
    procs: HashMap<MapData, u32, ProcRecord>,
    tracked: HashMap<MapData, [u8; COMM_LEN], u64>,
}

/// Programs and where they attach.
const PROGRAMS: [(&str, &str, &str); 4] = [
    ("fsmon_newtask", "task", "task_newtask"),
    ("fsmon_fork", "sched", "sched_process_fork"),
    ("fsmon_exec", "sched", "sched_process_exec"),
    ("fsmon_exit", "sched", "sched_process_exit"),
];

/// Where bpffs lives; mounted if it is not.
const BPFFS: &str = "/sys/fs/bpf";

fn ensure_bpffs() -> Result<()> {
    let is_bpffs = nix::sys::statfs::statfs(BPFFS)
        .map(|s| s.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC)
        .unwrap_or(false);
    if is_bpffs {
        return Ok(());
    }
    nix::mount::mount(
        Some("bpf"),
        BPFFS,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| Error::Ebpf(format!("cannot mount bpffs at {BPFFS}: {e}")))
}

/// A private pin directory for one hand-over.
pub fn pin_dir() -> PathBuf {
    PathBuf::from(format!("{BPFFS}/fsmon-{}", std::process::id()))
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

        let mut attached = Vec::new();
        let mut attach = |prog: &'static str, category: &str, event: &str| -> Result<()> {
            let tp: &mut TracePoint = ebpf
                .program_mut(prog)
                .ok_or_else(|| Error::Ebpf(format!("program {prog} missing from the object")))?
                .try_into()
                .map_err(|e| ebpf_err(prog, e))?;
            tp.load()
                .map_err(|e| ebpf_err(&format!("loading {prog}"), e))?;
            let id = tp
                .attach(category, event)
                .map_err(|e| ebpf_err(&format!("attaching {prog} to {category}/{event}"), e))?;
            attached.push((prog, id));
            Ok(())
        };
        for (prog, category, event) in PROGRAMS {
            if prog == "fsmon_newtask" && newtask_pid == OFFSET_ABSENT {
                continue;
            }
            attach(prog, category, event)?;
        }

        let take = |ebpf: &mut Ebpf, name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| Error::Ebpf(format!("map {name} missing from the object")))
        };
        let procs =
            HashMap::try_from(take(&mut ebpf, PROC_MAP)?).map_err(|e| ebpf_err(PROC_MAP, e))?;
        let tracked = HashMap::try_from(take(&mut ebpf, TRACKED_MAP)?)
            .map_err(|e| ebpf_err(TRACKED_MAP, e))?;
        Ok(Self {
            ebpf: Some(ebpf),
            _links: Vec::new(),
            prog_id: None,
            attached,
            procs,
            tracked,
        })
    }

    /// Loader-process side of the hand-over: loads and attaches, then pins
    /// the links and the two maps the daemon reads under `dir`. Loading is
    /// done here, in a short-lived process, because aya's loader parses the
    /// kernel's whole BTF (~5.5 MB, a ~20 MB heap peak) even when no
    /// relocation needs it; the daemon never pays that.
    pub fn load_and_pin(dir: &Path, capacity: u32, debug: bool) -> Result<()> {
        ensure_bpffs()?;
        let mut me = Self::load(capacity, debug)?;
        std::fs::create_dir(dir)
            .map_err(|e| Error::Ebpf(format!("creating {}: {e}", dir.display())))?;
        let pin_err =
            |what: &str, e: &dyn std::fmt::Display| Error::Ebpf(format!("pinning {what}: {e}"));
        me.procs
            .pin(dir.join("procs"))
            .map_err(|e| pin_err(PROC_MAP, &e))?;
        me.tracked
            .pin(dir.join("tracked"))
            .map_err(|e| pin_err(TRACKED_MAP, &e))?;
        let ebpf = me.ebpf.as_mut().expect("loaded in process");
        for (prog, id) in std::mem::take(&mut me.attached) {
            let p = ebpf.program_mut(prog).expect("attached program exists");
            let tp: &mut TracePoint = p.try_into().map_err(|e| ebpf_err(prog, e))?;
            // Take the link out of the program, so dropping the Ebpf object
            // does not detach it; the pin keeps it alive.
            let link = tp
                .take_link(id)
                .map_err(|e| ebpf_err(&format!("{prog} link"), e))?;
            let fd_link =
                FdLink::try_from(link).map_err(|e| ebpf_err(&format!("{prog} link"), e))?;
            fd_link.pin(dir.join(prog)).map_err(|e| pin_err(prog, &e))?;
        }
        Ok(())
    }

    /// Daemon side of the hand-over: opens what the loader pinned under
    /// `dir`, removes the pins (the open descriptors keep everything
    /// attached), and removes `dir`.
    pub fn take_pinned(dir: &Path) -> Result<Self> {
        let result = (|| {
            let map = |name: &str| -> Result<Map> {
                let data = MapData::from_pin(dir.join(name))
                    .map_err(|e| ebpf_err(&format!("opening pinned {name}"), e))?;
                Map::from_map_data(data).map_err(|e| ebpf_err(name, e))
            };
            let procs = HashMap::try_from(map("procs")?).map_err(|e| ebpf_err(PROC_MAP, e))?;
            let tracked =
                HashMap::try_from(map("tracked")?).map_err(|e| ebpf_err(TRACKED_MAP, e))?;
            let mut links = Vec::new();
            let mut prog_id = None;
            for (prog, _, _) in PROGRAMS {
                let path = dir.join(prog);
                if !path.exists() {
                    continue;
                }
                let pinned = PinnedLink::from_pin(&path)
                    .map_err(|e| ebpf_err(&format!("opening pinned {prog}"), e))?;
                let link = pinned
                    .unpin()
                    .map_err(|e| ebpf_err(&format!("unpinning {prog}"), e))?;
                // aya-log finds its ring through a program that logs.
                if prog == "fsmon_fork" {
                    prog_id = link.info().ok().map(|i| i.program_id());
                }
                links.push(link);
            }
            if links.len() < 3 {
                return Err(Error::Ebpf(format!(
                    "the loader pinned {} programs, expected at least 3",
                    links.len()
                )));
            }
            Ok(Self {
                ebpf: None,
                _links: links,
                prog_id,
                attached: Vec::new(),
                procs,
                tracked,
            })
        })();
        // Whatever happened, leave nothing pinned: a stale pin would keep
        // the programs attached after we exit.
        let _ = std::fs::remove_dir_all(dir);
        result
    }

    /// The aya-log ring for `--debug`: drive it from the daemon's runtime.
    pub fn take_logger(&mut self) -> Result<aya_log::EbpfLogger<&'static dyn log::Log>> {
        match (&mut self.ebpf, self.prog_id) {
            (Some(ebpf), _) => aya_log::EbpfLogger::init(ebpf).map_err(|e| ebpf_err("aya-log", e)),
            (None, Some(id)) => {
                aya_log::EbpfLogger::init_from_id(id).map_err(|e| ebpf_err("aya-log", e))
            }
            (None, None) => Err(Error::Ebpf("no program id for aya-log".into())),
        }
    }

    /// Removes pin directories left by a daemon that died mid-hand-over
    /// (their pins would keep programs attached forever).
    pub fn remove_stale_pins() {
        let Ok(dir) = std::fs::read_dir(BPFFS) else {
            return;
        };
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = name
                .strip_prefix("fsmon-")
                .and_then(|p| p.parse::<i32>().ok())
            else {
                continue;
            };
            if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
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

    /// Entries in the map. A walk of a map the kernel changes meanwhile
    /// restarts from the first key when the key it stands on is evicted,
    /// which counts entries twice: stop when the first key comes round
    /// again, and never report more than the map can hold.
    pub fn len(&self) -> usize {
        let mut keys = self.procs.keys().filter_map(|k| k.ok());
        let Some(first) = keys.next() else {
            return 0;
        };
        let seen = 1 + keys.take_while(|k| *k != first).count();
        let capacity = aya::maps::IterableMap::map(&self.procs)
            .info()
            .map_or(usize::MAX, |i| i.max_entries() as usize);
        seen.min(capacity)
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
