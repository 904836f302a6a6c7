//! Analytics and drift summaries against counts and groups folded here
//! from plain `uniqExact` queries.

use std::collections::{BTreeMap, HashMap, HashSet};

use clickhouse::Row;
use serde::Deserialize;
use tyr_server::event_query::{self, Bucket, EventFilter, QueryError};
use tyr_server::event_store::EventStore;
use uuid::Uuid;

use super::{DAEMONS, Fleet, HOUR_NS, SPAN_NS, TYPES, direct_count, direct_ids, ts};

#[derive(Debug, Row, Deserialize)]
pub struct BucketRow {
    bucket_s: i64,
    kind_name: String,
    verdict_name: String,
    events: u64,
}

#[derive(Debug, Row, Deserialize, PartialEq, Eq)]
pub struct ResourceRow {
    resource: String,
    events: u64,
    denied: u64,
}

#[derive(Debug, Row, Deserialize)]
pub struct ReachRow {
    agent_type: String,
    #[serde(with = "clickhouse::serde::uuid")]
    agent_id: Uuid,
    sni: String,
    events: u64,
}

pub async fn check_analytics(store: &EventStore, fleet: &Fleet) {
    let now = fleet.now_ns;
    // Counts over time, for each bucket width, against intDiv over nanoseconds.
    let spans = [
        (Bucket::Minute, now - 2 * HOUR_NS, now - HOUR_NS, Some(fleet.daemons[5])),
        (Bucket::Hour, now - 7 * HOUR_NS - 1_234_567, now - HOUR_NS, None),
        (Bucket::Day, now - SPAN_NS - HOUR_NS, now + HOUR_NS, None),
    ];
    for (bucket, from, to, daemon) in spans {
        let filter =
            EventFilter { from: Some(ts(from)), to: Some(ts(to)), daemon_id: daemon, ..EventFilter::default() };
        let got = event_query::counts_over_time(store, &filter.resolve(Vec::new()).expect("valid"), bucket)
            .await
            .expect("counts_over_time");
        let width = bucket.nanos();
        let daemon_cond = daemon.map(|d| format!(" AND agent_id = '{d}'")).unwrap_or_default();
        let sql = format!(
            "SELECT intDiv(toUnixTimestamp64Nano(timestamp), {width}) * {} AS bucket_s, toString(kind) AS kind_name, \
             toString(verdict) AS verdict_name, uniqExact(event_id) AS events FROM events \
             WHERE timestamp >= fromUnixTimestamp64Nano({from}) AND timestamp < fromUnixTimestamp64Nano({to}){daemon_cond} \
             GROUP BY bucket_s, kind_name, verdict_name ORDER BY bucket_s, kind_name, verdict_name",
            width / 1_000_000_000
        );
        let want: Vec<BucketRow> = store.client().query(&sql).fetch_all().await.expect("direct buckets");
        assert!(want.len() > 20, "{bucket:?}: {} buckets", want.len());
        assert_eq!(got.len(), want.len(), "{bucket:?}");
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(
                (g.bucket_start_s, g.kind.as_str(), g.verdict.as_str(), g.events),
                (w.bucket_s, w.kind_name.as_str(), w.verdict_name.as_str(), w.events),
                "{bucket:?}"
            );
            assert_eq!(g.bucket_start, ts(g.bucket_start_s * 1_000_000_000));
        }
        let total: u64 = got.iter().map(|b| b.events).sum();
        let cond = format!(
            "timestamp >= fromUnixTimestamp64Nano({from}) AND timestamp < fromUnixTimestamp64Nano({to}){daemon_cond}"
        );
        assert_eq!(total, direct_count(store, &cond).await, "{bucket:?}: buckets add up");
    }
    let too_many = EventFilter { from: Some(ts(now - 30 * 24 * HOUR_NS)), ..EventFilter::default() };
    let error = event_query::counts_over_time(store, &too_many.resolve(Vec::new()).expect("valid"), Bucket::Minute)
        .await
        .expect_err("too many buckets");
    assert!(matches!(error, QueryError::Invalid(_)), "{error:?}");

    // Top resources.
    let filter = EventFilter { kind: Some("FILE_READ".into()), ..EventFilter::default() };
    let resolved = filter.resolve(Vec::new()).expect("valid");
    let got = event_query::top_resources(store, &resolved, 25).await.expect("top_resources");
    let sql = format!(
        "SELECT resource, uniqExact(event_id) AS events, uniqExactIf(event_id, verdict = 'DENY') AS denied \
         FROM events WHERE timestamp >= fromUnixTimestamp64Nano({}) AND kind = 'FILE_READ' \
         GROUP BY resource ORDER BY events DESC, resource LIMIT 25",
        resolved.from_ns()
    );
    let want: Vec<ResourceRow> = store.client().query(&sql).fetch_all().await.expect("direct top");
    assert_eq!(got.len(), 25);
    for (g, w) in got.iter().zip(&want) {
        assert_eq!((&g.resource, g.events, g.denied), (&w.resource, w.events, w.denied));
    }
    assert!(got[0].events > got[24].events, "a skewed distribution: {} vs {}", got[0].events, got[24].events);
    let capped = event_query::top_resources(store, &resolved, 5_000).await.expect("top_resources");
    assert_eq!(capped.len(), 1_000, "n is capped");

    // Hosts and server names per agent type, folded here from plain groups.
    let resolved = EventFilter::default().resolve(Vec::new()).expect("valid");
    let got = event_query::agent_type_reach(store, &resolved).await.expect("agent_type_reach");
    let sql = format!(
        "SELECT agent_type, agent_id, metadata['sni'] AS sni, uniqExact(event_id) AS events FROM events \
         WHERE timestamp >= fromUnixTimestamp64Nano({}) GROUP BY agent_type, agent_id, sni",
        resolved.from_ns()
    );
    let rows: Vec<ReachRow> = store.client().query(&sql).fetch_all().await.expect("direct reach");
    // Per agent type: events, events per host, and per SNI its events and hosts.
    type Reach = (u64, HashMap<Uuid, u64>, HashMap<String, (u64, HashSet<Uuid>)>);
    let mut by_type: BTreeMap<String, Reach> = BTreeMap::new();
    for row in rows {
        let entry = by_type.entry(row.agent_type).or_default();
        entry.0 += row.events;
        *entry.1.entry(row.agent_id).or_default() += row.events;
        if !row.sni.is_empty() {
            let sni = entry.2.entry(row.sni).or_default();
            sni.0 += row.events;
            sni.1.insert(row.agent_id);
        }
    }
    assert_eq!(got.len(), by_type.len());
    assert_eq!(got.len(), TYPES.len() + 1, "five types and unknown");
    assert!(got.windows(2).all(|w| w[0].events >= w[1].events), "most events first");
    for reach in &got {
        let (events, hosts, snis) = &by_type[&reach.agent_type];
        assert_eq!(reach.events, *events, "{}", reach.agent_type);
        assert_eq!(reach.hosts, hosts.len() as u64, "{}", reach.agent_type);
        assert_eq!(reach.sni_count, snis.len() as u64, "{}", reach.agent_type);
        let mut want_snis: Vec<(&String, u64, u64)> =
            snis.iter().map(|(sni, (events, hosts))| (sni, *events, hosts.len() as u64)).collect();
        want_snis.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let got_snis: Vec<(&String, u64, u64)> = reach.snis.iter().map(|s| (&s.sni, s.events, s.hosts)).collect();
        assert_eq!(got_snis, want_snis.into_iter().take(20).collect::<Vec<_>>(), "{}", reach.agent_type);
        let mut want_hosts: Vec<u64> = hosts.values().copied().collect();
        want_hosts.sort_unstable_by(|a, b| b.cmp(a));
        let got_hosts: Vec<u64> = reach.top_hosts.iter().map(|h| h.events).collect();
        assert_eq!(got_hosts, want_hosts.into_iter().take(20).collect::<Vec<_>>(), "{}", reach.agent_type);
        for host in &reach.top_hosts {
            assert_eq!(hosts.get(&host.daemon_id), Some(&host.events));
        }
    }
}

#[derive(Debug, Row, Deserialize)]
pub struct DriftRow {
    #[serde(with = "clickhouse::serde::uuid")]
    agent_id: Uuid,
    #[serde(with = "clickhouse::serde::uuid")]
    discovered_agent_id: Uuid,
    events: u64,
    drift_events: u64,
    unenforced_events: u64,
}

pub async fn check_drift(store: &EventStore, fleet: &Fleet) {
    let resolved = EventFilter { from: Some(ts(fleet.now_ns - 20 * HOUR_NS)), ..EventFilter::default() }
        .resolve(Vec::new())
        .expect("valid");
    let summary = event_query::drift_summary(store, &resolved, 15).await.expect("drift_summary");
    let range = format!("timestamp >= fromUnixTimestamp64Nano({})", resolved.from_ns());
    assert_eq!(summary.totals.events, direct_count(store, &range).await);
    assert_eq!(summary.totals.drift_events, direct_count(store, &format!("{range} AND drift_detected")).await);
    assert_eq!(
        summary.totals.unenforced_events,
        direct_count(store, &format!("{range} AND metadata['enforced'] = 'false'")).await
    );
    assert!(summary.totals.drift_events > 1_000 && summary.totals.unenforced_events > 1_000, "{:?}", summary.totals);
    assert_eq!(direct_count(store, &format!("{range} AND drift_detected AND metadata['enforced'] = 'false'")).await, 0);

    let sql = format!(
        "SELECT agent_id, discovered_agent_id, uniqExact(event_id) AS events, \
         uniqExactIf(event_id, drift_detected) AS drift_events, \
         uniqExactIf(event_id, metadata['enforced'] = 'false') AS unenforced_events \
         FROM events WHERE {range} GROUP BY agent_id, discovered_agent_id"
    );
    let rows: Vec<DriftRow> = store.client().query(&sql).fetch_all().await.expect("direct drift");
    let mut daemons: BTreeMap<Uuid, (u64, u64, u64)> = BTreeMap::new();
    let mut agents: BTreeMap<(Uuid, Uuid), (u64, u64, u64)> = BTreeMap::new();
    for row in &rows {
        let d = daemons.entry(row.agent_id).or_default();
        *d = (d.0 + row.events, d.1 + row.drift_events, d.2 + row.unenforced_events);
        agents.insert((row.agent_id, row.discovered_agent_id), (row.events, row.drift_events, row.unenforced_events));
    }
    let keep = |c: &(u64, u64, u64)| c.1 > 0 || c.2 > 0;
    let want_daemons: BTreeMap<Uuid, (u64, u64, u64)> = daemons.into_iter().filter(|(_, c)| keep(c)).collect();
    let got_daemons: BTreeMap<Uuid, (u64, u64, u64)> =
        summary.by_daemon.iter().map(|d| (d.daemon_id, (d.events, d.drift_events, d.unenforced_events))).collect();
    assert_eq!(got_daemons, want_daemons);
    assert_eq!(summary.by_daemon.len(), DAEMONS);
    assert!(summary.by_daemon.windows(2).all(|w| w[0].drift_events >= w[1].drift_events), "most drift first");
    assert!(summary.by_daemon.iter().all(|d| d.last_drift_at.is_some() == (d.drift_events > 0)));
    let want_agents: BTreeMap<(Uuid, Uuid), (u64, u64, u64)> = agents.into_iter().filter(|(_, c)| keep(c)).collect();
    let got_agents: BTreeMap<(Uuid, Uuid), (u64, u64, u64)> = summary
        .by_discovered_agent
        .iter()
        .map(|a| {
            ((a.daemon_id, a.discovered_agent_id.unwrap_or_default()), (a.events, a.drift_events, a.unenforced_events))
        })
        .collect();
    assert_eq!(got_agents.len(), summary.by_discovered_agent.len(), "one row per daemon and agent");
    if summary.by_discovered_agent_truncated {
        assert_eq!(got_agents.len(), 1_000);
        assert!(want_agents.len() > 1_000);
        for (key, counts) in &got_agents {
            assert_eq!(want_agents.get(key), Some(counts));
        }
    } else {
        assert_eq!(got_agents, want_agents);
    }
    for agent in &summary.by_discovered_agent {
        let want_type = match agent.discovered_agent_id {
            None => "unknown",
            Some(id) => TYPES[fleet.agents.iter().position(|a| *a == id).expect("a generated agent") % 5],
        };
        assert_eq!(agent.agent_type, want_type);
    }

    let latest: Vec<Uuid> = summary.latest.iter().map(|e| e.event_id).collect();
    assert_eq!(latest, direct_ids(store, &format!("{range} AND drift_detected"), 15).await);
    assert!(summary.latest.iter().all(|e| e.drift));

    // Unenforced events are counted even where the filter selects no drift.
    let quiet =
        EventFilter { drift: Some(false), from: Some(ts(fleet.now_ns - 20 * HOUR_NS)), ..EventFilter::default() };
    let summary =
        event_query::drift_summary(store, &quiet.resolve(Vec::new()).expect("valid"), 15).await.expect("drift");
    assert_eq!(summary.totals.drift_events, 0);
    assert!(summary.latest.is_empty());
    assert_eq!(
        summary.totals.unenforced_events,
        direct_count(store, &format!("{range} AND metadata['enforced'] = 'false'")).await
    );
}
