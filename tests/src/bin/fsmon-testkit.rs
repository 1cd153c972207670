//! Small, fast workload programs for tests and benchmarks (no shell loops).
//!
//!   fsmon-testkit threads N               start N threads, print "ready", wait for stdin EOF
//!   fsmon-testkit storm DIR FILES DIRS    create+write, rename, delete FILES files in DIRS new dirs
//!   fsmon-testkit mktree DIR FILES DIRS   create FILES files spread over DIRS dirs (no deletes)
//!   fsmon-testkit touches DIR N           N short-lived `touch` processes (fork+exec), prints their pids
//!   fsmon-testkit shwrites DIR N          N `sh -c 'echo > F'` writes, prints the sh pids
//!   fsmon-testkit flood DIR N [RATE]      N x (create, close, unlink) of new names, <= RATE events/s
//!   fsmon-testkit forks N                 N short-lived child processes (fork+exit)
//!   fsmon-testkit churn DIR N EVERY       N short-lived children (fork+exit); every EVERY-th
//!                                         execs `touch DIR/cI` instead; prints "pid path" of those
//!   fsmon-testkit sleepers N              N children alive at once; prints "ready", and on
//!                                         stdin EOF ends them all and reaps them
//!   fsmon-testkit execthread PROG ARGS..  a thread that is not the leader execs PROG
use std::{
    fs,
    io::{Read, Write},
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    sync::mpsc,
    thread,
};

fn arg<T: std::str::FromStr>(args: &[String], i: usize, what: &str) -> T {
    args.get(i).and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        eprintln!("fsmon-testkit: missing or bad {what}");
        std::process::exit(2)
    })
}

fn threads(n: usize) {
    let (tx, rx) = mpsc::channel::<()>();
    let gate = std::sync::Arc::new(std::sync::Barrier::new(n + 1));
    let mut handles = Vec::with_capacity(n);
    for _ in 0..n {
        let gate = gate.clone();
        let tx = tx.clone();
        handles.push(
            thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || {
                    gate.wait();
                    gate.wait();
                    drop(tx);
                })
                .expect("spawn thread"),
        );
    }
    gate.wait(); // all threads exist now
    println!("ready");
    let _ = std::io::stdout().flush();
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    gate.wait();
    drop(tx);
    for h in handles {
        let _ = h.join();
    }
    let _ = rx.recv();
}

/// The create-storm: per file CREATE, CLOSE_WRITE, MOVED_FROM, MOVED_TO,
/// DELETE; per dir CREATE, DELETE_SELF, DELETE.
fn storm(dir: &Path, files: usize, dirs: usize) {
    let dirs: Vec<PathBuf> = (0..dirs).map(|d| dir.join(format!("d{d}"))).collect();
    for d in &dirs {
        fs::create_dir_all(d).expect("mkdir");
    }
    let payload = [b'x'; 64];
    for i in 0..files {
        let d = &dirs[i % dirs.len()];
        let p = d.join(format!("f{i}"));
        let r = d.join(format!("r{i}"));
        fs::write(&p, payload).expect("write");
        fs::rename(&p, &r).expect("rename");
        fs::remove_file(&r).expect("unlink");
    }
    for d in &dirs {
        fs::remove_dir(d).expect("rmdir");
    }
}

fn mktree(dir: &Path, files: usize, dirs: usize) {
    let dirs: Vec<PathBuf> = (0..dirs).map(|d| dir.join(format!("d{d}"))).collect();
    for d in &dirs {
        fs::create_dir_all(d).expect("mkdir");
    }
    for i in 0..files {
        fs::write(dirs[i % dirs.len()].join(format!("f{i}")), b"x").expect("write");
    }
}

fn touches(dir: &Path, n: usize) {
    let mut out = String::new();
    for i in 0..n {
        let child = Command::new("touch")
            .arg(dir.join(format!("t{i}")))
            .spawn()
            .expect("spawn touch");
        out.push_str(&format!(
            "{} {}\n",
            child.id(),
            dir.join(format!("t{i}")).display()
        ));
        let mut c = child;
        c.wait().expect("wait touch");
    }
    print!("{out}");
}

fn shwrites(dir: &Path, n: usize) {
    let mut out = String::new();
    for i in 0..n {
        let p = dir.join(format!("s{i}"));
        let mut c = Command::new("sh")
            .arg("-c")
            .arg(format!("echo {i} > '{}'", p.display()))
            .spawn()
            .expect("spawn sh");
        out.push_str(&format!("{} {}\n", c.id(), p.display()));
        c.wait().expect("wait sh");
    }
    print!("{out}");
}

/// `n` iterations of create+close+unlink of a new name (CREATE,
/// CLOSE_WRITE, DELETE: 3 events, never merged by the kernel since every
/// name is new), at most `rate` events per second (0: as fast as possible).
fn flood(dir: &Path, n: usize, rate: u64) {
    fs::create_dir_all(dir).expect("mkdir");
    let start = std::time::Instant::now();
    for i in 0..n {
        if rate > 0 && i % 64 == 0 {
            let due = std::time::Duration::from_secs_f64((i as f64 * 3.0) / rate as f64);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        let p = dir.join(format!("x{i}"));
        drop(fs::File::create(&p).expect("create"));
        fs::remove_file(&p).expect("unlink");
    }
}

fn forks(n: usize) {
    for _ in 0..n {
        // SAFETY: the child only calls _exit.
        match unsafe { libc::fork() } {
            0 => unsafe { libc::_exit(0) },
            pid if pid > 0 => {
                let mut st = 0;
                unsafe { libc::waitpid(pid, &mut st, 0) };
            }
            _ => panic!("fork failed"),
        }
    }
}

fn churn(dir: &Path, n: usize, every: usize) {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let touch = CString::new("/usr/bin/touch").unwrap();
    let touch = if Path::new("/usr/bin/touch").exists() {
        touch
    } else {
        CString::new("/bin/touch").unwrap()
    };
    let mut out = String::new();
    for i in 0..n {
        let writer = every > 0 && i % every == 0;
        let path = dir.join(format!("c{i}"));
        let cpath = CString::new(path.as_os_str().as_bytes()).unwrap();
        let argv = [touch.as_ptr(), cpath.as_ptr(), std::ptr::null()];
        // SAFETY: the child only calls execv and _exit (async-signal-safe).
        match unsafe { libc::fork() } {
            0 => unsafe {
                if writer {
                    libc::execv(touch.as_ptr(), argv.as_ptr());
                }
                libc::_exit(0)
            },
            pid if pid > 0 => {
                if writer {
                    out.push_str(&format!("{pid} {}\n", path.display()));
                }
                let mut st = 0;
                unsafe { libc::waitpid(pid, &mut st, 0) };
            }
            _ => panic!("fork failed"),
        }
    }
    print!("{out}");
}

fn sleepers(n: usize) {
    let mut pids = Vec::with_capacity(n);
    for _ in 0..n {
        // SAFETY: the child only sleeps until killed.
        match unsafe { libc::fork() } {
            0 => loop {
                unsafe { libc::pause() };
            },
            pid if pid > 0 => pids.push(pid),
            _ => panic!("fork failed"),
        }
    }
    println!("ready");
    let _ = std::io::stdout().flush();
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    for &pid in &pids {
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    for &pid in &pids {
        let mut st = 0;
        unsafe { libc::waitpid(pid, &mut st, 0) };
    }
}

fn execthread(args: &[String]) {
    use std::ffi::CString;
    let cargs: Vec<CString> = args
        .iter()
        .map(|a| CString::new(a.as_bytes()).unwrap())
        .collect();
    let h = thread::spawn(move || {
        let mut argv: Vec<*const libc::c_char> = cargs.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        // SAFETY: valid NUL-terminated argv.
        unsafe { libc::execv(argv[0], argv.as_ptr()) };
        panic!("execv failed");
    });
    let _ = h.join();
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("threads") => threads(arg(&args, 1, "N")),
        Some("storm") => storm(
            Path::new(&args[1]),
            arg(&args, 2, "FILES"),
            arg(&args, 3, "DIRS"),
        ),
        Some("mktree") => mktree(
            Path::new(&args[1]),
            arg(&args, 2, "FILES"),
            arg(&args, 3, "DIRS"),
        ),
        Some("touches") => touches(Path::new(&args[1]), arg(&args, 2, "N")),
        Some("shwrites") => shwrites(Path::new(&args[1]), arg(&args, 2, "N")),
        Some("flood") => flood(
            Path::new(&args[1]),
            arg(&args, 2, "N"),
            args.get(3).and_then(|r| r.parse().ok()).unwrap_or(0),
        ),
        Some("forks") => forks(arg(&args, 1, "N")),
        Some("churn") => churn(
            Path::new(&args[1]),
            arg(&args, 2, "N"),
            arg(&args, 3, "EVERY"),
        ),
        Some("sleepers") => sleepers(arg(&args, 1, "N")),
        Some("execthread") if args.len() > 1 => execthread(&args[1..]),
        _ => {
            eprintln!(
                "usage: fsmon-testkit threads N | storm DIR FILES DIRS | mktree DIR FILES DIRS | touches DIR N | shwrites DIR N | flood DIR N | forks N | churn DIR N EVERY | sleepers N | execthread PROG ARGS.."
            );
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}
