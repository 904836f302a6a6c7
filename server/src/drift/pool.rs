//! The drift evaluator pool: N OS threads evaluating batches with Cedar, so
//! that evaluation (tens of microseconds per event) never runs on the async
//! runtime. Jobs go through a bounded channel; a full queue spills to
//! tokio's blocking pool rather than blocking the (async) caller, whose own
//! in-flight bound is the backpressure.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use tokio::sync::oneshot;
use tyr_proto::Event;

use super::evaluate::{DriftContext, DriftOutcome, evaluate};

/// Queued batches per worker thread by default.
pub const QUEUE_PER_WORKER: usize = 64;

/// Pool sizing.
#[derive(Debug, Clone, Copy)]
pub struct DriftPoolConfig {
    /// Worker threads (default: the available cores).
    pub workers: usize,
    /// Batches waiting for a worker before `submit` waits.
    pub queue_batches: usize,
}

impl Default for DriftPoolConfig {
    fn default() -> Self {
        let workers = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        Self { workers, queue_batches: workers * QUEUE_PER_WORKER }
    }
}

/// One event with the server's view of it.
#[derive(Debug, Clone)]
pub struct EvaluatedEvent {
    /// The event as received.
    pub event: Event,
    /// Cedar's verdict and the drift flags.
    pub outcome: DriftOutcome,
}

/// A batch back from the pool, in the order it was submitted.
#[derive(Debug, Clone, Default)]
pub struct EvaluatedBatch {
    /// The events with their outcomes.
    pub events: Vec<EvaluatedEvent>,
}

impl EvaluatedBatch {
    /// Events in the batch.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// True for a batch of no events.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

/// Counters of the pool, readable at any time.
#[derive(Debug, Default)]
pub struct DriftStats {
    /// Batches evaluated.
    pub batches: AtomicU64,
    /// Events evaluated.
    pub evaluated: AtomicU64,
    /// Events found drifting.
    pub drift: AtomicU64,
    /// Events tyrd reported as not enforced.
    pub unenforced: AtomicU64,
    /// Events whose request could not be rebuilt or evaluated.
    pub not_evaluable: AtomicU64,
    /// Batches evaluated on the blocking pool because the queue was full.
    pub overflow: AtomicU64,
    /// Batches lost to a panicking evaluation (a bug; the submitter sees a closed reply).
    pub panics: AtomicU64,
}

/// A batch waiting for a worker.
struct Job {
    /// The daemon's context.
    ctx: DriftContext,
    /// The events to evaluate.
    events: Vec<Event>,
    /// Where the result goes.
    reply: oneshot::Sender<EvaluatedBatch>,
}

/// A handle on the pool; clones share the workers, which stop when the
/// last handle is dropped.
#[derive(Debug, Clone)]
pub struct DriftPool {
    /// Jobs to the workers.
    jobs: Sender<Job>,
    /// Counters.
    stats: Arc<DriftStats>,
    /// Worker threads.
    workers: usize,
}

impl DriftPool {
    /// Starts `workers` threads (at least one) with the default queue.
    pub fn start(workers: usize) -> Self {
        let workers = workers.max(1);
        Self::with_config(DriftPoolConfig { workers, queue_batches: workers * QUEUE_PER_WORKER })
    }

    /// Starts the workers. A thread the OS refuses is logged and counted
    /// out; with none at all every batch is evaluated on the blocking pool.
    pub fn with_config(config: DriftPoolConfig) -> Self {
        let queue = config.queue_batches.max(1);
        let (jobs, receiver) = crossbeam_channel::bounded::<Job>(queue);
        let stats = Arc::new(DriftStats::default());
        let mut workers = 0;
        for index in 0..config.workers.max(1) {
            let receiver = receiver.clone();
            let worker_stats = Arc::clone(&stats);
            let spawned = std::thread::Builder::new()
                .name(format!("tyr-drift-{index}"))
                .spawn(move || work(&receiver, &worker_stats));
            match spawned {
                Ok(_) => workers += 1,
                Err(error) => tracing::error!(%error, index, "could not start a drift worker thread"),
            }
        }
        tracing::debug!(workers, queue, "drift pool started");
        Self { jobs, stats, workers }
    }

    /// Worker threads.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// The pool's counters.
    pub fn stats(&self) -> &Arc<DriftStats> {
        &self.stats
    }

    /// Queues `events` for evaluation under `ctx`; the receiver resolves
    /// with the batch evaluated, in order. Never blocks: when the queue is
    /// full (or no worker runs) the batch is evaluated on tokio's blocking
    /// pool instead (counted in `overflow`), never on the async workers.
    /// Callers bound what they have in flight (the stream session does).
    pub fn submit(&self, ctx: DriftContext, events: Vec<Event>) -> oneshot::Receiver<EvaluatedBatch> {
        let (reply, receiver) = oneshot::channel();
        let job = Job { ctx, events, reply };
        let job = if self.workers == 0 {
            job
        } else {
            match self.jobs.try_send(job) {
                Ok(()) => return receiver,
                Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => job,
            }
        };
        self.stats.overflow.fetch_add(1, Ordering::Relaxed);
        let stats = Arc::clone(&self.stats);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(move || run_job(job, &stats))),
            // Outside a runtime the caller's thread is no async worker.
            Err(_) => run_job(job, &stats),
        }
        receiver
    }

    /// Evaluates `events` on the calling thread, counting as the workers do
    /// (for callers already off the async runtime, and benchmarks).
    pub fn evaluate_now(&self, ctx: &DriftContext, events: Vec<Event>) -> EvaluatedBatch {
        evaluate_batch(ctx, events, &self.stats)
    }
}

fn evaluate_batch(ctx: &DriftContext, events: Vec<Event>, stats: &DriftStats) -> EvaluatedBatch {
    let (mut drift, mut unenforced, mut not_evaluable) = (0u64, 0u64, 0u64);
    let evaluated: Vec<EvaluatedEvent> = events
        .into_iter()
        .map(|event| {
            let outcome = evaluate(ctx, &event);
            drift += u64::from(outcome.drift_detected);
            unenforced += u64::from(outcome.unenforced);
            not_evaluable += u64::from(outcome.not_evaluable);
            EvaluatedEvent { event, outcome }
        })
        .collect();
    // Counted once per batch, not per event.
    stats.batches.fetch_add(1, Ordering::Relaxed);
    stats.evaluated.fetch_add(evaluated.len() as u64, Ordering::Relaxed);
    stats.drift.fetch_add(drift, Ordering::Relaxed);
    stats.unenforced.fetch_add(unenforced, Ordering::Relaxed);
    stats.not_evaluable.fetch_add(not_evaluable, Ordering::Relaxed);
    EvaluatedBatch { events: evaluated }
}

/// A worker: evaluates jobs until every handle is dropped.
fn work(jobs: &Receiver<Job>, stats: &DriftStats) {
    while let Ok(job) = jobs.recv() {
        run_job(job, stats);
    }
}

/// Evaluates one job and sends its result; a panic loses the batch (the
/// submitter sees the reply closed and the batch is never acknowledged).
fn run_job(job: Job, stats: &DriftStats) {
    let Job { ctx, events, reply } = job;
    let daemon_id = ctx.daemon_id;
    match std::panic::catch_unwind(AssertUnwindSafe(|| evaluate_batch(&ctx, events, stats))) {
        // The submitter may have gone (stream closed): nothing to do then.
        Ok(batch) => drop(reply.send(batch)),
        Err(_) => {
            stats.panics.fetch_add(1, Ordering::Relaxed);
            tracing::error!(%daemon_id, "drift evaluation panicked; batch not acknowledged");
        }
    }
}
