//! The user the daemon works for.
//!
//! fsmon runs as root (fanotify and BPF need it) on behalf of one user: the
//! one who ran `sudo` (SUDO_UID), or root itself. Config, store and logs live
//! in that user's home, and the files fsmon creates are handed to that user.
use std::path::PathBuf;

use nix::unistd::{Gid, Uid, User};

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetUser {
    pub uid: u32,
    pub gid: u32,
    pub name: String,
    pub home: PathBuf,
}

impl TargetUser {
    /// SUDO_UID when running as root through sudo, the current user otherwise.
    /// The home comes from the password database (getpwuid_r), not $HOME, so
    /// the CLI and the daemon agree on it whatever sudo did to the environment.
    pub fn resolve() -> Result<Self> {
        let euid = Uid::effective().as_raw();
        let uid = match std::env::var("SUDO_UID") {
            Ok(s) if euid == 0 => s
                .trim()
                .parse()
                .map_err(|_| Error::invalid(format!("SUDO_UID is not a number: {s:?}")))?,
            _ => euid,
        };
        Self::from_uid(uid)
    }

    pub fn from_uid(uid: u32) -> Result<Self> {
        match User::from_uid(Uid::from_raw(uid)) {
            Ok(Some(u)) => Ok(Self {
                uid,
                gid: u.gid.as_raw(),
                name: u.name,
                home: u.dir,
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

    #[test]
    fn expand() {
        let u = TargetUser {
            uid: 1000,
            gid: 1000,
            name: "a".into(),
            home: "/home/a".into(),
        };
        assert_eq!(u.expand("~/.config/x"), PathBuf::from("/home/a/.config/x"));
        assert_eq!(u.expand("~"), PathBuf::from("/home/a"));
        assert_eq!(
            u.expand("/run/fsmon/fsmon-<UID>.sock"),
            PathBuf::from("/run/fsmon/fsmon-1000.sock")
        );
        assert_eq!(u.expand("/abs/~x"), PathBuf::from("/abs/~x"));
    }
}
