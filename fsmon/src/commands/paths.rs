//! `add`, `remove`, `monitored`: the monitoring list. When the daemon runs,
//! it applies the change live and writes the store; otherwise we write the
//! store and the daemon reads it when it starts.

use anyhow::Result;

use super::Context;
use crate::{
    cli::{AddArgs, RemoveArgs},
    control::{Client, Request},
    error::Error,
    filters::SizeFilter,
    marks::MarkKind,
    store::{self, PathOptions, Store, StoreLock},
    userfs,
};

/// Connects to the daemon if one runs; `None` if none does.
fn daemon(ctx: &Context) -> Result<Option<Client>> {
    match ctx.connect() {
        Ok(c) => Ok(Some(c)),
        Err(Error::Socket(msg)) if msg.starts_with("no fsmon daemon") => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub fn add(ctx: &Context, args: AddArgs) -> Result<()> {
    // Validate everything before touching anything.
    store::validate_group(&args.group)?;
    let types = store::parse_types(&args.types)?;
    let size = args.size.as_deref().map(SizeFilter::parse).transpose()?;
    let mark = MarkKind::parse(&args.mark)?;
    let cwd = std::env::current_dir()?;
    // Resolved and checked as the user: a path the user may not read is
    // refused here (and again by the daemon, with the same rule).
    let raw = args.path.clone();
    let (path, exists) = ctx.fs.run(move || -> crate::Result<_> {
        let path = store::normalize_path(&raw, &cwd)?;
        userfs::check_watchable(&path)?;
        let exists = path.exists();
        Ok((path, exists))
    })?;
    let path_str = crate::escape::encode_path(&path).into_owned();
    if args.group.len() > 15 && args.group != store::GLOBAL {
        eprintln!(
            "notice: the kernel keeps only 15 bytes of a process name; group {} matches processes named {}",
            args.group,
            &args.group[..15]
        );
    }
    if !exists {
        eprintln!(
            "notice: {path_str} does not exist yet; it is watched from the moment it appears"
        );
    }
    match daemon(ctx)? {
        Some(mut c) => {
            let answer = c.call(&Request::Add {
                group: args.group,
                path: path_str,
                recursive: args.recursive,
                types: types.iter().map(|t| t.as_str().to_string()).collect(),
                size: size.map(|s| s.to_string()),
                mark: (mark != MarkKind::Auto).then(|| mark.as_str().to_string()),
            })?;
            if let Some(changed) = answer.get("changed").and_then(|c| c.as_str()) {
                // The daemon's text, made safe for the terminal.
                println!("{}", crate::error::escape_controls(changed));
            }
        }
        None => {
            let _lock = StoreLock::acquire(&ctx.fs, &ctx.config.store_path)?;
            let mut s = Store::load(&ctx.fs, &ctx.config.store_path)?;
            let opts = PathOptions {
                recursive: args.recursive,
                types,
                size,
                mark,
            };
            if let Some(old) = s.add(&args.group, &path_str, opts.clone()) {
                println!(
                    "{}",
                    crate::error::escape_controls(&store::describe_change(
                        &args.group,
                        &path_str,
                        &old,
                        &opts
                    ))
                );
            }
            s.save(&ctx.fs, &ctx.config.store_path)?;
            warn_unparsed(ctx, &s);
            eprintln!(
                "notice: no daemon is running; saved to {}",
                ctx.config.store_path.display()
            );
        }
    }
    Ok(())
}

pub fn remove(ctx: &Context, args: RemoveArgs) -> Result<()> {
    store::validate_group(&args.group)?;
    let cwd = std::env::current_dir()?;
    let raw = args.path.clone();
    let path = ctx.fs.run(move || {
        raw.as_deref()
            .map(|p| store::normalize_path(p, &cwd))
            .transpose()
    })?;
    let path_str = path
        .as_deref()
        .map(|p| crate::escape::encode_path(p).into_owned());
    match daemon(ctx)? {
        Some(mut c) => {
            c.call(&Request::Remove {
                group: args.group,
                path: path_str,
            })?;
        }
        None => {
            let _lock = StoreLock::acquire(&ctx.fs, &ctx.config.store_path)?;
            let mut s = Store::load(&ctx.fs, &ctx.config.store_path)?;
            warn_unparsed(ctx, &s);
            if !s.remove(&args.group, path_str.as_deref()) {
                return Err(match path_str {
                    Some(p) => Error::invalid(format!("group {} does not watch {p}", args.group)),
                    None => Error::invalid(format!("no group named {}", args.group)),
                }
                .into());
            }
            s.save(&ctx.fs, &ctx.config.store_path)?;
        }
    }
    Ok(())
}

/// One warning line per store line kept unread (file, line, why).
fn warn_unparsed(ctx: &Context, s: &Store) {
    for u in &s.unparsed {
        eprintln!("warning: {}", u.describe(&ctx.config.store_path));
    }
}

pub fn monitored(ctx: &Context, mode: crate::output::Mode) -> Result<()> {
    let s = Store::load(&ctx.fs, &ctx.config.store_path)?;
    warn_unparsed(ctx, &s);
    let lines: Vec<String> = s.lines().collect();
    let out = match mode.format {
        crate::output::Format::Json => lines.iter().map(|l| format!("{l}\n")).collect(),
        crate::output::Format::Text => crate::output::render_monitored(&lines, mode.color),
    };
    crate::output::print(&out)?;
    Ok(())
}
