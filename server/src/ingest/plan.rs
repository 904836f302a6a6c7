//! What one insert writes: the buffered batches minus the events ClickHouse
//! already holds (by each daemon's `seq`), with the gaps they reveal, built
//! into one Arrow batch. Pure: the writer supplies the stored seqs and
//! commits the new ones only once the insert succeeded.

use std::collections::HashMap;

use arrow::record_batch::RecordBatch;
use uuid::Uuid;

use crate::drift::EvaluatedBatch;
use crate::event_store::arrow_batch::{EventBatchBuilder, RowError, StoredEvent};

/// One insert, planned.
#[derive(Debug)]
pub(super) struct Plan {
    /// The rows to insert (None: every event was a duplicate).
    pub rows: Option<RecordBatch>,
    /// Events in `rows`.
    pub row_count: usize,
    /// Events dropped because their seq is already stored.
    pub duplicates: u64,
    /// Events in `rows` with `drift_detected`.
    pub drift_events: u64,
    /// Events in `rows` the host reported as not enforced.
    pub unenforced_events: u64,
    /// Per daemon: sequence numbers found missing.
    pub gaps: HashMap<Uuid, u64>,
    /// Per daemon: the highest stored seq once `rows` are committed.
    pub stored: HashMap<Uuid, u64>,
}

/// A batch that cannot be stored: its index among the planned batches.
#[derive(Debug)]
pub(super) struct Unstorable {
    /// Index of the batch.
    pub index: usize,
    /// Why.
    pub error: RowError,
}

/// Plans the insert of `batches` (in arrival order) given each daemon's
/// stored seq (`stored`; a daemon missing there has nothing stored).
pub(super) fn plan(batches: &[(Uuid, &EvaluatedBatch)], stored: &HashMap<Uuid, u64>) -> Result<Plan, Unstorable> {
    let capacity = batches.iter().map(|(_, batch)| batch.len()).sum();
    let mut builder = EventBatchBuilder::with_capacity(capacity);
    let mut after: HashMap<Uuid, u64> = HashMap::new();
    let mut gaps: HashMap<Uuid, u64> = HashMap::new();
    let mut duplicates = 0u64;
    let (mut drift_events, mut unenforced_events) = (0u64, 0u64);
    for (index, (daemon_id, batch)) in batches.iter().enumerate() {
        let seq = after.entry(*daemon_id).or_insert_with(|| stored.get(daemon_id).copied().unwrap_or(0));
        for evaluated in &batch.events {
            let event = &evaluated.event;
            if event.seq <= *seq {
                duplicates += 1;
                continue;
            }
            let row = StoredEvent {
                agent_id: *daemon_id,
                event,
                server_verdict: evaluated.outcome.server_verdict,
                drift_detected: evaluated.outcome.drift_detected,
            };
            // The builder may hold part of this batch now: the caller drops
            // the batch and plans again from scratch.
            builder.push(row).map_err(|error| Unstorable { index, error })?;
            drift_events += u64::from(evaluated.outcome.drift_detected);
            unenforced_events += u64::from(evaluated.outcome.unenforced);
            let missing = event.seq - *seq - 1;
            if missing > 0 {
                *gaps.entry(*daemon_id).or_default() += missing;
            }
            *seq = event.seq;
        }
    }
    let row_count = builder.len();
    let rows = (row_count > 0).then(|| builder.finish());
    Ok(Plan { rows, row_count, duplicates, drift_events, unenforced_events, gaps, stored: after })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drift::{DriftOutcome, EvaluatedEvent};
    use tyr_proto::{Event, EventKind, Severity, Verdict};

    fn batch(seqs: impl IntoIterator<Item = u64>) -> EvaluatedBatch {
        let outcome = DriftOutcome {
            server_verdict: Verdict::Allow,
            drift_detected: false,
            unenforced: false,
            not_evaluable: false,
        };
        EvaluatedBatch {
            events: seqs
                .into_iter()
                .map(|seq| EvaluatedEvent {
                    event: Event {
                        event_id: Uuid::now_v7().to_string(),
                        kind: EventKind::Exec as i32,
                        verdict: Verdict::Allow as i32,
                        severity: Severity::Info as i32,
                        seq,
                        ..Event::default()
                    },
                    outcome,
                })
                .collect(),
        }
    }

    #[test]
    fn drops_duplicates_and_counts_gaps_per_daemon() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let stored: HashMap<Uuid, u64> = [(a, 10)].into();
        let (one, two, three) = (batch(5..=12), batch(11..=15), batch([3, 4, 8]));
        let plan = plan(&[(a, &one), (a, &two), (b, &three)], &stored).expect("plans");
        // a: 5..=10 stored before, 11..=12 new, 11..=12 again, 13..=15 new; b: gap 1..=2, 4..=7.
        assert_eq!(plan.row_count, 2 + 3 + 3);
        assert_eq!(plan.duplicates, 6 + 2);
        assert_eq!(plan.gaps.get(&a), None);
        assert_eq!(plan.gaps[&b], 2 + 3);
        assert_eq!(plan.stored[&a], 15);
        assert_eq!(plan.stored[&b], 8);
        assert_eq!(plan.rows.expect("rows").num_rows(), 8);
    }

    #[test]
    fn all_duplicates_means_no_rows() {
        let a = Uuid::now_v7();
        let one = batch(1..=3);
        let plan = plan(&[(a, &one)], &[(a, 3)].into()).expect("plans");
        assert!(plan.rows.is_none());
        assert_eq!(plan.stored[&a], 3);
    }

    #[test]
    fn counts_drift_and_unenforced_among_stored_rows_only() {
        let a = Uuid::now_v7();
        let mut one = batch(1..=4);
        // seq 1 is already stored: its drift is not counted again.
        one.events[0].outcome.drift_detected = true;
        one.events[1].outcome.drift_detected = true;
        one.events[2].outcome.unenforced = true;
        let plan = plan(&[(a, &one)], &[(a, 1)].into()).expect("plans");
        assert_eq!((plan.row_count, plan.drift_events, plan.unenforced_events), (3, 1, 1));
    }

    #[test]
    fn an_unstorable_batch_is_named() {
        let a = Uuid::now_v7();
        let good = batch(1..=2);
        let mut bad = batch(3..=4);
        bad.events[1].event.event_id = "garbage".to_owned();
        let error = plan(&[(a, &good), (a, &bad)], &HashMap::new()).expect_err("unstorable");
        assert_eq!(error.index, 1);
    }
}
