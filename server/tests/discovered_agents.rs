//! Discovered agents against real PostgreSQL (and, for the stream, a real
//! server in this process): reports over a live mTLS stream are stored with
//! their first and last sightings, a report for another daemon's agent is
//! ignored; every operator change (rename, merge, reclassify, archive,
//! promote) changes the row, writes exactly one audit entry and is refused
//! with the right error on bad input; merges resolve chains and
//! `merged_ids` is transitive; `overrides_for` follows reclassify, promote
//! and merge, and a change made through the control database (as another
//! process or replica would) reaches the live session, which sends the
//! daemon its new AgentOverrides within seconds.

mod support;

use std::time::Duration;

use support::ScratchDb;
use support::serving::{ClientIdentity, TestServer, capabilities};
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tyr_proto::agent_message::Payload as Up;
use tyr_proto::agent_service_client::AgentServiceClient;
use tyr_proto::server_message::Payload as Down;
use tyr_proto::{AgentMessage, AgentOverrides, DiscoveredAgentReport, ServerMessage};
use tyr_server::control_db::audit::Actor;
use tyr_server::control_db::daemons::{self, NewDaemon};
use tyr_server::control_db::discovered::{
    self, AgentReport, AgentState, DiscoveredError, DiscoveredFilter, ReportOutcome,
};
use uuid::Uuid;

const SHA_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

fn report(id: Uuid, agent_type: &str, sha: &str, first_s: i64, last_s: i64) -> DiscoveredAgentReport {
    DiscoveredAgentReport {
        id: id.to_string(),
        agent_type: agent_type.to_owned(),
        exe_path: format!("/opt/{agent_type}/bin/{agent_type}"),
        exe_sha256: sha.to_owned(),
        evidence: "env:CURSOR_TRACE_ID=45,exe_dir:cursor=30".to_owned(),
        confidence: 75,
        first_seen_ns: first_s * 1_000_000_000,
        last_seen_ns: last_s * 1_000_000_000,
    }
}

fn now_s() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

/// One open stream of an enrolled daemon.
struct Stream {
    up: mpsc::Sender<AgentMessage>,
    down: Streaming<ServerMessage>,
}

impl Stream {
    async fn open(server: &TestServer, identity: &ClientIdentity) -> Self {
        let channel = server.channel(Some(identity)).await.expect("channel");
        let (up, receiver) = mpsc::channel(64);
        up.send(AgentMessage { payload: Some(Up::Capabilities(capabilities())) }).await.expect("queue");
        let down = AgentServiceClient::new(channel)
            .stream(ReceiverStream::new(receiver))
            .await
            .expect("stream opens")
            .into_inner();
        Self { up, down }
    }

    async fn send(&self, report: DiscoveredAgentReport) {
        self.up.send(AgentMessage { payload: Some(Up::Discovered(report)) }).await.expect("stream open");
    }

    /// The next AgentOverrides within `within`, skipping everything else.
    async fn overrides(&mut self, within: Duration) -> Option<AgentOverrides> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let message = tokio::time::timeout_at(deadline, self.down.message()).await.ok()?;
            match message.expect("stream healthy").and_then(|m| m.payload) {
                Some(Down::Overrides(overrides)) => return Some(overrides),
                Some(_) => continue,
                None => panic!("stream ended"),
            }
        }
    }
}

fn pairs(message: &AgentOverrides) -> Vec<(String, String)> {
    let mut pairs: Vec<_> =
        message.overrides.iter().map(|o| (o.discovered_agent_id.clone(), o.agent_type.clone())).collect();
    pairs.sort();
    pairs
}

async fn wait_for_row(pool: &sqlx::PgPool, id: Uuid, done: impl Fn(&discovered::DiscoveredAgent) -> bool) -> bool {
    for _ in 0..100 {
        if discovered::get(pool, id).await.expect("get").is_some_and(|a| done(&a)) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_are_stored_and_override_changes_reach_the_live_session() {
    let server = TestServer::start(&[]).await;
    let daemon = server.enroll().await;
    let other = server.enroll().await;
    let mut stream = Stream::open(&server, &daemon).await;
    // The complete (empty) set follows the first push on every stream.
    let initial = stream.overrides(Duration::from_secs(15)).await.expect("initial overrides");
    assert!(initial.overrides.is_empty(), "{initial:?}");

    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let first = now_s() - 120;
    stream.send(report(a, "cursor", "", first, 0)).await;
    stream.send(report(b, "unknown", "", first, first)).await;
    // Not valid: a bad id, a bad hash. The stream goes on.
    stream.send(DiscoveredAgentReport { id: "x".into(), ..report(a, "cursor", "", first, 0) }).await;
    stream.send(report(Uuid::new_v4(), "cursor", "NOT-HEX", first, 0)).await;
    assert!(wait_for_row(&server.pool, a, |_| true).await, "report stored");
    assert!(wait_for_row(&server.pool, b, |_| true).await, "report stored");
    let row = discovered::get(&server.pool, a).await.expect("get").expect("row");
    assert_eq!(row.daemon_id, daemon.daemon_id);
    assert_eq!((row.agent_type.as_str(), row.effective_type.as_str()), ("cursor", "cursor"));
    assert_eq!(row.exe_sha256, None, "not hashed yet");
    assert_eq!(row.confidence, 75);
    assert_eq!(row.evidence[0]["detail"], "CURSOR_TRACE_ID");
    assert_eq!(row.evidence[1]["weight"], 30);
    assert_eq!(row.first_seen_at.unix_timestamp(), first);
    assert_eq!(row.last_seen_at, row.first_seen_at, "no sighting yet");
    assert_eq!(row.state, AgentState::Active);

    // A refresh: hash learnt, seen now; the first sighting stays.
    let seen = now_s() - 5;
    stream.send(report(a, "cursor", SHA_A, first, seen)).await;
    assert!(wait_for_row(&server.pool, a, |r| r.last_seen_at.unix_timestamp() == seen).await, "refresh stored");
    let row = discovered::get(&server.pool, a).await.expect("get").expect("row");
    assert_eq!(row.exe_sha256.as_deref(), Some(SHA_A));
    assert_eq!(row.first_seen_at.unix_timestamp(), first);
    // A sighting from the future is clamped to the server's clock.
    stream.send(report(a, "cursor", "", first, now_s() + 86_400)).await;
    assert!(wait_for_row(&server.pool, a, |r| r.last_seen_at.unix_timestamp() > seen).await);
    let row = discovered::get(&server.pool, a).await.expect("get").expect("row");
    assert!(row.last_seen_at <= OffsetDateTime::now_utc(), "{}", row.last_seen_at);
    assert_eq!(row.exe_sha256.as_deref(), Some(SHA_A), "an unhashed report keeps the hash");

    // Another daemon cannot take over this daemon's agent by reporting its id.
    let mut intruder = Stream::open(&server, &other).await;
    intruder.overrides(Duration::from_secs(15)).await.expect("initial overrides");
    intruder.send(report(a, "cursor", "", 1, now_s())).await;
    let marker = Uuid::new_v4();
    intruder.send(report(marker, "codex", "", first, 0)).await;
    assert!(wait_for_row(&server.pool, marker, |_| true).await, "the intruder's own report is stored");
    let row = discovered::get(&server.pool, a).await.expect("get").expect("row");
    assert_eq!(row.daemon_id, daemon.daemon_id, "still the first daemon's");
    assert_eq!(row.first_seen_at.unix_timestamp(), first, "the other daemon's report was ignored");

    // Reclassify and promote, through the control database as another
    // process would: the NOTIFY reaches the session well before its
    // periodic re-check (30 s).
    let actor = Actor::local_admin();
    discovered::reclassify(&server.pool, &actor, a, "aider").await.expect("reclassify");
    let sent = stream.overrides(Duration::from_secs(5)).await.expect("overrides after the reclassification");
    assert_eq!(pairs(&sent), vec![(a.to_string(), "aider".to_owned())]);
    discovered::promote(&server.pool, &actor, b, "codex").await.expect("promote");
    let sent = stream.overrides(Duration::from_secs(5)).await.expect("overrides after the promotion");
    let mut expected = vec![(a.to_string(), "aider".to_owned()), (b.to_string(), "codex".to_owned())];
    expected.sort();
    assert_eq!(pairs(&sent), expected);
    // The other daemon's session is not sent this daemon's overrides.
    assert!(intruder.overrides(Duration::from_secs(1)).await.is_none());
    // A new stream gets the whole set right after its push.
    drop(stream);
    let mut again = Stream::open(&server, &daemon).await;
    let sent = again.overrides(Duration::from_secs(15)).await.expect("overrides on a new stream");
    assert_eq!(pairs(&sent), expected);

    // A flood of reports is cut by the session's rate limit and bounded
    // queue, and the stream goes on.
    const FLOOD: usize = 3000;
    for _ in 0..FLOOD {
        again.send(report(Uuid::new_v4(), "langgraph", "", first, 0)).await;
    }
    let count = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM discovered_agents WHERE daemon_id = $1 AND agent_type = 'langgraph'",
        )
        .bind(daemon.daemon_id)
        .fetch_one(&server.pool)
        .await
        .expect("count")
    };
    let mut stored = -1;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = count().await;
        if now == stored {
            break;
        }
        stored = now;
    }
    assert!(stored > 0 && stored <= 600, "{stored} of {FLOOD} flooded reports stored: the burst is 512");
    discovered::reclassify(&server.pool, &actor, a, "cline").await.expect("reclassify");
    let sent = again.overrides(Duration::from_secs(5)).await.expect("the stream still serves");
    assert!(pairs(&sent).contains(&(a.to_string(), "cline".to_owned())));
    server.drop_now().await;
}

async fn daemon(pool: &sqlx::PgPool) -> Uuid {
    let id = Uuid::new_v4();
    let mut conn = pool.acquire().await.expect("connection");
    daemons::insert(
        &mut conn,
        &NewDaemon {
            id,
            name: "host".to_owned(),
            kernel_version: "6.1".to_owned(),
            arch: "x86_64".to_owned(),
            cert_serial: format!("{:032x}", id.as_u128()),
            cert_not_after: OffsetDateTime::now_utc() + time::Duration::days(1),
            enrolled_with: None,
        },
    )
    .await
    .expect("daemon");
    id
}

async fn agent(pool: &sqlx::PgPool, daemon: Uuid, agent_type: &str) -> Uuid {
    let id = Uuid::new_v4();
    let now = OffsetDateTime::now_utc();
    let report = AgentReport {
        id,
        agent_type: agent_type.to_owned(),
        exe_path: format!("/usr/bin/{agent_type}"),
        exe_sha256: Some(SHA_A.to_owned()),
        evidence: serde_json::json!([]),
        confidence: 70,
        first_seen: now - time::Duration::hours(1),
        last_seen: now - time::Duration::minutes(30),
    };
    assert_eq!(discovered::record_report(pool, daemon, &report).await.expect("report"), ReportOutcome::Inserted);
    id
}

async fn audit_count(pool: &sqlx::PgPool, id: Uuid, action: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE target = $1 AND action = $2")
        .bind(format!("discovered:{id}"))
        .bind(action)
        .fetch_one(pool)
        .await
        .expect("count")
}

async fn all_audits(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action LIKE 'discovered.%'")
        .fetch_one(pool)
        .await
        .expect("count")
}

async fn state(pool: &sqlx::PgPool, id: Uuid) -> discovered::DiscoveredAgent {
    discovered::get(pool, id).await.expect("get").expect("row")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_changes_are_audited_and_refused_on_bad_input() {
    let db = ScratchDb::migrated("tyr_discovered").await;
    let pool = &db.pool;
    let actor = Actor::local_admin();
    let (host, elsewhere) = (daemon(pool).await, daemon(pool).await);
    let cursor = agent(pool, host, "cursor").await;
    let unknown = agent(pool, host, "unknown").await;
    let duplicate = agent(pool, host, "unknown").await;
    let foreign = agent(pool, elsewhere, "cursor").await;
    let missing = Uuid::new_v4();
    let mut audits = 0;

    // Rename.
    let renamed = discovered::rename(pool, &actor, cursor, "  Build bot  ").await.expect("rename");
    audits += 1;
    assert_eq!(renamed.display_name.as_deref(), Some("Build bot"));
    assert_eq!(audit_count(pool, cursor, "discovered.rename").await, 1);
    for bad in ["", "   ", "line\nbreak", &"x".repeat(129)] {
        assert!(matches!(discovered::rename(pool, &actor, cursor, bad).await, Err(DiscoveredError::InvalidName(_))));
    }
    assert!(
        matches!(discovered::rename(pool, &actor, missing, "x").await, Err(DiscoveredError::NotFound(id)) if id == missing)
    );
    assert_eq!(state(pool, cursor).await.display_name.as_deref(), Some("Build bot"));

    // Reclassify: known types and `unknown` only; the detected type clears it.
    for bad in ["our-custom-agent", "Aider", "", "'; DROP TABLE discovered_agents; --"] {
        assert!(matches!(
            discovered::reclassify(pool, &actor, cursor, bad).await,
            Err(DiscoveredError::InvalidType(_))
        ));
    }
    assert!(matches!(discovered::reclassify(pool, &actor, missing, "aider").await, Err(DiscoveredError::NotFound(_))));
    let moved = discovered::reclassify(pool, &actor, cursor, "aider").await.expect("reclassify");
    audits += 1;
    assert_eq!((moved.agent_type.as_str(), moved.effective_type.as_str()), ("cursor", "aider"));
    assert_eq!(moved.reclassified_as.as_deref(), Some("aider"));
    assert_eq!(discovered::overrides_for(pool, host).await.expect("overrides"), vec![(cursor, "aider".to_owned())]);
    assert!(discovered::overrides_for(pool, elsewhere).await.expect("overrides").is_empty());
    let back = discovered::reclassify(pool, &actor, cursor, "cursor").await.expect("back");
    audits += 1;
    assert_eq!((back.reclassified_as, back.effective_type.as_str()), (None, "cursor"));
    assert!(discovered::overrides_for(pool, host).await.expect("overrides").is_empty());
    assert_eq!(audit_count(pool, cursor, "discovered.reclassify").await, 2);

    // Promote: only what is governed as unknown, only to a known type.
    assert!(matches!(discovered::promote(pool, &actor, cursor, "codex").await, Err(DiscoveredError::Conflict(_))));
    assert!(matches!(
        discovered::promote(pool, &actor, unknown, "unknown").await,
        Err(DiscoveredError::InvalidType(_))
    ));
    assert!(matches!(discovered::promote(pool, &actor, unknown, "nope").await, Err(DiscoveredError::InvalidType(_))));
    let promoted = discovered::promote(pool, &actor, unknown, "codex").await.expect("promote");
    audits += 1;
    assert_eq!(promoted.effective_type, "codex");
    assert_eq!(audit_count(pool, unknown, "discovered.promote").await, 1);
    assert!(matches!(discovered::promote(pool, &actor, unknown, "aider").await, Err(DiscoveredError::Conflict(_))));

    // Merge: same daemon, no self, no merged target or source.
    assert!(matches!(discovered::merge(pool, &actor, cursor, cursor).await, Err(DiscoveredError::Conflict(_))));
    assert!(matches!(discovered::merge(pool, &actor, foreign, cursor).await, Err(DiscoveredError::Conflict(_))));
    assert!(matches!(discovered::merge(pool, &actor, missing, cursor).await, Err(DiscoveredError::NotFound(_))));
    let survivor = discovered::merge(pool, &actor, duplicate, unknown).await.expect("merge");
    audits += 1;
    assert_eq!(survivor.id, unknown, "the survivor is returned");
    let merged = state(pool, duplicate).await;
    assert_eq!((merged.state, merged.merged_into), (AgentState::Merged, Some(unknown)));
    assert_eq!(merged.effective_type, "codex", "a merged agent is governed as its survivor");
    assert_eq!(audit_count(pool, duplicate, "discovered.merge").await, 1);
    let mut expected = vec![(unknown, "codex".to_owned()), (duplicate, "codex".to_owned())];
    expected.sort();
    assert_eq!(discovered::overrides_for(pool, host).await.expect("overrides"), expected);
    assert!(matches!(discovered::merge(pool, &actor, duplicate, cursor).await, Err(DiscoveredError::Conflict(_))));
    assert!(matches!(discovered::merge(pool, &actor, cursor, duplicate).await, Err(DiscoveredError::Conflict(_))));
    assert!(matches!(
        discovered::reclassify(pool, &actor, duplicate, "aider").await,
        Err(DiscoveredError::Conflict(_))
    ));
    // Merging a survivor moves what was merged into it: no chains, no cycles.
    discovered::merge(pool, &actor, unknown, cursor).await.expect("merge the survivor");
    audits += 1;
    assert_eq!(state(pool, duplicate).await.merged_into, Some(cursor));
    let mut all = vec![cursor, unknown, duplicate];
    all.sort();
    assert_eq!(discovered::merged_ids(pool, cursor).await.expect("ids"), all);
    assert_eq!(discovered::merged_ids(pool, unknown).await.expect("ids"), vec![unknown]);
    assert!(discovered::merged_ids(pool, missing).await.expect("ids").is_empty());
    assert_eq!(state(pool, duplicate).await.effective_type, "cursor");
    assert!(matches!(discovered::merge(pool, &actor, cursor, unknown).await, Err(DiscoveredError::Conflict(_))));

    // Archive; a later sighting makes the agent active again.
    let archived = discovered::archive(pool, &actor, foreign).await.expect("archive");
    audits += 1;
    assert_eq!(archived.state, AgentState::Archived);
    assert!(archived.archived_at.is_some());
    assert!(matches!(discovered::archive(pool, &actor, foreign).await, Err(DiscoveredError::Conflict(_))));
    assert!(matches!(discovered::archive(pool, &actor, missing).await, Err(DiscoveredError::NotFound(_))));
    let filter = DiscoveredFilter { state: Some(AgentState::Archived), ..DiscoveredFilter::default() };
    let listed: Vec<Uuid> =
        discovered::list(pool, &filter, None, 10).await.expect("list").iter().map(|a| a.id).collect();
    assert_eq!(listed, vec![foreign]);
    let sighting = AgentReport {
        id: foreign,
        agent_type: "cursor".to_owned(),
        exe_path: "/usr/bin/cursor".to_owned(),
        exe_sha256: None,
        evidence: serde_json::json!([]),
        confidence: 70,
        first_seen: OffsetDateTime::now_utc() - time::Duration::hours(1),
        last_seen: OffsetDateTime::now_utc() + time::Duration::seconds(1),
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(discovered::record_report(pool, elsewhere, &sighting).await.expect("report"), ReportOutcome::Updated);
    assert_eq!(state(pool, foreign).await.state, AgentState::Active);
    // A report naming another daemon's agent changes nothing.
    assert_eq!(discovered::record_report(pool, host, &sighting).await.expect("report"), ReportOutcome::Ignored);
    // ... nor one naming the same id with another detected type.
    let retyped = AgentReport { agent_type: "codex".to_owned(), ..sighting.clone() };
    assert_eq!(discovered::record_report(pool, elsewhere, &retyped).await.expect("report"), ReportOutcome::Ignored);

    // Lists: by effective type, daemon and state, in pages.
    let of =
        |agent_type: &str| DiscoveredFilter { agent_type: Some(agent_type.to_owned()), ..DiscoveredFilter::default() };
    let cursors: Vec<Uuid> =
        discovered::list(pool, &of("cursor"), None, 10).await.expect("list").iter().map(|a| a.id).collect();
    let mut expected_cursors = vec![cursor, unknown, duplicate, foreign];
    expected_cursors.sort();
    assert_eq!(cursors, expected_cursors, "effective types: merged agents count as their survivor's");
    let host_active = DiscoveredFilter { daemon_id: Some(host), state: Some(AgentState::Active), agent_type: None };
    let active: Vec<Uuid> =
        discovered::list(pool, &host_active, None, 10).await.expect("list").iter().map(|a| a.id).collect();
    assert_eq!(active, vec![cursor]);
    let page1 = discovered::list(pool, &DiscoveredFilter::default(), None, 2).await.expect("page");
    let page2 =
        discovered::list(pool, &DiscoveredFilter::default(), page1.last().map(|a| a.id), 2).await.expect("page");
    let page3 =
        discovered::list(pool, &DiscoveredFilter::default(), page2.last().map(|a| a.id), 2).await.expect("page");
    let paged: Vec<Uuid> = page1.iter().chain(&page2).chain(&page3).map(|a| a.id).collect();
    assert_eq!(paged, expected_cursors, "pages cover everything once, in id order");
    assert!(page3.is_empty());

    // One audit entry per change, none for a refusal.
    assert_eq!(all_audits(pool).await, audits);
    let entry: (String, serde_json::Value, serde_json::Value) = sqlx::query_as(
        "SELECT actor_name, before, after FROM audit_log WHERE target = $1 AND action = 'discovered.promote'",
    )
    .bind(format!("discovered:{unknown}"))
    .fetch_one(pool)
    .await
    .expect("entry");
    assert_eq!(entry.0, "local-admin");
    assert_eq!(
        (entry.1["effective_type"].as_str(), entry.2["effective_type"].as_str()),
        (Some("unknown"), Some("codex"))
    );
    db.drop_now().await;
}
