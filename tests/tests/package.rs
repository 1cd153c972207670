//! The Debian package from `cargo xtask deb`, installed on this machine
//! with dpkg, checked, and purged. The binary it installs (/usr/bin/fsmon)
//! is not the one the other tests run (target/debug/fsmon).
use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// dpkg, retried while another process holds its lock (apt elsewhere).
fn dpkg(args: &[&str]) -> Output {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let out = Command::new("dpkg").args(args).output().expect("dpkg");
        let err = text(&out.stderr);
        if out.status.success() || !err.contains("lock") || Instant::now() > deadline {
            return out;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn group_exists(name: &str) -> bool {
    nix::unistd::Group::from_name(name).unwrap().is_some()
}

#[test]
fn deb_installs_runs_and_purges_cleanly() {
    let deb = fsmon_tests::built_deb();
    let installed_before = Command::new("dpkg")
        .args(["-s", "fsmon"])
        .output()
        .unwrap()
        .status
        .success();
    assert!(
        !installed_before,
        "the fsmon package is already installed here: purge it first (dpkg --purge fsmon)"
    );
    assert!(
        !group_exists("fsmon"),
        "group fsmon exists before the package is installed (from `cargo xtask install`?): the purge check needs it absent"
    );

    // The package's contents, before installing.
    let contents = Command::new("dpkg-deb")
        .arg("-c")
        .arg(&deb)
        .output()
        .unwrap();
    let listing = text(&contents.stdout);
    for want in [
        "./usr/bin/fsmon",
        "./usr/share/man/man1/fsmon.1",
        "./usr/share/man/man1/fsmon-daemon.1",
        "./usr/share/bash-completion/completions/fsmon",
        "./usr/share/zsh/vendor-completions/_fsmon",
        "./usr/share/fish/vendor_completions.d/fsmon.fish",
        "./etc/fsmon/fsmon.toml",
        "fsmon.service",
    ] {
        assert!(
            listing.contains(want),
            "{want} missing from the package:\n{listing}"
        );
    }

    let out = dpkg(&["-i", deb.to_str().unwrap()]);
    // Purged at the end even if a check below fails.
    struct Purge;
    impl Drop for Purge {
        fn drop(&mut self) {
            let _ = dpkg(&["--purge", "fsmon"]);
        }
    }
    let _purge = Purge;
    assert!(
        out.status.success(),
        "dpkg -i: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let files: Vec<PathBuf> = text(&dpkg(&["-L", "fsmon"]).stdout)
        .lines()
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .collect();
    let unit = files
        .iter()
        .find(|p| p.ends_with("systemd/system/fsmon.service"))
        .unwrap_or_else(|| panic!("no unit installed: {files:?}"))
        .clone();
    let unit_text = std::fs::read_to_string(&unit).unwrap();
    assert!(
        unit_text.contains("ExecStart=/usr/bin/fsmon daemon --system"),
        "{unit_text}"
    );
    let v = Command::new("/usr/bin/fsmon")
        .arg("--version")
        .output()
        .unwrap();
    assert!(v.status.success());
    assert_eq!(
        text(&v.stdout).trim(),
        format!("fsmon {}", env!("CARGO_PKG_VERSION"))
    );
    let man = Command::new("/usr/bin/fsmon").arg("man").output().unwrap();
    assert!(text(&man.stdout).contains(".TH"), "the man page renders");
    assert!(group_exists("fsmon"), "postinst made group fsmon");
    let verify = Command::new("systemd-analyze")
        .args(["--man=no", "verify"])
        .arg(&unit)
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "systemd-analyze verify: {}",
        text(&verify.stderr)
    );
    // Enabled at boot (deb-systemd-helper links it, with or without a
    // running systemd).
    assert!(
        std::fs::symlink_metadata("/etc/systemd/system/multi-user.target.wants/fsmon.service")
            .is_ok(),
        "the package did not enable fsmon.service"
    );
    // Where systemd runs, the package started the service.
    if Path::new("/run/systemd/system").is_dir() {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let active = Command::new("systemctl")
                .args(["is-active", "fsmon"])
                .output()
                .unwrap();
            if text(&active.stdout).trim() == "active" {
                break;
            }
            assert!(Instant::now() < deadline, "fsmon.service is not active");
            std::thread::sleep(Duration::from_millis(200));
        }
        let h = Command::new("/usr/bin/fsmon")
            .args(["--system", "health"])
            .output()
            .unwrap();
        assert!(h.status.success(), "{}", text(&h.stderr));
    }

    let out = dpkg(&["--purge", "fsmon"]);
    assert!(out.status.success(), "dpkg --purge: {}", text(&out.stderr));
    for f in &files {
        assert!(!f.exists(), "{} left after purge", f.display());
    }
    // Nor the enablement (deb-systemd-helper's links and its record).
    for left in [
        "/etc/systemd/system/multi-user.target.wants/fsmon.service",
        "/var/lib/systemd/deb-systemd-helper-enabled/fsmon.service.dsh-also",
        "/var/lib/systemd/deb-systemd-helper-enabled/multi-user.target.wants/fsmon.service",
    ] {
        assert!(
            std::fs::symlink_metadata(left).is_err(),
            "{left} left after purge"
        );
    }
    for dir in ["/etc/fsmon", "/var/lib/fsmon", "/var/log/fsmon"] {
        assert!(!Path::new(dir).exists(), "{dir} left after purge");
    }
    assert!(!group_exists("fsmon"), "group fsmon left after purge");
    assert!(
        !Command::new("dpkg")
            .args(["-s", "fsmon"])
            .output()
            .unwrap()
            .status
            .success(),
        "dpkg still knows fsmon"
    );
}
