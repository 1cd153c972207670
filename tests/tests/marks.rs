//! Two kinds of mark (`fsmon add --mark filesystem|inode|auto`), against the
//! real kernel: inode marks follow the tree (new directories marked and
//! scanned, renamed ones kept, moved-out ones dropped), nothing outside the
//! tree reaches the daemon, `auto` falls back to inode marks where the
//! kernel refuses a filesystem mark (a btrfs subvolume), and every
//! filesystem the issue names is captured with the mark it gets.
use std::{collections::HashSet, fs, path::Path, process::Command, time::Duration};

use fsmon_tests::{Env, LoopFs, Mount, assert_tree_captured, find, sh_bg, wait_for};
use serde_json::Value;

/// The health entry of a watched path.
fn path_health(env: &Env, path: &Path) -> Value {
    let h = env.health();
    h["paths"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["path"] == path.to_str().unwrap())
        .unwrap_or_else(|| panic!("{} not in health: {h}", path.display()))
        .clone()
}

fn sh(script: &str) {
    let st = Command::new("sh").arg("-c").arg(script).status().unwrap();
    assert!(st.success(), "{script}");
}

fn creates(evs: &[Value]) -> HashSet<String> {
    evs.iter()
        .filter(|e| e["event_type"] == "CREATE")
        .filter_map(|e| e["path"].as_str().map(str::to_string))
        .collect()
}

/// `mkdir -p a/b/c && touch a/b/c/f` at full speed, 300 times, with inode
/// marks: every directory and file is in the log, reported by the kernel
/// or found by the scan of its new parent (then `scan: true`, pid 0, no
/// process: the scan cannot know who made it).
#[test]
fn inode_marks_mkdir_p_then_touch_never_misses_an_entry() {
    let env = Env::new();
    env.add(
        "_global",
        &env.watch,
        &["-r", "--types", "CREATE", "--mark", "inode"],
    );
    let _d = env.start(&[]);
    assert_eq!(path_health(&env, &env.watch)["mark"], "inode");
    const N: usize = 300;
    sh(&format!(
        "cd {} && i=0; while [ $i -lt {N} ]; do mkdir -p a$i/b/c && touch a$i/b/c/f; i=$((i+1)); done",
        env.watch.display()
    ));
    let mut want = Vec::new();
    for i in 0..N {
        for sub in ["", "/b", "/b/c", "/b/c/f"] {
            want.push(format!("{}/a{i}{sub}", env.watch.display()));
        }
    }
    let evs = env.wait_events("_global", "every entry of the 300 trees", |e| {
        let c = creates(e);
        want.iter().all(|p| c.contains(p))
    });
    let mut by_scan = 0;
    for e in evs.iter().filter(|e| e["event_type"] == "CREATE") {
        if e["scan"] == true {
            by_scan += 1;
            assert_eq!(e["pid"], 0, "a scan knows no process: {e}");
            assert_eq!(e["cmd"], "", "{e}");
        } else {
            assert!(e.get("scan").is_none(), "{e}");
            assert!(
                e["cmd"] == "mkdir" || e["cmd"] == "touch",
                "attributed: {e}"
            );
        }
    }
    // Each entry once: by its event or by the scan, never both.
    let mut seen = HashSet::new();
    for e in evs.iter().filter(|e| e["event_type"] == "CREATE") {
        assert!(seen.insert(e["path"].as_str().unwrap()), "twice: {e}");
    }
    println!(
        "{} entries: {by_scan} found by scans, the rest by events",
        want.len()
    );
}

/// With inode marks, activity next to the tree costs the daemon nothing:
/// no event is even read. With a filesystem mark every one is read.
#[test]
fn inode_marks_read_nothing_outside_the_tree() {
    for (kind, outside_reads) in [("inode", false), ("filesystem", true)] {
        let env = Env::new();
        let inside = env.watch.join("in");
        let outside = env.watch.join("out");
        fs::create_dir_all(&inside).unwrap();
        fs::create_dir_all(&outside).unwrap();
        env.add("_global", &inside, &["-r", "--mark", kind]);
        let _d = env.start(&[]);
        assert_eq!(path_health(&env, &inside)["mark"], kind);
        fs::write(inside.join("first"), b"x").unwrap();
        env.wait_events("_global", "the first write", |e| {
            !find(e, "CLOSE_WRITE", &inside.join("first")).is_empty()
        });
        let before = env.metric("fsmon_kernel_events_total");
        for i in 0..1000 {
            fs::write(outside.join(format!("f{i}")), b"x").unwrap();
        }
        fs::write(inside.join("last"), b"x").unwrap();
        env.wait_events("_global", "the last write", |e| {
            !find(e, "CLOSE_WRITE", &inside.join("last")).is_empty()
        });
        let read = env.metric("fsmon_kernel_events_total") - before;
        println!("{kind}: {read} kernel events read for 1,000 files outside and one inside");
        if outside_reads {
            assert!(read >= 1000.0, "{kind}: {read}");
        } else {
            assert!(read < 10.0, "{kind}: {read} events read");
        }
        let evs = env.events("_global");
        assert!(
            evs.iter()
                .all(|e| !e["path"].as_str().unwrap_or("").contains("/out/")),
            "{kind}"
        );
    }
}

/// Renamed directories keep their marks, directories moved out lose them
/// (and everything below them), directories moved in get them.
#[test]
fn inode_marks_follow_renames_and_moves_in_and_out() {
    let env = Env::new();
    let inside = env.watch.join("in");
    let outside = env.watch.join("out");
    fs::create_dir_all(inside.join("d/sub")).unwrap();
    fs::create_dir_all(outside.join("z/s")).unwrap();
    env.add("_global", &inside, &["-r", "--mark", "inode"]);
    let _d = env.start(&[]);
    let marks = || env.health()["inode_marks"].as_u64().unwrap();
    assert_eq!(marks(), 3, "in, in/d, in/d/sub");
    // Renamed inside: kept, events carry the new path.
    fs::rename(inside.join("d"), inside.join("e")).unwrap();
    fs::write(inside.join("e/sub/x"), b"x").unwrap();
    env.wait_events("_global", "the write after the rename", |e| {
        !find(e, "CLOSE_WRITE", &inside.join("e/sub/x")).is_empty()
    });
    assert_eq!(marks(), 3);
    // Moved in: marked with what is below it.
    fs::rename(outside.join("z"), inside.join("z")).unwrap();
    wait_for("z and z/s marked", Duration::from_secs(30), || {
        (marks() == 5).then_some(())
    });
    fs::write(inside.join("z/s/q"), b"x").unwrap();
    env.wait_events("_global", "the write in the moved-in tree", |e| {
        !find(e, "CLOSE_WRITE", &inside.join("z/s/q")).is_empty()
    });
    // Moved out: its marks and those below go.
    fs::rename(inside.join("e"), outside.join("e")).unwrap();
    wait_for("e and e/sub unmarked", Duration::from_secs(30), || {
        (marks() == 3).then_some(())
    });
    let before = env.metric("fsmon_kernel_events_total");
    for i in 0..200 {
        fs::write(outside.join(format!("e/sub/y{i}")), b"x").unwrap();
    }
    fs::write(inside.join("after"), b"x").unwrap();
    env.wait_events("_global", "the write after the move out", |e| {
        !find(e, "CLOSE_WRITE", &inside.join("after")).is_empty()
    });
    let read = env.metric("fsmon_kernel_events_total") - before;
    assert!(read < 10.0, "{read} events read from a moved-out tree");
    // Deleted: the kernel drops the marks with the inodes.
    let (_, _) = sh_bg(&format!("rm -rf {}", inside.join("z").display()));
    wait_for("z and z/s gone", Duration::from_secs(30), || {
        (marks() == 1).then_some(())
    });
}

/// The store line and `monitored` carry a mark other than auto (and old
/// lines without the key still parse as auto); `health` says what each
/// path got; a bad kind is one clear line.
#[test]
fn mark_kind_is_stored_shown_and_checked() {
    let env = Env::new();
    let a = env.watch.join("a");
    let b = env.watch.join("b");
    fs::create_dir_all(&a).unwrap();
    fs::create_dir_all(&b).unwrap();
    env.add("_global", &a, &["-r", "--mark", "inode"]);
    env.add("_global", &b, &["-r"]);
    let store = fs::read_to_string(&env.store).unwrap();
    assert!(store.contains(r#""mark":"inode""#), "{store}");
    assert_eq!(
        store.matches(r#""mark""#).count(),
        1,
        "auto is omitted: {store}"
    );
    let _d = env.start(&[]);
    let mon = env.fsmon_ok(&["monitored"]);
    assert!(mon.contains(r#""mark":"inode""#), "{mon}");
    let ha = path_health(&env, &a);
    assert_eq!(ha["mark"], "inode", "{ha}");
    assert_eq!(ha["marked_dirs"], 1, "{ha}");
    let hb = path_health(&env, &b);
    assert_eq!(hb["mark"], "filesystem", "{hb}");
    assert!(hb.get("why").is_none(), "{hb}");
    let out = env.fsmon(&[
        "add",
        "_global",
        "--path",
        a.to_str().unwrap(),
        "--mark",
        "bogus",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // A path that does not exist yet cannot take inode marks.
    let later = env.watch.join("later");
    let out = env.fsmon(&[
        "add",
        "_global",
        "--path",
        later.to_str().unwrap(),
        "--mark",
        "inode",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("inode marks need the path to exist"), "{err}");
}

/// `FS_ERROR` is reported to filesystem marks only (the kernel refuses an
/// inode mark asking for it): `--types all` with inode marks, beside a
/// filesystem-marked path that asks for `FS_ERROR` too, still watches the
/// inode-marked tree and logs its events.
#[test]
fn inode_marks_with_every_type_asked() {
    let env = Env::new();
    let a = env.watch.join("a");
    let b = env.watch.join("b");
    fs::create_dir_all(&a).unwrap();
    fs::create_dir_all(&b).unwrap();
    env.add("_global", &a, &["-r", "--types", "all", "--mark", "inode"]);
    env.add(
        "_global",
        &b,
        &["-r", "--types", "all", "--mark", "filesystem"],
    );
    let _d = env.start(&[]);
    let ha = path_health(&env, &a);
    assert_eq!(ha["mark"], "inode", "{ha}");
    assert_eq!(env.health()["watch_errors"], serde_json::json!([]));
    sh(&format!("mkdir {0}/d && echo x > {0}/d/f", a.display()));
    let f = a.join("d/f");
    env.wait_events("_global", "CLOSE_WRITE of a/d/f", |evs| {
        !find(evs, "CLOSE_WRITE", &f).is_empty() || !find(evs, "CREATE", &f).is_empty()
    });
    fs::write(b.join("g"), b"x").unwrap();
    env.wait_events("_global", "CLOSE_WRITE of b/g", |evs| {
        !find(evs, "CLOSE_WRITE", &b.join("g")).is_empty()
    });
}

/// One filesystem with each kind of mark.
fn both_kinds_on(kind: &str) {
    let fs_ = LoopFs::new(kind, 400);
    for mark in ["inode", "filesystem"] {
        let env = Env::new();
        let watch = fs_.mountpoint.join(format!("w-{mark}"));
        fs::create_dir_all(&watch).unwrap();
        env.add("_global", &watch, &["-r", "--mark", mark]);
        let _d = env.start(&[]);
        assert_eq!(path_health(&env, &watch)["mark"], mark, "{kind}");
        assert_tree_captured(&env, &watch);
    }
}

#[test]
fn ext4_with_each_kind_of_mark() {
    both_kinds_on("ext4");
}

#[test]
fn xfs_with_each_kind_of_mark() {
    both_kinds_on("xfs");
}

#[test]
fn btrfs_with_each_kind_of_mark() {
    both_kinds_on("btrfs");
}

#[test]
fn tmpfs_with_each_kind_of_mark() {
    for mark in ["inode", "filesystem"] {
        let env = Env::new();
        let watch = env.dir.path().join("tmpfs");
        let _m = Mount::new(&["-t", "tmpfs", "fsmon-test"], &watch);
        env.add("_global", &watch, &["-r", "--mark", mark]);
        let _d = env.start(&[]);
        assert_eq!(path_health(&env, &watch)["mark"], mark);
        assert_tree_captured(&env, &watch);
    }
}

/// A btrfs subvolume refuses a filesystem mark (EXDEV): `auto` takes inode
/// marks there and says why; `--mark filesystem` is refused in one line.
#[test]
fn btrfs_subvolume_gets_inode_marks_with_auto() {
    let fs_ = LoopFs::new("btrfs", 400);
    let sub = fs_.mountpoint.join("sub");
    let out = Command::new("btrfs")
        .args(["subvolume", "create"])
        .arg(&sub)
        .output()
        .expect("btrfs (btrfs-progs)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let env = Env::new();
    env.add("_global", &sub, &["-r"]);
    let _d = env.start(&[]);
    let h = path_health(&env, &sub);
    if h["mark"] == "none" {
        // Before Linux 6.8 fanotify reports no file ids on a subvolume at
        // all: refused whole, with both reasons.
        println!("btrfs subvolume refused: {h}");
        let why = h["why"].as_str().unwrap_or("");
        assert!(
            why.contains("EXDEV") && why.contains("inode marks refused too"),
            "{h}"
        );
        return;
    }
    assert_eq!(h["mark"], "inode", "{h}");
    assert!(
        h["why"].as_str().unwrap_or("").contains("EXDEV"),
        "says why: {h}"
    );
    assert_tree_captured(&env, &sub);
    let other = sub.join("x");
    fs::create_dir_all(&other).unwrap();
    let out = env.fsmon(&[
        "add",
        "_global",
        "--path",
        other.to_str().unwrap(),
        "-r",
        "--mark",
        "filesystem",
    ]);
    assert!(!out.status.success(), "a filesystem mark on a subvolume");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("EXDEV"), "{err}");
}

/// A queue overflow loses events, among them the `CREATE` of directories
/// that inode marks would have followed: after it, fsmon walks and marks
/// the trees again, so what happens in those directories afterwards is
/// logged.
#[test]
fn inode_marks_after_a_queue_overflow_cover_directories_made_meanwhile() {
    use nix::{sys::signal, unistd::Pid};
    let env = Env::new();
    // A filesystem of its own: the burst overflows this daemon's queue, not
    // the queues of other tests' daemons watching /tmp's filesystem.
    let watch = env.dir.path().join("own-fs");
    let _own_fs = Mount::new(&["-t", "tmpfs", "-o", "size=256m", "fsmon-test"], &watch);
    env.add(
        "_global",
        &watch,
        &["-r", "--types", "CREATE", "--mark", "inode"],
    );
    let d = env.start(&[]);
    let queue = fsmon_tests::max_queued_events();
    let pid = Pid::from_raw(d.pid() as i32);
    signal::kill(pid, signal::Signal::SIGSTOP).unwrap();
    // Stopped (every thread): nothing is read meanwhile.
    fsmon_tests::wait_stopped(d.pid());
    for i in 0..queue + 2000 {
        fs::write(watch.join(format!("burst{i}")), b"").unwrap();
    }
    fs::create_dir_all(watch.join("made-meanwhile/deeper")).unwrap();
    signal::kill(pid, signal::Signal::SIGCONT).unwrap();
    wait_for("the overflow record", Duration::from_secs(120), || {
        env.events("_global")
            .iter()
            .any(|e| e["event_type"] == "Q_OVERFLOW")
            .then_some(())
    });
    let f = watch.join("made-meanwhile/deeper/after");
    // The walk after the overflow may still be running: write until seen.
    wait_for(
        "a write in a directory made during the overflow",
        Duration::from_secs(60),
        || {
            let _ = fs::remove_file(&f);
            fs::write(&f, b"").unwrap();
            std::thread::sleep(Duration::from_millis(200));
            (!find(&env.events("_global"), "CREATE", &f).is_empty()).then_some(())
        },
    );
}
