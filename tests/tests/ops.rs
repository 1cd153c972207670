//! Operating fsmon: the disk guard and systemd readiness, with the real
//! daemon.
use std::{
    fs,
    io::{BufRead, BufReader, Write},
    os::unix::net::{UnixDatagram, UnixStream},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use fsmon_tests::{Env, LoopFs, fsmon_bin, wait_for};
use serde_json::Value;

fn count(text: &str, needle: &str) -> usize {
    text.lines().filter(|l| l.contains(needle)).count()
}

/// One request on the control socket: one connect, no retry.
fn request(socket: &Path, req: &str) -> std::io::Result<Value> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(format!("{req}\n").as_bytes())?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    serde_json::from_str(&line).map_err(std::io::Error::other)
}

/// The daemon's `fsmon_log_disk_free_bytes` gauge.
fn disk_free_gauge(env: &Env) -> u64 {
    let m = request(&env.socket, r#"{"op":"metrics"}"#).expect("metrics");
    let text = m["text"].as_str().expect("metrics text");
    text.lines()
        .find_map(|l| l.strip_prefix("fsmon_log_disk_free_bytes "))
        .unwrap_or_else(|| panic!("no fsmon_log_disk_free_bytes:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

/// Free bytes on a filesystem, as the disk guard computes them.
fn statvfs_free(dir: &Path) -> u64 {
    let st = nix::sys::statvfs::statvfs(dir).unwrap();
    st.blocks_available() * st.fragment_size()
}

/// Waits until the disk guard has run `n` more checks. The gauge is set
/// only by a check, so a value different from the one last read comes from
/// a check made after that reading; each round takes 1 MiB more of the log
/// filesystem so that the next check does give a different value.
fn wait_for_disk_checks(env: &Env, fs_root: &Path, n: usize, tag: &str) {
    for i in 0..n {
        let before = disk_free_gauge(env);
        let p = fs_root.join(format!("check-{tag}-{i}"));
        let mut f = fs::File::create(&p).unwrap();
        f.write_all(&vec![1u8; 1 << 20]).unwrap();
        f.sync_all().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while disk_free_gauge(env) == before {
            assert!(
                Instant::now() < deadline,
                "no disk check in 60 s after writing {}: gauge {before}, statvfs {}",
                p.display(),
                statvfs_free(fs_root)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn disk_min_free_warns_once_below_and_once_on_recovery() {
    let lfs = LoopFs::new("ext4", 64);
    let logs = lfs.mountpoint.join("logs");
    let mut env = Env::new();
    env.logs = logs;
    env.write_config("");
    env.add("_global", &env.watch, &["--types", "CREATE"]);
    let d = env.start(&["--disk-min-free", "40%"]);
    // Above the threshold at first: a check ran, and did not warn.
    wait_for_disk_checks(&env, &lfs.mountpoint, 1, "above");
    assert_eq!(count(&d.stderr(), "is low"), 0, "{}", d.stderr());
    assert_eq!(count(&d.stderr(), "back above"), 0, "{}", d.stderr());
    // Fill the log filesystem past 60% used.
    let filler = lfs.mountpoint.join("filler");
    fs::write(&filler, vec![0u8; 40 << 20]).unwrap();
    wait_for("the low-space warning", Duration::from_secs(60), || {
        (count(&d.stderr(), "is low") >= 1).then_some(())
    });
    // Still low two checks later: still one warning (a guard that warns on
    // every check fails here).
    wait_for_disk_checks(&env, &lfs.mountpoint, 2, "low");
    assert_eq!(
        count(&d.stderr(), "is low"),
        1,
        "warned once: {}",
        d.stderr()
    );
    // The gauge is the filesystem's free space (daemon log lines may have
    // taken a few blocks since the check).
    let during = disk_free_gauge(&env);
    let now = statvfs_free(&lfs.mountpoint);
    assert!(
        during >= now && during - now < 1 << 20,
        "gauge {during}, statvfs {now}"
    );
    fs::remove_file(&filler).unwrap();
    wait_for("the recovery notice", Duration::from_secs(60), || {
        (count(&d.stderr(), "back above") >= 1).then_some(())
    });
    // Two checks later: one notice, and no new warning.
    wait_for_disk_checks(&env, &lfs.mountpoint, 2, "recovered");
    assert_eq!(
        count(&d.stderr(), "back above"),
        1,
        "one recovery notice: {}",
        d.stderr()
    );
    assert_eq!(count(&d.stderr(), "is low"), 1, "{}", d.stderr());
    // The gauge follows the filesystem: the 40 MiB filler is back (less
    // the 2 MiB the checks took).
    let after = disk_free_gauge(&env);
    assert!(
        after >= during + (35 << 20),
        "gauge while low {during}, after recovery {after}"
    );
    assert!(d.stop().success());
}

/// A daemon started by hand; SIGKILLed if the test fails before it stops.
struct Spawned(Option<Child>);

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn tells_systemd_when_ready_and_stopping() {
    let env = Env::new();
    let sock_path = env.dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    // Started by hand, not with env.start: that waits for the daemon's
    // "ready" log line, which comes after the bind and would hide a
    // READY=1 sent too early.
    let stderr = env.dir.path().join("daemon.stderr");
    let mut daemon = Spawned(Some(
        Command::new(fsmon_bin())
            .arg("--config")
            .arg(&env.config)
            .arg("daemon")
            .env_remove("SUDO_UID")
            .env("FSMON_LOG", "info")
            .env("NOTIFY_SOCKET", &sock_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("spawn daemon"),
    ));
    let log = || fs::read_to_string(&stderr).unwrap_or_default();
    let mut buf = [0u8; 256];
    let n = sock
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("no notification in 60 s ({e}):\n{}", log()));
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(msg.contains("READY=1"), "{msg}");
    // Ready means the socket answers: right now, one connect, no retry.
    let h = request(&env.socket, r#"{"op":"health"}"#).unwrap_or_else(|e| {
        panic!(
            "READY=1 came before the control socket answers: {e}\n{}",
            log()
        )
    });
    assert_eq!(h["ok"], true, "{h}");
    let child = daemon.0.as_mut().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let n = sock.recv(&mut buf).expect("a stopping notification");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1"));
    let status = wait_for("the daemon's exit", Duration::from_secs(60), || {
        child.try_wait().unwrap()
    });
    assert!(status.success(), "{status}:\n{}", log());
}
