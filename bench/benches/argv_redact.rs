//! Cost of redacting credentials from an exec's arguments, paid once per
//! exec record before the command line is kept: ordinary command lines,
//! ones holding keys, and adversarial ones at the kernel's argv bound
//! (`TYR_ARGV_MAX`, 1 KiB) built to make a naive matcher backtrack.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use tyr_agent::redact;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The kernel's bound on an exec record's argv.
const ARGV_MAX: usize = 1024;

fn block(args: &[&str]) -> Vec<u8> {
    args.iter().flat_map(|a| a.bytes().chain([0])).collect()
}

/// `unit` repeated to the argv bound.
fn filled(unit: &str) -> Vec<u8> {
    unit.bytes().cycle().take(ARGV_MAX).collect()
}

fn redaction(c: &mut Criterion) {
    let cases = [
        ("plain", block(&["git", "commit", "-m", "fix the parser", "--no-verify", "--author", "A <a@example.com>"])),
        (
            "node_agent",
            block(&["node", "/usr/lib/node_modules/@anthropic-ai/claude-code/cli.js", "--print", "--model", "opus"]),
        ),
        (
            "keys",
            block(&[
                "codex",
                "--openai-api-key",
                "sk-proj-AAAAbbbbCCCCdddd1234567890abcdefghij",
                "--token=ghp_abcdefghijklmnopqrstuvwxyz0123456789",
                "Bearer xyz",
                "https://user:pass@example.com/v1?access_token=abc",
            ]),
        ),
        ("max_equals", filled("a=")),
        ("max_urls", filled("a://b")),
        ("max_prefixes", filled("sk-")),
        ("max_flags", filled("--token ")),
    ];
    let mut group = c.benchmark_group("argv_redact");
    for (name, argv) in &cases {
        group.bench_function(*name, |b| b.iter(|| black_box(redact::argv(black_box(argv), false))));
    }
    group.finish();
}

criterion_group!(benches, redaction);
criterion_main!(benches);
