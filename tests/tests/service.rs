//! fsmon as a service: system mode and its readers' group, the conventional
//! places (XDG and $HOME when not through sudo), SIGHUP reload, re-adding a
//! path, and the metrics an operator scrapes. Real daemons, real users.
use std::{
    fs,
    io::{BufRead, BufReader, Write},
    os::unix::{fs::MetadataExt, net::UnixStream},
    path::Path,
    process::{Command, Output},
    time::Duration,
};

use fsmon_tests::{Env, TestGroup, TestUser, fsmon_bin, wait_for};
use serde_json::Value;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn request(socket: &Path, req: &str) -> Value {
    let mut s = UnixStream::connect(socket).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(format!("{req}\n").as_bytes()).unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap()
}

/// Runs `fsmon --system --config <env> args` as `user`, with `groups` as
/// its supplementary groups.
fn fsmon_as(user: &TestUser, groups: &[u32], env: &Env, args: &[&str]) -> Output {
    user.command(groups, &fsmon_bin())
        .args(["--system", "--config", env.config.to_str().unwrap()])
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn system_mode_readers_group_reads_and_never_changes() {
    let group = TestGroup::new("G");
    let member = TestUser::new("sysr");
    let outsider = TestUser::new("syso");
    let env = Env::new();
    // Others may pass through the test's directory (as through /var/log).
    fs::set_permissions(
        env.dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let d = env.start_with_env(&["--system"], &[("FSMON_GROUP", &group.name)]);
    assert!(
        d.stderr()
            .contains(&format!("members of group {} may read", group.name)),
        "{}",
        d.stderr()
    );
    let root = |args: &[&str]| {
        let mut all = vec!["--system"];
        all.extend_from_slice(args);
        env.fsmon(&all)
    };
    let out = root(&[
        "add",
        "_global",
        "--path",
        env.watch.to_str().unwrap(),
        "-r",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    fs::write(env.watch.join("f"), "x").unwrap();
    wait_for("the event logged", Duration::from_secs(60), || {
        (!env.events("_global").is_empty()).then_some(())
    });

    // The files say who may read: directories 0750, log 0640, socket 0660,
    // all root's with the readers' group.
    let log = env.log_path("_global");
    for (what, path, mode) in [
        ("log dir", env.logs.clone(), 0o750),
        (
            "store dir",
            env.store.parent().unwrap().to_path_buf(),
            0o750,
        ),
        ("log", log.clone(), 0o640),
        ("socket", env.socket.clone(), 0o660),
    ] {
        let m = fs::symlink_metadata(&path).unwrap();
        assert_eq!(
            (m.uid(), m.gid(), m.mode() & 0o777),
            (0, group.gid, mode),
            "{what} {}",
            path.display()
        );
    }

    // A member reads: status, the list, the events.
    let ok = |args: &[&str]| {
        let out = fsmon_as(&member, &[group.gid], &env, args);
        assert!(
            out.status.success(),
            "member {args:?}: {}",
            text(&out.stderr)
        );
        text(&out.stdout)
    };
    assert!(ok(&["health"]).contains("\"ready\":true"));
    assert!(ok(&["monitored"]).contains(env.watch.to_str().unwrap()));
    assert!(ok(&["query", "_global"]).contains("\"CREATE\""));
    // ... and never changes what is watched: the daemon refuses.
    let other = env.dir.path().join("other");
    fs::create_dir(&other).unwrap();
    for args in [
        vec!["add", "_global", "--path", other.to_str().unwrap()],
        vec!["remove", "_global"],
        vec!["remove", "_global", "--path", env.watch.to_str().unwrap()],
        vec!["clean", "_global", "--time", ">1s"],
    ] {
        let out = fsmon_as(&member, &[group.gid], &env, &args);
        let err = text(&out.stderr);
        assert!(!out.status.success(), "member {args:?} was allowed");
        assert_eq!(err.lines().count(), 1, "{err}");
        if args[0] != "clean" {
            assert!(err.contains("permission denied"), "{args:?}: {err}");
        }
    }
    // Straight to the socket, as a client of the member's own: the daemon
    // refuses the requests that change things (clean's swap included) and
    // serves the stream.
    let raw = |req: &str| {
        let script = "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.settimeout(30)\ns.connect(sys.argv[1])\ns.sendall(sys.argv[2].encode()+b'\\n')\nprint(s.makefile().readline(),end='')\n";
        let out = Command::new("setpriv")
            .arg(format!("--reuid={}", member.uid))
            .arg(format!("--regid={}", member.gid))
            .arg(format!("--groups={}", group.gid))
            .args(["--", "/usr/bin/python3", "-c", script])
            .arg(&env.socket)
            .arg(req)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        serde_json::from_str::<Value>(&text(&out.stdout)).unwrap()
    };
    let tmp = env.logs.join("._global_log.jsonl.trim");
    for req in [
        format!(
            r#"{{"op":"clean_swap","group":"_global","tmp":{:?},"copied_until":0}}"#,
            tmp.to_str().unwrap()
        ),
        format!(
            r#"{{"op":"add","group":"x","path":{:?}}}"#,
            other.to_str().unwrap()
        ),
        r#"{"op":"remove","group":"_global"}"#.to_string(),
    ] {
        let v = raw(&req);
        assert_eq!(v["ok"], false, "{req}: {v}");
        assert!(
            v["error"].as_str().unwrap().contains("permission denied"),
            "{req}: {v}"
        );
    }
    assert_eq!(raw(r#"{"op":"subscribe"}"#)["ok"], true);
    assert_eq!(raw(r#"{"op":"metrics"}"#)["ok"], true);

    // Nothing changed.
    let monitored = ok(&["monitored"]);
    assert!(!monitored.contains(other.to_str().unwrap()), "{monitored}");
    assert!(
        monitored.contains(env.watch.to_str().unwrap()),
        "{monitored}"
    );

    // Someone outside the group reaches nothing.
    for args in [vec!["health"], vec!["query", "_global"], vec!["monitored"]] {
        let out = fsmon_as(&outsider, &[], &env, &args);
        assert!(!out.status.success(), "outsider {args:?} was allowed");
        let err = text(&out.stderr);
        assert!(err.contains("ermission denied"), "{args:?}: {err}");
    }
    // The daemon still serves root.
    assert!(root(&["health"]).status.success());
    assert!(d.stop().success());
}

#[test]
fn xdg_and_home_are_honoured_without_sudo() {
    let env = Env::new();
    let base = env.dir.path();
    // `fsmon init` writes the config where the user's environment says.
    let run = |vars: &[(&str, &Path)], sudo: bool, args: &[&str]| {
        let mut c = Command::new(fsmon_bin());
        c.args(args)
            .env("FSMON_MODE", "user")
            .env_remove("FSMON_CONFIG")
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("XDG_DATA_HOME")
            .env_remove("XDG_STATE_HOME")
            .env_remove("SUDO_UID");
        for (k, v) in vars {
            c.env(k, v);
        }
        if sudo {
            c.env("SUDO_UID", "0");
        }
        c.output().unwrap()
    };
    let home = base.join("home");
    let out = run(&[("HOME", &home)], false, &["init"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(home.join(".config/fsmon/fsmon.toml").is_file());
    let xdg = base.join("xdgconf");
    let out = run(
        &[("HOME", &home), ("XDG_CONFIG_HOME", &xdg)],
        false,
        &["init"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(xdg.join("fsmon/fsmon.toml").is_file());

    // The logs: XDG_STATE_HOME, else $HOME/.local/state (the query's error
    // names the log it looked for).
    let state = base.join("state");
    let out = run(
        &[("HOME", &home), ("XDG_STATE_HOME", &state)],
        false,
        &["query", "nosuchgroup"],
    );
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("{}/fsmon/nosuchgroup_log.jsonl", state.display())),
        "{err}"
    );
    let out = run(&[("HOME", &home)], false, &["query", "nosuchgroup"]);
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}/.local/state/fsmon/nosuchgroup_log.jsonl",
            home.display()
        )),
        "{err}"
    );
    // The store: XDG_DATA_HOME.
    let data = base.join("data");
    fs::create_dir_all(data.join("fsmon")).unwrap();
    fs::write(
        data.join("fsmon/monitored.jsonl"),
        "{\"cmd\":\"_global\",\"paths\":{\"/xdg-data-store\":{\"recursive\":false,\"types\":[\"CREATE\"]}}}\n",
    )
    .unwrap();
    let out = run(
        &[("HOME", &home), ("XDG_DATA_HOME", &data)],
        false,
        &["monitored"],
    );
    assert!(
        text(&out.stdout).contains("/xdg-data-store"),
        "{}",
        text(&out.stderr)
    );
    // Through sudo the environment is not the user's: the password
    // database's home, XDG ignored.
    let out = run(
        &[("HOME", &home), ("XDG_STATE_HOME", &state)],
        true,
        &["query", "nosuchgroup"],
    );
    let err = text(&out.stderr);
    let root_home = nix::unistd::User::from_uid(0.into()).unwrap().unwrap().dir;
    assert!(
        err.contains(&format!(
            "{}/.local/state/fsmon/nosuchgroup_log.jsonl",
            root_home.display()
        )),
        "{err}"
    );
}

#[test]
fn re_adding_a_path_says_what_changed() {
    let env = Env::new();
    let watch = env.watch.to_str().unwrap();
    // Without a daemon.
    env.fsmon_ok(&["add", "nginx", "--path", watch, "--types", "CREATE,MODIFY"]);
    let out = env.fsmon_ok(&["add", "nginx", "--path", watch, "--types", "CREATE"]);
    assert_eq!(
        out.trim(),
        format!(
            "nginx {watch}: types CREATE,MODIFY -> CREATE; recursive unchanged; size unchanged"
        )
    );
    // Through the daemon.
    let d = env.start(&[]);
    let out = env.fsmon_ok(&["add", "nginx", "--path", watch, "--types", "CREATE", "-r"]);
    assert_eq!(
        out.trim(),
        format!("nginx {watch}: types unchanged; recursive false -> true; size unchanged")
    );
    let out = env.fsmon_ok(&["add", "nginx", "--path", watch, "--types", "CREATE", "-r"]);
    assert_eq!(
        out.trim(),
        format!("nginx {watch}: already watched with these settings")
    );
    // A new path says nothing.
    let fresh = env.dir.path().join("fresh");
    fs::create_dir(&fresh).unwrap();
    let out = env.fsmon_ok(&["add", "nginx", "--path", fresh.to_str().unwrap()]);
    assert_eq!(out, "");
    assert!(d.stop().success());
}

#[test]
fn sighup_reloads_the_store() {
    let env = Env::new();
    let d = env.start(&[]);
    // The store changed behind the daemon's back (by hand, or a package).
    fs::create_dir_all(env.store.parent().unwrap()).unwrap();
    fs::write(
        &env.store,
        format!(
            "{{\"cmd\":\"_global\",\"paths\":{{{:?}:{{\"recursive\":true,\"types\":[\"CREATE\"]}}}}}}\n",
            env.watch.to_str().unwrap()
        ),
    )
    .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(d.pid() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    wait_for("the reload", Duration::from_secs(60), || {
        d.stderr().contains("reloaded").then_some(())
    });
    fs::write(env.watch.join("after-reload"), "x").unwrap();
    env.wait_events("_global", "the event after the reload", |evs| {
        evs.iter().any(|e| {
            e["path"]
                .as_str()
                .is_some_and(|p| p.ends_with("after-reload"))
        })
    });
    assert!(d.stop().success());
}

/// Value of the metric line starting with `prefix` (name and labels).
fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn metrics_build_process_and_state_gauges() {
    let env = Env::new();
    let missing = env.dir.path().join("not-yet");
    env.add("_global", &env.watch, &["-r"]);
    env.add("_global", &missing, &[]);
    let d = env.start(&[]);
    fs::write(env.watch.join("f"), "hello").unwrap();
    wait_for("the event logged", Duration::from_secs(60), || {
        (!env.events("_global").is_empty()).then_some(())
    });
    // The gauges are refreshed every 2 s: wait for the log's size. The size
    // is read again on each try: the write's CREATE may be logged before its
    // CLOSE_WRITE, so the log can still grow after the first event is seen.
    let text = wait_for("the log size gauge", Duration::from_secs(60), || {
        let m = request(&env.socket, r#"{"op":"metrics"}"#);
        let text = m["text"].as_str().unwrap().to_string();
        let log_len = fs::metadata(env.log_path("_global")).unwrap().len() as f64;
        (metric(&text, "fsmon_log_size_bytes{group=\"_global\"}") == Some(log_len)).then_some(text)
    });
    let version = env!("CARGO_PKG_VERSION");
    let build = text
        .lines()
        .find(|l| l.starts_with("fsmon_build_info{"))
        .unwrap_or_else(|| panic!("no fsmon_build_info:\n{text}"));
    assert!(build.contains(&format!("version=\"{version}\"")), "{build}");
    assert!(build.ends_with(" 1"), "{build}");
    let commit = build
        .split("commit=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    assert!(
        commit == "unknown" || commit.chars().all(|c| c.is_ascii_hexdigit()),
        "{build}"
    );
    // The process: memory, CPU, descriptors.
    let rss = metric(&text, "process_resident_memory_bytes ").expect("rss");
    assert!(rss > 1e6, "{rss}");
    assert!(
        metric(&text, "process_cpu_seconds_total ").is_some(),
        "{text}"
    );
    let fds = metric(&text, "process_open_fds ").expect("open fds");
    let max = metric(&text, "process_max_fds ").expect("max fds");
    assert!(fds >= 3.0 && max >= fds, "{fds} {max}");
    // State: one pending path, no watch errors.
    assert_eq!(metric(&text, "fsmon_pending_paths "), Some(1.0), "{text}");
    assert_eq!(metric(&text, "fsmon_watch_errors "), Some(0.0), "{text}");
    // The path appears: no longer pending.
    fs::create_dir(&missing).unwrap();
    wait_for("pending 0", Duration::from_secs(60), || {
        let m = request(&env.socket, r#"{"op":"metrics"}"#);
        (metric(m["text"].as_str().unwrap(), "fsmon_pending_paths ") == Some(0.0)).then_some(())
    });
    assert!(d.stop().success());
}
