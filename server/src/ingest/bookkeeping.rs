//! Delivery bookkeeping in PostgreSQL: each daemon's highest stored seq and
//! its count of missing sequence numbers (`daemons.stored_seq`,
//! `daemons.seq_gap_events`).
//!
//! ClickHouse is the truth for what is stored; these columns are for
//! operators. They are written by their own task so that a slow or
//! restarting PostgreSQL never holds up inserts or acknowledgements: deltas
//! accumulate while it is away and are written when it is back.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use uuid::Uuid;

use super::{IngestConfig, Shared};

/// Raises each daemon's stored seq and adds to its gap count, in one statement.
const UPDATE_DAEMONS: &str = "UPDATE daemons AS d \
     SET stored_seq = GREATEST(d.stored_seq, u.stored_seq), seq_gap_events = d.seq_gap_events + u.gaps \
     FROM UNNEST($1::uuid[], $2::bigint[], $3::bigint[]) AS u(id, stored_seq, gaps) \
     WHERE d.id = u.id";

/// What one commit changed for one daemon.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Delta {
    /// The daemon's stored seq after the commit.
    pub stored_seq: u64,
    /// Sequence numbers newly found missing.
    pub gap_events: u64,
}

impl Delta {
    fn merge(&mut self, other: Delta) {
        self.stored_seq = self.stored_seq.max(other.stored_seq);
        self.gap_events = self.gap_events.saturating_add(other.gap_events);
    }
}

/// The writer's side of the bookkeeping task.
#[derive(Debug)]
pub(super) struct Bookkeeper {
    /// Deltas to the task; closed when the writer stops.
    sender: mpsc::UnboundedSender<HashMap<Uuid, Delta>>,
    /// The task.
    task: JoinHandle<()>,
}

impl Bookkeeper {
    /// Starts the task.
    pub fn start(pool: PgPool, shared: Arc<Shared>, config: IngestConfig) -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(pool, shared, config, receiver));
        Self { sender, task }
    }

    /// Queues the deltas of one commit.
    pub fn record(&self, deltas: HashMap<Uuid, Delta>) {
        if !deltas.is_empty() && self.sender.send(deltas).is_err() {
            tracing::warn!("delivery bookkeeping task is gone; seq columns not updated");
        }
    }

    /// Closes the queue and waits (bounded) for the last deltas to be written.
    pub async fn finish(self, timeout: Duration) {
        drop(self.sender);
        if tokio::time::timeout(timeout, self.task).await.is_err() {
            tracing::warn!("delivery bookkeeping not written before shutdown");
        }
    }
}

async fn run(
    pool: PgPool,
    shared: Arc<Shared>,
    config: IngestConfig,
    mut receiver: mpsc::UnboundedReceiver<HashMap<Uuid, Delta>>,
) {
    let mut pending: HashMap<Uuid, Delta> = HashMap::new();
    let mut backoff = config.retry_initial;
    let mut open = true;
    loop {
        if pending.is_empty() {
            match receiver.recv().await {
                Some(deltas) => merge(&mut pending, deltas),
                None => return,
            }
        }
        while let Ok(deltas) = receiver.try_recv() {
            merge(&mut pending, deltas);
        }
        match write(&pool, &pending).await {
            Ok(()) => {
                shared.stats.bookkeeping_updates.fetch_add(1, Ordering::Relaxed);
                pending.clear();
                backoff = config.retry_initial;
            }
            Err(error) => {
                shared.stats.bookkeeping_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, daemons = pending.len(), retry_in_ms = backoff.as_millis() as u64, "could not write delivery bookkeeping");
                // Keep taking deltas while waiting, so the channel stays small.
                let until = Instant::now() + backoff;
                while open {
                    match tokio::time::timeout_at(until, receiver.recv()).await {
                        Ok(Some(deltas)) => merge(&mut pending, deltas),
                        Ok(None) => open = false,
                        Err(_) => break,
                    }
                }
                if !open {
                    tokio::time::sleep_until(until).await;
                }
                backoff = (backoff * 2).min(config.retry_max);
            }
        }
    }
}

fn merge(pending: &mut HashMap<Uuid, Delta>, deltas: HashMap<Uuid, Delta>) {
    for (daemon_id, delta) in deltas {
        pending.entry(daemon_id).or_default().merge(delta);
    }
}

async fn write(pool: &PgPool, pending: &HashMap<Uuid, Delta>) -> Result<(), sqlx::Error> {
    let clamp = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    let ids: Vec<Uuid> = pending.keys().copied().collect();
    let seqs: Vec<i64> = pending.values().map(|d| clamp(d.stored_seq)).collect();
    let gaps: Vec<i64> = pending.values().map(|d| clamp(d.gap_events)).collect();
    // A daemon without a row (deleted meanwhile) is simply not updated.
    sqlx::query(UPDATE_DAEMONS).bind(ids).bind(seqs).bind(gaps).execute(pool).await?;
    Ok(())
}
