//! `/metrics` of a real server in this process (PostgreSQL, the ClickHouse
//! dev endpoint, mTLS streams on loopback): a daemon streams batches — one
//! drifting event, one unenforced, a replay after reconnecting, a batch
//! validation refuses — and a policy change it reports applied; each
//! counter and histogram moves by exactly what happened, in both text
//! formats, and every line is well-formed with names that end in their
//! unit or `_total`.

#[path = "support/exposition.rs"]
mod exposition;
mod support;

use std::time::Duration;

use exposition::{Exposition, Flavor, check_names, http_get, parse};
use support::serving::{ClientIdentity, TestServer, capabilities};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Streaming};
use tyr_proto::agent_message::Payload as Up;
use tyr_proto::agent_service_client::AgentServiceClient;
use tyr_proto::server_message::Payload as Down;
use tyr_proto::{AgentMessage, Event, EventBatch, EventKind, Heartbeat, ServerMessage, Severity, Verdict};
use tyr_server::control_db::{daemons, policies};
use uuid::Uuid;

const DENY_66: &str = "\
default_verdict: allow
rules:
  - name: deny-66
    action: net_connect
    cidr_deny: [\"127.0.0.66/32\"]
    verdict: deny
";

/// What a family name may end in besides `_total`.
const UNITS: &[&str] = &["seconds", "events", "batches", "daemons", "bytes"];
const OPENMETRICS: &str = "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3";

struct Stream {
    up: mpsc::Sender<AgentMessage>,
    down: Streaming<ServerMessage>,
}

impl Stream {
    async fn open(server: &TestServer, identity: Option<&ClientIdentity>) -> Result<Self, tonic::Status> {
        let channel = server.channel(identity).await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let (up, receiver) = mpsc::channel(16);
        up.send(AgentMessage { payload: Some(Up::Capabilities(capabilities())) }).await.expect("queue");
        let down = AgentServiceClient::new(channel).stream(ReceiverStream::new(receiver)).await?.into_inner();
        Ok(Self { up, down })
    }

    async fn send(&self, payload: Up) {
        self.up.send(AgentMessage { payload: Some(payload) }).await.expect("stream open");
    }

    async fn next(&mut self) -> Result<Down, tonic::Status> {
        let message = tokio::time::timeout(Duration::from_secs(15), self.down.message())
            .await
            .map_err(|_| tonic::Status::deadline_exceeded("no message within 15 s"))??;
        message.and_then(|m| m.payload).ok_or_else(|| tonic::Status::cancelled("stream ended"))
    }

    async fn next_policy(&mut self) -> tyr_proto::PolicyPush {
        loop {
            match self.next().await.expect("message") {
                Down::Policy(push) => return push,
                Down::Ack(ack) => panic!("unexpected ack {ack:?}"),
                _ => continue,
            }
        }
    }

    async fn next_ack(&mut self) -> tyr_proto::BatchAck {
        loop {
            if let Down::Ack(ack) = self.next().await.expect("message") {
                return ack;
            }
        }
    }
}

fn now_ns() -> i64 {
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock");
    i64::try_from(since_epoch.as_nanos()).expect("in range")
}

fn connect_event(seq: u64, address: &str, verdict: Verdict, version: i64) -> Event {
    let (ip, port) = address.rsplit_once(':').expect("address");
    Event {
        event_id: Uuid::now_v7().to_string(),
        kind: EventKind::NetConnect as i32,
        resource: address.to_owned(),
        verdict: verdict as i32,
        severity: Severity::Info as i32,
        pid: 4242,
        ppid: 1,
        process_exe: "/usr/bin/curl".to_owned(),
        cmdline: "curl".to_owned(),
        timestamp_ns: now_ns() + seq as i64,
        metadata: [("remote_ip".to_owned(), ip.to_owned()), ("remote_port".to_owned(), port.to_owned())].into(),
        seq,
        agent_type: "unknown".to_owned(),
        policy_version: version,
        ..Event::default()
    }
}

/// Scrapes in both formats, checks both parse and follow the naming rules,
/// and returns the 0.0.4 reading.
fn scrape(server: &TestServer) -> Exposition {
    let (status, content_type, text) = http_get(server.metrics_addr, "/metrics", "*/*").expect("scrape");
    assert_eq!(status, 200, "{text}");
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    let plain = parse(&text, Flavor::Prometheus).unwrap_or_else(|e| panic!("0.0.4 text does not parse: {e}\n{text}"));
    check_names(&plain, Flavor::Prometheus, "tyr_", UNITS).unwrap_or_else(|e| panic!("{e}\n{text}"));

    let (status, content_type, text) = http_get(server.metrics_addr, "/metrics", OPENMETRICS).expect("scrape");
    assert_eq!(status, 200, "{text}");
    assert!(content_type.starts_with("application/openmetrics-text; version=1.0.0"), "{content_type}");
    let open = parse(&text, Flavor::OpenMetrics).unwrap_or_else(|e| panic!("OpenMetrics does not parse: {e}\n{text}"));
    check_names(&open, Flavor::OpenMetrics, "tyr_", UNITS).unwrap_or_else(|e| panic!("{e}\n{text}"));
    // The same families in both, with units declared for the histograms.
    assert_eq!(open.types.len(), plain.types.len());
    for family in ["tyr_clickhouse_insert_duration_seconds", "tyr_batch_ack_duration_seconds"] {
        assert_eq!(open.units.get(family).map(String::as_str), Some("seconds"), "{family}");
    }
    plain
}

/// `after - before` for the sample `name{labels}`.
fn moved(before: &Exposition, after: &Exposition, name: &str, labels: &[(&str, &str)]) -> f64 {
    after.value(name, labels) - before.value(name, labels)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_streams_did() {
    let server = TestServer::start(&[]).await;

    // Only /metrics is served.
    let (status, _, _) = http_get(server.metrics_addr, "/", "*/*").expect("get /");
    assert_eq!(status, 404);
    let (status, _, _) = http_get(server.metrics_addr, "/metrics/extra", "*/*").expect("get");
    assert_eq!(status, 404);

    let before = scrape(&server);
    assert_eq!(before.value("tyr_connected_daemons", &[]), 0.0);

    // A stream without a certificate is refused and counted.
    let refused = Stream::open(&server, None).await.err().expect("refused");
    assert_eq!(refused.code(), Code::Unauthenticated);

    let daemon = server.enroll().await;
    let mut stream = Stream::open(&server, Some(&daemon)).await.expect("stream");
    stream.next_policy().await;
    assert_eq!(scrape(&server).value("tyr_connected_daemons", &[]), 1.0);

    // A policy change reaches the live stream; the daemon reports it applied in a heartbeat.
    policies::set_base(&server.pool, "fleet-base", DENY_66, None).await.expect("set policy");
    let version = stream.next_policy().await.policy_version;
    tokio::time::sleep(Duration::from_millis(30)).await;
    let unenforced = Event {
        metadata: [("enforced".to_owned(), "false".to_owned()), ("remote_ip".to_owned(), "127.0.0.66".to_owned())]
            .into(),
        ..connect_event(3, "127.0.0.66:82", Verdict::Allow, version)
    };
    let batch = EventBatch {
        batch_id: 1,
        events: vec![
            // Kernel ALLOW where the policy denies: drift.
            connect_event(1, "127.0.0.66:80", Verdict::Allow, version),
            connect_event(2, "127.0.0.1:80", Verdict::Allow, version),
            unenforced,
        ],
    };
    stream.send(Up::EventBatch(batch.clone())).await;
    assert_eq!(stream.next_ack().await.acked_seq, 3);
    stream
        .send(Up::Heartbeat(Heartbeat { timestamp_ns: now_ns(), policy_version: version, ..Heartbeat::default() }))
        .await;
    let stored = async {
        while daemons::get(&server.pool, daemon.daemon_id).await.expect("row").expect("daemon").applied_policy_version
            != version
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), stored).await.expect("the heartbeat is handled");

    // Reconnect and replay: three duplicates, one new event.
    drop(stream);
    let mut stream = Stream::open(&server, Some(&daemon)).await.expect("second stream");
    stream.next_policy().await;
    let mut replay = batch;
    replay.batch_id = 2;
    replay.events.push(connect_event(4, "127.0.0.1:81", Verdict::Allow, version));
    stream.send(Up::EventBatch(replay)).await;
    assert_eq!(stream.next_ack().await.acked_seq, 4);

    // A batch validation refuses (seq 0): the stream ends, nothing stored.
    let bad = EventBatch {
        batch_id: 3,
        events: vec![
            connect_event(5, "127.0.0.1:83", Verdict::Allow, version),
            connect_event(0, "127.0.0.1:84", Verdict::Allow, version),
        ],
    };
    stream.send(Up::EventBatch(bad)).await;
    let ended = loop {
        match stream.next().await {
            Ok(_) => continue,
            Err(status) => break status,
        }
    };
    assert_eq!(ended.code(), Code::InvalidArgument, "{ended:?}");

    // The session's end is asynchronous: wait for the daemon to leave the fleet.
    let mut after = scrape(&server);
    for _ in 0..100 {
        if after.value("tyr_connected_daemons", &[]) == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        after = scrape(&server);
    }
    assert_eq!(after.value("tyr_connected_daemons", &[]), 0.0, "the ended stream left the fleet");

    let m = |name: &str| moved(&before, &after, name, &[]);
    assert_eq!(m("tyr_streams_refused_total"), 1.0);
    assert_eq!(m("tyr_streams_opened_total"), 2.0);
    assert_eq!(m("tyr_received_batches_total"), 2.0, "the refused batch is not received");
    assert_eq!(m("tyr_acknowledged_batches_total"), 2.0);
    assert_eq!(m("tyr_ingested_events_total"), 4.0);
    assert_eq!(m("tyr_deduplicated_events_total"), 3.0);
    assert_eq!(m("tyr_drift_events_total"), 1.0);
    assert_eq!(m("tyr_unenforced_events_total"), 1.0);
    assert_eq!(m("tyr_drift_evaluated_events_total"), 7.0, "replays are evaluated again");
    assert_eq!(m("tyr_sequence_gap_events_total"), 0.0);
    assert_eq!(m("tyr_heartbeats_total"), 1.0);
    assert_eq!(m("tyr_stream_protocol_violations_total"), 1.0);
    assert_eq!(m("tyr_rejected_events_total"), 2.0);
    assert_eq!(moved(&before, &after, "tyr_rejected_batches_total", &[("reason", "zero_seq")]), 1.0);
    // Pushes: the first stream's initial one and the change, the second stream's initial one.
    assert_eq!(m("tyr_policy_pushes_total"), 3.0);
    assert_eq!(m("tyr_policy_apply_duration_seconds_count"), 1.0, "only the change is timed");
    assert!(after.value("tyr_policy_apply_duration_seconds_sum", &[]) >= 0.03, "from push to heartbeat");
    assert_eq!(m("tyr_batch_ack_duration_seconds_count"), 2.0);
    assert!(after.value("tyr_batch_ack_duration_seconds_sum", &[]) > 0.0);
    // Every committed insert is timed; both batches committed rows.
    assert_eq!(m("tyr_clickhouse_inserts_total"), 2.0);
    assert_eq!(m("tyr_clickhouse_insert_duration_seconds_count"), 2.0);
    assert_eq!(after.value("tyr_clickhouse_insert_duration_seconds_bucket", &[("le", "+Inf")]), 2.0);
    assert_eq!(m("tyr_clickhouse_insert_failures_total"), 0.0);
    assert_eq!(after.value("tyr_ingest_buffered_events", &[]), 0.0);

    // The counters agree with what ClickHouse holds.
    let stored: u64 = server
        .store
        .client()
        .query("SELECT count() FROM events WHERE drift_detected")
        .fetch_one()
        .await
        .expect("count drift");
    assert_eq!(stored, 1);
    server.drop_now().await;
}
