//! The one ClickHouse writer: gathers the batches of every stream, inserts
//! them as one Arrow batch about once per `flush_interval` (sooner when
//! `max_insert_rows` are waiting), retries with backoff while ClickHouse
//! fails, and answers each batch only once its rows are committed.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::bookkeeping::{Bookkeeper, Delta};
use super::plan::{Plan, Unstorable, plan};
use super::{IngestConfig, IngestError, Pending, Shared, release};
use crate::event_store::{EventStore, EventStoreError};

/// The writer task's state.
#[derive(Debug)]
pub(super) struct Writer {
    /// Where events go.
    store: EventStore,
    /// Batching and retry settings.
    config: IngestConfig,
    /// Counters and per-daemon state shared with the handles.
    shared: Arc<Shared>,
    /// Batches from the streams.
    receiver: mpsc::UnboundedReceiver<Pending>,
    /// PostgreSQL bookkeeping.
    bookkeeper: Bookkeeper,
    /// Stops the writer.
    shutdown: CancellationToken,
    /// Batches waiting for the next insert, in arrival order.
    buffer: Vec<Pending>,
    /// Events in `buffer`.
    buffered_rows: usize,
    /// When the oldest batch in `buffer` arrived.
    oldest: Option<Instant>,
    /// Highest stored seq per daemon, as committed (read from ClickHouse on first sight).
    stored: HashMap<Uuid, u64>,
    /// Daemons whose stored seq must be read again: an insert failed, and
    /// may have committed all the same.
    uncertain: bool,
}

impl Writer {
    /// A writer over `receiver`.
    pub fn new(
        store: EventStore,
        config: IngestConfig,
        shared: Arc<Shared>,
        receiver: mpsc::UnboundedReceiver<Pending>,
        bookkeeper: Bookkeeper,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            store,
            config,
            shared,
            receiver,
            bookkeeper,
            shutdown,
            buffer: Vec::new(),
            buffered_rows: 0,
            oldest: None,
            stored: HashMap::new(),
            uncertain: false,
        }
    }

    /// Runs until shutdown, then flushes what it holds (bounded) and stops.
    pub async fn run(mut self) {
        loop {
            let deadline = self.oldest.map(|oldest| oldest + self.config.flush_interval);
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => break,
                received = self.receiver.recv() => match received {
                    Some(pending) => {
                        self.take(pending);
                        if self.buffered_rows >= self.config.max_insert_rows {
                            let _stored = self.flush_with_retries(None).await;
                        }
                    }
                    None => break,
                },
                () = sleep_until(deadline), if deadline.is_some() => {
                    let _stored = self.flush_with_retries(None).await;
                }
            }
        }
        self.stop().await;
    }

    /// Buffers one batch.
    fn take(&mut self, pending: Pending) {
        self.buffered_rows += pending.batch.len();
        self.oldest.get_or_insert_with(Instant::now);
        self.buffer.push(pending);
    }

    /// Final flush at shutdown: everything already handed over, for at most
    /// `shutdown_flush_timeout`; what is left is answered "not stored".
    async fn stop(mut self) {
        self.receiver.close();
        while let Ok(pending) = self.receiver.try_recv() {
            self.take(pending);
        }
        let deadline = Instant::now() + self.config.shutdown_flush_timeout;
        if !self.buffer.is_empty() && !self.flush_with_retries(Some(deadline)).await {
            tracing::warn!(
                batches = self.buffer.len(),
                events = self.buffered_rows,
                "shutting down with batches not stored; daemons will replay them"
            );
        }
        for pending in std::mem::take(&mut self.buffer) {
            self.answer(pending, Err(IngestError::NotStored));
        }
        self.shared.capacity.close();
        self.bookkeeper.finish(self.config.shutdown_flush_timeout).await;
        tracing::debug!("ingest writer stopped");
    }

    /// Flushes the buffer, retrying with backoff until it is stored, or
    /// until shutdown (`deadline` None) or `deadline` comes. True when stored.
    async fn flush_with_retries(&mut self, deadline: Option<Instant>) -> bool {
        let mut backoff = self.config.retry_initial;
        loop {
            match self.flush().await {
                Ok(()) => return true,
                Err(error) => {
                    self.uncertain = true;
                    self.shared.stats.insert_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%error, events = self.buffered_rows, retry_in_ms = backoff.as_millis() as u64, "events insert failed; retrying");
                }
            }
            let wake = Instant::now() + backoff;
            match deadline {
                Some(deadline) if wake >= deadline => return false,
                Some(_) => tokio::time::sleep_until(wake).await,
                None => {
                    tokio::select! {
                        () = self.shutdown.cancelled() => return false,
                        () = tokio::time::sleep_until(wake) => {}
                    }
                }
            }
            self.shared.stats.retries.fetch_add(1, Ordering::Relaxed);
            backoff = (backoff * 2).min(self.config.retry_max);
        }
    }

    /// One attempt: learn the stored seqs it lacks, plan, insert, answer.
    async fn flush(&mut self) -> Result<(), EventStoreError> {
        if self.uncertain {
            // A failed insert may have committed: ClickHouse says what is stored.
            self.stored.retain(|daemon_id, _| !self.buffer.iter().any(|p| p.daemon_id == *daemon_id));
        }
        for index in 0..self.buffer.len() {
            let daemon_id = self.buffer[index].daemon_id;
            if !self.stored.contains_key(&daemon_id) {
                let seq = self.max_seq(daemon_id).await?;
                self.stored.insert(daemon_id, seq);
            }
        }
        self.uncertain = false;
        let plan = loop {
            let batches: Vec<(Uuid, &crate::drift::EvaluatedBatch)> =
                self.buffer.iter().map(|pending| (pending.daemon_id, &pending.batch)).collect();
            match plan(&batches, &self.stored) {
                Ok(plan) => break plan,
                Err(Unstorable { index, error }) => {
                    // Validated batches never get here; refuse this one, keep the rest.
                    tracing::error!(%error, "refusing an event batch that cannot be stored");
                    self.shared.stats.unstorable_batches.fetch_add(1, Ordering::Relaxed);
                    let pending = self.buffer.remove(index);
                    self.buffered_rows -= pending.batch.len();
                    self.answer(pending, Err(IngestError::Row(Arc::new(error))));
                }
            }
        };
        if let Some(rows) = &plan.rows {
            let started = Instant::now();
            self.store.insert_batches(std::slice::from_ref(rows)).await?;
            self.shared.metrics.observe_clickhouse_insert(started.elapsed());
            self.shared.stats.inserts.fetch_add(1, Ordering::Relaxed);
        }
        self.commit(plan);
        Ok(())
    }

    /// Records a committed plan and answers its batches.
    fn commit(&mut self, plan: Plan) {
        let stats = &self.shared.stats;
        stats.events_inserted.fetch_add(plan.row_count as u64, Ordering::Relaxed);
        stats.duplicates_dropped.fetch_add(plan.duplicates, Ordering::Relaxed);
        stats.drift_events.fetch_add(plan.drift_events, Ordering::Relaxed);
        stats.unenforced_events.fetch_add(plan.unenforced_events, Ordering::Relaxed);
        stats.gap_events.fetch_add(plan.gaps.values().sum(), Ordering::Relaxed);
        let mut deltas = HashMap::new();
        {
            let mut seqs = self.shared.seqs.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            for (daemon_id, stored_seq) in &plan.stored {
                let gap_events = plan.gaps.get(daemon_id).copied().unwrap_or(0);
                let state = seqs.entry(*daemon_id).or_default();
                state.stored_seq = *stored_seq;
                state.gap_events += gap_events;
                self.stored.insert(*daemon_id, *stored_seq);
                deltas.insert(*daemon_id, Delta { stored_seq: *stored_seq, gap_events });
            }
        }
        self.bookkeeper.record(deltas);
        tracing::debug!(
            rows = plan.row_count,
            duplicates = plan.duplicates,
            batches = self.buffer.len(),
            "events committed"
        );
        for pending in std::mem::take(&mut self.buffer) {
            let acked = plan.stored.get(&pending.daemon_id).copied().unwrap_or(0);
            stats.batches.fetch_add(1, Ordering::Relaxed);
            self.answer(pending, Ok(acked));
        }
        self.buffered_rows = 0;
        self.oldest = None;
    }

    /// Answers one batch and gives its places back.
    fn answer(&self, pending: Pending, result: Result<u64, IngestError>) {
        release(&self.shared, &pending);
        // The stream may have gone: its daemon replays what it lacks.
        let _ = pending.reply.send(result);
    }

    /// The highest seq ClickHouse holds for `daemon_id` (0: none).
    async fn max_seq(&self, daemon_id: Uuid) -> Result<u64, EventStoreError> {
        self.store.max_seq(daemon_id).await
    }
}

/// Sleeps until `deadline`; forever when there is none.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending::<()>().await,
    }
}
