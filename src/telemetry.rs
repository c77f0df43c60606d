//! Telemetry: metric names in one place, the Prometheus recorder, and log setup.
//!
//! Metric names are constants so the code, the Grafana dashboard in `ops/`
//! and the tests agree on them. Labels never carry personal data or tokens.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Commands decided by the service, by `command` and `outcome`.
pub const COMMANDS: &str = "orderlog_commands_total";
/// HTTP requests by `route` (the matched pattern) and `status`.
pub const HTTP_REQUESTS: &str = "orderlog_http_requests_total";
/// Time from handing a group-commit batch to the producer to its last acknowledgement.
pub const PRODUCE_LATENCY: &str = "orderlog_produce_latency_seconds";
/// Commands per group-commit batch.
pub const BATCH_SIZE: &str = "orderlog_group_commit_batch_size";
/// Records behind the end of the log, by `partition`.
pub const PROJECTOR_LAG: &str = "orderlog_projector_lag";
pub const EVENTS_PROJECTED: &str = "orderlog_events_projected_total";
pub const DEAD_LETTERED: &str = "orderlog_events_dead_lettered_total";
/// Erasures by `scope` (order, classes).
pub const ERASURES: &str = "orderlog_erasures_total";
/// Time from an erase request to its receipt.
pub const ERASE_LATENCY: &str = "orderlog_erase_duration_seconds";
/// Orders whose key (or part of it) is alive in this node's vault.
pub const LIVE_KEYS: &str = "orderlog_live_keys";
/// RocksDB's memory by `kind` (block_cache, memtables, table_readers; they
/// add up), from its own accounting, read at each scrape.
pub const STORE_MEMORY: &str = "orderlog_store_memory_bytes";
/// Partitions this node took over (writers' group assignments carried out).
pub const PARTITIONS_TAKEN: &str = "orderlog_partitions_taken_total";
/// Commands this node forwarded to the partition's owner.
pub const FORWARDED: &str = "orderlog_commands_forwarded_total";
/// HTTP connections closed on arrival because `--http-max-connections` were open.
pub const CONNECTIONS_REFUSED: &str = "orderlog_http_connections_refused_total";
/// Purges of erased rows from disk (one flush and compaction for a batch of orders).
pub const PURGES: &str = "orderlog_purges_total";
/// Time one purge of erased rows took.
pub const PURGE_LATENCY: &str = "orderlog_purge_duration_seconds";
/// Erasures the retention policy made, by `rule` (cancelled, identity).
pub const RETENTION_ERASURES: &str = "orderlog_retention_erasures_total";
/// Subject index entries by `change` (indexed, removed).
pub const SUBJECT_ENTRIES: &str = "orderlog_subject_index_entries_total";
/// Subject requests (search, export, erase) by `request`.
pub const SUBJECT_REQUESTS: &str = "orderlog_subject_requests_total";

/// Every metric this build exports, for checks of dashboards and docs.
pub const ALL: &[&str] = &[
    COMMANDS,
    HTTP_REQUESTS,
    PRODUCE_LATENCY,
    BATCH_SIZE,
    PROJECTOR_LAG,
    EVENTS_PROJECTED,
    DEAD_LETTERED,
    ERASURES,
    ERASE_LATENCY,
    LIVE_KEYS,
    STORE_MEMORY,
    PARTITIONS_TAKEN,
    FORWARDED,
    PURGES,
    PURGE_LATENCY,
    CONNECTIONS_REFUSED,
    SUBJECT_ENTRIES,
    SUBJECT_REQUESTS,
    RETENTION_ERASURES,
];

/// The outcomes the command counter is labelled with (see
/// `Service::execute`).
pub const COMMAND_OUTCOMES: &[&str] = &[
    "ok",
    "refused",
    "version_mismatch",
    "unavailable",
    "forwarded",
    "moving",
    "unknown",
    "error",
];

/// Registers the metrics at zero, so that a fresh node's `/metrics` lists
/// them and alert rules have a series before the first event: every counter
/// (labelled ones for every label value this build knows) and every
/// histogram. Two appear with their first measurement, as their labels come
/// from it: the HTTP request counter (route and status) and the projector's
/// lag (partition).
pub fn register_all() {
    prometheus();
    for command in ["place", "share", "cancel", "erase"] {
        for outcome in COMMAND_OUTCOMES {
            metrics::counter!(COMMANDS, "command" => command, "outcome" => *outcome).increment(0);
        }
    }
    for scope in ["order", "classes"] {
        metrics::counter!(ERASURES, "scope" => scope).increment(0);
    }
    for change in ["indexed", "removed"] {
        metrics::counter!(SUBJECT_ENTRIES, "change" => change).increment(0);
    }
    for rule in ["cancelled", "identity"] {
        metrics::counter!(RETENTION_ERASURES, "rule" => rule).increment(0);
    }
    for request in ["search", "export", "erase"] {
        metrics::counter!(SUBJECT_REQUESTS, "request" => request).increment(0);
    }
    for name in [
        EVENTS_PROJECTED,
        DEAD_LETTERED,
        PARTITIONS_TAKEN,
        FORWARDED,
        CONNECTIONS_REFUSED,
        PURGES,
    ] {
        metrics::counter!(name).increment(0);
    }
    for name in [PRODUCE_LATENCY, BATCH_SIZE, ERASE_LATENCY, PURGE_LATENCY] {
        drop(metrics::histogram!(name));
    }
    metrics::gauge!(LIVE_KEYS).set(0.0);
    for kind in crate::store::StoreMemory::default()
        .by_kind()
        .map(|(kind, _)| kind)
    {
        metrics::gauge!(STORE_MEMORY, "kind" => kind).set(0.0);
    }
}

/// The process-wide Prometheus recorder, installed on first use.
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let latency_buckets = [
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        let size_buckets = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full(PRODUCE_LATENCY.into()),
                &latency_buckets,
            )
            .and_then(|b| {
                b.set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(ERASE_LATENCY.into()),
                    &latency_buckets,
                )
            })
            .and_then(|b| {
                b.set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(PURGE_LATENCY.into()),
                    &latency_buckets,
                )
            })
            .and_then(|b| {
                b.set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(BATCH_SIZE.into()),
                    &size_buckets,
                )
            })
            .expect("bucket lists are not empty");
        match builder.install_recorder() {
            Ok(handle) => handle,
            // Another recorder is already global (an embedding program's):
            // keep a private one so /metrics still answers.
            Err(_) => PrometheusBuilder::new().build_recorder().handle(),
        }
    })
}

/// Logs to stderr, filtered by `ORDERLOG_LOG` (default `info,rdkafka=warn`):
/// text on a terminal, one JSON object per line otherwise.
pub fn init_logging() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("ORDERLOG_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rdkafka=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::io::stderr().is_terminal() {
        builder.init();
    } else {
        builder.json().flatten_event(true).init();
    }
}
