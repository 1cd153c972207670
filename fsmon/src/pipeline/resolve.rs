//! Stage 3, resolve: turns a directory file handle plus an entry name into a
//! full path, without a syscall in the common case.
//!
//! Directories are kept as a tree keyed by file handle: each node knows its
//! parent's handle and its own name. A node's full path is cached and stamped
//! with a generation; renaming a directory bumps the generation, so every
//! cached path below it is rebuilt on next use (renames cost O(1), lookups stay
//! O(1)). Nodes inside watched trees are pinned: they are never evicted, which
//! is what lets `rm -rf` of a whole tree report every file's full path even
//! after the directories are gone. Directories outside every watched tree are
//! cached too (they tell us quickly that an event is out of scope) and expire.
//!
//! Paths are bytes; the resolver builds their text form ([`crate::escape`]).
//! Nothing here asks the kernel for a directory by its full path: trees are
//! walked by opening each directory from its handle, and an unknown
//! directory whose path is longer than `PATH_MAX` is placed by climbing
//! `..` from its descriptor, so depth never makes a directory unknown.
//!
//! For a non-root user, each node also caches whether events in it reach
//! that user (see [`access`](super::access)).
use std::{
    collections::HashMap,
    ffi::{CString, OsStr},
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
        unix::{ffi::OsStrExt, fs::MetadataExt},
    },
    path::{Path, PathBuf},
    time::Duration,
};

use super::{
    access::{LIST, SEARCH, UserAccess},
    parse::{Fid, RawEvent},
    scope::{Place, Scope},
};
use crate::{
    escape,
    event::EventType,
    fanotify::{self, FAN_ONDIR},
};

const CREATE: u64 = EventType::Create.mask();
const DELETE: u64 = EventType::Delete.mask();
const MOVED_TO: u64 = EventType::MovedTo.mask();
const MOVED_FROM: u64 = EventType::MovedFrom.mask();
const MOVE_SELF: u64 = EventType::MoveSelf.mask();
const ATTRIB: u64 = EventType::Attrib.mask();
#[cfg(test)]
const CLOSE_WRITE: u64 = EventType::CloseWrite.mask();
const SELF_EVENTS: u64 = EventType::DeleteSelf.mask() | EventType::MoveSelf.mask();

/// How long a deleted directory's node is kept for events still queued.
const DELETED_KEEP_SECS: u32 = 10;

/// Full paths up to this length are cached in their node. Longer ones (only
/// below a tree deeper than PATH_MAX) are built when used, from the names up
/// to the nearest cached ancestor: a hostile deep tree then costs memory
/// linear in its size, not quadratic.
const MAX_CACHED_PATH: usize = libc::PATH_MAX as usize;

/// `DirNode::access` before the directory was checked.
const ACCESS_UNKNOWN: u8 = 0x80;
/// Verdict bits: events in this directory reach the user; the user can
/// pass through it to the directories below.
const VISIBLE: u8 = 1;
const TRAVERSABLE: u8 = 2;

struct DirNode {
    /// Parent's key; `None` for a mount root, whose `name` is its full path.
    parent: Option<Box<[u8]>>,
    /// The name's text form ([`escape`]).
    name: Box<str>,
    /// Cached full path, valid while `path_gen` equals the resolver's `gen`
    /// (empty when `long`).
    path: String,
    path_gen: u64,
    /// The full path is longer than [`MAX_CACHED_PATH`]: built on use.
    long: bool,
    place: Place,
    last_used: u32,
    /// When its DELETE was seen (0: alive).
    deleted_at: u32,
    /// Nodes whose parent this is: a node is evicted only as a leaf.
    children: u32,
    /// What the daemon's user may do in it ([`SEARCH`], [`LIST`]), or
    /// [`ACCESS_UNKNOWN`]. Only used for a non-root user.
    access: u8,
    /// [`VISIBLE`] | [`TRAVERSABLE`], valid while `verdict_gen` equals the
    /// resolver's `perm_gen`.
    verdict: u8,
    verdict_gen: u64,
}

/// A filesystem we watch: a descriptor to open handles against, and the
/// path it is mounted at (text form).
struct Mount {
    fd: OwnedFd,
    root: String,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct ResolverStats {
    pub dir_entries: u64,
    pub dir_hits: u64,
    pub dir_misses: u64,
    /// Directories resolved by asking the kernel (open_by_handle_at).
    pub kernel_lookups: u64,
    pub evicted: u64,
    /// Events whose directory could not be resolved and that may have been
    /// inside a watched tree (logged with `unresolved`).
    pub unresolved: u64,
    /// Unresolvable events known to be outside every watched tree (dropped).
    pub unresolved_outside: u64,
    /// Events inside a watched tree that the daemon's user may not see.
    pub hidden: u64,
}

/// What the resolver made of one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// The full path was appended to the output; `inside` says whether it is
    /// in some watched tree, `visible` whether the daemon's user may see it.
    Path { inside: bool, visible: bool },
    /// Only the name could be appended: the directory is unknown and might
    /// have been watched.
    Unresolved,
    /// Nothing to report (outside, or a self event on a plain file).
    Drop,
}

/// Why a directory handle could not be placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Miss {
    /// The directory no longer exists (or was last seen outside every
    /// watched tree).
    Gone,
    /// It exists (or may), but its path could not be built: why, and the
    /// error number if a system call said so (0 otherwise).
    Failed(&'static str, i32),
}

/// Where the directory open at `fd` is now, as the kernel prints it: gone
/// if it was removed, failed if it is not below the daemon's root (another
/// mount namespace) or too long to print (`ENAMETOOLONG`).
fn where_now(fd: BorrowedFd<'_>) -> Result<PathBuf, Miss> {
    let link =
        std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).map_err(|e| miss_of(&e))?;
    let bytes = link.as_os_str().as_bytes();
    if bytes.ends_with(b" (deleted)") {
        Err(Miss::Gone)
    } else if !bytes.starts_with(b"/") {
        Err(Miss::Failed("not reachable from the daemon's root", 0))
    } else {
        Ok(link)
    }
}

/// Opens `path` (`O_CLOEXEC` added).
fn open_path(path: &Path, flags: i32) -> std::io::Result<OwnedFd> {
    let c = cstr(path).ok_or_else(|| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: a valid path; the descriptor is owned below.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn miss_of(e: &std::io::Error) -> Miss {
    match e.raw_os_error() {
        Some(libc::ESTALE) | Some(libc::ENOENT) => Miss::Gone,
        errno => Miss::Failed("a system call failed", errno.unwrap_or(0)),
    }
}

pub struct PathResolver {
    dirs: HashMap<Box<[u8]>, DirNode>,
    generation: u64,
    scope: Scope,
    mounts: HashMap<u64, Mount>,
    /// Handles of watched paths that are files (their self events count).
    watched_files: HashMap<Box<[u8]>, String>,
    capacity: usize,
    ttl_secs: u32,
    now: u32,
    /// Every directory inside a watched tree is known (pre-walks done and no
    /// event lost since). While true, a handle of a directory that no longer
    /// exists and was never seen is outside.
    complete: bool,
    /// False where `complete` can never be true (see `never_complete`).
    may_complete: bool,
    over_capacity_warned: bool,
    /// When the last "could not be found" line was logged (0: never), and
    /// unresolved events since.
    unresolved_said_at: u32,
    unresolved_unsaid: u64,
    /// Watched roots the daemon's (non-root) user cannot reach now: a
    /// directory above one was closed. Events below them are hidden.
    unreachable_roots: Vec<String>,
    /// The daemon's user when it is not root: events are checked against
    /// what that user may see.
    access: Option<UserAccess>,
    /// Bumped when a directory's permissions or place change: cached
    /// verdicts are then recomputed (from cached access bits, no syscall).
    perm_gen: u64,
    /// A reused buffer for paths handed to the kernel.
    path_buf: Vec<u8>,
    /// A reused buffer for paths too long to cache.
    long_path: String,
    pub stats: ResolverStats,
}

fn coarse_now() -> u32 {
    (crate::process::boot_ns() / 1_000_000_000) as u32
}

fn cstr(p: &Path) -> Option<CString> {
    CString::new(p.as_os_str().as_bytes()).ok()
}

pub(crate) fn key_of(fsid: u64, handle: &[u8]) -> Box<[u8]> {
    let mut k = Vec::with_capacity(8 + handle.len());
    k.extend_from_slice(&fsid.to_ne_bytes());
    k.extend_from_slice(handle);
    k.into_boxed_slice()
}

/// The topmost ancestor of `path` on the same filesystem (its mount point).
fn mount_root_of(path: &Path) -> PathBuf {
    let Ok(meta) = std::fs::metadata(path) else {
        return path.to_path_buf();
    };
    let dev = meta.dev();
    let mut root = path.to_path_buf();
    while let Some(parent) = root.parent() {
        match std::fs::metadata(parent) {
            Ok(m) if m.dev() == dev => root = parent.to_path_buf(),
            _ => break,
        }
    }
    root
}

fn fstat(fd: BorrowedFd<'_>) -> std::io::Result<libc::stat> {
    // SAFETY: an all-zero stat is a valid out value; valid descriptor.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st)
}

/// `lstat` of `name` in the directory `dir`.
pub(crate) fn stat_at(dir: BorrowedFd<'_>, name: &[u8]) -> std::io::Result<libc::stat> {
    let c = CString::new(name).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: an all-zero stat is a valid out value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid descriptor, NUL-terminated name, valid out pointer.
    let r = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            c.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st)
}

pub(crate) fn open_at(dir: BorrowedFd<'_>, name: &[u8], flags: i32) -> std::io::Result<OwnedFd> {
    let c = CString::new(name).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: valid descriptor and name; the new descriptor is owned below.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), c.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub(crate) fn is_dir(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

/// The entries of the directory open at `dir` (read through a duplicate, so
/// `dir` stays usable), as (name, inode, maybe a directory).
pub(crate) fn entries(dir: BorrowedFd<'_>) -> std::io::Result<Vec<(Vec<u8>, u64, bool)>> {
    let dup = dir.try_clone_to_owned()?;
    let mut d = nix::dir::Dir::from_fd(dup).map_err(std::io::Error::from)?;
    let mut out = Vec::new();
    for e in d.iter() {
        let e = e.map_err(std::io::Error::from)?;
        let name = e.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let maybe_dir = matches!(e.file_type(), None | Some(nix::dir::Type::Directory));
        out.push((name.to_vec(), e.ino(), maybe_dir));
    }
    Ok(out)
}

impl PathResolver {
    pub fn new(dir_capacity: u64, dir_ttl: Duration, access: Option<UserAccess>) -> Self {
        Self {
            dirs: HashMap::new(),
            generation: 1,
            scope: Scope::default(),
            mounts: HashMap::new(),
            watched_files: HashMap::new(),
            capacity: dir_capacity as usize,
            ttl_secs: dir_ttl.as_secs().min(u32::MAX as u64) as u32,
            now: coarse_now(),
            complete: true,
            may_complete: true,
            over_capacity_warned: false,
            unresolved_said_at: 0,
            unresolved_unsaid: 0,
            unreachable_roots: Vec::new(),
            access,
            perm_gen: 1,
            path_buf: Vec::with_capacity(256),
            long_path: String::new(),
            stats: ResolverStats::default(),
        }
    }

    /// Whether events are checked against a non-root user's permissions
    /// (then directory ATTRIB events are needed too).
    pub fn checks_access(&self) -> bool {
        self.access.is_some()
    }

    /// Called once per read batch: a coarse clock for last-use stamps.
    pub fn tick(&mut self) {
        self.now = coarse_now();
    }

    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    /// Replaces the watched roots. Cached places are recomputed lazily.
    pub fn set_scope(&mut self, scope: Scope) {
        self.scope = scope;
        self.generation += 1;
        self.perm_gen += 1;
    }

    /// Registers the filesystem holding `existing` (a path that exists) so
    /// its handles can be opened, and its root as a node. Returns its fsid.
    pub fn add_mount(&mut self, existing: &Path) -> std::io::Result<u64> {
        let fsid = fanotify::fsid_of(existing)?;
        if !self.mounts.contains_key(&fsid) {
            let root = mount_root_of(existing);
            // Not O_PATH: open_by_handle_at rejects O_PATH mount descriptors.
            let fd = open_path(&root, libc::O_RDONLY | libc::O_DIRECTORY)?;
            let root_text = escape::encode_path(&root).into_owned();
            // The root as a node: a climb from a deep directory ends there.
            if let Ok(h) = fanotify::handle_of_fd(fd.as_fd()) {
                self.insert_node(key_of(fsid, &h), None, root_text.clone());
            }
            self.mounts.insert(
                fsid,
                Mount {
                    fd,
                    root: root_text,
                },
            );
        }
        Ok(fsid)
    }

    /// Learns every directory under `root` (to `depth` levels), so that
    /// later events in them resolve even after they are deleted. Does not
    /// follow symlinks or cross into other filesystems. Returns false if
    /// some directory could not be read (directories below it may be
    /// unknown).
    pub fn prewalk(&mut self, root: &Path, depth: usize) -> bool {
        if std::fs::symlink_metadata(root).is_err() {
            return true; // pending: learned from events when it appears
        }
        let Ok(fsid) = self.add_mount(root) else {
            return false;
        };
        let Some((root_key, root_fd)) = self.ensure_chain_open(fsid, root) else {
            log::warn!(
                "{}: cannot be reached without following a symlink (or it changed meanwhile): not walked",
                root.display()
            );
            return false;
        };
        let Ok(st) = fstat(root_fd.as_fd()) else {
            return false;
        };
        if !is_dir(&st) {
            self.watched_files
                .insert(root_key, escape::encode_path(root).into_owned());
            return true;
        }
        // The top opened from the chain's descriptor (no symlink followed):
        // on a filesystem whose handles cannot be opened (overlayfs), the
        // walk then goes by names below it.
        let top = open_at(root_fd.as_fd(), b".", libc::O_RDONLY | libc::O_DIRECTORY).ok();
        self.walk_below_from(fsid, root_key, top, depth)
    }

    fn walk_below(&mut self, fsid: u64, top: Box<[u8]>, depth: usize) -> bool {
        self.walk_below_from(fsid, top, None, depth)
    }

    /// Learns the directories below `top` (to `depth` levels), opening each
    /// one from its handle (or, where the filesystem cannot open handles,
    /// by its name in its parent, which stays open meanwhile) and its
    /// children relative to it: no path is ever built, so depth does not
    /// matter.
    fn walk_below_from(
        &mut self,
        fsid: u64,
        top: Box<[u8]>,
        top_fd: Option<OwnedFd>,
        depth: usize,
    ) -> bool {
        let mut complete = true;
        let mut dev = None;
        type Parent = Option<(std::rc::Rc<OwnedFd>, Vec<u8>)>;
        let mut stack: Vec<(Box<[u8]>, usize, Parent)> = vec![(top, 0usize, None)];
        let mut top_fd = top_fd;
        while let Some((key, level, parent)) = stack.pop() {
            let Some(mount) = self.mounts.get(&fsid) else {
                return false;
            };
            let opened = match top_fd.take() {
                Some(fd) => Ok(fd),
                None => fanotify::open_by_handle(
                    mount.fd.as_fd(),
                    &key[8..],
                    libc::O_RDONLY | libc::O_DIRECTORY,
                )
                .or_else(|e| match &parent {
                    Some((p, name)) => open_at(
                        p.as_fd(),
                        name,
                        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                    ),
                    None => Err(e),
                }),
            };
            let fd = match opened {
                Ok(fd) => fd,
                // Removed meanwhile: its events say so.
                Err(e) if miss_of(&e) == Miss::Gone => continue,
                Err(e) => {
                    log::warn!("walking a watched tree: cannot open a directory: {e}");
                    complete = false;
                    continue;
                }
            };
            let fd = std::rc::Rc::new(fd);
            if let Some(a) = &self.access {
                let bits = a.check(fd.as_fd());
                if let Some(n) = self.dirs.get_mut(&key)
                    && n.access != bits
                {
                    // A permission change whose ATTRIB was lost: cached
                    // verdicts below it are stale.
                    n.access = bits;
                    self.perm_gen += 1;
                }
            }
            if level >= depth {
                continue;
            }
            let dev = match dev {
                Some(d) => d,
                None => match fstat(fd.as_fd()) {
                    Ok(st) => *dev.insert(st.st_dev),
                    Err(_) => return false,
                },
            };
            let list = match entries(fd.as_fd()) {
                Ok(l) => l,
                Err(e) if miss_of(&e) == Miss::Gone => continue,
                Err(e) => {
                    log::warn!("walking a watched tree: cannot list a directory: {e}");
                    complete = false;
                    continue;
                }
            };
            for (name, _, maybe_dir) in list {
                if !maybe_dir {
                    continue;
                }
                match stat_at(fd.as_fd(), &name) {
                    Ok(st) if is_dir(&st) && st.st_dev == dev => {}
                    _ => continue, // not a directory, another filesystem, or gone
                }
                let handle = match fanotify::handle_of(
                    Some(fd.as_fd()),
                    Path::new(OsStr::from_bytes(&name)),
                ) {
                    Ok(h) => h,
                    Err(e) if miss_of(&e) == Miss::Gone => continue,
                    Err(_) => {
                        complete = false;
                        continue;
                    }
                };
                let child = key_of(fsid, &handle);
                self.insert_node(
                    child.clone(),
                    Some(key.clone()),
                    escape::encode(&name).into_owned(),
                );
                stack.push((child, level + 1, Some((fd.clone(), name))));
            }
        }
        complete
    }

    /// Makes sure `path` and all its ancestors up to the mount root are
    /// nodes; returns the key of `path`.
    fn ensure_chain(&mut self, fsid: u64, path: &Path) -> Option<Box<[u8]>> {
        self.ensure_chain_open(fsid, path).map(|(key, _)| key)
    }

    /// [`ensure_chain`](Self::ensure_chain), also returning `path` open
    /// (`O_PATH`). The path is walked one component at a time and no
    /// symlink is followed: a directory on it swapped for a symlink (by
    /// whoever owns the directory above) must not lead the root daemon
    /// into another tree and file that tree under this path's name.
    fn ensure_chain_open(&mut self, fsid: u64, path: &Path) -> Option<(Box<[u8]>, OwnedFd)> {
        let mount_root = self.mounts.get(&fsid)?.root.clone();
        let mut prefixes: Vec<&Path> = path.ancestors().collect();
        prefixes.reverse(); // "/" first
        let last = prefixes.len() - 1;
        let mut cur: Option<OwnedFd> = None;
        let mut parent: Option<Box<[u8]>> = None;
        for (i, p) in prefixes.into_iter().enumerate() {
            let fd = match (&cur, p.file_name()) {
                (None, _) => open_path(Path::new("/"), libc::O_PATH | libc::O_DIRECTORY).ok()?,
                (Some(dir), Some(name)) => {
                    // The last one may be a watched file.
                    let dir_only = if i < last { libc::O_DIRECTORY } else { 0 };
                    let fd = open_at(
                        dir.as_fd(),
                        name.as_bytes(),
                        libc::O_PATH | libc::O_NOFOLLOW | dir_only,
                    )
                    .ok()?;
                    // O_PATH|O_NOFOLLOW opens a symlink itself: refused
                    // (above the last, O_DIRECTORY already refused it).
                    if i == last && fstat(fd.as_fd()).ok()?.st_mode & libc::S_IFMT == libc::S_IFLNK
                    {
                        return None;
                    }
                    fd
                }
                (Some(_), None) => return None, // "..": paths here are canonical
            };
            let ps = escape::encode_path(p);
            if ps.len() >= mount_root.len() {
                let handle = fanotify::handle_of_fd(fd.as_fd()).ok()?;
                let key = key_of(fsid, &handle);
                if !self.dirs.contains_key(&key) {
                    if ps == mount_root {
                        self.insert_node(key.clone(), None, mount_root.clone());
                    } else {
                        let name = escape::encode(p.file_name()?.as_bytes()).into_owned();
                        match &parent {
                            Some(pk) => self.insert_node(key.clone(), Some(pk.clone()), name),
                            None => self.insert_node(key.clone(), None, ps.into_owned()),
                        }
                    }
                }
                parent = Some(key);
            }
            cur = Some(fd);
        }
        Some((parent?, cur?))
    }

    fn insert_node(&mut self, key: Box<[u8]>, parent: Option<Box<[u8]>>, name: String) {
        if let Some(old) = self.dirs.get(&key) {
            if old.parent == parent && *old.name == *name && old.deleted_at == 0 {
                return;
            }
            if old.parent != parent || *old.name != *name {
                // Moved (a rename seen only by a walk after lost events):
                // every cached path below it changes.
                self.generation += 1;
            }
            let old_parent = old.parent.clone();
            self.unlink_child(old_parent.as_deref());
        }
        if let Some(p) = parent.as_deref()
            && let Some(pn) = self.dirs.get_mut(p)
        {
            pn.children += 1;
        }
        let (children, access) = self
            .dirs
            .get(&key)
            .map_or((0, ACCESS_UNKNOWN), |n| (n.children, n.access));
        self.dirs.insert(
            key,
            DirNode {
                parent,
                name: name.into_boxed_str(),
                path: String::new(),
                path_gen: 0,
                long: false,
                place: Place::Outside,
                last_used: self.now,
                deleted_at: 0,
                children,
                access,
                verdict: 0,
                verdict_gen: 0,
            },
        );
    }

    fn unlink_child(&mut self, parent: Option<&[u8]>) {
        if let Some(p) = parent
            && let Some(pn) = self.dirs.get_mut(p)
        {
            pn.children = pn.children.saturating_sub(1);
        }
    }

    /// The full path of directory `key`, rebuilding stale cached paths and
    /// asking the kernel for unknown handles.
    fn dir_path(&mut self, fid: &Fid<'_>) -> Result<&str, Miss> {
        // The common case is two lookups: this one, and the one that
        // stamps the node and returns its path.
        let fresh = self
            .dirs
            .get(fid.key)
            .filter(|n| n.path_gen == self.generation)
            .map(|n| n.long);
        let long = match fresh {
            Some(long) => {
                self.stats.dir_hits += 1;
                long
            }
            None => {
                if !self.dirs.contains_key(fid.key) {
                    self.stats.dir_misses += 1;
                    self.lookup_in_kernel(fid)?;
                }
                if !self.rebuild(fid.key) {
                    return Err(Miss::Failed("an ancestor is not cached", 0));
                }
                self.dirs.get(fid.key).is_some_and(|n| n.long)
            }
        };
        let now = self.now;
        if long {
            if let Some(n) = self.dirs.get_mut(fid.key) {
                n.last_used = now;
            }
            let mut path = std::mem::take(&mut self.long_path);
            let built = self.write_path(fid.key, &mut path);
            self.long_path = path;
            return if built {
                Ok(self.long_path.as_str())
            } else {
                Err(Miss::Failed("an ancestor is not cached", 0))
            };
        }
        let node = self
            .dirs
            .get_mut(fid.key)
            .ok_or(Miss::Failed("not cached", 0))?;
        node.last_used = now;
        Ok(node.path.as_str())
    }

    /// Writes the full path of the fresh node `key` into `out` (cleared):
    /// its cached path, or its names up to the nearest cached ancestor.
    fn write_path(&self, key: &[u8], out: &mut String) -> bool {
        out.clear();
        let mut names: Vec<&str> = Vec::new();
        let mut cur = key;
        loop {
            let Some(n) = self.dirs.get(cur) else {
                return false;
            };
            if !n.long {
                out.push_str(&n.path);
                break;
            }
            names.push(&n.name);
            match n.parent.as_deref() {
                Some(p) => cur = p,
                None => return false, // a mount root is never that long
            }
            if names.len() > self.dirs.len() {
                return false;
            }
        }
        for name in names.iter().rev() {
            if !out.ends_with('/') {
                out.push('/');
            }
            out.push_str(name);
        }
        true
    }

    /// The cached path of the directory `key`, if known (for messages: it
    /// may predate a rename).
    pub fn path_of_key(&self, key: &[u8]) -> Option<String> {
        let mut s = String::new();
        self.write_path(key, &mut s).then_some(s)
    }

    /// A descriptor on the filesystem `fsid` for `open_by_handle_at`.
    pub fn mount_fd(&self, fsid: u64) -> Option<BorrowedFd<'_>> {
        self.mounts.get(&fsid).map(|m| m.fd.as_fd())
    }

    /// Recomputes the cached path of `key` and of its stale ancestors.
    fn rebuild(&mut self, key: &[u8]) -> bool {
        let mut chain: Vec<Box<[u8]>> = Vec::new();
        let mut cur: Option<Box<[u8]>> = Some(key.into());
        while let Some(k) = cur {
            let Some(node) = self.dirs.get(&k) else {
                return false; // a parent vanished from the cache
            };
            if node.path_gen == self.generation && !chain.is_empty() {
                break;
            }
            cur = node.parent.clone();
            chain.push(k);
            if chain.len() > self.dirs.len() {
                return false; // a cycle: cannot happen with sane data
            }
        }
        // Top-down, extending one buffer: the parent's path, then each name.
        let mut path = String::new();
        if let Some(top_parent) = chain
            .last()
            .and_then(|k| self.dirs.get(k))
            .and_then(|n| n.parent.clone())
            && !self.write_path(&top_parent, &mut path)
        {
            return false;
        }
        for k in chain.into_iter().rev() {
            let node = self.dirs.get_mut(&k).unwrap();
            if node.parent.is_some() {
                if !path.ends_with('/') {
                    path.push('/');
                }
                path.push_str(&node.name);
            } else {
                path.clear();
                path.push_str(&node.name);
            }
            node.place = self.scope.place_of_dir(&path);
            node.path_gen = self.generation;
            node.long = path.len() > MAX_CACHED_PATH;
            node.path.clear();
            if node.long {
                node.path.shrink_to_fit();
            } else {
                node.path.push_str(&path);
            }
        }
        true
    }

    /// Resolves an unknown directory handle through the kernel and records
    /// it (with its ancestors).
    fn lookup_in_kernel(&mut self, fid: &Fid<'_>) -> Result<(), Miss> {
        let mount = self
            .mounts
            .get(&fid.fsid)
            .ok_or(Miss::Failed("on a filesystem without a mark", 0))?;
        self.stats.kernel_lookups += 1;
        let fd = fanotify::open_by_handle(
            mount.fd.as_fd(),
            fid.handle,
            libc::O_PATH | libc::O_DIRECTORY,
        )
        .map_err(|e| miss_of(&e))?;
        match where_now(fd.as_fd()) {
            Ok(link) => {
                let bytes = link.as_os_str().as_bytes();
                match self.ensure_chain(fid.fsid, &link) {
                    Some(key) if *key == *fid.key => Ok(()),
                    // Renamed or removed while we looked (busy directories
                    // elsewhere on the filesystem do this all the time).
                    // Where it was is still known: a directory outside
                    // every tree is as good as gone; one that may be inside
                    // is reported unresolved.
                    _ if self.scope.place_of_dir(&escape::encode(bytes)) == Place::Outside => {
                        Err(Miss::Gone)
                    }
                    _ => Err(Miss::Failed("renamed or removed while looked up", 0)),
                }
            }
            // Longer than PATH_MAX: the kernel will not print it.
            Err(Miss::Failed(_, libc::ENAMETOOLONG)) => self.climb(fid, fd),
            Err(miss) => Err(miss),
        }
    }

    /// Places the directory open at `fd` by walking up through `..` until a
    /// known directory, finding each name by its inode in the parent. Used
    /// only for directories too deep for the kernel to print their path.
    fn climb(&mut self, fid: &Fid<'_>, fd: OwnedFd) -> Result<(), Miss> {
        let mut links: Vec<(Box<[u8]>, String)> = Vec::new(); // bottom-up
        let mut cur_key: Box<[u8]> = fid.key.into();
        let mut cur = fd;
        loop {
            let st = fstat(cur.as_fd()).map_err(|e| miss_of(&e))?;
            let parent = open_at(cur.as_fd(), b"..", libc::O_RDONLY | libc::O_DIRECTORY)
                .map_err(|e| miss_of(&e))?;
            let pst = fstat(parent.as_fd()).map_err(|e| miss_of(&e))?;
            if pst.st_dev != st.st_dev || pst.st_ino == st.st_ino {
                // The top, and nothing known on the way.
                return Err(Miss::Failed("too deep, and no cached ancestor", 0));
            }
            let name = entries(parent.as_fd())
                .map_err(|e| miss_of(&e))?
                .into_iter()
                .find(|(name, ino, _)| {
                    *ino == st.st_ino
                        && stat_at(parent.as_fd(), name)
                            .is_ok_and(|s| s.st_ino == st.st_ino && s.st_dev == st.st_dev)
                })
                .ok_or(Miss::Gone)?
                .0;
            let pkey = key_of(
                fid.fsid,
                &fanotify::handle_of_fd(parent.as_fd()).map_err(|e| miss_of(&e))?,
            );
            links.push((cur_key, escape::encode(&name).into_owned()));
            let known = self.dirs.contains_key(&pkey);
            cur_key = pkey;
            cur = parent;
            if known {
                break;
            }
            if links.len() > 1 << 20 {
                return Err(Miss::Failed("too deep, and no cached ancestor", 0));
            }
        }
        let mut parent = cur_key;
        for (key, name) in links.into_iter().rev() {
            self.insert_node(key.clone(), Some(parent), name);
            parent = key;
        }
        Ok(())
    }

    /// Resolves `ev`'s path into `out` (appending) and maintains the cache.
    pub fn resolve(&mut self, ev: &RawEvent<'_>, out: &mut String) -> Resolution {
        let is_dir = ev.mask & FAN_ONDIR != 0;
        let start = out.len();
        let resolution = match (ev.dir, ev.object) {
            (Some(dir), _) => {
                let name = ev.name.unwrap_or(b".");
                match self.dir_path(&dir) {
                    Ok(path) => {
                        out.push_str(path);
                        if name != b"." {
                            if !path.ends_with('/') {
                                out.push('/');
                            }
                            escape::encode_into(name, out);
                        }
                        let inside = self.scope.contains_event(&out[start..]);
                        Resolution::Path {
                            inside,
                            visible: !inside
                                || (self.visible(dir.key) && self.reachable(&out[start..])),
                        }
                    }
                    Err(miss) => self.unresolved(miss, name, out),
                }
            }
            // Self events on files come with the file's fid only.
            // A watched file: its path is its watch root.
            (None, Some(obj)) => match self.watched_files.get(obj.key) {
                Some(path) => {
                    out.push_str(path);
                    Resolution::Path {
                        inside: true,
                        visible: self.reachable(&out[start..]),
                    }
                }
                None => Resolution::Drop,
            },
            (None, None) => Resolution::Drop,
        };
        self.maintain(ev, is_dir, resolution);
        resolution
    }

    fn unresolved(&mut self, miss: Miss, name: &[u8], out: &mut String) -> Resolution {
        if self.complete && miss == Miss::Gone {
            // Every watched directory is known, and this one is gone without
            // ever having been seen: it was not watched.
            self.stats.unresolved_outside += 1;
            Resolution::Drop
        } else {
            self.stats.unresolved += 1;
            self.note_unresolved(miss);
            // For a non-root user the name is withheld: nothing says the
            // directory was one the user may see into.
            if self.access.is_none() {
                escape::encode_into(name, out);
            }
            Resolution::Unresolved
        }
    }

    /// Whether `path` (inside a tree) is below no root the user has lost
    /// the way to. O(1) while every root is reachable.
    fn reachable(&self, path: &str) -> bool {
        self.unreachable_roots.is_empty()
            || !self
                .unreachable_roots
                .iter()
                .any(|r| super::scope::under(path, r))
    }

    /// Checks again, as the daemon's user, which watched roots that user
    /// can reach (search permission on every directory above each). The
    /// directories above a root are outside the trees, so no verdict
    /// covers them: this runs every second, when the roots change, and at
    /// once when a directory above a root changes (its ATTRIB, on a
    /// filesystem mark).
    pub fn check_reach(&mut self) {
        let Some(access) = &self.access else {
            return;
        };
        let unreachable: Vec<String> = self
            .scope
            .roots
            .iter()
            .filter(|r| cstr(&escape::as_path(&r.path)).is_none_or(|c| !access.can_reach(&c)))
            .map(|r| r.path.clone())
            .collect();
        if unreachable != self.unreachable_roots {
            for r in unreachable
                .iter()
                .filter(|r| !self.unreachable_roots.contains(r))
            {
                log::info!(
                    "{r}: out of the user's reach now (a directory above it is closed): its events are hidden"
                );
            }
            for r in self
                .unreachable_roots
                .iter()
                .filter(|r| !unreachable.contains(r))
            {
                log::info!("{r}: within the user's reach again: its events are shown");
            }
            self.unreachable_roots = unreachable;
        }
    }

    /// Says why events are logged unresolved: at most one line a minute,
    /// with how many there were since the last line.
    fn note_unresolved(&mut self, miss: Miss) {
        self.unresolved_unsaid += 1;
        if self.unresolved_said_at != 0 && self.now.saturating_sub(self.unresolved_said_at) < 60 {
            return;
        }
        let why = match miss {
            Miss::Gone => "removed before it was read, while events lost earlier keep the \
                           directory cache incomplete"
                .to_string(),
            Miss::Failed(why, 0) => why.to_string(),
            Miss::Failed(why, errno) => {
                format!("{why}: {}", std::io::Error::from_raw_os_error(errno))
            }
        };
        log::warn!(
            "a directory's path could not be found ({why}); {} event(s) in such directories \
             logged with \"unresolved\" since the last such line",
            self.unresolved_unsaid
        );
        self.unresolved_said_at = self.now.max(1);
        self.unresolved_unsaid = 0;
    }

    /// Whether events in directory `key` reach the daemon's user: it may
    /// search or list `key`, and search every directory above it inside
    /// the watched trees. Cached per node; O(1) once computed.
    fn visible(&mut self, key: &[u8]) -> bool {
        if self.access.is_none() {
            return true;
        }
        if let Some(n) = self.dirs.get(key)
            && n.verdict_gen == self.perm_gen
        {
            return n.verdict & VISIBLE != 0;
        }
        // Walk up to the first node with a fresh verdict, or the first one
        // outside the trees (the user's right to reach the watched root was
        // checked when it was added).
        let mut chain: Vec<Box<[u8]>> = Vec::new();
        let mut above = VISIBLE | TRAVERSABLE;
        let mut cur: Option<Box<[u8]>> = Some(key.into());
        while let Some(k) = cur {
            let Some(n) = self.dirs.get(&k) else { break };
            if n.place != Place::Inside {
                break;
            }
            if n.verdict_gen == self.perm_gen {
                above = n.verdict;
                break;
            }
            cur = n.parent.clone();
            chain.push(k);
            if chain.len() > self.dirs.len() {
                break;
            }
        }
        let mut traversable = above & TRAVERSABLE != 0;
        let mut verdict = above;
        for k in chain.into_iter().rev() {
            let own = self.own_access(&k);
            verdict = match (traversable, own) {
                (false, _) => 0,
                // Names and sizes in a directory are the user's to see
                // only if the user may both list it and stat in it.
                (true, own) if own & (SEARCH | LIST) == SEARCH | LIST => VISIBLE | TRAVERSABLE,
                (true, own) if own & SEARCH != 0 => TRAVERSABLE,
                _ => 0,
            };
            traversable = verdict & TRAVERSABLE != 0;
            let perm_gen = self.perm_gen;
            if let Some(n) = self.dirs.get_mut(&k) {
                n.verdict = verdict;
                n.verdict_gen = perm_gen;
            }
        }
        verdict & VISIBLE != 0
    }

    /// The user's access to directory `key`, checked once. A directory that
    /// is already gone when first checked is hidden: nothing says its owner
    /// let anyone in (a private `mktemp -d` made and removed in a shared
    /// tree must not show its names).
    fn own_access(&mut self, key: &[u8]) -> u8 {
        match self.dirs.get(key) {
            Some(n) if n.access != ACCESS_UNKNOWN => return n.access,
            Some(_) => {}
            None => return 0,
        }
        let bits = self.check_now(key).unwrap_or(0);
        if let Some(n) = self.dirs.get_mut(key) {
            n.access = bits;
        }
        bits
    }

    /// Asks the kernel what the user may do in directory `key` now;
    /// `None` if the directory cannot be opened (gone). Opened by its handle,
    /// or where the filesystem cannot open handles (overlayfs) by its cached
    /// path, checked to still be the same directory.
    fn check_now(&mut self, key: &[u8]) -> Option<u8> {
        self.access.as_ref()?;
        let fsid = u64::from_ne_bytes(key.get(..8)?.try_into().ok()?);
        let mount = self.mounts.get(&fsid)?;
        let fd = match fanotify::open_by_handle(
            mount.fd.as_fd(),
            &key[8..],
            libc::O_PATH | libc::O_DIRECTORY,
        ) {
            Ok(fd) => fd,
            // Gone, or a filesystem that opens no handles (overlayfs says
            // ESTALE too): by its path, if that is still this directory.
            Err(_) => {
                if self.dirs.get(key)?.path_gen != self.generation && !self.rebuild(key) {
                    return None;
                }
                let n = self.dirs.get(key)?;
                if n.long {
                    return None;
                }
                let fd = open_path(
                    &escape::as_path(&n.path),
                    libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                )
                .ok()?;
                let same = fanotify::handle_of_fd(fd.as_fd()).is_ok_and(|h| h[..] == key[8..]);
                if !same {
                    return None;
                }
                fd
            }
        };
        Some(self.access.as_ref()?.check(fd.as_fd()))
    }

    /// Keeps the directory tree in step with creates, renames, deletes and
    /// permission changes.
    fn maintain(&mut self, ev: &RawEvent<'_>, is_dir: bool, resolution: Resolution) {
        if !is_dir {
            return;
        }
        if ev.mask & ATTRIB != 0 && self.access.is_some() {
            // A directory's mode, owner or ACL changed: check it again now
            // (while it exists), and let every verdict be recomputed.
            let target = match (ev.object, ev.name) {
                (Some(obj), _) => Some(obj.key),
                (None, Some(b".")) | (None, None) => ev.dir.map(|d| d.key),
                _ => None,
            };
            // A directory above a root: the way to the root may have
            // closed or opened.
            if let Some(key) = target
                && self
                    .dirs
                    .get(key)
                    .is_some_and(|n| n.place == Place::Ancestor)
            {
                self.check_reach();
            }
            // Only directories inside the trees take part in verdicts.
            if let Some(key) = target
                && self.dirs.get(key).is_some_and(|n| n.place == Place::Inside)
            {
                let bits = self.check_now(key).unwrap_or(0);
                if let Some(n) = self.dirs.get_mut(key) {
                    n.access = bits;
                }
                self.perm_gen += 1;
            }
        }
        if ev.mask & (MOVED_FROM | MOVE_SELF) != 0 && ev.mask & MOVED_TO == 0 {
            // Moved, maybe where no mark sees it arrive (inode marks: a
            // directory moved out of the tree, or a root moved away): place
            // it where it is now. A MOVED_TO read later places it again.
            let target = match (ev.object, ev.name) {
                (Some(obj), _) => Some(obj),
                (None, Some(b".")) | (None, None) => ev.dir,
                _ => None,
            };
            if let Some(t) = target
                && self.dirs.contains_key(t.key)
            {
                self.relocate(t.fsid, t.key);
            }
        }
        let (Some(dir), Some(name), Some(target)) = (ev.dir, ev.name, ev.object) else {
            return;
        };
        if ev.mask & (CREATE | MOVED_TO) != 0 {
            let name = escape::encode(name).into_owned();
            let inside = matches!(resolution, Resolution::Path { inside: true, .. });
            // Was it inside a tree before? (Outside nodes are cached too.)
            let was_inside = self.dirs.get(target.key).map(|n| n.place == Place::Inside);
            if was_inside.is_some() {
                // A rename: one node moves, every path below it changes.
                self.insert_node(target.key.into(), Some(dir.key.into()), name);
                self.generation += 1;
                self.perm_gen += 1;
            } else if self.dirs.contains_key(dir.key) {
                self.insert_node(target.key.into(), Some(dir.key.into()), name);
            } else {
                return;
            }
            if ev.mask & MOVED_TO != 0
                && inside
                && was_inside != Some(true)
                && !self.walk_below(target.fsid, target.key.into(), usize::MAX)
            {
                // Moved in from outside: learn the subtree it brings.
                self.mark_incomplete();
            }
            if ev.mask & MOVED_TO != 0 && !inside {
                self.walk_roots_brought_by(target.key);
            }
            if self.access.is_some() {
                // Inside a tree: checked now, while it most likely still
                // exists. Elsewhere: when it first matters (its permissions
                // may have changed while nobody looked).
                let bits = if inside {
                    self.check_now(target.key).unwrap_or(0)
                } else {
                    ACCESS_UNKNOWN
                };
                if let Some(n) = self.dirs.get_mut(target.key) {
                    n.access = bits;
                }
            }
        }
        if ev.mask & DELETE != 0
            && let Some(n) = self.dirs.get_mut(target.key)
        {
            n.deleted_at = self.now.max(1);
        }
    }

    /// Places the known directory `key` where the kernel says it is now
    /// (its parent and name), if it still exists and can be opened by its
    /// handle; paths below it follow.
    fn relocate(&mut self, fsid: u64, key: &[u8]) {
        let Some(mount) = self.mounts.get(&fsid) else {
            return;
        };
        let Ok(fd) = fanotify::open_by_handle(
            mount.fd.as_fd(),
            &key[8..],
            libc::O_PATH | libc::O_DIRECTORY,
        ) else {
            return;
        };
        let Ok(link) = where_now(fd.as_fd()) else {
            return;
        };
        let (Some(parent), Some(name)) = (link.parent(), link.file_name()) else {
            return;
        };
        let Some(parent_key) = self.ensure_chain(fsid, parent) else {
            return;
        };
        self.insert_node(
            key.into(),
            Some(parent_key),
            escape::encode(name.as_bytes()).into_owned(),
        );
        self.perm_gen += 1;
    }

    /// A directory moved to a place above watched roots (a blue/green
    /// `mv app.new app` above a watched `app/proj`, or the parent of a
    /// pending root moved in) brings trees nobody walked: walk every root
    /// now below it, or their directories would be unknown, and their
    /// `rm -rf` taken for events outside.
    fn walk_roots_brought_by(&mut self, key: &[u8]) {
        if !self.rebuild(key) {
            return;
        }
        let Some(path) = self
            .dirs
            .get(key)
            .filter(|n| !n.long)
            .map(|n| n.path.clone())
        else {
            return;
        };
        if self.scope.place_of_dir(&path) != Place::Ancestor {
            return;
        }
        let roots: Vec<(PathBuf, bool)> = self
            .scope
            .roots
            .iter()
            .filter(|r| super::scope::under(&r.path, &path))
            .map(|r| (escape::as_path(&r.path).into_owned(), r.recursive))
            .collect();
        for (root, recursive) in roots {
            if !self.prewalk(&root, if recursive { usize::MAX } else { 1 }) {
                self.mark_incomplete();
            }
        }
    }

    /// Whether self events (DELETE_SELF, MOVE_SELF) of this event should be
    /// reported: for directories and watched files, as inotify does; a
    /// plain file's deletion is already its DELETE.
    pub fn keep_self_events(&self, ev: &RawEvent<'_>) -> bool {
        ev.mask & FAN_ONDIR != 0
            || ev
                .object
                .is_some_and(|o| self.watched_files.contains_key(o.key))
    }

    pub const SELF_EVENTS: u64 = SELF_EVENTS;

    /// The size of the event's file now (no symlink follow), for an event
    /// whose `path` was resolved. One `lstat` of the path, copied with its
    /// NUL into a reused buffer; a path longer than the kernel takes is
    /// stat'ed relative to its directory, opened from its handle.
    pub fn current_size(&mut self, ev: &RawEvent<'_>, path: &str) -> Option<u64> {
        self.path_buf.clear();
        if path.contains('\\') {
            self.path_buf.extend_from_slice(&escape::decode(path).ok()?);
        } else {
            self.path_buf.extend_from_slice(path.as_bytes());
        }
        if self.path_buf.len() < libc::PATH_MAX as usize {
            self.path_buf.push(0);
            // SAFETY: an all-zero stat is a valid out value.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            // SAFETY: NUL-terminated buffer, valid out pointer.
            let r = unsafe { libc::lstat(self.path_buf.as_ptr().cast(), &mut st) };
            return (r == 0).then_some(st.st_size as u64);
        }
        let dir = ev.dir?;
        let mount = self.mounts.get(&dir.fsid)?;
        let fd = fanotify::open_by_handle(
            mount.fd.as_fd(),
            dir.handle,
            libc::O_PATH | libc::O_DIRECTORY,
        )
        .ok()?;
        let st = match ev.name {
            Some(name) if name != b"." => stat_at(fd.as_fd(), name).ok()?,
            _ => fstat(fd.as_fd()).ok()?,
        };
        Some(st.st_size as u64)
    }

    /// Events were lost: directories created meanwhile are unknown until the
    /// watched trees are walked again.
    pub fn mark_incomplete(&mut self) {
        self.complete = false;
    }

    pub fn mark_complete(&mut self) {
        self.complete = self.may_complete;
    }

    /// Without FAN_REPORT_TARGET_FID (Linux before 5.17) directory CREATE and
    /// MOVED_TO events do not say which directory they made, so new ones are
    /// never learned from events: an unknown directory that is gone may
    /// have been inside, and its events are logged unresolved.
    pub fn never_complete(&mut self) {
        self.may_complete = false;
        self.complete = false;
    }

    /// Periodic housekeeping: forgets deleted directories once their events
    /// are drained, expires directories outside every watched tree, and keeps
    /// the cache within its capacity (inside nodes are never evicted).
    pub fn sweep(&mut self) {
        self.tick();
        self.sweep_at(self.now);
    }

    fn sweep_at(&mut self, now: u32) {
        let ttl = self.ttl_secs;
        let over = self.dirs.len().saturating_sub(self.capacity);
        // A node's place is computed with its path, so it is only sure
        // while the path is fresh: a directory learned by a walk (never
        // used since), or last placed before a rename or a scope change,
        // may be inside a tree whatever its place says. Any such node that
        // would go is placed again first (once: then its place is fresh).
        let generation = self.generation;
        let unsure: Vec<Box<[u8]>> = self
            .dirs
            .iter()
            .filter(|(_, n)| {
                n.children == 0
                    && n.deleted_at == 0
                    && n.place == Place::Outside
                    && n.path_gen != generation
                    && (over > 0 || now.saturating_sub(n.last_used) > ttl)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in unsure {
            self.rebuild(&k); // an orphan stays outside: nothing can place it
        }
        let mut victims: Vec<(u32, Box<[u8]>)> = self
            .dirs
            .iter()
            .filter(|(_, n)| n.children == 0)
            .filter_map(|(k, n)| {
                let deleted =
                    n.deleted_at != 0 && now.saturating_sub(n.deleted_at) > DELETED_KEEP_SECS;
                let expired = n.place == Place::Outside && now.saturating_sub(n.last_used) > ttl;
                if deleted || expired {
                    Some((0, k.clone()))
                } else if over > 0 && n.place == Place::Outside && n.parent.is_some() {
                    Some((n.last_used.max(1), k.clone()))
                } else {
                    None
                }
            })
            .collect();
        victims.sort_unstable_by_key(|(age, _)| *age);
        let mut evict_budget = over;
        for (age, k) in victims {
            if age != 0 {
                if evict_budget == 0 {
                    continue;
                }
                evict_budget -= 1;
                self.stats.evicted += 1;
            }
            if let Some(n) = self.dirs.remove(&k) {
                self.unlink_child(n.parent.as_deref());
            }
        }
        if self.dirs.len() > self.capacity && !self.over_capacity_warned {
            self.over_capacity_warned = true;
            log::warn!(
                "directory cache holds {} entries, over its capacity of {}: directories inside watched \
                 trees are never evicted (that is what keeps rm -rf paths complete); raise --cache-dir-cap",
                self.dirs.len(),
                self.capacity
            );
        }
        self.stats.dir_entries = self.dirs.len() as u64;
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::pipeline::scope::WatchRoot;

    /// The event `mask` for `name` in the directory with this handle.
    fn in_dir<'a>(
        mask: u64,
        fsid: u64,
        handle: &'a [u8],
        key: &'a [u8],
        name: &'a [u8],
    ) -> RawEvent<'a> {
        RawEvent {
            mask,
            dir: Some(Fid { fsid, handle, key }),
            name: Some(name),
            ..Default::default()
        }
    }

    /// A resolver whose one recursive tree is `root`, walked.
    fn walked(root: &Path, capacity: u64) -> PathResolver {
        let mut r = PathResolver::new(capacity, Duration::from_secs(60), None);
        r.set_scope(Scope::from_roots(vec![WatchRoot {
            path: root.to_string_lossy().into(),
            recursive: true,
        }]));
        assert!(r.prewalk(root, usize::MAX));
        r
    }

    fn fid_for(path: &Path) -> (Box<[u8]>, u64, Vec<u8>) {
        let fsid = fanotify::fsid_of(path).unwrap();
        let h = fanotify::handle_of(None, path).unwrap();
        (key_of(fsid, &h), fsid, h)
    }

    #[test]
    fn prewalked_tree_resolves_after_deletion_and_rename() {
        let d = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(d.path()).unwrap();
        std::fs::create_dir_all(root.join("a/b/c")).unwrap();
        let mut r = walked(&root, 1000);
        let (key, fsid, handle) = fid_for(&root.join("a/b/c"));
        let fid = Fid {
            fsid,
            handle: &handle,
            key: &key[..],
        };
        // Delete the directory: the cache still knows its path.
        std::fs::remove_dir_all(root.join("a")).unwrap();
        let ev = RawEvent {
            mask: EventType::Delete.mask(),
            dir: Some(fid),
            name: Some(b"f"),
            ..Default::default()
        };
        let mut out = String::new();
        assert_eq!(
            r.resolve(&ev, &mut out),
            Resolution::Path {
                inside: true,
                visible: true
            }
        );
        assert_eq!(out, format!("{}/a/b/c/f", root.display()));
    }

    /// A rename whose events were lost (queue overflow) is learned by the
    /// walk that follows: paths below the renamed directory follow it.
    #[test]
    fn a_walk_after_lost_events_repairs_paths_below_a_renamed_directory() {
        let d = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(d.path()).unwrap();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        let mut r = walked(&root, 1000);
        let (key, fsid, handle) = fid_for(&root.join("a/b"));
        let ev = in_dir(EventType::CloseWrite.mask(), fsid, &handle, &key, b"f");
        let mut out = String::new();
        r.resolve(&ev, &mut out);
        assert_eq!(out, format!("{}/a/b/f", root.display()));
        std::fs::rename(root.join("a"), root.join("z")).unwrap(); // its events lost
        r.mark_incomplete();
        assert!(r.prewalk(&root, usize::MAX));
        out.clear();
        r.resolve(&ev, &mut out);
        assert_eq!(out, format!("{}/z/b/f", root.display()));
    }

    /// Without target fids an unknown directory that is gone is never taken
    /// for one outside the trees.
    #[test]
    fn without_target_fids_a_gone_unknown_directory_is_unresolved() {
        let d = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(d.path()).unwrap();
        let mut r = walked(&root, 1000);
        r.never_complete();
        r.mark_complete(); // what the capture loop does after a walk
        std::fs::create_dir(root.join("n")).unwrap(); // its CREATE unseen
        let (key, fsid, handle) = fid_for(&root.join("n"));
        std::fs::remove_dir(root.join("n")).unwrap();
        let ev = in_dir(EventType::Delete.mask(), fsid, &handle, &key, b"f");
        let mut out = String::new();
        assert_eq!(r.resolve(&ev, &mut out), Resolution::Unresolved);
        assert_eq!(out, "f");
    }

    /// Unresolved events are explained at most once a minute, with the
    /// count of those left unsaid in between.
    #[test]
    fn unresolved_events_are_explained_once_a_minute() {
        let mut r = PathResolver::new(10, Duration::from_secs(60), None);
        r.note_unresolved(Miss::Failed("x", libc::EIO));
        assert_eq!(
            (r.unresolved_said_at, r.unresolved_unsaid),
            (r.now.max(1), 0)
        );
        r.note_unresolved(Miss::Gone);
        r.note_unresolved(Miss::Gone);
        assert_eq!(
            r.unresolved_unsaid, 2,
            "within the minute: counted, not said"
        );
        r.now += 61;
        r.note_unresolved(Miss::Gone);
        assert_eq!((r.unresolved_said_at, r.unresolved_unsaid), (r.now, 0));
    }

    /// A directory learned by the pre-walk and quiet since must outlive
    /// the TTL and capacity limits (which are for directories outside the
    /// trees): a year later its rm -rf still needs its path.
    #[test]
    fn quiet_prewalked_directories_are_never_expired_or_evicted() {
        let d = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(d.path()).unwrap();
        std::fs::create_dir_all(root.join("quiet/leaf")).unwrap();
        // Capacity 1: every node is over capacity.
        let mut r = walked(&root, 1);
        let (key, fsid, handle) = fid_for(&root.join("quiet/leaf"));
        r.sweep_at(r.now + 365 * 86400);
        std::fs::remove_dir_all(root.join("quiet")).unwrap();
        let ev = in_dir(EventType::Delete.mask(), fsid, &handle, &key, b"f");
        let mut out = String::new();
        assert_eq!(
            r.resolve(&ev, &mut out),
            Resolution::Path {
                inside: true,
                visible: true
            }
        );
        assert_eq!(out, format!("{}/quiet/leaf/f", root.display()));
    }

    #[test]
    fn rename_of_an_ancestor_changes_paths_below() {
        let d = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(d.path()).unwrap();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        let mut r = walked(&root, 1000);
        let (bkey, fsid, bh) = fid_for(&root.join("a/b"));
        let (akey, _, ah) = fid_for(&root.join("a"));
        let (rkey, _, rh) = fid_for(&root);
        std::fs::rename(root.join("a"), root.join("z")).unwrap();
        // The MOVED_TO the kernel would report: in root, name z, target a.
        let mv = RawEvent {
            mask: EventType::MovedTo.mask() | FAN_ONDIR,
            dir: Some(Fid {
                fsid,
                handle: &rh,
                key: &rkey[..],
            }),
            name: Some(b"z"),
            object: Some(Fid {
                fsid,
                handle: &ah,
                key: &akey[..],
            }),
            ..Default::default()
        };
        let mut out = String::new();
        r.resolve(&mv, &mut out);
        assert_eq!(out, format!("{}/z", root.display()));
        let ev = RawEvent {
            mask: EventType::CloseWrite.mask(),
            dir: Some(Fid {
                fsid,
                handle: &bh,
                key: &bkey[..],
            }),
            name: Some(b"file"),
            ..Default::default()
        };
        out.clear();
        r.resolve(&ev, &mut out);
        assert_eq!(out, format!("{}/z/b/file", root.display()));
    }

    #[test]
    fn unknown_live_directory_is_resolved_by_the_kernel() {
        let d = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(d.path()).unwrap();
        std::fs::create_dir_all(root.join("x/y")).unwrap();
        let mut r = PathResolver::new(1000, Duration::from_secs(60), None);
        r.add_mount(&root).unwrap();
        let (key, fsid, h) = fid_for(&root.join("x/y"));
        let ev = RawEvent {
            mask: EventType::Create.mask(),
            dir: Some(Fid {
                fsid,
                handle: &h,
                key: &key[..],
            }),
            name: Some(b"n"),
            ..Default::default()
        };
        let mut out = String::new();
        assert_eq!(
            r.resolve(&ev, &mut out),
            Resolution::Path {
                inside: false,
                visible: true
            }
        );
        assert_eq!(out, format!("{}/x/y/n", root.display()));
        assert_eq!(r.stats.kernel_lookups, 1);
        out.clear();
        r.resolve(&ev, &mut out);
        assert_eq!(r.stats.kernel_lookups, 1, "cached the second time");
    }
    /// The per-event cost of resolving a path in a known directory (the hot
    /// path). `cargo test --release -p fsmon --lib resolve_hot_path_cost --
    /// --ignored --nocapture`; prints ns per event.
    #[test]
    #[ignore]
    fn resolve_hot_path_cost() {
        let d = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(d.path()).unwrap();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        let mut r = walked(&root, 1000);
        let (key, fsid, h) = fid_for(&root.join("a/b"));
        let names: [(&str, &[u8]); 2] =
            [("utf-8", b"file-name.txt"), ("not utf-8", b"file\xff.txt")];
        for (what, name) in names {
            let ev = RawEvent {
                mask: EventType::CloseWrite.mask(),
                dir: Some(Fid {
                    fsid,
                    handle: &h,
                    key: &key[..],
                }),
                name: Some(name),
                ..Default::default()
            };
            let mut out = String::with_capacity(4096);
            let n = 2_000_000u32;
            let mut best = f64::MAX;
            for _ in 0..5 {
                let t = std::time::Instant::now();
                for _ in 0..n {
                    out.clear();
                    std::hint::black_box(r.resolve(std::hint::black_box(&ev), &mut out));
                }
                best = best.min(t.elapsed().as_nanos() as f64 / n as f64);
            }
            println!("resolve, {what} name: {best:.1} ns/event ({out})");
        }
    }
    /// Counts this thread's allocations (the test binary's allocator).
    struct Counting;
    thread_local! {
        static ALLOCS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }
    // SAFETY: forwards to the system allocator.
    unsafe impl std::alloc::GlobalAlloc for Counting {
        unsafe fn alloc(&self, l: std::alloc::Layout) -> *mut u8 {
            let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
            // SAFETY: same contract.
            unsafe { std::alloc::System.alloc(l) }
        }
        unsafe fn dealloc(&self, p: *mut u8, l: std::alloc::Layout) {
            // SAFETY: same contract.
            unsafe { std::alloc::System.dealloc(p, l) }
        }
        unsafe fn realloc(&self, p: *mut u8, l: std::alloc::Layout, n: usize) -> *mut u8 {
            let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
            // SAFETY: same contract.
            unsafe { std::alloc::System.realloc(p, l, n) }
        }
    }
    #[global_allocator]
    static COUNTING: Counting = Counting;

    #[test]
    fn the_hot_path_allocates_nothing_whatever_the_name() {
        let d = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(d.path()).unwrap();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        let mut r = watching(&root, None);
        r.prewalk(&root, usize::MAX);
        let (key, fsid, h) = fid_for(&root.join("a/b"));
        let names: [&[u8]; 3] = [b"plain.txt", b"bad\xff\xfe", b"back\\slash"];
        let mut out = String::with_capacity(4096);
        // The counter counts (a control).
        let before = ALLOCS.with(|c| c.get());
        std::hint::black_box(String::from_utf8_lossy(std::hint::black_box(b"x\xff")));
        assert!(ALLOCS.with(|c| c.get()) > before);
        for name in names {
            let ev = RawEvent {
                mask: EventType::CloseWrite.mask(),
                dir: Some(Fid {
                    fsid,
                    handle: &h,
                    key: &key[..],
                }),
                name: Some(name),
                ..Default::default()
            };
            r.resolve(&ev, &mut out); // warm: the node's path is cached
            let before = ALLOCS.with(|c| c.get());
            for _ in 0..1000 {
                out.clear();
                r.resolve(&ev, &mut out);
            }
            let n = ALLOCS.with(|c| c.get()) - before;
            assert_eq!(
                n, 0,
                "{n} allocations for 1000 events named {name:?} ({out})"
            );
        }
    }

    /// Builds `depth` nested directories named `name` under `root` with
    /// mkdirat/openat (a path that long cannot be used whole); returns the
    /// deepest one, open.
    fn make_deep(root: &Path, name: &str, depth: usize) -> OwnedFd {
        let mut fd: OwnedFd = std::fs::File::open(root).unwrap().into();
        let c = CString::new(name).unwrap();
        for _ in 0..depth {
            // SAFETY: valid descriptor and name.
            assert_eq!(
                unsafe { libc::mkdirat(fd.as_raw_fd(), c.as_ptr(), 0o755) },
                0
            );
            fd = open_at(
                fd.as_fd(),
                name.as_bytes(),
                libc::O_RDONLY | libc::O_DIRECTORY,
            )
            .unwrap();
        }
        fd
    }

    fn event_in(fd: BorrowedFd<'_>, mask: u64, name: &'static [u8], f: impl FnOnce(&RawEvent<'_>)) {
        let fsid = {
            let mut st: libc::statfs = unsafe { std::mem::zeroed() };
            // SAFETY: valid descriptor and out pointer.
            assert_eq!(unsafe { libc::fstatfs(fd.as_raw_fd(), &mut st) }, 0);
            // SAFETY: fsid_t is two ints.
            let v: [i32; 2] = unsafe { std::mem::transmute(st.f_fsid) };
            (v[0] as u32 as u64) | ((v[1] as u32 as u64) << 32)
        };
        let h = fanotify::handle_of_fd(fd).unwrap();
        let key = key_of(fsid, &h);
        let ev = RawEvent {
            mask,
            dir: Some(Fid {
                fsid,
                handle: &h,
                key: &key[..],
            }),
            name: Some(name),
            ..Default::default()
        };
        f(&ev)
    }

    fn watching(root: &Path, access: Option<UserAccess>) -> PathResolver {
        let mut r = PathResolver::new(100_000, Duration::from_secs(60), access);
        r.set_scope(Scope::from_roots(vec![WatchRoot {
            path: escape::encode_path(root).into_owned(),
            recursive: true,
        }]));
        r
    }

    #[test]
    fn directories_deeper_than_path_max_resolve_by_walk_and_by_climb() {
        let d = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(d.path()).unwrap();
        let name = "d".repeat(200);
        let deep = make_deep(&root, &name, 25); // > 5000 bytes
        let want = format!(
            "{}/{}/f\\xff",
            root.display(),
            vec![name.as_str(); 25].join("/")
        );
        assert!(want.len() > 5000);
        // At start: the pre-walk finds them (opened by handle, never by path).
        let mut r = watching(&root, None);
        assert!(r.prewalk(&root, usize::MAX));
        event_in(deep.as_fd(), CLOSE_WRITE, b"f\xff", |ev| {
            let mut out = String::new();
            assert_eq!(
                r.resolve(ev, &mut out),
                Resolution::Path {
                    inside: true,
                    visible: true
                }
            );
            assert_eq!(out, want);
            assert_eq!(r.stats.kernel_lookups, 0);
        });
        // Paths beyond PATH_MAX are not kept per node (memory stays linear
        // in the depth of a hostile tree).
        let long: Vec<&DirNode> = r.dirs.values().filter(|n| n.long).collect();
        assert!(!long.is_empty());
        assert!(long.iter().all(|n| n.path.capacity() == 0));
        assert!(r.dirs.values().all(|n| n.path.len() <= MAX_CACHED_PATH));
        // Unknown to the resolver (created during an overflow): the kernel
        // will not print the path, so it is found by climbing `..`.
        let mut r = watching(&root, None);
        r.add_mount(&root).unwrap();
        r.ensure_chain(fanotify::fsid_of(&root).unwrap(), &root)
            .unwrap();
        event_in(deep.as_fd(), CLOSE_WRITE, b"f\xff", |ev| {
            let mut out = String::new();
            assert_eq!(
                r.resolve(ev, &mut out),
                Resolution::Path {
                    inside: true,
                    visible: true
                }
            );
            assert_eq!(out, want);
            assert_eq!(r.stats.kernel_lookups, 1);
            // The file's size, at a path longer than lstat takes.
            // SAFETY: valid descriptor, NUL-terminated name.
            let f = unsafe {
                libc::openat(
                    deep.as_raw_fd(),
                    c"f\xff".as_ptr(),
                    libc::O_WRONLY | libc::O_CREAT | libc::O_CLOEXEC,
                    0o644,
                )
            };
            assert!(f >= 0);
            // SAFETY: a new descriptor.
            let mut f = unsafe { std::fs::File::from_raw_fd(f) };
            f.write_all(b"12345").unwrap();
            assert_eq!(r.current_size(ev, &out), Some(5));
        });
    }

    #[test]
    fn unreadable_directories_are_hidden_until_opened_up() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(d.path()).unwrap();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir_all(root.join("open")).unwrap();
        std::fs::create_dir_all(root.join("secret/sub")).unwrap();
        std::fs::set_permissions(root.join("secret"), std::fs::Permissions::from_mode(0o700))
            .unwrap();
        let nobody = crate::user::TargetUser::from_uid(65534).unwrap();
        let mut r = watching(&root, UserAccess::for_user(&nobody));
        assert!(r.prewalk(&root, usize::MAX));
        let visible = |r: &mut PathResolver, dir: &str| {
            let f = std::fs::File::open(root.join(dir)).unwrap();
            let mut vis = None;
            event_in(f.as_fd(), CLOSE_WRITE, b"x", |ev| {
                let mut out = String::new();
                match r.resolve(ev, &mut out) {
                    Resolution::Path {
                        inside: true,
                        visible,
                    } => vis = Some(visible),
                    other => panic!("{other:?}"),
                }
            });
            vis.unwrap()
        };
        assert!(visible(&mut r, "open"));
        assert!(!visible(&mut r, "secret"));
        assert!(
            !visible(&mut r, "secret/sub"),
            "below an untraversable directory"
        );
        // chmod 0755 and its ATTRIB: visible from then on.
        std::fs::set_permissions(root.join("secret"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        let (skey, fsid, sh) = fid_for(&root.join("secret"));
        let (rkey, _, rh) = fid_for(&root);
        let attrib = RawEvent {
            mask: ATTRIB | FAN_ONDIR,
            dir: Some(Fid {
                fsid,
                handle: &rh,
                key: &rkey[..],
            }),
            name: Some(b"secret"),
            object: Some(Fid {
                fsid,
                handle: &sh,
                key: &skey[..],
            }),
            ..Default::default()
        };
        r.resolve(&attrib, &mut String::new());
        assert!(visible(&mut r, "secret"));
        assert!(visible(&mut r, "secret/sub"));
    }
}
