//! A policy set written back to the YAML [`parse_policy`] reads: how the
//! server hands a composed policy (a base and the overlays per agent type)
//! to tyrd as one document (`PolicyPush.policy_yaml`).
//!
//! Every string a policy author chose (the policy's name, rule names,
//! paths, addresses, ports, server names, agent types) is written as a YAML
//! double-quoted scalar — the JSON string form, which YAML 1.2 reads — so
//! no value can turn into another type (`yes`, `null`, `1e3`), a comment,
//! an alias, a tag or a flow indicator. Characters outside YAML's printable
//! set, line breaks, and invisible format characters (byte-order mark,
//! zero-width and bidirectional controls) are written as escapes, so the
//! text shows what the policy holds. Keywords (actions, verdicts,
//! severities, field names) are fixed identifiers and stay plain.
//!
//! The model does not keep a document's `description` or comments, so
//! those are not written.

use std::collections::BTreeMap;

use super::model::{PolicySet, Rule, Verdict};
use super::parse::{PolicyErrors, parse_policy};

/// Why a policy set cannot be written as a document that reads back equal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmitError {
    /// The document was written, but the policy language refuses it (a rule
    /// name it does not allow, an overlay for an agent type it does not
    /// know, a matcher the action does not take, an address with host bits).
    #[error("the policy does not validate as YAML: {0}")]
    Invalid(PolicyErrors),
    /// The document validates but means something else: the set holds what
    /// the language cannot say (a path kind its text does not show, an
    /// upper-case server name).
    #[error("the policy reads back differently at {0}")]
    Changed(String),
}

/// The YAML document that [`parse_policy`] reads back as an equal
/// [`PolicySet`]: name, default verdict, base rules in order, overlays by
/// agent type in order.
///
/// That holds for every set `parse_policy` can produce; a set built some
/// other way may hold what the language cannot express (see
/// [`to_yaml_verified`], which checks).
pub fn to_yaml(set: &PolicySet) -> String {
    let mut out = String::new();
    out.push_str("name: ");
    push_quoted(&mut out, &set.name);
    out.push_str("\ndefault_verdict: ");
    out.push_str(set.base.default_verdict.as_str());
    out.push_str("\nrules:");
    push_rules(&mut out, &set.base.rules, "");
    if !set.overlays.is_empty() {
        out.push_str("overlays:\n");
        for (agent_type, rules) in &set.overlays {
            out.push_str("  ");
            push_quoted(&mut out, agent_type);
            out.push(':');
            push_rules(&mut out, rules, "  ");
        }
    }
    out
}

/// [`to_yaml`], read back with [`parse_policy`] and compared with `set`:
/// the document is returned only if it means exactly `set`.
pub fn to_yaml_verified(set: &PolicySet) -> Result<String, EmitError> {
    let yaml = to_yaml(set);
    let read = parse_policy("emitted policy", &yaml).map_err(EmitError::Invalid)?;
    match first_difference(set, &read) {
        None => Ok(yaml),
        Some(place) => Err(EmitError::Changed(place)),
    }
}

/// Appends ` []` or the block list of `rules`, each item at `indent`, then a
/// line break.
fn push_rules(out: &mut String, rules: &[Rule], indent: &str) {
    if rules.is_empty() {
        out.push_str(" []\n");
        return;
    }
    out.push('\n');
    for rule in rules {
        let field = |out: &mut String, name: &str| {
            out.push_str(indent);
            out.push_str("    ");
            out.push_str(name);
            out.push_str(": ");
        };
        out.push_str(indent);
        out.push_str("  - name: ");
        push_quoted(out, &rule.name);
        out.push('\n');
        field(out, "action");
        out.push_str(rule.action.as_str());
        out.push('\n');
        field(out, "verdict");
        out.push_str(rule.verdict.as_str());
        out.push('\n');
        field(out, "severity");
        out.push_str(rule.severity.as_str());
        out.push('\n');
        if !rule.paths.is_empty() {
            field(out, "paths");
            push_list(out, rule.paths.iter().map(|p| p.as_str().to_owned()));
        }
        if !rule.cidrs.is_empty() {
            // The parser takes cidr_deny on deny rules and cidr_allow on allow
            // rules; alert rules take either. Both fill the same matcher.
            field(out, if rule.verdict == Verdict::Deny { "cidr_deny" } else { "cidr_allow" });
            push_list(out, rule.cidrs.iter().map(ToString::to_string));
        }
        if !rule.ports.is_empty() {
            field(out, "ports");
            push_list(out, rule.ports.iter().map(ToString::to_string));
        }
        if !rule.server_names.is_empty() {
            field(out, "sni_pattern");
            let alternatives: Vec<String> = rule.server_names.iter().map(ToString::to_string).collect();
            push_quoted(out, &alternatives.join("|"));
            out.push('\n');
        }
    }
}

/// Appends a flow list of quoted strings and a line break.
fn push_list(out: &mut String, items: impl Iterator<Item = String>) {
    out.push('[');
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        push_quoted(out, &item);
    }
    out.push_str("]\n");
}

/// Appends `text` as a YAML double-quoted scalar.
fn push_quoted(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\0' => out.push_str("\\0"),
            '\x07' => out.push_str("\\a"),
            '\x08' => out.push_str("\\b"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\x0b' => out.push_str("\\v"),
            '\x0c' => out.push_str("\\f"),
            '\r' => out.push_str("\\r"),
            '\x1b' => out.push_str("\\e"),
            '\u{85}' => out.push_str("\\N"),
            '\u{a0}' => out.push_str("\\_"),
            '\u{2028}' => out.push_str("\\L"),
            '\u{2029}' => out.push_str("\\P"),
            c if shown_as_is(c) => out.push(c),
            c => {
                let code = u32::from(c);
                let escape = if code <= 0xff {
                    format!("\\x{code:02X}")
                } else if code <= 0xffff {
                    format!("\\u{code:04X}")
                } else {
                    format!("\\U{code:08X}")
                };
                out.push_str(&escape);
            }
        }
    }
    out.push('"');
}

/// YAML 1.2's printable characters (c-printable) without line breaks and
/// tabs, and without the invisible format characters that would hide what a
/// value holds.
fn shown_as_is(c: char) -> bool {
    let printable = matches!(c, '\u{20}'..='\u{7e}' | '\u{a0}'..='\u{d7ff}' | '\u{e000}'..='\u{fffd}' | '\u{10000}'..);
    let invisible = matches!(
        c,
        '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}' | '\u{feff}'
    );
    printable && !invisible
}

/// Where `read` differs from `set` first, for [`EmitError::Changed`].
fn first_difference(set: &PolicySet, read: &PolicySet) -> Option<String> {
    if set.name != read.name {
        return Some("the policy name".to_owned());
    }
    if set.base.default_verdict != read.base.default_verdict {
        return Some("default_verdict".to_owned());
    }
    if let Some(place) = rules_difference(&set.base.rules, &read.base.rules) {
        return Some(place);
    }
    let keys = |overlays: &BTreeMap<String, Vec<Rule>>| overlays.keys().cloned().collect::<Vec<_>>();
    if keys(&set.overlays) != keys(&read.overlays) {
        return Some("the overlays' agent types".to_owned());
    }
    set.overlays.iter().find_map(|(agent_type, rules)| {
        let read_rules = read.overlays.get(agent_type).map(Vec::as_slice).unwrap_or_default();
        rules_difference(rules, read_rules).map(|place| format!("overlay {agent_type:?}: {place}"))
    })
}

fn rules_difference(rules: &[Rule], read: &[Rule]) -> Option<String> {
    if let Some((rule, _)) = rules.iter().zip(read).find(|(a, b)| a != b) {
        return Some(format!("rule {:?}", rule.name));
    }
    (rules.len() != read.len()).then(|| format!("the rule count ({} written, {} read)", rules.len(), read.len()))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::policy::model::{Action, Cidr, HostPattern, PathPattern, Policy, PortRange, Severity};

    fn rule(name: &str, action: Action, verdict: Verdict) -> Rule {
        Rule {
            name: name.to_owned(),
            action,
            verdict,
            severity: Severity::default_for(verdict),
            paths: Vec::new(),
            cidrs: Vec::new(),
            ports: Vec::new(),
            server_names: Vec::new(),
        }
    }

    fn set(name: &str, rules: Vec<Rule>, overlays: BTreeMap<String, Vec<Rule>>) -> PolicySet {
        PolicySet { name: name.to_owned(), base: Policy { default_verdict: Verdict::Deny, rules }, overlays }
    }

    #[test]
    fn writes_the_documented_layout() {
        let mut secrets = rule("no-secrets", Action::FileRead, Verdict::Deny);
        secrets.severity = Severity::Critical;
        secrets.paths = vec![
            PathPattern::Exact("/etc/shadow".to_owned()),
            PathPattern::Prefix("/root/".to_owned()),
            PathPattern::Glob("/home/*/.ssh/*".to_owned()),
        ];
        let mut egress = rule("llm", Action::TlsConnect, Verdict::Alert);
        egress.cidrs = vec![Cidr { addr: "10.0.0.0".parse().expect("ip"), prefix: 8 }];
        egress.ports = vec![PortRange { first: 443, last: 443 }, PortRange { first: 8000, last: 8100 }];
        egress.server_names =
            vec![HostPattern::Subdomains("openai.com".to_owned()), HostPattern::Exact("api.mistral.ai".to_owned())];
        let mut metadata = rule("no-metadata", Action::NetConnect, Verdict::Deny);
        metadata.cidrs = vec![Cidr { addr: "fd00:ec2::254".parse().expect("ip"), prefix: 128 }];
        let overlays = BTreeMap::from([
            ("cursor".to_owned(), vec![egress]),
            ("unknown".to_owned(), vec![metadata]),
            ("aider".to_owned(), Vec::new()),
        ]);
        let set = set("fleet", vec![secrets], overlays);
        let expected = r#"name: "fleet"
default_verdict: deny
rules:
  - name: "no-secrets"
    action: file_read
    verdict: deny
    severity: critical
    paths: ["/etc/shadow", "/root/", "/home/*/.ssh/*"]
overlays:
  "aider": []
  "cursor":
    - name: "llm"
      action: tls_connect
      verdict: alert
      severity: medium
      cidr_allow: ["10.0.0.0/8"]
      ports: ["443", "8000-8100"]
      sni_pattern: "*.openai.com|api.mistral.ai"
  "unknown":
    - name: "no-metadata"
      action: net_connect
      verdict: deny
      severity: high
      cidr_deny: ["fd00:ec2::254/128"]
"#;
        assert_eq!(to_yaml(&set), expected);
        assert_eq!(parse_policy("t", expected).expect("parses"), set);
        assert_eq!(to_yaml_verified(&set).expect("round-trips"), expected);
    }

    #[test]
    fn empty_set() {
        let empty = set("", Vec::new(), BTreeMap::new());
        let yaml = to_yaml(&empty);
        assert_eq!(yaml, "name: \"\"\ndefault_verdict: deny\nrules: []\n");
        assert_eq!(parse_policy("other name", &yaml).expect("parses"), empty);
    }

    #[test]
    fn awkward_strings_read_back_unchanged() {
        let names = [
            "yes",
            "no",
            "null",
            "~",
            "on",
            "off",
            "true",
            "1e3",
            "0x1F",
            ".inf",
            "-",
            "- item",
            "*alias",
            "&anchor",
            "!tag",
            "%directive",
            "@",
            "`",
            "key: value",
            "a #comment",
            "#",
            "[1, 2]",
            "{a: b}",
            "|",
            ">",
            "'single'",
            "\"double\"",
            "back\\slash \\n \\\"",
            "  leading and trailing  ",
            " ",
            "tab\there",
            "line\nbreak\r\n",
            "nul\0byte",
            "bell\x07 esc\x1b del\x7f",
            "next\u{85}line nbsp\u{a0} ls\u{2028} ps\u{2029}",
            "c1 \u{80}\u{9f}",
            "bom\u{feff} zw\u{200b} rlo\u{202e}",
            "noncharacters \u{fffe}\u{ffff}",
            "private \u{e000} astral \u{1f600} \u{10ffff}",
            "unicode: é 日本語 ✓",
            "---",
            "...",
            "--- !!str",
        ];
        for name in names {
            let yaml = to_yaml(&set(name, Vec::new(), BTreeMap::new()));
            let read = parse_policy("t", &yaml).unwrap_or_else(|e| panic!("{name:?}: {e}\n{yaml}"));
            assert_eq!(read.name, name, "{yaml}");
        }
    }

    #[test]
    fn invisible_and_unprintable_characters_are_escaped() {
        let yaml = to_yaml(&set("\0\t\u{7f}\u{85}\u{feff}\u{202e}\u{ffff}\u{1f600}é", Vec::new(), BTreeMap::new()));
        assert!(yaml.starts_with("name: \"\\0\\t\\x7F\\N\\uFEFF\\u202E\\uFFFF\u{1f600}é\"\n"), "{yaml}");
    }

    #[test]
    fn refuses_what_the_language_cannot_say() {
        // Text that reads as a glob, held as an exact path.
        let mut exact = rule("r", Action::Exec, Verdict::Deny);
        exact.paths = vec![PathPattern::Exact("/usr/bin/*".to_owned())];
        let error = to_yaml_verified(&set("p", vec![exact], BTreeMap::new())).expect_err("changes");
        assert_eq!(error, EmitError::Changed("rule \"r\"".to_owned()));

        let mut upper = rule("r", Action::TlsConnect, Verdict::Allow);
        upper.server_names = vec![HostPattern::Exact("API.example.com".to_owned())];
        let overlays = BTreeMap::from([("cursor".to_owned(), vec![upper])]);
        let error = to_yaml_verified(&set("p", Vec::new(), overlays)).expect_err("changes");
        assert_eq!(error, EmitError::Changed("overlay \"cursor\": rule \"r\"".to_owned()));

        let bad_name = rule("not a name", Action::Exec, Verdict::Deny);
        assert!(matches!(to_yaml_verified(&set("p", vec![bad_name], BTreeMap::new())), Err(EmitError::Invalid(_))));

        let mut host_bits = rule("r", Action::NetConnect, Verdict::Deny);
        host_bits.cidrs = vec![Cidr { addr: "10.0.0.1".parse().expect("ip"), prefix: 8 }];
        assert!(matches!(to_yaml_verified(&set("p", vec![host_bits], BTreeMap::new())), Err(EmitError::Invalid(_))));

        let overlays = BTreeMap::from([("unregistered".to_owned(), Vec::new())]);
        assert!(matches!(to_yaml_verified(&set("p", Vec::new(), overlays)), Err(EmitError::Invalid(_))));
    }
}
