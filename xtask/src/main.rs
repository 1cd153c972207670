//! `cargo xtask <task>`: everything a developer or CI needs, from a fresh
//! Debian/Ubuntu machine with only rustup's cargo on it.
//!
//! Tasks are idempotent: a second `setup` finds everything in place and
//! returns in seconds.
mod fuzz;
mod setup;

use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context, Result, bail};

const USAGE: &str = "usage: cargo xtask <task>

tasks:
  setup        install what is missing (apt packages, bpf-linker into .tools/)
  build-ebpf   compile fsmon-ebpf for bpfel-unknown-none
  build        build-ebpf, then the fsmon binary (release)
  run [ARGS]   setup, build, install /usr/local/bin/fsmon, run `sudo fsmon daemon [ARGS]`
  test [ARGS]  setup, build, run the whole test suite as root, ending with the soak drill
               (ARGS go to cargo test; with ARGS the soak is skipped)
  bench        setup, build, run the benchmarks and write bench-report.md
  soak         setup, build (release), run the 10-minute RSS soak in tests/tests/drills.rs
  fuzz [SECS]  run each fuzz target for SECS seconds (default 30)";

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
        "build" => setup::setup().and_then(|_| build(true)),
        "run" => run(rest),
        "test" => test(rest),
        "bench" => bench(rest),
        "soak" => soak(rest),
        "fuzz" => fuzz::fuzz(rest),
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
fn cargo() -> Command {
    Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// The eBPF object's path; fsmon's build.rs looks here.
pub fn ebpf_object() -> PathBuf {
    root().join("target/ebpf/bpfel-unknown-none/release/fsmon")
}

fn build_ebpf() -> Result<()> {
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

fn build(release: bool) -> Result<()> {
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
    setup::setup()?;
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
    // The whole suite ends with the soak drill (10 minutes; FSMON_SOAK_SECS
    // shortens it). Not when only some tests were asked for.
    if args.is_empty() {
        println!("xtask: the soak drill: the release daemon at a steady event rate, RSS sampled");
        soak(&[])?;
    }
    Ok(())
}

/// The soak drill (ignored by plain `cargo test`): the release daemon's RSS
/// at a steady event rate, which is what the RSS target is about.
fn soak(args: &[String]) -> Result<()> {
    setup::setup()?;
    build(true)?;
    let mut cmd = cargo();
    cmd.current_dir(root())
        .args(["test", "--package", "fsmon-tests", "--test", "drills", "--"])
        .args(["--ignored", "--nocapture", "soak"])
        .args(args)
        .env("FSMON_BIN", root().join("target/release/fsmon"));
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
