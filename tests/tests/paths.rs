//! Every event, whatever its path: names that are not UTF-8 (logged
//! losslessly and unambiguously, and accepted back by `query`, `changes` and
//! `add`), directories deeper than PATH_MAX (across a restart and an
//! overflow), and directories the daemon's non-root user may not see into.
//! The real daemon, the real kernel, real users.
use std::{
    collections::HashSet,
    ffi::{CString, OsStr},
    fs,
    io::Write,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::{ffi::OsStrExt, fs::PermissionsExt},
    },
    path::{Path, PathBuf},
    time::Duration,
};

use fsmon_tests::{Env, LoopFs, Mount, TestUser, open_env, wait_for, wait_stopped};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde_json::Value;

/// A path's text form as fsmon logs it (`\xHH` for bytes that are not
/// UTF-8, `\\` for a backslash), written out independently of fsmon's code.
fn text_of(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.utf8_chunks() {
        out.push_str(&chunk.valid().replace('\\', "\\\\"));
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

fn path_of(dir: &Path, name: &[u8]) -> PathBuf {
    dir.join(OsStr::from_bytes(name))
}

fn lines(out: &str) -> Vec<Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

#[test]
fn names_that_are_not_utf8_are_distinct_in_the_log_query_changes_and_add() {
    let env = Env::new();
    env.add("_global", &env.watch, &["-r"]);
    let d = env.start(&[]);
    let names: [&[u8]; 5] = [
        b"bad\xff",
        "bad\u{fffd}".as_bytes(),
        b"bad\xff\xfe",
        b"bad\xfe\xff",
        b"bad\\xff", // a valid UTF-8 name spelling the escape itself
    ];
    for (i, n) in names.iter().enumerate() {
        fs::write(path_of(&env.watch, n), format!("{i}")).unwrap();
    }
    let watch = env.watch.to_str().unwrap();
    let want: Vec<String> = names
        .iter()
        .map(|n| format!("{watch}/{}", text_of(n)))
        .collect();
    assert_eq!(
        want.iter().collect::<HashSet<_>>().len(),
        5,
        "five texts: {want:?}"
    );
    let evs = env.wait_events("_global", "a CLOSE_WRITE for each name", |e| {
        want.iter().all(|w| {
            e.iter()
                .any(|x| x["event_type"] == "CLOSE_WRITE" && x["path"] == w.as_str())
        })
    });
    // Each file's events carry its own size: nothing was merged.
    for (i, w) in want.iter().enumerate() {
        let cw: Vec<&Value> = evs
            .iter()
            .filter(|x| x["event_type"] == "CLOSE_WRITE" && x["path"] == w.as_str())
            .collect();
        assert_eq!(cw.len(), 1, "{w}: {cw:?}");
        assert_eq!(cw[0]["file_size"], format!("{i}").len(), "{w}");
    }
    // The raw log holds the JSON of the text form: `bad\\xff` in JSON.
    let raw = fs::read_to_string(env.log_path("_global")).unwrap();
    assert!(raw.contains(r#"/bad\\xff","#), "{raw}");

    // query --path with the text form matches only that file.
    let q = lines(&env.fsmon_ok(&["query", "_global", "--path", &want[0]]));
    assert!(!q.is_empty());
    assert!(
        q.iter().all(|x| x["path"] == want[0].as_str()),
        "query --path {}: {q:?}",
        want[0]
    );
    let q = lines(&env.fsmon_ok(&["query", "_global", "--path", &want[4]]));
    assert!(!q.is_empty() && q.iter().all(|x| x["path"] == want[4].as_str()));
    // A backslash that is no escape is an error, not a literal.
    let bad = env.fsmon(&["query", "_global", "--path", &format!("{watch}/bad\\q")]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("bad escape") && err.lines().count() == 1,
        "{err}"
    );

    // changes: one entry per file, five.
    let c = lines(&env.fsmon_ok(&["changes", "_global", "--path", watch]));
    let bad_entries: Vec<&str> = c
        .iter()
        .filter_map(|x| x["path"].as_str())
        .filter(|p| p.starts_with(&format!("{watch}/bad")))
        .collect();
    assert_eq!(bad_entries.len(), 5, "{bad_entries:?}");
    assert_eq!(
        bad_entries.iter().collect::<HashSet<_>>(),
        want.iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .iter()
            .collect(),
    );

    // add --path of a symlink to `real\xff`: stores the real directory's
    // text form and watches it.
    let other = env.dir.path().join("other");
    let real = path_of(&other, b"real\xff");
    fs::create_dir_all(&real).unwrap();
    let link = env.dir.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    env.fsmon_ok(&["add", "_global", "--path", link.to_str().unwrap()]);
    let real_text = format!("{}/real\\xff", fs::canonicalize(&other).unwrap().display());
    let monitored = lines(&env.fsmon_ok(&["monitored"]));
    assert!(
        monitored[0]["paths"].get(&real_text).is_some(),
        "{monitored:?}"
    );
    fs::write(real.join("inside"), b"x").unwrap();
    env.wait_events("_global", "an event in real\\xff", |e| {
        e.iter().any(|x| {
            x["event_type"] == "CLOSE_WRITE" && x["path"] == format!("{real_text}/inside").as_str()
        })
    });
    // remove takes the same form back.
    env.fsmon_ok(&["remove", "_global", "--path", &real_text]);
    let monitored = lines(&env.fsmon_ok(&["monitored"]));
    assert!(
        monitored[0]["paths"].get(&real_text).is_none(),
        "{monitored:?}"
    );
    assert!(d.stop().success());
}

/// A directory handle we can create and write in at any depth.
struct Deep(OwnedFd);

impl Deep {
    fn open(p: &Path) -> Deep {
        Deep(fs::File::open(p).unwrap().into())
    }

    fn at(&self, name: &str, flags: i32, mode: u32) -> OwnedFd {
        let c = CString::new(name).unwrap();
        // SAFETY: valid descriptor and name.
        let fd = unsafe {
            libc::openat(
                self.0.as_raw_fd(),
                c.as_ptr(),
                flags | libc::O_CLOEXEC,
                mode,
            )
        };
        assert!(
            fd >= 0,
            "openat {name}: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: a new descriptor.
        unsafe { OwnedFd::from_raw_fd(fd) }
    }

    /// `depth` nested directories named `name`; the deepest.
    fn mkdirs(&self, name: &str, depth: usize) -> Deep {
        let c = CString::new(name).unwrap();
        let mut cur = Deep(self.0.try_clone().unwrap());
        for _ in 0..depth {
            // SAFETY: valid descriptor and name.
            let r = unsafe { libc::mkdirat(cur.0.as_raw_fd(), c.as_ptr(), 0o755) };
            assert_eq!(r, 0, "mkdirat: {}", std::io::Error::last_os_error());
            cur = Deep(cur.at(name, libc::O_RDONLY | libc::O_DIRECTORY, 0));
        }
        cur
    }

    fn write(&self, name: &str, data: &[u8]) {
        let fd = self.at(name, libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC, 0o644);
        fs::File::from(fd).write_all(data).unwrap();
    }

    fn remove(&self, name: &str) {
        let c = CString::new(name).unwrap();
        // SAFETY: valid descriptor and name.
        let r = unsafe { libc::unlinkat(self.0.as_raw_fd(), c.as_ptr(), 0) };
        assert_eq!(r, 0, "unlinkat: {}", std::io::Error::last_os_error());
    }
}

/// Resumes a SIGSTOPped daemon even if the test fails in between.
struct Resume(Pid);
impl Drop for Resume {
    fn drop(&mut self) {
        let _ = kill(self.0, Signal::SIGCONT);
    }
}

/// Waits for a CLOSE_WRITE at exactly `path` and checks it is resolved.
fn wait_resolved(env: &Env, path: &str, size: u64) {
    let evs = env.wait_events("_global", &format!("CLOSE_WRITE {}...", &path[..80]), |e| {
        e.iter()
            .any(|x| x["event_type"] == "CLOSE_WRITE" && x["path"] == path)
    });
    let e = evs
        .iter()
        .find(|x| x["event_type"] == "CLOSE_WRITE" && x["path"] == path)
        .unwrap();
    assert!(e.get("unresolved").is_none(), "{e}");
    assert_eq!(e["file_size"], size, "{e}");
}

#[test]
fn directories_deeper_than_path_max_are_logged_after_a_restart_and_an_overflow() {
    // A filesystem of its own: only the test's own events are queued.
    let lfs = LoopFs::new_in("/dev/shm", "ext4", 32);
    let env = Env::new();
    let root = lfs.mountpoint.join("w");
    fs::create_dir(&root).unwrap();
    env.add("_global", &root, &["-r"]);
    let name = "d".repeat(200);
    let level = |n: usize| vec![name.as_str(); n].join("/");
    let watch = root.to_str().unwrap().to_string();
    let d = env.start(&[]);
    // Created while the daemon runs: 25 levels, more than 5,000 bytes.
    let deep = Deep::open(&root).mkdirs(&name, 25);
    deep.write("running", b"1");
    let running = format!("{watch}/{}/running", level(25));
    assert!(running.len() > 5000);
    wait_resolved(&env, &running, 1);
    assert!(d.stop().success());

    // After a restart: known only from the walk at start.
    let d = env.start(&[]);
    deep.write("restarted", b"22");
    wait_resolved(&env, &format!("{watch}/{}/restarted", level(25)), 2);

    assert!(d.stop().success());

    // After an overflow: directories made while the daemon was stopped and
    // events were lost are found by the re-walk (or by climbing `..`). The
    // system's queue (`[fanotify] queue_size` would set the global sysctl for
    // an instant): more files than it holds, each made and removed (a name
    // of its own is an event the kernel cannot merge; the small filesystem
    // has fewer inodes than that).
    let d = env.start(&[]);
    let queue = fsmon_tests::max_queued_events();
    let burst = queue.max(16384) + 2000;
    let pid = Pid::from_raw(d.pid() as i32);
    let deeper = {
        let _resume = Resume(pid);
        kill(pid, Signal::SIGSTOP).unwrap();
        wait_stopped(d.pid());
        let deeper = deep.mkdirs(&name, 3);
        for i in 0..burst {
            let f = format!("burst{i}");
            deep.write(&f, b"");
            deep.remove(&f);
        }
        deeper
    };
    // Written after the queue is read: up to the queue's length first.
    wait_for("an overflow record", Duration::from_secs(120), || {
        env.events("_global")
            .iter()
            .any(|x| x["event_type"] == "Q_OVERFLOW")
            .then_some(())
    });
    deeper.write("after-overflow", b"333");
    wait_resolved(&env, &format!("{watch}/{}/after-overflow", level(28)), 3);
    // Nothing in the tree was taken for outside and dropped.
    assert_eq!(
        env.metric_or_zero("fsmon_unresolved_paths_total{scope=\"outside\"}"),
        0.0
    );
    assert!(d.stop().success());
}

/// `fsmon add _global --path path -r`, run as `user`; must succeed.
fn add_as(user: &TestUser, env: &Env, path: &Path) {
    let out = user.fsmon(
        env,
        &["add", "_global", "--path", path.to_str().unwrap(), "-r"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An env whose socket, store and logs belong to `user`, with a watched
/// directory anyone may traverse.
fn env_for_user(user: &TestUser) -> Env {
    let env = open_env();
    // The user's own directory (the socket goes only where the user could
    // put it), store and log directories.
    nix::unistd::chown(
        env.dir.path(),
        Some(nix::unistd::Uid::from_raw(user.uid)),
        Some(nix::unistd::Gid::from_raw(user.gid)),
    )
    .unwrap();
    for dir in [env.store.parent().unwrap(), env.logs.as_path()] {
        fs::create_dir_all(dir).unwrap();
        nix::unistd::chown(
            dir,
            Some(nix::unistd::Uid::from_raw(user.uid)),
            Some(nix::unistd::Gid::from_raw(user.gid)),
        )
        .unwrap();
    }
    fs::set_permissions(&env.config, fs::Permissions::from_mode(0o644)).unwrap();
    fs::set_permissions(&env.watch, fs::Permissions::from_mode(0o755)).unwrap();
    env
}

#[test]
fn a_non_root_users_daemon_hides_what_the_user_cannot_traverse() {
    let user = TestUser::new("hide");
    let env = env_for_user(&user);
    let secret = env.watch.join("secret");
    fs::create_dir_all(secret.join("sub")).unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o700)).unwrap();
    add_as(&user, &env, &env.watch);
    let uid = user.uid.to_string();
    let d = env.start_with_env(&[], &[("SUDO_UID", &uid)]);

    fs::write(secret.join("hidden.txt"), b"root's").unwrap();
    fs::write(secret.join("sub/hidden-below.txt"), b"root's").unwrap();
    let marker = env.watch.join("readable.txt");
    fs::write(&marker, b"x").unwrap();
    // Events are read in order: once the marker is logged, the writes in
    // the secret directory were seen and judged.
    env.wait_written(&marker, "the readable write");
    let log = fs::read_to_string(env.log_path("_global")).unwrap();
    assert!(!log.contains("hidden"), "{log}");
    // At least one event per file (the kernel may merge CREATE and
    // CLOSE_WRITE of one file into one event).
    let hidden = wait_for("the hidden count", Duration::from_secs(60), || {
        let n = env.metric("fsmon_events_hidden_total");
        (n >= 2.0).then_some(n)
    });
    assert!(hidden >= 2.0);
    let h = env.request(r#"{"op":"health"}"#);
    assert!(h["events_hidden"].as_u64().unwrap() >= 2, "{h}");

    // Opened up: later writes there are logged.
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o755)).unwrap();
    let after = secret.join("sub/visible-now.txt");
    fs::write(&after, b"y").unwrap();
    env.wait_written(&after, "the write after chmod 0755");
    let log = fs::read_to_string(env.log_path("_global")).unwrap();
    assert!(!log.contains("hidden"), "earlier events stay hidden: {log}");
    assert!(d.stop().success());
}

/// The reverse: a directory open when the daemon walked the tree, quiet
/// since, then closed by its owner. Its first events after the chmod are
/// already hidden (the chmod is an ATTRIB on a directory the daemon has
/// only seen in its walk).
#[test]
fn a_directory_closed_after_the_walk_hides_what_follows() {
    let user = TestUser::new("closed");
    let env = env_for_user(&user);
    let closing = env.watch.join("closing");
    fs::create_dir_all(closing.join("sub")).unwrap();
    fs::set_permissions(&closing, fs::Permissions::from_mode(0o755)).unwrap();
    add_as(&user, &env, &env.watch);
    let uid = user.uid.to_string();
    let d = env.start_with_env(&[], &[("SUDO_UID", &uid)]);
    fs::set_permissions(&closing, fs::Permissions::from_mode(0o700)).unwrap();
    fs::write(closing.join("late.txt"), b"root's").unwrap();
    fs::write(closing.join("sub/late-below.txt"), b"root's").unwrap();
    let marker = env.watch.join("readable.txt");
    fs::write(&marker, b"x").unwrap();
    env.wait_written(&marker, "the readable write");
    let log = fs::read_to_string(env.log_path("_global")).unwrap();
    assert!(!log.contains("late"), "{log}");
    assert!(d.stop().success());
}

/// A directory above a watched root, closed by its owner while the daemon
/// runs: the user can no longer reach the tree, so its events are hidden
/// until the directory is opened again.
#[test]
fn a_closed_directory_above_the_watched_root_hides_the_tree() {
    let user = TestUser::new("above");
    let env = env_for_user(&user);
    let gate = env.watch.join("gate");
    let tree = gate.join("tree");
    let open = env.watch.join("open");
    fs::create_dir_all(&tree).unwrap();
    fs::create_dir_all(&open).unwrap();
    fs::set_permissions(&gate, fs::Permissions::from_mode(0o755)).unwrap();
    for root in [&tree, &open] {
        add_as(&user, &env, root);
    }
    let uid = user.uid.to_string();
    let d = env.start_with_env(&[], &[("SUDO_UID", &uid)]);
    let before = tree.join("before.txt");
    fs::write(&before, b"x").unwrap();
    env.wait_written(&before, "the write while open");

    fs::set_permissions(&gate, fs::Permissions::from_mode(0o700)).unwrap();
    fs::write(tree.join("after-close.txt"), b"root's").unwrap();
    // Events are read in order: once the marker in the other tree is
    // logged, the chmod and the write after it have been judged.
    let marker = open.join("marker.txt");
    fs::write(&marker, b"x").unwrap();
    env.wait_written(&marker, "the marker");
    let log = fs::read_to_string(env.log_path("_global")).unwrap();
    assert!(!log.contains("after-close"), "{log}");
    assert!(
        d.stderr().contains("out of the user's reach now"),
        "{}",
        d.stderr()
    );

    fs::set_permissions(&gate, fs::Permissions::from_mode(0o755)).unwrap();
    let reopened = tree.join("reopened.txt");
    fs::write(&reopened, b"x").unwrap();
    env.wait_written(&reopened, "the write after reopening");
    let log = fs::read_to_string(env.log_path("_global")).unwrap();
    assert!(!log.contains("after-close"), "{log}");
    assert!(d.stop().success());
}

/// The same when the closed directory is on another filesystem than the
/// tree (no event of it reaches the daemon): the roots are checked again
/// every second.
#[test]
fn a_closed_directory_on_another_filesystem_above_the_root_hides_the_tree() {
    let user = TestUser::new("abovefs");
    let env = env_for_user(&user);
    let gate = env.watch.join("gate");
    let mnt = gate.join("mnt");
    let _fs = Mount::new(&["-t", "tmpfs", "-o", "mode=0755", "fsmon-test"], &mnt);
    fs::set_permissions(&gate, fs::Permissions::from_mode(0o755)).unwrap();
    let tree = mnt.join("tree");
    fs::create_dir_all(&tree).unwrap();
    add_as(&user, &env, &tree);
    let uid = user.uid.to_string();
    let d = env.start_with_env(&[], &[("SUDO_UID", &uid)]);
    fs::set_permissions(&gate, fs::Permissions::from_mode(0o700)).unwrap();
    wait_for("the root out of reach", Duration::from_secs(30), || {
        d.stderr()
            .contains("out of the user's reach now")
            .then_some(())
    });
    fs::write(tree.join("after-close.txt"), b"root's").unwrap();
    // Judged (hidden) before the way opens again.
    wait_for("the hidden write counted", Duration::from_secs(60), || {
        (env.metric("fsmon_events_hidden_total") >= 1.0).then_some(())
    });
    fs::set_permissions(&gate, fs::Permissions::from_mode(0o755)).unwrap();
    wait_for("the root within reach", Duration::from_secs(30), || {
        d.stderr()
            .contains("within the user's reach again")
            .then_some(())
    });
    let reopened = tree.join("reopened.txt");
    fs::write(&reopened, b"x").unwrap();
    env.wait_written(&reopened, "the write after reopening");
    let log = fs::read_to_string(env.log_path("_global")).unwrap();
    assert!(!log.contains("after-close"), "{log}");
    assert!(d.stop().success());
}

/// Another user's private directories in a shared tree (1777, like /tmp):
/// one made, used and removed before fsmon could check it (the daemon is
/// stopped meanwhile), and one the owner lets others search but not list
/// (0711: names there are the owner's secret). The watching user sees
/// neither's names.
#[test]
fn another_users_private_directories_in_a_shared_tree_stay_hidden() {
    let watcher = TestUser::new("watcher");
    let other = TestUser::new("other");
    let env = env_for_user(&watcher);
    let shared = env.watch.join("shared");
    fs::create_dir_all(&shared).unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o1777)).unwrap();
    add_as(&watcher, &env, &shared);
    let uid = watcher.uid.to_string();
    let d = env.start_with_env(&[], &[("SUDO_UID", &uid)]);
    let as_other = |script: String| {
        let out = other.run(Path::new("/bin/sh"), &["-c", &script]);
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    d.while_stopped(|| {
        as_other(format!(
            "umask 077; mkdir {0}/tmp.q && echo x > {0}/tmp.q/QUICK-SECRET && rm -r {0}/tmp.q",
            shared.display()
        ));
    });
    as_other(format!(
        "mkdir -m 0711 {0}/xonly && echo x > {0}/xonly/UNGUESSABLE-7f3a && chmod 0644 {0}/xonly/UNGUESSABLE-7f3a",
        shared.display()
    ));
    let marker = shared.join("marker.txt");
    fs::write(&marker, b"x").unwrap();
    env.wait_written(&marker, "the marker");
    let log = fs::read_to_string(env.log_path("_global")).unwrap();
    assert!(!log.contains("QUICK-SECRET"), "{log}");
    assert!(!log.contains("UNGUESSABLE"), "{log}");
    // The directories themselves are entries of the shared tree, which
    // the watcher may list: their CREATE is shown.
    assert!(log.contains("xonly"), "{log}");
    assert!(d.stop().success());
}

/// On overlayfs fsmon cannot open a directory by its handle: the check of
/// a directory made after the walk goes by its path. A new open directory
/// shows its events, a new private one does not.
#[test]
fn overlayfs_new_directories_are_checked_for_a_non_root_user() {
    let user = TestUser::new("ovl");
    let env = env_for_user(&user);
    let base = env.watch.join("ovl");
    let _layers = Mount::new(&["-t", "tmpfs", "-o", "mode=0755", "fsmon-test"], &base);
    for d in ["lower", "upper", "work", "merged"] {
        fs::create_dir_all(base.join(d)).unwrap();
    }
    let opts = format!(
        "lowerdir={0}/lower,upperdir={0}/upper,workdir={0}/work",
        base.display()
    );
    let merged = base.join("merged");
    let _m = Mount::new(&["-t", "overlay", "overlay", "-o", &opts], &merged);
    fs::set_permissions(&merged, fs::Permissions::from_mode(0o755)).unwrap();
    let out = user.fsmon(
        &env,
        &["add", "_global", "--path", merged.to_str().unwrap(), "-r"],
    );
    if !out.status.success() {
        // Kernels that refuse inode marks with file ids on overlayfs say so
        // in one line (kernel.rs checks that line).
        println!(
            "overlayfs refused: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    let uid = user.uid.to_string();
    let d = env.start_with_env(&[], &[("SUDO_UID", &uid)]);
    fs::create_dir(merged.join("open")).unwrap();
    fs::create_dir(merged.join("private")).unwrap();
    fs::set_permissions(merged.join("private"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::write(merged.join("private/PRIVATE-NAME"), b"x").unwrap();
    let shown = merged.join("open/shown.txt");
    fs::write(&shown, b"x").unwrap();
    fsmon_tests::wait_for_or(
        "the write in the new open directory",
        Duration::from_secs(60),
        || {
            // Its CLOSE_WRITE, or its scan record when the write came
            // before the new directory was marked (inode marks).
            env.events("_global")
                .iter()
                .any(|x| x["path"] == shown.to_str().unwrap())
                .then_some(())
        },
        || {
            format!(
                "health: {}\nlog:\n{}\ndaemon:\n{}",
                env.request(r#"{"op":"health"}"#),
                fs::read_to_string(env.log_path("_global")).unwrap_or_default(),
                d.stderr()
            )
        },
    );
    let log = fs::read_to_string(env.log_path("_global")).unwrap();
    assert!(!log.contains("PRIVATE-NAME"), "{log}");
    assert!(d.stop().success());
}

/// The watching user owns a directory on the path to her watched root and
/// swaps it for a symlink into another user's private home while the
/// daemon (re)starts, then puts a real directory back. The daemon never
/// follows the symlink, so the other user's tree is never filed under the
/// watched path.
#[test]
fn a_symlink_swapped_into_the_watched_path_never_maps_another_users_tree() {
    let alice = TestUser::new("swap");
    let bob = TestUser::new("victim");
    let env = env_for_user(&alice);
    let own = |p: &Path, u: &TestUser| {
        nix::unistd::chown(
            p,
            Some(nix::unistd::Uid::from_raw(u.uid)),
            Some(nix::unistd::Gid::from_raw(u.gid)),
        )
        .unwrap()
    };
    let w = env.watch.join("w");
    let root = w.join("a/stuff");
    fs::create_dir_all(&root).unwrap();
    for p in [&w, &w.join("a"), &root] {
        own(p, &alice);
    }
    let bobhome = env.watch.join("bobhome");
    fs::create_dir_all(bobhome.join("stuff")).unwrap();
    own(&bobhome, &bob);
    own(&bobhome.join("stuff"), &bob);
    fs::set_permissions(&bobhome, fs::Permissions::from_mode(0o700)).unwrap();
    add_as(&alice, &env, &root);
    let as_user = |u: &TestUser, script: String| {
        let out = u.run(Path::new("/bin/sh"), &["-c", &script]);
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    as_user(
        &alice,
        format!(
            "rm -r {0}/a && ln -s {1} {0}/a",
            w.display(),
            bobhome.display()
        ),
    );
    let uid = alice.uid.to_string();
    let d = env.start_with_env(&[], &[("SUDO_UID", &uid)]);
    as_user(
        &alice,
        format!("rm {0}/a && mkdir -p {0}/a/stuff", w.display()),
    );
    wait_for(
        "the root within reach again",
        Duration::from_secs(30),
        || {
            d.stderr()
                .contains("within the user's reach again")
                .then_some(())
        },
    );
    as_user(
        &bob,
        format!("echo x > {}/stuff/BOB-SECRET.txt", bobhome.display()),
    );
    let marker = root.join("marker.txt");
    as_user(&alice, format!("echo x > {}", marker.display()));
    env.wait_written(&marker, "alice's marker");
    let log = fs::read_to_string(env.log_path("_global")).unwrap();
    assert!(!log.contains("BOB-SECRET"), "{log}");
    assert!(d.stop().success());
}

/// `health` says whether each watched path exists as the daemon's user
/// sees it: a path in a directory closed to her, hand-written into her
/// store, is pending whether or not it exists (asked as root, it would
/// tell her).
#[test]
fn health_pending_is_the_users_view() {
    let user = TestUser::new("pend");
    let env = env_for_user(&user);
    let closed = env.watch.join("closed");
    fs::create_dir_all(&closed).unwrap();
    fs::write(closed.join("there"), b"x").unwrap();
    fs::set_permissions(&closed, fs::Permissions::from_mode(0o700)).unwrap();
    let open = env.watch.join("open");
    fs::create_dir_all(&open).unwrap();
    let line = format!(
        r#"{{"cmd":"_global","paths":{{"{0}":{{"recursive":false,"types":["CREATE"]}},"{1}":{{"recursive":false,"types":["CREATE"]}},"{2}":{{"recursive":true,"types":["CREATE"]}}}}}}"#,
        closed.join("there").display(),
        closed.join("absent").display(),
        open.display()
    );
    fs::write(&env.store, format!("{line}\n")).unwrap();
    nix::unistd::chown(
        &env.store,
        Some(nix::unistd::Uid::from_raw(user.uid)),
        Some(nix::unistd::Gid::from_raw(user.gid)),
    )
    .unwrap();
    let uid = user.uid.to_string();
    let d = env.start_with_env(&[], &[("SUDO_UID", &uid)]);
    let h = env.request(r#"{"op":"health"}"#);
    let pending = |p: &Path| {
        h["paths"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["path"] == p.to_str().unwrap())
            .unwrap_or_else(|| panic!("{} not in {h}\n{}", p.display(), d.stderr()))["pending"]
            .clone()
    };
    assert_eq!(pending(&closed.join("there")), true, "{h}");
    assert_eq!(pending(&closed.join("absent")), true, "{h}");
    assert_eq!(pending(&open), false, "{h}");
    assert!(d.stop().success());
}

#[test]
fn busy_directories_outside_the_trees_never_become_unresolved_records() {
    // Directories made and removed as fast as possible next to the watched
    // tree, on the same filesystem: the daemon looks each one up while it
    // vanishes. They were outside: nothing of them may reach the log.
    let env = Env::new();
    env.add("_global", &env.watch, &["-r"]);
    let d = env.start(&[]);
    let busy = env.dir.path().join("busy");
    fs::create_dir(&busy).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let churners: Vec<_> = (0..3)
        .map(|t| {
            let (stop, done) = (stop.clone(), done.clone());
            let busy = busy.join(format!("t{t}"));
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    for i in 0..8 {
                        let dir = busy.join(format!("x{i}/a/b/c"));
                        fs::create_dir_all(&dir).unwrap();
                        fs::write(dir.join("f"), b"").unwrap();
                    }
                    fs::remove_dir_all(&busy).unwrap();
                    done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            })
        })
        .collect();
    // Writes inside the tree meanwhile: at least 400, and on until the
    // churners have done 100 rounds (a loaded machine is slower).
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut i = 0;
    while i < 400 || done.load(std::sync::atomic::Ordering::Relaxed) < 100 {
        assert!(std::time::Instant::now() < deadline, "100 churn rounds");
        fs::write(env.watch.join(format!("w{i}")), b"").unwrap();
        std::thread::sleep(Duration::from_millis(10));
        i += 1;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for c in churners {
        c.join().unwrap();
    }
    let marker = env.watch.join("marker");
    fs::write(&marker, b"").unwrap();
    let evs = env.wait_events("_global", "the marker", |e| {
        e.iter()
            .any(|x| x["event_type"] == "CLOSE_WRITE" && x["path"] == marker.to_str().unwrap())
    });
    let stray: Vec<&Value> = evs
        .iter()
        .filter(|x| {
            x.get("unresolved").is_some()
                || !x["path"]
                    .as_str()
                    .unwrap()
                    .starts_with(env.watch.to_str().unwrap())
        })
        .collect();
    assert!(stray.is_empty(), "{stray:?}\ndaemon:\n{}", d.stderr());
    assert!(d.stop().success());
}
