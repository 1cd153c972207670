//! Operating fsmon: the disk guard and systemd readiness, with the real
//! daemon.
use std::{fs, os::unix::net::UnixDatagram, time::Duration};

use fsmon_tests::{Env, LoopFs, wait_for};

fn count(text: &str, needle: &str) -> usize {
    text.lines().filter(|l| l.contains(needle)).count()
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
    // Above the threshold at first: no warning.
    fs::write(env.watch.join("a"), b"").unwrap();
    env.wait_events("_global", "first event", |e| !e.is_empty());
    assert_eq!(count(&d.stderr(), "is low"), 0, "{}", d.stderr());
    // Fill the log filesystem past 60% used.
    let filler = lfs.mountpoint.join("filler");
    fs::write(&filler, vec![0u8; 40 << 20]).unwrap();
    wait_for("the low-space warning", Duration::from_secs(20), || {
        (count(&d.stderr(), "is low") == 1).then_some(())
    });
    // Still low a few checks later: still one warning.
    let health: serde_json::Value = serde_json::from_str(&env.fsmon_ok(&["health"])).unwrap();
    assert_eq!(health["ok"], true);
    fs::write(env.watch.join("b"), b"").unwrap();
    env.wait_events("_global", "event while low", |e| e.len() >= 2);
    assert_eq!(
        count(&d.stderr(), "is low"),
        1,
        "warned once: {}",
        d.stderr()
    );
    fs::remove_file(&filler).unwrap();
    wait_for("the recovery notice", Duration::from_secs(20), || {
        (count(&d.stderr(), "back above") == 1).then_some(())
    });
    assert_eq!(count(&d.stderr(), "is low"), 1);
    // The gauge follows the filesystem.
    let m = env.fsmon_ok(&["health"]);
    assert!(m.contains("\"ok\":true"));
    assert!(d.stop().success());
}

#[test]
fn tells_systemd_when_ready_and_stopping() {
    let env = Env::new();
    let sock_path = env.dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let d = env.start_with_env(&[], &[("NOTIFY_SOCKET", sock_path.to_str().unwrap())]);
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("a notification");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("READY=1"));
    // Ready means the socket answers.
    assert!(env.fsmon(&["health"]).status.success());
    assert!(d.stop().success());
    let n = sock.recv(&mut buf).expect("a stopping notification");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1"));
}
