//! The capture core against the real kernel: the real daemon binary, real
//! fanotify marks, the real eBPF tracker. Every test has its own daemon,
//! config, socket and directories.
use std::{
    collections::HashSet,
    fs,
    os::unix::fs::{FileTypeExt, MetadataExt},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use fsmon_tests::{Env, LoopFs, Mount, TestUser, find, read_events, sh_bg, wait_for};
use serde_json::Value;

fn paths_of<'a>(evs: &'a [Value], kind: &str) -> HashSet<&'a str> {
    evs.iter()
        .filter(|e| e["event_type"] == kind)
        .filter_map(|e| e["path"].as_str())
        .collect()
}

fn sh(script: &str) {
    let st = Command::new("sh").arg("-c").arg(script).status().unwrap();
    assert!(st.success(), "sh -c {script}");
}

#[test]
fn events_carry_path_process_and_seed_fields() {
    let env = Env::new();
    env.add("_global", &env.watch, &["-r"]);
    let d = env.start(&[]);
    let f = env.watch.join("a.txt");
    let (sh_pid, touch_pid) = sh_bg(&format!("touch {}", f.display()));
    fs::write(env.watch.join("b.txt"), b"hello").unwrap();
    let evs = env.wait_events("_global", "touch and write", |e| {
        !find(e, "CLOSE_WRITE", &f).is_empty()
            && !find(e, "CLOSE_WRITE", &env.watch.join("b.txt")).is_empty()
    });
    let create = find(&evs, "CREATE", &f)[0];
    assert_eq!(create["pid"], touch_pid);
    assert_eq!(create["tgid"], touch_pid);
    assert_eq!(create["ppid"], sh_pid);
    assert_eq!(create["cmd"], "touch");
    assert_eq!(create["user"], "root");
    assert!(create.get("chain").is_none(), "_global has no chain");
    let time = create["time"].as_str().unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(time).is_ok() && time.ends_with("+00:00"),
        "{time}"
    );
    let b = find(&evs, "CLOSE_WRITE", &env.watch.join("b.txt"))[0];
    assert_eq!(b["file_size"], 5);
    assert_eq!(b["pid"], std::process::id());
    // The seed's field order.
    let line = fs::read_to_string(env.log_path("_global")).unwrap();
    let first = line.lines().next().unwrap();
    let order: Vec<usize> = [
        "\"time\"",
        "\"event_type\"",
        "\"path\"",
        "\"pid\"",
        "\"cmd\"",
        "\"user\"",
        "\"file_size\"",
        "\"ppid\"",
        "\"tgid\"",
    ]
    .iter()
    .map(|k| {
        first
            .find(k)
            .unwrap_or_else(|| panic!("{k} missing in {first}"))
    })
    .collect();
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "field order: {first}"
    );
    assert!(d.stop().success());
}

#[test]
fn second_daemon_for_the_same_user_is_refused() {
    let env = Env::new();
    let _d = env.start(&[]);
    let out = Command::new(fsmon_tests::fsmon_bin())
        .args(["--config", env.config.to_str().unwrap(), "daemon"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already running"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}

#[test]
fn sigterm_writes_every_event_read() {
    let env = Env::new();
    env.add("_global", &env.watch, &["-r", "--types", "CREATE"]);
    let d = env.start(&[]);
    for i in 0..2000 {
        fs::write(env.watch.join(format!("f{i}")), b"").unwrap();
    }
    // No waiting: the events are in the kernel queue or in flight.
    assert!(d.stop().success());
    let evs = env.events("_global");
    let created = paths_of(&evs, "CREATE");
    for i in 0..2000 {
        let p = env.watch.join(format!("f{i}"));
        assert!(
            created.contains(p.to_str().unwrap()),
            "missing CREATE of {}",
            p.display()
        );
    }
}

/// The queue between the capture and process threads is bounded: with a
/// bound of 16 events, a burst waits in the kernel queue instead, and
/// nothing is lost, even when the daemon is stopped right after it (the
/// capture thread keeps reading until the kernel queue is empty).
#[test]
fn a_burst_through_a_tiny_bound_loses_nothing() {
    let env = Env::with_config("[cache]\nchannel_capacity = 16\n");
    env.add("_global", &env.watch, &["-r", "--types", "CREATE"]);
    let d = env.start(&[]);
    for i in 0..3000 {
        fs::write(env.watch.join(format!("f{i}")), b"").unwrap();
    }
    assert!(d.stop().success());
    let evs = env.events("_global");
    assert!(
        evs.iter().all(|e| e["event_type"] != "Q_OVERFLOW"),
        "the kernel queue (16,384) holds the burst"
    );
    let created = paths_of(&evs, "CREATE");
    for i in 0..3000 {
        let p = env.watch.join(format!("f{i}"));
        assert!(
            created.contains(p.to_str().unwrap()),
            "missing CREATE of {}",
            p.display()
        );
    }
    assert_eq!(created.len(), 3000);
}

#[test]
fn mkdir_p_then_touch_at_full_speed_loses_nothing() {
    let env = Env::new();
    env.add("_global", &env.watch, &["-r", "--types", "CREATE"]);
    let _d = env.start(&[]);
    sh(&format!(
        "cd {} && i=0; while [ $i -lt 300 ]; do mkdir -p a$i/b/c && touch a$i/b/c/f; i=$((i+1)); done",
        env.watch.display()
    ));
    let want: Vec<PathBuf> = (0..300)
        .map(|i| env.watch.join(format!("a{i}/b/c/f")))
        .collect();
    let evs = env.wait_events("_global", "300 deep creates", |e| {
        let c = paths_of(e, "CREATE");
        want.iter().all(|p| c.contains(p.to_str().unwrap()))
    });
    let c = paths_of(&evs, "CREATE");
    for i in 0..300 {
        for sub in ["", "/b", "/b/c"] {
            let p = env.watch.join(format!("a{i}{sub}"));
            assert!(
                c.contains(p.to_str().unwrap()),
                "mkdir CREATE of {}",
                p.display()
            );
        }
    }
    // mkdir is logged as CREATE, by mkdir.
    let mk = find(&evs, "CREATE", &env.watch.join("a7/b"));
    assert_eq!(mk[0]["cmd"], "mkdir");
}

#[test]
fn non_recursive_sees_only_direct_children() {
    let env = Env::new();
    fs::create_dir_all(env.watch.join("sub")).unwrap();
    env.add("_global", &env.watch, &["--types", "CREATE"]);
    let _d = env.start(&[]);
    fs::write(env.watch.join("sub/deep"), b"").unwrap();
    fs::write(env.watch.join("top"), b"").unwrap();
    fs::create_dir(env.watch.join("newdir")).unwrap();
    env.wait_events("_global", "top-level create", |e| {
        !find(e, "CREATE", &env.watch.join("newdir")).is_empty()
    });
    // Written after "top": if it were going to be logged it would be by now.
    fs::write(env.watch.join("marker"), b"").unwrap();
    let evs = env.wait_events("_global", "marker", |e| {
        !find(e, "CREATE", &env.watch.join("marker")).is_empty()
    });
    assert_eq!(find(&evs, "CREATE", &env.watch.join("top")).len(), 1);
    assert!(
        find(&evs, "CREATE", &env.watch.join("sub/deep")).is_empty(),
        "grandchild logged"
    );
}

#[test]
fn pending_paths_are_watched_from_the_moment_they_appear() {
    let env = Env::new();
    let rec = env.watch.join("later/deeper");
    let flat = env.watch.join("flat-later");
    let out = env.fsmon(&["add", "_global", "--path", rec.to_str().unwrap(), "-r"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist yet"));
    env.add("_global", &flat, &[]);
    let _d = env.start(&[]);
    sh(&format!(
        "mkdir -p {0}/x && touch {0}/x/f && mkdir {1} && touch {1}/g",
        rec.display(),
        flat.display()
    ));
    let evs = env.wait_events("_global", "events in the new paths", |e| {
        !find(e, "CREATE", &rec.join("x/f")).is_empty()
            && !find(e, "CREATE", &flat.join("g")).is_empty()
    });
    assert!(
        find(&evs, "CREATE", &env.watch.join("later")).is_empty(),
        "outside the pending path"
    );
}

/// Makes `dirs` x `per_dir` files under `root`.
fn make_tree(root: &Path, dirs: usize, per_dir: usize) -> Vec<String> {
    let mut all = Vec::new();
    for d in 0..dirs {
        let dir = root.join(format!("d{d:03}/inner"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..per_dir {
            let p = dir.join(format!("file{f:04}"));
            fs::write(&p, b"x").unwrap();
            all.push(p.to_string_lossy().into_owned());
        }
    }
    all
}

fn assert_rm_rf_logged(env: &Env, d: &fsmon_tests::Daemon, tree: &Path, files: &[String]) {
    let (_, rm_pid) = sh_bg(&format!("rm -rf {}", tree.display()));
    let want: HashSet<&str> = files.iter().map(String::as_str).collect();
    let evs = env.wait_events("_global", "every DELETE", |e| {
        let deleted = paths_of(e, "DELETE");
        want.iter().all(|p| deleted.contains(p)) && deleted.contains(tree.to_str().unwrap())
    });
    // One DELETE for each file, each directory (dNNN and dNNN/inner) and the
    // root, and nothing else; every one with rm's pid and name.
    let mut expected: HashSet<&str> = want.clone();
    for f in files {
        for dir in Path::new(f).ancestors().skip(1) {
            expected.insert(dir.to_str().unwrap());
            if dir == tree {
                break;
            }
        }
    }
    let deletes: Vec<&Value> = evs.iter().filter(|e| e["event_type"] == "DELETE").collect();
    let got = paths_of(&evs, "DELETE");
    let missing: Vec<_> = expected.difference(&got).take(5).collect();
    let extra: Vec<&&Value> = deletes
        .iter()
        .filter(|e| !e["path"].as_str().is_some_and(|p| expected.contains(p)))
        .take(5)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "DELETEs missing: {missing:?}, not deleted by rm: {extra:?}\ndaemon:\n{}",
        d.stderr()
    );
    assert_eq!(deletes.len(), expected.len(), "one DELETE each");
    let wrong: Vec<&&Value> = deletes
        .iter()
        .filter(|e| e["pid"] != rm_pid || e["cmd"] != "rm")
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {} DELETEs not attributed to rm (pid {rm_pid}), e.g. {}",
        wrong.len(),
        deletes.len(),
        wrong[0]
    );
    assert!(
        evs.iter().all(|e| e.get("unresolved").is_none()),
        "no unresolved path"
    );
    assert!(
        evs.iter().all(|e| e["event_type"] != "Q_OVERFLOW"),
        "no overflow"
    );
}

// The rm -rf tests run on an ext4 of their own: with a filesystem mark on
// /tmp, every other test's files would reach these daemons too, and their
// 10,000-file trees would reach every other daemon on /tmp.
#[test]
fn rm_rf_of_a_tree_made_before_the_daemon() {
    let env = Env::new();
    let fs_ = LoopFs::new("ext4", 400);
    let watch = fs_.mountpoint.join("w");
    let tree = watch.join("old");
    let files = make_tree(&tree, 100, 100);
    env.add("_global", &watch, &["-r", "--types", "DELETE"]);
    let d = env.start(&[]);
    assert_rm_rf_logged(&env, &d, &tree, &files);
}

#[test]
fn rm_rf_of_a_tree_made_after_the_daemon() {
    let env = Env::new();
    let fs_ = LoopFs::new("ext4", 400);
    let watch = fs_.mountpoint.join("w");
    fs::create_dir_all(&watch).unwrap();
    env.add("_global", &watch, &["-r", "--types", "DELETE"]);
    let d = env.start(&[]);
    let tree = watch.join("new");
    let files = make_tree(&tree, 100, 100);
    assert_rm_rf_logged(&env, &d, &tree, &files);
}

/// The directory cache's TTL and capacity are for directories outside the
/// trees. With a capacity of 1, every sweep evicts what it may; directories
/// only the start-up walk has seen, and quiet since, must stay, or their
/// rm -rf (read after they are gone) would lose its events.
#[test]
fn quiet_directories_survive_cache_eviction_and_their_rm_rf_is_logged() {
    let env = Env::with_config("[cache]\ndir_capacity = 1\n");
    let base = env.dir.path().join("own-fs");
    let _own_fs = Mount::new(&["-t", "tmpfs", "-o", "size=256m", "fsmon-test"], &base);
    let watch = base.join("watched");
    let tree = watch.join("quiet");
    let files = make_tree(&tree, 20, 5);
    let outside = base.join("outside");
    fs::create_dir_all(&outside).unwrap();
    env.add("_global", &watch, &["-r", "--types", "DELETE"]);
    let d = env.start(&[]);
    // A directory outside the tree gets cached by an event in it; the next
    // sweep evicts it: sweeps with eviction have run.
    fs::write(outside.join("f"), b"x").unwrap();
    wait_for("an eviction", Duration::from_secs(60), || {
        (env.metric("fsmon_dir_cache_evictions_total") >= 1.0).then_some(())
    });
    // Removed while the daemon is stopped: gone when it reads the events.
    d.while_stopped(|| {
        sh(&format!("rm -rf {}", tree.display()));
    });
    let evs = env.wait_events("_global", "the tree's DELETE", |e| {
        !find(e, "DELETE", &tree).is_empty()
    });
    let deleted = paths_of(&evs, "DELETE");
    let missing: Vec<&String> = files
        .iter()
        .filter(|f| !deleted.contains(f.as_str()))
        .take(5)
        .collect();
    assert!(
        missing.is_empty(),
        "DELETEs lost: {missing:?}\ndaemon:\n{}",
        d.stderr()
    );
    assert!(evs.iter().all(|e| e.get("unresolved").is_none()));
}

/// A blue/green deploy above a watched root: `mv app app.old; mv app.new
/// app` with `app/proj` watched. The tree moved in was never walked; its
/// later `rm -rf` (read after the directories are gone) must still be
/// logged with full paths.
#[test]
fn a_tree_swapped_in_above_the_watched_root_is_learned() {
    let env = Env::new();
    let base = env.dir.path().join("own-fs");
    let _own_fs = Mount::new(&["-t", "tmpfs", "-o", "size=256m", "fsmon-test"], &base);
    let root = base.join("app/proj");
    fs::create_dir_all(&root).unwrap();
    let files = make_tree(&base.join("app.new/proj/a"), 5, 4);
    env.add(
        "_global",
        &root,
        &["-r", "--types", "CREATE,CLOSE_WRITE,DELETE"],
    );
    let d = env.start(&[]);
    sh(&format!(
        "cd {} && mv app app.old && mv app.new app",
        base.display()
    ));
    // Once a write in the new tree is logged, the swap has been read.
    let anchor = root.join("anchor");
    fs::write(&anchor, b"x").unwrap();
    env.wait_written(&anchor, "the anchor");
    // Removed while the daemon is stopped: gone when it reads the events.
    d.while_stopped(|| {
        sh(&format!("rm -rf {}", root.join("a").display()));
    });
    let evs = env.wait_events("_global", "the DELETE of a", |e| {
        !find(e, "DELETE", &root.join("a")).is_empty()
    });
    let deleted = paths_of(&evs, "DELETE");
    let want: Vec<String> = files
        .iter()
        .map(|f| f.replace("/app.new/", "/app/"))
        .collect();
    let missing: Vec<&String> = want
        .iter()
        .filter(|f| !deleted.contains(f.as_str()))
        .take(5)
        .collect();
    assert!(
        missing.is_empty(),
        "DELETEs lost: {missing:?}\ndaemon:\n{}",
        d.stderr()
    );
}

/// With inode marks nothing above a watched root is marked: a root moved
/// elsewhere is seen only through its own MOVE_SELF, and a directory moved
/// out of the tree only through its MOVED_FROM. Events in them afterwards
/// are no longer in the tree: they must not be logged under the old paths.
#[test]
fn directories_moved_out_under_inode_marks_leave_the_tree() {
    let env = Env::new();
    let base = env.dir.path().join("own-fs");
    let _own_fs = Mount::new(&["-t", "tmpfs", "-o", "size=64m", "fsmon-test"], &base);
    let root = base.join("proj");
    let other = base.join("other");
    fs::create_dir_all(root.join("sub")).unwrap();
    fs::create_dir_all(&other).unwrap();
    fs::create_dir_all(base.join("away")).unwrap();
    for r in [&root, &other] {
        env.add("_global", r, &["-r", "--mark", "inode"]);
    }
    let d = env.start(&[]);
    sh(&format!(
        "cd {0} && mv proj/sub away/sub && echo x > away/sub/after-move-out && mv proj away/proj && echo x > away/proj/after-root-moved",
        base.display()
    ));
    let anchor = other.join("anchor");
    fs::write(&anchor, b"x").unwrap();
    let evs = env.wait_written(&anchor, "the anchor");
    let stale: Vec<&Value> = evs
        .iter()
        .filter(|e| e["path"].as_str().is_some_and(|p| p.contains("after-")))
        .collect();
    assert!(
        stale.is_empty(),
        "logged under old paths: {stale:?}\ndaemon:\n{}",
        d.stderr()
    );
    // The moves themselves are logged, as inotify reports them.
    assert!(
        !find(&evs, "MOVED_FROM", &root.join("sub")).is_empty(),
        "{evs:?}"
    );
}

/// A pending path whose filesystem is mounted after the daemon started (a
/// USB disk, a share mounted late at boot), and a watched directory with a
/// filesystem mounted on it: both are watched on the new filesystem (the
/// second is noticed through the mount table's poll).
#[test]
fn paths_on_a_filesystem_mounted_later_are_watched() {
    let env = Env::new();
    let mnt = env.dir.path().join("mnt");
    fs::create_dir_all(&mnt).unwrap();
    let root = mnt.join("data");
    // And a watched directory that exists, with a filesystem mounted on it.
    let over = env.dir.path().join("over");
    fs::create_dir_all(&over).unwrap();
    env.add("_global", &root, &["-r"]);
    env.add("_global", &over, &["-r"]);
    let d = env.start(&[]);
    let _fs = Mount::new(&["-t", "tmpfs", "-o", "size=16m", "fsmon-test"], &mnt);
    let _over_fs = Mount::new(&["-t", "tmpfs", "-o", "size=16m", "fsmon-test"], &over);
    fs::create_dir_all(&root).unwrap();
    // Until the daemon has marked a new filesystem, writes there are not
    // seen: write until one is logged.
    for f in [root.join("f"), over.join("g")] {
        fsmon_tests::wait_for_or(
            "a write on a newly mounted filesystem",
            Duration::from_secs(30),
            || {
                fs::write(&f, b"x").unwrap();
                (!find(&env.events("_global"), "CLOSE_WRITE", &f).is_empty()).then_some(())
            },
            || d.stderr(),
        );
    }
}

/// Trees removed beside a watched tree, on the same filesystem (so on the
/// same filesystem mark), made before the daemon started so that it has
/// never seen their directories: most are gone before fsmon reads their
/// events, and none of it may be logged, not even as an unresolved name.
#[test]
fn trees_removed_beside_the_watched_tree_leave_no_trace() {
    let env = Env::new();
    let base = env.dir.path().join("own-fs");
    let _own_fs = Mount::new(&["-t", "tmpfs", "-o", "size=256m", "fsmon-test"], &base);
    let watch = base.join("watched");
    fs::create_dir_all(&watch).unwrap();
    let beside = base.join("beside");
    sh(&format!(
        "i=0; while [ $i -lt 300 ]; do mkdir -p {0}/a$i/b/c && echo x > {0}/a$i/b/c/f; i=$((i+1)); done",
        beside.display()
    ));
    env.add("_global", &watch, &["-r"]);
    let d = env.start(&[]);
    sh(&format!("rm -rf {}", beside.display()));
    // An event in the watched tree after all of them: once it is logged,
    // every earlier event has been read.
    let anchor = watch.join("anchor");
    fs::write(&anchor, b"x").unwrap();
    let evs = env.wait_written(&anchor, "the anchor");
    let foreign: Vec<&Value> = evs
        .iter()
        .filter(|e| e["path"] != anchor.to_str().unwrap())
        .take(5)
        .collect();
    assert!(
        foreign.is_empty(),
        "events from outside the watched tree: {foreign:?}\ndaemon:\n{}",
        d.stderr()
    );
}

#[test]
fn renamed_directory_events_carry_the_new_path() {
    let env = Env::new();
    fs::create_dir_all(env.watch.join("old/sub")).unwrap();
    env.add("_global", &env.watch, &["-r"]);
    let _d = env.start(&[]);
    fs::rename(env.watch.join("old"), env.watch.join("new")).unwrap();
    fs::write(env.watch.join("new/sub/f"), b"1").unwrap();
    let evs = env.wait_events("_global", "write after rename", |e| {
        !find(e, "CLOSE_WRITE", &env.watch.join("new/sub/f")).is_empty()
    });
    assert_eq!(find(&evs, "MOVED_FROM", &env.watch.join("old")).len(), 1);
    assert_eq!(find(&evs, "MOVED_TO", &env.watch.join("new")).len(), 1);
    assert!(
        evs.iter()
            .all(|e| !e["path"].as_str().unwrap().contains("/old/")),
        "stale path"
    );
    // A directory moved in from outside the watched tree is learned too.
    let outside = env.dir.path().join("outside");
    fs::create_dir_all(outside.join("x/y")).unwrap();
    fs::rename(&outside, env.watch.join("moved-in")).unwrap();
    sh(&format!("rm -rf {}", env.watch.join("moved-in").display()));
    env.wait_events("_global", "delete of moved-in dir", |e| {
        !find(e, "DELETE", &env.watch.join("moved-in/x/y")).is_empty()
    });
}

#[test]
fn size_and_type_filters_apply_at_capture() {
    let env = Env::new();
    env.add(
        "_global",
        &env.watch,
        &["-r", "--types", "CLOSE_WRITE", "--size", ">=1KB"],
    );
    let _d = env.start(&[]);
    fs::write(env.watch.join("small"), vec![0u8; 100]).unwrap();
    fs::write(env.watch.join("big"), vec![0u8; 4096]).unwrap();
    let evs = env.wait_events("_global", "big file", |e| {
        !find(e, "CLOSE_WRITE", &env.watch.join("big")).is_empty()
    });
    assert!(
        find(&evs, "CLOSE_WRITE", &env.watch.join("small")).is_empty(),
        "size filter"
    );
    assert!(
        evs.iter().all(|e| e["event_type"] == "CLOSE_WRITE"),
        "type filter"
    );
    assert_eq!(
        find(&evs, "CLOSE_WRITE", &env.watch.join("big"))[0]["file_size"],
        4096
    );
}

/// `--types all` selects the 14 kinds; this checks the 13 that file
/// operations cause. FS_ERROR is left out: it needs a filesystem error
/// (ext4's /sys/fs/ext4/DEV/trigger_fs_error makes one), and fsmon reads
/// such an event but does not log it yet: its record names the filesystem,
/// not a path inside a watched tree.
#[test]
fn types_all_logs_the_thirteen_kinds_a_test_can_cause() {
    let env = Env::new();
    let exe = env.watch.join("mytrue");
    fs::copy("/bin/true", &exe).unwrap();
    let r = env.watch.join("r");
    fs::write(&r, b"data").unwrap();
    let outside = env.dir.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("in"), b"").unwrap();
    fs::write(env.watch.join("out"), b"").unwrap();
    env.add("_global", &env.watch, &["-r", "--types", "all"]);
    let _d = env.start(&[]);
    let w = |name: &str| env.watch.join(name);
    // OPEN, ACCESS, CLOSE_NOWRITE; then OPEN, MODIFY, CLOSE_WRITE; OPEN_EXEC.
    let _ = fs::read(&r).unwrap();
    fs::OpenOptions::new()
        .append(true)
        .open(&r)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"more"))
        .unwrap();
    assert!(Command::new(&exe).status().unwrap().success());
    // CREATE, ATTRIB; MOVED_FROM, MOVED_TO; DELETE. Moved in, moved out.
    fs::write(w("new"), b"").unwrap();
    sh(&format!("chmod 600 {}", w("new").display()));
    fs::rename(w("new"), w("renamed")).unwrap();
    fs::remove_file(w("renamed")).unwrap();
    fs::rename(outside.join("in"), w("in")).unwrap();
    fs::rename(w("out"), outside.join("out")).unwrap();
    // MOVE_SELF and DELETE_SELF: reported for directories (a plain file's
    // are its MOVED_* and DELETE).
    fs::create_dir(w("dir")).unwrap();
    fs::rename(w("dir"), w("moved-dir")).unwrap();
    fs::remove_dir(w("moved-dir")).unwrap();
    let wanted: [(&str, PathBuf); 15] = [
        ("OPEN", r.clone()),
        ("ACCESS", r.clone()),
        ("CLOSE_NOWRITE", r.clone()),
        ("MODIFY", r.clone()),
        ("CLOSE_WRITE", r.clone()),
        ("OPEN_EXEC", exe.clone()),
        ("CREATE", w("new")),
        ("ATTRIB", w("new")),
        ("MOVED_FROM", w("new")),
        ("MOVED_TO", w("renamed")),
        ("MOVE_SELF", w("moved-dir")),
        ("MOVED_TO", w("in")),
        ("MOVED_FROM", w("out")),
        ("DELETE", w("renamed")),
        ("DELETE_SELF", w("moved-dir")),
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    let seen = loop {
        let evs = env.events("_global");
        let missing: Vec<String> = wanted
            .iter()
            .filter(|(k, p)| find(&evs, k, p).is_empty())
            .map(|(k, p)| format!("{k} {}", p.display()))
            .collect();
        if missing.is_empty() {
            break evs;
        }
        assert!(
            Instant::now() < deadline,
            "not logged within 30 s: {missing:?}\n{evs:#?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let kinds: HashSet<&str> = seen
        .iter()
        .filter_map(|e| e["event_type"].as_str())
        .collect();
    assert_eq!(kinds.len(), 13, "{kinds:?}");
}

#[test]
fn five_hundred_short_lived_touches_are_all_attributed() {
    let env = Env::new();
    env.add("_global", &env.watch, &["--types", "CREATE"]);
    let _d = env.start(&[]);
    let mut expected = Vec::new();
    for i in 0..500 {
        let p = env.watch.join(format!("F_{i}"));
        let (_, pid) = sh_bg(&format!("touch {}", p.display()));
        expected.push((p, pid));
    }
    let evs = env.wait_events("_global", "500 creates", |e| {
        paths_of(e, "CREATE").len() >= 500
    });
    let mut right = 0;
    for (p, pid) in &expected {
        let c = find(&evs, "CREATE", p);
        if c.len() == 1 && c[0]["pid"] == *pid && c[0]["cmd"] == "touch" {
            right += 1;
        }
    }
    assert_eq!(
        right, 500,
        "every short-lived touch attributed with its own pid and name"
    );
}

#[test]
fn command_group_logs_only_descendants_with_their_chain() {
    let env = Env::new();
    let bin = env.dir.path().join("bin");
    fs::create_dir_all(&bin).unwrap();
    let script = bin.join("trackme");
    fs::write(&script, "#!/bin/sh\nsh -c \"touch $1\"\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    env.add("trackme", &env.watch, &["-r", "--types", "CREATE"]);
    let _d = env.start(&[]);
    let mine = env.watch.join("by-trackme");
    let other = env.watch.join("by-someone-else");
    assert!(Command::new(&script).arg(&mine).status().unwrap().success());
    sh(&format!("touch {}", other.display()));
    let marker = env.watch.join("marker");
    assert!(
        Command::new(&script)
            .arg(&marker)
            .status()
            .unwrap()
            .success()
    );
    let evs = env.wait_events("trackme", "tracked creates", |e| {
        !find(e, "CREATE", &marker).is_empty()
    });
    let e = find(&evs, "CREATE", &mine)[0];
    let chain = e["chain"].as_str().expect("chain present");
    let parts: Vec<&str> = chain.split(';').collect();
    assert!(
        parts[0].starts_with(&format!("{}|touch|root", e["pid"])),
        "{chain}"
    );
    assert!(parts.iter().any(|p| p.contains("|trackme|")), "{chain}");
    assert!(parts.last().unwrap().starts_with("1|"), "{chain}");
    assert!(find(&evs, "CREATE", &other).is_empty(), "not a descendant");
    assert!(
        !env.log_path("_global").exists(),
        "no _global group, no _global log"
    );
}

#[test]
fn planted_symlink_in_the_log_directory_is_refused() {
    let env = Env::new();
    fs::create_dir_all(&env.logs).unwrap();
    let victim = env.dir.path().join("victim");
    fs::write(&victim, "precious").unwrap();
    nix::unistd::chown(&victim, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    std::os::unix::fs::symlink(&victim, env.log_path("_global")).unwrap();
    env.add("_global", &env.watch, &["-r"]);
    env.add("other", &env.watch, &["-r"]);
    let d = env.start(&[]);
    fs::write(env.watch.join("f"), b"x").unwrap();
    wait_for(
        "the error about the symlink",
        Duration::from_secs(20),
        || d.stderr().contains("symbolic link").then_some(()),
    );
    assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
    assert_eq!(fs::metadata(&victim).unwrap().uid(), 65534, "not chowned");
    assert!(
        env.fsmon(&["health"]).status.success(),
        "daemon still serving"
    );
}

#[test]
fn partial_last_line_from_a_crash_is_closed_and_kept() {
    let env = Env::new();
    fs::create_dir_all(&env.logs).unwrap();
    let old = "{\"time\":\"2026-01-01T00:00:00+00:00\",\"event_type\":\"CREATE\",\"path\":\"/x\",\"pid\":1,\"cmd\":\"a\",\"user\":\"root\",\"file_size\":0,\"ppid\":0,\"tgid\":1}\n{\"time\":\"2026-01-01T00:00:01+00";
    fs::write(env.log_path("_global"), old).unwrap();
    env.add("_global", &env.watch, &["-r", "--types", "CREATE"]);
    let _d = env.start(&[]);
    fs::write(env.watch.join("after"), b"").unwrap();
    env.wait_events("_global", "new event", |e| {
        !find(e, "CREATE", &env.watch.join("after")).is_empty()
    });
    let text = fs::read_to_string(env.log_path("_global")).unwrap();
    assert!(text.starts_with(old), "nothing before the crash point lost");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[1], "{\"time\":\"2026-01-01T00:00:01+00",
        "fragment kept on its own line"
    );
    assert!(
        serde_json::from_str::<Value>(lines[2]).is_ok(),
        "new event on a fresh line"
    );
}

/// The overflow comes from the system's default queue size: `[fanotify]
/// queue_size` would set the global fs.fanotify.max_queued_events for an
/// instant, and a daemon of another test starting at that instant would
/// get the tiny queue too.
#[test]
fn kernel_queue_overflow_is_recorded_and_counted() {
    let env = Env::new();
    // A filesystem of its own: the burst overflows this daemon's queue, not
    // the queues of other tests' daemons watching /tmp's filesystem.
    let watch = env.dir.path().join("own-fs");
    let _own_fs = Mount::new(&["-t", "tmpfs", "-o", "size=256m", "fsmon-test"], &watch);
    env.add("_global", &watch, &["-r", "--types", "CREATE"]);
    env.add("second", &watch, &["-r", "--types", "CREATE"]);
    let d = env.start(&[]);
    // Freeze the daemon, then queue more events than the kernel holds.
    let queue = fsmon_tests::max_queued_events();
    let burst = queue.max(16384) + 2000;
    d.while_stopped(|| {
        for i in 0..burst {
            fs::write(watch.join(format!("burst{i}")), b"").unwrap();
        }
    });
    for group in ["_global", "second"] {
        // Written after the queue is read: up to 16k events first.
        let evs = wait_for("the overflow record", Duration::from_secs(120), || {
            let evs = env.events(group);
            evs.iter()
                .any(|x| x["event_type"] == "Q_OVERFLOW")
                .then_some(evs)
        });
        let rec = evs
            .iter()
            .find(|x| x["event_type"] == "Q_OVERFLOW")
            .unwrap();
        assert_eq!(rec["lost"], true);
        assert!(chrono::DateTime::parse_from_rfc3339(rec["time"].as_str().unwrap()).is_ok());
        let created = paths_of(&evs, "CREATE").len() as u64;
        assert!(created < burst, "{group}: {created} of {burst} logged");
    }
    let health: Value = serde_json::from_str(&env.fsmon_ok(&["health"])).unwrap();
    assert!(health["queue_overflows"].as_u64().unwrap() >= 1, "{health}");
    // And it keeps working.
    fs::write(watch.join("after-overflow"), b"").unwrap();
    env.wait_events("_global", "event after overflow", |e| {
        !find(e, "CREATE", &watch.join("after-overflow")).is_empty()
    });
}

/// A daemon started by hand; SIGKILLed if the test fails while it runs
/// (a live daemon keeps its user busy, and userdel would fail).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn logs_and_dirs_belong_to_the_sudo_user() {
    // Declared first, dropped last: after the daemon is gone.
    let user = TestUser::new("home");
    let uid = user.uid;
    let home = tempfile::Builder::new()
        .prefix("fsmon-home-")
        .tempdir_in("/tmp")
        .unwrap();
    let home_dir = home.path().join(&user.name);
    fs::create_dir(&home_dir).unwrap();
    nix::unistd::chown(
        &home_dir,
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(user.gid)),
    )
    .unwrap();
    // usermod takes the /etc/passwd lock, which other tests may hold.
    wait_for("usermod -d", Duration::from_secs(30), || {
        Command::new("usermod")
            .arg("-d")
            .arg(&home_dir)
            .arg(&user.name)
            .output()
            .ok()?
            .status
            .success()
            .then_some(())
    });
    let watch = home_dir.join("w");
    fs::create_dir_all(&watch).unwrap();
    // No --config: everything comes from the user's home.
    let run = |args: &[&str]| {
        Command::new(fsmon_tests::fsmon_bin())
            .args(args)
            .env("SUDO_UID", uid.to_string())
            .env_remove("FSMON_CONFIG")
            .output()
            .unwrap()
    };
    assert!(
        run(&["add", "_global", "--path", watch.to_str().unwrap(), "-r"])
            .status
            .success()
    );
    let store = home_dir.join(".local/share/fsmon/monitored.jsonl");
    assert!(store.exists());
    assert_eq!(fs::metadata(&store).unwrap().uid(), uid);
    let mut child = KillOnDrop(
        Command::new(fsmon_tests::fsmon_bin())
            .arg("daemon")
            .env("SUDO_UID", uid.to_string())
            .env_remove("FSMON_CONFIG")
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    fs::write(watch.join("f"), b"x").unwrap();
    let log = home_dir.join(".local/state/fsmon/_global_log.jsonl");
    wait_for("the user's log", Duration::from_secs(30), || {
        fs::write(watch.join("g"), b"y").ok()?;
        (!read_events(&log).is_empty()).then_some(())
    });
    // The user's socket, where the CLI looks for it (root's /run/fsmon,
    // not /tmp), owned by the user.
    let socket = PathBuf::from(format!("/run/fsmon/fsmon-{uid}.sock"));
    let meta = fs::symlink_metadata(&socket).expect("the user's socket while the daemon runs");
    assert!(meta.file_type().is_socket(), "{}", socket.display());
    assert_eq!(meta.uid(), uid, "socket owned by the user");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = wait_for("the daemon's exit", Duration::from_secs(60), || {
        child.0.try_wait().unwrap()
    });
    assert!(status.success());
    assert_eq!(
        fs::metadata(&log).unwrap().uid(),
        uid,
        "log owned by the user"
    );
    assert_eq!(
        fs::metadata(log.parent().unwrap()).unwrap().uid(),
        uid,
        "log dir owned by the user"
    );
    assert!(
        fs::symlink_metadata(&socket).is_err(),
        "socket removed on exit"
    );
}

/// `--sync-interval` runs sync rounds, each reported at debug level. (That
/// the round really calls fdatasync on the log is checked with strace in
/// cli.rs, `daemon_sync_interval_fdatasyncs_the_logs`.)
#[test]
fn sync_interval_reports_its_sync_rounds_at_debug_level() {
    let env = Env::new();
    env.add("_global", &env.watch, &["-r"]);
    let d = env.start_with_env(&["--sync-interval", "1"], &[("FSMON_LOG", "debug")]);
    fs::write(env.watch.join("f"), b"x").unwrap();
    wait_for("two sync rounds", Duration::from_secs(30), || {
        (d.stderr().matches("fdatasync of the logs done").count() >= 2).then_some(())
    });
    assert!(d.stop().success());
}

fn run_on(kind: &str) {
    let fs_ = LoopFs::new(kind, 400);
    let env = Env::new();
    let watch = fs_.mountpoint.join("w");
    fs::create_dir_all(watch.join("pre/a")).unwrap();
    for i in 0..50 {
        fs::write(watch.join(format!("pre/a/f{i}")), b"x").unwrap();
    }
    env.add("_global", &watch, &["-r"]);
    let _d = env.start(&[]);
    sh(&format!(
        "mkdir -p {0}/n/b && touch {0}/n/b/f && mv {0}/n {0}/m && echo 1 > {0}/m/b/g && rm -rf {0}/pre {0}/m",
        watch.display()
    ));
    let evs = env.wait_events("_global", &format!("{kind} events"), |e| {
        !find(e, "DELETE", &watch.join("m")).is_empty()
    });
    assert_eq!(
        find(&evs, "CREATE", &watch.join("n/b/f")).len(),
        1,
        "{kind}"
    );
    assert_eq!(
        find(&evs, "CLOSE_WRITE", &watch.join("m/b/g")).len(),
        1,
        "{kind}: new path after rename"
    );
    for i in 0..50 {
        assert_eq!(
            find(&evs, "DELETE", &watch.join(format!("pre/a/f{i}"))).len(),
            1,
            "{kind}: rm -rf of pre-existing tree"
        );
    }
    assert!(evs.iter().all(|e| e.get("unresolved").is_none()), "{kind}");
}

#[test]
fn works_on_ext4_loop() {
    run_on("ext4");
}

#[test]
fn works_on_xfs_loop() {
    run_on("xfs");
}

#[test]
fn works_on_btrfs_loop() {
    run_on("btrfs");
}

#[test]
fn delete_reports_the_last_size_seen_at_close_write() {
    let env = Env::new();
    env.add(
        "_global",
        &env.watch,
        &["-r", "--types", "CLOSE_WRITE,DELETE"],
    );
    let _d = env.start(&[]);
    let f = env.watch.join("sized");
    fs::write(&f, vec![b'x'; 1234]).unwrap();
    env.wait_written(&f, "the write");
    fs::remove_file(&f).unwrap();
    let evs = env.wait_events("_global", "the delete", |e| {
        !find(e, "DELETE", &f).is_empty()
    });
    assert_eq!(find(&evs, "DELETE", &f)[0]["file_size"], 1234);
}

/// FS_ERROR names a filesystem, not a file: it is logged at the watched
/// root on that filesystem with the error and the kernel's count (it used
/// to be read and dropped). ext4 reports one on demand through sysfs.
#[test]
fn fs_error_is_logged_at_the_watched_root_with_its_error() {
    let fs_ = LoopFs::new("ext4", 64);
    let tree = fs_.mountpoint.join("tree");
    fs::create_dir(&tree).unwrap();
    let env = Env::new();
    env.add("_global", &tree, &["-r", "--types", "all"]);
    let d = env.start(&[]);
    let dev = Path::new(fs_.device())
        .file_name()
        .unwrap()
        .to_str()
        .unwrap();
    fs::write(
        format!("/sys/fs/ext4/{dev}/trigger_fs_error"),
        "fsmon test: an error on purpose\n",
    )
    .unwrap();
    let evs = env.wait_events("_global", "an FS_ERROR record", |e| {
        e.iter().any(|v| v["event_type"] == "FS_ERROR")
    });
    let e = evs.iter().find(|v| v["event_type"] == "FS_ERROR").unwrap();
    assert_eq!(e["path"], tree.to_str().unwrap(), "{e}");
    // ext4_error() without an errno reports EFSCORRUPTED, which is EUCLEAN.
    assert_eq!(e["error"], "EUCLEAN", "{e}");
    assert!(e["error_count"].as_u64().unwrap() >= 1, "{e}");
    // Other events have neither field.
    fs::write(tree.join("after"), "x").unwrap();
    let evs = env.wait_events("_global", "the write after it", |e| {
        !find(e, "CLOSE_WRITE", &tree.join("after")).is_empty()
    });
    let w = find(&evs, "CLOSE_WRITE", &tree.join("after"))[0];
    assert!(
        w.get("error").is_none() && w.get("error_count").is_none(),
        "{w}"
    );
    assert!(d.stop().success());
}
