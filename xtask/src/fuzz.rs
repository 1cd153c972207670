//! `cargo xtask fuzz [SECS]`: runs each fuzz target in `tests/fuzz` for SECS
//! seconds with cargo-fuzz (libFuzzer) on the stable toolchain.
//!
//! - cargo-fuzz is installed into `.tools/` when missing (about a minute).
//! - Targets are built without a sanitizer (`--sanitizer none`): sanitizers
//!   need a nightly compiler, and the code under test is safe Rust, where a
//!   bug shows as a panic; overflow checks and debug assertions are on
//!   (tests/fuzz/Cargo.toml).
//! - The checked-in seeds (`tests/fuzz/corpus/<target>`) are only read; what
//!   the fuzzer learns goes to `tests/fuzz/corpus-work/<target>` and is
//!   reused by the next run. Crash inputs land in `tests/fuzz/artifacts`.
//! - The fsmon library is built with an empty placeholder for the eBPF
//!   object: the parsers do not load it, and fuzzing needs no eBPF toolchain.
use std::{
    collections::HashSet,
    env, fs,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context, Result, bail};

use crate::{root, run_cmd, setup::tools_dir};

const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Each target, and the longest input libFuzzer may make for it.
const TARGETS: &[(&str, usize)] = &[
    ("fanotify_records", 4096),
    ("size_filter", 256),
    ("path_escape", 1024),
    ("time_filter", 1024),
    ("socket_request", 4096),
    ("socket_response", 4096),
    // The log reader repeats its input up to 32 times: files of up to
    // 256 KiB, across page and chunk boundaries.
    ("log_reader", 8192),
];

/// A single input slower than this is reported as a hang.
const TIMEOUT_SECS: u64 = 10;
/// Memory limit per target process.
const RSS_LIMIT_MB: u64 = 2048;

fn fuzz_dir() -> PathBuf {
    root().join("tests/fuzz")
}

fn cargo_fuzz_bin() -> PathBuf {
    tools_dir().join("bin/cargo-fuzz")
}

fn cargo_fuzz_ok() -> bool {
    Command::new(cargo_fuzz_bin())
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(CARGO_FUZZ_VERSION))
}

fn install_cargo_fuzz() -> Result<()> {
    if cargo_fuzz_ok() {
        return Ok(());
    }
    println!(
        "xtask: building cargo-fuzz {CARGO_FUZZ_VERSION} into {} (about a minute)",
        tools_dir().display()
    );
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    run_cmd(
        Command::new(cargo)
            .args([
                "install",
                &format!("cargo-fuzz@{CARGO_FUZZ_VERSION}"),
                "--locked",
                "--root",
            ])
            .arg(tools_dir()),
    )
    .context("installing cargo-fuzz")
}

/// `cargo-fuzz fuzz <subcommand>`, run from the repository root, without
/// the variables `cargo run` set for xtask itself.
fn cargo_fuzz(subcommand: &str, placeholder: &Path) -> Command {
    let mut cmd = Command::new(cargo_fuzz_bin());
    cmd.current_dir(root())
        .args(["fuzz", subcommand, "--fuzz-dir"])
        .arg(fuzz_dir())
        .args(["--sanitizer", "none"])
        .env("FSMON_EBPF_OBJECT", placeholder);
    for (k, _) in env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("CARGO_PKG_")
            || [
                "CARGO_MANIFEST_DIR",
                "CARGO_MANIFEST_PATH",
                "CARGO_CRATE_NAME",
                "CARGO_BIN_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_RUSTC_CURRENT_DIR",
                "CARGO_TARGET_TMPDIR",
            ]
            .contains(&k.as_ref())
        {
            cmd.env_remove(k.as_ref());
        }
    }
    cmd
}

fn files_in(dir: &Path) -> HashSet<PathBuf> {
    fs::read_dir(dir)
        .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default()
}

/// What one run reported.
struct Outcome {
    target: &'static str,
    execs: Option<u64>,
    per_sec: Option<u64>,
    crashes: Vec<PathBuf>,
    failed: Option<String>,
    log: PathBuf,
}

pub fn fuzz(args: &[String]) -> Result<()> {
    let secs: u64 = match args {
        [] => 30,
        [s] => s
            .parse()
            .ok()
            .filter(|&n| n > 0)
            .with_context(|| format!("fuzz: SECS must be a positive number, not `{s}`"))?,
        _ => bail!("usage: cargo xtask fuzz [SECS]"),
    };
    install_cargo_fuzz()?;

    let work = fuzz_dir().join("target/xtask");
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let placeholder = work.join("empty.bpf.o");
    if !placeholder.exists() {
        fs::write(&placeholder, b"").context("writing the placeholder eBPF object")?;
    }

    println!("xtask: building the fuzz targets");
    run_cmd(&mut cargo_fuzz("build", &placeholder)).context("building the fuzz targets")?;

    let mut outcomes = Vec::new();
    for &(target, max_len) in TARGETS {
        println!("xtask: fuzzing {target} for {secs} s");
        outcomes.push(run_target(target, max_len, secs, &placeholder, &work)?);
    }

    println!("\nxtask: fuzz summary ({secs} s per target)");
    let mut bad = Vec::new();
    for o in &outcomes {
        let show = |n: Option<u64>| n.map_or("?".into(), |n| n.to_string());
        let verdict = match (&o.failed, o.crashes.is_empty()) {
            (None, true) => "ok".to_string(),
            (Some(why), _) => format!("FAILED: {why}"),
            (None, false) => "FAILED".to_string(),
        };
        println!(
            "  {:<17} {:>12} execs {:>9} execs/s  {verdict}",
            o.target,
            show(o.execs),
            show(o.per_sec)
        );
        for c in &o.crashes {
            println!("    crashing input: {}", c.display());
        }
        if o.failed.is_some() || !o.crashes.is_empty() {
            println!("    libFuzzer output: {}", o.log.display());
            bad.push(o.target);
        }
    }
    if !bad.is_empty() {
        bail!(
            "fuzzing found problems in {}; reproduce with `{} fuzz run --fuzz-dir tests/fuzz \
             --sanitizer none TARGET INPUT` (FSMON_EBPF_OBJECT={})",
            bad.join(", "),
            cargo_fuzz_bin().display(),
            placeholder.display()
        );
    }
    Ok(())
}

fn run_target(
    target: &'static str,
    max_len: usize,
    secs: u64,
    placeholder: &Path,
    work: &Path,
) -> Result<Outcome> {
    let seeds = fuzz_dir().join("corpus").join(target);
    let corpus = fuzz_dir().join("corpus-work").join(target);
    let artifacts = fuzz_dir().join("artifacts").join(target);
    // The log reader's temp files go here, so a crash mid-input leaves
    // nothing in the system's temp directory.
    let tmp = work.join("tmp").join(target);
    let log = work.join(format!("{target}.log"));
    for dir in [&corpus, &artifacts] {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if tmp.exists() {
        fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
    }
    fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let before = files_in(&artifacts);

    let mut cmd = cargo_fuzz("run", placeholder);
    cmd.arg(target)
        .arg(&corpus)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={secs}"))
        .arg(format!("-timeout={TIMEOUT_SECS}"))
        .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
        .arg(format!("-max_len={max_len}"))
        .arg("-print_final_stats=1")
        .env("TMPDIR", &tmp)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start cargo-fuzz for {target}"))?;
    // libFuzzer reports on stderr, cargo-fuzz on both: keep all of it in the
    // log, show the progress lines.
    let stdout = child.stdout.take().unwrap();
    let out_thread = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    let mut file = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let (mut execs, mut per_sec) = (None, None);
    let mut written = Vec::new();
    // Lines still to show after a panic's first line (its message).
    let mut show_next = 0u32;
    for line in BufReader::new(child.stderr.take().unwrap())
        .lines()
        .map_while(Result::ok)
    {
        let _ = writeln!(file, "{line}");
        if let Some(v) = line.strip_prefix("stat::number_of_executed_units:") {
            execs = v.trim().parse().ok();
        } else if let Some(v) = line.strip_prefix("stat::average_exec_per_sec:") {
            per_sec = v.trim().parse().ok();
        } else if let Some((_, path)) = line.split_once("Test unit written to ") {
            written.push(root().join(path.trim()));
            println!("  {line}");
        } else if line.contains("panicked") {
            println!("  {line}");
            show_next = 2;
        } else if show_next > 0
            || line.contains("pulse")
            || line.contains("DONE")
            || line.contains("INITED")
            || line.contains("ERROR")
            || line.contains("SUMMARY")
        {
            show_next = show_next.saturating_sub(1);
            println!("  {line}");
        }
    }
    let status = child.wait().context("waiting for cargo-fuzz")?;
    for line in out_thread.join().unwrap_or_default() {
        let _ = writeln!(file, "{line}");
    }
    let _ = fs::remove_dir_all(&tmp);

    // New files in the artifacts directory, and those libFuzzer named (an
    // input found again has the same name as before).
    let mut crashes: Vec<PathBuf> = files_in(&artifacts)
        .difference(&before)
        .cloned()
        .chain(written)
        .collect();
    crashes.sort();
    crashes.dedup();
    let failed =
        (!status.success()).then(|| format!("{status} after {} s", started.elapsed().as_secs()));
    Ok(Outcome {
        target,
        execs,
        per_sec,
        crashes,
        failed,
        log,
    })
}
