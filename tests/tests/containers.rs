//! Containers: every event names its process's cgroup v2 path, and the
//! container when that cgroup is a runtime's. Real cgroups made with each
//! runtime's naming scheme (a writer moved into them before it execs), and
//! one real podman container writing into a bind-mounted watched directory.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use fsmon_tests::{Env, find};
use serde_json::Value;

/// The cgroup2 mount (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on a
/// hybrid hierarchy such as this machine's).
fn cgroup2_mount() -> PathBuf {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            if right.split(' ').next()? != "cgroup2" {
                return None;
            }
            Some(PathBuf::from(left.split(' ').nth(4)?))
        })
        .expect("a cgroup2 mount")
}

/// A 64-hex-digit id, unique per call.
fn container_id(tag: u32) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{:032x}{:024x}{:08x}", nanos, std::process::id(), tag)
}

/// A tree of cgroups made for one test, removed (leaves first) on drop.
struct CgroupTree {
    root: PathBuf,
}

impl CgroupTree {
    fn new() -> Self {
        // One tree per test: the tests of this binary run in parallel.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let root = cgroup2_mount().join(format!("fsmon-test-{}-{n}", std::process::id()));
        let _ = fs::remove_dir(&root);
        fs::create_dir(&root).unwrap();
        Self { root }
    }

    /// Makes `rel` (and its parents) below the tree's root; returns the
    /// cgroup path as fsmon logs it.
    fn make(&self, rel: &str) -> (PathBuf, String) {
        let dir = self.root.join(rel);
        fs::create_dir_all(&dir).unwrap();
        let logged = format!(
            "/{}",
            dir.strip_prefix(cgroup2_mount()).unwrap().to_str().unwrap()
        );
        (dir, logged)
    }

    /// Runs `touch file` in cgroup `dir`: the shell moves itself in, then
    /// execs, so the eBPF record (taken at exec) has the new cgroup.
    fn touch_in(&self, dir: &Path, file: &Path) {
        let st = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > '{}/cgroup.procs' && exec touch '{}'",
                dir.display(),
                file.display()
            ))
            .status()
            .unwrap();
        assert!(st.success());
    }
}

impl Drop for CgroupTree {
    fn drop(&mut self) {
        // Deepest first; a cgroup can go once its processes have exited.
        let mut dirs = Vec::new();
        let mut stack = vec![self.root.clone()];
        while let Some(d) = stack.pop() {
            if let Ok(rd) = fs::read_dir(&d) {
                for e in rd.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        stack.push(e.path());
                    }
                }
            }
            dirs.push(d);
        }
        for d in dirs.iter().rev() {
            let _ = fs::remove_dir(d);
        }
    }
}

fn the_event<'a>(evs: &'a [Value], file: &Path) -> &'a Value {
    find(evs, "CREATE", file)
        .first()
        .copied()
        .unwrap_or_else(|| panic!("no CREATE of {}", file.display()))
}

#[test]
fn events_name_the_cgroup_and_the_container_of_each_runtime() {
    let env = Env::new();
    env.add("_global", &env.watch, &["-r"]);
    let d = env.start(&[]);
    let tree = CgroupTree::new();
    let ids: Vec<String> = (0..6).map(container_id).collect();
    // (cgroup below the tree, expected container id)
    let cases: Vec<(String, Option<String>)> = vec![
        (
            format!("system.slice/docker-{}.scope", ids[0]),
            Some(ids[0].clone()),
        ),
        (format!("docker/{}", ids[1]), Some(ids[1].clone())),
        (
            format!("machine.slice/libpod-{}.scope", ids[2]),
            Some(ids[2].clone()),
        ),
        (
            format!(
                "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0f1e.slice/cri-containerd-{}.scope",
                ids[3]
            ),
            Some(ids[3].clone()),
        ),
        (
            format!("kubepods/burstable/pod77aa/{}", ids[4]),
            Some(ids[4].clone()),
        ),
        (
            format!("kubepods.slice/crio-{}.scope", ids[5]),
            Some(ids[5].clone()),
        ),
        (
            format!("machine.slice/machine-fsmtest{}.scope", std::process::id()),
            Some(format!("fsmtest{}", std::process::id())),
        ),
        // A runtime's helper and a plain service are not containers.
        (
            format!("machine.slice/libpod-conmon-{}.scope", ids[2]),
            None,
        ),
        ("system.slice/cron.service".to_string(), None),
    ];
    let mut expected = Vec::new();
    for (i, (rel, container)) in cases.iter().enumerate() {
        let (dir, logged) = tree.make(rel);
        let file = env.watch.join(format!("f{i}"));
        tree.touch_in(&dir, &file);
        expected.push((file, logged, container.clone()));
    }
    // And a host process: the test's own cgroup, no container.
    let host = env.watch.join("host");
    fs::write(&host, b"").unwrap();
    let own = fs::read_to_string("/proc/self/cgroup").unwrap();
    let own = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap()
        .to_string();
    expected.push((host, own, None));

    let last = expected.last().unwrap().0.clone();
    let evs = env.wait_events("_global", "every writer's CREATE", |e| {
        expected
            .iter()
            .all(|(f, _, _)| !find(e, "CREATE", f).is_empty())
            && !find(e, "CREATE", &last).is_empty()
    });
    for (file, cgroup, container) in &expected {
        let ev = the_event(&evs, file);
        assert_eq!(ev["cgroup"], cgroup.as_str(), "{ev}");
        match container {
            Some(id) => assert_eq!(ev["container"], id.as_str(), "{ev}"),
            None => assert!(ev.get("container").is_none(), "{ev}"),
        }
    }
    assert!(d.stop().success());
}

#[test]
fn an_event_from_a_cgroup_removed_right_after_still_names_it() {
    // The cgroup is made, used and removed while the daemon's reading is
    // held up by nothing but ordering: the writer exits and the cgroup is
    // removed before the test even looks. The daemon may or may not have
    // named it by then; either way the field is never missing or empty.
    let env = Env::new();
    env.add("_global", &env.watch, &["-r"]);
    let d = env.start(&[]);
    let tree = CgroupTree::new();
    let (dir, logged) = tree.make("short.scope");
    let id = std::os::unix::fs::MetadataExt::ino(&fs::metadata(&dir).unwrap());
    let file = env.watch.join("short");
    tree.touch_in(&dir, &file);
    fs::remove_dir(&dir).unwrap();
    let evs = env.wait_events("_global", "the CREATE", |e| {
        !find(e, "CREATE", &file).is_empty()
    });
    let cg = the_event(&evs, &file)["cgroup"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(cg == logged || cg == format!("#{id}"), "{cg}");
    assert!(d.stop().success());
}

/// A local image from the machine's busybox-static: no registry involved.
fn busybox_image() -> &'static str {
    const TAG: &str = "localhost/fsmon-test:busybox";
    let present = Command::new("podman")
        .args(["image", "exists", TAG])
        .status()
        .expect("podman (installed by cargo xtask setup)");
    if !present.success() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("root/bin")).unwrap();
        fs::copy("/bin/busybox", dir.path().join("root/bin/busybox")).unwrap();
        let tar = dir.path().join("root.tar");
        let st = Command::new("tar")
            .arg("-C")
            .arg(dir.path().join("root"))
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .unwrap();
        assert!(st.success());
        let out = Command::new("podman")
            .arg("import")
            .arg(&tar)
            .arg(TAG)
            .output()
            .unwrap();
        // Another test run may have imported it meanwhile.
        assert!(
            out.status.success()
                || Command::new("podman")
                    .args(["image", "exists", TAG])
                    .status()
                    .unwrap()
                    .success(),
            "podman import: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    TAG
}

#[test]
fn a_real_podman_container_writing_into_a_watched_bind_mount_is_named() {
    let env = Env::new();
    env.add("_global", &env.watch, &["-r"]);
    let d = env.start(&[]);
    let image = busybox_image();
    let cidfile = env.dir.path().join("cid");
    // runc, not crun: crun refuses hybrid cgroup hierarchies with controllers
    // in the unified one (this machine's); runc joins the unified hierarchy.
    // The explicit ulimits keep the runtime from raising limits above the
    // ones this sandbox allows. No network, no systemd: cgroupfs driver.
    let out = Command::new("podman")
        .args([
            "--runtime",
            "runc",
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "file",
            "run",
            "--detach",
            "--network",
            "none",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
            "--cidfile",
        ])
        .arg(&cidfile)
        .arg("-v")
        .arg(format!("{}:/w", env.watch.display()))
        // The container (and so its cgroup) stays until the event is
        // logged: fsmon names a cgroup by opening it when it reads the
        // event, and a cgroup removed before that is only an id.
        .args([
            image,
            "/bin/busybox",
            "sh",
            "-c",
            "/bin/busybox touch /w/from-container; exec /bin/busybox sleep 600",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "podman run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cid = fs::read_to_string(&cidfile).unwrap().trim().to_string();
    assert_eq!(cid.len(), 64, "{cid}");
    /// Removes the container when the test ends, passed or failed.
    struct Container(String);
    impl Drop for Container {
        fn drop(&mut self) {
            let _ = Command::new("podman")
                .args(["--runtime", "runc", "--cgroup-manager", "cgroupfs"])
                .args(["--events-backend", "file", "rm", "--force", "--time", "0"])
                .arg(&self.0)
                .output();
        }
    }
    let _container = Container(cid.clone());
    let file = env.watch.join("from-container");
    let evs = env.wait_events("_global", "the container's CREATE", |e| {
        !find(e, "CREATE", &file).is_empty()
    });
    let ev = the_event(&evs, &file);
    assert_eq!(ev["container"], cid.as_str(), "{ev}");
    assert!(ev["cgroup"].as_str().unwrap().contains(&cid), "{ev}");
    // The writer is named as the kernel knows it: busybox exec'd as touch.
    assert_eq!(ev["cmd"], "busybox", "{ev}");
    assert!(d.stop().success());
}
