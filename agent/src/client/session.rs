//! One Stream session with tyr-server: `CapabilityReport` first, then at
//! once (one task, one `select!`):
//! - spooled batches in sequence order, from the spool's acknowledged
//!   position (everything unacknowledged is replayed after a reconnect or
//!   restart), following appends, with at most [`MAX_IN_FLIGHT`] batches
//!   unacknowledged on the stream;
//! - what the server sends: `BatchAck` (the spool deletes what it covers),
//!   `PolicyPush` (verified, stored, handed to the capture loop),
//!   `ConfigUpdate` (whose `stored_seq` raises the spool's numbering above
//!   what the server holds), `PingRequest`, `AgentOverrides` (kept, handed
//!   to the capture loop: see [`super::agents`]);
//! - a heartbeat every `heartbeat_interval_s` with every drop counter;
//! - discovered-agent reports, paced (see [`super::agents`]).
//!
//! A stream the server ends with `INVALID_ARGUMENT` or `RESOURCE_EXHAUSTED`
//! refused a batch in flight: see [`super::refusal`] for how such a batch
//! is found and set aside instead of being replayed forever.
//!
//! The session ends on shutdown (the request stream is closed: the server
//! sees a clean end of stream), on any stream error, or when the server
//! refuses this daemon's identity.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Debug;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tracing::{debug, error, info, warn};
use tyr_proto::agent_message::Payload as Outgoing;
use tyr_proto::agent_service_client::AgentServiceClient;
use tyr_proto::limits::MAX_EVENTS_PER_BATCH;
use tyr_proto::server_message::Payload as Incoming;
use tyr_proto::{
    AgentMessage, BatchAck, CapabilityReport, ConfigUpdate, DropCounters, EventBatch, Heartbeat, PingResponse,
    PolicyPush,
};

use super::agents::{self, Reporter};
use super::policy::{self, StoredPush, VerifiedPolicy};
use super::refusal::Refusals;
use crate::detect::feed::AgentFeed;
use crate::detect::overrides::OverrideSet;
use crate::detect::tracker::UnregisteredAgents;
use crate::spool::Spool;

/// Batches sent and not yet acknowledged on one stream, at most.
pub const MAX_IN_FLIGHT: usize = 64;
/// Messages queued for the request stream.
const OUTBOUND_QUEUE: usize = MAX_IN_FLIGHT + 16;

/// What the capture side reports for heartbeats.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CaptureCounters {
    /// Version of the policy installed in the kernel maps (0: none).
    pub applied_policy_version: i64,
    /// Kernel ring-buffer reserve failures, by event kind name.
    pub ringbuf_lost: BTreeMap<String, u64>,
    /// Records dropped because the userspace queue was full.
    pub queue_overflow: u64,
    /// Records that did not decode.
    pub decode_failed: u64,
    /// Events dropped because the spool could not take their batch.
    pub spool_write_dropped: u64,
    /// Events cut to fit the wire's limits.
    pub events_truncated: u64,
    /// Where enforcement was less exact than the policy says, by cause.
    pub enforcement_degraded: BTreeMap<String, u64>,
}

/// The capture side as a session drives it.
pub trait CaptureControl: Debug + Send + Sync + 'static {
    /// Hands a verified policy to the capture loop (which installs it
    /// atomically); false when the capture loop is gone.
    fn install_policy(&self, policy: VerifiedPolicy) -> bool;
    /// The counters heartbeats carry.
    fn counters(&self) -> CaptureCounters;
    /// Changes batch size and interval; false when they only apply from the
    /// next start.
    fn set_batching(&self, max_events: u32, max_delay: Duration) -> bool;
    /// Turns TLS capture on or off; false when it only applies from the
    /// next start.
    fn set_tls_capture(&self, enabled: bool) -> bool;
    /// What the capture loop tells of discovered agents (None: nothing to
    /// report from).
    fn agent_feed(&self) -> Option<Arc<AgentFeed>> {
        None
    }
    /// Hands the operators' agent overrides to the capture loop (which
    /// applies them between ring reads); false when nothing can apply them.
    fn apply_overrides(&self, _overrides: OverrideSet) -> bool {
        false
    }
}

/// What the server may change while tyrd runs (kept across reconnects).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveSettings {
    /// Time between heartbeats.
    pub heartbeat_interval: Duration,
    /// What unregistered agents get.
    pub unregistered_agents: UnregisteredAgents,
}

/// What every session of this process shares.
#[derive(Debug, Clone)]
pub struct SessionContext {
    /// The spool batches are sent from.
    pub spool: Spool,
    /// The capture loop.
    pub capture: Arc<dyn CaptureControl>,
    /// Where the last policy push is kept.
    pub state_dir: PathBuf,
    /// Sent first on every stream.
    pub capabilities: CapabilityReport,
    /// Server-adjustable settings.
    pub settings: Arc<Mutex<LiveSettings>>,
    /// Pushes whose entries tyrd's compiler did not reproduce.
    pub policy_skew_total: Arc<AtomicU64>,
    /// Pushes refused (malformed or not compilable here).
    pub policy_refused_total: Arc<AtomicU64>,
    /// Batches the server refused, across sessions.
    pub refusals: Arc<Mutex<Refusals>>,
    /// Streams opened, reconnects, and whether a stream is open (metrics).
    pub link_stats: Arc<LinkStats>,
}

/// The link's counters, kept across sessions and read by `/metrics`.
#[derive(Debug, Default)]
pub struct LinkStats {
    /// Streams opened with the server.
    pub streams_opened: AtomicU64,
    /// Connection attempts after a session ended or a connection failed.
    pub reconnects: AtomicU64,
    /// Streams open now (0 or 1).
    pub connected: AtomicU64,
}

impl LinkStats {
    /// Counts a stream opened; it counts as open until the guard drops.
    fn opened(&self) -> OpenStream<'_> {
        self.streams_opened.fetch_add(1, Ordering::Relaxed);
        self.connected.fetch_add(1, Ordering::Relaxed);
        OpenStream(self)
    }
}

/// A stream counted as open in [`LinkStats::connected`].
struct OpenStream<'a>(&'a LinkStats);

impl Drop for OpenStream<'_> {
    fn drop(&mut self) {
        self.0.connected.fetch_sub(1, Ordering::Relaxed);
    }
}

impl SessionContext {
    fn settings(&self) -> LiveSettings {
        match self.settings.lock() {
            Ok(settings) => *settings,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }

    fn refusals<T>(&self, use_it: impl FnOnce(&mut Refusals) -> T) -> T {
        match self.refusals.lock() {
            Ok(mut refusals) => use_it(&mut refusals),
            Err(poisoned) => use_it(&mut poisoned.into_inner()),
        }
    }

    fn update_settings(&self, change: impl FnOnce(&mut LiveSettings)) {
        match self.settings.lock() {
            Ok(mut settings) => change(&mut settings),
            Err(poisoned) => change(&mut poisoned.into_inner()),
        }
    }
}

/// How a session ended.
#[derive(Debug)]
pub enum SessionEnd {
    /// Shutdown was requested; the stream was closed.
    Shutdown,
    /// The server refused this daemon's identity (`UNAUTHENTICATED`).
    Refused(tonic::Status),
    /// The stream failed; reconnect after a backoff.
    Failed(String),
}

fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)).unwrap_or(0)
}

/// How often a push handed to the capture loop is checked for in the kernel.
const INSTALL_POLL: Duration = Duration::from_millis(50);
/// How long a push is watched for before only regular heartbeats report it.
const INSTALL_WATCH: Duration = Duration::from_secs(10);

/// A heartbeat with the counters as they are now.
pub fn heartbeat(ctx: &SessionContext) -> Heartbeat {
    let counters = ctx.capture.counters();
    let stats = ctx.spool.stats();
    Heartbeat {
        timestamp_ns: now_ns(),
        policy_version: counters.applied_policy_version,
        last_seq: stats.last_seq,
        drops: Some(DropCounters {
            ringbuf_reserve_failed: counters.ringbuf_lost,
            queue_overflow: counters.queue_overflow,
            spool_evicted: stats.evicted_events,
            decode_failed: counters.decode_failed,
            spool_write_dropped: counters.spool_write_dropped,
            spool_torn: stats.torn_events,
            events_truncated: counters.events_truncated,
            enforcement_degraded: counters.enforcement_degraded,
        }),
        spooled_events: stats.events,
        spool_bytes: stats.bytes,
    }
}

/// Verifies, stores and installs a push; the policy in force stays on any
/// error.
pub async fn apply_push(ctx: &SessionContext, push: &PolicyPush) {
    let version = push.policy_version;
    let unregistered = ctx.settings().unregistered_agents;
    let stored = StoredPush::from_push(push);
    let state_dir = ctx.state_dir.clone();
    let verified = tokio::task::spawn_blocking(move || {
        let verified = stored.verify(unregistered)?;
        stored.save(&state_dir)?;
        Ok::<_, policy::PolicyError>(verified)
    })
    .await;
    match verified {
        Ok(Ok(verified)) => {
            if verified.skew {
                ctx.policy_skew_total.fetch_add(1, Ordering::Relaxed);
            }
            if ctx.capture.install_policy(verified) {
                info!(version, "policy received");
            } else {
                warn!(version, "policy received but the capture loop is gone");
            }
        }
        Ok(Err(error)) => {
            ctx.policy_refused_total.fetch_add(1, Ordering::Relaxed);
            warn!(%error, version, "policy push refused, the policy in force stays");
        }
        Err(error) => warn!(%error, version, "policy push check failed"),
    }
}

/// Re-derives the stored policy after the unregistered-agents mode changed.
async fn reinstall_stored(ctx: &SessionContext) {
    let state_dir = ctx.state_dir.clone();
    let unregistered = ctx.settings().unregistered_agents;
    let verified = tokio::task::spawn_blocking(move || {
        StoredPush::load(&state_dir)?.map(|stored| stored.verify(unregistered)).transpose()
    })
    .await;
    match verified {
        Ok(Ok(Some(verified))) => {
            let version = verified.version;
            if ctx.capture.install_policy(verified) {
                info!(version, mode = unregistered.as_str(), "policy reinstalled for the new unregistered-agents mode");
            }
        }
        Ok(Ok(None)) => {}
        Ok(Err(error)) => warn!(%error, "stored policy could not be re-derived, the policy in force stays"),
        Err(error) => warn!(%error, "stored policy check failed"),
    }
}

/// Applies a `ConfigUpdate`; returns the new heartbeat interval when it changed.
async fn apply_config(ctx: &SessionContext, update: &ConfigUpdate) -> Option<Duration> {
    let mut new_interval = None;
    if update.heartbeat_interval_s > 0 {
        let interval = Duration::from_secs(u64::from(update.heartbeat_interval_s));
        if ctx.settings().heartbeat_interval != interval {
            ctx.update_settings(|s| s.heartbeat_interval = interval);
            new_interval = Some(interval);
        }
    }
    if update.stored_seq > 0 {
        raise_floor(&ctx.spool, update.stored_seq).await;
    }
    if update.batch_max_events > 0 && update.batch_max_interval_ms > 0 {
        let delay = Duration::from_millis(u64::from(update.batch_max_interval_ms));
        // The server's own limit on a batch, whatever it asks for.
        let max_events = update.batch_max_events.min(u32::try_from(MAX_EVENTS_PER_BATCH).unwrap_or(u32::MAX));
        if !ctx.capture.set_batching(max_events, delay) {
            info!(
                max_events,
                max_ms = update.batch_max_interval_ms,
                "batch settings from the server apply from the next start"
            );
        }
    }
    if !ctx.capture.set_tls_capture(update.tls_capture) {
        debug!(enabled = update.tls_capture, "tls capture setting applies from the next start");
    }
    if !update.unregistered_agents.is_empty() {
        match <UnregisteredAgents as clap::ValueEnum>::from_str(&update.unregistered_agents, false) {
            Ok(mode) if mode != ctx.settings().unregistered_agents => {
                ctx.update_settings(|s| s.unregistered_agents = mode);
                reinstall_stored(ctx).await;
            }
            Ok(_) => {}
            Err(_) => {
                warn!(value = %update.unregistered_agents, "unknown unregistered_agents mode from the server, ignored")
            }
        }
    }
    new_interval
}

/// Numbers the spool on from above `stored_seq` (the server holds numbers
/// up to it: lower ones would be taken for replays), and lets go of the
/// batches the server already holds (stored before a crash cut their ack:
/// sending them again would only be dropped, evicting them would count a
/// loss that did not happen).
async fn raise_floor(spool: &Spool, stored_seq: u64) {
    let spool = spool.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        spool.resolve_sent(stored_seq)?;
        spool.raise_floor(stored_seq)
    });
    match outcome.await {
        Ok(Ok(true)) => {
            warn!(stored_seq, "the server holds higher sequence numbers than the spool: numbering on from them")
        }
        Ok(Ok(false)) => {}
        Ok(Err(error)) => error!(%error, stored_seq, "could not raise the spool's numbering"),
        Err(error) => error!(%error, stored_seq, "could not raise the spool's numbering"),
    }
}

/// Records that the server refused a batch in flight; sets aside the batch
/// the refusals name (see [`super::refusal`]).
async fn batch_refused(ctx: &SessionContext, in_flight: &VecDeque<(u64, u64)>, status: &tonic::Status) {
    let in_flight: Vec<(u64, u64)> = in_flight.iter().copied().collect();
    let named = ctx.refusals(|refusals| refusals.refused(&in_flight));
    warn!(
        code = ?status.code(),
        message = status.message(),
        in_flight = in_flight.len(),
        "the server refused a batch: sending one at a time to find it"
    );
    let Some(first) = named else { return };
    let spool = ctx.spool.clone();
    match tokio::task::spawn_blocking(move || spool.reject(first)).await {
        // The spool logs the batch and its count at error level.
        Ok(Ok(Some(_))) => {}
        Ok(Ok(None)) => warn!(first, "the refused batch is no longer the oldest unacknowledged one, kept"),
        Ok(Err(error)) => error!(%error, first, "could not set the refused batch aside"),
        Err(error) => error!(%error, first, "could not set the refused batch aside"),
    }
}

fn heartbeat_timer(period: Duration) -> tokio::time::Interval {
    let mut timer = tokio::time::interval_at(Instant::now() + period, period);
    timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
    timer
}

/// Sends on the request stream unless shutdown comes first.
async fn send(
    tx: &mpsc::Sender<AgentMessage>,
    payload: Outgoing,
    shutdown: &CancellationToken,
) -> Result<(), SessionEnd> {
    tokio::select! {
        sent = tx.send(AgentMessage { payload: Some(payload) }) => {
            sent.map_err(|_| SessionEnd::Failed("request stream closed".to_owned()))
        }
        () = shutdown.cancelled() => Err(SessionEnd::Shutdown),
    }
}

/// The next spooled batch after `cursor`, read off the runtime.
async fn next_batch(spool: &Spool, cursor: u64) -> Result<Option<EventBatch>, SessionEnd> {
    let spool = spool.clone();
    match tokio::task::spawn_blocking(move || spool.next_to_send(cursor)).await {
        Ok(Ok(batch)) => Ok(batch),
        Ok(Err(error)) => Err(SessionEnd::Failed(format!("reading the spool: {error}"))),
        Err(error) => Err(SessionEnd::Failed(format!("reading the spool: {error}"))),
    }
}

/// Runs one session on `channel` until it ends.
pub async fn run(channel: Channel, ctx: &SessionContext, shutdown: &CancellationToken) -> SessionEnd {
    let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
    if tx.send(AgentMessage { payload: Some(Outgoing::Capabilities(ctx.capabilities.clone())) }).await.is_err() {
        return SessionEnd::Failed("request stream closed".to_owned());
    }
    let mut client = AgentServiceClient::new(channel);
    let opened = tokio::select! {
        opened = client.stream(ReceiverStream::new(rx)) => opened,
        () = shutdown.cancelled() => return SessionEnd::Shutdown,
    };
    let mut inbound = match opened {
        Ok(response) => response.into_inner(),
        Err(status) if status.code() == tonic::Code::Unauthenticated => return SessionEnd::Refused(status),
        Err(status) => return SessionEnd::Failed(format!("opening the stream: {status}")),
    };
    info!("stream open");
    let _open = ctx.link_stats.opened();
    ctx.spool.begin_session();
    match exchange(ctx, &tx, &mut inbound, shutdown).await {
        // Dropping the sender ends the request stream cleanly.
        end @ SessionEnd::Shutdown => {
            drop(tx);
            info!("stream closed for shutdown");
            end
        }
        end => end,
    }
}

/// The body of a session, once the stream is open.
async fn exchange(
    ctx: &SessionContext,
    tx: &mpsc::Sender<AgentMessage>,
    inbound: &mut tonic::Streaming<tyr_proto::ServerMessage>,
    shutdown: &CancellationToken,
) -> SessionEnd {
    let notify = ctx.spool.notifier();
    // Replay everything not acknowledged, in sequence order.
    let mut cursor = ctx.spool.stats().acked_seq;
    // First and last sequence numbers of each batch sent and not yet acknowledged.
    let mut in_flight: VecDeque<(u64, u64)> = VecDeque::new();
    let mut spool_drained = false;
    let mut heartbeats = heartbeat_timer(ctx.settings().heartbeat_interval);
    let mut reporter = match ctx.capture.agent_feed() {
        Some(feed) => Some(Reporter::start(feed, &ctx.state_dir).await),
        None => None,
    };
    let mut report_tick = tokio::time::interval(agents::REPORT_TICK);
    report_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // A push just handed to the capture loop: reported by a heartbeat as
    // soon as the kernel runs it, so the server sees when it applied.
    let mut awaiting_install: Option<(i64, tokio::time::Instant)> = None;
    let mut install_poll = tokio::time::interval(INSTALL_POLL);
    install_poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let window = ctx.refusals(|refusals| refusals.window(ctx.spool.stats().acked_seq));
        if in_flight.len() < window && !spool_drained {
            match next_batch(&ctx.spool, cursor).await {
                Ok(Some(batch)) => {
                    let last = batch.events.last().map_or(batch.batch_id, |e| e.seq);
                    cursor = last;
                    in_flight.push_back((batch.batch_id, last));
                    if let Err(end) = send(tx, Outgoing::EventBatch(batch), shutdown).await {
                        return end;
                    }
                    continue;
                }
                Ok(None) => spool_drained = true,
                Err(end) => return end,
            }
        }
        let may_send = in_flight.len() < window;
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return SessionEnd::Shutdown,
            message = inbound.message() => {
                let payload = match message {
                    Ok(Some(message)) => message.payload,
                    Ok(None) => return SessionEnd::Failed("the server closed the stream".to_owned()),
                    Err(status) if status.code() == tonic::Code::Unauthenticated => return SessionEnd::Refused(status),
                    Err(status) => {
                        if matches!(status.code(), tonic::Code::InvalidArgument | tonic::Code::ResourceExhausted) {
                            batch_refused(ctx, &in_flight, &status).await;
                        }
                        return SessionEnd::Failed(format!("stream: {status}"));
                    }
                };
                match payload {
                    Some(Incoming::Ack(BatchAck { batch_id, acked_seq })) => {
                        debug!(batch_id, acked_seq, "batch acknowledged");
                        let spool = ctx.spool.clone();
                        match tokio::task::spawn_blocking(move || spool.acknowledge(acked_seq)).await {
                            Ok(Ok(())) => {}
                            Ok(Err(error)) => warn!(%error, acked_seq, "spool acknowledgement failed"),
                            Err(error) => warn!(%error, acked_seq, "spool acknowledgement failed"),
                        }
                        ctx.refusals(|refusals| refusals.acknowledged(acked_seq));
                        while in_flight.front().is_some_and(|&(_, last)| last <= acked_seq) {
                            in_flight.pop_front();
                        }
                        spool_drained = false;
                    }
                    Some(Incoming::Policy(push)) => {
                        apply_push(ctx, &push).await;
                        awaiting_install = Some((push.policy_version, tokio::time::Instant::now()));
                    }
                    Some(Incoming::Overrides(message)) => {
                        let set = agents::receive_overrides(&ctx.state_dir, &message).await;
                        let count = set.len();
                        if ctx.capture.apply_overrides(set) {
                            info!(count, "agent overrides received");
                        } else {
                            warn!(count, "agent overrides received but nothing can apply them");
                        }
                    }
                    Some(Incoming::Config(update)) => {
                        if let Some(period) = apply_config(ctx, &update).await {
                            heartbeats = heartbeat_timer(period);
                        }
                    }
                    Some(Incoming::Ping(ping)) => {
                        if let Err(end) = send(tx, Outgoing::Pong(PingResponse { nonce: ping.nonce }), shutdown).await {
                            return end;
                        }
                    }
                    None => debug!("empty server message ignored"),
                }
            }
            _ = report_tick.tick(), if reporter.is_some() => {
                let reports = match reporter.as_mut() {
                    Some(reporter) => reporter.tick().await,
                    None => Vec::new(),
                };
                for report in reports {
                    if let Err(end) = send(tx, Outgoing::Discovered(report), shutdown).await {
                        return end;
                    }
                }
            }
            _ = install_poll.tick(), if awaiting_install.is_some() => {
                if let Some((version, since)) = awaiting_install {
                    let beat = heartbeat(ctx);
                    if beat.policy_version == version {
                        awaiting_install = None;
                        if let Err(end) = send(tx, Outgoing::Heartbeat(beat), shutdown).await {
                            return end;
                        }
                    } else if since.elapsed() > INSTALL_WATCH {
                        // Refused or still installing: the regular heartbeats report it.
                        awaiting_install = None;
                    }
                }
            }
            _ = heartbeats.tick() => {
                if let Some(reporter) = reporter.as_mut() {
                    reporter.collect_sightings();
                }
                if let Err(end) = send(tx, Outgoing::Heartbeat(heartbeat(ctx)), shutdown).await {
                    return end;
                }
            }
            () = notify.notified(), if may_send => spool_drained = false,
        }
    }
}
