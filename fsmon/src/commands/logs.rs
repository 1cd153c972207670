//! `query`, `changes`, `clean`: reading and trimming logs (no daemon needed;
//! `clean` asks a running daemon to do the final swap so no event is lost).
use std::path::PathBuf;

use anyhow::{Result, bail};
use chrono::Utc;

use super::Context;
use crate::{
    cli::{CleanArgs, QueryArgs},
    control::Request,
    error::Error,
    filters::{Bound, Side, SizeFilter, TimeFilter},
    logfile::{self, CleanPlan, QueryOptions, QueryStats, TrimResult},
    pipeline::write::log_path,
    ship::cursor,
    store,
};

/// The log of `group`; errors if file output is off.
fn group_log(ctx: &Context, group: &str) -> Result<PathBuf> {
    store::validate_group(group)?;
    let Some(dir) = &ctx.config.log_dir else {
        bail!("file output is off ([logging] enabled = false): there are no logs");
    };
    Ok(log_path(dir, group))
}

/// Exit code 1 with a message on stderr and nothing on stdout.
fn no_log(group: &str, path: &std::path::Path) -> Result<()> {
    bail!(
        "no log for group {group} ({} does not exist)",
        path.display()
    )
}

pub fn query(ctx: &Context, args: QueryArgs, changes: bool) -> Result<()> {
    let path = group_log(ctx, &args.group)?;
    let filters = args
        .time_filters()
        .iter()
        .map(|t| TimeFilter::parse(t))
        .collect::<Result<Vec<_>, _>>()?;
    let cwd = std::env::current_dir()?;
    let log = path.clone();
    let mode = args.out.mode();
    // Everything that touches files runs as the user (also under sudo).
    let result = ctx.fs.run(move || -> crate::Result<Option<QueryStats>> {
        let path_prefix = match &args.path {
            Some(p) => {
                Some(crate::escape::encode_path(&store::normalize_path(p, &cwd)?).into_owned())
            }
            None => None,
        };
        match std::fs::symlink_metadata(&log) {
            Ok(_) => {}
            // Only archives may be left (the live log rotated away).
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    && !crate::archive::list(&log).is_ok_and(|files| !files.is_empty()) =>
            {
                return Ok(None);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            // Not "does not exist" when it is "not yours to read".
            Err(e) => return Err(Error::io(&log, e)),
        }
        let range = logfile::resolve_range(&log, &filters, Utc::now())?;
        let opts = QueryOptions { range, path_prefix };
        let stdout = std::io::stdout();
        // JSON: the log's bytes as they are; text: each line rendered.
        let mut out = crate::output::EventSink::new(stdout.lock(), mode, false);
        let result = if changes {
            logfile::changes(&log, &opts, &mut out)
        } else {
            logfile::query(&log, &opts, &mut out)
        };
        let _ = out.finish();
        match result {
            Ok(s) => Ok(Some(s)),
            // `fsmon query | head` closing the pipe is not an error.
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::BrokenPipe => {
                Ok(Some(QueryStats::default()))
            }
            Err(e) => Err(e),
        }
    })?;
    let Some(stats) = result else {
        return no_log(&args.group, &path);
    };
    for w in &stats.unreadable {
        eprintln!("warning: {w}");
    }
    if let Some(w) = stats.corrupt_warning(&path) {
        eprintln!("warning: {w}");
    }
    Ok(())
}

/// Offset in the log up to which lines are in the NATS stream, if the log
/// is shipped (has a cursor for this very file).
fn shipped_until(log: &std::path::Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let c = cursor::load(&cursor::cursor_path(log)).ok()??;
    let meta = std::fs::symlink_metadata(log).ok()?;
    ((meta.dev(), meta.ino()) == (c.dev, c.ino)).then(|| c.acked_in_file())
}

pub fn clean(ctx: &Context, args: CleanArgs) -> Result<()> {
    // The system daemon's logs are root's: its readers may look, not trim
    // (the daemon refuses their swap too, and the files' modes their writes).
    if ctx.user.is_system() && !args.dry_run && !nix::unistd::geteuid().is_root() {
        bail!(
            "permission denied: only root cleans the system daemon's logs (--dry-run shows what would go)"
        );
    }
    let path = group_log(ctx, &args.group)?;
    // Parse everything before looking at the file.
    let now = Utc::now();
    let keep_after = match &args.time {
        Some(t) => {
            let f = TimeFilter::parse(t)?;
            if f.side() != Side::Since {
                bail!(
                    "--time '{t}': clean keeps events newer than a time, so use > or >= (e.g. '>7d')"
                );
            }
            Some(f)
        }
        None => None,
    };
    let size = match &args.size {
        Some(s) => SizeFilter::parse(s)?,
        None => ctx.config.clean_size,
    };
    let keep_days = ctx.config.keep_days as i64;
    let log = path.clone();
    let planned = ctx
        .fs
        .run(move || -> crate::Result<Option<(CleanPlan, Bound)>> {
            if std::fs::symlink_metadata(&log).is_err() {
                return Ok(None);
            }
            let keep_after = match keep_after {
                Some(f) => f.resolve(now, logfile::log_zone(&log)?)?,
                None => Bound::inclusive(now - chrono::TimeDelta::days(keep_days)),
            };
            logfile::plan_clean(&log, Some(keep_after), Some(size.bytes()))
                .map(|plan| Some((plan, keep_after)))
        })?;
    let Some((mut plan, keep_after)) = planned else {
        return no_log(&args.group, &path);
    };
    // Lines not yet in the NATS stream are kept unless asked otherwise.
    let shipped_groups = ctx.config.ship.as_ref().map(|s| &s.groups);
    let log = path.clone();
    let cursor = match ctx.fs.run(move || shipped_until(&log)) {
        // Shipping is configured for this group but has no cursor yet:
        // nothing of it is in the stream.
        None if shipped_groups
            .is_some_and(|g| g.as_ref().is_none_or(|g| g.contains(&args.group))) =>
        {
            Some(0)
        }
        c => c,
    };
    if let Some(shipped) = cursor.filter(|&s| plan.cut > s) {
        let log = path.clone();
        let bytes = size.bytes();
        let capped = ctx.fs.run(move || {
            logfile::plan_clean_capped(&log, Some(keep_after), Some(bytes), Some(shipped))
        })?;
        let unshipped = plan.lines_removed - capped.lines_removed;
        if args.drop_unshipped {
            eprintln!(
                "warning: {unshipped} of the lines to remove are not yet shipped to NATS; removing them anyway (--drop-unshipped)"
            );
        } else {
            eprintln!(
                "{unshipped} of the lines to remove are not yet shipped to NATS: keeping them (--drop-unshipped removes them)"
            );
            plan = capped;
        }
    }
    if args.dry_run || plan.is_noop() {
        println!("{plan}");
        return Ok(());
    }
    // With a daemon writing this log, it finishes the trim between batches;
    // otherwise we do it all here.
    let result = match ctx.connect() {
        Ok(mut client) => {
            let (log, cut) = (path.clone(), plan.cut);
            let (tmp, copied_until) = ctx
                .fs
                .run(move || logfile::copy_tail(&log, cut).map(|p| p.hand_over()))?;
            let r = client.call(&Request::CleanSwap {
                group: args.group.clone(),
                tmp: tmp.to_string_lossy().into_owned(),
                copied_until,
            });
            let answer = match r {
                Ok(v) => v,
                Err(e) => {
                    let _ = ctx.fs.remove_file(&tmp);
                    return Err(e.into());
                }
            };
            let number = |key: &str| answer.get(key).and_then(|v| v.as_u64());
            match (number("dropped_partial_bytes"), number("new_len")) {
                (Some(dropped_partial_bytes), Some(new_len)) => TrimResult {
                    bytes_removed: plan.cut,
                    new_len,
                    dropped_partial_bytes,
                },
                // An older daemon: what we know from the plan.
                _ => TrimResult {
                    bytes_removed: plan.cut,
                    new_len: plan.bytes_kept(),
                    dropped_partial_bytes: plan.partial_tail,
                },
            }
        }
        Err(Error::Socket(msg)) if msg.starts_with("no fsmon daemon") => {
            // The shipping cursor (if any) follows the trim; all as the user.
            let (p, log, owner) = (plan.clone(), path.clone(), ctx.user.clone());
            ctx.fs.run(move || {
                logfile::clean_now_around(&p, |tmp_ino, cut, swap| {
                    cursor::around_swap(&log, &owner, tmp_ino, cut, None, swap)
                })
            })?
        }
        Err(e) => return Err(e.into()),
    };
    println!("{}", plan.done(&result));
    Ok(())
}
