//! Classification cost per exec: scoring a fingerprint against the
//! known-agent table, and the tracker's whole exec path (fingerprint,
//! classification, registry, label) as tyrd runs it for every new image.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use tyr_agent::detect::tracker::AgentTracker;
use tyr_common::agents::{Fingerprint, classify};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn fingerprints() -> Vec<Fingerprint> {
    let fp = |exe: &str, argv: &[&str], env: &[&str]| Fingerprint {
        exe: exe.to_owned(),
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env_names: env.iter().map(|s| s.to_string()).collect(),
        ..Fingerprint::default()
    };
    vec![
        fp("/usr/bin/ls", &["ls", "-la"], &[]),
        fp("/usr/bin/git", &["git", "status", "--porcelain"], &[]),
        fp(
            "/usr/bin/node",
            &["node", "/usr/lib/node_modules/@anthropic-ai/claude-code/cli.js"],
            &["ANTHROPIC_API_KEY"],
        ),
        fp("/opt/cursor/resources/bin/cursor-agent", &["cursor-agent"], &["CURSOR_TRACE_ID"]),
        fp("/usr/bin/python3.11", &["python3", "agent.py"], &["OPENAI_API_KEY"]),
        fp("/tmp/x/cursor", &["cursor"], &[]),
    ]
}

fn argv(args: &[String]) -> Vec<u8> {
    args.iter().flat_map(|a| a.bytes().chain([0])).collect()
}

fn classification(c: &mut Criterion) {
    let fps = fingerprints();
    c.bench_function("classify_fingerprint", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % fps.len();
            black_box(classify(&fps[i]))
        });
    });
    let execs: Vec<(String, Vec<u8>)> = fps.iter().map(|f| (f.exe.clone(), argv(&f.argv))).collect();
    c.bench_function("tracker_exec", |b| {
        let mut tracker = AgentTracker::detached();
        let mut pid = 1000u32;
        b.iter(|| {
            pid = pid.wrapping_add(1);
            let (exe, argv) = &execs[pid as usize % execs.len()];
            tracker.on_exec(pid, 1, exe, argv, 0);
            let label = tracker.label(pid, 0);
            tracker.on_exit(pid);
            black_box(label)
        });
    });
}

criterion_group!(benches, classification);
criterion_main!(benches);
