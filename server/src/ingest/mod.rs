//! Event batches → drift pool → Arrow → ClickHouse writer → acknowledgements.
//!
//! Stream sessions validate a batch ([`validate_batch`]), have the drift pool
//! evaluate it, and [`Ingest::enqueue`] it. One writer task gathers the
//! batches of every stream into large inserts (one Arrow `RecordBatch`,
//! about once per second or when `max_insert_rows` is reached), drops the
//! events ClickHouse already holds by each daemon's `seq`, counts gaps, and
//! resolves each batch's receiver only once ClickHouse committed its rows.
//! While ClickHouse fails the writer retries the same rows with backoff; the
//! bounded buffer fills and `enqueue` waits, which stops the streams
//! reading. Nothing is acknowledged that is not stored.

mod bookkeeping;
mod plan;
pub mod validate;
mod writer;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::drift::EvaluatedBatch;
use crate::event_store::EventStore;
use crate::event_store::arrow_batch::RowError;
use crate::metrics::Metrics;

pub use validate::{BatchLimits, BatchRejection, RejectionReason, rejection_counts, validate_batch};

/// How the writer batches and retries.
#[derive(Debug, Clone, Copy)]
pub struct IngestConfig {
    /// Longest an event waits in the buffer before an insert.
    pub flush_interval: Duration,
    /// Rows that trigger an insert before `flush_interval` is up.
    pub max_insert_rows: usize,
    /// Events waiting for ClickHouse, across all streams, before `enqueue` waits.
    pub max_buffered_events: usize,
    /// First wait after a failed insert.
    pub retry_initial: Duration,
    /// Longest wait between retries.
    pub retry_max: Duration,
    /// Time the writer spends flushing at shutdown before it gives up.
    pub shutdown_flush_timeout: Duration,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            flush_interval: Duration::from_secs(1),
            max_insert_rows: 50_000,
            max_buffered_events: 200_000,
            retry_initial: Duration::from_millis(200),
            retry_max: Duration::from_secs(10),
            shutdown_flush_timeout: Duration::from_secs(5),
        }
    }
}

/// Errors of ingest.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IngestError {
    /// The writer has stopped (server shutting down); the daemon replays later.
    #[error("ingest is shut down")]
    Closed,
    /// The server stopped before these events were stored; they are not acknowledged.
    #[error("server shut down before the batch was stored")]
    NotStored,
    /// An event cannot be stored as it is (the batch was not validated).
    #[error("batch cannot be stored: {0}")]
    Row(Arc<RowError>),
}

/// Counters of ingest, readable at any time.
#[derive(Debug, Default)]
pub struct IngestStats {
    /// Batches acknowledged (stored, or all duplicates).
    pub batches: AtomicU64,
    /// Events written to ClickHouse.
    pub events_inserted: AtomicU64,
    /// Events dropped because ClickHouse already held their seq.
    pub duplicates_dropped: AtomicU64,
    /// Events written with `drift_detected` set.
    pub drift_events: AtomicU64,
    /// Events written that the host reported as not enforced.
    pub unenforced_events: AtomicU64,
    /// Sequence numbers never received (gaps), all daemons.
    pub gap_events: AtomicU64,
    /// INSERT statements committed.
    pub inserts: AtomicU64,
    /// INSERT (or seq lookup) attempts that failed.
    pub insert_failures: AtomicU64,
    /// Attempts after a failure.
    pub retries: AtomicU64,
    /// Events enqueued and not yet acknowledged or refused.
    pub buffered_events: AtomicU64,
    /// Batches refused by the writer as unstorable.
    pub unstorable_batches: AtomicU64,
    /// PostgreSQL bookkeeping updates written.
    pub bookkeeping_updates: AtomicU64,
    /// PostgreSQL bookkeeping attempts that failed (retried).
    pub bookkeeping_failures: AtomicU64,
}

impl IngestStats {
    /// Batches rejected by [`validate_batch`], by reason (process-wide).
    pub fn rejected_batches(&self) -> Vec<(RejectionReason, u64)> {
        rejection_counts()
    }
}

/// What the writer knows of one daemon's sequence.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeqState {
    /// Highest seq stored in ClickHouse.
    pub stored_seq: u64,
    /// Sequence numbers found missing since this server started.
    pub gap_events: u64,
}

/// A batch waiting for the writer.
#[derive(Debug)]
struct Pending {
    /// The daemon, from its certificate.
    daemon_id: Uuid,
    /// The evaluated events.
    batch: EvaluatedBatch,
    /// Resolved with the daemon's stored seq once committed.
    reply: oneshot::Sender<Result<u64, IngestError>>,
    /// Places this batch holds in the buffer.
    permits: u32,
}

/// What the writer shares with the handles.
#[derive(Debug)]
struct Shared {
    /// Counters.
    stats: IngestStats,
    /// Insert latency.
    metrics: Arc<Metrics>,
    /// Places for buffered events: the backpressure.
    capacity: Arc<Semaphore>,
    /// Per-daemon sequence state, as of the last commit.
    seqs: Mutex<HashMap<Uuid, SeqState>>,
}

/// A handle on the writer; cheap to clone, one per stream.
#[derive(Debug, Clone)]
pub struct Ingest {
    /// Batches to the writer (bounded by `capacity`).
    sender: mpsc::UnboundedSender<Pending>,
    /// State shared with the writer.
    shared: Arc<Shared>,
    /// Most places one batch takes.
    max_permits: u32,
}

impl Ingest {
    /// Starts the writer task; it stops (after a bounded final flush) when
    /// `shutdown` is cancelled. Must be called within a tokio runtime.
    pub fn start(
        store: EventStore,
        pool: PgPool,
        config: IngestConfig,
        shutdown: CancellationToken,
    ) -> (Self, JoinHandle<()>) {
        Self::start_with_metrics(store, pool, config, Arc::new(Metrics::new()), shutdown)
    }

    /// [`Ingest::start`], recording insert latency in `metrics` (the
    /// server's; `start` gives the writer metrics nobody scrapes).
    pub fn start_with_metrics(
        store: EventStore,
        pool: PgPool,
        config: IngestConfig,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> (Self, JoinHandle<()>) {
        let max_permits =
            u32::try_from(config.max_buffered_events.clamp(1, Semaphore::MAX_PERMITS)).unwrap_or(u32::MAX);
        let shared = Arc::new(Shared {
            stats: IngestStats::default(),
            metrics,
            capacity: Arc::new(Semaphore::new(max_permits as usize)),
            seqs: Mutex::new(HashMap::new()),
        });
        let (sender, receiver) = mpsc::unbounded_channel();
        let bookkeeper = bookkeeping::Bookkeeper::start(pool, Arc::clone(&shared), config);
        let writer = writer::Writer::new(store, config, Arc::clone(&shared), receiver, bookkeeper, shutdown);
        let handle = tokio::spawn(writer.run());
        (Self { sender, shared, max_permits }, handle)
    }

    /// Queues an evaluated batch of `daemon_id`; waits while the buffer is
    /// full. The receiver resolves once the events are committed in
    /// ClickHouse (or all were already there) with the daemon's highest
    /// stored seq, or with an error when they will not be stored.
    pub async fn enqueue(
        &self,
        daemon_id: Uuid,
        batch: EvaluatedBatch,
    ) -> Result<oneshot::Receiver<Result<u64, IngestError>>, IngestError> {
        let permits = u32::try_from(batch.len()).unwrap_or(u32::MAX).min(self.max_permits);
        let permit =
            Arc::clone(&self.shared.capacity).acquire_many_owned(permits).await.map_err(|_| IngestError::Closed)?;
        // The writer gives the places back when it answers.
        permit.forget();
        self.shared.stats.buffered_events.fetch_add(batch.len() as u64, Ordering::Relaxed);
        let (reply, receiver) = oneshot::channel();
        let pending = Pending { daemon_id, batch, reply, permits };
        if let Err(refused) = self.sender.send(pending) {
            release(&self.shared, &refused.0);
            return Err(IngestError::Closed);
        }
        Ok(receiver)
    }

    /// The counters.
    pub fn stats(&self) -> &IngestStats {
        &self.shared.stats
    }

    /// What the writer knows of `daemon_id`'s sequence (None: not seen since start).
    pub fn seq_state(&self, daemon_id: Uuid) -> Option<SeqState> {
        self.shared.seqs.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&daemon_id).copied()
    }
}

/// Gives a pending batch's places back.
fn release(shared: &Shared, pending: &Pending) {
    shared.capacity.add_permits(pending.permits as usize);
    shared.stats.buffered_events.fetch_sub(pending.batch.len() as u64, Ordering::Relaxed);
}
