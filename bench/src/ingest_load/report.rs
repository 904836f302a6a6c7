//! What a load run measured and what the server stored: the report, its
//! exactly-once check, and the counts read back from ClickHouse and
//! PostgreSQL.

use std::time::Duration;

use sqlx::PgPool;
use tyr_server::event_store::EventStore;
use uuid::Uuid;

use super::{LoadError, LoadOptions};

/// What ClickHouse and PostgreSQL hold after the run: the server's counters as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredCounts {
    /// Rows in the events table (merges stopped, so a duplicate shows).
    pub rows: u64,
    /// Distinct (agent_id, seq) pairs.
    pub distinct_agent_seqs: u64,
    /// Distinct event ids.
    pub distinct_event_ids: u64,
    /// Rows the server marked `drift_detected`.
    pub drift: u64,
    /// Rows whose server verdict is DENY.
    pub server_deny: u64,
    /// Rows whose server verdict is ALERT.
    pub server_alert: u64,
    /// Rows the server could not evaluate (server verdict UNSPECIFIED).
    pub not_evaluable: u64,
    /// INSERT statements the server committed (distinct `inserted_at`).
    pub inserts: u64,
    /// Per daemon: (rows, lowest seq, highest seq).
    pub per_daemon: Vec<(Uuid, u64, u64, u64)>,
    /// Sequence numbers the server's bookkeeping counted as missing (PostgreSQL).
    pub gap_events: i64,
}

/// Figures of one run.
#[derive(Debug, Clone)]
pub struct LoadReport {
    /// What ran.
    pub options: LoadOptions,
    /// Events sent in total (clients × events per client).
    pub events: u64,
    /// First send to last BatchAck.
    pub server_elapsed: Duration,
    /// Arrow build and `insert_batches` of the same number of rows.
    pub direct_elapsed: Duration,
    /// INSERT statements of the baseline.
    pub direct_inserts: u64,
    /// What the server stored.
    pub stored: StoredCounts,
    /// The enrolled daemons.
    pub daemons: Vec<Uuid>,
    /// Batches the server rejected during the run (process-wide counters).
    pub rejected_batches: u64,
}

impl LoadReport {
    /// Events per second through the server (gRPC, drift, writer, ClickHouse).
    pub fn server_events_per_s(&self) -> f64 {
        per_second(self.events, self.server_elapsed)
    }

    /// Events per second of the direct baseline.
    pub fn direct_events_per_s(&self) -> f64 {
        per_second(self.events, self.direct_elapsed)
    }

    /// Server throughput as a fraction of the direct baseline.
    pub fn ratio(&self) -> f64 {
        let direct = self.direct_events_per_s();
        if direct > 0.0 { self.server_events_per_s() / direct } else { 0.0 }
    }

    /// Ok when ClickHouse holds every event sent exactly once.
    pub fn check_exactly_once(&self) -> Result<(), LoadError> {
        let stored = &self.stored;
        let per_client = self.options.events_per_client;
        let mut problems = Vec::new();
        if stored.rows != self.events {
            problems.push(format!("{} rows for {} events sent", stored.rows, self.events));
        }
        if stored.distinct_agent_seqs != stored.rows || stored.distinct_event_ids != stored.rows {
            problems.push(format!(
                "{} rows but {} distinct (agent_id, seq) and {} distinct event ids",
                stored.rows, stored.distinct_agent_seqs, stored.distinct_event_ids
            ));
        }
        for daemon in &self.daemons {
            match stored.per_daemon.iter().find(|(id, ..)| id == daemon) {
                Some(&(_, rows, 1, max)) if rows == per_client && max == per_client => {}
                Some(&(_, rows, min, max)) => {
                    problems.push(format!("daemon {daemon}: {rows} rows, seq {min}..={max}, expected 1..={per_client}"))
                }
                None => problems.push(format!("daemon {daemon}: no rows")),
            }
        }
        if stored.per_daemon.len() != self.daemons.len() {
            problems.push(format!("rows of {} daemons, {} enrolled", stored.per_daemon.len(), self.daemons.len()));
        }
        if problems.is_empty() { Ok(()) } else { Err(LoadError::Mismatch(problems.join("; "))) }
    }
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let o = &self.options;
        let s = &self.stored;
        writeln!(
            f,
            "clients {} × events {} in batches of {} = {} events",
            o.clients, o.events_per_client, o.batch, self.events
        )?;
        writeln!(
            f,
            "server (mTLS gRPC → drift → writer → ClickHouse): {:>10.0} events/s ({:.2} s, first send to last ack)",
            self.server_events_per_s(),
            self.server_elapsed.as_secs_f64()
        )?;
        writeln!(
            f,
            "direct (Arrow build + insert_batches, {} inserts): {:>10.0} events/s ({:.2} s)",
            self.direct_inserts,
            self.direct_events_per_s(),
            self.direct_elapsed.as_secs_f64()
        )?;
        writeln!(f, "ratio server/direct: {:.2}", self.ratio())?;
        writeln!(
            f,
            "server counters: inserts {}, rows {}, duplicates {}, drift {}, server DENY {}, ALERT {}, not evaluable {}, \
             gap events {}, rejected batches {}",
            s.inserts,
            s.rows,
            s.rows.saturating_sub(s.distinct_agent_seqs),
            s.drift,
            s.server_deny,
            s.server_alert,
            s.not_evaluable,
            s.gap_events,
            self.rejected_batches
        )
    }
}

pub(super) fn per_second(events: u64, elapsed: Duration) -> f64 {
    let seconds = elapsed.as_secs_f64();
    if seconds > 0.0 { events as f64 / seconds } else { 0.0 }
}

/// Reads what the server stored.
pub(super) async fn stored_counts(store: &EventStore, pool: &PgPool) -> Result<StoredCounts, LoadError> {
    let (rows, distinct_agent_seqs, distinct_event_ids, drift, server_deny, server_alert, not_evaluable, inserts) =
        store
            .client()
            .query(
                "SELECT count(), uniqExact(agent_id, seq), uniqExact(event_id), countIf(drift_detected), \
             countIf(server_verdict = 'DENY'), countIf(server_verdict = 'ALERT'), \
             countIf(server_verdict = 'VERDICT_UNSPECIFIED'), uniqExact(inserted_at) FROM events",
            )
            .fetch_one::<(u64, u64, u64, u64, u64, u64, u64, u64)>()
            .await?;
    let per_daemon = store
        .client()
        .query("SELECT toString(agent_id), count(), min(seq), max(seq) FROM events GROUP BY agent_id ORDER BY agent_id")
        .fetch_all::<(String, u64, u64, u64)>()
        .await?
        .into_iter()
        .filter_map(|(id, rows, min, max)| Uuid::parse_str(&id).ok().map(|id| (id, rows, min, max)))
        .collect();
    let gap_events: i64 =
        sqlx::query_scalar("SELECT COALESCE(SUM(seq_gap_events), 0)::bigint FROM daemons").fetch_one(pool).await?;
    Ok(StoredCounts {
        rows,
        distinct_agent_seqs,
        distinct_event_ids,
        drift,
        server_deny,
        server_alert,
        not_evaluable,
        inserts,
        per_daemon,
        gap_events,
    })
}
