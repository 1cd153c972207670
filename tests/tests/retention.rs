//! Retention by the daemon: rotation to zstd archives under a continuous
//! writer, queries across archives, keep_days, logrotate's files, a user's
//! daemon, and a hostile name at the archive's place. Real daemon, as root.
use std::{
    collections::HashMap,
    fs,
    os::unix::fs::MetadataExt,
    path::PathBuf,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use fsmon_tests::{Env, TestUser, Victim, open_env, run_bounded, wait_for};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(120);
const SHORT: Duration = Duration::from_secs(30);

/// The daemon's archives of `group` in the env's log directory.
fn archives(env: &Env, group: &str) -> Vec<PathBuf> {
    let prefix = format!("{group}_log.");
    let mut out: Vec<PathBuf> = fs::read_dir(&env.logs)
        .map(|d| {
            d.filter_map(|e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                (name.starts_with(&prefix) && name.ends_with(".jsonl.zst"))
                    .then(|| env.logs.join(name))
            })
            .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn query(env: &Env, args: &[&str]) -> Vec<String> {
    let mut all = vec!["query", "_global"];
    all.extend_from_slice(args);
    env.fsmon_ok(&all).lines().map(str::to_string).collect()
}

fn time_of(line: &str) -> chrono::DateTime<chrono::FixedOffset> {
    let v: Value = serde_json::from_str(line).unwrap();
    chrono::DateTime::parse_from_rfc3339(v["time"].as_str().unwrap()).unwrap()
}

/// A log line with a time of our choosing.
fn old_line(time: &str, path: &str) -> String {
    format!(
        "{{\"time\":\"{time}\",\"event_type\":\"CREATE\",\"path\":\"{path}\",\"pid\":1,\"cmd\":\"old\",\"user\":\"root\",\"file_size\":0,\"ppid\":0,\"tgid\":1}}\n"
    )
}

/// The lines of the 2020 log the tests plant: one a second.
fn old_lines(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            old_line(
                &format!("2020-01-01T00:{:02}:{:02}.000000+00:00", i / 60, i % 60),
                &format!("/old/{i}"),
            )
        })
        .collect()
}

/// A daemon with a tiny size rotates while files keep being created: every
/// CREATE is found exactly once across the archives and the live log, in
/// time order, and time windows across archive boundaries are exact.
#[test]
fn rotation_under_a_continuous_writer_keeps_every_event_once() {
    // Rotation past a tenth of 200 KB: an archive every ~80 events.
    let env = Env::with_config("[logging]\nsize = \">=200KB\"\nretention_interval_secs = 1\n");
    env.add("_global", &env.watch, &["-r", "--types", "CREATE"]);
    let d = env.start(&[]);
    let stop = Arc::new(AtomicBool::new(false));
    // The writer stops when the test ends, passed or failed.
    struct StopOnDrop(Arc<AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let _stop_guard = StopOnDrop(stop.clone());
    let writer = {
        let (dir, stop) = (env.watch.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut written = Vec::new();
            let mut i = 0;
            while (!stop.load(Ordering::Relaxed) || i < 1500) && i < 200_000 {
                let p = dir.join(format!("f{i}"));
                fs::write(&p, b"x").unwrap();
                written.push(p.to_str().unwrap().to_string());
                i += 1;
                if i % 50 == 0 {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            written
        })
    };
    let deadline = std::time::Instant::now() + SHORT;
    while archives(&env, "_global").len() < 8 {
        assert!(
            std::time::Instant::now() < deadline,
            "8 archives: {:?}\n{}",
            archives(&env, "_global"),
            d.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let written = writer.join().unwrap();
    let lines = wait_for("every file's CREATE in the query", LONG, || {
        let lines = query(&env, &[]);
        (lines.len() >= written.len()).then_some(lines)
    });
    let mut seen: HashMap<String, usize> = HashMap::new();
    for l in &lines {
        let v: Value = serde_json::from_str(l).unwrap();
        *seen
            .entry(v["path"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    for p in &written {
        assert_eq!(seen.get(p), Some(&1), "{p} seen {:?} times", seen.get(p));
    }
    assert_eq!(lines.len(), written.len(), "no other lines");
    let times: Vec<_> = lines.iter().map(|l| time_of(l)).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "time-ordered");
    assert!(d.stderr().contains("archived as"), "{}", d.stderr());
    // The metrics say the same: rotations, the archives' bytes on disk (read
    // again at each try: a rotation may still finish), no failure.
    wait_for("the retention metrics", SHORT, || {
        let now = archives(&env, "_global");
        let on_disk: u64 = now
            .iter()
            .filter_map(|a| fs::metadata(a).ok())
            .map(|m| m.len())
            .sum();
        (env.metric_or_zero("fsmon_log_archive_bytes{group=\"_global\"}") == on_disk as f64
            && env.metric("fsmon_log_rotations_total") >= now.len() as f64)
            .then_some(())
    });
    assert_eq!(env.metric("fsmon_log_retention_failures_total"), 0.0);

    // Windows around each archive's end: exactly the lines inside.
    let stamp = |t: &chrono::DateTime<chrono::FixedOffset>| {
        t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    };
    for a in archives(&env, "_global") {
        let name = a.file_name().unwrap().to_str().unwrap().to_string();
        let middle = name.strip_prefix("_global_log.").unwrap();
        let last = middle.split_once('_').unwrap().1;
        let last = last.split(['.', '-']).next().unwrap().to_string();
        // The index of the first line after this archive's end.
        let last_t = chrono::NaiveDateTime::parse_from_str(&last, "%Y%m%dT%H%M%S").unwrap();
        let i = times
            .iter()
            .position(|t| t.naive_utc() > last_t)
            .unwrap_or(times.len() - 1);
        let (lo, mut hi) = (i.saturating_sub(30), (i + 30).min(times.len() - 1));
        // Lines of one batch share a stamp: the window must not be empty
        // (`>=X` with `<X` is refused as an empty range).
        while hi < times.len() - 1 && times[hi] <= times[lo] {
            hi += 1;
        }
        assert!(times[hi] > times[lo], "every line has the same time");
        let since = format!(">={}", stamp(&times[lo]));
        let until = format!("<{}", stamp(&times[hi]));
        let got = query(&env, &["-t", &since, "-t", &until]);
        let want: Vec<String> = lines
            .iter()
            .zip(&times)
            .filter(|(_, t)| **t >= times[lo] && **t < times[hi])
            .map(|(l, _)| l.clone())
            .collect();
        assert_eq!(got, want, "window {since} {until} around {name}");
    }
    // changes: one line per file.
    assert_eq!(
        env.fsmon_ok(&["changes", "_global"]).lines().count(),
        written.len()
    );
    d.stop();
}

/// keep_days deletes old archives (and the old lines of the live log);
/// logrotate's renamed `.jsonl.1` is read with the live log.
#[test]
fn keep_days_deletes_old_archives_and_rotated_files_are_read() {
    let env = Env::with_config("[logging]\nkeep_days = 2\nretention_interval_secs = 1\n");
    env.add("_global", &env.watch, &["-r", "--types", "CREATE"]);
    fs::create_dir_all(&env.logs).unwrap();
    let log = env.log_path("_global");
    let old = old_lines(100);
    fs::write(&log, old[..50].concat()).unwrap();
    fsmon::retention::rotate_now(&log, chrono::Utc::now()).unwrap();
    assert_eq!(archives(&env, "_global").len(), 1);
    fs::write(&log, old[50..].concat()).unwrap();
    // What logrotate left an hour ago.
    let hour_ago = chrono::Utc::now() - chrono::TimeDelta::hours(1);
    let rotated: Vec<String> = (0..5)
        .map(|i| {
            let t = (hour_ago + chrono::TimeDelta::seconds(i))
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, false);
            old_line(&t, &format!("/rotated/{i}"))
        })
        .collect();
    fs::write(log.with_file_name("_global_log.jsonl.1"), rotated.concat()).unwrap();
    assert_eq!(query(&env, &[]).len(), 105, "before the daemon");

    let d = env.start(&[]);
    wait_for("the old lines gone", LONG, || {
        (query(&env, &[]).len() == 5 && archives(&env, "_global").is_empty()).then_some(())
    });
    wait_for("the deletion counted", SHORT, || {
        (env.metric("fsmon_log_archives_deleted_total") >= 1.0).then_some(())
    });
    let fresh = env.watch.join("fresh");
    fs::write(&fresh, b"x").unwrap();
    let lines = wait_for("the new event", LONG, || {
        let l = query(&env, &[]);
        (l.len() == 6).then_some(l)
    });
    let want: Vec<String> = rotated.iter().map(|l| l.trim_end().to_string()).collect();
    assert_eq!(lines[..5], want[..]);
    assert!(lines[5].contains(fresh.to_str().unwrap()), "{}", lines[5]);
    // A window inside the rotated file only.
    let since = format!(
        ">={}",
        (hour_ago + chrono::TimeDelta::seconds(2))
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    );
    let until = format!(
        "<{}",
        (hour_ago + chrono::TimeDelta::seconds(4))
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    );
    assert_eq!(query(&env, &["-t", &since, "-t", &until]), want[2..4]);
    assert!(
        fs::symlink_metadata(log.with_file_name("_global_log.jsonl.1")).is_ok(),
        "logrotate's files are logrotate's to delete"
    );
    d.stop();
}

/// A user's daemon (root working for the user) makes archives the user
/// owns, with the live log's mode, and the user reads them.
#[test]
fn a_users_daemon_makes_archives_the_user_owns() {
    let user = TestUser::new("rt");
    let env = open_env();
    env.write_config("[logging]\nsize = \">=40KB\"\nretention_interval_secs = 1\n");
    nix::unistd::chown(
        env.dir.path(),
        Some(nix::unistd::Uid::from_raw(user.uid)),
        Some(nix::unistd::Gid::from_raw(user.gid)),
    )
    .unwrap();
    let sudo_uid = user.uid.to_string();
    let as_user = |args: &[&str]| env.fsmon_for(user.uid, args);
    let out = as_user(&[
        "add",
        "_global",
        "--path",
        env.watch.to_str().unwrap(),
        "-r",
        "--types",
        "CREATE",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d = env.start_with_env(&[], &[("SUDO_UID", &sudo_uid)]);
    let mut n = 0;
    let archive = wait_for("an archive", LONG, || {
        for _ in 0..20 {
            fs::write(env.watch.join(format!("u{n}")), b"x").unwrap();
            n += 1;
        }
        archives(&env, "_global").into_iter().next()
    });
    let live = fs::symlink_metadata(env.log_path("_global")).unwrap();
    let m = fs::symlink_metadata(&archive).unwrap();
    assert!(m.file_type().is_file());
    assert_eq!((m.uid(), m.gid()), (user.uid, user.gid), "archive owner");
    assert_eq!(m.mode() & 0o7777, live.mode() & 0o7777, "archive mode");
    assert_eq!(m.mode() & 0o077, 0, "not readable by others");
    // The user's own query reads the archive.
    let out = user.fsmon(&env, &["query", "_global"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains(env.watch.join("u0").to_str().unwrap()),
        "the first event"
    );
    d.stop();
}

/// A symlink planted at the name the archive would get is neither followed
/// nor replaced: the archive gets another name, the victim is untouched,
/// and a query reads every line (and says it could not read the symlink).
#[test]
fn planted_symlink_at_the_archive_name_is_refused() {
    let env = Env::with_config(
        "[logging]\nkeep_days = 36500\nsize = \">=40KB\"\nretention_interval_secs = 1\n",
    );
    env.add("_global", &env.watch, &["-r", "--types", "CREATE"]);
    fs::create_dir_all(&env.logs).unwrap();
    let log = env.log_path("_global");
    let old = old_lines(60); // ~9 KB: past a tenth of 40 KB
    fs::write(&log, old.concat()).unwrap();
    let victim = Victim::new(env.dir.path(), 0);
    let planted = env
        .logs
        .join("_global_log.20200101T000000.000000Z_20200101T000059.000000Z.jsonl.zst");
    std::os::unix::fs::symlink(&victim.path, &planted).unwrap();
    let d = env.start(&[]);
    let archive = wait_for("an archive", LONG, || {
        archives(&env, "_global")
            .into_iter()
            .find(|p| p != &planted)
    });
    assert!(
        archive.to_str().unwrap().ends_with("-1.jsonl.zst"),
        "{}",
        archive.display()
    );
    victim.assert_untouched("after the rotation");
    assert!(
        fs::symlink_metadata(&planted)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    let out = env.fsmon(&["query", "_global"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text, old.concat());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning:") && err.contains("symbolic link"),
        "{err}"
    );
    d.stop();
}

/// A real logrotate (`compress`, `delaycompress`, `nocreate`, the stanza
/// the README gives) rotates the live log three times while the daemon
/// runs: the daemon follows each rename, gzip compresses the older files,
/// and `query` reads `.3.gz`, `.2.gz`, `.1` and the live log as one log,
/// each event once, in order, with nothing reported unreadable.
#[test]
fn a_real_logrotate_with_gzip_loses_nothing() {
    let logrotate = ["/usr/sbin/logrotate", "/sbin/logrotate"]
        .into_iter()
        .find(|p| fs::metadata(p).is_ok())
        .expect("logrotate is not installed (cargo xtask test installs it)");
    let env = Env::new();
    env.add("_global", &env.watch, &["-r", "--types", "CREATE"]);
    let d = env.start(&[]);
    let live = env.log_path("_global");
    let conf = env.dir.path().join("logrotate.conf");
    fs::write(
        &conf,
        format!(
            "{} {{\n    rotate 10\n    compress\n    delaycompress\n    missingok\n    nocreate\n}}\n",
            live.display()
        ),
    )
    .unwrap();
    let state = env.dir.path().join("logrotate.state");
    let paths_logged = || -> Vec<String> {
        query(&env, &[])
            .iter()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                v["path"].as_str().unwrap().to_string()
            })
            .collect()
    };
    let mut written = Vec::new();
    for round in 0..4 {
        for i in 0..40 {
            let p = env.watch.join(format!("r{round}_{i}"));
            fs::write(&p, b"x").unwrap();
            written.push(p.to_str().unwrap().to_string());
        }
        wait_for("the round's events logged", LONG, || {
            (paths_logged().len() >= written.len()).then_some(())
        });
        if round == 3 {
            break;
        }
        let out = run_bounded(
            Command::new(logrotate)
                .arg("-f")
                .arg("-s")
                .arg(&state)
                .arg(&conf),
            SHORT,
        );
        assert!(
            out.status.success(),
            "logrotate: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // nocreate: only the daemon makes a new live log, once it has seen
        // the rename (and so no longer writes to `.1`).
        wait_for("the daemon's new live log", SHORT, || {
            fs::symlink_metadata(&live).is_ok().then_some(())
        });
    }
    let name = |s: &str| env.logs.join(format!("_global_log.jsonl{s}"));
    for rotated in [".1", ".2.gz", ".3.gz"] {
        assert!(
            name(rotated).is_file(),
            "{} missing",
            name(rotated).display()
        );
    }
    let out = env.fsmon(&["query", "_global"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "",
        "nothing unreadable"
    );
    assert_eq!(paths_logged(), written);
    // A window that starts inside the oldest, gzipped file.
    let all = query(&env, &[]);
    let t = time_of(&all[20]);
    let want: Vec<String> = all.iter().filter(|l| time_of(l) >= t).cloned().collect();
    assert_eq!(query(&env, &["-t", &format!(">={}", t.to_rfc3339())]), want);
    d.stop();
}
