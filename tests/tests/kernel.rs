//! What depends on the running kernel's features, checked against the
//! kernel the tests run on (the host's, and Debian's 6.1 and 6.12 under
//! `cargo xtask vm-test`): a tree on tmpfs, a tree on overlayfs (watched
//! where the kernel can report its file handles, refused in one clear line
//! where it cannot), what the daemon says about the kernel at start, and the
//! /proc tracker that replaces the eBPF one where a kernel cannot load it.
use std::fs;

use fsmon_tests::{Env, Mount, assert_tree_captured, find};
use serde_json::Value;

#[test]
fn tree_on_tmpfs_is_captured_with_full_paths() {
    let env = Env::new();
    let watch = env.dir.path().join("tmpfs");
    let _m = Mount::new(&["-t", "tmpfs", "fsmon-test"], &watch);
    env.add("_global", &watch, &["-r"]);
    let _d = env.start(&[]);
    assert_tree_captured(&env, &watch);
}

/// Overlayfs refuses a filesystem mark with file handles; `auto` then puts
/// inode marks on the merged tree, which kernels that can encode overlayfs
/// file ids for fanotify (6.6+) accept: the tree (lower and upper layers)
/// is captured like any other, and `health` says it got inode marks and
/// why. Where the kernel refuses inode marks too (6.1), `add` must fail in
/// one line naming the path and the reason, the path must not be stored,
/// and the daemon must keep serving.
#[test]
fn overlayfs_is_captured_or_refused_in_one_clear_line() {
    let env = Env::new();
    let base = env.dir.path().join("ovl");
    for d in ["lower", "upper", "work"] {
        fs::create_dir_all(base.join(d)).unwrap();
    }
    // The layers on their own tmpfs: overlayfs refuses some upper
    // filesystems (the tests' /tmp may itself be an overlay).
    let _layers = Mount::new(&["-t", "tmpfs", "fsmon-test"], &base);
    for d in ["lower", "upper", "work", "merged"] {
        fs::create_dir_all(base.join(d)).unwrap();
    }
    fs::write(base.join("lower/from-lower"), b"x").unwrap();
    let opts = format!(
        "lowerdir={0}/lower,upperdir={0}/upper,workdir={0}/work",
        base.display()
    );
    let merged = base.join("merged");
    let _m = Mount::new(&["-t", "overlay", "overlay", "-o", &opts], &merged);
    let _d = env.start(&[]);
    let out = env.fsmon(&["add", "_global", "--path", merged.to_str().unwrap(), "-r"]);
    let health = || -> Value { serde_json::from_str(&env.fsmon_ok(&["health"])).unwrap() };
    if out.status.success() {
        let h = health();
        let p = h["paths"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["path"] == merged.to_str().unwrap())
            .unwrap()
            .clone();
        println!("overlayfs: watched: {p}");
        assert_eq!(p["mark"], "inode", "{h}");
        assert!(
            p["why"]
                .as_str()
                .unwrap_or("")
                .contains("filesystem mark refused"),
            "{p}"
        );
        // A file of the lower layer, modified and renamed through the
        // merged directory (copied up), then deleted.
        fs::write(merged.join("from-lower"), b"more").unwrap();
        fs::rename(merged.join("from-lower"), merged.join("renamed")).unwrap();
        fs::remove_file(merged.join("renamed")).unwrap();
        let evs = env.wait_events("_global", "the lower file's changes", |e| {
            !find(e, "DELETE", &merged.join("renamed")).is_empty()
        });
        assert_eq!(
            find(&evs, "CLOSE_WRITE", &merged.join("from-lower")).len(),
            1
        );
        assert_eq!(
            find(&evs, "MOVED_FROM", &merged.join("from-lower")).len(),
            1
        );
        assert_eq!(find(&evs, "MOVED_TO", &merged.join("renamed")).len(), 1);
        assert_tree_captured(&env, &merged);
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        println!("overlayfs: refused: {}", err.trim());
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(
            err.contains("cannot watch") && err.contains(merged.to_str().unwrap()),
            "names the path and says it cannot be watched: {err}"
        );
        assert!(
            err.contains("file handles") || err.contains("filesystem marks"),
            "says why: {err}"
        );
        let monitored = env.fsmon_ok(&["monitored"]);
        assert!(
            !monitored.contains(merged.to_str().unwrap()),
            "a refused path is not stored: {monitored}"
        );
        assert_eq!(health()["ok"], true, "the daemon keeps serving");
    }
}

/// On a kernel with BTF and the scheduler tracepoints (every kernel the
/// suite runs on), the eBPF tracker is in use and the daemon warns about no
/// missing kernel feature.
#[test]
fn the_kernel_has_what_fsmon_uses() {
    let env = Env::new();
    env.add("_global", &env.watch, &["-r"]);
    let d = env.start(&[]);
    let health: Value = serde_json::from_str(&env.fsmon_ok(&["health"])).unwrap();
    let err = d.stderr();
    // For the record (vm-test keeps it in the guest's console log).
    println!("kernel {}: the daemon said:\n{err}", kernel_release());
    assert_eq!(health["tracker"], "ebpf", "{err}");
    assert!(health["tracker_fallback"].is_null(), "{health}");
    assert!(
        !err.contains("FAN_REPORT_TARGET_FID") && !err.contains("falling back"),
        "a kernel feature is missing:\n{err}"
    );
}

/// The degraded path for kernels without what the eBPF tracker needs (no
/// BTF, no tracepoints): the /proc tracker, said once at start and in
/// `health`; processes still alive when their events are read are named.
#[test]
fn without_the_ebpf_tracker_the_proc_tracker_names_live_processes() {
    let env = Env::new();
    env.add("_global", &env.watch, &["-r", "--types", "CLOSE_WRITE"]);
    let d = env.start_with_env(&[], &[("FSMON_TRACKER", "procfs")]);
    let health: Value = serde_json::from_str(&env.fsmon_ok(&["health"])).unwrap();
    assert_eq!(health["tracker"], "procfs", "{health}");
    assert!(health["tracker_fallback"].is_string(), "{health}");
    let err = d.stderr();
    assert_eq!(
        err.matches("tracker procfs").count(),
        1,
        "said once, at start:\n{err}"
    );
    let f = env.watch.join("by-me");
    fs::write(&f, b"abc").unwrap();
    let evs = env.wait_events("_global", "the write", |e| {
        !find(e, "CLOSE_WRITE", &f).is_empty()
    });
    let w = find(&evs, "CLOSE_WRITE", &f)[0];
    assert_eq!(w["pid"], std::process::id(), "{w}");
    assert_eq!(w["user"], "root", "{w}");
    let me = fs::read_to_string("/proc/self/comm").unwrap();
    assert_eq!(w["cmd"], me.trim(), "{w}");
}

fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string()
}
