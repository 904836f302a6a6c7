//! `tyrd policy check`: a valid policy prints its rules, a malformed one
//! exits 2 naming the document, rule, field and line.

use std::process::Command;

fn check(source: &str) -> std::process::Output {
    let path = std::env::temp_dir().join(format!("tyr-policy-{}.yaml", uuid::Uuid::new_v4().simple()));
    std::fs::write(&path, source).expect("write policy");
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
