//! The generated data set of the event-query tests and the independent
//! ClickHouse queries their results are compared with.

#![allow(dead_code)]

pub mod aggregates;

use std::collections::{BTreeMap, HashSet};

use clickhouse::Row;
use serde::Deserialize;
use tyr_proto::{Event, EventKind, Severity, Verdict};
use tyr_server::config::EventStoreConfig;
use tyr_server::event_query::{self, EventRow, ResolvedFilter, rfc3339_nanos};
use tyr_server::event_store::EventStore;
use tyr_server::event_store::arrow_batch::{EventBatchBuilder, StoredEvent};
use uuid::Uuid;

use super::support;

pub const EVENTS: usize = 1_000_000;
/// Events per INSERT (each one part, so FINAL works across parts).
pub const CHUNK: usize = 250_000;
/// The first REPLAYED events are inserted a second time, as a replay would.
pub const REPLAYED: usize = 5_000;
pub const DAEMONS: usize = 40;
pub const AGENTS: usize = 200;
pub const HOUR_NS: i64 = 3_600 * 1_000_000_000;
pub const SPAN_NS: i64 = 30 * HOUR_NS;
pub const TYPES: [&str; 5] = ["cursor", "claude-code", "codex", "aider", "copilot"];
pub const SNIS: [&str; 8] = [
    "api.openai.com",
    "api.anthropic.com",
    "github.com",
    "pypi.org",
    "registry.npmjs.org",
    "api.githubcopilot.com",
    "exfil.example.net",
    "mirror.example.org",
];
pub const KINDS: [EventKind; 7] = [
    EventKind::FileRead,
    EventKind::FileWrite,
    EventKind::Exec,
    EventKind::NetConnect,
    EventKind::Tls,
    EventKind::Exit,
    EventKind::Fork,
];
/// A resource stored verbatim in one event: searching for it finds exactly that one.
pub const HOSTILE_STORED: &str = "/tmp/'; DROP TABLE events; --\\\"q\"\u{0}ファイル🙂";

pub fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The generated fleet: daemons, discovered agents (agent i has type
/// TYPES[i % 5]) and the run's clock.
pub struct Fleet {
    pub daemons: Vec<Uuid>,
    pub agents: Vec<Uuid>,
    pub now_ns: i64,
    salt: u64,
}

impl Fleet {
    pub fn new() -> Self {
        let now_ns = i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos()).expect("now fits");
        Self {
            daemons: (0..DAEMONS).map(|_| Uuid::new_v4()).collect(),
            agents: (0..AGENTS).map(|_| Uuid::new_v4()).collect(),
            now_ns,
            salt: mix(now_ns as u64),
        }
    }

    /// Event `i`: deterministic, so a replay regenerates it byte for byte.
    pub fn event(&self, i: usize) -> (Uuid, Event, Verdict, bool) {
        let r = mix(i as u64 ^ self.salt);
        let r2 = mix(r);
        let d = (r % DAEMONS as u64) as usize;
        let slot = ((r >> 8) % 250) as usize;
        let (discovered, agent_type) =
            if slot < AGENTS { (self.agents[slot].to_string(), TYPES[slot % 5]) } else { (String::new(), "unknown") };
        let kind = KINDS[((r >> 16) % 7) as usize];
        let skew = |n: u64| (r2 % n) * (r2 % n) / n;
        let mut metadata = BTreeMap::new();
        let resource = match kind {
            EventKind::FileRead | EventKind::FileWrite => format!("/home/u{}/proj/src/file_{}.rs", d % 10, skew(1_000)),
            EventKind::Exec => format!("/usr/bin/tool{}", skew(50)),
            EventKind::NetConnect => format!("10.0.{}.{}:443", skew(16), (r2 >> 32) % 4),
            EventKind::Tls => {
                let sni = SNIS[(skew(64) % SNIS.len() as u64) as usize];
                metadata.insert("sni".to_owned(), sni.to_owned());
                metadata.insert("remote_ip".to_owned(), "192.0.2.7".to_owned());
                sni.to_owned()
            }
            _ => String::new(),
        };
        let resource = if i == EVENTS - 1 { HOSTILE_STORED.to_owned() } else { resource };
        let verdict = match (r >> 24) % 10 {
            0..=6 => Verdict::Allow,
            7 | 8 => Verdict::Deny,
            _ => Verdict::Alert,
        };
        let unenforced = (r >> 32).is_multiple_of(50);
        if unenforced {
            metadata.insert("enforced".to_owned(), "false".to_owned());
        }
        let server_verdict = if (r >> 40).is_multiple_of(33) { Verdict::Deny } else { verdict };
        let drift = !unenforced && verdict == Verdict::Allow && server_verdict == Verdict::Deny;
        let event = Event {
            event_id: Uuid::from_u64_pair(mix(i as u64 ^ self.salt.rotate_left(17)), mix(i as u64 + self.salt))
                .to_string(),
            agent_id: String::new(),
            discovered_agent_id: discovered,
            kind: kind as i32,
            resource,
            verdict: verdict as i32,
            severity: Severity::Low as i32,
            pid: 1_000 + ((r2 >> 20) % 5_000) as i64,
            process_exe: format!("/usr/bin/{agent_type}"),
            cmdline: format!("{agent_type} run"),
            // Pairs of events share a timestamp: ties are broken by event id.
            timestamp_ns: self.now_ns - (mix((i / 2) as u64 ^ self.salt) % SPAN_NS as u64) as i64,
            metadata,
            seq: i as u64 + 1,
            ppid: 1,
            agent_type: agent_type.to_owned(),
            policy_version: 1,
        };
        (self.daemons[d], event, server_verdict, drift)
    }

    /// Writes events `range` with `insert_batches` (one INSERT, one part).
    pub async fn insert(&self, store: &EventStore, range: std::ops::Range<usize>) {
        let mut builder = EventBatchBuilder::with_capacity(16_384);
        let mut batches = Vec::new();
        for i in range {
            let (agent_id, event, server_verdict, drift_detected) = self.event(i);
            builder.push(StoredEvent { agent_id, event: &event, server_verdict, drift_detected }).expect("valid event");
            if builder.len() == 16_384 {
                batches.push(builder.finish());
            }
        }
        batches.push(builder.finish());
        store.insert_batches(&batches).await.expect("insert_arrow");
    }
}

pub fn store_for(database: &str) -> EventStore {
    let config = EventStoreConfig {
        url: support::clickhouse_url(),
        database: database.to_owned(),
        user: None,
        password: None,
        retention_days: 30,
    };
    EventStore::new(&config).expect("config")
}

/// Exact count of distinct events matching `cond`, without FINAL.
pub async fn direct_count(store: &EventStore, cond: &str) -> u64 {
    store
        .client()
        .query(&format!("SELECT uniqExact(event_id) FROM events WHERE {cond}"))
        .fetch_one()
        .await
        .expect("direct count")
}

#[derive(Debug, Row, Deserialize)]
pub struct IdRow {
    #[serde(with = "clickhouse::serde::uuid")]
    event_id: Uuid,
}

/// Distinct events matching `cond`, newest first (ties by id), without FINAL.
pub async fn direct_ids(store: &EventStore, cond: &str, limit: u64) -> Vec<Uuid> {
    let sql = format!(
        "SELECT event_id FROM events WHERE {cond} GROUP BY event_id, timestamp \
         ORDER BY timestamp DESC, event_id DESC LIMIT {limit}"
    );
    store
        .client()
        .query(&sql)
        .fetch_all::<IdRow>()
        .await
        .expect("direct select")
        .into_iter()
        .map(|r| r.event_id)
        .collect()
}

/// Every page of a search, concatenated; checks order and uniqueness.
pub async fn all_pages(store: &EventStore, filter: &ResolvedFilter, limit: u32) -> Vec<EventRow> {
    let mut rows = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = event_query::search(store, filter, cursor.as_deref(), limit).await.expect("search");
        assert!(page.items.len() <= limit as usize);
        if page.next_cursor.is_some() {
            assert_eq!(page.items.len(), limit as usize, "only the last page is short");
        }
        rows.extend(page.items);
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert!(rows.windows(2).all(|w| w[0].timestamp_ns >= w[1].timestamp_ns), "newest first");
    let unique: HashSet<Uuid> = rows.iter().map(|r| r.event_id).collect();
    assert_eq!(unique.len(), rows.len(), "no event twice");
    rows
}

pub fn ts(ns: i64) -> String {
    rfc3339_nanos(ns)
}

/// Inserts one event through the event store.
pub async fn insert_one(store: &EventStore, daemon: Uuid, kind: EventKind, resource: &str) -> Uuid {
    let id = Uuid::now_v7();
    let event = Event {
        event_id: id.to_string(),
        kind: kind as i32,
        resource: resource.to_owned(),
        verdict: Verdict::Allow as i32,
        severity: Severity::Info as i32,
        timestamp_ns: i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos()).expect("now fits"),
        agent_type: "codex".to_owned(),
        ..Event::default()
    };
    let mut builder = EventBatchBuilder::with_capacity(1);
    builder
        .push(StoredEvent { agent_id: daemon, event: &event, server_verdict: Verdict::Allow, drift_detected: false })
        .expect("valid event");
    store.insert_batches(&[builder.finish()]).await.expect("insert");
    id
}
