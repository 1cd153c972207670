//! Embeds the eBPF object built by `cargo xtask build-ebpf`.
//!
//! The object is built by a different compiler for a different target, so
//! it cannot be a normal dependency. If it is missing we stop with one line
//! that says how to get it, instead of a wall of compiler errors.
use std::{env, fs, path::PathBuf};

fn main() {
    // The commit for fsmon_build_info: $FSMON_GIT_COMMIT (packaging), else
    // git's, else none ("unknown").
    println!("cargo::rerun-if-env-changed=FSMON_GIT_COMMIT");
    let commit = env::var("FSMON_GIT_COMMIT").ok().or_else(|| {
        std::process::Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_string())
    });
    if let Some(c) =
        commit.filter(|c| !c.is_empty() && c.chars().all(|c| c.is_ascii_alphanumeric()))
    {
        println!("cargo::rustc-env=FSMON_GIT_COMMIT={c}");
    }
    println!("cargo::rerun-if-env-changed=FSMON_EBPF_OBJECT");
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let object = match env::var_os("FSMON_EBPF_OBJECT") {
        Some(p) => PathBuf::from(p),
        None => manifest
            .parent()
            .unwrap()
            .join("target/ebpf/bpfel-unknown-none/release/fsmon"),
    };
    println!("cargo::rerun-if-changed={}", object.display());
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("fsmon.bpf.o");
    match fs::read(&object) {
        Ok(bytes) => fs::write(&out, bytes).expect("write OUT_DIR/fsmon.bpf.o"),
        Err(_) => {
            println!(
                "cargo::error=the eBPF object {} is missing: run `cargo xtask build-ebpf` first",
                object.display()
            );
        }
    }
}
