//! The attack surface of the root daemon: who may reach the socket and the
//! logs, and what happens when symlinks, FIFOs or hard links are planted
//! where the daemon (or the CLI run as root) writes: the socket, its lock,
//! the logs, the store. The targets ("victims") must never be written to,
//! chowned or chmodded.
use std::{
    fs,
    os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use fsmon_tests::{
    Env, NOBODY, TestUser, Victim, find, fsmon_bin, open_env, run_bounded, wait_for,
};
use serde_json::Value;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn lock_path(env: &Env) -> PathBuf {
    PathBuf::from(format!("{}.lock", env.socket.display()))
}

/// Starts a daemon that must refuse to start; returns its `fsmon:` error line.
fn daemon_refuses(env: &Env, sudo_uid: Option<u32>) -> String {
    let mut cmd = Command::new(fsmon_bin());
    cmd.arg("--config")
        .arg(&env.config)
        .arg("daemon")
        .env_remove("SUDO_UID")
        .env("FSMON_LOG", "warn");
    if let Some(uid) = sudo_uid {
        cmd.env("SUDO_UID", uid.to_string());
    }
    let out = run_bounded(&mut cmd, Duration::from_secs(60));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "the daemon started:\n{err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("fsmon:")).collect();
    assert_eq!(lines.len(), 1, "one error line:\n{err}");
    lines[0].to_string()
}

/// `touch PATH`: events for the `touch` command group too.
fn touch(p: &Path) {
    let st = Command::new("touch").arg(p).status().expect("touch");
    assert!(st.success(), "touch {}", p.display());
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

// ---------------------------------------------------------------------------
// 1. Who may connect and read
// ---------------------------------------------------------------------------

#[test]
fn only_the_owner_reaches_the_socket_and_reads_the_logs() {
    let a = TestUser::new("a");
    let b = TestUser::new("b");
    let env = open_env();
    env.add("_global", &env.watch, &["-r"]);
    // sudo fsmon daemon, run by A: root working for A.
    let d = env.start_with_env(&[], &[("SUDO_UID", &a.uid.to_string())]);
    fs::write(env.watch.join("secret-name"), b"x").unwrap();
    env.wait_events("_global", "an event", |e| {
        !find(e, "CREATE", &env.watch.join("secret-name")).is_empty()
    });
    let log = env.log_path("_global");

    // Modes and owners.
    for (what, path, mode) in [
        ("log", log.clone(), 0o600),
        ("socket", env.socket.clone(), 0o600),
        ("lock", lock_path(&env), 0o600),
    ] {
        let m = fs::symlink_metadata(&path).unwrap();
        assert_eq!(m.mode() & 0o777, mode, "{what} mode {:o}", m.mode());
        assert_eq!((m.uid(), m.gid()), (a.uid, a.gid), "{what} owner");
    }
    assert_eq!(
        fs::metadata(&env.logs).unwrap().uid(),
        a.uid,
        "log dir owner"
    );

    // B: no socket, no log.
    let out = b.fsmon(&env, &["health"]);
    assert!(!out.status.success(), "B got health: {:?}", out);
    assert!(
        stderr(&out).contains("permission denied"),
        "{}",
        stderr(&out)
    );
    assert!(out.stdout.is_empty(), "B got output");
    let out = b.run(Path::new("/bin/cat"), &[log.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("Permission denied"),
        "{}",
        stderr(&out)
    );
    let out = b.fsmon(&env, &["query", "_global"]);
    assert!(
        !out.status.success() && out.stdout.is_empty(),
        "B queried the log"
    );
    // Even with the socket's mode opened, the daemon checks who connects.
    fs::set_permissions(&env.socket, fs::Permissions::from_mode(0o666)).unwrap();
    let out = b.fsmon(&env, &["health"]);
    fs::set_permissions(&env.socket, fs::Permissions::from_mode(0o600)).unwrap();
    assert!(!out.status.success(), "B got health through an open socket");
    assert!(
        stderr(&out).contains("only root and the daemon's user"),
        "{}",
        stderr(&out)
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("uptime"));

    // A: both.
    let out = a.fsmon(&env, &["health"]);
    assert!(out.status.success(), "A: {}", stderr(&out));
    let h: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(h["user"], a.name.as_str(), "{h}");
    let out = a.run(Path::new("/bin/cat"), &[log.to_str().unwrap()]);
    assert!(out.status.success(), "A cannot read: {}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("secret-name"));
    let out = a.fsmon(&env, &["query", "_global"]);
    assert!(out.status.success(), "A query: {}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("secret-name"));
    assert!(d.stop().success());
}

// ---------------------------------------------------------------------------
// 2a. The socket path
// ---------------------------------------------------------------------------

#[test]
fn anything_planted_at_the_socket_path_is_refused_at_start() {
    for kind in ["symlink", "dangling symlink", "fifo", "file"] {
        let env = open_env();
        let victim = Victim::new(env.dir.path(), NOBODY);
        let would_be = env.dir.path().join("created-through-link");
        match kind {
            "symlink" => std::os::unix::fs::symlink(&victim.path, &env.socket).unwrap(),
            "dangling symlink" => std::os::unix::fs::symlink(&would_be, &env.socket).unwrap(),
            "fifo" => {
                nix::unistd::mkfifo(&env.socket, nix::sys::stat::Mode::from_bits_truncate(0o666))
                    .unwrap()
            }
            _ => {
                fs::write(&env.socket, "someone's file").unwrap();
                nix::unistd::chown(&env.socket, Some(nix::unistd::Uid::from_raw(NOBODY)), None)
                    .unwrap();
            }
        }
        let planted = fs::symlink_metadata(&env.socket).unwrap();
        env.add("_global", &env.watch, &["-r"]);
        let err = daemon_refuses(&env, None);
        assert!(
            err.contains(env.socket.to_str().unwrap()) && err.contains("refusing"),
            "{kind}: {err}"
        );
        victim.assert_untouched(kind);
        assert!(!would_be.exists(), "{kind}: created through the link");
        // What was planted is left as it was: the daemon did not bind it.
        let now = fs::symlink_metadata(&env.socket).expect("planted file removed");
        assert_eq!(
            (now.ino(), now.uid(), now.mode()),
            (planted.ino(), planted.uid(), planted.mode()),
            "{kind}: planted file changed"
        );
    }
}

// ---------------------------------------------------------------------------
// 2b. Logs, clean, and the lock
// ---------------------------------------------------------------------------

#[test]
fn symlink_at_a_log_path_is_refused_by_the_daemon_and_by_clean() {
    let env = open_env();
    fs::create_dir_all(&env.logs).unwrap();
    let victim = Victim::new(env.dir.path(), NOBODY);
    // A log that looks like a log: clean would have something to trim.
    std::os::unix::fs::symlink(&victim.path, env.log_path("_global")).unwrap();
    env.add("_global", &env.watch, &["-r"]);
    env.add("touch", &env.watch, &["-r"]);
    let d = env.start(&[]);
    let refusals = |d: &fsmon_tests::Daemon| d.stderr().matches("symbolic link").count();
    // The other group's log works; the planted one is refused and reported.
    touch(&env.watch.join("first"));
    env.wait_events("touch", "the other group's event", |e| {
        !find(e, "CREATE", &env.watch.join("first")).is_empty()
    });
    wait_for("the refusal", Duration::from_secs(10), || {
        (refusals(&d) > 0).then_some(())
    });
    victim.assert_untouched("daemon");
    // The daemon retries broken logs (every second): refused each time.
    let before = refusals(&d);
    let mut i = 0;
    wait_for("a retry", Duration::from_secs(30), || {
        touch(&env.watch.join(format!("retry-{i}")));
        i += 1;
        (refusals(&d) > before).then_some(())
    });
    victim.assert_untouched("retries");
    assert!(env.fsmon(&["health"]).status.success(), "daemon serving");
    // clean and query, with the daemon running and without it: refused,
    // victim kept.
    let mut d = Some(d);
    for run in ["with a daemon", "without a daemon"] {
        if run == "without a daemon" {
            assert!(d.take().unwrap().stop().success());
        }
        for args in [
            &["clean", "_global", "--size", ">=1B"][..],
            &["clean", "_global", "--time", ">1s"],
            &["query", "_global"],
        ] {
            let out = run_bounded(
                Command::new(fsmon_bin())
                    .arg("--config")
                    .arg(&env.config)
                    .args(args),
                Duration::from_secs(30),
            );
            assert!(!out.status.success(), "{run}: {args:?} accepted a symlink");
            assert!(
                stderr(&out).contains("symbolic link"),
                "{run}: {}",
                stderr(&out)
            );
            victim.assert_untouched(&format!("{run}: {args:?}"));
        }
    }
    assert!(
        fs::symlink_metadata(env.log_path("_global"))
            .unwrap()
            .file_type()
            .is_symlink(),
        "the planted link is left alone"
    );
}

#[test]
fn symlink_or_fifo_at_the_lock_file_is_refused() {
    for kind in ["symlink", "fifo"] {
        let env = open_env();
        let victim = Victim::new(env.dir.path(), NOBODY);
        match kind {
            "symlink" => std::os::unix::fs::symlink(&victim.path, lock_path(&env)).unwrap(),
            _ => nix::unistd::mkfifo(
                &lock_path(&env),
                nix::sys::stat::Mode::from_bits_truncate(0o666),
            )
            .unwrap(),
        }
        let err = daemon_refuses(&env, None);
        assert!(err.contains(".lock"), "{kind}: {err}");
        assert!(
            err.contains("symbolic link") || err.contains("not a regular file"),
            "{kind}: {err}"
        );
        victim.assert_untouched(kind);
        assert!(!env.socket.exists(), "{kind}: no socket");
    }
}

#[test]
fn fifo_at_a_log_path_does_not_hang_the_daemon() {
    let env = open_env();
    fs::create_dir_all(&env.logs).unwrap();
    let fifo = env.log_path("_global");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o666)).unwrap();
    env.add("_global", &env.watch, &["-r"]);
    env.add("touch", &env.watch, &["-r"]);
    let d = env.start(&[]);
    for i in 0..3 {
        touch(&env.watch.join(format!("no-reader-{i}")));
    }
    env.wait_events("touch", "events of the other group", |e| {
        !find(e, "CREATE", &env.watch.join("no-reader-2")).is_empty()
    });
    wait_for("the refusal", Duration::from_secs(10), || {
        d.stderr().contains("not a regular file").then_some(())
    });
    // With a reader holding the FIFO open, the open would succeed: still
    // refused, nothing written into it.
    let mut reader = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    // A retry of the broken log (every second) happens while it is open.
    let refusals = || d.stderr().matches("not a regular file").count();
    let before = refusals();
    let mut i = 0;
    wait_for(
        "a retry while a reader holds the FIFO",
        Duration::from_secs(30),
        || {
            touch(&env.watch.join(format!("with-reader-{i}")));
            i += 1;
            (refusals() > before).then_some(())
        },
    );
    env.wait_events("touch", "events while a reader holds the FIFO", |e| {
        !find(
            e,
            "CREATE",
            &env.watch.join(format!("with-reader-{}", i - 1)),
        )
        .is_empty()
    });
    let mut got = Vec::new();
    let _ = std::io::Read::read_to_end(&mut reader, &mut got);
    assert!(got.is_empty(), "events written into the FIFO: {got:?}");
    assert!(env.fsmon(&["health"]).status.success());
    // The CLI does not hang on it either.
    for args in [
        &["query", "_global"][..],
        &["clean", "_global", "--size", ">=1B"],
    ] {
        let out = run_bounded(
            Command::new(fsmon_bin())
                .arg("--config")
                .arg(&env.config)
                .args(args),
            Duration::from_secs(30),
        );
        assert!(!out.status.success(), "{args:?} on a FIFO");
    }
    assert!(d.stop().success(), "clean stop");
}

// ---------------------------------------------------------------------------
// 2c. The store
// ---------------------------------------------------------------------------

#[test]
fn symlink_at_the_store_is_never_followed() {
    let a = TestUser::new("s");
    let env = open_env();
    let victim = Victim::new(env.dir.path(), NOBODY);
    let store_dir = env.store.parent().unwrap().to_path_buf();
    fs::create_dir_all(&store_dir).unwrap();
    let watch = env.watch.to_str().unwrap();
    let sudo_uid = a.uid.to_string();
    let fsmon_as_root_for_a = |args: &[&str]| -> Output {
        run_bounded(
            Command::new(fsmon_bin())
                .arg("--config")
                .arg(&env.config)
                .args(args)
                .env("SUDO_UID", &sudo_uid),
            Duration::from_secs(30),
        )
    };

    // `sudo fsmon add` with no daemon: the store is a symlink.
    std::os::unix::fs::symlink(&victim.path, &env.store).unwrap();
    let out = fsmon_as_root_for_a(&["add", "_global", "--path", watch, "-r"]);
    assert!(!out.status.success(), "add through a symlinked store");
    assert!(stderr(&out).contains("symbolic link"), "{}", stderr(&out));
    victim.assert_untouched("sudo fsmon add");
    // Its lock file, too.
    fs::remove_file(&env.store).unwrap();
    let store_lock = store_dir.join(".monitored.jsonl.lock");
    let _ = fs::remove_file(&store_lock);
    std::os::unix::fs::symlink(&victim.path, &store_lock).unwrap();
    let out = fsmon_as_root_for_a(&["add", "_global", "--path", watch, "-r"]);
    assert!(!out.status.success(), "add through a symlinked store lock");
    victim.assert_untouched("sudo fsmon add, lock");
    fs::remove_file(&store_lock).unwrap();

    // The daemon, started with the store a symlink: refuses to start.
    std::os::unix::fs::symlink(&victim.path, &env.store).unwrap();
    let err = daemon_refuses(&env, Some(a.uid));
    assert!(err.contains("symbolic link"), "{err}");
    victim.assert_untouched("daemon start");
    fs::remove_file(&env.store).unwrap();

    // A running daemon, then an `add` over the socket after the store
    // became a symlink: refused, daemon fine.
    let d = env.start_with_env(&[], &[("SUDO_UID", &sudo_uid)]);
    std::os::unix::fs::symlink(&victim.path, &env.store).unwrap();
    let out = fsmon_as_root_for_a(&["add", "_global", "--path", watch, "-r"]);
    assert!(
        !out.status.success(),
        "daemon added through a symlinked store"
    );
    assert!(stderr(&out).contains("symbolic link"), "{}", stderr(&out));
    victim.assert_untouched("add over the socket");
    assert!(fsmon_as_root_for_a(&["health"]).status.success());
    fs::remove_file(&env.store).unwrap();
    // The daemon's temp file name is predictable (pid): a link planted
    // there is replaced, never followed.
    let tmp = store_dir.join(format!(".monitored.jsonl.tmp.{}", d.pid()));
    std::os::unix::fs::symlink(&victim.path, &tmp).unwrap();
    let out = fsmon_as_root_for_a(&["add", "_global", "--path", watch, "-r"]);
    assert!(out.status.success(), "add: {}", stderr(&out));
    victim.assert_untouched("temp file link");
    let m = fs::symlink_metadata(&env.store).unwrap();
    assert!(m.is_file(), "store is a regular file");
    assert_eq!(m.uid(), a.uid, "store owned by A");
    assert!(fs::read_to_string(&env.store).unwrap().contains(watch));
    assert!(d.stop().success());
    victim.assert_untouched("end");
}

// ---------------------------------------------------------------------------
// Hard links (where fs.protected_hardlinks is off, anyone can make them)
// ---------------------------------------------------------------------------

#[test]
fn hard_link_to_a_root_file_at_a_log_or_lock_path_is_refused() {
    let a = TestUser::new("h");
    // The log: a root-owned file linked in; the daemon works for A.
    let env = open_env();
    fs::create_dir_all(&env.logs).unwrap();
    let victim = Victim::new(env.dir.path(), 0);
    let link = env.log_path("_global");
    fs::hard_link(&victim.path, &link).unwrap();
    env.add("_global", &env.watch, &["-r"]);
    env.add("touch", &env.watch, &["-r"]);
    let d = env.start_with_env(&[], &[("SUDO_UID", &a.uid.to_string())]);
    // The two groups' events are written in the same batches: once the
    // other log has them, the daemon has tried the linked one.
    touch(&env.watch.join("f"));
    env.wait_events("touch", "the other group's events", |e| !e.is_empty());
    assert_eq!(
        fs::metadata(env.log_path("touch")).unwrap().uid(),
        a.uid,
        "the other log is A's"
    );
    let check = |when: &str| {
        let m = fs::metadata(&victim.path).unwrap();
        assert_eq!(
            fs::read_to_string(&victim.path).unwrap(),
            victim.content,
            "{when}"
        );
        assert_eq!((m.uid(), m.gid()), (0, 0), "{when}: chowned to A");
        assert_eq!(m.mode() & 0o7777, 0o644, "{when}");
    };
    check("log");
    assert!(d.stderr().contains("hard links"), "{}", d.stderr());
    assert!(d.stop().success());
    fs::remove_file(&link).unwrap();

    // The daemon's lock.
    let env = open_env();
    let victim = Victim::new(env.dir.path(), 0);
    fs::hard_link(&victim.path, lock_path(&env)).unwrap();
    let err = daemon_refuses(&env, Some(a.uid));
    assert!(err.contains("hard links"), "{err}");
    let m = fs::metadata(&victim.path).unwrap();
    assert_eq!((m.uid(), m.gid()), (0, 0), "lock: chowned to A");
    assert_eq!(fs::read_to_string(&victim.path).unwrap(), victim.content);
}

#[test]
fn planted_files_are_not_written_through_a_symlinked_log_directory() {
    // The log directory itself a symlink to a directory holding a file
    // named like a log: refused before anything is opened in it.
    let env = open_env();
    let elsewhere = env.dir.path().join("elsewhere");
    fs::create_dir_all(&elsewhere).unwrap();
    let victim_path = elsewhere.join("_global_log.jsonl");
    fs::write(&victim_path, "not a log\n").unwrap();
    std::os::unix::fs::symlink(&elsewhere, &env.logs).unwrap();
    env.add("_global", &env.watch, &["-r"]);
    let err = daemon_refuses(&env, None);
    assert!(err.contains("symbolic link"), "{err}");
    assert_eq!(fs::read_to_string(&victim_path).unwrap(), "not a log\n");
    assert_eq!(fs::metadata(&victim_path).unwrap().uid(), 0);
}
