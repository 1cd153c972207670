//! Shipping to NATS JetStream: the rate at 0 loss, the daemon's CPU per
//! shipped event, the delay from an event's line being written to the
//! stream storing it, and the create-storm with shipping on against off.
use std::{
    fmt::Write as _,
    fs,
    net::TcpListener,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use fsmon_tests::{Env, testkit_bin, wait_for};
use futures_util::StreamExt;

use super::{Opts, cpu_secs, median};

/// A local nats-server with JetStream; killed on drop.
struct Nats {
    child: Child,
    url: String,
}

/// How the local server is scheduled: it stands for a server on another
/// machine (in a fleet it is), so its CPU should not count as load on the
/// monitored host; how far that holds on 2 cores is what the two modes show.
#[derive(Clone, Copy)]
enum ServerSched {
    /// `nice -n 19`.
    Nice19,
    /// `chrt --idle 0`: only CPU time nothing else wants.
    Idle,
}

impl ServerSched {
    fn label(self) -> &'static str {
        match self {
            ServerSched::Nice19 => "server at nice 19",
            ServerSched::Idle => "server under SCHED_IDLE",
        }
    }
}

impl Nats {
    fn start(dir: &Path, sched: ServerSched) -> Nats {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = dir.join("nats.log");
        // At the lowest priority: it stands for a server on another machine
        // (in a fleet it is), not for load on the monitored host.
        let mut cmd = match sched {
            ServerSched::Nice19 => {
                let mut c = Command::new("nice");
                c.args(["-n", "19"]);
                c
            }
            ServerSched::Idle => {
                let mut c = Command::new("chrt");
                c.args(["--idle", "0"]);
                c
            }
        };
        let child = cmd
            .arg("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir.join("js"))
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .expect("nats-server (apt install nats-server; cargo xtask setup does)");
        wait_for("nats-server ready", Duration::from_secs(60), || {
            fs::read_to_string(&log)
                .ok()?
                .contains("Server is ready")
                .then_some(())
        });
        Nats {
            child,
            url: format!("nats://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ship_config(url: &str, stream: &str) -> String {
    format!("[ship.nats]\nurl = {url:?}\nhost = \"bench\"\nstream = {stream:?}\n")
}

fn health_group(env: &Env) -> Option<serde_json::Value> {
    let out = env.fsmon(&["health"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v["ship"]["groups"].as_array()?.first().cloned()
}

/// Waits until the shipper has checked (or created) its stream, so the
/// clock starts with shipping ready.
fn wait_ready(env: &Env, d: &fsmon_tests::Daemon) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = env.fsmon(&["health"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if v["ship"]["stream_ok"] == true {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "shipper not ready after 60 s: {v}\n{}",
            d.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// CPU seconds of the daemon's shipping thread.
fn ship_thread_cpu(pid: u32) -> f64 {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    tasks
        .flatten()
        .filter(|t| {
            fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == "fsmon-ship")
        })
        .filter_map(|t| fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum::<u64>() as f64
        / 1e9
}

/// One create-storm run's figures.
struct Storm {
    /// Workload seconds.
    secs: f64,
    logged: u64,
    /// Seconds from the start until the last event was acknowledged.
    shipped_after: f64,
    daemon_cpu: f64,
    ship_cpu: f64,
    /// The nats-server's CPU seconds from the start until every event
    /// was acknowledged.
    server_cpu: f64,
}

/// One create-storm with the daemon; `nats`: ship to it.
fn storm_once(base: &Path, files: usize, nats: Option<&Nats>, tag: &str) -> Storm {
    let url = nats.map(|n| n.url.as_str());
    let dir = base.join(format!("storm-{tag}"));
    fs::create_dir_all(&dir).unwrap();
    let dir = fs::canonicalize(&dir).unwrap();
    let env = match url {
        // One stream for every run: streams may not share subjects.
        Some(u) => Env::with_config(&ship_config(u, "BENCH")),
        None => Env::new(),
    };
    env.add("_global", &dir, &["-r"]);
    let d = env.start(&[]);
    if url.is_some() {
        wait_ready(&env, &d);
    }
    let pid = d.pid();
    let server_pid = nats.map(|n| n.child.id());
    let (cpu0, ship0) = (cpu_secs(pid), ship_thread_cpu(pid));
    let server0 = server_pid.map_or(0.0, cpu_secs);
    let start = Instant::now();
    let st = Command::new(testkit_bin())
        .arg("storm")
        .arg(&dir)
        .arg(files.to_string())
        .arg("100")
        .status()
        .unwrap();
    assert!(st.success());
    let secs = start.elapsed().as_secs_f64();
    let expected = (files * 5 + 100 * 3) as u64;
    let logged = wait_for("storm logged", Duration::from_secs(120), || {
        let n = fs::read(env.log_path("_global"))
            .map(|b| b.iter().filter(|&&c| c == b'\n').count() as u64)
            .unwrap_or(0);
        (n >= expected).then_some(n)
    });
    let shipped_after = if url.is_some() {
        wait_for("storm shipped", Duration::from_secs(300), || {
            let g = health_group(&env)?;
            (g["shipped"].as_u64()? >= logged && g["pending_events"] == 0).then_some(())
        });
        start.elapsed().as_secs_f64()
    } else {
        0.0
    };
    let daemon_cpu = cpu_secs(pid) - cpu0;
    let ship_cpu = ship_thread_cpu(pid) - ship0;
    let server_cpu = server_pid.map_or(0.0, cpu_secs) - server0;
    d.stop();
    let _ = fs::remove_dir_all(&dir);
    Storm {
        secs,
        logged,
        shipped_after,
        daemon_cpu,
        ship_cpu,
        server_cpu,
    }
}

/// Delay from the event's `time` (when the daemon read it, right after
/// the write) to the stream delivering it to a subscriber (just after it
/// stored it), for a paced workload. Returns the delays in ms.
fn delays(base: &Path, nats: &Nats, events: usize, rate: u64) -> Vec<f64> {
    let dir = base.join("paced");
    fs::create_dir_all(&dir).unwrap();
    let dir = fs::canonicalize(&dir).unwrap();
    let env = Env::with_config(&ship_config(&nats.url, "BENCH"));
    env.add(
        "_global",
        &dir,
        &["-r", "--types", "CREATE,CLOSE_WRITE,DELETE"],
    );
    let d = env.start(&[]);
    wait_ready(&env, &d);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let url = nats.url.clone();
    let flood_dir = dir.join("w");
    let out = rt.block_on(async move {
        let client = async_nats::connect(&url).await.unwrap();
        // Acknowledged publishes reach the stream's subject subscribers as
        // the stream stores them.
        let mut sub = client.subscribe("fsmon.bench.>").await.unwrap();
        client.flush().await.unwrap();
        // `flood` paces in rounds of 64 (192 events at once); a low rate is
        // paced here, one create/close/unlink at a time.
        let paced = rate < 1_000;
        let mut child = (!paced).then(|| {
            tokio::process::Command::new(testkit_bin())
                .arg("flood")
                .arg(&flood_dir)
                .arg((events / 3).to_string())
                .arg(rate.to_string())
                .spawn()
                .unwrap()
        });
        let pacer = paced.then(|| {
            let dir = flood_dir.clone();
            std::thread::spawn(move || {
                fs::create_dir_all(&dir).unwrap();
                let every = Duration::from_secs_f64(3.0 / rate as f64);
                for i in 0..events / 3 {
                    let p = dir.join(format!("x{i}"));
                    drop(fs::File::create(&p).unwrap());
                    fs::remove_file(&p).unwrap();
                    std::thread::sleep(every);
                }
            })
        });
        let mut out = Vec::new();
        let want = events / 3 * 3;
        while out.len() < want {
            let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(30), sub.next()).await
            else {
                break;
            };
            let now = chrono::Utc::now();
            let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
            if let Some(t) = v["time"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            {
                out.push(
                    (now - t.with_timezone(&chrono::Utc))
                        .num_microseconds()
                        .unwrap_or(0) as f64
                        / 1000.0,
                );
            }
        }
        if let Some(c) = child.as_mut() {
            let _ = c.wait().await;
        }
        if let Some(t) = pacer {
            let _ = t.join();
        }
        out
    });
    d.stop();
    let _ = fs::remove_dir_all(&dir);
    out
}

/// The create-storm with shipping off and on, interleaved, against a
/// server scheduled as `sched`: the table rows and the run times.
fn storm_rows(o: &Opts, base: &Path, sched: ServerSched) -> String {
    let tmp = tempfile::Builder::new()
        .prefix("bench-nats-")
        .tempdir_in("/tmp")
        .unwrap();
    let nats = Nats::start(tmp.path(), sched);
    let files = if o.quick { 5_000 } else { 20_000 };
    let (mut off, mut on) = (Vec::new(), Vec::new());
    let mut rows = Vec::new();
    storm_once(base, files, None, "warm");
    for rep in 0..o.reps.max(3) {
        off.push(storm_once(base, files, None, &format!("off{rep}")).secs);
        let r = storm_once(base, files, Some(&nats), &format!("on{rep}"));
        on.push(r.secs);
        rows.push(r);
    }
    let (m_off, m_on) = (median(&mut off.clone()), median(&mut on.clone()));
    let min_off = off.iter().cloned().fold(f64::MAX, f64::min);
    let min_on = on.iter().cloned().fold(f64::MAX, f64::min);
    let per_event = |f: fn(&Storm) -> f64| -> f64 {
        median(
            &mut rows
                .iter()
                .map(|r| f(r) / r.logged as f64 * 1e6)
                .collect::<Vec<_>>(),
        )
    };
    let mut rates: Vec<f64> = rows
        .iter()
        .map(|r| r.logged as f64 / r.shipped_after)
        .collect();
    let logged = rows.iter().map(|r| r.logged).min().unwrap_or(0);
    let label = sched.label();
    let secs = |v: &[f64]| {
        v.iter()
            .map(|s| format!("{s:.3}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| {label}: create-storm ({files} files, 100 dirs) workload time, shipping off / on (min; median) | {min_off:.3} / {min_on:.3} s ({:+.1}%); {m_off:.3} / {m_on:.3} s ({:+.1}%) (target within 2%) |\n\
         | {label}: shipping rate, storm start to last acknowledgement, 0 loss ({logged} events each run, all acknowledged) | {:.0} events/s (median) |\n\
         | {label}: daemon CPU per event, shipping on (capture + logging + shipping) | {:.2} µs (median) |\n\
         | {label}: of which the shipping thread | {:.2} µs per shipped event (median) |\n\
         | {label}: the local nats-server's CPU per shipped event | {:.2} µs (median) |\n\
         | {label}: workload times, interleaved | off [{}] s; on [{}] s |",
        (min_on / min_off - 1.0) * 100.0,
        (m_on / m_off - 1.0) * 100.0,
        median(&mut rates),
        per_event(|r| r.daemon_cpu),
        per_event(|r| r.ship_cpu),
        per_event(|r| r.server_cpu),
        secs(&off),
        secs(&on),
    );
    out
}

pub fn bench_ship(o: &Opts, base: &Path) -> String {
    let mut out = String::from(
        "## Shipping to NATS JetStream (one daemon, a local nats-server standing in for a remote one)\n\n\
         | figure | value |\n|---|---|\n",
    );
    out.push_str(&storm_rows(o, base, ServerSched::Nice19));
    out.push_str(&storm_rows(o, base, ServerSched::Idle));
    let tmp = tempfile::Builder::new()
        .prefix("bench-nats-")
        .tempdir_in("/tmp")
        .unwrap();
    let nats = Nats::start(tmp.path(), ServerSched::Nice19);
    for (rate, events) in [(3_000, if o.quick { 6_000 } else { 30_000 }), (30, 600)] {
        let mut d = delays(base, &nats, events, rate);
        d.sort_by(|a, b| a.total_cmp(b));
        let p = |q: f64| {
            d.get(((d.len() as f64 - 1.0) * q).round() as usize)
                .copied()
                .unwrap_or(f64::NAN)
        };
        let _ = writeln!(
            out,
            "| delay from the event's line to the stream storing it, {} events paced at {rate}/s | median {:.1} ms, p99 {:.1} ms |",
            d.len(),
            p(0.5),
            p(0.99)
        );
    }
    out.push('\n');
    out
}
