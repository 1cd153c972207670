//! The monitored-paths store, `~/.local/share/fsmon/monitored.jsonl`: one
//! line per group, exactly what `fsmon monitored` prints:
//! `{"cmd":"nginx","paths":{"/var/www/myapp":{"recursive":true,"types":["MODIFY","CREATE"]}}}`
//!
//! The CLI writes it when no daemon runs; a running daemon writes it for the
//! requests it receives. Writers hold an flock on a lock file beside it and
//! replace the file atomically (temp file + rename).
use std::{
    collections::BTreeMap,
    fs,
    io::Write,
    path::{Component, Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{
    error::{Error, Result},
    event::{EventType, TypeSet},
    filters::SizeFilter,
    marks::MarkKind,
    safefs,
    userfs::UserFs,
};

/// The group that logs every process's events.
pub const GLOBAL: &str = "_global";

/// How one path of a group is watched.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PathOptions {
    pub recursive: bool,
    /// Event type names, in the order given.
    pub types: Vec<EventType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<SizeFilter>,
    /// The kind of mark asked for (absent in the line when `auto`).
    #[serde(default, skip_serializing_if = "MarkKind::is_auto")]
    pub mark: MarkKind,
}

impl PathOptions {
    pub fn type_set(&self) -> TypeSet {
        self.types.iter().fold(TypeSet::EMPTY, |s, t| s.with(*t))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Group {
    pub cmd: String,
    pub paths: BTreeMap<String, PathOptions>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Store {
    pub groups: Vec<Group>,
    /// Lines that are not a valid group: kept, reported, never dropped.
    pub unparsed: Vec<Unparsed>,
}

/// What re-adding a path changed, as one line:
/// `nginx /var/www: types CREATE,MODIFY -> CREATE; recursive unchanged; size unchanged`.
pub fn describe_change(group: &str, path: &str, old: &PathOptions, new: &PathOptions) -> String {
    let types = |o: &PathOptions| {
        o.types
            .iter()
            .map(|t| t.as_str())
            .collect::<Vec<_>>()
            .join(",")
    };
    let size = |o: &PathOptions| o.size.map_or("none".to_string(), |s| s.to_string());
    let mut parts = vec![
        ("types", types(old), types(new)),
        (
            "recursive",
            old.recursive.to_string(),
            new.recursive.to_string(),
        ),
        ("size", size(old), size(new)),
    ];
    // The mark is named only when it changes (most paths keep `auto`).
    if old.mark != new.mark {
        parts.push((
            "mark",
            old.mark.as_str().to_string(),
            new.mark.as_str().to_string(),
        ));
    }
    if parts.iter().all(|(_, a, b)| a == b) {
        return format!("{group} {path}: already watched with these settings");
    }
    let said: Vec<String> = parts
        .iter()
        .map(|(what, a, b)| {
            if a == b {
                format!("{what} unchanged")
            } else {
                format!("{what} {a} -> {b}")
            }
        })
        .collect();
    format!("{group} {path}: {}", said.join("; "))
}

/// Checks a group name: `_global` or a command name that is also a safe
/// file-name stem (it names `<group>_log.jsonl`).
pub fn validate_group(name: &str) -> Result<()> {
    let bad = |why: &str| Err(Error::invalid(format!("bad group name '{name}': {why}")));
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > 64 {
        return bad("longer than 64 bytes");
    }
    if name.starts_with('.') || name.starts_with('-') {
        return bad("must not start with '.' or '-'");
    }
    if name.starts_with('_') && name != GLOBAL {
        return bad("names starting with '_' are reserved (did you mean _global?)");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._+-@:".contains(&b))
    {
        return bad("use letters, digits and . _ + - @ : only");
    }
    Ok(())
}

/// Parses `--types` values into the list a path keeps: the user's order,
/// each type once (`--types MODIFY --types CREATE` stays `["MODIFY","CREATE"]`,
/// as `monitored` shows it in the seed). `all` adds the 14 types; no value
/// means the seed's default 8, in the seed's order.
pub fn parse_types<S: AsRef<str>>(items: &[S]) -> Result<Vec<EventType>> {
    // Validates every name and gives the one-line error.
    EventType::parse_list(items).map_err(Error::invalid)?;
    if items.is_empty() {
        return Ok(EventType::DEFAULT.to_vec());
    }
    let mut types = Vec::new();
    for name in items
        .iter()
        .flat_map(|i| i.as_ref().split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let named: &[EventType] = if name.eq_ignore_ascii_case("all") {
            &EventType::ALL
        } else {
            &[EventType::parse(name).expect("validated above")]
        };
        for t in named {
            if !types.contains(t) {
                types.push(*t);
            }
        }
    }
    if types.is_empty() {
        return Err(Error::invalid(
            "--types: no event type given (use names such as CREATE, or all)",
        ));
    }
    Ok(types)
}

/// Makes `path` (in the text form of [`crate::escape`], as logs and the
/// store write paths: `\\` for a backslash, `\xHH` for a byte that is not
/// UTF-8) absolute against `cwd` and lexically clean: no `.`/`..`, no
/// trailing slash. Then resolves symlinks in the longest existing prefix,
/// because the kernel reports real paths. Returns the real bytes; their
/// text form is [`crate::escape::encode_path`].
pub fn normalize_path(path: &str, cwd: &Path) -> Result<PathBuf> {
    if path.is_empty() {
        return Err(Error::invalid("empty path"));
    }
    let path = crate::escape::decode_path(path).map_err(|e| Error::invalid(e.to_string()))?;
    if path.as_os_str().as_encoded_bytes().contains(&0) {
        return Err(Error::invalid("path contains a NUL byte"));
    }
    let joined = if path.is_absolute() {
        path
    } else {
        cwd.join(path)
    };
    let mut clean = PathBuf::from("/");
    for c in joined.components() {
        match c {
            Component::Normal(p) => clean.push(p),
            Component::ParentDir => {
                clean.pop();
            }
            _ => {}
        }
    }
    // Canonicalize the longest prefix that exists; keep the rest as is.
    let mut existing = clean.clone();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (
            existing.file_name().map(|n| n.to_owned()),
            existing.parent(),
        ) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                existing = parent.to_path_buf();
            }
            _ => break,
        }
    }
    let mut real = fs::canonicalize(&existing).unwrap_or(existing);
    for name in rest.into_iter().rev() {
        real.push(name);
    }
    Ok(real)
}

/// A store line that could not be read as a group. It is kept byte for
/// byte (written back at the end of the file by every save) and reported
/// by `monitored` and `health`, never dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unparsed {
    /// 1-based line number in the file as read.
    pub line: usize,
    pub raw: Vec<u8>,
    /// Why, without quoting the line.
    pub reason: String,
}

impl Unparsed {
    /// One line for a warning: file, line number, reason; never the content.
    pub fn describe(&self, path: &Path) -> String {
        format!(
            "{}: line {}: kept as is but not applied ({}); fix or remove it by hand",
            path.display(),
            self.line,
            self.reason
        )
    }
}

impl Store {
    /// Reads the store as the user (see [`UserFs`]); a missing file is an
    /// empty store. The file must be the user's own regular file.
    pub fn load(fs: &UserFs, path: &Path) -> Result<Self> {
        let (p, uid) = (path.to_path_buf(), fs.user().uid);
        let bytes = fs.run(move || -> Result<Option<Vec<u8>>> {
            match safefs::open_user_read(&p, uid) {
                Ok(mut f) => {
                    let mut b = Vec::new();
                    std::io::Read::read_to_end(&mut f, &mut b).map_err(|e| Error::io(&p, e))?;
                    Ok(Some(b))
                }
                Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                    Ok(None)
                }
                Err(e) => Err(e),
            }
        })?;
        Ok(bytes.map(|b| Self::parse(&b)).unwrap_or_default())
    }

    /// Parses the store's bytes. Lines that are not a valid group are kept
    /// in `unparsed`.
    pub fn parse(bytes: &[u8]) -> Self {
        let mut store = Store::default();
        for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
            if raw.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let reason = match std::str::from_utf8(raw) {
                Err(_) => "not UTF-8".to_string(),
                Ok(line) => match serde_json::from_str::<Group>(line) {
                    Ok(g) if validate_group(&g.cmd).is_ok() => {
                        store.merge(g);
                        continue;
                    }
                    Ok(_) => "the group name is not valid".to_string(),
                    Err(e) => crate::error::redact_quoted(&e.to_string()),
                },
            };
            store.unparsed.push(Unparsed {
                line: i + 1,
                raw: raw.to_vec(),
                reason,
            });
        }
        store
    }

    fn merge(&mut self, g: Group) {
        match self.groups.iter_mut().find(|x| x.cmd == g.cmd) {
            Some(existing) => existing.paths.extend(g.paths),
            None => self.groups.push(g),
        }
    }

    /// Adds or replaces one path of a group; returns the settings it
    /// replaced, if the group watched the path already.
    pub fn add(&mut self, cmd: &str, path: &str, opts: PathOptions) -> Option<PathOptions> {
        let previous = self
            .groups
            .iter()
            .find(|g| g.cmd == cmd)
            .and_then(|g| g.paths.get(path).cloned());
        let mut paths = BTreeMap::new();
        paths.insert(path.to_string(), opts);
        self.merge(Group {
            cmd: cmd.to_string(),
            paths,
        });
        previous
    }

    /// Removes one path of a group, or the whole group. Returns whether
    /// anything was there to remove.
    pub fn remove(&mut self, cmd: &str, path: Option<&str>) -> bool {
        let Some(i) = self.groups.iter().position(|g| g.cmd == cmd) else {
            return false;
        };
        let removed = match path {
            None => {
                self.groups.remove(i);
                return true;
            }
            Some(p) => self.groups[i].paths.remove(p).is_some(),
        };
        if self.groups[i].paths.is_empty() {
            self.groups.remove(i);
        }
        removed
    }

    /// Groups that have at least one path, as `monitored` prints them.
    pub fn lines(&self) -> impl Iterator<Item = String> + '_ {
        self.groups
            .iter()
            .filter(|g| !g.paths.is_empty())
            .map(|g| serde_json::to_string(g).expect("store serializes"))
    }

    /// The file's bytes: the groups, then the unparsed lines verbatim.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for line in self.lines() {
            out.extend_from_slice(line.as_bytes());
            out.push(b'\n');
        }
        for u in &self.unparsed {
            out.extend_from_slice(&u.raw);
            out.push(b'\n');
        }
        out
    }

    /// Writes the store atomically as the user: a new temp file beside it,
    /// synced, renamed over it.
    pub fn save(&self, fs: &UserFs, path: &Path) -> Result<()> {
        let dir = path
            .parent()
            .ok_or_else(|| Error::invalid("store path has no directory"))?
            .to_path_buf();
        fs.create_dir_all(&dir)?;
        let tmp = dir.join(format!(".{}.tmp.{}", file_name(path), std::process::id()));
        let (path, uid, bytes) = (path.to_path_buf(), fs.user().uid, self.to_bytes());
        fs.run(move || {
            // Whatever is at the temp path (a planted link) goes; it is
            // never followed.
            let _ = fs::remove_file(&tmp);
            let mut f = safefs::create_user_new(&tmp, uid, 0o644)?;
            let written = f
                .write_all(&bytes)
                .and_then(|_| f.sync_all())
                .map_err(|e| Error::io(&tmp, e));
            if let Err(e) = written {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
            // rename replaces a symlink at `path` itself, never its target.
            fs::rename(&tmp, &path).map_err(|e| {
                let _ = fs::remove_file(&tmp);
                Error::io(&path, e)
            })
        })
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// An exclusive lock on the store for a read-modify-write.
pub struct StoreLock(#[allow(dead_code)] nix::fcntl::Flock<fs::File>);

impl StoreLock {
    /// Creates (as the user) and locks `.<store name>.lock` beside the
    /// store. The wait for the lock happens on the caller's thread.
    pub fn acquire(fs: &UserFs, store_path: &Path) -> Result<Self> {
        let dir = store_path
            .parent()
            .ok_or_else(|| Error::invalid("store path has no directory"))?;
        fs.create_dir_all(dir)?;
        let lock_path = dir.join(format!(".{}.lock", file_name(store_path)));
        let f = fs.open_append(&lock_path, 0o600)?;
        nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
            .map(StoreLock)
            .map_err(|(_, e)| Error::io(&lock_path, e.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn re_adding_says_what_changed() {
        let old = PathOptions {
            recursive: true,
            types: parse_types(&["CREATE,MODIFY"]).unwrap(),
            size: None,
            mark: MarkKind::Auto,
        };
        let new = PathOptions {
            types: parse_types(&["CREATE"]).unwrap(),
            ..old.clone()
        };
        let mut s = Store::default();
        assert_eq!(s.add("nginx", "/var/www", old.clone()), None);
        assert_eq!(s.add("nginx", "/var/www", new.clone()), Some(old.clone()));
        assert_eq!(
            describe_change("nginx", "/var/www", &old, &new),
            "nginx /var/www: types CREATE,MODIFY -> CREATE; recursive unchanged; size unchanged"
        );
        assert_eq!(
            describe_change("nginx", "/var/www", &old, &old),
            "nginx /var/www: already watched with these settings"
        );
        // A changed mark is named; an unchanged one is not.
        let inode = PathOptions {
            mark: MarkKind::Inode,
            ..old.clone()
        };
        assert_eq!(
            describe_change("nginx", "/var/www", &old, &inode),
            "nginx /var/www: types unchanged; recursive unchanged; size unchanged; mark auto -> inode"
        );
    }

    #[test]
    fn group_names() {
        for ok in ["_global", "nginx", "php-fpm", "node.js", "a+b"] {
            validate_group(ok).unwrap();
        }
        for bad in [
            "", "../x", "a/b", ".hidden", "_other", "sp ace", "-rf", "x\u{0}",
        ] {
            assert!(validate_group(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn normalize() {
        let cwd = Path::new("/nonexistent-base");
        assert_eq!(
            normalize_path("a/./b/../c/", cwd).unwrap(),
            PathBuf::from("/nonexistent-base/a/c")
        );
        assert_eq!(normalize_path("/", cwd).unwrap(), PathBuf::from("/"));
        assert!(normalize_path("", cwd).is_err());
        let d = tempfile::tempdir().unwrap();
        let real = d.path().join("real");
        fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, d.path().join("link")).unwrap();
        let n = normalize_path(d.path().join("link/pending/x").to_str().unwrap(), cwd).unwrap();
        assert_eq!(n, fs::canonicalize(&real).unwrap().join("pending/x"));
    }

    #[test]
    fn normalize_takes_the_text_form_of_paths() {
        use std::os::unix::ffi::OsStrExt;
        let cwd = Path::new("/nonexistent-base");
        let n = normalize_path("bad\\xff/\\\\x", cwd).unwrap();
        assert_eq!(n.as_os_str().as_bytes(), b"/nonexistent-base/bad\xff/\\x");
        assert_eq!(
            crate::escape::encode_path(&n),
            "/nonexistent-base/bad\\xff/\\\\x"
        );
        let e = normalize_path("/a\\q", cwd).unwrap_err().to_string();
        assert!(e.contains("bad escape"), "{e}");
        assert!(normalize_path("/a\\x00", cwd).is_err(), "NUL");
    }

    #[test]
    fn seed_shape_and_round_trip() {
        let mut s = Store::default();
        let opts = PathOptions {
            recursive: true,
            types: vec![EventType::Modify, EventType::Create],
            size: None,
            mark: Default::default(),
        };
        s.add("nginx", "/var/www/myapp", opts.clone());
        let lines: Vec<String> = s.lines().collect();
        assert_eq!(
            lines,
            vec![
                r#"{"cmd":"nginx","paths":{"/var/www/myapp":{"recursive":true,"types":["MODIFY","CREATE"]}}}"#
            ]
        );
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sub/monitored.jsonl");
        let me = me();
        s.save(&me, &p).unwrap();
        assert_eq!(Store::load(&me, &p).unwrap(), s);
        assert!(s.remove("nginx", Some("/var/www/myapp")));
        assert!(s.groups.is_empty(), "a group with no paths left is dropped");
        assert!(!s.remove("nginx", None));
    }

    #[test]
    fn types_keep_the_users_order() {
        assert_eq!(
            parse_types(&["MODIFY", "CREATE"]).unwrap(),
            vec![EventType::Modify, EventType::Create]
        );
        assert_eq!(
            parse_types(&["modify,create", "MODIFY"]).unwrap(),
            vec![EventType::Modify, EventType::Create]
        );
        assert_eq!(
            parse_types::<&str>(&[]).unwrap(),
            EventType::DEFAULT.to_vec()
        );
        assert_eq!(parse_types(&["all"]).unwrap().len(), 14);
        assert!(parse_types(&["MODIFIED"]).is_err());
        assert!(parse_types(&[""]).is_err());
    }

    fn me() -> UserFs {
        UserFs::direct(crate::user::TargetUser::from_uid(nix::unistd::geteuid().as_raw()).unwrap())
    }

    #[test]
    fn unparsable_lines_are_kept_verbatim_and_survive_a_save() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("monitored.jsonl");
        let good = "{\"cmd\":\"_global\",\"paths\":{\"/tmp\":{\"recursive\":false,\"types\":[\"CREATE\"]}}}";
        let bad_type =
            "{\"cmd\":\"x\",\"paths\":{\"/etc/ssh\":{\"recursive\":\"hunter2\",\"types\":[]}}}";
        let mut bytes = b"garbage\n".to_vec();
        bytes.extend_from_slice(good.as_bytes());
        bytes.extend_from_slice(b"\n\xff\xfe not utf-8\n");
        bytes.extend_from_slice(bad_type.as_bytes());
        bytes.extend_from_slice(b"\n{\"cmd\":\"../x\",\"paths\":{}}");
        fs::write(&p, &bytes).unwrap();
        let me = me();
        let mut s = Store::load(&me, &p).unwrap();
        assert_eq!(s.groups.len(), 1);
        let lines: Vec<usize> = s.unparsed.iter().map(|u| u.line).collect();
        assert_eq!(lines, [1, 3, 4, 5]);
        for u in &s.unparsed {
            let d = u.describe(&p);
            assert!(!d.contains("hunter2") && !d.contains("garbage"), "{d}");
        }
        s.add("nginx", "/srv", s.groups[0].paths["/tmp"].clone());
        s.save(&me, &p).unwrap();
        let text = fs::read(&p).unwrap();
        for kept in [
            &b"garbage"[..],
            b"\xff\xfe not utf-8",
            bad_type.as_bytes(),
            b"../x",
        ] {
            assert!(
                text.windows(kept.len()).any(|w| w == kept),
                "{:?} dropped",
                String::from_utf8_lossy(kept)
            );
        }
        let again = Store::load(&me, &p).unwrap();
        assert_eq!(again.groups.len(), 2);
        assert_eq!(again.unparsed.len(), 4);
    }
}
