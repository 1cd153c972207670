//! Small, fast workload programs for tests and benchmarks (no shell loops).
//!
//!   fsmon-testkit threads N       start N threads, print "ready", wait for stdin EOF
use std::{io::Read, process::ExitCode, sync::mpsc, thread};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("threads") => {
            let n: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1000);
            let (tx, rx) = mpsc::channel::<()>();
            let mut handles = Vec::with_capacity(n);
            let gate = std::sync::Arc::new(std::sync::Barrier::new(n + 1));
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
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
            gate.wait();
            drop(tx);
            for h in handles {
                let _ = h.join();
            }
            let _ = rx.recv();
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("usage: fsmon-testkit threads N");
            ExitCode::from(2)
        }
    }
}
