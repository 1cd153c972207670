//! `fsmon daemon`: sets everything up in order, serves the control socket,
//! and shuts down cleanly on SIGTERM/SIGINT, writing every event it read.
//!
//! Order matters: socket directory checked, lock (one daemon per user) -> store -> process tracker
//! (loaded by a short-lived child, which keeps aya's memory peak) -> fanotify group ->
//! log files -> pipeline threads -> socket.
use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex, atomic::Ordering},
    time::Instant,
};

use anyhow::{Context, bail};
use serde_json::json;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
};

use crate::{
    clients::{Acceptor, Admission},
    config::{Config, TrackerChoice},
    control::{MAX_REQUEST, REQUEST_TIMEOUT, Request, parse_request},
    error::Error,
    fanotify::{Fanotify, QueueSize},
    filters::SizeFilter,
    metrics::Metrics,
    pipeline::{Pipeline, PipelineConfig, filter::GroupSet, write::LogSet},
    process::{ProcessTracker, TrackerConfig, TrackerKind},
    sockpath::SocketDir,
    store::{self, PathOptions, Store, StoreLock},
    user::TargetUser,
    userfs::UserFs,
};

pub struct DaemonOptions {
    pub config: Config,
    pub user: TargetUser,
    /// The user's files (config, store, logs) are touched through this.
    pub fs: UserFs,
    pub debug: bool,
}

/// Shared by the socket handlers.
struct State {
    cfg: Config,
    user: TargetUser,
    fs: UserFs,
    store: Mutex<Store>,
    pipeline: Pipeline,
    metrics: Arc<Metrics>,
    started: Instant,
    /// `[ship.nats]`: the shipper, if on.
    ship: Option<Arc<crate::ship::Shipper>>,
}

pub fn run(opts: DaemonOptions) -> anyhow::Result<()> {
    let DaemonOptions {
        config: cfg,
        user,
        fs,
        debug,
    } = opts;
    if !nix::unistd::geteuid().is_root() {
        bail!("the daemon needs root (fanotify and BPF): run it as `sudo fsmon daemon`");
    }
    crate::clients::raise_nofile_limit();
    if user.is_system() {
        prepare_system(&cfg)?;
    }
    // The socket's directory is checked and held open before anything
    // else: the lock, the bind and the removal at exit go through it.
    let mut socket_dir = SocketDir::open(&cfg.socket_path, &user)?;
    let _lock = socket_dir.lock(&user)?;
    let store = Store::load(&fs, &cfg.store_path)
        .with_context(|| format!("reading {}", cfg.store_path.display()))?;
    for u in &store.unparsed {
        log::warn!("{}", u.describe(&cfg.store_path));
    }
    let groups = Arc::new(GroupSet::from_store(&store));

    let tracker_cfg = TrackerConfig {
        map_capacity: cfg.map_capacity,
        exit_grace: cfg.exit_grace,
        force_procfs: cfg.tracker == TrackerChoice::Procfs
            || std::env::var_os("FSMON_TRACKER").is_some_and(|v| v == "procfs"),
        debug,
        proc_ttl: cfg.proc_ttl,
        // /proc/self/exe: the very binary running, even if its path was
        // replaced since we started.
        loader_exe: Some(PathBuf::from("/proc/self/exe")),
    };
    let mut tracker = ProcessTracker::start(&tracker_cfg)?;
    if cfg.tracker == TrackerChoice::Ebpf && tracker.kind() != TrackerKind::Ebpf {
        bail!(
            "the eBPF tracker was required ([process] tracker = \"ebpf\") but could not load: {}",
            tracker.fallback_reason().unwrap_or("unknown reason")
        );
    }
    let ebpf_logger = if debug {
        tracker.take_ebpf_logger()
    } else {
        None
    };

    let queue = match cfg.queue_size {
        None => QueueSize::SystemDefault,
        Some(0) => QueueSize::Unlimited,
        Some(n) => QueueSize::Events(n),
    };
    let fan = Fanotify::init(queue)?;
    let logs = LogSet::new(cfg.log_dir.clone(), fs.clone())?;
    if cfg.log_dir.is_none() {
        log::warn!(
            "file output is off: {} sets [logging] enabled = false",
            cfg.file
                .as_deref()
                .unwrap_or(Path::new("the config"))
                .display()
        );
    }
    let metrics = Arc::new(Metrics::new());
    if cfg.log_dir.is_none() {
        // No log filesystem: a 0 there would read as a full disk.
        metrics.drop_disk_free();
    }
    let pipeline = Pipeline::start(
        fan,
        tracker,
        logs,
        groups,
        PipelineConfig {
            buffer_size: cfg.buffer_size,
            channel_capacity: cfg.channel_capacity,
            local_time: cfg.local_time,
            sync_interval: cfg.sync_interval,
            dir_capacity: cfg.dir_capacity,
            dir_ttl: cfg.dir_ttl,
            file_size_capacity: cfg.file_size_capacity,
            stats_interval: cfg.stats_interval,
            subscribe_buf: cfg.subscribe_buf,
            user_access: crate::pipeline::access::UserAccess::for_user(&user),
        },
        metrics.clone(),
    )?;
    let ship = start_shipper(&cfg, &user, &metrics);
    if let (Some(interval), Some(_)) = (cfg.retention_interval, &cfg.log_dir) {
        let policy = crate::retention::Retention {
            keep_days: cfg.keep_days,
            size: cfg.clean_size.bytes(),
            interval,
            shipped_groups: cfg.ship.as_ref().map(|s| s.groups.clone()),
            ship: ship.clone(),
        };
        pipeline.with_logs(Box::new(move |logs: &mut LogSet| {
            logs.set_retention(policy)
        }));
    }
    let state = Arc::new(State {
        ship,
        cfg,
        user,
        fs,
        store: Mutex::new(store),
        pipeline,
        metrics,
        started: Instant::now(),
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(async {
        let listener = UnixListener::from_std(socket_dir.bind(&state.user)?)?;
        if let Some(gid) = crate::system::readers() {
            socket_dir.share_bound(gid)?;
        }
        serve(state.clone(), listener, ebpf_logger).await
    });
    log::info!("stopping: writing what is queued");
    state.pipeline.shutdown();
    if let Some(ship) = &state.ship {
        ship.shutdown();
    }
    // Only the socket we bound: whatever made the bind fail (a planted
    // symlink, another user's socket) is not ours to remove.
    socket_dir.remove_bound();
    result
}

/// Starts shipping to NATS if configured. A problem is one error line; the
/// daemon keeps logging locally.
fn start_shipper(
    cfg: &Config,
    user: &TargetUser,
    metrics: &Metrics,
) -> Option<Arc<crate::ship::Shipper>> {
    let ship = cfg.ship.clone()?;
    let Some(dir) = cfg.log_dir.clone() else {
        log::error!(
            "ship: [ship.nats] is set but file output is off ([logging] enabled = false): the shipper reads the logs, so nothing is shipped"
        );
        return None;
    };
    match crate::ship::Shipper::start(ship, dir, user.clone(), metrics.registry()) {
        Ok(s) => Some(Arc::new(s)),
        Err(e) => {
            log::error!(
                "ship: cannot start the shipper thread: {e}; events are only logged locally"
            );
            None
        }
    }
}

/// System mode: the readers' group, and the store's and log directories
/// made (when systemd has not) and shared with it.
fn prepare_system(cfg: &Config) -> anyhow::Result<()> {
    match crate::user::system_group() {
        Some((name, gid)) => {
            crate::system::set_readers(gid);
            log::info!("system mode: members of group {name} may read events and status");
        }
        None => log::warn!(
            "system mode: group {} does not exist; only root can read events (groupadd --system {} to share them)",
            crate::user::SYSTEM_GROUP,
            crate::user::SYSTEM_GROUP
        ),
    }
    if let Some(dir) = cfg.store_path.parent() {
        crate::system::prepare_dir(dir)?;
    }
    if let Some(dir) = &cfg.log_dir {
        crate::system::prepare_dir(dir)?;
    }
    Ok(())
}

async fn serve(
    state: Arc<State>,
    listener: UnixListener,
    ebpf_logger: Option<crate::Result<aya_log::EbpfLogger<&'static dyn log::Log>>>,
) -> anyhow::Result<()> {
    if let Some(logger) = ebpf_logger {
        match logger {
            Ok(l) => {
                tokio::spawn(drive_ebpf_logger(l));
            }
            Err(e) => log::warn!("--debug: eBPF log output unavailable: {e}"),
        }
    }
    if let Some(addr) = state.cfg.metrics_listen.clone() {
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("metrics: cannot listen on {addr}"))?;
        log::info!(
            "serving Prometheus metrics at http://{}/metrics",
            listener.local_addr()?
        );
        tokio::spawn(serve_metrics(listener, state.metrics.clone()));
    }
    tokio::spawn(refresh_gauges(state.clone()));
    if let Some(dir) = state.cfg.log_dir.clone() {
        tokio::spawn(disk_guard(
            dir,
            state.cfg.disk_min_free,
            state.metrics.clone(),
        ));
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    // Start-up code stays in the page cache, not mapped in the daemon.
    let unmapped = crate::residency::unmap_startup_pages();
    log::debug!("unmapped {unmapped} KiB of start-up code and data");
    log::info!(
        "fsmon daemon ready: pid {}, user {}, socket {}, tracker {}",
        std::process::id(),
        state.user.name,
        state.cfg.socket_path.display(),
        state.pipeline.status.info.lock().unwrap().tracker
    );
    // Under systemd (Type=notify): ready now that the socket answers.
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    let admission = Admission::new(state.cfg.client_limits, state.metrics.clone());
    let mut acceptor = Acceptor::new(listener, state.metrics.clone());
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                let st = state.clone();
                tokio::task::spawn_blocking(move || reload_store(&st));
            }
            stream = acceptor.next() => {
                // Another user is told at once and closed: they hold no
                // connection open. (The CLI reads this answer even when its
                // request then fails to be written.)
                let cred = stream.peer_cred().ok();
                let role = cred.and_then(|c| {
                    crate::system::role_of(&stream, c.uid(), c.gid(), state.user.uid)
                });
                let (Some(cred), Some(role)) = (cred, role) else {
                    crate::clients::refuse_now(
                        &stream,
                        "permission denied: only root and the daemon's user may connect",
                    );
                    continue;
                };
                match admission.admit(cred.uid()) {
                    Ok(slot) => { tokio::spawn(client(state.clone(), stream, slot, role)); }
                    Err(refusal) => crate::clients::refuse_now(&stream, &refusal),
                }
            },
        }
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    Ok(())
}

/// `GET /metrics` in the Prometheus text format (axum: a real HTTP server,
/// not a hand-written parser).
async fn serve_metrics(listener: tokio::net::TcpListener, metrics: Arc<Metrics>) {
    use axum::{Router, http::header, routing::get};
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let m = metrics.clone();
            async move {
                (
                    [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
                    m.render(),
                )
            }
        }),
    );
    if let Err(e) = axum::serve(listener, app).await {
        log::error!("metrics HTTP server stopped: {e}");
    }
}

/// The gauges that are states, not counts: each group's log size, pending
/// paths, watch errors. Every 2 s (stat calls, off the event path).
async fn refresh_gauges(state: Arc<State>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
    loop {
        tick.tick().await;
        let st = state.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let m = &st.metrics;
            let (groups, paths): (Vec<String>, Vec<String>) = {
                let store = st.store.lock().unwrap();
                (
                    store.groups.iter().map(|g| g.cmd.clone()).collect(),
                    store
                        .groups
                        .iter()
                        .flat_map(|g| g.paths.keys().cloned())
                        .collect(),
                )
            };
            let pending = paths
                .iter()
                .filter(|p| std::fs::symlink_metadata(crate::escape::as_path(p)).is_err())
                .count();
            m.pending_paths.set(pending as i64);
            let errors = st.pipeline.status.info.lock().unwrap().watch_errors.len();
            m.watch_errors.set(errors as i64);
            if let Some(dir) = &st.cfg.log_dir {
                m.log_size_bytes.reset();
                m.log_archive_bytes.reset();
                for g in groups {
                    let path = crate::pipeline::write::log_path(dir, &g);
                    if let Ok(meta) = std::fs::symlink_metadata(&path) {
                        m.log_size_bytes
                            .with_label_values(&[g.as_str()])
                            .set(meta.len() as i64);
                    }
                    let archived: u64 = crate::archive::own_archives(&path)
                        .unwrap_or_default()
                        .iter()
                        .map(|a| a.2)
                        .sum();
                    if archived > 0 {
                        m.log_archive_bytes
                            .with_label_values(&[g.as_str()])
                            .set(archived as i64);
                    }
                }
            }
        })
        .await;
    }
}

/// Free space on the log filesystem: the gauge, and one warning when it
/// drops below the threshold, one notice when it is back above.
async fn disk_guard(
    dir: PathBuf,
    threshold: Option<crate::config::DiskMinFree>,
    metrics: Arc<Metrics>,
) {
    let mut low = false;
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
    loop {
        tick.tick().await;
        let Ok(st) = nix::sys::statvfs::statvfs(&dir) else {
            continue;
        };
        let free = st.blocks_available() * st.fragment_size();
        let total = st.blocks() * st.fragment_size();
        metrics.disk_free_bytes.set(free as i64);
        let Some(t) = threshold else { continue };
        let below = match t {
            crate::config::DiskMinFree::Percent(p) => {
                total > 0 && (free as f64) * 100.0 < p * total as f64
            }
            crate::config::DiskMinFree::Bytes(b) => free < b,
        };
        if below && !low {
            log::warn!(
                "free space on the log filesystem ({}) is low: {} MiB free of {} MiB, below the --disk-min-free threshold",
                dir.display(),
                free >> 20,
                total >> 20
            );
        } else if !below && low {
            log::warn!(
                "free space on the log filesystem ({}) is back above the threshold: {} MiB free",
                dir.display(),
                free >> 20
            );
        }
        low = below;
    }
}

async fn drive_ebpf_logger(logger: aya_log::EbpfLogger<&'static dyn log::Log>) {
    // SAFETY: the logger owns its ring-buffer fd and keeps it open for as
    // long as the AsyncFd that wraps it lives.
    let Ok(mut fd) = (unsafe { tokio::io::unix::AsyncFd::register(logger) }) else {
        return;
    };
    loop {
        let Ok(mut guard) = fd.readable_mut().await else {
            return;
        };
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}

fn reload_store(state: &State) {
    match Store::load(&state.fs, &state.cfg.store_path) {
        Ok(s) => {
            for u in &s.unparsed {
                log::warn!("{}", u.describe(&state.cfg.store_path));
            }
            let groups = Arc::new(GroupSet::from_store(&s));
            *state.store.lock().unwrap() = s;
            state.pipeline.set_groups(groups);
            log::info!("reloaded {}", state.cfg.store_path.display());
        }
        Err(e) => log::error!("reload: {e}"),
    }
}

fn error_line(msg: impl std::fmt::Display) -> String {
    format!("{}\n", json!({"ok": false, "error": msg.to_string()}))
}

/// Serves one connection of root's or the user's: requests one per line
/// until EOF. `_slot` is its place among the connections served, given back
/// when it ends.
async fn client(
    state: Arc<State>,
    stream: UnixStream,
    _slot: crate::clients::Slot,
    role: crate::system::Role,
) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut first = true;
    loop {
        let mut line = Vec::new();
        let limit = (&mut reader).take(MAX_REQUEST as u64 + 1);
        let wait = if first {
            REQUEST_TIMEOUT
        } else {
            std::time::Duration::from_secs(300)
        };
        let mut limited = limit;
        let n = match tokio::time::timeout(wait, limited.read_until(b'\n', &mut line)).await {
            Err(_) => {
                let _ = write
                    .write_all(error_line("timed out waiting for a request").as_bytes())
                    .await;
                return;
            }
            Ok(Err(_)) | Ok(Ok(0)) => return,
            Ok(Ok(n)) => n,
        };
        if n > MAX_REQUEST || (!line.ends_with(b"\n") && n == MAX_REQUEST + 1) {
            let _ = write
                .write_all(
                    error_line(format!("request longer than {MAX_REQUEST} bytes")).as_bytes(),
                )
                .await;
            // Closing with unread input would make the client see a reset
            // instead of our answer: discard the rest first, within bounds.
            let _ = write.shutdown().await;
            let mut sink = [0u8; 64 * 1024];
            let mut left = 64usize << 20;
            let drain = async {
                while left > 0 {
                    match reader.read(&mut sink).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => left = left.saturating_sub(n),
                    }
                }
            };
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), drain).await;
            return;
        }
        first = false;
        let text = String::from_utf8_lossy(&line);
        let req = match parse_request(&text) {
            Ok(r) => r,
            Err(e) => {
                let _ = write.write_all(error_line(e).as_bytes()).await;
                continue;
            }
        };
        if let Request::Subscribe { group } = req {
            if let Some(Err(e)) = group.as_deref().map(store::validate_group) {
                if write.write_all(error_line(e).as_bytes()).await.is_err() {
                    return;
                }
                continue;
            }
            subscribe(&state, group, reader, write).await;
            return;
        }
        let st = state.clone();
        let response = tokio::task::spawn_blocking(move || handle(&st, req, role))
            .await
            .unwrap_or_else(|e| Err(Error::Socket(format!("internal error: {e}"))));
        let out = match response {
            Ok(v) => format!("{v}\n"),
            Err(e) => error_line(e),
        };
        if write.write_all(out.as_bytes()).await.is_err() {
            return;
        }
    }
}

use tokio::io::AsyncReadExt as _;

/// One request, answered synchronously (runs on the blocking pool).
fn handle(
    state: &State,
    req: Request,
    role: crate::system::Role,
) -> crate::Result<serde_json::Value> {
    let changes = matches!(
        req,
        Request::Add { .. } | Request::Remove { .. } | Request::CleanSwap { .. }
    );
    if changes && role == crate::system::Role::Reader {
        return Err(Error::invalid(
            "permission denied: members of the readers' group may read, not change what is watched or clean logs (run it as root)",
        ));
    }
    match req {
        Request::Add {
            group,
            path,
            recursive,
            types,
            size,
            mark,
        } => {
            store::validate_group(&group)?;
            let mark = mark
                .as_deref()
                .map(crate::marks::MarkKind::parse)
                .transpose()?
                .unwrap_or_default();
            // Resolved and checked with the user's credentials: the user
            // may watch only what the user may read.
            let (path, pending) = state.fs.run(move || -> crate::Result<_> {
                let path = store::normalize_path(&path, Path::new("/"))?;
                crate::userfs::check_watchable(&path)?;
                let pending = !path.exists();
                Ok((path, pending))
            })?;
            let path_str = crate::escape::encode_path(&path).into_owned();
            let types = store::parse_types(&types)?;
            let size = size.map(|s| SizeFilter::parse(&s)).transpose()?;
            let opts = PathOptions {
                recursive,
                types,
                size,
                mark,
            };
            let mut previous = None;
            update_store(
                state,
                |s| previous = s.add(&group, &path_str, opts.clone()),
                &path_str,
            )?;
            // Re-adding replaces the settings: say what changed.
            let changed =
                previous.map(|old| store::describe_change(&group, &path_str, &old, &opts));
            Ok(
                json!({"ok": true, "group": group, "path": path_str, "pending": pending, "changed": changed}),
            )
        }
        Request::Remove { group, path } => {
            let path = state.fs.run(move || {
                path.map(|p| store::normalize_path(&p, Path::new("/")))
                    .transpose()
            })?;
            let p = path
                .as_ref()
                .map(|p| crate::escape::encode_path(p).into_owned());
            let mut removed = false;
            update_store(state, |s| removed = s.remove(&group, p.as_deref()), "")?;
            if !removed {
                return Err(Error::invalid(match p {
                    Some(p) => format!("group {group} does not watch {p}"),
                    None => format!("no group named {group}"),
                }));
            }
            Ok(json!({"ok": true}))
        }
        Request::Monitored {} => {
            let store = state.store.lock().unwrap();
            let groups: Vec<serde_json::Value> = store
                .groups
                .iter()
                .filter(|g| !g.paths.is_empty())
                .map(|g| serde_json::to_value(g).unwrap())
                .collect();
            Ok(json!({"ok": true, "groups": groups}))
        }
        Request::Health {} => Ok(health(state)),
        Request::Metrics {} => Ok(json!({"ok": true, "text": state.metrics.render()})),
        Request::CleanSwap {
            group,
            tmp,
            copied_until,
        } => clean_swap(state, &group, &tmp, copied_until),
        Request::Subscribe { .. } => unreachable!("handled by the connection"),
    }
}

/// Read-modify-write of the store under its lock, then applies the new
/// groups live. A path the kernel refuses to watch is taken back out.
fn update_store(state: &State, change: impl FnOnce(&mut Store), path: &str) -> crate::Result<()> {
    let _lock = StoreLock::acquire(&state.fs, &state.cfg.store_path)?;
    let mut store = Store::load(&state.fs, &state.cfg.store_path)?;
    let before = store.clone();
    change(&mut store);
    let groups = Arc::new(GroupSet::from_store(&store));
    let errors = state.pipeline.set_groups(groups);
    if let Some((_, e)) = errors.iter().find(|(p, _)| p == path) {
        state
            .pipeline
            .set_groups(Arc::new(GroupSet::from_store(&before)));
        return Err(Error::invalid(format!("cannot watch {path}: {e}")));
    }
    store.save(&state.fs, &state.cfg.store_path)?;
    *state.store.lock().unwrap() = store;
    Ok(())
}

fn health(state: &State) -> serde_json::Value {
    let info = state.pipeline.status.info.lock().unwrap().clone();
    let marks = &info.marks;
    // Whether each path exists, as the daemon's user sees it: asked as root,
    // it would tell the user whether a file in a directory closed to her
    // exists (a path hand-written into her store). Asked without the store's
    // lock held: the user-files thread may be busy.
    let all: Vec<String> = state
        .store
        .lock()
        .unwrap()
        .groups
        .iter()
        .flat_map(|g| g.paths.keys().cloned())
        .collect();
    let absent: std::collections::HashSet<String> = state.fs.run(move || {
        all.into_iter()
            .filter(|p| !crate::escape::as_path(p).exists())
            .collect()
    });
    let store = state.store.lock().unwrap();
    let paths: Vec<serde_json::Value> = store
        .groups
        .iter()
        .flat_map(|g| {
            g.paths.iter().map(|(p, o)| {
                let got = marks.iter().find(|m| m.path == *p);
                let mut v = json!({"group": g.cmd, "path": p, "recursive": o.recursive, "pending": absent.contains(p)});
                if let Some(m) = got {
                    v["mark"] = json!(m.mark);
                    if let Some(why) = &m.why {
                        v["why"] = json!(why);
                    }
                    if let Some(d) = m.dirs {
                        v["marked_dirs"] = json!(d);
                    }
                }
                v
            })
        })
        .collect();
    let m = &state.metrics;
    use prometheus::core::Collector;
    let logged: u64 = m
        .events_logged
        .collect()
        .iter()
        .flat_map(|f| {
            f.get_metric()
                .iter()
                .map(|x| x.get_counter().get_value() as u64)
        })
        .sum();
    json!({
        "ok": true,
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "user": state.user.name,
        "uptime_secs": state.started.elapsed().as_secs(),
        "ready": state.pipeline.status.ready.load(Ordering::SeqCst),
        "tracker": info.tracker,
        "tracker_fallback": info.tracker_fallback,
        "groups": store.groups.iter().filter(|g| !g.paths.is_empty()).count(),
        "paths": paths,
        "store_unparsed": store.unparsed.iter().map(|u| json!({"path": state.cfg.store_path, "line": u.line, "error": u.reason})).collect::<Vec<_>>(),
        "inode_marks": info.inode_marks,
        "watch_errors": info.watch_errors.iter().map(|(p, e)| json!({"path": p, "error": e})).collect::<Vec<_>>(),
        "log_dir": state.cfg.log_dir,
        "events_logged": logged,
        "events_unwritten": m.events_unwritten.get(),
        "queue_overflows": m.queue_overflows.get(),
        "unresolved_paths": m.unresolved_paths.with_label_values(&["maybe_inside"]).get(),
        "events_hidden": m.events_hidden.get(),
        "ebpf_map_entries": m.ebpf_map_entries.get(),
        "ebpf_live_entries": m.ebpf_live_entries.get(),
        "ebpf_exited_entries": m.ebpf_exited_entries.get(),
        "tracker_losses": tracker_losses(m),
        "subscribers": m.subscribers.get(),
        "ship": state.ship.as_ref().map(|s| s.health()),
    })
}

/// `health`'s `tracker_losses`: each kind's count (all 0 when nothing was
/// lost).
fn tracker_losses(m: &Metrics) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for kind in crate::metrics::TRACKER_LOSS_KINDS {
        let n = m.tracker_losses.with_label_values(&[kind]).get();
        out.insert(kind.to_string(), json!(n));
    }
    serde_json::Value::Object(out)
}

fn clean_swap(
    state: &State,
    group: &str,
    tmp: &str,
    copied_until: u64,
) -> crate::Result<serde_json::Value> {
    store::validate_group(group)?;
    let Some(dir) = state.cfg.log_dir.clone() else {
        return Err(Error::invalid("file output is off"));
    };
    let tmp = PathBuf::from(tmp);
    // Only a file directly in the log directory, named for this group.
    let prefix = format!(".{group}{}.", crate::pipeline::write::LOG_SUFFIX);
    let ok_name = tmp
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(&prefix));
    if tmp.parent() != Some(dir.as_path()) || !ok_name {
        return Err(Error::invalid(format!(
            "clean: {} is not a trim file of group {group}",
            tmp.display()
        )));
    }
    let log_path = crate::pipeline::write::log_path(&dir, group);
    let (tx, rx) = std::sync::mpsc::channel();
    let group = group.to_string();
    let ship = state.ship.clone();
    let sent = state.pipeline.with_logs(Box::new(move |logs: &mut LogSet| {
        // The writer is flushed; close it, finish the trim (as the user),
        // reopen on demand.
        logs.close(&group);
        // The cursor of the shipper (if the log has one) follows the trim:
        // the temp file keeps its inode when renamed, and holds the log from
        // `copied_until - len` on. All of it as the user.
        let owner = logs.fs().user().clone();
        let r = logs.fs().run(move || {
            let finish = || crate::logfile::finish_trim_at(&tmp, copied_until, &log_path);
            match std::fs::symlink_metadata(&tmp) {
                Ok(m) if m.len() <= copied_until => {
                    let (ino, cut) = (
                        std::os::unix::fs::MetadataExt::ino(&m),
                        copied_until - m.len(),
                    );
                    match &ship {
                        Some(s) => s.around_swap(&group, &log_path, ino, cut, finish),
                        None => crate::ship::cursor::around_swap(
                            &log_path, &owner, ino, cut, None, finish,
                        ),
                    }
                }
                _ => finish(),
            }
        });
        let _ = tx.send(r);
    }));
    if !sent {
        return Err(Error::Socket("the daemon is stopping".into()));
    }
    let result = rx
        .recv()
        .map_err(|_| Error::Socket("the daemon is stopping".into()))??;
    Ok(json!({
        "ok": true,
        "appended_bytes": result.appended_bytes,
        "new_len": result.new_len,
        "dropped_partial_bytes": result.dropped_partial_bytes,
    }))
}

async fn subscribe(
    state: &State,
    group: Option<String>,
    mut reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    mut write: tokio::net::unix::OwnedWriteHalf,
) {
    let mut rx = state.pipeline.subscribe.subscribe();
    state.metrics.subscribers.inc();
    let _ = write
        .write_all(format!("{}\n", json!({"ok": true, "group": group})).as_bytes())
        .await;
    let mut ignored = [0u8; 512];
    loop {
        let received = tokio::select! {
            r = rx.recv() => r,
            // A client that hangs up is dropped now, not at the next event
            // of its group (which may never come). Anything it sends after
            // subscribing is ignored.
            n = reader.read(&mut ignored) => match n {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            },
        };
        match received {
            Ok(ev) => {
                if group.as_deref().is_some_and(|g| g != &*ev.group) {
                    continue;
                }
                // {"group":"g", + the log line without its opening brace.
                let line = format!(
                    "{{\"group\":{},{}\n",
                    serde_json::to_string(&*ev.group).unwrap(),
                    &ev.line[1..]
                );
                if write.write_all(line.as_bytes()).await.is_err() {
                    break;
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                state.metrics.subscriber_missed.inc_by(n);
                let notice = format!("{}\n", json!({"notice": "missed", "missed": n}));
                if write.write_all(notice.as_bytes()).await.is_err() {
                    break;
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
        }
    }
    state.metrics.subscribers.dec();
}
