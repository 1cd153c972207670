//! `fsmon man`: manual pages generated from the CLI definition (clap_mangen),
//! so flags and help never drift from the code, plus the sections a
//! generator cannot know: FILES, ENVIRONMENT, EXIT STATUS, EXAMPLES, SEE ALSO.
//! `fsmon man` prints fsmon(1); `fsmon man --dir DIR` writes fsmon.1 and one
//! fsmon-<command>.1 per command (what the package and `cargo xtask install`
//! install).
use std::{io::Write, path::Path};

use anyhow::{Context as _, Result};
use clap::CommandFactory;

use crate::cli::Cli;

/// The hand-written sections of fsmon(1), in roff.
const SECTIONS: &str = r#".SH FILES
.TP
\fI~/.config/fsmon/fsmon.toml\fR
The configuration (optional; \fBfsmon init\fR writes one with every setting at its default).
\fB\-\-config\fR or \fBFSMON_CONFIG\fR name another; a file named that way must exist.
.TP
\fI~/.local/share/fsmon/monitored.jsonl\fR
The monitored paths, one JSON line per group, as \fBfsmon monitored\fR prints them.
.TP
\fI~/.local/state/fsmon/<group>_log.jsonl\fR
The event logs: append\-only JSONL, one event per line, in time order.
.TP
\fI[socket] path\fR
The daemon's control socket (see the README for its default and protocol); mode 0600,
reachable by root and the daemon's user only.
.TP
\fI/etc/fsmon/fsmon.toml\fR, \fI/var/lib/fsmon/monitored.jsonl\fR, \fI/var/log/fsmon/\fR, \fI/run/fsmon/fsmon.sock\fR
The same in system mode (\fB\-\-system\fR, the systemd unit): root's daemon for the
machine; directories 0750, logs 0640 and the socket 0660, root's with group \fBfsmon\fR,
whose members may read (query, changes, tail, monitored, health) but not change
what is watched.
.PP
\fI~\fR is the home of the user the daemon works for: the user in \fBSUDO_UID\fR when run
through sudo (from the password database), else the current user, whose \fBHOME\fR and
\fBXDG_CONFIG_HOME\fR, \fBXDG_DATA_HOME\fR, \fBXDG_STATE_HOME\fR count.
.SH ENVIRONMENT
.TP
\fBFSMON_MODE\fR
\fBsystem\fR or \fBuser\fR: the mode (default: system for root's own commands, without sudo
and without an explicit config; user otherwise).
.TP
\fBFSMON_GROUP\fR
The readers' group of the system daemon instead of \fBfsmon\fR.
.TP
\fBJOURNAL_STREAM\fR, \fBFSMON_LOG_PRIORITY\fR
Set (by systemd), or \fB1\fR: each log line starts with its syslog priority (\fB<3>\fR..\fB<7>\fR).
.TP
\fBFSMON_CONFIG\fR
The configuration file to use instead of the default.
.TP
\fBFSMON_LOG\fR
Log filter for the daemon's own messages (\fBerror\fR, \fBwarn\fR, \fBinfo\fR, \fBdebug\fR).
.TP
\fBFSMON_TRACKER\fR
\fBprocfs\fR: attribute processes from /proc instead of the eBPF tracker.
.TP
\fBSUDO_UID\fR
Set by sudo: the user the daemon and the CLI work for when run as root.
.TP
\fBNO_COLOR\fR
Any non\-empty value: no colour in the text output (\fB\-\-color always\fR still colours).
.TP
\fBTERM\fR
\fBdumb\fR (or unset): no colour in the text output unless \fB\-\-color always\fR.
.SH EXIT STATUS
.TP
\fB0\fR
Success; for \fBquery\fR and \fBchanges\fR also "the log exists but nothing matched";
for \fBtail\fR, stopped with Ctrl\-C or by a reader that closed the pipe.
.TP
\fB1\fR
An error, reported as one line on standard error: a bad value, a missing log, no daemon
running (\fBhealth\fR), a refused file.
.TP
\fB2\fR
A usage error: an unknown command or flag, a missing argument (one line, with a hint).
.SH EXAMPLES
.nf
sudo fsmon daemon
fsmon add _global \-\-path /var/www/myapp \-r
fsmon add nginx \-\-path /var/www/myapp \-r \-\-types MODIFY \-\-types CREATE
fsmon monitored
fsmon tail                     # follow every group live; Ctrl\-C stops
fsmon tail nginx \-o json | jq .path
fsmon query _global \-\-since 1h \-\-path /var/www/myapp
fsmon query nginx \-t '>=2026\-05\-01' \-t '<2026\-05\-02'
fsmon changes _global \-t '>30m'
fsmon clean _global \-\-time '>7d' \-\-size '>=500MB'
fsmon health
.fi
.SH SEE ALSO
\fBfanotify\fR(7), \fBbpf\fR(2), \fBjq\fR(1), \fBsystemctl\fR(1).
The README in fsmon's source is the full manual: every log field and its caveats, the socket
protocol, metrics and the threat model.
"#;

/// fsmon(1): the generated page and the hand-written sections.
pub fn render_main(out: &mut dyn Write) -> Result<()> {
    clap_mangen::Man::new(Cli::command()).render(out)?;
    out.write_all(SECTIONS.as_bytes())?;
    Ok(())
}

/// Writes fsmon.1 and fsmon-<command>.1 (visible commands) into `dir`.
pub fn write_all(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut main = Vec::new();
    render_main(&mut main)?;
    write_page(dir, "fsmon.1", &main)?;
    let cli = Cli::command();
    for sub in cli.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("fsmon-{}", sub.get_name());
        let page = sub.clone().name(name.clone()).display_name(name.clone());
        let mut buf = Vec::new();
        clap_mangen::Man::new(page).render(&mut buf)?;
        buf.extend_from_slice(b".SH SEE ALSO\n\\fBfsmon\\fR(1)\n");
        write_page(dir, &format!("{name}.1"), &buf)?;
    }
    Ok(())
}

fn write_page(dir: &Path, name: &str, text: &[u8]) -> Result<()> {
    let path = dir.join(name);
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
}
