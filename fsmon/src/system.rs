//! System mode: root's daemon as a service, read by the members of one
//! group (`fsmon`, or `$FSMON_GROUP`).
//!
//! Group membership is a grant to read every watched event, as `adm` is
//! for /var/log: members may connect to the socket and ask for what is
//! read (`monitored`, `health`, `metrics`, `subscribe`) and read the logs
//! and the store; only root changes what is watched. The daemon checks this
//! on every connection from the peer's credentials and groups
//! (SO_PEERCRED, SO_PEERGROUPS), and the files say it too: directories
//! 0750 and logs 0640, root's with the readers' group.
use std::{
    os::{
        fd::{AsFd, AsRawFd},
        unix::fs::PermissionsExt,
    },
    path::Path,
    sync::OnceLock,
};

use nix::unistd::Gid;

use crate::error::{Error, Result};

/// The readers' group of the system daemon in this process; set once at
/// start. Unset: the per-user daemon (files are the user's alone).
static READERS: OnceLock<Gid> = OnceLock::new();

/// Mode of a log file shared with the readers' group.
pub const SHARED_FILE_MODE: u32 = 0o640;
/// Mode of a directory shared with the readers' group.
pub const SHARED_DIR_MODE: u32 = 0o750;

/// What a connection may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Root, or the per-user daemon's user: everything.
    Owner,
    /// A member of the system daemon's readers' group: read only.
    Reader,
}

/// Called once by the system daemon: the group that reads its files.
pub fn set_readers(gid: Gid) {
    let _ = READERS.set(gid);
}

pub fn readers() -> Option<Gid> {
    READERS.get().copied()
}

/// Gives a file or directory the readers' group and `mode`, through its
/// descriptor (no path followed). Nothing when there is no readers' group.
pub fn share(fd: impl AsFd, path: &Path, mode: u32) -> Result<()> {
    let Some(gid) = readers() else { return Ok(()) };
    let fd = fd.as_fd();
    nix::unistd::fchown(fd, None, Some(gid)).map_err(|e| Error::io(path, e.into()))?;
    nix::sys::stat::fchmod(fd, nix::sys::stat::Mode::from_bits_truncate(mode))
        .map_err(|e| Error::io(path, e.into()))
}

/// Creates `dir` (root's) if needed and shares it with the readers (0750).
pub fn prepare_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let d = std::fs::File::open(dir).map_err(|e| Error::io(dir, e))?;
    let meta = d.metadata().map_err(|e| Error::io(dir, e))?;
    if !meta.is_dir() {
        return Err(Error::invalid(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    match readers() {
        Some(_) => share(&d, dir, SHARED_DIR_MODE),
        None => std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io(dir, e)),
    }
}

/// The role of a connection to the daemon working for `owner_uid`: root
/// and that user own it; in system mode, members of the readers' group read.
/// `None`: refused.
pub fn role_of(stream: &impl AsRawFd, uid: u32, gid: u32, owner_uid: u32) -> Option<Role> {
    if uid == 0 || uid == owner_uid {
        return Some(Role::Owner);
    }
    let readers = readers()?;
    if gid == readers.as_raw() || peer_groups(stream).contains(&readers.as_raw()) {
        return Some(Role::Reader);
    }
    None
}

/// The peer's supplementary groups as the kernel recorded them at connect
/// (SO_PEERGROUPS, Linux 4.13+). Empty if unavailable.
fn peer_groups(stream: &impl AsRawFd) -> Vec<u32> {
    let mut groups = vec![0u32; 64];
    loop {
        let mut len = (groups.len() * 4) as libc::socklen_t;
        // SAFETY: the buffer holds `len` bytes and outlives the call.
        let r = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        if r == 0 {
            groups.truncate(len as usize / 4);
            return groups;
        }
        let err = std::io::Error::last_os_error();
        // ERANGE: `len` now says how many bytes are needed.
        if err.raw_os_error() == Some(libc::ERANGE) && (len as usize / 4) > groups.len() {
            groups.resize(len as usize / 4, 0);
            continue;
        }
        return Vec::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_groups_of_a_socketpair_are_ours() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut mine: Vec<u32> = nix::unistd::getgroups()
            .unwrap()
            .iter()
            .map(|g| g.as_raw())
            .collect();
        let mut got = peer_groups(&a);
        mine.sort();
        got.sort();
        assert_eq!(got, mine);
    }
}
