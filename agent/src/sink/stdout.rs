//! `tyrd observe`'s output: one JSON object per event per line, the Event
//! message's field names, with the host's sequence number stamped from the
//! persistent [`SeqAllocator`].

use std::collections::BTreeMap;
use std::io::{BufWriter, Stdout, Write};

use serde::Serialize;
use tyr_proto::{Event, EventKind, Severity, Verdict};

use super::{Sink, SinkError};
use crate::pipeline::seq::SeqAllocator;

/// An event as one JSON line: the Event message's field names.
#[derive(Serialize)]
struct JsonEvent<'a> {
    event_id: &'a str,
    seq: u64,
    kind: &'a str,
    resource: &'a str,
    verdict: &'a str,
    severity: &'a str,
    pid: i64,
    ppid: i64,
    process_exe: &'a str,
    cmdline: &'a str,
    timestamp_ns: i64,
    agent_type: &'a str,
    discovered_agent_id: &'a str,
    policy_version: i64,
    metadata: BTreeMap<&'a str, &'a str>,
}

fn enum_name<E: TryFrom<i32>>(value: i32, name: impl Fn(&E) -> &'static str) -> &'static str {
    E::try_from(value).map(|e| name(&e)).unwrap_or("UNKNOWN")
}

/// Writes `event` as one JSON line.
pub fn write_event(out: &mut impl Write, event: &Event) -> std::io::Result<()> {
    let line = JsonEvent {
        event_id: &event.event_id,
        seq: event.seq,
        kind: enum_name(event.kind, EventKind::as_str_name),
        resource: &event.resource,
        verdict: enum_name(event.verdict, Verdict::as_str_name),
        severity: enum_name(event.severity, Severity::as_str_name),
        pid: event.pid,
        ppid: event.ppid,
        process_exe: &event.process_exe,
        cmdline: &event.cmdline,
        timestamp_ns: event.timestamp_ns,
        agent_type: &event.agent_type,
        discovered_agent_id: &event.discovered_agent_id,
        policy_version: event.policy_version,
        metadata: event.metadata.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect(),
    };
    serde_json::to_writer(&mut *out, &line)?;
    out.write_all(b"\n")
}

/// JSON lines to any writer, flushed after every batch.
#[derive(Debug)]
pub struct JsonLinesSink<W: Write + Send> {
    out: BufWriter<W>,
    seq: SeqAllocator,
}

/// JSON lines to standard output.
pub type StdoutSink = JsonLinesSink<Stdout>;

impl StdoutSink {
    /// A sink writing to this process's standard output.
    pub fn stdout(seq: SeqAllocator) -> Self {
        JsonLinesSink::new(std::io::stdout(), seq)
    }
}

impl<W: Write + Send> JsonLinesSink<W> {
    /// A sink writing to `out`, numbering events from `seq`.
    pub fn new(out: W, seq: SeqAllocator) -> Self {
        Self { out: BufWriter::with_capacity(1 << 16, out), seq }
    }

    /// Sequence reservations that could not be written (numbering went on in memory).
    pub fn seq_persist_failures(&self) -> u64 {
        self.seq.persist_failures
    }

    /// The writer, once everything is flushed.
    pub fn into_inner(self) -> Result<W, SinkError> {
        self.out.into_inner().map_err(|error| SinkError::Closed(error.into_error()))
    }
}

impl<W: Write + Send> Sink for JsonLinesSink<W> {
    fn deliver(&mut self, mut batch: Vec<Event>) -> Result<(), SinkError> {
        for event in &mut batch {
            event.seq = self.seq.allocate();
        }
        batch
            .iter()
            .try_for_each(|event| write_event(&mut self.out, event))
            .and_then(|()| self.out.flush())
            .map_err(SinkError::Closed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_contiguous_numbers_and_writes_lines() {
        let mut sink = JsonLinesSink::new(Vec::new(), SeqAllocator::in_memory());
        let event =
            |resource: &str| Event { resource: resource.to_owned(), kind: EventKind::Exec as i32, ..Event::default() };
        sink.deliver(vec![event("a"), event("b")]).expect("deliver");
        sink.deliver(vec![event("c")]).expect("deliver");
        let text = String::from_utf8(sink.into_inner().expect("flushed")).expect("utf-8");
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).expect("json line")).collect();
        let seqs: Vec<u64> = lines.iter().map(|l| l["seq"].as_u64().expect("seq")).collect();
        assert_eq!(seqs, [1, 2, 3]);
        assert_eq!(lines[2]["resource"], "c");
        assert_eq!(lines[0]["kind"], "EXEC");
        assert_eq!(lines[0]["verdict"], "VERDICT_UNSPECIFIED");
    }
}
