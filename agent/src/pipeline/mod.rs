//! From raw kernel records to batches of `Event`s: decoding, enrichment from
//! the process cache, sequence numbers, wall-clock time, batching.

pub mod batcher;
pub mod bounded_lru;
pub mod clock;
pub mod event_builder;
pub mod file_event;
pub mod open_flags;
pub mod process_cache;
pub mod seq;
