//! The eBPF process tracker against the real kernel (run as root).
use std::{
    fs,
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use fsmon::process::{ProcessTracker, TrackerConfig, TrackerKind, procfs};
use fsmon_tests::wait_for;

fn ebpf_tracker(grace: Duration) -> ProcessTracker {
    let cfg = TrackerConfig {
        exit_grace: grace,
        force_procfs: false,
        ..Default::default()
    };
    let t = ProcessTracker::start(&cfg).expect("start tracker");
    assert_eq!(
        t.kind(),
        TrackerKind::Ebpf,
        "eBPF tracker did not load: {:?}",
        t.fallback_reason()
    );
    t
}

/// Runs `sh -c 'touch F & echo $!; wait'` and returns (sh pid, touch pid)
/// once both have exited.
fn sh_touch(dir: &std::path::Path) -> (u32, u32) {
    let out = Command::new("sh")
        .arg("-c")
        .arg("touch \"$1\" & echo $!; wait")
        .arg("sh")
        .arg(dir.join("F"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn sh");
    let sh_pid = out.id();
    let output = out.wait_with_output().expect("wait sh");
    assert!(output.status.success());
    let touch_pid: u32 = String::from_utf8(output.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(dir.join("F").exists(), "touch ran");
    (sh_pid, touch_pid)
}

fn comm(t: &mut ProcessTracker, pid: u32) -> String {
    let r = t
        .record(pid)
        .unwrap_or_else(|| panic!("no record for {pid}"));
    String::from_utf8_lossy(r.comm_bytes()).into_owned()
}

#[test]
fn short_lived_touch_is_attributed_after_exit() {
    let mut t = ebpf_tracker(Duration::from_secs(60));
    let dir = tempfile::tempdir().unwrap();
    let (sh_pid, touch_pid) = sh_touch(dir.path());
    // Both are gone from /proc now; only the map remembers them.
    assert!(procfs::read_process(touch_pid).is_none() || comm(&mut t, touch_pid) == "touch");
    let rec = t
        .peek(touch_pid)
        .expect("touch still in the map after exit");
    assert_eq!(String::from_utf8_lossy(rec.comm_bytes()), "touch");
    assert_eq!(rec.ppid, sh_pid);
    assert_ne!(rec.exit_ns, 0, "exit is stamped");
    let chain = t.chain(touch_pid);
    let parts: Vec<&str> = chain.split(';').collect();
    assert!(
        parts[0].starts_with(&format!("{touch_pid}|touch|")),
        "{chain}"
    );
    assert!(parts[1].starts_with(&format!("{sh_pid}|sh|")), "{chain}");
    let me = std::process::id();
    assert!(parts[2].starts_with(&format!("{me}|")), "{chain}");
    assert!(
        parts.last().unwrap().starts_with("1|"),
        "chain ends at pid 1: {chain}"
    );
    assert!(parts.last().unwrap().ends_with("|root"), "{chain}");
}

#[test]
fn chain_survives_exit_of_the_middle_process() {
    let mut t = ebpf_tracker(Duration::from_secs(60));
    // sh starts sleep in the background and exits at once: sleep is
    // reparented, but the chain keeps the parent it was forked from.
    let out = Command::new("sh")
        .args(["-c", "sleep 30 >/dev/null 2>&1 & echo $!"])
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    let sleep_pid: u32 = String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The child may not have exec'd sleep yet (forked by sh, still "sh");
    // /proc shows the new name a moment before the exec tracepoint has run
    // (a long moment in an emulated guest), so wait for the tracker's view.
    let chain = wait_for(
        "the tracker to see sleep's exec",
        Duration::from_secs(10),
        || {
            let chain = t.chain(sleep_pid);
            chain
                .starts_with(&format!("{sleep_pid}|sleep|"))
                .then_some(chain)
        },
    );
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(sleep_pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    let parts: Vec<&str> = chain.split(';').collect();
    assert!(
        parts[0].starts_with(&format!("{sleep_pid}|sleep|")),
        "{chain}"
    );
    assert!(parts[1].contains("|sh|"), "fork-time parent kept: {chain}");
    assert!(
        parts[2].starts_with(&format!("{}|", std::process::id())),
        "{chain}"
    );
    assert!(parts.last().unwrap().starts_with("1|"), "{chain}");
}

/// The chain /proc gives for a live pid, in the seed's format.
fn proc_chain(pid: u32) -> String {
    let mut out = Vec::new();
    let mut p = pid;
    loop {
        let r = procfs::read_process(p).expect("live ancestor");
        let user = fsmon::process::users::lookup(r.uid);
        out.push(format!(
            "{p}|{}|{user}",
            String::from_utf8_lossy(r.comm_bytes())
        ));
        if p == 1 || r.ppid == 0 {
            break;
        }
        p = r.ppid;
    }
    out.join(";")
}

/// Starts a 5-level tree of lvl.sh scripts ending in `sleep`; returns the
/// top child and the leaf pid.
fn five_level_tree(dir: &std::path::Path) -> (std::process::Child, u32) {
    let script = dir.join("lvl.sh");
    fs::write(
        &script,
        "#!/bin/sh\nif [ \"$1\" -gt 1 ]; then \"$0\" $(($1 - 1)) \"$2\" & wait; else echo $$ > \"$2.tmp\"; mv \"$2.tmp\" \"$2\"; exec sleep 600; fi\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    let leaf_file = dir.join("leaf");
    let top = Command::new(&script)
        .arg("5")
        .arg(&leaf_file)
        .spawn()
        .unwrap();
    let leaf: u32 = wait_for("the tree's leaf", Duration::from_secs(10), || {
        fs::read_to_string(&leaf_file).ok()?.trim().parse().ok()
    });
    // The leaf has exec'd sleep once its comm says so.
    wait_for("leaf exec", Duration::from_secs(10), || {
        (procfs::read_process(leaf)?.comm_bytes() == b"sleep").then_some(())
    });
    (top, leaf)
}

fn kill_tree(mut top: std::process::Child, leaf: u32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(leaf as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    let _ = top.kill();
    let _ = top.wait();
}

#[test]
fn tree_started_before_the_tracker_resolves() {
    let dir = tempfile::tempdir().unwrap();
    let (top, leaf) = five_level_tree(dir.path());
    let expected = proc_chain(leaf);
    let mut t = ebpf_tracker(Duration::from_secs(60));
    let chain = t.chain(leaf);
    kill_tree(top, leaf);
    assert_eq!(chain, expected);
    let parts: Vec<&str> = chain.split(';').collect();
    assert!(parts[0].contains("|sleep|"));
    // Five levels: four scripts and the leaf that exec'd sleep.
    for p in &parts[1..5] {
        assert!(p.contains("|lvl.sh|"), "five levels: {chain}");
    }
    assert!(
        parts[5].starts_with(&format!("{}|", std::process::id())),
        "{chain}"
    );
}

#[test]
fn procfs_fallback_gives_the_same_chain() {
    let dir = tempfile::tempdir().unwrap();
    let (top, leaf) = five_level_tree(dir.path());
    let mut e = ebpf_tracker(Duration::from_secs(60));
    let cfg = TrackerConfig {
        force_procfs: true,
        ..Default::default()
    };
    let mut p = ProcessTracker::start(&cfg).unwrap();
    assert_eq!(p.kind(), TrackerKind::Procfs);
    let (ce, cp) = (e.chain(leaf), p.chain(leaf));
    kill_tree(top, leaf);
    assert_eq!(ce, cp);
    assert!(cp.split(';').count() >= 7, "{cp}");
}

#[test]
fn procfs_fallback_via_environment() {
    // SAFETY: this test binary's other tests set force_procfs explicitly.
    let cfg = TrackerConfig {
        force_procfs: true,
        ..Default::default()
    };
    let mut p = ProcessTracker::start(&cfg).unwrap();
    assert_eq!(p.kind(), TrackerKind::Procfs);
    assert!(p.fallback_reason().is_some());
    let me = std::process::id();
    assert_eq!(p.chain(me), proc_chain(me));
}

#[test]
fn threads_add_no_entries() {
    let mut t = ebpf_tracker(Duration::from_secs(60));
    let mut child = Command::new(env!("CARGO_BIN_EXE_fsmon-testkit"))
        .args(["threads", "1000"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    let tids: Vec<u32> = fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&tid| tid != pid)
        .collect();
    assert!(tids.len() >= 1000, "{} threads", tids.len());
    let in_map = tids.iter().filter(|&&tid| t.peek(tid).is_some()).count();
    let own = t.peek(pid);
    child.stdin.take().unwrap().write_all(b"").unwrap();
    let _ = child.wait();
    assert_eq!(in_map, 0, "thread ids must not be keys of the process map");
    let own = own.expect("the process itself has its entry");
    assert_eq!(String::from_utf8_lossy(own.comm_bytes()), "fsmon-testkit");
}

#[test]
fn exited_entries_are_collected_after_the_grace_period() {
    let grace = Duration::from_secs(2);
    let mut t = ebpf_tracker(grace);
    let dir = tempfile::tempdir().unwrap();
    let (sh_pid, touch_pid) = sh_touch(dir.path());
    let exited = Instant::now();
    assert!(t.peek(touch_pid).is_some());
    t.collect_exited(u64::MAX);
    assert!(t.peek(touch_pid).is_some(), "kept during the grace period");
    assert!(t.peek(sh_pid).is_some(), "kept during the grace period");
    wait_for(
        "collection of touch and sh",
        Duration::from_secs(20),
        || {
            t.collect_exited(u64::MAX);
            (t.peek(touch_pid).is_none() && t.peek(sh_pid).is_none()).then_some(())
        },
    );
    assert!(exited.elapsed() >= grace - Duration::from_millis(100));
}

#[test]
fn nothing_is_collected_before_the_events_are_drained() {
    let mut t = ebpf_tracker(Duration::from_millis(1));
    let dir = tempfile::tempdir().unwrap();
    let (_, touch_pid) = sh_touch(dir.path());
    let exit_ns = t.peek(touch_pid).unwrap().exit_ns;
    // The caller has drained events only up to before the exit: keep it.
    std::thread::sleep(Duration::from_millis(5));
    t.collect_exited(exit_ns - 1);
    assert!(t.peek(touch_pid).is_some());
    t.collect_exited(u64::MAX);
    assert!(t.peek(touch_pid).is_none());
}

#[test]
fn tracked_command_marks_descendants() {
    let mut t = ebpf_tracker(Duration::from_secs(60));
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("trackme");
    fs::write(
        &script,
        "#!/bin/sh\nsh -c 'touch \"$1\" & echo $!; wait' sh \"$1\"\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    t.track_command("trackme").unwrap();
    let out = Command::new(&script)
        .arg(dir.path().join("G"))
        .output()
        .unwrap();
    let touch_pid: u32 = String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(t.descends_from(touch_pid, "trackme"));
    let (_, other) = sh_touch(dir.path());
    assert!(!t.descends_from(other, "trackme"));
    let chain = t.chain(touch_pid);
    assert!(chain.contains("|trackme|"), "{chain}");
    t.untrack_command("trackme").unwrap();
    assert!(!t.descends_from(touch_pid, "trackme"));
    assert_eq!(
        t.peek(touch_pid).unwrap().tracked,
        0,
        "bit cleared for reuse"
    );
}

#[test]
fn impossible_capacity_is_an_error() {
    let cfg = TrackerConfig {
        map_capacity: 3,
        ..Default::default()
    };
    let err = ProcessTracker::start(&cfg)
        .err()
        .expect("rejected")
        .to_string();
    assert!(err.contains("capacity"), "{err}");
}
