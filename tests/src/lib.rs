//! Helpers for fsmon's integration tests: each test gets its own temp dir,
//! config, socket, store and log directory, and starts the real daemon
//! binary as root. Nothing waits on a fixed sleep: every wait is for a
//! condition, with a deadline.
use std::{
    fs,
    io::{BufRead, BufReader},
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

/// Polls `cond` until it returns `Some`, or fails after `timeout` with `what`.
/// Between tries it sleeps 10 ms, or as long as the try took when that is
/// longer (parsing a big log): polling never takes more than half a core
/// from the daemons under test on a 2-core machine.
pub fn wait_for<T>(what: &str, timeout: Duration, cond: impl FnMut() -> Option<T>) -> T {
    wait_for_or(what, timeout, cond, String::new)
}

/// [`wait_for`], with `context()` (a daemon's log, a status) added to the
/// failure message.
pub fn wait_for_or<T>(
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut() -> Option<T>,
    context: impl FnOnce() -> String,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let t0 = Instant::now();
        if let Some(v) = cond() {
            return v;
        }
        if Instant::now() > deadline {
            panic!(
                "timed out after {timeout:?} waiting for {what}\n{}",
                context()
            );
        }
        std::thread::sleep(
            t0.elapsed()
                .clamp(Duration::from_millis(10), Duration::from_secs(1)),
        );
    }
}

/// fs.fanotify.max_queued_events: the kernel queue a daemon without
/// `[fanotify] queue_size` gets.
pub fn max_queued_events() -> u64 {
    fs::read_to_string("/proc/sys/fs/fanotify/max_queued_events")
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Waits until every thread of process `pid` is stopped: SIGSTOP reaches
/// the threads one by one, and a daemon thread still running drains the
/// kernel queue a test means to overflow.
pub fn wait_stopped(pid: u32) {
    wait_for(
        "every daemon thread stopped",
        Duration::from_secs(30),
        || {
            let tasks = fs::read_dir(format!("/proc/{pid}/task")).ok()?;
            tasks
                .map(|t| {
                    let stat = fs::read_to_string(t.ok()?.path().join("stat")).ok()?;
                    // The state follows the command name, which ends with ')'.
                    Some(stat.rsplit_once(')')?.1.trim_start().starts_with('T'))
                })
                .all(|stopped| stopped == Some(true))
                .then_some(())
        },
    );
}

/// `target/<profile>/` of this build (test binaries live in its `deps/`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// The fsmon binary under test: $FSMON_BIN, else target/<profile>/fsmon.
pub fn fsmon_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("FSMON_BIN") {
        return PathBuf::from(p);
    }
    let p = target_dir().join("fsmon");
    assert!(
        p.exists(),
        "{} missing: build it first (cargo xtask test does)",
        p.display()
    );
    p
}

/// The test-kit binary (workload programs).
pub fn testkit_bin() -> PathBuf {
    target_dir().join("fsmon-testkit")
}

/// A private fsmon setup: config, socket, store, logs, and a directory to
/// watch, all under one temp dir.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub store: PathBuf,
    pub logs: PathBuf,
    /// A directory for the test to watch and write in.
    pub watch: PathBuf,
}

impl Env {
    pub fn new() -> Self {
        Self::with_config("")
    }

    /// `extra` is appended to the config (more sections or keys for
    /// [logging] / [cache] / [process] / [fanotify]; see `config_text`).
    pub fn with_config(extra: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("fsmon-test-")
            .tempdir_in("/tmp")
            .expect("temp dir");
        let root = fs::canonicalize(dir.path()).unwrap();
        let env = Env {
            config: root.join("fsmon.toml"),
            socket: root.join("fsmon.sock"),
            store: root.join("share/monitored.jsonl"),
            logs: root.join("logs"),
            watch: root.join("watch"),
            dir,
        };
        fs::create_dir_all(&env.watch).unwrap();
        env.write_config(extra);
        env
    }

    pub fn write_config(&self, extra: &str) {
        let mut sections = std::collections::BTreeMap::<String, String>::new();
        sections.insert("monitored".into(), format!("path = {:?}\n", self.store));
        sections.insert("logging".into(), format!("path = {:?}\n", self.logs));
        sections.insert("socket".into(), format!("path = {:?}\n", self.socket));
        let mut current = String::new();
        for line in extra.lines() {
            let t = line.trim();
            if let Some(name) = t.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
                current = name.to_string();
                sections.entry(current.clone()).or_default();
            } else if !t.is_empty() {
                let s = sections.entry(current.clone()).or_default();
                s.push_str(t);
                s.push('\n');
            }
        }
        let text: String = sections
            .iter()
            .map(|(k, v)| format!("[{k}]\n{v}\n"))
            .collect();
        fs::write(&self.config, text).unwrap();
    }

    /// Runs the fsmon CLI with this env's config.
    pub fn fsmon(&self, args: &[&str]) -> Output {
        Command::new(fsmon_bin())
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .env_remove("SUDO_UID")
            .output()
            .expect("run fsmon")
    }

    /// Like [`fsmon`](Self::fsmon), asserting success; returns stdout.
    pub fn fsmon_ok(&self, args: &[&str]) -> String {
        let out = self.fsmon(args);
        assert!(
            out.status.success(),
            "fsmon {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs the fsmon CLI as root on behalf of `uid` (as `sudo fsmon` does:
    /// `SUDO_UID` set), bounded to two minutes.
    pub fn fsmon_for(&self, uid: u32, args: &[&str]) -> Output {
        run_bounded(
            Command::new(fsmon_bin())
                .arg("--config")
                .arg(&self.config)
                .args(args)
                .env("SUDO_UID", uid.to_string()),
            Duration::from_secs(120),
        )
    }

    /// Adds a path through the CLI (writes the store when no daemon runs).
    pub fn add(&self, group: &str, path: &Path, extra: &[&str]) {
        let mut args = vec!["add", group, "--path", path.to_str().unwrap()];
        args.extend_from_slice(extra);
        self.fsmon_ok(&args);
    }

    pub fn log_path(&self, group: &str) -> PathBuf {
        self.logs.join(format!("{group}_log.jsonl"))
    }

    /// Starts the daemon and waits until it reports ready.
    pub fn start(&self, args: &[&str]) -> Daemon {
        self.start_with_env(args, &[])
    }

    pub fn start_with_env(&self, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let mut cmd = Command::new(fsmon_bin());
        cmd.arg("--config")
            .arg(&self.config)
            .arg("daemon")
            .args(args);
        cmd.env_remove("SUDO_UID").env("FSMON_LOG", "info");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn daemon");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("fsmon daemon ready") {
                    let _ = tx.send(());
                }
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let mut d = Daemon {
            child: Some(child),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if rx.recv_timeout(Duration::from_millis(50)).is_ok() {
                break;
            }
            if let Ok(Some(status)) = d.child.as_mut().unwrap().try_wait() {
                panic!("daemon exited during start ({status}):\n{}", d.stderr());
            }
            if Instant::now() > deadline {
                panic!("daemon not ready after 60s:\n{}", d.stderr());
            }
        }
        d
    }

    /// All valid events of a group's log.
    pub fn events(&self, group: &str) -> Vec<Value> {
        read_events(&self.log_path(group))
    }

    /// Waits until `pred` holds for the group's events; returns them.
    /// Waits until the CLOSE_WRITE of `path` is in the `_global` log (events
    /// are read in order: everything before that write has been judged);
    /// returns the log.
    pub fn wait_written(&self, path: &Path, what: &str) -> Vec<Value> {
        self.wait_events("_global", what, |e| {
            e.iter()
                .any(|x| x["event_type"] == "CLOSE_WRITE" && x["path"] == path.to_str().unwrap())
        })
    }

    pub fn wait_events(
        &self,
        group: &str,
        what: &str,
        pred: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        wait_for(what, Duration::from_secs(60), || {
            let evs = self.events(group);
            pred(&evs).then_some(evs)
        })
    }
}

impl Env {
    /// Runs the daemon with this config (for the user `sudo_uid`, else
    /// root); it must refuse to start. Returns its one `fsmon:` line.
    pub fn daemon_refuses(&self, sudo_uid: Option<u32>) -> String {
        let mut cmd = Command::new(fsmon_bin());
        cmd.arg("--config")
            .arg(&self.config)
            .arg("daemon")
            .env_remove("SUDO_UID")
            .env("FSMON_LOG", "warn");
        if let Some(uid) = sudo_uid {
            cmd.env("SUDO_UID", uid.to_string());
        }
        let out = run_bounded(&mut cmd, Duration::from_secs(60));
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "the daemon started:\n{err}");
        let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("fsmon:")).collect();
        assert_eq!(lines.len(), 1, "one error line:\n{err}");
        lines[0].to_string()
    }
}

impl Env {
    /// One request on the daemon's control socket; the first response line.
    pub fn request(&self, req: &str) -> Value {
        use std::io::{BufRead, Write};
        let mut s =
            std::os::unix::net::UnixStream::connect(&self.socket).expect("connect to the daemon");
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        s.write_all(format!("{req}\n").as_bytes()).unwrap();
        let mut line = String::new();
        std::io::BufReader::new(s).read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad response {line:?}: {e}"))
    }

    /// The daemon's `health`, over the socket.
    pub fn health(&self) -> Value {
        let h = self.request(r#"{"op":"health"}"#);
        assert_eq!(h["ok"], true, "{h}");
        h
    }

    /// Sum of a Prometheus metric's samples (any labels; `name` may include
    /// some). Panics when the daemon exports no such sample: a renamed
    /// metric must not make a check pass with 0.
    pub fn metric(&self, name: &str) -> f64 {
        self.metric_samples(name)
            .unwrap_or_else(|text| panic!("metric {name} missing:\n{text}"))
    }

    /// As [`metric`](Self::metric), 0 when there is no sample yet (a
    /// labelled series appears with its first increment).
    pub fn metric_or_zero(&self, name: &str) -> f64 {
        self.metric_samples(name).unwrap_or(0.0)
    }

    fn metric_samples(&self, name: &str) -> Result<f64, String> {
        let m = self.request(r#"{"op":"metrics"}"#);
        let text = m["text"].as_str().expect("metrics text");
        let samples: Vec<f64> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.strip_prefix(name))
            .filter(|rest| rest.starts_with(' ') || rest.starts_with('{'))
            .map(|rest| {
                rest.rsplit(' ')
                    .next()
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or_else(|| panic!("bad metric sample {name}{rest}"))
            })
            .collect();
        if samples.is_empty() {
            return Err(text.to_string());
        }
        Ok(samples.iter().sum())
    }
}

impl Default for Env {
    fn default() -> Self {
        Self::new()
    }
}

/// A running daemon; SIGTERM on drop.
pub struct Daemon {
    child: Option<Child>,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Runs `f` with every daemon thread stopped (SIGSTOP): what `f` does
    /// is all queued, and nothing of it is looked at, when the daemon
    /// resumes.
    pub fn while_stopped(&self, f: impl FnOnce()) {
        let pid = nix::unistd::Pid::from_raw(self.pid() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
        wait_stopped(self.pid());
        f();
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    }

    /// What the daemon printed on stderr so far.
    pub fn stderr(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// SIGTERM, then waits for a clean exit; returns the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.terminate().expect("daemon was running")
    }

    fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(s)) = child.try_wait() {
                return Some(s);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return child.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL: no chance to flush.
    pub fn kill9(mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// Parses every complete, valid JSON line of a log.
pub fn read_events(path: &Path) -> Vec<Value> {
    let Ok(text) = fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Events of a given type whose path is `path`.
pub fn find<'a>(events: &'a [Value], kind: &str, path: &Path) -> Vec<&'a Value> {
    let p = path.to_str().unwrap();
    events
        .iter()
        .filter(|e| e["event_type"] == kind && e["path"] == p)
        .collect()
}

/// Runs `sh -c 'CMD & echo $!; wait'` and returns (sh pid, child pid).
pub fn sh_bg(cmd: &str) -> (u32, u32) {
    let child = Command::new("sh")
        .arg("-c")
        .arg(format!("{cmd} & echo $!; wait"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn sh");
    let sh = child.id();
    let out = child.wait_with_output().expect("wait sh");
    assert!(out.status.success(), "sh -c {cmd} failed");
    (
        sh,
        String::from_utf8(out.stdout)
            .unwrap()
            .trim()
            .parse()
            .unwrap(),
    )
}

/// A filesystem image on a loop device, mounted under a temp dir; unmounted
/// and detached on drop.
pub struct LoopFs {
    pub mountpoint: PathBuf,
    device: String,
    _dir: tempfile::TempDir,
}

impl LoopFs {
    /// `kind`: "ext4", "xfs" or "btrfs". `size_mb` of sparse image.
    pub fn new(kind: &str, size_mb: u64) -> Self {
        Self::new_in("/var/tmp", kind, size_mb)
    }

    /// The image under `base` (e.g. /dev/shm: a filesystem free of disk noise).
    pub fn new_in(base: &str, kind: &str, size_mb: u64) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("fsmon-loop-")
            .tempdir_in(base)
            .unwrap();
        let image = dir.path().join("fs.img");
        let f = fs::File::create(&image).unwrap();
        f.set_len(size_mb << 20).unwrap();
        drop(f);
        let mkfs = match kind {
            "ext4" => Command::new("mkfs.ext4")
                .args(["-q", "-F"])
                .arg(&image)
                .output(),
            "xfs" => Command::new("mkfs.xfs")
                .args(["-q", "-f"])
                .arg(&image)
                .output(),
            "btrfs" => Command::new("mkfs.btrfs")
                .args(["-q", "-f"])
                .arg(&image)
                .output(),
            other => panic!("unknown fs {other}"),
        }
        .unwrap_or_else(|e| panic!("mkfs.{kind}: {e} (cargo xtask setup installs it)"));
        assert!(
            mkfs.status.success(),
            "mkfs.{kind}: {}",
            String::from_utf8_lossy(&mkfs.stderr)
        );
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&image)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let device = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let mountpoint = dir.path().join("mnt");
        fs::create_dir(&mountpoint).unwrap();
        let m = Command::new("mount")
            .arg(&device)
            .arg(&mountpoint)
            .output()
            .unwrap();
        assert!(
            m.status.success(),
            "mount {kind}: {}",
            String::from_utf8_lossy(&m.stderr)
        );
        LoopFs {
            mountpoint,
            device,
            _dir: dir,
        }
    }
}

impl LoopFs {
    /// The loop device (`/dev/loopN`).
    pub fn device(&self) -> &str {
        &self.device
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.mountpoint)
            .status();
        let _ = Command::new("losetup").arg("-d").arg(&self.device).status();
    }
}

// ---------------------------------------------------------------------------
// Real users and untouchable files, for the attack tests
// ---------------------------------------------------------------------------

/// A system user made for the test; deleted on drop, even on failure.
pub struct TestUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl TestUser {
    pub fn new(tag: &str) -> TestUser {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!(
            "fsmon-{tag}-{:x}{:x}",
            std::process::id() & 0xffff,
            nanos & 0xfffff
        );
        // useradd takes a lock on /etc/passwd: other tests may hold it.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = Command::new("useradd")
                .args(["-M", "-r", "-s", "/usr/sbin/nologin", &name])
                .output()
                .expect("useradd");
            if out.status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "useradd {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let u = nix::unistd::User::from_name(&name)
            .unwrap()
            .expect("the new user exists");
        TestUser {
            name,
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
        }
    }

    /// `program` as this user with `groups` as its supplementary groups
    /// (none when empty), in a clean environment: no SUDO_UID or
    /// FSMON_CONFIG, HOME=/, in /, stdin null.
    pub fn command(&self, groups: &[u32], program: &Path) -> Command {
        let groups = if groups.is_empty() {
            "--clear-groups".to_string()
        } else {
            let list: Vec<String> = groups.iter().map(u32::to_string).collect();
            format!("--groups={}", list.join(","))
        };
        let mut c = Command::new("setpriv");
        c.arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid))
            .arg(groups)
            .arg("--")
            .arg(program)
            .env_remove("SUDO_UID")
            .env_remove("FSMON_CONFIG")
            .env("HOME", "/")
            .current_dir("/")
            .stdin(Stdio::null());
        c
    }

    /// Runs `program args` as this user (no supplementary groups).
    pub fn run(&self, program: &Path, args: &[&str]) -> Output {
        self.command(&[], program)
            .args(args)
            .output()
            .expect("setpriv")
    }

    pub fn fsmon(&self, env: &Env, args: &[&str]) -> Output {
        let mut all = vec!["--config", env.config.to_str().unwrap()];
        all.extend_from_slice(args);
        self.run(&fsmon_bin(), &all)
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !Command::new("userdel")
            .arg(&self.name)
            .status()
            .is_ok_and(|s| s.success())
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A file that must never change: owned by `nobody` (or root), mode 0644,
/// known content.
pub struct Victim {
    pub path: PathBuf,
    pub content: String,
    pub uid: u32,
    pub mtime: (i64, i64),
}

impl Victim {
    pub fn new(dir: &Path, uid: u32) -> Victim {
        let path = dir.join("victim");
        let content = format!("precious {}\n", std::process::id());
        fs::write(&path, &content).unwrap();
        nix::unistd::chown(
            &path,
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(uid)),
        )
        .unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let m = fs::metadata(&path).unwrap();
        Victim {
            path,
            content,
            uid,
            mtime: (m.mtime(), m.mtime_nsec()),
        }
    }

    #[track_caller]
    pub fn assert_untouched(&self, when: &str) {
        let m = fs::symlink_metadata(&self.path).unwrap();
        assert!(m.is_file(), "{when}: victim replaced");
        assert_eq!(
            fs::read_to_string(&self.path).unwrap(),
            self.content,
            "{when}: victim written"
        );
        assert_eq!(
            (m.uid(), m.gid()),
            (self.uid, self.uid),
            "{when}: victim chowned"
        );
        assert_eq!(m.mode() & 0o7777, 0o644, "{when}: victim chmodded");
        assert_eq!(
            (m.mtime(), m.mtime_nsec()),
            self.mtime,
            "{when}: victim modified"
        );
    }
}

pub const NOBODY: u32 = 65534;

/// An Env whose temp dir other users may traverse (it is 0700 by default).
pub fn open_env() -> Env {
    let env = Env::new();
    fs::set_permissions(env.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    env
}

/// Runs a command that must finish (not hang) within `timeout`.
pub fn run_bounded(cmd: &mut Command, timeout: Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => out.expect("wait"),
        Err(_) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            panic!("{cmd:?} hung for more than {timeout:?}");
        }
    }
}

/// A mount made for the test; lazily unmounted on drop, even on failure.
pub struct Mount(PathBuf);

impl Mount {
    pub fn new(args: &[&str], target: &Path) -> Mount {
        fs::create_dir_all(target).unwrap();
        let out = Command::new("mount")
            .args(args)
            .arg(target)
            .output()
            .expect("mount");
        assert!(
            out.status.success(),
            "mount {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Mount(target.to_path_buf())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Create, write, rename a directory, rm -rf: full paths and the process,
/// on the filesystem at `watch` (already watched). With inode marks, what
/// was made before a new directory was marked may come from its scan.
pub fn assert_tree_captured(env: &Env, watch: &Path) {
    let made = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "mkdir -p {0}/n/b && touch {0}/n/b/f",
            watch.display()
        ))
        .status()
        .unwrap();
    assert!(made.success());
    fs::rename(watch.join("n"), watch.join("m")).unwrap();
    fs::write(watch.join("m/b/g"), b"12345").unwrap();
    // The size is read when the event is processed: before the rm -rf.
    // With inode marks, a file written in a directory fsmon has not
    // marked yet (it was created an instant before) is found by the scan
    // of that directory: a CREATE with `scan`, and no CLOSE_WRITE.
    let written_or_found = |evs: &[Value]| {
        !find(evs, "CLOSE_WRITE", &watch.join("m/b/g")).is_empty()
            || evs.iter().any(|e| {
                e["scan"] == true && e["path"].as_str().is_some_and(|p| p.ends_with("/b/g"))
            })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !written_or_found(&env.events("_global")) {
        assert!(
            std::time::Instant::now() < deadline,
            "no CLOSE_WRITE of m/b/g after 30 s: {:#?}",
            env.events("_global")
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let (_, rm) = sh_bg(&format!("rm -rf {}", watch.join("m").display()));
    let evs = env.wait_events("_global", "the rm -rf", |e| {
        !find(e, "DELETE", &watch.join("m")).is_empty()
    });
    let mut create = find(&evs, "CREATE", &watch.join("n/b/f"));
    if create.is_empty() {
        // With inode marks, `n` may be renamed to `m` before fsmon reads its
        // CREATE and scans it: the scan then finds the file where it is.
        create = find(&evs, "CREATE", &watch.join("m/b/f"));
        assert!(create.iter().all(|e| e["scan"] == true), "{evs:#?}");
    }
    assert_eq!(create.len(), 1, "{evs:#?}");
    // With inode marks, a file made in a directory before fsmon marked it
    // is found by the scan of that directory: no process then.
    assert!(
        create[0]["cmd"] == "touch" || create[0]["scan"] == true,
        "{evs:#?}"
    );
    let write = find(&evs, "CLOSE_WRITE", &watch.join("m/b/g"));
    if write.is_empty() {
        let found: Vec<_> = evs
            .iter()
            .filter(|e| e["scan"] == true && e["path"].as_str().unwrap().ends_with("/b/g"))
            .collect();
        assert_eq!(found.len(), 1, "found by a scan: {evs:#?}");
    } else {
        assert_eq!(write.len(), 1, "new path after the rename: {evs:#?}");
        assert_eq!(write[0]["file_size"], 5);
    }
    for p in ["m/b/g", "m/b", "m"] {
        let d = find(&evs, "DELETE", &watch.join(p));
        assert_eq!(d.len(), 1, "DELETE {p}: {evs:#?}");
        assert_eq!(d[0]["pid"], rm, "{p}");
        assert_eq!(d[0]["cmd"], "rm", "{p}");
    }
    assert!(evs.iter().all(|e| e.get("unresolved").is_none()));
}

/// A group made for the test (unique name), deleted on drop.
pub struct TestGroup {
    pub name: String,
    pub gid: u32,
}

impl TestGroup {
    pub fn new(tag: &str) -> Self {
        let name = format!("fsmt{tag}{:x}", std::process::id() & 0xffffff);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        // groupadd takes the lock on /etc/group: other tests may hold it.
        while !Command::new("groupadd")
            .args(["--system", &name])
            .status()
            .unwrap()
            .success()
        {
            assert!(std::time::Instant::now() < deadline, "groupadd {name}");
            std::thread::sleep(Duration::from_millis(100));
        }
        let gid = nix::unistd::Group::from_name(&name)
            .unwrap()
            .expect("the group exists")
            .gid
            .as_raw();
        TestGroup { name, gid }
    }
}

impl Drop for TestGroup {
    fn drop(&mut self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !Command::new("groupdel")
            .arg(&self.name)
            .status()
            .is_ok_and(|s| s.success())
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// What bash completion offers for the last word of `words` (the protocol
/// the code from `fsmon completions bash` speaks).
pub fn complete(env: &Env, words: &[&str]) -> Vec<String> {
    let out = Command::new(fsmon_bin())
        .env("COMPLETE", "bash")
        .env("_CLAP_COMPLETE_INDEX", (words.len() - 1).to_string())
        .env("_CLAP_COMPLETE_COMP_TYPE", "9")
        .env("_CLAP_IFS", "\n")
        .env("FSMON_CONFIG", &env.config)
        .arg("--")
        .args(words)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// The repository's root (the workspace).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The Debian package under test: `$FSMON_DEB`, else the one `cargo xtask
/// deb` builds into target/debian for this version. Built every time
/// (incremental: seconds when nothing changed), so the package tested is
/// the one the source makes now.
pub fn built_deb() -> PathBuf {
    if let Some(p) = std::env::var_os("FSMON_DEB") {
        return PathBuf::from(p);
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(repo_root())
        .args(["xtask", "deb"])
        .stdin(Stdio::null())
        .output()
        .expect("cargo xtask deb");
    assert!(
        out.status.success(),
        "cargo xtask deb: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let prefix = format!("fsmon_{}-", env!("CARGO_PKG_VERSION"));
    fs::read_dir(repo_root().join("target/debian"))
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        })
        .expect("cargo xtask deb made no .deb")
}
