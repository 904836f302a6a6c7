//! The ingest load harness, small: a real server in this process, three
//! clients streaming over mTLS, and ClickHouse holding every event sent
//! exactly once (each (agent_id, seq) once, 1..=M per daemon). Needs the
//! development PostgreSQL and ClickHouse (source /var/lib/tyr-dev/env).

use tyr_bench::ingest_load::{self, LoadOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_load_is_stored_exactly_once() {
    let options = LoadOptions { clients: 3, events_per_client: 3_000, batch: 250 };
    let report = ingest_load::run(options).await.expect("the load runs");
    println!("{report}");
    assert_eq!(report.events, 9_000);
    assert_eq!(report.daemons.len(), 3);
    let stored = &report.stored;
    assert_eq!(stored.rows, 9_000, "every event stored");
    assert_eq!(stored.distinct_agent_seqs, 9_000, "each (agent_id, seq) once");
    assert_eq!(stored.distinct_event_ids, 9_000, "each event id once");
    for daemon in &report.daemons {
        let row = stored.per_daemon.iter().find(|(id, ..)| id == daemon).expect("rows of every daemon");
        assert_eq!((row.1, row.2, row.3), (3_000, 1, 3_000), "daemon {daemon}: rows, first and last seq");
    }
    assert_eq!(stored.gap_events, 0, "no gaps counted");
    assert_eq!(report.rejected_batches, 0);
    // The 100-rule policy did real work: some events drift, some are judged DENY or ALERT.
    assert!(stored.drift > 0 && stored.server_deny > 0 && stored.server_alert > 0, "{stored:?}");
    assert_eq!(stored.not_evaluable, 0, "every synthetic event is evaluable: {stored:?}");
    assert!(stored.inserts >= 1);
    assert!(report.direct_inserts >= 3);
    report.check_exactly_once().expect("exactly once");
}
