//! `tail [CMD]`: the daemon's live event stream (the `subscribe` request),
//! printed as it comes: JSON lines as the daemon sends them, or readable
//! lines on a terminal. A `missed` notice (this reader fell behind) is
//! always shown. Ctrl-C and a closed pipe (`fsmon tail | head`) end it
//! with exit 0.
use std::io::Write;

use anyhow::{Result, bail};

use super::Context;
use crate::{cli::TailArgs, control::Request, output, store};

/// Ends the process at once with exit 0: Ctrl-C is how `tail` is meant to
/// stop. Only `_exit` is async-signal-safe; every line is already written
/// whole (stdout is flushed after each).
extern "C" fn exit_quietly(_: libc::c_int) {
    // SAFETY: _exit is async-signal-safe and takes no locks.
    unsafe { libc::_exit(0) }
}

fn exit_on_interrupt() -> Result<()> {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    let action = SigAction::new(
        SigHandler::Handler(exit_quietly),
        SaFlags::empty(),
        SigSet::empty(),
    );
    // SAFETY: the handler only calls _exit.
    unsafe { sigaction(Signal::SIGINT, &action) }?;
    Ok(())
}

pub fn tail(ctx: &Context, args: TailArgs) -> Result<()> {
    exit_on_interrupt()?;
    if let Some(g) = &args.group {
        store::validate_group(g)?;
    }
    let mode = args.out.mode();
    let mut client = ctx.connect()?;
    client.call(&Request::Subscribe {
        group: args.group.clone(),
    })?;
    // A group that watches nothing has nothing to show: say so rather
    // than wait in silence (it may be added later; the stream stays open).
    if let Some(g) = &args.group
        && let Ok(s) = store::Store::load(&ctx.fs, &ctx.config.store_path)
        && !s.groups.iter().any(|x| x.cmd == *g && !x.paths.is_empty())
    {
        eprintln!("notice: group {g} watches no path (yet); waiting for its events");
    }
    let lines = client.lines()?;
    let stdout = std::io::stdout();
    // One group: its name on every line would be noise.
    let mut out = output::EventSink::new(stdout.lock(), mode, args.group.is_none());
    for line in lines {
        let mut line =
            line.map_err(|e| crate::Error::Socket(format!("reading from the daemon: {e}")))?;
        line.push('\n');
        // In JSON the notice is a line of the stream like any other; it is
        // also said on stderr, where a consumer filtering events cannot
        // miss it. The text form shows it on its own line.
        // (Events start with their group; anything else is looked at.)
        if mode.format == output::Format::Json
            && !line.starts_with("{\"group\":")
            && let Ok(v) = crate::control::parse_response(line.as_bytes())
            && let Some(notice) = v.get("notice")
        {
            match v.get("missed").and_then(|m| m.as_u64()) {
                Some(n) => eprintln!(
                    "warning: missed {n} events: this reader fell behind the daemon ([cache] subscribe_buf); they are in the log"
                ),
                None => eprintln!(
                    "notice from the daemon: {}",
                    crate::control::terminal_json(notice)
                ),
            }
        }
        match out.write_all(line.as_bytes()).and_then(|()| out.flush()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
    bail!("the daemon closed the stream (it stopped or restarted)")
}
