//! A policy set written with `to_yaml` reads back equal with
//! `parse_policy`, and compiles to the same kernel bytes and Cedar text:
//! generated sets (awkward names and paths, every action and matcher,
//! overlays), the shipped policies, and a set composed from two documents
//! as the server composes them.

use std::collections::BTreeMap;
use std::net::IpAddr;

use proptest::prelude::*;
use tyr_common::agents::{KNOWN_AGENTS, UNKNOWN};
use tyr_common::policy::model::{Cidr, HostPattern, PathPattern, PortRange};
use tyr_common::policy::unregistered::QUARANTINE_POLICY;
use tyr_common::policy::{
    Action, Policy, PolicySet, Rule, Severity, Verdict, compile, parse_policy, to_cedar, to_yaml, to_yaml_verified,
};

/// `set` written and read back is `set`, and every compiled form agrees.
fn assert_round_trip(set: &PolicySet) -> Result<(), TestCaseError> {
    let yaml = to_yaml(set);
    let read = parse_policy("emitted", &yaml).map_err(|e| TestCaseError::fail(format!("{e}\n{yaml}")))?;
    prop_assert_eq!(&read, set, "{}", yaml);
    let compiled = compile(set, 42).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let recompiled = compile(&read, 42).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(compiled.to_bytes(), recompiled.to_bytes());
    prop_assert_eq!(to_cedar(set, 42), to_cedar(&read, 42));
    prop_assert_eq!(to_yaml(&read), yaml.clone());
    prop_assert_eq!(to_yaml_verified(set).map_err(|e| TestCaseError::fail(e.to_string()))?, yaml);
    Ok(())
}

/// Any text, leaning on what YAML treats specially: quotes, backslashes,
/// indicators, blanks, line breaks, controls, NUL, invisible and astral
/// characters.
fn awkward_text() -> impl Strategy<Value = String> {
    let awkward = prop::sample::select(vec![
        '"',
        '\\',
        '\'',
        ':',
        '#',
        '*',
        '&',
        '!',
        '|',
        '>',
        '%',
        '@',
        '`',
        '-',
        '?',
        ',',
        '[',
        ']',
        '{',
        '}',
        ' ',
        '\t',
        '\n',
        '\r',
        '\0',
        '\x07',
        '\x1b',
        '\x7f',
        '\u{85}',
        '\u{a0}',
        '\u{2028}',
        '\u{2029}',
        '\u{feff}',
        '\u{202e}',
        '\u{fffe}',
        '\u{ffff}',
        '\u{e000}',
        '\u{1f600}',
        '\u{10ffff}',
        'é',
        'y',
        'n',
        '~',
    ]);
    prop_oneof![
        any::<String>(),
        prop::sample::select(vec!["yes", "no", "on", "off", "null", "~", "true", "1e3", "0x1F", "---", "..."])
            .prop_map(str::to_owned),
        prop::collection::vec(prop_oneof![any::<char>(), awkward], 0..12).prop_map(String::from_iter),
    ]
}

fn verdict() -> impl Strategy<Value = Verdict> {
    prop::sample::select(vec![Verdict::Allow, Verdict::Deny, Verdict::Alert])
}

fn severity() -> impl Strategy<Value = Severity> {
    prop::sample::select(vec![Severity::Info, Severity::Low, Severity::Medium, Severity::High, Severity::Critical])
}

/// Rule names the language allows, with YAML's troublemakers among them.
fn rule_name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "yes", "no", "Y", "n", "on", "off", "true", "False", "null", "NULL", "1", "0", "1e3", "0x1F", "0o17",
            "1.5", "nan", "inf", "1_000", "12.30",
        ])
        .prop_map(str::to_owned),
        "[A-Za-z0-9][A-Za-z0-9._-]{0,63}",
    ]
}

/// One path component: anything but `/`, NUL and the wildcards the
/// language refuses, and not `.` or `..`; `*` often.
fn component() -> impl Strategy<Value = String> {
    prop_oneof![
        "[^/\u{0}?\\[\\]{}]{1,4}",
        "[a-z*:# '\"\\\\\t\n-]{1,4}",
        prop::collection::vec(
            prop::sample::select(vec![
                '"',
                '\\',
                '\'',
                ':',
                '#',
                '*',
                '&',
                '!',
                '|',
                '>',
                '%',
                '@',
                '`',
                ',',
                ' ',
                '\t',
                '\n',
                '\r',
                '\x07',
                '\x1b',
                '\x7f',
                '\u{85}',
                '\u{a0}',
                '\u{2028}',
                '\u{feff}',
                '\u{fffe}',
                '\u{1f600}',
            ]),
            1..=4
        )
        .prop_map(String::from_iter),
        prop::sample::select(vec!["*", "**", "etc", ".ssh", "a b", "é", "日本", "\u{1f600}", "-", "~"])
            .prop_map(str::to_owned),
    ]
    .prop_map(|c| if c == "." || c == ".." { format!("{c}x") } else { c })
}

/// An absolute path of the kind its text says (as the parser classifies it).
fn path() -> impl Strategy<Value = PathPattern> {
    (prop::collection::vec(component(), 0..=3), any::<bool>()).prop_map(|(components, trailing)| {
        let mut text: String = components.iter().map(|c| format!("/{c}")).collect();
        if trailing || text.is_empty() {
            text.push('/');
        }
        if text.contains('*') {
            PathPattern::Glob(text)
        } else if text.ends_with('/') {
            PathPattern::Prefix(text)
        } else {
            PathPattern::Exact(text)
        }
    })
}

/// An IPv4, IPv6 or IPv4-mapped IPv6 network with its host bits clear.
fn cidr() -> impl Strategy<Value = Cidr> {
    (0u8..3, any::<u128>(), any::<u8>()).prop_map(|(family, bits, prefix)| {
        let (addr, max) = match family {
            0 => (IpAddr::from((bits as u32).to_be_bytes()), 32u8),
            1 => (IpAddr::from(bits.to_be_bytes()), 128),
            _ => (IpAddr::from(std::net::Ipv4Addr::from(bits as u32).to_ipv6_mapped()), 128),
        };
        let prefix = prefix % (max + 1);
        let mask = |octets: &mut [u8]| {
            for (i, b) in octets.iter_mut().enumerate() {
                let keep = (u32::from(prefix).saturating_sub(i as u32 * 8)).min(8);
                *b &= if keep == 0 { 0 } else { 0xffu8 << (8 - keep) };
            }
        };
        let addr = match addr {
            IpAddr::V4(a) => {
                let mut o = a.octets();
                mask(&mut o);
                IpAddr::from(o)
            }
            IpAddr::V6(a) => {
                let mut o = a.octets();
                mask(&mut o);
                IpAddr::from(o)
            }
        };
        Cidr { addr, prefix }
    })
}

fn port_range() -> impl Strategy<Value = PortRange> {
    (1u16..=u16::MAX, 0u16..2000, any::<bool>()).prop_map(|(first, span, single)| PortRange {
        first,
        last: if single { first } else { first.saturating_add(span) },
    })
}

fn host() -> impl Strategy<Value = HostPattern> {
    (prop::collection::vec("[a-z0-9_-]{1,8}", 1..=3), any::<bool>()).prop_map(|(labels, wildcard)| {
        let host = labels.join(".");
        if wildcard { HostPattern::Subdomains(host) } else { HostPattern::Exact(host) }
    })
}

/// A rule with the matchers its action takes.
fn rule() -> impl Strategy<Value = Rule> {
    let action = prop::sample::select(Action::ALL.to_vec());
    (
        rule_name(),
        action,
        verdict(),
        severity(),
        prop::collection::vec(path(), 0..=3),
        prop::collection::vec(cidr(), 0..=3),
        prop::collection::vec(port_range(), 0..=3),
        prop::collection::vec(host(), 0..=3),
    )
        .prop_map(|(name, action, verdict, severity, paths, cidrs, ports, server_names)| {
            let on_paths = matches!(action, Action::FileRead | Action::FileWrite | Action::Exec);
            Rule {
                name,
                action,
                verdict,
                severity,
                paths: if on_paths { paths } else { Vec::new() },
                cidrs: if on_paths { Vec::new() } else { cidrs },
                ports: if on_paths { Vec::new() } else { ports },
                server_names: if on_paths { Vec::new() } else { server_names },
            }
        })
}

fn agent_type() -> impl Strategy<Value = String> {
    let types: Vec<String> = KNOWN_AGENTS.iter().map(|a| a.agent_type.to_owned()).chain([UNKNOWN.to_owned()]).collect();
    prop::sample::select(types)
}

/// A set the parser could have produced: rule names unique across the base
/// and the overlays.
fn policy_set() -> impl Strategy<Value = PolicySet> {
    (
        awkward_text(),
        verdict(),
        prop::collection::vec(rule(), 0..=5),
        prop::collection::btree_map(agent_type(), prop::collection::vec(rule(), 0..=3), 0..=3),
    )
        .prop_map(|(name, default_verdict, rules, overlays)| {
            let mut set = PolicySet { name, base: Policy { default_verdict, rules }, overlays };
            let mut seen = std::collections::HashSet::new();
            let mut next = 0;
            for rule in set.base.rules.iter_mut().chain(set.overlays.values_mut().flatten()) {
                while !seen.insert(rule.name.clone()) {
                    next += 1;
                    rule.name = format!("rule-{next}");
                }
            }
            set
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, max_global_rejects: 20_000, ..ProptestConfig::default() })]

    #[test]
    fn generated_sets_round_trip(set in policy_set()) {
        prop_assume!(compile(&set, 1).is_ok());
        assert_round_trip(&set)?;
    }
}

/// The shipped policies: the example and the built-in quarantine policy.
#[test]
fn shipped_policies_round_trip() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/policies");
    let mut documents = vec![("quarantine.yaml".to_owned(), QUARANTINE_POLICY.to_owned())];
    for entry in std::fs::read_dir(&dir).expect("deploy/policies") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            documents.push((path.display().to_string(), std::fs::read_to_string(&path).expect("policy file")));
        }
    }
    assert!(documents.len() >= 2, "no policies found in {}", dir.display());
    for (name, source) in documents {
        let set = parse_policy(&name, &source).unwrap_or_else(|e| panic!("{e}"));
        assert!(!set.base.rules.is_empty(), "{name}");
        assert_round_trip(&set).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

/// The server's case: one document's base, another's overlays, pushed as
/// one document.
#[test]
fn composed_set_round_trips() {
    let example = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/policies/example.yaml"))
        .expect("example policy");
    let base = parse_policy("example.yaml", &example).expect("example parses");
    let overlay = parse_policy(
        "aider overlay",
        r#"
- name: "aider-no-git-credentials"
  action: file_read
  paths: ["/home/*/.git-credentials", "/home/dev/my notes: #1/"]
  verdict: deny
- name: no-metadata-v6
  action: net_connect
  cidr_deny: ["::ffff:169.254.169.254/128"]
  ports: [80, "8000-8100"]
  verdict: deny
"#,
    )
    .expect("overlay parses");
    let mut composed = base.clone();
    composed.name = "fleet: base + aider".to_owned();
    composed.overlays.insert("aider".to_owned(), overlay.base.rules.clone());
    assert_round_trip(&composed).unwrap_or_else(|e| panic!("{e}"));
    let read = parse_policy("pushed", &to_yaml(&composed)).expect("parses");
    assert_eq!(read.overlays.get("aider").map(Vec::len), Some(2));
    assert_eq!(read.overlays.len(), base.overlays.len() + 1);
    let expected: BTreeMap<_, _> = composed.overlays.clone();
    assert_eq!(read.overlays, expected);
}
