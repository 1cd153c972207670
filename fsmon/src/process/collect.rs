//! Collection of exited processes: a deadline queue fed by the kernel's exit
//! ring buffer. Nothing here walks the process maps; each exit costs a
//! couple of map operations, once.
//!
//! When a record may go (the invariant, written once):
//! - never while the process runs (it is in the live map, which nothing
//!   evicts);
//! - never while it has children in the live map (the kernel keeps it live);
//! - otherwise once the events queued before its exit have been read
//!   (`drained_before` has passed its exit) AND the grace period is over.
//!   Before that only the exited map's LRU can drop it, which happens only
//!   when more processes exited within the grace period than the map holds
//!   (oldest first). If such a record's events were still unread, their
//!   lookup finds nothing: that is counted where it happens, as an event
//!   whose process is unknown (`ProcessTracker::record_at`).
use std::{
    cmp::Reverse,
    collections::{BinaryHeap, VecDeque},
};

use fsmon_common::{ExitNote, ProcRecord, same_start};

use super::ebpf::Maps;

/// How soon an exited process kept for its children is looked at again;
/// the wait doubles at each look, up to 64 times this (a daemon's parent
/// that exited long ago costs a lookup every few minutes).
const KEPT_RECHECK_NS: u64 = 5_000_000_000;

/// One exited process awaiting collection.
#[derive(Debug, Clone, Copy)]
struct Pending {
    note: ExitNote,
    /// How many times it was found kept for its children.
    rechecks: u32,
}

/// A kept process, ordered by when to look at it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Kept {
    recheck_at: u64,
    tgid: u32,
    rechecks: u32,
    start_ns: u64,
    exit_ns: u64,
}

#[derive(Default)]
pub struct Collector {
    /// Exits in the order the kernel announced them (exit time order).
    queue: VecDeque<Pending>,
    /// Exited processes kept because they had children, by recheck time.
    kept: BinaryHeap<Reverse<Kept>>,
    /// Records deleted from the live map by the daemon (exited ancestors
    /// whose children all left while the kernel's cascade stopped).
    pub removed_live: u64,
    /// Exit notes received.
    pub notes: u64,
}

impl Collector {
    /// Exited processes not yet collected. The exited map holds at most its
    /// capacity of them (the LRU lets the oldest go); the rest are only
    /// entries of this queue.
    pub fn pending(&self) -> usize {
        self.queue.len() + self.kept.len()
    }

    /// Queues an exit the daemon found itself (an exit the kernel skipped).
    pub fn push(&mut self, note: ExitNote) {
        self.queue.push_back(Pending { note, rechecks: 0 });
    }

    /// Reads the exit notes the kernel queued since the last call.
    pub fn receive(&mut self, maps: &mut Maps) {
        while let Some(item) = maps.exits.next() {
            if item.len() < std::mem::size_of::<ExitNote>() {
                continue;
            }
            // SAFETY: the kernel wrote an ExitNote (repr(C), any bit pattern
            // valid); read_unaligned because the ring gives no alignment.
            let note: ExitNote = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            self.notes += 1;
            self.queue.push_back(Pending { note, rechecks: 0 });
        }
    }

    /// Collects what may go. `drained_before`: boot ns up to which every
    /// file event has been read; `grace_cutoff`: exits before it are past
    /// the grace period. `forget` is told every process whose record is
    /// gone for good (with its start time), so side tables can drop it.
    /// Returns how many records were deleted.
    pub fn collect(
        &mut self,
        maps: &mut Maps,
        drained_before: u64,
        grace_cutoff: u64,
        now: u64,
        mut forget: impl FnMut(u32, u64),
    ) -> usize {
        let cutoff = grace_cutoff.min(drained_before);
        let mut collected = 0;
        while let Some(p) = self.queue.front().copied() {
            if p.note.exit_ns >= cutoff {
                break;
            }
            self.queue.pop_front();
            collected += self.collect_one(maps, p, now, &mut forget);
        }
        while let Some(Reverse(k)) = self.kept.peek().copied() {
            if k.recheck_at > now {
                break;
            }
            self.kept.pop();
            let p = Pending {
                note: ExitNote {
                    tgid: k.tgid,
                    kept_live: 1,
                    start_ns: k.start_ns,
                    exit_ns: k.exit_ns,
                },
                rechecks: k.rechecks,
            };
            collected += self.collect_one(maps, p, now, &mut forget);
        }
        collected
    }

    fn collect_one(
        &mut self,
        maps: &mut Maps,
        p: Pending,
        now: u64,
        forget: &mut impl FnMut(u32, u64),
    ) -> usize {
        let tgid = p.note.tgid;
        match find(maps, &p.note) {
            Some((true, r)) if r.children != 0 && r.children < 1 << 30 => {
                // Still the ancestor of records in the live map: look again
                // later (the kernel moves it when its last child leaves).
                self.kept.push(Reverse(Kept {
                    recheck_at: now + (KEPT_RECHECK_NS << p.rechecks.min(6)),
                    tgid,
                    rechecks: p.rechecks + 1,
                    start_ns: p.note.start_ns,
                    exit_ns: p.note.exit_ns,
                }));
                0
            }
            Some((true, _)) => {
                // Exited, no children left, yet still live: the kernel's
                // cascade stopped (a chain of exited ancestors deeper than it
                // walks). It is past its deadline: delete it.
                let gone = maps.live.remove(&tgid).is_ok();
                self.removed_live += gone as u64;
                forget(tgid, p.note.start_ns);
                gone as usize
            }
            Some((false, _)) => {
                let gone = maps.exited.remove(&tgid).is_ok();
                forget(tgid, p.note.start_ns);
                gone as usize
            }
            None => {
                forget(tgid, p.note.start_ns);
                0
            }
        }
    }
}

/// The record a note is about: (in the live map?, record), matched by start
/// time so a reused pid's record is never taken for it.
fn find(maps: &Maps, note: &ExitNote) -> Option<(bool, ProcRecord)> {
    let matches = |r: &ProcRecord| r.exit_ns != 0 && same_start(r.start_ns, note.start_ns);
    if let Ok(r) = maps.live.get(&note.tgid, 0)
        && matches(&r)
    {
        return Some((true, r));
    }
    match maps.exited.get(&note.tgid, 0) {
        Ok(r) if matches(&r) => Some((false, r)),
        _ => None,
    }
}
