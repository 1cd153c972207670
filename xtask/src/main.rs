//! `cargo xtask <task>`: everything a developer or CI needs, from a fresh
//! Debian/Ubuntu machine with only rustup's cargo on it.
//!
//! Tasks are idempotent: a second `setup` finds everything in place and
//! returns in seconds.
mod fuzz;
mod install;
mod setup;
mod vm;

use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context, Result, bail};

const USAGE: &str = "usage: cargo xtask <task>

tasks:
  setup        install what the build, tests and benchmarks need (apt packages, bpf-linker
               into .tools/); test servers installed here are left disabled at boot
  build-ebpf   compile fsmon-ebpf for bpfel-unknown-none
  build        build-ebpf, then the fsmon binary (release)
  run [ARGS]   install the build tools only, build, install /usr/local/bin/fsmon,
               run `sudo fsmon daemon [ARGS]`
  install      install the build tools only, build (release), install fsmon for real use:
               /usr/local/bin/fsmon, man pages, completions, the systemd unit, group fsmon
  uninstall    remove what `install` installed (the logs and store stay)
  deb          build (release) and package target/debian/fsmon_<version>_<arch>.deb with
               cargo-deb (installed into .tools/)
  test [ARGS]  setup, build, run the whole test suite as root, then vm-test (FSMON_VM_TEST=0
               skips it, =6.1 or =6.12 runs one kernel) and a 3-minute soak drill (ARGS go
               to cargo test; with ARGS both are skipped)
  bench        setup, build, run the benchmarks and write bench-report.md
  soak         setup, build (release), run the 10-minute RSS soak (FSMON_SOAK_SECS to change)
  fuzz [SECS]  run each fuzz target for SECS seconds (default 30)
  vm-test [--kernel 6.1|6.12|all]
               boot Debian 12's kernels under qemu and run xtask/vm/tests.txt
               in each (part of `test`; FSMON_VM_TEST=0 skips it there)";

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let Some(task) = args.first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let rest = &args[1..];
    let result = match task.as_str() {
        "setup" => setup::setup(),
        "build-ebpf" => build_ebpf(),
        "build" => setup::setup_build().and_then(|_| build(true)),
        "run" => run(rest),
        "install" => setup::setup_build()
            .and_then(|_| build(true))
            .and_then(|_| install::install()),
        "uninstall" => install::uninstall(),
        "deb" => setup::setup_build()
            .and_then(|_| build(true))
            .and_then(|_| install::deb()),
        "test" => test(rest),
        "bench" => bench(rest),
        "soak" => soak(rest),
        "fuzz" => fuzz::fuzz(rest),
        "vm-test" => setup::setup().and_then(|_| vm::vm_test(rest)),
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(())
        }
        other => {
            eprintln!("xtask: unknown task `{other}`\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (xtask lives one level below it).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc_geteuid() == 0 }
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

/// Runs a command, failing with its name if it fails.
pub fn run_cmd(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

/// `cargo` of the toolchain that runs xtask (rustup's stable).
pub fn cargo() -> Command {
    Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// The eBPF object's path; fsmon's build.rs looks here.
pub fn ebpf_object() -> PathBuf {
    root().join("target/ebpf/bpfel-unknown-none/release/fsmon")
}

pub fn build_ebpf() -> Result<()> {
    let tc = setup::ebpf_toolchain()?;
    let mut cmd = tc.cargo_build();
    cmd.current_dir(root().join("fsmon-ebpf"))
        .args([
            "--release",
            "--target",
            "bpfel-unknown-none",
            "--target-dir",
        ])
        .arg(root().join("target/ebpf"));
    run_cmd(&mut cmd).context("building the eBPF programs")?;
    println!("xtask: eBPF object at {}", ebpf_object().display());
    Ok(())
}

pub fn build(release: bool) -> Result<()> {
    build_ebpf()?;
    let mut cmd = cargo();
    cmd.current_dir(root())
        .args(["build", "--package", "fsmon"]);
    if release {
        cmd.arg("--release");
    }
    run_cmd(&mut cmd)
}

fn run(args: &[String]) -> Result<()> {
    setup::setup_build()?;
    build(true)?;
    let bin = root().join("target/release/fsmon");
    let dest = "/usr/local/bin/fsmon";
    let mut install = setup::privileged("install");
    install.args(["-m", "0755"]).arg(&bin).arg(dest);
    run_cmd(&mut install).context("installing fsmon to /usr/local/bin")?;
    println!("xtask: installed {dest}; starting `sudo fsmon daemon` (Ctrl-C stops it)");
    let mut daemon = setup::privileged(dest);
    daemon.arg("daemon").args(args);
    run_cmd(&mut daemon)
}

fn test(args: &[String]) -> Result<()> {
    setup::setup()?;
    build_ebpf()?;
    // The daemon binary the integration tests start.
    run_cmd(
        cargo()
            .current_dir(root())
            .args(["build", "--package", "fsmon"]),
    )?;
    let mut cmd = cargo();
    cmd.current_dir(root())
        .args(["test", "--workspace", "--exclude", "xtask"])
        .args(args);
    if !is_root() {
        // Tests need root (fanotify, BPF, loop devices): build as the user,
        // run each test binary through sudo.
        cmd.env("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER", "sudo -E");
    }
    run_cmd(&mut cmd)?;
    // The whole suite also runs part of itself on Debian 12's 6.1 and 6.12
    // kernels under qemu (FSMON_VM_TEST=0 skips that), and ends with a
    // shortened soak drill (3 minutes, so CI stays well inside its budget;
    // `cargo xtask soak` runs the full 10). Neither when only some tests
    // were asked for.
    if args.is_empty() {
        // FSMON_VM_TEST: 0 (skip), 6.1 or 6.12 (one kernel), else all.
        match env::var("FSMON_VM_TEST").as_deref() {
            Ok("0") => println!("xtask: FSMON_VM_TEST=0: the kernels under qemu are skipped"),
            Ok(kernel @ ("6.1" | "6.12")) => {
                vm::vm_test(&["--kernel".to_string(), kernel.to_string()])?
            }
            _ => vm::vm_test(&[])?,
        }
        println!(
            "xtask: the soak drill (3 min): the release daemon at a steady event rate, RSS sampled"
        );
        soak_for(&[], TEST_SOAK_SECS)?;
    }
    Ok(())
}

/// How long the soak runs at the end of `cargo xtask test`.
const TEST_SOAK_SECS: u64 = 180;

/// The soak drill (ignored by plain `cargo test`): the release daemon's RSS
/// at a steady event rate, which is what the RSS target is about. Ten
/// minutes unless FSMON_SOAK_SECS says otherwise.
fn soak(args: &[String]) -> Result<()> {
    let secs = env::var("FSMON_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    soak_for(args, secs)
}

fn soak_for(args: &[String], secs: u64) -> Result<()> {
    setup::setup()?;
    build(true)?;
    let mut cmd = cargo();
    cmd.current_dir(root())
        .args(["test", "--package", "fsmon-tests", "--test", "drills", "--"])
        .args(["--ignored", "--nocapture", "soak"])
        .args(args)
        .env("FSMON_BIN", root().join("target/release/fsmon"))
        .env("FSMON_SOAK_SECS", secs.to_string());
    if !is_root() {
        cmd.env("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER", "sudo -E");
    }
    run_cmd(&mut cmd)
}

fn bench(args: &[String]) -> Result<()> {
    setup::setup()?;
    build(true)?;
    // The workload programs the benchmarks run (`cargo run` below builds
    // only the bench binary itself).
    run_cmd(cargo().current_dir(root()).args([
        "build",
        "--release",
        "--package",
        "fsmon-tests",
        "--bin",
        "fsmon-testkit",
    ]))?;
    let mut cmd = cargo();
    cmd.current_dir(root())
        .args([
            "run",
            "--release",
            "--package",
            "fsmon-tests",
            "--bin",
            "fsmon-bench",
            "--",
        ])
        .args(args);
    if !is_root() {
        cmd.env("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER", "sudo -E");
    }
    run_cmd(&mut cmd)
}
