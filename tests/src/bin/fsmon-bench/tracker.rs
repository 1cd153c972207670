//! Process-tracker workloads (issue #10):
//!
//! - `tracker-idle`: daemon CPU over 60 s (20 s with --quick) with 0, 3,000
//!   and 30,000 extra sleeping processes on the machine;
//! - `tracker-storm`: attribution cost on the create-storm (lookups per
//!   event, ns per event);
//! - `tracker-forks`: the fork rate at which attribution starts to miss;
//! - `tracker-mem`: kernel memory of the maps at the default and the
//!   maximum capacity.
use std::{
    fmt::Write as _,
    fs,
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use fsmon::process::{MAX_MAP_CAPACITY, ProcessTracker, TrackerConfig, TrackerKind};
use fsmon_tests::{Env, testkit_bin, wait_for};
use serde_json::Value;

use super::{Opts, cpu_secs};

fn request(env: &Env, req: &str) -> Value {
    let mut s = UnixStream::connect(&env.socket).expect("connect to the daemon");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(format!("{req}\n").as_bytes()).unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    serde_json::from_str(&line).expect("a JSON response")
}

fn health(env: &Env) -> Value {
    request(env, r#"{"op":"health"}"#)
}

/// Sum of a Prometheus metric's samples.
fn metric(env: &Env, name: &str) -> f64 {
    let m = request(env, r#"{"op":"metrics"}"#);
    m["text"]
        .as_str()
        .unwrap_or("")
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            (rest.starts_with(' ') || rest.starts_with('{'))
                .then(|| rest.rsplit(' ').next()?.parse::<f64>().ok())?
        })
        .sum()
}

/// `fsmon-testkit sleepers N`, alive until dropped.
struct Sleepers(Option<Child>);

impl Sleepers {
    fn start(n: u64) -> Self {
        if n == 0 {
            return Sleepers(None);
        }
        let mut c = Command::new(testkit_bin())
            .args(["sleepers", &n.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("fsmon-testkit sleepers");
        let mut line = String::new();
        BufReader::new(c.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "sleepers did not start");
        Sleepers(Some(c))
    }
}

impl Drop for Sleepers {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            drop(c.stdin.take());
            let _ = c.wait();
        }
    }
}

/// Pids (processes and threads) that can still be created.
fn pid_headroom() -> u64 {
    let max: u64 = fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(32768);
    let used: u64 = fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().nth(3)?.split('/').nth(1)?.parse().ok())
        .unwrap_or(0);
    max.saturating_sub(used)
}

/// Processes created on the whole machine since boot (`/proc/stat`).
fn machine_forks() -> u64 {
    fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("processes "))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

pub fn bench_idle(o: &Opts) -> String {
    let window = Duration::from_secs(if o.quick { 20 } else { 60 });
    let mut out = format!(
        "## Process tracker: idle daemon CPU with many processes\n\n\
         The daemon watches one empty tree on a filesystem of its own (so other file activity \
         on the machine does not reach it); N extra processes sleep on the machine. CPU of all \
         its threads over {} s (after 5 s to settle). Other processes keep forking and exiting \
         on a shared machine: their exits are the daemon's only work here, so the machine's \
         fork rate in the window is shown. Target: below 0.1% of a core in every case.\n\n\
         | extra sleeping processes | live map entries | forks/s on the machine | daemon CPU | share of a core |\n|---|---|---|---|---|\n",
        window.as_secs()
    );
    let fs_ = fsmon_tests::LoopFs::new_in("/dev/shm", "ext4", 64);
    for wanted in [0u64, 3_000, 30_000] {
        // Leave room for everyone else on the machine (pid_max is global).
        let n = wanted.min(pid_headroom().saturating_sub(2_000));
        let sleepers = Sleepers::start(n);
        let env = Env::new();
        let tree = fs_.mountpoint.join(format!("idle{wanted}"));
        fs::create_dir_all(&tree).unwrap();
        env.add("_global", &tree, &["-r"]);
        let d = env.start(&[]);
        std::thread::sleep(Duration::from_secs(5));
        let live = health(&env)["ebpf_live_entries"].as_u64().unwrap_or(0);
        let (c0, f0) = (cpu_secs(d.pid()), machine_forks());
        let t0 = Instant::now();
        std::thread::sleep(window);
        let (cpu, forks) = (cpu_secs(d.pid()) - c0, machine_forks() - f0);
        let secs = t0.elapsed().as_secs_f64();
        d.stop();
        drop(sleepers);
        let shown = if n == wanted {
            format!("{n}")
        } else {
            format!("{n} (of {wanted}: pid_max headroom)")
        };
        let _ = writeln!(
            out,
            "| {shown} | {live} | {:.0} | {:.1} ms | {:.3}% |",
            forks as f64 / secs,
            cpu * 1e3,
            cpu / secs * 100.0
        );
    }
    out.push('\n');
    out
}

pub fn bench_storm(o: &Opts) -> String {
    let files = if o.quick { 5_000 } else { 20_000 };
    let env = Env::new();
    env.add("_global", &env.watch, &["-r"]);
    let d = env.start(&[]);
    let l0 = metric(&env, "fsmon_process_lookups_total");
    let k0 = metric(&env, "fsmon_kernel_events_total");
    let st = Command::new(testkit_bin())
        .arg("storm")
        .arg(&env.watch)
        .args([&files.to_string(), "20"])
        .status()
        .unwrap();
    assert!(st.success());
    let expected = (files * 5 + 20 * 3) as u64;
    wait_for("the storm logged", Duration::from_secs(300), || {
        (health(&env)["events_logged"].as_u64()? >= expected).then_some(())
    });
    // Metrics are published once a second.
    std::thread::sleep(Duration::from_millis(1500));
    let lookups = metric(&env, "fsmon_process_lookups_total") - l0;
    let kernel = metric(&env, "fsmon_kernel_events_total") - k0;
    let logged = health(&env)["events_logged"].as_u64().unwrap_or(0) as f64;
    d.stop();

    // The cost of one lookup of a live process, in this process.
    let mut t = ProcessTracker::start(&TrackerConfig::default()).expect("tracker");
    assert_eq!(t.kind(), TrackerKind::Ebpf);
    let me = std::process::id();
    let n = 20_000;
    let start = Instant::now();
    for _ in 0..n {
        std::hint::black_box(t.record_at(me, u64::MAX - 1));
    }
    let ns_lookup = start.elapsed().as_nanos() as f64 / n as f64;
    let per_event = lookups / logged.max(1.0);
    format!(
        "## Process tracker: attribution cost on the create-storm\n\n\
         create-storm of {files} files: {logged:.0} events logged ({kernel:.0} read from the kernel), \
         {lookups:.0} process lookups: **{per_event:.3} lookups per logged event** (the pipeline \
         looks a pid up once per batch run of the same process). One lookup of a live process \
         (one `bpf()` map lookup) costs {ns_lookup:.0} ns, so attribution costs \
         **{:.0} ns per event**.\n\n",
        per_event * ns_lookup
    )
}

pub fn bench_forks(o: &Opts) -> String {
    let mut out = String::from(
        "## Process tracker: fork rate against attribution\n\n\
         N parallel forkers (`fsmon-testkit churn`: fork + exit, every 50th child execs `touch` \
         in the watched tree); default capacity. Right = the logged CREATE names the writer's \
         pid and `touch`.\n\n\
         | forkers | processes | forks/s | writers attributed right | tracker losses |\n|---|---|---|---|---|\n",
    );
    let per = if o.quick { 10_000 } else { 40_000 };
    let mut worst_rate_all_right = 0.0f64;
    let mut first_miss: Option<f64> = None;
    for forkers in [1u64, 2, 4] {
        let env = Env::new();
        env.add("_global", &env.watch, &["-r", "--types", "CREATE"]);
        let d = env.start(&[]);
        let t0 = Instant::now();
        let kids: Vec<Child> = (0..forkers)
            .map(|k| {
                let dir = env.watch.join(format!("k{k}"));
                fs::create_dir_all(&dir).unwrap();
                Command::new(testkit_bin())
                    .arg("churn")
                    .arg(&dir)
                    .arg(per.to_string())
                    .arg("50")
                    .stdout(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let mut writers = Vec::new();
        for c in kids {
            let o = c.wait_with_output().unwrap();
            for l in String::from_utf8(o.stdout).unwrap().lines() {
                let (pid, p) = l.split_once(' ').unwrap();
                writers.push((pid.parse::<u64>().unwrap(), p.to_string()));
            }
        }
        let secs = t0.elapsed().as_secs_f64();
        let total = per * forkers;
        let rate = total as f64 / secs;
        let log = env.log_path("_global");
        let evs: Vec<Value> = wait_for("the writers' events", Duration::from_secs(120), || {
            let evs = fsmon_tests::read_events(&log);
            (evs.iter().filter(|e| e["event_type"] == "CREATE").count() >= writers.len())
                .then_some(evs)
        });
        let by_path: std::collections::HashMap<&str, &Value> = evs
            .iter()
            .filter(|e| e["event_type"] == "CREATE")
            .map(|e| (e["path"].as_str().unwrap_or(""), e))
            .collect();
        let right = writers
            .iter()
            .filter(|(pid, p)| {
                by_path
                    .get(p.as_str())
                    .is_some_and(|e| e["pid"] == *pid && e["cmd"] == "touch")
            })
            .count();
        let losses = health(&env)["tracker_losses"].to_string();
        d.stop();
        let _ = writeln!(
            out,
            "| {forkers} | {total} | {rate:.0} | {right}/{} | {losses} |",
            writers.len()
        );
        if right == writers.len() {
            worst_rate_all_right = worst_rate_all_right.max(rate);
        } else if first_miss.is_none() {
            first_miss = Some(rate);
        }
    }
    match first_miss {
        None => {
            let _ = writeln!(
                out,
                "\nNo miss found up to {worst_rate_all_right:.0} forks/s (the most this machine \
                 sustained here).\n"
            );
        }
        Some(r) => {
            let _ = writeln!(out, "\nFirst misses at {r:.0} forks/s.\n");
        }
    }
    out
}

/// Kernel memory of the BPF maps this process holds (fdinfo `memlock`).
fn map_memory() -> u64 {
    let Ok(fds) = fs::read_dir("/proc/self/fdinfo") else {
        return 0;
    };
    fds.flatten()
        .filter_map(|e| fs::read_to_string(e.path()).ok())
        .filter(|t| t.contains("map_type:"))
        .filter_map(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("memlock:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
        .sum()
}

pub fn bench_mem(_o: &Opts) -> String {
    let mut out = String::from(
        "## Process tracker: kernel memory of the maps\n\n\
         Sum of `memlock` of the tracker's maps (live and exited maps, preallocated at the \
         capacity; the exit ring; the seeded-bits map, allocated as used; small maps), from `/proc/self/fdinfo`.\n\n\
         | capacity (`--proc-map-capacity`) | kernel memory |\n|---|---|\n",
    );
    for cap in [fsmon_common::DEFAULT_PROC_MAP_CAPACITY, MAX_MAP_CAPACITY] {
        let before = map_memory();
        let cfg = TrackerConfig {
            map_capacity: cap,
            ..Default::default()
        };
        let t = ProcessTracker::start(&cfg).expect("tracker");
        assert_eq!(t.kind(), TrackerKind::Ebpf, "{:?}", t.fallback_reason());
        let bytes = map_memory().saturating_sub(before);
        drop(t);
        let _ = writeln!(
            out,
            "| {cap} | {:.1} MiB |",
            bytes as f64 / (1024.0 * 1024.0)
        );
    }
    out.push('\n');
    out
}
