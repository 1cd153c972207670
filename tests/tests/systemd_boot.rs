//! The Debian package's unit started by a real systemd: a qemu guest whose
//! PID 1 is systemd (Debian 12 minbase from debootstrap, Debian 12's 6.1
//! kernel) installs the .deb from `cargo xtask deb` and runs
//! tests/systemd-guest/check.sh: started by the package, `health`, an
//! event logged in /var/log/fsmon, reload, stop with status 0, purge.
//!
//! Why a VM and not systemd-nspawn: nspawn boots systemd in a child pid
//! namespace, where the daemon refuses to start (its tracker is keyed by
//! host pids), so the unit can never start there. The machine running the
//! tests has no systemd as PID 1 (CI neither).
//!
//! The root tree and the kernel are cached in target/systemd-guest (the
//! first run downloads them: about 2 minutes). Skipped, with the reason,
//! only when the Debian mirror cannot be reached.
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn cache() -> PathBuf {
    fsmon_tests::repo_root().join("target/systemd-guest")
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

/// Installed into the guest's minbase root: systemd as init, and the
/// package's dependencies (the guest has no network for apt; a real
/// `apt install ./fsmon.deb` fetches them).
const GUEST_PACKAGES: &str = "systemd,systemd-sysv,dbus,procps";

/// Why the guest cannot be built for a reason outside our control.
struct Unreachable(String);

/// Debian 12 minbase with systemd, as one newc cpio archive (ownership
/// kept): target/systemd-guest/rootfs.cpio. Built in a private directory
/// and renamed into place, so concurrent runs never see half of it.
fn rootfs() -> Result<PathBuf, Unreachable> {
    // The archive's name follows GUEST_PACKAGES: a changed list makes a new one.
    let archive = cache().join(format!("rootfs-{}.cpio", GUEST_PACKAGES.replace(',', "-")));
    if archive.exists() {
        return Ok(archive);
    }
    fs::create_dir_all(cache()).unwrap();
    let work = tempfile::tempdir_in(cache()).unwrap();
    let tree = work.path().join("tree");
    let started = Instant::now();
    let out = run(Command::new("debootstrap")
        .args([
            "--variant=minbase",
            &format!("--include={GUEST_PACKAGES}"),
            "bookworm",
        ])
        .arg(&tree)
        .arg("http://deb.debian.org/debian"));
    if !out.status.success() {
        let log = fs::read_to_string(tree.join("debootstrap/debootstrap.log")).unwrap_or_default();
        let why = format!("{}{}{log}", text(&out.stdout), text(&out.stderr));
        if why.contains("Failed getting release file") || why.contains("Couldn't download") {
            return Err(Unreachable(format!(
                "debootstrap cannot reach deb.debian.org: {}",
                why.lines().last().unwrap_or("")
            )));
        }
        panic!("debootstrap: {why}");
    }
    println!(
        "debootstrap of the guest's root: {:.0}s",
        started.elapsed().as_secs_f64()
    );
    let part = work.path().join("rootfs.cpio");
    let sh = format!(
        "cd '{}' && find . -xdev | cpio -o -H newc --quiet > '{}'",
        tree.display(),
        part.display()
    );
    let out = run(Command::new("sh").args(["-c", &sh]));
    assert!(out.status.success(), "cpio: {}", text(&out.stderr));
    fs::rename(&part, &archive).unwrap();
    Ok(archive)
}

/// Debian 12's own kernel (the newest linux-image-6.1.0-N-amd64 apt
/// knows), unpacked into target/systemd-guest/kernel.
fn kernel() -> Result<PathBuf, Unreachable> {
    let dir = cache().join("kernel");
    let find = |dir: &Path| {
        fs::read_dir(dir.join("boot"))
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("vmlinuz-")
            })
    };
    if let Some(k) = find(&dir) {
        return Ok(k);
    }
    fs::create_dir_all(cache()).unwrap();
    let work = tempfile::tempdir_in(cache()).unwrap();
    let search = run(Command::new("apt-cache").args([
        "search",
        "--names-only",
        r"^linux-image-6\.1\.0-[0-9]+-amd64$",
    ]));
    let mut packages: Vec<(u32, String)> = text(&search.stdout)
        .lines()
        .filter_map(|l| {
            let name = l.split_whitespace().next()?;
            let n = name
                .strip_prefix("linux-image-6.1.0-")?
                .strip_suffix("-amd64")?;
            Some((n.parse().ok()?, name.to_string()))
        })
        .collect();
    packages.sort();
    let package = &packages
        .last()
        .expect(
            "apt knows no linux-image-6.1.0-N-amd64: Debian 12's archive must be in apt's sources",
        )
        .1;
    let out = run(Command::new("apt-get")
        .args(["-o", "APT::Sandbox::User=root", "download", "-q", package])
        .current_dir(work.path()));
    if !out.status.success() {
        return Err(Unreachable(format!(
            "apt-get download {package}: {}",
            text(&out.stderr).trim()
        )));
    }
    let deb = fs::read_dir(work.path())
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .unwrap();
    let tree = work.path().join("tree");
    let out = run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree));
    assert!(out.status.success(), "dpkg-deb -x: {}", text(&out.stderr));
    // Only the kernel image is kept: fanotify, bpf and tmpfs are built in
    // (the modules would add 400 MB to the cache).
    let _ = fs::rename(tree.join("boot"), work.path().join("boot"));
    let _ = fs::remove_dir_all(&tree);
    let _ = fs::remove_file(&deb);
    let _ = fs::rename(work.path(), &dir);
    Ok(find(&dir).expect("no vmlinuz in the kernel package"))
}

/// The test's own files in a second cpio archive, appended to the root
/// (the kernel unpacks concatenated archives in order).
fn guest_files(dir: &Path, deb: &Path) -> PathBuf {
    let stage = dir.join("stage");
    let guest = fsmon_tests::repo_root().join("tests/systemd-guest");
    fs::create_dir_all(stage.join("usr/local/bin")).unwrap();
    fs::create_dir_all(stage.join("etc/systemd/system")).unwrap();
    fs::copy(deb, stage.join("fsmon.deb")).unwrap();
    fs::copy(
        guest.join("check.sh"),
        stage.join("usr/local/bin/fsmon-check"),
    )
    .unwrap();
    fs::copy(
        guest.join("fsmon-check.service"),
        stage.join("etc/systemd/system/fsmon-check.service"),
    )
    .unwrap();
    let archive = dir.join("extra.cpio");
    let sh = format!(
        "cd '{}' && find . -mindepth 1 | cpio -o -H newc -R 0:0 --quiet > '{}'",
        stage.display(),
        archive.display()
    );
    let out = run(Command::new("sh").args(["-c", &sh]));
    assert!(out.status.success(), "cpio: {}", text(&out.stderr));
    archive
}

#[test]
fn package_unit_runs_under_real_systemd() {
    let deb = fsmon_tests::built_deb();
    let (rootfs, vmlinuz) = match rootfs().and_then(|r| Ok((r, kernel()?))) {
        Ok(x) => x,
        Err(Unreachable(why)) => {
            println!("SKIPPED package_unit_runs_under_real_systemd: {why}");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let extra = guest_files(dir.path(), &deb);
    let initrd = dir.path().join("guest.cpio");
    let sh = format!(
        "cat '{}' '{}' > '{}'",
        rootfs.display(),
        extra.display(),
        initrd.display()
    );
    assert!(run(Command::new("sh").args(["-c", &sh])).status.success());

    let console = dir.path().join("console.log");
    let results = dir.path().join("results.log");
    // TCG: KVM with -cpu host aborts on this machine's nested KVM (failed
    // to set MSR 0x10a) or hangs before the first console line.
    // FSMON_VM_ACCEL=kvm where KVM works.
    let accel: &[&str] = if std::env::var("FSMON_VM_ACCEL").as_deref() == Ok("kvm") {
        &["-accel", "kvm", "-cpu", "host"]
    } else {
        &["-accel", "tcg,thread=multi", "-cpu", "max"]
    };
    let started = Instant::now();
    let mut qemu = Command::new("qemu-system-x86_64")
        .args(accel)
        .args([
            "-nodefaults",
            "-display",
            "none",
            "-no-reboot",
            "-nic",
            "none",
        ])
        .args(["-m", "1536", "-smp", "2"])
        .arg("-kernel")
        .arg(&vmlinuz)
        .arg("-initrd")
        .arg(&initrd)
        .args([
            "-append",
            // The root is the initramfs itself (tmpfs), systemd its init.
            // No udev in minbase: the serial getty would wait 90 s for its
            // device unit. firstboot would prompt on the console.
            "console=ttyS0 rdinit=/sbin/init panic=-1 systemd.firstboot=off \
             systemd.mask=serial-getty@ttyS0.service systemd.wants=fsmon-check.service",
        ])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-serial")
        .arg(format!("file:{}", results.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(dir.path().join("qemu.log")).unwrap())
        .spawn()
        .expect("qemu-system-x86_64 (cargo xtask test installs qemu-system-x86)");
    // About 1 min under TCG here, alone; generous for a loaded machine.
    let deadline = started + Duration::from_secs(1200);
    let timed_out = loop {
        if qemu.try_wait().unwrap().is_some() {
            break false;
        }
        if Instant::now() > deadline {
            let _ = qemu.kill();
            let _ = qemu.wait();
            break true;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    println!(
        "guest boot + checks: {:.0}s",
        started.elapsed().as_secs_f64()
    );
    let results = fs::read_to_string(&results).unwrap_or_default();
    let console_tail = || {
        let c = text(&fs::read(&console).unwrap_or_default());
        let qemu_log = fs::read_to_string(dir.path().join("qemu.log")).unwrap_or_default();
        let skip = c.chars().count().saturating_sub(4000);
        let tail: String = c.chars().skip(skip).collect();
        format!("qemu: {qemu_log}\nconsole (tail):\n{tail}")
    };
    print!("{results}");
    let failed: Vec<&str> = results.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert!(
        failed.is_empty(),
        "in the guest:\n{}\n{}",
        failed.join("\n"),
        console_tail()
    );
    assert!(
        results.lines().any(|l| l == "DONE"),
        "the guest's checks did not finish{}:\n{results}\n{}",
        if timed_out { " (timed out)" } else { "" },
        console_tail()
    );
    for want in [
        "OK dpkg -i",
        "OK the package started fsmon.service",
        "OK fsmon --system health",
        "OK event logged in /var/log/fsmon",
        "OK eBPF tracker loaded",
        "OK journal priorities parsed by journald",
        "OK systemctl reload succeeds",
        "OK reload: the unreadable store line is a warning in the journal",
        "OK systemctl reload: still active",
        "OK systemctl stop: inactive, exit status 0",
        "OK dpkg --purge",
    ] {
        assert!(
            results.lines().any(|l| l.starts_with(want)),
            "no `{want}` from the guest:\n{results}"
        );
    }
}
