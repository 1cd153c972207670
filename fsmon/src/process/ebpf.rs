//! The eBPF backend of the process tracker: loads `fsmon-ebpf`, attaches its
//! tracepoints, and gives typed access to its maps. What the daemon does with
//! them (collection, tracked bits) is in `collect.rs` and `mod.rs`.
use std::{
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray, RingBuf},
    programs::{
        TracePoint,
        links::{FdLink, PinnedLink},
        trace_point::TracePointLinkId,
    },
};
use fsmon_common::{
    COMM_LEN, COUNTERS_MAP, DEFAULT_EXITS_RING_BYTES, EXITED_MAP, EXITS_RING, LIVE_MAP,
    OFFSET_ABSENT, ProcRecord, SEEDED_MAP, SETTINGS_MAP, SeededBits, Settings, TRACKED_MAP,
    counter, globals,
};

use super::tracefs;
use crate::error::{Error, Result};

/// The object built by `cargo xtask build-ebpf`, embedded by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/fsmon.bpf.o"));

/// `BPF_NOEXIST`: insert only if the key is absent.
pub const BPF_NOEXIST: u64 = 1;

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
    pub maps: Maps,
    /// The attached programs, for their kernel statistics.
    programs: Vec<OwnedFd>,
}

/// A program's descriptor from its id (`BPF_PROG_GET_FD_BY_ID`).
fn prog_fd_by_id(id: u32) -> Option<OwnedFd> {
    #[repr(C)]
    struct Attr {
        prog_id: u32,
        next_id: u32,
        open_flags: u32,
    }
    const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
    let attr = Attr {
        prog_id: id,
        next_id: 0,
        open_flags: 0,
    };
    // SAFETY: a valid bpf_attr prefix for this command, and its size.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_GET_FD_BY_ID,
            &attr as *const Attr,
            std::mem::size_of::<Attr>(),
        )
    };
    // SAFETY: a new descriptor we own.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// How many times the kernel skipped a program (`recursion_misses`: it
/// does not run tracepoint programs on a CPU where another BPF program, or
/// a `bpf()` map syscall preempted in the middle, is active).
fn recursion_misses(fd: &OwnedFd) -> u64 {
    #[repr(C)]
    struct Attr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    // SAFETY: a plain C struct; all zero is valid.
    let mut info: aya_obj::generated::bpf_prog_info = unsafe { std::mem::zeroed() };
    let attr = Attr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: std::mem::size_of_val(&info) as u32,
        info: &mut info as *mut _ as u64,
    };
    // SAFETY: attr points at a buffer of info_len bytes that lives across
    // the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &attr as *const Attr,
            std::mem::size_of::<Attr>(),
        )
    };
    if r < 0 { 0 } else { info.recursion_misses }
}

/// The maps the daemon uses (see fsmon-common for what each holds and who
/// writes it).
pub struct Maps {
    pub live: HashMap<MapData, u32, ProcRecord>,
    pub exited: HashMap<MapData, u32, ProcRecord>,
    pub tracked: HashMap<MapData, [u8; COMM_LEN], u64>,
    pub seeded: HashMap<MapData, u32, SeededBits>,
    pub settings: Array<MapData, Settings>,
    pub counters: PerCpuArray<MapData, u64>,
    pub exits: RingBuf<MapData>,
    /// Capacity of the live and the exited map (each).
    pub capacity: u32,
}

/// Maps handed from the loader process to the daemon through bpffs.
const SHARED_MAPS: [&str; 7] = [
    LIVE_MAP,
    EXITED_MAP,
    TRACKED_MAP,
    SEEDED_MAP,
    SETTINGS_MAP,
    COUNTERS_MAP,
    EXITS_RING,
];

impl Maps {
    fn open(mut take: impl FnMut(&str) -> Result<Map>) -> Result<Self> {
        let live = HashMap::try_from(take(LIVE_MAP)?).map_err(|e| ebpf_err(LIVE_MAP, e))?;
        let capacity = aya::maps::IterableMap::map(&live)
            .info()
            .map_err(|e| ebpf_err(LIVE_MAP, e))?
            .max_entries();
        Ok(Self {
            live,
            exited: HashMap::try_from(take(EXITED_MAP)?).map_err(|e| ebpf_err(EXITED_MAP, e))?,
            tracked: HashMap::try_from(take(TRACKED_MAP)?).map_err(|e| ebpf_err(TRACKED_MAP, e))?,
            seeded: HashMap::try_from(take(SEEDED_MAP)?).map_err(|e| ebpf_err(SEEDED_MAP, e))?,
            settings: Array::try_from(take(SETTINGS_MAP)?)
                .map_err(|e| ebpf_err(SETTINGS_MAP, e))?,
            counters: PerCpuArray::try_from(take(COUNTERS_MAP)?)
                .map_err(|e| ebpf_err(COUNTERS_MAP, e))?,
            exits: RingBuf::try_from(take(EXITS_RING)?).map_err(|e| ebpf_err(EXITS_RING, e))?,
            capacity,
        })
    }

    /// A kernel counter (`fsmon_common::counter`), summed over CPUs.
    pub fn counter(&self, index: u32) -> u64 {
        self.counters
            .get(&index, 0)
            .map_or(0, |v| v.iter().copied().fold(0u64, u64::wrapping_add))
    }

    /// All kernel counters, indexed by `fsmon_common::counter`.
    pub fn all_counters(&self) -> [u64; counter::COUNT as usize] {
        std::array::from_fn(|i| self.counter(i as u32))
    }
}

/// Size of the exit ring for a map capacity: 16 bytes per map entry (half
/// a note: a note takes 32 bytes with its header), and never less than
/// 1 MiB, 32,768 notes; a power of two, as the kernel requires. The ring
/// only has to hold the exits between two reads of the process thread (one
/// a second): the floor is 4x the highest fork rate measured here (8,000/s)
/// and 1.6x the burst drill's 20,000 exits at once. The kernel maps the ring
/// into the daemon twice (the data pages follow themselves so a note never
/// wraps), so its size counts double in VmRSS: 2 MiB at the default.
pub fn exits_ring_bytes(capacity: u32) -> u32 {
    (capacity as u64 * 16)
        .next_power_of_two()
        .clamp(1 << 20, 16 << 20) as u32
}

// The kernel object's default must be a valid size too.
const _: () = assert!(DEFAULT_EXITS_RING_BYTES.is_power_of_two());

/// Programs and where they attach.
///
/// In attach order: exit first and fork last. A process whose fork was
/// recorded must have its exit seen too: with fork attached before exit, a
/// process forked and gone between the two attachments kept a live record
/// nothing ever removed (what the drills counted as missed exits). The
/// newtask program marks which children are processes before fork reads it.
const PROGRAMS: [(&str, &str, &str); 4] = [
    ("fsmon_exit", "sched", "sched_process_exit"),
    ("fsmon_exec", "sched", "sched_process_exec"),
    ("fsmon_newtask", "task", "task_newtask"),
    ("fsmon_fork", "sched", "sched_process_fork"),
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
    /// Loads and attaches the programs. `capacity` is the size of the live
    /// and of the exited map. With `pin_to`, the maps the daemon uses are
    /// pinned there too (the loader process's side of the hand-over).
    pub fn load(capacity: u32, debug: bool, pin_to: Option<&Path>) -> Result<Self> {
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
            .map_max_entries(LIVE_MAP, capacity)
            .map_max_entries(EXITED_MAP, capacity)
            .map_max_entries(SEEDED_MAP, capacity)
            .map_max_entries(EXITS_RING, exits_ring_bytes(capacity))
            .override_global(globals::FORK_CHILD_PID, &fork_child, true)
            .override_global(globals::NEWTASK_PID, &newtask_pid, true)
            .override_global(globals::NEWTASK_CLONE_FLAGS, &newtask_flags, true)
            .override_global(globals::EXIT_GROUP_DEAD, &group_dead, true)
            .override_global(globals::DEBUG, &debug_flag, true);
        let mut ebpf = loader
            .load(OBJECT)
            .map_err(|e| ebpf_err("loading the object", e))?;

        let mut attached = Vec::new();
        let mut programs = Vec::new();
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
            if let Some(fd) = tp.info().ok().and_then(|i| prog_fd_by_id(i.id())) {
                programs.push(fd);
            }
            Ok(())
        };
        for (prog, category, event) in PROGRAMS {
            if prog == "fsmon_newtask" && newtask_pid == OFFSET_ABSENT {
                continue;
            }
            attach(prog, category, event)?;
        }

        if let Some(dir) = pin_to {
            for name in SHARED_MAPS {
                let map = ebpf
                    .map(name)
                    .ok_or_else(|| Error::Ebpf(format!("map {name} missing from the object")))?;
                map.pin(dir.join(name))
                    .map_err(|e| Error::Ebpf(format!("pinning {name}: {e}")))?;
            }
        }
        let maps = Maps::open(|name| {
            ebpf.take_map(name)
                .ok_or_else(|| Error::Ebpf(format!("map {name} missing from the object")))
        })?;
        Ok(Self {
            ebpf: Some(ebpf),
            _links: Vec::new(),
            prog_id: None,
            attached,
            maps,
            programs,
        })
    }

    /// Loader-process side of the hand-over: loads and attaches, then pins
    /// the links and the two maps the daemon reads under `dir`. Loading is
    /// done here, in a short-lived process, because aya's loader parses the
    /// kernel's whole BTF (~5.5 MB, a ~20 MB heap peak) even when no
    /// relocation needs it; the daemon never pays that.
    pub fn load_and_pin(dir: &Path, capacity: u32, debug: bool) -> Result<()> {
        ensure_bpffs()?;
        std::fs::create_dir(dir)
            .map_err(|e| Error::Ebpf(format!("creating {}: {e}", dir.display())))?;
        let mut me = Self::load(capacity, debug, Some(dir))?;
        let pin_err =
            |what: &str, e: &dyn std::fmt::Display| Error::Ebpf(format!("pinning {what}: {e}"));
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
            let maps = Maps::open(|name: &str| -> Result<Map> {
                let data = MapData::from_pin(dir.join(name))
                    .map_err(|e| ebpf_err(&format!("opening pinned {name}"), e))?;
                Map::from_map_data(data).map_err(|e| ebpf_err(name, e))
            })?;
            let mut links = Vec::new();
            let mut programs = Vec::new();
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
                let id = link.info().ok().map(|i| i.program_id());
                if prog == "fsmon_fork" {
                    prog_id = id;
                }
                if let Some(fd) = id.and_then(prog_fd_by_id) {
                    programs.push(fd);
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
                maps,
                programs,
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

    /// Runs of the programs the kernel skipped, summed (see
    /// [`recursion_misses`]): each may be a fork, exec or exit not seen.
    pub fn skipped_runs(&self) -> u64 {
        self.programs.iter().map(recursion_misses).sum()
    }

    /// Sets the tracked-command mask for a comm key (0 removes it).
    pub fn set_tracked_mask(&mut self, key: [u8; COMM_LEN], mask: u64) -> Result<()> {
        let r = if mask == 0 {
            match self.maps.tracked.remove(&key) {
                Err(MapError::KeyNotFound) => Ok(()),
                other => other,
            }
        } else {
            self.maps.tracked.insert(key, mask, 0)
        };
        r.map_err(|e| ebpf_err(TRACKED_MAP, e))
    }
}
