//! Reading process facts from `/proc`: seeds the eBPF map with processes that
//! existed before the daemon, and is the whole story for the fallback
//! tracker when eBPF cannot be loaded.
use std::{fs, io::Read, sync::OnceLock};

use fsmon_common::{COMM_LEN, ProcRecord};

/// The fields of `/proc/<pid>/stat` we use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatFields<'a> {
    pub comm: &'a [u8],
    /// State letter (`R`, `S`, `Z` for a zombie, ...).
    pub state: u8,
    /// The kernel's task flags (`PF_*`) of the thread-group leader.
    pub flags: u64,
    pub ppid: u32,
    /// Start time in clock ticks since boot.
    pub start_ticks: u64,
}

/// Parses `/proc/<pid>/stat`. The comm sits between the first `(` and the
/// *last* `)`: it may itself contain spaces and parentheses.
pub fn parse_stat(buf: &[u8]) -> Option<StatFields<'_>> {
    let open = buf.iter().position(|&b| b == b'(')?;
    let close = buf.iter().rposition(|&b| b == b')')?;
    if close < open {
        return None;
    }
    let comm = &buf[open + 1..close];
    let rest = std::str::from_utf8(buf.get(close + 2..)?).ok()?;
    let mut fields = rest.split_ascii_whitespace();
    // After the comm: state(0) ppid(1) ... starttime(19).
    let state = *fields.next()?.as_bytes().first()?;
    let ppid = fields.next()?.parse().ok()?;
    // pgrp session tty_nr tpgid, then flags.
    let flags = fields.nth(4)?.parse().ok()?;
    let start_ticks = fields.nth(12)?.parse().ok()?;
    Some(StatFields {
        comm,
        state,
        flags,
        ppid,
        start_ticks,
    })
}

/// Real uid and gid from `/proc/<pid>/status` (the first number of the
/// `Uid:` and `Gid:` lines, the same ids `bpf_get_current_uid_gid` gives).
pub fn parse_status_ids(buf: &[u8]) -> Option<(u32, u32)> {
    let text = std::str::from_utf8(buf).ok()?;
    let first = |key: &str| -> Option<u32> {
        let line = text.lines().find(|l| l.starts_with(key))?;
        line[key.len()..]
            .split_ascii_whitespace()
            .next()?
            .parse()
            .ok()
    };
    Some((first("Uid:")?, first("Gid:")?))
}

fn clock_ticks_per_sec() -> u64 {
    static TCK: OnceLock<u64> = OnceLock::new();
    *TCK.get_or_init(|| {
        nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .filter(|&t| t > 0)
            .map(|t| t as u64)
            .unwrap_or(100)
    })
}

/// Converts a `/proc` start time (clock ticks since boot) to boot-clock ns.
pub fn ticks_to_ns(ticks: u64) -> u64 {
    ticks.saturating_mul(1_000_000_000 / clock_ticks_per_sec())
}

fn read_small(path: &str, buf: &mut Vec<u8>) -> Option<()> {
    buf.clear();
    fs::File::open(path).ok()?.read_to_end(buf).ok()?;
    Some(())
}

/// Reads one process from `/proc`. `None` when it does not exist (any more).
/// `tracked` is left 0; `parent_start_ns` is filled by the caller, which
/// knows the parent's record.
pub fn read_process(tgid: u32) -> Option<ProcRecord> {
    read_process_state(tgid).map(|(r, _)| r)
}

/// [`read_process`], and whether the process has exited or is exiting (a
/// zombie not yet reaped, or a task already in `do_exit`, past the exit
/// tracepoint: `/proc` still shows it, but it must not be put in the live
/// map, where nothing would ever remove it).
pub fn read_process_state(tgid: u32) -> Option<(ProcRecord, bool)> {
    let mut buf = Vec::with_capacity(1024);
    read_small(&format!("/proc/{tgid}/stat"), &mut buf)?;
    let stat = parse_stat(&buf)?;
    const PF_EXITING: u64 = 0x4;
    let exited = matches!(stat.state, b'Z' | b'X' | b'x') || stat.flags & PF_EXITING != 0;
    let mut comm = [0u8; COMM_LEN];
    let n = stat.comm.len().min(COMM_LEN - 1);
    comm[..n].copy_from_slice(&stat.comm[..n]);
    let (ppid, start_ns) = (stat.ppid, ticks_to_ns(stat.start_ticks));
    read_small(&format!("/proc/{tgid}/status"), &mut buf)?;
    let (uid, gid) = parse_status_ids(&buf)?;
    Some((
        ProcRecord {
            tgid,
            ppid,
            uid,
            gid,
            comm,
            start_ns,
            cgroup_id: super::cgroup::id_of_process(tgid),
            ..ProcRecord::default()
        },
        exited,
    ))
}

/// The tgids of every process now in `/proc` (threads are not listed there).
pub fn all_pids() -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_odd_comm() {
        let line = b"4242 (my (odd) cmd) S 17 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 200";
        let s = parse_stat(line).unwrap();
        assert_eq!(s.comm, b"my (odd) cmd");
        assert_eq!(s.state, b'S');
        assert_eq!(s.flags, 4194560);
        assert_eq!(s.ppid, 17);
        assert_eq!(s.start_ticks, 987654);
    }

    #[test]
    fn stat_truncated_is_none() {
        assert!(parse_stat(b"12 (sh) S 1 2 3").is_none());
        assert!(parse_stat(b"garbage").is_none());
        assert!(parse_stat(b"1 )( S").is_none());
    }

    #[test]
    fn status_ids() {
        let s = b"Name:\tbash\nUmask:\t0022\nUid:\t1000\t0\t0\t0\nGid:\t100\t100\t100\t100\n";
        assert_eq!(parse_status_ids(s), Some((1000, 100)));
        assert_eq!(parse_status_ids(b"Name:\tx\n"), None);
    }

    #[test]
    fn own_process_reads_back() {
        let me = std::process::id();
        let r = read_process(me).expect("own /proc entry");
        assert_eq!(r.tgid, me);
        assert_eq!(r.ppid, nix::unistd::getppid().as_raw() as u32);
        assert!(r.start_ns > 0);
    }
}
