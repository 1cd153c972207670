//! Stage 4, attribute: who caused the event. A thin layer over the
//! [`ProcessTracker`] that remembers the last process looked up, because a
//! batch usually holds several events of the same process (touch: CREATE,
//! ATTRIB, CLOSE_WRITE), and keeps the buffers chains are built in. It
//! also names the process's cgroup and container.
use std::sync::Arc;

use fsmon_common::ProcRecord;

use crate::process::{
    ProcessTracker,
    cgroup::{CgroupInfo, CgroupNames},
};

pub struct Attributor {
    pub tracker: ProcessTracker,
    last: Option<(u32, Option<ProcRecord>)>,
    chain: String,
    chain_for: Option<u32>,
    cgroups: CgroupNames,
    last_cgroup: Option<(u64, Arc<CgroupInfo>)>,
}

impl Attributor {
    pub fn new(tracker: ProcessTracker) -> Self {
        Self {
            tracker,
            last: None,
            chain: String::with_capacity(256),
            chain_for: None,
            cgroups: CgroupNames::open(),
            last_cgroup: None,
        }
    }

    /// Forget per-batch memos: records may change between batches.
    pub fn begin_batch(&mut self) {
        self.last = None;
        self.chain_for = None;
    }

    /// The process record for `pid` as of `queued_before` (boot ns; the
    /// event was queued before then), if the tracker knows it.
    pub fn process(&mut self, pid: u32, queued_before: u64) -> Option<ProcRecord> {
        match self.last {
            Some((p, rec)) if p == pid => rec,
            _ => {
                let rec = if pid == 0 {
                    None
                } else {
                    self.tracker.record_at(pid, queued_before)
                };
                self.last = Some((pid, rec));
                rec
            }
        }
    }

    /// The cgroup (and container) of the process of `rec`; `None` when the
    /// record has no cgroup id (the `/proc` fallback).
    pub fn cgroup(&mut self, rec: &ProcRecord) -> Option<Arc<CgroupInfo>> {
        match &self.last_cgroup {
            Some((id, info)) if *id == rec.cgroup_id => Some(info.clone()),
            _ => {
                let info = self.cgroups.get(rec.cgroup_id)?;
                self.last_cgroup = Some((rec.cgroup_id, info.clone()));
                Some(info)
            }
        }
    }

    pub fn user(&mut self, uid: u32) -> std::sync::Arc<str> {
        self.tracker.user_name_rc(uid)
    }

    pub fn descends_from(&mut self, rec: &ProcRecord, cmd: &str) -> bool {
        self.tracker.record_descends_from(rec, cmd)
    }

    /// The ancestry chain of the process of `rec`, built once per event
    /// however many groups want it.
    pub fn chain(&mut self, rec: &ProcRecord) -> &str {
        if self.chain_for != Some(rec.tgid) {
            self.chain.clear();
            self.tracker.write_chain_from(rec, &mut self.chain);
            self.chain_for = Some(rec.tgid);
        }
        &self.chain
    }
}
