//! Opening files without being tricked by symlinks, FIFOs or hard links.
//!
//! Files in the user's locations (store, logs, their locks and temp files)
//! are opened on the [`UserFs`](crate::userfs::UserFs) thread, with the
//! user's credentials, by the `*_user_*` functions here: O_NOFOLLOW,
//! O_NONBLOCK, a regular file with one link, owned by the user. Nothing is
//! chowned: what the user creates is the user's, and anything else
//! (root's files included) is refused with one line naming the path.
//!
//! The other functions are for root's own locations (the socket and the
//! daemon's lock beside it, the systemd unit): same checks, and a file root
//! creates there is handed to the user through the descriptor.
use std::{
    fs::{File, OpenOptions},
    os::unix::fs::{MetadataExt, OpenOptionsExt},
    path::Path,
};

use crate::{
    error::{Error, Result},
    user::TargetUser,
};

// O_NONBLOCK everywhere: a FIFO planted where a file should be would
// otherwise block the open until someone reads it. On regular files it has
// no effect.

/// Options every open here shares: never follow a final symlink, never
/// block on a planted FIFO, never leak the descriptor to a child.
fn safe_options() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK);
    o
}

fn open_with(path: &Path, options: &OpenOptions) -> Result<File> {
    options.open(path).map_err(|e| refuse_or_io(path, e))
}

/// Opens (creating if needed) a file for appending: O_APPEND|O_NOFOLLOW,
/// must be a regular file; if root created it or it is root's, it is handed
/// to `owner`. Refuses a file owned by anyone but root or `owner`.
pub fn open_append(path: &Path, owner: &TargetUser, mode: u32) -> Result<File> {
    let file = open_with(
        path,
        safe_options()
            .append(true)
            .read(true)
            .create(true)
            .mode(mode),
    )?;
    check_and_own(&file, path, owner)?;
    Ok(file)
}

/// Opens an existing file read-only with O_NOFOLLOW; must be regular.
pub fn open_read(path: &Path) -> Result<File> {
    let file = open_with(path, safe_options().read(true))?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    if !meta.file_type().is_file() {
        return Err(Error::Unsafe {
            path: path.into(),
            reason: "not a regular file".into(),
        });
    }
    Ok(file)
}

/// Creates a new file that must not exist yet (O_EXCL|O_NOFOLLOW).
pub fn create_new(path: &Path, owner: &TargetUser, mode: u32) -> Result<File> {
    let file = open_with(
        path,
        safe_options()
            .write(true)
            .read(true)
            .create_new(true)
            .mode(mode),
    )?;
    check_and_own(&file, path, owner)?;
    Ok(file)
}

fn refuse_or_io(path: &Path, e: std::io::Error) -> Error {
    match e.raw_os_error() {
        Some(libc::ELOOP) => Error::Unsafe {
            path: path.into(),
            reason: "it is a symbolic link".into(),
        },
        // What open() says of a FIFO without a reader (with O_NONBLOCK), a
        // socket, or a device node without a driver.
        Some(libc::ENXIO) => Error::Unsafe {
            path: path.into(),
            reason: "not a regular file".into(),
        },
        _ => Error::io(path, e),
    }
}

/// Verifies an open file is a regular file owned by root or `owner`, with
/// no other hard link, and gives it to `owner` (through the descriptor: no
/// path race). A second link would be a way to make root append to, and
/// give away, a root-owned file elsewhere (where `fs.protected_hardlinks`
/// is off, anyone may link to any file).
pub fn check_and_own(file: &File, path: &Path, owner: &TargetUser) -> Result<()> {
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    if !meta.file_type().is_file() {
        return Err(Error::Unsafe {
            path: path.into(),
            reason: "not a regular file".into(),
        });
    }
    if meta.nlink() > 1 {
        return Err(Error::Unsafe {
            path: path.into(),
            reason: format!("it has {} hard links (expected 1)", meta.nlink()),
        });
    }
    if meta.uid() != 0 && meta.uid() != owner.uid {
        return Err(Error::Unsafe {
            path: path.into(),
            reason: format!("owned by uid {}, not by {} or root", meta.uid(), owner.name),
        });
    }
    chown_fd(file, owner);
    Ok(())
}

/// Hands an open file to `owner`. Filesystems without Unix ownership
/// (vfat, some NFS) refuse; the file then stays root's, which is harmless.
pub fn chown_fd(file: &File, owner: &TargetUser) {
    if nix::unistd::geteuid().is_root() {
        let _ = std::os::unix::fs::fchown(file, Some(owner.uid), Some(owner.gid));
    }
}

/// Creates `dir` and missing parents, giving each directory created to
/// `owner`. Refuses if an existing component we would write into is a
/// symlink (the final component) or not a directory.
pub fn create_dir_all_owned(dir: &Path, owner: &TargetUser) -> Result<()> {
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
    if let Some(parent) = dir.parent() {
        create_dir_all_owned(parent, owner)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => {
            if nix::unistd::geteuid().is_root() {
                // lchown: never follows a link swapped in after create_dir.
                let _ = std::os::unix::fs::lchown(dir, Some(owner.uid), Some(owner.gid));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::io(dir, e)),
    }
}

/// Opens (creating if needed) a file of user `uid` for appending. Run it
/// with the user's credentials (on the `UserFs` thread).
pub fn open_user_append(path: &Path, uid: u32, mode: u32) -> Result<File> {
    let file = open_with(
        path,
        safe_options()
            .append(true)
            .read(true)
            .create(true)
            .mode(mode),
    )?;
    crate::userfs::check_owned(&file, path, uid)?;
    Ok(file)
}

/// Creates a new file (O_EXCL|O_NOFOLLOW) with the user's credentials.
pub fn create_user_new(path: &Path, uid: u32, mode: u32) -> Result<File> {
    let file = open_with(
        path,
        safe_options()
            .write(true)
            .read(true)
            .create_new(true)
            .mode(mode),
    )?;
    crate::userfs::check_owned(&file, path, uid)?;
    Ok(file)
}

/// Opens an existing file of user `uid` read-only (O_NOFOLLOW, regular,
/// one link, owned by the user).
pub fn open_user_read(path: &Path, uid: u32) -> Result<File> {
    let file = open_with(path, safe_options().read(true))?;
    crate::userfs::check_owned(&file, path, uid)?;
    Ok(file)
}

/// Size of an open file.
pub fn file_len(file: &File) -> u64 {
    file.metadata().map(|m| m.len()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> TargetUser {
        TargetUser::from_uid(nix::unistd::geteuid().as_raw()).unwrap()
    }

    #[test]
    fn refuses_symlink() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("target");
        std::fs::write(&target, "keep").unwrap();
        let link = d.path().join("log");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = open_append(&link, &me(), 0o600).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
    }

    #[test]
    fn refuses_directory_and_fifo() {
        let d = tempfile::tempdir().unwrap();
        let err = open_append(d.path(), &me(), 0o600).unwrap_err().to_string();
        assert!(!err.is_empty());
        let fifo = d.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        // A FIFO must neither block the open nor be accepted.
        let err = open_append(&fifo, &me(), 0o600).unwrap_err().to_string();
        assert!(
            err.contains("not a regular file") || err.contains("No such device"),
            "{err}"
        );
        let err = open_read(&fifo).unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
    }

    #[test]
    fn refuses_hard_link() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("target");
        std::fs::write(&target, "keep").unwrap();
        let link = d.path().join("log");
        std::fs::hard_link(&target, &link).unwrap();
        let err = open_append(&link, &me(), 0o600).unwrap_err().to_string();
        assert!(err.contains("hard links"), "{err}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
    }

    #[test]
    fn user_files_must_be_the_users_own() {
        let d = tempfile::tempdir().unwrap();
        let me = nix::unistd::geteuid().as_raw();
        let other = if me == 0 { 65534 } else { 0 };
        let p = d.path().join("log");
        std::fs::write(&p, "keep").unwrap();
        // Someone else's file (as seen by `other`): refused, not taken.
        let err = open_user_append(&p, other, 0o600).unwrap_err().to_string();
        assert!(err.contains("owned by") && err.contains("log"), "{err}");
        assert!(open_user_read(&p, other).is_err());
        open_user_append(&p, me, 0o600).unwrap();
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        let err = open_user_read(&link, me).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        std::fs::hard_link(&p, d.path().join("hard")).unwrap();
        let err = open_user_append(&p, me, 0o600).unwrap_err().to_string();
        assert!(err.contains("hard links"), "{err}");
        assert!(create_user_new(&p, me, 0o600).is_err(), "exists");
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "keep");
    }

    #[test]
    fn dir_symlink_refused() {
        let d = tempfile::tempdir().unwrap();
        let real = d.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let link = d.path().join("logs");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(create_dir_all_owned(&link, &me()).is_err());
        assert!(create_dir_all_owned(&d.path().join("a/b/c"), &me()).is_ok());
        assert!(d.path().join("a/b/c").is_dir());
    }
}
