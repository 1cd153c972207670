//! fsmon against the tools users would otherwise pick: fatrace, auditd
//! (`-w DIR -p wa`) and `inotifywait -m -r`, on the same workloads, with the
//! monitors interleaved and repeated in one run.
//!
//! Each tool reports a different kind of event, so each is scored in its own
//! model, against the events *it* could have reported:
//! - fsmon: every event line (CREATE, CLOSE_WRITE, MOVED_FROM/TO, DELETE,
//!   and the directory ones), with pid and process name.
//! - inotifywait: the same kinds, but no process at all.
//! - fatrace: names a file only for its open/write/close line; creates,
//!   deletes and renames name the directory only. Counted: written files.
//! - auditd: one record per audited syscall, with PATH items named CREATE or
//!   DELETE (a rename is one of each). No close: CLOSE_WRITE is not counted.
use std::{
    collections::{HashMap, HashSet},
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use fsmon_tests::{Env, testkit_bin};

use super::{Opts, RssSampler, cpu_secs, median, status_kb};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Tool {
    None,
    Fsmon,
    Inotifywait,
    Fatrace,
    Auditd,
}

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Tool::None => "no monitor",
            Tool::Fsmon => "fsmon",
            Tool::Inotifywait => "inotifywait -m -r",
            Tool::Fatrace => "fatrace -c",
            Tool::Auditd => "auditd -w DIR -p wa",
        }
    }
}

/// One fact a monitor reported: kind, path, and the process when known.
#[derive(Debug, Clone)]
struct Fact {
    kind: String,
    path: String,
    pid: Option<u32>,
    comm: Option<String>,
}

/// A running monitor.
struct Running {
    tool: Tool,
    /// The process whose CPU and memory we measure.
    child: Option<Child>,
    pid: u32,
    out: PathBuf,
    _env: Option<Env>,
    daemon: Option<fsmon_tests::Daemon>,
    audit_key: String,
    dir: PathBuf,
}

fn free_check(cmd: &str, pkg: &str) {
    if Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| !s.success())
        .unwrap_or(true)
    {
        panic!("{cmd} not found: install the Debian package {pkg} (cargo xtask setup does)");
    }
}

/// Waits until `probe` (a file created in the watched dir) shows up in the
/// monitor's output: the monitor is then really watching.
fn wait_probe(out: &Path, dir: &Path, tool: Tool) {
    let probe = dir.join(".probe");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let _ = fs::write(&probe, b"p");
        let text = fs::read_to_string(out).unwrap_or_default();
        let seen = match tool {
            Tool::Auditd => text.contains(".probe"),
            _ => text.contains(".probe"),
        };
        if seen {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} did not start watching",
            tool.name()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = fs::remove_file(&probe);
}

fn start(tool: Tool, dir: &Path, tmp: &Path, types: &str) -> Running {
    let out = tmp.join(format!("{tool:?}.out"));
    let _ = fs::remove_file(&out);
    let mut r = Running {
        tool,
        child: None,
        pid: 0,
        out: out.clone(),
        _env: None,
        daemon: None,
        audit_key: String::new(),
        dir: dir.to_path_buf(),
    };
    match tool {
        Tool::None => {}
        Tool::Fsmon => {
            let env = Env::new();
            env.add("_global", dir, &["-r", "--types", types]);
            let d = env.start(&[]);
            r.pid = d.pid();
            r.out = env.log_path("_global");
            r.daemon = Some(d);
            r._env = Some(env);
        }
        Tool::Inotifywait => {
            free_check("inotifywait", "inotify-tools");
            let mut c = Command::new("inotifywait")
                .args([
                    "-m",
                    "-r",
                    "--format",
                    "%e %w%f",
                    "-e",
                    "create,close_write,delete,moved_from,moved_to",
                    "-o",
                ])
                .arg(&out)
                .arg(dir)
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let err = c.stderr.take().unwrap();
            let mut lines = BufReader::new(err).lines();
            loop {
                match lines.next() {
                    Some(Ok(l)) if l.contains("Watches established") => break,
                    Some(_) => continue,
                    None => panic!("inotifywait exited"),
                }
            }
            std::thread::spawn(move || for _ in lines {});
            r.pid = c.id();
            r.child = Some(c);
        }
        Tool::Fatrace => {
            free_check("fatrace", "fatrace");
            // fatrace writes through stdio: line-buffer it, or nothing shows
            // until it exits.
            let c = Command::new("stdbuf")
                .args(["-oL", "fatrace", "-c"])
                .current_dir(dir)
                .stdout(fs::File::create(&out).unwrap())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            r.pid = c.id();
            r.child = Some(c);
            wait_probe(&out, dir, tool);
        }
        Tool::Auditd => {
            free_check("auditd", "auditd");
            // Our own auditd instance, config and log: nothing in /etc or
            // /var/log/audit is touched.
            let conf_dir = tmp.join("audit");
            fs::create_dir_all(&conf_dir).unwrap();
            fs::write(
                conf_dir.join("auditd.conf"),
                format!(
                    "log_file = {}\nlog_format = RAW\nflush = INCREMENTAL_ASYNC\nfreq = 50\nmax_log_file = 0\nmax_log_file_action = IGNORE\n\
                     num_logs = 1\nspace_left = 2\nadmin_space_left = 1\ndisk_full_action = IGNORE\ndisk_error_action = IGNORE\n\
                     space_left_action = IGNORE\nadmin_space_left_action = IGNORE\nlocal_events = yes\nwrite_logs = yes\n",
                    out.display()
                ),
            )
            .unwrap();
            let c = Command::new("auditd")
                .arg("-n")
                .arg("-c")
                .arg(&conf_dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            r.pid = c.id();
            r.child = Some(c);
            // Debian's default rules set a backlog of 8192 (the kernel's
            // default of 64 would throttle every workload here).
            let deadline = Instant::now() + Duration::from_secs(20);
            while !String::from_utf8_lossy(
                &Command::new("auditctl").arg("-s").output().unwrap().stdout,
            )
            .contains(&format!("pid {}", r.pid))
            {
                assert!(Instant::now() < deadline, "auditd did not register");
                std::thread::sleep(Duration::from_millis(50));
            }
            r.audit_key = format!("fsmonbench{}", std::process::id());
            for args in [vec!["-e", "1"], vec!["-b", "8192"]] {
                let _ = Command::new("auditctl").args(&args).output();
            }
            let st = Command::new("auditctl")
                .arg("-w")
                .arg(dir)
                .args(["-p", "wa", "-k", &r.audit_key])
                .output()
                .unwrap();
            assert!(
                st.status.success(),
                "auditctl -w: {}",
                String::from_utf8_lossy(&st.stderr)
            );
            wait_probe(&out, dir, tool);
        }
    }
    r
}

fn stop(mut r: Running) -> (PathBuf, u64) {
    let hwm = if r.pid != 0 {
        status_kb(r.pid, "VmHWM:")
    } else {
        0
    };
    if r.tool == Tool::Auditd {
        let _ = Command::new("auditctl")
            .arg("-W")
            .arg(&r.dir)
            .args(["-p", "wa", "-k", &r.audit_key])
            .output();
    }
    if let Some(mut c) = r.child.take() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = c.wait();
    }
    if let Some(d) = r.daemon.take() {
        d.stop();
    }
    let out = r.out.clone();
    // The fsmon env owns its temp dir: copy the log out before it goes.
    if r.tool == Tool::Fsmon {
        let keep = r
            .dir
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .join(format!("fsmon-{}.out", std::process::id()));
        let _ = fs::copy(&out, &keep);
        return (keep, hwm);
    }
    (out, hwm)
}

/// Parses a monitor's output into facts under `dir`.
fn facts(tool: Tool, out: &Path, dir: &Path) -> Vec<Fact> {
    let prefix = dir.to_string_lossy().into_owned();
    let under = |p: &str| p == prefix || p.starts_with(&format!("{prefix}/"));
    let text = fs::read_to_string(out).unwrap_or_default();
    let mut v = Vec::new();
    match tool {
        Tool::None => {}
        Tool::Fsmon => {
            for l in text.lines() {
                let Ok(e) = serde_json::from_str::<serde_json::Value>(l) else {
                    continue;
                };
                let p = e["path"].as_str().unwrap_or("");
                if under(p) {
                    v.push(Fact {
                        kind: e["event_type"].as_str().unwrap_or("").to_string(),
                        path: p.to_string(),
                        pid: e["pid"].as_u64().map(|x| x as u32),
                        comm: e["cmd"].as_str().map(str::to_string),
                    });
                }
            }
        }
        Tool::Inotifywait => {
            for l in text.lines() {
                let Some((ev, p)) = l.split_once(' ') else {
                    continue;
                };
                if under(p) {
                    let kind = ev.split(',').next().unwrap_or("").to_string();
                    v.push(Fact {
                        kind,
                        path: p.to_string(),
                        pid: None,
                        comm: None,
                    });
                }
            }
        }
        Tool::Fatrace => {
            // "comm(pid): FLAGS path"
            for l in text.lines() {
                let Some((who, rest)) = l.split_once("): ") else {
                    continue;
                };
                let Some((comm, pid)) = who.rsplit_once('(') else {
                    continue;
                };
                let rest = rest.trim_start();
                let Some((flags, p)) = rest.split_once(' ') else {
                    continue;
                };
                let p = p.trim_start();
                if !under(p) {
                    continue;
                }
                // Only open/write/close lines name the file itself.
                if flags.contains('W') || flags.contains('C') {
                    v.push(Fact {
                        kind: "CLOSE_WRITE".into(),
                        path: p.to_string(),
                        pid: pid.parse().ok(),
                        comm: Some(comm.to_string()),
                    });
                }
            }
        }
        Tool::Auditd => {
            // Join PATH items to their SYSCALL record by serial.
            let serial = |l: &str| {
                l.split("msg=audit(")
                    .nth(1)
                    .and_then(|s| s.split(')').next())
                    .map(str::to_string)
            };
            let field = |l: &str, k: &str| -> Option<String> {
                let i = l.find(&format!(" {k}="))? + k.len() + 2;
                let s = &l[i..];
                Some(if let Some(q) = s.strip_prefix('"') {
                    q.split('"').next()?.to_string()
                } else {
                    s.split(' ').next()?.to_string()
                })
            };
            let mut procs: HashMap<String, (u32, String)> = HashMap::new();
            for l in text.lines().filter(|l| l.starts_with("type=SYSCALL")) {
                if let (Some(s), Some(pid), Some(comm)) =
                    (serial(l), field(l, "pid"), field(l, "comm"))
                {
                    procs.insert(s, (pid.parse().unwrap_or(0), comm));
                }
            }
            for l in text.lines().filter(|l| l.starts_with("type=PATH")) {
                let Some(kind) = field(l, "nametype") else {
                    continue;
                };
                if kind != "CREATE" && kind != "DELETE" {
                    continue;
                }
                let name = field(l, "name").unwrap_or_default();
                let (pid, comm) = serial(l).and_then(|s| procs.get(&s).cloned()).unzip();
                // rm -rf uses unlinkat relative to a directory: the name is
                // then relative and the full path unknown; count it.
                let path = if name.starts_with('/') {
                    name
                } else {
                    format!("{prefix}/?/{name}")
                };
                if under(&path) {
                    v.push(Fact {
                        kind,
                        path,
                        pid,
                        comm,
                    });
                }
            }
        }
    }
    v
}

/// Workloads for the peer comparison.
#[derive(Clone, Copy)]
enum Work {
    Storm {
        files: usize,
        dirs: usize,
    },
    RmRf {
        files: usize,
    },
    /// 500 short-lived `touch` processes and 200 `sh -c 'echo > F'` writes.
    Attribution,
}

impl Work {
    fn name(self) -> String {
        match self {
            Work::Storm { files, dirs } => format!("create-storm ({files} files, {dirs} dirs)"),
            Work::RmRf { files } => format!("rm -rf ({files} files)"),
            Work::Attribution => "500 short-lived touch + 200 sh -c writes".into(),
        }
    }
    fn types(self) -> &'static str {
        match self {
            Work::RmRf { .. } => "DELETE,DELETE_SELF",
            _ => "CREATE,CLOSE_WRITE,ATTRIB,DELETE,DELETE_SELF,MOVED_FROM,MOVED_TO,MOVE_SELF",
        }
    }
    fn prepare(self, dir: &Path) {
        if let Work::RmRf { files } = self {
            let st = Command::new(testkit_bin())
                .arg("mktree")
                .arg(dir.join("tree"))
                .arg(files.to_string())
                .arg("50")
                .status()
                .unwrap();
            assert!(st.success());
        }
    }
    /// Runs it; returns the expected process per path (attribution) or the
    /// workload's own (pid, comm).
    fn run(self, dir: &Path) -> Expect {
        match self {
            Work::Storm { files, dirs } => {
                let mut c = Command::new(testkit_bin())
                    .arg("storm")
                    .arg(dir)
                    .arg(files.to_string())
                    .arg(dirs.to_string())
                    .spawn()
                    .unwrap();
                let pid = c.id();
                assert!(c.wait().unwrap().success());
                Expect::One(pid, "fsmon-testkit".into())
            }
            Work::RmRf { .. } => {
                let mut c = Command::new("rm")
                    .arg("-rf")
                    .arg(dir.join("tree"))
                    .spawn()
                    .unwrap();
                let pid = c.id();
                assert!(c.wait().unwrap().success());
                Expect::One(pid, "rm".into())
            }
            Work::Attribution => {
                let mut per_path = HashMap::new();
                for (cmd, n, comm) in [("touches", 500, "touch"), ("shwrites", 200, "sh")] {
                    let out = Command::new(testkit_bin())
                        .arg(cmd)
                        .arg(dir)
                        .arg(n.to_string())
                        .output()
                        .unwrap();
                    for l in String::from_utf8_lossy(&out.stdout).lines() {
                        if let Some((pid, p)) = l.split_once(' ') {
                            per_path.insert(
                                p.to_string(),
                                (pid.parse().unwrap_or(0), comm.to_string()),
                            );
                        }
                    }
                }
                Expect::PerPath(per_path)
            }
        }
    }
    /// Events this tool could report for this workload, in its own model.
    fn expected(self, tool: Tool) -> Option<u64> {
        let (f, d) = match self {
            Work::Storm { files, dirs } => (files as u64, dirs as u64),
            Work::RmRf { files } => (files as u64, 51),
            Work::Attribution => (700, 0),
        };
        Some(match (self, tool) {
            (_, Tool::None) => 0,
            (Work::Storm { .. }, Tool::Fsmon) => 5 * f + 3 * d,
            (Work::Storm { .. }, Tool::Inotifywait) => 5 * f + 2 * d,
            (Work::Storm { .. }, Tool::Fatrace) => f,
            (Work::Storm { .. }, Tool::Auditd) => 4 * f + 2 * d,
            (Work::RmRf { .. }, Tool::Fsmon) => f + 2 * d,
            (Work::RmRf { .. }, Tool::Inotifywait) => f + d,
            (Work::RmRf { .. }, Tool::Fatrace) => return None,
            (Work::RmRf { .. }, Tool::Auditd) => f + d,
            (Work::Attribution, _) => f,
        })
    }
}

enum Expect {
    One(u32, String),
    PerPath(HashMap<String, (u32, String)>),
}

struct Score {
    secs: f64,
    captured: u64,
    /// (correct, checked) pid+comm.
    correct: (u64, u64),
    cpu: f64,
    rss_max_kb: u64,
    hwm_kb: u64,
    drain_ms: f64,
}

fn count(work: Work, tool: Tool, facts: &[Fact], expect: &Expect) -> (u64, (u64, u64)) {
    match (work, expect) {
        (Work::Attribution, Expect::PerPath(want)) => {
            // One fact per written path: the CREATE (or, for fatrace, the
            // write line) of each t_i / s_i.
            let mut seen: HashMap<&str, &Fact> = HashMap::new();
            for f in facts {
                let relevant = match tool {
                    Tool::Fatrace => f.kind == "CLOSE_WRITE",
                    _ => f.kind == "CREATE",
                };
                if relevant && want.contains_key(&f.path) {
                    seen.entry(f.path.as_str()).or_insert(f);
                }
            }
            let right = seen
                .iter()
                .filter(|(p, f)| {
                    let (pid, comm) = &want[**p];
                    f.pid == Some(*pid) && f.comm.as_deref() == Some(comm.as_str())
                })
                .count() as u64;
            let checked = if tool == Tool::Inotifywait {
                0
            } else {
                seen.len() as u64
            };
            (seen.len() as u64, (right, checked))
        }
        (_, Expect::One(pid, comm)) => {
            let relevant: Vec<&Fact> = match tool {
                // fatrace: distinct written files.
                Tool::Fatrace => {
                    let mut s = HashSet::new();
                    facts.iter().filter(|f| s.insert(f.path.clone())).collect()
                }
                _ => facts.iter().collect(),
            };
            let with_pid: Vec<&&Fact> = relevant.iter().filter(|f| f.pid.is_some()).collect();
            let right = with_pid
                .iter()
                .filter(|f| f.pid == Some(*pid) && f.comm.as_deref() == Some(comm.as_str()))
                .count() as u64;
            (relevant.len() as u64, (right, with_pid.len() as u64))
        }
        _ => (0, (0, 0)),
    }
}

fn run_one(work: Work, tool: Tool, base: &Path, rep: usize) -> Score {
    let root = base.join(format!("{rep}-{tool:?}"));
    let dir = root.join("w");
    fs::create_dir_all(&dir).unwrap();
    work.prepare(&dir);
    // The monitors' own output lives on another filesystem: fatrace watches
    // the whole mount, and would otherwise report its own writes.
    let outdir = tempfile::Builder::new()
        .prefix("fsmon-peer-out-")
        .tempdir_in("/tmp")
        .unwrap();
    let mon = start(tool, &dir, outdir.path(), work.types());
    let pid = mon.pid;
    let cpu0 = if pid != 0 { cpu_secs(pid) } else { 0.0 };
    let sampler = (pid != 0).then(|| RssSampler::start(pid));
    let start_t = Instant::now();
    let expect = work.run(&dir);
    let secs = start_t.elapsed().as_secs_f64();
    let ended = Instant::now();
    let expected = work.expected(tool).unwrap_or(0);
    // Wait for the output to reach what is expected, or to stop growing.
    let mut drain_ms = 0.0;
    let (mut last_len, mut last_change) = (0u64, Instant::now());
    let out_for_wait = mon.out.clone();
    if tool != Tool::None {
        loop {
            let len = fs::metadata(&out_for_wait).map(|m| m.len()).unwrap_or(0);
            if len != last_len {
                last_len = len;
                last_change = Instant::now();
                drain_ms = ended.elapsed().as_secs_f64() * 1000.0;
            }
            let done_count = if expected > 0 && last_change.elapsed() > Duration::from_millis(100) {
                count(work, tool, &facts(tool, &out_for_wait, &dir), &expect).0 >= expected
            } else {
                false
            };
            if done_count || last_change.elapsed() > Duration::from_secs(2) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let rss_max_kb = sampler.map(|s| s.finish().rss_kb).unwrap_or(0);
    let cpu = if pid != 0 { cpu_secs(pid) - cpu0 } else { 0.0 };
    let (out, hwm_kb) = stop(mon);
    let (captured, correct) = count(work, tool, &facts(tool, &out, &dir), &expect);
    if tool == Tool::Fsmon {
        let _ = fs::remove_file(&out);
    }
    let _ = fs::remove_dir_all(&root);
    eprintln!(
        "  {} / {}: {secs:.3} s, captured {captured}",
        work.name(),
        tool.name()
    );
    Score {
        secs,
        captured,
        correct,
        cpu,
        rss_max_kb,
        hwm_kb,
        drain_ms,
    }
}

pub fn bench_peers(o: &Opts, base: &Path) -> String {
    let tools = [Tool::Fsmon, Tool::Inotifywait, Tool::Fatrace, Tool::Auditd];
    let works = [
        Work::Storm {
            files: if o.quick { 5_000 } else { 20_000 },
            dirs: 100,
        },
        Work::RmRf { files: 5_000 },
        Work::Attribution,
    ];
    let mut out = String::from(
        "## Against peers (same workloads, monitors interleaved, repeated)\n\n\
         Each tool is scored in its own event model (see the notes below the table): *expected* is what that tool could have reported.\n\n\
         | workload | monitor | expected | captured (min) | loss | pid+name correct | time ratio min / median | CPU s | CPU per event | RSS max during workload | peak RSS | last event after |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for work in works {
        let reps = if matches!(work, Work::RmRf { .. }) {
            o.reps * 2
        } else {
            o.reps
        };
        let mut scores: HashMap<&'static str, Vec<Score>> = HashMap::new();
        for rep in 0..reps {
            scores
                .entry("none")
                .or_default()
                .push(run_one(work, Tool::None, base, rep));
            for t in tools {
                scores
                    .entry(t.name())
                    .or_default()
                    .push(run_one(work, t, base, rep));
            }
        }
        let none: Vec<f64> = scores["none"].iter().map(|s| s.secs).collect();
        for t in tools {
            let v = &scores[t.name()];
            let mut ratios: Vec<f64> = v.iter().zip(&none).map(|(s, n)| s.secs / n).collect();
            let min_ratio = ratios.iter().cloned().fold(f64::MAX, f64::min);
            let med = median(&mut ratios);
            let expected = work.expected(t);
            let captured = v.iter().map(|s| s.captured).min().unwrap_or(0);
            let loss = match expected {
                Some(e) if e > 0 => format!(
                    "{:.1}%",
                    100.0 * e.saturating_sub(captured) as f64 / e as f64
                ),
                _ => "n/a".into(),
            };
            let (right, checked) = v
                .iter()
                .fold((0, 0), |a, s| (a.0 + s.correct.0, a.1 + s.correct.1));
            let correct = if checked == 0 {
                "n/a (no pid)".to_string()
            } else {
                format!("{:.1}%", 100.0 * right as f64 / checked as f64)
            };
            let cpu = v.iter().map(|s| s.cpu).fold(0.0, f64::max);
            let per_event = if captured > 0 {
                format!("{:.1} µs", cpu / captured as f64 * 1e6)
            } else {
                "—".into()
            };
            let rss = v.iter().map(|s| s.rss_max_kb).max().unwrap_or(0);
            let hwm = v.iter().map(|s| s.hwm_kb).max().unwrap_or(0);
            let mut drains: Vec<f64> = v.iter().map(|s| s.drain_ms).collect();
            out.push_str(&format!(
                "| {} | {} | {} | {captured} | {loss} | {correct} | {min_ratio:.3} / {med:.3} | {cpu:.3} | {per_event} | {:.1} MiB | {:.1} MiB | {:.0} ms |\n",
                work.name(),
                t.name(),
                expected.map_or("n/a".into(), |e| e.to_string()),
                rss as f64 / 1024.0,
                hwm as f64 / 1024.0,
                median(&mut drains),
            ));
        }
        out.push_str(&format!(
            "| {} | no monitor | | | | | times: {} s | | | | | |\n",
            work.name(),
            none.iter()
                .map(|s| format!("{s:.3}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    out.push_str(
        "\nNotes: inotifywait reports no process, so its pid/name column is n/a. fatrace names a file only on its \
         open/write/close line (create, delete and rename name the directory), so for it *expected* counts written \
         files, and rm -rf is n/a. auditd logs syscalls, not closes: CLOSE_WRITE is not counted for it; its \
         userspace CPU is shown (the kernel's audit work shows up in the workload's time). \"last event after\" is \
         the time from the workload's end until the monitor's output stopped growing or was complete.\n\n",
    );
    out
}
