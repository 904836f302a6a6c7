//! The Stream session against a fake in-process server over mTLS, with the
//! real disk spool: CapabilityReport first, batches in order, acks delete
//! from the spool, a reconnect replays what was not acknowledged, policy
//! pushes reach the capture side, pings are answered, heartbeats carry the
//! counters; a refused identity is retried slowly and a new token
//! re-enrolls.

mod client_support;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use client_support::{FakeState, GOOD_TOKEN, OTHER_TOKEN, Running, scratch_dir, start, wait_for};
use rand::SeedableRng;
use tokio_util::sync::CancellationToken;
use tyr_agent::client::backoff::Backoff;
use tyr_agent::client::policy::{POLICY_FILE, VerifiedPolicy};
use tyr_agent::client::session::{CaptureControl, CaptureCounters, LiveSettings, SessionContext};
use tyr_agent::client::{enroll, link};
use tyr_agent::config::{DaemonConfig, Secret};
use tyr_agent::detect::tracker::UnregisteredAgents;
use tyr_agent::spool::Spool;
use tyr_common::policy::{compile, parse_policy};
use tyr_proto::agent_message::Payload as Out;
use tyr_proto::server_message::Payload as In;
use tyr_proto::{BatchAck, CapabilityReport, ConfigUpdate, Event, PingRequest, PolicyPush};

const WAIT: Duration = Duration::from_secs(10);
const POLICY: &str = "name: test\ndefault_verdict: allow\nrules:\n  - name: no-loopback-9\n    action: net_connect\n    cidr_deny: [\"127.0.0.9/32\"]\n    verdict: deny\n";

/// The capture side as a test double: records installs, serves counters.
#[derive(Debug, Default)]
struct FakeCapture {
    installed: Mutex<Vec<VerifiedPolicy>>,
    applied: AtomicU64,
    batching: Mutex<Option<(u32, Duration)>>,
}

impl CaptureControl for FakeCapture {
    fn install_policy(&self, policy: VerifiedPolicy) -> bool {
        self.applied.store(policy.version as u64, Ordering::SeqCst);
        self.installed.lock().expect("lock").push(policy);
        true
    }

    fn counters(&self) -> CaptureCounters {
        CaptureCounters {
            applied_policy_version: self.applied.load(Ordering::SeqCst) as i64,
            ringbuf_lost: BTreeMap::from([("EXEC".to_owned(), 3)]),
            queue_overflow: 5,
            decode_failed: 7,
            spool_write_dropped: 11,
            events_truncated: 13,
            enforcement_degraded: BTreeMap::from([("refused_file_read".to_owned(), 17)]),
        }
    }

    fn set_batching(&self, max_events: u32, max_delay: Duration) -> bool {
        *self.batching.lock().expect("lock") = Some((max_events, max_delay));
        true
    }

    fn set_tls_capture(&self, _enabled: bool) -> bool {
        false
    }
}

fn events(n: usize) -> Vec<Event> {
    (0..n).map(|i| Event { event_id: format!("e{i}"), resource: "/tmp/x".to_owned(), ..Event::default() }).collect()
}

struct Harness {
    server: Running,
    config: DaemonConfig,
    spool: Spool,
    capture: Arc<FakeCapture>,
    ctx: SessionContext,
}

async fn harness(name: &str) -> Harness {
    let server = start().await;
    let dir = scratch_dir(name);
    let config = DaemonConfig {
        server: Some(server.address.clone()),
        token: Some(Secret::new(GOOD_TOKEN)),
        ca_pin: Some(tyr_agent::client::trust::pin_of(&server.ca.der)),
        name: Some("session-host".to_owned()),
        state_dir: dir.clone(),
        heartbeat_interval_s: 1,
        ..DaemonConfig::default()
    };
    let spool = Spool::open(&dir.join("spool"), 64 << 20).expect("spool opens");
    let capture = Arc::new(FakeCapture::default());
    let ctx = SessionContext {
        spool: spool.clone(),
        capture: Arc::clone(&capture) as Arc<dyn CaptureControl>,
        state_dir: dir,
        capabilities: CapabilityReport {
            kernel_version: "6.8.0-test".to_owned(),
            arch: "x86_64".to_owned(),
            agent_version: "test".to_owned(),
            ..CapabilityReport::default()
        },
        settings: Arc::new(Mutex::new(LiveSettings {
            heartbeat_interval: Duration::from_secs(1),
            unregistered_agents: UnregisteredAgents::Audit,
        })),
        policy_skew_total: Arc::default(),
        policy_refused_total: Arc::default(),
        refusals: Arc::default(),
        link_stats: Arc::default(),
    };
    Harness { server, config, spool, capture, ctx }
}

fn fast_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(10), Duration::from_millis(50), rand::rngs::StdRng::seed_from_u64(1))
}

/// Batches received on stream `number`: (first seq, last seq).
fn batches_on(state: &FakeState, number: usize) -> Vec<(u64, u64)> {
    state
        .messages()
        .into_iter()
        .filter(|(n, _)| *n == number)
        .filter_map(|(_, m)| match m.payload {
            Some(Out::EventBatch(b)) => Some((b.events.first()?.seq, b.events.last()?.seq)),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_session_streams_the_spool_applies_pushes_and_replays_after_a_reconnect() {
    let h = harness("tyrd-session").await;
    let state = Arc::clone(&h.server.state);
    let identity = enroll::enroll(&h.config, "6.8.0-test", "x86_64").await.expect("enrolls");
    for n in [3, 2, 4] {
        h.spool.append(events(n)).expect("append");
    }
    let shutdown = CancellationToken::new();
    let link = {
        let (config, ctx, shutdown) = (h.config.clone(), h.ctx.clone(), shutdown.clone());
        tokio::spawn(async move { link::run(&config, identity, &ctx, fast_backoff(), &shutdown).await })
    };

    // CapabilityReport first, then the spool in sequence order.
    wait_for("three batches", WAIT, || batches_on(&state, 1).len() == 3).await;
    let first = state.messages().into_iter().next().expect("a message");
    assert!(matches!(first.1.payload, Some(Out::Capabilities(ref c)) if c.kernel_version == "6.8.0-test"));
    assert_eq!(batches_on(&state, 1), [(1, 3), (4, 5), (6, 9)]);

    // A policy push reaches the capture side with its version and is kept (0600).
    let set = parse_policy("test", POLICY).expect("parses");
    let entries = compile(&set, 41).expect("compiles").to_bytes();
    state
        .send(In::Policy(PolicyPush {
            policy_version: 41,
            bpf_entries: entries.clone(),
            policy_yaml: POLICY.to_owned(),
            ..PolicyPush::default()
        }))
        .await;
    wait_for("the policy installed", WAIT, || h.capture.installed.lock().expect("lock").len() == 1).await;
    let installed = h.capture.installed.lock().expect("lock")[0].clone();
    assert_eq!((installed.version, installed.skew), (41, false));
    assert_eq!(installed.compiled.to_bytes(), entries);
    let stored = h.ctx.state_dir.join(POLICY_FILE);
    assert_eq!(std::fs::metadata(&stored).expect("stored").permissions().mode() & 0o777, 0o600);

    // Pings are answered with their nonce.
    state.send(In::Ping(PingRequest { nonce: 4242 })).await;
    wait_for("the pong", WAIT, || {
        state.messages().iter().any(|(_, m)| matches!(m.payload, Some(Out::Pong(ref p)) if p.nonce == 4242))
    })
    .await;

    // Heartbeats carry the counters.
    wait_for("a heartbeat with the policy version", WAIT, || {
        state
            .messages()
            .iter()
            .any(|(_, m)| matches!(m.payload, Some(Out::Heartbeat(ref hb)) if hb.policy_version == 41))
    })
    .await;
    let beat = state
        .messages()
        .into_iter()
        .rev()
        .find_map(|(_, m)| match m.payload {
            Some(Out::Heartbeat(hb)) => Some(hb),
            _ => None,
        })
        .expect("a heartbeat");
    let drops = beat.drops.expect("drop counters");
    assert_eq!((beat.last_seq, beat.spooled_events), (9, 9));
    assert!(beat.spool_bytes > 0);
    assert_eq!((drops.queue_overflow, drops.decode_failed, drops.spool_evicted), (5, 7, 0));
    assert_eq!((drops.spool_write_dropped, drops.spool_torn, drops.events_truncated), (11, 0, 13));
    assert_eq!(drops.ringbuf_reserve_failed.get("EXEC"), Some(&3));
    assert_eq!(drops.enforcement_degraded.get("refused_file_read"), Some(&17));

    // A ConfigUpdate reaches the capture side.
    state
        .send(In::Config(ConfigUpdate {
            heartbeat_interval_s: 1,
            batch_max_events: 500,
            batch_max_interval_ms: 250,
            tls_capture: true,
            unregistered_agents: "audit".to_owned(),
            stored_seq: 0,
        }))
        .await;
    wait_for("batch settings", WAIT, || h.capture.batching.lock().expect("lock").is_some()).await;
    assert_eq!(*h.capture.batching.lock().expect("lock"), Some((500, Duration::from_millis(250))));
    // A batch size over the wire's limit is capped at it.
    state
        .send(In::Config(ConfigUpdate {
            batch_max_events: 1_000_000,
            batch_max_interval_ms: 250,
            ..ConfigUpdate::default()
        }))
        .await;
    let capped = (tyr_proto::limits::MAX_EVENTS_PER_BATCH as u32, Duration::from_millis(250));
    wait_for("the capped batch size", WAIT, || *h.capture.batching.lock().expect("lock") == Some(capped)).await;
    assert_eq!(h.spool.stats().last_seq, 9);

    // An ack deletes what it covers from the spool.
    state.send(In::Ack(BatchAck { batch_id: 4, acked_seq: 5 })).await;
    wait_for("the spool acknowledged", WAIT, || h.spool.stats().acked_seq == 5).await;
    assert_eq!(h.spool.stats().events, 4);

    // The server drops the stream: tyrd reconnects, reports its capabilities
    // again and replays only what was not acknowledged, then new appends.
    state.close_stream();
    wait_for("the replay on stream 2", WAIT, || batches_on(&state, 2).len() == 1).await;
    assert!(
        state
            .messages()
            .iter()
            .find(|(n, _)| *n == 2)
            .is_some_and(|(_, m)| matches!(m.payload, Some(Out::Capabilities(_)))),
        "CapabilityReport first on the new stream"
    );
    assert_eq!(batches_on(&state, 2), [(6, 9)]);
    h.spool.append(events(2)).expect("append");
    wait_for("the new batch", WAIT, || batches_on(&state, 2).len() == 2).await;
    assert_eq!(batches_on(&state, 2), [(6, 9), (10, 11)]);

    // The server holds numbers up to 100 (this host's spool was reset, say):
    // what it holds is acknowledged here, and numbering goes on above it.
    state.send(In::Config(ConfigUpdate { stored_seq: 100, ..ConfigUpdate::default() })).await;
    wait_for("the spool's numbering raised", WAIT, || h.spool.stats().last_seq == 100).await;
    assert_eq!((h.spool.stats().acked_seq, h.spool.stats().events), (11, 0), "all it held is acknowledged");
    h.spool.append(events(2)).expect("append");
    wait_for("the next batch", WAIT, || batches_on(&state, 2).len() == 3).await;
    assert_eq!(batches_on(&state, 2)[2], (101, 102), "numbered on from the server's stored_seq");
    // A lower stored_seq changes nothing.
    state.send(In::Config(ConfigUpdate { stored_seq: 50, ..ConfigUpdate::default() })).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(h.spool.stats().last_seq, 102);

    // Shutdown closes the request stream cleanly.
    let ends_before = state.clean_ends.load(Ordering::SeqCst);
    shutdown.cancel();
    tokio::time::timeout(WAIT, link).await.expect("link stops").expect("joins").expect("clean exit");
    wait_for("a clean end of stream", WAIT, || state.clean_ends.load(Ordering::SeqCst) > ends_before).await;
}

#[tokio::test]
async fn a_refused_identity_is_retried_slowly_and_a_new_token_re_enrolls() {
    let h = harness("tyrd-session-refused").await;
    let state = Arc::clone(&h.server.state);
    let identity = enroll::enroll(&h.config, "6.8.0-test", "x86_64").await.expect("enrolls");
    state.refuse_streams.store(true, Ordering::SeqCst);

    // Same token as the enrollment: no re-enrollment, one attempt, then a slow retry.
    let shutdown = CancellationToken::new();
    let link = {
        let (config, ctx, shutdown, identity) = (h.config.clone(), h.ctx.clone(), shutdown.clone(), identity.clone());
        tokio::spawn(async move { link::run(&config, identity, &ctx, fast_backoff(), &shutdown).await })
    };
    wait_for("the refused stream", WAIT, || state.streams.load(Ordering::SeqCst) == 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(state.streams.load(Ordering::SeqCst), 1, "no fast retries of a refused identity");
    assert_eq!(state.registers.load(Ordering::SeqCst), 1, "the enrolling token does not re-enroll");
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(2), link)
        .await
        .expect("shutdown interrupts the slow retry")
        .expect("joins")
        .expect("ok");

    // `tyrd run --token NEW`: the refused identity is replaced.
    let mut config = h.config.clone();
    config.token = Some(Secret::new(OTHER_TOKEN));
    let shutdown = CancellationToken::new();
    let link = {
        let (ctx, shutdown) = (h.ctx.clone(), shutdown.clone());
        tokio::spawn(async move { link::run(&config, identity, &ctx, fast_backoff(), &shutdown).await })
    };
    wait_for("the re-enrollment", WAIT, || state.registers.load(Ordering::SeqCst) == 2).await;
    let enrolled = state.enrolled.lock().expect("lock").clone();
    wait_for("the new identity stored", WAIT, || {
        tyr_agent::client::identity::StoredIdentity::load(&h.ctx.state_dir)
            .ok()
            .flatten()
            .is_some_and(|i| i.daemon_id == enrolled[1])
    })
    .await;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(2), link).await.expect("stops").expect("joins").expect("ok");
}

#[tokio::test]
async fn a_batch_the_server_refuses_is_set_aside_after_two_refusals_alone() {
    let h = harness("tyrd-session-refusal").await;
    let state = Arc::clone(&h.server.state);
    let identity = enroll::enroll(&h.config, "6.8.0-test", "x86_64").await.expect("enrolls");
    for n in [3, 2, 4] {
        h.spool.append(events(n)).expect("append");
    }
    // The server refuses the batch 4..5 every time it sees it, acks the rest.
    *state.refuse_batch.lock().expect("lock") = Some(4);
    state.auto_ack.store(true, Ordering::SeqCst);
    let shutdown = CancellationToken::new();
    let link = {
        let (config, ctx, shutdown) = (h.config.clone(), h.ctx.clone(), shutdown.clone());
        tokio::spawn(async move { link::run(&config, identity, &ctx, fast_backoff(), &shutdown).await })
    };

    // Everything else gets through, and the host is not wedged: new batches flow.
    wait_for("the spool past the refused batch", WAIT, || h.spool.stats().acked_seq == 9).await;
    h.spool.append(events(2)).expect("append");
    wait_for("a new batch acknowledged", WAIT, || h.spool.stats().acked_seq == 11).await;

    // Refused twice while alone in flight, never more, then set aside.
    let stats = h.spool.stats();
    assert_eq!((stats.rejected_batches, stats.rejected_events, stats.batches), (1, 2, 0));
    let refused = state.refused_batches.load(Ordering::SeqCst);
    let streams = state.streams.load(Ordering::SeqCst);
    let per_stream: Vec<Vec<(u64, u64)>> = (1..=streams).map(|n| batches_on(&state, n)).collect();
    // Once with three in flight, then twice alone (a stream reset instead of
    // the status, under load, costs one more round).
    assert!((2..=4).contains(&refused), "refused {refused} times: {per_stream:?}");
    let aside = h.ctx.state_dir.join("spool").join(tyr_agent::spool::REJECTED_DIR);
    let names: Vec<String> = std::fs::read_dir(&aside)
        .expect("rejected/")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["00000000000000000004-00000000000000000005.batch"]);
    // The last two refusals were of 4..5 alone on its stream.
    let alone: Vec<usize> = (1..=streams).filter(|&n| batches_on(&state, n) == [(4, 5)]).collect();
    assert!((2..=3).contains(&alone.len()), "4..5 sent alone on two streams: {per_stream:?}");

    shutdown.cancel();
    tokio::time::timeout(WAIT, link).await.expect("link stops").expect("joins").expect("clean exit");
}
