//! Where the control socket and the daemon's single-instance lock live, and
//! the checks that keep every other local user out of that place.
//!
//! A socket in a directory where another user can create entries (the
//! sticky `/tmp` included) lets that user take the name first: stand in for
//! the daemon (the CLI would talk to them) or stop it from starting. So the
//! default is `/run/fsmon/`, a directory only root can write, created by the
//! daemon; a configured `[socket] path` must be in a directory that only
//! root and the daemon's user can write, reached through directories no one
//! else can rename (each owned by root or the user, writable by no one else
//! unless sticky).
//!
//! The directory is reached one component at a time without following a
//! link, checked, and then held open: the lock, the bind, the chown and the
//! removal at exit all go through that descriptor, so no rename or symlink
//! swapped in later can redirect them.
use std::{
    ffi::{OsStr, OsString},
    fs::File,
    os::{
        fd::{AsFd, AsRawFd, OwnedFd},
        unix::{fs::MetadataExt, net::UnixListener},
    },
    path::{Component, Path, PathBuf},
};

use nix::{
    errno::Errno,
    fcntl::{AtFlags, OFlag},
    sys::stat::{Mode, SFlag},
};

use crate::{
    error::{Error, Result},
    safefs,
    user::TargetUser,
};

/// The directory of the default socket and lock: root's, mode 0755.
pub const RUNTIME_DIR: &str = "/run/fsmon";

/// The daemon's lock file, beside its socket.
pub fn lock_path(socket: &Path) -> PathBuf {
    let mut p = socket.as_os_str().to_owned();
    p.push(".lock");
    PathBuf::from(p)
}

fn refuse(path: &Path, reason: impl Into<String>) -> Error {
    Error::Unsafe {
        path: path.into(),
        reason: reason.into(),
    }
}

const USE_DEFAULT: &str =
    "leave [socket] path unset to use the default /run/fsmon/fsmon-<UID>.sock";

/// The socket's directory, checked and held open.
pub struct SocketDir {
    dir: OwnedFd,
    dir_path: PathBuf,
    /// The socket's file name in `dir`.
    name: OsString,
    /// `/run/fsmon`: only root writes here, so whatever is at our name is
    /// a dead daemon's leftover.
    runtime: bool,
    /// (dev, ino) of the socket we bound, so that exit removes only that.
    bound: Option<(u64, u64)>,
}

impl SocketDir {
    /// Opens and checks the directory of `socket` for the daemon working
    /// for `user`, creating `/run/fsmon` if it is the default place.
    pub fn open(socket: &Path, user: &TargetUser) -> Result<Self> {
        if !socket.is_absolute() {
            return Err(Error::invalid(format!(
                "[socket] path {} is not absolute",
                socket.display()
            )));
        }
        let (Some(dir), Some(name)) = (socket.parent(), socket.file_name()) else {
            return Err(Error::invalid(format!(
                "[socket] path {} names no file",
                socket.display()
            )));
        };
        if socket
            .components()
            .any(|c| matches!(c, Component::ParentDir))
        {
            return Err(Error::invalid(format!(
                "[socket] path {} must not contain '..'",
                socket.display()
            )));
        }
        let runtime = dir == Path::new(RUNTIME_DIR);
        if runtime {
            ensure_runtime_dir()?;
        } else if std::fs::symlink_metadata(dir).is_err() {
            // Root makes directories only for itself: for a user, making
            // one (perhaps in a directory of root's) is not ours to do.
            if !user.is_root() {
                return Err(refuse(
                    dir,
                    format!(
                        "the socket's directory does not exist: create it, writable only by you, or {USE_DEFAULT}"
                    ),
                ));
            }
            safefs::create_dir_all_owned(dir, user)?;
        }
        let fd = walk_checked(dir, user, runtime)?;
        Ok(SocketDir {
            dir: fd,
            dir_path: dir.to_path_buf(),
            name: name.to_owned(),
            runtime,
            bound: None,
        })
    }

    fn path_of(&self, name: &OsStr) -> PathBuf {
        self.dir_path.join(name)
    }

    /// A path that reaches `name` inside the directory we hold, whatever
    /// happened to the directory's own path since.
    fn held_path(&self, name: &OsStr) -> PathBuf {
        let mut p = PathBuf::from(format!("/proc/self/fd/{}", self.dir.as_raw_fd()));
        p.push(name);
        p
    }

    /// Takes the single-instance lock beside the socket. In `/run/fsmon`
    /// it stays root's; in a configured directory it is the user's (as the
    /// socket is), refused if someone else's, a link or not a plain file.
    pub fn lock(&self, user: &TargetUser) -> anyhow::Result<DaemonLock> {
        let mut name = self.name.clone();
        name.push(".lock");
        let path = self.path_of(&name);
        let fd = nix::fcntl::openat(
            self.dir.as_fd(),
            name.as_os_str(),
            OFlag::O_RDWR
                | OFlag::O_CREAT
                | OFlag::O_NOFOLLOW
                | OFlag::O_NONBLOCK
                | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| match e {
            Errno::ELOOP => refuse(&path, "it is a symbolic link"),
            Errno::ENXIO => refuse(&path, "not a regular file"),
            e => Error::io(&path, e.into()),
        })?;
        let file = File::from(fd);
        let owner = if self.runtime {
            TargetUser::from_uid(0)?
        } else {
            user.clone()
        };
        safefs::check_and_own(&file, &path, &owner)?;
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(l) => Ok(DaemonLock(l)),
            Err((_, Errno::EWOULDBLOCK)) => anyhow::bail!(
                "another fsmon daemon is already running for user {} (lock {} is held)",
                user.name,
                path.display()
            ),
            Err((_, e)) => anyhow::bail!("cannot lock {}: {e}", path.display()),
        }
    }

    /// Binds the socket (call with the lock held): mode 0600, owned by the
    /// user. What is already at the name: in `/run/fsmon` a dead daemon's
    /// leftover, replaced; in a configured directory only our own stale
    /// socket is replaced, anything else refused and left as it is.
    pub fn bind(&mut self, user: &TargetUser) -> Result<UnixListener> {
        let path = self.path_of(&self.name);
        match nix::sys::stat::fstatat(
            self.dir.as_fd(),
            self.name.as_os_str(),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(st) => {
                let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
                if !self.runtime {
                    if kind != SFlag::S_IFSOCK {
                        return Err(refuse(
                            &path,
                            "it exists and is not a socket (a symlink or file planted there?)",
                        ));
                    }
                    if st.st_uid != 0 && st.st_uid != user.uid {
                        return Err(refuse(&path, format!("it belongs to uid {}", st.st_uid)));
                    }
                    if std::os::unix::net::UnixStream::connect(self.held_path(&self.name)).is_ok() {
                        return Err(refuse(&path, "another daemon answers on it"));
                    }
                } else if kind == SFlag::S_IFDIR {
                    return Err(refuse(&path, "it is a directory"));
                }
                nix::unistd::unlinkat(
                    self.dir.as_fd(),
                    self.name.as_os_str(),
                    nix::unistd::UnlinkatFlags::NoRemoveDir,
                )
                .map_err(|e| Error::io(&path, e.into()))?;
            }
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(Error::io(&path, e.into())),
        }
        let held = self.held_path(&self.name);
        // bind() creates the file with the umask applied: make it 0600 from
        // the start, with no window where others could connect.
        let old = nix::sys::stat::umask(Mode::from_bits_truncate(0o177));
        let bound = UnixListener::bind(&held);
        nix::sys::stat::umask(old);
        let listener = bound.map_err(|e| Error::io(&path, e))?;
        // Hand it to the user through a descriptor of that very inode
        // (O_PATH, no link followed): it must be a socket with one link,
        // root's, i.e. the one bind() just made.
        let node = nix::fcntl::openat(
            self.dir.as_fd(),
            self.name.as_os_str(),
            OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::io(&path, e.into()))?;
        let st = nix::sys::stat::fstat(&node).map_err(|e| Error::io(&path, e.into()))?;
        let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
        if kind != SFlag::S_IFSOCK || st.st_nlink != 1 || st.st_uid != 0 {
            return Err(refuse(&path, "it was replaced while being created"));
        }
        if !user.is_root() {
            nix::unistd::fchownat(
                node.as_fd(),
                "",
                Some(user.uid.into()),
                Some(user.gid.into()),
                AtFlags::AT_EMPTY_PATH,
            )
            .map_err(|e| Error::io(&path, e.into()))?;
        }
        self.bound = Some((st.st_dev, st.st_ino));
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::io(&path, e))?;
        Ok(listener)
    }

    /// Opens the socket we bound to the system daemon's readers' group:
    /// root's, mode 0660, through a descriptor of that very inode.
    pub fn share_bound(&self, gid: nix::unistd::Gid) -> Result<()> {
        let path = self.path_of(&self.name);
        let node = nix::fcntl::openat(
            self.dir.as_fd(),
            self.name.as_os_str(),
            OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::io(&path, e.into()))?;
        let st = nix::sys::stat::fstat(&node).map_err(|e| Error::io(&path, e.into()))?;
        if self.bound != Some((st.st_dev, st.st_ino)) {
            return Err(refuse(&path, "it is not the socket this daemon bound"));
        }
        nix::unistd::fchownat(
            node.as_fd(),
            "",
            Some(0.into()),
            Some(gid),
            AtFlags::AT_EMPTY_PATH,
        )
        .map_err(|e| Error::io(&path, e.into()))?;
        // chmod through the O_PATH descriptor's /proc link: the same inode.
        let by_fd = format!("/proc/self/fd/{}", node.as_raw_fd());
        std::fs::set_permissions(by_fd, std::os::unix::fs::PermissionsExt::from_mode(0o660))
            .map_err(|e| Error::io(&path, e))
    }

    /// Removes the socket we bound (and only it) at exit.
    pub fn remove_bound(&self) {
        let Some(id) = self.bound else { return };
        let Ok(st) = nix::sys::stat::fstatat(
            self.dir.as_fd(),
            self.name.as_os_str(),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        ) else {
            return;
        };
        if (st.st_dev, st.st_ino) == id {
            let _ = nix::unistd::unlinkat(
                self.dir.as_fd(),
                self.name.as_os_str(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            );
        }
    }
}

/// Holds the per-user daemon lock for the daemon's lifetime.
pub struct DaemonLock(#[allow(dead_code)] nix::fcntl::Flock<File>);

/// A lock all fsmon daemons on the machine share, held until dropped.
pub struct MachineLock(#[allow(dead_code)] nix::fcntl::Flock<File>);

/// Takes root's lock `name` in `/run/fsmon` (made if missing, checked as
/// for the socket), waiting while another daemon holds it. For what two
/// daemons must not do at the same moment, such as changing a global
/// sysctl and putting it back.
pub fn machine_lock(name: &str) -> Result<MachineLock> {
    ensure_runtime_dir()?;
    let root = TargetUser::from_uid(0)?;
    let dir = walk_checked(Path::new(RUNTIME_DIR), &root, true)?;
    let path = Path::new(RUNTIME_DIR).join(name);
    let fd = nix::fcntl::openat(
        dir.as_fd(),
        name,
        OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )
    .map_err(|e| match e {
        Errno::ELOOP => refuse(&path, "it is a symbolic link"),
        Errno::ENXIO => refuse(&path, "not a regular file"),
        e => Error::io(&path, e.into()),
    })?;
    let file = File::from(fd);
    safefs::check_and_own(&file, &path, &root)?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map(MachineLock)
        .map_err(|(_, e)| Error::io(&path, e.into()))
}

/// Creates `/run/fsmon` (root's, 0755) if missing; an existing one must be
/// a real directory, root's, writable by no one else: otherwise someone
/// else made it, and the daemon refuses rather than trust it.
fn ensure_runtime_dir() -> Result<()> {
    let dir = Path::new(RUNTIME_DIR);
    match nix::unistd::mkdir(dir, Mode::from_bits_truncate(0o755)) {
        Ok(()) => {
            // mkdir applied the umask: set the mode meant.
            std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .map_err(|e| Error::io(dir, e))?;
        }
        Err(Errno::EEXIST) => {}
        Err(e) => return Err(Error::io(dir, e.into())),
    }
    let m = std::fs::symlink_metadata(dir).map_err(|e| Error::io(dir, e))?;
    let fix = "only root may create it: remove it and start the daemon again";
    if m.file_type().is_symlink() {
        return Err(refuse(dir, format!("it is a symbolic link; {fix}")));
    }
    if !m.is_dir() {
        return Err(refuse(dir, format!("not a directory; {fix}")));
    }
    if m.uid() != 0 {
        return Err(refuse(
            dir,
            format!("owned by uid {}, not by root; {fix}", m.uid()),
        ));
    }
    if m.mode() & 0o022 != 0 {
        return Err(refuse(
            dir,
            format!(
                "writable by group or others (mode {:o}); {fix}",
                m.mode() & 0o7777
            ),
        ));
    }
    Ok(())
}

/// Opens `real` (absolute, no `..`) one component at a time, never
/// following a link (a symlink on the way is refused), checking that no local user other than root and
/// `user` could create entries in it or rename any directory on the way.
/// Returns an O_PATH descriptor of the directory itself.
fn walk_checked(real: &Path, user: &TargetUser, runtime: bool) -> Result<OwnedFd> {
    let root = nix::fcntl::open(
        "/",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::io("/", e.into()))?;
    let mut fd = root;
    let mut at = PathBuf::from("/");
    let comps: Vec<&OsStr> = real
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect();
    for (i, comp) in comps.iter().enumerate() {
        at.push(comp);
        let next = nix::fcntl::openat(
            fd.as_fd(),
            *comp,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| match e {
            Errno::ELOOP | Errno::ENOTDIR => refuse(
                &at,
                "a symbolic link or not a directory on the socket's path: give the real path",
            ),
            e => Error::io(&at, e.into()),
        })?;
        let st = nix::sys::stat::fstat(&next).map_err(|e| Error::io(&at, e.into()))?;
        let last = i + 1 == comps.len();
        check_dir(&at, st.st_uid, st.st_mode, last, user, runtime)?;
        fd = next;
    }
    // `real` == "/": the root directory itself is checked as the last one.
    if comps.is_empty() {
        let st = nix::sys::stat::fstat(&fd).map_err(|e| Error::io("/", e.into()))?;
        check_dir(Path::new("/"), st.st_uid, st.st_mode, true, user, runtime)?;
    }
    Ok(fd)
}

/// The rule for one directory on the socket's path (see the module doc).
fn check_dir(
    path: &Path,
    uid: u32,
    mode: u32,
    is_socket_dir: bool,
    user: &TargetUser,
    runtime: bool,
) -> Result<()> {
    if uid != 0 && uid != user.uid {
        let owner = TargetUser::from_uid(uid)
            .map(|u| format!("user {} (uid {uid})", u.name))
            .unwrap_or_else(|_| format!("uid {uid}"));
        return Err(refuse(
            path,
            format!(
                "the socket's directory belongs to {owner}, who could replace the socket; {USE_DEFAULT}"
            ),
        ));
    }
    let others_write = mode & 0o022 != 0;
    let sticky = mode & 0o1000 != 0;
    if others_write && (is_socket_dir || !sticky) {
        let what = if is_socket_dir {
            "other users can create files in the socket's directory"
        } else {
            "other users can rename entries of a directory on the socket's path"
        };
        let hint = if runtime {
            "only root may write there"
        } else {
            USE_DEFAULT
        };
        return Err(refuse(
            path,
            format!(
                "{what} (mode {:o}): another user could stand in for the daemon or stop it from starting; {hint}",
                mode & 0o7777
            ),
        ));
    }
    // For a user's daemon, the socket goes only where that user could put
    // it: a directory of the user's own. Root making an entry in one of
    // root's directories (say /etc) for the user is not the user's to ask.
    if is_socket_dir && !runtime && !user.is_root() && uid != user.uid {
        return Err(refuse(
            path,
            format!(
                "the socket's directory belongs to root, and {} could not create the socket there; {USE_DEFAULT}",
                user.name
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(uid: u32) -> TargetUser {
        TargetUser {
            uid,
            gid: uid,
            name: "u".into(),
            home: "/".into(),
            places: crate::user::Places::Passwd,
        }
    }

    #[test]
    fn lock_is_beside_the_socket() {
        assert_eq!(
            lock_path(Path::new("/run/fsmon/fsmon-7.sock")),
            PathBuf::from("/run/fsmon/fsmon-7.sock.lock")
        );
    }

    #[test]
    fn directory_rules() {
        let u = user(1000);
        let p = Path::new("/x");
        // The user's own, writable by no one else: fine; root's, on the way.
        assert!(check_dir(p, 1000, 0o40700, true, &u, false).is_ok());
        assert!(check_dir(p, 0, 0o40755, false, &u, false).is_ok());
        // Root's as the socket's own directory: only for root's daemon (and
        // /run/fsmon): a user could not create the socket there.
        let e = check_dir(p, 0, 0o40755, true, &u, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("belongs to root"), "{e}");
        assert!(check_dir(p, 0, 0o40755, true, &user(0), false).is_ok());
        assert!(check_dir(p, 0, 0o40755, true, &u, true).is_ok());
        // Someone else's: refused, naming the owner.
        let e = check_dir(p, 4242, 0o40700, true, &u, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("uid 4242") && e.contains("/run/fsmon"), "{e}");
        // /tmp-like: fine on the way, refused as the socket's directory.
        assert!(check_dir(p, 0, 0o41777, false, &u, false).is_ok());
        let e = check_dir(p, 0, 0o41777, true, &u, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("other users can create files"), "{e}");
        assert!(!e.contains('\n'));
        // Group-writable without sticky on the way: refused.
        assert!(check_dir(p, 0, 0o40775, false, &u, false).is_err());
    }
}
