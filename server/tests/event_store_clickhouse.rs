//! The events table on a real ClickHouse engine (the dev endpoint, or the
//! server TYR_CLICKHOUSE_URL names), through the official `clickhouse` crate:
//! schema applied from `schema/`, 100,000 events written as Arrow batches,
//! read back as Arrow and as typed RowBinary rows, values compared.

mod support;

use std::collections::BTreeMap;

use arrow::array::{Array, AsArray, FixedSizeBinaryArray, MapArray, RecordBatch, StringArray};
use arrow::datatypes::{Int8Type, Int64Type, TimestampNanosecondType, UInt64Type};
use clickhouse::Row;
use clickhouse_ext_arrow::ArrowQueryExt;
use serde::Deserialize;
use tyr_proto::{Event, EventKind, Severity, Verdict};
use tyr_server::config::EventStoreConfig;
use tyr_server::event_store::arrow_batch::{EventBatchBuilder, StoredEvent};
use tyr_server::event_store::{EventStore, schema};
use uuid::Uuid;

const ROWS: usize = 100_000;
const BATCH: usize = 8_192;

fn config(database: &str, retention_days: u32) -> EventStoreConfig {
    EventStoreConfig {
        url: support::clickhouse_url(),
        database: database.to_owned(),
        user: None,
        password: None,
        retention_days,
    }
}

/// Events with values that exercise every column: all kinds, verdicts and
/// severities, non-ASCII text, empty and multi-entry metadata.
fn events() -> Vec<(Event, Verdict, bool)> {
    let kinds = [EventKind::FileRead, EventKind::FileWrite, EventKind::Exec, EventKind::NetConnect, EventKind::Tls];
    let verdicts = [Verdict::Allow, Verdict::Deny, Verdict::Alert];
    let severities = [Severity::Info, Severity::Low, Severity::Medium, Severity::High, Severity::Critical];
    (0..ROWS)
        .map(|i| {
            let metadata: BTreeMap<String, String> =
                (0..i % 4).map(|k| (format!("key{k}"), format!("välue {i}/{k}"))).collect();
            let event = Event {
                event_id: Uuid::now_v7().to_string(),
                agent_id: String::new(),
                discovered_agent_id: if i % 3 == 0 { String::new() } else { Uuid::new_v4().to_string() },
                kind: kinds[i % kinds.len()] as i32,
                resource: format!("/srv/data/файл-{i}.txt"),
                verdict: verdicts[i % verdicts.len()] as i32,
                severity: severities[i % severities.len()] as i32,
                pid: 1 + (i as i64 * 7919) % 4_194_304,
                process_exe: format!("/usr/bin/tool{}", i % 13),
                cmdline: format!("tool{} --index {i} 'quoted arg'", i % 13),
                timestamp_ns: 1_790_000_000_123_456_789 + i as i64 * 1_001,
                metadata,
                seq: i as u64 + 1,
                ppid: (i % 1000) as i64,
                agent_type: ["cursor", "claude-code", "unknown"][i % 3].to_owned(),
                policy_version: (i % 5) as i64,
            };
            (event, verdicts[(i + 1) % verdicts.len()], i % 17 == 0)
        })
        .collect()
}

#[derive(Debug, Row, Deserialize)]
struct EventRow {
    #[serde(with = "clickhouse::serde::uuid")]
    event_id: Uuid,
    #[serde(with = "clickhouse::serde::uuid")]
    agent_id: Uuid,
    #[serde(with = "clickhouse::serde::uuid")]
    discovered_agent_id: Uuid,
    agent_type: String,
    kind: i8,
    resource: String,
    verdict: i8,
    server_verdict: i8,
    drift_detected: bool,
    severity: i8,
    pid: i64,
    ppid: i64,
    process_exe: String,
    cmdline: String,
    timestamp: i64,
    seq: u64,
    policy_version: i64,
    metadata: BTreeMap<String, String>,
}

const SELECT_ALL: &str = "SELECT event_id, agent_id, discovered_agent_id, agent_type, kind, resource, \
     verdict, server_verdict, drift_detected, severity, pid, ppid, process_exe, cmdline, timestamp, seq, \
     policy_version, metadata FROM events ORDER BY seq";

fn discovered(event: &Event) -> Uuid {
    if event.discovered_agent_id.is_empty() { Uuid::nil() } else { event.discovered_agent_id.parse().expect("uuid") }
}

fn check_row(row: &EventRow, agent_id: Uuid, (event, server_verdict, drift): &(Event, Verdict, bool)) {
    assert_eq!(row.event_id.to_string(), event.event_id);
    assert_eq!(row.agent_id, agent_id);
    assert_eq!(row.discovered_agent_id, discovered(event));
    assert_eq!(row.agent_type, event.agent_type);
    assert_eq!(i32::from(row.kind), event.kind);
    assert_eq!(row.resource, event.resource);
    assert_eq!(i32::from(row.verdict), event.verdict);
    assert_eq!(row.server_verdict, *server_verdict as i8);
    assert_eq!(row.drift_detected, *drift);
    assert_eq!(i32::from(row.severity), event.severity);
    assert_eq!(row.pid, event.pid);
    assert_eq!(row.ppid, event.ppid);
    assert_eq!(row.process_exe, event.process_exe);
    assert_eq!(row.cmdline, event.cmdline);
    assert_eq!(row.timestamp, event.timestamp_ns);
    assert_eq!(row.seq, event.seq);
    assert_eq!(row.policy_version, event.policy_version);
    assert_eq!(row.metadata, event.metadata);
}

fn check_arrow(batches: &[RecordBatch], agent_id: Uuid, expected: &[(Event, Verdict, bool)]) {
    let mut next = expected.iter();
    for batch in batches {
        let column = |name: &str| batch.column_by_name(name).unwrap_or_else(|| panic!("column {name}"));
        let uuid_at = |name: &str, i: usize| {
            let array: &FixedSizeBinaryArray = column(name).as_fixed_size_binary();
            Uuid::from_slice(array.value(i)).expect("16 bytes")
        };
        let string_at = |name: &str, i: usize| -> String {
            let array: &StringArray = column(name).as_string();
            array.value(i).to_owned()
        };
        let i8_at = |name: &str, i: usize| column(name).as_primitive::<Int8Type>().value(i);
        let i64_at = |name: &str, i: usize| column(name).as_primitive::<Int64Type>().value(i);
        let metadata: &MapArray = column("metadata").as_map();
        for i in 0..batch.num_rows() {
            let (event, server_verdict, drift) = next.next().expect("no more rows than inserted");
            assert_eq!(uuid_at("event_id", i).to_string(), event.event_id);
            assert_eq!(uuid_at("agent_id", i), agent_id);
            assert_eq!(uuid_at("discovered_agent_id", i), discovered(event));
            assert_eq!(string_at("agent_type", i), event.agent_type);
            assert_eq!(i32::from(i8_at("kind", i)), event.kind);
            assert_eq!(string_at("resource", i), event.resource);
            assert_eq!(i32::from(i8_at("verdict", i)), event.verdict);
            assert_eq!(i8_at("server_verdict", i), *server_verdict as i8);
            assert_eq!(column("drift_detected").as_boolean().value(i), *drift);
            assert_eq!(i32::from(i8_at("severity", i)), event.severity);
            assert_eq!(i64_at("pid", i), event.pid);
            assert_eq!(i64_at("ppid", i), event.ppid);
            assert_eq!(string_at("process_exe", i), event.process_exe);
            assert_eq!(string_at("cmdline", i), event.cmdline);
            assert_eq!(column("timestamp").as_primitive::<TimestampNanosecondType>().value(i), event.timestamp_ns);
            assert_eq!(column("seq").as_primitive::<UInt64Type>().value(i), event.seq);
            assert_eq!(i64_at("policy_version", i), event.policy_version);
            let entries = metadata.value(i);
            let keys: &StringArray = entries.column(0).as_string();
            let values: &StringArray = entries.column(1).as_string();
            let map: BTreeMap<String, String> =
                (0..entries.len()).map(|j| (keys.value(j).to_owned(), values.value(j).to_owned())).collect();
            assert_eq!(map, event.metadata);
        }
    }
    assert!(next.next().is_none(), "every inserted row came back");
}

#[tokio::test]
async fn hundred_thousand_events_round_trip_through_arrow_and_rowbinary() {
    let database = support::scratch_name("tyr_test");
    let store = EventStore::new(&config(&database, 30)).expect("config");
    store.server_version().await.expect("ClickHouse must answer (deploy/dev/setup.sh starts the dev endpoint)");

    // Schema from schema/events.sql: created once, then left alone, then
    // its retention follows the configuration.
    let created = schema::apply(&store, 30).await.expect("apply schema");
    assert!(created.created && !created.kinds_extended && !created.retention_changed, "{created:?}");
    // A table created before EXIT and FORK existed gets the new kinds.
    store.client().query("DROP TABLE events").execute().await.expect("drop");
    let old_kinds = "Enum8('EVENT_KIND_UNSPECIFIED' = 0, 'FILE_READ' = 1, 'FILE_WRITE' = 2, \
                     'EXEC' = 3, 'NET_CONNECT' = 4, 'TLS' = 5)";
    let old_ddl = schema::events_ddl(30).replace(schema::KIND_COLUMN_TYPE, old_kinds);
    assert_ne!(old_ddl, schema::events_ddl(30));
    store.client().query(&old_ddl).execute().await.expect("old table");
    let extended = schema::apply(&store, 30).await.expect("apply schema");
    assert!(!extended.created && extended.kinds_extended && !extended.retention_changed, "{extended:?}");
    let again = schema::apply(&store, 30).await.expect("apply schema again");
    assert!(!again.created && !again.retention_changed && !again.kinds_extended, "{again:?}");
    let longer = schema::apply(&store, 400).await.expect("change retention");
    assert!(!longer.created && longer.retention_changed && !longer.kinds_extended, "{longer:?}");
    let engine: String = store
        .client()
        .query("SELECT engine_full FROM system.tables WHERE database = {db:String} AND name = 'events'")
        .param("db", database.as_str())
        .fetch_one()
        .await
        .expect("engine");
    assert!(engine.contains("toIntervalDay(400)"), "{engine}");

    // Write 100,000 events as Arrow batches in one INSERT.
    let agent_id = Uuid::now_v7();
    let expected = events();
    let mut builder = EventBatchBuilder::with_capacity(BATCH);
    let mut batches = Vec::new();
    for (event, server_verdict, drift_detected) in &expected {
        builder
            .push(StoredEvent { agent_id, event, server_verdict: *server_verdict, drift_detected: *drift_detected })
            .expect("valid event");
        if builder.len() == BATCH {
            batches.push(builder.finish());
        }
    }
    batches.push(builder.finish());
    assert!(batches.len() > 10, "written as many batches");
    store.insert_batches(&batches).await.expect("insert_arrow");
    assert_eq!(schema::event_count(&store).await.expect("count"), ROWS as u64);

    // Read back as Arrow.
    let fetched =
        store.client().query(SELECT_ALL).fetch_arrow().expect("fetch_arrow").collect().await.expect("arrow batches");
    check_arrow(&fetched, agent_id, &expected);

    // Read back as typed rows (RowBinaryWithNamesAndTypes, type-checked).
    let rows: Vec<EventRow> = store.client().query(SELECT_ALL).fetch_all().await.expect("typed fetch");
    assert_eq!(rows.len(), ROWS);
    for (row, want) in rows.iter().zip(&expected) {
        check_row(row, agent_id, want);
    }

    // The timestamp_ns alias serves the wire field's name.
    let first_ns: i64 =
        store.client().query("SELECT timestamp_ns FROM events WHERE seq = 1").fetch_one().await.expect("alias");
    assert_eq!(first_ns, expected[0].0.timestamp_ns);

    store.client().query(&format!("DROP DATABASE {database}")).execute().await.expect("drop scratch database");
}

#[tokio::test]
async fn bad_queries_carry_clickhouse_error_codes() {
    let store = EventStore::new(&config("default", 30)).expect("config");
    let cases = [
        ("SELEC 1", "Code: 62"),
        ("SELECT * FROM no_such_table_here", "Code: 60"),
        ("SELECT throwIf(1, 'boom')", "Code: 395"),
    ];
    for (sql, code) in cases {
        let error = store.client().query(sql).fetch_all::<u8>().await.expect_err("bad query must fail");
        match &error {
            clickhouse::error::Error::BadResponse(message) => {
                assert!(message.contains(code), "{sql}: {message}");
                assert!(message.contains("DB::Exception"), "{sql}: {message}");
            }
            other => panic!("{sql}: expected a server error, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn invalid_database_names_are_refused_before_any_request() {
    let error = EventStore::new(&config("tyr`; DROP TABLE x", 30)).expect_err("refused");
    assert!(error.to_string().contains("invalid ClickHouse database name"));
}
