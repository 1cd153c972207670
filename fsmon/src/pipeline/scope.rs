//! Which paths are watched at all: the union of every group's paths. Used
//! by the resolver to keep in-scope directories pinned and to drop events
//! outside every watched tree as early as possible.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchRoot {
    /// Absolute, normalized, no trailing slash (except "/").
    pub path: String,
    pub recursive: bool,
}

#[derive(Debug, Clone, Default)]
pub struct Scope {
    pub roots: Vec<WatchRoot>,
}

/// Where a directory sits relative to the watched roots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// Events in it may be logged.
    Inside,
    /// Above a root: needed to build root paths, never logged.
    Ancestor,
    Outside,
}

/// Is `path` equal to `root` or below it (whole components)?
pub fn under(path: &str, root: &str) -> bool {
    if root == "/" {
        return path.starts_with('/');
    }
    path.starts_with(root) && (path.len() == root.len() || path.as_bytes()[root.len()] == b'/')
}

/// Is `path` a direct child of `dir`?
pub fn child_of(path: &str, dir: &str) -> bool {
    let Some(rest) = (if dir == "/" {
        path.strip_prefix('/')
    } else {
        path.strip_prefix(dir).and_then(|r| r.strip_prefix('/'))
    }) else {
        return false;
    };
    !rest.is_empty() && !rest.contains('/')
}

impl Scope {
    pub fn from_roots(mut roots: Vec<WatchRoot>) -> Self {
        roots.sort_by(|a, b| a.path.cmp(&b.path).then(b.recursive.cmp(&a.recursive)));
        roots.dedup_by(|a, b| a.path == b.path);
        Scope { roots }
    }

    /// Could an event at `path` belong to some group? (A coarse test; the
    /// filter stage decides per group.)
    pub fn contains_event(&self, path: &str) -> bool {
        self.roots.iter().any(|r| {
            if r.recursive {
                under(path, &r.path)
            } else {
                path == r.path || child_of(path, &r.path)
            }
        })
    }

    /// Classifies a directory for the cache.
    pub fn place_of_dir(&self, dir: &str) -> Place {
        let mut place = Place::Outside;
        for r in &self.roots {
            if (r.recursive && under(dir, &r.path))
                || dir == r.path
                || (!r.recursive && child_of(dir, &r.path))
            {
                return Place::Inside;
            }
            if under(&r.path, dir) {
                place = Place::Ancestor;
            }
        }
        place
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn component_prefixes() {
        assert!(under("/data/a", "/data/a"));
        assert!(under("/data/a/x", "/data/a"));
        assert!(!under("/data/ab", "/data/a"));
        assert!(under("/x", "/"));
        assert!(child_of("/data/a/x", "/data/a"));
        assert!(!child_of("/data/a/x/y", "/data/a"));
        assert!(!child_of("/data/a", "/data/a"));
        assert!(child_of("/etc", "/"));
    }

    #[test]
    fn places() {
        let s = Scope::from_roots(vec![
            WatchRoot {
                path: "/w/rec".into(),
                recursive: true,
            },
            WatchRoot {
                path: "/w/flat".into(),
                recursive: false,
            },
        ]);
        assert_eq!(s.place_of_dir("/w/rec/a/b"), Place::Inside);
        assert_eq!(s.place_of_dir("/w/flat"), Place::Inside);
        assert_eq!(s.place_of_dir("/w/flat/sub"), Place::Inside);
        assert_eq!(s.place_of_dir("/w/flat/sub/deeper"), Place::Outside);
        assert_eq!(s.place_of_dir("/w"), Place::Ancestor);
        assert_eq!(s.place_of_dir("/"), Place::Ancestor);
        assert_eq!(s.place_of_dir("/other"), Place::Outside);
        assert!(s.contains_event("/w/rec/a/b/file"));
        assert!(s.contains_event("/w/flat/file"));
        assert!(!s.contains_event("/w/flat/sub/file"));
        assert!(!s.contains_event("/w/recx"));
    }
}
