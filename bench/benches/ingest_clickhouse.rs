//! Server ingest into ClickHouse (the dev endpoint, or TYR_CLICKHOUSE_URL),
//! in events per second: Arrow build and `insert_arrow` through the
//! `Ingest` writer (queue, seq dedup, one insert, acknowledgements) beside
//! a direct `insert_batches` of the same rows, measured in the same run.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sqlx::postgres::PgPoolOptions;
use tokio_util::sync::CancellationToken;
use tyr_proto::{Event, EventKind, Severity, Verdict};
use tyr_server::config::EventStoreConfig;
use tyr_server::drift::{DriftOutcome, EvaluatedBatch, EvaluatedEvent};
use tyr_server::event_store::arrow_batch::{EventBatchBuilder, StoredEvent};
use tyr_server::event_store::{EventStore, schema};
use tyr_server::ingest::{Ingest, IngestConfig};
use uuid::Uuid;

const EVENTS: usize = 20_000;
const BATCH: usize = 1_000;

/// Events stamped now (the table's TTL drops old rows), seqs 1..=EVENTS.
fn events() -> Vec<Event> {
    let now =
        i64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()))
            .unwrap_or(i64::MAX);
    (0..EVENTS)
        .map(|i| Event {
            event_id: Uuid::now_v7().to_string(),
            kind: EventKind::FileRead as i32,
            resource: format!("/home/dev/project/src/module_{}.rs", i % 97),
            verdict: Verdict::Allow as i32,
            severity: Severity::Info as i32,
            pid: 4242,
            process_exe: "/usr/bin/cargo".to_owned(),
            cmdline: "cargo build --release".to_owned(),
            timestamp_ns: now + i as i64,
            seq: i as u64 + 1,
            agent_type: "claude-code".to_owned(),
            metadata: [("flags".to_owned(), "O_RDONLY|O_CLOEXEC".to_owned()), ("uid".to_owned(), "1000".to_owned())]
                .into(),
            ..Event::default()
        })
        .collect()
}

fn evaluated(events: &[Event]) -> Vec<EvaluatedBatch> {
    let outcome =
        DriftOutcome { server_verdict: Verdict::Allow, drift_detected: false, unenforced: false, not_evaluable: false };
    events
        .chunks(BATCH)
        .map(|chunk| EvaluatedBatch {
            events: chunk.iter().map(|event| EvaluatedEvent { event: event.clone(), outcome }).collect(),
        })
        .collect()
}

fn ingest_throughput(c: &mut Criterion) {
    let url = std::env::var("TYR_CLICKHOUSE_URL").unwrap_or_else(|_| "http://127.0.0.1:8123".to_owned());
    let database = format!("tyr_bench_{}", Uuid::new_v4().simple());
    let config = EventStoreConfig { url, database: database.clone(), user: None, password: None, retention_days: 30 };
    let store = EventStore::new(&config).expect("valid config");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(schema::apply(&store, 30)).expect("ClickHouse must be running (deploy/dev/setup.sh starts it)");
    // Bookkeeping goes to the dev PostgreSQL; it never holds up inserts.
    let database_url =
        std::env::var("TYR_DATABASE_URL").expect("TYR_DATABASE_URL must be set (source /var/lib/tyr-dev/env)");
    let pg = runtime
        .block_on(async { PgPoolOptions::new().max_connections(1).connect_lazy(&database_url) })
        .expect("valid URL");
    let shutdown = CancellationToken::new();
    let ingest_config =
        IngestConfig { flush_interval: Duration::from_millis(20), max_insert_rows: EVENTS, ..IngestConfig::default() };
    let (ingest, writer) =
        runtime.block_on(async { Ingest::start(store.clone(), pg, ingest_config, shutdown.clone()) });
    let events = events();
    let batches = evaluated(&events);

    let mut group = c.benchmark_group("ingest_clickhouse");
    group.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(EVENTS as u64));
    group.bench_function("through_ingest_writer", |b| {
        b.iter(|| {
            // A fresh daemon each time: nothing is a duplicate.
            let daemon = Uuid::now_v7();
            runtime.block_on(async {
                let mut receivers = Vec::with_capacity(batches.len());
                for batch in &batches {
                    receivers.push(ingest.enqueue(daemon, batch.clone()).await.expect("queued"));
                }
                for receiver in receivers {
                    black_box(receiver.await.expect("answered").expect("stored"));
                }
            });
        });
    });
    group.bench_function("direct_insert_arrow", |b| {
        b.iter(|| {
            let daemon = Uuid::now_v7();
            let mut builder = EventBatchBuilder::with_capacity(EVENTS);
            for event in &events {
                builder
                    .push(StoredEvent {
                        agent_id: daemon,
                        event,
                        server_verdict: Verdict::Allow,
                        drift_detected: false,
                    })
                    .expect("valid events");
            }
            let batch = builder.finish();
            runtime.block_on(store.insert_batches(std::slice::from_ref(&batch))).expect("inserted");
        });
    });
    group.finish();

    shutdown.cancel();
    runtime.block_on(writer).expect("writer stops");
    runtime
        .block_on(store.client().query(&format!("DROP DATABASE {database}")).execute())
        .expect("drop bench database");
}

criterion_group!(benches, ingest_throughput);
criterion_main!(benches);
