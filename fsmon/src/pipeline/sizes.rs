//! The file-size cache: the last size seen for each file (by its object
//! handle), so that a `DELETE` or `MOVED_FROM`, read when the file is no
//! longer at its path, can still report it. Owned by the capture actor, so
//! a plain LRU map: about 100 bytes an entry (a concurrent cache such as
//! moka took about 400, 4 MiB of the daemon's memory at the default 10,000
//! files).
use std::num::NonZeroUsize;

use super::parse::RawEvent;
use crate::{event::EventType, fanotify::FAN_ONDIR};

const CLOSE_WRITE: u64 = EventType::CloseWrite.mask();

pub struct FileSizes {
    sizes: lru::LruCache<Box<[u8]>, u64>,
}

impl FileSizes {
    /// At most `capacity` files (least recently used go first).
    pub fn new(capacity: u64) -> Self {
        // Grown as files are seen, not allocated for the whole capacity up
        // front (`LruCache::new` would: a large configured capacity would
        // cost its memory at start).
        let mut sizes = lru::LruCache::unbounded();
        sizes.resize(
            NonZeroUsize::new(usize::try_from(capacity).unwrap_or(usize::MAX))
                .unwrap_or(NonZeroUsize::MIN),
        );
        FileSizes { sizes }
    }

    /// Records the size just seen for a written file, so its DELETE can
    /// report it later (by then the file is gone). Only at `CLOSE_WRITE` of
    /// a file: other events do not change what a later delete should say.
    pub fn remember(&mut self, ev: &RawEvent<'_>, size: u64) {
        if ev.mask & CLOSE_WRITE != 0
            && ev.mask & FAN_ONDIR == 0
            && let Some(obj) = ev.object
        {
            self.sizes.put(obj.key.into(), size);
        }
    }

    /// Last known size of the event's object (for DELETE / MOVED_FROM).
    pub fn last(&mut self, ev: &RawEvent<'_>) -> Option<u64> {
        self.sizes.get(ev.object?.key).copied()
    }

    pub fn entries(&self) -> u64 {
        self.sizes.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::parse::Fid;

    fn event(mask: u64, key: &[u8]) -> RawEvent<'_> {
        RawEvent {
            mask,
            object: Some(Fid {
                fsid: 1,
                handle: key,
                key,
            }),
            ..RawEvent::default()
        }
    }

    #[test]
    fn bounded_least_recently_used_go_first() {
        let mut s = FileSizes::new(2);
        s.remember(&event(CLOSE_WRITE, b"a"), 1);
        s.remember(&event(CLOSE_WRITE, b"b"), 2);
        // A read keeps "a": "b" is the least recently used when "c" comes.
        assert_eq!(s.last(&event(0, b"a")), Some(1));
        s.remember(&event(CLOSE_WRITE, b"c"), 3);
        assert_eq!(s.entries(), 2);
        assert_eq!(s.last(&event(0, b"b")), None);
        assert_eq!(s.last(&event(0, b"a")), Some(1));
        assert_eq!(s.last(&event(0, b"c")), Some(3));
        // Only a written file's size is remembered, never a directory's.
        s.remember(&event(EventType::Modify.mask(), b"d"), 4);
        s.remember(&event(CLOSE_WRITE | FAN_ONDIR, b"e"), 5);
        assert_eq!(s.last(&event(0, b"d")), None);
        assert_eq!(s.last(&event(0, b"e")), None);
    }
}
