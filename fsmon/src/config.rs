//! `~/.config/fsmon/fsmon.toml`: infrastructure settings.
//!
//! Priority is CLI flag > file > default. An absent file means defaults. An
//! unknown key or a bad value is an error that names the key and the file.
//! File output is on unless `[logging] enabled = false`. An explicit config
//! (`--config`, `$FSMON_CONFIG`) must exist.
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

use crate::{
    error::{Error, Result},
    filters::SizeFilter,
    user::TargetUser,
    userfs::UserFs,
};

pub const DEFAULT_CONFIG: &str = "~/.config/fsmon/fsmon.toml";
pub const DEFAULT_STORE: &str = "~/.local/share/fsmon/monitored.jsonl";
pub const DEFAULT_LOG_DIR: &str = "~/.local/state/fsmon";
/// In a directory only root can create entries in (see `sockpath`).
pub const DEFAULT_SOCKET: &str = "/run/fsmon/fsmon-<UID>.sock";

/// The file as written: every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub monitored: Option<MonitoredSection>,
    pub logging: Option<LoggingSection>,
    pub socket: Option<SocketSection>,
    pub cache: Option<CacheSection>,
    pub metrics: Option<MetricsSection>,
    pub process: Option<ProcessSection>,
    pub fanotify: Option<FanotifySection>,
    pub ship: Option<crate::ship::config::ShipSection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitoredSection {
    pub path: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingSection {
    pub enabled: Option<bool>,
    pub path: Option<String>,
    pub keep_days: Option<u32>,
    pub size: Option<String>,
    pub disk_min_free: Option<String>,
    pub sync_interval_secs: Option<u64>,
    pub local_time: Option<bool>,
    pub retention_interval_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SocketSection {
    pub path: Option<String>,
    pub max_clients: Option<usize>,
    pub max_clients_per_uid: Option<usize>,
    pub timeout_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSection {
    pub dir_capacity: Option<u64>,
    pub dir_ttl_secs: Option<u64>,
    pub file_size_capacity: Option<u64>,
    pub proc_ttl_secs: Option<u64>,
    pub stats_interval_secs: Option<u64>,
    pub buffer_size: Option<usize>,
    pub channel_capacity: Option<usize>,
    pub subscribe_buf: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    pub listen: Option<String>,
}

/// fsmon addition: the process tracker.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessSection {
    /// "auto" (eBPF, falling back to /proc), "ebpf" (fail if eBPF cannot
    /// load) or "procfs".
    pub tracker: Option<String>,
    pub map_capacity: Option<u32>,
    pub exit_grace_secs: Option<u64>,
}

/// fsmon addition: the kernel queue.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FanotifySection {
    /// Events the kernel queues before it overflows; 0 = unlimited.
    pub queue_size: Option<u32>,
}

/// Bounds on the fanotify read buffer (seed: min 4096, max 1048576).
pub const BUFFER_MIN: usize = 4096;
pub const BUFFER_MAX: usize = 1_048_576;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrackerChoice {
    Auto,
    Ebpf,
    Procfs,
}

/// Free-space threshold for the disk guard.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DiskMinFree {
    Percent(f64),
    Bytes(u64),
}

impl DiskMinFree {
    pub fn parse(s: &str) -> Result<Self> {
        let t = s.trim();
        if let Some(p) = t.strip_suffix('%') {
            let v: f64 = p.trim().parse().map_err(|_| bad_disk(s))?;
            if !(0.0..=100.0).contains(&v) {
                return Err(bad_disk(s));
            }
            return Ok(DiskMinFree::Percent(v));
        }
        let f = SizeFilter::parse(&format!(">={t}")).map_err(|_| bad_disk(s))?;
        Ok(DiskMinFree::Bytes(f.bytes()))
    }
}

fn bad_disk(s: &str) -> Error {
    Error::invalid(format!(
        "bad disk_min_free '{s}': expected a percentage like 10% or a size like 500MB"
    ))
}

/// Everything resolved: paths expanded for the target user, defaults applied.
#[derive(Debug, Clone)]
pub struct Config {
    pub file: Option<PathBuf>,
    pub store_path: PathBuf,
    /// None: file output disabled.
    pub log_dir: Option<PathBuf>,
    pub keep_days: u32,
    pub clean_size: SizeFilter,
    pub disk_min_free: Option<DiskMinFree>,
    pub sync_interval: Option<Duration>,
    pub local_time: bool,
    /// How often the daemon applies keep_days and size (None: never).
    pub retention_interval: Option<Duration>,
    pub socket_path: PathBuf,
    /// Connections the daemon serves at once, in total and per user.
    pub client_limits: crate::clients::Limits,
    /// How long the CLI waits to connect and for each answer.
    pub socket_timeout: Duration,
    pub dir_capacity: u64,
    pub dir_ttl: Duration,
    pub file_size_capacity: u64,
    pub proc_ttl: Duration,
    pub stats_interval: Option<Duration>,
    pub buffer_size: usize,
    /// Bound of the capture -> process queue, in events (also bounded in
    /// bytes: `pipeline::queue::MAX_BYTES`).
    pub channel_capacity: usize,
    pub subscribe_buf: usize,
    pub metrics_listen: Option<String>,
    pub tracker: TrackerChoice,
    pub map_capacity: u32,
    pub exit_grace: Duration,
    /// None: the system default (fs.fanotify.max_queued_events); Some(0): unlimited.
    pub queue_size: Option<u32>,
    /// `[ship.nats]`: None = no shipping.
    pub ship: Option<crate::ship::ShipConfig>,
}

impl Config {
    /// Where the config file is: `--config`, else `$FSMON_CONFIG`, else the
    /// user's `~/.config/fsmon/fsmon.toml` (`$XDG_CONFIG_HOME`, or
    /// `/etc/fsmon/fsmon.toml` in system mode). The flag says whether the
    /// place was given explicitly (then it must exist).
    pub fn locate(user: &TargetUser, explicit: Option<&Path>) -> (PathBuf, bool) {
        if let Some(p) = explicit {
            return (p.to_path_buf(), true);
        }
        if let Some(p) = std::env::var_os("FSMON_CONFIG").filter(|p| !p.is_empty()) {
            return (PathBuf::from(p), true);
        }
        (user.default_config(), false)
    }

    /// Loads the config found by [`locate`](Self::locate): an absent default
    /// file means defaults, an absent explicit one is an error.
    pub fn load_located(fs: &UserFs, path: &Path, explicit: bool) -> Result<Self> {
        if explicit {
            let p = path.to_path_buf();
            // Only "no such file": a file the user may not read is refused
            // by the read below, as such.
            let absent = fs.run(move || {
                std::fs::metadata(&p).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
            });
            if absent {
                return Err(Error::invalid(format!(
                    "config file {} does not exist (given by --config or FSMON_CONFIG; `fsmon init` writes one)",
                    path.display()
                )));
            }
        }
        Self::load_as(fs, path)
    }

    /// Loads the config for `user` from `path` (absent file: defaults),
    /// read with the caller's credentials.
    pub fn load(user: &TargetUser, path: &Path) -> Result<Self> {
        Self::load_as(&UserFs::direct(user.clone()), path)
    }

    /// Loads the config, read with the user's credentials: a symlink to a
    /// file the user may not read is refused by the kernel (EACCES).
    pub fn load_as(fs: &UserFs, path: &Path) -> Result<Self> {
        let (file, text_present) = match fs.read_to_string(path)? {
            Some(text) => (parse_file(&text, path)?, true),
            None => (ConfigFile::default(), false),
        };
        Self::resolve(fs.user(), file, text_present.then(|| path.to_path_buf()))
    }

    fn resolve(user: &TargetUser, f: ConfigFile, file: Option<PathBuf>) -> Result<Self> {
        let at = |key: &str, msg: String| -> Error {
            match &file {
                Some(p) => Error::invalid(format!("{}: {key}: {msg}", p.display())),
                None => Error::invalid(format!("{key}: {msg}")),
            }
        };
        // File output is on unless `[logging] enabled = false`. (The seed
        // turned it off for a file without a [logging] section: a config
        // that set only [socket] silently lost every log.)
        let logging = f.logging.unwrap_or_default();
        let logging_enabled = logging.enabled.unwrap_or(true);
        let cache = f.cache.unwrap_or_default();
        let process = f.process.unwrap_or_default();

        let clean_size = match &logging.size {
            Some(s) => SizeFilter::parse(s).map_err(|e| at("logging.size", e.to_string()))?,
            None => SizeFilter::parse(">=1GB").expect("valid default"),
        };
        let disk_min_free = match &logging.disk_min_free {
            Some(s) => Some(
                DiskMinFree::parse(s).map_err(|e| at("logging.disk_min_free", e.to_string()))?,
            ),
            None => None,
        };
        let buffer_size = cache.buffer_size.unwrap_or(32_768);
        if !(BUFFER_MIN..=BUFFER_MAX).contains(&buffer_size) {
            return Err(at(
                "cache.buffer_size",
                format!("{buffer_size} is out of range ({BUFFER_MIN}..={BUFFER_MAX})"),
            ));
        }
        let positive = |key: &str, v: Option<u64>, default: u64| -> Result<u64> {
            match v {
                Some(0) => Err(at(key, "must be greater than 0".into())),
                Some(v) => Ok(v),
                None => Ok(default),
            }
        };
        let tracker = match process.tracker.as_deref() {
            None | Some("auto") => TrackerChoice::Auto,
            Some("ebpf") => TrackerChoice::Ebpf,
            Some("procfs") => TrackerChoice::Procfs,
            Some(other) => {
                return Err(at(
                    "process.tracker",
                    format!("'{other}' is not one of auto, ebpf, procfs"),
                ));
            }
        };
        let map_capacity = process
            .map_capacity
            .unwrap_or(fsmon_common::DEFAULT_PROC_MAP_CAPACITY);
        let range = crate::process::MIN_MAP_CAPACITY..=crate::process::MAX_MAP_CAPACITY;
        if !range.contains(&map_capacity) {
            return Err(at(
                "process.map_capacity",
                format!(
                    "{map_capacity} is out of range ({}..={})",
                    range.start(),
                    range.end()
                ),
            ));
        }
        let channel_capacity = positive(
            "cache.channel_capacity",
            cache.channel_capacity.map(|v| v as u64),
            crate::pipeline::queue::DEFAULT_EVENTS as u64,
        )? as usize;
        let subscribe_buf = positive(
            "cache.subscribe_buf",
            cache.subscribe_buf.map(|v| v as u64),
            4096,
        )? as usize;
        if let Some(listen) = f.metrics.as_ref().and_then(|m| m.listen.as_deref()) {
            listen.parse::<std::net::SocketAddr>().map_err(|_| {
                at(
                    "metrics.listen",
                    format!("'{listen}' is not an address like 127.0.0.1:9845"),
                )
            })?;
        }
        let socket = f.socket.unwrap_or_default();
        let client_limits = crate::clients::Limits {
            total: positive(
                "socket.max_clients",
                socket.max_clients.map(|v| v as u64),
                crate::clients::DEFAULT_MAX_CLIENTS as u64,
            )? as usize,
            per_uid: positive(
                "socket.max_clients_per_uid",
                socket.max_clients_per_uid.map(|v| v as u64),
                crate::clients::DEFAULT_MAX_CLIENTS_PER_UID as u64,
            )? as usize,
        };
        let socket_timeout = Duration::from_secs(positive(
            "socket.timeout_secs",
            socket.timeout_secs,
            crate::control::DEFAULT_TIMEOUT.as_secs(),
        )?);
        let ship = crate::ship::config::resolve(f.ship, user, &at)?;
        Ok(Config {
            ship,
            store_path: match f.monitored.and_then(|m| m.path) {
                Some(p) => user.expand(&p),
                None => user.default_store(),
            },
            log_dir: logging_enabled.then(|| match logging.path.as_deref() {
                Some(p) => user.expand(p),
                None => user.default_log_dir(),
            }),
            keep_days: logging.keep_days.unwrap_or(30),
            clean_size,
            disk_min_free,
            sync_interval: logging
                .sync_interval_secs
                .filter(|&s| s > 0)
                .map(Duration::from_secs),
            local_time: logging.local_time.unwrap_or(false),
            retention_interval: Some(logging.retention_interval_secs.unwrap_or(300))
                .filter(|&s| s > 0)
                .map(Duration::from_secs),
            socket_path: match socket.path.as_deref() {
                Some(p) => user.expand(p),
                None => user.default_socket(),
            },
            client_limits,
            socket_timeout,
            dir_capacity: positive("cache.dir_capacity", cache.dir_capacity, 100_000)?,
            dir_ttl: Duration::from_secs(positive("cache.dir_ttl_secs", cache.dir_ttl_secs, 3600)?),
            file_size_capacity: positive(
                "cache.file_size_capacity",
                cache.file_size_capacity,
                10_000,
            )?,
            proc_ttl: Duration::from_secs(positive(
                "cache.proc_ttl_secs",
                cache.proc_ttl_secs,
                600,
            )?),
            stats_interval: match cache.stats_interval_secs.unwrap_or(60) {
                0 => None,
                s => Some(Duration::from_secs(s)),
            },
            buffer_size,
            channel_capacity,
            subscribe_buf,
            metrics_listen: f.metrics.and_then(|m| m.listen),
            tracker,
            map_capacity,
            exit_grace: Duration::from_secs(positive(
                "process.exit_grace_secs",
                process.exit_grace_secs,
                5,
            )?),
            queue_size: f.fanotify.and_then(|q| q.queue_size),
            file,
        })
    }
}

/// Parses the TOML text; errors become one line: file, line, key, problem.
/// Never the text itself: what the parser quotes is taken out, and a key is
/// named only when its line reads `key = ...` with a plain TOML key (a line
/// of a file that is not TOML at all, such as a secret the config was
/// linked to, names no key).
pub fn parse_file(text: &str, path: &Path) -> Result<ConfigFile> {
    let describe = |message: &str, span: Option<std::ops::Range<usize>>| {
        let mut msg = crate::error::redact_quoted(message.trim()).replace('\n', " ");
        let mut where_ = String::new();
        if let Some(span) = span {
            let before = &text[..span.start.min(text.len())];
            let line_no = before.matches('\n').count() + 1;
            where_ = format!(" line {line_no}");
            let line = text.lines().nth(line_no - 1).unwrap_or("").trim();
            let table = before
                .lines()
                .rev()
                .find_map(|l| l.trim().strip_prefix('[').and_then(|l| l.strip_suffix(']')))
                .unwrap_or("");
            let bare_key = |k: &str| {
                !k.is_empty()
                    && k.len() <= 64
                    && k.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
            };
            if let Some((key, _)) = line.split_once('=') {
                let key = key.trim();
                if bare_key(key) && (table.is_empty() || bare_key(table)) && !msg.contains(key) {
                    let full = if table.is_empty() {
                        key.to_string()
                    } else {
                        format!("{table}.{key}")
                    };
                    msg = format!("key `{full}`: {msg}");
                }
            }
        }
        Error::invalid(format!("{}:{where_}: {msg}", path.display()))
    };
    toml::from_str(text).map_err(|e| describe(e.message(), e.span()))
}

/// The text `fsmon init` writes: every setting present but commented out,
/// showing its default. `[logging]` stays active: file output is on.
pub const INIT_TEMPLATE: &str = r#"# fsmon configuration. Every setting below shows its default; uncomment to change.
# A setting marked "not set by default" shows an example value instead.
# Priority: command-line flag > this file > built-in default.

[monitored]
# Where `fsmon add` stores the monitored paths (JSONL).
# path = "~/.local/share/fsmon/monitored.jsonl"

[logging]
# enabled = true              # false: no log files (the live stream and metrics only)
# path = "~/.local/state/fsmon"
# keep_days = 30              # the daemon (and `fsmon clean`) keep this many days
# size = ">=1GB"              # budget per group: live log + its zstd archives
# retention_interval_secs = 300 # how often the daemon applies keep_days and size (0 = never)
# disk_min_free = "10%"       # not set by default (no warning); warn when free space on the log filesystem drops below (percent or size)
# sync_interval_secs = 0      # fdatasync logs every N seconds (0 = never)
# local_time = false          # timestamps in local time instead of UTC

[socket]
# The default directory is root's, so no other user can take the socket's
# name; a path set here must be in a directory only root and you can write.
# path = "/run/fsmon/fsmon-<UID>.sock"
# max_clients = 64            # connections the daemon serves at once
# max_clients_per_uid = 16    # of which from one user
# timeout_secs = 30           # how long the CLI waits for the daemon

[cache]
# dir_capacity = 100000       # directory handle cache entries
# dir_ttl_secs = 3600         # TTL for directories outside watched trees
# file_size_capacity = 10000  # last-known file sizes (for DELETE and DELETE_SELF)
# proc_ttl_secs = 600         # /proc tracker cache TTL (fallback tracker only)
# stats_interval_secs = 60    # log cache statistics every N seconds (0 = never)
# buffer_size = 32768         # fanotify read buffer (4096..=1048576)
# channel_capacity = 8192     # bound of the capture -> process queue, in events (and 1 MiB); a storm waits in the kernel queue
# subscribe_buf = 4096        # per-subscriber buffer, in events

[metrics]
# listen = "127.0.0.1:9845"   # not set by default (off); serve Prometheus metrics over HTTP at /metrics

[process]
# tracker = "auto"            # auto (eBPF, else /proc), ebpf, procfs
# map_capacity = 65536        # eBPF maps: live processes, and exited ones (each)
# exit_grace_secs = 5         # keep exited processes this long for late events

[fanotify]
# queue_size = 16384          # not set by default (the system's fs.fanotify.max_queued_events); kernel event queue length, 0 = unlimited
"#;

/// [`INIT_TEMPLATE`] with the commented-out `[ship.nats]` section.
pub fn init_template() -> String {
    format!("{INIT_TEMPLATE}{}", crate::ship::config::INIT_TEMPLATE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> TargetUser {
        TargetUser {
            uid: 1000,
            gid: 1000,
            name: "u".into(),
            home: "/home/u".into(),
            places: crate::user::Places::Passwd,
        }
    }

    fn load_text(text: &str) -> Result<Config> {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("fsmon.toml");
        std::fs::write(&p, text).unwrap();
        Config::load(&user(), &p)
    }

    #[test]
    fn absent_file_is_defaults_with_logging_on() {
        let c = Config::load(&user(), Path::new("/nonexistent/fsmon.toml")).unwrap();
        assert_eq!(c.log_dir, Some(PathBuf::from("/home/u/.local/state/fsmon")));
        assert_eq!(c.socket_path, PathBuf::from("/run/fsmon/fsmon-1000.sock"));
        assert_eq!(c.client_limits.total, crate::clients::DEFAULT_MAX_CLIENTS);
        assert_eq!(c.socket_timeout, crate::control::DEFAULT_TIMEOUT);
        assert_eq!(c.buffer_size, 32768);
        assert_eq!(c.channel_capacity, 8192, "bounded by default");
        assert_eq!(c.sync_interval, None, "sync is off by default");
        assert!(c.file.is_none());
    }

    /// The settings the template shows with an example value, because they
    /// are not set by default; each with its field in `Config` (None there).
    const TEMPLATE_EXAMPLES: [&str; 3] = ["disk_min_free", "listen", "queue_size"];

    /// Every commented `# key = value` line of the template, uncommented and
    /// stripped of its trailing comment: the values the template claims
    /// are the defaults. Example-only settings are left out (and checked).
    fn template_values_uncommented() -> (String, usize) {
        let mut text = String::new();
        let mut keys = 0;
        for line in INIT_TEMPLATE.lines() {
            let t = line.trim();
            let Some(setting) = t.strip_prefix("# ").filter(|s| {
                s.split_once(" = ")
                    .is_some_and(|(k, _)| k.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
            }) else {
                // Section headers stay; prose comments go.
                if t.starts_with('[') {
                    text.push_str(t);
                    text.push('\n');
                }
                continue;
            };
            let key = setting.split_once(" = ").unwrap().0;
            let is_example = t.contains("not set by default");
            assert_eq!(
                is_example,
                TEMPLATE_EXAMPLES.contains(&key),
                "template line for {key}: a setting that is not set by default must say so, \
                 and only those: {line}"
            );
            if is_example {
                continue;
            }
            // No value in the template contains '#'.
            let value = setting.split_once(" #").map_or(setting, |(v, _)| v);
            text.push_str(value.trim_end());
            text.push('\n');
            keys += 1;
        }
        (text, keys)
    }

    #[test]
    fn template_shows_every_default() {
        let (text, keys) = template_values_uncommented();
        let absent = Config::load(&user(), Path::new("/nonexistent/fsmon.toml")).unwrap();
        // The template's settings are the real defaults, key by key: a
        // changed default or a wrong value in the template fails here.
        let mut shown = load_text(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        shown.file = None;
        assert_eq!(
            format!("{shown:#?}"),
            format!("{absent:#?}"),
            "the template's values differ from the defaults:\n{text}"
        );
        // Every setting is there: 26 in the template, 3 of them examples.
        assert_eq!(keys, 23, "{text}");
        // The example-only settings really are off by default.
        assert!(absent.disk_min_free.is_none());
        assert!(absent.metrics_listen.is_none());
        assert!(absent.queue_size.is_none());
        // And the template as written (all commented) is the defaults too,
        // with [logging] active.
        let mut as_written = load_text(INIT_TEMPLATE).unwrap();
        as_written.file = None;
        assert_eq!(format!("{as_written:?}"), format!("{absent:?}"));
    }

    #[test]
    fn file_output_is_off_only_when_disabled() {
        // A config with only [socket] (or [cache]) keeps the logs.
        let c = load_text("[socket]\nmax_clients = 8\n").unwrap();
        assert_eq!(c.log_dir, Some(PathBuf::from("/home/u/.local/state/fsmon")));
        let c = load_text("[cache]\nbuffer_size = 65536\n").unwrap();
        assert!(c.log_dir.is_some());
        assert_eq!(c.buffer_size, 65536);
        let c = load_text("[logging]\nenabled = false\n").unwrap();
        assert_eq!(c.log_dir, None);
    }

    #[test]
    fn explicit_config_must_exist() {
        let fs = UserFs::direct(user());
        let e = Config::load_located(&fs, Path::new("/nonexistent/fsmon.toml"), true)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/nonexistent/fsmon.toml") && e.contains("does not exist"),
            "{e}"
        );
        assert!(!e.contains('\n'));
        assert!(Config::load_located(&fs, Path::new("/nonexistent/fsmon.toml"), false).is_ok());
    }

    #[test]
    fn unknown_key_names_key_and_file() {
        let e = load_text("[cache]\nbufer_size = 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("bufer_size") && e.contains("fsmon.toml"), "{e}");
        assert!(!e.contains('\n'), "one line: {e}");
    }

    #[test]
    fn bad_values_name_key() {
        for (text, key) in [
            ("[cache]\nbuffer_size = \"big\"\n", "buffer_size"),
            ("[cache]\nbuffer_size = 10\n", "cache.buffer_size"),
            ("[logging]\nsize = \"huge\"\n", "logging.size"),
            (
                "[logging]\ndisk_min_free = \"150%\"\n",
                "logging.disk_min_free",
            ),
            ("[process]\nmap_capacity = 1\n", "process.map_capacity"),
            ("[process]\ntracker = \"magic\"\n", "process.tracker"),
            ("[metrics]\nlisten = \"nowhere\"\n", "metrics.listen"),
            ("[cache]\ndir_capacity = 0\n", "cache.dir_capacity"),
            ("[socket]\nmax_clients = 0\n", "socket.max_clients"),
            ("[socket]\ntimeout_secs = 0\n", "socket.timeout_secs"),
            ("[ship.nats]\nhost = \"h\"\n", "ship.nats.url"),
            (
                "[ship.nats]\nurl = \"nats://a:1\"\nreplicas = 9\n",
                "ship.nats.replicas",
            ),
            (
                "[ship.nats]\nurl = \"nats://a:1\"\nsubject_prefix = \"a.*\"\n",
                "ship.nats.subject_prefix",
            ),
            (
                "[ship.nats]\nurl = \"nats://a:1\"\ntoken = \"t\"\nuser = \"u\"\n",
                "ship.nats",
            ),
            ("[ship.nats]\nurl = \"nats://a:1\"\nsurl = 1\n", "surl"),
        ] {
            let e = load_text(text).unwrap_err().to_string();
            assert!(e.contains(key) && e.contains("fsmon.toml"), "{text:?}: {e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
    }

    #[test]
    fn errors_never_quote_the_file() {
        for text in [
            "root:$6$s3cretHASH:19000:0:99999:7:::\n",
            "[cache]\nbuffer_size = \"s3cretHASH\"\n",
            "[logging]\nkeep_days = 's3cretHASH'\n",
            "s3cretHASH\n",
            "[s3cretHASH:x]\n",
            "[cache]\ndir_capacity = 918273645\nbuffer_size = \"x\"\n",
        ] {
            let e = load_text(text).unwrap_err().to_string();
            assert!(
                !e.contains("s3cretHASH") && !e.contains("918273645"),
                "{text:?}: {e}"
            );
            assert!(e.contains("fsmon.toml") && e.contains("line"), "{e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
    }

    #[test]
    fn ship_section_resolves() {
        let c = load_text(
            "[ship.nats]\nurls = [\"nats://a:4222\", \"nats://b:4222\"]\nhost = \"web.01\"\ncreds_file = \"~/x.creds\"\n",
        )
        .unwrap();
        let s = c.ship.unwrap();
        assert_eq!(s.urls.len(), 2);
        assert_eq!(s.stream, "FSMON");
        assert_eq!(
            s.auth,
            crate::ship::config::NatsAuth::CredsFile("/home/u/x.creds".into())
        );
        assert_eq!(crate::ship::config::subject_token(&s.host), "web_01");
        let off = load_text("[ship.nats]\nenabled = false\n").unwrap();
        assert!(off.ship.is_none());
    }

    #[test]
    fn the_whole_template_with_shipping_parses_and_ships_nothing() {
        let c = load_text(&init_template()).unwrap();
        assert!(c.log_dir.is_some(), "template keeps [logging] active");
        assert!(c.ship.is_none(), "shipping stays off");
    }

    #[test]
    fn disk_min_free_forms() {
        assert_eq!(
            DiskMinFree::parse("10%").unwrap(),
            DiskMinFree::Percent(10.0)
        );
        assert_eq!(
            DiskMinFree::parse("1GB").unwrap(),
            DiskMinFree::Bytes(1 << 30)
        );
        assert!(DiskMinFree::parse("-3%").is_err());
        assert!(DiskMinFree::parse("lots").is_err());
    }
}
