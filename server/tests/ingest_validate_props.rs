//! `validate_batch` against arbitrary input: it never panics, and whatever
//! it accepts the Arrow builder stores whole (no half batch can reach
//! ClickHouse); whatever it rejects is counted.

use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use tyr_proto::{Event, EventBatch, Verdict};
use tyr_server::event_store::arrow_batch::{EventBatchBuilder, StoredEvent};
use tyr_server::ingest::{BatchLimits, validate_batch};
use uuid::Uuid;

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[a-z/._-]{1,12}",
        any::<String>(),
        (0usize..5000).prop_map(|n| "x".repeat(n)),
        Just(Uuid::now_v7().to_string()),
        Just(Uuid::now_v7().simple().to_string()),
        Just(format!("{{{}}}", Uuid::now_v7())),
    ]
}

fn event() -> impl Strategy<Value = Event> {
    (
        (text(), text(), text(), -2i32..9, -2i32..5, -2i32..7),
        (text(), text(), any::<i64>(), any::<u64>(), text()),
        (btree_map(text(), text(), 0..70), 0u64..40, any::<bool>()),
    )
        .prop_map(|(ids, rest, (metadata, seq, small_seq))| {
            let (event_id, discovered_agent_id, agent_type, kind, verdict, severity) = ids;
            let (resource, cmdline, pid, big_seq, process_exe) = rest;
            Event {
                event_id,
                discovered_agent_id,
                agent_type,
                kind,
                verdict,
                severity,
                resource,
                cmdline,
                pid,
                process_exe,
                metadata,
                seq: if small_seq { seq } else { big_seq },
                ..Event::default()
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn validation_never_panics_and_accepted_batches_are_storable_whole(
        mut events in vec(event(), 0..12),
        sorted in any::<bool>(),
        mostly_valid in any::<bool>(),
    ) {
        if mostly_valid {
            // Valid identifiers and enums, so the length limits decide.
            for e in &mut events {
                e.event_id = Uuid::now_v7().to_string();
                e.discovered_agent_id.clear();
                e.kind = e.kind.clamp(0, 7);
                e.verdict = e.verdict.clamp(0, 3);
                e.severity = e.severity.clamp(0, 5);
            }
        }
        if sorted {
            // Give the other checks a chance to be reached.
            for (i, e) in events.iter_mut().enumerate() {
                e.seq = i as u64 + 1;
            }
        }
        let batch = EventBatch { events, batch_id: 1 };
        let limits = BatchLimits { max_events: 8, ..BatchLimits::default() };
        match validate_batch(&batch, &limits) {
            Ok(()) => {
                let mut builder = EventBatchBuilder::with_capacity(batch.events.len());
                let daemon = Uuid::now_v7();
                for event in &batch.events {
                    let row = StoredEvent { agent_id: daemon, event, server_verdict: Verdict::Allow, drift_detected: false };
                    prop_assert!(builder.push(row).is_ok(), "an accepted event must be storable");
                }
                prop_assert_eq!(builder.finish().num_rows(), batch.events.len());
            }
            Err(rejection) => {
                prop_assert!(rejection.reason().count() > 0);
                prop_assert!(rejection.to_string().len() < 200, "messages stay short");
            }
        }
    }
}
