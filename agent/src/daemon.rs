//! `tyrd run`: the fleet daemon. Capture and enforcement run on their own
//! OS thread and write every batch into the disk spool; the link to
//! tyr-server (on tokio) sends the spool and brings policies back.
//!
//! Order of a start:
//! 1. open the spool (`<state_dir>/spool`, bounded by `spool_max_mb`);
//! 2. the identity: reuse the stored one, or enroll (first boot, or
//!    `--reenroll` with a token). A first boot cannot capture for a server
//!    it is not enrolled with: enrollment is retried (backoff) while the
//!    server is unreachable, and refused for good on a token or trust
//!    problem. With an identity, capture starts even if the server is down;
//! 3. the policy last pushed (kept in the state directory) goes to the
//!    capture loop before anything is sent to the server, so the kernel
//!    enforces the last known policy whatever happens to the server; so do
//!    the operators' agent overrides last received;
//! 4. the capture loop starts (enforcing hooks on) with the spool as its sink;
//! 5. sessions run until shutdown; then the capture loop stops (it flushes
//!    its last batch into the spool) and tyrd exits.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use tyr_proto::EventKind;

use crate::capture::{AgentUserns, CaptureConfig};
use crate::capture_loop::{self, CaptureLoopConfig, LiveCounters, PolicyUpdate};
use crate::client::agents;
use crate::client::backoff::Backoff;
use crate::client::enroll::{self, EnrollError};
use crate::client::identity::{self, StoredIdentity};
use crate::client::link;
use crate::client::policy::{StoredPush, VerifiedPolicy};
use crate::client::session::{CaptureControl, CaptureCounters, LinkStats, LiveSettings, SessionContext};
use crate::client::trust::TrustError;
use crate::config::DaemonConfig;
use crate::detect::feed::{AgentFeed, AgentLink};
use crate::detect::overrides::OverrideSet;
use crate::host::HostFacts;
use crate::kinds::{ALL_KINDS, KindSet};
use crate::metrics::{self, DaemonSources};
use crate::pipeline::batcher::BatchPolicy;
use crate::sink::{SpoolSink, SpoolSinkCounters};
use crate::spool::Spool;

/// The spool's directory under the state directory.
pub const SPOOL_DIR: &str = "spool";
/// Events queued between the ring reader and the spool writer.
const QUEUE_CAPACITY: usize = 65_536;
/// Longest the capture loop may take to report its capabilities.
const CAPTURE_START_TIMEOUT: Duration = Duration::from_secs(60);

/// The capture loop as the session drives it: policies over a channel,
/// counters from its atomics and from its spool sink's.
#[derive(Debug)]
struct LoopControl {
    policies: crossbeam_channel::Sender<PolicyUpdate>,
    counters: Arc<LiveCounters>,
    sink: Arc<SpoolSinkCounters>,
    /// Discovered agents, from the capture loop.
    agent_feed: Arc<AgentFeed>,
    /// Operators' overrides, to the capture loop.
    overrides: crossbeam_channel::Sender<OverrideSet>,
}

fn update(policy: VerifiedPolicy) -> PolicyUpdate {
    PolicyUpdate { version: policy.version, compiled: policy.compiled, set: policy.set }
}

impl CaptureControl for LoopControl {
    fn install_policy(&self, policy: VerifiedPolicy) -> bool {
        self.policies.send(update(policy)).is_ok()
    }

    fn counters(&self) -> CaptureCounters {
        CaptureCounters {
            applied_policy_version: self.counters.applied_policy_version.load(Ordering::Relaxed),
            ringbuf_lost: self.counters.lost_by_kind().into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            queue_overflow: self.counters.queue_overflow.load(Ordering::Relaxed),
            decode_failed: self.counters.decode_failed.load(Ordering::Relaxed),
            spool_write_dropped: self.sink.dropped_events.load(Ordering::Relaxed),
            events_truncated: self.sink.events_truncated.load(Ordering::Relaxed),
            enforcement_degraded: self.counters.snapshot().enforcement_degraded(),
        }
    }

    // The capture loop takes its batch policy and hooks at start.
    fn set_batching(&self, _max_events: u32, _max_delay: Duration) -> bool {
        false
    }

    fn set_tls_capture(&self, _enabled: bool) -> bool {
        false
    }

    fn agent_feed(&self) -> Option<Arc<AgentFeed>> {
        Some(Arc::clone(&self.agent_feed))
    }

    fn apply_overrides(&self, overrides: OverrideSet) -> bool {
        self.overrides.send(overrides).is_ok()
    }
}

/// The event kinds captured: all, or all but TLS without `tls_capture`.
fn kinds(tls_capture: bool) -> KindSet {
    if tls_capture { KindSet::all() } else { ALL_KINDS.iter().copied().filter(|&k| k != EventKind::Tls).collect() }
}

/// Enrollment errors worth retrying: the server or network is down.
fn transient(error: &EnrollError) -> bool {
    match error {
        EnrollError::Connect(_) | EnrollError::Trust(TrustError::Connect { .. }) => true,
        EnrollError::Refused { code, .. } => {
            matches!(code, tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::ResourceExhausted)
        }
        _ => false,
    }
}

/// The stored identity, or a new one; `None` when shut down while waiting
/// for the server.
async fn obtain_identity(
    config: &DaemonConfig,
    host: &HostFacts,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<StoredIdentity>> {
    match StoredIdentity::load(&config.state_dir)? {
        Some(identity) if !config.reenroll => {
            info!(daemon_id = %identity.daemon_id, "enrolled identity found");
            return Ok(Some(identity));
        }
        Some(_) if config.token.is_none() => {
            anyhow::bail!("--reenroll needs an enrollment token (--token or TYR_TOKEN)")
        }
        Some(_) => info!("enrolling again with a new key (--reenroll)"),
        None => info!("no identity yet: enrolling"),
    }
    let mut backoff = Backoff::standard();
    loop {
        match enroll::enroll(config, &host.kernel_release, &host.arch).await {
            Ok(identity) => return Ok(Some(identity)),
            Err(error) if transient(&error) => {
                let delay = backoff.next_delay();
                warn!(%error, delay_ms = delay.as_millis() as u64, "cannot enroll yet: server unreachable, retrying");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shutdown.cancelled() => return Ok(None),
                }
            }
            Err(error) => return Err(error).context("enrolling with the server"),
        }
    }
}

/// Runs `tyrd run` until `shutdown`.
pub async fn run(config: DaemonConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    identity::ensure_dir(&config.state_dir)?;
    let spool_dir = config.state_dir.join(SPOOL_DIR);
    let spool = Spool::open(&spool_dir, config.spool_max_bytes())
        .with_context(|| format!("opening the spool {}", spool_dir.display()))?;
    // The counters exist from the start, so that metrics are served while
    // a first boot waits for the server.
    let counters = Arc::new(LiveCounters::default());
    let capture_stop = CancellationToken::new();
    let sink = SpoolSink::new(spool.clone(), capture_stop.clone());
    let link_stats = Arc::new(LinkStats::default());
    let (policy_skew_total, policy_refused_total) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let metrics_stop = CancellationToken::new();
    let _stop_metrics = metrics_stop.clone().drop_guard();
    if let Some(address) = config.metrics_addr {
        let sources = DaemonSources {
            capture: Arc::clone(&counters),
            sink: sink.counters(),
            spool: spool.clone(),
            link: Arc::clone(&link_stats),
            policy_refused: Arc::clone(&policy_refused_total),
            policy_skew: Arc::clone(&policy_skew_total),
        };
        metrics::spawn(address, sources, metrics_stop).await?;
    }
    let host = HostFacts::read();
    let Some(identity) = obtain_identity(&config, &host, &shutdown).await? else { return Ok(()) };

    let (policy_tx, policy_rx) = crossbeam_channel::unbounded::<PolicyUpdate>();
    match StoredPush::load(&config.state_dir)
        .and_then(|stored| stored.map(|s| s.verify(config.unregistered_agents)).transpose())
    {
        Ok(Some(policy)) => {
            info!(version = policy.version, "installing the last policy received");
            // The receiver is alive: this cannot fail.
            let _ = policy_tx.send(update(policy));
        }
        Ok(None) => info!("no policy received yet: unregistered-agents restriction only until the server sends one"),
        Err(error) => warn!(%error, "the stored policy is unusable; waiting for the server's"),
    }

    // The overrides last received govern from the start, server or not.
    let agent_feed = Arc::new(AgentFeed::default());
    let (overrides_tx, overrides_rx) = crossbeam_channel::unbounded::<OverrideSet>();
    match agents::load_overrides(&config.state_dir) {
        Ok(Some(set)) => {
            info!(count = set.len(), "governing by the last agent overrides received");
            // The receiver is alive: this cannot fail.
            let _ = overrides_tx.send(set);
        }
        Ok(None) => {}
        Err(error) => warn!(%error, "the stored agent overrides are unusable; waiting for the server's"),
    }
    let loop_config = CaptureLoopConfig {
        capture: CaptureConfig {
            kinds: kinds(config.tls_capture),
            enforce: true,
            agent_userns_deny: AgentUserns::from_env() == AgentUserns::Deny,
            ..CaptureConfig::default()
        },
        batch: BatchPolicy {
            max_events: config.batch_max_events as usize,
            max_delay: Duration::from_millis(config.batch_max_ms),
        },
        queue_capacity: QUEUE_CAPACITY,
        state_dir: config.state_dir.clone(),
        record_raw: None,
        unregistered_agents: config.unregistered_agents,
        console: false,
        agents: Some(AgentLink { feed: Arc::clone(&agent_feed), overrides: overrides_rx }),
    };
    let sink_counters = sink.counters();
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let (ended_tx, ended_rx) = tokio::sync::oneshot::channel();
    let capture = {
        let (counters, stop) = (Arc::clone(&counters), capture_stop.clone());
        std::thread::Builder::new().name("tyrd-capture".into()).spawn(move || {
            let started = move |report| {
                let _ = started_tx.send(report);
            };
            let result = capture_loop::run(loop_config, Box::new(sink), policy_rx, counters, stop, started);
            let _ = ended_tx.send(());
            result.map(|counters| info!(delivered = counters.printed, "capture stopped"))
        })?
    };
    let capabilities = tokio::select! {
        started = tokio::time::timeout(CAPTURE_START_TIMEOUT, started_rx) => started.ok().and_then(Result::ok),
        () = shutdown.cancelled() => None,
    };
    let Some(capabilities) = capabilities else {
        capture_stop.cancel();
        return join_capture(capture).await.and_then(|()| {
            if shutdown.is_cancelled() { Ok(()) } else { anyhow::bail!("the capture loop did not start") }
        });
    };

    let ctx = SessionContext {
        spool,
        capture: Arc::new(LoopControl {
            policies: policy_tx,
            counters,
            sink: sink_counters,
            agent_feed,
            overrides: overrides_tx,
        }),
        state_dir: config.state_dir.clone(),
        capabilities,
        settings: Arc::new(std::sync::Mutex::new(LiveSettings {
            heartbeat_interval: config.heartbeat_interval(),
            unregistered_agents: config.unregistered_agents,
        })),
        policy_skew_total,
        policy_refused_total,
        refusals: Arc::default(),
        link_stats,
    };
    let link_stop = shutdown.child_token();
    let linked = {
        let link = link::run(&config, identity, &ctx, Backoff::standard(), &link_stop);
        tokio::pin!(link);
        tokio::select! {
            result = &mut link => result.map_err(anyhow::Error::from),
            _ = ended_rx => {
                error!("the capture loop stopped; closing the stream");
                link_stop.cancel();
                let _ = link.await;
                Ok(())
            }
        }
    };
    capture_stop.cancel();
    let captured = join_capture(capture).await;
    linked.and(captured)
}

/// Waits for the capture thread off the runtime.
async fn join_capture(thread: std::thread::JoinHandle<anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || thread.join())
        .await
        .context("waiting for the capture loop")?
        .map_err(|_| anyhow::anyhow!("the capture loop panicked"))?
        .context("capture loop")
}
