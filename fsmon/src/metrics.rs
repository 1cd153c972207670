//! Prometheus metrics. Counters are atomics shared by the pipeline threads
//! and read by the socket's `metrics` request and the HTTP endpoint.
//! Per-event counters are resolved to handles once, so the hot path only
//! does an atomic add.
use prometheus::{
    Encoder, Gauge, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

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
    pub tracker_lookups: IntCounter,
    pub tracker_misses: IntCounter,
    /// 1 for the active tracker (`ebpf` or `procfs`).
    pub tracker_active: IntGaugeVec,
    pub ebpf_map_entries: IntGauge,
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
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        start_time_seconds.set(now.as_secs_f64());
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
                "Entries in the eBPF process map",
            ),
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
