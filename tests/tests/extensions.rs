//! The scripts of extensions/ against real peers: the real daemon (its logs,
//! its socket, its /metrics), and real servers started here on loopback
//! ports picked by binding port 0: an HTTP receiver (a thread), influxd,
//! prometheus and promtool. Every process is stopped on drop.
//! A missing server binary fails the test with the Debian package to
//! install (`cargo xtask setup` installs them all).
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use fsmon_tests::{Daemon, Env, wait_for};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(30);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn ext(rel: &str) -> PathBuf {
    repo().join("extensions").join(rel)
}

/// A server binary, or a failure naming the package that has it.
fn require(bin: &str, package: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/sbin", "/usr/local/bin"] {
        let p = Path::new(dir).join(bin);
        if p.exists() {
            return p;
        }
    }
    panic!("{bin} not found: install the Debian package `{package}` (`cargo xtask setup` does)");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn tmpdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("fsmon-ext-")
        .tempdir_in("/tmp")
        .unwrap()
}

/// A child process with its output in files; SIGTERM (then SIGKILL) on drop.
struct Proc {
    name: String,
    child: Option<Child>,
    out: PathBuf,
    err: PathBuf,
}

impl Proc {
    fn start(name: &str, dir: &Path, cmd: &mut Command) -> Proc {
        let out = dir.join(format!("{name}.out"));
        let err = dir.join(format!("{name}.err"));
        let child = cmd
            .stdin(Stdio::null())
            .stdout(fs::File::create(&out).unwrap())
            .stderr(fs::File::create(&err).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        Proc {
            name: name.into(),
            child: Some(child),
            out,
            err,
        }
    }

    fn stdout(&self) -> String {
        fs::read_to_string(&self.out).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        fs::read_to_string(&self.err).unwrap_or_default()
    }

    fn report(&self) -> String {
        format!(
            "--- {} stdout:\n{}\n--- {} stderr:\n{}",
            self.name,
            self.stdout(),
            self.name,
            self.stderr()
        )
    }

    /// Waits until stderr (or stdout) contains `needle`; fails if the process exits first.
    fn wait_output(&mut self, needle: &str) {
        let deadline = Instant::now() + T;
        loop {
            if self.stderr().contains(needle) || self.stdout().contains(needle) {
                return;
            }
            if let Ok(Some(st)) = self.child.as_mut().unwrap().try_wait() {
                panic!(
                    "{} exited ({st}) before printing {needle:?}\n{}",
                    self.name,
                    self.report()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} never printed {needle:?}\n{}",
                self.name,
                self.report()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the exit; returns the exit code.
    fn wait_exit(&mut self) -> i32 {
        let deadline = Instant::now() + T;
        let child = self.child.as_mut().expect("still running");
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                self.child = None;
                return st.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < deadline,
                "{} still running after {T:?}\n{}",
                self.name,
                self.report()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for a successful exit; returns stdout.
    fn success(&mut self) -> String {
        let code = self.wait_exit();
        assert_eq!(code, 0, "{} failed\n{}", self.name, self.report());
        self.stdout()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// `python3 extensions/<script> ARGS`, with `.tools/python` on the path.
fn script(rel: &str, args: &[&str]) -> Command {
    let python = std::env::var("FSMON_PYTHON").unwrap_or_else(|_| "python3".into());
    let mut c = Command::new(python);
    c.arg(ext(rel))
        .args(args)
        .env("PYTHONPATH", repo().join(".tools/python"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1");
    c
}

/// Runs a script to its end: (exit code, stdout, stderr).
fn run(dir: &Path, name: &str, rel: &str, args: &[&str]) -> (i32, String, String) {
    let mut p = Proc::start(name, dir, &mut script(rel, args));
    let code = p.wait_exit();
    (code, p.stdout(), p.stderr())
}

fn run_ok(dir: &Path, name: &str, rel: &str, args: &[&str]) -> String {
    let (code, out, err) = run(dir, name, rel, args);
    assert_eq!(
        code, 0,
        "{rel} {args:?} failed\nstdout:\n{out}\nstderr:\n{err}"
    );
    out
}

/// A daemon watching `env.watch` for CREATE events only, so that `touch`ing
/// N new files makes exactly N events.
fn daemon(env: &Env, args: &[&str]) -> Daemon {
    env.add("_global", &env.watch, &["-r", "--types", "CREATE"]);
    env.start(args)
}

/// `touch`es new files in `dir` (one process); returns their paths.
fn touch(dir: &Path, names: &[&str]) -> Vec<String> {
    let paths: Vec<PathBuf> = names.iter().map(|n| dir.join(n)).collect();
    assert!(
        Command::new("touch")
            .args(&paths)
            .status()
            .unwrap()
            .success()
    );
    paths
        .iter()
        .map(|p| p.to_str().unwrap().to_string())
        .collect()
}

fn set<T: Ord + Clone>(v: &[T]) -> BTreeSet<T> {
    v.iter().cloned().collect()
}

/// The daemon's metrics address, from its "serving Prometheus metrics at" line.
fn metrics_addr(d: &Daemon) -> String {
    let log = d.stderr();
    let rest = log
        .split("serving Prometheus metrics at http://")
        .nth(1)
        .unwrap_or_else(|| panic!("no metrics address in:\n{log}"));
    rest.split("/metrics").next().unwrap().to_string()
}

/// A minimal HTTP/1.0 client: (status, body).
fn http(method: &str, addr: &str, path: &str, body: &[u8]) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )?;
    s.write_all(body)?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_string()))
}

fn http_get(addr: &str, path: &str) -> (u16, String) {
    http("GET", addr, path, b"").unwrap_or_else(|e| panic!("GET http://{addr}{path}: {e}"))
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Microseconds since the epoch of an RFC 3339 time.
fn micros(time: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(time)
        .unwrap_or_else(|e| panic!("bad time {time:?}: {e}"))
        .timestamp_micros()
}

// ---------------------------------------------------------------- JSONL logs

#[test]
fn log_tail_filters_counts_and_follows_the_real_log() {
    let env = Env::new();
    let _d = daemon(&env, &[]);
    let dir = env.dir.path();
    let created = touch(&env.watch, &["a1", "a2", "a3"]);
    env.wait_events("_global", "3 CREATE", |e| e.len() >= 3);
    let log = env.log_path("_global");
    let log_s = log.to_str().unwrap();
    let tail = "jsonl-logs/fsmon-log-tail.py";

    // Filter + projection; the log found through the config's [logging].path.
    let cfg = env.config.to_str().unwrap();
    let out = run_ok(
        dir,
        "filter",
        tail,
        &[
            "--config",
            cfg,
            "--group",
            "_global",
            "-w",
            "event_type==CREATE",
            "-w",
            "path~a[12]$",
            "-o",
            "event_type,path,cmd",
        ],
    );
    let rows: Vec<&str> = out.lines().collect();
    assert_eq!(
        rows,
        vec![
            format!("CREATE\t{}\ttouch", created[0]),
            format!("CREATE\t{}\ttouch", created[1])
        ],
        "{out}"
    );
    // Whole lines by default: exactly the log's lines.
    let out = run_ok(dir, "all", tail, &[log_s]);
    assert_eq!(out, fs::read_to_string(&log).unwrap());
    let out = run_ok(dir, "last", tail, &[log_s, "-n", "1", "-o", "path"]);
    assert_eq!(out.trim(), created[2]);
    let out = run_ok(
        dir,
        "numeric",
        tail,
        &[log_s, "-w", "file_size>=1", "-o", "path"],
    );
    assert_eq!(out, "", "empty files have size 0");

    // Aggregation.
    for (by, want) in [
        ("cmd", "3\ttouch\n"),
        ("event_type", "3\tCREATE\n"),
        ("user", "3\troot\n"),
        ("group", "3\t_global\n"),
    ] {
        let out = run_ok(
            dir,
            &format!("count-{by}"),
            tail,
            &[log_s, "--count-by", by],
        );
        assert_eq!(out, want, "--count-by {by}");
    }

    // Corrupt lines and a partial last line (a crash mid-write) are skipped and counted.
    let copy = dir.join("copy_log.jsonl");
    let mut text = fs::read_to_string(&log).unwrap();
    text.push_str("garbage\n[1,2]\n\n");
    text.push_str(&fs::read_to_string(&log).unwrap());
    text.push_str(r#"{"time":"2026-01-01T00:00:00+00:00","event_ty"#);
    fs::write(&copy, &text).unwrap();
    let (code, out, err) = run(
        dir,
        "corrupt",
        tail,
        &[copy.to_str().unwrap(), "--count-by", "path"],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(
        out.lines().all(|l| l.starts_with("2\t")),
        "each path twice: {out}"
    );
    assert!(
        err.contains("skipped 2 corrupt line(s) and 1 partial last line(s)"),
        "{err}"
    );

    // Follow the live log: new events appear as the daemon writes them.
    let mut live = Proc::start(
        "follow-live",
        dir,
        &mut script(
            tail,
            &[
                log_s,
                "-f",
                "-n",
                "0",
                "-o",
                "event_type,path",
                "--interval",
                "0.05",
            ],
        ),
    );
    live.wait_output("following 1 file(s)");
    let more = touch(&env.watch, &["b1", "b2"]);
    let want = format!("CREATE\t{}\nCREATE\t{}\n", more[0], more[1]);
    wait_for("followed lines", T, || {
        (live.stdout() == want).then_some(())
    });

    // Follow a file that does not exist yet, is written in pieces, and is replaced.
    // A second file, z, read after y in each poll, shows when a poll has run.
    let y = dir.join("y_log.jsonl");
    let z = dir.join("z_log.jsonl");
    fs::write(&z, "").unwrap();
    let mut f = Proc::start(
        "follow-y",
        dir,
        &mut script(
            tail,
            &[
                y.to_str().unwrap(),
                z.to_str().unwrap(),
                "-f",
                "-o",
                "event_type,path",
                "--interval",
                "0.05",
            ],
        ),
    );
    f.wait_output("waiting for");
    // What the follower printed from y (z's lines are MARKs).
    let y_out = |f: &Proc| -> String {
        f.stdout()
            .lines()
            .filter(|l| !l.starts_with("MARK"))
            .map(|l| format!("{l}\n"))
            .collect()
    };
    fs::write(
        &y,
        "{\"event_type\":\"CREATE\",\"path\":\"/1\"}\n{\"event_type\":\"DELETE\",\"pa",
    )
    .unwrap();
    wait_for("first line", T, || {
        (y_out(&f) == "CREATE\t/1\n").then_some(())
    });
    // The line cut mid-token is completed; the next one is whole JSON but
    // has no newline yet: a partial line, which must wait for its newline.
    let mut h = fs::OpenOptions::new().append(true).open(&y).unwrap();
    h.write_all(b"th\":\"/2\"}\nnot json\n{\"event_type\":\"ATTRIB\",\"path\":\"/3\"}")
        .unwrap();
    wait_for("completed line", T, || {
        y_out(&f).contains("DELETE\t/2\n").then_some(())
    });
    // Two marks in z, each waited for: the poll that prints the second one
    // read y after the first one was printed, so after the partial line.
    for mark in ["/zA", "/zB"] {
        let mut h = fs::OpenOptions::new().append(true).open(&z).unwrap();
        writeln!(h, "{{\"event_type\":\"MARK\",\"path\":\"{mark}\"}}").unwrap();
        wait_for("the mark in z", T, || {
            f.stdout()
                .contains(&format!("MARK\t{mark}\n"))
                .then_some(())
        });
    }
    assert_eq!(
        y_out(&f),
        "CREATE\t/1\nDELETE\t/2\n",
        "a partial line must wait"
    );
    h.write_all(b"\n").unwrap();
    wait_for("the line with its newline", T, || {
        (y_out(&f) == "CREATE\t/1\nDELETE\t/2\nATTRIB\t/3\n").then_some(())
    });
    // `fsmon clean` swaps in a new file: it is read from its start.
    let y2 = dir.join("y2");
    fs::write(&y2, "{\"event_type\":\"MOVED_TO\",\"path\":\"/4\"}\n").unwrap();
    fs::rename(&y2, &y).unwrap();
    wait_for("replaced file", T, || {
        y_out(&f)
            .ends_with("ATTRIB\t/3\nMOVED_TO\t/4\n")
            .then_some(())
    });
}

// ---------------------------------------------------------- subscribe stream

/// Parses CSV (RFC 4180: quoted fields, doubled quotes, newlines in quotes).
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let (mut rows, mut row, mut cell) = (Vec::new(), Vec::new(), String::new());
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                cell.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => cell.push(c),
            (false, '"') => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut cell)),
            (false, '\n') => {
                row.push(std::mem::take(&mut cell));
                rows.push(std::mem::take(&mut row));
            }
            (false, c) => cell.push(c),
        }
    }
    assert!(
        cell.is_empty() && row.is_empty() && !quoted,
        "CSV ends mid-row: {text:?}"
    );
    rows
}

fn unescape_tsv(cell: &str) -> String {
    let mut out = String::new();
    let mut it = cell.chars();
    while let Some(c) = it.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('\\') => out.push('\\'),
            other => panic!("bad TSV escape \\{other:?} in {cell:?}"),
        }
    }
    out
}

/// An RFC 5424 line: (pri, version, time, host, app, procid, msgid, params, msg).
fn parse_syslog(line: &str) -> (u32, BTreeMap<&str, String>, Vec<&str>, String) {
    let rest = line
        .strip_prefix('<')
        .unwrap_or_else(|| panic!("no PRI: {line}"));
    let (pri, rest) = rest.split_once('>').unwrap();
    let mut head = rest.splitn(7, ' ');
    let header: Vec<&str> = (0..6).map(|_| head.next().unwrap()).collect();
    let rest = head.next().unwrap();
    // STRUCTURED-DATA: [id name="value" ...] with \" \\ \] escaped.
    let sd = rest
        .strip_prefix('[')
        .unwrap_or_else(|| panic!("no SD: {line}"));
    let mut params = BTreeMap::new();
    let (id, mut s) = sd.split_once(' ').unwrap();
    assert_eq!(id, "fsmon@32473");
    loop {
        if let Some(after) = s.strip_prefix(']') {
            let msg = after
                .strip_prefix(' ')
                .unwrap_or_else(|| panic!("no MSG: {line}"));
            return (pri.parse().unwrap(), params, header, msg.to_string());
        }
        let (name, v) = s.trim_start().split_once("=\"").unwrap();
        let mut value = String::new();
        let mut chars = v.char_indices();
        let end = loop {
            match chars
                .next()
                .unwrap_or_else(|| panic!("unterminated value: {line}"))
            {
                (_, '\\') => value.push(chars.next().unwrap().1),
                (i, '"') => break i,
                (_, c) => value.push(c),
            }
        };
        params.insert(name, value);
        s = &v[end + 1..];
    }
}

fn check_syslog(line: &str, paths: &BTreeSet<String>) -> String {
    let (pri, params, header, msg) = parse_syslog(line);
    assert_eq!(pri, 14, "user.info: {line}");
    assert_eq!(header[0], "1", "version: {line}");
    micros(header[1]);
    assert_eq!(
        &header[2..],
        ["testhost", "fsmon", header[4], "CREATE"],
        "{line}"
    );
    assert!(header[4].parse::<u32>().unwrap() > 0, "{line}");
    assert_eq!(params["group"], "_global");
    assert_eq!(params["cmd"], "touch");
    assert_eq!(params["user"], "root");
    assert!(paths.contains(&msg), "{msg:?} not among {paths:?}");
    msg
}

/// The same names for every subscribe test: awkward for CSV, TSV and syslog.
const NAMES: &[&str] = &[
    "plain",
    "with,comma",
    "with\"quote",
    "with\ttab",
    "with space]",
];

#[test]
fn subscribe_demo_and_custom_formats_parse_back() {
    let env = Env::new();
    let _d = daemon(&env, &[]);
    let dir = env.dir.path();
    let sock = env.socket.to_str().unwrap();
    let n = NAMES.len().to_string();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(T)).unwrap();
    let udp_addr = udp.local_addr().unwrap().to_string();
    let fmt = "subscribe-stream/fsmon-custom-format.py";
    let mut procs: Vec<Proc> = [
        ("demo", "subscribe-stream/fsmon-subscribe-demo.py", vec![]),
        ("csv", fmt, vec!["--format", "csv"]),
        (
            "tsv",
            fmt,
            vec!["--format", "tsv", "--fields", "path,event_type,cmd"],
        ),
        (
            "syslog",
            fmt,
            vec!["--format", "syslog", "--hostname", "testhost"],
        ),
        (
            "syslog-udp",
            fmt,
            vec![
                "--format",
                "syslog",
                "--hostname",
                "testhost",
                "--udp",
                &udp_addr,
            ],
        ),
        (
            "loki",
            fmt,
            vec![
                "--format",
                "loki",
                "--hostname",
                "testhost",
                "--interval",
                "0.2",
            ],
        ),
        ("json", fmt, vec!["--format", "json", "--group", "_global"]),
    ]
    .into_iter()
    .map(|(name, rel, args)| {
        let mut a = vec!["--socket", sock, "--count", &n];
        a.extend(args);
        Proc::start(name, dir, &mut script(rel, &a))
    })
    .collect();
    for p in &mut procs {
        p.wait_output("subscribed to");
    }
    let paths = set(&touch(&env.watch, NAMES));
    let out: BTreeMap<String, String> = procs
        .iter_mut()
        .map(|p| (p.name.clone(), p.success()))
        .collect();

    // Demo: one readable line per event.
    let demo: Vec<&str> = out["demo"].lines().collect();
    assert_eq!(demo.len(), NAMES.len(), "{}", out["demo"]);
    for p in &paths {
        assert!(
            demo.iter().any(|l| l.contains("CREATE")
                && l.contains(p.as_str())
                && l.contains("(touch[")
                && l.contains("_global")),
            "{p} not in {demo:#?}"
        );
    }

    // CSV: the header, then one row per event, columns in the header's order.
    let rows = parse_csv(&out["csv"]);
    assert_eq!(
        rows[0],
        [
            "time",
            "group",
            "event_type",
            "path",
            "pid",
            "cmd",
            "user",
            "file_size",
            "ppid",
            "tgid",
            "chain"
        ]
    );
    assert_eq!(rows.len(), 1 + NAMES.len(), "{}", out["csv"]);
    for r in &rows[1..] {
        assert_eq!(r.len(), 11, "{r:?}");
        micros(&r[0]);
        assert_eq!(
            (r[1].as_str(), r[2].as_str(), r[5].as_str(), r[6].as_str()),
            ("_global", "CREATE", "touch", "root")
        );
        assert!(r[4].parse::<u32>().unwrap() > 0 && r[4] == r[9], "{r:?}");
        assert_eq!(r[7], "0");
    }
    assert_eq!(
        rows[1..]
            .iter()
            .map(|r| r[3].clone())
            .collect::<BTreeSet<_>>(),
        paths
    );

    // TSV with chosen columns; tabs escaped.
    let lines: Vec<Vec<String>> = out["tsv"]
        .lines()
        .map(|l| l.split('\t').map(unescape_tsv).collect())
        .collect();
    assert_eq!(lines[0], ["path", "event_type", "cmd"]);
    assert_eq!(lines.len(), 1 + NAMES.len());
    assert!(
        lines[1..]
            .iter()
            .all(|r| r.len() == 3 && r[1] == "CREATE" && r[2] == "touch"),
        "{lines:?}"
    );
    assert_eq!(
        lines[1..]
            .iter()
            .map(|r| r[0].clone())
            .collect::<BTreeSet<_>>(),
        paths
    );

    // Syslog, on stdout and as UDP datagrams.
    let msgs: BTreeSet<String> = out["syslog"]
        .lines()
        .map(|l| check_syslog(l, &paths))
        .collect();
    assert_eq!(msgs, paths);
    let mut buf = [0u8; 65536];
    let mut udp_msgs = BTreeSet::new();
    for _ in 0..NAMES.len() {
        let n = udp.recv(&mut buf).expect("a syslog datagram");
        udp_msgs.insert(check_syslog(
            std::str::from_utf8(&buf[..n]).unwrap(),
            &paths,
        ));
    }
    assert_eq!(udp_msgs, paths);

    // Loki push bodies: streams by labels; values [ns, the event's JSON].
    let mut loki = BTreeSet::new();
    for body in out["loki"].lines() {
        let v: Value = serde_json::from_str(body).unwrap();
        for s in v["streams"].as_array().unwrap() {
            assert_eq!(
                s["stream"],
                json!({"job": "fsmon", "host": "testhost", "group": "_global", "event_type": "CREATE"})
            );
            for entry in s["values"].as_array().unwrap() {
                let ev: Value = serde_json::from_str(entry[1].as_str().unwrap()).unwrap();
                let ns: i64 = entry[0].as_str().unwrap().parse().unwrap();
                assert_eq!(ns, micros(ev["time"].as_str().unwrap()) * 1000);
                loki.insert(ev["path"].as_str().unwrap().to_string());
            }
        }
    }
    assert_eq!(loki, paths);

    // JSON: the stream's events as they are.
    let evs: Vec<Value> = out["json"]
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(evs.len(), NAMES.len());
    assert!(
        evs.iter()
            .all(|e| e["group"] == "_global" && e["event_type"] == "CREATE" && e["cmd"] == "touch")
    );
    assert_eq!(
        evs.iter()
            .map(|e| e["path"].as_str().unwrap().to_string())
            .collect::<BTreeSet<_>>(),
        paths
    );

    // Without a daemon: one line, exit 1.
    let (code, _, err) = run(
        dir,
        "nodaemon",
        fmt,
        &["--format", "csv", "--socket", "/nonexistent.sock"],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("cannot connect to /nonexistent.sock") && err.lines().count() == 1,
        "{err}"
    );
}

/// An HTTP server on a thread recording each request; answers 503 to the
/// first request of each path in `fail_first`, 204 otherwise.
struct Receiver {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Received>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Clone, Debug)]
struct Received {
    path: String,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
    status: u16,
}

impl Receiver {
    fn start(fail_first: &[&str]) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::<Received>::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (reqs, halt) = (requests.clone(), stop.clone());
        let mut to_fail: BTreeSet<String> = fail_first.iter().map(|s| s.to_string()).collect();
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if halt.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(mut conn) = conn else { continue };
                conn.set_read_timeout(Some(Duration::from_secs(10)))
                    .unwrap();
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                if r.read_line(&mut line).is_err() {
                    continue;
                }
                let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                let mut headers = BTreeMap::new();
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                        break;
                    }
                    if let Some((k, v)) = h.split_once(':') {
                        headers.insert(k.trim().to_lowercase(), v.trim().to_string());
                    }
                }
                let len = headers
                    .get("content-length")
                    .and_then(|l| l.parse().ok())
                    .unwrap_or(0);
                let mut body = vec![0u8; len];
                let _ = r.read_exact(&mut body);
                let status = if to_fail.remove(&path) { 503 } else { 204 };
                // Recorded before the answer: the script may exit, and the
                // test look, as soon as it has its answer.
                reqs.lock().unwrap().push(Received {
                    path,
                    headers,
                    body,
                    status,
                });
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status} {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    if status == 503 {
                        "Service Unavailable"
                    } else {
                        "No Content"
                    }
                );
            }
        });
        Receiver {
            addr,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn received(&self, path: &str) -> Vec<Received> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn webhook_and_loki_push_reach_an_http_receiver() {
    let env = Env::new();
    let _d = daemon(&env, &[]);
    let dir = env.dir.path();
    let rx = Receiver::start(&["/raw"]);
    let cfg = env.config.to_str().unwrap();
    let n = NAMES.len().to_string();
    let (raw_url, slack_url, loki_url) = (
        rx.url("/raw"),
        rx.url("/slack"),
        rx.url("/loki/api/v1/push"),
    );
    let hook = "subscribe-stream/fsmon-webhook.py";
    let common = ["--config", cfg, "--count", &n, "--interval", "0.3"];
    let mut procs = vec![
        Proc::start(
            "raw",
            dir,
            script(hook, &common).args([
                "--url",
                &raw_url,
                "--hostname",
                "host-a",
                "--header",
                "Authorization: Bearer t0ken",
                "--retries",
                "2",
            ]),
        ),
        Proc::start(
            "slack",
            dir,
            script(hook, &common).args(["--url", &slack_url, "--style", "slack"]),
        ),
        Proc::start(
            "loki",
            dir,
            script("subscribe-stream/fsmon-custom-format.py", &common).args([
                "--format",
                "loki",
                "--loki-url",
                &loki_url,
                "--hostname",
                "host-a",
            ]),
        ),
    ];
    for p in &mut procs {
        p.wait_output("subscribed to");
    }
    let paths = set(&touch(&env.watch, NAMES));
    for p in &mut procs {
        p.success();
    }

    // Raw: the first POST got a 503 and was retried; the accepted ones carry every event.
    let raw = rx.received("/raw");
    assert_eq!(raw[0].status, 503, "{raw:?}");
    let mut got = BTreeSet::new();
    for r in raw.iter().filter(|r| r.status == 204) {
        assert_eq!(r.headers["content-type"], "application/json");
        assert_eq!(r.headers["authorization"], "Bearer t0ken");
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!((&v["host"], &v["missed"]), (&json!("host-a"), &json!(0)));
        for e in v["events"].as_array().unwrap() {
            assert_eq!(
                (&e["group"], &e["event_type"], &e["cmd"]),
                (&json!("_global"), &json!("CREATE"), &json!("touch"))
            );
            got.insert(e["path"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(got, paths);
    // The failed body was resent as it was.
    assert!(
        raw.iter().skip(1).any(|r| r.body == raw[0].body),
        "no retry of the first batch"
    );

    // Slack: {"text": ...} naming every path.
    let text: String = rx
        .received("/slack")
        .iter()
        .map(|r| {
            serde_json::from_slice::<Value>(&r.body).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    for p in &paths {
        assert!(
            text.contains(&format!("`CREATE` {p} by touch (root) [_global]")),
            "{p} not in {text}"
        );
    }

    // Loki: push bodies with every event.
    let mut loki = BTreeSet::new();
    for r in rx.received("/loki/api/v1/push") {
        assert_eq!(r.headers["content-type"], "application/json");
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        for s in v["streams"].as_array().unwrap() {
            assert_eq!(s["stream"]["host"], "host-a");
            for entry in s["values"].as_array().unwrap() {
                let ev: Value = serde_json::from_str(entry[1].as_str().unwrap()).unwrap();
                loki.insert(ev["path"].as_str().unwrap().to_string());
            }
        }
    }
    assert_eq!(loki, paths);
}

#[test]
fn influxdb_sink_writes_one_point_per_event() {
    let influxd = require("influxd", "influxdb");
    let env = Env::new();
    let _d = daemon(&env, &[]);
    let dir = env.dir.path();
    let (http_port, rpc_port) = (free_port(), free_port());
    let data = dir.join("influxdb");
    let conf = dir.join("influxdb.conf");
    fs::write(
        &conf,
        format!(
            "reporting-disabled = true\nbind-address = \"127.0.0.1:{rpc_port}\"\n\
             [meta]\n  dir = \"{d}/meta\"\n\
             [data]\n  dir = \"{d}/data\"\n  wal-dir = \"{d}/wal\"\n  query-log-enabled = false\n\
             [http]\n  bind-address = \"127.0.0.1:{http_port}\"\n  log-enabled = false\n\
             [monitor]\n  store-enabled = false\n",
            d = data.display()
        ),
    )
    .unwrap();
    let mut server = Proc::start(
        "influxd",
        dir,
        Command::new(influxd).arg("-config").arg(&conf),
    );
    let addr = format!("127.0.0.1:{http_port}");
    wait_for("influxd /ping", T, || {
        if let Ok(Some(st)) = server.child.as_mut().unwrap().try_wait() {
            panic!("influxd exited ({st})\n{}", server.report());
        }
        matches!(http("GET", &addr, "/ping", b""), Ok((204, _))).then_some(())
    });

    // Six files by one touch: events that share one time, series and tags.
    let names = ["i1", "i2", "i3", "i 4", "i,5", "i=6\""];
    let mut sink = Proc::start(
        "sink",
        dir,
        &mut script(
            "subscribe-stream/fsmon-to-influxdb.py",
            &[
                "--socket",
                env.socket.to_str().unwrap(),
                "--url",
                &format!("http://{addr}"),
                "--db",
                "fsmon_test",
                "--create-db",
                "--hostname",
                "host a",
                "--interval",
                "0.3",
                "--count",
                &names.len().to_string(),
            ],
        ),
    );
    sink.wait_output("subscribed to");
    let paths = set(&touch(&env.watch, &names));
    sink.success();
    assert!(
        sink.stderr()
            .contains(&format!("wrote {} points", names.len())),
        "{}",
        sink.report()
    );

    let q = urlencode("SELECT * FROM fsmon_event");
    let (status, body) = http_get(&addr, &format!("/query?db=fsmon_test&epoch=ns&q={q}"));
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let series = &v["results"][0]["series"][0];
    let cols: Vec<&str> = series["columns"]
        .as_array()
        .unwrap_or_else(|| panic!("no points: {body}"))
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let rows = series["values"].as_array().unwrap();
    assert_eq!(rows.len(), names.len(), "one point per event: {body}");
    let col = |row: &Value, name: &str| {
        row[cols
            .iter()
            .position(|c| *c == name)
            .unwrap_or_else(|| panic!("no column {name}: {cols:?}"))]
        .clone()
    };
    let mut times = BTreeSet::new();
    let mut got = BTreeSet::new();
    for row in rows {
        assert_eq!(col(row, "host"), "host a");
        assert_eq!(col(row, "group"), "_global");
        assert_eq!(col(row, "event_type"), "CREATE");
        assert_eq!(col(row, "cmd"), "touch");
        assert_eq!(col(row, "user"), "root");
        assert_eq!(col(row, "file_size"), 0);
        assert!(col(row, "pid").as_u64().unwrap() > 0);
        times.insert(col(row, "time").as_i64().unwrap());
        got.insert(col(row, "path").as_str().unwrap().to_string());
    }
    assert_eq!(got, paths);
    assert_eq!(times.len(), names.len(), "distinct timestamps");
}

// ------------------------------------------------------------- socket admin

#[test]
fn admin_add_list_health_remove() {
    let env = Env::new();
    let d = env.start(&[]);
    let dir = env.dir.path();
    let admin = "socket-admin/fsmon-admin.py";
    let sock = env.socket.to_str().unwrap();
    let tree = env.watch.join("tree");
    fs::create_dir(&tree).unwrap();
    let tree_s = tree.to_str().unwrap();
    let later = env.watch.join("later");
    let later_s = later.to_str().unwrap();

    let out = run_ok(
        dir,
        "add1",
        admin,
        &[
            "--socket",
            sock,
            "add",
            "_global",
            tree_s,
            "-r",
            "--types",
            "CREATE,DELETE",
        ],
    );
    assert_eq!(out.trim(), format!("_global: watching {tree_s}"));
    let out = run_ok(
        dir,
        "add2",
        admin,
        &["--socket", sock, "add", "nginx", later_s, "--size", ">=1MB"],
    );
    assert!(out.contains("pending"), "{out}");

    // list: the same JSON lines as `fsmon monitored`.
    let listed = run_ok(dir, "list", admin, &["--socket", sock, "list"]);
    let groups: Vec<Value> = listed
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        groups,
        vec![
            json!({"cmd": "_global", "paths": {tree_s: {"recursive": true, "types": ["CREATE", "DELETE"]}}}),
            json!({"cmd": "nginx", "paths": {later_s: {"recursive": false, "types": ["CLOSE_WRITE", "ATTRIB", "CREATE", "DELETE", "DELETE_SELF", "MOVED_FROM", "MOVED_TO", "MOVE_SELF"], "size": ">=1MB"}}}),
        ]
    );
    let cli: Vec<Value> = env
        .fsmon_ok(&["monitored"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(groups, cli);
    let table = run_ok(dir, "table", admin, &["--socket", sock, "list", "--table"]);
    assert_eq!(
        table.lines().next().unwrap(),
        format!("_global\t{tree_s}\trecursive\tCREATE,DELETE\t")
    );

    // Applied live.
    let f = touch(&tree, &["x"]);
    env.wait_events("_global", "the CREATE", |e| {
        e.iter().any(|e| e["path"] == f[0].as_str())
    });

    // health: the socket found through the config (--config, then $FSMON_CONFIG).
    let cfg = env.config.to_str().unwrap();
    let out = run_ok(dir, "health", admin, &["--config", cfg, "health"]);
    assert!(
        out.contains("ready") && out.contains("2 group(s), 2 path(s)") && out.contains("PENDING"),
        "{out}"
    );
    let mut c = script(admin, &["health", "--json"]);
    c.env("FSMON_CONFIG", cfg);
    let mut p = Proc::start("health-json", dir, &mut c);
    let h: Value = serde_json::from_str(&p.success()).unwrap();
    assert_eq!(
        (&h["ok"], &h["ready"], &h["groups"]),
        (&json!(true), &json!(true), &json!(2))
    );
    assert_eq!(h["pid"], d.pid());
    assert!(h["events_logged"].as_u64().unwrap() >= 1);

    // remove; removing again is the daemon's error, one line, exit 1.
    run_ok(dir, "rm1", admin, &["--socket", sock, "remove", "nginx"]);
    let (code, _, err) = run(dir, "rm2", admin, &["--socket", sock, "remove", "nginx"]);
    assert_eq!((code, err.trim()), (1, "fsmon-admin: no group named nginx"));
    run_ok(
        dir,
        "rm3",
        admin,
        &["--socket", sock, "remove", "_global", "--path", tree_s],
    );
    assert_eq!(run_ok(dir, "list2", admin, &["--socket", sock, "list"]), "");
    let (code, _, err) = run(dir, "bad", admin, &["--socket", sock, "add", "a/b", tree_s]);
    assert_eq!(code, 1);
    assert!(
        err.starts_with("fsmon-admin: bad group name") && err.lines().count() == 1,
        "{err}"
    );
    let (code, _, err) = run(
        dir,
        "nodaemon",
        admin,
        &["--socket", "/nonexistent.sock", "health"],
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot talk to the daemon on /nonexistent.sock"),
        "{err}"
    );
    // Without --socket the scripts pick the socket as the CLI does: the
    // system daemon's in system mode, the user's own otherwise.
    let cfg = dir.join("absent.toml");
    for (mode, want) in [
        ("system", "/run/fsmon/fsmon.sock"),
        ("user", "/run/fsmon/fsmon-0.sock"),
    ] {
        let mut c = script(admin, &["--config", cfg.to_str().unwrap(), "health"]);
        c.env("FSMON_MODE", mode).env_remove("SUDO_UID");
        let mut p = Proc::start(&format!("mode-{mode}"), dir, &mut c);
        let (code, err) = (p.wait_exit(), p.stderr());
        assert_eq!(code, 1, "{mode}: {err}");
        assert!(
            err.contains(&format!("on {want}:")) && err.lines().count() == 1,
            "{mode}: expected the socket {want}: {err}"
        );
    }
}

// ------------------------------------------------------------- HTTP metrics

#[test]
fn metrics_summary_and_nagios_exit_codes() {
    let env = Env::new();
    let d = daemon(&env, &["--metrics-listen", "127.0.0.1:0"]);
    let dir = env.dir.path();
    let addr = metrics_addr(&d);
    touch(&env.watch, &["m1", "m2", "m3"]);
    env.wait_events("_global", "3 events", |e| e.len() == 3);
    let m = "http-metrics/fsmon-metrics.py";
    let url = format!("http://{addr}/metrics");
    let sock = env.socket.to_str().unwrap();

    for (name, source) in [
        ("http", ["--url", url.as_str()]),
        ("socket", ["--socket", sock]),
    ] {
        let out = run_ok(dir, name, m, &source);
        assert!(out.contains("events logged        3  (_global 3)"), "{out}");
        assert!(out.contains("  by type            CREATE 3"), "{out}");
        assert!(
            out.contains("tracker ebpf") && out.contains("1 path(s) in 1 group(s)"),
            "{out}"
        );
    }
    let raw = run_ok(dir, "raw", m, &["--url", &addr, "--raw"]);
    assert!(
        raw.contains("fsmon_events_logged_total{group=\"_global\",type=\"CREATE\"} 3"),
        "{raw}"
    );

    let check = |name: &str, extra: &[&str]| {
        let mut args = vec!["--url", url.as_str(), "--check"];
        args.extend_from_slice(extra);
        let (code, out, err) = run(dir, name, m, &args);
        assert_eq!(out.lines().count(), 1, "one Nagios line: {out}{err}");
        (code, out)
    };
    let (code, out) = check("ok", &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.starts_with("FSMON OK - 3 events logged")
            && out.contains("| overflows=0c unwritten=0c missed=0c logged=3c disk_free="),
        "{out}"
    );
    let (code, out) = check("warn", &["--disk-free-warn", "1000TB"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.starts_with("FSMON WARNING - log disk free "), "{out}");
    let (code, out) = check(
        "crit",
        &["--disk-free-warn", "1000TB", "--disk-free-crit", "999TB"],
    );
    assert_eq!(code, 2, "{out}");
    assert!(out.starts_with("FSMON CRITICAL - log disk free "), "{out}");
    // Counter thresholds: on totals, or on increases with --state.
    let (code, out) = check("logged-total", &["--unwritten-crit", "0"]);
    assert_eq!(code, 2, "0 >= 0 trips: {out}");
    let state = dir.join("state.json");
    let st = state.to_str().unwrap();
    assert_eq!(check("state1", &["--state", st]).0, 0);
    let saved: Value = serde_json::from_str(&fs::read_to_string(&state).unwrap()).unwrap();
    assert_eq!(saved["logged"], 3.0);
    assert_eq!(check("state2", &["--state", st]).0, 0);
    // The counters above are all 0, where totals and increases agree. A
    // server with the daemon's text but a chosen overflow count tells them
    // apart: totals, increases with --state, a restart (the counter drops).
    let served = Arc::new(Mutex::new(String::new()));
    let fixed = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let text = served.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                while r.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                    line.clear();
                }
                let body = text.lock().unwrap().clone();
                let _ = write!(
                    conn,
                    "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        format!("http://{addr}/metrics")
    };
    let serve_overflows = |n: u64| {
        let mut replaced = 0;
        let text: String = raw
            .lines()
            .map(|l| {
                if l.starts_with("fsmon_queue_overflows_total ") {
                    replaced += 1;
                    format!("fsmon_queue_overflows_total {n}\n")
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        assert_eq!(replaced, 1, "{raw}");
        *served.lock().unwrap() = text;
    };
    let fixed_check = |name: &str, state: Option<&str>| {
        let mut args = vec!["--url", fixed.as_str(), "--check"];
        if let Some(st) = state {
            args.extend_from_slice(&["--state", st]);
        }
        let (code, out, err) = run(dir, name, m, &args);
        assert_eq!(out.lines().count(), 1, "one Nagios line: {out}{err}");
        (code, out)
    };
    serve_overflows(5);
    let (code, out) = fixed_check("total5", None);
    assert!(code == 1 && out.contains("5 queue overflows"), "{out}");
    let inc = dir.join("increase.json");
    let inc = Some(inc.to_str().unwrap());
    let (code, out) = fixed_check("first-run", inc);
    assert!(
        code == 1 && out.contains("5 queue overflows"),
        "first run: the total: {out}"
    );
    let (code, out) = fixed_check("unchanged", inc);
    assert_eq!(code, 0, "no increase: {out}");
    serve_overflows(7);
    let (code, out) = fixed_check("plus2", inc);
    assert!(code == 1 && out.contains("2 queue overflows"), "{out}");
    serve_overflows(3);
    let (code, out) = fixed_check("restarted", inc);
    assert!(
        code == 1 && out.contains("3 queue overflows"),
        "after a restart: {out}"
    );
    let (code, out) = fixed_check("total3", None);
    assert!(code == 1 && out.contains("3 queue overflows"), "{out}");
    // File output off ([logging] enabled = false): no log filesystem, no
    // disk gauge (it used to read 0, a "full disk"), so no disk alarm.
    let quiet = Env::new();
    fs::write(
        &quiet.config,
        format!(
            "[monitored]\npath = {:?}\n[logging]\nenabled = false\n[socket]\npath = {:?}\n",
            quiet.store, quiet.socket
        ),
    )
    .unwrap();
    let _q = quiet.start(&[]);
    let qs = quiet.socket.to_str().unwrap();
    let (code, out, _) = run(
        dir,
        "nolog",
        m,
        &["--socket", qs, "--check", "--disk-free-crit", "1GB"],
    );
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("disk_free"), "{out}");
    let out = run_ok(dir, "nolog-summary", m, &["--socket", qs]);
    assert!(
        out.contains("log disk free        - (file output off)"),
        "{out}"
    );
    // Unreachable: UNKNOWN.
    let (code, out, _) = run(
        dir,
        "unknown",
        m,
        &[
            "--url",
            &format!("http://127.0.0.1:{}/metrics", free_port()),
            "--check",
        ],
    );
    assert_eq!(code, 3, "{out}");
    assert!(
        out.starts_with("FSMON UNKNOWN - cannot read the metrics"),
        "{out}"
    );
}

/// Every metric name a PromQL expression reads (not functions, keywords,
/// label names, Grafana variables or numbers).
fn promql_metrics(expr: &str) -> BTreeSet<String> {
    // label_values(metric, label) (Grafana): only the metric.
    let expr = match expr.trim().strip_prefix("label_values(") {
        Some(rest) => rest.split([',', ')']).next().unwrap().to_string(),
        None => expr.to_string(),
    };
    // Drop strings, {matchers}, [ranges], and the label lists of by/without/on/ignoring/group_*.
    let mut flat = String::new();
    let mut depth_until: Option<char> = None;
    for c in expr.chars() {
        match (depth_until, c) {
            (Some(end), c) if c == end => depth_until = None,
            (Some(_), _) => {}
            (None, '"') => depth_until = Some('"'),
            (None, '\'') => depth_until = Some('\''),
            (None, '{') => depth_until = Some('}'),
            (None, '[') => depth_until = Some(']'),
            (None, c) => flat.push(c),
        }
    }
    let mut names = BTreeSet::new();
    let chars: Vec<char> = flat.chars().collect();
    let mut i = 0;
    let mut skip_group = false;
    while i < chars.len() {
        let c = chars[i];
        if c.is_ascii_digit() || (c == '$') {
            // numbers, durations (5m), Grafana variables ($instance)
            i += 1;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || matches!(chars[i], '.' | '_'))
            {
                i += 1;
            }
            continue;
        }
        if !(c.is_ascii_alphabetic() || c == '_' || c == ':') {
            if c == '(' && skip_group {
                let close = chars[i..].iter().position(|&c| c == ')').unwrap() + i;
                i = close + 1;
                skip_group = false;
                continue;
            }
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && (chars[i].is_ascii_alphanumeric() || matches!(chars[i], '_' | ':'))
        {
            i += 1;
        }
        let word: String = chars[start..i].iter().collect();
        let next = chars[i..].iter().find(|c| !c.is_whitespace());
        match word.as_str() {
            "by" | "without" | "on" | "ignoring" | "group_left" | "group_right" => {
                skip_group = true
            }
            "and" | "or" | "unless" | "bool" | "offset" | "inf" | "nan" | "Inf" | "NaN" => {}
            // aggregations, also when `by (...)` comes before their argument
            "sum" | "min" | "max" | "avg" | "group" | "stddev" | "stdvar" | "count"
            | "count_values" | "bottomk" | "topk" | "quantile" => {}
            _ if next == Some(&'(') => {} // a function or aggregation
            _ => {
                names.insert(word);
            }
        }
    }
    names
}

/// The metric names in a daemon's /metrics text.
fn exported(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect()
}

/// A daemon with events logged and every metric family present.
fn busy_daemon(env: &Env) -> (Daemon, String) {
    let d = daemon(env, &["--metrics-listen", "127.0.0.1:0"]);
    let addr = metrics_addr(&d);
    touch(&env.watch, &["p1", "p2"]);
    env.wait_events("_global", "2 events", |e| e.len() == 2);
    // health reads the unresolved counter, which creates its maybe_inside series.
    let h = run_ok(
        env.dir.path(),
        "health",
        "socket-admin/fsmon-admin.py",
        &["--socket", env.socket.to_str().unwrap(), "health"],
    );
    assert!(h.contains("ready"), "{h}");
    let (status, text) = http_get(&addr, "/metrics");
    assert_eq!(status, 200);
    (d, text)
}

#[test]
fn grafana_dashboard_and_alerts_use_only_exported_metrics() {
    // The extractor itself: a name the daemon does not export must be seen.
    assert_eq!(
        promql_metrics(
            r#"sum by (type) (rate(fsmon_a_total{instance=~"$instance",x="y{"}[$__rate_interval])) / on(instance) group_left(tracker) up offset 5m > 1e9"#
        ),
        set(&["fsmon_a_total".to_string(), "up".to_string()])
    );
    assert_eq!(
        promql_metrics("label_values(fsmon_start_time_seconds, instance)"),
        set(&["fsmon_start_time_seconds".to_string()])
    );

    let env = Env::new();
    let (_d, text) = busy_daemon(&env);
    let live = exported(&text);

    let dash: Value =
        serde_json::from_str(&fs::read_to_string(ext("http-metrics/fsmon-grafana.json")).unwrap())
            .unwrap();
    let mut exprs = Vec::new();
    let mut panels: Vec<&Value> = dash["panels"].as_array().unwrap().iter().collect();
    while let Some(p) = panels.pop() {
        panels.extend(p["panels"].as_array().into_iter().flatten()); // rows
        for t in p["targets"].as_array().into_iter().flatten() {
            exprs.push(
                t["expr"]
                    .as_str()
                    .unwrap_or_else(|| panic!("a target without expr in {}", p["title"]))
                    .to_string(),
            );
        }
    }
    assert!(dash["panels"].as_array().unwrap().len() >= 8);
    for v in dash["templating"]["list"].as_array().into_iter().flatten() {
        let q = &v["query"];
        exprs.push(q.as_str().or(q["query"].as_str()).unwrap().to_string());
    }
    let mut used = BTreeSet::new();
    for e in &exprs {
        let names = promql_metrics(e);
        assert!(!names.is_empty(), "no metric in {e:?}");
        for n in names {
            assert!(
                live.contains(&n),
                "the dashboard's query {e:?} names {n}, which the daemon does not export:\n{text}"
            );
            used.insert(n);
        }
    }
    assert!(
        used.len() >= 15,
        "the dashboard shows most metrics: {used:?}"
    );

    // The alert rules: only exported metrics, and `up` (Prometheus' own).
    let rules = fs::read_to_string(ext("http-metrics/fsmon-alerts.yml")).unwrap();
    let mut n = 0;
    for line in rules.lines().filter_map(|l| l.trim().strip_prefix("expr:")) {
        n += 1;
        for name in promql_metrics(line) {
            assert!(
                name == "up" || live.contains(&name),
                "alert expr {line:?} names {name}, which the daemon does not export"
            );
        }
    }
    assert_eq!(n, 9);
}

#[test]
fn prometheus_config_rules_and_a_real_scrape() {
    let promtool = require("promtool", "prometheus");
    let prometheus = require("prometheus", "prometheus");
    let http_metrics = ext("http-metrics");
    let tmp = tmpdir();
    let dir = tmp.path();

    // The files as shipped.
    let mut p = Proc::start(
        "check-config",
        dir,
        Command::new(&promtool)
            .args(["check", "config"])
            .arg(http_metrics.join("prometheus.yml")),
    );
    p.success();
    assert!(
        p.stdout().contains("SUCCESS: 1 rule files found"),
        "{}",
        p.report()
    );
    let mut p = Proc::start(
        "test-rules",
        dir,
        Command::new(&promtool)
            .args(["test", "rules"])
            .arg(http_metrics.join("fsmon-alerts.test.yml")),
    );
    p.success();
    assert!(p.stdout().contains("SUCCESS"), "{}", p.report());

    // The daemon's /metrics passes promtool's linter.
    let env = Env::new();
    let (d, text) = busy_daemon(&env);
    let mut lint = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    lint.stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = lint.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // A real Prometheus with the shipped config, pointed at this daemon, scraping every second.
    let addr = metrics_addr(&d);
    let config = fs::read_to_string(http_metrics.join("prometheus.yml")).unwrap();
    assert!(config.contains("\"127.0.0.1:9845\"") && config.contains("scrape_interval: 15s"));
    let config = config
        .replace("\"127.0.0.1:9845\"", &format!("\"{addr}\""))
        .replace("scrape_interval: 15s", "scrape_interval: 1s")
        .replace("evaluation_interval: 15s", "evaluation_interval: 1s");
    fs::write(dir.join("prometheus.yml"), config).unwrap();
    fs::copy(
        http_metrics.join("fsmon-alerts.yml"),
        dir.join("fsmon-alerts.yml"),
    )
    .unwrap();
    let web = format!("127.0.0.1:{}", free_port());
    let mut server = Proc::start(
        "prometheus",
        dir,
        Command::new(prometheus)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={web}")),
    );
    let get = |server: &mut Proc, path: &str| -> Option<Value> {
        if let Ok(Some(st)) = server.child.as_mut().unwrap().try_wait() {
            panic!("prometheus exited ({st})\n{}", server.report());
        }
        match http("GET", &web, path, b"") {
            Ok((200, body)) => serde_json::from_str(&body).ok(),
            _ => None,
        }
    };
    wait_for("the fsmon target up", Duration::from_secs(90), || {
        let v = get(&mut server, "/api/v1/targets")?;
        let t = &v["data"]["activeTargets"][0];
        (t["labels"]["job"] == "fsmon"
            && t["health"] == "up"
            && t["scrapeUrl"] == format!("http://{addr}/metrics"))
        .then_some(())
    });
    let q = format!(
        "/api/v1/query?query={}",
        urlencode("sum(fsmon_events_logged_total)")
    );
    let v = wait_for("fsmon_events_logged_total in prometheus", T, || {
        let v = get(&mut server, &q)?;
        (v["data"]["result"].as_array()?.len() == 1).then_some(v)
    });
    assert_eq!(v["data"]["result"][0]["value"][1], "2", "{v}");
    // The alert rules were loaded and evaluated on fsmon's data without an
    // error (a rule whose PromQL fails shows health "err"): wait for an
    // evaluation of every rule that started after the data was there.
    // Whether each rule can fire is `promtool test rules`' job, above.
    let data_seen = chrono::Utc::now();
    let rules = wait_for("every rule evaluated on fsmon's data", T, || {
        let rules = get(&mut server, "/api/v1/rules")?;
        rules["data"]["groups"][0]["rules"]
            .as_array()?
            .iter()
            .all(|r| {
                r["lastEvaluation"]
                    .as_str()
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    .is_some_and(|t| t > data_seen)
            })
            .then_some(rules)
    });
    for r in rules["data"]["groups"][0]["rules"].as_array().unwrap() {
        assert_eq!(r["health"], "ok", "rule {}: {r}", r["name"]);
    }
    let names: BTreeSet<&str> = rules["data"]["groups"][0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 9, "{rules}");
    assert!(
        names.contains("FsmonDown") && names.contains("FsmonLogDiskLow"),
        "{names:?}"
    );
    // None fires for a healthy daemon (the disk ones may be pending, with
    // other tests writing: they need minutes).
    let alerts = get(&mut server, "/api/v1/alerts").expect("alerts");
    let firing: Vec<&Value> = alerts["data"]["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["state"] == "firing")
        .collect();
    assert!(firing.is_empty(), "{alerts}");
}
