//! Column-wise Arrow batches of events, shaped like the `events` table.
//!
//! The drift pool hands events here; one `RecordBatch` becomes one
//! `INSERT … FORMAT ArrowStream`. Column names and types follow
//! `schema/events.sql`: UUIDs as 16 big-endian bytes, enums as their protocol
//! numbers (Int8, which ClickHouse maps onto the Enum8 values), time as
//! nanoseconds in UTC, metadata as a string map.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, FixedSizeBinaryBuilder, Int8Builder, Int64Builder, MapBuilder, MapFieldNames,
    StringBuilder, TimestampNanosecondBuilder, UInt64Builder,
};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use tyr_proto::{Event, EventKind, Severity, Verdict};
use uuid::Uuid;

/// One event as the server stores it: what tyrd sent plus the server's view.
#[derive(Debug, Clone, Copy)]
pub struct StoredEvent<'a> {
    /// The daemon that sent the event (from its certificate, never from the event).
    pub agent_id: Uuid,
    /// The event as received.
    pub event: &'a Event,
    /// The verdict Cedar reached for this event on the server.
    pub server_verdict: Verdict,
    /// Kernel and server disagreed in the direction that matters.
    pub drift_detected: bool,
}

/// Why an event cannot be stored as it is.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RowError {
    #[error("event_id {0:?} is not a UUID")]
    EventId(String),
    #[error("discovered_agent_id {0:?} is not a UUID")]
    DiscoveredAgentId(String),
    #[error("unknown {field} value {value}")]
    UnknownEnumValue { field: &'static str, value: i32 },
    #[error("arrow column builder rejected the event: {0}")]
    Builder(String),
}

/// Accumulates events into the columns of one Arrow batch.
#[derive(Debug)]
pub struct EventBatchBuilder {
    event_id: FixedSizeBinaryBuilder,
    agent_id: FixedSizeBinaryBuilder,
    discovered_agent_id: FixedSizeBinaryBuilder,
    agent_type: StringBuilder,
    kind: Int8Builder,
    resource: StringBuilder,
    verdict: Int8Builder,
    server_verdict: Int8Builder,
    drift_detected: BooleanBuilder,
    severity: Int8Builder,
    pid: Int64Builder,
    ppid: Int64Builder,
    process_exe: StringBuilder,
    cmdline: StringBuilder,
    timestamp: TimestampNanosecondBuilder,
    seq: UInt64Builder,
    policy_version: Int64Builder,
    metadata: MapBuilder<StringBuilder, StringBuilder>,
    rows: usize,
}

const UUID_LEN: i32 = 16;

impl EventBatchBuilder {
    /// A builder sized for `capacity` events.
    pub fn with_capacity(capacity: usize) -> Self {
        let uuids = || FixedSizeBinaryBuilder::with_capacity(capacity, UUID_LEN);
        let strings = || StringBuilder::with_capacity(capacity, capacity * 16);
        let metadata_names =
            MapFieldNames { entry: "entries".to_owned(), key: "key".to_owned(), value: "value".to_owned() };
        Self {
            event_id: uuids(),
            agent_id: uuids(),
            discovered_agent_id: uuids(),
            agent_type: strings(),
            kind: Int8Builder::with_capacity(capacity),
            resource: strings(),
            verdict: Int8Builder::with_capacity(capacity),
            server_verdict: Int8Builder::with_capacity(capacity),
            drift_detected: BooleanBuilder::with_capacity(capacity),
            severity: Int8Builder::with_capacity(capacity),
            pid: Int64Builder::with_capacity(capacity),
            ppid: Int64Builder::with_capacity(capacity),
            process_exe: strings(),
            cmdline: strings(),
            timestamp: TimestampNanosecondBuilder::with_capacity(capacity).with_timezone("UTC"),
            seq: UInt64Builder::with_capacity(capacity),
            policy_version: Int64Builder::with_capacity(capacity),
            metadata: MapBuilder::new(Some(metadata_names), StringBuilder::new(), StringBuilder::new())
                .with_values_field(Field::new("value", DataType::Utf8, false)),
            rows: 0,
        }
    }

    /// Events added since the last [`finish`](Self::finish).
    pub fn len(&self) -> usize {
        self.rows
    }

    /// True when no event was added since the last [`finish`](Self::finish).
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Adds one event. A rejected event leaves the builder unchanged.
    pub fn push(&mut self, row: StoredEvent<'_>) -> Result<(), RowError> {
        let event = row.event;
        // Validate everything first so that no column is appended to unless
        // every column is.
        let event_id = Uuid::try_parse(&event.event_id).map_err(|_| RowError::EventId(event.event_id.clone()))?;
        let discovered_agent_id = if event.discovered_agent_id.is_empty() {
            Uuid::nil()
        } else {
            Uuid::try_parse(&event.discovered_agent_id)
                .map_err(|_| RowError::DiscoveredAgentId(event.discovered_agent_id.clone()))?
        };
        let kind = enum_code::<EventKind>("kind", event.kind)?;
        let verdict = enum_code::<Verdict>("verdict", event.verdict)?;
        let severity = enum_code::<Severity>("severity", event.severity)?;
        let server_verdict = row.server_verdict as i8;

        self.event_id.append_value(event_id.as_bytes()).map_err(invariant)?;
        self.agent_id.append_value(row.agent_id.as_bytes()).map_err(invariant)?;
        self.discovered_agent_id.append_value(discovered_agent_id.as_bytes()).map_err(invariant)?;
        self.agent_type.append_value(&event.agent_type);
        self.kind.append_value(kind);
        self.resource.append_value(&event.resource);
        self.verdict.append_value(verdict);
        self.server_verdict.append_value(server_verdict);
        self.drift_detected.append_value(row.drift_detected);
        self.severity.append_value(severity);
        self.pid.append_value(event.pid);
        self.ppid.append_value(event.ppid);
        self.process_exe.append_value(&event.process_exe);
        self.cmdline.append_value(&event.cmdline);
        self.timestamp.append_value(event.timestamp_ns);
        self.seq.append_value(event.seq);
        self.policy_version.append_value(event.policy_version);
        for (key, value) in &event.metadata {
            self.metadata.keys().append_value(key);
            self.metadata.values().append_value(value);
        }
        self.metadata.append(true).map_err(invariant)?;
        self.rows += 1;
        Ok(())
    }

    /// Takes the accumulated events as one batch and empties the builder.
    pub fn finish(&mut self) -> RecordBatch {
        let columns: [(&str, ArrayRef); 18] = [
            ("event_id", Arc::new(self.event_id.finish())),
            ("agent_id", Arc::new(self.agent_id.finish())),
            ("discovered_agent_id", Arc::new(self.discovered_agent_id.finish())),
            ("agent_type", Arc::new(self.agent_type.finish())),
            ("kind", Arc::new(self.kind.finish())),
            ("resource", Arc::new(self.resource.finish())),
            ("verdict", Arc::new(self.verdict.finish())),
            ("server_verdict", Arc::new(self.server_verdict.finish())),
            ("drift_detected", Arc::new(self.drift_detected.finish())),
            ("severity", Arc::new(self.severity.finish())),
            ("pid", Arc::new(self.pid.finish())),
            ("ppid", Arc::new(self.ppid.finish())),
            ("process_exe", Arc::new(self.process_exe.finish())),
            ("cmdline", Arc::new(self.cmdline.finish())),
            ("timestamp", Arc::new(self.timestamp.finish())),
            ("seq", Arc::new(self.seq.finish())),
            ("policy_version", Arc::new(self.policy_version.finish())),
            ("metadata", Arc::new(self.metadata.finish())),
        ];
        self.rows = 0;
        let fields: Vec<Field> =
            columns.iter().map(|(name, array)| Field::new(*name, array.data_type().clone(), false)).collect();
        let arrays = columns.into_iter().map(|(_, array)| array).collect();
        RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
            .expect("every column has one value per pushed event")
    }
}

/// The protocol number of an enum value, checked against the enum's cases.
fn enum_code<E: TryFrom<i32>>(field: &'static str, value: i32) -> Result<i8, RowError> {
    let unknown = || RowError::UnknownEnumValue { field, value };
    E::try_from(value).map_err(|_| unknown())?;
    i8::try_from(value).map_err(|_| unknown())
}

/// Appends that cannot fail for well-formed inputs (16-byte UUIDs, matched
/// key/value counts); reported rather than panicking all the same.
fn invariant(error: ArrowError) -> RowError {
    debug_assert!(false, "arrow builder invariant broken: {error}");
    RowError::Builder(error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str) -> Event {
        Event {
            event_id: id.to_owned(),
            kind: EventKind::FileRead as i32,
            verdict: Verdict::Allow as i32,
            severity: Severity::Low as i32,
            resource: "/etc/hosts".to_owned(),
            metadata: [("flags".to_owned(), "O_RDONLY".to_owned())].into(),
            ..Event::default()
        }
    }

    fn stored(event: &Event) -> StoredEvent<'_> {
        StoredEvent { agent_id: Uuid::now_v7(), event, server_verdict: Verdict::Allow, drift_detected: false }
    }

    #[test]
    fn builds_one_row_per_event() {
        let mut builder = EventBatchBuilder::with_capacity(4);
        let events: Vec<Event> = (0..3).map(|_| event(&Uuid::now_v7().to_string())).collect();
        for e in &events {
            builder.push(stored(e)).expect("valid event");
        }
        assert_eq!(builder.len(), 3);
        let batch = builder.finish();
        assert_eq!(batch.num_rows(), 3);
        assert_eq!(batch.num_columns(), 18);
        assert!(builder.is_empty());
        assert_eq!(builder.finish().num_rows(), 0);
    }

    #[test]
    fn rejects_bad_rows_without_partial_appends() {
        let mut builder = EventBatchBuilder::with_capacity(4);
        let bad_id = event("not-a-uuid");
        assert_eq!(builder.push(stored(&bad_id)), Err(RowError::EventId("not-a-uuid".to_owned())));
        let mut bad_kind = event(&Uuid::now_v7().to_string());
        bad_kind.kind = 99;
        assert_eq!(builder.push(stored(&bad_kind)), Err(RowError::UnknownEnumValue { field: "kind", value: 99 }));
        let mut bad_discovered = event(&Uuid::now_v7().to_string());
        bad_discovered.discovered_agent_id = "cursor".to_owned();
        assert!(matches!(builder.push(stored(&bad_discovered)), Err(RowError::DiscoveredAgentId(_))));
        builder.push(stored(&event(&Uuid::now_v7().to_string()))).expect("valid event");
        let batch = builder.finish();
        assert_eq!(batch.num_rows(), 1, "rejected events left no trace");
    }
}
