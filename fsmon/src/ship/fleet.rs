//! `fsmon fleet query|changes|hosts`: the shipped events of every host,
//! read back from the stream.
//!
//! Reading starts where the question starts: an ordered consumer that
//! begins at the `-t` lower bound (`DeliverPolicy::ByStartTime`, less a
//! margin for clocks that differ between hosts and server), filtered by
//! subject to the host and group when they are exact. Events are then
//! filtered as `query` does (the same time range and path prefix code),
//! and merged in time order.
use std::{collections::HashMap, io::Write, time::Duration};

use anyhow::{Context as _, Result, bail};
use async_nats::jetstream::{self, consumer::DeliverPolicy};
use chrono::{DateTime, FixedOffset, Offset, Utc};
use clap::{Args, Subcommand};
use futures_util::StreamExt;

use super::{
    config::{ShipConfig, subject_token},
    nats,
};
use crate::{
    filters::{TimeFilter, TimeRange},
    logfile::{QueryOptions, parse_line},
    user::TargetUser,
};

/// How much earlier than the `-t` lower bound reading starts: the stream
/// stamps messages with the server's clock, events carry the host's.
const CLOCK_MARGIN: chrono::TimeDelta = chrono::TimeDelta::minutes(5);
/// A stream that sends nothing for this long while we expect messages is
/// an error, not a wait.
const IDLE_LIMIT: Duration = Duration::from_secs(30);

#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// Every host's events (JSONL with "host" and "group"), merged in time order
    Query(FleetQueryArgs),
    /// The latest event per host and path, newest first
    Changes(FleetQueryArgs),
    /// The hosts seen in the stream, with their last event time
    Hosts,
}

#[derive(Debug, Args)]
pub struct FleetQueryArgs {
    /// Group (default: every group)
    #[arg(value_name = "CMD")]
    pub group: Option<String>,
    #[arg(
        short = 't',
        long = "time",
        value_name = "FILTER",
        allow_hyphen_values = true,
        help = "Time filter as for `query` (>1h, >=2026-05-01, ...); a date without offset is UTC"
    )]
    pub time: Vec<String>,
    /// Only events at or below this path (whole components)
    #[arg(long, value_name = "PREFIX")]
    pub path: Option<String>,
    /// Only hosts matching this pattern (* and ? wildcards)
    #[arg(long, value_name = "PATTERN")]
    pub host: Option<String>,
    #[command(flatten)]
    pub output: crate::output::OutputArgs,
}

/// `*` and `?` glob match.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// A shipped event as read back.
struct Shipped {
    host: String,
    time: DateTime<FixedOffset>,
    path: String,
    /// Stream sequence: a stable order for equal times.
    seq: u64,
    payload: bytes::Bytes,
}

async fn connect(cfg: &ShipConfig, user: &TargetUser) -> Result<jetstream::Context> {
    let addrs = nats::server_addrs(cfg).map_err(anyhow::Error::msg)?;
    let opts = nats::connect_options(cfg, user)
        .await
        .map_err(anyhow::Error::msg)?;
    let client = opts
        .connect(addrs)
        .await
        .with_context(|| format!("cannot connect to NATS at {}", cfg.urls.join(", ")))?;
    Ok(jetstream::new(client))
}

/// Reads every message of `filter` from `deliver` on, calling `f` with each
/// until the stream has no more.
async fn read_stream(
    js: &jetstream::Context,
    cfg: &ShipConfig,
    filter: String,
    deliver: DeliverPolicy,
    mut f: impl FnMut(u64, bytes::Bytes),
) -> Result<()> {
    let stream = js
        .get_stream(&cfg.stream)
        .await
        .map_err(|e| anyhow::anyhow!("stream {}: {e}", cfg.stream))?;
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: filter,
            deliver_policy: deliver,
            ..Default::default()
        })
        .await
        .with_context(|| format!("reading stream {}", cfg.stream))?;
    if consumer.cached_info().num_pending == 0 {
        return Ok(());
    }
    let mut messages = consumer
        .messages()
        .await
        .with_context(|| format!("reading stream {}", cfg.stream))?;
    loop {
        let next = tokio::time::timeout(IDLE_LIMIT, messages.next())
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "stream {}: no answer for {} s",
                    cfg.stream,
                    IDLE_LIMIT.as_secs()
                )
            })?;
        let Some(msg) = next else { break };
        let msg = msg.map_err(|e| anyhow::anyhow!("stream {}: {e}", cfg.stream))?;
        let info = msg
            .info()
            .map_err(|e| anyhow::anyhow!("stream {}: {e}", cfg.stream))?;
        let (seq, pending) = (info.stream_sequence, info.pending);
        f(seq, msg.payload.clone());
        if pending == 0 {
            break;
        }
    }
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// The subject filter for a group and host pattern.
fn filter_subject(cfg: &ShipConfig, group: Option<&str>, host: Option<&str>) -> String {
    let host = match host {
        Some(h) if !h.contains(['*', '?']) => subject_token(h),
        _ => "*".into(),
    };
    let group = group.map_or_else(|| "*".into(), subject_token);
    format!("{}.{host}.{group}", cfg.subject_prefix)
}

/// `fleet query` and `fleet changes`.
pub fn query(
    cfg: &ShipConfig,
    user: &TargetUser,
    args: FleetQueryArgs,
    changes: bool,
    out: &mut impl Write,
) -> Result<()> {
    if let Some(g) = &args.group {
        crate::store::validate_group(g)?;
    }
    let filters = args
        .time
        .iter()
        .map(|t| TimeFilter::parse(t))
        .collect::<Result<Vec<_>, _>>()?;
    let range = TimeRange::new(&filters, Utc::now(), Utc.fix())?;
    let prefix = match &args.path {
        Some(p) => Some(
            crate::store::normalize_path(p, &std::env::current_dir()?)?
                .to_string_lossy()
                .into_owned(),
        ),
        None => None,
    };
    let opts = QueryOptions {
        range,
        path_prefix: prefix,
    };
    let deliver = match opts.range.since {
        Some(b) => DeliverPolicy::ByStartTime {
            start_time: b.at - CLOCK_MARGIN,
        },
        None => DeliverPolicy::All,
    };
    let filter = filter_subject(cfg, args.group.as_deref(), args.host.as_deref());
    let mut kept: Vec<Shipped> = Vec::new();
    let mut latest: HashMap<(String, String), Shipped> = HashMap::new();
    runtime()?.block_on(async {
        let js = connect(cfg, user).await?;
        read_stream(&js, cfg, filter, deliver, |seq, payload| {
            let Some(ev) = shipped_event(
                seq,
                payload,
                &opts,
                args.host.as_deref(),
                args.group.as_deref(),
            ) else {
                return;
            };
            if changes {
                let key = (ev.host.clone(), ev.path.clone());
                match latest.get(&key) {
                    Some(old) if (old.time, old.seq) > (ev.time, ev.seq) => {}
                    _ => {
                        latest.insert(key, ev);
                    }
                }
            } else {
                kept.push(ev);
            }
        })
        .await
    })?;
    if changes {
        kept = latest.into_values().collect();
        kept.sort_by_key(|e| std::cmp::Reverse((e.time, e.seq)));
    } else {
        kept.sort_by_key(|e| (e.time, e.seq));
    }
    let mut out = std::io::BufWriter::new(out);
    for ev in &kept {
        let w = out
            .write_all(&ev.payload)
            .and_then(|()| out.write_all(b"\n"));
        if let Err(e) = w {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(());
            }
            return Err(e.into());
        }
    }
    match out.flush() {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// Parses a shipped message and applies the filters.
fn shipped_event(
    seq: u64,
    payload: bytes::Bytes,
    opts: &QueryOptions,
    host_pattern: Option<&str>,
    group: Option<&str>,
) -> Option<Shipped> {
    #[derive(serde::Deserialize)]
    struct Origin<'a> {
        #[serde(borrow)]
        host: std::borrow::Cow<'a, str>,
        #[serde(borrow)]
        group: std::borrow::Cow<'a, str>,
    }
    let origin: Origin = serde_json::from_slice(&payload).ok()?;
    if host_pattern.is_some_and(|p| !glob_match(p, &origin.host))
        || group.is_some_and(|g| g != origin.group)
    {
        return None;
    }
    let (event, time) = parse_line(&payload)?;
    if !opts.keeps_event(&event, &time) {
        return None;
    }
    Some(Shipped {
        host: origin.host.into_owned(),
        time,
        path: event.path.into_owned(),
        seq,
        payload: payload.clone(),
    })
}

/// `fleet hosts`: one JSON line per host, newest last event first.
pub fn hosts(cfg: &ShipConfig, user: &TargetUser, out: &mut impl Write) -> Result<()> {
    #[derive(Default)]
    struct Host {
        last: Option<DateTime<FixedOffset>>,
        groups: std::collections::BTreeSet<String>,
    }
    let mut hosts: HashMap<String, Host> = HashMap::new();
    let filter = format!("{}.*.*", cfg.subject_prefix);
    runtime()?.block_on(async {
        let js = connect(cfg, user).await?;
        read_stream(
            &js,
            cfg,
            filter,
            DeliverPolicy::LastPerSubject,
            |_, payload| {
                #[derive(serde::Deserialize)]
                struct Origin {
                    host: String,
                    group: String,
                    time: String,
                }
                let Ok(o) = serde_json::from_slice::<Origin>(&payload) else {
                    return;
                };
                let Ok(t) = DateTime::parse_from_rfc3339(&o.time) else {
                    return;
                };
                let h = hosts.entry(o.host).or_default();
                h.groups.insert(o.group);
                if h.last.is_none_or(|l| l < t) {
                    h.last = Some(t);
                }
            },
        )
        .await
    })?;
    let mut list: Vec<(String, Host)> = hosts.into_iter().collect();
    list.sort_by(|a, b| b.1.last.cmp(&a.1.last).then_with(|| a.0.cmp(&b.0)));
    for (name, h) in list {
        let line = serde_json::json!({
            "host": name,
            "last_event": h.last.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, false)),
            "groups": h.groups,
        });
        if writeln!(out, "{line}").is_err() {
            break;
        }
    }
    Ok(())
}

/// The config's `[ship.nats]`, or an error saying it is missing.
pub fn require_config(cfg: Option<&ShipConfig>) -> Result<&ShipConfig> {
    match cfg {
        Some(c) => Ok(c),
        None => bail!(
            "no NATS server configured: add a [ship.nats] section with url = \"nats://...\" to the config"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("web-*", "web-01"));
        assert!(glob_match("*", "x"));
        assert!(glob_match("w?b", "web"));
        assert!(!glob_match("web-*", "db-01"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "axxbyy"));
    }
}
