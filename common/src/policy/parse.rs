//! Policy YAML to the validated model, with errors that name the document,
//! the rule and the field, and give the line and column.
//!
//! Two document forms are accepted: a bare list of rules (as the product
//! pages write them), or a mapping with `name`, `description`,
//! `default_verdict`, `rules` and `overlays` (agent type -> list of rules).
//! Every problem found is reported, not only the first.

use std::collections::BTreeMap;
use std::net::IpAddr;

use saphyr::{LoadableYamlNode, MarkedYamlOwned, ScalarOwned, YamlDataOwned};

use super::model::{Action, Cidr, HostPattern, PathPattern, Policy, PolicySet, PortRange, Rule, Severity, Verdict};
use crate::agents::{KNOWN_AGENTS, UNKNOWN};

/// Longest policy accepted, in bytes (a policy is configuration, not data).
pub const MAX_POLICY_BYTES: usize = 1 << 20;
/// Most rules in one policy (base and overlays together).
pub const MAX_RULES: usize = 4096;

/// One problem in a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// The document's name (usually its file name).
    pub document: String,
    /// The rule's name, or `#N` (1-based position) when it has none.
    pub rule: Option<String>,
    pub field: Option<String>,
    /// 1-based; 0 when unknown.
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl std::fmt::Display for PolicyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.document)?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if let Some(rule) = &self.rule {
            write!(f, ": rule {rule}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": field {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// All problems found in a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyErrors(pub Vec<PolicyError>);

impl std::fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyErrors {}

type Node = MarkedYamlOwned;

/// Collects errors with their document and rule context.
struct Checker<'a> {
    document: &'a str,
    errors: Vec<PolicyError>,
}

fn position(node: &Node) -> (usize, usize) {
    (node.span.start.line(), node.span.start.col() + 1)
}

fn text(node: &Node) -> Option<&str> {
    match &node.data {
        YamlDataOwned::Value(ScalarOwned::String(s)) => Some(s),
        _ => None,
    }
}

fn describe(node: &Node) -> &'static str {
    match &node.data {
        YamlDataOwned::Value(ScalarOwned::String(_)) => "a string",
        YamlDataOwned::Value(ScalarOwned::Integer(_)) => "a number",
        YamlDataOwned::Value(ScalarOwned::FloatingPoint(_)) => "a number",
        YamlDataOwned::Value(ScalarOwned::Boolean(_)) => "a boolean",
        YamlDataOwned::Value(ScalarOwned::Null) => "nothing",
        YamlDataOwned::Sequence(_) => "a list",
        YamlDataOwned::Mapping(_) => "a mapping",
        _ => "an unsupported YAML node",
    }
}

impl Checker<'_> {
    fn error(&mut self, node: Option<&Node>, rule: Option<&str>, field: Option<&str>, message: impl Into<String>) {
        let (line, column) = node.map(position).unwrap_or((0, 0));
        self.errors.push(PolicyError {
            document: self.document.to_owned(),
            rule: rule.map(str::to_owned),
            field: field.map(str::to_owned),
            line,
            column,
            message: message.into(),
        });
    }

    /// The entries of a mapping node with string keys, in order:
    /// (key, key node, value node).
    fn entries<'n>(&mut self, node: &'n Node, rule: Option<&str>) -> Vec<(&'n str, &'n Node, &'n Node)> {
        let YamlDataOwned::Mapping(map) = &node.data else { return Vec::new() };
        let mut out = Vec::new();
        for (key, value) in map {
            match text(key) {
                Some(name) => out.push((name, key, value)),
                None => self.error(Some(key), rule, None, format!("keys must be strings, not {}", describe(key))),
            }
        }
        out
    }

    fn string<'n>(&mut self, node: &'n Node, rule: Option<&str>, field: &str) -> Option<&'n str> {
        let value = text(node);
        if value.is_none() {
            self.error(Some(node), rule, Some(field), format!("expected a string, found {}", describe(node)));
        }
        value
    }

    fn list<'n>(&mut self, node: &'n Node, rule: Option<&str>, field: &str) -> &'n [Node] {
        match &node.data {
            YamlDataOwned::Sequence(items) => items,
            _ => {
                self.error(Some(node), rule, Some(field), format!("expected a list, found {}", describe(node)));
                &[]
            }
        }
    }
}

/// Which matchers each action takes.
fn matcher_allowed(action: Action, field: &str) -> bool {
    match field {
        "paths" => matches!(action, Action::FileRead | Action::FileWrite | Action::Exec),
        "cidr_allow" | "cidr_deny" | "ports" | "sni_pattern" => {
            matches!(action, Action::NetConnect | Action::TlsConnect)
        }
        _ => false,
    }
}

const RULE_FIELDS: [&str; 10] = [
    "name",
    "action",
    "verdict",
    "severity",
    "description",
    "paths",
    "cidr_allow",
    "cidr_deny",
    "ports",
    "sni_pattern",
];

/// "unknown field; did you mean `default_verdict`? (policy fields: ...)":
/// the names that look like what was written (a prefix either way, or a
/// couple of typos away), then every name that is allowed.
fn unknown_name(what: &str, written: &str, list_name: &str, known: &[&str]) -> String {
    let mut close: Vec<(usize, &str)> = known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(written, k), *k))
        .filter(|(distance, k)| {
            *distance <= 2 || (written.len() >= 3 && (k.starts_with(written) || written.starts_with(k)))
        })
        .collect();
    close.sort();
    let hint = match close.as_slice() {
        [] => String::new(),
        [(_, only)] => format!("; did you mean `{only}`?"),
        several => {
            let names: Vec<String> = several.iter().take(3).map(|(_, k)| format!("`{k}`")).collect();
            format!("; did you mean one of {}?", names.join(", "))
        }
    };
    format!("unknown {what} {written:?}{hint} ({list_name}: {})", known.join(", "))
}

/// The agent types an overlay may name: the known-agent table plus `unknown`.
fn overlay_agent_types() -> Vec<&'static str> {
    KNOWN_AGENTS.iter().map(|a| a.agent_type).chain([UNKNOWN]).collect()
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && name.len() <= 64
}

fn parse_path(pattern: &str) -> Result<PathPattern, String> {
    if !pattern.starts_with('/') {
        return Err(format!("{pattern:?} is not an absolute path"));
    }
    if pattern.contains('\0') {
        return Err("paths cannot contain NUL".to_owned());
    }
    if pattern.split('/').any(|c| c == "." || c == "..") {
        return Err(format!("{pattern:?} has a . or .. component; write the resolved path"));
    }
    if pattern.len() > 4095 {
        return Err("path longer than PATH_MAX".to_owned());
    }
    if pattern.contains(['?', '[', ']', '{', '}']) {
        return Err(format!(
            "{pattern:?}: only `*` is a wildcard in paths (it matches any characters, `/` included); `?`, `[...]` and `{{...}}` are not supported"
        ));
    }
    Ok(if pattern.contains('*') {
        PathPattern::Glob(pattern.to_owned())
    } else if pattern.ends_with('/') {
        PathPattern::Prefix(pattern.to_owned())
    } else {
        PathPattern::Exact(pattern.to_owned())
    })
}

fn parse_cidr(text: &str) -> Result<Cidr, String> {
    let (addr, prefix) = match text.split_once('/') {
        Some((addr, prefix)) => (addr, Some(prefix)),
        None => (text, None),
    };
    let addr: IpAddr = addr.trim().parse().map_err(|_| format!("{text:?} is not an IP address or CIDR"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        Some(p) => p
            .trim()
            .parse::<u8>()
            .ok()
            .filter(|&p| p <= max)
            .ok_or_else(|| format!("{text:?}: prefix length must be 0..={max}"))?,
        None => max,
    };
    let cidr = Cidr { addr, prefix };
    let network = network_of(&cidr);
    if network != addr {
        return Err(format!("{text:?} has host bits set (did you mean {network}/{prefix}?)"));
    }
    Ok(cidr)
}

fn network_of(cidr: &Cidr) -> IpAddr {
    let mask = |bytes: &mut [u8]| {
        for (i, byte) in bytes.iter_mut().enumerate() {
            let keep = (u32::from(cidr.prefix).saturating_sub(i as u32 * 8)).min(8);
            *byte &= if keep == 0 { 0 } else { 0xffu8 << (8 - keep) };
        }
    };
    match cidr.addr {
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
    }
}

fn parse_port(node: &Node) -> Result<PortRange, String> {
    let valid = |n: i64| u16::try_from(n).ok().filter(|&p| p > 0);
    match &node.data {
        YamlDataOwned::Value(ScalarOwned::Integer(n)) => {
            let port = valid(*n).ok_or_else(|| format!("{n} is not a port (1-65535)"))?;
            Ok(PortRange { first: port, last: port })
        }
        YamlDataOwned::Value(ScalarOwned::String(s)) => {
            let (first, last) = s.split_once('-').unwrap_or((s, s));
            let parse = |p: &str| p.trim().parse::<i64>().ok().and_then(valid);
            match (parse(first), parse(last)) {
                (Some(first), Some(last)) if first <= last => Ok(PortRange { first, last }),
                _ => Err(format!("{s:?} is not a port or a port range like \"8000-8100\"")),
            }
        }
        _ => Err(format!("expected a port, found {}", describe(node))),
    }
}

/// `*.openai.com|*.anthropic.com|api.mistral.ai`
fn parse_sni(pattern: &str) -> Result<Vec<HostPattern>, String> {
    pattern
        .split('|')
        .map(|alternative| {
            let alternative = alternative.trim().to_ascii_lowercase();
            let (wildcard, host) = match alternative.strip_prefix("*.") {
                Some(rest) => (true, rest.to_owned()),
                None => (false, alternative.clone()),
            };
            let labels_ok = !host.is_empty()
                && host.len() <= 253
                && host.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                });
            if !labels_ok {
                return Err(format!(
                    "{alternative:?} is not a host name or *.domain (wildcards only as the first label)"
                ));
            }
            Ok(if wildcard { HostPattern::Subdomains(host) } else { HostPattern::Exact(host) })
        })
        .collect()
}

fn parse_rule(
    checker: &mut Checker<'_>,
    node: &Node,
    position_in_list: usize,
    names: &mut Vec<String>,
) -> Option<Rule> {
    let fallback_id = format!("#{position_in_list}");
    if !matches!(node.data, YamlDataOwned::Mapping(_)) {
        checker.error(Some(node), Some(&fallback_id), None, format!("a rule is a mapping, found {}", describe(node)));
        return None;
    }
    let entries = checker.entries(node, Some(&fallback_id));
    let field = |name: &str| entries.iter().find(|(k, _, _)| *k == name).map(|(_, _, v)| *v);
    let errors_before = checker.errors.len();

    let name = match field("name") {
        Some(value) => match checker.string(value, Some(&fallback_id), "name") {
            Some(name) if valid_name(name) => {
                if names.iter().any(|n| n == name) {
                    checker.error(Some(value), Some(name), Some("name"), "another rule has this name");
                }
                names.push(name.to_owned());
                name.to_owned()
            }
            Some(name) => {
                checker.error(
                    Some(value),
                    Some(&fallback_id),
                    Some("name"),
                    format!("{name:?}: use 1-64 letters, digits, '-', '_' or '.', starting with a letter or digit"),
                );
                fallback_id.clone()
            }
            None => fallback_id.clone(),
        },
        None => {
            checker.error(Some(node), Some(&fallback_id), Some("name"), "every rule needs a name");
            fallback_id.clone()
        }
    };
    let rule_id = Some(name.as_str());

    for (key, key_node, _) in &entries {
        if !RULE_FIELDS.contains(key) {
            checker.error(Some(key_node), rule_id, Some(key), unknown_name("field", key, "rule fields", &RULE_FIELDS));
        }
    }

    let action = match field("action") {
        Some(value) => checker.string(value, rule_id, "action").and_then(|a| {
            let action = Action::parse(a);
            if action.is_none() {
                let known: Vec<&str> = Action::ALL.iter().map(|a| a.as_str()).collect();
                checker.error(
                    Some(value),
                    rule_id,
                    Some("action"),
                    format!("unknown action {a:?} (one of {})", known.join(", ")),
                );
            }
            action
        }),
        None => {
            checker.error(Some(node), rule_id, Some("action"), "every rule needs an action");
            None
        }
    };
    let verdict = match field("verdict") {
        Some(value) => checker.string(value, rule_id, "verdict").and_then(|v| {
            let verdict = Verdict::parse(v);
            if verdict.is_none() {
                checker.error(
                    Some(value),
                    rule_id,
                    Some("verdict"),
                    format!("unknown verdict {v:?} (allow, deny or alert)"),
                );
            }
            verdict
        }),
        None => {
            checker.error(Some(node), rule_id, Some("verdict"), "every rule needs a verdict");
            None
        }
    };
    let severity = field("severity").and_then(|value| {
        checker.string(value, rule_id, "severity").and_then(|s| {
            let severity = Severity::parse(s);
            if severity.is_none() {
                checker.error(
                    Some(value),
                    rule_id,
                    Some("severity"),
                    format!("unknown severity {s:?} (info, low, medium, high or critical)"),
                );
            }
            severity
        })
    });
    if let Some(value) = field("description") {
        checker.string(value, rule_id, "description");
    }

    let mut rule = Rule {
        name: name.clone(),
        action: action.unwrap_or(Action::FileRead),
        verdict: verdict.unwrap_or(Verdict::Deny),
        severity: Severity::Low,
        paths: Vec::new(),
        cidrs: Vec::new(),
        ports: Vec::new(),
        server_names: Vec::new(),
    };
    if let Some(action) = action {
        for (key, key_node, _) in &entries {
            if matches!(*key, "paths" | "cidr_allow" | "cidr_deny" | "ports" | "sni_pattern")
                && !matcher_allowed(action, key)
            {
                checker.error(
                    Some(key_node),
                    rule_id,
                    Some(key),
                    format!("not a matcher of {} rules", action.as_str()),
                );
            }
        }
    }
    if let Some(value) = field("paths") {
        for item in checker.list(value, rule_id, "paths") {
            match checker.string(item, rule_id, "paths").map(parse_path) {
                Some(Ok(path)) => rule.paths.push(path),
                Some(Err(message)) => checker.error(Some(item), rule_id, Some("paths"), message),
                None => {}
            }
        }
    }
    for cidr_field in ["cidr_allow", "cidr_deny"] {
        let Some(value) = field(cidr_field) else { continue };
        let contradicts = match (cidr_field, verdict) {
            ("cidr_allow", Some(Verdict::Deny)) => Some("cidr_allow on a deny rule: list the addresses in cidr_deny"),
            ("cidr_deny", Some(Verdict::Allow)) => Some("cidr_deny on an allow rule: list the addresses in cidr_allow"),
            _ => None,
        };
        if let Some(message) = contradicts {
            checker.error(Some(value), rule_id, Some(cidr_field), message);
        }
        for item in checker.list(value, rule_id, cidr_field) {
            match checker.string(item, rule_id, cidr_field).map(parse_cidr) {
                Some(Ok(cidr)) => rule.cidrs.push(cidr),
                Some(Err(message)) => checker.error(Some(item), rule_id, Some(cidr_field), message),
                None => {}
            }
        }
    }
    if field("cidr_allow").is_some() && field("cidr_deny").is_some() {
        checker.error(field("cidr_deny"), rule_id, Some("cidr_deny"), "a rule lists cidr_allow or cidr_deny, not both");
    }
    if let Some(value) = field("ports") {
        for item in checker.list(value, rule_id, "ports") {
            match parse_port(item) {
                Ok(range) => rule.ports.push(range),
                Err(message) => checker.error(Some(item), rule_id, Some("ports"), message),
            }
        }
    }
    if let Some(value) = field("sni_pattern")
        && let Some(pattern) = checker.string(value, rule_id, "sni_pattern")
    {
        match parse_sni(pattern) {
            Ok(patterns) => rule.server_names = patterns,
            Err(message) => checker.error(Some(value), rule_id, Some("sni_pattern"), message),
        }
    }
    rule.severity = severity.unwrap_or(Severity::default_for(rule.verdict));
    (checker.errors.len() == errors_before).then_some(rule)
}

fn parse_rules(checker: &mut Checker<'_>, node: &Node, field: &str, names: &mut Vec<String>) -> Vec<Rule> {
    checker
        .list(node, None, field)
        .iter()
        .enumerate()
        .filter_map(|(i, rule)| parse_rule(checker, rule, i + 1, names))
        .collect()
}

const DOCUMENT_FIELDS: [&str; 5] = ["name", "description", "default_verdict", "rules", "overlays"];

/// Parses and validates one policy document named `document`.
pub fn parse_policy(document: &str, source: &str) -> Result<PolicySet, PolicyErrors> {
    let mut checker = Checker { document, errors: Vec::new() };
    if source.len() > MAX_POLICY_BYTES {
        checker.error(None, None, None, format!("larger than {MAX_POLICY_BYTES} bytes"));
        return Err(PolicyErrors(checker.errors));
    }
    let docs = match Node::load_from_str(source) {
        Ok(docs) => docs,
        Err(error) => {
            checker.errors.push(PolicyError {
                document: document.to_owned(),
                rule: None,
                field: None,
                line: error.marker().line(),
                column: error.marker().col() + 1,
                message: format!("not valid YAML: {}", error.info()),
            });
            return Err(PolicyErrors(checker.errors));
        }
    };
    let root = match docs.as_slice() {
        [root] => root,
        [] => {
            checker.error(None, None, None, "empty policy");
            return Err(PolicyErrors(checker.errors));
        }
        [_, second, ..] => {
            checker.error(Some(second), None, None, "one YAML document per policy");
            return Err(PolicyErrors(checker.errors));
        }
    };

    let mut names = Vec::new();
    let mut set = PolicySet {
        name: document.to_owned(),
        base: Policy { default_verdict: Verdict::Allow, rules: Vec::new() },
        overlays: BTreeMap::new(),
    };
    match &root.data {
        YamlDataOwned::Sequence(_) => set.base.rules = parse_rules(&mut checker, root, "rules", &mut names),
        YamlDataOwned::Mapping(_) => {
            for (key, key_node, value) in checker.entries(root, None) {
                match key {
                    "name" => {
                        if let Some(name) = checker.string(value, None, "name") {
                            set.name = name.to_owned();
                        }
                    }
                    "description" => {
                        checker.string(value, None, "description");
                    }
                    "default_verdict" => {
                        if let Some(v) = checker.string(value, None, "default_verdict") {
                            match Verdict::parse(v) {
                                Some(verdict) => set.base.default_verdict = verdict,
                                None => checker.error(
                                    Some(value),
                                    None,
                                    Some("default_verdict"),
                                    format!("unknown verdict {v:?} (allow, deny or alert)"),
                                ),
                            }
                        }
                    }
                    "rules" => set.base.rules = parse_rules(&mut checker, value, "rules", &mut names),
                    "overlays" => {
                        if !matches!(value.data, YamlDataOwned::Mapping(_)) {
                            checker.error(
                                Some(value),
                                None,
                                Some("overlays"),
                                "expected a mapping of agent type to rules",
                            );
                        }
                        for (agent_type, agent_node, rules) in checker.entries(value, None) {
                            let known =
                                agent_type == UNKNOWN || KNOWN_AGENTS.iter().any(|a| a.agent_type == agent_type);
                            if !known {
                                checker.error(
                                    Some(agent_node),
                                    None,
                                    Some("overlays"),
                                    unknown_name("agent type", agent_type, "agent types", &overlay_agent_types()),
                                );
                                continue;
                            }
                            let parsed = parse_rules(&mut checker, rules, "overlays", &mut names);
                            set.overlays.insert(agent_type.to_owned(), parsed);
                        }
                    }
                    other => checker.error(
                        Some(key_node),
                        None,
                        Some(other),
                        unknown_name("field", other, "policy fields", &DOCUMENT_FIELDS),
                    ),
                }
            }
        }
        _ => checker.error(
            Some(root),
            None,
            None,
            format!("a policy is a list of rules or a mapping, found {}", describe(root)),
        ),
    }
    let total = set.base.rules.len() + set.overlays.values().map(Vec::len).sum::<usize>();
    if total > MAX_RULES {
        checker.error(None, None, None, format!("{total} rules: at most {MAX_RULES}"));
    }
    if checker.errors.is_empty() { Ok(set) } else { Err(PolicyErrors(checker.errors)) }
}
