//! Unmapping the start-up code once the daemon runs.
//!
//! Start-up (argument parsing, config, store, eBPF hand-over, fanotify
//! set-up) runs code scattered over most of the 6 MB of `.text`, and the
//! kernel maps page-cache pages around every fault (64 KiB windows): after
//! start about 4.7 MB of the binary stayed mapped, counted in VmRSS, though
//! the idle daemon runs a few dozen KiB of it. [`unmap_startup_pages`] drops
//! those page-table entries once; what the daemon runs afterwards faults
//! back in from the page cache (a minor fault, no I/O while the file is
//! cached).
//!
//! The same holds for the C library (1.4 MB resident after start, shared
//! with every process but counted in each one's VmRSS) and the dynamic
//! loader.
//!
//! Why this is safe: only segments of the executable, the C library and the
//! loader that are mapped read-only and private and hold no anonymous
//! (copy-on-write) page are touched. `MADV_DONTNEED` on such a mapping only
//! removes references to page-cache pages, which come back with the same
//! bytes: the same as for any page not yet run, which the kernel faults in
//! from the file. (Installers replace these files, they do not rewrite them
//! in place; the old file stays behind the mapping.) The relocated
//! `.data.rel.ro` (read-only after relocation, but its pages are private
//! copies) is skipped, as is everything writable. These files are mapped
//! before `main` and never unmapped, so no other thread can replace one of
//! these mappings between reading `/proc/self/smaps` and `madvise` (a
//! library loaded later, e.g. an NSS module, could be, which is why no
//! other file is included).
use std::{fs, os::unix::fs::MetadataExt};

/// Unmaps the clean read-only pages of the executable and of the C library;
/// returns how many KiB were resident there before. Errors (no /proc, a
/// refused madvise) just leave the pages mapped.
pub fn unmap_startup_pages() -> u64 {
    let files: Vec<(u64, u64)> = [
        Some("/proc/self/exe".into()),
        c_library_path(),
        dynamic_loader_path(),
    ]
    .into_iter()
    .flatten()
    .filter_map(|p: std::path::PathBuf| fs::metadata(p).ok())
    .map(|m| (m.dev(), m.ino()))
    .collect();
    let Ok(smaps) = fs::read_to_string("/proc/self/smaps") else {
        return 0;
    };
    let mut released = 0;
    for m in mappings(&smaps) {
        let ours = files.iter().any(|&(dev, ino)| {
            m.inode == ino && m.dev == (libc::major(dev).into(), libc::minor(dev).into())
        });
        if !ours || m.writable || !m.private || m.anonymous_kib != 0 || m.rss_kib == 0 {
            continue;
        }
        // SAFETY: a private read-only file mapping without anonymous pages
        // (see the module comment): dropping its entries loses no data.
        let r = unsafe {
            libc::madvise(
                m.start as *mut libc::c_void,
                m.end - m.start,
                libc::MADV_DONTNEED,
            )
        };
        if r == 0 {
            released += m.rss_kib;
        }
    }
    released
}

/// The file of the dynamic loader (`ld-linux`): the mapping at the base
/// address the kernel gave it (`AT_BASE`). Mapped by the kernel at exec, it
/// never moves.
fn dynamic_loader_path() -> Option<std::path::PathBuf> {
    // SAFETY: getauxval reads the auxiliary vector; no pointer is returned.
    let base = unsafe { libc::getauxval(libc::AT_BASE) } as usize;
    if base == 0 {
        return None;
    }
    fs::read_to_string("/proc/self/maps")
        .ok()?
        .lines()
        .find(|l| {
            l.split_once('-')
                .and_then(|(start, _)| usize::from_str_radix(start, 16).ok())
                == Some(base)
        })
        .and_then(|l| l.split_whitespace().nth(5))
        .filter(|p| p.starts_with('/'))
        .map(std::path::PathBuf::from)
}

/// The file the C library was loaded from (it is loaded before `main` and
/// never unloaded, so its mappings never move either).
fn c_library_path() -> Option<std::path::PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: dladdr only reads the loader's tables; dli_fname points into
    // them (valid while the library stays loaded: for ever).
    let found = unsafe { libc::dladdr(libc::malloc as *const libc::c_void, &mut info) };
    if found == 0 || info.dli_fname.is_null() {
        return None;
    }
    let name = unsafe { std::ffi::CStr::from_ptr(info.dli_fname) };
    let path = std::path::Path::new(std::ffi::OsStr::from_bytes(name.to_bytes()));
    path.is_absolute().then(|| path.to_path_buf())
}

/// One malloc arena for all threads. glibc gives each thread that
/// allocates while another holds the lock an arena of its own (up to 8 per
/// core), each with its own free lists and slack: the daemon had four, and
/// 60-170 KiB more anonymous memory under a steady load than with one shared
/// heap (measured side by side, 200-250 writes/s). Threads keep their own tcache for
/// small blocks, and the per-event path does not allocate, so the shared
/// lock is not on it. Must run before a second thread allocates (glibc fixes
/// the limit when it first needs another arena): first thing in `main`.
pub fn limit_malloc_arenas() {
    // SAFETY: mallopt only sets a malloc parameter.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// One mapping of `/proc/self/smaps`, the fields used here.
#[derive(Debug, Default, PartialEq)]
struct Mapping {
    start: usize,
    end: usize,
    writable: bool,
    private: bool,
    dev: (u64, u64),
    inode: u64,
    rss_kib: u64,
    anonymous_kib: u64,
}

fn mappings(smaps: &str) -> Vec<Mapping> {
    let mut out: Vec<Mapping> = Vec::new();
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        if let Some((start, end)) = first.split_once('-')
            && let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            )
        {
            let perms = words.next().unwrap_or("");
            let _offset = words.next();
            let dev = words
                .next()
                .and_then(|d| d.split_once(':'))
                .and_then(|(a, b)| {
                    Some((
                        u64::from_str_radix(a, 16).ok()?,
                        u64::from_str_radix(b, 16).ok()?,
                    ))
                })
                .unwrap_or_default();
            let inode = words.next().and_then(|i| i.parse().ok()).unwrap_or(0);
            out.push(Mapping {
                start,
                end,
                writable: perms.as_bytes().get(1) != Some(&b'-'),
                private: perms.as_bytes().get(3) == Some(&b'p'),
                dev,
                inode,
                ..Mapping::default()
            });
        } else if let Some(m) = out.last_mut() {
            let mut kib = || words.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            match first {
                "Rss:" => m.rss_kib = kib(),
                "Anonymous:" => m.anonymous_kib = kib(),
                _ => {}
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smaps_lines_give_mappings_with_their_counts() {
        let text = "\
55d0c1a00000-55d0c1bf5000 r--p 00000000 fd:01 1234 /usr/local/bin/fsmon
Size:               2004 kB
Rss:                1024 kB
Anonymous:             0 kB
VmFlags: rd mr mw me dw sd
55d0c23c9000-55d0c2405000 r--p 007c7000 fd:01 1234 /usr/local/bin/fsmon
Rss:                 240 kB
Anonymous:           240 kB
7f0000000000-7f0000021000 rw-p 00000000 00:00 0
Rss:                   8 kB
Anonymous:             8 kB
";
        let m = mappings(text);
        assert_eq!(m.len(), 3);
        assert_eq!(
            m[0],
            Mapping {
                start: 0x55d0c1a00000,
                end: 0x55d0c1bf5000,
                writable: false,
                private: true,
                dev: (0xfd, 1),
                inode: 1234,
                rss_kib: 1024,
                anonymous_kib: 0,
            }
        );
        assert_eq!((m[1].rss_kib, m[1].anonymous_kib), (240, 240));
        assert!(m[2].writable && m[2].inode == 0);
    }

    #[test]
    fn unmapping_keeps_the_code_running_and_lowers_its_residency() {
        let before = own_exe_rss_kib();
        let released = unmap_startup_pages();
        assert!(released > 0, "nothing of the test binary was resident");
        // Still runs (code faults back in), and less of it is resident.
        let after = own_exe_rss_kib();
        assert!(after < before, "resident {before} KiB -> {after} KiB");
        assert_eq!(format!("{}", 6 * 7), "42");
    }

    fn own_exe_rss_kib() -> u64 {
        let exe = fs::metadata("/proc/self/exe").unwrap();
        mappings(&fs::read_to_string("/proc/self/smaps").unwrap())
            .iter()
            .filter(|m| m.inode == exe.ino() && !m.writable && m.anonymous_kib == 0)
            .map(|m| m.rss_kib)
            .sum()
    }
}
