//! `cargo xtask bench`: fsmon's benchmarks, reported as ratios against a
//! baseline measured in the same run. Writes target/bench-report.md.
//!
//!   fsmon-bench [--quick] [--only SECTION[,SECTION]] [--reps N]
//!
//! Sections: tracker, capture, peers, flood, unrelated, ship, query, and
//! the process-tracker workloads tracker-idle, tracker-storm, tracker-forks,
//! tracker-mem (see tracker.rs; not run by default: select them with --only).
use std::{
    fmt::Write as _,
    fs,
    io::{Read, Seek, SeekFrom, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

mod peers;
mod ship;
mod tracker;

use fsmon::process::{ProcessTracker, TrackerConfig, TrackerKind};
use fsmon_common::ProcRecord;
use fsmon_tests::{Env, testkit_bin, wait_for};

struct Opts {
    quick: bool,
    reps: usize,
    only: Vec<String>,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut o = Opts {
        quick: false,
        reps: 3,
        only: Vec::new(),
    };
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--quick" => o.quick = true,
            "--reps" => {
                i += 1;
                o.reps = args.get(i).and_then(|s| s.parse().ok()).unwrap_or(3).max(1);
            }
            "--only" => {
                i += 1;
                o.only = args
                    .get(i)
                    .map(|s| s.split(',').map(str::to_string).collect())
                    .unwrap_or_default();
            }
            other => {
                eprintln!("fsmon-bench: unknown argument {other}");
                std::process::exit(2);
            }
        }
        i += 1;
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("fsmon-bench: run as root (cargo xtask bench does)");
        std::process::exit(2);
    }
    let want = |s: &str| o.only.is_empty() || o.only.iter().any(|x| x == s);
    // Long and machine-wide (thousands of processes): only when asked for.
    let asked = |s: &str| o.only.iter().any(|x| x == s);
    let mut report = String::new();
    let _ = writeln!(report, "# fsmon benchmark report\n\n{}\n", machine());
    if want("tracker") {
        report.push_str(&bench_tracker(&o));
    }
    if want("capture") {
        report.push_str(&bench_capture(&o));
    }
    if want("peers") || want("flood") || want("unrelated") || want("ship") {
        let loopfs = fsmon_tests::LoopFs::new_in("/dev/shm", "ext4", 3072);
        let base = tempfile::Builder::new()
            .prefix("bench-")
            .tempdir_in(&loopfs.mountpoint)
            .unwrap();
        if want("peers") {
            report.push_str(&peers::bench_peers(&o, base.path()));
        }
        if want("flood") {
            report.push_str(&bench_flood(&o, base.path()));
        }
        if want("unrelated") {
            report.push_str(&bench_unrelated(&o, base.path()));
        }
        if want("ship") {
            report.push_str(&ship::bench_ship(&o, base.path()));
        }
    }
    if asked("marks") {
        report.push_str(&bench_marks(&o));
    }
    if want("query") {
        report.push_str(&bench_query(&o));
    }
    if asked("tracker-idle") {
        report.push_str(&tracker::bench_idle(&o));
    }
    if asked("tracker-storm") {
        report.push_str(&tracker::bench_storm(&o));
    }
    if asked("tracker-forks") {
        report.push_str(&tracker::bench_forks(&o));
    }
    if asked("tracker-mem") {
        report.push_str(&tracker::bench_mem(&o));
    }
    let path = fsmon_tests::target_dir()
        .parent()
        .unwrap()
        .join("bench-report.md");
    fs::write(&path, &report).unwrap();
    println!("{report}");
    eprintln!("report written to {}", path.display());
}

fn machine() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let mem = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().next().map(|l| {
                l.split_whitespace()
                    .nth(1)
                    .unwrap_or("0")
                    .parse::<u64>()
                    .unwrap_or(0)
                    / 1024
                    / 1024
            })
        })
        .unwrap_or(0);
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "Machine: {} cores ({cpu}), {mem} GiB RAM, Linux {}. Capture workloads run on a fresh ext4 (loop device backed by /dev/shm). Date: {}.",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        kernel.trim(),
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC")
    )
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return 0.0;
    }
    v[v.len() / 2]
}

// ---------------------------------------------------------------------------
// Tracker: cost of a pid lookup and of a chain build (10,000 live entries)
// ---------------------------------------------------------------------------

fn bench_tracker(o: &Opts) -> String {
    let mut t = ProcessTracker::start(&TrackerConfig::default()).expect("tracker");
    assert_eq!(
        t.kind(),
        TrackerKind::Ebpf,
        "eBPF tracker must load for this benchmark"
    );
    // Synthetic live processes: pids 3_000_000.. (above any real pid),
    // grouped in 5-deep chains ending at pid 1.
    let base = 3_000_000u32;
    let n = 10_000u32;
    let now = fsmon::process::boot_ns();
    for i in 0..n {
        let pid = base + i;
        let ppid = if i % 5 == 0 { 1 } else { pid - 1 };
        let mut comm = [0u8; 16];
        comm[..5].copy_from_slice(b"bench");
        let rec = ProcRecord {
            tgid: pid,
            ppid,
            uid: 0,
            comm,
            start_ns: now,
            ..Default::default()
        };
        assert!(t.insert_for_bench(&rec));
    }
    let entries = t.entries();
    let batches = if o.quick { 30 } else { 100 };
    let per = 1000u32;
    let mut lookup_ns = Vec::new();
    let mut chain_ns = Vec::new();
    let mut cold_ns = Vec::new();
    let leaf_recs: Vec<ProcRecord> = (0..100)
        .map(|k| t.record(base + k * 5 + 4).expect("synthetic leaf"))
        .collect();
    let mut out = String::with_capacity(256);
    for b in 0..batches {
        let start = Instant::now();
        for k in 0..per {
            std::hint::black_box(t.record(base + (k * 7 + b) % n));
        }
        lookup_ns.push(start.elapsed().as_nanos() as f64 / per as f64);
        let start = Instant::now();
        for k in 0..per {
            // The leaf of a chain: 4 synthetic ancestors, then pid 1 (5 deep
            // + init). Events come from a few live process trees at a time:
            // here 100 different chains.
            // As the pipeline does: the event's record is already known
            // (its lookup is the row above); the chain walks its ancestors.
            let rec = leaf_recs[(k % 100) as usize];
            out.clear();
            t.write_chain_from(&rec, &mut out);
            std::hint::black_box(&out);
        }
        chain_ns.push(start.elapsed().as_nanos() as f64 / per as f64);
        let start = Instant::now();
        for k in 0..per / 10 {
            let leaf = base + ((k * 5 + 4) % n) / 5 * 5 + 4;
            t.forget_ancestors();
            out.clear();
            t.write_chain(leaf, &mut out);
            std::hint::black_box(&out);
        }
        cold_ns.push(start.elapsed().as_nanos() as f64 / (per / 10) as f64);
    }
    let depth = out.split(';').count();
    let (l, c, cold) = (
        median(&mut lookup_ns),
        median(&mut chain_ns),
        median(&mut cold_ns),
    );
    format!(
        "## Process tracker (eBPF map, {entries} entries)\n\n\
         | operation | median per call |\n|---|---|\n\
         | pid lookup (`record`) | {l:.0} ns |\n\
         | chain build for a known process, {depth} levels (`write_chain_from`, what the pipeline does per event) | {c:.0} ns (target < 2000 ns) |\n\
         | chain build from a pid, {depth} levels, cold (`write_chain`, every level a map lookup) | {cold:.0} ns |\n\n\
         Each figure is the median of {batches} batches. A map lookup is one `bpf()` syscall; \
         chains reuse ancestors looked up within the last second (the event's own process is \
         always looked up).\n\n"
    )
}

// ---------------------------------------------------------------------------
// Capture workloads with and without the daemon
// ---------------------------------------------------------------------------

/// Samples a process's memory every few ms until stopped: VmRSS, and the
/// daemon's own memory (RssAnon + RssShmem: what grows with load; VmRSS
/// also counts the binary's resident pages and the kernel's ring-buffer
/// mapping, which do not).
struct RssSampler {
    stop: Arc<AtomicBool>,
    max_kb: Arc<AtomicU64>,
    own_max_kb: Arc<AtomicU64>,
    handle: Option<std::thread::JoinHandle<()>>,
}

/// Peaks of one sampled run, in KiB.
#[derive(Clone, Copy, Default)]
struct MemPeak {
    rss_kb: u64,
    own_kb: u64,
}

fn status_kb(pid: u32, key: &str) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .map(|s| status_field(&s, key))
        .unwrap_or(0)
}

fn status_field(status: &str, key: &str) -> u64 {
    status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

impl RssSampler {
    fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let max_kb = Arc::new(AtomicU64::new(0));
        let own_max_kb = Arc::new(AtomicU64::new(0));
        let (s, m, own) = (stop.clone(), max_kb.clone(), own_max_kb.clone());
        let handle = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Ok(st) = fs::read_to_string(format!("/proc/{pid}/status")) {
                    m.fetch_max(status_field(&st, "VmRSS:"), Ordering::Relaxed);
                    own.fetch_max(
                        status_field(&st, "RssAnon:") + status_field(&st, "RssShmem:"),
                        Ordering::Relaxed,
                    );
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        RssSampler {
            stop,
            max_kb,
            own_max_kb,
            handle: Some(handle),
        }
    }
    fn finish(mut self) -> MemPeak {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.handle.take().unwrap().join();
        MemPeak {
            rss_kb: self.max_kb.load(Ordering::Relaxed),
            own_kb: self.own_max_kb.load(Ordering::Relaxed),
        }
    }
}

/// CPU time of a process, all threads, in seconds (schedstat: ns).
fn cpu_secs(pid: u32) -> f64 {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    let ns: u64 = tasks
        .flatten()
        .filter_map(|t| fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    ns as f64 / 1e9
}

/// The kernel's share: a fanotify group marked like fsmon's, whose reader
/// reads and discards (1 ms coalescing, as fsmon). What remains of the
/// slowdown under it is the kernel generating FID events, not fsmon.
struct NoopReader {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl NoopReader {
    fn start(path: &Path, mask: u64) -> Self {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
        // CLOEXEC|NONBLOCK|REPORT_FID|DIR_FID|NAME|TARGET_FID, as fsmon.
        let fd = unsafe {
            libc::fanotify_init(
                0x1 | 0x2 | 0x200 | 0x400 | 0x800 | 0x1000,
                libc::O_RDONLY as u32,
            )
        };
        assert!(fd >= 0, "fanotify_init");
        // FAN_MARK_ADD | FAN_MARK_FILESYSTEM, with FAN_ONDIR.
        let r = unsafe {
            libc::fanotify_mark(
                fd,
                0x1 | 0x100,
                mask | 0x4000_0000,
                libc::AT_FDCWD,
                c.as_ptr(),
            )
        };
        assert_eq!(r, 0, "fanotify_mark");
        Self::spawn(fd, |_| {})
    }

    /// The reading thread: waits for events, then drains the queue in 32 KiB
    /// reads, handing each read's bytes to `on_read`; closes `fd` at stop.
    fn spawn(fd: i32, mut on_read: impl FnMut(&[u8]) + Send + 'static) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut buf = vec![0u8; 32768];
            while !s.load(Ordering::Relaxed) {
                let mut p = libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                };
                if unsafe { libc::poll(&mut p, 1, 100) } <= 0 {
                    continue;
                }
                std::thread::sleep(Duration::from_millis(1));
                loop {
                    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
                    if n <= 0 {
                        break;
                    }
                    on_read(&buf[..n as usize]);
                }
            }
            unsafe { libc::close(fd) };
        });
        NoopReader {
            stop,
            handle: Some(handle),
        }
    }
}

impl NoopReader {
    /// The kernel floor for inode marks: marks every directory of the tree
    /// and, as fsmon does, each new directory as soon as its `CREATE` is
    /// read (found by its parent's handle and its name); does nothing else
    /// with the events.
    fn start_inode(path: &Path, mask: u64) -> Self {
        use std::os::unix::ffi::OsStrExt;
        const FLAGS: u64 = 0x4000_0000 | 0x0800_0000; // FAN_ONDIR | FAN_EVENT_ON_CHILD
        let fd = unsafe {
            libc::fanotify_init(
                0x1 | 0x2 | 0x200 | 0x400 | 0x800 | 0x1000,
                libc::O_RDONLY as u32,
            )
        };
        assert!(fd >= 0, "fanotify_init");
        let mut dirs: std::collections::HashMap<Vec<u8>, PathBuf> = Default::default();
        let mark = move |dirs: &mut std::collections::HashMap<Vec<u8>, PathBuf>, p: &Path| {
            let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
            // FAN_MARK_ADD on the directory's inode.
            let r =
                unsafe { libc::fanotify_mark(fd, 0x1, mask | FLAGS, libc::AT_FDCWD, c.as_ptr()) };
            if r == 0
                && let Ok(h) = fsmon::fanotify::handle_of(None, p)
            {
                dirs.insert(h, p.to_path_buf());
            }
        };
        let mut todo = vec![path.to_path_buf()];
        while let Some(d) = todo.pop() {
            mark(&mut dirs, &d);
            for e in fs::read_dir(&d).into_iter().flatten().flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    todo.push(e.path());
                }
            }
        }
        Self::spawn(fd, move |bytes| {
            let mut new_dirs = Vec::new();
            for ev in fsmon::pipeline::parse::events(bytes).flatten() {
                // A new directory (CREATE or MOVED_TO, with FAN_ONDIR).
                if ev.mask & 0x4000_0000 == 0 || ev.mask & (0x100 | 0x80) == 0 {
                    continue;
                }
                if let (Some(d), Some(name)) = (ev.dir, ev.name)
                    && let Some(parent) = dirs.get(d.handle)
                {
                    new_dirs.push(parent.join(std::ffi::OsStr::from_bytes(name)));
                }
            }
            for d in new_dirs {
                mark(&mut dirs, &d);
            }
        })
    }
}

impl Drop for NoopReader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Monitor {
    None,
    KernelFloor,
    /// The no-op reader with inode marks that follow new directories.
    KernelFloorInode,
    Fsmon,
    /// fsmon with `--mark inode`.
    FsmonInode,
}

/// Counts log lines under `prefix`, reading the log incrementally.
struct LogTail {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
}

impl LogTail {
    fn new(path: PathBuf) -> Self {
        let offset = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        LogTail {
            path,
            offset,
            partial: Vec::new(),
        }
    }
    /// New complete lines since the last call.
    fn read_new(&mut self) -> Vec<serde_json::Value> {
        let Ok(mut f) = fs::File::open(&self.path) else {
            return Vec::new();
        };
        let _ = f.seek(SeekFrom::Start(self.offset));
        let mut buf = Vec::new();
        let _ = f.read_to_end(&mut buf);
        self.offset += buf.len() as u64;
        self.partial.extend_from_slice(&buf);
        let Some(last_nl) = self.partial.iter().rposition(|&b| b == b'\n') else {
            return Vec::new();
        };
        let rest = self.partial.split_off(last_nl + 1);
        let lines: Vec<serde_json::Value> = self
            .partial
            .split(|&b| b == b'\n')
            .filter_map(|l| serde_json::from_slice(l).ok())
            .collect();
        self.partial = rest;
        lines
    }
}

struct Run {
    secs: f64,
    captured: u64,
    correct: u64,
    cpu: f64,
    mem: MemPeak,
    hwm_kb: u64,
    drain_ms: f64,
}

/// A workload: prepares `dir` (untimed), then runs (timed). Returns the
/// workload's pid and the expected (path prefix, count) of events.
trait Workload {
    fn name(&self) -> String;
    fn prepare(&self, _dir: &Path) {}
    /// Runs and returns the pid whose events are expected (for correctness).
    fn run(&self, dir: &Path) -> (u32, &'static str);
    fn expected(&self) -> u64;
    /// Takes well under a second: repeat it more.
    fn short(&self) -> bool {
        false
    }
    /// Event types the group should log.
    fn types(&self) -> &'static str {
        "CREATE,CLOSE_WRITE,ATTRIB,DELETE,DELETE_SELF,MOVED_FROM,MOVED_TO,MOVE_SELF"
    }
}

struct Storm {
    files: usize,
    dirs: usize,
}
impl Workload for Storm {
    fn name(&self) -> String {
        format!("create-storm ({} files, {} dirs)", self.files, self.dirs)
    }
    fn run(&self, dir: &Path) -> (u32, &'static str) {
        let mut c = Command::new(testkit_bin())
            .arg("storm")
            .arg(dir)
            .arg(self.files.to_string())
            .arg(self.dirs.to_string())
            .spawn()
            .unwrap();
        let pid = c.id();
        assert!(c.wait().unwrap().success());
        (pid, "fsmon-testkit")
    }
    fn expected(&self) -> u64 {
        (self.files * 5 + self.dirs * 3) as u64
    }
}

struct RmRf {
    files: usize,
}
impl Workload for RmRf {
    fn name(&self) -> String {
        format!("rm -rf ({} files)", self.files)
    }
    fn prepare(&self, dir: &Path) {
        let st = Command::new(testkit_bin())
            .arg("mktree")
            .arg(dir.join("tree"))
            .arg(self.files.to_string())
            .arg("50")
            .status()
            .unwrap();
        assert!(st.success());
    }
    fn run(&self, dir: &Path) -> (u32, &'static str) {
        let mut c = Command::new("rm")
            .arg("-rf")
            .arg(dir.join("tree"))
            .spawn()
            .unwrap();
        let pid = c.id();
        assert!(c.wait().unwrap().success());
        (pid, "rm")
    }
    fn expected(&self) -> u64 {
        // DELETE per file, DELETE + DELETE_SELF per dir (50) and the root.
        (self.files + 2 * 51) as u64
    }
    fn types(&self) -> &'static str {
        "DELETE,DELETE_SELF"
    }
    fn short(&self) -> bool {
        true
    }
}

fn run_once(w: &dyn Workload, monitor: Monitor, base: &Path, rep: usize) -> Run {
    let tag = match monitor {
        Monitor::None => "none",
        Monitor::KernelFloor => "floor",
        Monitor::KernelFloorInode => "floor-inode",
        Monitor::Fsmon => "fsmon",
        Monitor::FsmonInode => "fsmon-inode",
    };
    let dir = base.join(format!("w{rep}-{tag}"));
    fs::create_dir_all(&dir).unwrap();
    let dir = fs::canonicalize(&dir).unwrap();
    w.prepare(&dir);
    if !matches!(monitor, Monitor::Fsmon | Monitor::FsmonInode) {
        // fsmon's mask for these types: theirs plus what the resolver needs.
        let types = fsmon::event::EventType::parse_list(&[w.types()]).unwrap().0;
        let internal = 0x100 | 0x200 | 0x40 | 0x80;
        let _reader = match monitor {
            Monitor::KernelFloor => Some(NoopReader::start(&dir, types | internal)),
            Monitor::KernelFloorInode => Some(NoopReader::start_inode(&dir, types | internal)),
            _ => None,
        };
        let start = Instant::now();
        w.run(&dir);
        let secs = start.elapsed().as_secs_f64();
        let _ = fs::remove_dir_all(&dir);
        return Run {
            secs,
            captured: 0,
            correct: 0,
            cpu: 0.0,
            mem: MemPeak::default(),
            hwm_kb: 0,
            drain_ms: 0.0,
        };
    }
    let env = Env::new();
    let mark = if monitor == Monitor::FsmonInode {
        "inode"
    } else {
        "filesystem"
    };
    env.add(
        "_global",
        &dir,
        &["-r", "--types", w.types(), "--mark", mark],
    );
    let d = env.start(&[]);
    let pid = d.pid();
    let hwm_kb = status_kb(pid, "VmHWM:");
    let mut tail = LogTail::new(env.log_path("_global"));
    let cpu0 = cpu_secs(pid);
    let sampler = RssSampler::start(pid);
    let start = Instant::now();
    let (wpid, wcomm) = w.run(&dir);
    let secs = start.elapsed().as_secs_f64();
    let ended = Instant::now();
    let prefix = format!("{}/", dir.display());
    let (mut captured, mut correct) = (0u64, 0u64);
    let expected = w.expected();
    let mut drain_ms = f64::NAN;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for e in tail.read_new() {
            let p = e["path"].as_str().unwrap_or("");
            if p.starts_with(&prefix) || p == prefix.trim_end_matches('/') {
                captured += 1;
                if e["pid"] == wpid && e["cmd"] == wcomm {
                    correct += 1;
                }
            }
        }
        if captured >= expected {
            drain_ms = ended.elapsed().as_secs_f64() * 1000.0;
            break;
        }
        if Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let mem = sampler.finish();
    let cpu = cpu_secs(pid) - cpu0;
    d.stop();
    let _ = fs::remove_dir_all(&dir);
    Run {
        secs,
        captured,
        correct,
        cpu,
        mem,
        hwm_kb,
        drain_ms,
    }
}

/// The capture table's columns about what was logged: events expected,
/// captured (the fewest of the runs), loss, pid+cmd correct (the worst).
fn capture_columns(runs: &[Run], expected: u64, correct_note: &str) -> String {
    let captured = runs.iter().map(|r| r.captured).min().unwrap();
    let correct = runs
        .iter()
        .map(|r| r.correct as f64 / r.captured.max(1) as f64)
        .fold(1.0, f64::min);
    let loss = 100.0 * (expected.saturating_sub(captured)) as f64 / expected as f64;
    format!(
        "{expected} | {captured} | {loss:.2}% | {:.1}%{correct_note}",
        correct * 100.0
    )
}

/// The capture table's columns about what it cost: CPU per event (the
/// worst run), own memory, VmRSS and VmHWM (the highest), drain time.
fn cost_columns(runs: &[Run]) -> String {
    let cpu_us = runs
        .iter()
        .map(|r| r.cpu / r.captured.max(1) as f64 * 1e6)
        .fold(0.0, f64::max);
    let mib = |kb: u64| kb as f64 / 1024.0;
    let rss = runs.iter().map(|r| r.mem.rss_kb).max().unwrap();
    let own = runs.iter().map(|r| r.mem.own_kb).max().unwrap();
    let hwm = runs.iter().map(|r| r.hwm_kb).max().unwrap();
    let mut drains: Vec<f64> = runs.iter().map(|r| r.drain_ms).collect();
    format!(
        "{cpu_us:.2} µs | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.0} ms",
        mib(own),
        mib(rss),
        mib(hwm),
        median(&mut drains)
    )
}

fn bench_capture(o: &Opts) -> String {
    // A fresh ext4 on a loop device backed by memory: the same filesystem
    // code as on disk, without the disk's noise (run-to-run spread on this
    // VM's root filesystem was 1.4-2.5 s for the same workload).
    let loopfs = fsmon_tests::LoopFs::new_in("/dev/shm", "ext4", 2048);
    let base = tempfile::Builder::new()
        .prefix("bench-")
        .tempdir_in(&loopfs.mountpoint)
        .unwrap();
    let storm = Storm {
        files: if o.quick { 5_000 } else { 20_000 },
        dirs: 100,
    };
    let rmrf = RmRf { files: 5_000 };
    let workloads: Vec<(&dyn Workload, f64)> = vec![(&storm, 1.05), (&rmrf, 1.10)];
    let mut raw = String::new();
    let mut out = String::from(
        "## Capture: workload time with fsmon against no monitor\n\n\
         | workload | events expected | captured (min) | loss | pid+cmd correct | time ratio min / median (target) | fsmon CPU per event | own memory max during workload (RssAnon + RssShmem) | VmRSS max during workload | load peak (VmHWM) | last event written after |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for (w, target) in workloads {
        let mut none = Vec::new();
        let mut floor = Vec::new();
        let mut with = Vec::new();
        let mut inode = Vec::new();
        let mut floor_inode = Vec::new();
        // Warm-up (page cache, dentries), not counted.
        run_once(w, Monitor::None, base.path(), 99);
        // Short workloads get more repetitions: their spread is larger.
        let reps = if w.short() { o.reps * 3 } else { o.reps };
        for rep in 0..reps {
            none.push(run_once(w, Monitor::None, base.path(), rep));
            floor.push(run_once(w, Monitor::KernelFloor, base.path(), rep));
            with.push(run_once(w, Monitor::Fsmon, base.path(), rep));
            inode.push(run_once(w, Monitor::FsmonInode, base.path(), rep));
            floor_inode.push(run_once(w, Monitor::KernelFloorInode, base.path(), rep));
        }
        let ratios_of = |runs: &[Run]| -> (f64, f64) {
            let mut r: Vec<f64> = none
                .iter()
                .zip(runs)
                .map(|(a, b)| b.secs / a.secs)
                .collect();
            let min = r.iter().cloned().fold(f64::MAX, f64::min);
            (min, median(&mut r))
        };
        let (min_ratio, med_ratio) = ratios_of(&with);
        let (floor_min, floor_med) = ratios_of(&floor);
        let expected = w.expected();
        let _ = writeln!(
            out,
            "| {} | {} | {min_ratio:.3} / {med_ratio:.3} (≤ {target:.2}) | {} |",
            w.name(),
            capture_columns(&with, expected, ""),
            cost_columns(&with)
        );
        let _ = writeln!(
            out,
            "| ↳ kernel floor: a no-op fanotify reader, same marks | | | | | {floor_min:.3} / {floor_med:.3} | | | | | |"
        );
        let (imin, imed) = ratios_of(&inode);
        let _ = writeln!(
            out,
            "| ↳ fsmon with `--mark inode` | {} | {imin:.3} / {imed:.3} | {} |",
            capture_columns(&inode, expected, " (scan finds have no process)"),
            cost_columns(&inode)
        );
        let (fmin, fmed) = ratios_of(&floor_inode);
        let _ = writeln!(
            out,
            "| ↳ kernel floor for inode marks: a no-op reader marking new directories as their events are read | | | | | {fmin:.3} / {fmed:.3} | | | | | |"
        );
        let secs = |v: &[Run]| {
            v.iter()
                .map(|r| format!("{:.3}", r.secs))
                .collect::<Vec<_>>()
                .join(", ")
        };
        raw.push_str(&format!(
            "- {}: no monitor [{}] s; kernel floor [{}] s; fsmon [{}] s; fsmon --mark inode [{}] s; inode floor [{}] s\n",
            w.name(),
            secs(&none),
            secs(&floor),
            secs(&with),
            secs(&inode),
            secs(&floor_inode)
        ));
    }
    out.push_str("\nWorkload times, interleaved runs:\n\n");
    out.push_str(&raw);
    out.push_str(&idle_rss());
    out.push('\n');
    out
}

fn idle_rss() -> String {
    let env = Env::new();
    fs::create_dir_all(env.watch.join("a/b")).unwrap();
    env.add("_global", &env.watch, &["-r"]);
    let d = env.start(&[]);
    let pid = d.pid();
    let hwm = status_kb(pid, "VmHWM:");
    // Idle: a second after start, nothing happening in the tree.
    let rss = wait_for("settled RSS", Duration::from_secs(10), || {
        std::thread::sleep(Duration::from_millis(1000));
        Some(status_kb(pid, "VmRSS:"))
    });
    let anon = status_kb(pid, "RssAnon:");
    let file = status_kb(pid, "RssFile:");
    d.stop();
    format!(
        "\nIdle daemon watching one tree: RSS {:.1} MiB (anon {:.1}, file-backed {:.1}; target ≤ 5 MiB); peak while loading the eBPF object (VmHWM) {:.1} MiB.\n",
        rss as f64 / 1024.0,
        anon as f64 / 1024.0,
        file as f64 / 1024.0,
        hwm as f64 / 1024.0
    )
}

// ---------------------------------------------------------------------------
// Overload: where fsmon starts to lose events
// ---------------------------------------------------------------------------

/// One flood with fsmon: (events expected, captured, overflow records, seconds).
fn flood_once(
    base: &Path,
    tag: &str,
    iterations: usize,
    rate: u64,
    queue: Option<u32>,
    writers: usize,
) -> (u64, u64, u64, f64) {
    let dir = base.join(format!("flood-{tag}"));
    fs::create_dir_all(&dir).unwrap();
    let dir = fs::canonicalize(&dir).unwrap();
    let env = match queue {
        Some(q) => Env::with_config(&format!("[fanotify]\nqueue_size = {q}\n")),
        None => Env::new(),
    };
    env.add(
        "_global",
        &dir,
        &["-r", "--types", "CREATE,CLOSE_WRITE,DELETE"],
    );
    let d = env.start(&[]);
    // From the start of the log: everything this run writes counts.
    let mut tail = LogTail {
        path: env.log_path("_global"),
        offset: 0,
        partial: Vec::new(),
    };
    let start = Instant::now();
    // `writers` processes in parallel, each in its own directory.
    let children: Vec<_> = (0..writers)
        .map(|w| {
            Command::new(testkit_bin())
                .arg("flood")
                .arg(dir.join(format!("w{w}")))
                .arg((iterations / writers).to_string())
                .arg((rate / writers as u64).to_string())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let iterations = iterations / writers * writers;
    let secs = start.elapsed().as_secs_f64();
    let expected = iterations as u64 * 3;
    let prefix = format!("{}/", dir.display());
    let (mut captured, mut overflows) = (0u64, 0u64);
    let mut last_change = Instant::now();
    while last_change.elapsed() < Duration::from_secs(2) && captured < expected {
        let new = tail.read_new();
        if !new.is_empty() {
            last_change = Instant::now();
        }
        for e in new {
            if e["event_type"] == "Q_OVERFLOW" {
                overflows += 1;
            } else if e["path"].as_str().is_some_and(|p| {
                // The flood's own files (x<i>), not the writers' directories.
                p.starts_with(&prefix) && p.rsplit('/').next().is_some_and(|n| n.starts_with('x'))
            }) {
                captured += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    d.stop();
    let _ = fs::remove_dir_all(&dir);
    (expected, captured, overflows, secs)
}

fn bench_flood(o: &Opts, base: &Path) -> String {
    let big = if o.quick { 100_000 } else { 333_334 };
    let mut out = String::from(
        "## Overload: a 1,000,000-event flood, and the rate where loss starts\n\n\
         Each iteration creates, closes and deletes a new file: CREATE, CLOSE_WRITE, DELETE \
         (never merged by the kernel).\n\n\
         | flood | kernel queue | events | produced at | captured | lost | overflow records |\n\
         |---|---|---|---|---|---|---|\n",
    );
    let row = |what: &str, label: &str, (e, c, ov, secs): (u64, u64, u64, f64)| {
        format!(
            "| {what} | {label} | {e} | {:.0} events/s | {c} | {:.2}% | {ov} |\n",
            e as f64 / secs,
            100.0 * e.saturating_sub(c) as f64 / e as f64
        )
    };
    // One writer at full speed, then more writers in parallel (on 2 cores
    // they compete with the daemon for CPU): where does loss start?
    for writers in [1usize, 2, 4, 8] {
        for (label, queue) in [("default (16384)", None), ("1,048,576", Some(1_048_576u32))] {
            let what = format!("{writers} writer(s), as fast as possible");
            out.push_str(&row(
                &what,
                label,
                flood_once(base, &format!("max{writers}"), big, 0, queue, writers),
            ));
        }
    }
    // Paced, with the default queue.
    let per = if o.quick { 30_000 } else { 100_000 };
    for rate in [50_000u64, 100_000] {
        let what = format!("1 writer paced at {rate} events/s");
        out.push_str(&row(
            &what,
            "default (16384)",
            flood_once(base, &format!("r{rate}"), per, rate, None, 1),
        ));
    }
    out.push_str(
        "\nOn 2 cores more writers do not produce events faster (they compete with each other and with the daemon \
         for the CPU): the daemon kept up with every rate this machine could produce. Loss happens when the \
         daemon is stalled (the overflow drill stops it with SIGSTOP); every loss is reported, with an overflow \
         record in each affected log and `fsmon_queue_overflows_total`.\n\n",
    );
    out
}

// ---------------------------------------------------------------------------
// Unrelated activity on a watched filesystem
// ---------------------------------------------------------------------------

fn bench_unrelated(o: &Opts, base: &Path) -> String {
    let files = if o.quick { 5_000 } else { 20_000 };
    let watched = base.join("watched");
    fs::create_dir_all(watched.join("a/b")).unwrap();
    let storm = |dir: &Path| {
        assert!(
            Command::new(testkit_bin())
                .arg("storm")
                .arg(dir)
                .arg(files.to_string())
                .arg("100")
                .status()
                .unwrap()
                .success()
        );
    };
    let mut out = format!(
        "## Unrelated activity on a watched filesystem\n\n\
         fsmon watches one small tree; the create-storm ({files} files) runs elsewhere on the same \
         filesystem.\n\n\
         | mark | workload time ratio min / median | fsmon CPU per unrelated kernel event | kernel events read | lines logged | own memory max during it (RssAnon + RssShmem) | VmRSS max during it |\n\
         |---|---|---|---|---|---|---|\n"
    );
    for mark in ["filesystem", "inode"] {
        let mut none = Vec::new();
        let mut with = Vec::new();
        let (mut cpu, mut logged, mut read) = (0.0f64, 0usize, 0f64);
        let (mut rss, mut own) = (0u64, 0u64);
        for rep in 0..o.reps {
            let busy = base.join(format!("elsewhere{rep}"));
            fs::create_dir_all(&busy).unwrap();
            let t = Instant::now();
            storm(&busy);
            none.push(t.elapsed().as_secs_f64());
            let _ = fs::remove_dir_all(&busy);
            fs::create_dir_all(&busy).unwrap();
            let env = Env::new();
            env.add("_global", &watched, &["-r", "--mark", mark]);
            let d = env.start(&[]);
            let events0 = kernel_events(&env);
            let cpu0 = cpu_secs(d.pid());
            let sampler = RssSampler::start(d.pid());
            let t = Instant::now();
            storm(&busy);
            with.push(t.elapsed().as_secs_f64());
            // Let the daemon read what the kernel queued before reading its CPU.
            std::thread::sleep(Duration::from_millis(500));
            let mem = sampler.finish();
            rss = rss.max(mem.rss_kb);
            own = own.max(mem.own_kb);
            cpu = cpu.max(cpu_secs(d.pid()) - cpu0);
            read = read.max(kernel_events(&env) - events0);
            d.stop();
            logged = logged.max(fsmon_tests::read_events(&env.log_path("_global")).len());
            let _ = fs::remove_dir_all(&busy);
        }
        let mut r: Vec<f64> = none.iter().zip(&with).map(|(a, b)| b / a).collect();
        let min = r.iter().cloned().fold(f64::MAX, f64::min);
        let per_event = if read > 0.0 {
            format!("{:.2} µs", cpu / read * 1e6)
        } else {
            format!("none read ({:.3} s of CPU in all)", cpu)
        };
        let _ = writeln!(
            out,
            "| {mark} | {min:.3} / {:.3} | {per_event} | {read:.0} | {logged} | {:.1} MiB | {:.1} MiB |",
            median(&mut r),
            own as f64 / 1024.0,
            rss as f64 / 1024.0
        );
    }
    out.push_str(
        "\nA filesystem mark makes the kernel generate events for the whole filesystem; fsmon drops \
         those outside its trees after one cached lookup of the directory. Inode marks generate \
         none.\n\n",
    );
    out
}

/// `fsmon_kernel_events_total` of a running daemon.
fn kernel_events(env: &Env) -> f64 {
    use std::io::{BufRead, Write};
    let mut c = std::os::unix::net::UnixStream::connect(&env.socket).unwrap();
    c.write_all(b"{\"op\":\"metrics\"}\n").unwrap();
    let mut line = String::new();
    std::io::BufReader::new(c).read_line(&mut line).unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    v["text"]
        .as_str()
        .unwrap_or("")
        .lines()
        .find_map(|l| l.strip_prefix("fsmon_kernel_events_total ")?.parse().ok())
        .unwrap_or(0.0)
}

// ---------------------------------------------------------------------------
// Inode marks on a large tree: start-up time and kernel memory
// ---------------------------------------------------------------------------

/// Kernel slab memory in KiB (/proc/meminfo `Slab:`).
fn slab_kb() -> u64 {
    fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Slab:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn bench_marks(o: &Opts) -> String {
    let dirs: usize = if o.quick { 10_000 } else { 100_000 };
    let loopfs = fsmon_tests::LoopFs::new_in("/dev/shm", "ext4", 2048);
    let root = loopfs.mountpoint.join("tree");
    // 100 top directories of 1,000 each.
    for i in 0..dirs {
        fs::create_dir_all(root.join(format!("t{}/d{i}", i % 100))).unwrap();
    }
    let total = dirs + 100 + 1;
    let mut out = format!(
        "## Inode marks on a tree of {total} directories\n\n\
         | mark | start-up (add to ready) | inode marks | kernel slab growth while watching | daemon RSS |\n\
         |---|---|---|---|---|\n"
    );
    for mark in ["filesystem", "inode"] {
        let env = Env::new();
        env.add("_global", &root, &["-r", "--mark", mark]);
        // Drop clean caches so both start from the same state, then measure.
        let _ = fs::write("/proc/sys/vm/drop_caches", "2");
        let slab0 = slab_kb();
        let t = Instant::now();
        let d = env.start(&[]);
        let secs = t.elapsed().as_secs_f64();
        let h: serde_json::Value = serde_json::from_str(&env.fsmon_ok(&["health"])).unwrap();
        let slab = slab_kb() as i64 - slab0 as i64;
        let rss = status_kb(d.pid(), "VmRSS:");
        let _ = writeln!(
            out,
            "| {mark} | {secs:.2} s | {} | {:.1} MiB ({:.0} bytes per directory) | {:.1} MiB |",
            h["inode_marks"],
            slab as f64 / 1024.0,
            slab as f64 * 1024.0 / total as f64,
            rss as f64 / 1024.0
        );
        d.stop();
    }
    out.push_str(
        "\nThe slab growth includes the directories' inodes and dentries that the marks keep in \
         memory (the walk reads them in; a mark pins its inode), measured on a shared machine.\n\n",
    );
    out
}

// ---------------------------------------------------------------------------
// Query: the last 1% of a 1,000,000-event log against jq and grep
// ---------------------------------------------------------------------------

fn bench_query(o: &Opts) -> String {
    let n: usize = if o.quick { 100_000 } else { 1_000_000 };
    let env = Env::new();
    fs::create_dir_all(&env.logs).unwrap();
    let log = env.log_path("_global");
    // Times: one event per 10 ms from 2026-05-07T00:00:00; the last 1%
    // start at a known instant.
    let t0 = chrono::DateTime::parse_from_rfc3339("2026-05-07T00:00:00+00:00").unwrap();
    let mut text = String::with_capacity(n * 240);
    for i in 0..n {
        let t = t0 + chrono::TimeDelta::milliseconds(i as i64 * 10);
        let _ = writeln!(
            text,
            "{{\"time\":\"{}\",\"event_type\":\"CLOSE_WRITE\",\"path\":\"/var/www/myapp/src/components/module{}/file{}.tsx\",\"pid\":{},\"cmd\":\"node\",\"user\":\"deploy\",\"file_size\":{},\"ppid\":1234,\"tgid\":{}}}",
            t.to_rfc3339_opts(chrono::SecondsFormat::Micros, false),
            i % 97,
            i,
            10_000 + i % 5000,
            i * 13 % 100_000,
            10_000 + i % 5000
        );
    }
    fs::write(&log, &text).unwrap();
    drop(text);
    let size_mb = fs::metadata(&log).unwrap().len() as f64 / 1e6;
    let cut = t0 + chrono::TimeDelta::milliseconds((n - n / 100) as i64 * 10);
    let cut_s = cut.to_rfc3339_opts(chrono::SecondsFormat::Micros, false);
    let expected = n / 100;
    let time_cmd = |cmd: &mut Command| -> (f64, usize) {
        let mut best = f64::MAX;
        let mut lines = 0;
        for _ in 0..3 {
            let start = Instant::now();
            let out = cmd
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .output()
                .unwrap();
            best = best.min(start.elapsed().as_secs_f64());
            lines = out
                .stdout
                .split(|&b| b == b'\n')
                .filter(|l| !l.is_empty())
                .count();
        }
        (best, lines)
    };
    // Warm the page cache so all three read from memory.
    let _ = fs::read(&log);
    let (fs_t, fs_n) = time_cmd(
        Command::new(fsmon_tests::fsmon_bin())
            .args([
                "--config",
                env.config.to_str().unwrap(),
                "query",
                "_global",
                "-t",
            ])
            .arg(format!(">={cut_s}")),
    );
    let (jq_t, jq_n) = time_cmd(
        Command::new("jq")
            .args(["-c", &format!("select(.time >= \"{cut_s}\")")])
            .arg(&log),
    );
    // grep: the same lines, by a pattern on the time prefix (the last 1%
    // here all fall at or after the cut, which is a whole 10 ms step).
    let prefix = &cut_s[..19]; // to the second
    let grep_pattern = format!("\"time\":\"({}|{})", regex_after(prefix, &cut_s), "^$");
    let (gr_t, gr_n) = time_cmd(Command::new("grep").args(["-E", &grep_pattern]).arg(&log));
    let mut report = format!(
        "## Query: last 1% of a {n}-event log ({size_mb:.0} MB), page cache warm, best of 3\n\n\
         | tool | lines | time | fsmon is faster by |\n|---|---|---|---|\n\
         | `fsmon query -t '>=…'` | {fs_n} (expected {expected}) | {:.1} ms | — |\n\
         | `jq -c 'select(.time >= …)'` | {jq_n} | {:.0} ms | {:.0}× (target ≥ 100×) |\n\
         | `grep -E` on the time prefix | {gr_n} | {:.0} ms | {:.1}× (target > 1×) |\n\n",
        fs_t * 1000.0,
        jq_t * 1000.0,
        jq_t / fs_t,
        gr_t * 1000.0,
        gr_t / fs_t
    );

    // Full scans with a path filter: fsmon's byte search before parsing,
    // against grep -F and jq on the same log.
    let dir = "/var/www/myapp/src/components/module42";
    let fsmon_cmd = |sub: &str, log_config: &Path, extra: &[&str]| {
        let mut c = Command::new(fsmon_tests::fsmon_bin());
        c.args(["--config", log_config.to_str().unwrap(), sub, "_global"])
            .args(extra);
        c
    };
    let (q_t, q_n) = time_cmd(&mut fsmon_cmd("query", &env.config, &["--path", dir]));
    let (c_t, c_n) = time_cmd(&mut fsmon_cmd("changes", &env.config, &["--path", dir]));
    let (g_t, g_n) = time_cmd(
        Command::new("grep")
            .arg("-F")
            .arg(format!("\"path\":\"{dir}/"))
            .arg(&log),
    );
    let (j_t, j_n) = time_cmd(
        Command::new("jq")
            .args(["-c", &format!("select(.path | startswith(\"{dir}/\"))")])
            .arg(&log),
    );
    let _ = write!(
        report,
        "## Query: a path filter over the whole {n}-event log, page cache warm, best of 3\n\n\
         | tool | lines | time | against `grep -F` (target ≤ 2×) |\n|---|---|---|---|\n\
         | `fsmon query --path {dir}` | {q_n} | {:.0} ms | {:.2}× |\n\
         | `fsmon changes --path {dir}` | {c_n} | {:.0} ms | {:.2}× |\n\
         | `grep -F '\"path\":\"{dir}/'` | {g_n} | {:.0} ms | 1× |\n\
         | `jq -c 'select(.path \\| startswith(…))'` | {j_n} | {:.0} ms | {:.1}× |\n\n",
        q_t * 1000.0,
        q_t / g_t,
        c_t * 1000.0,
        c_t / g_t,
        g_t * 1000.0,
        j_t * 1000.0,
        j_t / g_t,
    );

    // The same events in 10 zstd archives and a live log.
    let env2 = Env::new();
    fs::create_dir_all(&env2.logs).unwrap();
    let log2 = env2.log_path("_global");
    {
        let text = fs::read(&log).unwrap();
        let lines: Vec<&[u8]> = text.split_inclusive(|&b| b == b'\n').collect();
        let per = lines.len().div_ceil(11);
        for (k, chunk) in lines.chunks(per).enumerate() {
            let mut f = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log2)
                .unwrap();
            for l in chunk {
                f.write_all(l).unwrap();
            }
            drop(f);
            if k < 10 {
                fsmon::retention::rotate_now(&log2, chrono::Utc::now()).unwrap();
            }
        }
    }
    let on_disk: u64 = fs::read_dir(&env2.logs)
        .unwrap()
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    let mid_a = (t0 + chrono::TimeDelta::milliseconds((n / 11 * 5 - n / 200) as i64 * 10))
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, false);
    let mid_b = (t0 + chrono::TimeDelta::milliseconds((n / 11 * 5 + n / 200) as i64 * 10))
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, false);
    let window = |c: &Path| {
        let mut cmd = fsmon_cmd("query", c, &[]);
        cmd.args(["-t", &format!(">={mid_a}"), "-t", &format!("<{mid_b}")]);
        cmd
    };
    let recent = |c: &Path| {
        let mut cmd = fsmon_cmd("query", c, &[]);
        cmd.args(["-t", &format!(">={cut_s}")]);
        cmd
    };
    let (full1, full1_n) = time_cmd(&mut fsmon_cmd("query", &env.config, &[]));
    let (full2, full2_n) = time_cmd(&mut fsmon_cmd("query", &env2.config, &[]));
    let (rec1, rec1_n) = time_cmd(&mut recent(&env.config));
    let (rec2, rec2_n) = time_cmd(&mut recent(&env2.config));
    let (win1, win1_n) = time_cmd(&mut window(&env.config));
    let (win2, win2_n) = time_cmd(&mut window(&env2.config));
    let (path2, path2_n) = time_cmd(&mut fsmon_cmd("query", &env2.config, &["--path", dir]));
    let _ = write!(
        report,
        "## Query: one plain log against 10 zstd archives + the live log (same {n} events; {size_mb:.0} MB plain; archives + live log {:.1} MB on disk), best of 3\n\n\
         | query | one plain log | 10 archives + live log |\n|---|---|---|\n\
         | everything | {:.0} ms ({full1_n} lines) | {:.0} ms ({full2_n} lines) |\n\
         | last 1% (`-t '>=…'`, in the live log) | {:.1} ms ({rec1_n}) | {:.1} ms ({rec2_n}) |\n\
         | 1% across an archive boundary (`-t '>=…' -t '<…'`) | {:.1} ms ({win1_n}) | {:.1} ms ({win2_n}) |\n\
         | `--path` (full scan) | {:.0} ms ({q_n}) | {:.0} ms ({path2_n}) |\n\n",
        on_disk as f64 / 1e6,
        full1 * 1000.0,
        full2 * 1000.0,
        rec1 * 1000.0,
        rec2 * 1000.0,
        win1 * 1000.0,
        win2 * 1000.0,
        q_t * 1000.0,
        path2 * 1000.0,
    );
    report
}

/// A grep -E alternative matching RFC 3339 times from `cut` to the end of
/// that day (all our generated times after the cut fall within it).
fn regex_after(_prefix: &str, cut: &str) -> String {
    // cut looks like 2026-05-07T02:45:00.000000+00:00; match that hour's
    // later minutes and the later hours of the day.
    let (date, rest) = cut.split_at(11); // "2026-05-07T"
    let hour: u32 = rest[..2].parse().unwrap();
    let minute: u32 = rest[3..5].parse().unwrap();
    let second: u32 = rest[6..8].parse().unwrap();
    let mut alts = vec![format!(
        "{date}{hour:02}:{minute:02}:({})",
        range_alt(second, 59)
    )];
    if minute < 59 {
        alts.push(format!("{date}{hour:02}:({})", range_alt(minute + 1, 59)));
    }
    if hour < 23 {
        alts.push(format!("{date}({})", range_alt(hour + 1, 23)));
    }
    alts.join("|")
}

fn range_alt(from: u32, to: u32) -> String {
    (from..=to)
        .map(|v| format!("{v:02}"))
        .collect::<Vec<_>>()
        .join("|")
}
