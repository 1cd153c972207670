//! Command-line interface: arguments (clap) and the commands that do not
//! need the daemon's internals. The seed document is the contract for names,
//! flags and defaults.
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueHint};
use clap_complete::engine::{ArgValueCandidates, CompletionCandidate};

/// Completion candidates for a group argument: the groups in the store
/// (read as the user running the completion) and `_global`.
fn group_candidates() -> Vec<CompletionCandidate> {
    let mut groups = vec![crate::store::GLOBAL.to_string()];
    // The same context every command loads: the user's files read with the
    // user's credentials.
    let known = crate::commands::Context::load(None, false, true)
        .ok()
        .and_then(|ctx| crate::store::Store::load(&ctx.fs, &ctx.config.store_path).ok());
    if let Some(store) = known {
        groups.extend(store.groups.into_iter().map(|g| g.cmd));
    }
    groups.sort();
    groups.dedup();
    groups.into_iter().map(CompletionCandidate::new).collect()
}

/// Completion candidates for `--types`: the 14 names and `all`.
fn type_candidates() -> Vec<CompletionCandidate> {
    crate::event::EventType::ALL
        .iter()
        .map(|t| t.as_str())
        .chain(["all"])
        .map(CompletionCandidate::new)
        .collect()
}

const TIME_HELP: &str = "Time filter: >1h, <30m, >7d, >=2026-05-01, >=\"2026-05-01 10:00\", an RFC 3339 time, or now. \
Operators > >= < <=; give two for a range. Units s m h d w. A date without offset is in the log's zone";
const SIZE_HELP: &str =
    "Size filter: >=1MB, >1KB, <=10MB, =0 ... Units B, KB, MB, GB, TB are powers of 1024";

#[derive(Debug, Parser)]
#[command(
    name = "fsmon",
    version,
    about = "Linux file-change monitor: who changed this file, and through which chain of processes",
    long_about = None,
    propagate_version = true
)]
pub struct Cli {
    /// Config file (default: ~/.config/fsmon/fsmon.toml, or $FSMON_CONFIG)
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// System mode: the root service's daemon and places (/etc/fsmon, /var/lib/fsmon,
    /// /var/log/fsmon, /run/fsmon); also $FSMON_MODE=system, and root's own commands
    #[arg(long, global = true)]
    pub system: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the daemon in the foreground (needs root: sudo fsmon daemon)
    Daemon(Box<DaemonArgs>),
    /// Add a path to a group's monitoring list (live if the daemon runs)
    Add(AddArgs),
    /// Remove a path from a group, or the whole group
    Remove(RemoveArgs),
    /// List monitored paths: a table on a terminal, else one JSON line per group
    Monitored(crate::output::OutputArgs),
    /// Print a group's logged events, optionally filtered (readable on a terminal, else JSONL)
    Query(QueryArgs),
    /// Print the latest event per path, newest first
    Changes(QueryArgs),
    /// Trim a group's log by age and size
    Clean(CleanArgs),
    /// Follow the live events of a group, or of every group (Ctrl-C stops)
    Tail(TailArgs),
    /// Show the running daemon's status
    Health(crate::output::OutputArgs),
    /// Query the events every host shipped to NATS JetStream
    #[command(subcommand)]
    Fleet(crate::ship::fleet::FleetCommand),
    /// Write the config file with every setting commented out
    Init(InitArgs),
    /// Open a subshell in the log directory (-l) or the store directory (-m)
    Cd(CdArgs),
    /// Print the shell code that registers completions (bash, zsh, fish, elvish, powershell)
    Completions {
        #[arg(value_parser = ["bash", "zsh", "fish", "elvish", "powershell"])]
        shell: String,
    },
    /// Print the man page (roff), or write every page to a directory
    Man {
        /// Write fsmon.1 and one fsmon-<command>.1 per command into DIR
        #[arg(long, value_name = "DIR", value_hint = ValueHint::DirPath)]
        dir: Option<PathBuf>,
    },
    /// Internal: loads the eBPF programs for the daemon and pins them in
    /// bpffs (run by `fsmon daemon` itself; not for users).
    #[command(name = "__ebpf-loader", hide = true)]
    EbpfLoader {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        capacity: u32,
        #[arg(long)]
        debug: bool,
    },
}

#[derive(Debug, Args, Default)]
pub struct DaemonArgs {
    /// Debug output: event matching, cache stats, eBPF program logs
    #[arg(long)]
    pub debug: bool,
    /// Warn when free space on the log filesystem drops below this (10% or 500MB)
    #[arg(long, value_name = "THRESHOLD")]
    pub disk_min_free: Option<String>,
    /// fdatasync log files every N seconds (0: never)
    #[arg(long, value_name = "SECS")]
    pub sync_interval: Option<u64>,
    /// Serve Prometheus metrics over HTTP at ADDR/metrics
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<String>,
    /// Local time zone in timestamps (default UTC)
    #[arg(long)]
    pub local_time: bool,
    /// fanotify read buffer in bytes (4096..=1048576, default 32768)
    #[arg(long, value_name = "BYTES")]
    pub buffer_size: Option<usize>,
    /// Bound of the capture -> process queue in events (default: unbounded)
    #[arg(long, value_name = "EVENTS")]
    pub channel_capacity: Option<usize>,
    /// Per-subscriber buffer in events (default 4096)
    #[arg(long, value_name = "EVENTS")]
    pub subscribe_buf: Option<usize>,
    /// Directory handle cache capacity (default 100000)
    #[arg(long, value_name = "ENTRIES")]
    pub cache_dir_cap: Option<u64>,
    /// TTL of cached directories outside watched trees (default 3600)
    #[arg(long, value_name = "SECS")]
    pub cache_dir_ttl: Option<u64>,
    /// Last-known file size cache capacity (default 10000)
    #[arg(long, value_name = "ENTRIES")]
    pub cache_file_size: Option<u64>,
    /// Process cache TTL of the /proc tracker (default 600)
    #[arg(long, value_name = "SECS")]
    pub cache_proc_ttl: Option<u64>,
    /// Log cache statistics every N seconds (0 disables; default 60)
    #[arg(long, value_name = "SECS")]
    pub cache_stats_interval: Option<u64>,
    /// Process tracker: auto (eBPF, else /proc), ebpf, procfs
    #[arg(long, value_name = "KIND", value_parser = ["auto", "ebpf", "procfs"])]
    pub tracker: Option<String>,
    /// eBPF process maps capacity: live processes, and exited ones awaiting collection (each; default 65536)
    #[arg(long, value_name = "ENTRIES")]
    pub proc_map_capacity: Option<u32>,
    /// Keep exited processes this long for late events (default 5)
    #[arg(long, value_name = "SECS")]
    pub exit_grace: Option<u64>,
    /// Kernel event queue length, or "unlimited" (default: the system's)
    #[arg(long, value_name = "EVENTS")]
    pub queue_size: Option<String>,
    #[command(flatten)]
    pub ship: crate::ship::config::ShipArgs,
}

#[derive(Debug, Args)]
pub struct AddArgs {
    /// Group: a command name to track (it and its descendants), or _global
    #[arg(value_name = "CMD", add = ArgValueCandidates::new(group_candidates))]
    pub group: String,
    /// Path to watch (may not exist yet)
    #[arg(long, value_hint = ValueHint::DirPath)]
    pub path: String,
    /// Watch the whole tree below the path
    #[arg(short, long)]
    pub recursive: bool,
    /// Event types to log (repeatable; comma lists and "all" accepted; default: the 8 core types)
    #[arg(long = "types", value_name = "TYPE", add = ArgValueCandidates::new(type_candidates))]
    pub types: Vec<String>,
    #[arg(long, value_name = "FILTER", help = SIZE_HELP, value_hint = ValueHint::Other)]
    pub size: Option<String>,
    /// How the kernel watches the path: one mark on its filesystem, inode
    /// marks on each directory of the tree, or auto (a filesystem mark where
    /// the kernel allows one, else inode marks)
    #[arg(long, value_name = "KIND", default_value = "auto", value_parser = ["auto", "filesystem", "inode"])]
    pub mark: String,
}

#[derive(Debug, Args)]
pub struct RemoveArgs {
    #[arg(value_name = "CMD", add = ArgValueCandidates::new(group_candidates))]
    pub group: String,
    /// Remove only this path (default: the whole group)
    #[arg(long, value_hint = ValueHint::AnyPath)]
    pub path: Option<String>,
}

#[derive(Debug, Args)]
pub struct QueryArgs {
    #[arg(value_name = "CMD", add = ArgValueCandidates::new(group_candidates))]
    pub group: String,
    #[arg(short = 't', long = "time", value_name = "FILTER", help = TIME_HELP, allow_hyphen_values = true, value_hint = ValueHint::Other)]
    pub time: Vec<String>,
    /// Only events after TIME: the same as -t '>TIME' (1h, 2026-05-01, ...)
    #[arg(long, value_name = "TIME", value_hint = ValueHint::Other)]
    pub since: Option<String>,
    /// Only events before TIME: the same as -t '<TIME'
    #[arg(long, value_name = "TIME", value_hint = ValueHint::Other)]
    pub until: Option<String>,
    /// Only events at or below this path (whole components)
    #[arg(long, value_name = "PREFIX", value_hint = ValueHint::AnyPath)]
    pub path: Option<String>,
    #[command(flatten)]
    pub out: crate::output::OutputArgs,
}

#[derive(Debug, Args)]
pub struct TailArgs {
    /// The group to follow (default: every group)
    #[arg(value_name = "CMD", add = ArgValueCandidates::new(group_candidates))]
    pub group: Option<String>,
    #[command(flatten)]
    pub out: crate::output::OutputArgs,
}

impl QueryArgs {
    /// Every time filter, `--since`/`--until` spelled as `-t` filters.
    pub fn time_filters(&self) -> Vec<String> {
        let mut all = self.time.clone();
        all.extend(self.since.iter().map(|t| format!(">{t}")));
        all.extend(self.until.iter().map(|t| format!("<{t}")));
        all
    }
}

#[derive(Debug, Args)]
pub struct CleanArgs {
    #[arg(value_name = "CMD", add = ArgValueCandidates::new(group_candidates))]
    pub group: String,
    /// Keep events matching this time filter (default: >{keep_days}d from the config)
    #[arg(long, value_name = "FILTER", value_hint = ValueHint::Other)]
    pub time: Option<String>,
    #[arg(
        long,
        value_name = "LIMIT",
        value_hint = ValueHint::Other,
        help = "Trim the log to this size, oldest lines first (default from the config: >=1GB). Units are powers of 1024"
    )]
    pub size: Option<String>,
    /// Show what would be removed, change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Also remove lines not yet shipped to NATS (kept by default)
    #[arg(long)]
    pub drop_unshipped: bool,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Also write a systemd unit and run systemctl daemon-reload (needs root)
    #[arg(long)]
    pub service: bool,
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct CdArgs {
    /// The log directory
    #[arg(short = 'l', long = "log")]
    pub log: bool,
    /// The monitored store directory
    #[arg(short = 'm', long = "monitored")]
    pub monitored: bool,
}
