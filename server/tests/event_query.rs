//! Event queries against a real ClickHouse engine (the dev endpoint, or the
//! server TYR_CLICKHOUSE_URL names): 1,000,000 generated events written
//! with the event store's Arrow insert (plus replayed duplicates), then every
//! query function compared with SQL written independently here (exact
//! `uniqExact` counts instead of FINAL, aggregates folded in Rust), hostile
//! filter values, and a live tail.

mod support;

mod event_query_support;

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use event_query_support::aggregates::{check_analytics, check_drift};
use event_query_support::{
    AGENTS, CHUNK, EVENTS, Fleet, HOSTILE_STORED, HOUR_NS, REPLAYED, SPAN_NS, all_pages, direct_count, direct_ids,
    insert_one, store_for, ts,
};
use futures_util::StreamExt;
use tokio::sync::Mutex;
use tyr_proto::{EventKind, Verdict};
use tyr_server::event_query::{self, EventFilter, QueryError};
use tyr_server::event_store::{EventStore, schema};
use uuid::Uuid;

/// ClickHouse's dev endpoint runs one statement at a time: the tail's
/// latency is measured without the big test's inserts in the way.
static SERIAL: LazyLock<Mutex<()>> = LazyLock::new(|| Mutex::new(()));

/// One filter combination and the same selection written as SQL by hand.
struct Case {
    name: &'static str,
    filter: EventFilter,
    merged: Vec<Uuid>,
    cond: String,
    /// Page through everything (else: count and the first pages only).
    all_pages: bool,
}

fn cases(fleet: &Fleet, default_from_ns: i64) -> Vec<Case> {
    let now = fleet.now_ns;
    let (d3, d7) = (fleet.daemons[3], fleet.daemons[7]);
    let (a1, a2, a3) = (fleet.agents[1], fleet.agents[2], fleet.agents[3]);
    let range = |from: i64, to: i64| {
        (
            Some(ts(from)),
            Some(ts(to)),
            format!("timestamp >= fromUnixTimestamp64Nano({from}) AND timestamp < fromUnixTimestamp64Nano({to})"),
        )
    };
    let default_range = format!("timestamp >= fromUnixTimestamp64Nano({default_from_ns})");
    let (f2, t2, r2) = range(now - 5 * HOUR_NS, now - 3 * HOUR_NS);
    let (f1, t1, r1) = range(now - 2 * HOUR_NS, now - HOUR_NS);
    let (f30, t30, r30) = range(now - SPAN_NS - HOUR_NS, now + HOUR_NS);
    vec![
        Case {
            name: "default range",
            filter: EventFilter::default(),
            merged: vec![],
            cond: default_range.clone(),
            all_pages: false,
        },
        Case {
            name: "daemon",
            filter: EventFilter { daemon_id: Some(d3), ..EventFilter::default() },
            merged: vec![],
            cond: format!("{default_range} AND agent_id = '{d3}'"),
            all_pages: true,
        },
        Case {
            name: "daemon + kind",
            filter: EventFilter { daemon_id: Some(d7), kind: Some("FILE_READ".into()), ..EventFilter::default() },
            merged: vec![],
            cond: format!("{default_range} AND agent_id = '{d7}' AND kind = 'FILE_READ'"),
            all_pages: true,
        },
        Case {
            name: "merged discovered agents + verdict",
            filter: EventFilter {
                discovered_agent_id: Some(a1),
                verdict: Some("deny".into()),
                ..EventFilter::default()
            },
            merged: vec![a2, a3],
            cond: format!("{default_range} AND discovered_agent_id IN ('{a1}', '{a2}', '{a3}') AND verdict = 'DENY'"),
            all_pages: true,
        },
        Case {
            name: "agent type + drift, whole span",
            filter: EventFilter {
                from: f30.clone(),
                to: t30.clone(),
                agent_type: Some("cursor".into()),
                drift: Some(true),
                ..EventFilter::default()
            },
            merged: vec![],
            cond: format!("{r30} AND agent_type = 'cursor' AND drift_detected"),
            all_pages: true,
        },
        Case {
            name: "kind TLS + resource substring",
            filter: EventFilter { kind: Some("TLS".into()), resource: Some("openai".into()), ..EventFilter::default() },
            merged: vec![],
            cond: format!("{default_range} AND kind = 'TLS' AND resource LIKE '%openai%'"),
            all_pages: true,
        },
        Case {
            name: "resource prefix, 2 h",
            filter: EventFilter {
                from: f2.clone(),
                to: t2.clone(),
                resource_prefix: Some("/home/u7/".into()),
                ..EventFilter::default()
            },
            merged: vec![],
            cond: format!("{r2} AND resource LIKE '/home/u7/%'"),
            all_pages: true,
        },
        Case {
            name: "pid",
            filter: EventFilter { pid: Some(4242), ..EventFilter::default() },
            merged: vec![],
            cond: format!("{default_range} AND pid = 4242"),
            all_pages: true,
        },
        Case {
            name: "server verdict, 2 h",
            filter: EventFilter { from: f2, to: t2, server_verdict: Some("ALERT".into()), ..EventFilter::default() },
            merged: vec![],
            cond: format!("{r2} AND server_verdict = 'ALERT'"),
            all_pages: true,
        },
        Case {
            name: "no drift + allow, 1 h",
            filter: EventFilter {
                from: f1.clone(),
                to: t1.clone(),
                drift: Some(false),
                verdict: Some("ALLOW".into()),
                ..EventFilter::default()
            },
            merged: vec![],
            cond: format!("{r1} AND NOT drift_detected AND verdict = 'ALLOW'"),
            all_pages: true,
        },
        Case {
            name: "kind only",
            filter: EventFilter { kind: Some("exec".into()), ..EventFilter::default() },
            merged: vec![],
            cond: format!("{default_range} AND kind = 'EXEC'"),
            all_pages: false,
        },
        Case {
            name: "everything",
            filter: EventFilter {
                from: f30,
                to: t30,
                daemon_id: Some(d3),
                discovered_agent_id: Some(a1),
                agent_type: Some("claude-code".into()),
                kind: Some("FILE_WRITE".into()),
                verdict: Some("ALLOW".into()),
                server_verdict: Some("ALLOW".into()),
                drift: Some(false),
                resource: Some("file_".into()),
                resource_prefix: Some("/home/u3/".into()),
                pid: None,
            },
            merged: fleet.agents[..AGENTS].iter().step_by(5).skip(1).copied().take(30).collect(),
            cond: format!(
                "{r30} AND agent_id = '{d3}' AND discovered_agent_id IN ({}) AND agent_type = 'claude-code' \
                 AND kind = 'FILE_WRITE' AND verdict = 'ALLOW' AND server_verdict = 'ALLOW' AND NOT drift_detected \
                 AND match(resource, 'file_') AND resource LIKE '/home/u3/%'",
                std::iter::once(a1)
                    .chain(fleet.agents[..AGENTS].iter().step_by(5).skip(1).copied().take(30))
                    .map(|a| format!("'{a}'"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            all_pages: true,
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_events_queried_exactly() {
    let _serial = SERIAL.lock().await;
    let database = support::scratch_name("tyr_test_eq");
    let store = store_for(&database);
    schema::apply(&store, 30).await.expect("ClickHouse must answer (deploy/dev/setup.sh starts the dev endpoint)");

    let fleet = Fleet::new();
    let started = Instant::now();
    for start in (0..EVENTS).step_by(CHUNK) {
        fleet.insert(&store, start..(start + CHUNK).min(EVENTS)).await;
    }
    fleet.insert(&store, 0..REPLAYED).await;
    eprintln!("inserted {} rows in {:?}", EVENTS + REPLAYED, started.elapsed());
    assert_eq!(schema::event_count(&store).await.expect("count"), (EVENTS + REPLAYED) as u64, "replays stored twice");
    assert_eq!(direct_count(&store, "1").await, EVENTS as u64);

    check_filters(&store, &fleet).await;
    check_hostile_values(&store, &fleet).await;
    check_analytics(&store, &fleet).await;
    check_drift(&store, &fleet).await;

    store.client().query(&format!("DROP DATABASE {database}")).execute().await.expect("drop scratch database");
}

async fn check_filters(store: &EventStore, fleet: &Fleet) {
    let default_from = EventFilter::default().resolve(Vec::new()).expect("valid").from_ns();
    for case in cases(fleet, default_from) {
        let started = Instant::now();
        let mut resolved = case.filter.resolve(case.merged.clone()).expect(case.name);
        if case.filter.from.is_none() {
            // The default start moves with the clock: pin it to the one the SQL above uses.
            let pinned = EventFilter { from: Some(ts(default_from)), ..case.filter.clone() };
            resolved = pinned.resolve(case.merged.clone()).expect(case.name);
        }
        let want = direct_count(store, &case.cond).await;
        let got = event_query::count(store, &resolved).await.expect("count");
        assert_eq!(got, want, "{}: count", case.name);
        if case.all_pages {
            assert!(want < 30_000, "{}: {want} rows is too many to page through here", case.name);
            let rows = all_pages(store, &resolved, 997).await;
            let ids: Vec<Uuid> = rows.iter().map(|r| r.event_id).collect();
            assert_eq!(ids, direct_ids(store, &case.cond, want + 1).await, "{}: pages", case.name);
        } else {
            assert!(want > 100_000, "{}: a broad case", case.name);
            let mut ids = Vec::new();
            let mut cursor = None;
            for _ in 0..3 {
                let page = event_query::search(store, &resolved, cursor.as_deref(), 1_000).await.expect("search");
                ids.extend(page.items.iter().map(|r| r.event_id));
                cursor = page.next_cursor;
            }
            assert_eq!(ids, direct_ids(store, &case.cond, 3_000).await, "{}: first pages", case.name);
        }
        eprintln!("{}: {want} rows checked in {:?}", case.name, started.elapsed());
    }

    // Merged ids are ORed: the survivor's query covers each id's events.
    let (a, b, c) = (fleet.agents[10], fleet.agents[11], fleet.agents[12]);
    let one = |id: Uuid| EventFilter { discovered_agent_id: Some(id), ..EventFilter::default() };
    let mut separate = 0;
    for id in [a, b, c] {
        separate += event_query::count(store, &one(id).resolve(Vec::new()).expect("valid")).await.expect("count");
    }
    let merged = event_query::count(store, &one(a).resolve(vec![b, c]).expect("valid")).await.expect("count");
    assert_eq!(merged, separate, "merged ids are ORed");
    assert!(merged > 0);

    // A page of the full row: values as stored.
    let hostile = EventFilter {
        resource: Some(HOSTILE_STORED.to_owned()),
        from: Some(ts(fleet.now_ns - SPAN_NS - HOUR_NS)),
        ..EventFilter::default()
    };
    let page =
        event_query::search(store, &hostile.resolve(Vec::new()).expect("valid"), None, 10).await.expect("search");
    assert_eq!(page.items.len(), 1, "the stored hostile resource is found as a value");
    let (daemon, event, server_verdict, drift) = fleet.event(EVENTS - 1);
    let row = &page.items[0];
    assert_eq!(row.event_id.to_string(), event.event_id);
    assert_eq!(row.daemon_id, daemon);
    assert_eq!(row.resource, HOSTILE_STORED);
    assert_eq!(row.discovered_agent_id.map(|u| u.to_string()).unwrap_or_default(), event.discovered_agent_id);
    assert_eq!(row.kind, EventKind::try_from(event.kind).expect("kind").as_str_name());
    assert_eq!(row.verdict, Verdict::try_from(event.verdict).expect("verdict").as_str_name());
    assert_eq!(row.server_verdict, server_verdict.as_str_name());
    assert_eq!(row.drift, drift);
    assert_eq!(row.severity, "LOW");
    assert_eq!(row.timestamp_ns, event.timestamp_ns);
    assert_eq!(row.timestamp, ts(event.timestamp_ns));
    assert_eq!((row.pid, row.ppid, row.seq, row.policy_version), (event.pid, event.ppid, event.seq, 1));
    assert_eq!(row.metadata, event.metadata);
    assert_eq!(row.cmdline, event.cmdline);
}

async fn check_hostile_values(store: &EventStore, fleet: &Fleet) {
    let before = schema::event_count(store).await.expect("count");
    let hostile = [
        "'".to_owned(),
        "\"".to_owned(),
        "'; DROP TABLE events; --".to_owned(),
        "\\".to_owned(),
        "\\'".to_owned(),
        "\0".to_owned(),
        "x\0' OR 1=1 --".to_owned(),
        "{f_type:String}".to_owned(),
        "%%".to_owned(),
        "\t\n\r".to_owned(),
        "ファイル🙂".to_owned(),
        "é".repeat(5_120),
        "a".repeat(10_240),
        // A prefix of the stored hostile resource, NUL included.
        "/tmp/'; DROP TABLE events; --\\\"q\"\u{0}".to_owned(),
    ];
    assert!(HOSTILE_STORED.starts_with(hostile[hostile.len() - 1].as_str()));
    let from = Some(ts(fleet.now_ns - SPAN_NS - HOUR_NS));
    for value in &hostile {
        for filter in [
            EventFilter { agent_type: Some(value.clone()), ..EventFilter::default() },
            EventFilter { resource: Some(value.clone()), ..EventFilter::default() },
            EventFilter { resource_prefix: Some(value.clone()), ..EventFilter::default() },
        ] {
            // Only the one event stored with a hostile resource may match, as a value would.
            let want = u64::from(
                filter.resource.as_deref().is_some_and(|v| HOSTILE_STORED.contains(v))
                    || filter.resource_prefix.as_deref().is_some_and(|v| HOSTILE_STORED.starts_with(v)),
            );
            let resolved = EventFilter { from: from.clone(), ..filter }.resolve(Vec::new()).expect("a value is valid");
            assert_eq!(event_query::count(store, &resolved).await.expect("count"), want, "{value:?}");
            let page = event_query::search(store, &resolved, None, 10).await.expect("search");
            assert_eq!(page.items.len() as u64, want, "{value:?}");
            assert!(page.items.iter().all(|row| row.resource == HOSTILE_STORED), "{value:?}");
            assert!(page.next_cursor.is_none(), "{value:?}");
        }
    }
    // Enum names, times and cursors are checked, not passed on.
    for filter in [
        EventFilter { kind: Some("FILE_READ'; DROP TABLE events; --".into()), ..EventFilter::default() },
        EventFilter { verdict: Some("ALLOW\0".into()), ..EventFilter::default() },
        EventFilter { server_verdict: Some("x".repeat(10_240)), ..EventFilter::default() },
        EventFilter { from: Some("2026-01-01'; DROP TABLE events; --".into()), ..EventFilter::default() },
        EventFilter { to: Some("\\".into()), ..EventFilter::default() },
    ] {
        let error = filter.resolve(Vec::new()).expect_err("refused");
        assert!(matches!(error, QueryError::Invalid(_)), "{error:?}");
    }
    let any = EventFilter::default().resolve(Vec::new()).expect("valid");
    for cursor in ["'; DROP TABLE events; --", "\0", "AAAA", &"A".repeat(10_240)] {
        let error = event_query::search(store, &any, Some(cursor), 10).await.expect_err("bad cursor");
        assert!(matches!(error, QueryError::BadCursor), "{error:?}");
    }
    assert_eq!(schema::event_count(store).await.expect("count"), before, "nothing changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_yields_new_matching_events_within_two_seconds() {
    let _serial = SERIAL.lock().await;
    let database = support::scratch_name("tyr_test_tail");
    let store = store_for(&database);
    schema::apply(&store, 30).await.expect("ClickHouse must answer (deploy/dev/setup.sh starts the dev endpoint)");
    let (daemon, other) = (Uuid::now_v7(), Uuid::now_v7());
    let old = insert_one(&store, daemon, EventKind::Exec, "/usr/bin/old").await;
    // The tail's start is fixed to within one ClickHouse round trip (erring early).
    tokio::time::sleep(Duration::from_millis(500)).await;

    let filter = EventFilter { daemon_id: Some(daemon), kind: Some("EXEC".into()), ..EventFilter::default() };
    let mut stream = Box::pin(event_query::tail(store.clone(), filter.resolve(Vec::new()).expect("valid")));
    let (sender, mut received) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        while let Some(item) = stream.next().await {
            if sender.send((Instant::now(), item)).is_err() {
                break;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    // One match among events the filter excludes.
    insert_one(&store, other, EventKind::Exec, "/usr/bin/other-daemon").await;
    insert_one(&store, daemon, EventKind::FileRead, "/etc/passwd").await;
    let wanted = insert_one(&store, daemon, EventKind::Exec, "/usr/bin/new").await;
    let stored_at = Instant::now();
    let (seen_at, item) = tokio::time::timeout(Duration::from_secs(5), received.recv())
        .await
        .expect("the new event arrives")
        .expect("the tail runs");
    let row = item.expect("no error");
    let latency = seen_at.duration_since(stored_at);
    eprintln!("tail latency {latency:?}");
    assert_eq!(row.event_id, wanted, "only the matching event, not {} (the old one is {old})", row.resource);
    assert!(latency < Duration::from_secs(2), "seen {latency:?} after it was stored");

    // A row stored behind the tail's position (visible late) is still found,
    // once; new ones keep coming; nothing filtered out, nothing twice.
    let inserted_ms = time::OffsetDateTime::parse(&row.inserted_at, &time::format_description::well_known::Rfc3339)
        .expect("rfc3339")
        .unix_timestamp_nanos()
        / 1_000_000;
    let late = Uuid::now_v7();
    store
        .client()
        .query(
            "INSERT INTO events (event_id, agent_id, kind, resource, timestamp, inserted_at) \
             VALUES ({id:UUID}, {daemon:UUID}, 'EXEC', '/usr/bin/late', now64(9), fromUnixTimestamp64Milli({ms:Int64}))",
        )
        .param("id", late.to_string())
        .param("daemon", daemon.to_string())
        .param("ms", i64::try_from(inserted_ms - 300).expect("fits"))
        .execute()
        .await
        .expect("late insert");
    let mut more = vec![late];
    for i in 0..3 {
        more.push(insert_one(&store, daemon, EventKind::Exec, &format!("/usr/bin/next{i}")).await);
    }
    let stored_at = Instant::now();
    let mut got = Vec::new();
    while got.len() < more.len() {
        let (seen_at, item) = tokio::time::timeout(Duration::from_secs(5), received.recv())
            .await
            .expect("the later events arrive")
            .expect("the tail runs");
        assert!(seen_at.duration_since(stored_at) < Duration::from_secs(2));
        got.push(item.expect("no error").event_id);
    }
    got.sort();
    more.sort();
    assert_eq!(got, more);
    let extra = tokio::time::timeout(Duration::from_millis(2_500), received.recv()).await;
    assert!(extra.is_err(), "nothing else arrives: {extra:?}");

    reader.abort();
    store.client().query(&format!("DROP DATABASE {database}")).execute().await.expect("drop scratch database");
}
