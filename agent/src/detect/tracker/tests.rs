//! The tracker's unit tests: classification, inheritance, restriction,
//! behavioural evidence, operators' overrides, no laundering, and bounds.

use super::*;
use crate::detect::feed::AgentFeed;
use crate::detect::overrides::OverrideSet;

#[test]
fn a_restricted_unregistered_agent_cannot_exec_its_way_out() {
    let mut t = AgentTracker::new(
        Registry::in_memory(),
        None,
        None,
        PathBuf::from("/nonexistent"),
        UnregisteredAgents::Quarantine,
    );
    // Only a name: a weak candidate, so an unregistered agent.
    t.on_exec(20, 1, "/opt/tools/cursor", &argv(&["cursor"]), 0);
    assert!(t.label(20, 0).metadata.iter().any(|(k, v)| *k == UNREGISTERED_AGENT && &**v == "true"));
    // Its child execs a confidently known agent: still unregistered.
    t.on_fork(20, 21, 0);
    t.on_exec(21, 20, "/usr/bin/node", &argv(&["node", "/opt/@anthropic-ai/claude-code/cli.js"]), 0);
    let child = t.label(21, 0);
    assert_eq!(child.agent_type, UNKNOWN, "{child:?}");
    assert!(child.metadata.iter().any(|(k, _)| *k == UNREGISTERED_AGENT));
    // Under audit the same child is claude-code.
    let mut audit = AgentTracker::detached();
    audit.on_exec(20, 1, "/opt/tools/cursor", &argv(&["cursor"]), 0);
    audit.on_fork(20, 21, 0);
    audit.on_exec(21, 20, "/usr/bin/node", &argv(&["node", "/opt/@anthropic-ai/claude-code/cli.js"]), 0);
    assert_eq!(audit.label(21, 0).agent_type, "claude-code");
}

fn argv(args: &[&str]) -> Vec<u8> {
    args.iter().flat_map(|a| a.bytes().chain([0])).collect()
}

#[test]
fn classification_inheritance_and_evidence() {
    let mut t = AgentTracker::detached();
    t.on_exec(10, 1, "/usr/bin/node", &argv(&["node", "/opt/@anthropic-ai/claude-code/cli.js"]), 0);
    let claude = t.label(10, 0);
    assert_eq!(claude.agent_type, "claude-code");
    assert!(!claude.discovered_agent_id.is_empty());
    // A shell it starts, and that shell's child, are claude-code too.
    t.on_fork(10, 11, 0);
    t.on_exec(11, 10, "/usr/bin/bash", &argv(&["bash", "-c", "ls"]), 0);
    t.on_fork(11, 12, 0);
    t.on_exec(12, 11, "/usr/bin/ls", &argv(&["ls"]), 0);
    let lineage = t.label(12, 0);
    let lineage: std::collections::HashMap<_, _> = lineage.metadata.iter().cloned().collect();
    assert_eq!(&*lineage["agent_lineage"], "11:claude-code,10:claude-code,1:unknown");
    for pid in [11, 12] {
        let label = t.label(pid, 0);
        assert_eq!(label.agent_type, "claude-code");
        assert_eq!(label.discovered_agent_id, claude.discovered_agent_id);
        assert!(label.metadata.iter().any(|(k, v)| *k == "agent_inherited" && &**v == "true"));
    }
    // Plain processes are unknown, with the unregistered mode recorded.
    t.on_exec(20, 1, "/usr/bin/ls", &argv(&["ls"]), 0);
    let plain = t.label(20, 0);
    assert_eq!(plain.agent_type, "unknown");
    assert!(plain.metadata.iter().any(|(k, v)| *k == "unregistered_agents" && &**v == "audit"));
    // A renamed binary called cursor: a candidate, not a classification.
    t.on_exec(21, 1, "/tmp/x/cursor", &argv(&["cursor"]), 0);
    let renamed = t.label(21, 0);
    assert_eq!(renamed.agent_type, "unknown");
    let meta: std::collections::HashMap<_, _> = renamed.metadata.iter().cloned().collect();
    assert_eq!(&*meta["agent_candidate"], "cursor");
    assert_eq!(&*meta["agent_evidence"], "exe_name:cursor=25");
}

#[test]
fn behaviour_completes_a_fingerprint() {
    let mut t = AgentTracker::detached();
    t.on_exec(30, 1, "/usr/bin/python3.11", &argv(&["python3", "agent.py"]), 0);
    assert_eq!(t.label(30, 0).agent_type, "unknown");
    t.on_file(30, "/venv/lib/python3.11/site-packages/langgraph/__init__.py", false);
    assert_eq!(t.label(30, 0).agent_type, "unknown", "a module alone is 50 < 60");
    let mut t = AgentTracker::detached();
    t.on_exec(31, 1, "/home/u/.local/bin/aider", &argv(&["aider"]), 0);
    t.on_file(31, "/home/u/project/.aider.chat.history.md", true);
    assert_eq!(t.label(31, 0).agent_type, "aider");
    // Identity of interpreted agents includes the script.
    let fp = Fingerprint {
        exe: "/usr/bin/python3".into(),
        argv: vec!["python3".into(), "-u".into(), "bots/agent.py".into()],
        ..Fingerprint::default()
    };
    assert_eq!(fingerprint::identity(&fp), "/usr/bin/python3 bots/agent.py");
}

#[test]
fn tls_to_an_unexpected_host_is_a_mismatch() {
    let mut t = AgentTracker::detached();
    t.on_exec(40, 1, "/opt/cursor/bin/cursor", &argv(&["cursor"]), 0);
    // No environment in this detached tracker: make it confident by path and SNI.
    assert_eq!(t.on_tls(40, "api2.cursor.sh"), None);
    assert_eq!(t.label(40, 0).agent_type, "cursor");
    let reason = t.on_tls(40, "evil.example.com").expect("mismatch");
    assert!(reason.contains("evil.example.com"), "{reason}");
}

#[test]
fn an_override_relabels_running_and_later_processes() {
    let feed = Arc::new(AgentFeed::default());
    let mut t = AgentTracker::detached().with_feed(Arc::clone(&feed));
    // An unregistered agent (an LLM key, nothing else): discovered as unknown.
    t.on_exec(50, 1, "/usr/bin/python3", &argv(&["python3", "/srv/bot.py"]), 0);
    Arc::make_mut(&mut t.processes.get_mut(&50).expect("tracked").fingerprint).env_names =
        vec!["OPENAI_API_KEY".into()];
    let mut state = t.processes.pop(&50).expect("tracked");
    t.reclassify(50, &mut state);
    t.put(50, state);
    let before = t.label(50, 0);
    assert_eq!(before.agent_type, UNKNOWN);
    assert!(!before.discovered_agent_id.is_empty(), "an unregistered agent is discovered");
    assert!(before.metadata.iter().any(|(k, _)| *k == UNREGISTERED_AGENT));
    let notices = feed.notices(10);
    assert_eq!(notices.len(), 1);
    assert_eq!(
        (notices[0].agent_type.as_str(), notices[0].identity.as_str()),
        (UNKNOWN, "/usr/bin/python3 /srv/bot.py")
    );
    assert_eq!(feed.take_seen(), vec![notices[0].index], "labelling counts as activity");
    // A child it forked before the override.
    t.on_fork(50, 51, 0);
    let id: uuid::Uuid = before.discovered_agent_id.parse().expect("uuid");
    let mut overrides = OverrideSet::default();
    overrides.insert(id, "aider");
    // An override for an agent not discovered yet is kept.
    overrides.insert(uuid::Uuid::new_v4(), "cursor");
    assert_eq!(t.apply_overrides(overrides), 0, "no kernel map here");
    for pid in [50, 51] {
        let label = t.label(pid, 0);
        assert_eq!(label.agent_type, "aider", "pid {pid}");
        assert_eq!(label.discovered_agent_id, before.discovered_agent_id);
        assert!(!label.metadata.iter().any(|(k, _)| *k == UNREGISTERED_AGENT), "promoted: {label:?}");
        assert!(label.metadata.iter().any(|(k, v)| *k == "agent_detected_type" && &**v == UNKNOWN));
    }
    // A child forked and exec'd afterwards, and a process the tracker only
    // knows through the kernel's map, are the new type too.
    t.on_fork(50, 52, 0);
    t.on_exec(52, 50, "/usr/bin/curl", &argv(&["curl"]), 0);
    assert_eq!(t.label(52, 0).agent_type, "aider");
    assert_eq!(t.label(777, notices[0].index).agent_type, "aider");
    // Clearing the set restores the detected type.
    t.apply_overrides(OverrideSet::default());
    assert_eq!(t.label(50, 0).agent_type, UNKNOWN);
}

const CLAUDE: &str = "/opt/@anthropic-ai/claude-code/cli.js";

fn has(label: &AgentLabel, key: &str, value: &str) -> bool {
    label.metadata.iter().any(|(k, v)| *k == key && &**v == value)
}

#[test]
fn an_agent_cannot_exec_its_way_into_another_agent() {
    let mut t = AgentTracker::detached();
    t.on_exec(10, 1, "/usr/bin/node", &argv(&["node", CLAUDE]), 0);
    let claude = t.label(10, 0);
    assert_eq!(claude.agent_type, "claude-code");
    // The agent itself execs a binary fingerprinted as cursor (path and SNI).
    t.on_exec(10, 1, "/opt/cursor/bin/cursor", &argv(&["cursor"]), 0);
    let mismatch = t.on_tls(10, "api2.cursor.sh").expect("judged as claude-code");
    assert!(mismatch.contains("claude-code"), "{mismatch}");
    let same = t.label(10, 0);
    assert_eq!((same.agent_type, &same.discovered_agent_id), ("claude-code", &claude.discovered_agent_id));
    assert!(has(&same, "agent_claimed_type", "cursor"), "{same:?}");
    // A child forked before, and one forked after, exec the same.
    for child in [11, 12] {
        t.on_fork(10, child, 0);
        t.on_exec(child, 10, "/opt/cursor/bin/cursor", &argv(&["cursor"]), 0);
        t.on_tls(child, "api2.cursor.sh");
        let label = t.label(child, 0);
        assert_eq!((label.agent_type, &label.discovered_agent_id), ("claude-code", &claude.discovered_agent_id));
        assert!(has(&label, "agent_claimed_type", "cursor") && has(&label, "agent_inherited", "true"));
    }
    assert_eq!(t.claims_ignored, 3);
    // The registry lists the agents processes are governed as, not claims.
    assert_eq!(t.registry().agents().map(|a| a.agent_type.as_str()).collect::<Vec<_>>(), ["claude-code"]);
}

#[test]
fn a_new_identity_of_the_same_type_keeps_the_operators_override() {
    let mut t = AgentTracker::detached();
    t.on_exec(10, 1, "/usr/bin/node", &argv(&["node", CLAUDE]), 0);
    let id: uuid::Uuid = t.label(10, 0).discovered_agent_id.parse().expect("uuid");
    let mut overrides = OverrideSet::default();
    overrides.insert(id, UNKNOWN);
    t.apply_overrides(overrides);
    assert_eq!(t.label(10, 0).agent_type, UNKNOWN);
    // A fresh claude-code at another path would be a new, un-overridden agent.
    t.on_fork(10, 11, 0);
    t.on_exec(11, 10, "/usr/bin/node", &argv(&["node", "/tmp/x/@anthropic-ai/claude-code/cli.js"]), 0);
    let child = t.label(11, 0);
    assert_eq!((child.agent_type, child.discovered_agent_id.parse().ok()), (UNKNOWN, Some(id)));
    assert!(has(&child, "agent_claimed_type", "claude-code"), "{child:?}");
    assert_eq!(t.registry().len(), 1);
}

#[test]
fn a_full_registry_still_governs_by_type() {
    let mut t = AgentTracker::detached();
    for i in 0..crate::detect::registry::MAX_AGENTS {
        t.registry.discover("aider", &format!("/made/up/{i}"), "/made/up", 70, "");
    }
    t.on_exec(10, 1, "/usr/bin/node", &argv(&["node", CLAUDE]), 0);
    let label = t.label(10, 0);
    assert_eq!((label.agent_type, label.discovered_agent_id.as_str()), ("claude-code", ""));
    assert!(has(&label, "agent_registry_full", "true"));
    assert_eq!(t.registry().refused, 1);
    t.on_fork(10, 11, 0);
    t.on_exec(11, 10, "/opt/cursor/bin/cursor", &argv(&["cursor"]), 0);
    t.on_tls(11, "api2.cursor.sh");
    assert_eq!(t.label(11, 0).agent_type, "claude-code", "typed, and still no laundering");
}

#[test]
fn the_tracker_is_bounded_in_bytes() {
    let mut t = AgentTracker::detached();
    let long: Vec<u8> = (0..64).flat_map(|_| std::iter::repeat_n(b'a', 511).chain([0])).collect();
    assert_eq!(fingerprint::split_argv(&long).iter().map(String::len).sum::<usize>(), 8 * 511, "argv kept is bounded");
    for pid in 2..20_000 {
        t.on_exec(pid, 1, &format!("/{}", "x".repeat(3000)), &long, 0);
    }
    assert!(t.processes.bytes() <= PROCESS_BYTES, "{} bytes", t.processes.bytes());
    assert!(t.evicted() > 0 && t.evicted() + t.processes.len() as u64 == 19_998);
}
