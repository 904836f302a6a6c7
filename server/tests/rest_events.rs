//! Events, drift and discovered agents through the REST API of a real
//! `serve::run`: filtered queries with cursors, counts equal to direct
//! ClickHouse counts, hostile values that are only values, a merged
//! discovered agent's events found under the survivor, a live tail over
//! server-sent events that shows a new event within 2 s, analytics and
//! the drift summary.

#[path = "support/rest.rs"]
mod rest_client;
mod support;

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use rest_client::Rest;
use serde_json::json;
use support::serving::TestServer;
use time::OffsetDateTime;
use tyr_proto::{Event, EventKind, Severity, Verdict};
use tyr_server::auth::Role;
use tyr_server::control_db::audit::Actor;
use tyr_server::control_db::discovered::{self, AgentReport};
use tyr_server::control_db::users;
use tyr_server::event_store::arrow_batch::{EventBatchBuilder, StoredEvent};
use uuid::Uuid;

const PASSWORD: &str = "correct horse battery staple";

struct Stored {
    daemon: Uuid,
    agent: Uuid,
    kind: EventKind,
    resource: String,
    verdict: Verdict,
    drift: bool,
}

async fn insert(server: &TestServer, events: &[Stored]) {
    let now = i64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos()).expect("now fits");
    let protos: Vec<Event> = events
        .iter()
        .enumerate()
        .map(|(i, e)| Event {
            event_id: Uuid::now_v7().to_string(),
            discovered_agent_id: e.agent.to_string(),
            agent_type: "aider".to_owned(),
            kind: e.kind as i32,
            resource: e.resource.clone(),
            verdict: e.verdict as i32,
            severity: Severity::Info as i32,
            pid: 4242,
            timestamp_ns: now - i64::try_from(i).expect("small") * 1_000_000,
            seq: u64::try_from(i).expect("small") + 1,
            ..Event::default()
        })
        .collect();
    let mut builder = EventBatchBuilder::with_capacity(protos.len());
    for (event, stored) in protos.iter().zip(events) {
        let server_verdict = if stored.drift { Verdict::Deny } else { stored.verdict };
        builder
            .push(StoredEvent { agent_id: stored.daemon, event, server_verdict, drift_detected: stored.drift })
            .expect("valid event");
    }
    server.store.insert_batches(&[builder.finish()]).await.expect("insert");
}

async fn report(server: &TestServer, daemon: Uuid, exe: &str) -> Uuid {
    let id = Uuid::now_v7();
    let now = OffsetDateTime::now_utc();
    let report = AgentReport {
        id,
        agent_type: "aider".to_owned(),
        exe_path: exe.to_owned(),
        exe_sha256: Some("ab".repeat(32)),
        evidence: json!([]),
        confidence: 80,
        first_seen: now,
        last_seen: now,
    };
    discovered::record_report(&server.pool, daemon, &report).await.expect("report");
    id
}

fn ids(reply: &rest_client::Reply) -> Vec<String> {
    reply.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|e| e["event_id"].as_str().expect("id").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_drift_and_discovered_agents_over_rest() {
    let mut server = TestServer::start(&[]).await;
    users::create(&server.pool, &Actor::local_admin(), "ops", PASSWORD.to_owned(), Role::Admin).await.expect("admin");
    let mut rest = Rest::new(&server);
    rest.login("ops", PASSWORD).await;
    let daemon = server.enroll().await.daemon_id;
    let (first, second) =
        (report(&server, daemon, "/usr/bin/aider").await, report(&server, daemon, "/opt/aider").await);

    let mut events = Vec::new();
    for i in 0..30 {
        events.push(Stored {
            daemon,
            agent: if i % 3 == 0 { second } else { first },
            kind: if i % 2 == 0 { EventKind::FileRead } else { EventKind::NetConnect },
            resource: format!("/srv/data/{i}"),
            verdict: if i % 5 == 0 { Verdict::Deny } else { Verdict::Allow },
            drift: i % 7 == 0,
        });
    }
    insert(&server, &events).await;

    // Filters and counts agree with what was stored.
    let reads = rest.get(&format!("/api/v1/events/count?daemon_id={daemon}&kind=FILE_READ")).await;
    assert_eq!(reads.body["count"], 15, "{}", reads.text);
    let denied = rest.get("/api/v1/events/count?verdict=DENY&resource_prefix=/srv/data/").await;
    assert_eq!(denied.body["count"], 6);
    // Pages of 7, newest first, no repeats, ending with a null cursor.
    let mut all = Vec::new();
    let mut path = format!("/api/v1/events?daemon_id={daemon}&limit=7");
    loop {
        let page = rest.get(&path).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.text);
        all.extend(ids(&page));
        match page.body["next_cursor"].as_str() {
            Some(cursor) => path = format!("/api/v1/events?daemon_id={daemon}&limit=7&cursor={cursor}"),
            None => break,
        }
    }
    let unique: std::collections::BTreeSet<_> = all.iter().collect();
    assert_eq!((all.len(), unique.len()), (30, 30));
    // Hostile values are values.
    for hostile in ["'; DROP TABLE events; --", "\\' OR 1=1 --", "%27%20OR%201%3D1"] {
        let reply = rest
            .get(&format!("/api/v1/events/count?resource={}", hostile.replace(' ', "%20").replace('\'', "%27")))
            .await;
        assert_eq!((reply.status, &reply.body["count"]), (StatusCode::OK, &json!(0)), "{hostile}: {}", reply.text);
    }
    assert_eq!(rest.get("/api/v1/events?kind=NOT_A_KIND").await.status, StatusCode::BAD_REQUEST);
    assert_eq!(rest.get("/api/v1/events?pid=abc").await.status, StatusCode::BAD_REQUEST);
    assert_eq!(rest.get("/api/v1/events?cursor=forged").await.status, StatusCode::BAD_REQUEST);
    assert_eq!(rest.get("/api/v1/events?colour=red").await.status, StatusCode::BAD_REQUEST);

    // Discovered agents: listed; merging `second` into `first` makes
    // `first`'s query include `second`'s events.
    let listed = rest.get(&format!("/api/v1/discovered-agents?daemon_id={daemon}")).await;
    assert_eq!(listed.body["items"].as_array().expect("items").len(), 2, "{}", listed.text);
    let before = rest.get(&format!("/api/v1/events/count?discovered_agent_id={first}")).await;
    assert_eq!(before.body["count"], 20);
    let merged = rest.post(&format!("/api/v1/discovered-agents/{second}/merge"), json!({ "into": first })).await;
    assert_eq!(merged.status, StatusCode::OK, "{}", merged.text);
    let after = rest.get(&format!("/api/v1/events/count?discovered_agent_id={first}")).await;
    assert_eq!(after.body["count"], 30, "the survivor's events include the merged agent's");
    let renamed =
        rest.post(&format!("/api/v1/discovered-agents/{first}/rename"), json!({ "display_name": "build bot" })).await;
    assert_eq!(renamed.body["display_name"], "build bot");

    // Analytics and drift.
    let top = rest.get(&format!("/api/v1/analytics/top-resources?daemon_id={daemon}&n=3")).await;
    assert_eq!(top.body.as_array().expect("rows").len(), 3, "{}", top.text);
    let drift = rest.get(&format!("/api/v1/drift?daemon_id={daemon}&latest=2")).await;
    assert_eq!(drift.status, StatusCode::OK, "{}", drift.text);
    assert_eq!(drift.body["totals"]["drift_events"], 5, "{}", drift.text);
    assert_eq!(drift.body["latest"].as_array().expect("latest").len(), 2);
    // Per discovered agent, the merged agent's drift counts for its survivor.
    let agents = drift.body["by_discovered_agent"].as_array().expect("by agent");
    assert_eq!(agents.len(), 1, "{}", drift.text);
    assert_eq!((&agents[0]["discovered_agent_id"], &agents[0]["drift_events"]), (&json!(first), &json!(5)));
    let counts = rest.get(&format!("/api/v1/analytics/counts?daemon_id={daemon}&bucket=minute")).await;
    assert_eq!(counts.status, StatusCode::OK, "{}", counts.text);

    // The live tail shows a new matching event within 2 s.
    let tail_url = format!("/api/v1/events/stream?daemon_id={daemon}&resource_prefix=/srv/live/");
    let mut response = rest.stream(&tail_url).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    insert(
        &server,
        &[Stored {
            daemon,
            agent: first,
            kind: EventKind::Exec,
            resource: "/srv/live/marker".to_owned(),
            verdict: Verdict::Allow,
            drift: false,
        }],
    )
    .await;
    let mut seen = String::new();
    while !seen.contains("/srv/live/marker") {
        let chunk = tokio::time::timeout(Duration::from_secs(5), response.chunk()).await.expect("an event in time");
        seen.push_str(&String::from_utf8_lossy(&chunk.expect("chunk").expect("stream open")));
    }
    assert!(started.elapsed() < Duration::from_secs(2), "tail latency {:?}", started.elapsed());
    assert!(seen.contains("event: event"));
    drop(response);
    server.stop().await;
}
