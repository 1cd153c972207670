//! `cargo xtask vm-test [--kernel 6.1|6.12|all]`: a subset of the real test
//! suite, run inside qemu on the kernels users actually run (Debian 12's
//! 6.1 and its 6.12), not only on the machine's own kernel.
//!
//! The stages, in order:
//! 1. tools: qemu-system-x86, busybox-static and kmod from apt;
//! 2. kernels: `apt-get download` of the newest Debian package of each
//!    series (apt is the only network used), unpacked with `dpkg-deb -x`
//!    and indexed with `depmod -b`: nothing is installed on the host;
//! 3. the guest image: one initramfs (cpio) holding busybox, the host tools
//!    the tests exec, fsmon, the test binaries named in `xtask/vm/tests.txt`
//!    and the glibc libraries `ldd` lists, plus per kernel the modules for
//!    loop, ext4, xfs, btrfs and overlay (with their dependencies), and
//!    `xtask/vm/init.sh` as `/init`;
//! 4. boot: KVM when it boots a probe, TCG otherwise; the guest writes its
//!    results as marker lines to its second serial port (a file here), the
//!    console goes to `target/vm/<kernel>/console.log`, and a guest that
//!    does not power off in time is killed;
//! 5. the verdict: one line per kernel, non-zero exit on any failure.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    env, fs,
    io::Write,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{root, run_cmd, setup};

/// What the host needs: the emulator, a static busybox for the guest's
/// userland and cpio, and depmod for the unpacked kernels' module index.
/// (On Debian 12 with backports' qemu-utils 10 installed, installing
/// qemu-system-x86 7.2 replaces qemu-utils with 7.2.)
const HOST_PACKAGES: &[&str] = &["qemu-system-x86", "busybox-static", "kmod"];

/// Host programs the tests exec, copied into the guest's /bin in place of
/// busybox's applets: the suite must see what it sees on a host. Busybox's
/// sh runs applets such as `touch` and `rm` inside the shell process, without
/// an exec, so an event would name `sh`, not `touch`; and util-linux's
/// `losetup --find --show` and the real mkfs tools are what the tests drive.
#[rustfmt::skip]
const HOST_TOOLS: &[&str] = &[
    // dash and coreutils
    "sh", "touch", "rm", "mkdir", "mv", "cp", "cat", "ln", "ls", "true", "false", "sleep",
    "timeout", "id", "chmod", "chown", "stat", "sync", "truncate", "dd", "head", "tail",
    // filesystems on loop devices, running as another user
    "mkfs.ext4", "mkfs.xfs", "mkfs.btrfs", "losetup", "mount", "umount", "setpriv",
];

/// Modules the guest loads (with their dependencies), in this order. The
/// crypto ones are soft dependencies of ext4 and btrfs that modprobe would
/// load; the guest has no modprobe, so they are named here.
const MODULES: &[&str] = &[
    "crc32c_generic",
    "xxhash_generic",
    "blake2b_generic",
    "loop",
    "ext4",
    "xfs",
    "btrfs",
    "overlay",
];

/// A kernel series and how Debian 12 names its packages: `prefix`, a
/// number, `suffix` (the plain amd64 flavour, not cloud or rt).
struct Series {
    name: &'static str,
    prefix: &'static str,
    suffix: &'static str,
}

const SERIES: &[Series] = &[
    // Debian 12's own kernel: linux-image-6.1.0-57-amd64.
    Series {
        name: "6.1",
        prefix: "linux-image-6.1.0-",
        suffix: "-amd64",
    },
    // Debian 12's 6.12: linux-image-6.12.117+deb12-amd64.
    Series {
        name: "6.12",
        prefix: "linux-image-6.12.",
        suffix: "+deb12-amd64",
    },
];

/// Per-kernel wall-clock budget for boot plus tests (FSMON_VM_TIMEOUT_SECS).
const DEFAULT_TIMEOUT_SECS: u64 = 1200;
/// Guest memory: the loop filesystems' images live in the guest's RAM.
const GUEST_MEMORY_MB: &str = "3072";

fn vm_dir() -> PathBuf {
    root().join("target/vm")
}

fn vm_sources() -> PathBuf {
    root().join("xtask/vm")
}

pub fn vm_test(args: &[String]) -> Result<()> {
    let series = parse_args(args)?;
    let started = Instant::now();
    setup::apt_install(HOST_PACKAGES)?;
    let kernels = series
        .iter()
        .map(|s| Kernel::fetch(s))
        .collect::<Result<Vec<_>>>()?;
    println!(
        "xtask: vm-test set-up (apt packages, kernel packages): {:.1}s",
        started.elapsed().as_secs_f64()
    );

    let started = Instant::now();
    let plan = TestPlan::read()?;
    let binaries = build_binaries(&plan)?;
    println!(
        "xtask: vm-test build (fsmon, test binaries): {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    let common = build_common_image(&binaries, &plan)?;
    let images = kernels
        .iter()
        .map(|k| k.image(&common))
        .collect::<Result<Vec<_>>>()?;
    println!(
        "xtask: vm-test guest images: {:.1}s",
        started.elapsed().as_secs_f64()
    );

    let accel = Accel::detect(&kernels[0], &images[0])?;
    let timeout = Duration::from_secs(
        env::var("FSMON_VM_TIMEOUT_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(DEFAULT_TIMEOUT_SECS),
    );
    let mut verdicts = Vec::new();
    for (kernel, image) in kernels.iter().zip(&images) {
        println!(
            "xtask: vm-test {}: booting under {} (console: {})",
            kernel.version,
            accel.name(),
            kernel.out_dir().join("console.log").display()
        );
        let started = Instant::now();
        let boot = boot(kernel, image, accel, "", timeout)?;
        let verdict = Verdict::read(kernel, &boot, &plan);
        verdict.print(started.elapsed());
        verdicts.push(verdict);
    }
    let failed: usize = verdicts.iter().map(|v| v.failures.len()).sum();
    if failed > 0 {
        bail!("vm-test: {failed} failure(s); the guests' console logs are under target/vm/");
    }
    Ok(())
}

fn parse_args(args: &[String]) -> Result<Vec<&'static Series>> {
    let mut which = "all".to_string();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--kernel" => {
                which = it
                    .next()
                    .context("--kernel needs a value: 6.1, 6.12 or all")?
                    .clone()
            }
            other => bail!(
                "vm-test: unknown argument `{other}` (usage: vm-test [--kernel 6.1|6.12|all])"
            ),
        }
    }
    if which == "all" {
        return Ok(SERIES.iter().collect());
    }
    match SERIES.iter().find(|s| s.name == which) {
        Some(s) => Ok(vec![s]),
        None => bail!("vm-test: unknown kernel `{which}` (6.1, 6.12 or all)"),
    }
}

// ---------------------------------------------------------------------------
// Kernels: downloaded and unpacked, never installed
// ---------------------------------------------------------------------------

struct Kernel {
    /// `uname -r` in the guest, e.g. 6.1.0-57-amd64.
    version: String,
    /// The unpacked package: boot/vmlinuz-*, lib/modules/*.
    tree: PathBuf,
}

impl Kernel {
    /// The newest package of the series apt knows about, downloaded into
    /// target/vm/debs and unpacked into target/vm/<version>/pkg.
    fn fetch(series: &Series) -> Result<Kernel> {
        let package = newest_package(series)?;
        let version = package["linux-image-".len()..].to_string();
        let debs = vm_dir().join("debs");
        fs::create_dir_all(&debs)?;
        let deb = match find_deb(&debs, &package)? {
            Some(d) => d,
            None => {
                println!("xtask: apt-get download {package}");
                let mut apt = Command::new("apt-get");
                if crate::is_root() {
                    // apt's _apt user cannot write into target/: download as root.
                    apt.args(["-o", "APT::Sandbox::User=root"]);
                }
                run_cmd(apt.args(["download", "-q", &package]).current_dir(&debs))
                    .with_context(|| format!("downloading {package}"))?;
                find_deb(&debs, &package)?
                    .with_context(|| format!("apt-get download left no {package}_*.deb"))?
            }
        };
        let kernel = Kernel {
            tree: vm_dir().join(&version).join("pkg"),
            version,
        };
        if !kernel.vmlinuz().exists() || !kernel.modules_dir().join("modules.dep").exists() {
            let _ = fs::remove_dir_all(&kernel.tree);
            fs::create_dir_all(&kernel.tree)?;
            run_cmd(
                Command::new("dpkg-deb")
                    .arg("-x")
                    .arg(&deb)
                    .arg(&kernel.tree),
            )?;
            run_cmd(
                Command::new("depmod")
                    .arg("-b")
                    .arg(&kernel.tree)
                    .arg(&kernel.version),
            )
            .context("indexing the kernel's modules")?;
        }
        Ok(kernel)
    }

    fn vmlinuz(&self) -> PathBuf {
        self.tree.join(format!("boot/vmlinuz-{}", self.version))
    }

    fn modules_dir(&self) -> PathBuf {
        self.tree.join("lib/modules").join(&self.version)
    }

    fn out_dir(&self) -> PathBuf {
        vm_dir().join(&self.version)
    }

    /// The common image plus this kernel's modules (the kernel accepts
    /// concatenated cpio archives).
    fn image(&self, common: &Path) -> Result<PathBuf> {
        let staging = self.out_dir().join("modules-root");
        let _ = fs::remove_dir_all(&staging);
        let dest = staging.join("lib/modules").join(&self.version);
        fs::create_dir_all(&dest)?;
        let order = self.module_load_order()?;
        let mut list = String::new();
        for rel in &order {
            let plain = rel.strip_suffix(".xz").unwrap_or(rel.as_str()).to_string();
            let out = dest.join(&plain);
            fs::create_dir_all(out.parent().unwrap())?;
            let src = self.modules_dir().join(rel);
            if rel.ends_with(".xz") {
                // busybox insmod cannot read compressed modules.
                let data = Command::new("busybox")
                    .args(["xz", "-dc"])
                    .arg(&src)
                    .output()
                    .with_context(|| format!("xz -dc {}", src.display()))?;
                if !data.status.success() {
                    bail!("cannot decompress {}", src.display());
                }
                fs::write(&out, data.stdout)?;
            } else if rel.ends_with(".ko") {
                fs::copy(&src, &out)?;
            } else {
                bail!("{rel}: a module compression this runner does not handle");
            }
            list.push_str(&plain);
            list.push('\n');
        }
        fs::create_dir_all(staging.join("vm"))?;
        fs::write(staging.join("vm/modules"), list)?;
        let modules_cpio = self.out_dir().join("modules.cpio");
        cpio(&staging, &modules_cpio)?;
        let initrd = self.out_dir().join("initrd.cpio");
        let mut out = fs::File::create(&initrd)?;
        out.write_all(&fs::read(common)?)?;
        out.write_all(&fs::read(&modules_cpio)?)?;
        Ok(initrd)
    }

    /// MODULES and their dependencies, dependencies first, as paths
    /// relative to lib/modules/<version> (from modules.dep).
    fn module_load_order(&self) -> Result<Vec<String>> {
        let dep = fs::read_to_string(self.modules_dir().join("modules.dep"))?;
        let builtin =
            fs::read_to_string(self.modules_dir().join("modules.builtin")).unwrap_or_default();
        let mut deps: HashMap<String, Vec<String>> = HashMap::new();
        let mut by_name: HashMap<String, String> = HashMap::new();
        for line in dep.lines() {
            let Some((module, rest)) = line.split_once(':') else {
                continue;
            };
            by_name.insert(module_name(module), module.to_string());
            deps.insert(
                module.to_string(),
                rest.split_whitespace().map(str::to_string).collect(),
            );
        }
        let builtin: BTreeSet<String> = builtin.lines().map(module_name).collect();
        let mut order = Vec::new();
        let mut seen = BTreeSet::new();
        for name in MODULES {
            match by_name.get(*name) {
                Some(path) => visit(path, &deps, &mut seen, &mut order),
                None if builtin.contains(*name) => {}
                None => bail!("kernel {}: no module {name}", self.version),
            }
        }
        return Ok(order);

        fn visit(
            m: &str,
            deps: &HashMap<String, Vec<String>>,
            seen: &mut BTreeSet<String>,
            order: &mut Vec<String>,
        ) {
            if !seen.insert(m.to_string()) {
                return;
            }
            for d in deps.get(m).into_iter().flatten() {
                visit(d, deps, seen, order);
            }
            order.push(m.to_string());
        }
    }
}

/// `kernel/fs/btrfs/btrfs.ko.xz` -> `btrfs`; `-` and `_` are the same.
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.split(".ko").next().unwrap_or(file).replace('-', "_")
}

fn newest_package(series: &Series) -> Result<String> {
    let out = Command::new("apt-cache")
        .args(["pkgnames", series.prefix])
        .output()
        .context("apt-cache pkgnames")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let newest = text
        .lines()
        .filter_map(|name| {
            let n = name
                .strip_prefix(series.prefix)?
                .strip_suffix(series.suffix)?;
            n.parse::<u32>().ok().map(|n| (n, name.to_string()))
        })
        .max();
    match newest {
        Some((_, name)) => Ok(name),
        None => bail!(
            "apt knows no {}N{} package (the {} kernel): vm-test needs Debian 12's archive in apt's sources",
            series.prefix,
            series.suffix,
            series.name
        ),
    }
}

fn find_deb(dir: &Path, package: &str) -> Result<Option<PathBuf>> {
    let prefix = format!("{package}_");
    for e in fs::read_dir(dir)? {
        let name = e?.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) && name.ends_with(".deb") {
            return Ok(Some(dir.join(name)));
        }
    }
    Ok(None)
}

// ---------------------------------------------------------------------------
// The test plan and the binaries it needs
// ---------------------------------------------------------------------------

/// `xtask/vm/tests.txt`: one test binary per line with libtest arguments.
struct TestPlan {
    text: String,
    /// The test target of each line (capture, tracker, drills, ...).
    lines: Vec<String>,
}

impl TestPlan {
    /// FSMON_VM_TESTS names another file of the same form (a developer's
    /// shorter list).
    fn read() -> Result<TestPlan> {
        let path = env::var_os("FSMON_VM_TESTS")
            .map(PathBuf::from)
            .unwrap_or_else(|| vm_sources().join("tests.txt"));
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let lines = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_string)
            .collect();
        Ok(TestPlan { text, lines })
    }

    fn targets(&self) -> BTreeSet<&str> {
        self.lines.iter().map(String::as_str).collect()
    }
}

struct Binaries {
    fsmon: PathBuf,
    testkit: PathBuf,
    /// target name -> the compiled test executable.
    tests: BTreeMap<String, PathBuf>,
}

/// The same debug build `cargo xtask test` runs: fsmon, the test kit and
/// the test binaries, located through cargo's JSON messages.
fn build_binaries(plan: &TestPlan) -> Result<Binaries> {
    crate::build_ebpf()?;
    run_cmd(crate::cargo().current_dir(root()).args([
        "build",
        "--package",
        "fsmon",
        "--package",
        "fsmon-tests",
    ]))?;
    let mut cmd = crate::cargo();
    cmd.current_dir(root())
        .args(["test", "--package", "fsmon-tests", "--no-run"])
        .args(["--message-format", "json-render-diagnostics"]);
    for t in plan.targets() {
        cmd.args(["--test", t]);
    }
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .context("cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the test binaries failed");
    }
    let mut tests = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let (Some(name), Some(exe)) = (msg["target"]["name"].as_str(), msg["executable"].as_str())
        else {
            continue;
        };
        if msg["profile"]["test"] == true && plan.targets().contains(name) {
            tests.insert(name.to_string(), PathBuf::from(exe));
        }
    }
    for t in plan.targets() {
        if !tests.contains_key(t) {
            bail!("xtask/vm/tests.txt names `{t}`, which is no test target of fsmon-tests");
        }
    }
    let debug = root().join("target/debug");
    Ok(Binaries {
        fsmon: debug.join("fsmon"),
        testkit: debug.join("fsmon-testkit"),
        tests,
    })
}

// ---------------------------------------------------------------------------
// The guest image
// ---------------------------------------------------------------------------

/// The kernel-independent part of the initramfs: target/vm/guest.cpio.
///
/// Layout in the guest: busybox applets and the host tools in /bin, the
/// libraries at their host paths, fsmon and the test kit in /fsmon and the
/// test binaries in /fsmon/deps (the tests find fsmon next to their own
/// `deps/` directory, as in target/debug).
fn build_common_image(bin: &Binaries, plan: &TestPlan) -> Result<PathBuf> {
    let staging = vm_dir().join("guest");
    let _ = fs::remove_dir_all(&staging);
    for d in [
        "bin",
        "dev",
        "etc",
        "proc",
        "sys",
        "tmp",
        "var/tmp",
        "run",
        "root",
        "vm",
        "fsmon/deps",
    ] {
        fs::create_dir_all(staging.join(d))?;
    }
    let mut elves: Vec<PathBuf> = Vec::new();

    let busybox = which("busybox")?;
    install_file(&busybox, &staging.join("bin/busybox"))?;
    let host_tools: Vec<PathBuf> = HOST_TOOLS.iter().map(|t| which(t)).collect::<Result<_>>()?;
    let tool_names: BTreeSet<&str> = HOST_TOOLS.iter().copied().collect();
    let applets = Command::new(&busybox).arg("--list").output()?;
    for applet in String::from_utf8_lossy(&applets.stdout).lines() {
        // No `init` or `linuxrc`: if /init fails, the kernel must panic
        // (and qemu exit) rather than start busybox's init on the console.
        let skip = ["busybox", "init", "linuxrc"].contains(&applet);
        if !skip && !tool_names.contains(applet) {
            std::os::unix::fs::symlink("busybox", staging.join("bin").join(applet))?;
        }
    }
    for (name, tool) in HOST_TOOLS.iter().zip(&host_tools) {
        install_file(tool, &staging.join("bin").join(name))?;
        elves.push(tool.clone());
    }

    let fsmon_dir = staging.join("fsmon");
    strip_into(&bin.fsmon, &fsmon_dir.join("fsmon"))?;
    strip_into(&bin.testkit, &fsmon_dir.join("fsmon-testkit"))?;
    elves.extend([bin.fsmon.clone(), bin.testkit.clone()]);
    for (name, exe) in &bin.tests {
        strip_into(exe, &fsmon_dir.join("deps").join(name))?;
        elves.push(exe.clone());
    }

    for lib in shared_libraries(&elves)? {
        install_file(&lib, &staging.join(lib.strip_prefix("/").unwrap()))?;
    }

    fs::write(
        staging.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )?;
    fs::write(staging.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")?;
    if Path::new("/etc/mke2fs.conf").exists() {
        fs::copy("/etc/mke2fs.conf", staging.join("etc/mke2fs.conf"))?;
    }
    install_file(&vm_sources().join("init.sh"), &staging.join("init"))?;
    fs::set_permissions(staging.join("init"), fs::Permissions::from_mode(0o755))?;
    fs::write(staging.join("vm/tests.txt"), &plan.text)?;

    let out = vm_dir().join("guest.cpio");
    cpio(&staging, &out)?;
    Ok(out)
}

/// Every shared library (and the dynamic loader) `ldd` lists for `elves`.
fn shared_libraries(elves: &[PathBuf]) -> Result<BTreeSet<PathBuf>> {
    let mut libs = BTreeSet::new();
    for elf in elves {
        let out = Command::new("ldd").arg(elf).output().context("ldd")?;
        if !out.status.success() {
            continue; // static
        }
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
            // "/lib64/ld-linux-x86-64.so.2 (0x...)"
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next(),
                None => line.split_whitespace().next(),
            };
            if let Some(p) = path.filter(|p| p.starts_with('/')) {
                libs.insert(PathBuf::from(p));
            }
        }
    }
    Ok(libs)
}

fn which(program: &str) -> Result<PathBuf> {
    let path = env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
        .with_context(|| format!("`{program}` not found (cargo xtask setup installs it)"))
}

/// Copies a file (following symlinks), keeping its mode.
fn install_file(src: &Path, dest: &Path) -> Result<()> {
    fs::create_dir_all(dest.parent().unwrap())?;
    fs::copy(src, dest).with_context(|| format!("copying {}", src.display()))?;
    Ok(())
}

/// Debug binaries without their debug sections: a quarter of the size,
/// which is most of the guest's boot time under TCG.
fn strip_into(src: &Path, dest: &Path) -> Result<()> {
    run_cmd(
        Command::new("strip")
            .arg("--strip-debug")
            .arg("-o")
            .arg(dest)
            .arg(src),
    )
}

/// `dir` as a newc cpio archive, every file owned by root.
fn cpio(dir: &Path, out: &Path) -> Result<()> {
    let archive = fs::File::create(out)?;
    let mut find = Command::new("busybox")
        .args(["find", "."])
        .current_dir(dir)
        .stdout(Stdio::piped())
        .spawn()?;
    let status = Command::new("busybox")
        .args(["cpio", "-o", "-H", "newc", "-R", "0:0"])
        .current_dir(dir)
        .stdin(find.stdout.take().unwrap())
        .stdout(archive)
        .stderr(Stdio::null())
        .status()?;
    if !find.wait()?.success() || !status.success() {
        bail!("cpio of {} failed", dir.display());
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Booting
// ---------------------------------------------------------------------------

#[derive(Clone, Copy)]
enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "KVM",
            Accel::Tcg => "TCG (emulation)",
        }
    }

    fn qemu_args(self) -> &'static [&'static str] {
        match self {
            Accel::Kvm => &["-accel", "kvm", "-cpu", "host"],
            Accel::Tcg => &["-accel", "tcg,thread=multi", "-cpu", "max"],
        }
    }

    /// KVM if it boots the kernel to our /init (the probe powers off at
    /// once); some nested KVM devices abort or fail to emulate early in the
    /// boot, so having /dev/kvm is not enough.
    fn detect(kernel: &Kernel, image: &Path) -> Result<Accel> {
        if env::var("FSMON_VM_ACCEL").as_deref() == Ok("tcg") {
            return Ok(Accel::Tcg);
        }
        let usable = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok();
        if !usable {
            println!("xtask: vm-test: no usable /dev/kvm; using TCG");
            return Ok(Accel::Tcg);
        }
        let probe = boot(
            kernel,
            image,
            Accel::Kvm,
            "fsmon.vm=probe",
            Duration::from_secs(60),
        )?;
        if probe.results.lines().any(|l| l == "PROBE ok") {
            Ok(Accel::Kvm)
        } else {
            println!(
                "xtask: vm-test: KVM did not boot {} (see {}); using TCG",
                kernel.version,
                probe.console.display()
            );
            Ok(Accel::Tcg)
        }
    }
}

struct Boot {
    /// The marker lines the guest wrote to its second serial port.
    results: String,
    console: PathBuf,
    timed_out: bool,
}

/// Boots `kernel` with `image` and waits for the guest to power off, or
/// kills it after `timeout`.
fn boot(
    kernel: &Kernel,
    image: &Path,
    accel: Accel,
    extra: &str,
    timeout: Duration,
) -> Result<Boot> {
    let dir = kernel.out_dir();
    fs::create_dir_all(&dir)?;
    let tag = if extra.is_empty() { "" } else { "probe-" };
    let console = dir.join(format!("{tag}console.log"));
    let results = dir.join(format!("{tag}results.log"));
    let _ = fs::remove_file(&results);
    let append = format!("console=ttyS0 rdinit=/init panic=-1 quiet loglevel=4 {extra}");
    let mut child = Command::new("qemu-system-x86_64")
        .args(accel.qemu_args())
        .args(["-nodefaults", "-display", "none", "-no-reboot"])
        .args(["-m", GUEST_MEMORY_MB, "-smp", "2"])
        .arg("-kernel")
        .arg(kernel.vmlinuz())
        .arg("-initrd")
        .arg(image)
        .args(["-append", &append])
        // ttyS0: the console (kernel and test output); ttyS1: the results.
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-serial")
        .arg(format!("file:{}", results.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(dir.join(format!("{tag}qemu.log")))?)
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if Instant::now() > deadline {
            timed_out = true;
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(Boot {
        results: fs::read_to_string(&results).unwrap_or_default(),
        console,
        timed_out,
    })
}

// ---------------------------------------------------------------------------
// Results
// ---------------------------------------------------------------------------

/// What the guest reported, as counted on the host. The guest writes
/// (see init.sh):
///   KERNEL <uname -r>
///   MODULE-FAILED <module>
///   TEST <target>::<test name> ok|FAILED|ignored
///   RUN <target> exit=<code> tests=<n>
///   DONE
struct Verdict {
    version: String,
    passed: usize,
    failures: Vec<String>,
}

impl Verdict {
    fn read(kernel: &Kernel, boot: &Boot, plan: &TestPlan) -> Verdict {
        let mut v = Verdict {
            version: kernel.version.clone(),
            passed: 0,
            failures: Vec::new(),
        };
        let mut runs = 0;
        let mut done = false;
        let mut failed_in_run = 0;
        for line in boot.results.lines().map(str::trim_end) {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("KERNEL") => {
                    let got = words.next().unwrap_or("");
                    if got != kernel.version {
                        v.failures
                            .push(format!("the guest runs {got}, not {}", kernel.version));
                    }
                }
                Some("MODULE-FAILED") => v.failures.push(format!(
                    "module {} did not load",
                    words.next().unwrap_or("?")
                )),
                Some("TEST") => {
                    let name = words.next().unwrap_or("?");
                    match words.next() {
                        Some("ok") => v.passed += 1,
                        Some("ignored") => {}
                        _ => {
                            failed_in_run += 1;
                            v.failures.push(name.to_string());
                        }
                    }
                }
                Some("RUN") => {
                    runs += 1;
                    let target = words.next().unwrap_or("?");
                    let field = |k: &str| {
                        line.split_whitespace()
                            .find_map(|w| w.strip_prefix(k))
                            .and_then(|n| n.parse::<i64>().ok())
                            .unwrap_or(-1)
                    };
                    let (exit, tests) = (field("exit="), field("tests="));
                    if tests == 0 {
                        v.failures
                            .push(format!("{target}: the filters matched no test"));
                    } else if exit != 0 && failed_in_run == 0 {
                        v.failures.push(format!(
                            "{target}: exited with {exit} (see the console log)"
                        ));
                    }
                    failed_in_run = 0;
                }
                Some("DONE") => done = true,
                _ => {}
            }
        }
        let planned = plan.lines.len();
        if boot.timed_out {
            v.failures.push("the guest timed out and was killed".into());
        } else if !done {
            v.failures
                .push("the guest stopped before reporting DONE".into());
        }
        if runs < planned {
            v.failures
                .push(format!("only {runs} of {planned} test lines ran"));
        }
        v
    }

    fn print(&self, took: Duration) {
        println!(
            "vm-test {}: {} passed, {} failed ({:.0}s)",
            self.version,
            self.passed,
            self.failures.len(),
            took.as_secs_f64()
        );
        for f in &self.failures {
            println!("  FAILED {f}");
        }
    }
}
