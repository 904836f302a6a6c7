//! Prometheus metrics of tyr-server, served on `GET /metrics` of their own
//! listener (`TYR_METRICS_ADDR`, loopback by default; see [`http`]).
//!
//! Most figures are counters the server keeps anyway — the stream
//! sessions' [`StreamStats`](crate::grpc::stream::StreamStats), the ingest
//! writer's [`IngestStats`](crate::ingest::IngestStats), the drift pool's
//! [`DriftStats`](crate::drift::DriftStats), the fleet of connected
//! daemons — read by a collector when scraped, so nothing is counted twice.
//! What only exists where it happens (latencies, events of rejected
//! batches) is recorded through the [`Metrics`] handle, once per batch or
//! insert, never per event (Vector's instrumentation spec).
//!
//! Names end in their unit (`_seconds`, `_events`, `_batches`, `_daemons`)
//! and counters in `_total`.

pub mod http;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::grpc::stream::StreamContext;
use crate::ingest::rejection_counts;

pub use tyr_common::exposition::Format;
use tyr_common::exposition::{self, Scrape, counter, gauge, labelled_counters};

/// Errors of the metrics module.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The registry could not be written as text (a collector failed).
    #[error("encoding metrics: {0}")]
    Encode(std::fmt::Error),
}

/// The server's metrics: the registry `/metrics` encodes, and the handle
/// the hot paths record latencies through. One per server, shared as
/// `Arc<Metrics>` through the stream and ingest contexts.
#[derive(Debug)]
pub struct Metrics {
    /// Everything `/metrics` shows.
    registry: Registry,
    /// The live counters read at scrape time.
    sources: Arc<Sources>,
    /// Seconds per committed ClickHouse INSERT.
    clickhouse_insert_duration: Histogram,
    /// Seconds from a batch read off a stream to its BatchAck sent.
    batch_ack_duration: Histogram,
    /// Seconds from a PolicyPush sent to the daemon reporting that version applied.
    policy_apply_duration: Histogram,
    /// Events in batches refused by validation.
    rejected_events: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric declared; the counters kept elsewhere
    /// read zero until [`Metrics::attach`] names the stream context.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        // 1 ms to about 33 s: an insert of 50,000 rows on a slow cluster still lands in a bucket.
        let clickhouse_insert_duration = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        // Includes the writer's flush interval (1 s by default) and any ClickHouse retry.
        let batch_ack_duration = Histogram::new(exponential_buckets(0.005, 2.0, 15));
        // Daemons report applied versions in heartbeats (every 30 s by default).
        let policy_apply_duration = Histogram::new(exponential_buckets(0.01, 2.0, 16));
        let rejected_events = Counter::default();
        registry.register_with_unit(
            "tyr_clickhouse_insert_duration",
            "Time a committed ClickHouse INSERT of events took",
            Unit::Seconds,
            clickhouse_insert_duration.clone(),
        );
        registry.register_with_unit(
            "tyr_batch_ack_duration",
            "Time from an event batch read off a daemon's stream to its BatchAck sent (stored in ClickHouse)",
            Unit::Seconds,
            batch_ack_duration.clone(),
        );
        registry.register_with_unit(
            "tyr_policy_apply_duration",
            "Time from a policy change pushed to a connected daemon to the daemon reporting that version applied \
             (daemons report in heartbeats, so this is bounded below by the heartbeat interval)",
            Unit::Seconds,
            policy_apply_duration.clone(),
        );
        registry.register(
            "tyr_rejected_events",
            "Events in batches refused by validation (nothing of such a batch is stored)",
            rejected_events.clone(),
        );
        let sources = Arc::new(Sources::default());
        registry.register_collector(Box::new(Arc::clone(&sources)));
        Self {
            registry,
            sources,
            clickhouse_insert_duration,
            batch_ack_duration,
            policy_apply_duration,
            rejected_events,
        }
    }

    /// Reads the stream sessions', ingest's, drift's and the fleet's
    /// counters from `ctx` at every scrape. Held weakly: the metrics never
    /// keep a stopped server's sessions alive. The first call wins.
    pub fn attach(&self, ctx: &Arc<StreamContext>) {
        if self.sources.stream.set(Arc::downgrade(ctx)).is_err() {
            tracing::warn!("metrics already attached to a stream context; ignoring another");
        }
    }

    /// Records one committed ClickHouse INSERT.
    pub fn observe_clickhouse_insert(&self, took: Duration) {
        self.clickhouse_insert_duration.observe(took.as_secs_f64());
    }

    /// Records one BatchAck sent, `took` after its batch was read.
    pub fn observe_batch_ack(&self, took: Duration) {
        self.batch_ack_duration.observe(took.as_secs_f64());
    }

    /// Records a daemon reporting a pushed policy applied, `took` after the push.
    pub fn observe_policy_apply(&self, took: Duration) {
        self.policy_apply_duration.observe(took.as_secs_f64());
    }

    /// Counts the events of a batch refused by validation.
    pub fn count_rejected_events(&self, events: usize) {
        self.rejected_events.inc_by(events as u64);
    }

    /// Every metric as text in `format`.
    pub fn encode(&self, format: Format) -> Result<String, MetricsError> {
        exposition::encode(&self.registry, format).map_err(MetricsError::Encode)
    }
}

impl Scrape for Metrics {
    fn scrape(&self, format: Format) -> Result<String, std::fmt::Error> {
        exposition::encode(&self.registry, format)
    }
}

/// The counters other modules keep, read at scrape time.
#[derive(Debug, Default)]
struct Sources {
    /// The stream sessions' shared context (ingest, drift pool, fleet inside).
    stream: OnceLock<Weak<StreamContext>>,
}

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

impl Collector for Sources {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Validation counts are process-wide: they exist before any session.
        let rejections = rejection_counts();
        labelled_counters(
            &mut encoder,
            "tyr_rejected_batches",
            "Event batches refused by validation, by reason",
            "reason",
            rejections.iter().map(|(reason, count)| (reason.as_str(), *count)),
        )?;

        let Some(ctx) = self.stream.get().and_then(Weak::upgrade) else { return Ok(()) };
        let e = &mut encoder;
        let connected = i64::try_from(ctx.fleet.connected().len()).unwrap_or(i64::MAX);
        gauge(e, "tyr_connected_daemons", "Daemons with a live stream to this server", connected)?;

        let stream = &ctx.stats;
        counter(
            e,
            "tyr_streams_opened",
            "Streams mapped to an enrolled daemon (first connections and reconnects)",
            load(&stream.sessions_opened),
        )?;
        counter(
            e,
            "tyr_streams_refused",
            "Streams refused: no, unknown or revoked client certificate",
            load(&stream.sessions_refused),
        )?;
        counter(
            e,
            "tyr_streams_revoked",
            "Live streams closed because their daemon was revoked",
            load(&stream.sessions_revoked),
        )?;
        counter(
            e,
            "tyr_stream_protocol_violations",
            "Streams ended for a protocol violation (bad batch, oversized message, no CapabilityReport, stalled reader)",
            load(&stream.protocol_violations),
        )?;
        counter(e, "tyr_received_batches", "Event batches accepted from streams", load(&stream.batches_received))?;
        counter(e, "tyr_heartbeats", "Heartbeats received from daemons", load(&stream.heartbeats))?;
        counter(e, "tyr_policy_pushes", "PolicyPush messages sent to daemons", load(&stream.policy_pushes))?;
        counter(
            e,
            "tyr_control_db_failures",
            "PostgreSQL reads or writes of a session that failed (the session went on)",
            load(&stream.control_db_failures),
        )?;
        let reports = &stream.discovered;
        labelled_counters(
            e,
            "tyr_discovered_agent_reports",
            "Discovered-agent reports from daemons, by what became of them",
            "outcome",
            [
                ("inserted", &reports.inserted),
                ("updated", &reports.updated),
                ("ignored", &reports.ignored),
                ("capped", &reports.capped),
                ("invalid", &reports.invalid),
                ("dropped", &reports.dropped),
                ("store_failed", &reports.store_failures),
            ]
            .map(|(outcome, count)| (outcome, load(count))),
        )?;
        counter(
            e,
            "tyr_policy_push_failures",
            "Policy changes that could not be computed or pushed to a connected daemon (its policy stayed)",
            load(&stream.policy_failures),
        )?;

        let ingest = ctx.ingest.stats();
        counter(e, "tyr_ingested_events", "Events committed to ClickHouse", load(&ingest.events_inserted))?;
        counter(
            e,
            "tyr_deduplicated_events",
            "Events dropped before insert because ClickHouse already held their seq (replays)",
            load(&ingest.duplicates_dropped),
        )?;
        counter(
            e,
            "tyr_acknowledged_batches",
            "Event batches acknowledged (stored, or all duplicates)",
            load(&ingest.batches),
        )?;
        counter(
            e,
            "tyr_sequence_gap_events",
            "Sequence numbers never received from daemons (events lost before the server)",
            load(&ingest.gap_events),
        )?;
        counter(
            e,
            "tyr_drift_events",
            "Events stored with drift_detected (the kernel allowed what the server's policy refuses)",
            load(&ingest.drift_events),
        )?;
        counter(
            e,
            "tyr_unenforced_events",
            "Events stored that the host reported it could not enforce (counted apart from drift)",
            load(&ingest.unenforced_events),
        )?;
        counter(e, "tyr_clickhouse_inserts", "ClickHouse INSERTs of events committed", load(&ingest.inserts))?;
        counter(
            e,
            "tyr_clickhouse_insert_failures",
            "ClickHouse INSERT (or stored-seq lookup) attempts that failed and were retried",
            load(&ingest.insert_failures),
        )?;
        counter(
            e,
            "tyr_clickhouse_insert_retries",
            "ClickHouse INSERT attempts after a failure",
            load(&ingest.retries),
        )?;
        counter(
            e,
            "tyr_unstorable_batches",
            "Batches the writer refused as unstorable (not acknowledged)",
            load(&ingest.unstorable_batches),
        )?;
        counter(
            e,
            "tyr_bookkeeping_failures",
            "PostgreSQL delivery-bookkeeping writes that failed (retried)",
            load(&ingest.bookkeeping_failures),
        )?;
        let buffered = i64::try_from(load(&ingest.buffered_events)).unwrap_or(i64::MAX);
        gauge(e, "tyr_ingest_buffered_events", "Events waiting for ClickHouse, all streams", buffered)?;

        let drift = ctx.drift.stats();
        counter(
            e,
            "tyr_drift_evaluated_events",
            "Events re-evaluated with Cedar (replays included)",
            load(&drift.evaluated),
        )?;
        counter(
            e,
            "tyr_drift_not_evaluable_events",
            "Events whose Cedar request could not be built or evaluated",
            load(&drift.not_evaluable),
        )?;
        counter(
            e,
            "tyr_drift_overflow_batches",
            "Batches evaluated on the blocking pool because the drift queue was full",
            load(&drift.overflow),
        )?;
        counter(
            e,
            "tyr_drift_panics",
            "Batches lost to a panicking evaluation (never acknowledged)",
            load(&drift.panics),
        )?;

        let (notifications, relistens) = ctx.fleet.notification_counts();
        counter(e, "tyr_fleet_notifications", "Revocation and policy-change notifications received", notifications)?;
        counter(e, "tyr_fleet_relistens", "Times the notification listener reconnected to PostgreSQL", relistens)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declares_the_recorded_metrics_and_counts_them() {
        let metrics = Metrics::new();
        metrics.observe_clickhouse_insert(Duration::from_millis(3));
        metrics.observe_batch_ack(Duration::from_millis(40));
        metrics.count_rejected_events(7);
        let text = metrics.encode(Format::PrometheusText).expect("encodes");
        assert!(text.contains("# TYPE tyr_clickhouse_insert_duration_seconds histogram"), "{text}");
        assert!(text.contains("tyr_clickhouse_insert_duration_seconds_count 1\n"), "{text}");
        assert!(text.contains("tyr_batch_ack_duration_seconds_count 1\n"), "{text}");
        assert!(text.contains("tyr_policy_apply_duration_seconds_count 0\n"), "{text}");
        assert!(text.contains("tyr_rejected_events_total 7\n"), "{text}");
        assert!(text.contains("tyr_rejected_batches_total{reason=\"zero_seq\"}"), "{text}");
        // Nothing attached: the collected families are absent, not zero.
        assert!(!text.contains("tyr_connected_daemons"), "{text}");
        let open = metrics.encode(Format::OpenMetrics).expect("encodes");
        assert!(open.ends_with("# EOF\n"), "{open}");
        assert!(open.contains("# UNIT tyr_batch_ack_duration_seconds seconds"), "{open}");
    }
}
