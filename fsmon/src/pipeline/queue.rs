//! The bound on the queue between the capture and process actors.
//!
//! The capture thread stops reading the kernel queue while the batches
//! handed on and not yet written reach the bound, in events or in bytes,
//! whichever comes first. A storm then waits in the kernel's queue (fixed
//! size, overflow recorded in every log and counted), not in fsmon's
//! memory: nothing is lost silently and the daemon's memory stays flat.
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Batch, Item};

/// Default bound in events (`[cache] channel_capacity`): two full batches.
pub const DEFAULT_EVENTS: usize = 8192;
/// Bound in bytes of events and paths in flight: paths can be long (a deep
/// tree's are longer than `PATH_MAX`), so the event count alone would not
/// bound memory.
pub const MAX_BYTES: usize = 1 << 20;
/// A batch is handed on when its paths reach this size, even with fewer
/// than the maximum number of events.
pub const MAX_BATCH_BYTES: usize = 256 << 10;
/// Written batches kept for reuse. A batch keeps the capacity of the
/// largest it ever held (up to [`MAX_BATCH_BYTES`] of paths and 4,096
/// items, about 450 KiB); the process thread drops the ones beyond this
/// many, so a storm's spare batches are not kept for good.
pub const SPARE_BATCHES: usize = 2;

/// What a batch weighs in the bound.
fn weight(b: &Batch) -> (usize, usize) {
    (
        b.items.len(),
        b.items.len() * std::mem::size_of::<Item>() + b.paths.len(),
    )
}

/// Events and bytes handed on and not yet written.
#[derive(Debug, Default)]
pub struct InFlight {
    events: AtomicUsize,
    bytes: AtomicUsize,
}

impl InFlight {
    /// Counts `b` as handed on.
    pub fn add(&self, b: &Batch) {
        let (e, by) = weight(b);
        self.events.fetch_add(e, Ordering::AcqRel);
        self.bytes.fetch_add(by, Ordering::AcqRel);
    }

    /// Counts `b` as written. Call before clearing it.
    pub fn done(&self, b: &Batch) {
        let (e, by) = weight(b);
        self.events.fetch_sub(e, Ordering::AcqRel);
        self.bytes.fetch_sub(by, Ordering::AcqRel);
    }

    /// At or over the bound of `events` events or [`MAX_BYTES`].
    pub fn full(&self, events: usize) -> bool {
        self.events.load(Ordering::Acquire) >= events
            || self.bytes.load(Ordering::Acquire) >= MAX_BYTES
    }

    pub fn events(&self) -> usize {
        self.events.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::Captured;

    fn batch(events: usize, path: &str) -> Batch {
        let mut b = Batch::default();
        for _ in 0..events {
            let start = b.paths.len() as u32;
            b.paths.push_str(path);
            b.items.push(Item::Event(Captured {
                types: 1,
                pid: 1,
                path: (start, b.paths.len() as u32),
                size: 0,
                unresolved: false,
                queued_before: 0,
                scan: false,
                fs_error: None,
            }));
        }
        b
    }

    #[test]
    fn bounded_in_events_and_in_bytes() {
        let q = InFlight::default();
        let small = batch(100, "/a");
        q.add(&small);
        assert!(!q.full(200));
        assert!(q.full(100));
        q.done(&small);
        assert_eq!(q.events(), 0);
        // Few events with long paths: the byte bound.
        let long = batch(300, &"x".repeat(4000));
        q.add(&long);
        assert!(q.full(DEFAULT_EVENTS), "300 paths of 4,000 bytes");
        q.done(&long);
        assert!(!q.full(1));
    }
}
