//! tracefs: where tracepoints live, and their field layouts.
use std::path::Path;

use fsmon_common::OFFSET_ABSENT;

use crate::error::{Error, Result};

pub const TRACEFS: &str = "/sys/kernel/tracing";

/// Makes sure tracefs is mounted at `/sys/kernel/tracing` (aya and the
/// offsets below read it); mounts it if not.
pub fn ensure_mounted() -> Result<()> {
    if Path::new(TRACEFS).join("events").is_dir() {
        return Ok(());
    }
    nix::mount::mount(
        Some("tracefs"),
        TRACEFS,
        Some("tracefs"),
        nix::mount::MsFlags::MS_NOSUID
            | nix::mount::MsFlags::MS_NODEV
            | nix::mount::MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| Error::Ebpf(format!("cannot mount tracefs at {TRACEFS}: {e}")))
}

/// Offset of `field` in a tracefs `format` file, or `None` if the event has
/// no such field. Lines look like
/// `\tfield:pid_t child_pid;\toffset:20;\tsize:4;\tsigned:1;`.
pub fn field_offset(format: &str, field: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let decl = line.trim().strip_prefix("field:")?;
        let (decl, rest) = decl.split_once(';')?;
        let name = decl.rsplit([' ', '*']).next()?;
        let name = name.split('[').next()?;
        if name != field {
            return None;
        }
        rest.split(';')
            .find_map(|p| p.trim().strip_prefix("offset:"))?
            .parse()
            .ok()
    })
}

/// Reads the offset of `field` of `category/event`: an error if the event is
/// missing, [`OFFSET_ABSENT`] if only the field is.
pub fn event_field_offset(category: &str, event: &str, field: &str) -> Result<u32> {
    let path = format!("{TRACEFS}/events/{category}/{event}/format");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Error::Ebpf(format!("cannot read {path}: {e}")))?;
    Ok(field_offset(&text, field).unwrap_or(OFFSET_ABSENT))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORK_618: &str = "name: sched_process_fork\nID: 366\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n\tfield:__data_loc char[] parent_comm;\toffset:8;\tsize:4;\tsigned:0;\n\tfield:pid_t parent_pid;\toffset:12;\tsize:4;\tsigned:1;\n\tfield:__data_loc char[] child_comm;\toffset:16;\tsize:4;\tsigned:0;\n\tfield:pid_t child_pid;\toffset:20;\tsize:4;\tsigned:1;\n";
    const FORK_OLD: &str = "format:\n\tfield:char parent_comm[16];\toffset:8;\tsize:16;\tsigned:0;\n\tfield:pid_t parent_pid;\toffset:24;\tsize:4;\tsigned:1;\n\tfield:char child_comm[16];\toffset:28;\tsize:16;\tsigned:0;\n\tfield:pid_t child_pid;\toffset:44;\tsize:4;\tsigned:1;\n";

    #[test]
    fn offsets_differ_between_kernels() {
        assert_eq!(field_offset(FORK_618, "child_pid"), Some(20));
        assert_eq!(field_offset(FORK_618, "parent_pid"), Some(12));
        assert_eq!(field_offset(FORK_618, "child_comm"), Some(16));
        assert_eq!(field_offset(FORK_OLD, "child_pid"), Some(44));
        assert_eq!(field_offset(FORK_OLD, "child_comm"), Some(28));
        assert_eq!(field_offset(FORK_OLD, "group_dead"), None);
    }

    #[test]
    fn prefix_of_a_name_does_not_match() {
        assert_eq!(field_offset(FORK_618, "pid"), None);
        assert_eq!(field_offset(FORK_618, "child"), None);
    }
}
