//! Policy YAML: the product pages' examples parse as written and decide as
//! documented; malformed policies are refused with messages that name the
//! rule, the field, and the line.

use std::net::IpAddr;

use tyr_common::policy::{Action, Request, Verdict, parse_policy};

/// "TLS capture" page, policy implications.
const SNI_EXAMPLE: &str = r#"
- name: only-approved-llm-providers
  action: tls_connect
  sni_pattern: "*.openai.com|*.anthropic.com|api.mistral.ai"
  verdict: allow
  severity: low
- name: block-unknown-llm-destinations
  action: tls_connect
  verdict: deny
  severity: high
"#;

/// "TLS capture" page, enforcement vs observation.
const CIDR_EXAMPLE: &str = r#"
- name: allow-openai-ips
  action: net_connect
  cidr_allow: [ "104.16.0.0/13", "104.18.0.0/15" ]
  sni_pattern: "*.openai.com"
  verdict: allow
- name: deny-other-external
  action: net_connect
  cidr_deny: [ "0.0.0.0/0" ]
  verdict: deny
"#;

fn ip(text: &str) -> IpAddr {
    text.parse().expect("ip")
}

#[test]
fn product_examples_parse_and_decide_as_documented() {
    let sni = parse_policy("sni.yaml", SNI_EXAMPLE).expect("sni example");
    let tls = |name: &'static str| Request::Tls { server_name: name, addr: ip("127.0.0.1"), port: 443 };
    assert_eq!(sni.base.decide(&tls("api.openai.com")).verdict, Verdict::Allow);
    assert_eq!(sni.base.decide(&tls("api.mistral.ai")).verdict, Verdict::Allow);
    let denied = sni.base.decide(&tls("evil.example.com"));
    assert_eq!(denied.verdict, Verdict::Deny);
    assert_eq!(denied.rule.map(|r| r.name.as_str()), Some("block-unknown-llm-destinations"));

    let cidr = parse_policy("cidr.yaml", CIDR_EXAMPLE).expect("cidr example");
    let connect = |addr: &str| Request::Connect { addr: ip(addr), port: 443 };
    assert_eq!(cidr.base.decide(&connect("104.18.6.192")).verdict, Verdict::Allow);
    assert_eq!(cidr.base.decide(&connect("93.184.216.34")).verdict, Verdict::Deny);
    assert_eq!(cidr.base.rules[0].action, Action::NetConnect);
}

#[test]
fn full_form_with_overlays_and_defaults() {
    let policy = parse_policy(
        "fleet.yaml",
        r#"
name: fleet-default
default_verdict: allow
rules:
  - name: no-ssh-keys
    action: file_read
    paths: ["/home/*/.ssh/**", "/root/.ssh/"]
    verdict: deny
overlays:
  cursor:
    - name: cursor-workspace-only
      action: file_write
      paths: ["/workspace/"]
      verdict: allow
    - name: cursor-no-other-writes
      action: file_write
      verdict: alert
"#,
    )
    .expect("valid");
    assert_eq!(policy.name, "fleet-default");
    let write = |path: &'static str| Request::File { write: true, path };
    assert_eq!(policy.decide("cursor", &write("/workspace/a.rs")).verdict, Verdict::Allow);
    assert_eq!(policy.decide("cursor", &write("/etc/passwd")).verdict, Verdict::Alert);
    assert_eq!(policy.decide("unknown", &write("/etc/passwd")).verdict, Verdict::Allow, "default");
    let read_key = Request::File { write: false, path: "/home/dev/.ssh/id_ed25519" };
    assert_eq!(policy.decide("cursor", &read_key).verdict, Verdict::Deny, "the base still applies to overlays");
    assert_eq!(policy.base.rules[0].severity.as_str(), "high", "deny rules default to high");
}

/// (policy, rule the error must name, field it must name, line).
const MALFORMED: &[(&str, &str, &str, usize)] = &[
    // `?` is not a path wildcard (only `*` is, as in Cedar's `like`)
    ("- name: q\n  action: file_read\n  verdict: deny\n  paths: [\"/tmp/file?.txt\"]\n", "q", "paths", 4),
    // 1. unknown action
    ("- name: a\n  action: file_delete\n  verdict: deny\n", "a", "action", 2),
    // 2. unknown verdict
    ("- name: b\n  action: exec\n  verdict: block\n", "b", "verdict", 3),
    // 3. misspelled matcher
    ("- name: c\n  action: net_connect\n  cidr: [\"10.0.0.0/8\"]\n  verdict: deny\n", "c", "cidr", 3),
    // 4. matcher of another action
    ("- name: d\n  action: file_read\n  cidr_deny: [\"10.0.0.0/8\"]\n  verdict: deny\n", "d", "cidr_deny", 3),
    // 5. not a CIDR
    ("- name: e\n  action: net_connect\n  cidr_deny: [\"10.0.0.0/33\"]\n  verdict: deny\n", "e", "cidr_deny", 3),
    // 6. host bits set
    ("- name: f\n  action: net_connect\n  cidr_deny: [\"10.1.2.3/8\"]\n  verdict: deny\n", "f", "cidr_deny", 3),
    // 7. cidr_allow on a deny rule
    ("- name: g\n  action: net_connect\n  cidr_allow: [\"10.0.0.0/8\"]\n  verdict: deny\n", "g", "cidr_allow", 3),
    // 8. relative path
    ("- name: h\n  action: file_read\n  paths: [\"etc/shadow\"]\n  verdict: deny\n", "h", "paths", 3),
    // 9. paths not a list
    ("- name: i\n  action: file_read\n  paths: /etc/shadow\n  verdict: deny\n", "i", "paths", 3),
    // 10. bad port range
    ("- name: j\n  action: net_connect\n  ports: [\"9000-80\"]\n  verdict: deny\n", "j", "ports", 3),
    // 11. port out of range
    ("- name: k\n  action: net_connect\n  ports: [70000]\n  verdict: deny\n", "k", "ports", 3),
    // 12. wildcard not in the first label
    ("- name: l\n  action: tls_connect\n  sni_pattern: \"api.*.com\"\n  verdict: deny\n", "l", "sni_pattern", 3),
    // 13. empty alternative
    ("- name: m\n  action: tls_connect\n  sni_pattern: \"a.com||b.com\"\n  verdict: deny\n", "m", "sni_pattern", 3),
    // 14. unknown severity
    ("- name: n\n  action: exec\n  verdict: deny\n  severity: urgent\n", "n", "severity", 4),
    // 15. missing verdict
    ("- name: o\n  action: exec\n", "o", "verdict", 1),
    // 16. duplicate rule names
    ("- name: p\n  action: exec\n  verdict: deny\n- name: p\n  action: exec\n  verdict: allow\n", "p", "name", 4),
    // 17. missing name
    ("- action: exec\n  verdict: deny\n", "#1", "name", 1),
    // 18. a .. component
    ("- name: r\n  action: exec\n  paths: [\"/usr/bin/../bin/sh\"]\n  verdict: deny\n", "r", "paths", 3),
];

#[test]
fn malformed_policies_name_rule_field_and_line() {
    assert!(MALFORMED.len() >= 12);
    for (source, rule, field, line) in MALFORMED {
        let errors = parse_policy("bad.yaml", source).expect_err(source);
        let found = errors.0.iter().find(|e| e.rule.as_deref() == Some(*rule) && e.field.as_deref() == Some(*field));
        let error = found.unwrap_or_else(|| panic!("no error for rule {rule} field {field} in {errors}"));
        assert_eq!(error.line, *line, "{error}");
        let text = error.to_string();
        assert!(text.starts_with("bad.yaml:"), "{text}");
        assert!(text.contains(&format!("rule {rule}")) && text.contains(&format!("field {field}")), "{text}");
    }
}

#[test]
fn document_level_errors() {
    let cases = [
        ("a: [1,\n b: c", "not valid YAML"),
        ("", "empty policy"),
        ("just a string", "a policy is a list of rules or a mapping"),
        ("rules: []\nextra: 1\n", "unknown field"),
        ("default_verdict: maybe\nrules: []\n", "unknown verdict"),
        ("overlays:\n  not-an-agent: []\n", "unknown agent type"),
        ("- name: a\n  action: exec\n  verdict: deny\n---\n- name: b\n", "one YAML document"),
        ("a: 1\na: 2\n", "not valid YAML"),
    ];
    for (source, expected) in cases {
        let errors = parse_policy("doc.yaml", source).expect_err(source);
        assert!(errors.to_string().contains(expected), "{source:?}: {errors}");
    }
    let huge = "#".repeat(tyr_common::policy::parse::MAX_POLICY_BYTES + 1);
    assert!(parse_policy("huge.yaml", &huge).is_err());
}

#[test]
fn every_problem_is_reported_not_only_the_first() {
    let errors = parse_policy(
        "many.yaml",
        "- name: a\n  action: nope\n  verdict: deny\n- name: b\n  action: exec\n  verdict: maybe\n",
    )
    .expect_err("two bad rules");
    assert_eq!(errors.0.len(), 2, "{errors}");
}

#[test]
fn unknown_names_suggest_what_was_meant() {
    let cases = [
        ("default: deny\nrules: []\n", "did you mean `default_verdict`?"),
        ("- name: a\n  action: file_read\n  path: [\"/etc/\"]\n  verdict: deny\n", "did you mean `paths`?"),
        ("- name: a\n  action: net_connect\n  cidr: [\"10.0.0.0/8\"]\n  verdict: deny\n", "`cidr_deny`, `cidr_allow`"),
        ("overlays:\n  claude: []\n", "did you mean `claude-code`?"),
    ];
    for (source, expected) in cases {
        let errors = parse_policy("typo.yaml", source).expect_err(source);
        assert!(errors.to_string().contains(expected), "{source:?}: {errors}");
    }
    let errors = parse_policy("typo.yaml", "rules: []\nzzzzzzzz: 1\n").expect_err("unknown field");
    assert!(!errors.to_string().contains("did you mean"), "{errors}");
    assert!(errors.to_string().contains("policy fields: name, description, default_verdict"), "{errors}");
}

/// The example policies shipped in `deploy/policies/` parse, compile to
/// kernel entries and Cedar, and decide as their comments say.
#[test]
fn shipped_example_policies_compile_and_decide() {
    use tyr_common::policy::compile::{UNKNOWN_CLASS, class_of};
    use tyr_common::policy::{CedarEvaluator, compile, to_cedar};

    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/policies");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("deploy/policies") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("read policy");
        let set = parse_policy(&path.display().to_string(), &text).unwrap_or_else(|e| panic!("{e}"));
        compile(&set, 1).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        CedarEvaluator::new(&to_cedar(&set, 1)).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        seen += 1;
    }
    assert!(seen >= 1, "no policies in {}", dir.display());

    let text = std::fs::read_to_string(dir.join("example.yaml")).expect("example.yaml");
    let set = parse_policy("example.yaml", &text).expect("example parses");
    let compiled = compile(&set, 7).expect("example compiles");
    let base = UNKNOWN_CLASS;
    let path = |p: &str| compiled.decide_path(base, Action::FileRead, p.as_bytes()).0;
    assert_eq!(path("/home/dev/.ssh/id_ed25519"), Verdict::Deny);
    assert_eq!(path("/home/dev/.ssh/known_hosts"), Verdict::Allow);
    let cursor = class_of("cursor").expect("cursor class");
    let history = compiled.decide_path(cursor, Action::FileRead, b"/home/dev/.bash_history").0;
    assert_eq!(history, Verdict::Deny);
    assert_eq!(compiled.decide_connect(base, ip("169.254.169.254"), 80).0, Verdict::Deny);
    assert_eq!(compiled.decide_connect(base, ip("127.0.0.1"), 80).0, Verdict::Allow);
}
