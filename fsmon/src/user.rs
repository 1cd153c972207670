//! The user the daemon works for.
//!
//! fsmon runs as root (fanotify and BPF need it) on behalf of one user: the
//! one who ran `sudo` (SUDO_UID), or root itself. Config, store and logs live
//! in that user's home, and the files fsmon creates are handed to that user.
//!
//! Or, in system mode (`fsmon --system`, `FSMON_MODE=system`, or root's own
//! commands), for root as a system service, with the system's places:
//! `/etc/fsmon`, `/var/lib/fsmon`, `/var/log/fsmon`, `/run/fsmon`.
use std::path::PathBuf;

use nix::unistd::{Gid, Uid, User};

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetUser {
    pub uid: u32,
    pub gid: u32,
    pub name: String,
    pub home: PathBuf,
    /// Where the defaults (config, store, logs, socket) are.
    pub places: Places,
}

/// Which conventional places hold the daemon's files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Places {
    /// The user's home from the password database, XDG variables ignored:
    /// through sudo, the environment is not the user's to trust.
    #[default]
    Passwd,
    /// The user's own environment (not through sudo): `$HOME` and
    /// `$XDG_CONFIG_HOME`, `$XDG_DATA_HOME`, `$XDG_STATE_HOME` honoured.
    Env,
    /// The system service's places (root's daemon, group `fsmon` reads).
    System,
}

/// The system service's places.
pub const SYSTEM_CONFIG: &str = "/etc/fsmon/fsmon.toml";
pub const SYSTEM_STORE: &str = "/var/lib/fsmon/monitored.jsonl";
pub const SYSTEM_LOG_DIR: &str = "/var/log/fsmon";
pub const SYSTEM_SOCKET: &str = "/run/fsmon/fsmon.sock";
/// The group whose members may read what the system daemon logs;
/// `$FSMON_GROUP` names another (for packaging and tests).
pub const SYSTEM_GROUP: &str = "fsmon";

/// Whether commands run in system mode: `--system`, else `$FSMON_MODE`
/// (`system` or `user`), else root's own commands (root, not through sudo)
/// without an explicit config (`--config`, `$FSMON_CONFIG`).
pub fn system_mode(flag: bool, explicit_config: bool) -> Result<bool> {
    let mode = std::env::var("FSMON_MODE").ok();
    let config_env = std::env::var_os("FSMON_CONFIG").is_some_and(|v| !v.is_empty());
    choose_system(
        flag,
        mode.as_deref(),
        Uid::effective().is_root(),
        std::env::var_os("SUDO_UID").is_some(),
        explicit_config || config_env,
    )
}

/// The rule of [`system_mode`], on its inputs.
fn choose_system(
    flag: bool,
    mode: Option<&str>,
    root: bool,
    via_sudo: bool,
    explicit_config: bool,
) -> Result<bool> {
    if flag {
        return Ok(true);
    }
    match mode {
        Some("system") => Ok(true),
        Some("user") => Ok(false),
        None | Some("") => Ok(root && !via_sudo && !explicit_config),
        Some(other) => Err(Error::invalid(format!(
            "FSMON_MODE is '{other}': expected system or user"
        ))),
    }
}

/// The gid of the system readers' group, if it exists.
pub fn system_group() -> Option<(String, Gid)> {
    let name = std::env::var("FSMON_GROUP")
        .ok()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| SYSTEM_GROUP.to_string());
    match nix::unistd::Group::from_name(&name) {
        Ok(Some(g)) => Some((name, g.gid)),
        _ => None,
    }
}

/// An absolute path from the environment variable `var`, if set.
fn env_dir(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
}

impl TargetUser {
    /// SUDO_UID when running as root through sudo, the current user otherwise.
    /// The home comes from the password database (getpwuid_r), not $HOME, so
    /// the CLI and the daemon agree on it whatever sudo did to the environment.
    pub fn resolve() -> Result<Self> {
        let euid = Uid::effective().as_raw();
        let (uid, via_sudo) = match std::env::var("SUDO_UID") {
            Ok(s) if euid == 0 => (
                s.trim()
                    .parse()
                    .map_err(|_| Error::invalid(format!("SUDO_UID is not a number: {s:?}")))?,
                true,
            ),
            _ => (euid, false),
        };
        let mut user = Self::from_uid(uid)?;
        if !via_sudo {
            // The user's own environment: $HOME where it is set.
            user.places = Places::Env;
            if let Some(home) = env_dir("HOME") {
                user.home = home;
            }
        }
        Ok(user)
    }

    /// Root, as the system service.
    pub fn system() -> Result<Self> {
        let mut root = Self::from_uid(0)?;
        root.places = Places::System;
        Ok(root)
    }

    pub fn is_system(&self) -> bool {
        self.places == Places::System
    }

    /// `$XDG_<kind>_HOME` when the environment is the user's, else `~/<fallback>`.
    fn xdg(&self, var: &str, fallback: &str) -> PathBuf {
        match self.places {
            Places::Env => env_dir(var).unwrap_or_else(|| self.home.join(fallback)),
            _ => self.home.join(fallback),
        }
    }

    /// The default config file.
    pub fn default_config(&self) -> PathBuf {
        match self.places {
            Places::System => SYSTEM_CONFIG.into(),
            _ => self
                .xdg("XDG_CONFIG_HOME", ".config")
                .join("fsmon/fsmon.toml"),
        }
    }

    /// The default store of monitored paths.
    pub fn default_store(&self) -> PathBuf {
        match self.places {
            Places::System => SYSTEM_STORE.into(),
            _ => self
                .xdg("XDG_DATA_HOME", ".local/share")
                .join("fsmon/monitored.jsonl"),
        }
    }

    /// The default log directory.
    pub fn default_log_dir(&self) -> PathBuf {
        match self.places {
            Places::System => SYSTEM_LOG_DIR.into(),
            _ => self.xdg("XDG_STATE_HOME", ".local/state").join("fsmon"),
        }
    }

    /// The default socket.
    pub fn default_socket(&self) -> PathBuf {
        match self.places {
            Places::System => SYSTEM_SOCKET.into(),
            _ => self.expand(crate::config::DEFAULT_SOCKET),
        }
    }

    pub fn from_uid(uid: u32) -> Result<Self> {
        match User::from_uid(Uid::from_raw(uid)) {
            Ok(Some(u)) => Ok(Self {
                uid,
                gid: u.gid.as_raw(),
                name: u.name,
                home: u.dir,
                places: Places::Passwd,
            }),
            Ok(None) => Err(Error::invalid(format!(
                "uid {uid} has no entry in the user database"
            ))),
            Err(e) => Err(Error::invalid(format!("cannot look up uid {uid}: {e}"))),
        }
    }

    pub fn is_root(&self) -> bool {
        self.uid == 0
    }

    pub fn gid(&self) -> Gid {
        Gid::from_raw(self.gid)
    }

    /// Expands a leading `~` to this user's home and `<UID>` to the uid.
    pub fn expand(&self, path: &str) -> PathBuf {
        let path = path.replace("<UID>", &self.uid.to_string());
        if path == "~" {
            return self.home.clone();
        }
        match path.strip_prefix("~/") {
            Some(rest) => self.home.join(rest),
            None => PathBuf::from(path),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn mode_choice() {
        // (flag, FSMON_MODE, root, through sudo, explicit config) -> system?
        for (flag, mode, root, sudo, explicit, want) in [
            (true, None, false, false, false, true),
            (false, Some("system"), false, false, false, true),
            (false, Some("user"), true, false, false, false),
            // Root's own commands reach the system daemon ...
            (false, None, true, false, false, true),
            // ... not through sudo, nor with an explicit config, nor a user's.
            (false, None, true, true, false, false),
            (false, None, true, false, true, false),
            (false, None, false, false, false, false),
            (false, Some(""), true, false, false, true),
        ] {
            assert_eq!(
                choose_system(flag, mode, root, sudo, explicit).unwrap(),
                want,
                "{flag} {mode:?} {root} {sudo} {explicit}"
            );
        }
        assert!(choose_system(false, Some("both"), true, false, false).is_err());
    }

    #[test]
    fn expand() {
        let u = TargetUser {
            uid: 1000,
            gid: 1000,
            name: "a".into(),
            home: "/home/a".into(),
            places: Places::Passwd,
        };
        assert_eq!(u.expand("~/.config/x"), PathBuf::from("/home/a/.config/x"));
        assert_eq!(u.expand("~"), PathBuf::from("/home/a"));
        assert_eq!(
            u.expand("/run/fsmon/fsmon-<UID>.sock"),
            PathBuf::from("/run/fsmon/fsmon-1000.sock")
        );
        assert_eq!(u.expand("/abs/~x"), PathBuf::from("/abs/~x"));
        assert_eq!(
            u.default_log_dir(),
            PathBuf::from("/home/a/.local/state/fsmon")
        );
        let sys = TargetUser {
            places: Places::System,
            ..u
        };
        assert_eq!(sys.default_config(), Path::new(SYSTEM_CONFIG));
        assert_eq!(sys.default_socket(), Path::new(SYSTEM_SOCKET));
    }
}
