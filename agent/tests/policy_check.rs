//! `tyrd policy check`: a valid policy prints its rules and compiled
//! summary (or its Cedar text), a malformed one exits 2 naming the
//! document, rule, field and line.

use std::process::Command;

fn write_policy(source: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("tyr-policy-{}.yaml", uuid::Uuid::new_v4().simple()));
    std::fs::write(&path, source).expect("write policy");
    path
}

fn check(source: &str) -> std::process::Output {
    let path = write_policy(source);
    let out = Command::new(env!("CARGO_BIN_EXE_tyrd")).args(["policy", "check"]).arg(&path).output().expect("run");
    let _ = std::fs::remove_file(&path);
    out
}

#[test]
fn valid_and_malformed_policies() {
    let ok = check("- name: no-shadow\n  action: file_read\n  paths: [\"/etc/shadow\"]\n  verdict: deny\n");
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&ok.stdout).expect("JSON");
    assert_eq!(summary["rules"][0]["name"], "no-shadow");
    assert_eq!(summary["rules"][0]["severity"], "high");
    // The path, and the directories above it (`/`, `/etc/`): renaming one is decided by the rule too.
    assert_eq!(summary["compiled"]["path_prefixes"], 3, "{summary}");
    assert_eq!(summary["compiled"]["cedar_policies"], 6, "one rule and five default permits: {summary}");

    let cedar_policy =
        write_policy("- name: no-shadow\n  action: file_read\n  paths: [\"/etc/shadow\"]\n  verdict: deny\n");
    let cedar = Command::new(env!("CARGO_BIN_EXE_tyrd"))
        .args(["policy", "check", "--cedar"])
        .arg(&cedar_policy)
        .output()
        .expect("run");
    let _ = std::fs::remove_file(&cedar_policy);
    let text = String::from_utf8_lossy(&cedar.stdout);
    assert!(text.contains("forbid (principal, action == Tyr::Action::\"file_read\", resource)"), "{text}");
    assert!(text.contains("context.path == \"/etc/shadow\""), "{text}");

    // A policy the kernel cannot hold is refused, naming the rule.
    let long = format!("- name: deep\n  action: exec\n  verdict: deny\n  paths: [\"/{}\"]\n", "d".repeat(300));
    let refused = check(&long);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("rule deep"));

    let bad = check("- name: x\n  action: exec\n  verdict: deny\n  paths: [\"bin/sh\"]\n");
    assert_eq!(bad.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains(":4:") && stderr.contains("rule x") && stderr.contains("field paths"), "{stderr}");
    assert!(bad.stdout.is_empty());

    let missing = Command::new(env!("CARGO_BIN_EXE_tyrd"))
        .args(["policy", "check", "/nonexistent/p.yaml"])
        .output()
        .expect("run");
    assert_eq!(missing.status.code(), Some(2));
}
