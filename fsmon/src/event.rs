//! What fsmon logs: event kinds and the JSONL record.
//!
//! One line per event, fields in the seed's order:
//! `{"time":..,"event_type":..,"path":..,"pid":..,"cmd":..,"user":..,"file_size":..,"ppid":..,"tgid":..}`
//! plus `chain` for groups that track a command, `cgroup` and `container`
//! for the process's cgroup v2 path and container, and two markers that only
//! appear when something could not be seen: `unresolved` and `lost`.
use serde::{Deserialize, Serialize};

/// The 14 kinds of file event fanotify reports, with their kernel mask bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EventType {
    Access,
    Modify,
    CloseWrite,
    CloseNowrite,
    Open,
    OpenExec,
    Attrib,
    Create,
    Delete,
    DeleteSelf,
    MovedFrom,
    MovedTo,
    MoveSelf,
    FsError,
}

impl EventType {
    /// All 14, in the order a merged kernel event is split into lines:
    /// roughly the order the operations happen in.
    pub const ALL: [EventType; 14] = [
        EventType::Create,
        EventType::Open,
        EventType::OpenExec,
        EventType::Access,
        EventType::Modify,
        EventType::Attrib,
        EventType::CloseWrite,
        EventType::CloseNowrite,
        EventType::MovedFrom,
        EventType::MovedTo,
        EventType::MoveSelf,
        EventType::Delete,
        EventType::DeleteSelf,
        EventType::FsError,
    ];

    /// The seed's default set.
    pub const DEFAULT: [EventType; 8] = [
        EventType::CloseWrite,
        EventType::Attrib,
        EventType::Create,
        EventType::Delete,
        EventType::DeleteSelf,
        EventType::MovedFrom,
        EventType::MovedTo,
        EventType::MoveSelf,
    ];

    /// Position in [`EventType::ALL`] (for per-type tables).
    pub const fn index(self) -> usize {
        let mut i = 0;
        while i < EventType::ALL.len() {
            if EventType::ALL[i] as u8 == self as u8 {
                return i;
            }
            i += 1;
        }
        unreachable!()
    }

    pub const fn mask(self) -> u64 {
        match self {
            EventType::Access => 0x1,
            EventType::Modify => 0x2,
            EventType::Attrib => 0x4,
            EventType::CloseWrite => 0x8,
            EventType::CloseNowrite => 0x10,
            EventType::Open => 0x20,
            EventType::MovedFrom => 0x40,
            EventType::MovedTo => 0x80,
            EventType::Create => 0x100,
            EventType::Delete => 0x200,
            EventType::DeleteSelf => 0x400,
            EventType::MoveSelf => 0x800,
            EventType::OpenExec => 0x1000,
            EventType::FsError => 0x8000,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            EventType::Access => "ACCESS",
            EventType::Modify => "MODIFY",
            EventType::CloseWrite => "CLOSE_WRITE",
            EventType::CloseNowrite => "CLOSE_NOWRITE",
            EventType::Open => "OPEN",
            EventType::OpenExec => "OPEN_EXEC",
            EventType::Attrib => "ATTRIB",
            EventType::Create => "CREATE",
            EventType::Delete => "DELETE",
            EventType::DeleteSelf => "DELETE_SELF",
            EventType::MovedFrom => "MOVED_FROM",
            EventType::MovedTo => "MOVED_TO",
            EventType::MoveSelf => "MOVE_SELF",
            EventType::FsError => "FS_ERROR",
        }
    }

    /// Parses a type name as users write it (case-insensitive).
    pub fn parse(s: &str) -> Option<EventType> {
        EventType::ALL
            .into_iter()
            .find(|t| t.as_str().eq_ignore_ascii_case(s))
    }

    /// Parses `--types` values: names, or `all` for the 14. Empty means the
    /// default 8.
    pub fn parse_list<S: AsRef<str>>(items: &[S]) -> Result<TypeSet, String> {
        if items.is_empty() {
            return Ok(TypeSet::default());
        }
        let mut set = TypeSet::EMPTY;
        for item in items {
            for name in item
                .as_ref()
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
            {
                if name.eq_ignore_ascii_case("all") {
                    set = TypeSet::ALL;
                } else {
                    let t = EventType::parse(name).ok_or_else(|| {
                        format!(
                            "unknown event type '{name}' (expected one of: {}, or all)",
                            EventType::ALL.map(|t| t.as_str()).join(", ")
                        )
                    })?;
                    set = set.with(t);
                }
            }
        }
        Ok(set)
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of event types as a fanotify mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TypeSet(pub u64);

impl TypeSet {
    pub const EMPTY: TypeSet = TypeSet(0);
    pub const ALL: TypeSet = {
        let mut m = 0;
        let mut i = 0;
        while i < EventType::ALL.len() {
            m |= EventType::ALL[i].mask();
            i += 1;
        }
        TypeSet(m)
    };

    pub fn with(self, t: EventType) -> TypeSet {
        TypeSet(self.0 | t.mask())
    }
    pub fn contains(self, t: EventType) -> bool {
        self.0 & t.mask() != 0
    }
    pub fn iter(self) -> impl Iterator<Item = EventType> {
        EventType::ALL
            .into_iter()
            .filter(move |t| self.contains(*t))
    }
    /// Names in the seed's order (for `monitored`).
    pub fn names(self) -> Vec<&'static str> {
        self.iter().map(EventType::as_str).collect()
    }
}

impl Default for TypeSet {
    fn default() -> Self {
        EventType::DEFAULT
            .into_iter()
            .fold(TypeSet::EMPTY, TypeSet::with)
    }
}

/// The `event_type` of the record written when the kernel queue overflowed.
pub const OVERFLOW_TYPE: &str = "Q_OVERFLOW";
/// The `event_type` of the record written when the process tracker lost
/// track of processes (a full map, a dropped exit note, an exited record
/// gone before its events were read): attribution of nearby events may be
/// missing or wrong.
pub const TRACKER_LOSS_TYPE: &str = "TRACKER_LOSS";

/// The name of an errno value as the kernel's headers spell it (`EIO`,
/// `EUCLEAN`), or the number when it has none.
pub fn errno_name(errno: i32) -> std::borrow::Cow<'static, str> {
    match nix::errno::Errno::from_raw(errno.abs()) {
        nix::errno::Errno::UnknownErrno => errno.abs().to_string().into(),
        e => format!("{e:?}").into(),
    }
}

/// One log line, borrowed: what the daemon serializes and what readers
/// (`query`, `changes`, `clean`, subscribers) parse back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEvent<'a> {
    /// RFC 3339 with offset; when the daemon read the event (fanotify events
    /// carry no timestamp). Non-decreasing within a log.
    #[serde(borrow)]
    pub time: std::borrow::Cow<'a, str>,
    /// One of the 14 names, or `Q_OVERFLOW`.
    #[serde(borrow)]
    pub event_type: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    pub path: std::borrow::Cow<'a, str>,
    pub pid: u32,
    #[serde(borrow)]
    pub cmd: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    pub user: std::borrow::Cow<'a, str>,
    pub file_size: u64,
    pub ppid: u32,
    pub tgid: u32,
    /// Ancestry `pid|cmd|user;...` for groups that track a command.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<std::borrow::Cow<'a, str>>,
    /// The process's cgroup v2 path (as of its fork or last exec), or
    /// `#<id>` when the cgroup was gone before it could be named. Absent
    /// when the process is unknown or the tracker is the `/proc` fallback.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<std::borrow::Cow<'a, str>>,
    /// The container id when the cgroup is a container runtime's; absent
    /// for host processes.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub container: Option<std::borrow::Cow<'a, str>>,
    /// Present (true) when the directory of the event could not be resolved
    /// to a path; `path` then holds what is known (the file name).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unresolved: bool,
    /// Found by the scan of a new directory (inode marks) rather than
    /// reported by the kernel: no process is known (`pid` 0).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub scan: bool,
    /// FS_ERROR only: the error the filesystem reported (`EUCLEAN`, `EIO`,
    /// ...; a number when it has no name).
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub error: Option<std::borrow::Cow<'a, str>>,
    /// FS_ERROR only: how many errors the kernel merged into this event
    /// (it queues one per filesystem until it is read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_count: Option<u32>,
    /// On a `Q_OVERFLOW` record: events were lost (count unknown to the
    /// kernel interface, so this is a flag, not a number). On a
    /// `TRACKER_LOSS` record: processes were lost.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lost: bool,
}

impl<'a> FileEvent<'a> {
    /// A line with its time, type and path only: no process known (pid 0,
    /// empty names), every optional field absent, every flag off.
    pub fn bare(time: &'a str, event_type: &'a str, path: &'a str) -> Self {
        use std::borrow::Cow::Borrowed;
        FileEvent {
            time: Borrowed(time),
            event_type: Borrowed(event_type),
            path: Borrowed(path),
            pid: 0,
            cmd: Borrowed(""),
            user: Borrowed(""),
            file_size: 0,
            ppid: 0,
            tgid: 0,
            chain: None,
            cgroup: None,
            container: None,
            unresolved: false,
            scan: false,
            error: None,
            error_count: None,
            lost: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names_round_trip() {
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
            assert_eq!(EventType::parse(&t.as_str().to_lowercase()), Some(t));
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(json, format!("\"{}\"", t.as_str()));
        }
    }

    #[test]
    fn index_is_the_position_in_all() {
        for (i, t) in EventType::ALL.iter().enumerate() {
            assert_eq!(t.index(), i);
        }
    }

    #[test]
    fn type_lists() {
        assert_eq!(
            EventType::parse_list::<&str>(&[]).unwrap(),
            TypeSet::default()
        );
        assert_eq!(EventType::parse_list(&["all"]).unwrap(), TypeSet::ALL);
        let s = EventType::parse_list(&["MODIFY", "create"]).unwrap();
        assert_eq!(s.names(), vec!["CREATE", "MODIFY"]);
        let e = EventType::parse_list(&["MODIFIED"]).unwrap_err();
        assert!(e.contains("unknown event type 'MODIFIED'"), "{e}");
        assert_eq!(TypeSet::ALL.iter().count(), 14);
        assert_eq!(TypeSet::default().iter().count(), 8);
    }

    #[test]
    fn seed_line_parses() {
        let line = r#"{"time":"2026-05-07T10:00:01+00:00","event_type":"CREATE","path":"/var/www/myapp/index.html","pid":1234,"cmd":"nginx","user":"www-data","file_size":0,"ppid":1,"tgid":1234}"#;
        let e: FileEvent = serde_json::from_str(line).unwrap();
        assert_eq!(e.path, "/var/www/myapp/index.html");
        assert_eq!(e.chain, None);
        assert_eq!(serde_json::to_string(&e).unwrap(), line);
    }
}
