//! `query`, `changes`, `clean`: reading and trimming logs (no daemon needed;
//! `clean` asks a running daemon to do the final swap so no event is lost).
use std::{io::Write, path::PathBuf};

use anyhow::{Result, bail};
use chrono::Utc;

use super::Context;
use crate::{
    cli::{CleanArgs, QueryArgs},
    control::{Client, Request},
    error::Error,
    filters::{Bound, Side, SizeFilter, TimeFilter},
    logfile::{self, QueryOptions},
    pipeline::write::log_path,
    ship::cursor,
    store,
};

/// The log of `group`; errors if file output is off.
fn group_log(ctx: &Context, group: &str) -> Result<PathBuf> {
    store::validate_group(group)?;
    let Some(dir) = &ctx.config.log_dir else {
        bail!("file output is off (the config has no [logging] section): there are no logs");
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
        .time
        .iter()
        .map(|t| TimeFilter::parse(t))
        .collect::<Result<Vec<_>, _>>()?;
    let prefix = match &args.path {
        Some(p) => Some(
            store::normalize_path(p, &std::env::current_dir()?)?
                .to_string_lossy()
                .into_owned(),
        ),
        None => None,
    };
    if std::fs::symlink_metadata(&path).is_err() {
        return no_log(&args.group, &path);
    }
    let range = logfile::resolve_range(&path, &filters, Utc::now())?;
    let opts = QueryOptions {
        range,
        path_prefix: prefix,
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let result = if changes {
        logfile::changes(&path, &opts, &mut out)
    } else {
        logfile::query(&path, &opts, &mut out)
    };
    let stats = match result {
        Ok(s) => s,
        // `fsmon query | head` closing the pipe is not an error.
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::BrokenPipe => {
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    let _ = out.flush();
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
    if std::fs::symlink_metadata(&path).is_err() {
        return no_log(&args.group, &path);
    }
    let keep_after = match keep_after {
        Some(f) => f.resolve(now, logfile::log_zone(&path)?)?,
        None => Bound::inclusive(now - chrono::TimeDelta::days(ctx.config.keep_days as i64)),
    };
    let mut plan = logfile::plan_clean(&path, Some(keep_after), Some(size.bytes()))?;
    // Lines not yet in the NATS stream are kept unless asked otherwise.
    let shipped_groups = ctx.config.ship.as_ref().map(|s| &s.groups);
    let cursor = match shipped_until(&path) {
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
        let capped =
            logfile::plan_clean_capped(&path, Some(keep_after), Some(size.bytes()), Some(shipped))?;
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
    match Client::connect(&ctx.config.socket_path) {
        Ok(mut client) => {
            let prepared = logfile::copy_tail(&path, plan.cut)?;
            let (tmp, copied_until) = prepared.hand_over();
            let r = client.call(&Request::CleanSwap {
                group: args.group.clone(),
                tmp: tmp.to_string_lossy().into_owned(),
                copied_until,
            });
            if r.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            r?;
        }
        Err(Error::Socket(msg)) if msg.starts_with("no fsmon daemon") => {
            // The shipping cursor (if any) follows the trim.
            logfile::clean_now_around(&plan, |tmp_ino, cut, swap| {
                cursor::around_swap(&path, &ctx.user, tmp_ino, cut, None, swap)
            })?;
        }
        Err(e) => return Err(e.into()),
    }
    println!("{plan}");
    Ok(())
}
