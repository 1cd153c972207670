//! The fanotify system interface: a notification group in FID mode, its
//! marks, and reading its queue. Constants are the kernel's uapi values
//! (include/uapi/linux/fanotify.h).
use std::{
    ffi::CString,
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    path::Path,
};

use crate::error::{Error, Result};

// fanotify_init flags
pub const FAN_CLOEXEC: u32 = 0x1;
pub const FAN_NONBLOCK: u32 = 0x2;
pub const FAN_CLASS_NOTIF: u32 = 0x0;
pub const FAN_UNLIMITED_QUEUE: u32 = 0x10;
pub const FAN_REPORT_FID: u32 = 0x200;
pub const FAN_REPORT_DIR_FID: u32 = 0x400;
pub const FAN_REPORT_NAME: u32 = 0x800;
pub const FAN_REPORT_TARGET_FID: u32 = 0x1000;
pub const FAN_REPORT_DFID_NAME: u32 = FAN_REPORT_DIR_FID | FAN_REPORT_NAME;

// fanotify_mark flags
pub const FAN_MARK_ADD: u32 = 0x1;
pub const FAN_MARK_REMOVE: u32 = 0x2;
pub const FAN_MARK_DONT_FOLLOW: u32 = 0x4;
pub const FAN_MARK_ONLYDIR: u32 = 0x8;
pub const FAN_MARK_INODE: u32 = 0x0;
pub const FAN_MARK_FILESYSTEM: u32 = 0x100;

// event mask bits beyond the 14 kinds in event.rs
pub const FAN_Q_OVERFLOW: u64 = 0x4000;
pub const FAN_EVENT_ON_CHILD: u64 = 0x0800_0000;
pub const FAN_ONDIR: u64 = 0x4000_0000;

// info record types
pub const INFO_FID: u8 = 1;
pub const INFO_DFID_NAME: u8 = 2;
pub const INFO_DFID: u8 = 3;
pub const INFO_PIDFD: u8 = 4;
pub const INFO_ERROR: u8 = 5;
pub const INFO_OLD_DFID_NAME: u8 = 10;
pub const INFO_NEW_DFID_NAME: u8 = 12;

pub const FANOTIFY_METADATA_VERSION: u8 = 3;

/// How long the kernel queue may grow before it overflows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueSize {
    /// fs.fanotify.max_queued_events as the system has it (16384 by default).
    SystemDefault,
    /// A specific length (the group's limit is taken from the sysctl at init).
    Events(u32),
    /// FAN_UNLIMITED_QUEUE: never overflows, memory grows instead.
    Unlimited,
}

/// A fanotify group in FID mode.
pub struct Fanotify {
    fd: OwnedFd,
    /// Directory events carry the new or removed directory's own handle
    /// (FAN_REPORT_TARGET_FID, Linux 5.17+).
    target_fid: bool,
}

const MAX_QUEUED_SYSCTL: &str = "/proc/sys/fs/fanotify/max_queued_events";
/// The lock in `/run/fsmon` around making a group (see [`Fanotify::init`]).
const QUEUE_SIZE_LOCK: &str = "fanotify-queue.lock";

impl Fanotify {
    /// Whether directory events name the directory they create, move or
    /// remove by its own handle (Linux 5.17+).
    pub fn reports_target_fid(&self) -> bool {
        self.target_fid
    }

    /// Creates the group: notification class, FID mode with parent fid and
    /// name (and the target's fid where the kernel has it, 5.17+).
    pub fn init(queue: QueueSize) -> Result<Self> {
        let mut flags =
            FAN_CLASS_NOTIF | FAN_CLOEXEC | FAN_NONBLOCK | FAN_REPORT_DFID_NAME | FAN_REPORT_FID;
        if queue == QueueSize::Unlimited {
            flags |= FAN_UNLIMITED_QUEUE;
        }
        // The sysctl is global, and every fsmon daemon makes its group under
        // one machine-wide lock: two daemons setting their sizes at once
        // would otherwise leave the sysctl wrong for good (one would read
        // the other's temporary value as the one to put back), and a daemon
        // of the system's size starting meanwhile would get another's.
        let _window = match queue {
            QueueSize::Events(_) => {
                Some(crate::sockpath::machine_lock(QUEUE_SIZE_LOCK).map_err(|e| {
                    Error::Fanotify(format!("cannot set the queue size safely: {e}"))
                })?)
            }
            QueueSize::SystemDefault => match crate::sockpath::machine_lock(QUEUE_SIZE_LOCK) {
                Ok(l) => Some(l),
                Err(e) => {
                    log::warn!(
                        "{e}: the fanotify group is made without waiting for other fsmon \
                         daemons, and may get a queue size one of them is setting"
                    );
                    None
                }
            },
            QueueSize::Unlimited => None,
        };
        // A group takes its queue limit from the sysctl when it is created,
        // so a specific size means: set it, create the group, put it back.
        let restore = match queue {
            QueueSize::Events(n) => {
                let old = std::fs::read_to_string(MAX_QUEUED_SYSCTL)
                    .map_err(|e| Error::Fanotify(format!("reading {MAX_QUEUED_SYSCTL}: {e}")))?;
                std::fs::write(MAX_QUEUED_SYSCTL, n.to_string()).map_err(|e| {
                    Error::Fanotify(format!(
                        "setting queue size {n} in {MAX_QUEUED_SYSCTL}: {e}"
                    ))
                })?;
                Some(old)
            }
            _ => None,
        };
        let result = Self::init_flags(flags | FAN_REPORT_TARGET_FID)
            .map(|fd| (fd, true))
            .or_else(|e| {
                if e.raw_os_error() == Some(libc::EINVAL) {
                    // Before 5.17: no target fid. New and renamed directories
                    // are then found through the kernel, and one deleted at
                    // once after creation may leave its files unresolved.
                    log::warn!(
                        "this kernel has no FAN_REPORT_TARGET_FID (Linux 5.17+): directory tracking is weaker"
                    );
                    Self::init_flags(flags).map(|fd| (fd, false))
                } else {
                    Err(e)
                }
            })
            .map(|(fd, target_fid)| Fanotify { fd, target_fid });
        if let Some(old) = restore
            && let Err(e) = std::fs::write(MAX_QUEUED_SYSCTL, old.trim())
        {
            log::error!(
                "could not put {MAX_QUEUED_SYSCTL} back to {}: {e}; fanotify groups made from now \
                 on get this daemon's queue size",
                old.trim()
            );
        }
        result.map_err(|e| {
            Error::Fanotify(match e.raw_os_error() {
                Some(libc::EPERM) => {
                    "fanotify_init: permission denied (run the daemon as root)".into()
                }
                Some(libc::EINVAL) => format!(
                    "fanotify_init: FID mode not supported by this kernel (needs 5.9+): {e}"
                ),
                _ => format!("fanotify_init: {e}"),
            })
        })
    }

    fn init_flags(flags: u32) -> io::Result<OwnedFd> {
        let event_f_flags = (libc::O_RDONLY | libc::O_LARGEFILE | libc::O_CLOEXEC) as u32;
        // SAFETY: plain syscall; the returned fd is owned below.
        let fd = unsafe { libc::fanotify_init(flags, event_f_flags) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a new descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    fn mark(&self, flags: u32, mask: u64, path: &Path) -> io::Result<()> {
        mark_path(self.fd.as_fd(), flags, mask, path)
    }

    /// Adds `mask` to the mark on the whole filesystem holding `path`.
    pub fn add_filesystem_mark(&self, path: &Path, mask: u64) -> io::Result<()> {
        self.mark(FAN_MARK_ADD | FAN_MARK_FILESYSTEM, mask | FAN_ONDIR, path)
    }

    /// Removes `mask` bits from the filesystem mark (all bits: the mark goes).
    pub fn remove_filesystem_mark(&self, path: &Path, mask: u64) -> io::Result<()> {
        match self.mark(
            FAN_MARK_REMOVE | FAN_MARK_FILESYSTEM,
            mask | FAN_ONDIR,
            path,
        ) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            r => r,
        }
    }

    /// Reads queued events into `buf`. `Ok(0)` means the queue is empty.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: buf is valid for writes of buf.len() bytes.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                return Ok(0);
            }
            return Err(e);
        }
        Ok(n as usize)
    }
}

impl AsFd for Fanotify {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// `open_by_handle_at`: opens the object a file handle names, on the
/// filesystem of `mount_fd`. `handle` is `struct file_handle` as fanotify
/// reports it (handle_bytes, handle_type, f_handle).
/// `fanotify_mark` on `path` (never following a final symlink).
pub fn mark_path(fan: BorrowedFd<'_>, flags: u32, mask: u64, path: &Path) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: valid fd and NUL-terminated path.
    let r = unsafe {
        libc::fanotify_mark(
            fan.as_raw_fd(),
            flags | FAN_MARK_DONT_FOLLOW,
            mask,
            libc::AT_FDCWD,
            c.as_ptr(),
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

pub fn open_by_handle(mount_fd: BorrowedFd<'_>, handle: &[u8], flags: i32) -> io::Result<OwnedFd> {
    if handle.len() < 8 {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // The kernel reads the header and then handle_bytes bytes; copy into an
    // aligned buffer (the record in the read buffer is only 4-aligned, which
    // is all struct file_handle needs, but keep it independent of that).
    let mut aligned = [0u32; 34]; // 8-byte header + MAX_HANDLE_SZ (128)
    let n = handle.len().min(136);
    // SAFETY: aligned has 136 bytes; we copy at most 136.
    unsafe { std::ptr::copy_nonoverlapping(handle.as_ptr(), aligned.as_mut_ptr().cast::<u8>(), n) };
    // SAFETY: valid fd and a file_handle-shaped buffer.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            mount_fd.as_raw_fd(),
            aligned.as_mut_ptr(),
            flags | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `name_to_handle_at` for a path relative to `dirfd` (or absolute), without
/// following a final symlink. Returns (mount id, handle bytes in the layout
/// fanotify reports: handle_bytes, handle_type, f_handle).
pub fn handle_of(dirfd: Option<BorrowedFd<'_>>, path: &Path) -> io::Result<Vec<u8>> {
    handle_at(dirfd, path, 0)
}

/// The file handle of the object open at `fd` (no path: works at any depth).
pub fn handle_of_fd(fd: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    handle_at(Some(fd), Path::new(""), libc::AT_EMPTY_PATH)
}

/// `name_to_handle_at` flag: a handle that identifies the object but may
/// not be decodable (what fanotify reports where decoding is impossible).
const AT_HANDLE_FID: i32 = 0x200;

fn handle_at(dirfd: Option<BorrowedFd<'_>>, path: &Path, flags: i32) -> io::Result<Vec<u8>> {
    let c = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let mut buf = [0u32; 34];
    buf[0] = 128; // handle_bytes: room available
    let mut mount_id: libc::c_int = 0;
    let dfd = dirfd.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
    // SAFETY: buf is a valid file_handle with handle_bytes set to its room.
    let r = unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            dfd,
            c.as_ptr(),
            buf.as_mut_ptr(),
            &mut mount_id as *mut libc::c_int,
            flags, // never AT_SYMLINK_FOLLOW
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        // A filesystem that cannot decode handles (overlayfs without
        // nfs_export) can still name its objects the way fanotify reports
        // them for inode marks: AT_HANDLE_FID (Linux 6.5+).
        if e.raw_os_error() == Some(libc::EOPNOTSUPP) && flags & AT_HANDLE_FID == 0 {
            return handle_at(dirfd, path, flags | AT_HANDLE_FID);
        }
        return Err(e);
    }
    let len = 8 + buf[0] as usize;
    // SAFETY: reading len <= 136 bytes of buf.
    let bytes = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), len) };
    Ok(bytes.to_vec())
}

/// The filesystem id fanotify reports for the filesystem holding `path`
/// (statfs f_fsid), as one u64 in the record's byte order.
pub fn fsid_of(path: &Path) -> io::Result<u64> {
    let c = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out pointer.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fsid_t is two i32 (8 bytes), as in the fanotify record.
    let raw: [u8; 8] = unsafe { std::mem::transmute(st.f_fsid) };
    Ok(u64::from_ne_bytes(raw))
}
