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
use std::{
    collections::HashMap,
    ffi::CString,
    os::{
        fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
        unix::fs::MetadataExt,
    },
    path::{Path, PathBuf},
    time::Duration,
};

use super::{
    parse::{Fid, RawEvent},
    scope::{Place, Scope},
};
use crate::{
    event::EventType,
    fanotify::{self, FAN_ONDIR},
};

const CREATE: u64 = EventType::Create.mask();
const DELETE: u64 = EventType::Delete.mask();
const MOVED_TO: u64 = EventType::MovedTo.mask();
const CLOSE_WRITE: u64 = EventType::CloseWrite.mask();
const SELF_EVENTS: u64 = EventType::DeleteSelf.mask() | EventType::MoveSelf.mask();

/// How long a deleted directory's node is kept for events still queued.
const DELETED_KEEP_SECS: u32 = 10;

struct DirNode {
    /// Parent's key; `None` for a mount root, whose `name` is its full path.
    parent: Option<Box<[u8]>>,
    name: Box<str>,
    /// Cached full path, valid while `path_gen` equals the resolver's `gen`.
    path: String,
    path_gen: u64,
    place: Place,
    last_used: u32,
    /// When its DELETE was seen (0: alive).
    deleted_at: u32,
    /// Nodes whose parent this is: a node is evicted only as a leaf.
    children: u32,
}

/// A filesystem we watch: a descriptor to open handles against, and the
/// path it is mounted at.
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
    pub size_entries: u64,
}

/// What the resolver made of one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// The full path was appended to the output; `inside` says whether it is
    /// in some watched tree.
    Path { inside: bool },
    /// Only the name could be appended: the directory is unknown and might
    /// have been watched.
    Unresolved,
    /// Nothing to report (outside, or a self event on a plain file).
    Drop,
}

pub struct PathResolver {
    dirs: HashMap<Box<[u8]>, DirNode>,
    generation: u64,
    scope: Scope,
    mounts: HashMap<u64, Mount>,
    /// Last size seen per file (object handle), for DELETE and MOVED_FROM,
    /// whose file is no longer at its path when we read the event.
    sizes: moka::sync::Cache<Box<[u8]>, u64>,
    /// Handles of watched paths that are files (their self events count).
    watched_files: HashMap<Box<[u8]>, String>,
    capacity: usize,
    ttl_secs: u32,
    now: u32,
    /// Every directory inside a watched tree is known (pre-walks done and no
    /// event lost since). While true, an unknown handle is outside.
    complete: bool,
    over_capacity_warned: bool,
    pub stats: ResolverStats,
}

fn coarse_now() -> u32 {
    (crate::process::boot_ns() / 1_000_000_000) as u32
}

fn cstr(p: &Path) -> Option<CString> {
    CString::new(p.as_os_str().as_encoded_bytes()).ok()
}

fn key_of(fsid: u64, handle: &[u8]) -> Box<[u8]> {
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

impl PathResolver {
    pub fn new(dir_capacity: u64, dir_ttl: Duration, size_capacity: u64) -> Self {
        Self {
            dirs: HashMap::new(),
            generation: 1,
            scope: Scope::default(),
            mounts: HashMap::new(),
            sizes: moka::sync::Cache::builder()
                .max_capacity(size_capacity)
                .build(),
            watched_files: HashMap::new(),
            capacity: dir_capacity as usize,
            ttl_secs: dir_ttl.as_secs().min(u32::MAX as u64) as u32,
            now: coarse_now(),
            complete: true,
            over_capacity_warned: false,
            stats: ResolverStats::default(),
        }
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
    }

    /// Registers the filesystem holding `existing` (a path that exists) so
    /// its handles can be opened. Returns its fsid.
    pub fn add_mount(&mut self, existing: &Path) -> std::io::Result<u64> {
        let fsid = fanotify::fsid_of(existing)?;
        if let std::collections::hash_map::Entry::Vacant(e) = self.mounts.entry(fsid) {
            let root = mount_root_of(existing);
            let c = cstr(&root).ok_or_else(|| std::io::Error::from_raw_os_error(libc::EINVAL))?;
            // Not O_PATH: open_by_handle_at rejects O_PATH mount descriptors.
            // SAFETY: valid path; the descriptor is owned below.
            let fd = unsafe {
                libc::open(
                    c.as_ptr(),
                    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
                )
            };
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: new descriptor.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            e.insert(Mount {
                fd,
                root: root.to_string_lossy().into_owned(),
            });
        }
        Ok(fsid)
    }

    /// Learns every directory under `root` (to `depth` levels), so that
    /// later events in them resolve even after they are deleted. Does not
    /// follow symlinks or cross into other filesystems.
    pub fn prewalk(&mut self, root: &Path, depth: usize) {
        let Ok(meta) = std::fs::symlink_metadata(root) else {
            return; // pending: learned from events when it appears
        };
        let Ok(fsid) = self.add_mount(root) else {
            return;
        };
        let Some(root_key) = self.ensure_chain(fsid, root) else {
            return;
        };
        if !meta.is_dir() {
            self.watched_files
                .insert(root_key, root.to_string_lossy().into_owned());
            return;
        }
        let dev = meta.dev();
        let mut stack = vec![(root.to_path_buf(), root_key, 0usize)];
        while let Some((dir, key, level)) = stack.pop() {
            if level >= depth {
                continue;
            }
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let Ok(ft) = entry.file_type() else { continue };
                if !ft.is_dir() {
                    continue;
                }
                let path = entry.path();
                match std::fs::symlink_metadata(&path) {
                    Ok(m) if m.dev() == dev => {}
                    _ => continue,
                }
                let Ok(handle) = fanotify::handle_of(None, &path) else {
                    continue;
                };
                let child = key_of(fsid, &handle);
                let name = entry.file_name().to_string_lossy().into_owned();
                self.insert_node(child.clone(), Some(key.clone()), name);
                stack.push((path, child, level + 1));
            }
        }
    }

    /// Makes sure `path` and all its ancestors up to the mount root are
    /// nodes; returns the key of `path`.
    fn ensure_chain(&mut self, fsid: u64, path: &Path) -> Option<Box<[u8]>> {
        let mount_root = self.mounts.get(&fsid)?.root.clone();
        let mut prefixes: Vec<&Path> = path.ancestors().collect();
        prefixes.reverse(); // "/" first
        let mut parent: Option<Box<[u8]>> = None;
        for p in prefixes {
            let ps = p.to_string_lossy();
            if ps.len() < mount_root.len() {
                continue; // above the mount
            }
            let handle = fanotify::handle_of(None, p).ok()?;
            let key = key_of(fsid, &handle);
            if !self.dirs.contains_key(&key) {
                if ps == mount_root {
                    self.insert_node(key.clone(), None, mount_root.clone());
                } else {
                    let name = p.file_name()?.to_string_lossy().into_owned();
                    match &parent {
                        Some(pk) => self.insert_node(key.clone(), Some(pk.clone()), name),
                        None => self.insert_node(key.clone(), None, ps.into_owned()),
                    }
                }
            }
            parent = Some(key);
        }
        parent
    }

    fn insert_node(&mut self, key: Box<[u8]>, parent: Option<Box<[u8]>>, name: String) {
        if let Some(old) = self.dirs.get(&key) {
            if old.parent == parent && *old.name == *name && old.deleted_at == 0 {
                return;
            }
            let old_parent = old.parent.clone();
            self.unlink_child(old_parent.as_deref());
        }
        if let Some(p) = parent.as_deref()
            && let Some(pn) = self.dirs.get_mut(p)
        {
            pn.children += 1;
        }
        let children = self.dirs.get(&key).map_or(0, |n| n.children);
        self.dirs.insert(
            key,
            DirNode {
                parent,
                name: name.into_boxed_str(),
                path: String::new(),
                path_gen: 0,
                place: Place::Outside,
                last_used: self.now,
                deleted_at: 0,
                children,
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
    fn dir_path(&mut self, fid: &Fid<'_>) -> Option<&str> {
        let fresh = self
            .dirs
            .get(fid.key)
            .is_some_and(|n| n.path_gen == self.generation);
        if fresh {
            self.stats.dir_hits += 1;
        } else if !self.dirs.contains_key(fid.key) {
            self.stats.dir_misses += 1;
            self.lookup_in_kernel(fid)?;
        }
        if !fresh && !self.rebuild(fid.key) {
            return None;
        }
        let now = self.now;
        let node = self.dirs.get_mut(fid.key)?;
        node.last_used = now;
        Some(node.path.as_str())
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
            if chain.len() > 4096 {
                return false; // a cycle: cannot happen with sane data
            }
        }
        for k in chain.into_iter().rev() {
            let parent_path = match self.dirs[&k].parent.as_deref() {
                Some(p) => match self.dirs.get(p) {
                    Some(pn) => Some(pn.path.clone()),
                    None => return false,
                },
                None => None,
            };
            let node = self.dirs.get_mut(&k).unwrap();
            node.path.clear();
            match parent_path {
                Some(pp) => {
                    node.path.push_str(&pp);
                    if !pp.ends_with('/') {
                        node.path.push('/');
                    }
                    node.path.push_str(&node.name);
                }
                None => node.path.push_str(&node.name),
            }
            node.place = self.scope.place_of_dir(&node.path);
            node.path_gen = self.generation;
        }
        true
    }

    /// Resolves an unknown directory handle through the kernel and records
    /// it (with its ancestors). Fails for directories that no longer exist.
    fn lookup_in_kernel(&mut self, fid: &Fid<'_>) -> Option<()> {
        let mount = self.mounts.get(&fid.fsid)?;
        self.stats.kernel_lookups += 1;
        let fd = fanotify::open_by_handle(
            mount.fd.as_fd(),
            fid.handle,
            libc::O_PATH | libc::O_DIRECTORY,
        )
        .ok()?;
        let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()?;
        let text = link.to_string_lossy();
        if text.ends_with(" (deleted)") || !text.starts_with('/') {
            return None;
        }
        let path = PathBuf::from(text.as_ref());
        let key = self.ensure_chain(fid.fsid, &path)?;
        // The path may have been renamed in between: only trust a match.
        (*key == *fid.key).then_some(())
    }

    /// Resolves `ev`'s path into `out` (appending) and maintains the cache.
    pub fn resolve(&mut self, ev: &RawEvent<'_>, out: &mut String) -> Resolution {
        let is_dir = ev.mask & FAN_ONDIR != 0;
        let start = out.len();
        let resolution = match (ev.dir, ev.object) {
            (Some(dir), _) => {
                let name = ev.name.unwrap_or(b".");
                match self.dir_path(&dir) {
                    Some(path) => {
                        out.push_str(path);
                        if name != b"." {
                            if !path.ends_with('/') {
                                out.push('/');
                            }
                            out.push_str(&String::from_utf8_lossy(name));
                        }
                        Resolution::Path {
                            inside: self.scope.contains_event(&out[start..]),
                        }
                    }
                    None => self.unresolved(name, out),
                }
            }
            // Self events on files come with the file's fid only.
            // A watched file: its path is its watch root.
            (None, Some(obj)) => match self.watched_files.get(obj.key) {
                Some(path) => {
                    out.push_str(path);
                    Resolution::Path { inside: true }
                }
                None => Resolution::Drop,
            },
            (None, None) => Resolution::Drop,
        };
        self.maintain(ev, is_dir, &out[start..], resolution);
        resolution
    }

    fn unresolved(&mut self, name: &[u8], out: &mut String) -> Resolution {
        if self.complete {
            // Every watched directory is known, so this one was not watched.
            self.stats.unresolved_outside += 1;
            Resolution::Drop
        } else {
            self.stats.unresolved += 1;
            out.push_str(&String::from_utf8_lossy(name));
            Resolution::Unresolved
        }
    }

    /// Keeps the directory tree in step with creates, renames and deletes.
    fn maintain(&mut self, ev: &RawEvent<'_>, is_dir: bool, path: &str, resolution: Resolution) {
        if !is_dir {
            return;
        }
        let (Some(dir), Some(name), Some(target)) = (ev.dir, ev.name, ev.object) else {
            return;
        };
        if ev.mask & (CREATE | MOVED_TO) != 0 {
            let name = String::from_utf8_lossy(name).into_owned();
            let known = self.dirs.contains_key(target.key);
            if known {
                // A rename: one node moves, every path below it changes.
                self.insert_node(target.key.into(), Some(dir.key.into()), name);
                self.generation += 1;
            } else if self.dirs.contains_key(dir.key) {
                self.insert_node(target.key.into(), Some(dir.key.into()), name);
                if ev.mask & MOVED_TO != 0
                    && matches!(resolution, Resolution::Path { inside: true })
                {
                    // Moved in from outside: learn the subtree it brings.
                    self.prewalk(Path::new(path), usize::MAX);
                }
            }
        }
        if ev.mask & DELETE != 0
            && let Some(n) = self.dirs.get_mut(target.key)
        {
            n.deleted_at = self.now.max(1);
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

    /// Records the size just seen for a written file, so its DELETE can
    /// report it later (by then the file is gone).
    pub fn remember_size(&mut self, ev: &RawEvent<'_>, size: u64) {
        if ev.mask & CLOSE_WRITE != 0
            && ev.mask & FAN_ONDIR == 0
            && let Some(obj) = ev.object
        {
            self.sizes.insert(obj.key.into(), size);
        }
    }

    /// Last known size of the event's object (for DELETE / MOVED_FROM).
    pub fn last_size(&self, ev: &RawEvent<'_>) -> Option<u64> {
        self.sizes.get(ev.object?.key)
    }

    /// Events were lost: directories created meanwhile are unknown until the
    /// watched trees are walked again.
    pub fn mark_incomplete(&mut self) {
        self.complete = false;
    }

    pub fn mark_complete(&mut self) {
        self.complete = true;
    }

    /// Periodic housekeeping: forgets deleted directories once their events
    /// are drained, expires directories outside every watched tree, and keeps
    /// the cache within its capacity (inside nodes are never evicted).
    pub fn sweep(&mut self) {
        self.tick();
        let now = self.now;
        let ttl = self.ttl_secs;
        let over = self.dirs.len().saturating_sub(self.capacity);
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
        self.stats.size_entries = self.sizes.entry_count();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::scope::WatchRoot;

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
        let mut r = PathResolver::new(1000, Duration::from_secs(60), 100);
        r.set_scope(Scope::from_roots(vec![WatchRoot {
            path: root.to_string_lossy().into(),
            recursive: true,
        }]));
        r.prewalk(&root, usize::MAX);
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
        assert_eq!(r.resolve(&ev, &mut out), Resolution::Path { inside: true });
        assert_eq!(out, format!("{}/a/b/c/f", root.display()));
    }

    #[test]
    fn rename_of_an_ancestor_changes_paths_below() {
        let d = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(d.path()).unwrap();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        let mut r = PathResolver::new(1000, Duration::from_secs(60), 100);
        r.set_scope(Scope::from_roots(vec![WatchRoot {
            path: root.to_string_lossy().into(),
            recursive: true,
        }]));
        r.prewalk(&root, usize::MAX);
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
        let mut r = PathResolver::new(1000, Duration::from_secs(60), 100);
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
        assert_eq!(r.resolve(&ev, &mut out), Resolution::Path { inside: false });
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
        let mut r = PathResolver::new(1000, Duration::from_secs(60), 100);
        r.set_scope(Scope::from_roots(vec![WatchRoot {
            path: root.to_string_lossy().into(),
            recursive: true,
        }]));
        r.prewalk(&root, usize::MAX);
        let (key, fsid, h) = fid_for(&root.join("a/b"));
        let names: [(&str, &[u8]); 2] = [("utf-8", b"file-name.txt"), ("not utf-8", b"file\xff.txt")];
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
}
