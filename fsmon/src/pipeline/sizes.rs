//! The file-size cache: the last size seen for each file (by its object
//! handle), so that a `DELETE` or `MOVED_FROM`, read when the file is no
//! longer at its path, can still report it. Owned by the capture actor.
use super::parse::RawEvent;
use crate::{event::EventType, fanotify::FAN_ONDIR};

const CLOSE_WRITE: u64 = EventType::CloseWrite.mask();

pub struct FileSizes {
    sizes: moka::sync::Cache<Box<[u8]>, u64>,
}

impl FileSizes {
    /// At most `capacity` files (least recently used go first).
    pub fn new(capacity: u64) -> Self {
        FileSizes {
            sizes: moka::sync::Cache::builder().max_capacity(capacity).build(),
        }
    }

    /// Records the size just seen for a written file, so its DELETE can
    /// report it later (by then the file is gone). Only at `CLOSE_WRITE` of
    /// a file: other events do not change what a later delete should say.
    pub fn remember(&self, ev: &RawEvent<'_>, size: u64) {
        if ev.mask & CLOSE_WRITE != 0
            && ev.mask & FAN_ONDIR == 0
            && let Some(obj) = ev.object
        {
            self.sizes.insert(obj.key.into(), size);
        }
    }

    /// Last known size of the event's object (for DELETE / MOVED_FROM).
    pub fn last(&self, ev: &RawEvent<'_>) -> Option<u64> {
        self.sizes.get(ev.object?.key)
    }

    pub fn entries(&self) -> u64 {
        self.sizes.entry_count()
    }
}
