//! Drift decisions per second at a 100-rule policy: the evaluator pool (N
//! worker threads) beside single-threaded plain `CedarEvaluator::decide` on
//! the same events. Throughput is reported in events per second.
//!
//! The pool remembers decisions per policy version (`drift::memo`); the
//! events here repeat about 480 distinct requests, as a fleet repeats its
//! files and hosts. `pool_cold` parses a fresh policy for every iteration,
//! so each distinct request is decided by Cedar once per iteration;
//! `pool_warm` keeps the policy, so every decision is remembered.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::BatchSize;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tyr_common::policy::{CedarEvaluator, Request, parse_policy, to_cedar};
use tyr_proto::{Event, EventKind, Verdict};

use tyr_server::drift::{DriftContext, DriftPolicy, DriftPool, PolicyCache};
use uuid::Uuid;

const EVENTS: usize = 5_000;
const BATCH: usize = 500;
const VERSION: i64 = 42;

/// A policy of 100 rules: file globs and prefixes, exec paths, connect CIDRs and ports.
fn hundred_rule_policy() -> String {
    let mut yaml = String::from("name: bench-100\ndefault_verdict: allow\nrules:\n");
    for i in 0..100 {
        let rule = match i % 4 {
            0 => format!(
                "    action: file_read\n    paths: [\"/srv/secret{i}/*\", \"/home/*/.cred{i}\"]\n    verdict: deny\n"
            ),
            1 => format!(
                "    action: file_write\n    paths: [\"/etc/app{i}/\", \"/var/lib/*/state{i}.db\"]\n    verdict: alert\n"
            ),
            2 => format!("    action: exec\n    paths: [\"/opt/tool{i}/bin/*\"]\n    verdict: deny\n"),
            _ => format!(
                "    action: net_connect\n    cidr_deny: [\"10.{i}.0.0/16\"]\n    ports: [{}]\n    verdict: deny\n",
                1000 + i
            ),
        };
        let _ = write!(yaml, "  - name: rule-{i}\n{rule}    severity: high\n");
    }
    yaml
}

/// Events that walk deep into the rule list (most match late or not at all).
fn events() -> Vec<Event> {
    (0..EVENTS)
        .map(|i| {
            let (kind, resource, metadata) = match i % 4 {
                0 => (EventKind::FileRead, format!("/srv/secret{}/key", (i * 7) % 120), vec![]),
                1 => (EventKind::FileWrite, format!("/var/lib/app/state{}.db", (i * 3) % 120), vec![]),
                2 => (EventKind::Exec, format!("/opt/tool{}/bin/run", i % 130), vec![]),
                _ => (
                    EventKind::NetConnect,
                    String::new(),
                    vec![("remote_ip", format!("10.{}.1.2", i % 110)), ("remote_port", format!("{}", 1000 + i % 110))],
                ),
            };
            Event {
                event_id: Uuid::now_v7().to_string(),
                kind: kind as i32,
                resource,
                verdict: Verdict::Allow as i32,
                seq: i as u64 + 1,
                policy_version: VERSION,
                agent_type: "unknown".to_owned(),
                metadata: metadata.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
                ..Event::default()
            }
        })
        .collect()
}

fn request_of(event: &Event) -> Request<'_> {
    match EventKind::try_from(event.kind) {
        Ok(EventKind::FileRead) => Request::File { write: false, path: &event.resource },
        Ok(EventKind::FileWrite) => Request::File { write: true, path: &event.resource },
        Ok(EventKind::Exec) => Request::Exec { path: &event.resource },
        _ => Request::Connect {
            addr: event.metadata["remote_ip"].parse().expect("bench address"),
            port: event.metadata["remote_port"].parse().expect("bench port"),
        },
    }
}

fn drift_decisions(c: &mut Criterion) {
    let set = parse_policy("bench-100.yaml", &hundred_rule_policy()).expect("bench policy parses");
    let cedar = to_cedar(&set, VERSION);
    let events = events();
    let plain = CedarEvaluator::new(&cedar).expect("cedar loads");
    let policy = PolicyCache::default().get_or_parse(VERSION, &cedar).expect("cedar loads");
    let ctx = DriftContext::new(Uuid::now_v7(), policy, Arc::new(BTreeSet::from([VERSION])));
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let pool = DriftPool::start(workers);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let batches: Vec<Vec<Event>> = events.chunks(BATCH).map(<[Event]>::to_vec).collect();

    let mut group = c.benchmark_group("drift_100_rules");
    group.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    group.throughput(Throughput::Elements(EVENTS as u64));
    group.bench_function("plain_cedar_single_thread", |b| {
        b.iter(|| {
            for event in &events {
                black_box(plain.decide("unknown", &request_of(event)).expect("decides"));
            }
        });
    });
    let run = |ctx: &DriftContext| {
        runtime.block_on(async {
            let receivers: Vec<_> = batches.iter().map(|batch| pool.submit(ctx.clone(), batch.clone())).collect();
            for receiver in receivers {
                black_box(receiver.await.expect("evaluated"));
            }
        });
    };
    group.bench_function(format!("pool_cold_{workers}_workers"), |b| {
        b.iter_batched(
            || {
                let fresh = Arc::new(DriftPolicy::new(VERSION, &cedar).expect("cedar loads"));
                DriftContext::new(Uuid::now_v7(), fresh, Arc::new(BTreeSet::from([VERSION])))
            },
            |fresh| run(&fresh),
            BatchSize::PerIteration,
        );
    });
    group.bench_function(format!("pool_warm_{workers}_workers"), |b| b.iter(|| run(&ctx)));
    group.finish();
}

criterion_group!(benches, drift_decisions);
criterion_main!(benches);
