//! Marks: how each watched path gets its events from the kernel.
//!
//! Two kinds, chosen per path ([`MarkKind`]):
//!
//! - a **filesystem** mark: one per filesystem, every event on it, filtered
//!   by path in userspace. Complete and race-free, but every file operation
//!   anywhere on that filesystem costs an event.
//! - **inode** marks: one per directory of the tree (with
//!   `FAN_EVENT_ON_CHILD`), so nothing outside the tree generates an event.
//!   They must follow the tree: a directory created or moved in is marked
//!   as soon as its event is read, then scanned; what the scan finds
//!   without an event of its own is reported as a `CREATE` found by a scan
//!   ([`ScanFound`]). Renamed directories keep their marks (they are on the
//!   inode); deleted ones lose them with the inode; one moved out of the
//!   tree is unmarked with everything below it.
//!
//! `auto` (the default) takes a filesystem mark and falls back to inode
//! marks where the kernel refuses one (`EXDEV`: a btrfs subvolume;
//! `EOPNOTSUPP`/`ENODEV`: overlayfs and other filesystems whose handles
//! cannot be decoded at the filesystem level).
use std::{
    collections::{HashMap, HashSet},
    ffi::OsStr,
    io,
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
    rc::Rc,
};

use serde::{Deserialize, Serialize};

use crate::{
    escape,
    event::EventType,
    fanotify::{self, FAN_EVENT_ON_CHILD, FAN_ONDIR},
    pipeline::{
        parse::RawEvent,
        resolve::{self, PathResolver},
        scope::WatchRoot,
    },
};

/// Which kind of mark a watched path asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MarkKind {
    /// A filesystem mark where the kernel allows one, else inode marks.
    #[default]
    Auto,
    Filesystem,
    Inode,
}

impl MarkKind {
    pub fn is_auto(&self) -> bool {
        *self == MarkKind::Auto
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            MarkKind::Auto => "auto",
            MarkKind::Filesystem => "filesystem",
            MarkKind::Inode => "inode",
        }
    }

    pub fn parse(s: &str) -> crate::Result<Self> {
        match s {
            "auto" => Ok(MarkKind::Auto),
            "filesystem" => Ok(MarkKind::Filesystem),
            "inode" => Ok(MarkKind::Inode),
            other => Err(crate::Error::invalid(format!(
                "unknown mark kind {other:?} (expected filesystem, inode or auto)"
            ))),
        }
    }

    /// Two groups watch the same path with different kinds: the stronger
    /// wins (an explicit filesystem mark over inode marks over auto).
    pub fn merge(self, other: MarkKind) -> MarkKind {
        use MarkKind::*;
        match (self, other) {
            (Filesystem, _) | (_, Filesystem) => Filesystem,
            (Inode, _) | (_, Inode) => Inode,
            _ => Auto,
        }
    }
}

/// What one watched path got, for `health`.
#[derive(Debug, Clone, Serialize)]
pub struct RootMark {
    pub path: String,
    /// `filesystem`, `inode`, or `none` (not watched: see the error).
    pub mark: &'static str,
    /// Why that kind, when it is not what was asked for, or why none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
    /// Directories carrying an inode mark for this path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dirs: Option<u64>,
}

/// An entry the scan of a new directory found: reported as a `CREATE`
/// unless an event of its own is read before the kernel queue is empty.
#[derive(Debug, Clone)]
pub struct ScanFound {
    pub fsid: u64,
    /// The parent directory's key (fsid + handle).
    pub dir_key: Box<[u8]>,
    pub name: Box<[u8]>,
    /// The entry's own key, when it could be taken.
    pub object_key: Option<Box<[u8]>>,
    pub is_dir: bool,
}

impl ScanFound {
    /// The entry as the event the kernel would have reported for it
    /// (pid 0: the scan cannot know who made it).
    pub fn as_event(&self) -> RawEvent<'_> {
        let fsid = self.fsid;
        RawEvent {
            mask: EventType::Create.mask() | if self.is_dir { FAN_ONDIR } else { 0 },
            pid: 0,
            dir: Some(fanotify_fid(fsid, &self.dir_key)),
            name: Some(&self.name),
            object: self.object_key.as_deref().map(|k| fanotify_fid(fsid, k)),
            error: None,
        }
    }
}

fn fanotify_fid(fsid: u64, key: &[u8]) -> crate::pipeline::parse::Fid<'_> {
    crate::pipeline::parse::Fid {
        fsid,
        handle: &key[8..],
        key,
    }
}

/// A directory waiting to be marked: open, its key if known, its path
/// (for messages).
type PendingDir = (Rc<OwnedFd>, Option<Box<[u8]>>, String);

/// One directory carrying an inode mark.
#[derive(Debug, Clone, Copy)]
struct DirMark {
    /// Marked because of a recursive root: new subdirectories get marks.
    recursive: bool,
}

/// The marks of one fanotify group.
pub struct Marks {
    /// The group (a duplicate of the reader's descriptor).
    fan: OwnedFd,
    /// fsid -> (a path on that filesystem, mask marked).
    filesystems: HashMap<u64, (PathBuf, u64)>,
    /// Inode-marked directories by key (fsid + handle).
    dirs: HashMap<Box<[u8]>, DirMark>,
    /// The mask of the inode marks.
    inode_mask: u64,
    /// Marked directories moved away from a marked directory, not yet seen
    /// arriving in one: moved out of the tree, unless their `MOVED_TO`
    /// comes before the queue is empty.
    moved_away: HashMap<Box<[u8]>, u64>,
    /// Directories created in a followed tree that could not be opened by
    /// handle nor found under their name (renamed at once): marked and
    /// scanned as created when their `MOVED_TO` is read.
    unmarked_created: HashSet<Box<[u8]>>,
    /// The trees carrying inode marks: (path, recursive).
    inode_trees: Vec<(PathBuf, bool)>,
    /// What each watched path got.
    pub roots: Vec<RootMark>,
    /// A runtime failure to mark a new directory (kernel limit): kept for
    /// `health` until the groups change.
    pub runtime_errors: Vec<(String, String)>,
}

const ENTRY_EVENTS: u64 = EventType::Create.mask() | EventType::MovedTo.mask();

/// Event types an inode mark cannot carry: the kernel reports `FS_ERROR`
/// only to filesystem marks and refuses an inode mark asking for it
/// (`EINVAL`). Left out of inode marks, so that `--types all` (or one
/// group's `FS_ERROR` on a filesystem-marked path) does not refuse every
/// inode-marked tree.
const FILESYSTEM_ONLY: u64 = EventType::FsError.mask();

/// The kernel's per-user limit on fanotify marks.
const MAX_USER_MARKS: &str = "/proc/sys/fs/fanotify/max_user_marks";

/// The error for a mark the kernel refused, naming the limit when it is
/// one.
fn mark_error(e: &io::Error, path: &str, marked: usize) -> String {
    match e.raw_os_error() {
        Some(libc::ENOSPC) => {
            let limit = std::fs::read_to_string(MAX_USER_MARKS)
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "?".into());
            format!(
                "the kernel's limit of fanotify marks per user (fs.fanotify.max_user_marks = {limit}) \
                 was reached at {path} after {marked} directories of this tree: raise it \
                 (sysctl fs.fanotify.max_user_marks) or use --mark filesystem"
            )
        }
        Some(libc::ENOMEM) => format!(
            "the kernel is out of memory for fanotify marks at {path} after {marked} directories \
             of this tree (ENOMEM)"
        ),
        _ => format!("cannot put an inode mark on {path}: {e}"),
    }
}

fn mark_fd(fan: BorrowedFd<'_>, flags: u32, mask: u64, dir: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: valid descriptors; a NULL path marks `dir` itself.
    let r = unsafe {
        libc::fanotify_mark(
            fan.as_raw_fd(),
            flags,
            mask,
            dir.as_raw_fd(),
            std::ptr::null(),
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl Marks {
    pub fn new(fan: &fanotify::Fanotify) -> io::Result<Self> {
        Ok(Marks {
            fan: fan.as_fd().try_clone_to_owned()?,
            filesystems: HashMap::new(),
            dirs: HashMap::new(),
            inode_mask: 0,
            moved_away: HashMap::new(),
            unmarked_created: HashSet::new(),
            inode_trees: Vec::new(),
            roots: Vec::new(),
            runtime_errors: Vec::new(),
        })
    }

    /// Inode marks in place (the `fsmon_inode_marks` gauge).
    pub fn inode_marks(&self) -> usize {
        self.dirs.len()
    }

    fn add_filesystem(&self, path: &Path, mask: u64) -> io::Result<()> {
        fanotify::mark_path(
            self.fan.as_fd(),
            fanotify::FAN_MARK_ADD | fanotify::FAN_MARK_FILESYSTEM,
            mask | FAN_ONDIR,
            path,
        )
    }

    fn remove_filesystem(&self, path: &Path, mask: u64) {
        let _ = fanotify::mark_path(
            self.fan.as_fd(),
            fanotify::FAN_MARK_REMOVE | fanotify::FAN_MARK_FILESYSTEM,
            mask | FAN_ONDIR,
            path,
        );
    }

    fn mark_dir(&self, dir: BorrowedFd<'_>) -> io::Result<()> {
        mark_fd(
            self.fan.as_fd(),
            fanotify::FAN_MARK_ADD | fanotify::FAN_MARK_INODE | fanotify::FAN_MARK_ONLYDIR,
            self.inode_mask | FAN_ONDIR | FAN_EVENT_ON_CHILD,
            dir,
        )
    }

    fn unmark_dir(&self, dir: BorrowedFd<'_>) {
        let _ = mark_fd(
            self.fan.as_fd(),
            fanotify::FAN_MARK_REMOVE | fanotify::FAN_MARK_INODE,
            self.inode_mask | FAN_ONDIR | FAN_EVENT_ON_CHILD,
            dir,
        );
    }

    /// Marks the watched `roots` for `mask`: filesystem marks where asked
    /// (or allowed, for `auto`), inode marks on every directory of the
    /// other trees. Returns the per-path errors; a tree that cannot be
    /// marked whole is not marked at all.
    pub fn apply(
        &mut self,
        resolver: &mut PathResolver,
        roots: &[(WatchRoot, MarkKind)],
        mask: u64,
    ) -> Vec<(String, String)> {
        let mut errors = Vec::new();
        let mut reports = Vec::new();
        let mut wanted_fs: HashMap<u64, (PathBuf, u64)> = HashMap::new();
        let mut inode_roots: Vec<(&WatchRoot, PathBuf, Option<String>)> = Vec::new();
        for (root, kind) in roots {
            let root_path = escape::as_path(&root.path).into_owned();
            let Some(existing) = root_path
                .ancestors()
                .find(|p| std::fs::symlink_metadata(p).is_ok())
                .map(Path::to_path_buf)
            else {
                errors.push((root.path.clone(), "no existing ancestor".into()));
                continue;
            };
            let fsid = match resolver.add_mount(&existing) {
                Ok(f) => f,
                Err(e) => {
                    errors.push((root.path.clone(), format!("cannot watch: {e}")));
                    continue;
                }
            };
            if *kind == MarkKind::Inode {
                inode_roots.push((root, existing, None));
                continue;
            }
            let old = self.filesystems.get(&fsid).map_or(0, |m| m.1);
            let m = wanted_fs.get(&fsid).map_or(0, |m| m.1) | mask | old;
            match self.add_filesystem(&existing, m) {
                Ok(()) => {
                    wanted_fs
                        .entry(fsid)
                        .or_insert_with(|| (existing.clone(), 0))
                        .1 |= mask;
                    reports.push(RootMark {
                        path: root.path.clone(),
                        mark: "filesystem",
                        why: None,
                        dirs: None,
                    });
                }
                Err(e) => {
                    let why = match e.raw_os_error() {
                        Some(libc::EXDEV) => format!(
                            "filesystem mark refused: EXDEV (a btrfs subvolume, or a filesystem \
                             whose mounts differ in file handles): {e}"
                        ),
                        Some(libc::EOPNOTSUPP) | Some(libc::ENODEV) => format!(
                            "filesystem mark refused: this filesystem cannot report file handles \
                             for a whole-filesystem mark (overlayfs, ...): {e}"
                        ),
                        _ => e.to_string(),
                    };
                    let refusal = matches!(
                        e.raw_os_error(),
                        Some(libc::EXDEV) | Some(libc::EOPNOTSUPP) | Some(libc::ENODEV)
                    );
                    if *kind == MarkKind::Auto && refusal {
                        inode_roots.push((root, existing, Some(why)));
                    } else {
                        errors.push((root.path.clone(), why));
                    }
                }
            }
        }
        // Bits no longer wanted, and filesystems no longer watched. Through
        // the filesystem's own descriptor: the path it was marked by may lead
        // elsewhere now (a disk mounted over it), and removing by that path
        // would remove the new filesystem's mark.
        for (fsid, (path, old)) in &self.filesystems {
            let now = wanted_fs.get(fsid).map_or(0, |m| m.1);
            let dropped = old & !now;
            if dropped != 0 {
                let bits = if now == 0 { *old } else { dropped };
                match resolver.mount_fd(*fsid) {
                    Some(fd) => {
                        let _ = mark_fd(
                            self.fan.as_fd(),
                            fanotify::FAN_MARK_REMOVE | fanotify::FAN_MARK_FILESYSTEM,
                            bits | FAN_ONDIR,
                            fd,
                        );
                    }
                    None if fanotify::fsid_of(path).ok() == Some(*fsid) => {
                        self.remove_filesystem(path, bits)
                    }
                    None => {}
                }
            }
        }
        self.filesystems = wanted_fs;

        // Inode marks: every tree is walked and marked again (adding a mark
        // that is there is a no-op, so no event is missed meanwhile); the
        // directories no tree reaches any more are unmarked after. Bits
        // dropped from the mask stay on the marks already there (their
        // events are dropped at capture) until the daemon restarts.
        let before = std::mem::take(&mut self.dirs);
        self.moved_away.clear();
        self.unmarked_created.clear();
        self.inode_trees.clear();
        self.inode_mask |= mask & !FILESYSTEM_ONLY;
        for (root, existing, why) in inode_roots {
            let root_path = escape::as_path(&root.path).into_owned();
            if existing != root_path {
                errors.push((
                    root.path.clone(),
                    "inode marks need the path to exist (a path that does not exist yet can \
                     only be watched with a filesystem mark)"
                        .into(),
                ));
                continue;
            }
            match self.mark_tree(resolver, &root_path, root.recursive) {
                Ok(n) => {
                    self.inode_trees.push((root_path.clone(), root.recursive));
                    reports.push(RootMark {
                        path: root.path.clone(),
                        mark: "inode",
                        why,
                        dirs: Some(n as u64),
                    })
                }
                Err(e) => errors.push((
                    root.path.clone(),
                    match why {
                        Some(why) => format!("{why}; inode marks refused too: {e}"),
                        None => e,
                    },
                )),
            }
        }
        let stale: Vec<Box<[u8]>> = before
            .into_keys()
            .filter(|k| !self.dirs.contains_key(k))
            .collect();
        self.unmark_keys(resolver, &stale);
        for (p, e) in &errors {
            reports.push(RootMark {
                path: p.clone(),
                mark: "none",
                why: Some(e.clone()),
                dirs: None,
            });
        }
        self.roots = reports;
        self.runtime_errors.clear();
        errors
    }

    /// Marks the directory at `path` and, if `recursive`, every directory
    /// below it. All or nothing: on a refusal, the marks just added are
    /// removed and the error names the limit and the path.
    fn mark_tree(
        &mut self,
        resolver: &PathResolver,
        path: &Path,
        recursive: bool,
    ) -> Result<usize, String> {
        let c = std::ffi::CString::new(path.as_os_str().as_bytes())
            .map_err(|_| format!("{}: a path with a NUL byte", path.display()))?;
        // SAFETY: valid path; the descriptor is owned below.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOTDIR) {
                return self.mark_file(path).map(|_| 0);
            }
            return Err(format!("cannot open {}: {e}", path.display()));
        }
        // SAFETY: a new descriptor.
        let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let fsid = fanotify::fsid_of(path).map_err(|e| e.to_string())?;
        let mut added = Vec::new();
        let text = escape::encode_path(path).into_owned();
        match self.mark_below(fsid, Rc::new(fd), None, &text, recursive, &mut added, None) {
            Ok(()) => Ok(added.len()),
            Err(e) => {
                self.unmark_keys(resolver, &added);
                Err(e)
            }
        }
    }

    /// An inode mark on a watched plain file.
    fn mark_file(&mut self, path: &Path) -> Result<(), String> {
        let c = std::ffi::CString::new(path.as_os_str().as_bytes())
            .map_err(|_| format!("{}: a path with a NUL byte", path.display()))?;
        // SAFETY: valid fd and path.
        let r = unsafe {
            libc::fanotify_mark(
                self.fan.as_raw_fd(),
                fanotify::FAN_MARK_ADD | fanotify::FAN_MARK_INODE | fanotify::FAN_MARK_DONT_FOLLOW,
                self.inode_mask,
                libc::AT_FDCWD,
                c.as_ptr(),
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            return Err(mark_error(&e, &escape::encode_path(path), 0));
        }
        Ok(())
    }

    fn unmark_keys(&mut self, resolver: &PathResolver, keys: &[Box<[u8]>]) {
        for key in keys {
            self.dirs.remove(key);
            let fsid = u64::from_ne_bytes(key[..8].try_into().unwrap());
            if let Some(mount) = resolver.mount_fd(fsid)
                && let Ok(fd) =
                    fanotify::open_by_handle(mount, &key[8..], libc::O_RDONLY | libc::O_DIRECTORY)
            {
                self.unmark_dir(fd.as_fd());
            }
        }
    }

    /// Marks `top` (open) and, if `recursive`, the directories below it,
    /// depth first without building paths: each directory is opened
    /// relative to its parent (which stays open while children wait).
    /// With `found`, every entry met is recorded as found by a scan.
    #[allow(clippy::too_many_arguments)]
    fn mark_below(
        &mut self,
        fsid: u64,
        top: Rc<OwnedFd>,
        top_key: Option<Box<[u8]>>,
        top_text: &str,
        recursive: bool,
        added: &mut Vec<Box<[u8]>>,
        mut found: Option<&mut Vec<ScanFound>>,
    ) -> Result<(), String> {
        let mut stack: Vec<PendingDir> = vec![(top, top_key, top_text.to_string())];
        while let Some((fd, key, text)) = stack.pop() {
            let key = match key {
                Some(k) => k,
                None => match fanotify::handle_of_fd(fd.as_fd()) {
                    Ok(h) => resolve::key_of(fsid, &h),
                    Err(e) => return Err(format!("cannot identify {text}: {e}")),
                },
            };
            if let Err(e) = self.mark_dir(fd.as_fd()) {
                return Err(mark_error(&e, &text, added.len()));
            }
            if self
                .dirs
                .insert(key.clone(), DirMark { recursive })
                .is_none()
            {
                added.push(key.clone());
            }
            if !recursive && found.is_none() {
                continue;
            }
            let list = match resolve::entries(fd.as_fd()) {
                Ok(l) => l,
                // Removed meanwhile: nothing below to mark.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
                Err(e) => return Err(format!("cannot list {text}: {e}")),
            };
            for (name, _, maybe_dir) in list {
                let is_dir = maybe_dir
                    && resolve::stat_at(fd.as_fd(), &name).is_ok_and(|st| resolve::is_dir(&st));
                let child_key =
                    fanotify::handle_of(Some(fd.as_fd()), Path::new(OsStr::from_bytes(&name)))
                        .ok()
                        .map(|h| resolve::key_of(fsid, &h));
                if let Some(f) = found.as_deref_mut() {
                    f.push(ScanFound {
                        fsid,
                        dir_key: key.clone(),
                        name: name.clone().into(),
                        object_key: child_key.clone(),
                        is_dir,
                    });
                }
                if !is_dir || !recursive {
                    continue;
                }
                match resolve::open_at(
                    fd.as_fd(),
                    &name,
                    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                ) {
                    Ok(child) => {
                        let child_text = format!("{text}/{}", escape::encode(&name));
                        stack.push((Rc::new(child), child_key, child_text));
                    }
                    Err(e)
                        if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR)) => {
                    }
                    Err(e) => {
                        return Err(format!("cannot open {text}/{}: {e}", escape::encode(&name)));
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether inode marks are in use (the per-event work below is skipped
    /// otherwise).
    pub fn follows_trees(&self) -> bool {
        !self.dirs.is_empty()
    }

    /// Keeps the inode marks in step with one event read from the queue.
    /// A directory created in a followed tree is marked and scanned: what
    /// the scan finds is appended to `found`, parents first.
    pub fn on_event(
        &mut self,
        resolver: &PathResolver,
        ev: &RawEvent<'_>,
        found: &mut Vec<ScanFound>,
    ) {
        if ev.mask & FAN_ONDIR == 0 {
            return;
        }
        let (Some(dir), Some(name), Some(obj)) = (ev.dir, ev.name, ev.object) else {
            return;
        };
        if ev.mask & EventType::Delete.mask() != 0 {
            // The kernel drops the mark with the inode.
            self.dirs.remove(obj.key);
        }
        if ev.mask & EventType::MovedFrom.mask() != 0 && self.dirs.contains_key(obj.key) {
            self.moved_away.insert(obj.key.into(), obj.fsid);
        }
        if ev.mask & ENTRY_EVENTS != 0 {
            self.moved_away.remove(obj.key);
            if let Some(p) = self.dirs.get(dir.key)
                && p.recursive
                && !self.dirs.contains_key(obj.key)
            {
                let created = ev.mask & EventType::Create.mask() != 0
                    || self.unmarked_created.remove(obj.key);
                self.mark_new_dir(
                    resolver,
                    dir.fsid,
                    (dir.key, dir.handle),
                    (obj.key, obj.handle),
                    name,
                    created.then_some(found),
                );
            }
        }
    }

    /// Marks a directory that appeared in a marked one, and what is below
    /// it; for a created one, what the scan finds is kept to be reported.
    fn mark_new_dir(
        &mut self,
        resolver: &PathResolver,
        fsid: u64,
        (parent_key, parent_handle): (&[u8], &[u8]),
        (key, handle): (&[u8], &[u8]),
        name: &[u8],
        found: Option<&mut Vec<ScanFound>>,
    ) {
        let Some(mount) = resolver.mount_fd(fsid) else {
            return;
        };
        let flags = libc::O_RDONLY | libc::O_DIRECTORY;
        // By its own handle: it may have been renamed since (its name in
        // the event is then another directory's, or nothing's). By name in
        // its parent where handles cannot be opened (overlayfs): if it was
        // renamed in between, its MOVED_TO marks it (and, as it was just
        // created, scans it for what it holds).
        let fd = match fanotify::open_by_handle(mount, handle, flags) {
            Ok(fd) => fd,
            Err(_) => {
                let by_name = fanotify::open_by_handle(mount, parent_handle, flags)
                    .or_else(|e| match resolver.path_of_key(parent_key) {
                        Some(p) => {
                            let p = escape::as_path(&p).into_owned();
                            std::fs::File::open(&p).map(OwnedFd::from)
                        }
                        None => Err(e),
                    })
                    .and_then(|parent| {
                        resolve::open_at(parent.as_fd(), name, flags | libc::O_NOFOLLOW)
                    });
                // The same directory, not one that took its name since.
                match by_name {
                    Ok(fd)
                        if fanotify::handle_of_fd(fd.as_fd())
                            .is_ok_and(|h| *resolve::key_of(fsid, &h) == *key) =>
                    {
                        fd
                    }
                    _ => {
                        if found.is_some() {
                            self.unmarked_created.insert(key.into());
                        }
                        return;
                    }
                }
            }
        };
        self.unmarked_created.remove(key);
        let text = format!(
            "{}/{}",
            resolver
                .path_of_key(parent_key)
                .unwrap_or_else(|| "<a watched directory>".into()),
            escape::encode(name)
        );
        let mut added = Vec::new();
        let r = self.mark_below(
            fsid,
            Rc::new(fd),
            Some(key.into()),
            &text,
            true,
            &mut added,
            found,
        );
        if let Err(e) = r {
            log::error!("a new directory in a watched tree cannot be followed: {e}");
            self.runtime_errors.push((text, e));
        }
    }

    /// Events were lost (queue overflow): directories created meanwhile
    /// were never marked. Every inode-marked tree is walked and marked
    /// again (what they hold is not logged: the overflow record says
    /// events were lost).
    pub fn after_overflow(&mut self, resolver: &PathResolver) {
        for (path, recursive) in self.inode_trees.clone() {
            if let Err(e) = self.mark_tree(resolver, &path, recursive) {
                log::error!("re-marking {} after a queue overflow: {e}", path.display());
                self.runtime_errors
                    .push((escape::encode_path(&path).into_owned(), e));
            }
        }
    }

    /// The kernel queue was read empty: every event made before now has
    /// been seen. Directories moved away and not seen arriving left the
    /// tree: their marks go.
    pub fn at_queue_empty(&mut self, resolver: &PathResolver) {
        if !self.moved_away.is_empty() {
            let gone: Vec<(Box<[u8]>, u64)> = self.moved_away.drain().collect();
            for (key, fsid) in gone {
                self.unmark_subtree(resolver, fsid, &key);
            }
        }
    }

    /// Removes the marks of a directory that left the tree and of every
    /// marked directory below it.
    fn unmark_subtree(&mut self, resolver: &PathResolver, fsid: u64, key: &[u8]) {
        let Some(mount) = resolver.mount_fd(fsid) else {
            return;
        };
        let Ok(top) =
            fanotify::open_by_handle(mount, &key[8..], libc::O_RDONLY | libc::O_DIRECTORY)
        else {
            self.dirs.remove(key);
            return;
        };
        let mut seen = HashSet::new();
        let mut stack = vec![(top, Box::<[u8]>::from(key))];
        while let Some((fd, k)) = stack.pop() {
            if !seen.insert(k.clone()) || self.dirs.remove(&k).is_none() {
                continue;
            }
            self.unmark_dir(fd.as_fd());
            let Ok(list) = resolve::entries(fd.as_fd()) else {
                continue;
            };
            for (name, _, maybe_dir) in list {
                if !maybe_dir {
                    continue;
                }
                let Ok(h) =
                    fanotify::handle_of(Some(fd.as_fd()), Path::new(OsStr::from_bytes(&name)))
                else {
                    continue;
                };
                let ck = resolve::key_of(fsid, &h);
                if !self.dirs.contains_key(&ck) {
                    continue;
                }
                if let Ok(child) = resolve::open_at(
                    fd.as_fd(),
                    &name,
                    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                ) {
                    stack.push((child, ck));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_limits_are_named_with_the_path() {
        let e = io::Error::from_raw_os_error(libc::ENOSPC);
        let m = mark_error(&e, "/w/deep/dir", 8191);
        assert!(m.contains("fs.fanotify.max_user_marks = "), "{m}");
        assert!(m.contains("/w/deep/dir") && m.contains("8191"), "{m}");
        let e = io::Error::from_raw_os_error(libc::ENOMEM);
        let m = mark_error(&e, "/w/x", 3);
        assert!(m.contains("ENOMEM") && m.contains("/w/x"), "{m}");
    }

    #[test]
    fn kinds_parse_print_and_merge() {
        for k in [MarkKind::Auto, MarkKind::Filesystem, MarkKind::Inode] {
            assert_eq!(MarkKind::parse(k.as_str()).unwrap(), k);
            assert_eq!(
                serde_json::to_string(&k).unwrap(),
                format!("\"{}\"", k.as_str())
            );
        }
        assert!(MarkKind::parse("inodes").is_err());
        use MarkKind::*;
        assert_eq!(Auto.merge(Inode), Inode);
        assert_eq!(Inode.merge(Filesystem), Filesystem);
        assert_eq!(Auto.merge(Auto), Auto);
    }

    /// A store line without "mark" (older lines, the seed's shape) is
    /// auto; auto is not written.
    #[test]
    fn store_lines_omit_auto() {
        let o: crate::store::PathOptions =
            serde_json::from_str(r#"{"recursive":true,"types":["CREATE"]}"#).unwrap();
        assert_eq!(o.mark, MarkKind::Auto);
        assert!(!serde_json::to_string(&o).unwrap().contains("mark"));
        let o: crate::store::PathOptions =
            serde_json::from_str(r#"{"recursive":true,"types":["CREATE"],"mark":"inode"}"#)
                .unwrap();
        assert_eq!(o.mark, MarkKind::Inode);
        assert!(
            serde_json::to_string(&o)
                .unwrap()
                .contains(r#""mark":"inode""#)
        );
    }
}
