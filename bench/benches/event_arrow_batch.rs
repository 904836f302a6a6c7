//! Server write path: events → Arrow `RecordBatch` for the ClickHouse insert.
//! Throughput is reported in events per second.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use tyr_bench::synthetic_events;
use tyr_proto::Verdict;
use tyr_server::event_store::arrow_batch::{EventBatchBuilder, StoredEvent};
use uuid::Uuid;

fn build_batches(c: &mut Criterion) {
    const BATCH: usize = 10_000;
    let events = synthetic_events(BATCH);
    let agent_id = Uuid::now_v7();
    let mut group = c.benchmark_group("event_arrow_batch");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("build_10k", |b| {
        let mut builder = EventBatchBuilder::with_capacity(BATCH);
        b.iter(|| {
            for event in &events {
                builder
                    .push(StoredEvent { agent_id, event, server_verdict: Verdict::Allow, drift_detected: false })
                    .expect("synthetic events are valid");
            }
            black_box(builder.finish())
        });
    });
    group.finish();
}

criterion_group!(benches, build_batches);
criterion_main!(benches);
