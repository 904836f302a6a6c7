//! Drift re-evaluation (DESIGN "Drift"): events decided under a stale policy
//! version, a kernel more permissive than the server, unenforced events,
//! requests rebuilt from TLS and connect metadata, garbage that must not
//! panic — through the evaluator pool, then stored and counted per daemon
//! and per discovered agent in a real ClickHouse (the dev endpoint).

mod ingest_support;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tyr_common::policy::{parse_policy, to_cedar};
use tyr_proto::{Event, EventKind, Severity, Verdict};
use tyr_server::drift::counts::{self, DriftFilter};
use tyr_server::drift::{DriftContext, DriftOutcome, DriftPool, PolicyCache, evaluate};
use tyr_server::ingest::{Ingest, IngestConfig};
use uuid::Uuid;

const POLICY: &str = r#"
name: drift-test
default_verdict: allow
rules:
  - name: no-shadow
    action: file_read
    paths: ["/etc/shadow"]
    verdict: deny
    severity: critical
  - name: watch-writes
    action: file_write
    paths: ["/etc/*"]
    verdict: alert
    severity: medium
  - name: no-sudo
    action: exec
    paths: ["/usr/bin/sudo"]
    verdict: deny
    severity: high
  - name: no-loopback-9
    action: net_connect
    cidr_deny: ["127.0.0.9/32"]
    verdict: deny
    severity: high
  - name: no-evil-tls
    action: tls_connect
    sni_pattern: "evil.example"
    verdict: deny
    severity: high
overlays:
  cursor:
    - name: cursor-no-tmp-exec
      action: exec
      paths: ["/tmp/*"]
      verdict: deny
      severity: high
"#;

const VERSION: i64 = 7;

fn context(sent: &[i64]) -> DriftContext {
    let set = parse_policy("drift-test.yaml", POLICY).expect("test policy parses");
    let cache = PolicyCache::default();
    let policy = cache.get_or_parse(VERSION, &to_cedar(&set, VERSION)).expect("cedar loads");
    DriftContext::new(Uuid::now_v7(), policy, Arc::new(sent.iter().copied().collect::<BTreeSet<i64>>()))
}

fn event(kind: EventKind, resource: &str, verdict: Verdict, metadata: &[(&str, &str)]) -> Event {
    Event {
        event_id: Uuid::now_v7().to_string(),
        kind: kind as i32,
        resource: resource.to_owned(),
        verdict: verdict as i32,
        severity: Severity::Info as i32,
        // Now: the table's TTL drops rows older than its retention.
        timestamp_ns: i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos()).expect("in range"),
        policy_version: VERSION,
        agent_type: "unknown".to_owned(),
        metadata: metadata.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect::<BTreeMap<_, _>>(),
        ..Event::default()
    }
}

fn outcome(server_verdict: Verdict, drift_detected: bool) -> DriftOutcome {
    DriftOutcome { server_verdict, drift_detected, unenforced: false, not_evaluable: false }
}

#[test]
fn kernel_more_permissive_than_the_server_is_drift() {
    let ctx = context(&[5, VERSION]);
    let allowed_shadow = event(EventKind::FileRead, "/etc/shadow", Verdict::Allow, &[]);
    assert_eq!(evaluate(&ctx, &allowed_shadow), outcome(Verdict::Deny, true));
    let alerted_shadow = event(EventKind::FileRead, "/etc/shadow", Verdict::Alert, &[]);
    assert_eq!(evaluate(&ctx, &alerted_shadow), outcome(Verdict::Deny, true));
    let allowed_etc_write = event(EventKind::FileWrite, "/etc/motd", Verdict::Allow, &[]);
    assert_eq!(evaluate(&ctx, &allowed_etc_write), outcome(Verdict::Alert, true));
    // Agreement, and a kernel stricter than the server, are not drift.
    let denied_shadow = event(EventKind::FileRead, "/etc/shadow", Verdict::Deny, &[("enforced", "true")]);
    assert_eq!(evaluate(&ctx, &denied_shadow), outcome(Verdict::Deny, false));
    let denied_hosts = event(EventKind::FileRead, "/etc/hosts", Verdict::Deny, &[]);
    assert_eq!(evaluate(&ctx, &denied_hosts), outcome(Verdict::Allow, false));
    let sudo = event(EventKind::Exec, "/usr/bin/sudo", Verdict::Deny, &[]);
    assert_eq!(evaluate(&ctx, &sudo), outcome(Verdict::Deny, false));
}

#[test]
fn agent_types_pick_their_overlay() {
    let ctx = context(&[VERSION]);
    let mut tmp_exec = event(EventKind::Exec, "/tmp/payload", Verdict::Allow, &[]);
    assert_eq!(evaluate(&ctx, &tmp_exec), outcome(Verdict::Allow, false), "the base allows it");
    tmp_exec.agent_type = "cursor".to_owned();
    assert_eq!(evaluate(&ctx, &tmp_exec), outcome(Verdict::Deny, true), "cursor's overlay denies it");
    tmp_exec.agent_type = String::new();
    assert_eq!(evaluate(&ctx, &tmp_exec).server_verdict, Verdict::Allow, "empty type is unknown");
}

#[test]
fn a_version_the_server_never_sent_is_drift() {
    let ctx = context(&[5, VERSION]);
    let mut stale = event(EventKind::FileRead, "/etc/hosts", Verdict::Allow, &[]);
    stale.policy_version = 6;
    assert_eq!(evaluate(&ctx, &stale), outcome(Verdict::Allow, true));
    stale.policy_version = 5;
    assert_eq!(evaluate(&ctx, &stale), outcome(Verdict::Allow, false), "an older version that was sent");
    stale.policy_version = 0;
    let undecided = evaluate(&ctx, &stale);
    assert!(undecided.unenforced && !undecided.drift_detected, "no policy in force: unenforced, not drift");
    // Before any push there is nothing to be stale against.
    let fresh = context(&[]);
    stale.policy_version = 6;
    assert_eq!(evaluate(&fresh, &stale), outcome(Verdict::Allow, false));
}

#[test]
fn unenforced_events_are_counted_apart_and_never_drift() {
    let ctx = context(&[VERSION]);
    let mut unenforced = event(
        EventKind::FileRead,
        "/etc/shadow",
        Verdict::Allow,
        &[("enforced", "false"), ("policy_verdict", "DENY"), ("rule", "no-shadow")],
    );
    let expected =
        DriftOutcome { server_verdict: Verdict::Deny, drift_detected: false, unenforced: true, not_evaluable: false };
    assert_eq!(evaluate(&ctx, &unenforced), expected);
    unenforced.policy_version = 99;
    assert_eq!(evaluate(&ctx, &unenforced), expected, "not drift even under an unknown version");
}

#[test]
fn connect_and_tls_requests_come_from_metadata() {
    let ctx = context(&[VERSION]);
    let connect = |ip: &str, port: &str| {
        event(EventKind::NetConnect, "ignored", Verdict::Allow, &[("remote_ip", ip), ("remote_port", port)])
    };
    assert_eq!(evaluate(&ctx, &connect("127.0.0.9", "8080")), outcome(Verdict::Deny, true));
    assert_eq!(evaluate(&ctx, &connect("127.0.0.8", "8080")), outcome(Verdict::Allow, false));
    assert_eq!(evaluate(&ctx, &connect("::ffff:127.0.0.9", "80")), outcome(Verdict::Deny, true), "v4-mapped");
    let tls = |sni: &str| {
        event(
            EventKind::Tls,
            sni,
            Verdict::Allow,
            &[("sni", sni), ("remote_ip", "203.0.113.7"), ("remote_port", "443")],
        )
    };
    assert_eq!(evaluate(&ctx, &tls("evil.example")), outcome(Verdict::Deny, true));
    assert_eq!(evaluate(&ctx, &tls("EVIL.example.")), outcome(Verdict::Deny, true), "names are normalised");
    assert_eq!(evaluate(&ctx, &tls("good.example")), outcome(Verdict::Allow, false));
}

#[test]
fn garbage_is_not_evaluable_and_never_panics() {
    let ctx = context(&[VERSION]);
    let not_evaluable = DriftOutcome {
        server_verdict: Verdict::Unspecified,
        drift_detected: false,
        unenforced: false,
        not_evaluable: true,
    };
    let garbage = [
        event(EventKind::NetConnect, "x", Verdict::Allow, &[]),
        event(EventKind::NetConnect, "x", Verdict::Allow, &[("remote_ip", "999.1.1.1"), ("remote_port", "80")]),
        event(EventKind::NetConnect, "x", Verdict::Allow, &[("remote_ip", "127.0.0.9"), ("remote_port", "70000")]),
        event(EventKind::NetConnect, "x", Verdict::Allow, &[("remote_ip", "127.0.0.9"), ("remote_port", "-1")]),
        event(EventKind::Tls, "x", Verdict::Allow, &[("remote_ip", "127.0.0.9"), ("remote_port", "443")]),
        event(EventKind::Tls, "x", Verdict::Allow, &[("sni", ""), ("remote_ip", "127.0.0.9"), ("remote_port", "443")]),
        event(EventKind::FileRead, "", Verdict::Allow, &[]),
        event(EventKind::Exec, "", Verdict::Deny, &[]),
    ];
    for event in &garbage {
        assert_eq!(evaluate(&ctx, event), not_evaluable, "{event:?}");
    }
    // Unknown kinds and process lifecycle are governed by no rule.
    let lifecycle =
        DriftOutcome { server_verdict: Verdict::Allow, drift_detected: false, unenforced: false, not_evaluable: false };
    for kind in [EventKind::Exit as i32, EventKind::Fork as i32, 0, 42, -3] {
        let mut e = event(EventKind::Exit, "/usr/bin/cat", Verdict::Allow, &[]);
        e.kind = kind;
        e.verdict = 17;
        assert_eq!(evaluate(&ctx, &e), lifecycle);
    }
    // Odd strings in every field Cedar sees.
    let weird = "\"\\\u{0}\u{202e}*/../ünï";
    let mut e = event(EventKind::FileWrite, weird, Verdict::Allow, &[("sni", weird)]);
    e.agent_type = weird.to_owned();
    let _ = evaluate(&ctx, &e);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_evaluates_off_the_runtime_and_counts_per_daemon_and_agent_in_clickhouse() {
    let store = ingest_support::scratch_store().await;
    let pg = ingest_support::scratch_pg().await;
    let pool = DriftPool::start(2);
    let ctx = context(&[VERSION]);
    let daemon = ctx.daemon_id;
    let agent = Uuid::now_v7();

    // Per agent: 2 drifting (allowed shadow read, stale version), 1 unenforced, 2 fine.
    let mut events = Vec::new();
    for discovered in [String::new(), agent.to_string()] {
        let mut batch = vec![
            event(EventKind::FileRead, "/etc/shadow", Verdict::Allow, &[]),
            event(EventKind::FileRead, "/etc/hosts", Verdict::Allow, &[]),
            event(EventKind::FileRead, "/etc/shadow", Verdict::Allow, &[("enforced", "false")]),
            event(EventKind::Exit, "/usr/bin/cat", Verdict::Allow, &[]),
            event(EventKind::FileRead, "/etc/hosts", Verdict::Allow, &[]),
        ];
        batch[4].policy_version = 3;
        for e in &mut batch {
            e.discovered_agent_id = discovered.clone();
        }
        events.extend(batch);
    }
    for (i, e) in events.iter_mut().enumerate() {
        e.seq = i as u64 + 1;
    }
    let evaluated = pool.submit(ctx.clone(), events).await.expect("the pool answers");
    assert_eq!(evaluated.len(), 10);
    let stats = pool.stats();
    assert_eq!(stats.evaluated.load(Ordering::Relaxed), 10);
    assert_eq!(stats.drift.load(Ordering::Relaxed), 4);
    assert_eq!(stats.unenforced.load(Ordering::Relaxed), 2);
    assert_eq!(stats.not_evaluable.load(Ordering::Relaxed), 0);

    let shutdown = tokio_util::sync::CancellationToken::new();
    let ingest_config = IngestConfig { flush_interval: Duration::from_millis(50), ..IngestConfig::default() };
    let (ingest, writer) = Ingest::start(store.clone(), pg.pool.clone(), ingest_config, shutdown.clone());
    let acked = ingest.enqueue(daemon, evaluated).await.expect("queued").await.expect("answered").expect("stored");
    assert_eq!(acked, 10);

    let all = counts::query(&store, DriftFilter::default()).await.expect("counts");
    let expected = |discovered: Uuid| counts::DriftCount {
        daemon_id: daemon,
        discovered_agent_id: discovered,
        drift_events: 2,
        unenforced_events: 1,
        events: 5,
    };
    assert_eq!(all, vec![expected(Uuid::nil()), expected(agent)]);
    let filtered = DriftFilter { daemon: Some(Uuid::now_v7()), since: None };
    assert!(counts::query(&store, filtered).await.expect("counts").is_empty(), "another daemon has none");
    let since = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    let recent = DriftFilter { daemon: Some(daemon), since: Some(since) };
    assert_eq!(counts::query(&store, recent).await.expect("counts").len(), 2);
    let future = DriftFilter { daemon: Some(daemon), since: Some(since + time::Duration::hours(2)) };
    assert!(counts::query(&store, future).await.expect("counts").is_empty());

    shutdown.cancel();
    writer.await.expect("writer stops");
    ingest_support::drop_store(&store).await;
    pg.drop_now().await;
}

#[test]
fn a_replay_is_judged_by_the_version_it_was_decided_under() {
    // Version 5 allowed everything; version 7 (current) denies /etc/shadow.
    let open = parse_policy("open.yaml", "name: open\ndefault_verdict: allow\nrules: []\n").expect("parses");
    let cache = PolicyCache::default();
    let earlier = cache.get_or_parse(5, &to_cedar(&open, 5)).expect("cedar loads");
    let mut ctx = context(&[5, VERSION]);
    ctx.earlier = Arc::new(BTreeMap::from([(5, earlier)]));

    // Spooled under version 5 and replayed after the change: not drift.
    let mut replayed = event(EventKind::FileRead, "/etc/shadow", Verdict::Allow, &[]);
    replayed.policy_version = 5;
    assert_eq!(evaluate(&ctx, &replayed), outcome(Verdict::Allow, false));
    // Decided under the current version: drift.
    let current = event(EventKind::FileRead, "/etc/shadow", Verdict::Allow, &[]);
    assert_eq!(evaluate(&ctx, &current), outcome(Verdict::Deny, true));
    // A version kept parsed but never sent to this daemon is no shelter.
    let mut unsent_ctx = context(&[VERSION]);
    unsent_ctx.earlier = Arc::clone(&ctx.earlier);
    let mut forged = event(EventKind::FileRead, "/etc/shadow", Verdict::Allow, &[]);
    forged.policy_version = 5;
    assert_eq!(evaluate(&unsent_ctx, &forged), outcome(Verdict::Deny, true));
}
