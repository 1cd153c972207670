//! `fsmon daemon`: sets everything up in order, serves the control socket,
//! and shuts down cleanly on SIGTERM/SIGINT, writing every event it read.
//!
//! Order matters: lock (one daemon per user) -> store -> process tracker
//! (loaded by a short-lived child, which keeps aya's memory peak) -> fanotify group ->
//! log files -> pipeline threads -> socket.
use std::{
    os::unix::fs::{FileTypeExt, MetadataExt},
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
    config::{Config, TrackerChoice},
    control::{MAX_REQUEST, REQUEST_TIMEOUT, Request, parse_request},
    error::Error,
    fanotify::{Fanotify, QueueSize},
    filters::SizeFilter,
    metrics::Metrics,
    pipeline::{Pipeline, PipelineConfig, filter::GroupSet, write::LogSet},
    process::{ProcessTracker, TrackerConfig, TrackerKind},
    safefs,
    store::{self, PathOptions, Store, StoreLock},
    user::TargetUser,
};

pub struct DaemonOptions {
    pub config: Config,
    pub user: TargetUser,
    pub debug: bool,
}

/// Shared by the socket handlers.
struct State {
    cfg: Config,
    user: TargetUser,
    store: Mutex<Store>,
    pipeline: Pipeline,
    metrics: Arc<Metrics>,
    started: Instant,
    /// `[ship.nats]`: the shipper, if on.
    ship: Option<Arc<crate::ship::Shipper>>,
}

/// Holds the per-user daemon lock for the daemon's lifetime.
struct DaemonLock(#[allow(dead_code)] nix::fcntl::Flock<std::fs::File>);

impl DaemonLock {
    fn acquire(socket: &Path, user: &TargetUser) -> anyhow::Result<Self> {
        let path = PathBuf::from(format!("{}.lock", socket.display()));
        if let Some(dir) = path.parent() {
            safefs::create_dir_all_owned(dir, user)?;
        }
        let f = safefs::open_append(&path, user, 0o600)?;
        match nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(l) => Ok(DaemonLock(l)),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => bail!(
                "another fsmon daemon is already running for user {} (lock {} is held)",
                user.name,
                path.display()
            ),
            Err((_, e)) => bail!("cannot lock {}: {e}", path.display()),
        }
    }
}

pub fn run(opts: DaemonOptions) -> anyhow::Result<()> {
    let DaemonOptions {
        config: cfg,
        user,
        debug,
    } = opts;
    if !nix::unistd::geteuid().is_root() {
        bail!("the daemon needs root (fanotify and BPF): run it as `sudo fsmon daemon`");
    }
    let _lock = DaemonLock::acquire(&cfg.socket_path, &user)?;
    let store = Store::load(&cfg.store_path)
        .with_context(|| format!("reading {}", cfg.store_path.display()))?;
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
    let logs = LogSet::new(cfg.log_dir.clone(), user.clone())?;
    if cfg.log_dir.is_none() {
        log::warn!(
            "file output is off: {} has no [logging] section",
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
        },
        metrics.clone(),
    )?;
    let ship = start_shipper(&cfg, &user, &metrics);
    let state = Arc::new(State {
        ship,
        cfg,
        user,
        store: Mutex::new(store),
        pipeline,
        metrics,
        started: Instant::now(),
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut bound = false;
    let result = runtime.block_on(async {
        let listener = bind_socket(&state.cfg.socket_path, &state.user)?;
        bound = true;
        serve(state.clone(), listener, ebpf_logger).await
    });
    log::info!("stopping: writing what is queued");
    state.pipeline.shutdown();
    if let Some(ship) = &state.ship {
        ship.shutdown();
    }
    if bound {
        // Only the socket we bound: whatever made the bind fail (a planted
        // symlink, another user's socket) is not ours to remove.
        let _ = std::fs::remove_file(&state.cfg.socket_path);
    }
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
            "ship: [ship.nats] is set but file output is off (no [logging] section): the shipper reads the logs, so nothing is shipped"
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

/// Binds the socket safely: an existing path must be our own stale socket;
/// a symlink or someone else's file is refused. Mode 0600, owned by the user.
fn bind_socket(path: &Path, user: &TargetUser) -> anyhow::Result<UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            bail!(
                "refusing to use {}: it exists and is not a socket (a symlink or file planted there?)",
                path.display()
            );
        }
        if meta.uid() != 0 && meta.uid() != user.uid {
            bail!(
                "refusing to use {}: it belongs to uid {}",
                path.display(),
                meta.uid()
            );
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!("another daemon answers on {}", path.display());
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    if let Some(dir) = path.parent() {
        safefs::create_dir_all_owned(dir, user)?;
    }
    // bind() creates the file with the umask applied: make it 0600 from the
    // start, with no window where others could connect.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = std::os::unix::net::UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = bound.with_context(|| format!("binding {}", path.display()))?;
    // bind() never follows a symlink; lchown cannot either.
    let _ = std::os::unix::fs::lchown(path, Some(user.uid), Some(user.gid));
    listener.set_nonblocking(true)?;
    Ok(UnixListener::from_std(listener)?)
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
    log::info!(
        "fsmon daemon ready: pid {}, user {}, socket {}, tracker {}",
        std::process::id(),
        state.user.name,
        state.cfg.socket_path.display(),
        state.pipeline.status.info.lock().unwrap().tracker
    );
    // Under systemd (Type=notify): ready now that the socket answers.
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                let st = state.clone();
                tokio::task::spawn_blocking(move || reload_store(&st));
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => { tokio::spawn(client(state.clone(), stream)); }
                Err(e) => log::warn!("accept on the control socket: {e}"),
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
    match Store::load(&state.cfg.store_path) {
        Ok(s) => {
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

/// Serves one connection: requests one per line until EOF.
async fn client(state: Arc<State>, stream: UnixStream) {
    let allowed = stream
        .peer_cred()
        .map(|c| c.uid() == 0 || c.uid() == state.user.uid)
        .unwrap_or(false);
    let (read, mut write) = stream.into_split();
    if !allowed {
        let _ = write
            .write_all(
                error_line("permission denied: only root and the daemon's user may connect")
                    .as_bytes(),
            )
            .await;
        // Take in (and ignore) what the client sends, within bounds: closing
        // at once would make its request fail with EPIPE, or reset the
        // connection before it reads the answer.
        let _ = write.shutdown().await;
        let mut read = read;
        let mut sink = [0u8; 4096];
        let drain = async {
            let mut left = MAX_REQUEST;
            while left > 0 {
                match read.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => left = left.saturating_sub(n),
                }
            }
        };
        let _ = tokio::time::timeout(REQUEST_TIMEOUT, drain).await;
        return;
    }
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
        let response = tokio::task::spawn_blocking(move || handle(&st, req))
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
fn handle(state: &State, req: Request) -> crate::Result<serde_json::Value> {
    match req {
        Request::Add {
            group,
            path,
            recursive,
            types,
            size,
        } => {
            store::validate_group(&group)?;
            let path = store::normalize_path(&path, Path::new("/"))?;
            let path_str = path.to_string_lossy().into_owned();
            let types = store::parse_types(&types)?;
            let size = size.map(|s| SizeFilter::parse(&s)).transpose()?;
            let opts = PathOptions {
                recursive,
                types,
                size,
            };
            let pending = !path.exists();
            update_store(state, |s| s.add(&group, &path_str, opts.clone()), &path_str)?;
            Ok(json!({"ok": true, "group": group, "path": path_str, "pending": pending}))
        }
        Request::Remove { group, path } => {
            let path = path
                .map(|p| store::normalize_path(&p, Path::new("/")))
                .transpose()?;
            let p = path.as_ref().map(|p| p.to_string_lossy().into_owned());
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
    let _lock = StoreLock::acquire(&state.cfg.store_path, &state.user)?;
    let mut store = Store::load(&state.cfg.store_path)?;
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
    store.save(&state.cfg.store_path, &state.user)?;
    *state.store.lock().unwrap() = store;
    Ok(())
}

fn health(state: &State) -> serde_json::Value {
    let info = state.pipeline.status.info.lock().unwrap().clone();
    let store = state.store.lock().unwrap();
    let paths: Vec<serde_json::Value> = store
        .groups
        .iter()
        .flat_map(|g| {
            g.paths.iter().map(move |(p, o)| {
                json!({"group": g.cmd, "path": p, "recursive": o.recursive, "pending": !Path::new(p).exists()})
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
        "watch_errors": info.watch_errors.iter().map(|(p, e)| json!({"path": p, "error": e})).collect::<Vec<_>>(),
        "log_dir": state.cfg.log_dir,
        "events_logged": logged,
        "events_unwritten": m.events_unwritten.get(),
        "queue_overflows": m.queue_overflows.get(),
        "unresolved_paths": m.unresolved_paths.with_label_values(&["maybe_inside"]).get(),
        "ebpf_map_entries": m.ebpf_map_entries.get(),
        "subscribers": m.subscribers.get(),
        "ship": state.ship.as_ref().map(|s| s.health()),
    })
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
        // The writer is flushed; close it, finish the trim, reopen on demand.
        logs.close(&group);
        let finish = || crate::logfile::finish_trim_at(&tmp, copied_until, &log_path);
        // The shipping cursor (if the log has one) follows the trim: the
        // temp file keeps its inode when renamed, and holds the log from
        // `copied_until - len` on.
        let r = match std::fs::symlink_metadata(&tmp) {
            Ok(m) if m.len() <= copied_until => {
                let (ino, cut) = (m.ino(), copied_until - m.len());
                match &ship {
                    Some(s) => s.around_swap(&group, &log_path, ino, cut, finish),
                    None => crate::ship::cursor::around_swap(
                        &log_path,
                        logs.owner(),
                        ino,
                        cut,
                        None,
                        finish,
                    ),
                }
            }
            _ => finish(),
        };
        let _ = tx.send(r);
    }));
    if !sent {
        return Err(Error::Socket("the daemon is stopping".into()));
    }
    let result = rx
        .recv()
        .map_err(|_| Error::Socket("the daemon is stopping".into()))??;
    Ok(json!({"ok": true, "appended_bytes": result}))
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
