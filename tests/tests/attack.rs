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

/// `touch PATH`: events for the `touch` command group too.
fn touch(p: &Path) {
    let st = Command::new("touch").arg(p).status().expect("touch");
    assert!(st.success(), "touch {}", p.display());
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// An env in a directory `user` owns: a daemon working for `user` touches
/// the user's files with the user's credentials, so its store and logs must
/// be somewhere the user may write (the test users have no home).
fn env_owned_by(user: &TestUser) -> Env {
    let env = open_env();
    chown(env.dir.path(), user.uid, user.gid);
    env
}

fn chown(path: &Path, uid: u32, gid: u32) {
    nix::unistd::fchownat(
        nix::fcntl::AT_FDCWD,
        path,
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

/// `sudo fsmon ARGS` run by `uid`: root working for that user.
fn fsmon_for(env: &Env, uid: u32, args: &[&str]) -> Output {
    run_bounded(
        Command::new(fsmon_bin())
            .arg("--config")
            .arg(&env.config)
            .args(args)
            .env("SUDO_UID", uid.to_string()),
        Duration::from_secs(60),
    )
}

/// `sudo fsmon add GROUP --path PATH -r` for `user`, which must succeed.
fn add_for(env: &Env, user: &TestUser, group: &str, path: &Path) {
    let out = fsmon_for(
        env,
        user.uid,
        &["add", group, "--path", path.to_str().unwrap(), "-r"],
    );
    assert!(
        out.status.success(),
        "add for {}: {}",
        user.name,
        stderr(&out)
    );
}

// ---------------------------------------------------------------------------
// 1. Who may connect and read
// ---------------------------------------------------------------------------

#[test]
fn only_the_owner_reaches_the_socket_and_reads_the_logs() {
    let a = TestUser::new("a");
    let b = TestUser::new("b");
    let env = env_owned_by(&a);
    add_for(&env, &a, "_global", &env.watch);
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
        let err = env.daemon_refuses(None);
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
        let err = env.daemon_refuses(None);
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
    let env = env_owned_by(&a);
    let victim = Victim::new(env.dir.path(), NOBODY);
    let store_dir = env.store.parent().unwrap().to_path_buf();
    fs::create_dir_all(&store_dir).unwrap();
    chown(&store_dir, a.uid, a.gid);
    let watch = env.watch.to_str().unwrap();
    let sudo_uid = a.uid.to_string();
    let fsmon_as_root_for_a = |args: &[&str]| -> Output { env.fsmon_for(a.uid, args) };

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
    let err = env.daemon_refuses(Some(a.uid));
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
    let env = env_owned_by(&a);
    fs::create_dir_all(&env.logs).unwrap();
    chown(&env.logs, a.uid, a.gid);
    let victim = Victim::new(env.dir.path(), 0);
    let link = env.log_path("_global");
    fs::hard_link(&victim.path, &link).unwrap();
    add_for(&env, &a, "_global", &env.watch);
    add_for(&env, &a, "touch", &env.watch);
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
    // Opened with A's credentials: root's file is not A's to write.
    let refused = |d: &fsmon_tests::Daemon| {
        let e = d.stderr();
        e.contains(link.to_str().unwrap())
            && (e.contains("Permission denied") || e.contains("hard links"))
    };
    wait_for("the refusal", Duration::from_secs(30), || {
        refused(&d).then_some(())
    });
    assert!(d.stop().success());
    fs::remove_file(&link).unwrap();

    // The daemon's lock (beside a socket in A's own directory: a root-owned
    // one is refused before the lock is looked at).
    let env = env_owned_by(&a);
    let victim = Victim::new(env.dir.path(), 0);
    fs::hard_link(&victim.path, lock_path(&env)).unwrap();
    let err = env.daemon_refuses(Some(a.uid));
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
    let err = env.daemon_refuses(None);
    assert!(err.contains("symbolic link"), "{err}");
    assert_eq!(fs::read_to_string(&victim_path).unwrap(), "not a log\n");
    assert_eq!(fs::metadata(&victim_path).unwrap().uid(), 0);
}

// ---------------------------------------------------------------------------
// The user's credentials for the user's files (issue 11)
// ---------------------------------------------------------------------------

/// A root-owned file with known content, mode and times, in a root-owned
/// directory; must never change.
struct RootFile {
    path: PathBuf,
    content: Vec<u8>,
    mode: u32,
    mtime: (i64, i64),
}

impl RootFile {
    fn new(dir: &Path, name: &str, mode: u32, content: &[u8]) -> RootFile {
        let path = dir.join(name);
        fs::write(&path, content).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        let m = fs::metadata(&path).unwrap();
        RootFile {
            path,
            content: content.to_vec(),
            mode,
            mtime: (m.mtime(), m.mtime_nsec()),
        }
    }

    #[track_caller]
    fn assert_untouched(&self, when: &str) {
        let m = fs::symlink_metadata(&self.path).unwrap();
        assert!(m.is_file(), "{when}: replaced");
        assert_eq!(
            fs::read(&self.path).unwrap(),
            self.content,
            "{when}: written"
        );
        assert_eq!((m.uid(), m.gid()), (0, 0), "{when}: chowned");
        assert_eq!(m.mode() & 0o7777, self.mode, "{when}: chmodded");
        assert_eq!((m.mtime(), m.mtime_nsec()), self.mtime, "{when}: modified");
    }
}

/// The env's config with the store and the log directory elsewhere.
fn write_paths(env: &Env, store: &Path, logs: &Path) {
    fs::write(
        &env.config,
        format!(
            "[monitored]\npath = {store:?}\n[logging]\npath = {logs:?}\n[socket]\npath = {:?}\n",
            env.socket
        ),
    )
    .unwrap();
}

/// A root-owned 0755 directory inside `env`.
fn root_dir(env: &Env, name: &str) -> PathBuf {
    let d = env.dir.path().join(name);
    fs::create_dir(&d).unwrap();
    fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
    d
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// The single `fsmon:` line of a failed command, which must name `path`.
#[track_caller]
fn one_error_naming(out: &Output, path: &Path, what: &str) -> String {
    assert!(!out.status.success(), "{what}: succeeded");
    let err = stderr(out);
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("fsmon:")).collect();
    assert_eq!(lines.len(), 1, "{what}: one error line:\n{err}");
    assert!(
        lines[0].contains(path.to_str().unwrap()),
        "{what}: the line names {}: {}",
        path.display(),
        lines[0]
    );
    lines[0].to_string()
}

#[test]
fn store_and_log_paths_at_root_files_are_refused() {
    let a = TestUser::new("r");
    for mode in [0o600, 0o644] {
        let env = env_owned_by(&a);
        let rootdir = root_dir(&env, "rootdir");
        let store = RootFile::new(
            &rootdir,
            "monitored.jsonl",
            mode,
            b"root:x:0:0::/root:/bin/sh\n",
        );
        let log = RootFile::new(
            &rootdir,
            "_global_log.jsonl",
            mode,
            b"{\"not\":\"a log\"}\n",
        );
        let before = names_in(&rootdir);
        let watch = env.watch.to_str().unwrap().to_string();

        // [monitored] path at root's file: `sudo fsmon add` and the daemon.
        write_paths(&env, &store.path, &env.logs);
        let out = fsmon_for(&env, a.uid, &["add", "_global", "--path", &watch, "-r"]);
        one_error_naming(&out, &rootdir, &format!("{mode:o}: sudo fsmon add"));
        store.assert_untouched("sudo fsmon add");
        let out = fsmon_for(&env, a.uid, &["remove", "_global"]);
        one_error_naming(&out, &rootdir, &format!("{mode:o}: sudo fsmon remove"));
        let err = env.daemon_refuses(Some(a.uid));
        assert!(
            err.contains(store.path.to_str().unwrap()),
            "{mode:o}: {err}"
        );
        store.assert_untouched("daemon start");
        assert_eq!(
            names_in(&rootdir),
            before,
            "{mode:o}: nothing created there"
        );

        // [logging] path: the daemon starts, but never writes root's log.
        write_paths(&env, &env.store, &rootdir);
        add_for(&env, &a, "_global", &env.watch);
        add_for(&env, &a, "touch", &env.watch);
        let d = env.start_with_env(&[], &[("SUDO_UID", &a.uid.to_string())]);
        touch(&env.watch.join("f"));
        wait_for("the refusal of root's log", Duration::from_secs(30), || {
            let e = d.stderr();
            (e.contains(log.path.to_str().unwrap()) && e.contains("Permission denied"))
                .then_some(())
        });
        log.assert_untouched("daemon");
        // `clean` (handing over to the daemon, and on its own), `query`.
        for args in [
            &["clean", "_global", "--size", ">=1B"][..],
            &["query", "_global"],
        ] {
            let out = fsmon_for(&env, a.uid, args);
            if mode == 0o600 || args[0] == "clean" {
                one_error_naming(&out, &rootdir, &format!("{mode:o}: {args:?}"));
            }
            log.assert_untouched(&format!("{args:?} with a daemon"));
        }
        assert!(d.stop().success());
        let out = fsmon_for(&env, a.uid, &["clean", "_global", "--size", ">=1B"]);
        one_error_naming(&out, &rootdir, &format!("{mode:o}: clean without a daemon"));
        log.assert_untouched("clean without a daemon");
        store.assert_untouched("end");
        assert_eq!(
            names_in(&rootdir),
            before,
            "{mode:o}: nothing created there"
        );
    }
}

#[test]
fn a_symlinked_dot_local_to_a_root_directory_gets_nothing_created_in_it() {
    let a = TestUser::new("l");
    let env = env_owned_by(&a);
    let rootdir = root_dir(&env, "rootdir");
    let home = env.dir.path().join("home");
    fs::create_dir(&home).unwrap();
    chown(&home, a.uid, a.gid);
    let local = home.join(".local");
    std::os::unix::fs::symlink(&rootdir, &local).unwrap();
    chown(&local, a.uid, a.gid);
    write_paths(
        &env,
        &local.join("share/fsmon/monitored.jsonl"),
        &local.join("state/fsmon"),
    );
    let watch = env.watch.to_str().unwrap();
    let out = fsmon_for(&env, a.uid, &["add", "_global", "--path", watch, "-r"]);
    one_error_naming(&out, &local.join("share/fsmon"), "sudo fsmon add");
    let err = env.daemon_refuses(Some(a.uid));
    assert!(err.contains(local.to_str().unwrap()), "{err}");
    assert!(err.contains("Permission denied"), "{err}");
    assert_eq!(
        names_in(&rootdir),
        Vec::<String>::new(),
        "created in root's dir"
    );
    // The same link made by A to a directory A owns is A's business: works.
    let own = home.join("own-local");
    fs::create_dir(&own).unwrap();
    chown(&own, a.uid, a.gid);
    fs::remove_file(&local).unwrap();
    std::os::unix::fs::symlink(&own, &local).unwrap();
    chown(&local, a.uid, a.gid);
    let out = fsmon_for(&env, a.uid, &["add", "_global", "--path", watch, "-r"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let store = own.join("share/fsmon/monitored.jsonl");
    assert_eq!(fs::metadata(&store).unwrap().uid(), a.uid, "A's store");
    assert_eq!(fs::metadata(own.join("share")).unwrap().uid(), a.uid);
}

#[test]
fn a_config_symlinked_to_a_root_only_secret_is_refused_without_showing_it() {
    let a = TestUser::new("c");
    let env = env_owned_by(&a);
    let secret_dir = env.dir.path().join("etc");
    fs::create_dir(&secret_dir).unwrap();
    fs::set_permissions(&secret_dir, fs::Permissions::from_mode(0o700)).unwrap();
    let secret = "FAKESECRET0hash";
    let shadow = RootFile::new(
        &secret_dir,
        "shadow",
        0o600,
        format!("root:$6${secret}:19000:0:99999:7:::\npassword = \"{secret}\"\n").as_bytes(),
    );
    let config = env.dir.path().join("linked.toml");
    std::os::unix::fs::symlink(&shadow.path, &config).unwrap();
    chown(&config, a.uid, a.gid);
    let cfg = config.to_str().unwrap();
    let watch = env.watch.to_str().unwrap();
    let commands: [&[&str]; 4] = [
        &["monitored"],
        &["add", "_global", "--path", watch],
        &["health"],
        &["query", "_global"],
    ];
    let no_secret = |out: &Output, what: &str| {
        for text in [&out.stdout, &out.stderr] {
            assert!(
                !String::from_utf8_lossy(text).contains(secret),
                "{what}: the secret leaked: {}",
                String::from_utf8_lossy(text)
            );
        }
    };
    for args in commands {
        // A itself, and root working for A (sudo).
        let mut all = vec!["--config", cfg];
        all.extend_from_slice(args);
        let out = a.run(&fsmon_bin(), &all);
        no_secret(&out, &format!("A: {args:?}"));
        let line = one_error_naming(&out, &config, &format!("A: {args:?}"));
        assert!(line.contains("Permission denied"), "{line}");
        let out = run_bounded(
            Command::new(fsmon_bin())
                .args(&all)
                .env("SUDO_UID", a.uid.to_string()),
            Duration::from_secs(60),
        );
        no_secret(&out, &format!("sudo: {args:?}"));
        let line = one_error_naming(&out, &config, &format!("sudo: {args:?}"));
        assert!(line.contains("Permission denied"), "{line}");
    }
    // The daemon for A.
    let out = run_bounded(
        Command::new(fsmon_bin())
            .args(["--config", cfg, "daemon"])
            .env("SUDO_UID", a.uid.to_string())
            .env("FSMON_LOG", "debug"),
        Duration::from_secs(60),
    );
    no_secret(&out, "daemon for A");
    one_error_naming(&out, &config, "daemon for A");
    // Root's own daemon may read it, and still does not print it: the
    // syntax error names the file and the line only.
    let out = run_bounded(
        Command::new(fsmon_bin())
            .args(["--config", cfg, "daemon"])
            .env_remove("SUDO_UID")
            .env("FSMON_LOG", "debug"),
        Duration::from_secs(60),
    );
    no_secret(&out, "root's daemon");
    let line = one_error_naming(&out, &config, "root's daemon");
    assert!(line.contains("line 1"), "{line}");
    shadow.assert_untouched("end");
}

#[test]
fn add_of_a_directory_the_user_cannot_read_is_one_line_and_not_watched() {
    let a = TestUser::new("d");
    let env = env_owned_by(&a);
    let hidden = env.dir.path().join("root-only");
    fs::create_dir(&hidden).unwrap();
    fs::set_permissions(&hidden, fs::Permissions::from_mode(0o700)).unwrap();
    let hidden_file = RootFile::new(&hidden, "file", 0o644, b"x");
    let h = hidden.to_str().unwrap();
    let pending = hidden.join("later");
    let p = pending.to_str().unwrap();
    // Without a daemon: `sudo fsmon add` and A's own `fsmon add`.
    for path in [h, p, hidden_file.path.to_str().unwrap()] {
        let out = fsmon_for(&env, a.uid, &["add", "_global", "--path", path, "-r"]);
        one_error_naming(&out, &hidden, &format!("sudo add {path}"));
        let out = a.fsmon(&env, &["add", "_global", "--path", path, "-r"]);
        one_error_naming(&out, &hidden, &format!("A: add {path}"));
    }
    assert!(!env.store.exists(), "nothing stored");
    // With A's daemon: the daemon checks too (root's CLI, which could read
    // the directory itself, is not enough).
    add_for(&env, &a, "_global", &env.watch);
    let d = env.start_with_env(&[], &[("SUDO_UID", &a.uid.to_string())]);
    for path in [h, p] {
        let out = run_bounded(
            Command::new(fsmon_bin())
                .arg("--config")
                .arg(&env.config)
                .args(["add", "_global", "--path", path, "-r"])
                .env_remove("SUDO_UID"),
            Duration::from_secs(60),
        );
        let line = one_error_naming(&out, &hidden, &format!("root's CLI, A's daemon: {path}"));
        assert!(line.contains("Permission denied"), "{line}");
        let out = a.fsmon(&env, &["add", "_global", "--path", path, "-r"]);
        one_error_naming(&out, &hidden, &format!("A with a daemon: {path}"));
    }
    let monitored = String::from_utf8(fsmon_for(&env, a.uid, &["monitored"]).stdout).unwrap();
    assert!(!monitored.contains(h), "{monitored}");
    let health = String::from_utf8(fsmon_for(&env, a.uid, &["health"]).stdout).unwrap();
    assert!(!health.contains(h), "{health}");
    // Activity in it is not logged; activity in the watched tree is.
    fs::write(hidden.join("new-secret-file"), b"y").unwrap();
    touch(&env.watch.join("visible"));
    let evs = env.wait_events("_global", "the visible event", |e| {
        !find(e, "CREATE", &env.watch.join("visible")).is_empty()
    });
    assert!(
        !evs.iter()
            .any(|e| e["path"].as_str().is_some_and(|p| p.starts_with(h))),
        "root-only names logged"
    );
    assert!(d.stop().success());
}

#[test]
fn an_unparsable_store_line_survives_add_and_remove_and_is_shown() {
    let a = TestUser::new("u");
    let env = env_owned_by(&a);
    let store_dir = env.store.parent().unwrap();
    fs::create_dir_all(store_dir).unwrap();
    chown(store_dir, a.uid, a.gid);
    let watch = env.watch.to_str().unwrap();
    let broken = r#"{"cmd":"sshd","paths":{"/etc/ssh":{"recursive":true,"types":["MODIFIED"]}}}"#;
    let bad_bytes = b"\xff\xfe not utf-8 {";
    let mut content = format!("{broken}\n").into_bytes();
    content.extend_from_slice(bad_bytes);
    content.push(b'\n');
    fs::write(&env.store, &content).unwrap();
    chown(&env.store, a.uid, a.gid);
    let kept = |when: &str| {
        let now = fs::read(&env.store).unwrap();
        for line in [broken.as_bytes(), &bad_bytes[..]] {
            assert!(
                now.windows(line.len()).any(|w| w == line),
                "{when}: a line was dropped:\n{}",
                String::from_utf8_lossy(&now)
            );
        }
    };
    let warns = |out: &Output, when: &str| {
        let err = stderr(out);
        for n in ["line 1", "line 2"] {
            assert!(
                err.lines()
                    .any(|l| l.contains(env.store.to_str().unwrap()) && l.contains(n)),
                "{when}: no warning for {n}:\n{err}"
            );
        }
        assert!(
            !err.contains("MODIFIED\"") && !err.contains("not utf-8"),
            "{when}: content quoted: {err}"
        );
    };
    // No daemon: add, remove, monitored.
    let out = fsmon_for(&env, a.uid, &["add", "_global", "--path", watch, "-r"]);
    assert!(out.status.success(), "{}", stderr(&out));
    warns(&out, "add");
    kept("add without a daemon");
    let out = fsmon_for(&env, a.uid, &["monitored"]);
    assert!(out.status.success());
    warns(&out, "monitored");
    assert!(String::from_utf8_lossy(&out.stdout).contains(watch));
    // A's daemon: add and remove through it; health shows the lines.
    let d = env.start_with_env(&[], &[("SUDO_UID", &a.uid.to_string())]);
    assert!(
        d.stderr().contains("line 1"),
        "daemon warned: {}",
        d.stderr()
    );
    let other = env.dir.path().join("other");
    fs::create_dir(&other).unwrap();
    add_for(&env, &a, "nginx", &other);
    kept("add through the daemon");
    let out = fsmon_for(&env, a.uid, &["remove", "nginx"]);
    assert!(out.status.success(), "{}", stderr(&out));
    kept("remove through the daemon");
    let out = fsmon_for(&env, a.uid, &["health"]);
    let h: Value = serde_json::from_slice(&out.stdout).unwrap();
    let lines: Vec<u64> = h["store_unparsed"]
        .as_array()
        .unwrap_or_else(|| panic!("{h}"))
        .iter()
        .map(|u| u["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{h}");
    assert!(d.stop().success());
    kept("end");
}

#[test]
fn clean_prints_exactly_what_it_removed_including_a_partial_last_line() {
    // Root's own logs, and A's through `sudo fsmon clean` (with A's daemon
    // finishing the trim, and without a daemon).
    let a = TestUser::new("k");
    for user in [None, Some(&a)] {
        let env = match user {
            Some(u) => env_owned_by(u),
            None => Env::new(),
        };
        fs::create_dir_all(&env.logs).unwrap();
        if let Some(u) = user {
            chown(&env.logs, u.uid, u.gid);
        }
        let uid = user.map_or(0, |u| u.uid);
        let line = |i: u32| {
            format!(
                "{{\"time\":\"2020-01-01T00:00:{i:02}Z\",\"event_type\":\"CREATE\",\"path\":\"/x/{i}\",\"pid\":1,\"cmd\":\"c\",\"user\":\"root\",\"file_size\":0,\"ppid\":0,\"tgid\":1}}\n"
            )
        };
        let fragment = "{\"time\":\"2020-01-01T00:01:00Z\",\"event_ty";
        for daemon in [false, true] {
            let what = format!("uid {uid}, daemon {daemon}");
            let log = env.log_path("g");
            let lines: Vec<String> = (0..10).map(line).collect();
            let _ = fs::remove_file(&log);
            fs::write(&log, format!("{}{fragment}", lines.concat())).unwrap();
            fs::set_permissions(&log, fs::Permissions::from_mode(0o600)).unwrap();
            chown(&log, uid, user.map_or(0, |u| u.gid));
            // Keep the last 3 whole lines (the size counts the fragment).
            let keep: usize = lines[7..].iter().map(String::len).sum();
            let removed: usize = lines[..7].iter().map(String::len).sum();
            let d = daemon.then(|| env.start_with_env(&[], &[("SUDO_UID", &uid.to_string())]));
            let limit = format!(">={}B", keep + fragment.len());
            // (The lines are old: a time filter that keeps them all.)
            let keep_all = ">=2019-01-01";
            let run = |args: &[&str]| {
                let out = fsmon_for(&env, uid, args);
                assert!(out.status.success(), "{what}: {args:?}: {}", stderr(&out));
                String::from_utf8(out.stdout).unwrap()
            };
            let dry = run(&[
                "clean",
                "g",
                "--time",
                keep_all,
                "--size",
                &limit,
                "--dry-run",
            ]);
            assert!(
                dry.contains(&format!("unfinished last line of {} bytes", fragment.len())),
                "{what}: {dry}"
            );
            let out = run(&["clean", "g", "--time", keep_all, "--size", &limit]);
            for expected in [
                format!("removed 7 lines ({removed} bytes)"),
                format!("unfinished last line of {} bytes", fragment.len()),
                format!("now holds {keep} bytes"),
            ] {
                assert!(out.contains(&expected), "{what}: {out}");
            }
            assert_eq!(fs::read_to_string(&log).unwrap(), lines[7..].concat());
            let m = fs::metadata(&log).unwrap();
            assert_eq!((m.uid(), m.mode() & 0o777), (uid, 0o600), "{what}");
            assert_eq!(
                names_in(&env.logs),
                ["g_log.jsonl"],
                "{what}: temp files left"
            );
            if let Some(d) = d {
                assert!(d.stop().success());
            }
        }
    }
}
