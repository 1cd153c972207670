//! Reading events like a person: `fsmon tail` on the live stream, and the
//! text form that `tail`, `query`, `changes`, `monitored` and `health`
//! print on a terminal (a real pty here), with colour by `--color`, `TERM`
//! and `NO_COLOR`; JSON stays the logged bytes. Real daemon, real files,
//! real users for the system daemon's readers' group.
use std::{
    fs,
    io::{BufRead, BufReader, Read},
    os::{fd::OwnedFd, unix::ffi::OsStrExt},
    process::{Child, Command, Output, Stdio},
    sync::mpsc,
    time::Duration,
};

use fsmon_tests::{Env, TestGroup, TestUser, complete, fsmon_bin, run_bounded, wait_for};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(60);

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// An fsmon command with this env's config and a clean environment for
/// the output rules (no NO_COLOR, TERM as given by each test).
fn fsmon_cmd(env: &Env, args: &[&str]) -> Command {
    let mut c = Command::new(fsmon_bin());
    c.arg("--config")
        .arg(&env.config)
        .args(args)
        .env_remove("SUDO_UID")
        .env_remove("NO_COLOR")
        .env("TERM", "xterm-256color");
    c
}

/// Runs `cmd` with stdout on a fresh pty (stdin null, stderr piped) and
/// returns its exit status, what the terminal got (with the tty's `\r\n`
/// made `\n` again) and stderr.
fn run_on_pty(mut cmd: Command) -> (std::process::ExitStatus, Vec<u8>, String) {
    let pty = nix::pty::openpty(None, None).expect("openpty");
    let slave: OwnedFd = pty.slave;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::from(slave))
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn on pty");
    // Our copy of the slave went into the Command: drop it so the master
    // reads EIO once the child is gone.
    drop(cmd);
    let mut master = fs::File::from(pty.master);
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        // EIO: the slave side is closed.
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
        }
        all
    });
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = wait_for("the command on the pty to exit", LONG, || {
        child.try_wait().unwrap()
    });
    let out = reader.join().unwrap();
    (status, crlf_to_lf(&out), stderr)
}

fn crlf_to_lf(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    for (i, &c) in b.iter().enumerate() {
        if !(c == b'\r' && b.get(i + 1) == Some(&b'\n')) {
            out.push(c);
        }
    }
    out
}

/// True if every ESC in `out` starts an SGR sequence (`ESC [ digits/; m`):
/// colour, and nothing else, reaches the terminal.
fn only_colour_escapes(out: &[u8]) -> bool {
    let mut i = 0;
    while let Some(p) = out[i..].iter().position(|&b| b == 0x1b) {
        let start = i + p;
        let rest = &out[start + 1..];
        if rest.first() != Some(&b'[') {
            return false;
        }
        let Some(end) = rest[1..]
            .iter()
            .position(|&b| !(b.is_ascii_digit() || b == b';'))
        else {
            return false;
        };
        if rest[1 + end] != b'm' {
            return false;
        }
        i = start + 2 + end + 1;
    }
    true
}

/// The event's time as the text form shows it (local, milliseconds).
fn local(stamp: &str) -> String {
    chrono::DateTime::parse_from_rfc3339(stamp)
        .unwrap()
        .with_timezone(&chrono::Local)
        .format("%Y-%m-%d %H:%M:%S%.3f")
        .to_string()
}

/// Waits for the daemon to count `n` subscribers (a `tail` is listening).
fn wait_subscribers(env: &Env, n: u64) {
    wait_for("the tail to subscribe", LONG, || {
        let out = env.fsmon(&["health"]);
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        (v["subscribers"].as_u64()? >= n).then_some(())
    });
}

/// Reads a child's stdout lines on a thread.
fn line_reader(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The next line from `rx` that satisfies `pred`, within the deadline.
fn next_line(rx: &mpsc::Receiver<String>, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + LONG;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if pred(&l) => return l,
            Ok(_) => {}
            Err(e) => panic!("no line for {what}: {e}"),
        }
    }
}

fn interrupt(child: &Child) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
}

#[test]
fn tail_follows_live_events_as_logged_and_stops_cleanly() {
    let env = Env::new();
    env.add("_global", &env.watch, &["-r"]);
    let d = env.start(&[]);
    // Every group (no CMD) and one group, both as JSON (stdout is a pipe).
    let spawn = |args: &[&str]| {
        fsmon_cmd(&env, args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut all = spawn(&["tail"]);
    let mut one = spawn(&["tail", "_global"]);
    let (all_rx, one_rx) = (line_reader(&mut all), line_reader(&mut one));
    wait_subscribers(&env, 2);
    // Written after both started: they see it live.
    let file = env.watch.join("live.txt");
    fs::write(&file, "x").unwrap();
    let is_create = |l: &str| l.contains("\"CREATE\"") && l.contains("live.txt");
    let from_all = next_line(&all_rx, "the CREATE on tail", is_create);
    let from_one = next_line(&one_rx, "the CREATE on tail _global", is_create);
    // The stream's line is the logged line with its group first.
    let logged = env.wait_events("_global", "the CREATE logged", |e| {
        e.iter().any(|v| v["event_type"] == "CREATE")
    });
    assert!(!logged.is_empty());
    let log = fs::read_to_string(env.log_path("_global")).unwrap();
    for line in [&from_all, &from_one] {
        let bare = line
            .strip_prefix("{\"group\":\"_global\",")
            .unwrap_or_else(|| panic!("no group first: {line}"));
        let as_logged = format!("{{{bare}\n");
        assert!(log.contains(&as_logged), "{line} is not a log line:\n{log}");
    }
    // Ctrl-C: exit 0, nothing on stderr.
    for mut child in [all, one] {
        interrupt(&child);
        let status = wait_for("tail to stop", LONG, || child.try_wait().unwrap());
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        assert_eq!(status.code(), Some(0), "{status}: {err}");
        assert!(err.is_empty(), "{err}");
    }

    // `fsmon tail | head -n 1` ends quietly: the closed pipe is no error.
    let mut piped = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -o pipefail; {:?} --config {:?} tail _global | head -n 1 >/dev/null",
            fsmon_bin(),
            env.config
        ))
        .env_remove("SUDO_UID")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_subscribers(&env, 1);
    let mut i = 0;
    let status = wait_for("tail | head to end", LONG, || {
        // head leaves after one line; tail learns it at its next write.
        i += 1;
        fs::write(env.watch.join(format!("p{i}")), "x").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        piped.try_wait().unwrap()
    });
    let mut err = String::new();
    piped
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "tail | head: {status}: {err}");
    assert!(err.is_empty(), "{err}");

    // A group that watches nothing: said at once, and the stream waits.
    let mut idle = spawn(&["tail", "nginx"]);
    let mut first = String::new();
    BufReader::new(idle.stderr.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(
        first.contains("group nginx watches no path (yet)"),
        "{first}"
    );
    interrupt(&idle);
    let status = wait_for("the idle tail to stop", LONG, || idle.try_wait().unwrap());
    assert_eq!(status.code(), Some(0), "{status}");

    // A bad group is one line, before anything is sent.
    let out = env.fsmon(&["tail", "../x"]);
    assert!(!out.status.success());
    assert_eq!(
        text(&out.stderr).lines().count(),
        1,
        "{}",
        text(&out.stderr)
    );
    assert!(d.stop().success());
}

#[test]
fn tail_on_a_terminal_is_readable_and_stops_with_exit_0() {
    let env = Env::new();
    env.add("_global", &env.watch, &["-r"]);
    let d = env.start(&[]);
    let pty = nix::pty::openpty(None, None).unwrap();
    let mut cmd = fsmon_cmd(&env, &["tail", "_global"]);
    cmd.env("NO_COLOR", "1");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::from(pty.slave))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(cmd);
    let mut master = fs::File::from(pty.master);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    wait_subscribers(&env, 1);
    fs::write(env.watch.join("seen.txt"), "x").unwrap();
    let mut got = Vec::new();
    wait_for("the readable CREATE on the terminal", LONG, || {
        while let Ok(chunk) = rx.try_recv() {
            got.extend(chunk);
        }
        let t = text(&got);
        t.lines()
            .any(|l| l.contains("CREATE") && l.contains("seen.txt"))
            .then_some(())
    });
    let shown = text(&crlf_to_lf(&got));
    // Subscribers get a line before the batch is written to the log.
    let ev = wait_for("the CREATE logged", LONG, || {
        env.events("_global")
            .into_iter()
            .find(|e| e["event_type"] == "CREATE")
    });
    let line = shown.lines().find(|l| l.contains("CREATE")).unwrap();
    let path = env.watch.join("seen.txt");
    assert_eq!(
        line,
        format!(
            "{}  CREATE         {}  {}[{}] {}",
            local(ev["time"].as_str().unwrap()),
            path.display(),
            ev["cmd"].as_str().unwrap(),
            ev["pid"],
            ev["user"].as_str().unwrap()
        ),
        "{shown}"
    );
    assert!(!got.contains(&0x1b), "NO_COLOR=1 and yet: {shown:?}");
    interrupt(&child);
    let status = wait_for("tail to stop", LONG, || child.try_wait().unwrap());
    assert_eq!(status.code(), Some(0), "{status}");
    assert!(d.stop().success());
}

/// A log of `_global` with a hostile file name, an ordinary one, and their
/// changes, made by the real daemon; returns the env (daemon stopped).
fn logged_env() -> (Env, Vec<u8>) {
    let env = Env::new();
    env.add("_global", &env.watch, &["-r"]);
    let d = env.start(&[]);
    let hostile = env.watch.as_os_str().as_bytes().to_vec();
    let mut name = hostile.clone();
    name.extend_from_slice(b"/e\x1b[31m\nvil\x9b");
    let hostile = std::path::PathBuf::from(std::ffi::OsStr::from_bytes(&name));
    fs::write(&hostile, "x").unwrap();
    fs::write(env.watch.join("plain.txt"), "x").unwrap();
    env.wait_events("_global", "both files' CLOSE_WRITE", |e| {
        e.iter()
            .filter(|v| v["event_type"] == "CLOSE_WRITE")
            .count()
            >= 2
    });
    assert!(d.stop().success());
    let log = fs::read(env.log_path("_global")).unwrap();
    (env, log)
}

#[test]
fn query_and_changes_text_on_a_terminal_json_byte_identical() {
    let (env, log) = logged_env();
    let events = env.events("_global");
    // JSON when stdout is a pipe, and -o json on a terminal: the log's bytes.
    let piped = run_bounded(&mut fsmon_cmd(&env, &["query", "_global"]), LONG);
    assert!(piped.status.success(), "{}", text(&piped.stderr));
    assert_eq!(piped.stdout, log, "query | cat is not the log");
    let (status, on_tty, err) = run_on_pty(fsmon_cmd(&env, &["query", "_global", "-o", "json"]));
    assert!(status.success(), "{err}");
    assert_eq!(on_tty, log, "query -o json on a terminal is not the log");
    let changes = run_bounded(&mut fsmon_cmd(&env, &["changes", "_global"]), LONG);
    assert!(changes.status.success());
    let log_text = text(&log);
    for line in text(&changes.stdout).lines() {
        assert!(log_text.lines().any(|l| l == line), "{line}");
    }

    // Text on a terminal, without colour: one line per event, with the
    // local time, type, path (escaped as in the log), process and user.
    let mut cmd = fsmon_cmd(&env, &["query", "_global"]);
    cmd.env("NO_COLOR", "1");
    let (status, shown, err) = run_on_pty(cmd);
    assert!(status.success(), "{err}");
    assert!(!shown.contains(&0x1b), "NO_COLOR=1: {:?}", text(&shown));
    let shown = text(&shown);
    assert_eq!(shown.lines().count(), events.len(), "{shown}");
    for (line, ev) in shown.lines().zip(&events) {
        let t = ev["event_type"].as_str().unwrap();
        assert!(
            line.starts_with(&local(ev["time"].as_str().unwrap())),
            "{line}"
        );
        assert!(line.contains(&format!("  {t} ")), "{line}");
        let who = format!(
            "{}[{}] {}",
            ev["cmd"].as_str().unwrap(),
            ev["pid"],
            ev["user"].as_str().unwrap()
        );
        assert!(line.contains(&who), "{line}");
    }
    // The hostile name: escaped exactly as the log's JSON writes it (the
    // byte 0x9B is not UTF-8: `\x9b` in fsmon's path text form).
    let escaped = format!("{}/e\\u001b[31m\\nvil\\x9b", env.watch.display());
    assert!(shown.contains(&escaped), "{shown}");
    assert!(
        log_text.contains(&escaped.replace("\\x9b", "\\\\x9b")),
        "{log_text}"
    );

    // Colour: auto on a terminal, off for NO_COLOR, TERM=dumb, --color
    // never; --color always wins over NO_COLOR and over a pipe.
    let colour = |extra: &[&str], vars: &[(&str, &str)], pty: bool| -> Vec<u8> {
        let mut args = vec!["changes", "_global"];
        args.extend_from_slice(extra);
        let mut cmd = fsmon_cmd(&env, &args);
        for (k, v) in vars {
            cmd.env(k, v);
        }
        if pty {
            let (status, out, err) = run_on_pty(cmd);
            assert!(status.success(), "{extra:?} {vars:?}: {err}");
            out
        } else {
            let out = run_bounded(&mut cmd, LONG);
            assert!(out.status.success(), "{}", text(&out.stderr));
            out.stdout
        }
    };
    let coloured = colour(&[], &[], true);
    assert!(
        coloured.contains(&0x1b),
        "no colour on a terminal: {:?}",
        text(&coloured)
    );
    assert!(only_colour_escapes(&coloured), "{:?}", text(&coloured));
    assert!(
        text(&coloured).contains("\\u001b[31m\\nvil"),
        "{:?}",
        text(&coloured)
    );
    // NO_COLOR set but empty does not count (no-color.org).
    assert!(colour(&[], &[("NO_COLOR", "")], true).contains(&0x1b));
    for (extra, vars) in [
        (&[][..], &[("NO_COLOR", "1")][..]),
        (&[], &[("TERM", "dumb")]),
        (&["--color", "never"], &[]),
    ] {
        let out = colour(extra, vars, true);
        assert!(!out.contains(&0x1b), "{extra:?} {vars:?}: {:?}", text(&out));
        assert!(text(&out).contains("CLOSE_WRITE"), "{:?}", text(&out));
    }
    let always = colour(&["--color", "always"], &[("NO_COLOR", "1")], true);
    assert!(always.contains(&0x1b) && only_colour_escapes(&always));
    let forced = colour(&["-o", "text", "--color", "always"], &[], false);
    assert!(forced.contains(&0x1b) && only_colour_escapes(&forced));
    let plain = colour(&["--output", "text"], &[], false);
    assert!(!plain.contains(&0x1b) && text(&plain).contains("CLOSE_WRITE"));
}

#[test]
fn monitored_and_health_are_readable_on_a_terminal() {
    let env = Env::new();
    env.add("_global", &env.watch, &["-r"]);
    env.add(
        "nginx",
        &env.watch,
        &[
            "--types",
            "MODIFY,CREATE",
            "--size",
            ">=1MB",
            "--mark",
            "inode",
        ],
    );
    let mut cmd = fsmon_cmd(&env, &["monitored"]);
    cmd.env("NO_COLOR", "1");
    let (status, shown, err) = run_on_pty(cmd);
    assert!(status.success(), "{err}");
    let shown = text(&shown);
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(lines.len(), 3, "{shown}");
    let cells = |l: &str| l.split_whitespace().map(str::to_string).collect::<Vec<_>>();
    assert_eq!(
        cells(lines[0]),
        ["GROUP", "PATH", "RECURSIVE", "TYPES", "SIZE", "MARK"]
    );
    let w = env.watch.to_str().unwrap();
    assert_eq!(
        cells(lines[1]),
        ["_global", w, "yes", "default", "-", "auto"]
    );
    assert_eq!(
        cells(lines[2]),
        ["nginx", w, "no", "MODIFY,CREATE", ">=1MB", "inode"]
    );
    // Not a terminal: the JSON lines, as before.
    let json = env.fsmon_ok(&["monitored"]);
    assert!(
        json.lines()
            .all(|l| serde_json::from_str::<Value>(l).is_ok()),
        "{json}"
    );

    let d = env.start(&[]);
    let mut cmd = fsmon_cmd(&env, &["health"]);
    cmd.env("NO_COLOR", "1");
    let (status, shown, err) = run_on_pty(cmd);
    assert!(status.success(), "{err}");
    let shown = text(&shown);
    for want in [
        "ready: yes",
        "uptime: ",
        "events_logged: ",
        "paths:",
        "subscribers: 0",
    ] {
        assert!(shown.contains(want), "no {want:?} in:\n{shown}");
    }
    // Keys in order: the mark fields (mark=, marked_dirs=) come between.
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with("  - group=_global ") && l.contains(&format!(" path={w} "))),
        "{shown}"
    );
    let (status, json, _) = run_on_pty(fsmon_cmd(&env, &["health", "-o", "json"]));
    assert!(status.success());
    let v: Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(v["ready"], true);
    assert!(d.stop().success());
}

/// `fsmon --system --config <env> tail` as `user` with `groups`.
fn tail_as(user: &TestUser, groups: &[u32], env: &Env) -> Command {
    let mut c = user.command(groups, &fsmon_bin());
    c.args(["--system", "--config", env.config.to_str().unwrap(), "tail"]);
    c
}

#[test]
fn system_daemon_tail_for_members_only() {
    let group = TestGroup::new("T");
    let member = TestUser::new("tailr");
    let outsider = TestUser::new("tailo");
    let env = Env::new();
    // Others may pass through the test's directory (as through /var/log).
    fs::set_permissions(
        env.dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let d = env.start_with_env(&["--system"], &[("FSMON_GROUP", &group.name)]);
    let out = env.fsmon(&[
        "--system",
        "add",
        "_global",
        "--path",
        env.watch.to_str().unwrap(),
        "-r",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    // Outside the group: refused, one line, non-zero.
    let out: Output = run_bounded(&mut tail_as(&outsider, &[], &env), LONG);
    assert!(!out.status.success(), "the outsider's tail ran");
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("ermission denied"), "{err}");
    assert!(out.stdout.is_empty());

    // A member follows the stream.
    let mut tail = tail_as(&member, &[group.gid], &env)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = line_reader(&mut tail);
    wait_for("the member's tail to subscribe", LONG, || {
        let out = env.fsmon(&["--system", "health"]);
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        (v["subscribers"].as_u64()? >= 1).then_some(())
    });
    fs::write(env.watch.join("for-readers"), "x").unwrap();
    let line = next_line(&rx, "the member's event", |l| l.contains("for-readers"));
    assert!(line.starts_with("{\"group\":\"_global\","), "{line}");
    interrupt(&tail);
    let status = wait_for("the member's tail to stop", LONG, || {
        tail.try_wait().unwrap()
    });
    assert_eq!(status.code(), Some(0), "{status}");
    assert!(d.stop().success());
}

#[test]
fn a_reader_that_falls_behind_is_told_how_many_it_missed() {
    let env = Env::new();
    env.add("_global", &env.watch, &["-r"]);
    // A buffer of one event: any pause of the reader loses events.
    let d = env.start(&["--subscribe-buf", "1"]);
    let mut tail = fsmon_cmd(&env, &["tail", "_global"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_subscribers(&env, 1);
    // The reader stops reading; the daemon's writes to it fill the socket
    // and its place in the stream falls behind.
    let pid = nix::unistd::Pid::from_raw(tail.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let files = 5000;
    for i in 0..files {
        fs::write(env.watch.join(format!("f{i}")), "x").unwrap();
    }
    env.wait_events("_global", "every file logged", |e| {
        e.iter()
            .filter(|v| v["event_type"] == "CLOSE_WRITE")
            .count()
            >= files
    });
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    let rx = line_reader(&mut tail);
    let notice = next_line(&rx, "the missed notice", |l| l.contains("\"notice\""));
    let v: Value = serde_json::from_str(&notice).unwrap();
    assert_eq!(v["notice"], "missed", "{notice}");
    let missed = v["missed"].as_u64().unwrap();
    assert!(missed > 0, "{notice}");
    interrupt(&tail);
    let status = wait_for("tail to stop", LONG, || tail.try_wait().unwrap());
    assert_eq!(status.code(), Some(0), "{status}");
    // Said on stderr too, where a consumer of the events cannot miss it.
    let mut err = String::new();
    tail.stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(
        err.contains(&format!("warning: missed {missed} events")),
        "{err}"
    );
    assert!(d.stop().success());
}

#[test]
fn completions_and_man_pages_know_tail_and_the_output_flags() {
    let env = Env::new();
    env.add("nginx", &env.watch, &[]);
    let top = complete(&env, &["fsmon", ""]);
    assert!(top.contains(&"tail".to_string()), "{top:?}");
    let groups = complete(&env, &["fsmon", "tail", ""]);
    for g in ["nginx", "_global"] {
        assert!(groups.contains(&g.to_string()), "{groups:?}");
    }
    for cmd in ["tail", "query", "changes", "monitored", "health"] {
        let mut words = vec!["fsmon", cmd];
        if matches!(cmd, "query" | "changes") {
            words.push("nginx");
        }
        let formats = complete(&env, &[&words[..], &["-o", ""]].concat());
        assert_eq!(formats, ["json", "text"], "{cmd}");
        let colours = complete(&env, &[&words[..], &["--color", ""]].concat());
        assert_eq!(colours, ["auto", "always", "never"], "{cmd}");
    }
    let dir = env.dir.path().join("man");
    env.fsmon_ok(&["man", "--dir", dir.to_str().unwrap()]);
    let page = fs::read_to_string(dir.join("fsmon-tail.1")).unwrap();
    for want in ["fsmon\\-tail", "\\-\\-output", "\\-\\-color"] {
        assert!(page.contains(want), "no {want} in fsmon-tail.1:\n{page}");
    }
    let main = env.fsmon_ok(&["man"]);
    assert!(
        main.contains("NO_COLOR") && main.contains("fsmon tail"),
        "{main}"
    );
}
