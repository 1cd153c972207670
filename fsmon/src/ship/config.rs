//! `[ship.nats]` and the matching `fsmon daemon --nats-*` flags.
use std::{path::PathBuf, time::Duration};

use clap::Args;
use serde::Deserialize;

use crate::{
    error::{Error, Result},
    user::TargetUser,
};

/// `[ship]` as written in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShipSection {
    pub nats: Option<NatsSection>,
}

/// `[ship.nats]` as written in the file: every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSection {
    /// On unless `enabled = false` (the section's presence turns shipping on).
    pub enabled: Option<bool>,
    /// One URL or several (a cluster): "nats://host:4222".
    pub url: Option<String>,
    pub urls: Option<Vec<String>>,
    pub subject_prefix: Option<String>,
    pub host: Option<String>,
    /// Groups to ship (default: every group with a log).
    pub groups: Option<Vec<String>>,
    pub stream: Option<String>,
    /// Create the stream when it is missing (default true); an existing
    /// stream is always checked to capture our subjects.
    pub create_stream: Option<bool>,
    pub replicas: Option<usize>,
    pub duplicate_window_secs: Option<u64>,
    pub tls_ca: Option<String>,
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    pub tls_required: Option<bool>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    /// A file holding an nkey seed (SU...).
    pub nkey_file: Option<String>,
    /// A `.creds` file (JWT and nkey seed).
    pub creds_file: Option<String>,
    /// Most messages published and not yet acknowledged, per group.
    pub max_in_flight: Option<usize>,
}

/// `fsmon daemon` flags that override `[ship.nats]` (any of them turns
/// shipping on when `--nats-url` or the file gives a URL).
#[derive(Debug, Args, Default, Clone)]
pub struct ShipArgs {
    /// Ship every logged event to NATS JetStream at this URL (repeatable: a cluster)
    #[arg(long = "nats-url", value_name = "URL")]
    pub nats_url: Vec<String>,
    /// Subject prefix: events go to PREFIX.<host>.<group> (default fsmon)
    #[arg(long, value_name = "PREFIX")]
    pub nats_subject_prefix: Option<String>,
    /// Host name added to each shipped event (default: the system's)
    #[arg(long, value_name = "NAME")]
    pub nats_host: Option<String>,
    /// Ship only these groups (repeatable; default: all)
    #[arg(long = "nats-group", value_name = "GROUP")]
    pub nats_groups: Vec<String>,
    /// JetStream stream name (default FSMON)
    #[arg(long, value_name = "NAME")]
    pub nats_stream: Option<String>,
    /// Do not create the stream if it is missing
    #[arg(long)]
    pub nats_no_create_stream: bool,
    /// Replicas of a stream the daemon creates (default 1)
    #[arg(long, value_name = "N")]
    pub nats_replicas: Option<usize>,
    /// CA certificate to verify the server (PEM)
    #[arg(long, value_name = "PATH")]
    pub nats_tls_ca: Option<String>,
    /// Client certificate (PEM), with --nats-tls-key
    #[arg(long, value_name = "PATH")]
    pub nats_tls_cert: Option<String>,
    #[arg(long, value_name = "PATH")]
    pub nats_tls_key: Option<String>,
    #[arg(long, value_name = "USER")]
    pub nats_user: Option<String>,
    #[arg(long, value_name = "PASSWORD")]
    pub nats_password: Option<String>,
    #[arg(long, value_name = "TOKEN")]
    pub nats_token: Option<String>,
    /// File holding an nkey seed
    #[arg(long, value_name = "PATH")]
    pub nats_nkey_file: Option<String>,
    /// NATS credentials file (.creds)
    #[arg(long, value_name = "PATH")]
    pub nats_creds_file: Option<String>,
}

/// How to authenticate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum NatsAuth {
    #[default]
    None,
    UserPassword(String, String),
    Token(String),
    NkeyFile(PathBuf),
    CredsFile(PathBuf),
}

/// Everything resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShipConfig {
    pub urls: Vec<String>,
    pub subject_prefix: String,
    pub host: String,
    /// None: every group with a log.
    pub groups: Option<Vec<String>>,
    pub stream: String,
    pub create_stream: bool,
    pub replicas: usize,
    pub duplicate_window: Duration,
    pub tls_ca: Option<PathBuf>,
    pub tls_client: Option<(PathBuf, PathBuf)>,
    pub tls_required: bool,
    pub auth: NatsAuth,
    pub max_in_flight: usize,
}

pub const DEFAULT_PREFIX: &str = "fsmon";
pub const DEFAULT_STREAM: &str = "FSMON";
/// JetStream's own default. The shipper re-publishes a message only within
/// seconds of its first attempt (a retry after a lost ack, or a restart
/// that replays the last unsaved acknowledgements), so two minutes covers
/// it; see `ship/mod.rs` for the whole argument.
pub const DEFAULT_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1024;

/// The system's host name.
pub fn system_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// A NATS subject token for `name`: the separators and wildcards of
/// subjects (`.`, `*`, `>`) and white space become `_`. The event itself
/// carries the exact host and group.
pub fn subject_token(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            '.' | '*' | '>' => '_',
            c if c.is_whitespace() || c.is_control() => '_',
            c => c,
        })
        .collect()
}

fn check_prefix(prefix: &str) -> std::result::Result<(), String> {
    if prefix.is_empty()
        || prefix
            .split('.')
            .any(|t| t.is_empty() || t.contains(['*', '>']) || t.contains(char::is_whitespace))
    {
        return Err(format!(
            "'{prefix}' is not a subject prefix like fsmon or corp.fsmon (no wildcards, spaces or empty tokens)"
        ));
    }
    Ok(())
}

fn check_stream_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty()
        || name.len() > 255
        || name.contains(['.', '*', '>', '/', '\\'])
        || name.contains(char::is_whitespace)
    {
        return Err(format!(
            "'{name}' is not a stream name (letters, digits, - and _)"
        ));
    }
    Ok(())
}

/// Resolves `[ship.nats]`; `at(key, msg)` makes an error naming the file.
pub fn resolve(
    section: Option<ShipSection>,
    user: &TargetUser,
    at: &dyn Fn(&str, String) -> Error,
) -> Result<Option<ShipConfig>> {
    let Some(n) = section.and_then(|s| s.nats) else {
        return Ok(None);
    };
    if n.enabled == Some(false) {
        return Ok(None);
    }
    let mut urls = n.urls.unwrap_or_default();
    urls.extend(n.url);
    if urls.is_empty() {
        return Err(at(
            "ship.nats.url",
            "missing: give the server, e.g. url = \"nats://127.0.0.1:4222\"".into(),
        ));
    }
    let prefix = n.subject_prefix.unwrap_or_else(|| DEFAULT_PREFIX.into());
    check_prefix(&prefix).map_err(|m| at("ship.nats.subject_prefix", m))?;
    let stream = n.stream.unwrap_or_else(|| DEFAULT_STREAM.into());
    check_stream_name(&stream).map_err(|m| at("ship.nats.stream", m))?;
    let host = n.host.unwrap_or_else(system_host);
    if host.is_empty() {
        return Err(at("ship.nats.host", "must not be empty".into()));
    }
    if let Some(groups) = &n.groups {
        for g in groups {
            crate::store::validate_group(g).map_err(|e| at("ship.nats.groups", e.to_string()))?;
        }
    }
    let replicas = n.replicas.unwrap_or(1);
    if !(1..=5).contains(&replicas) {
        return Err(at("ship.nats.replicas", format!("{replicas} is not 1..=5")));
    }
    let duplicate_window = match n.duplicate_window_secs {
        Some(0) => return Err(at("ship.nats.duplicate_window_secs", "must be > 0".into())),
        Some(s) => Duration::from_secs(s),
        None => DEFAULT_DUPLICATE_WINDOW,
    };
    let max_in_flight = match n.max_in_flight {
        Some(0) => return Err(at("ship.nats.max_in_flight", "must be > 0".into())),
        Some(v) => v.min(65_536),
        None => DEFAULT_MAX_IN_FLIGHT,
    };
    let tls_client = match (n.tls_cert, n.tls_key) {
        (Some(c), Some(k)) => Some((user.expand(&c), user.expand(&k))),
        (None, None) => None,
        _ => {
            return Err(at(
                "ship.nats.tls_cert",
                "tls_cert and tls_key go together".into(),
            ));
        }
    };
    let auth = auth_from(
        n.user,
        n.password,
        n.token,
        n.nkey_file.map(|p| user.expand(&p)),
        n.creds_file.map(|p| user.expand(&p)),
    )
    .map_err(|m| at("ship.nats", m))?;
    Ok(Some(ShipConfig {
        urls,
        subject_prefix: prefix,
        host,
        groups: n.groups,
        stream,
        create_stream: n.create_stream.unwrap_or(true),
        replicas,
        duplicate_window,
        tls_ca: n.tls_ca.map(|p| user.expand(&p)),
        tls_client,
        tls_required: n.tls_required.unwrap_or(false),
        auth,
        max_in_flight,
    }))
}

fn auth_from(
    user: Option<String>,
    password: Option<String>,
    token: Option<String>,
    nkey: Option<PathBuf>,
    creds: Option<PathBuf>,
) -> std::result::Result<NatsAuth, String> {
    let mut chosen = Vec::new();
    if let Some(u) = user {
        chosen.push(NatsAuth::UserPassword(u, password.unwrap_or_default()));
    } else if password.is_some() {
        return Err("password without user".into());
    }
    if let Some(t) = token {
        chosen.push(NatsAuth::Token(t));
    }
    if let Some(p) = nkey {
        chosen.push(NatsAuth::NkeyFile(p));
    }
    if let Some(p) = creds {
        chosen.push(NatsAuth::CredsFile(p));
    }
    match chosen.len() {
        0 => Ok(NatsAuth::None),
        1 => Ok(chosen.pop().unwrap()),
        _ => Err("give one of user/password, token, nkey_file, creds_file".into()),
    }
}

impl ShipArgs {
    fn any(&self) -> bool {
        !self.nats_url.is_empty()
            || self.nats_subject_prefix.is_some()
            || self.nats_host.is_some()
            || !self.nats_groups.is_empty()
            || self.nats_stream.is_some()
            || self.nats_no_create_stream
            || self.nats_replicas.is_some()
            || self.nats_tls_ca.is_some()
            || self.nats_tls_cert.is_some()
            || self.nats_tls_key.is_some()
            || self.nats_user.is_some()
            || self.nats_password.is_some()
            || self.nats_token.is_some()
            || self.nats_nkey_file.is_some()
            || self.nats_creds_file.is_some()
    }

    /// Applies the flags over the file's settings.
    pub fn apply(&self, current: Option<ShipConfig>) -> Result<Option<ShipConfig>> {
        if !self.any() {
            return Ok(current);
        }
        let mut c = match current {
            Some(c) => c,
            None if self.nats_url.is_empty() => {
                return Err(Error::invalid(
                    "the --nats-* flags need --nats-url (or [ship.nats] url in the config)",
                ));
            }
            None => ShipConfig {
                urls: Vec::new(),
                subject_prefix: DEFAULT_PREFIX.into(),
                host: system_host(),
                groups: None,
                stream: DEFAULT_STREAM.into(),
                create_stream: true,
                replicas: 1,
                duplicate_window: DEFAULT_DUPLICATE_WINDOW,
                tls_ca: None,
                tls_client: None,
                tls_required: false,
                auth: NatsAuth::None,
                max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            },
        };
        let bad = |flag: &str, m: String| Error::invalid(format!("--{flag}: {m}"));
        if !self.nats_url.is_empty() {
            c.urls = self.nats_url.clone();
        }
        if let Some(p) = &self.nats_subject_prefix {
            check_prefix(p).map_err(|m| bad("nats-subject-prefix", m))?;
            c.subject_prefix = p.clone();
        }
        if let Some(h) = &self.nats_host {
            if h.is_empty() {
                return Err(bad("nats-host", "must not be empty".into()));
            }
            c.host = h.clone();
        }
        if !self.nats_groups.is_empty() {
            for g in &self.nats_groups {
                crate::store::validate_group(g).map_err(|e| bad("nats-group", e.to_string()))?;
            }
            c.groups = Some(self.nats_groups.clone());
        }
        if let Some(s) = &self.nats_stream {
            check_stream_name(s).map_err(|m| bad("nats-stream", m))?;
            c.stream = s.clone();
        }
        if self.nats_no_create_stream {
            c.create_stream = false;
        }
        if let Some(r) = self.nats_replicas {
            if !(1..=5).contains(&r) {
                return Err(bad("nats-replicas", format!("{r} is not 1..=5")));
            }
            c.replicas = r;
        }
        if let Some(p) = &self.nats_tls_ca {
            c.tls_ca = Some(p.into());
        }
        match (&self.nats_tls_cert, &self.nats_tls_key) {
            (Some(a), Some(b)) => c.tls_client = Some((a.into(), b.into())),
            (None, None) => {}
            _ => {
                return Err(bad(
                    "nats-tls-cert",
                    "--nats-tls-cert and --nats-tls-key go together".into(),
                ));
            }
        }
        let flag_auth = auth_from(
            self.nats_user.clone(),
            self.nats_password.clone(),
            self.nats_token.clone(),
            self.nats_nkey_file.as_ref().map(PathBuf::from),
            self.nats_creds_file.as_ref().map(PathBuf::from),
        )
        .map_err(|m| bad("nats-user", m))?;
        if flag_auth != NatsAuth::None {
            c.auth = flag_auth;
        }
        Ok(Some(c))
    }
}

/// The `[ship.nats]` lines of `fsmon init`'s template.
pub const INIT_TEMPLATE: &str = r#"
# [ship.nats]                 # ship every logged event to NATS JetStream (off while commented out)
# url = "nats://127.0.0.1:4222"   # or urls = ["nats://a:4222", "nats://b:4222"]
# subject_prefix = "fsmon"    # subjects: <prefix>.<host>.<group>
# host = "<the system's host name>"
# groups = ["_global"]        # default: every group with a log
# stream = "FSMON"
# create_stream = true        # create it if missing (subjects <prefix>.>); an existing one is checked
# replicas = 1                # of a stream fsmon creates
# duplicate_window_secs = 120 # of a stream fsmon creates
# max_in_flight = 1024        # published, not yet acknowledged, per group
# tls_ca = "/etc/ssl/nats-ca.pem"
# tls_cert = "..."            # client certificate, with tls_key
# tls_key = "..."
# user = "..."                # with password; or token; or nkey_file; or creds_file
# password = "..."
"#;
