//! The Stream session against a real server in this process (PostgreSQL,
//! the ClickHouse dev endpoint, mTLS on loopback): the policy push and its
//! changes, batches acknowledged only once stored, duplicates dropped on
//! replay, heartbeats stored; and trust — no certificate, another CA's
//! certificate, an expired certificate and a revoked daemon's certificate
//! are refused, and deleting a daemon closes its live stream within a second.

mod support;

use std::time::{Duration, Instant};

use support::serving::{ClientIdentity, TestServer, capabilities};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Streaming};
use tyr_common::policy::CompiledPolicy;
use tyr_proto::agent_message::Payload as Up;
use tyr_proto::agent_service_client::AgentServiceClient;
use tyr_proto::server_message::Payload as Down;
use tyr_proto::{
    AgentMessage, DropCounters, Event, EventBatch, EventKind, Heartbeat, ServerMessage, Severity, Verdict,
};
use tyr_server::control_db::{daemons, policies};
use tyr_server::identity::{CertificateAuthority, Validity};
use uuid::Uuid;

const DENY_66: &str = "\
default_verdict: allow
rules:
  - name: deny-66
    action: net_connect
    cidr_deny: [\"127.0.0.66/32\"]
    verdict: deny
";

/// One open stream: what we send and what the server answers.
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

    /// The next message that is not a ping.
    async fn next_policy(&mut self) -> tyr_proto::PolicyPush {
        loop {
            match self.next().await.expect("message") {
                Down::Policy(push) => return push,
                Down::Ping(_) | Down::Config(_) | Down::Overrides(_) => continue,
                Down::Ack(ack) => panic!("unexpected ack {ack:?}"),
            }
        }
    }

    async fn next_ack(&mut self) -> tyr_proto::BatchAck {
        loop {
            match self.next().await.expect("message") {
                Down::Ack(ack) => return ack,
                _ => continue,
            }
        }
    }
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
        // Now: events older than the retention would be dropped by the table's TTL.
        timestamp_ns: now_ns() + seq as i64,
        metadata: [("remote_ip".to_owned(), ip.to_owned()), ("remote_port".to_owned(), port.to_owned())]
            .into_iter()
            .collect(),
        seq,
        agent_type: "unknown".to_owned(),
        policy_version: version,
        ..Event::default()
    }
}

#[derive(Debug, serde::Deserialize, clickhouse::Row)]
struct Stored {
    seq: u64,
    agent_id: String,
    server_verdict: String,
    drift_detected: bool,
}

async fn stored(server: &TestServer) -> Vec<Stored> {
    server
        .store
        .client()
        .query("SELECT seq, toString(agent_id) AS agent_id, toString(server_verdict) AS server_verdict, drift_detected FROM events ORDER BY seq")
        .fetch_all::<Stored>()
        .await
        .expect("query events")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_push_acks_after_storage_and_no_duplicates() {
    let server = TestServer::start(&[]).await;
    let daemon = server.enroll().await;
    let mut stream = Stream::open(&server, Some(&daemon)).await.expect("stream");

    // Nothing assigned yet: an allow-everything policy, with a version.
    let first = stream.next_policy().await;
    assert!(first.policy_version > 0);
    let Down::Config(config) = stream.next().await.expect("config") else { panic!("ConfigUpdate after the push") };
    assert_eq!(config.heartbeat_interval_s, 30);

    // A fleet policy reaches the connected daemon, compiled.
    let stored_policy = policies::set_base(&server.pool, "fleet-base", DENY_66, None).await.expect("set policy");
    assert!(stored_policy.version > first.policy_version);
    let push = stream.next_policy().await;
    assert!(push.policy_version > first.policy_version, "monotonic version");
    let compiled = CompiledPolicy::from_bytes(&push.bpf_entries).expect("kernel entries decode");
    assert_eq!(compiled.version, push.policy_version);
    assert_eq!(compiled.rules[0].name, "deny-66");
    assert!(push.cedar_text.contains("deny-66"));
    assert!(push.policy_yaml.contains("127.0.0.66/32"));

    // A batch: one connect the kernel allowed though the policy denies (drift), one agreeing.
    let version = push.policy_version;
    let batch = EventBatch {
        batch_id: 1,
        events: vec![
            connect_event(1, "127.0.0.66:80", Verdict::Allow, version),
            connect_event(2, "127.0.0.66:81", Verdict::Deny, version),
            connect_event(3, "127.0.0.1:80", Verdict::Allow, version),
        ],
    };
    stream.send(Up::EventBatch(batch.clone())).await;
    let ack = stream.next_ack().await;
    assert_eq!((ack.batch_id, ack.acked_seq), (1, 3));
    // Acknowledged means stored.
    let rows = stored(&server).await;
    assert_eq!(rows.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3]);
    assert!(rows.iter().all(|r| r.agent_id == daemon.daemon_id.to_string()));
    assert!(rows[0].drift_detected && rows[0].server_verdict == "DENY");
    assert!(!rows[1].drift_detected && rows[1].server_verdict == "DENY");
    assert!(!rows[2].drift_detected && rows[2].server_verdict == "ALLOW");

    // Heartbeats are stored.
    stream
        .send(Up::Heartbeat(Heartbeat {
            timestamp_ns: 1,
            policy_version: version,
            last_seq: 3,
            drops: Some(DropCounters {
                queue_overflow: 2,
                enforcement_degraded: [("identity_unmapped".to_owned(), 4)].into(),
                ..DropCounters::default()
            }),
            spooled_events: 7,
            spool_bytes: 1000,
        }))
        .await;
    let seen = async {
        loop {
            let row = daemons::get(&server.pool, daemon.daemon_id).await.expect("row").expect("daemon");
            if row.applied_policy_version == version {
                return row;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let row = tokio::time::timeout(Duration::from_secs(10), seen).await.expect("heartbeat stored");
    assert!(row.last_seen_at.is_some());
    let listed = daemons::summary(&server.pool, daemon.daemon_id).await.expect("summary").expect("daemon");
    assert_eq!(listed.drops["queue_overflow"], 2, "{}", listed.drops);
    assert_eq!(listed.drops["enforcement_degraded"]["identity_unmapped"], 4, "{}", listed.drops);

    // A replay after reconnecting: the duplicates are acknowledged, not stored again.
    drop(stream);
    let mut stream = Stream::open(&server, Some(&daemon)).await.expect("second stream");
    stream.next_policy().await;
    let mut replay = batch.clone();
    replay.events.push(connect_event(4, "127.0.0.1:82", Verdict::Allow, version));
    stream.send(Up::EventBatch(replay)).await;
    assert_eq!(stream.next_ack().await.acked_seq, 4);
    let rows = stored(&server).await;
    assert_eq!(rows.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3, 4], "each seq exactly once");

    // A batch whose seq goes backwards within one stream is refused, and nothing of it stored.
    stream
        .send(Up::EventBatch(EventBatch {
            batch_id: 9,
            events: vec![connect_event(2, "127.0.0.1:83", Verdict::Allow, version)],
        }))
        .await;
    let refused = loop {
        match stream.next().await {
            Ok(_) => continue,
            Err(status) => break status,
        }
    };
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert_eq!(stored(&server).await.len(), 4);
    server.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_certificates_are_refused_and_revocation_closes_the_stream() {
    let server = TestServer::start(&[]).await;

    // No certificate at all.
    let refused = Stream::open(&server, None).await.err().expect("no certificate is refused");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");

    // A certificate from another CA, naming an enrolled daemon's id.
    let enrolled = server.enroll().await;
    let other_ca = tempdir();
    let foreign = CertificateAuthority::load_or_create(&other_ca, &["localhost".to_owned()]).expect("other CA");
    let key = rcgen::KeyPair::generate().expect("key");
    let csr = rcgen::CertificateParams::default().serialize_request(&key).expect("csr").pem().expect("pem");
    let forged = foreign.sign_csr(csr.as_bytes(), enrolled.daemon_id, Validity::default()).expect("sign");
    let forged =
        ClientIdentity { daemon_id: enrolled.daemon_id, cert_pem: forged.cert_pem, key_pem: key.serialize_pem() };
    assert!(Stream::open(&server, Some(&forged)).await.is_err(), "a foreign CA's certificate is refused");

    // An expired certificate from the right CA whose serial a daemon row holds.
    let ca = CertificateAuthority::load_or_create(&server.data_dir, &["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("server CA");
    let now = time::OffsetDateTime::now_utc();
    let expired_id = Uuid::new_v4();
    let validity = Validity { not_before: now - time::Duration::days(30), not_after: now - time::Duration::days(1) };
    let key = rcgen::KeyPair::generate().expect("key");
    let csr = rcgen::CertificateParams::default().serialize_request(&key).expect("csr").pem().expect("pem");
    let issued = ca.sign_csr(csr.as_bytes(), expired_id, validity).expect("sign");
    let mut conn = server.pool.acquire().await.expect("connection");
    daemons::insert(
        &mut conn,
        &daemons::NewDaemon {
            id: expired_id,
            name: "expired".to_owned(),
            kernel_version: "6.1".to_owned(),
            arch: "x86_64".to_owned(),
            cert_serial: issued.serial_hex.clone(),
            cert_not_after: issued.not_after,
            enrolled_with: None,
        },
    )
    .await
    .expect("daemon row");
    drop(conn);
    let expired = ClientIdentity { daemon_id: expired_id, cert_pem: issued.cert_pem, key_pem: key.serialize_pem() };
    assert!(Stream::open(&server, Some(&expired)).await.is_err(), "an expired certificate is refused");

    // A live stream of a daemon that is then deleted: closed within a second.
    let mut stream = Stream::open(&server, Some(&enrolled)).await.expect("stream");
    stream.next_policy().await;
    assert!(
        daemons::delete(&server.pool, &tyr_server::control_db::audit::Actor::local_admin(), enrolled.daemon_id)
            .await
            .expect("delete")
    );
    let deleted_at = Instant::now();
    let ended = loop {
        match stream.next().await {
            Ok(_) => continue,
            Err(status) => break status,
        }
    };
    let took = deleted_at.elapsed();
    assert_eq!(ended.code(), Code::Unauthenticated, "{ended:?}");
    assert!(took < Duration::from_secs(1), "stream closed {took:?} after the delete");
    let again = Stream::open(&server, Some(&enrolled)).await.err().expect("a revoked daemon cannot reconnect");
    assert_eq!(again.code(), Code::Unauthenticated);

    let _ = std::fs::remove_dir_all(&other_ca);
    server.drop_now().await;
}

fn now_ns() -> i64 {
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock");
    i64::try_from(since_epoch.as_nanos()).expect("in range")
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tyr-other-ca-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("dir");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemons_with_the_same_policy_share_its_version_and_versions_only_grow() {
    let server = TestServer::start(&[]).await;
    let (a, b) = (server.enroll().await, server.enroll().await);
    policies::set_base(&server.pool, "fleet-base", DENY_66, None).await.expect("fleet policy");
    let va = policies::effective_for(&server.pool, a.daemon_id).await.expect("a");
    let vb = policies::effective_for(&server.pool, b.daemon_id).await.expect("b");
    assert_eq!(va.version, vb.version, "one version (one Cedar parse) for the fleet");
    assert_eq!(va.bpf_entries, vb.bpf_entries);
    assert_eq!(policies::effective_for(&server.pool, a.daemon_id).await.expect("again").version, va.version);

    // A policy of b's own, then back to the fleet's: b's version never goes backwards.
    let own = DENY_66.replace("deny-66", "deny-66-b");
    policies::set_base(&server.pool, "b-only", &own, Some(b.daemon_id)).await.expect("own policy");
    let vb2 = policies::effective_for(&server.pool, b.daemon_id).await.expect("b own");
    assert!(vb2.version > vb.version);
    sqlx::query("DELETE FROM policy_assignments WHERE daemon_id = $1")
        .bind(b.daemon_id)
        .execute(&server.pool)
        .await
        .expect("unassign");
    let vb3 = policies::effective_for(&server.pool, b.daemon_id).await.expect("b back");
    assert!(vb3.version > vb2.version, "monotonic per daemon: {} after {}", vb3.version, vb2.version);
    assert_eq!(vb3.bpf_entries.len(), va.bpf_entries.len());
    server.drop_now().await;
}
