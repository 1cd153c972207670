//! Stage 1, read: waits for the fanotify queue (or a wake-up from the
//! control side) and reads raw records into a reusable buffer.
use std::{
    io,
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
};

use crate::fanotify::Fanotify;

pub struct EventReader {
    pub fan: Fanotify,
    buf: Vec<u8>,
    wake: OwnedFd,
}

/// Why [`EventReader::wait`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ready {
    pub events: bool,
    pub woken: bool,
}

/// Wakes the capture thread out of its poll (an eventfd).
#[derive(Clone)]
pub struct Waker(std::sync::Arc<OwnedFd>);

impl Waker {
    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writing 8 bytes to an eventfd.
        unsafe { libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }
}

impl EventReader {
    pub fn new(fan: Fanotify, buffer_size: usize) -> io::Result<(Self, Waker)> {
        // SAFETY: plain syscall; the fd is owned below.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if efd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: new descriptor.
        let wake = unsafe { OwnedFd::from_raw_fd(efd) };
        let dup = wake.try_clone()?;
        Ok((
            Self {
                fan,
                buf: vec![0; buffer_size],
                wake,
            },
            Waker(std::sync::Arc::new(dup)),
        ))
    }

    /// Blocks until events are queued, a wake-up arrives, or `timeout_ms`.
    pub fn wait(&self, timeout_ms: i32) -> Ready {
        let mut fds = [
            libc::pollfd {
                fd: self.fan.as_fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfds.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout_ms) };
        if n <= 0 {
            return Ready {
                events: false,
                woken: false,
            };
        }
        let woken = fds[1].revents & libc::POLLIN != 0;
        if woken {
            let mut v = 0u64;
            // SAFETY: reading 8 bytes from an eventfd (resets it).
            unsafe { libc::read(self.wake.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
        }
        Ready {
            events: fds[0].revents & libc::POLLIN != 0,
            woken,
        }
    }

    /// The read buffer, for a loop that reads with `fan.read` and hands
    /// events borrowed from it on (put it back with [`Self::put_buffer`]).
    pub fn take_buffer(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }

    pub fn put_buffer(&mut self, buf: Vec<u8>) {
        self.buf = buf;
    }

    /// Reads what is queued; an empty slice means the queue is empty.
    pub fn read(&mut self) -> io::Result<&[u8]> {
        let n = self.fan.read(&mut self.buf)?;
        Ok(&self.buf[..n])
    }
}
