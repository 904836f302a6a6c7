//! `tyrd run`'s sink: each batch goes to the disk spool (which stamps the
//! sequence numbers and makes it durable); the server stream sends from
//! there.
//!
//! Every event is first fitted into the wire's limits
//! ([`tyr_proto::limits::fit_event`]: long fields cut, the event marked
//! `truncated`, counted) and a batch longer than
//! [`MAX_EVENTS_PER_BATCH`] is split, so the server never refuses what the
//! spool holds (a refused batch would otherwise be replayed forever; a
//! governed agent could cause one on purpose with a huge file name).
//!
//! A failed write (disk full, I/O error) uses no sequence numbers, so it is
//! retried a few times with a short, growing pause. A batch still not
//! written is dropped and counted rather than stopping capture: the kernel
//! keeps enforcing whatever the disk does, and the counters say what was
//! lost. The pauses end early on shutdown, so a dead disk never holds tyrd.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use tyr_proto::Event;
use tyr_proto::limits::{MAX_EVENTS_PER_BATCH, fit_event};

use super::{Sink, SinkError};
use crate::spool::Spool;

/// Attempts per batch before it is dropped.
const ATTEMPTS: u32 = 5;
/// Pause before the first retry; doubled for each further one.
const FIRST_PAUSE: Duration = Duration::from_millis(10);
/// Slice of a pause between shutdown checks.
const PAUSE_SLICE: Duration = Duration::from_millis(5);

/// What the spool sink did, readable from any thread.
#[derive(Debug, Default)]
pub struct SpoolSinkCounters {
    /// Events written to the spool.
    pub spooled_events: AtomicU64,
    /// Spool writes that failed (each attempt counts).
    pub spool_write_failures: AtomicU64,
    /// Batches dropped after every attempt failed (or shutdown came first).
    pub dropped_batches: AtomicU64,
    /// Events in those batches.
    pub dropped_events: AtomicU64,
    /// Events cut to fit the wire's limits (and marked `truncated`).
    pub events_truncated: AtomicU64,
}

/// Writes batches to the disk spool.
#[derive(Debug)]
pub struct SpoolSink {
    spool: Spool,
    shutdown: CancellationToken,
    counters: Arc<SpoolSinkCounters>,
}

impl SpoolSink {
    /// A sink appending to `spool`; retry pauses end when `shutdown` fires.
    pub fn new(spool: Spool, shutdown: CancellationToken) -> Self {
        Self { spool, shutdown, counters: Arc::default() }
    }

    /// The sink's counters (shared: they stay readable after the sink moved).
    pub fn counters(&self) -> Arc<SpoolSinkCounters> {
        Arc::clone(&self.counters)
    }

    /// Sleeps `pause` unless shutdown comes first; false on shutdown.
    fn pause(&self, pause: Duration) -> bool {
        let deadline = Instant::now() + pause;
        while !self.shutdown.is_cancelled() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            std::thread::sleep(left.min(PAUSE_SLICE));
        }
        false
    }
}

impl SpoolSink {
    /// Appends one batch (within the limits), retrying; counts a drop.
    fn append(&mut self, batch: Vec<Event>) {
        let events = batch.len() as u64;
        let mut pause = FIRST_PAUSE;
        let mut batch = Some(batch);
        for attempt in 1..=ATTEMPTS {
            // Keep a copy for a retry only while one may follow.
            let events_now = if attempt == ATTEMPTS { batch.take() } else { batch.clone() };
            let Some(events_now) = events_now else { break };
            match self.spool.append(events_now) {
                Ok(_) => {
                    self.counters.spooled_events.fetch_add(events, Ordering::Relaxed);
                    return;
                }
                Err(error) => {
                    self.counters.spool_write_failures.fetch_add(1, Ordering::Relaxed);
                    warn!(%error, attempt, events, "spool write failed");
                    if attempt == ATTEMPTS || !self.pause(pause) {
                        break;
                    }
                    pause *= 2;
                }
            }
        }
        self.counters.dropped_batches.fetch_add(1, Ordering::Relaxed);
        self.counters.dropped_events.fetch_add(events, Ordering::Relaxed);
        warn!(events, "batch dropped: the spool could not take it");
    }
}

impl Sink for SpoolSink {
    fn deliver(&mut self, mut batch: Vec<Event>) -> Result<(), SinkError> {
        let truncated = batch.iter_mut().map(fit_event).filter(|&cut| cut).count() as u64;
        if truncated > 0 {
            self.counters.events_truncated.fetch_add(truncated, Ordering::Relaxed);
            debug!(truncated, "events cut to fit the wire's limits");
        }
        while batch.len() > MAX_EVENTS_PER_BATCH {
            let rest = batch.split_off(MAX_EVENTS_PER_BATCH);
            self.append(batch);
            batch = rest;
        }
        self.append(batch);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(n: usize) -> Vec<Event> {
        (0..n).map(|_| Event::default()).collect()
    }

    #[test]
    fn spools_then_counts_what_it_drops() {
        let dir = std::env::temp_dir().join(format!("tyr-spool-sink-{}", uuid::Uuid::new_v4().simple()));
        let spool = Spool::open(&dir, u64::MAX).expect("open");
        let mut sink = SpoolSink::new(spool.clone(), CancellationToken::new());
        let counters = sink.counters();
        sink.deliver(events(3)).expect("deliver");
        assert_eq!(spool.stats().last_seq, 3);
        assert_eq!(counters.spooled_events.load(Ordering::Relaxed), 3);

        std::fs::remove_dir_all(&dir).expect("pull the directory away");
        let started = Instant::now();
        sink.deliver(events(2)).expect("a spool failure is counted, not an error");
        assert_eq!(counters.spool_write_failures.load(Ordering::Relaxed), u64::from(ATTEMPTS));
        assert_eq!(counters.dropped_events.load(Ordering::Relaxed), 2);
        assert!(started.elapsed() >= FIRST_PAUSE * 15, "paused between attempts");

        // Shutdown cuts the pauses short.
        let shutdown = CancellationToken::new();
        let mut stopping = SpoolSink::new(spool.clone(), shutdown.clone());
        shutdown.cancel();
        let started = Instant::now();
        stopping.deliver(events(1)).expect("deliver");
        assert!(started.elapsed() < FIRST_PAUSE, "no pause once shutting down");
        assert_eq!(stopping.counters().dropped_batches.load(Ordering::Relaxed), 1);

        std::fs::create_dir_all(&dir).expect("recreate");
        sink.deliver(events(1)).expect("deliver");
        assert_eq!(spool.stats().last_seq, 4, "failed writes used no numbers");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The server's rules on one batch, rechecked by hand from the limits.
    fn within_the_wire_limits(batch: &tyr_proto::EventBatch) -> bool {
        use tyr_proto::limits::*;
        batch.events.len() <= MAX_EVENTS_PER_BATCH
            && batch.events.iter().all(|e| {
                e.resource.len() <= MAX_RESOURCE_BYTES
                    && e.cmdline.len() <= MAX_CMDLINE_BYTES
                    && e.process_exe.len() <= MAX_PROCESS_EXE_BYTES
                    && e.agent_type.len() <= MAX_AGENT_TYPE_BYTES
                    && e.metadata.len() <= MAX_METADATA_ENTRIES
                    && e.metadata
                        .iter()
                        .all(|(k, v)| k.len() <= MAX_METADATA_KEY_BYTES && v.len() <= MAX_METADATA_VALUE_BYTES)
            })
    }

    #[test]
    fn events_are_fitted_into_the_wire_limits_before_they_are_spooled() {
        let dir = std::env::temp_dir().join(format!("tyr-spool-sink-{}", uuid::Uuid::new_v4().simple()));
        let spool = Spool::open(&dir, u64::MAX).expect("open");
        let mut sink = SpoolSink::new(spool.clone(), CancellationToken::new());
        let counters = sink.counters();
        // A failed open of "/tmp/" + 3000 invalid bytes: lossy UTF-8 triples them.
        let mut huge = Event { resource: format!("/tmp/{}", "\u{fffd}".repeat(3000)), ..Event::default() };
        assert!(huge.resource.len() > 9_000);
        for i in 0..100 {
            huge.metadata.insert(format!("key{i:03}"), "v".repeat(100));
        }
        let small = Event { resource: "/etc/hosts".to_owned(), ..Event::default() };
        sink.deliver(vec![huge, small]).expect("deliver");
        assert_eq!(counters.events_truncated.load(Ordering::Relaxed), 1);
        assert_eq!(counters.spooled_events.load(Ordering::Relaxed), 2);
        let batch = spool.next_batch(0).expect("read").expect("the spooled batch");
        assert!(within_the_wire_limits(&batch));
        assert_eq!(batch.events[0].metadata.get("truncated").map(String::as_str), Some("true"));
        assert!(batch.events[0].resource.starts_with("/tmp/\u{fffd}"));
        assert!(batch.events[1].metadata.is_empty(), "an event within the limits is untouched");

        // A batch over the event limit is split, numbers contiguous.
        let over = tyr_proto::limits::MAX_EVENTS_PER_BATCH + 5;
        sink.deliver(events(over)).expect("deliver");
        let first = spool.next_batch(2).expect("read").expect("a batch");
        let second = spool.next_batch(first.events.last().expect("events").seq).expect("read").expect("a batch");
        assert!(within_the_wire_limits(&first) && within_the_wire_limits(&second));
        assert_eq!((first.events.len(), second.events.len()), (tyr_proto::limits::MAX_EVENTS_PER_BATCH, 5));
        assert_eq!(second.batch_id, 3 + tyr_proto::limits::MAX_EVENTS_PER_BATCH as u64);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
