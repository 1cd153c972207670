//! Which directories of a watched tree the daemon's user may see into.
//!
//! The daemon reads events as root, but shows a non-root user only what that
//! user could see: an event in a directory is reported when the user can
//! list the directory or reach names in it (read or search permission on
//! it) and can search every directory above it up to and including the
//! watched root. The check is the kernel's own: `faccessat2(AT_EACCESS)`
//! run on the capture thread with that thread's filesystem uid, gid and
//! groups switched to the user's for the duration of the call, so owners,
//! groups, mode bits, POSIX ACLs and LSMs all count exactly as they would
//! for the user. The resolver caches the result per directory node (see
//! `resolve.rs`); this module only answers for one directory.
use std::{
    ffi::CString,
    os::fd::{AsRawFd, BorrowedFd},
};

use crate::user::TargetUser;

/// The user may search the directory (reach names in it).
pub const SEARCH: u8 = 1;
/// The user may list the directory's names.
pub const LIST: u8 = 2;

/// A non-root user's credentials, for access checks.
#[derive(Debug, Clone)]
pub struct UserAccess {
    uid: u32,
    gid: u32,
    groups: Vec<libc::gid_t>,
    /// What to put back after a check (the daemon's own).
    own_fsgid: u32,
    own_groups: Vec<libc::gid_t>,
}

/// Switches the calling thread's filesystem credentials to the user's and
/// back on drop. Raw syscalls: glibc's `setgroups` would change every
/// thread of the process; the kernel's changes only this one, and
/// `setfsuid`/`setfsgid` are per thread anyway.
struct AsUser<'a>(&'a UserAccess);

fn setgroups_this_thread(groups: &[libc::gid_t]) -> bool {
    // SAFETY: a valid array of `len` gids.
    unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) == 0 }
}

fn setfsuid(uid: u32) -> u32 {
    // SAFETY: plain syscall; returns the previous fsuid.
    unsafe { libc::syscall(libc::SYS_setfsuid, uid) as u32 }
}

fn setfsgid(gid: u32) -> u32 {
    // SAFETY: plain syscall; returns the previous fsgid.
    unsafe { libc::syscall(libc::SYS_setfsgid, gid) as u32 }
}

impl<'a> AsUser<'a> {
    fn enter(u: &'a UserAccess) -> Option<Self> {
        if !setgroups_this_thread(&u.groups) {
            return None;
        }
        let guard = AsUser(u);
        setfsgid(u.gid);
        setfsuid(u.uid);
        // setfsuid/setfsgid report no errors: read the values back (an
        // invalid id changes nothing and returns the current one).
        (setfsuid(u32::MAX) == u.uid && setfsgid(u32::MAX) == u.gid).then_some(guard)
    }
}

impl Drop for AsUser<'_> {
    fn drop(&mut self) {
        setfsuid(0);
        setfsgid(self.0.own_fsgid);
        let ok = setgroups_this_thread(&self.0.own_groups)
            && setfsuid(u32::MAX) == 0
            && setfsgid(u32::MAX) == self.0.own_fsgid;
        if !ok {
            // The capture thread would go on with the user's credentials:
            // it could no longer open handles, and nothing would say why.
            log::error!("cannot restore the daemon's credentials after an access check; aborting");
            std::process::abort();
        }
    }
}

fn faccess(fd: BorrowedFd<'_>, mode: i32) -> bool {
    // SAFETY: an empty C string and a valid descriptor (AT_EMPTY_PATH).
    unsafe {
        libc::syscall(
            libc::SYS_faccessat2,
            fd.as_raw_fd(),
            c"".as_ptr(),
            mode,
            libc::AT_EACCESS | libc::AT_EMPTY_PATH,
        ) == 0
    }
}

impl UserAccess {
    /// `None` for root, who sees everything (no checks, no cost).
    pub fn for_user(user: &TargetUser) -> Option<Self> {
        if user.is_root() {
            return None;
        }
        let groups = CString::new(user.name.as_str())
            .ok()
            .and_then(|n| nix::unistd::getgrouplist(&n, user.gid()).ok())
            .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
            .unwrap_or_else(|| vec![user.gid]);
        Some(UserAccess {
            uid: user.uid,
            gid: user.gid,
            groups,
            own_fsgid: nix::unistd::getegid().as_raw(),
            own_groups: nix::unistd::getgroups()
                .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
                .unwrap_or_default(),
        })
    }

    /// What the user may do with the directory open at `fd` ([`SEARCH`],
    /// [`LIST`]); 0 when the credentials could not be switched (fail
    /// closed).
    pub fn check(&self, fd: BorrowedFd<'_>) -> u8 {
        let Some(_as_user) = AsUser::enter(self) else {
            log::warn!("cannot switch to uid {} for an access check", self.uid);
            return 0;
        };
        let mut bits = 0;
        if faccess(fd, libc::X_OK) {
            bits |= SEARCH;
        }
        if faccess(fd, libc::R_OK) {
            bits |= LIST;
        }
        bits
    }

    /// Whether the user can reach `path` now: search permission on every
    /// directory above it, as the kernel's own path walk decides. A path
    /// that does not exist counts as reachable (it has no events; a
    /// pending watch is judged again when it appears). `false` when the
    /// credentials could not be switched (fail closed).
    pub fn can_reach(&self, path: &std::ffi::CStr) -> bool {
        let Some(_as_user) = AsUser::enter(self) else {
            log::warn!("cannot switch to uid {} for an access check", self.uid);
            return false;
        };
        // SAFETY: a NUL-terminated path; no descriptor involved.
        let r = unsafe {
            libc::syscall(
                libc::SYS_faccessat2,
                libc::AT_FDCWD,
                path.as_ptr(),
                libc::F_OK,
                libc::AT_EACCESS | libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOENT)
    }
}

#[cfg(test)]
mod tests {
    use std::os::{fd::AsFd, unix::fs::PermissionsExt};

    use super::*;

    #[test]
    fn checks_are_the_users_and_credentials_come_back() {
        if !nix::unistd::geteuid().is_root() {
            return; // switching credentials needs root
        }
        let nobody = TargetUser::from_uid(65534).unwrap();
        let a = UserAccess::for_user(&nobody).unwrap();
        let d = tempfile::tempdir().unwrap();
        let check = |mode: u32| {
            std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(mode)).unwrap();
            let f = std::fs::File::open(d.path()).unwrap();
            a.check(f.as_fd())
        };
        assert_eq!(check(0o700), 0);
        assert_eq!(check(0o711), SEARCH);
        assert_eq!(check(0o744), LIST);
        assert_eq!(check(0o755), SEARCH | LIST);
        // Root's view is back: a 0700 directory is still readable here.
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(std::fs::read_dir(d.path()).is_ok());
        assert!(UserAccess::for_user(&TargetUser::from_uid(0).unwrap()).is_none());
    }

    #[test]
    fn reach_needs_search_on_every_directory_above() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let nobody = TargetUser::from_uid(65534).unwrap();
        let a = UserAccess::for_user(&nobody).unwrap();
        let d = tempfile::tempdir().unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let gate = d.path().join("gate");
        let tree = gate.join("tree");
        std::fs::create_dir_all(&tree).unwrap();
        let c = |p: &std::path::Path| CString::new(p.to_str().unwrap()).unwrap();
        std::fs::set_permissions(&gate, std::fs::Permissions::from_mode(0o711)).unwrap();
        assert!(a.can_reach(&c(&tree)), "search alone is enough");
        std::fs::set_permissions(&gate, std::fs::Permissions::from_mode(0o744)).unwrap();
        assert!(!a.can_reach(&c(&tree)), "listing is not reaching");
        assert!(a.can_reach(&c(&gate)), "the top itself needs nothing");
        assert!(
            a.can_reach(&c(&d.path().join("absent"))),
            "absent: nothing to hide"
        );
    }
}
