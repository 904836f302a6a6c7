//! Cedar compile time and decision time against the number of rules: a
//! policy of 512, 1,024, 2,048 and 4,096 rules (the limit) written as Cedar
//! text and loaded into an evaluator (`compile`, what the server does once
//! per policy version), and one request decided by that evaluator
//! (`decide`, what drift does per event not yet remembered). Both grow
//! linearly with the rules: each rule is one Cedar policy with only its
//! own condition.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::IpAddr;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tyr_common::policy::model::{Cidr, HostPattern, PathPattern, PortRange};
use tyr_common::policy::{Action, CedarEvaluator, Policy, PolicySet, Request, Rule, Severity, Verdict, to_cedar};

const SIZES: [usize; 4] = [512, 1024, 2048, 4096];
const VERSION: i64 = 42;

/// Rule `i`: file globs and prefixes, exec paths, connect ranges and ports,
/// TLS names, each in its own corner so that most requests walk far.
fn rule(i: usize) -> Rule {
    let verdict = [Verdict::Deny, Verdict::Alert, Verdict::Allow][i % 3];
    let mut rule = Rule {
        name: format!("rule-{i}"),
        action: Action::ALL[i % Action::ALL.len()],
        verdict,
        severity: Severity::default_for(verdict),
        paths: Vec::new(),
        cidrs: Vec::new(),
        ports: Vec::new(),
        server_names: Vec::new(),
    };
    match rule.action {
        Action::FileRead | Action::FileWrite => {
            rule.paths = vec![
                PathPattern::Glob(format!("/home/*/.cred{i}/*")),
                PathPattern::Prefix(format!("/srv/app{i}/")),
                PathPattern::Exact(format!("/etc/app{i}.conf")),
            ];
        }
        Action::Exec => rule.paths = vec![PathPattern::Glob(format!("/opt/tool{i}/bin/*"))],
        Action::NetConnect | Action::TlsConnect => {
            let addr = IpAddr::from([10, (i / 256) as u8, (i % 256) as u8, 0]);
            rule.cidrs = vec![Cidr { addr, prefix: 24 }];
            rule.ports = vec![PortRange { first: 1000 + i as u16, last: 1000 + i as u16 }];
            if rule.action == Action::TlsConnect {
                rule.server_names = vec![HostPattern::Subdomains(format!("svc{i}.example.com"))];
            }
        }
    }
    rule
}

/// A policy of `rules` rules: one in eight in a `cursor` overlay.
fn policy(rules: usize) -> PolicySet {
    let overlay = rules / 8;
    PolicySet {
        name: format!("bench-{rules}"),
        base: Policy { default_verdict: Verdict::Allow, rules: (overlay..rules).map(rule).collect() },
        overlays: BTreeMap::from([("cursor".to_owned(), (0..overlay).map(rule).collect())]),
    }
}

/// Requests that match late in the list or not at all, for each action.
fn requests(rules: usize) -> Vec<(String, IpAddr, u16)> {
    (0..64)
        .map(|k| {
            let i = rules - 1 - (k * 7) % (rules / 2);
            (format!("/srv/app{i}/data"), IpAddr::from([10, (i / 256) as u8, (i % 256) as u8, 9]), 1000 + i as u16)
        })
        .collect()
}

fn cedar_compile(c: &mut Criterion) {
    let mut group = c.benchmark_group("cedar");
    group.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    for rules in SIZES {
        let set = policy(rules);
        group.throughput(Throughput::Elements(rules as u64));
        group.bench_with_input(BenchmarkId::new("compile", rules), &set, |b, set| {
            b.iter(|| CedarEvaluator::new(&to_cedar(black_box(set), VERSION)).expect("cedar loads"));
        });
    }
    for rules in SIZES {
        let evaluator = CedarEvaluator::new(&to_cedar(&policy(rules), VERSION)).expect("cedar loads");
        let requests = requests(rules);
        group.throughput(Throughput::Elements(requests.len() as u64 * 3));
        group.bench_with_input(BenchmarkId::new("decide", rules), &requests, |b, requests| {
            b.iter(|| {
                for (path, addr, port) in requests {
                    for (agent, request) in [
                        ("unknown", Request::File { write: false, path }),
                        ("cursor", Request::Exec { path }),
                        ("unknown", Request::Connect { addr: *addr, port: *port }),
                    ] {
                        black_box(evaluator.decide(agent, &request).expect("decides"));
                    }
                }
            });
        });
    }
    group.finish();
}

criterion_group!(benches, cedar_compile);
criterion_main!(benches);
