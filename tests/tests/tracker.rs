//! The eBPF process tracker against the real kernel (run as root).
use std::{
    fs,
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use fsmon::process::{ProcessTracker, TrackerConfig, TrackerKind, procfs};
use fsmon_tests::{Env, find, fsmon_bin, testkit_bin, wait_for};

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

#[test]
fn short_lived_touch_is_attributed_after_exit() {
    // Through the real daemon: the event of a `touch` that is gone by the
    // time the event is read names the touch, its parent and its chain.
    let env = Env::new();
    env.add("_global", &env.watch, &["-r", "--types", "CREATE"]);
    let d = env.start(&[]);
    assert_eq!(env.health()["tracker"], "ebpf", "{}", d.stderr());
    let (sh_pid, touch_pid) = sh_touch(&env.watch);
    assert!(
        procfs::read_process(touch_pid).is_none(),
        "touch has exited: only the map remembers it"
    );
    let f = env.watch.join("F");
    let evs = env.wait_events("_global", "the touch's CREATE", |e| {
        !find(e, "CREATE", &f).is_empty()
    });
    let c = find(&evs, "CREATE", &f)[0];
    assert_eq!(c["pid"], touch_pid, "{c}");
    assert_eq!(c["cmd"], "touch", "{c}");
    assert_eq!(c["ppid"], sh_pid, "{c}");
    assert_eq!(c["user"], "root", "{c}");
    assert!(d.stop().success());

    // And the map itself, directly.
    let mut t = ebpf_tracker(Duration::from_secs(60));
    let dir = tempfile::tempdir().unwrap();
    let (sh_pid, touch_pid) = sh_touch(dir.path());
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

/// The pids of a chain's first `n` entries.
fn chain_pids(chain: &str, n: usize) -> Vec<u32> {
    chain
        .split(';')
        .take(n)
        .map(|p| p.split('|').next().unwrap().parse().unwrap())
        .collect()
}

/// Processes that existed before the tracker loaded are in its map (seeded
/// from /proc at start, not looked up later through `record`'s /proc
/// fallback), with their parents as they were: when the middle of the tree
/// exits and /proc reparents its child, the chain still names it.
#[test]
fn tree_started_before_the_tracker_resolves() {
    let dir = tempfile::tempdir().unwrap();
    let (top, leaf) = five_level_tree(dir.path());
    let expected = proc_chain(leaf);
    // The leaf and its four lvl.sh ancestors.
    let tree = chain_pids(&expected, 5);
    let mut t = ebpf_tracker(Duration::from_secs(60));
    // `peek` has no /proc fallback: what it finds was seeded.
    let unseeded: Vec<u32> = tree
        .iter()
        .copied()
        .filter(|&p| t.peek(p).is_none())
        .collect();
    if !unseeded.is_empty() {
        kill_tree(top, leaf);
        panic!("not seeded: {unseeded:?} of {tree:?}");
    }
    // The middle (level 3) exits; its parent's `wait` returns, so the
    // levels above it exit too. The leaf and level 2 keep running. No
    // chain was asked for before: every record used below is the seeded one.
    let middle = tree[2];
    kill(middle);
    wait_for(
        "the middle's exit in the map",
        Duration::from_secs(30),
        || (t.peek(middle)?.exit_ns != 0).then_some(()),
    );
    // exit_ns is stamped at sched_process_exit, before exit_notify()
    // reparents the children: wait until /proc shows level 2 reparented.
    let reparented = wait_for(
        "level 2 reparented in /proc",
        Duration::from_secs(30),
        || {
            let ppid = procfs::read_process(tree[1])?.ppid;
            (ppid != middle).then_some(ppid)
        },
    );
    let chain = t.chain(leaf);
    kill_tree(top, leaf);
    assert_ne!(reparented, middle, "/proc has reparented level 2");
    assert_eq!(chain, expected, "fork-time parents kept after the exit");
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

/// The eBPF tracker's chain, from what the kernel programs recorded at fork
/// and exec, equals the /proc tracker's for a live tree.
#[test]
fn procfs_fallback_gives_the_same_chain() {
    // The tracker first, then the tree: its records come from the kernel
    // programs, not from seeding or the /proc fallback.
    let mut e = ebpf_tracker(Duration::from_secs(60));
    let dir = tempfile::tempdir().unwrap();
    let (top, leaf) = five_level_tree(dir.path());
    let tree = chain_pids(&proc_chain(leaf), 5);
    // Recorded by the exec program (seeded records have no exec time); the
    // leaf's exec of sleep may reach the map a moment after /proc shows it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let from_kernel = loop {
        let recs: Option<Vec<_>> = tree.iter().map(|&p| e.peek(p)).collect();
        let ok =
            recs.is_some_and(|r| r.iter().all(|r| r.exec_ns != 0) && r[0].comm_bytes() == b"sleep");
        if ok || Instant::now() > deadline {
            break ok;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let cfg = TrackerConfig {
        force_procfs: true,
        ..Default::default()
    };
    let mut p = ProcessTracker::start(&cfg).unwrap();
    assert_eq!(p.kind(), TrackerKind::Procfs);
    let (ce, cp) = (e.chain(leaf), p.chain(leaf));
    kill_tree(top, leaf);
    if !from_kernel {
        let recs: Vec<_> = tree.iter().map(|&p| (p, e.peek(p))).collect();
        panic!("the tree is not in the map as the kernel recorded it: {recs:?}");
    }
    assert_eq!(ce, cp);
    assert!(cp.split(';').count() >= 7, "{cp}");
}

/// The /proc tracker chosen through the real daemon, by `FSMON_TRACKER`
/// and by `--tracker`: health says so, and a live writer is attributed.
#[test]
fn procfs_fallback_via_environment_and_flag() {
    for how in ["env", "flag"] {
        let env = Env::new();
        env.add("_global", &env.watch, &["-r", "--types", "CREATE"]);
        let d = match how {
            "env" => env.start_with_env(&[], &[("FSMON_TRACKER", "procfs")]),
            _ => env.start(&["--tracker", "procfs"]),
        };
        let h = env.health();
        assert_eq!(h["tracker"], "procfs", "{how}: {h}");
        assert!(
            h["tracker_fallback"]
                .as_str()
                .is_some_and(|r| !r.is_empty()),
            "{how}: {h}"
        );
        // A writer that is still alive when its event is read: this test.
        let f = env.watch.join(format!("by-{how}"));
        fs::write(&f, b"x").unwrap();
        let evs = env.wait_events("_global", "the test's own CREATE", |e| {
            !find(e, "CREATE", &f).is_empty()
        });
        let c = find(&evs, "CREATE", &f)[0];
        assert_eq!(c["pid"], std::process::id(), "{how}: {c}");
        let me = procfs::read_process(std::process::id()).unwrap();
        assert_eq!(
            c["cmd"].as_str().unwrap().as_bytes(),
            me.comm_bytes(),
            "{how}: {c}"
        );
        assert!(d.stop().success());
    }
}

#[test]
fn threads_add_no_entries() {
    let t = ebpf_tracker(Duration::from_secs(60));
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
    // Long enough that a test thread stalled on a loaded machine still
    // checks within it.
    let grace = Duration::from_secs(10);
    let mut t = ebpf_tracker(grace);
    let dir = tempfile::tempdir().unwrap();
    let (sh_pid, touch_pid) = sh_touch(dir.path());
    assert!(t.peek(touch_pid).is_some());
    t.collect_exited(u64::MAX);
    let (touch, sh) = (t.peek(touch_pid), t.peek(sh_pid));
    assert!(touch.is_some(), "kept during the grace period");
    assert!(sh.is_some(), "kept during the grace period");
    wait_for(
        "collection of touch and sh",
        Duration::from_secs(60),
        || {
            t.collect_exited(u64::MAX);
            (t.peek(touch_pid).is_none() && t.peek(sh_pid).is_none()).then_some(())
        },
    );
    // Not before the grace period: measured from the exits the kernel
    // stamped, on the same clock.
    let collected_by = fsmon::process::boot_ns();
    for rec in [touch.unwrap(), sh.unwrap()] {
        assert_ne!(rec.exit_ns, 0, "{rec:?}");
        assert!(
            collected_by - rec.exit_ns >= grace.as_nanos() as u64,
            "pid {} collected {} ms after its exit, grace {grace:?}",
            rec.tgid,
            (collected_by - rec.exit_ns) / 1_000_000
        );
    }
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
    // The untracked bit is not handed to the next command while records
    // still carry it.
    t.track_command("othercmd").unwrap();
    assert!(!t.descends_from(touch_pid, "othercmd"));
}

fn script(dir: &std::path::Path, name: &str, body: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    p
}

fn comm_is(pid: u32, name: &[u8]) -> Option<()> {
    (procfs::read_process(pid)?.comm_bytes() == name).then_some(())
}

fn kill(pid: u32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// A command that was running before it was tracked: it and what it starts
/// from then on are tracked (the bits the daemon adds reach the kernel's
/// fork program).
#[test]
fn already_running_command_is_tracked_from_then_on() {
    let mut t = ebpf_tracker(Duration::from_secs(60));
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    let out = dir.path().join("child");
    let s = script(
        dir.path(),
        "trackold",
        &format!(
            "while [ ! -e {go} ]; do sleep 0.05; done\nsleep 30 &\necho $! > {out}.tmp; mv {out}.tmp {out}\nwait",
            go = go.display(),
            out = out.display()
        ),
    );
    let mut running = Command::new(&s).spawn().unwrap();
    let pid = running.id();
    wait_for("trackold runs", Duration::from_secs(10), || {
        comm_is(pid, b"trackold")
    });
    t.track_command("trackold").unwrap();
    assert!(
        t.descends_from(pid, "trackold"),
        "the running command itself"
    );
    fs::write(&go, b"").unwrap();
    let child: u32 = wait_for("its child", Duration::from_secs(10), || {
        fs::read_to_string(&out).ok()?.trim().parse().ok()
    });
    wait_for("the child execs sleep", Duration::from_secs(10), || {
        comm_is(child, b"sleep")
    });
    let tracked = t.descends_from(child, "trackold");
    kill(child);
    let _ = running.wait();
    assert!(tracked, "a child forked after tracking began");
}

/// A tracked process that execs something else stays tracked.
#[test]
fn re_exec_stays_tracked() {
    let mut t = ebpf_tracker(Duration::from_secs(60));
    let dir = tempfile::tempdir().unwrap();
    t.track_command("trackexec").unwrap();
    let s = script(dir.path(), "trackexec", "exec sleep 30");
    let mut c = Command::new(&s).spawn().unwrap();
    let pid = c.id();
    wait_for("the exec of sleep", Duration::from_secs(10), || {
        comm_is(pid, b"sleep")
    });
    let rec = t.record(pid).expect("record");
    let tracked = t.descends_from(pid, "trackexec");
    let _ = c.kill();
    let _ = c.wait();
    assert_eq!(rec.comm_bytes(), b"sleep", "the name follows the exec");
    assert!(tracked, "still tracked after exec'ing something else");
}

/// A tracked process whose parent (the tracked command) exits stays
/// tracked, and its chain still names the parent it was forked from.
#[test]
fn tracked_process_whose_parent_exits_stays_tracked() {
    let mut t = ebpf_tracker(Duration::from_secs(60));
    let dir = tempfile::tempdir().unwrap();
    t.track_command("trackpar").unwrap();
    let s = script(
        dir.path(),
        "trackpar",
        "sleep 30 >/dev/null 2>&1 &\necho $!",
    );
    let out = Command::new(&s).output().unwrap();
    let child: u32 = String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    wait_for("the orphan runs sleep", Duration::from_secs(10), || {
        comm_is(child, b"sleep")
    });
    // The parent is gone and collected as far as the grace allows.
    t.collect_exited(u64::MAX);
    let tracked = t.descends_from(child, "trackpar");
    let chain = t.chain(child);
    kill(child);
    assert!(tracked, "tracked after its parent exited");
    let parts: Vec<&str> = chain.split(';').collect();
    assert!(parts[1].contains("|trackpar|"), "{chain}");
    assert!(!chain.contains("|?|?"), "{chain}");
}

/// `exec` from a thread that is not the leader: the process keeps its pid
/// (the leader's), and its record gets the new name.
#[test]
fn exec_from_a_non_leader_thread_updates_the_name() {
    let t = ebpf_tracker(Duration::from_secs(60));
    let sleep = ["/usr/bin/sleep", "/bin/sleep"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap();
    let mut c = Command::new(testkit_bin())
        .args(["execthread", sleep, "30"])
        .spawn()
        .unwrap();
    let pid = c.id();
    wait_for("the thread's exec", Duration::from_secs(10), || {
        comm_is(pid, b"sleep")
    });
    let rec = t.peek(pid);
    let _ = c.kill();
    let _ = c.wait();
    let rec = rec.expect("the process is in the map under its pid");
    assert_eq!(String::from_utf8_lossy(rec.comm_bytes()), "sleep");
    assert_ne!(rec.exec_ns, 0, "the exec was seen");
}

/// Removing a tracked command and adding it again: processes tracked the
/// first time are tracked again (retroactively), nothing else picks up the
/// old bit, and a command added meanwhile does not inherit it.
#[test]
fn remove_and_re_add_leaves_no_stale_bits() {
    let mut t = ebpf_tracker(Duration::from_secs(60));
    let dir = tempfile::tempdir().unwrap();
    t.track_command("trackre").unwrap();
    let out = dir.path().join("child");
    let s = script(
        dir.path(),
        "trackre",
        &format!(
            "sleep 30 &\necho $! > {o}.tmp; mv {o}.tmp {o}\nwait",
            o = out.display()
        ),
    );
    let mut top = Command::new(&s).spawn().unwrap();
    let child: u32 = wait_for("its child", Duration::from_secs(10), || {
        fs::read_to_string(&out).ok()?.trim().parse().ok()
    });
    wait_for("sleep", Duration::from_secs(10), || {
        comm_is(child, b"sleep")
    });
    let before = t.descends_from(child, "trackre");
    t.untrack_command("trackre").unwrap();
    let removed = t.descends_from(child, "trackre");
    t.track_command("another").unwrap();
    let other = t.descends_from(child, "another");
    t.track_command("trackre").unwrap();
    let again = t.descends_from(child, "trackre");
    // An unrelated process started now is not tracked by either.
    let (_, unrelated) = sh_touch(dir.path());
    let unrelated_tracked =
        t.descends_from(unrelated, "trackre") || t.descends_from(unrelated, "another");
    kill(child);
    let _ = top.kill();
    let _ = top.wait();
    assert!(before, "tracked at first");
    assert!(!removed, "not tracked once removed");
    assert!(!other, "the removed command's bit went to another command");
    assert!(again, "tracked again once re-added");
    assert!(!unrelated_tracked);
}

/// In a child pid namespace the map's host pids would not match the pids
/// fanotify reports: the daemon refuses to start, with one line.
#[test]
fn daemon_refuses_to_start_in_a_child_pid_namespace() {
    let env = Env::new();
    let out = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc"])
        .arg(fsmon_bin())
        .arg("--config")
        .arg(&env.config)
        .arg("daemon")
        .env_remove("SUDO_UID")
        .stdin(Stdio::null())
        .output()
        .expect("unshare");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {err}");
    assert!(lines[0].contains("initial pid namespace"), "{err}");
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

/// Fork churn with the tracker running: afterwards, every record in the
/// live map is a running process (or an exited one kept for its children):
/// no exit was missed. It failed while the fork program was attached before
/// the exit program (a process forked and gone between the two attachments
/// kept a live record nothing removed, seen as "missed exits" whenever
/// another tracker started at that moment); the exit program now goes first.
#[test]
fn no_live_record_outlives_its_process() {
    let mut t = ebpf_tracker(Duration::from_secs(60));
    let dir = tempfile::tempdir().unwrap();
    let forkers: Vec<_> = (0..2)
        .map(|k| {
            let d = dir.path().join(format!("k{k}"));
            fs::create_dir_all(&d).unwrap();
            Command::new(testkit_bin())
                .arg("churn")
                .arg(&d)
                .args(["5000", "100"])
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut f in forkers {
        assert!(f.wait().unwrap().success());
    }
    // Exits the kernel skipped (counted) are reconciled here.
    t.collect_exited(0);
    let losses = t.losses();
    let stale = t.live_records_without_process();
    let shown: Vec<String> = stale
        .iter()
        .map(|r| {
            format!(
                "{}|{}|ppid {}|start {}|exec {}|proc {}",
                r.tgid,
                String::from_utf8_lossy(r.comm_bytes()),
                r.ppid,
                r.start_ns,
                r.exec_ns,
                fs::read_to_string(format!("/proc/{}/stat", r.tgid)).unwrap_or_default()
            )
        })
        .collect();
    assert!(
        stale.is_empty(),
        "live records of gone processes: {shown:?} ({losses:?}; kernel counters \
         [live inserted, live removed, refused, exit missed, exited refused, ring full, exits, \
         exits unrecorded, forks] {:?})",
        t.kernel_counters()
    );
}

/// A live record whose exit was missed (here: planted for a pid that does
/// not exist) is moved out by the reconciliation and then collected like
/// any exit.
#[test]
fn reconciliation_moves_records_of_gone_processes_out() {
    let mut t = ebpf_tracker(Duration::from_millis(1));
    // Above pid_max on any machine (4,194,304): never a running process.
    let pid = 4_194_400;
    let rec = fsmon_common::ProcRecord {
        tgid: pid,
        ppid: 1,
        start_ns: fsmon::process::boot_ns() - 1_000_000_000,
        comm: fsmon_common::comm_key(b"ghost"),
        ..Default::default()
    };
    assert!(t.insert_for_bench(&rec));
    let in_live = |t: &ProcessTracker| {
        t.live_records_without_process()
            .iter()
            .any(|r| r.tgid == pid)
    };
    assert!(in_live(&t), "the ghost is a live record of a gone process");
    assert!(t.reconcile_now() >= 1);
    let moved = t.peek(pid).expect("still known, as an exited process");
    assert_ne!(moved.exit_ns, 0, "stamped as exited");
    // The ghost left the live map. (Not checked by the map's size: on a
    // busy machine other processes fork and exit meanwhile.)
    assert!(!in_live(&t), "the ghost is still a live record");
    wait_for("its collection", Duration::from_secs(20), || {
        t.collect_exited(u64::MAX);
        t.peek(pid).is_none().then_some(())
    });
}
