//! tyrd's Prometheus metrics on `GET /metrics` (`--metrics-addr`,
//! `metrics_addr` in tyrd.toml, `TYRD_METRICS_ADDR`; off by default).
//!
//! Nothing here counts anything: the capture loop's atomics
//! ([`LiveCounters`]), the spool sink's and the spool's counters and the
//! link's [`LinkStats`] are read when Prometheus scrapes, so the hot path
//! pays nothing for metrics. Names end in their unit and counters in
//! `_total`; per-kind families carry `kind` as `--kind` spells it
//! (`file_read`, `net_connect`, ...).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::capture_loop::{Counters, LiveCounters};
use crate::client::session::LinkStats;
use crate::sink::SpoolSinkCounters;
use crate::spool::Spool;

pub use tyr_common::exposition::Format;
use tyr_common::exposition::{self, Scrape, counter, gauge, labelled_counters};

/// Errors of the metrics endpoint.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The metrics address could not be bound.
    #[error("binding the metrics address {address}: {source}")]
    Bind {
        /// The address asked for.
        address: SocketAddr,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The listener failed while serving.
    #[error("serving metrics: {0}")]
    Serve(std::io::Error),
    /// The counters could not be written as text.
    #[error("encoding metrics: {0}")]
    Encode(std::fmt::Error),
}

/// The counters `tyrd run` keeps, as the daemon wires them.
#[derive(Debug, Clone)]
pub struct DaemonSources {
    /// The capture loop's counters (seen, lost, policy version, ...).
    pub capture: Arc<LiveCounters>,
    /// The spool sink's counters (spooled, dropped, truncated).
    pub sink: Arc<SpoolSinkCounters>,
    /// The spool (depth, evictions).
    pub spool: Spool,
    /// The link to the server (streams, reconnects).
    pub link: Arc<LinkStats>,
    /// Policy pushes refused (malformed or not compilable here).
    pub policy_refused: Arc<AtomicU64>,
    /// Policy pushes whose kernel entries tyrd's compiler did not reproduce.
    pub policy_skew: Arc<AtomicU64>,
}

/// tyrd's metrics registry.
#[derive(Debug)]
pub struct Metrics {
    /// One collector over [`DaemonSources`].
    registry: Registry,
}

impl Metrics {
    /// A registry reading `sources` at every scrape.
    pub fn new(sources: DaemonSources) -> Self {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(sources));
        Self { registry }
    }

    /// Every metric as text in `format`.
    pub fn encode(&self, format: Format) -> Result<String, MetricsError> {
        exposition::encode(&self.registry, format).map_err(MetricsError::Encode)
    }
}

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

fn load_i64(counter: &AtomicI64) -> i64 {
    counter.load(Ordering::Relaxed)
}

fn clamp(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Writes one counter family with a `kind` label (lowercase, as `--kind`
/// spells it) per entry.
fn by_kind<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    counts: impl IntoIterator<Item = (&'a str, u64)>,
) -> Result<(), std::fmt::Error> {
    let counts: Vec<(String, u64)> = counts.into_iter().map(|(kind, n)| (kind.to_ascii_lowercase(), n)).collect();
    labelled_counters(encoder, name, help, "kind", counts.iter().map(|(kind, n)| (kind.as_str(), *n)))
}

impl Scrape for Metrics {
    fn scrape(&self, format: Format) -> Result<String, std::fmt::Error> {
        exposition::encode(&self.registry, format)
    }
}

impl Collector for DaemonSources {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let e = &mut encoder;
        let capture = self.capture.snapshot();
        bounds(e, &capture)?;
        identities(e, &capture)?;
        by_kind(e, "tyrd_events_seen", "Kernel records decoded, by kind (before userspace filters)", capture.seen)?;
        by_kind(e, "tyrd_events_lost", "Records the kernel could not emit (ring buffer full), by kind", capture.lost)?;
        by_kind(
            e,
            "tyrd_events_undecided",
            "Operations let through unchecked by policy (no kernel scratch space), by kind",
            capture.undecided,
        )?;
        by_kind(
            e,
            "tyrd_events_refused_undecided",
            "Operations of governed processes refused because the kernel could not decide them (fail closed), by kind",
            capture.refused,
        )?;
        let kernel = capture.kernel;
        counter(
            e,
            "tyrd_kernel_agents_full",
            "Forks whose agent class found the kernel's agent map full (kept governed through task storage)",
            kernel.agents_full,
        )?;
        counter(
            e,
            "tyrd_kernel_task_scratch",
            "Kernel decisions made in per-task scratch because the CPU's was held",
            kernel.task_scratch,
        )?;
        counter(
            e,
            "tyrd_kernel_identity_unmapped",
            "File identities on a filesystem tyrd's mount namespace does not show",
            kernel.identity_unmapped,
        )?;
        counter(
            e,
            "tyrd_kernel_identity_deep",
            "File identities deeper or longer than the kernel's walk",
            kernel.identity_deep,
        )?;
        counter(
            e,
            "tyrd_kernel_incomplete",
            "Operations of governed processes refused because a name or check of theirs could not be resolved",
            kernel.incomplete,
        )?;
        counter(e, "tyrd_undecodable_records", "Kernel records that did not decode", capture.decode_failed)?;
        counter(
            e,
            "tyrd_delivered_events",
            "Events the capture loop handed to the spool",
            load(&self.capture.delivered),
        )?;
        counter(e, "tyrd_tls_unparsed_events", "TLS records whose ClientHello did not parse", capture.tls_unparsed)?;

        let sink = &self.sink;
        counter(e, "tyrd_spooled_events", "Events written to the disk spool", load(&sink.spooled_events))?;
        counter(
            e,
            "tyrd_spool_write_failures",
            "Spool writes that failed (each attempt)",
            load(&sink.spool_write_failures),
        )?;
        counter(
            e,
            "tyrd_spool_dropped_events",
            "Events dropped because the spool could not take their batch",
            load(&sink.dropped_events),
        )?;
        counter(e, "tyrd_truncated_events", "Events cut to fit the wire's limits", load(&sink.events_truncated))?;

        let spool = self.spool.stats();
        gauge(
            e,
            "tyrd_spool_events",
            "Events in the spool waiting for the server's acknowledgement",
            clamp(spool.events),
        )?;
        gauge(e, "tyrd_spool_bytes", "Bytes of spooled batches waiting for acknowledgement", clamp(spool.bytes))?;
        gauge(e, "tyrd_spool_batches", "Batches in the spool waiting for acknowledgement", clamp(spool.batches))?;
        counter(
            e,
            "tyrd_spool_evicted_events",
            "Unacknowledged events evicted to keep the spool under its bound (since start)",
            spool.evicted_events,
        )?;
        counter(
            e,
            "tyrd_spool_evicted_batches",
            "Unacknowledged batches evicted to keep the spool under its bound (since start)",
            spool.evicted_batches,
        )?;
        counter(e, "tyrd_spool_torn_events", "Events in damaged spool files dropped (since start)", spool.torn_events)?;
        counter(
            e,
            "tyrd_spool_rejected_events",
            "Events in batches the server refused, set aside (since start)",
            spool.rejected_events,
        )?;

        let link = &self.link;
        gauge(e, "tyrd_connected_streams", "Streams open to tyr-server (0 or 1)", clamp(load(&link.connected)))?;
        counter(e, "tyrd_streams_opened", "Streams opened with tyr-server", load(&link.streams_opened))?;
        counter(
            e,
            "tyrd_reconnects",
            "Connection attempts after a stream ended or a connection failed",
            load(&link.reconnects),
        )?;

        gauge(
            e,
            "tyrd_applied_policy_version",
            "Version of the policy installed in the kernel (0: none yet)",
            load_i64(&self.capture.applied_policy_version),
        )?;
        counter(
            e,
            "tyrd_policy_install_failures",
            "Policy updates that could not be installed (the previous policy stayed)",
            load(&self.capture.policy_install_failures),
        )?;
        counter(
            e,
            "tyrd_refused_policy_pushes",
            "Policy pushes refused as malformed or not compilable here",
            load(&self.policy_refused),
        )?;
        counter(
            e,
            "tyrd_skewed_policy_pushes",
            "Policy pushes whose kernel entries tyrd's compiler did not reproduce",
            load(&self.policy_skew),
        )?;
        gauge(
            e,
            "tyrd_discovered_agents",
            "AI agents discovered on this host",
            clamp(capture.agents_discovered as u64),
        )?;
        counter(
            e,
            "tyrd_agent_map_failures",
            "Failed writes to the kernel's pid to agent map",
            capture.agent_map_failures,
        )?;
        Ok(())
    }
}

/// What tyrd's bounds dropped or refused, so a flood is never silent:
/// the agent registry, per-process caches and executable hashing.
fn bounds(e: &mut DescriptorEncoder, capture: &Counters) -> Result<(), std::fmt::Error> {
    let counters = [
        (
            "tyrd_agents_refused",
            "Agents not registered because the registry was full (governed by type all the same)",
            capture.agents_refused,
        ),
        (
            "tyrd_agent_claims_ignored",
            "Confident classifications not followed because the process was already governed as an agent",
            capture.agent_claims_ignored,
        ),
        (
            "tyrd_agent_moves_refused",
            "Kernel agent entries left alone because a write would have made them less strict",
            capture.agent_moves_refused,
        ),
        ("tyrd_agent_save_failures", "Failed writes of the discovered-agents file", capture.agent_save_failures),
        ("tyrd_processes_evicted", "Processes evicted from the process cache", capture.processes_evicted),
        ("tyrd_agent_processes_evicted", "Processes evicted from the agent tracker", capture.agent_processes_evicted),
        ("tyrd_exe_hashed", "Executables hashed", capture.exe_hashed),
        ("tyrd_exe_hash_evicted", "Digests evicted from the executable hash cache", capture.exe_hash_evicted),
        ("tyrd_exe_hash_too_large", "Executables not hashed for their size", capture.exe_hash_too_large),
        (
            "tyrd_exe_hash_queue_full",
            "Hash requests dropped on a full queue (asked again at the next exec)",
            capture.exe_hash_queue_full,
        ),
        ("tyrd_exe_hash_failed", "Executables that could not be read or changed while hashed", capture.exe_hash_failed),
        (
            "tyrd_environ_cut",
            "Environment blocks longer than tyrd reads (marker names past the bound unseen)",
            crate::detect::environ::environ_cut(),
        ),
        (
            "tyrd_state_dirs_exposed",
            "Directories tyrd writes into, not created by it, open to other users (left unchanged)",
            crate::private_fs::exposed_dirs(),
        ),
    ];
    for (name, help, value) in counters {
        counter(e, name, help, value)?;
    }
    Ok(())
}

/// How files are kept decided on all their names: hard links made before
/// the policy, and the mount table identities are built from.
fn identities(e: &mut DescriptorEncoder, capture: &Counters) -> Result<(), std::fmt::Error> {
    let counters = [
        (
            "tyrd_hardlinks_protected",
            "Files linked before the policy whose inode was given the protected name",
            capture.hardlinks_protected,
        ),
        ("tyrd_hardlink_scans_cut", "Hard-link scans cut at their entry bound", capture.hardlink_scans_cut),
        (
            "tyrd_hardlink_patterns_unscanned",
            "File rule patterns too broad for the hard-link scan (no directory before the first *)",
            capture.hardlink_patterns_unscanned,
        ),
        (
            "tyrd_hardlink_protect_failures",
            "Inodes the kernel refused a protected name",
            capture.hardlink_protect_failures,
        ),
        ("tyrd_mount_refreshes", "Rewrites of the kernel's mount maps after a mount change", capture.mount_refreshes),
        (
            "tyrd_mounts_unlisted",
            "Mounts the kernel's mount maps could not hold (their files named less exactly)",
            capture.mounts_unlisted,
        ),
        ("tyrd_mount_write_failures", "Writes to the kernel's mount maps that failed", capture.mount_write_failures),
    ];
    for (name, help, value) in counters {
        counter(e, name, help, value)?;
    }
    Ok(())
}

/// Binds the metrics address (before anything else starts, so that a
/// taken port fails the start rather than going unnoticed).
pub async fn bind(address: SocketAddr) -> Result<TcpListener, MetricsError> {
    TcpListener::bind(address).await.map_err(|source| MetricsError::Bind { address, source })
}

/// Binds `address` and serves `sources` there from a task until `stop`.
pub async fn spawn(address: SocketAddr, sources: DaemonSources, stop: CancellationToken) -> Result<(), MetricsError> {
    let listener = bind(address).await?;
    let metrics = Arc::new(Metrics::new(sources));
    tokio::spawn(async move {
        if let Err(error) = serve(listener, metrics, stop).await {
            tracing::error!(%error, "the metrics endpoint stopped");
        }
    });
    Ok(())
}

/// Serves `GET /metrics` on `listener` (404 elsewhere) until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<(), MetricsError> {
    exposition::serve(listener, metrics, shutdown).await.map_err(MetricsError::Serve)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_counters_at_scrape_time() {
        let dir = std::env::temp_dir().join(format!("tyrd-metrics-{}", uuid::Uuid::new_v4().simple()));
        let spool = Spool::open(&dir, 1 << 20).expect("spool");
        let sources = DaemonSources {
            capture: Arc::default(),
            sink: Arc::default(),
            spool,
            link: Arc::default(),
            policy_refused: Arc::default(),
            policy_skew: Arc::default(),
        };
        let metrics = Metrics::new(sources.clone());
        let text = metrics.encode(Format::PrometheusText).expect("encodes");
        assert!(text.contains("tyrd_events_seen_total{kind=\"file_read\"} 0\n"), "{text}");
        assert!(text.contains("tyrd_connected_streams 0\n"), "{text}");
        assert!(text.contains("tyrd_agents_refused_total 0\n"), "{text}");
        assert!(text.contains("tyrd_hardlink_scans_cut_total 0\n"), "{text}");
        assert!(text.contains("tyrd_mounts_unlisted_total 0\n"), "{text}");

        sources.capture.applied_policy_version.store(42, Ordering::Relaxed);
        sources.link.reconnects.fetch_add(3, Ordering::Relaxed);
        sources.sink.events_truncated.fetch_add(2, Ordering::Relaxed);
        sources.capture.processes_evicted.store(5, Ordering::Relaxed);
        let text = metrics.encode(Format::PrometheusText).expect("encodes");
        assert!(text.contains("tyrd_applied_policy_version 42\n"), "{text}");
        assert!(text.contains("tyrd_reconnects_total 3\n"), "{text}");
        assert!(text.contains("tyrd_truncated_events_total 2\n"), "{text}");
        assert!(text.contains("tyrd_processes_evicted_total 5\n"), "{text}");
        let open = metrics.encode(Format::OpenMetrics).expect("encodes");
        assert!(open.contains("# TYPE tyrd_reconnects counter\n") && open.ends_with("# EOF\n"), "{open}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
