//! Limits on what a daemon may send in one `EventBatch`, checked before any
//! work is spent on it (drift, Arrow, ClickHouse). A batch is accepted or
//! rejected whole: a rejected batch stores nothing.
//!
//! Every rejection is counted by reason in process-wide counters (one server
//! process, one set of counters), so the count holds whichever caller ran
//! the check.

use std::sync::atomic::{AtomicU64, Ordering};

use tyr_proto::{Event, EventBatch, EventKind, Severity, Verdict, limits};
use uuid::Uuid;

/// The bounds a batch must respect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Most events in one batch.
    pub max_events: usize,
    /// Longest `resource`, in bytes.
    pub max_resource: usize,
    /// Longest `cmdline`, in bytes.
    pub max_cmdline: usize,
    /// Longest `process_exe`, in bytes.
    pub max_process_exe: usize,
    /// Longest `agent_type`, in bytes.
    pub max_agent_type: usize,
    /// Most metadata entries on one event.
    pub max_metadata_entries: usize,
    /// Longest metadata key, in bytes.
    pub max_metadata_key: usize,
    /// Longest metadata value, in bytes.
    pub max_metadata_value: usize,
}

impl Default for BatchLimits {
    fn default() -> Self {
        // The wire's limits, which tyrd fits every event into.
        Self {
            max_events: limits::MAX_EVENTS_PER_BATCH,
            max_resource: limits::MAX_RESOURCE_BYTES,
            max_cmdline: limits::MAX_CMDLINE_BYTES,
            max_process_exe: limits::MAX_PROCESS_EXE_BYTES,
            max_agent_type: limits::MAX_AGENT_TYPE_BYTES,
            max_metadata_entries: limits::MAX_METADATA_ENTRIES,
            max_metadata_key: limits::MAX_METADATA_KEY_BYTES,
            max_metadata_value: limits::MAX_METADATA_VALUE_BYTES,
        }
    }
}

/// Why a batch was rejected. Messages name the event by its index in the
/// batch and never echo the offending text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchRejection {
    /// More events than `max_events`.
    #[error("batch holds {count} events, more than {max}")]
    TooManyEvents {
        /// Events in the batch.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A string field longer than its limit.
    #[error("event {index}: {field} is {len} bytes, more than {max}")]
    FieldTooLong {
        /// Index of the event in the batch.
        index: usize,
        /// The field.
        field: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// More metadata entries than `max_metadata_entries`.
    #[error("event {index}: {count} metadata entries, more than {max}")]
    TooManyMetadataEntries {
        /// Index of the event in the batch.
        index: usize,
        /// Entries on the event.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// `event_id` is not a UUID.
    #[error("event {index}: event_id is not a UUID")]
    BadEventId {
        /// Index of the event in the batch.
        index: usize,
    },
    /// `discovered_agent_id` is neither empty nor a UUID.
    #[error("event {index}: discovered_agent_id is not a UUID")]
    BadDiscoveredAgentId {
        /// Index of the event in the batch.
        index: usize,
    },
    /// An enum field holds a value the protocol does not define.
    #[error("event {index}: unknown {field} value {value}")]
    UnknownEnumValue {
        /// Index of the event in the batch.
        index: usize,
        /// `kind`, `verdict` or `severity`.
        field: &'static str,
        /// The value sent.
        value: i32,
    },
    /// `seq` is 0 (sequences start at 1).
    #[error("event {index}: seq must be positive")]
    ZeroSeq {
        /// Index of the event in the batch.
        index: usize,
    },
    /// `seq` does not grow strictly within the batch.
    #[error("event {index}: seq {seq} does not follow {previous}")]
    SeqNotIncreasing {
        /// Index of the event in the batch.
        index: usize,
        /// Its seq.
        seq: u64,
        /// The seq of the event before it.
        previous: u64,
    },
}

/// The reasons a batch is rejected, for counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectionReason {
    /// [`BatchRejection::TooManyEvents`].
    TooManyEvents,
    /// [`BatchRejection::FieldTooLong`].
    FieldTooLong,
    /// [`BatchRejection::TooManyMetadataEntries`].
    TooManyMetadataEntries,
    /// [`BatchRejection::BadEventId`].
    BadEventId,
    /// [`BatchRejection::BadDiscoveredAgentId`].
    BadDiscoveredAgentId,
    /// [`BatchRejection::UnknownEnumValue`].
    UnknownEnumValue,
    /// [`BatchRejection::ZeroSeq`].
    ZeroSeq,
    /// [`BatchRejection::SeqNotIncreasing`].
    SeqNotIncreasing,
}

impl RejectionReason {
    /// Every reason, in counter order.
    pub const ALL: [RejectionReason; 8] = [
        RejectionReason::TooManyEvents,
        RejectionReason::FieldTooLong,
        RejectionReason::TooManyMetadataEntries,
        RejectionReason::BadEventId,
        RejectionReason::BadDiscoveredAgentId,
        RejectionReason::UnknownEnumValue,
        RejectionReason::ZeroSeq,
        RejectionReason::SeqNotIncreasing,
    ];

    /// The reason's name in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectionReason::TooManyEvents => "too_many_events",
            RejectionReason::FieldTooLong => "field_too_long",
            RejectionReason::TooManyMetadataEntries => "too_many_metadata_entries",
            RejectionReason::BadEventId => "bad_event_id",
            RejectionReason::BadDiscoveredAgentId => "bad_discovered_agent_id",
            RejectionReason::UnknownEnumValue => "unknown_enum_value",
            RejectionReason::ZeroSeq => "zero_seq",
            RejectionReason::SeqNotIncreasing => "seq_not_increasing",
        }
    }

    /// Batches rejected for this reason since the process started.
    pub fn count(self) -> u64 {
        REJECTED[self as usize].load(Ordering::Relaxed)
    }
}

impl BatchRejection {
    /// The counted reason of this rejection.
    pub fn reason(&self) -> RejectionReason {
        match self {
            BatchRejection::TooManyEvents { .. } => RejectionReason::TooManyEvents,
            BatchRejection::FieldTooLong { .. } => RejectionReason::FieldTooLong,
            BatchRejection::TooManyMetadataEntries { .. } => RejectionReason::TooManyMetadataEntries,
            BatchRejection::BadEventId { .. } => RejectionReason::BadEventId,
            BatchRejection::BadDiscoveredAgentId { .. } => RejectionReason::BadDiscoveredAgentId,
            BatchRejection::UnknownEnumValue { .. } => RejectionReason::UnknownEnumValue,
            BatchRejection::ZeroSeq { .. } => RejectionReason::ZeroSeq,
            BatchRejection::SeqNotIncreasing { .. } => RejectionReason::SeqNotIncreasing,
        }
    }
}

/// Rejected batches by reason, indexed by `RejectionReason as usize`.
static REJECTED: [AtomicU64; RejectionReason::ALL.len()] = [const { AtomicU64::new(0) }; RejectionReason::ALL.len()];

/// Rejected batches by reason since the process started.
pub fn rejection_counts() -> Vec<(RejectionReason, u64)> {
    RejectionReason::ALL.into_iter().map(|reason| (reason, reason.count())).collect()
}

/// Checks `batch` against `limits`; a rejection is counted by reason.
pub fn validate_batch(batch: &EventBatch, limits: &BatchLimits) -> Result<(), BatchRejection> {
    let result = check_batch(batch, limits);
    if let Err(rejection) = &result {
        REJECTED[rejection.reason() as usize].fetch_add(1, Ordering::Relaxed);
    }
    result
}

fn check_batch(batch: &EventBatch, limits: &BatchLimits) -> Result<(), BatchRejection> {
    if batch.events.len() > limits.max_events {
        return Err(BatchRejection::TooManyEvents { count: batch.events.len(), max: limits.max_events });
    }
    let mut previous = 0u64;
    for (index, event) in batch.events.iter().enumerate() {
        check_event(index, event, limits)?;
        if event.seq == 0 {
            return Err(BatchRejection::ZeroSeq { index });
        }
        if index > 0 && event.seq <= previous {
            return Err(BatchRejection::SeqNotIncreasing { index, seq: event.seq, previous });
        }
        previous = event.seq;
    }
    Ok(())
}

fn check_event(index: usize, event: &Event, limits: &BatchLimits) -> Result<(), BatchRejection> {
    let length = |field: &'static str, text: &str, max: usize| {
        if text.len() > max { Err(BatchRejection::FieldTooLong { index, field, len: text.len(), max }) } else { Ok(()) }
    };
    length("resource", &event.resource, limits.max_resource)?;
    length("cmdline", &event.cmdline, limits.max_cmdline)?;
    length("process_exe", &event.process_exe, limits.max_process_exe)?;
    length("agent_type", &event.agent_type, limits.max_agent_type)?;
    // A UUID in any of its text forms is at most 45 bytes.
    length("event_id", &event.event_id, 64)?;
    length("discovered_agent_id", &event.discovered_agent_id, 64)?;
    if event.metadata.len() > limits.max_metadata_entries {
        return Err(BatchRejection::TooManyMetadataEntries {
            index,
            count: event.metadata.len(),
            max: limits.max_metadata_entries,
        });
    }
    for (key, value) in &event.metadata {
        length("metadata key", key, limits.max_metadata_key)?;
        length("metadata value", value, limits.max_metadata_value)?;
    }
    if Uuid::try_parse(&event.event_id).is_err() {
        return Err(BatchRejection::BadEventId { index });
    }
    if !event.discovered_agent_id.is_empty() && Uuid::try_parse(&event.discovered_agent_id).is_err() {
        return Err(BatchRejection::BadDiscoveredAgentId { index });
    }
    let known = |field: &'static str, value: i32, ok: bool| {
        // The Arrow column is an Int8: values past it are unknown too.
        if ok && i8::try_from(value).is_ok() {
            Ok(())
        } else {
            Err(BatchRejection::UnknownEnumValue { index, field, value })
        }
    };
    known("kind", event.kind, EventKind::try_from(event.kind).is_ok())?;
    known("verdict", event.verdict, Verdict::try_from(event.verdict).is_ok())?;
    known("severity", event.severity, Severity::try_from(event.severity).is_ok())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: u64) -> Event {
        Event {
            event_id: Uuid::now_v7().to_string(),
            kind: EventKind::FileRead as i32,
            verdict: Verdict::Allow as i32,
            severity: Severity::Info as i32,
            resource: "/etc/hosts".to_owned(),
            seq,
            ..Event::default()
        }
    }

    fn batch(events: Vec<Event>) -> EventBatch {
        EventBatch { events, batch_id: 1 }
    }

    #[test]
    fn accepts_a_good_batch_and_an_empty_one() {
        let limits = BatchLimits::default();
        assert_eq!(validate_batch(&batch((1..=5).map(event).collect()), &limits), Ok(()));
        assert_eq!(validate_batch(&batch(Vec::new()), &limits), Ok(()));
    }

    #[test]
    fn rejects_each_bad_input_and_counts_it() {
        let limits = BatchLimits { max_events: 3, ..BatchLimits::default() };
        let cases: Vec<(Vec<Event>, RejectionReason)> = vec![
            ((1..=4).map(event).collect(), RejectionReason::TooManyEvents),
            (vec![Event { resource: "x".repeat(4097), ..event(1) }], RejectionReason::FieldTooLong),
            (
                vec![Event { metadata: (0..65).map(|i| (i.to_string(), String::new())).collect(), ..event(1) }],
                RejectionReason::TooManyMetadataEntries,
            ),
            (
                vec![Event { metadata: [("k".repeat(65), String::new())].into(), ..event(1) }],
                RejectionReason::FieldTooLong,
            ),
            (vec![Event { event_id: "nope".to_owned(), ..event(1) }], RejectionReason::BadEventId),
            (
                vec![Event { discovered_agent_id: "cursor".to_owned(), ..event(1) }],
                RejectionReason::BadDiscoveredAgentId,
            ),
            (vec![Event { kind: 99, ..event(1) }], RejectionReason::UnknownEnumValue),
            (vec![Event { verdict: -1, ..event(1) }], RejectionReason::UnknownEnumValue),
            (vec![Event { severity: 6, ..event(1) }], RejectionReason::UnknownEnumValue),
            (vec![event(0)], RejectionReason::ZeroSeq),
            (vec![event(2), event(2)], RejectionReason::SeqNotIncreasing),
            (vec![event(3), event(1)], RejectionReason::SeqNotIncreasing),
        ];
        for (events, reason) in cases {
            let before = reason.count();
            let rejection = validate_batch(&batch(events), &limits).expect_err("must be rejected");
            assert_eq!(rejection.reason(), reason, "{rejection}");
            assert!(reason.count() > before);
        }
    }
}
