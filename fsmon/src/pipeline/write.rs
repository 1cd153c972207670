//! Stage 6, write: one append-only JSONL file per group.
//!
//! Lines are built in a buffer and written once per batch, whole lines only.
//! If a write fails (disk full), the partial tail is cut off again so the
//! file never holds half a line in the middle, the events are counted as
//! unwritten, and writing resumes with the next batch. A file that ends in
//! the middle of a line (a crash's fragment, or a failed write that could
//! not be cut back) gets a newline before the next line written to it, for
//! as many attempts as that takes.
use std::{
    collections::HashMap,
    fs::File,
    io::Write,
    os::unix::fs::{FileExt, MetadataExt},
    path::{Path, PathBuf},
    sync::{Arc, mpsc},
};

use std::time::{Duration, Instant};

use chrono::Utc;

use crate::{
    error::Result,
    retention::{PreparedRotation, Retention, expire, finish_rotation, prepare_pass, ship_cap},
    userfs::UserFs,
};

/// How long a group whose rotation failed (or was held back by the
/// shipper) waits before its size triggers another try.
const RETRY: Duration = Duration::from_secs(10);

pub const LOG_SUFFIX: &str = "_log.jsonl";

/// `<dir>/<group>_log.jsonl`.
pub fn log_path(dir: &Path, group: &str) -> PathBuf {
    dir.join(format!("{group}{LOG_SUFFIX}"))
}

pub struct LogWriter {
    path: PathBuf,
    file: File,
    /// Our view of the file's length: where the next line starts.
    len: u64,
    ino: u64,
    buf: Vec<u8>,
    /// Events in `buf`.
    pending: u64,
    /// The file ends in the middle of a line: the next successful write
    /// must start with a newline. Kept out of `buf`, so a failed write
    /// (which drops `buf`) cannot lose it.
    open_line: bool,
    /// Set while writes fail; cleared (with a notice) when one succeeds.
    failing: bool,
}

/// What a flush did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Flushed {
    pub bytes: u64,
    pub events: u64,
    /// Events that could not be written (disk full, I/O error).
    pub lost: u64,
}

impl LogWriter {
    /// Opens (or creates) the log. A partial last line left by a crash is
    /// closed with a newline, so new events start on a fresh line and
    /// readers can skip the fragment.
    pub fn open(path: PathBuf, fs: &UserFs) -> Result<Self> {
        // As the user: the file and every directory on the way are checked
        // with the user's rights; a new file is the user's.
        let file = fs.open_append(&path, 0o600)?;
        // The system daemon's logs are read by its readers' group (0640).
        crate::system::share(&file, &path, crate::system::SHARED_FILE_MODE)?;
        let meta = file.metadata().map_err(|e| crate::Error::io(&path, e))?;
        let mut w = LogWriter {
            len: meta.len(),
            ino: meta.ino(),
            file,
            path,
            buf: Vec::with_capacity(64 * 1024),
            pending: 0,
            open_line: false,
            failing: false,
        };
        w.check_tail();
        if w.open_line {
            log::warn!(
                "{}: last line was cut short (crash?); starting on a new line",
                w.path.display()
            );
        }
        Ok(w)
    }

    /// Sets `open_line` from the file's last byte at `len`.
    fn check_tail(&mut self) {
        let mut last = [0u8; 1];
        self.open_line = self.len > 0
            && self.file.read_exact_at(&mut last, self.len - 1).is_ok()
            && last[0] != b'\n';
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The buffer to serialize one line into; call [`end_line`] after.
    pub fn line_buf(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    pub fn end_line(&mut self) {
        self.buf.push(b'\n');
        self.pending += 1;
    }

    pub fn has_pending(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Writes the buffered lines.
    pub fn flush(&mut self) -> Flushed {
        if self.buf.is_empty() {
            return Flushed::default();
        }
        let events = self.pending;
        if self.open_line {
            // Rare (once after a crash or a failed write): the copy is fine.
            self.buf.insert(0, b'\n');
        }
        let result = self.file.write_all(&self.buf);
        let outcome = match result {
            Ok(()) => {
                self.len += self.buf.len() as u64;
                self.open_line = false;
                if self.failing {
                    self.failing = false;
                    log::warn!("{}: writing again", self.path.display());
                }
                Flushed {
                    bytes: self.buf.len() as u64,
                    events,
                    lost: 0,
                }
            }
            Err(e) => {
                // Cut back whatever part of the batch did land. If that
                // fails too, take the file as it is and close its last line
                // before the next one.
                if self.file.set_len(self.len).is_err() {
                    if let Ok(m) = self.file.metadata() {
                        self.len = m.len();
                    }
                    self.check_tail();
                }
                if !self.failing {
                    self.failing = true;
                    log::warn!(
                        "{}: cannot write ({e}); events are counted as lost until writing works again",
                        self.path.display()
                    );
                }
                Flushed {
                    bytes: 0,
                    events: 0,
                    lost: events,
                }
            }
        };
        self.buf.clear();
        self.pending = 0;
        outcome
    }

    pub fn sync(&self) {
        let _ = self.file.sync_data();
    }

    /// Reopens the file if it was replaced or truncated under us (a user
    /// trimming logs by hand with `tail > tmp && mv tmp log`).
    pub fn follow_replacement(&mut self, fs: &UserFs) {
        let path = self.path.clone();
        match fs.run(move || std::fs::symlink_metadata(path)) {
            Ok(m) if m.ino() == self.ino => {
                if m.len() < self.len {
                    // Truncated by hand, maybe in the middle of a line.
                    self.len = m.len();
                    self.check_tail();
                }
            }
            _ => {
                if let Ok(w) = LogWriter::open(self.path.clone(), fs) {
                    let buf = std::mem::take(&mut self.buf);
                    let pending = self.pending;
                    *self = w;
                    self.buf.extend_from_slice(&buf);
                    self.pending += pending;
                }
            }
        }
    }
}

/// The writers of all groups, opened on first use.
pub struct LogSet {
    dir: Option<PathBuf>,
    fs: UserFs,
    writers: HashMap<Arc<str>, LogWriter>,
    /// Groups whose log could not be opened (reported once).
    broken: HashMap<Arc<str>, String>,
    retention: Option<Retention>,
    /// When every group's log is checked next.
    next_retention: Option<Instant>,
    /// Groups whose last retention pass failed or could not rotate (the
    /// shipper is behind): not tried again for their size before this.
    retention_backoff: HashMap<String, Instant>,
    /// The thread that prepares rotations, and the groups it has in hand.
    rotator: Option<Rotator>,
    rotating: std::collections::HashSet<String>,
    /// What retention did, for the metrics (published by the caller).
    pub retention_counts: RetentionCounts,
}

/// Running totals of retention's work since start.
#[derive(Debug, Default, Clone, Copy)]
pub struct RetentionCounts {
    pub rotations: u64,
    pub archives_deleted: u64,
    pub failures: u64,
}

/// A retention pass to prepare off the writer thread.
struct Job {
    group: String,
    live: PathBuf,
    shipped: bool,
    policy: Retention,
}

/// What the rotator thread did: archives expired, and the rotation it
/// prepared (if one was due) for the writer to finish.
struct Prepared {
    group: String,
    result: Result<(Option<PreparedRotation>, Vec<String>)>,
}

struct Rotator {
    jobs: mpsc::Sender<Job>,
    done: mpsc::Receiver<Prepared>,
}

impl Rotator {
    /// A thread with its own user-credentials thread, so compressing a big
    /// log never holds up the writer's file work.
    fn start(fs: &UserFs) -> Result<Rotator> {
        let own = UserFs::new(fs.user())?;
        let (jobs, jobs_rx) = mpsc::channel::<Job>();
        let (done_tx, done) = mpsc::channel();
        std::thread::Builder::new()
            .name("fsmon-retention".into())
            .spawn(move || {
                for job in jobs_rx {
                    let Job {
                        group,
                        live,
                        shipped,
                        policy,
                    } = job;
                    let result = own.run(move || {
                        let now = Utc::now();
                        let deleted = expire(&live, &policy, now)?;
                        let cap = ship_cap(&live, shipped);
                        Ok((prepare_pass(&live, &policy, cap, now)?, deleted))
                    });
                    if done_tx.send(Prepared { group, result }).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| {
                crate::Error::invalid(format!("cannot start the retention thread: {e}"))
            })?;
        Ok(Rotator { jobs, done })
    }
}

impl LogSet {
    pub fn new(dir: Option<PathBuf>, fs: UserFs) -> Result<Self> {
        if let Some(d) = &dir {
            fs.create_dir_all(d)?;
        }
        Ok(Self {
            dir,
            fs,
            writers: HashMap::new(),
            broken: HashMap::new(),
            retention: None,
            next_retention: None,
            retention_backoff: HashMap::new(),
            rotator: None,
            rotating: Default::default(),
            retention_counts: RetentionCounts::default(),
        })
    }

    /// Turns on retention: every log is checked one interval from now and
    /// every interval after, and a log is rotated soon after it grows past
    /// [`Retention::rotate_at`]. The slow part of a rotation (compressing,
    /// copying the rest of the log) runs on a thread of its own with the
    /// user's credentials; the writer only does the final swap.
    pub fn set_retention(&mut self, policy: Retention) {
        self.next_retention = Some(Instant::now() + policy.interval);
        self.retention = Some(policy);
        if self.rotator.is_none() {
            match Rotator::start(&self.fs) {
                Ok(r) => self.rotator = Some(r),
                Err(e) => {
                    log::error!("retention: cannot start its thread: {e}; logs are not rotated")
                }
            }
        }
    }

    /// Between batches (writers flushed): finishes the rotations prepared
    /// meanwhile, and starts the retention passes due now.
    pub fn retain(&mut self) {
        // Called between every two batches: nothing is cloned or allocated
        // unless a rotation finished, a log is past its size, or the
        // periodic check is due.
        let (Some(rotator), Some(rotate_at)) = (
            &self.rotator,
            self.retention.as_ref().map(Retention::rotate_at),
        ) else {
            return;
        };
        let now = Instant::now();
        let finished: Vec<Prepared> = rotator.done.try_iter().collect();
        if finished.is_empty()
            && self.next_retention.is_none_or(|at| now < at)
            && !self.writers.values().any(|w| w.len > rotate_at)
        {
            return;
        }
        let (Some(policy), Some(dir)) = (self.retention.clone(), self.dir.clone()) else {
            return;
        };
        for done in finished {
            self.finish(done, &policy);
        }
        let mut groups: Vec<String> = self
            .writers
            .iter()
            .filter(|(g, w)| {
                w.len > policy.rotate_at()
                    && self
                        .retention_backoff
                        .get(&***g)
                        .is_none_or(|until| now >= *until)
            })
            .map(|(g, _)| g.to_string())
            .collect();
        if self.next_retention.is_some_and(|at| now >= at) {
            self.next_retention = Some(now + policy.interval);
            self.retention_backoff.clear();
            let dir = dir.clone();
            groups = self.fs.run(move || -> Vec<String> {
                let Ok(entries) = std::fs::read_dir(&dir) else {
                    return Vec::new();
                };
                entries
                    .filter_map(|e| {
                        let name = e.ok()?.file_name().into_string().ok()?;
                        let group = name.strip_suffix(LOG_SUFFIX)?;
                        crate::store::validate_group(group).ok()?;
                        Some(group.to_string())
                    })
                    .collect()
            });
        }
        for group in groups {
            if !self.rotating.insert(group.clone()) {
                continue; // one pass per group at a time
            }
            let job = Job {
                live: log_path(&dir, &group),
                shipped: policy.shipped(&group),
                policy: policy.clone(),
                group,
            };
            if let Some(r) = &self.rotator
                && r.jobs.send(job).is_err()
            {
                log::error!("retention: its thread is gone; logs are not rotated");
                self.rotator = None;
                return;
            }
        }
    }

    /// The writer's half of a rotation: the swap, as the user.
    fn finish(&mut self, done: Prepared, policy: &Retention) {
        let group = done.group;
        self.rotating.remove(&group);
        let (rotation, deleted) = match done.result {
            Ok(r) => r,
            Err(e) => {
                log::warn!("group {group}: retention: {e}; the log is left as it is");
                self.retention_counts.failures += 1;
                self.retention_backoff.insert(group, Instant::now() + RETRY);
                return;
            }
        };
        for name in &deleted {
            log::info!("group {group}: archive {name} deleted (keep_days / size)");
        }
        self.retention_counts.archives_deleted += deleted.len() as u64;
        let Some(rotation) = rotation else {
            log::debug!(
                "group {group}: retention: nothing to archive now (too little, or not yet shipped)"
            );
            // Nothing could move (small, or unshipped lines): not again
            // every second.
            self.retention_backoff.insert(group, Instant::now() + RETRY);
            return;
        };
        // The log is swapped under the writer: close it (it is flushed);
        // the next event reopens the new file.
        if let Some(mut w) = self.writers.remove(group.as_str())
            && w.has_pending()
        {
            w.flush();
        }
        let live = rotation.live().to_owned();
        let (ship, owner) = (policy.ship.clone(), self.fs.user().clone());
        let group2 = group.clone();
        let result = self.fs.run(move || {
            finish_rotation(rotation, |ino, cut, swap| match &ship {
                Some(s) => s.around_swap(&group2, &live, ino, cut, swap),
                None => crate::ship::cursor::around_swap(&live, &owner, ino, cut, None, swap),
            })
        });
        match result {
            Ok(name) => {
                log::info!("group {group}: the start of its log archived as {name}");
                self.retention_counts.rotations += 1;
                self.retention_backoff.remove(&group);
            }
            Err(e) => {
                log::warn!("group {group}: retention: {e}; the log is left as it is");
                self.retention_counts.failures += 1;
                self.retention_backoff.insert(group, Instant::now() + RETRY);
            }
        }
    }

    pub fn enabled(&self) -> bool {
        self.dir.is_some()
    }

    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// The writer of `group`, opening its file if needed. `None` when file
    /// output is off or the file cannot be opened (e.g. a symlink was planted
    /// there: refused, reported once).
    pub fn writer(&mut self, group: &Arc<str>) -> Option<&mut LogWriter> {
        let dir = self.dir.as_ref()?;
        if !self.writers.contains_key(group) {
            if self.broken.contains_key(group) {
                return None;
            }
            match LogWriter::open(log_path(dir, group), &self.fs) {
                Ok(w) => {
                    self.writers.insert(group.clone(), w);
                }
                Err(e) => {
                    log::error!("group {group}: {e}; its events are not written to a file");
                    self.broken.insert(group.clone(), e.to_string());
                    return None;
                }
            }
        }
        self.writers.get_mut(group)
    }

    pub fn flush_all(&mut self) -> Flushed {
        let mut total = Flushed::default();
        for w in self.writers.values_mut() {
            let f = w.flush();
            total.bytes += f.bytes;
            total.events += f.events;
            total.lost += f.lost;
        }
        total
    }

    pub fn sync_all(&self) {
        for w in self.writers.values() {
            w.sync();
        }
    }

    /// Periodic: follow logs replaced by hand; retry broken groups.
    pub fn maintain(&mut self) {
        for w in self.writers.values_mut() {
            w.follow_replacement(&self.fs);
        }
        self.broken.clear();
    }

    /// Closes a group's writer (after its log was swapped by `clean`); the
    /// next event reopens the new file.
    pub fn close(&mut self, group: &str) -> Option<LogWriter> {
        let key: Arc<str> = Arc::from(group);
        self.writers.remove(&key)
    }

    /// The user's credentials for file work (a `clean` swap runs with them).
    pub fn fs(&self) -> &UserFs {
        &self.fs
    }

    /// Groups whose logs cannot be opened, with the reason.
    pub fn broken(&self) -> impl Iterator<Item = (&str, &str)> {
        self.broken.iter().map(|(g, e)| (&**g, e.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> UserFs {
        UserFs::direct(crate::user::TargetUser::from_uid(nix::unistd::geteuid().as_raw()).unwrap())
    }

    #[test]
    fn partial_last_line_is_closed() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("g_log.jsonl");
        std::fs::write(&p, "{\"a\":1}\n{\"trunc").unwrap();
        let mut w = LogWriter::open(p.clone(), &me()).unwrap();
        w.line_buf().extend_from_slice(b"{\"b\":2}");
        w.end_line();
        let f = w.flush();
        assert_eq!(f.events, 1);
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "{\"a\":1}\n{\"trunc\n{\"b\":2}\n"
        );
    }

    #[test]
    fn newline_closing_a_fragment_survives_failed_writes() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("g_log.jsonl");
        std::fs::write(&p, "{\"a\":1}\n{\"trunc").unwrap();
        let mut w = LogWriter::open(p.clone(), &me()).unwrap();
        // A read-only descriptor: every write fails (as on a full disk).
        let writable = std::mem::replace(&mut w.file, File::open(&p).unwrap());
        for _ in 0..2 {
            w.line_buf().extend_from_slice(b"{\"lost\":1}");
            w.end_line();
            assert_eq!(w.flush().lost, 1);
        }
        w.file = writable;
        w.line_buf().extend_from_slice(b"{\"b\":2}");
        w.end_line();
        assert_eq!(w.flush().events, 1);
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "{\"a\":1}\n{\"trunc\n{\"b\":2}\n"
        );
    }

    #[test]
    fn planted_symlink_is_refused_and_target_untouched() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("victim");
        std::fs::write(&target, "precious").unwrap();
        std::os::unix::fs::symlink(&target, d.path().join("_global_log.jsonl")).unwrap();
        let mut set = LogSet::new(Some(d.path().to_path_buf()), me()).unwrap();
        assert!(set.writer(&Arc::from("_global")).is_none());
        assert_eq!(set.broken().count(), 1);
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious");
    }

    #[test]
    fn replaced_log_is_followed() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("g_log.jsonl");
        let mut w = LogWriter::open(p.clone(), &me()).unwrap();
        w.line_buf().extend_from_slice(b"1");
        w.end_line();
        w.flush();
        std::fs::write(d.path().join("tmp"), "kept\n").unwrap();
        std::fs::rename(d.path().join("tmp"), &p).unwrap();
        w.follow_replacement(&me());
        w.line_buf().extend_from_slice(b"2");
        w.end_line();
        w.flush();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "kept\n2\n");
    }
}

#[cfg(test)]
mod retention_tests {
    use super::*;

    fn me() -> UserFs {
        UserFs::direct(crate::user::TargetUser::from_uid(nix::unistd::geteuid().as_raw()).unwrap())
    }

    /// The writer's side of retention: the log grows past the rotation
    /// size, the rotator thread prepares, the writer swaps; the lines
    /// written between the two are kept, each once.
    #[test]
    fn writer_rotates_past_the_size_and_keeps_lines_written_meanwhile() {
        let d = tempfile::tempdir().unwrap();
        let mut set = LogSet::new(Some(d.path().to_path_buf()), me()).unwrap();
        set.set_retention(Retention {
            keep_days: 36500,
            size: 40_000,
            interval: Duration::from_secs(3600),
            shipped_groups: None,
            ship: None,
        });
        let group: Arc<str> = Arc::from("g");
        let line = |i: u32| {
            format!(
                "{{\"time\":\"2026-05-07T10:00:00.{i:06}+00:00\",\"event_type\":\"CREATE\",\"path\":\"/d/{i}\",\"pid\":1,\"cmd\":\"c\",\"user\":\"u\",\"file_size\":0,\"ppid\":0,\"tgid\":1}}"
            )
        };
        let mut i = 0;
        let deadline = Instant::now() + Duration::from_secs(60);
        let live = log_path(d.path(), "g");
        while crate::archive::list(&live).unwrap().len() < 3 {
            assert!(Instant::now() < deadline, "no rotation");
            for _ in 0..20 {
                let w = set.writer(&group).unwrap();
                w.line_buf().extend_from_slice(line(i).as_bytes());
                w.end_line();
                i += 1;
            }
            set.flush_all();
            set.retain();
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut out = Vec::new();
        crate::logfile::query(&live, &Default::default(), &mut out).unwrap();
        let want: String = (0..i).map(|i| line(i) + "\n").collect();
        assert_eq!(String::from_utf8(out).unwrap(), want);
    }
}
