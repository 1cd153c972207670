//! Prometheus metrics. Counters are atomics shared by the pipeline threads
//! and read by the socket's `metrics` request and the HTTP endpoint.
//! Per-event counters are resolved to handles once, so the hot path only
//! does an atomic add.
use prometheus::{
    Encoder, Gauge, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The `kind` labels of `fsmon_tracker_losses_total`.
pub const TRACKER_LOSS_KINDS: [&str; 6] = [
    "live_insert_refused",
    "exit_missed",
    "tracepoint_skipped",
    "exited_insert_refused",
    "ring_full",
    "event_process_unknown",
];

pub struct Metrics {
    registry: Registry,
    /// Lines logged, by group and event type.
    pub events_logged: IntCounterVec,
    /// Events read from the kernel (before filtering).
    pub kernel_events: IntCounter,
    /// Times the kernel queue overflowed (each time an unknown number of
    /// events was lost).
    pub queue_overflows: IntCounter,
    /// Overflow records written to logs.
    pub overflow_records: IntCounter,
    /// Events that matched but could not be written (disk full, I/O error).
    pub events_unwritten: IntCounter,
    /// Events whose directory could not be resolved, by whether they were
    /// logged (`maybe_inside`) or known to be outside every watched tree.
    pub unresolved_paths: IntCounterVec,
    /// Events in directories the daemon's (non-root) user may not see.
    pub events_hidden: IntCounter,
    pub tracker_lookups: IntCounter,
    pub tracker_misses: IntCounter,
    /// 1 for the active tracker (`ebpf` or `procfs`).
    pub tracker_active: IntGaugeVec,
    pub ebpf_map_entries: IntGauge,
    /// Records in the live-process map (counted, not walked).
    pub ebpf_live_entries: IntGauge,
    /// Exited records awaiting collection.
    pub ebpf_exited_entries: IntGauge,
    /// What the process tracker could not keep, by kind (see README).
    pub tracker_losses: IntCounterVec,
    pub ebpf_map_collected: IntCounter,
    pub dir_cache_entries: IntGauge,
    pub dir_cache_hits: IntCounter,
    pub dir_cache_misses: IntCounter,
    pub dir_cache_kernel_lookups: IntCounter,
    pub dir_cache_evictions: IntCounter,
    pub file_size_cache_entries: IntGauge,
    pub subscribers: IntGauge,
    pub subscriber_missed: IntCounter,
    pub log_bytes: IntCounter,
    pub disk_free_bytes: IntGauge,
    pub start_time_seconds: Gauge,
    pub watched_paths: IntGauge,
    pub groups: IntGauge,
    /// Control-socket connections being served.
    pub socket_clients: IntGauge,
    /// Control-socket connections refused, by reason (`limit`,
    /// `descriptors`, `accept_error`).
    pub socket_refused: IntCounterVec,
    /// Size of each group's live log, in bytes.
    pub log_size_bytes: IntGaugeVec,
    /// Compressed bytes of each group's archives (the daemon's own).
    pub log_archive_bytes: IntGaugeVec,
    /// Rotations done (the start of a live log moved to an archive).
    pub log_rotations: IntCounter,
    /// Archives deleted by `keep_days` / `size`.
    pub log_archives_deleted: IntCounter,
    /// Retention passes that failed (the log was left as it was).
    pub log_retention_failures: IntCounter,
    /// Watched paths that do not exist yet.
    pub pending_paths: IntGauge,
    /// Watched paths the kernel refused to watch (health lists them).
    pub watch_errors: IntGauge,
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let events_logged = IntCounterVec::new(
            Opts::new(
                "fsmon_events_logged_total",
                "Events logged, by group and event type",
            ),
            &["group", "type"],
        )
        .unwrap();
        r.register(Box::new(events_logged.clone())).unwrap();
        let unresolved_paths = IntCounterVec::new(
            Opts::new(
                "fsmon_unresolved_paths_total",
                "Events whose directory could not be resolved to a path",
            ),
            &["scope"],
        )
        .unwrap();
        r.register(Box::new(unresolved_paths.clone())).unwrap();
        let tracker_active = IntGaugeVec::new(
            Opts::new(
                "fsmon_process_tracker_active",
                "1 for the process tracker in use",
            ),
            &["tracker"],
        )
        .unwrap();
        r.register(Box::new(tracker_active.clone())).unwrap();
        let start_time_seconds = Gauge::new(
            "fsmon_start_time_seconds",
            "When the daemon started, Unix time",
        )
        .unwrap();
        r.register(Box::new(start_time_seconds.clone())).unwrap();
        let socket_refused = IntCounterVec::new(
            Opts::new(
                "fsmon_socket_refused_total",
                "Control-socket connections refused or failed, by reason",
            ),
            &["reason"],
        )
        .unwrap();
        r.register(Box::new(socket_refused.clone())).unwrap();
        // 1, with the version and the git commit fsmon was built from.
        let build_info = IntGaugeVec::new(
            Opts::new("fsmon_build_info", "fsmon's version and git commit"),
            &["version", "commit"],
        )
        .unwrap();
        r.register(Box::new(build_info.clone())).unwrap();
        build_info
            .with_label_values(&[
                env!("CARGO_PKG_VERSION"),
                option_env!("FSMON_GIT_COMMIT").unwrap_or("unknown"),
            ])
            .set(1);
        // process_resident_memory_bytes, process_cpu_seconds_total,
        // process_open_fds, process_max_fds, ... (from /proc/self).
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .unwrap();
        let log_size_bytes = IntGaugeVec::new(
            Opts::new("fsmon_log_size_bytes", "Size of each group's live log"),
            &["group"],
        )
        .unwrap();
        r.register(Box::new(log_size_bytes.clone())).unwrap();
        let log_archive_bytes = IntGaugeVec::new(
            Opts::new(
                "fsmon_log_archive_bytes",
                "Compressed bytes of each group's archives",
            ),
            &["group"],
        )
        .unwrap();
        r.register(Box::new(log_archive_bytes.clone())).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        start_time_seconds.set(now.as_secs_f64());
        let tracker_losses = IntCounterVec::new(
            Opts::new(
                "fsmon_tracker_losses_total",
                "Processes the tracker could not keep, by kind (live_insert_refused, \
                 exit_missed, tracepoint_skipped, exited_insert_refused, ring_full, \
                 event_process_unknown)",
            ),
            &["kind"],
        )
        .unwrap();
        r.register(Box::new(tracker_losses.clone())).unwrap();
        for kind in TRACKER_LOSS_KINDS {
            tracker_losses.with_label_values(&[kind]);
        }
        Metrics {
            events_logged,
            kernel_events: counter(
                &r,
                "fsmon_kernel_events_total",
                "Events read from the fanotify queue",
            ),
            queue_overflows: counter(
                &r,
                "fsmon_queue_overflows_total",
                "Kernel event queue overflows (events were lost)",
            ),
            overflow_records: counter(
                &r,
                "fsmon_overflow_records_total",
                "Overflow records written to logs",
            ),
            events_unwritten: counter(
                &r,
                "fsmon_events_unwritten_total",
                "Events that matched but could not be written to their log",
            ),
            unresolved_paths,
            events_hidden: counter(
                &r,
                "fsmon_events_hidden_total",
                "Events in directories the daemon's user may not see (not reported)",
            ),
            tracker_lookups: counter(&r, "fsmon_process_lookups_total", "Process tracker lookups"),
            tracker_misses: counter(
                &r,
                "fsmon_process_lookup_misses_total",
                "Process tracker lookups that found nothing",
            ),
            tracker_active,
            ebpf_map_entries: gauge(
                &r,
                "fsmon_ebpf_map_entries",
                "Entries in the eBPF process maps (live + exited awaiting collection)",
            ),
            ebpf_live_entries: gauge(
                &r,
                "fsmon_ebpf_live_entries",
                "Records in the eBPF live-process map (counted, not walked)",
            ),
            ebpf_exited_entries: gauge(
                &r,
                "fsmon_ebpf_exited_entries",
                "Exited processes awaiting collection",
            ),
            tracker_losses,
            ebpf_map_collected: counter(
                &r,
                "fsmon_ebpf_map_collected_total",
                "Exited processes removed from the eBPF map",
            ),
            dir_cache_entries: gauge(
                &r,
                "fsmon_dir_cache_entries",
                "Directories in the handle cache",
            ),
            dir_cache_hits: counter(&r, "fsmon_dir_cache_hits_total", "Directory cache hits"),
            dir_cache_misses: counter(&r, "fsmon_dir_cache_misses_total", "Directory cache misses"),
            dir_cache_kernel_lookups: counter(
                &r,
                "fsmon_dir_cache_kernel_lookups_total",
                "Directories resolved through open_by_handle_at",
            ),
            dir_cache_evictions: counter(
                &r,
                "fsmon_dir_cache_evictions_total",
                "Directories evicted from the cache for capacity",
            ),
            file_size_cache_entries: gauge(
                &r,
                "fsmon_file_size_cache_entries",
                "Files in the last-size cache",
            ),
            subscribers: gauge(&r, "fsmon_subscribers", "Connected subscribe clients"),
            subscriber_missed: counter(
                &r,
                "fsmon_subscriber_missed_events_total",
                "Events slow subscribers missed",
            ),
            log_bytes: counter(&r, "fsmon_log_bytes_written_total", "Bytes written to logs"),
            disk_free_bytes: gauge(
                &r,
                "fsmon_log_disk_free_bytes",
                "Free bytes on the log filesystem",
            ),
            start_time_seconds,
            watched_paths: gauge(&r, "fsmon_watched_paths", "Paths watched, over all groups"),
            groups: gauge(&r, "fsmon_groups", "Groups configured"),
            socket_clients: gauge(
                &r,
                "fsmon_socket_clients",
                "Control-socket connections being served",
            ),
            socket_refused,
            log_size_bytes,
            log_archive_bytes,
            log_rotations: counter(
                &r,
                "fsmon_log_rotations_total",
                "Rotations of a live log into a zstd archive",
            ),
            log_archives_deleted: counter(
                &r,
                "fsmon_log_archives_deleted_total",
                "Archives deleted by keep_days or size",
            ),
            log_retention_failures: counter(
                &r,
                "fsmon_log_retention_failures_total",
                "Retention passes that failed (the log was left as it was)",
            ),
            pending_paths: gauge(
                &r,
                "fsmon_pending_paths",
                "Watched paths that do not exist yet (watched from when they appear)",
            ),
            watch_errors: gauge(
                &r,
                "fsmon_watch_errors",
                "Watched paths the kernel refused to watch (see fsmon health)",
            ),
            registry: r,
        }
    }

    /// Stops exporting `fsmon_log_disk_free_bytes` (file output is off:
    /// there is no log filesystem to measure).
    pub fn drop_disk_free(&self) {
        let _ = self
            .registry
            .unregister(Box::new(self.disk_free_bytes.clone()));
    }

    /// The registry, for metrics other modules own (shipping).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding");
        String::from_utf8(out).expect("utf-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
