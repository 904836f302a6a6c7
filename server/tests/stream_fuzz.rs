//! Bad input at a live server (PostgreSQL, the ClickHouse dev endpoint,
//! mTLS on loopback), generated with proptest: malformed batches after a
//! valid CapabilityReport (garbage ids, unknown enum values, oversized
//! fields, too many metadata entries, seq zero or going backwards), seq
//! going backwards across batches, empty and oversized batches, a first
//! message that is not a CapabilityReport, a message over the gRPC size
//! limit, and Register requests with random CSR bytes, absurd names,
//! kernels, architectures and tokens.
//!
//! Each is answered with a clear status (never INTERNAL or UNKNOWN, never a
//! panic), the server keeps serving (a valid stream stores and acknowledges
//! a batch afterwards), ClickHouse holds no row of a refused batch (no half
//! batch), a valid batch sent before a bad one is stored whole, and a
//! refused Register leaves no daemon row.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use support::serving::{ClientIdentity, TestServer, capabilities};
use tokio::runtime::Runtime;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status, Streaming};
use tyr_proto::agent_message::Payload as Up;
use tyr_proto::agent_service_client::AgentServiceClient;
use tyr_proto::server_message::Payload as Down;
use tyr_proto::{
    AgentMessage, Event, EventBatch, EventKind, Heartbeat, RegisterRequest, ServerMessage, Severity, Verdict,
};
use uuid::Uuid;

/// One open stream of the fuzzed daemon.
struct Stream {
    up: mpsc::Sender<AgentMessage>,
    down: Streaming<ServerMessage>,
}

impl Stream {
    /// Opens a stream whose first message is `first` (a CapabilityReport when None).
    async fn open(server: &TestServer, daemon: &ClientIdentity, first: Option<AgentMessage>) -> Self {
        let channel = server.channel(Some(daemon)).await.expect("channel");
        let (up, receiver) = mpsc::channel(8);
        let hello = first.unwrap_or(AgentMessage { payload: Some(Up::Capabilities(capabilities())) });
        up.send(hello).await.expect("queue");
        let down = AgentServiceClient::new(channel)
            .max_encoding_message_size(64 << 20)
            .stream(ReceiverStream::new(receiver))
            .await
            .expect("stream opens")
            .into_inner();
        Self { up, down }
    }

    /// Opens a stream and waits for the policy push.
    async fn ready(server: &TestServer, daemon: &ClientIdentity) -> Self {
        let mut stream = Self::open(server, daemon, None).await;
        loop {
            match stream.next().await {
                Ok(Some(Down::Policy(_))) => return stream,
                Ok(Some(_)) => continue,
                other => panic!("no policy push on a valid stream: {other:?}"),
            }
        }
    }

    /// Sends; false when the server already closed the stream.
    async fn send(&self, payload: Up) -> bool {
        self.up.send(AgentMessage { payload: Some(payload) }).await.is_ok()
    }

    /// The next message; Ok(None) when the stream ended without a status.
    async fn next(&mut self) -> Result<Option<Down>, Status> {
        match tokio::time::timeout(Duration::from_secs(15), self.down.message()).await {
            Ok(message) => message.map(|m| m.and_then(|m| m.payload)),
            Err(_) => Err(Status::deadline_exceeded("test: no message within 15 s")),
        }
    }

    /// The next ack, skipping pushes and pings.
    async fn ack(&mut self) -> Result<tyr_proto::BatchAck, Status> {
        loop {
            match self.next().await? {
                Some(Down::Ack(ack)) => return Ok(ack),
                Some(_) => continue,
                None => return Err(Status::cancelled("test: stream ended without an ack")),
            }
        }
    }

    /// How the server ended the stream: its status (Ok when it ended with
    /// no error status at all), skipping acks and pushes.
    async fn end(&mut self) -> Result<(), Status> {
        loop {
            match self.next().await {
                Ok(Some(_)) => continue,
                Ok(None) => return Ok(()),
                Err(status) => return Err(status),
            }
        }
    }
}

/// The fuzzed daemon's next sequence numbers: every batch, good or bad, gets
/// fresh ones, so a refused batch wrongly taken would be stored, not deduplicated.
static NEXT_SEQ: AtomicU64 = AtomicU64::new(1);

fn fresh_seqs(count: usize) -> u64 {
    NEXT_SEQ.fetch_add(count as u64 + 1, Ordering::Relaxed)
}

fn now_ns() -> i64 {
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock");
    i64::try_from(since_epoch.as_nanos()).expect("in range")
}

fn event(seq: u64) -> Event {
    Event {
        event_id: Uuid::now_v7().to_string(),
        kind: EventKind::NetConnect as i32,
        resource: "127.0.0.1:443".to_owned(),
        verdict: Verdict::Allow as i32,
        severity: Severity::Info as i32,
        pid: 4242,
        ppid: 1,
        process_exe: "/usr/bin/curl".to_owned(),
        cmdline: "curl https://127.0.0.1".to_owned(),
        timestamp_ns: now_ns(),
        metadata: [("remote_ip".to_owned(), "127.0.0.1".to_owned()), ("remote_port".to_owned(), "443".to_owned())]
            .into(),
        seq,
        agent_type: "unknown".to_owned(),
        ..Event::default()
    }
}

fn valid_batch(batch_id: u64, count: usize) -> EventBatch {
    let first = fresh_seqs(count);
    EventBatch { batch_id, events: (first..first + count as u64).map(event).collect() }
}

/// What makes a batch bad.
#[derive(Debug, Clone)]
enum Fault {
    EventId(String),
    DiscoveredAgentId(String),
    Kind(i32),
    Verdict(i32),
    Severity(i32),
    /// A string field (by number) this many bytes over its limit.
    Huge(usize, usize),
    MetadataEntries(usize),
    ZeroSeq,
    /// The event's seq is this far at or below the previous one.
    SeqBackwards(u64),
}

fn not_uuid() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ -~]{1,60}".prop_filter("not a UUID", |s| Uuid::try_parse(s).is_err()),
        Just("00000000-0000-0000-0000-00000000000g".to_owned()),
        "[0-9a-f]{8}-[0-9a-f]{4}".prop_map(String::from),
        "[ -~]{65,200}",
    ]
}

fn unknown(defined: fn(i32) -> bool) -> impl Strategy<Value = i32> {
    prop_oneof![any::<i32>(), -5..0i32, 6..300i32].prop_filter("not a defined value", move |v| !defined(*v))
}

fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        not_uuid().prop_map(Fault::EventId),
        not_uuid().prop_map(Fault::DiscoveredAgentId),
        unknown(|v| EventKind::try_from(v).is_ok()).prop_map(Fault::Kind),
        unknown(|v| Verdict::try_from(v).is_ok()).prop_map(Fault::Verdict),
        unknown(|v| Severity::try_from(v).is_ok()).prop_map(Fault::Severity),
        (0..6usize, 1..20_000usize).prop_map(|(field, over)| Fault::Huge(field, over)),
        (65..300usize).prop_map(Fault::MetadataEntries),
        Just(Fault::ZeroSeq),
        (0..5u64).prop_map(Fault::SeqBackwards),
    ]
}

/// A batch of `count` fresh events with `fault` at `at`.
fn bad_batch(batch_id: u64, count: usize, at: usize, fault: &Fault) -> EventBatch {
    let mut batch = valid_batch(batch_id, count);
    let e = &mut batch.events[at];
    match fault {
        Fault::EventId(id) => e.event_id = id.clone(),
        Fault::DiscoveredAgentId(id) => e.discovered_agent_id = id.clone(),
        Fault::Kind(v) => e.kind = *v,
        Fault::Verdict(v) => e.verdict = *v,
        Fault::Severity(v) => e.severity = *v,
        Fault::Huge(field, over) => match field {
            0 => e.resource = "r".repeat(4096 + over),
            1 => e.cmdline = "c".repeat(4096 + over),
            2 => e.process_exe = "p".repeat(4096 + over),
            3 => e.agent_type = "a".repeat(256 + over),
            4 => {
                e.metadata.insert("k".repeat(64 + over), String::new());
            }
            _ => {
                e.metadata.insert("v".to_owned(), "v".repeat(4096 + over));
            }
        },
        Fault::MetadataEntries(n) => e.metadata = (0..*n).map(|i| (format!("k{i}"), "v".to_owned())).collect(),
        Fault::ZeroSeq => e.seq = 0,
        Fault::SeqBackwards(by) => {
            // The event after the faulty position repeats or undercuts its predecessor.
            if batch.events.len() == 1 {
                batch.events.push(event(1));
            }
            let target = at.max(1);
            batch.events[target].seq = batch.events[target - 1].seq.saturating_sub(*by).max(1);
        }
    }
    batch
}

/// Rows ClickHouse holds of these event ids (in chunks: a query has a size limit).
async fn rows_of(server: &TestServer, batch: &EventBatch) -> u64 {
    let ids: Vec<String> =
        batch.events.iter().filter(|e| Uuid::try_parse(&e.event_id).is_ok()).map(|e| e.event_id.clone()).collect();
    let mut rows = 0;
    for chunk in ids.chunks(2_000) {
        rows += server
            .store
            .client()
            .query("SELECT count() FROM events WHERE toString(event_id) IN ?")
            .bind(chunk)
            .fetch_one::<u64>()
            .await
            .expect("count rows");
    }
    rows
}

fn clear(status: &Status) -> bool {
    !matches!(status.code(), Code::Internal | Code::Unknown | Code::Ok)
}

/// The server still serves: a new stream stores and acknowledges a batch whole.
async fn still_serving(server: &TestServer, daemon: &ClientIdentity) {
    let mut stream = Stream::ready(server, daemon).await;
    let batch = valid_batch(1, 3);
    assert!(stream.send(Up::EventBatch(batch.clone())).await);
    let ack = stream.ack().await.expect("a valid batch is acknowledged");
    assert_eq!(ack.acked_seq, batch.events[2].seq);
    assert_eq!(rows_of(server, &batch).await, 3);
}

/// One case of a bad batch: maybe a valid batch first (acknowledged, or still
/// in flight), then the bad one; the status, and what was stored.
async fn bad_batch_case(
    server: &TestServer,
    daemon: &ClientIdentity,
    good_first: Option<bool>,
    bad: EventBatch,
) -> Result<(), TestCaseError> {
    let mut stream = Stream::ready(server, daemon).await;
    let good = good_first.map(|wait| (valid_batch(7, 4), wait));
    if let Some((good, wait)) = &good {
        prop_assert!(stream.send(Up::EventBatch(good.clone())).await);
        if *wait {
            let ack = stream.ack().await.map_err(|s| TestCaseError::fail(format!("no ack: {s:?}")))?;
            prop_assert_eq!(ack.batch_id, 7);
            prop_assert_eq!(rows_of(server, good).await, 4, "an acknowledged batch is stored whole");
        }
    }
    stream.send(Up::EventBatch(bad.clone())).await;
    let ended = stream.end().await;
    let status = ended.err().ok_or_else(|| TestCaseError::fail("a bad batch ended the stream with no status"))?;
    prop_assert_eq!(status.code(), Code::InvalidArgument, "{:?}", status);
    prop_assert_eq!(rows_of(server, &bad).await, 0, "nothing of a refused batch is stored");
    if let Some((good, false)) = &good {
        // Not acknowledged before the stream failed: stored whole or not at all.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let rows = rows_of(server, good).await;
        prop_assert!(rows == 0 || rows == 4, "half a batch stored: {} of 4 rows", rows);
    }
    Ok(())
}

#[test]
fn malformed_batches_are_refused_whole_and_the_server_keeps_serving() {
    let runtime = Runtime::new().expect("runtime");
    let server = runtime.block_on(TestServer::start(&[]));
    let daemon = runtime.block_on(server.enroll());
    let strategy = (fault(), 1..12usize, any::<prop::sample::Index>(), prop::option::of(any::<bool>()));
    let mut runner = TestRunner::new(Config { cases: 24, failure_persistence: None, ..Config::default() });
    let result = runner.run(&strategy, |(fault, count, at, good_first)| {
        let bad = bad_batch(9, count, at.index(count), &fault);
        runtime.block_on(bad_batch_case(&server, &daemon, good_first, bad))
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
    runtime.block_on(still_serving(&server, &daemon));
    runtime.block_on(server.drop_now());
}

#[test]
fn protocol_violations_and_oversized_messages_get_a_clear_status() {
    let runtime = Runtime::new().expect("runtime");
    runtime.block_on(async {
        let server = TestServer::start(&[]).await;
        let daemon = server.enroll().await;

        // Too many events in one batch.
        let mut too_many = valid_batch(1, 1);
        let first = fresh_seqs(10_001);
        too_many.events = (first..first + 10_001).map(event).collect();
        let mut stream = Stream::ready(&server, &daemon).await;
        stream.send(Up::EventBatch(too_many.clone())).await;
        let status = stream.end().await.expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert_eq!(rows_of(&server, &too_many).await, 0);

        // Seq going backwards, and standing still, across batches of one stream.
        for step_back in [3u64, 0] {
            let mut stream = Stream::ready(&server, &daemon).await;
            let good = valid_batch(1, 4);
            let last = good.events[3].seq;
            let back = EventBatch { batch_id: 2, events: vec![event(last - step_back), event(last + 1)] };
            stream.send(Up::EventBatch(good.clone())).await;
            assert_eq!(stream.ack().await.expect("ack").acked_seq, last);
            stream.send(Up::EventBatch(back.clone())).await;
            let status = stream.end().await.expect_err("refused");
            assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
            assert_eq!(rows_of(&server, &good).await, 4, "the earlier batch is stored whole");
            assert_eq!(rows_of(&server, &back).await, 0);
        }

        // An empty batch is acknowledged and stores nothing; the stream goes on.
        let mut stream = Stream::ready(&server, &daemon).await;
        stream.send(Up::EventBatch(EventBatch { batch_id: 5, events: Vec::new() })).await;
        let ack = stream.ack().await.expect("an empty batch is acknowledged");
        assert_eq!(ack.batch_id, 5);
        // Absurd heartbeat values are taken as they come, not an error.
        stream
            .send(Up::Heartbeat(Heartbeat {
                timestamp_ns: i64::MIN,
                policy_version: -1,
                last_seq: u64::MAX,
                drops: None,
                spooled_events: u64::MAX,
                spool_bytes: u64::MAX,
            }))
            .await;
        let after = valid_batch(6, 2);
        stream.send(Up::EventBatch(after.clone())).await;
        assert_eq!(stream.ack().await.expect("the stream goes on").batch_id, 6);
        drop(stream);

        // A first message that is not a CapabilityReport.
        let not_hello = [
            Some(Up::EventBatch(valid_batch(1, 1))),
            Some(Up::Heartbeat(Heartbeat::default())),
            Some(Up::Pong(tyr_proto::PingResponse::default())),
            None,
        ];
        for payload in not_hello {
            let described = format!("{payload:?}");
            let mut stream = Stream::open(&server, &daemon, Some(AgentMessage { payload })).await;
            let status = stream.end().await.expect_err("refused");
            assert_eq!(status.code(), Code::InvalidArgument, "first message {described}: {status:?}");
        }

        // A Stream message over the 16 MiB limit: see the test below.

        // An oversized Register.
        let channel = server.channel(None).await.expect("channel");
        let refused = AgentServiceClient::new(channel)
            .max_encoding_message_size(64 << 20)
            .register(RegisterRequest {
                agent_name: "big".to_owned(),
                enrollment_token: server.token(1).await,
                csr_pem: vec![b'A'; 17 << 20],
                kernel_version: "6.1".to_owned(),
                arch: "x86_64".to_owned(),
            })
            .await
            .expect_err("refused");
        assert!(matches!(refused.code(), Code::ResourceExhausted | Code::OutOfRange), "{refused:?}");

        still_serving(&server, &daemon).await;
        server.drop_now().await;
    });
}

/// Which Register field is bad, and how.
#[derive(Debug, Clone)]
enum BadRegister {
    Csr(Vec<u8>),
    Name(String),
    Kernel(String),
    Arch(String),
    Token(String),
}

fn bad_register() -> impl Strategy<Value = BadRegister> {
    let pem_junk = proptest::collection::vec(any::<u8>(), 0..600).prop_map(|junk| {
        let body: String = junk.iter().map(|b| char::from(b'A' + b % 26)).collect();
        format!("-----BEGIN CERTIFICATE REQUEST-----\n{body}\n-----END CERTIFICATE REQUEST-----\n").into_bytes()
    });
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..4096).prop_map(BadRegister::Csr),
        pem_junk.prop_map(BadRegister::Csr),
        prop_oneof![
            Just(String::new()),
            "[a-z]{0,8}[ /@!é\n\t\u{0}\u{202e}][ -~]{0,20}",
            "[.-][a-z]{1,10}",
            "[a-z]{254,400}",
        ]
        .prop_map(BadRegister::Name),
        prop_oneof![Just(String::new()), "[ -~]{257,600}", "[a-z]{1,5}[\u{0}-\u{1f}\u{7f}é][a-z]{0,5}"]
            .prop_map(BadRegister::Kernel),
        "[ -~]{0,40}"
            .prop_filter("not an architecture", |a| a != "x86_64" && a != "aarch64")
            .prop_map(BadRegister::Arch),
        "[ -~]{0,120}".prop_map(BadRegister::Token),
    ]
}

#[test]
fn bad_register_requests_are_refused_and_store_no_daemon() {
    let runtime = Runtime::new().expect("runtime");
    let server = runtime.block_on(TestServer::start(&[]));
    let key = rcgen::KeyPair::generate().expect("key");
    let csr = rcgen::CertificateParams::default().serialize_request(&key).expect("csr").pem().expect("pem");
    let token = runtime.block_on(server.token(1_000));
    let daemons = || {
        runtime.block_on(async {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM daemons").fetch_one(&server.pool).await.expect("count")
        })
    };
    let before = daemons();
    let mut runner = TestRunner::new(Config { cases: 48, failure_persistence: None, ..Config::default() });
    let result = runner.run(&bad_register(), |bad| {
        let mut request = RegisterRequest {
            agent_name: "fuzz-host".to_owned(),
            enrollment_token: token.clone(),
            csr_pem: csr.clone().into_bytes(),
            kernel_version: "6.18.0-fuzz".to_owned(),
            arch: "x86_64".to_owned(),
        };
        let token_fault = matches!(bad, BadRegister::Token(_));
        match bad {
            BadRegister::Csr(bytes) => request.csr_pem = bytes,
            BadRegister::Name(name) => request.agent_name = name,
            BadRegister::Kernel(kernel) => request.kernel_version = kernel,
            BadRegister::Arch(arch) => request.arch = arch,
            BadRegister::Token(garbage) => request.enrollment_token = garbage,
        }
        let answer = runtime.block_on(async {
            let channel = server.channel(None).await.expect("channel");
            AgentServiceClient::new(channel).register(request).await
        });
        let status = match answer {
            Ok(response) => return Err(TestCaseError::fail(format!("accepted: {}", response.into_inner().agent_id))),
            Err(status) => status,
        };
        prop_assert!(clear(&status), "{:?}", status);
        let expected = if token_fault { Code::Unauthenticated } else { Code::InvalidArgument };
        prop_assert_eq!(status.code(), expected, "{:?}", status);
        prop_assert_eq!(daemons(), before, "a refused Register stores no daemon");
        Ok(())
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
    // The token burned no use, and the server still enrolls.
    let enrolled = runtime.block_on(server.enroll_with(&token)).expect("the token still works");
    assert_eq!(daemons(), before + 1);
    runtime.block_on(still_serving(&server, &enrolled));
    runtime.block_on(server.drop_now());
}

/// A Stream message over the 16 MiB limit. tonic refuses it with OUT_OF_RANGE
/// on the server's side; the session must end the stream with a size status
/// (a clean end would make the daemon reconnect and send it again, forever).
#[test]
fn an_oversized_stream_message_ends_with_a_size_status() {
    let runtime = Runtime::new().expect("runtime");
    runtime.block_on(async {
        let server = TestServer::start(&[]).await;
        let daemon = server.enroll().await;
        // A message over the 16 MiB limit, mid-stream: refused with a size status, nothing stored.
        let mut stream = Stream::ready(&server, &daemon).await;
        let first = fresh_seqs(5_000);
        let oversized = EventBatch {
            batch_id: 8,
            events: (first..first + 5_000).map(|seq| Event { cmdline: "x".repeat(3_500), ..event(seq) }).collect(),
        };
        stream.send(Up::EventBatch(oversized.clone())).await;
        let ended = stream.end().await;
        let status = ended.expect_err("an oversized message ends the stream with a status");
        assert!(clear(&status), "{status:?}");
        assert!(
            matches!(status.code(), Code::ResourceExhausted | Code::OutOfRange | Code::InvalidArgument),
            "{status:?}"
        );
        assert_eq!(rows_of(&server, &oversized).await, 0);

        still_serving(&server, &daemon).await;
        server.drop_now().await;
    });
}
