//! tyrd's userspace hot path: raw ring records → decode → enrich (process
//! cache, UUIDv7, sequence number, metadata) → batch, replayed from a
//! recording of real kernel records. Single-threaded, so the reported
//! elements per second are events per second per core.

use std::hint::black_box;
use std::num::NonZeroUsize;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tyr_agent::capture::record::split_recording;
use tyr_agent::pipeline::batcher::{Batch, BatchPolicy};
use tyr_agent::pipeline::event_builder::EventBuilder;

/// tyrd's allocator (see agent/src/main.rs): the pipeline allocates a few
/// strings per event, so the allocator is part of what is measured.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const RECORDING: &[u8] = include_bytes!("../data/raw_records.bin");

fn decode_enrich_batch(c: &mut Criterion) {
    let records = split_recording(RECORDING).expect("recording is well-formed");
    let mut group = c.benchmark_group("capture_pipeline");
    group.throughput(Throughput::Elements(records.len() as u64));
    group.bench_function("decode_enrich_batch", |b| {
        let mut builder = EventBuilder::in_memory(NonZeroUsize::new(65_536).expect("nonzero"));
        let mut batch = Batch::new(BatchPolicy::default());
        b.iter(|| {
            for raw in &records {
                let event = builder.build(raw).expect("recorded records decode");
                if let Some(full) = batch.push(event) {
                    black_box(full);
                }
            }
        });
    });
    group.finish();
}

criterion_group!(benches, decode_enrich_batch);
criterion_main!(benches);
