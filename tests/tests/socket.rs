//! The control socket against the real daemon: NDJSON requests as
//! documented in fsmon/src/control.rs, subscribe streams, slow subscribers,
//! hostile clients, and who may connect.
use std::{
    fs,
    io::{BufRead, BufReader, ErrorKind, Read, Write},
    os::unix::{fs::PermissionsExt, net::UnixStream},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use fsmon_tests::{Env, find, wait_for};
use serde_json::{Value, json};

/// A raw NDJSON connection.
struct Conn {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Conn {
    fn open(socket: &Path) -> Conn {
        let s = UnixStream::connect(socket).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        Conn {
            writer: s.try_clone().unwrap(),
            reader: BufReader::new(s),
        }
    }

    fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.writer.write_all(bytes)
    }

    fn send(&mut self, v: &Value) {
        self.send_raw(format!("{v}\n").as_bytes()).expect("send");
    }

    /// The next line, parsed; None at EOF.
    fn recv(&mut self) -> Option<Value> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => None,
            Ok(_) => Some(
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad line {line:?}: {e}")),
            ),
            Err(e) => panic!("reading from the daemon: {e}"),
        }
    }

    fn call(&mut self, v: Value) -> Value {
        self.send(&v);
        self.recv().expect("a response")
    }
}

fn health(env: &Env) -> Value {
    let h = Conn::open(&env.socket).call(json!({"op": "health"}));
    assert_eq!(h["ok"], true, "{h}");
    h
}

/// Asserts an `{"ok":false,"error":"one line"}` response; returns the error.
#[track_caller]
fn assert_error(v: &Value) -> String {
    assert_eq!(v["ok"], false, "{v}");
    let e = v["error"].as_str().expect("error text").to_string();
    assert!(!e.is_empty() && !e.contains('\n'), "{e:?}");
    e
}

#[test]
fn requests_add_remove_monitored_health_metrics() {
    let env = Env::new();
    let d = env.start(&[]);
    let dir = env.watch.join("s");
    fs::create_dir(&dir).unwrap();
    let mut c = Conn::open(&env.socket);
    // Several requests on one connection.
    let r = c.call(json!({"op": "add", "group": "_global", "path": dir,
        "recursive": true, "types": ["CREATE", "MODIFY"], "size": ">=0"}));
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["pending"], false);
    let r = c.call(json!({"op": "add", "group": "nginx",
        "path": env.watch.join("later/x")}));
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["pending"], true, "{r}");

    let m = c.call(json!({"op": "monitored"}));
    assert_eq!(m["ok"], true);
    let groups = m["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2, "{m}");
    assert_eq!(groups[0]["cmd"], "_global");
    assert_eq!(
        groups[0]["paths"][dir.to_str().unwrap()],
        json!({"recursive": true, "types": ["CREATE", "MODIFY"], "size": ">=0B"})
    );
    // The daemon wrote the store: the CLI sees the same.
    let mon = env.fsmon_ok(&["monitored"]);
    assert_eq!(mon.lines().count(), 2, "{mon}");

    // Applied live.
    fs::create_dir(dir.join("sub")).unwrap();
    fs::write(dir.join("sub/f"), b"x").unwrap();
    env.wait_events("_global", "CREATE in the added tree", |e| {
        !find(e, "CREATE", &dir.join("sub/f")).is_empty()
    });

    let h = c.call(json!({"op": "health"}));
    assert_eq!(h["ok"], true);
    assert!(h["uptime_secs"].is_u64());
    assert_eq!(h["tracker"], "ebpf");
    assert_eq!(h["groups"], 2);
    assert_eq!(h["paths"].as_array().unwrap().len(), 2);
    assert!(h["events_logged"].as_u64().unwrap() >= 1, "{h}");

    let m = c.call(json!({"op": "metrics"}));
    assert_eq!(m["ok"], true);
    let text = m["text"].as_str().unwrap();
    assert!(
        text.contains("# HELP ") && text.contains("# TYPE "),
        "{text}"
    );
    // Prometheus text: every sample line is `name{labels} value`.
    for l in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (name, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("{l}"));
        assert!(name.starts_with("fsmon_"), "{l}");
        assert!(value.parse::<f64>().is_ok(), "{l}");
    }

    // remove one path, then a whole group; the second time is an error.
    let r = c.call(json!({"op": "remove", "group": "nginx",
        "path": env.watch.join("later/x")}));
    assert_eq!(r["ok"], true, "{r}");
    let e = assert_error(&c.call(json!({"op": "remove", "group": "nginx"})));
    assert!(e.contains("nginx"), "{e}");
    let r = c.call(json!({"op": "remove", "group": "_global"}));
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(c.call(json!({"op": "monitored"}))["groups"], json!([]));
    assert_eq!(env.fsmon_ok(&["monitored"]), "");
    // Bad values: an error, nothing changed.
    let before = fs::read(&env.store).unwrap();
    for bad in [
        json!({"op": "add", "group": "../x", "path": "/tmp"}),
        json!({"op": "add", "group": "a/b", "path": "/tmp"}),
        json!({"op": "add", "group": "_global", "path": "/tmp", "types": ["NOPE"]}),
        json!({"op": "add", "group": "_global", "path": "/tmp", "size": "big"}),
        json!({"op": "add", "group": "_global", "path": ""}),
        json!({"op": "add", "group": "_global"}),
        json!({"op": "clean_swap", "group": "_global", "tmp": "/etc/passwd", "copied_until": 0}),
    ] {
        assert_error(&c.call(bad));
    }
    assert_eq!(fs::read(&env.store).unwrap(), before);
    assert_eq!(c.call(json!({"op": "health"}))["ok"], true);
    assert!(d.stop().success());
}

#[test]
fn subscribe_streams_events_filtered_by_group() {
    let env = Env::new();
    let a = env.watch.join("a");
    let b = env.watch.join("b");
    fs::create_dir_all(&a).unwrap();
    fs::create_dir_all(&b).unwrap();
    env.add("_global", &a, &["--types", "CREATE"]);
    env.add("touch", &b, &["--types", "CREATE"]);
    let d = env.start(&[]);

    let mut all = Conn::open(&env.socket);
    let r = all.call(json!({"op": "subscribe"}));
    assert_eq!(r["ok"], true, "{r}");
    let mut only = Conn::open(&env.socket);
    let r = only.call(json!({"op": "subscribe", "group": "touch"}));
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(
        wait_for("two subscribers", Duration::from_secs(10), || {
            (health(&env)["subscribers"] == 2).then_some(2)
        }),
        2
    );

    let st = Command::new("touch")
        .arg(a.join("ga"))
        .arg(b.join("tb"))
        .status()
        .unwrap();
    assert!(st.success());
    // The touch group only logs processes named touch: this one is not.
    fs::write(b.join("not-touch"), b"").unwrap();
    fs::write(a.join("last"), b"").unwrap();

    // Unfiltered: both groups, in order, each line a log line + "group".
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|v: &Value| v["path"] == a.join("last").to_str().unwrap())
    {
        let v = all.recv().expect("event line");
        seen.push(v);
    }
    let ga = seen
        .iter()
        .find(|v| v["path"] == a.join("ga").to_str().unwrap())
        .expect("ga");
    assert_eq!(ga["group"], "_global");
    assert_eq!(ga["event_type"], "CREATE");
    assert_eq!(ga["cmd"], "touch");
    for k in ["time", "pid", "user", "file_size", "ppid", "tgid"] {
        assert!(ga.get(k).is_some(), "{k} missing: {ga}");
    }
    let tb = seen
        .iter()
        .find(|v| v["path"] == b.join("tb").to_str().unwrap())
        .expect("tb");
    assert_eq!(tb["group"], "touch");
    assert!(tb["chain"].as_str().unwrap().contains("|touch|"), "{tb}");
    assert!(
        !seen
            .iter()
            .any(|v| v["path"] == b.join("not-touch").to_str().unwrap())
    );
    // The same line as in the log, plus the group.
    let logged = env.wait_events("touch", "tb logged", |e| {
        !find(e, "CREATE", &b.join("tb")).is_empty()
    });
    let mut expected = find(&logged, "CREATE", &b.join("tb"))[0].clone();
    expected["group"] = json!("touch");
    assert_eq!(*tb, expected);

    // Filtered: only the touch group.
    let v = only.recv().expect("event line");
    assert_eq!(v["group"], "touch");
    assert_eq!(v["path"], b.join("tb").to_str().unwrap());
    // Nothing else arrives for it: a later touch event is the next line.
    Command::new("touch").arg(b.join("tb2")).status().unwrap();
    let v = only.recv().expect("event line");
    assert_eq!(v["path"], b.join("tb2").to_str().unwrap(), "{v}");

    // A subscriber that hangs up is dropped at once, even with no event
    // of its group coming.
    drop(all);
    drop(only);
    wait_for("subscribers gone", Duration::from_secs(10), || {
        (health(&env)["subscribers"] == 0).then_some(())
    });
    // A bad group name is an error, and the connection stays usable.
    let mut c = Conn::open(&env.socket);
    assert_error(&c.call(json!({"op": "subscribe", "group": "../x"})));
    assert_eq!(c.call(json!({"op": "health"}))["ok"], true);
    assert!(d.stop().success());
}

#[test]
fn a_stuck_subscriber_blocks_neither_the_daemon_nor_other_subscribers() {
    const N: usize = 2500;
    let env = Env::new();
    let dir = env.watch.join("many");
    fs::create_dir(&dir).unwrap();
    env.add("_global", &dir, &["--types", "CREATE"]);
    let d = env.start(&["--subscribe-buf", "1024"]);

    // Never reads after its first line.
    let mut stuck = Conn::open(&env.socket);
    assert_eq!(stuck.call(json!({"op": "subscribe"}))["ok"], true);
    let mut reader = Conn::open(&env.socket);
    assert_eq!(reader.call(json!({"op": "subscribe"}))["ok"], true);
    // How many events the reading subscriber has seen: the writer below
    // paces itself on it, not on the clock.
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen_by_reader = seen.clone();
    let reading = std::thread::spawn(move || {
        let (mut events, mut missed) = (0usize, 0u64);
        while events < N {
            // (Each read waits at most the 30 s read timeout: a deadline.)
            let Some(v) = reader.recv() else { break };
            if v["notice"] == "missed" {
                missed += v["missed"].as_u64().unwrap();
            } else if v["event_type"] == "CREATE" {
                events += 1;
                seen_by_reader.store(events, std::sync::atomic::Ordering::SeqCst);
            }
        }
        (events, missed)
    });

    // The writer never gets more than 256 events ahead of the reading
    // subscriber (whose buffer holds 1024), however slow the machine: so
    // it must never miss one. The stuck one falls behind after ~1200 (its
    // socket buffer plus its 1024) and must get a missed notice.
    const AHEAD: usize = 256;
    for i in 0..N {
        fs::write(dir.join(format!("f{i}")), b"").unwrap();
        if i % (AHEAD / 2) == 0 && i >= AHEAD {
            wait_for(
                "the reading subscriber to keep up",
                Duration::from_secs(120),
                || (seen.load(std::sync::atomic::Ordering::SeqCst) + AHEAD >= i).then_some(()),
            );
        }
        if i == N - 200 {
            // The stuck one is stuck by now; the daemon still answers.
            let h = health(&env);
            assert_eq!(h["subscribers"], 2);
        }
    }
    // The daemon kept logging everything.
    env.wait_events("_global", "every event logged", |e| {
        e.iter().filter(|v| v["event_type"] == "CREATE").count() >= N
    });
    let (events, missed) = reading.join().unwrap();
    assert_eq!(
        (events, missed),
        (N, 0),
        "the reading subscriber lost events"
    );

    // The stuck one reads at last: some events, a missed notice, and
    // every event is either delivered or counted as missed.
    stuck
        .reader
        .get_ref()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (mut events, mut missed, mut notices) = (0u64, 0u64, 0);
    while events + missed < N as u64 {
        let v = stuck.recv().expect("stuck subscriber's stream");
        if v["notice"] == "missed" {
            assert!(v["missed"].as_u64().unwrap() > 0, "{v}");
            missed += v["missed"].as_u64().unwrap();
            notices += 1;
        } else {
            assert_eq!(v["event_type"], "CREATE", "{v}");
            events += 1;
        }
    }
    eprintln!("stuck subscriber: {events} delivered, {missed} missed in {notices} notices");
    assert!(notices >= 1 && missed > 0, "no missed notice");
    assert_eq!(events + missed, N as u64);
    let m = Conn::open(&env.socket).call(json!({"op": "metrics"}));
    assert!(
        m["text"]
            .as_str()
            .unwrap()
            .lines()
            .any(|l| l == format!("fsmon_subscriber_missed_events_total {missed}")),
        "metrics do not count {missed} missed events"
    );
    assert!(d.stop().success());
}

#[test]
fn hostile_clients_get_errors_and_the_daemon_keeps_serving() {
    // Room for the 50 half-requests below (the limits are tested in
    // attack.rs): this is about being served meanwhile.
    let env = Env::with_config("[socket]\nmax_clients = 200\nmax_clients_per_uid = 100\n");
    let d = env.start(&[]);

    // A client that connects and says nothing: others are served meanwhile,
    // and it gets a timeout error.
    let mut silent = Conn::open(&env.socket);
    let t0 = Instant::now();
    health(&env);
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "blocked by a silent client"
    );

    // Garbage: an error line, and the connection still serves requests.
    let mut c = Conn::open(&env.socket);
    for bad in [
        &b"garbage\n"[..],
        b"{}\n",
        b"[1,2,3]\n",
        b"{\"op\":\"explode\"}\n",
        b"{\"op\":\"health\",\"extra\":1}\n",
        b"{\"op\":\n",
        b"\xff\xfe\xfd\n",
        b"\n",
    ] {
        c.send_raw(bad).unwrap();
        let e = assert_error(&c.recv().expect("response"));
        assert!(e.starts_with("bad request"), "{bad:?}: {e}");
    }
    assert_eq!(c.call(json!({"op": "health"}))["ok"], true);

    // A 10 MB line: refused without being held in memory.
    let mut big = Conn::open(&env.socket);
    let line = vec![b'x'; 10 << 20];
    // The daemon closes after its error; our write may hit the closed pipe.
    match big.send_raw(&line) {
        Ok(()) => {}
        Err(e) => assert!(
            matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset),
            "{e}"
        ),
    }
    let e = assert_error(&big.recv().expect("an error before closing"));
    assert!(e.contains("longer than"), "{e}");
    assert!(big.recv().is_none(), "connection closed");
    health(&env);

    // Many connections at once that each send half a request.
    let half: Vec<UnixStream> = (0..50)
        .map(|_| {
            let mut s = UnixStream::connect(&env.socket).unwrap();
            s.write_all(b"{\"op\":\"hea").unwrap();
            s
        })
        .collect();
    health(&env);

    // The silent client's turn: a timeout error, then EOF.
    let e = assert_error(&silent.recv().expect("timeout error"));
    assert!(e.contains("timed out"), "{e}");
    assert!(t0.elapsed() >= Duration::from_secs(4), "{:?}", t0.elapsed());
    assert!(silent.recv().is_none());
    drop(half);

    let h = health(&env);
    assert_eq!(h["pid"], d.pid());
    assert!(d.stop().success());
}

/// A system user for the test, deleted on drop.
struct TempUser {
    name: String,
    uid: u32,
    gid: u32,
}

impl TempUser {
    fn new() -> TempUser {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!("fsmon-t-{:x}{:x}", std::process::id(), nanos % 0xfff);
        let st = Command::new("useradd")
            .args(["-M", "-r", "-s", "/usr/sbin/nologin", &name])
            .status()
            .expect("useradd");
        assert!(st.success(), "useradd {name}");
        let id = |flag: &str| -> u32 {
            let o = Command::new("id").arg(flag).arg(&name).output().unwrap();
            String::from_utf8(o.stdout).unwrap().trim().parse().unwrap()
        };
        let (uid, gid) = (id("-u"), id("-g"));
        TempUser { name, uid, gid }
    }

    /// Runs a Python snippet as this user; returns its stdout.
    fn python(&self, code: &str, socket: &Path) -> String {
        let o = Command::new("setpriv")
            .arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid))
            .arg("--clear-groups")
            .args(["/usr/bin/python3", "-c", code])
            .arg(socket)
            .current_dir("/")
            .output()
            .expect("setpriv");
        assert!(
            o.status.success(),
            "client as {}: {}",
            self.name,
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }
}

impl Drop for TempUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).status();
    }
}

const CLIENT: &str = r#"
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(10)
try:
    s.connect(sys.argv[1])
except PermissionError:
    print("EACCES"); sys.exit(0)
try:
    s.sendall(b'{"op":"health"}\n')
except (BrokenPipeError, ConnectionResetError):
    pass  # refused and closed before we wrote: its answer is still queued
print(s.makefile().readline().strip())
"#;

#[test]
fn only_root_and_the_owner_may_connect() {
    let env = Env::new();
    let d = env.start(&[]);
    let mode = fs::metadata(&env.socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");
    // Let others reach the socket file itself (the temp dir is 0700).
    fs::set_permissions(env.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();

    let user = TempUser::new();
    // The file mode refuses the connection.
    assert_eq!(user.python(CLIENT, &env.socket).trim(), "EACCES");
    // Even with the mode opened, the peer-credential check refuses.
    fs::set_permissions(&env.socket, fs::Permissions::from_mode(0o666)).unwrap();
    let out = user.python(CLIENT, &env.socket);
    let v: Value = serde_json::from_str(out.trim()).expect(&out);
    let e = assert_error(&v);
    assert!(e.contains("permission denied"), "{e}");
    assert!(v.get("uptime_secs").is_none(), "leaked health: {v}");
    fs::set_permissions(&env.socket, fs::Permissions::from_mode(0o600)).unwrap();
    // Root is accepted.
    assert_eq!(health(&env)["ok"], true);
    let mut buf = String::new();
    let mut s = UnixStream::connect(&env.socket).unwrap();
    s.write_all(b"{\"op\":\"monitored\"}\n").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    s.read_to_string(&mut buf).unwrap();
    assert!(buf.contains("\"ok\":true"), "{buf}");
    drop(user);
    assert!(d.stop().success());
}
