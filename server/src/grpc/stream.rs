//! The Stream session, server side.
//!
//! On open the client certificate is mapped to a live daemon row or the
//! stream is refused. The daemon sends its CapabilityReport first; the
//! server answers with the daemon's effective PolicyPush and a
//! ConfigUpdate. Then, until the stream ends, the daemon is revoked, or the
//! server shuts down:
//!
//! ```text
//! EventBatch ─► validate ─► drift pool ─► (in order) ingest queue ─► ClickHouse commit ─► BatchAck
//! Heartbeat  ─► daemons row (last seen, policy version, drops, spool depth)
//! policy change (NOTIFY) ─► re-derive the effective policy ─► PolicyPush when its version moved
//! DiscoveredAgentReport ─► rate limit ─► report writer ─► discovered_agents row
//! override change (NOTIFY) ─► AgentOverrides (the daemon's whole set) when it changed
//! ```
//!
//! Batches are evaluated concurrently but enter the ingest queue in the
//! order the daemon sent them (per-host `seq` deduplication depends on it).
//! When ingest is full the forwarder waits, the bounded hand-over fills,
//! and the session stops reading the stream: backpressure reaches tyrd
//! through HTTP/2 flow control, and nothing is acknowledged before it is
//! stored.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Status, Streaming};
use tyr_proto::agent_message::Payload as Inbound;
use tyr_proto::server_message::Payload as Outbound;
use tyr_proto::{
    AgentMessage, BatchAck, CapabilityReport, ConfigUpdate, EventBatch, Heartbeat, PingRequest, PolicyPush,
    ServerMessage,
};
use uuid::Uuid;

use super::ServerStream;
use super::discovered::AgentSync;
use crate::control_db::daemons::{self, HeartbeatRecord};
use crate::control_db::policies::{self, EffectivePolicy};
use crate::drift::{DriftContext, DriftPolicy, DriftPool, EvaluatedBatch, PolicyCache};
use crate::error::ServiceError;
use crate::event_store::EventStore;
use crate::fleet::{EndReason, Fleet, SessionSlot};
use crate::identity;
use crate::ingest::{BatchLimits, Ingest, IngestError, validate_batch};
use crate::metrics::Metrics;

/// Settings pushed to daemons in ConfigUpdate and used by sessions.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    /// Seconds between a daemon's heartbeats.
    pub heartbeat_interval_s: u32,
    /// Events per batch tyrd cuts.
    pub batch_max_events: u32,
    /// Longest a tyrd batch waits, in milliseconds.
    pub batch_max_ms: u32,
    /// Whether daemons capture TLS server names.
    pub tls_capture: bool,
    /// Batches of one stream between reading and acknowledging.
    pub in_flight_batches: usize,
    /// How long a new stream may take to send its CapabilityReport.
    pub hello_timeout: Duration,
    /// How often a session re-checks that its daemon still exists (in case
    /// a revocation notice was missed).
    pub recheck_interval: Duration,
    /// How often the server pings an idle-looking stream.
    pub ping_interval: Duration,
    /// On shutdown, how long a session waits for its in-flight batches to
    /// be stored and acknowledged.
    pub drain_timeout: Duration,
}

impl Default for SessionSettings {
    fn default() -> Self {
        Self {
            heartbeat_interval_s: 30,
            batch_max_events: 100,
            batch_max_ms: 1000,
            tls_capture: true,
            in_flight_batches: 64,
            hello_timeout: Duration::from_secs(30),
            recheck_interval: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(60),
        }
    }
}

/// Stream counters, readable at any time.
#[derive(Debug, Default)]
pub struct StreamStats {
    /// Streams that were mapped to a daemon and began.
    pub sessions_opened: AtomicU64,
    /// Streams refused: no, unknown or revoked certificate.
    pub sessions_refused: AtomicU64,
    /// Sessions ended because their daemon was revoked.
    pub sessions_revoked: AtomicU64,
    /// Streams ended for a protocol violation (bad batch, no CapabilityReport).
    pub protocol_violations: AtomicU64,
    /// Event batches accepted into the pipeline.
    pub batches_received: AtomicU64,
    /// PolicyPush messages sent.
    pub policy_pushes: AtomicU64,
    /// Heartbeats received.
    pub heartbeats: AtomicU64,
    /// PostgreSQL writes or reads of a session that failed (the session went on).
    pub control_db_failures: AtomicU64,
    /// Policy changes whose effective policy could not be computed or sent
    /// to a connected daemon (the policy in force stayed; the next change retries).
    pub policy_failures: AtomicU64,
    /// Discovered-agent reports and override messages.
    pub discovered: super::discovered::ReportStats,
}

/// What every session shares.
#[derive(Debug)]
pub struct StreamContext {
    /// Control data.
    pub pool: PgPool,
    /// Live sessions, revocation and policy-change notices.
    pub fleet: Fleet,
    /// Cedar re-evaluation of events.
    pub drift: DriftPool,
    /// One parsed Cedar policy set per version.
    pub policies: PolicyCache,
    /// The writer to ClickHouse.
    pub ingest: Ingest,
    /// ClickHouse, for what a daemon's stream needs to know of its stored events.
    pub store: EventStore,
    /// Limits on what a batch may hold.
    pub limits: BatchLimits,
    /// ConfigUpdate values and session pacing.
    pub settings: SessionSettings,
    /// Server shutdown: sessions end and daemons reconnect elsewhere or later.
    pub shutdown: CancellationToken,
    /// Counters.
    pub stats: StreamStats,
    /// Latencies and what else `/metrics` shows.
    pub metrics: Arc<Metrics>,
}

/// Maps the peer certificate to a daemon and starts its session.
pub async fn open(ctx: Arc<StreamContext>, request: Request<Streaming<AgentMessage>>) -> Result<ServerStream, Status> {
    let daemon = match authenticate(&ctx, &request).await {
        Ok(daemon) => daemon,
        Err(error) => {
            ctx.stats.sessions_refused.fetch_add(1, Ordering::Relaxed);
            return Err(error.into());
        }
    };
    let slot = ctx.fleet.join(daemon);
    // A revocation between the lookup and joining would otherwise be missed.
    if !daemon_exists(&ctx.pool, daemon).await.map_err(ServiceError::internal)? {
        ctx.stats.sessions_refused.fetch_add(1, Ordering::Relaxed);
        return Err(ServiceError::Unauthenticated(REFUSED).into());
    }
    ctx.stats.sessions_opened.fetch_add(1, Ordering::Relaxed);
    let (outbound, receiver) = mpsc::channel(ctx.settings.in_flight_batches + 8);
    let inbound = request.into_inner();
    tokio::spawn(async move {
        let session = Session { ctx, daemon, slot, outbound: outbound.clone() };
        if let Err(status) = session.run(inbound).await {
            let _ = outbound.send(Err(status)).await;
        }
    });
    Ok(Box::pin(ReceiverStream::new(receiver)))
}

/// Longest the server waits for a daemon to read what it is sent.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// Earlier policy versions a session keeps parsed for judging replays.
const EARLIER_VERSIONS: i64 = 8;

/// The one message for every refused identity: no hint which check failed.
const REFUSED: &str = "client certificate does not identify an enrolled daemon";

async fn authenticate(ctx: &StreamContext, request: &Request<Streaming<AgentMessage>>) -> Result<Uuid, ServiceError> {
    let certs = request.peer_certs().ok_or(ServiceError::Unauthenticated(REFUSED))?;
    let leaf = certs.first().ok_or(ServiceError::Unauthenticated(REFUSED))?;
    let identity = identity::daemon_identity(leaf.as_ref()).ok_or(ServiceError::Unauthenticated(REFUSED))?;
    let row = daemons::find_by_identity(&ctx.pool, identity.daemon_id, &identity.serial_hex)
        .await
        .map_err(ServiceError::internal)?;
    row.map(|_| identity.daemon_id).ok_or(ServiceError::Unauthenticated(REFUSED))
}

async fn daemon_exists(pool: &PgPool, daemon: Uuid) -> Result<bool, daemons::DaemonError> {
    Ok(daemons::get(pool, daemon).await?.is_some())
}

type Outgoing = mpsc::Sender<Result<ServerMessage, Status>>;

/// One daemon's stream.
struct Session {
    ctx: Arc<StreamContext>,
    daemon: Uuid,
    slot: SessionSlot,
    outbound: Outgoing,
}

/// A batch on its way: evaluated (maybe still evaluating) and waiting for its turn in ingest.
struct InFlight {
    batch_id: u64,
    evaluated: oneshot::Receiver<EvaluatedBatch>,
    /// When it was read off the stream (ack latency).
    received: Instant,
}

impl Session {
    async fn run(mut self, mut inbound: Streaming<AgentMessage>) -> Result<(), Status> {
        let hello = tokio::time::timeout(self.ctx.settings.hello_timeout, inbound.message()).await;
        let capabilities = match hello {
            Ok(Ok(Some(AgentMessage { payload: Some(Inbound::Capabilities(report)) }))) => report,
            Ok(Ok(None)) => return Ok(()),
            Ok(Err(status)) => return Err(status),
            Ok(Ok(Some(_))) | Err(_) => {
                self.ctx.stats.protocol_violations.fetch_add(1, Ordering::Relaxed);
                return Err(Status::invalid_argument("the first message of a stream must be a CapabilityReport"));
            }
        };
        self.store_capabilities(&capabilities).await;
        let (mut policy, mut drift) = self.push_policy(None).await?;
        let stored_seq = match self.ctx.store.max_seq(self.daemon).await {
            Ok(seq) => seq,
            Err(error) => {
                tracing::warn!(daemon = %self.daemon, %error, "cannot read the stored seq; the daemon keeps its numbering");
                0
            }
        };
        self.send(Outbound::Config(self.config_update(stored_seq))).await?;
        let mut agents = AgentSync::start(&self.ctx, self.daemon);
        self.sync_overrides(&mut agents).await?;

        // Evaluated batches go to ingest in order (forwarder); acks go back in order (acker).
        let (forward, forward_rx) = mpsc::channel::<InFlight>(self.ctx.settings.in_flight_batches);
        let (acks, acks_rx) = mpsc::channel(self.ctx.settings.in_flight_batches);
        let mut pipeline = JoinSet::new();
        pipeline.spawn(forward_in_order(Arc::clone(&self.ctx), self.daemon, forward_rx, acks));
        pipeline.spawn(acknowledge_in_order(acks_rx, self.outbound.clone(), Arc::clone(&self.ctx.metrics)));

        let mut recheck = tokio::time::interval(self.ctx.settings.recheck_interval);
        recheck.tick().await;
        let mut ping = tokio::time::interval(self.ctx.settings.ping_interval);
        ping.tick().await;
        let mut nonce = 0u64;
        let mut last_seq = 0u64;
        // A policy change pushed and not yet reported applied: (version, pushed at).
        let mut applying: Option<(i64, Instant)> = None;
        loop {
            tokio::select! {
                biased;
                () = self.slot.ended.cancelled() => return Err(self.ended_status()),
                () = self.ctx.shutdown.cancelled() => {
                    // Drain: read nothing more, let what is in flight be stored and acknowledged.
                    drop(forward);
                    let drained = async { while pipeline.join_next().await.is_some() {} };
                    let _ = tokio::time::timeout(self.ctx.settings.drain_timeout, drained).await;
                    return Err(Status::unavailable("server shutting down; reconnect later"));
                }
                finished = pipeline.join_next() => {
                    // A pipeline stage ends only when ingest refused or the daemon went away.
                    return match finished {
                        Some(Ok(Err(status))) => Err(status),
                        _ => Ok(()),
                    };
                }
                changed = self.slot.policy_changed.changed() => {
                    if changed.is_ok() {
                        let before = policy.version;
                        // A change that cannot be computed (or sent) must not cut the
                        // daemon off: the policy in force stays, and it is counted.
                        match self.push_policy(Some((policy.clone(), drift.clone()))).await {
                            Ok(next) => (policy, drift) = next,
                            Err(status) => {
                                self.ctx.stats.policy_failures.fetch_add(1, Ordering::Relaxed);
                                tracing::warn!(daemon = %self.daemon, error = status.message(),
                                    "the changed effective policy cannot be pushed; the one in force stays");
                            }
                        }
                        if policy.version != before {
                            applying = Some((policy.version, Instant::now()));
                        }
                    }
                }
                changed = self.slot.agents_changed.changed() => {
                    if changed.is_ok() {
                        self.sync_overrides(&mut agents).await?;
                    }
                }
                _ = ping.tick() => {
                    nonce += 1;
                    self.send(Outbound::Ping(PingRequest { nonce })).await?;
                }
                _ = recheck.tick() => match daemon_exists(&self.ctx.pool, self.daemon).await {
                    // Also catches an override notice missed while nobody listened.
                    Ok(true) => self.sync_overrides(&mut agents).await?,
                    Ok(false) => self.ctx.fleet.revoke(self.daemon),
                    // A PostgreSQL blip must not drop every stream of the fleet at once.
                    Err(error) => self.control_db_unavailable("re-checking the daemon", &error),
                },
                // Read only while the hand-over has room: that pause is the backpressure.
                received = inbound.message(), if forward.capacity() > 0 => {
                    let message = match received {
                        Ok(Some(message)) => message,
                        Ok(None) => return Ok(()),
                        Err(status) if status.code() == tonic::Code::OutOfRange => {
                            // tonic refused a message over the size limit: say so, or the
                            // daemon would take the end as clean and resend it forever.
                            self.ctx.stats.protocol_violations.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(daemon = %self.daemon, %status, "message over the size limit");
                            return Err(Status::resource_exhausted(
                                "message over the server's size limit; send smaller batches",
                            ));
                        }
                        Err(status) => {
                            tracing::debug!(daemon = %self.daemon, %status, "stream from daemon ended");
                            return Ok(());
                        }
                    };
                    match message.payload {
                        Some(Inbound::EventBatch(batch)) => {
                            let in_flight = self.accept_batch(batch, &mut last_seq, &drift)?;
                            if forward.try_send(in_flight).is_err() {
                                return Ok(());
                            }
                        }
                        Some(Inbound::Heartbeat(heartbeat)) => {
                            if let Some((version, pushed)) = applying
                                && heartbeat.policy_version >= version
                            {
                                self.ctx.metrics.observe_policy_apply(pushed.elapsed());
                                applying = None;
                            }
                            self.record_heartbeat(&heartbeat).await;
                        }
                        Some(Inbound::Capabilities(report)) => self.store_capabilities(&report).await,
                        Some(Inbound::Discovered(report)) => agents.report(&self.ctx.stats.discovered, &report),
                        Some(Inbound::Pong(pong)) if pong.nonce != nonce => {
                            tracing::debug!(daemon = %self.daemon, nonce = pong.nonce, "pong for an older ping");
                        }
                        Some(Inbound::Pong(_)) | None => {}
                    }
                }
            }
        }
    }

    fn ended_status(&self) -> Status {
        match self.slot.end_reason() {
            Some(EndReason::Superseded) => Status::aborted("a newer stream of this daemon replaced this one"),
            _ => {
                self.ctx.stats.sessions_revoked.fetch_add(1, Ordering::Relaxed);
                tracing::info!(daemon = %self.daemon, "closing the stream of a revoked daemon");
                Status::unauthenticated(REFUSED)
            }
        }
    }

    /// Validates a batch and hands it to the drift pool.
    fn accept_batch(&self, batch: EventBatch, last_seq: &mut u64, drift: &DriftContext) -> Result<InFlight, Status> {
        if let Err(rejection) = validate_batch(&batch, &self.ctx.limits) {
            self.ctx.stats.protocol_violations.fetch_add(1, Ordering::Relaxed);
            self.ctx.metrics.count_rejected_events(batch.events.len());
            tracing::warn!(daemon = %self.daemon, %rejection, "rejected an event batch");
            return Err(Status::invalid_argument(rejection.to_string()));
        }
        let first = batch.events.first().map_or(0, |e| e.seq);
        if first != 0 && first <= *last_seq {
            self.ctx.stats.protocol_violations.fetch_add(1, Ordering::Relaxed);
            return Err(Status::invalid_argument(format!(
                "event seq went backwards within the stream: {first} after {last_seq}"
            )));
        }
        *last_seq = batch.events.last().map_or(*last_seq, |e| e.seq);
        self.ctx.stats.batches_received.fetch_add(1, Ordering::Relaxed);
        let received = Instant::now();
        Ok(InFlight {
            batch_id: batch.batch_id,
            evaluated: self.ctx.drift.submit(drift.clone(), batch.events),
            received,
        })
    }

    /// Re-derives the effective policy; pushes it when its version moved,
    /// and from then on judges drift against it.
    async fn push_policy(
        &self,
        current: Option<(EffectivePolicy, DriftContext)>,
    ) -> Result<(EffectivePolicy, DriftContext), Status> {
        let effective = policies::effective_for(&self.ctx.pool, self.daemon).await.map_err(ServiceError::internal)?;
        if let Some(current) = current
            && current.0.version == effective.version
        {
            return Ok(current);
        }
        let sent: BTreeSet<i64> = policies::sent_versions(&self.ctx.pool, self.daemon)
            .await
            .map_err(ServiceError::internal)?
            .into_iter()
            .collect();
        let earlier_texts = policies::recent_cedar(&self.ctx.pool, self.daemon, EARLIER_VERSIONS)
            .await
            .map_err(ServiceError::internal)?;
        // Parsing Cedar takes milliseconds: off the async workers.
        let ctx = Arc::clone(&self.ctx);
        let (version, cedar_text) = (effective.version, effective.cedar_text.clone());
        let (parsed, earlier) = tokio::task::spawn_blocking(move || {
            let parsed = ctx.policies.get_or_parse(version, &cedar_text)?;
            let mut earlier = std::collections::BTreeMap::<i64, Arc<DriftPolicy>>::new();
            for (old, text) in earlier_texts.iter().filter(|(old, _)| *old != version) {
                earlier.insert(*old, ctx.policies.get_or_parse(*old, text)?);
            }
            Ok::<_, crate::drift::DriftError>((parsed, earlier))
        })
        .await
        .map_err(ServiceError::internal)?
        .map_err(ServiceError::internal)?;
        let drift = DriftContext {
            daemon_id: self.daemon,
            policy: parsed,
            sent_versions: Arc::new(sent),
            earlier: Arc::new(earlier),
        };
        let push = PolicyPush {
            policy_version: effective.version,
            bpf_entries: effective.bpf_entries.clone(),
            cedar_text: effective.cedar_text.clone(),
            overlays: Vec::new(),
            policy_yaml: effective.policy_yaml.clone(),
        };
        self.send(Outbound::Policy(push)).await?;
        self.ctx.stats.policy_pushes.fetch_add(1, Ordering::Relaxed);
        tracing::info!(daemon = %self.daemon, version = effective.version, "policy pushed");
        Ok((effective, drift))
    }

    /// Sends the daemon's agent overrides when they changed since this
    /// stream last sent them; a PostgreSQL failure is counted and retried
    /// at the next notice or re-check.
    async fn sync_overrides(&self, agents: &mut AgentSync) -> Result<(), Status> {
        match agents.changed_overrides(&self.ctx.pool).await {
            Ok(Some(overrides)) => {
                let count = overrides.overrides.len();
                if let Err(status) = self.send(Outbound::Overrides(overrides)).await {
                    agents.unsent();
                    return Err(status);
                }
                self.ctx.stats.discovered.overrides_sent.fetch_add(1, Ordering::Relaxed);
                tracing::info!(daemon = %self.daemon, count, "agent overrides sent");
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(error) => {
                self.control_db_unavailable("reading agent overrides", &error);
                Ok(())
            }
        }
    }

    fn config_update(&self, stored_seq: u64) -> ConfigUpdate {
        let settings = &self.ctx.settings;
        ConfigUpdate {
            heartbeat_interval_s: settings.heartbeat_interval_s,
            batch_max_events: settings.batch_max_events,
            batch_max_interval_ms: settings.batch_max_ms,
            tls_capture: settings.tls_capture,
            unregistered_agents: String::new(),
            stored_seq,
        }
    }

    /// Stores the report; a PostgreSQL failure is logged and counted, the
    /// session goes on (the next report or heartbeat stores it again).
    async fn store_capabilities(&self, report: &CapabilityReport) {
        if let Err(error) = daemons::record_capabilities(&self.ctx.pool, self.daemon, &capabilities_json(report)).await
        {
            self.control_db_unavailable("storing capabilities", &error);
        }
    }

    async fn record_heartbeat(&self, heartbeat: &Heartbeat) {
        self.ctx.stats.heartbeats.fetch_add(1, Ordering::Relaxed);
        let drops = heartbeat.drops.clone().unwrap_or_default();
        let record = HeartbeatRecord {
            applied_policy_version: u64::try_from(heartbeat.policy_version).unwrap_or(0),
            drops: serde_json::json!({
                "ringbuf_reserve_failed": drops.ringbuf_reserve_failed,
                "queue_overflow": drops.queue_overflow,
                "spool_evicted": drops.spool_evicted,
                "decode_failed": drops.decode_failed,
                "spool_write_dropped": drops.spool_write_dropped,
                "spool_torn": drops.spool_torn,
                "events_truncated": drops.events_truncated,
                "enforcement_degraded": drops.enforcement_degraded,
            }),
            spooled_events: heartbeat.spooled_events,
        };
        if let Err(error) = daemons::record_heartbeat(&self.ctx.pool, self.daemon, &record).await {
            self.control_db_unavailable("storing a heartbeat", &error);
        }
    }

    fn control_db_unavailable(&self, what: &'static str, error: &dyn std::fmt::Display) {
        self.ctx.stats.control_db_failures.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(daemon = %self.daemon, %error, what, "PostgreSQL unavailable; the stream goes on");
    }

    /// Sends to the daemon; gives up when the session is ended meanwhile
    /// or the daemon does not read for [`SEND_TIMEOUT`] (a stalled reader
    /// must not pin a session, and its batches, forever).
    async fn send(&self, payload: Outbound) -> Result<(), Status> {
        let message = Ok(ServerMessage { payload: Some(payload) });
        tokio::select! {
            biased;
            () = self.slot.ended.cancelled() => Err(self.ended_status()),
            sent = tokio::time::timeout(SEND_TIMEOUT, self.outbound.send(message)) => match sent {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) => Err(Status::cancelled("daemon went away")),
                Err(_) => {
                    self.ctx.stats.protocol_violations.fetch_add(1, Ordering::Relaxed);
                    Err(Status::deadline_exceeded("the daemon stopped reading its stream"))
                }
            },
        }
    }
}

fn capabilities_json(report: &CapabilityReport) -> serde_json::Value {
    let hooks: Vec<_> = report
        .hooks
        .iter()
        .map(|h| serde_json::json!({"name": h.name, "attached": h.attached, "error": h.error, "fallback": h.fallback}))
        .collect();
    serde_json::json!({
        "kernel_version": report.kernel_version,
        "arch": report.arch,
        "agent_version": report.agent_version,
        "bpf_lsm": report.bpf_lsm,
        "tls_capture": report.tls_capture,
        "enforce_file": report.enforce_file,
        "enforce_exec": report.enforce_exec,
        "enforce_net": report.enforce_net,
        "hooks": hooks,
    })
}

/// A batch queued for ClickHouse: its id, the writer's answer, and when it was read.
type PendingAck = (u64, oneshot::Receiver<Result<u64, IngestError>>, Instant);

/// Takes evaluated batches in the order the daemon sent them and queues
/// them for ClickHouse; waiting for queue space is the backpressure.
async fn forward_in_order(
    ctx: Arc<StreamContext>,
    daemon: Uuid,
    mut batches: mpsc::Receiver<InFlight>,
    acks: mpsc::Sender<PendingAck>,
) -> Result<(), Status> {
    while let Some(in_flight) = batches.recv().await {
        let evaluated = in_flight.evaluated.await.map_err(|_| Status::internal("internal error"))?;
        let stored = ctx.ingest.enqueue(daemon, evaluated).await.map_err(ingest_status)?;
        if acks.send((in_flight.batch_id, stored, in_flight.received)).await.is_err() {
            break;
        }
    }
    Ok(())
}

/// Sends each BatchAck once its events are committed, in order.
async fn acknowledge_in_order(
    mut stored: mpsc::Receiver<PendingAck>,
    outbound: Outgoing,
    metrics: Arc<Metrics>,
) -> Result<(), Status> {
    while let Some((batch_id, committed, received)) = stored.recv().await {
        let acked_seq =
            committed.await.map_err(|_| Status::unavailable("server shutting down"))?.map_err(ingest_status)?;
        let ack = ServerMessage { payload: Some(Outbound::Ack(BatchAck { batch_id, acked_seq })) };
        if outbound.send(Ok(ack)).await.is_err() {
            break;
        }
        metrics.observe_batch_ack(received.elapsed());
    }
    Ok(())
}

fn ingest_status(error: IngestError) -> Status {
    tracing::warn!(%error, "ingest could not take a batch");
    Status::unavailable("event store unavailable; batches will be replayed")
}
