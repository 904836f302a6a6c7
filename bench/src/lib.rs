//! Shared inputs for Tyr's benchmarks and load tools: realistic synthetic
//! events, generated deterministically so runs compare.

pub mod fleet;
pub mod ingest_load;
pub mod kernel_vm;
pub mod load;
pub mod tyrd_process;

use tyr_proto::{Event, EventKind, Severity, Verdict};
use uuid::Uuid;

/// `count` events cycling through every kind, with the shapes tyrd produces:
/// paths, commands, addresses, SNI, and a few metadata entries.
pub fn synthetic_events(count: usize) -> Vec<Event> {
    const KINDS: [EventKind; 5] =
        [EventKind::FileRead, EventKind::FileWrite, EventKind::Exec, EventKind::NetConnect, EventKind::Tls];
    let base_ns: i64 = 1_780_000_000_000_000_000;
    (0..count)
        .map(|i| {
            let kind = KINDS[i % KINDS.len()];
            let (resource, metadata) = match kind {
                EventKind::FileRead | EventKind::FileWrite => (
                    format!("/home/dev/project/src/module_{}.rs", i % 97),
                    vec![("flags", "O_RDONLY|O_CLOEXEC".to_owned())],
                ),
                EventKind::Exec => ("/usr/bin/git".to_owned(), vec![("argv", format!("git status --porcelain {i}"))]),
                EventKind::NetConnect => (format!("127.0.0.{}:443", i % 250 + 1), vec![("family", "inet".to_owned())]),
                _ => (
                    "api.openai.com".to_owned(),
                    vec![
                        ("sni", "api.openai.com".to_owned()),
                        ("remote_ip", "127.0.0.1".to_owned()),
                        ("remote_port", "443".to_owned()),
                        ("provider", "openai".to_owned()),
                    ],
                ),
            };
            Event {
                event_id: Uuid::now_v7().to_string(),
                agent_id: String::new(),
                discovered_agent_id: Uuid::from_u128(0xC0DE_0000 + (i % 8) as u128).to_string(),
                kind: kind as i32,
                resource,
                verdict: if i % 50 == 0 { Verdict::Deny } else { Verdict::Allow } as i32,
                severity: Severity::Low as i32,
                pid: 10_000 + (i % 300) as i64,
                process_exe: "/usr/lib/node_modules/@anthropic-ai/claude-code/cli.js".to_owned(),
                cmdline: "node /usr/lib/node_modules/@anthropic-ai/claude-code/cli.js --print".to_owned(),
                timestamp_ns: base_ns + i as i64 * 1_000,
                metadata: metadata.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
                seq: i as u64 + 1,
                ppid: 9_000,
                agent_type: "claude-code".to_owned(),
                policy_version: 7,
            }
        })
        .collect()
}
