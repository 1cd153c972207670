//! File work in the user's locations, done with the user's filesystem
//! credentials.
//!
//! The daemon (and the CLI run through `sudo`) is root working for one
//! user. Everything it reads, creates, renames, locks or removes for that
//! user (config, store, logs, their locks and temp files, the directories
//! they live in) goes through a [`UserFs`]: a dedicated thread whose
//! filesystem uid and gid are the user's, with the user's supplementary
//! groups. The kernel then applies the user's permissions to every
//! component of every path: a root-owned file or directory, or a symlink
//! into a place the user cannot reach, fails with EACCES exactly as it would
//! for the user, and what the user creates is the user's. Nothing is chowned.
//!
//! Only that thread changes credentials, through the raw system calls:
//! glibc's `setgroups()`/`setfsuid()` wrappers (and nix's) broadcast the
//! change to every thread of the process, the raw `syscall` changes only the
//! caller. Setting a non-zero fsuid also drops the filesystem capabilities
//! (CAP_DAC_OVERRIDE, CAP_FOWNER, ...) from that thread's effective set.
//!
//! When the user is root, or we are not root (the user runs the CLI
//! directly), closures run on the caller's thread: nothing changes.
use std::{
    fs::File,
    io::Read,
    os::unix::fs::{MetadataExt, OpenOptionsExt},
    path::Path,
    sync::mpsc,
    thread::ThreadId,
};

use crate::{
    error::{Error, Result},
    user::TargetUser,
};

type Job = Box<dyn FnOnce() + Send>;

/// Runs file work as the user; cheap to clone (the clones share the thread).
#[derive(Clone)]
pub struct UserFs {
    user: TargetUser,
    /// `None`: run on the caller's thread.
    worker: Option<Worker>,
}

#[derive(Clone)]
struct Worker {
    jobs: mpsc::Sender<Job>,
    /// A job that calls `run` again runs inline instead of waiting on itself.
    thread: ThreadId,
}

impl std::fmt::Debug for UserFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserFs")
            .field("user", &self.user.name)
            .field("thread", &self.worker.is_some())
            .finish()
    }
}

impl UserFs {
    /// File work for `user`: on a thread with the user's credentials when we
    /// are root working for someone else, directly otherwise.
    pub fn new(user: &TargetUser) -> Result<Self> {
        if user.is_root() || !nix::unistd::geteuid().is_root() {
            return Ok(Self::direct(user.clone()));
        }
        let groups = supplementary_groups(user)?;
        let (jobs, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let (uid, gid) = (user.uid, user.gid);
        let handle = std::thread::Builder::new()
            .name("fsmon-userfs".into())
            .spawn(move || {
                let switched = become_user(uid, gid, &groups);
                let ok = switched.is_ok();
                let _ = ready_tx.send(switched);
                if ok {
                    for job in rx {
                        // A panicking job (a bug) fails its caller, whose
                        // answer channel is dropped; the thread serves on.
                        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                    }
                }
            })
            .map_err(|e| Error::invalid(format!("cannot start the user-files thread: {e}")))?;
        let thread = handle.thread().id();
        ready_rx
            .recv()
            .map_err(|_| Error::invalid("the user-files thread died while starting"))?
            .map_err(|e| {
                Error::invalid(format!(
                    "cannot take the filesystem credentials of {}: {e}",
                    user.name
                ))
            })?;
        Ok(Self {
            user: user.clone(),
            worker: Some(Worker { jobs, thread }),
        })
    }

    /// Runs everything on the caller's thread with the caller's credentials
    /// (for root, for a user running fsmon itself, and for tests).
    pub fn direct(user: TargetUser) -> Self {
        Self { user, worker: None }
    }

    pub fn user(&self) -> &TargetUser {
        &self.user
    }

    /// Runs `f` with the user's filesystem credentials and returns what it
    /// returns. Blocks until it is done; jobs from all clones run one at a
    /// time. `f` must not wait for another thread that itself calls `run`.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let Some(w) = &self.worker else {
            return f();
        };
        if std::thread::current().id() == w.thread {
            return f();
        }
        let (tx, rx) = mpsc::sync_channel(1);
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        // The thread lives as long as a sender does and survives a job that
        // panics: these fail only if this job panicked, which is a bug.
        w.jobs.send(job).expect("the user-files thread is gone");
        rx.recv().expect("a job on the user-files thread panicked")
    }

    /// Reads a whole file as the user (symlinks followed with the user's
    /// rights; must be a regular file). `Ok(None)` if it does not exist.
    pub fn read_to_string(&self, path: &Path) -> Result<Option<String>> {
        let path = path.to_path_buf();
        self.run(move || {
            let mut f = match std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_NOCTTY)
                .open(&path)
            {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(Error::io(&path, e)),
            };
            let meta = f.metadata().map_err(|e| Error::io(&path, e))?;
            if !meta.file_type().is_file() {
                return Err(Error::Unsafe {
                    path,
                    reason: "not a regular file".into(),
                });
            }
            let mut text = String::new();
            f.read_to_string(&mut text).map_err(|e| match e.kind() {
                // Never quote what was read.
                std::io::ErrorKind::InvalidData => {
                    Error::invalid(format!("{}: not UTF-8 text", path.display()))
                }
                _ => Error::io(&path, e),
            })?;
            Ok(Some(text))
        })
    }

    /// Checks that the user may watch `path`: an existing directory must be
    /// listable and searchable (read and execute), an existing file
    /// readable; for a path that does not exist yet, its nearest existing
    /// ancestor must be a listable, searchable directory. Checked with the
    /// user's credentials, so every component on the way counts.
    pub fn check_watchable(&self, path: &Path) -> Result<()> {
        let path = path.to_path_buf();
        self.run(move || check_watchable(&path))
    }

    /// Creates `dir` and its missing parents as the user (mode 0700 for
    /// new ones). An existing final component must be a real directory,
    /// not a symlink.
    pub fn create_dir_all(&self, dir: &Path) -> Result<()> {
        let dir = dir.to_path_buf();
        self.run(move || create_dir_all(&dir))
    }

    /// Removes a file as the user; a missing file is not an error.
    pub fn remove_file(&self, path: &Path) -> Result<()> {
        let path = path.to_path_buf();
        self.run(move || match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(&path, e)),
            _ => Ok(()),
        })
    }

    /// Opens (creating if needed) a file of the user's for appending
    /// (O_NOFOLLOW, regular, one link, owned by the user).
    pub fn open_append(&self, path: &Path, mode: u32) -> Result<File> {
        let (path, uid) = (path.to_path_buf(), self.user.uid);
        self.run(move || crate::safefs::open_user_append(&path, uid, mode))
    }
}

/// The user's supplementary groups, from the group database.
fn supplementary_groups(user: &TargetUser) -> Result<Vec<libc::gid_t>> {
    let name = std::ffi::CString::new(user.name.as_str())
        .map_err(|_| Error::invalid(format!("user name {:?} contains NUL", user.name)))?;
    let groups = nix::unistd::getgrouplist(&name, user.gid())
        .map_err(|e| Error::invalid(format!("cannot list the groups of {}: {e}", user.name)))?;
    Ok(groups.into_iter().map(|g| g.as_raw()).collect())
}

/// Gives the calling thread (a dedicated one, such as the shipper's) the
/// user's filesystem identity for the rest of its life, when we are root
/// working for another user; nothing otherwise.
pub fn become_user_on_this_thread(user: &TargetUser) -> Result<()> {
    if user.is_root() || !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    let groups = supplementary_groups(user)?;
    become_user(user.uid, user.gid, &groups).map_err(|e| {
        Error::invalid(format!(
            "cannot take the filesystem credentials of {}: {e}",
            user.name
        ))
    })
}

/// Gives the calling thread, and only it, the user's filesystem identity.
fn become_user(uid: u32, gid: u32, groups: &[libc::gid_t]) -> std::io::Result<()> {
    // SAFETY: raw system calls on this thread's credentials; `groups`
    // outlives the call and its length is passed with it.
    unsafe {
        if libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        libc::syscall(libc::SYS_setfsgid, gid);
        libc::syscall(libc::SYS_setfsuid, uid);
        // Both calls return the previous value, never an error: ask again
        // with an invalid id (which changes nothing) to learn the current one.
        let fsgid = libc::syscall(libc::SYS_setfsgid, u32::MAX) as u32;
        let fsuid = libc::syscall(libc::SYS_setfsuid, u32::MAX) as u32;
        if (fsuid, fsgid) != (uid, gid) {
            return Err(std::io::Error::other(format!(
                "fsuid/fsgid are {fsuid}/{fsgid}, not {uid}/{gid}"
            )));
        }
    }
    Ok(())
}

/// [`UserFs::check_watchable`] for code already running as the user.
pub fn check_watchable(path: &Path) -> Result<()> {
    use nix::unistd::AccessFlags;
    let mut at = path;
    let mut pending = false;
    let meta = loop {
        match std::fs::metadata(at) {
            Ok(m) => break m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                pending = true;
                at = match at.parent() {
                    Some(p) => p,
                    None => return Err(Error::io(path, e)),
                };
            }
            Err(e) => return Err(cannot_watch(path, at, e)),
        }
    };
    let need = if meta.is_dir() {
        AccessFlags::R_OK | AccessFlags::X_OK
    } else if pending {
        return Err(Error::invalid(format!(
            "cannot watch {}: {} is not a directory",
            path.display(),
            at.display()
        )));
    } else {
        AccessFlags::R_OK
    };
    // AT_EACCESS: checked with this thread's fsuid, fsgid and groups (plain
    // access() would use the real uid). No open: a device is not touched.
    nix::unistd::faccessat(
        nix::fcntl::AT_FDCWD,
        at,
        need,
        nix::fcntl::AtFlags::AT_EACCESS,
    )
    .map_err(|e| cannot_watch(path, at, e.into()))
}

fn cannot_watch(path: &Path, at: &Path, e: std::io::Error) -> Error {
    let what = if at == path {
        String::new()
    } else {
        format!(" ({} is its nearest existing directory)", at.display())
    };
    Error::invalid(format!(
        "cannot watch {}: you may not read it{what}: {}",
        path.display(),
        std::io::Error::from_raw_os_error(e.raw_os_error().unwrap_or(libc::EIO))
    ))
}

fn create_dir_all(dir: &Path) -> Result<()> {
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.file_type().is_symlink() => {
            return Err(Error::Unsafe {
                path: dir.into(),
                reason: "it is a symbolic link".into(),
            });
        }
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) => {
            return Err(Error::Unsafe {
                path: dir.into(),
                reason: "not a directory".into(),
            });
        }
        Err(_) => {}
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io(dir, e))
}

/// Checks that an open file is a regular file with one link owned by `uid`.
pub fn check_owned(file: &File, path: &Path, uid: u32) -> Result<()> {
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    let refuse = |reason: String| Error::Unsafe {
        path: path.into(),
        reason,
    };
    if !meta.file_type().is_file() {
        return Err(refuse("not a regular file".into()));
    }
    if meta.nlink() > 1 {
        return Err(refuse(format!(
            "it has {} hard links (expected 1)",
            meta.nlink()
        )));
    }
    if meta.uid() != uid {
        let owner = if meta.uid() == 0 {
            "root".to_string()
        } else {
            format!("uid {}", meta.uid())
        };
        return Err(refuse(format!("owned by {owner}, not by uid {uid}")));
    }
    Ok(())
}

use std::os::unix::fs::DirBuilderExt;

#[cfg(test)]
mod tests {
    use super::*;

    /// One line of /proc/thread-self/status, e.g. "Uid:", as fields.
    fn status_field(tid: &str, key: &str) -> Vec<String> {
        let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_default()
            .split_whitespace()
            .map(String::from)
            .collect()
    }

    fn tid() -> String {
        nix::unistd::gettid().to_string()
    }

    #[test]
    fn only_the_worker_thread_takes_the_users_credentials() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let nobody = TargetUser::from_uid(65534).expect("nobody exists");
        let fs = UserFs::new(&nobody).unwrap();
        let main_tid = tid();
        let main_groups = status_field(&main_tid, "Groups:");
        let (worker_tid, uids, gids, groups, cap_eff) = fs.run(|| {
            let t = tid();
            (
                t.clone(),
                status_field(&t, "Uid:"),
                status_field(&t, "Gid:"),
                status_field(&t, "Groups:"),
                status_field(&t, "CapEff:"),
            )
        });
        assert_ne!(worker_tid, main_tid);
        // Real, effective, saved stay root; the filesystem uid is nobody's.
        assert_eq!(uids, ["0", "0", "0", "65534"]);
        assert_eq!(gids[3], nobody.gid.to_string());
        let expected: Vec<String> = supplementary_groups(&nobody)
            .unwrap()
            .iter()
            .map(|g| g.to_string())
            .collect();
        let mut sorted = groups.clone();
        sorted.sort();
        let mut exp = expected.clone();
        exp.sort();
        assert_eq!(sorted, exp, "the worker has nobody's groups");
        // CAP_DAC_OVERRIDE (bit 1) is gone from the worker's effective set.
        let caps = u64::from_str_radix(&cap_eff[0], 16).unwrap();
        assert_eq!(caps & 0b10, 0, "CapEff {caps:x}");
        // The rest of the process is untouched.
        assert_eq!(status_field(&main_tid, "Uid:"), ["0", "0", "0", "0"]);
        assert_eq!(status_field(&main_tid, "Groups:"), main_groups);
    }

    #[test]
    fn root_only_files_are_refused_as_the_user() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let secret = d.path().join("secret");
        std::fs::write(&secret, "s3cret").unwrap();
        let nobody = TargetUser::from_uid(65534).unwrap();
        let fs = UserFs::new(&nobody).unwrap();
        let err = fs.read_to_string(&secret).unwrap_err().to_string();
        assert!(err.contains("Permission denied"), "{err}");
        assert!(!err.contains("s3cret"));
        assert!(fs.create_dir_all(&d.path().join("sub/dir")).is_err());
        assert!(!d.path().join("sub").exists());
        assert!(fs.open_append(&d.path().join("log"), 0o600).is_err());
        assert!(fs.check_watchable(d.path()).is_err());
        assert!(fs.check_watchable(&d.path().join("pending/x")).is_err());
        // Root itself, directly: allowed.
        let root = UserFs::new(&TargetUser::from_uid(0).unwrap()).unwrap();
        assert_eq!(root.read_to_string(&secret).unwrap().unwrap(), "s3cret");
        root.check_watchable(d.path()).unwrap();
        // A nested run on the worker does not deadlock.
        let inner = fs.clone();
        assert_eq!(fs.run(move || inner.run(|| 7)), 7);
    }

    /// The cost of one job on the worker (run by hand:
    /// `cargo test -p fsmon --lib userfs -- --ignored --nocapture`).
    #[test]
    #[ignore]
    fn round_trip_cost() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let fs = UserFs::new(&TargetUser::from_uid(65534).unwrap()).unwrap();
        let n = 20_000;
        let start = std::time::Instant::now();
        for i in 0..n {
            assert_eq!(fs.run(move || i), i);
        }
        let per = start.elapsed() / n;
        eprintln!("one UserFs round trip: {per:?}");
    }
}
