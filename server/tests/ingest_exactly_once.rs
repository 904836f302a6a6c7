//! Exactly-once ingest into a real ClickHouse (the dev endpoint): replays
//! and gaps from two daemons, acknowledgements only after commit, a fresh
//! writer (a server restart) dropping replays by ClickHouse's max(seq), and
//! an event store that goes away and comes back under load. Bookkeeping
//! lands in a scratch PostgreSQL database.

mod ingest_support;
mod support;

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use clickhouse::Row;
use serde::Deserialize;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tyr_proto::{Event, EventKind, Severity, Verdict};
use tyr_server::drift::{DriftOutcome, EvaluatedBatch, EvaluatedEvent};
use tyr_server::event_store::{EventStore, schema};
use tyr_server::ingest::{Ingest, IngestConfig, IngestError};
use uuid::Uuid;

use ingest_support::{drop_store, scratch_pg, scratch_store, store_config};

fn now_ns() -> i64 {
    i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos()).expect("in range")
}

/// Events `seqs` of one host, with ids derived from the seq so replays carry the same ids.
fn batch(host: u8, seqs: std::ops::RangeInclusive<u64>) -> EvaluatedBatch {
    let outcome =
        DriftOutcome { server_verdict: Verdict::Allow, drift_detected: false, unenforced: false, not_evaluable: false };
    EvaluatedBatch {
        events: seqs
            .map(|seq| EvaluatedEvent {
                event: Event {
                    event_id: Uuid::from_u64_pair(u64::from(host), seq).to_string(),
                    kind: EventKind::FileRead as i32,
                    resource: format!("/srv/{seq}"),
                    verdict: Verdict::Allow as i32,
                    severity: Severity::Info as i32,
                    timestamp_ns: now_ns(),
                    seq,
                    ..Event::default()
                },
                outcome,
            })
            .collect(),
    }
}

fn config() -> IngestConfig {
    IngestConfig {
        flush_interval: Duration::from_millis(300),
        retry_initial: Duration::from_millis(50),
        retry_max: Duration::from_millis(400),
        ..IngestConfig::default()
    }
}

#[derive(Debug, Row, Deserialize)]
struct SeqRow {
    #[serde(with = "clickhouse::serde::uuid")]
    agent_id: Uuid,
    seq: u64,
    #[serde(with = "clickhouse::serde::uuid")]
    event_id: Uuid,
}

/// Every stored (seq, event id) per daemon, in seq order.
async fn stored(store: &EventStore) -> HashMap<Uuid, Vec<(u64, Uuid)>> {
    let rows = store
        .client()
        .query("SELECT agent_id, seq, event_id FROM events ORDER BY agent_id, seq")
        .fetch_all::<SeqRow>()
        .await
        .expect("read back");
    let mut by_daemon: HashMap<Uuid, Vec<(u64, Uuid)>> = HashMap::new();
    for row in rows {
        by_daemon.entry(row.agent_id).or_default().push((row.seq, row.event_id));
    }
    by_daemon
}

/// Asserts `daemon` has exactly `seqs` stored, each once, with the ids of host `host`.
fn assert_exactly(stored: &HashMap<Uuid, Vec<(u64, Uuid)>>, daemon: Uuid, host: u8, seqs: &[u64]) {
    let expected: Vec<(u64, Uuid)> = seqs.iter().map(|&s| (s, Uuid::from_u64_pair(u64::from(host), s))).collect();
    assert_eq!(stored.get(&daemon).cloned().unwrap_or_default(), expected, "daemon {daemon}");
}

async fn answer(receiver: oneshot::Receiver<Result<u64, IngestError>>) -> u64 {
    tokio::time::timeout(Duration::from_secs(30), receiver)
        .await
        .expect("answered in time")
        .expect("writer alive")
        .expect("stored")
}

async fn insert_daemon_row(pool: &sqlx::PgPool, id: Uuid) {
    sqlx::query(
        "INSERT INTO daemons (id, name, kernel_version, arch, cert_serial, cert_not_after) \
         VALUES ($1, 'host-a', '6.1', 'x86_64', $2, now() + interval '1 day')",
    )
    .bind(id)
    .bind(id.simple().to_string())
    .execute(pool)
    .await
    .expect("insert daemon");
}

/// Polls the bookkeeping columns until they read `expected` (written asynchronously).
async fn wait_for_bookkeeping(pool: &sqlx::PgPool, id: Uuid, expected: (i64, i64)) {
    let mut seen = (0, 0);
    for _ in 0..100 {
        seen = sqlx::query_as::<_, (i64, i64)>("SELECT stored_seq, seq_gap_events FROM daemons WHERE id = $1")
            .bind(id)
            .fetch_one(pool)
            .await
            .expect("read daemon");
        if seen == expected {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("bookkeeping of {id}: {seen:?}, expected {expected:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_are_stored_once_gaps_counted_and_acks_follow_commits() {
    let store = scratch_store().await;
    let pg = scratch_pg().await;
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    insert_daemon_row(&pg.pool, a).await;

    let shutdown = CancellationToken::new();
    let (ingest, writer) = Ingest::start(store.clone(), pg.pool.clone(), config(), shutdown.clone());

    // Not acknowledged before the insert: nothing is in ClickHouse yet.
    let mut first = ingest.enqueue(a, batch(1, 1..=100)).await.expect("queued");
    assert!(matches!(first.try_recv(), Err(oneshot::error::TryRecvError::Empty)));
    assert_eq!(schema::event_count(&store).await.expect("count"), 0);
    assert_eq!(answer(first).await, 100);
    assert_eq!(schema::event_count(&store).await.expect("count"), 100, "acknowledged means stored");

    // Within one insert: overlaps, a replay, gaps, a second daemon with no row.
    let receivers = vec![
        ingest.enqueue(a, batch(1, 50..=150)).await.expect("queued"),
        ingest.enqueue(b, batch(2, 1..=10)).await.expect("queued"),
        ingest.enqueue(a, batch(1, 151..=200)).await.expect("queued"),
        ingest.enqueue(b, batch(2, 1..=10)).await.expect("queued"),
        ingest.enqueue(a, batch(1, 206..=250)).await.expect("queued"),
        ingest.enqueue(b, batch(2, 20..=30)).await.expect("queued"),
    ];
    let mut acks = Vec::new();
    for receiver in receivers {
        acks.push(answer(receiver).await);
    }
    assert_eq!(acks, vec![250, 30, 250, 30, 250, 30], "each ack is the daemon's stored seq after the commit");

    // A batch that is all duplicates is acknowledged without an insert.
    let inserts = ingest.stats().inserts.load(Ordering::Relaxed);
    assert_eq!(answer(ingest.enqueue(a, batch(1, 1..=250)).await.expect("queued")).await, 250);
    assert_eq!(ingest.stats().inserts.load(Ordering::Relaxed), inserts);

    let rows = stored(&store).await;
    let a_seqs: Vec<u64> = (1..=200).chain(206..=250).collect();
    let b_seqs: Vec<u64> = (1..=10).chain(20..=30).collect();
    assert_exactly(&rows, a, 1, &a_seqs);
    assert_exactly(&rows, b, 2, &b_seqs);

    let stats = ingest.stats();
    assert_eq!(stats.events_inserted.load(Ordering::Relaxed), (a_seqs.len() + b_seqs.len()) as u64);
    assert_eq!(stats.duplicates_dropped.load(Ordering::Relaxed), 51 + 10 + 250);
    assert_eq!(stats.gap_events.load(Ordering::Relaxed), 5 + 9);
    assert_eq!(stats.buffered_events.load(Ordering::Relaxed), 0);
    assert_eq!(ingest.seq_state(a).map(|s| (s.stored_seq, s.gap_events)), Some((250, 5)));
    assert_eq!(ingest.seq_state(b).map(|s| (s.stored_seq, s.gap_events)), Some((30, 9)));
    wait_for_bookkeeping(&pg.pool, a, (250, 5)).await;

    shutdown.cancel();
    writer.await.expect("writer stops");
    assert!(matches!(ingest.enqueue(a, batch(1, 251..=251)).await, Err(IngestError::Closed)));

    // A restarted server knows nothing but what ClickHouse holds.
    let shutdown = CancellationToken::new();
    let (ingest, writer) = Ingest::start(store.clone(), pg.pool.clone(), config(), shutdown.clone());
    assert_eq!(answer(ingest.enqueue(a, batch(1, 190..=260)).await.expect("queued")).await, 260);
    assert_eq!(answer(ingest.enqueue(b, batch(2, 1..=30)).await.expect("queued")).await, 30);
    assert_eq!(ingest.stats().duplicates_dropped.load(Ordering::Relaxed), 61 + 30);
    assert_eq!(ingest.stats().gap_events.load(Ordering::Relaxed), 0, "the old gap is not counted again");
    let rows = stored(&store).await;
    let a_seqs: Vec<u64> = (1..=200).chain(206..=260).collect();
    assert_exactly(&rows, a, 1, &a_seqs);
    assert_exactly(&rows, b, 2, &b_seqs);
    wait_for_bookkeeping(&pg.pool, a, (260, 5)).await;

    shutdown.cancel();
    writer.await.expect("writer stops");
    drop_store(&store).await;
    pg.drop_now().await;
}

/// A ClickHouse dev endpoint of this test's own, killed and restarted at will.
struct Endpoint {
    port: u16,
    data_dir: PathBuf,
    child: Option<Child>,
}

impl Endpoint {
    fn python() -> PathBuf {
        std::env::var_os("TYR_DEV_PYTHON")
            .map_or_else(|| PathBuf::from("/var/lib/tyr-dev/venv/bin/python"), PathBuf::from)
    }

    fn script() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/dev/clickhouse_dev_endpoint.py")
    }

    fn new(data_dir: PathBuf) -> Self {
        let port = TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("address").port();
        Self { port, data_dir, child: None }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn start(&mut self) {
        let child = Command::new(Self::python())
            .arg(Self::script())
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string(), "--log-level", "WARNING"])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the dev endpoint starts (deploy/dev/setup.sh installs its venv)");
        self.child = Some(child);
        let probe = EventStore::new(&store_config(&self.url(), "default")).expect("valid config");
        for _ in 0..300 {
            if probe.server_version().await.is_ok() {
                return;
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().expect("child status")) {
                panic!("the dev endpoint exited: {status}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the dev endpoint on port {} did not come up", self.port);
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill our endpoint");
            child.wait().expect("reap our endpoint");
        }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_acked_while_clickhouse_is_down_and_everything_lands_once_it_is_back() {
    let data_dir = std::env::temp_dir().join(format!("tyr-ch-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&data_dir).expect("endpoint data directory");
    let mut endpoint = Endpoint::new(data_dir.clone());
    endpoint.start().await;
    let store = EventStore::new(&store_config(&endpoint.url(), "tyr_outage")).expect("valid config");
    schema::apply(&store, 30).await.expect("schema");
    let pg = scratch_pg().await;
    let daemon = Uuid::now_v7();

    let shutdown = CancellationToken::new();
    let config = IngestConfig { max_buffered_events: 100, ..config() };
    let (ingest, writer) = Ingest::start(store.clone(), pg.pool.clone(), config, shutdown.clone());
    assert_eq!(answer(ingest.enqueue(daemon, batch(7, 1..=40)).await.expect("queued")).await, 40);

    endpoint.kill();
    let mut during = ingest.enqueue(daemon, batch(7, 41..=100)).await.expect("room for 60 of 100");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(matches!(during.try_recv(), Err(oneshot::error::TryRecvError::Empty)), "not acked while down");
    assert!(ingest.stats().insert_failures.load(Ordering::Relaxed) > 0);
    assert!(ingest.stats().retries.load(Ordering::Relaxed) > 0);
    assert_eq!(ingest.stats().buffered_events.load(Ordering::Relaxed), 60);

    // The buffer is full: the next batch waits, which stops the stream reading.
    let blocked = {
        let ingest = ingest.clone();
        tokio::spawn(async move { ingest.enqueue(daemon, batch(7, 101..=160)).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!blocked.is_finished(), "enqueue waits while the buffer is full");

    endpoint.start().await;
    assert_eq!(answer(during).await, 100);
    let last = blocked.await.expect("task").expect("queued once there is room");
    assert_eq!(answer(last).await, 160);

    let rows = stored(&store).await;
    assert_exactly(&rows, daemon, 7, &(1..=160).collect::<Vec<_>>());
    assert_eq!(ingest.stats().duplicates_dropped.load(Ordering::Relaxed), 0);

    shutdown.cancel();
    writer.await.expect("writer stops");
    pg.drop_now().await;
    endpoint.kill();
    std::fs::remove_dir_all(&data_dir).expect("remove endpoint data");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_unstored_batches_as_not_stored() {
    // Nothing listens on this port: every insert fails.
    let port = TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("address").port();
    let store = EventStore::new(&store_config(&format!("http://127.0.0.1:{port}"), "tyr_nowhere")).expect("config");
    let pg = scratch_pg().await;
    let shutdown = CancellationToken::new();
    let config = IngestConfig { shutdown_flush_timeout: Duration::from_millis(300), ..config() };
    let (ingest, writer) = Ingest::start(store, pg.pool.clone(), config, shutdown.clone());
    let receiver = ingest.enqueue(Uuid::now_v7(), batch(9, 1..=5)).await.expect("queued");
    tokio::time::sleep(Duration::from_millis(800)).await;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), writer).await.expect("bounded shutdown").expect("writer stops");
    let answer = receiver.await.expect("answered");
    assert!(matches!(answer, Err(IngestError::NotStored)), "{answer:?}");
    pg.drop_now().await;
}
