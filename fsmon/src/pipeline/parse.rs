//! Stage 2, parse: walks the records of a fanotify read buffer without
//! copying. Each event is a `fanotify_event_metadata` followed by info
//! records; in FID mode those carry the filesystem id, file handles and the
//! entry name.
use crate::fanotify::{
    FANOTIFY_METADATA_VERSION, INFO_DFID, INFO_DFID_NAME, INFO_ERROR, INFO_FID, INFO_NEW_DFID_NAME,
    INFO_OLD_DFID_NAME,
};

const METADATA_LEN: usize = 24;

/// A file id: filesystem id plus file handle, borrowed from the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fid<'a> {
    pub fsid: u64,
    /// `struct file_handle` (handle_bytes, handle_type, f_handle), ready for
    /// `open_by_handle_at`.
    pub handle: &'a [u8],
    /// fsid and handle as one contiguous slice: a cache key that identifies
    /// the object across filesystems.
    pub key: &'a [u8],
}

/// One event as the kernel reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RawEvent<'a> {
    /// Event bits (several when the kernel merged events), plus FAN_ONDIR.
    pub mask: u64,
    /// The thread-group id of the process that caused it (0 if unknown).
    pub pid: u32,
    /// The directory: parent of the object, or the object itself for
    /// events on a directory (then `name` is ".").
    pub dir: Option<Fid<'a>>,
    /// The entry name in `dir`, without the NUL.
    pub name: Option<&'a [u8]>,
    /// The object itself (the child for create/delete/move with TARGET_FID).
    pub object: Option<Fid<'a>>,
    /// FS_ERROR: (errno, count).
    pub error: Option<(i32, u32)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// The buffer ends inside a record, or a length field is impossible.
    Truncated { offset: usize },
    /// A metadata version we do not understand.
    Version(u8),
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParseError::Truncated { offset } => {
                write!(f, "malformed fanotify record at offset {offset}")
            }
            ParseError::Version(v) => write!(f, "unsupported fanotify metadata version {v}"),
        }
    }
}

/// Iterator over the events in `buf[..len]`. Stops at the first malformed
/// record (after yielding the error): lengths after it cannot be trusted.
pub struct Events<'a> {
    buf: &'a [u8],
    pos: usize,
    failed: bool,
}

pub fn events(buf: &[u8]) -> Events<'_> {
    Events {
        buf,
        pos: 0,
        failed: false,
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(b[at..at + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(b[at..at + 8].try_into().unwrap())
}

impl<'a> Iterator for Events<'a> {
    type Item = Result<RawEvent<'a>, ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.buf.len() {
            return None;
        }
        let at = self.pos;
        let rest = &self.buf[at..];
        let fail = |me: &mut Self, e| {
            me.failed = true;
            Some(Err(e))
        };
        if rest.len() < METADATA_LEN {
            return fail(self, ParseError::Truncated { offset: at });
        }
        let event_len = u32_at(rest, 0) as usize;
        let vers = rest[4];
        let metadata_len = u16_at(rest, 6) as usize;
        if vers != FANOTIFY_METADATA_VERSION {
            return fail(self, ParseError::Version(vers));
        }
        if event_len < METADATA_LEN
            || metadata_len < METADATA_LEN
            || metadata_len > event_len
            || event_len > rest.len()
        {
            return fail(self, ParseError::Truncated { offset: at });
        }
        let mut ev = RawEvent {
            mask: u64_at(rest, 8),
            pid: u32_at(rest, 20),
            ..RawEvent::default()
        };
        let record = &rest[..event_len];
        let mut info = metadata_len;
        while info + 4 <= event_len {
            let kind = record[info];
            let len = u16_at(record, info + 2) as usize;
            if len < 4 || info + len > event_len {
                return fail(self, ParseError::Truncated { offset: at + info });
            }
            let body = &record[info..info + len];
            match kind {
                INFO_FID | INFO_DFID | INFO_DFID_NAME | INFO_OLD_DFID_NAME | INFO_NEW_DFID_NAME => {
                    let Some((fid, name)) = parse_fid(body) else {
                        return fail(self, ParseError::Truncated { offset: at + info });
                    };
                    match kind {
                        INFO_FID => ev.object = Some(fid),
                        // OLD/NEW come only with FAN_RENAME, which we do not
                        // request; keep the new location if they ever appear.
                        INFO_OLD_DFID_NAME => {}
                        _ => {
                            ev.dir = Some(fid);
                            if kind != INFO_DFID {
                                ev.name = Some(name);
                            }
                        }
                    }
                }
                INFO_ERROR if len >= 12 => {
                    ev.error = Some((u32_at(body, 4) as i32, u32_at(body, 8)));
                }
                _ => {} // pidfd, range, future kinds: not used
            }
            info += len;
        }
        self.pos = at + event_len;
        Some(Ok(ev))
    }
}

/// Parses a fid info record body: hdr(4) fsid(8) handle_bytes(4)
/// handle_type(4) f_handle[handle_bytes] [name NUL padding].
fn parse_fid(body: &[u8]) -> Option<(Fid<'_>, &[u8])> {
    if body.len() < 4 + 8 + 8 {
        return None;
    }
    let fsid = u64_at(body, 4);
    let handle_bytes = u32_at(body, 12) as usize;
    let handle_end = 20usize.checked_add(handle_bytes)?;
    if handle_end > body.len() || handle_bytes > 128 {
        return None;
    }
    let tail = &body[handle_end..];
    let name = &tail[..tail.iter().position(|&b| b == 0).unwrap_or(tail.len())];
    Some((
        Fid {
            fsid,
            handle: &body[12..handle_end],
            key: &body[4..handle_end],
        },
        name,
    ))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds records the way the kernel lays them out.
    pub struct Builder(pub Vec<u8>);

    pub fn fid_record(kind: u8, fsid: u64, handle: &[u8], name: Option<&str>) -> Vec<u8> {
        let mut r = vec![kind, 0, 0, 0];
        r.extend_from_slice(&fsid.to_ne_bytes());
        r.extend_from_slice(&(handle.len() as u32).to_ne_bytes());
        r.extend_from_slice(&1i32.to_ne_bytes()); // handle_type
        r.extend_from_slice(handle);
        if let Some(n) = name {
            r.extend_from_slice(n.as_bytes());
            r.push(0);
        }
        while r.len() % 4 != 0 {
            r.push(0);
        }
        let len = r.len() as u16;
        r[2..4].copy_from_slice(&len.to_ne_bytes());
        r
    }

    impl Builder {
        pub fn event(&mut self, mask: u64, pid: u32, infos: &[Vec<u8>]) -> &mut Self {
            let info_len: usize = infos.iter().map(Vec::len).sum();
            let len = (24 + info_len) as u32;
            self.0.extend_from_slice(&len.to_ne_bytes());
            self.0.push(FANOTIFY_METADATA_VERSION);
            self.0.push(0);
            self.0.extend_from_slice(&24u16.to_ne_bytes());
            self.0.extend_from_slice(&mask.to_ne_bytes());
            self.0.extend_from_slice(&(-1i32).to_ne_bytes());
            self.0.extend_from_slice(&pid.to_ne_bytes());
            for i in infos {
                self.0.extend_from_slice(i);
            }
            self
        }
    }

    #[test]
    fn create_with_dir_name_and_target() {
        let mut b = Builder(Vec::new());
        b.event(
            0x100,
            4242,
            &[
                fid_record(
                    INFO_DFID_NAME,
                    7,
                    &[1, 2, 3, 4, 5, 6, 7, 8],
                    Some("file.txt"),
                ),
                fid_record(INFO_FID, 7, &[9, 9, 9, 9, 9, 9, 9, 9], None),
            ],
        );
        b.event(0x4000, 0, &[]);
        let evs: Vec<_> = events(&b.0).collect::<Result<_, _>>().unwrap();
        assert_eq!(evs.len(), 2);
        let e = &evs[0];
        assert_eq!((e.mask, e.pid), (0x100, 4242));
        assert_eq!(e.name, Some(&b"file.txt"[..]));
        let dir = e.dir.unwrap();
        assert_eq!(dir.fsid, 7);
        assert_eq!(&dir.handle[8..], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(dir.key.len(), 8 + 8 + 8);
        assert_eq!(&e.object.unwrap().handle[8..], &[9; 8]);
        assert_ne!(dir.key, e.object.unwrap().key);
        assert_eq!(evs[1].mask, 0x4000);
        assert!(evs[1].dir.is_none());
    }

    #[test]
    fn truncated_buffers_are_errors_not_panics() {
        let mut b = Builder(Vec::new());
        b.event(0x8, 1, &[fid_record(INFO_DFID_NAME, 1, &[1; 8], Some("x"))]);
        let full = b.0.clone();
        for cut in 0..full.len() {
            let items: Vec<_> = events(&full[..cut]).collect();
            if cut > 0 {
                assert!(items.last().unwrap().is_err(), "cut at {cut}");
            }
        }
        let mut bad = full.clone();
        bad[4] = 2; // version
        assert_eq!(events(&bad).next(), Some(Err(ParseError::Version(2))));
        let mut bad = full.clone();
        bad[0..4].copy_from_slice(&10u32.to_ne_bytes()); // event_len < metadata
        assert!(matches!(
            events(&bad).next(),
            Some(Err(ParseError::Truncated { .. }))
        ));
        let mut bad = full;
        bad[24 + 2..24 + 4].copy_from_slice(&2u16.to_ne_bytes()); // info len < 4
        assert!(matches!(
            events(&bad).next(),
            Some(Err(ParseError::Truncated { .. }))
        ));
    }

    #[test]
    fn fuzzish_random_bytes_never_panic() {
        let mut x: u64 = 0x9E3779B97F4A7C15;
        for _ in 0..2000 {
            let mut buf = vec![0u8; (x % 200) as usize];
            for byte in buf.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *byte = x as u8;
            }
            if buf.len() > 5 {
                buf[4] = FANOTIFY_METADATA_VERSION;
            }
            for _ in events(&buf) {}
        }
    }

    #[test]
    fn error_and_unknown_records() {
        let mut err = vec![INFO_ERROR, 0, 12, 0];
        err.extend_from_slice(&5i32.to_ne_bytes());
        err.extend_from_slice(&3u32.to_ne_bytes());
        let unknown = vec![99, 0, 8, 0, 1, 2, 3, 4];
        let mut b = Builder(Vec::new());
        b.event(
            0x8000,
            0,
            &[err, unknown, fid_record(INFO_FID, 2, &[4; 12], None)],
        );
        let e = events(&b.0).next().unwrap().unwrap();
        assert_eq!(e.error, Some((5, 3)));
        assert_eq!(e.object.unwrap().fsid, 2);
    }
}
