//! Helpers for fsmon's integration tests: temp dirs, waiting for conditions
//! with a deadline, starting the real daemon.
use std::time::{Duration, Instant};

/// Polls `cond` until it returns `Some`, or fails after `timeout` with `what`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut cond: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
