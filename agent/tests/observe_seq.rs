//! `tyrd observe` numbers what it prints, after filtering: with a policy
//! (the enforcing hooks then see every process, and the userspace filters
//! drop what was not asked for) the printed sequence numbers are still
//! contiguous, and a restart resumes past them.

mod support;

use std::process::Command;

use support::{Observer, field, marker};

fn seqs(events: &[serde_json::Value]) -> Vec<u64> {
    events.iter().map(|e| e["seq"].as_u64().expect("seq")).collect()
}

#[test]
fn printed_numbers_are_contiguous_after_filtering() {
    let dir = std::env::temp_dir().join(marker("tyr-seq-"));
    std::fs::create_dir_all(&dir).expect("dir");
    let policy = dir.join("policy.yaml");
    std::fs::write(
        &policy,
        "- name: watch-lab\n  action: net_connect\n  cidr_deny: [\"127.0.0.211/32\"]\n  verdict: alert\n",
    )
    .expect("write policy");
    let state = dir.join("state");
    let tag = marker("seq-");
    let observer = Observer::start_in(
        &state,
        &["--kind", "exec", "--policy", policy.to_str().expect("utf-8"), "--comm", "printf"],
    );
    // Other processes' file opens, forks and exits reach userspace (the
    // policy makes the hooks watch everyone) and are filtered out there.
    for _ in 0..20 {
        let out = Command::new("/usr/bin/printf").args(["%s", &tag]).output().expect("run printf");
        assert!(out.status.success());
        let _ = Command::new("/bin/cat").arg("/etc/hostname").output();
    }
    observer.wait_for("a printf", |e| field(e, "kind") == "EXEC" && field(e, "cmdline").contains(&tag));
    observer.settle();
    let first = observer.stop();
    let tagged = first.events.iter().filter(|e| field(e, "cmdline").contains(&tag)).count();
    assert!(tagged >= 20, "{tagged} printf execs printed");
    // The filters did drop events in userspace (else this proves nothing).
    let seen: u64 = first.counters["seen"].as_object().expect("seen").values().filter_map(|v| v.as_u64()).sum();
    assert!(seen > first.counters["printed"].as_u64().expect("printed"), "{}", first.counters);
    let numbers = seqs(&first.events);
    for pair in numbers.windows(2) {
        assert_eq!(pair[1], pair[0] + 1, "printed numbers are contiguous: {numbers:?}");
    }

    // A restart resumes past every number printed.
    let observer = Observer::start_in(&state, &["--kind", "exec", "--comm", "printf"]);
    Command::new("/usr/bin/printf").args(["%s", &tag]).output().expect("run printf");
    let again = observer.wait_for("printf after restart", |e| field(e, "cmdline").contains(&tag));
    observer.stop();
    assert!(again["seq"].as_u64().expect("seq") > *numbers.last().expect("numbers"));
    let _ = std::fs::remove_dir_all(&dir);
}
