//! Installing what fsmon's build and tests need, on Debian or Ubuntu.
//! Everything is checked first and skipped when present.
use std::{
    env,
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

use crate::{is_root, root, run_cmd};

/// Debian's Rust 1.96 with a prebuilt `core` for bpfel-unknown-none, and the
/// LLVM that bpf-linker links against (see docs: the usual build-std route
/// needs rust-src, which rustup cannot download here).
const EBPF_PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "libstd-rust-web-dev-bpf",
    "llvm-22-dev",
];
/// What the test suite uses: filesystems on loop devices, and tools it
/// compares against or drives.
const TEST_PACKAGES: &[&str] = &[
    "xfsprogs",
    "btrfs-progs",
    "e2fsprogs",
    "util-linux",
    "jq",
    "python3",
    "sudo",
    // `init --service` is checked with systemd-analyze; --sync-interval with strace.
    "systemd",
    "strace",
    // The man pages are checked with man(1).
    "man-db",
    // tests/retention.rs rotates a live log with a real logrotate (gzip).
    "logrotate",
    // Peers for `cargo xtask bench`, and stdbuf for fatrace's output.
    "fatrace",
    "auditd",
    "inotify-tools",
    "coreutils",
    // extensions/ tests: the servers the scripts feed, and the shipping
    // tests' NATS JetStream server (started by the tests only); pip for
    // PYTHON_PACKAGES.
    "prometheus",
    "influxdb",
    "nats-server",
    "python3-pip",
    // The container test runs a real podman container (runc: crun refuses
    // hybrid cgroup hierarchies) from an image made of busybox-static.
    "podman",
    "runc",
    "busybox-static",
    // tests/systemd_boot.rs: the package's unit under a real systemd, in a
    // qemu guest whose root debootstrap makes (cached in target/).
    "qemu-system-x86",
    "debootstrap",
    "cpio",
];
/// Python packages the extensions tests import, installed into
/// `.tools/python` (the tests put it on PYTHONPATH). None at present: the
/// NATS script that needed nats-py is gone (the daemon ships to NATS itself).
const PYTHON_PACKAGES: &[(&str, &str)] = &[];

const BPF_LINKER_VERSION: &str = "0.13.0";

/// Where bpf-linker is installed: a directory the project controls.
pub fn tools_dir() -> PathBuf {
    root().join(".tools")
}

/// A command run as root: directly when we are root, through sudo otherwise.
pub fn privileged(program: &str) -> Command {
    if is_root() {
        Command::new(program)
    } else {
        let mut c = Command::new("sudo");
        c.arg(program);
        c
    }
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Status}", pkg])
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| o.stdout == b"installed")
}

pub fn apt_install(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if Command::new("apt-get")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_err()
    {
        bail!("missing packages {missing:?} and no apt-get to install them: install them by hand");
    }
    println!("xtask: installing {}", missing.join(" "));
    run_cmd(privileged("apt-get").args(["update", "-q"]))?;
    // Servers (prometheus, influxdb, nats-server) must not be started by
    // their packages: the tests start their own. policy-rc.d exit 101 tells
    // invoke-rc.d and deb-systemd-invoke not to start anything.
    let policy = std::path::Path::new("/usr/sbin/policy-rc.d");
    let own_policy = !policy.exists();
    if own_policy {
        run_cmd(privileged("sh").args([
            "-c",
            "printf '#!/bin/sh\\nexit 101\\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d",
        ]))?;
    }
    let enabled_before = units_enabled_at_boot();
    let result = run_cmd(
        privileged("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing),
    );
    if own_policy {
        run_cmd(privileged("rm").args(["-f", "/usr/sbin/policy-rc.d"]))?;
    }
    // Servers installed for the tests (auditd, influxdb, prometheus,
    // nats-server, podman's units) must not start at the next boot either:
    // whatever the packages enabled, we disable again.
    let newly: Vec<String> = units_enabled_at_boot()
        .difference(&enabled_before)
        .cloned()
        .collect();
    for unit in &newly {
        let _ = privileged("systemctl")
            .args(["disable", "--quiet", unit])
            .stderr(Stdio::null())
            .status();
    }
    if !newly.is_empty() {
        println!("xtask: left disabled at boot: {}", newly.join(" "));
    }
    result
}

/// Units enabled at boot: the entries of /etc/systemd/system/*.wants/.
fn units_enabled_at_boot() -> std::collections::BTreeSet<String> {
    let mut units = std::collections::BTreeSet::new();
    let Ok(dirs) = std::fs::read_dir("/etc/systemd/system") else {
        return units;
    };
    for dir in dirs.flatten() {
        if !dir.file_name().to_string_lossy().ends_with(".wants") {
            continue;
        }
        if let Ok(entries) = std::fs::read_dir(dir.path()) {
            units.extend(
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned()),
            );
        }
    }
    units
}

/// The directory `PYTHON_PACKAGES` go to.
pub fn python_dir() -> PathBuf {
    tools_dir().join("python")
}

fn install_python_packages() -> Result<()> {
    for (spec, module) in PYTHON_PACKAGES {
        if python_dir().join(module).join("__init__.py").exists() {
            continue;
        }
        println!("xtask: installing {spec} into {}", python_dir().display());
        run_cmd(
            Command::new("python3")
                .env("PIP_ROOT_USER_ACTION", "ignore")
                .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
                .args(["-m", "pip", "install", "-q", "--no-deps", "--target"])
                .arg(python_dir())
                .arg(spec),
        )
        .with_context(|| format!("installing {spec}"))?;
    }
    Ok(())
}

fn bpf_linker() -> PathBuf {
    tools_dir().join("bin/bpf-linker")
}

fn bpf_linker_ok() -> bool {
    Command::new(bpf_linker())
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION))
}

fn install_bpf_linker() -> Result<()> {
    if bpf_linker_ok() {
        return Ok(());
    }
    println!(
        "xtask: building bpf-linker {BPF_LINKER_VERSION} into {} (about a minute)",
        tools_dir().display()
    );
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    run_cmd(
        Command::new(cargo)
            // bpf-linker finds LLVM through LLVM_PREFIX; without it it picks
            // Debian's default llvm-config (LLVM 14) and fails to link.
            .env("LLVM_PREFIX", "/usr/lib/llvm-22")
            .args([
                "install",
                &format!("bpf-linker@{BPF_LINKER_VERSION}"),
                "--locked",
            ])
            .args(["--no-default-features", "--features", "llvm-22", "--root"])
            .arg(tools_dir()),
    )
    .context("installing bpf-linker")
}

/// Installs what building fsmon needs, and nothing else: the eBPF
/// toolchain and bpf-linker. This is all `run`, `build` and `install` need.
pub fn setup_build() -> Result<()> {
    if nightly_with_rust_src() {
        apt_install(&["llvm-22-dev"])?;
    } else {
        apt_install(EBPF_PACKAGES)?;
    }
    install_bpf_linker()
}

/// Installs everything the build, the test suite and the benchmarks need:
/// the build's tools, then the test tools, peers and servers (never left
/// enabled at boot).
pub fn setup() -> Result<()> {
    setup_build()?;
    apt_install(TEST_PACKAGES)?;
    install_python_packages()?;
    Ok(())
}

fn nightly_with_rust_src() -> bool {
    Command::new("rustup")
        .args(["+nightly", "component", "list", "--installed"])
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.starts_with("rust-src"))
        })
}

/// How to compile the eBPF crate on this machine.
pub enum EbpfToolchain {
    /// Debian's rustc-web with its prebuilt bpfel core.
    Debian,
    /// A rustup nightly with rust-src: the usual build-std route.
    Nightly,
}

pub fn ebpf_toolchain() -> Result<EbpfToolchain> {
    let debian = PathBuf::from("/usr/lib/rustlib/bpfel-unknown-none/lib").is_dir()
        && PathBuf::from("/usr/bin/cargo").exists();
    let tc = if debian {
        EbpfToolchain::Debian
    } else if nightly_with_rust_src() {
        EbpfToolchain::Nightly
    } else {
        bail!(
            "no eBPF toolchain: need Debian's rustc-web + libstd-rust-web-dev-bpf \
             (`cargo xtask setup` installs them) or a rustup nightly with rust-src \
             (`rustup toolchain install nightly --component rust-src`)"
        );
    };
    if !bpf_linker_ok() {
        bail!(
            "bpf-linker {BPF_LINKER_VERSION} not found in {}: run `cargo xtask setup`",
            tools_dir().display()
        );
    }
    Ok(tc)
}

impl EbpfToolchain {
    /// `cargo build` for the eBPF crate, environment set and cleaned of the
    /// outer cargo's variables.
    pub fn cargo_build(&self) -> Command {
        let path = format!(
            "{}:{}",
            tools_dir().join("bin").display(),
            env::var("PATH").unwrap_or_default()
        );
        let mut cmd = match self {
            EbpfToolchain::Debian => {
                let mut c = Command::new("/usr/bin/cargo");
                // rustup's proxy cannot find the Debian bpfel core.
                c.env("RUSTC", "/usr/bin/rustc");
                // aya-ebpf uses #![feature(asm_experimental_arch)].
                c.env("RUSTC_BOOTSTRAP", "1");
                c.arg("build");
                c
            }
            EbpfToolchain::Nightly => {
                let mut c = Command::new("rustup");
                c.args(["run", "nightly", "cargo", "build", "-Z", "build-std=core"]);
                c
            }
        };
        for (k, _) in env::vars_os() {
            let k = k.to_string_lossy().into_owned();
            if k.starts_with("CARGO_")
                || k == "RUSTUP_TOOLCHAIN"
                || k == "RUSTC_WRAPPER"
                || k == "RUSTFLAGS"
            {
                cmd.env_remove(&k);
            }
        }
        cmd.env("PATH", path)
            .env("RUSTFLAGS", "-C debuginfo=2 -C link-arg=--btf");
        cmd
    }
}
