//! From raw kernel records to batches of `Event`s: decoding, enrichment from
//! the process cache, sequence numbers, wall-clock time, batching.

pub mod batcher;
pub mod clock;
pub mod event_builder;
pub mod process_cache;
pub mod seq;
