//! Cuts the event stream into batches: at `max_events` events, or
//! `max_delay` after the first event of a batch, whichever comes first.

use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use tyr_proto::Event;

/// When a batch is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPolicy {
    pub max_events: usize,
    pub max_delay: Duration,
}

impl Default for BatchPolicy {
    fn default() -> Self {
        Self { max_events: 100, max_delay: Duration::from_secs(1) }
    }
}

/// The batch being filled.
#[derive(Debug)]
pub struct Batch {
    policy: BatchPolicy,
    events: Vec<Event>,
    started: Option<Instant>,
}

impl Batch {
    pub fn new(policy: BatchPolicy) -> Self {
        Self { policy, events: Vec::with_capacity(policy.max_events), started: None }
    }

    /// Adds an event; returns the batch when it is full.
    pub fn push(&mut self, event: Event) -> Option<Vec<Event>> {
        if self.events.is_empty() {
            self.started = Some(Instant::now());
        }
        self.events.push(event);
        (self.events.len() >= self.policy.max_events).then(|| self.take())
    }

    /// Time left before the current batch is due; None when it is empty.
    pub fn time_left(&self) -> Option<Duration> {
        self.started.map(|start| self.policy.max_delay.saturating_sub(start.elapsed()))
    }

    /// Takes whatever is batched.
    pub fn take(&mut self) -> Vec<Event> {
        self.started = None;
        std::mem::replace(&mut self.events, Vec::with_capacity(self.policy.max_events))
    }
}

/// Receives events until the senders are gone, handing each batch to `sink`.
/// Stops early when `sink` returns false (its output is gone).
pub fn run(events: &Receiver<Event>, policy: BatchPolicy, mut sink: impl FnMut(Vec<Event>) -> bool) {
    let mut batch = Batch::new(policy);
    loop {
        let received = match batch.time_left() {
            Some(left) => events.recv_timeout(left),
            None => events.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        let full = match received {
            Ok(event) => batch.push(event),
            Err(RecvTimeoutError::Timeout) => Some(batch.take()),
            Err(RecvTimeoutError::Disconnected) => {
                let rest = batch.take();
                if !rest.is_empty() {
                    sink(rest);
                }
                return;
            }
        };
        if let Some(full) = full
            && !sink(full)
        {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_by_count_and_by_time() {
        let (tx, rx) = crossbeam_channel::bounded(1000);
        let policy = BatchPolicy { max_events: 10, max_delay: Duration::from_millis(50) };
        let worker = std::thread::spawn(move || {
            let mut sizes = Vec::new();
            run(&rx, policy, |batch| {
                sizes.push(batch.len());
                true
            });
            sizes
        });
        for _ in 0..25 {
            tx.send(Event::default()).expect("send");
        }
        std::thread::sleep(Duration::from_millis(200));
        tx.send(Event::default()).expect("send");
        drop(tx);
        let sizes = worker.join().expect("batcher");
        assert_eq!(sizes, [10, 10, 5, 1]);
    }
}
