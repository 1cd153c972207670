//! Stage 5, filter: which events are logged, by which groups, as which
//! types. Every filtering decision is here, in two halves:
//!
//! - [`at_capture`], on the capture thread, before an event costs a batch
//!   slot: the types no group asks for, the daemon's own events, events
//!   outside every watched tree (scope, as the resolver placed the path)
//!   and events the daemon's user may not see;
//! - [`CompiledGroup::logs`], on the process thread, per group: the path's
//!   entries (recursive or direct children), their types, the size filter,
//!   and for a command group, membership of the process (its chain).
//!
//! Groups come from the store. A group matches an event when one of its
//! paths covers the event's path (recursively, or as a direct child), the
//! type is among that path's types, the size filter passes, and, for a
//! command group, the process descends from a process that exec'd it.
use std::sync::Arc;

use super::{
    Captured,
    resolve::Resolution,
    scope::{Scope, WatchRoot, child_of, under},
};
use crate::{
    filters::SizeFilter,
    marks::MarkKind,
    store::{GLOBAL, Store},
};

#[derive(Debug, Clone)]
struct Entry {
    root: String,
    recursive: bool,
    types: u64,
    size: Option<SizeFilter>,
    mark: MarkKind,
}

#[derive(Debug, Clone)]
pub struct CompiledGroup {
    pub name: Arc<str>,
    /// The tracked command; `None` for `_global`.
    pub cmd: Option<String>,
    entries: Vec<Entry>,
    /// Union of the entries' types: a quick reject.
    pub types: u64,
}

/// What the capture stage does with one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaptureVerdict {
    /// Hand it on with these types (a subset of what groups ask for).
    Keep { types: u64, unresolved: bool },
    /// Inside a watched tree, but the daemon's user may not see it
    /// (counted in `fsmon_events_hidden_total`).
    Hidden,
    /// Nobody asked for it: no wanted type, fsmon's own, or outside.
    Drop,
}

/// The capture half of filtering: `types` of an event by `pid` that the
/// resolver placed as `resolution`; `wanted_types` is what any group asks
/// for, `self_pid` the daemon (its own log writes are never reported).
pub fn at_capture(
    types: u64,
    wanted_types: u64,
    pid: u32,
    self_pid: u32,
    resolution: Resolution,
) -> CaptureVerdict {
    let types = types & wanted_types;
    if types == 0 || pid == self_pid {
        return CaptureVerdict::Drop;
    }
    match resolution {
        Resolution::Path {
            inside: true,
            visible: true,
        } => CaptureVerdict::Keep {
            types,
            unresolved: false,
        },
        Resolution::Unresolved => CaptureVerdict::Keep {
            types,
            unresolved: true,
        },
        Resolution::Path {
            inside: true,
            visible: false,
        } => CaptureVerdict::Hidden,
        _ => CaptureVerdict::Drop,
    }
}

impl CompiledGroup {
    /// The process half of filtering, for this group: the types it logs for
    /// the captured event `c` at `path`. `member(cmd)` says whether the
    /// event's process belongs to the command `cmd`; it is asked only for
    /// a command group, and only when the path and types matched.
    pub fn logs(&self, c: &Captured, path: &str, member: impl FnOnce(&str) -> bool) -> u64 {
        let types = self.match_types(path, c.types, c.size, c.unresolved);
        if types == 0 {
            return 0;
        }
        match &self.cmd {
            Some(cmd) if !member(cmd) => 0,
            _ => types,
        }
    }

    /// The subset of `mask` this group logs for an event at `path`.
    /// Unresolved events (path unknown) match on type alone.
    pub fn match_types(&self, path: &str, mask: u64, size: u64, unresolved: bool) -> u64 {
        if self.types & mask == 0 {
            return 0;
        }
        let mut hit = 0;
        for e in &self.entries {
            let covered = unresolved
                || if e.recursive {
                    under(path, &e.root)
                } else {
                    path == e.root || child_of(path, &e.root)
                };
            if covered && e.size.is_none_or(|f| f.matches(size)) {
                hit |= e.types & mask;
            }
        }
        hit
    }
}

/// All groups, compiled from the store.
#[derive(Debug, Clone, Default)]
pub struct GroupSet {
    pub groups: Vec<CompiledGroup>,
}

impl GroupSet {
    pub fn from_store(store: &Store) -> Self {
        let groups = store
            .groups
            .iter()
            .filter(|g| !g.paths.is_empty())
            .map(|g| {
                let entries: Vec<Entry> = g
                    .paths
                    .iter()
                    .map(|(path, o)| Entry {
                        root: path.clone(),
                        recursive: o.recursive,
                        types: o.type_set().0,
                        size: o.size,
                        mark: o.mark,
                    })
                    .collect();
                CompiledGroup {
                    name: Arc::from(g.cmd.as_str()),
                    cmd: (g.cmd != GLOBAL).then(|| g.cmd.clone()),
                    types: entries.iter().fold(0, |m, e| m | e.types),
                    entries,
                }
            })
            .collect();
        GroupSet { groups }
    }

    /// Every watched path, for the resolver and the marks.
    pub fn scope(&self) -> Scope {
        Scope::from_roots(
            self.groups
                .iter()
                .flat_map(|g| g.entries.iter())
                .map(|e| WatchRoot {
                    path: e.root.clone(),
                    recursive: e.recursive,
                })
                .collect(),
        )
    }

    /// Every watched path with the kind of mark it asks for (several
    /// groups on one path: the stronger kind, see [`MarkKind::merge`]).
    pub fn marked_roots(&self) -> Vec<(WatchRoot, MarkKind)> {
        let mut kinds: std::collections::HashMap<&str, MarkKind> = Default::default();
        for e in self.groups.iter().flat_map(|g| g.entries.iter()) {
            let k = kinds.entry(e.root.as_str()).or_default();
            *k = k.merge(e.mark);
        }
        self.scope()
            .roots
            .into_iter()
            .map(|r| {
                let kind = kinds.get(r.path.as_str()).copied().unwrap_or_default();
                (r, kind)
            })
            .collect()
    }

    /// Event types any group wants.
    pub fn types(&self) -> u64 {
        self.groups.iter().fold(0, |m, g| m | g.types)
    }

    /// Commands to track.
    pub fn commands(&self) -> impl Iterator<Item = &str> {
        self.groups.iter().filter_map(|g| g.cmd.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{event::EventType, store::PathOptions};

    #[test]
    fn capture_keeps_only_wanted_foreign_visible_events() {
        const C: u64 = EventType::Create.mask();
        const M: u64 = EventType::Modify.mask();
        let inside = Resolution::Path {
            inside: true,
            visible: true,
        };
        let keep = |types, unresolved| CaptureVerdict::Keep { types, unresolved };
        assert_eq!(at_capture(C | M, C, 5, 9, inside), keep(C, false));
        assert_eq!(
            at_capture(C, C, 5, 9, Resolution::Unresolved),
            keep(C, true)
        );
        // No group wants it, or it is the daemon's own.
        assert_eq!(at_capture(M, C, 5, 9, inside), CaptureVerdict::Drop);
        assert_eq!(at_capture(C, C, 9, 9, inside), CaptureVerdict::Drop);
        // Outside every tree; inside but not the user's to see.
        let outside = Resolution::Path {
            inside: false,
            visible: true,
        };
        assert_eq!(at_capture(C, C, 5, 9, outside), CaptureVerdict::Drop);
        assert_eq!(
            at_capture(C, C, 5, 9, Resolution::Drop),
            CaptureVerdict::Drop
        );
        let hidden = Resolution::Path {
            inside: true,
            visible: false,
        };
        assert_eq!(at_capture(C, C, 5, 9, hidden), CaptureVerdict::Hidden);
        // Hidden is only counted for events someone would have logged.
        assert_eq!(at_capture(M, C, 5, 9, hidden), CaptureVerdict::Drop);
    }

    #[test]
    fn matching() {
        let mut s = Store::default();
        s.add(
            "_global",
            "/w",
            PathOptions {
                recursive: true,
                types: vec![EventType::Create, EventType::CloseWrite],
                size: None,
                mark: Default::default(),
            },
        );
        s.add(
            "nginx",
            "/w/flat",
            PathOptions {
                recursive: false,
                types: vec![EventType::CloseWrite],
                size: Some(SizeFilter::parse(">=1KB").unwrap()),
                mark: Default::default(),
            },
        );
        let gs = GroupSet::from_store(&s);
        let (g, n) = (&gs.groups[0], &gs.groups[1]);
        let cw = EventType::CloseWrite.mask();
        let cr = EventType::Create.mask();
        assert_eq!(g.match_types("/w/a/b", cw | cr, 0, false), cw | cr);
        assert_eq!(g.match_types("/wx/a", cw, 0, false), 0);
        assert_eq!(n.match_types("/w/flat/f", cw, 2048, false), cw);
        assert_eq!(n.match_types("/w/flat/f", cw, 10, false), 0, "size filter");
        assert_eq!(
            n.match_types("/w/flat/sub/f", cw, 2048, false),
            0,
            "not recursive"
        );
        assert_eq!(n.match_types("/w/flat/f", cr, 2048, false), 0, "type");
        assert_eq!(n.cmd.as_deref(), Some("nginx"));
        assert_eq!(gs.types(), cw | cr);
        assert_eq!(gs.scope().roots.len(), 2);
    }
}
