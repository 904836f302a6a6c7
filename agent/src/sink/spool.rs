//! `tyrd run`'s sink: each batch goes to the disk spool (which stamps the
//! sequence numbers and makes it durable); the server stream sends from
//! there.
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
use tracing::warn;
use tyr_proto::Event;

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

impl Sink for SpoolSink {
    fn deliver(&mut self, batch: Vec<Event>) -> Result<(), SinkError> {
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
                    return Ok(());
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
}
