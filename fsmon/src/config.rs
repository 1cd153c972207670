//! `~/.config/fsmon/fsmon.toml`: infrastructure settings.
//!
//! Priority is CLI flag > file > default. An absent file means defaults. An
//! unknown key or a bad value is an error that names the key and the file.
//! As the seed says, file output is on unless a config file exists without a
//! `[logging]` section.
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

use crate::{
    error::{Error, Result},
    filters::SizeFilter,
    user::TargetUser,
};

pub const DEFAULT_CONFIG: &str = "~/.config/fsmon/fsmon.toml";
pub const DEFAULT_STORE: &str = "~/.local/share/fsmon/monitored.jsonl";
pub const DEFAULT_LOG_DIR: &str = "~/.local/state/fsmon";
pub const DEFAULT_SOCKET: &str = "/tmp/fsmon-<UID>.sock";

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
    pub path: Option<String>,
    pub keep_days: Option<u32>,
    pub size: Option<String>,
    pub disk_min_free: Option<String>,
    pub sync_interval_secs: Option<u64>,
    pub local_time: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SocketSection {
    pub path: Option<String>,
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
    pub socket_path: PathBuf,
    pub dir_capacity: u64,
    pub dir_ttl: Duration,
    pub file_size_capacity: u64,
    pub proc_ttl: Duration,
    pub stats_interval: Option<Duration>,
    pub buffer_size: usize,
    /// None: unbounded.
    pub channel_capacity: Option<usize>,
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
    /// user's `~/.config/fsmon/fsmon.toml`.
    pub fn locate(user: &TargetUser, explicit: Option<&Path>) -> PathBuf {
        if let Some(p) = explicit {
            return p.to_path_buf();
        }
        if let Some(p) = std::env::var_os("FSMON_CONFIG") {
            return PathBuf::from(p);
        }
        user.expand(DEFAULT_CONFIG)
    }

    /// Loads the config for `user` from `path` (absent file: defaults).
    pub fn load(user: &TargetUser, path: &Path) -> Result<Self> {
        let (file, text_present) = match std::fs::read_to_string(path) {
            Ok(text) => (parse_file(&text, path)?, true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (ConfigFile::default(), false),
            Err(e) => return Err(Error::io(path, e)),
        };
        Self::resolve(user, file, text_present.then(|| path.to_path_buf()))
    }

    fn resolve(user: &TargetUser, f: ConfigFile, file: Option<PathBuf>) -> Result<Self> {
        let at = |key: &str, msg: String| -> Error {
            match &file {
                Some(p) => Error::invalid(format!("{}: {key}: {msg}", p.display())),
                None => Error::invalid(format!("{key}: {msg}")),
            }
        };
        // Seed: "File output is on by default (remove this section to disable)".
        let logging_enabled = file.is_none() || f.logging.is_some();
        let logging = f.logging.unwrap_or_default();
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
        let channel_capacity = match cache.channel_capacity {
            Some(0) => {
                return Err(at(
                    "cache.channel_capacity",
                    "must be greater than 0 (omit it for unbounded)".into(),
                ));
            }
            other => other,
        };
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
        let ship = crate::ship::config::resolve(f.ship, user, &at)?;
        Ok(Config {
            ship,
            store_path: user.expand(
                f.monitored
                    .and_then(|m| m.path)
                    .as_deref()
                    .unwrap_or(DEFAULT_STORE),
            ),
            log_dir: logging_enabled
                .then(|| user.expand(logging.path.as_deref().unwrap_or(DEFAULT_LOG_DIR))),
            keep_days: logging.keep_days.unwrap_or(30),
            clean_size,
            disk_min_free,
            sync_interval: logging
                .sync_interval_secs
                .filter(|&s| s > 0)
                .map(Duration::from_secs),
            local_time: logging.local_time.unwrap_or(false),
            socket_path: user.expand(
                f.socket
                    .and_then(|s| s.path)
                    .as_deref()
                    .unwrap_or(DEFAULT_SOCKET),
            ),
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
pub fn parse_file(text: &str, path: &Path) -> Result<ConfigFile> {
    toml::from_str(text).map_err(|e| {
        let mut msg = e.message().trim().replace('\n', " ");
        let mut where_ = String::new();
        if let Some(span) = e.span() {
            let line_no = text[..span.start.min(text.len())].matches('\n').count() + 1;
            let line = text.lines().nth(line_no - 1).unwrap_or("").trim();
            let table = text[..span.start.min(text.len())]
                .lines()
                .rev()
                .find_map(|l| l.trim().strip_prefix('[').and_then(|l| l.strip_suffix(']')))
                .unwrap_or("");
            let key = line.split('=').next().unwrap_or("").trim();
            where_ = format!(" line {line_no}");
            if !key.is_empty() && !key.starts_with('[') && !msg.contains(key) {
                let full = if table.is_empty() {
                    key.to_string()
                } else {
                    format!("{table}.{key}")
                };
                msg = format!("key `{full}`: {msg}");
            }
        }
        Error::invalid(format!("{}:{where_}: {msg}", path.display()))
    })
}

/// The text `fsmon init` writes: every setting present but commented out,
/// showing its default. `[logging]` stays active: file output is on.
pub const INIT_TEMPLATE: &str = r#"# fsmon configuration. Every setting below shows its default; uncomment to change.
# Priority: command-line flag > this file > built-in default.

[monitored]
# Where `fsmon add` stores the monitored paths (JSONL).
# path = "~/.local/share/fsmon/monitored.jsonl"

[logging]
# File output is on while this section exists (remove the section to disable).
# path = "~/.local/state/fsmon"
# keep_days = 30              # `fsmon clean` keeps this many days
# size = ">=1GB"              # `fsmon clean` trims a log to this size
# disk_min_free = "10%"       # warn when free space on the log filesystem drops below (percent or size)
# sync_interval_secs = 0      # fdatasync logs every N seconds (0 = never)
# local_time = false          # timestamps in local time instead of UTC

[socket]
# path = "/tmp/fsmon-<UID>.sock"

[cache]
# dir_capacity = 100000       # directory handle cache entries
# dir_ttl_secs = 3600         # TTL for directories outside watched trees
# file_size_capacity = 10000  # last-known file sizes (for DELETE and DELETE_SELF)
# proc_ttl_secs = 600         # /proc tracker cache TTL (fallback tracker only)
# stats_interval_secs = 60    # log cache statistics every N seconds (0 = never)
# buffer_size = 32768         # fanotify read buffer (4096..=1048576)
# channel_capacity = 1024     # bound of the capture -> process queue, in events (omit = unbounded)
# subscribe_buf = 4096        # per-subscriber buffer, in events

[metrics]
# listen = "127.0.0.1:9845"   # serve Prometheus metrics over HTTP at /metrics (omit = off)

[process]
# tracker = "auto"            # auto (eBPF, else /proc), ebpf, procfs
# map_capacity = 65536        # eBPF process map entries (LRU)
# exit_grace_secs = 5         # keep exited processes this long for late events

[fanotify]
# queue_size = 16384          # kernel event queue length (0 = unlimited); default: the system's
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
        assert_eq!(c.socket_path, PathBuf::from("/tmp/fsmon-1000.sock"));
        assert_eq!(c.buffer_size, 32768);
        assert_eq!(c.channel_capacity, None);
        assert!(c.file.is_none());
    }

    #[test]
    fn template_parses_to_defaults() {
        let c = load_text(&init_template()).unwrap();
        assert!(c.log_dir.is_some(), "template keeps [logging] active");
        assert!(c.ship.is_none(), "shipping stays off");
        assert_eq!(c.keep_days, 30);
        assert_eq!(c.dir_capacity, 100_000);
    }

    #[test]
    fn file_without_logging_disables_file_output() {
        let c = load_text("[cache]\nbuffer_size = 65536\n").unwrap();
        assert_eq!(c.log_dir, None);
        assert_eq!(c.buffer_size, 65536);
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
