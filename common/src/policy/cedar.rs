//! A policy as Cedar (PolicyPush.cedar_text): the text and schema the
//! server re-evaluates events with, and tyrd evaluates what the kernel
//! cannot decide (TLS server names). Both decide as [`PolicySet::decide`].
//!
//! Encoding. Principals are agent types (`Tyr::AgentType::"cursor"`,
//! `"unknown"`, `"unregistered"`), actions the rule actions, the resource
//! the daemon's host; what a rule matches is in the context (`path`; `ip`,
//! `ip4` for IPv4 and IPv4-mapped destinations, `port`; `server_name`,
//! lower-cased without trailing dots). First match wins: each rule is one
//! Cedar policy whose `unless` clause excludes every rule before it in its
//! agent type's order (overlay rules, then the base's), so at most one
//! policy applies. `allow` and `alert` rules are `permit`s, `deny` rules
//! `forbid`s; a default of allow or alert is a last `permit` for requests no
//! rule matches, a default of deny is Cedar's own. Annotations carry the
//! rule's name, 1-based index (as in the compiled entries), verdict and
//! severity, and the policy version.
//!
//! Paths: `/dir/` is `like "/dir/*"` or the directory itself; a glob's `*`
//! is `like`'s `*` (any characters, `/` included), which is why policy
//! globs mean exactly that.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::str::FromStr;

use cedar_policy::{
    Authorizer, Context, Decision as CedarDecision, Entities, EntityUid, PolicySet as CedarPolicySet,
    Request as CedarRequest, RestrictedExpression, Schema,
};

use super::model::{Action, Cidr, HostPattern, PathPattern, PolicySet, Request, Rule, Verdict};

/// The schema every policy's Cedar text is written against.
pub const CEDAR_SCHEMA: &str = r#"namespace Tyr {
  entity AgentType;
  entity Host;
  action file_read, file_write, exec appliesTo {
    principal: [AgentType],
    resource: [Host],
    context: { path: String }
  };
  action net_connect appliesTo {
    principal: [AgentType],
    resource: [Host],
    context: { ip: __cedar::ipaddr, ip4?: __cedar::ipaddr, port: Long }
  };
  action tls_connect appliesTo {
    principal: [AgentType],
    resource: [Host],
    context: { ip: __cedar::ipaddr, ip4?: __cedar::ipaddr, port: Long, server_name: String }
  };
}
"#;

/// A Cedar string literal.
fn quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A `like` pattern: `*` stays a wildcard, everything else is literal
/// (paths and names never hold a literal `*`: the parser makes any path
/// with one a glob).
fn like_pattern(pattern: &str) -> String {
    quoted(pattern)
}

fn any_of(parts: Vec<String>) -> String {
    match parts.len() {
        0 => "false".to_owned(),
        1 => parts.into_iter().next().unwrap_or_default(),
        _ => format!("({})", parts.join(" || ")),
    }
}

fn all_of(parts: Vec<String>) -> String {
    match parts.len() {
        0 => "true".to_owned(),
        1 => parts.into_iter().next().unwrap_or_default(),
        _ => format!("({})", parts.join(" && ")),
    }
}

fn path_condition(pattern: &PathPattern) -> String {
    match pattern {
        PathPattern::Exact(path) => format!("context.path == {}", quoted(path)),
        PathPattern::Prefix(prefix) => {
            let dir = &prefix[..prefix.len() - 1];
            let under = format!("context.path like {}", like_pattern(&format!("{prefix}*")));
            if dir.is_empty() { under } else { format!("({under} || context.path == {})", quoted(dir)) }
        }
        PathPattern::Glob(glob) => format!("context.path like {}", like_pattern(&glob.replace("**", "*"))),
    }
}

/// An address as Cedar's `ip()` reads it: IPv6 in eight hex groups, since
/// Cedar refuses the dotted IPv4-in-IPv6 forms Rust prints.
fn cedar_ip(addr: IpAddr) -> String {
    match addr {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => v6.segments().iter().map(|s| format!("{s:x}")).collect::<Vec<_>>().join(":"),
    }
}

fn cidr_condition(cidr: &Cidr) -> String {
    let range = format!("{}/{}", cedar_ip(cidr.addr), cidr.prefix);
    match cidr.addr {
        IpAddr::V4(_) => format!("(context has ip4 && context.ip4.isInRange(ip(\"{range}\")))"),
        IpAddr::V6(_) => format!("context.ip.isInRange(ip(\"{range}\"))"),
    }
}

fn host_condition(host: &HostPattern) -> String {
    match host {
        HostPattern::Exact(name) => format!("context.server_name == {}", quoted(&name.to_ascii_lowercase())),
        HostPattern::Subdomains(domain) => {
            let domain = domain.to_ascii_lowercase();
            format!(
                "(context.server_name like {} && context.server_name != {})",
                like_pattern(&format!("*.{domain}")),
                quoted(&format!(".{domain}"))
            )
        }
    }
}

/// What `rule` matches, as a Cedar condition on the context.
fn condition(rule: &Rule) -> String {
    let mut parts = Vec::new();
    match rule.action {
        Action::FileRead | Action::FileWrite | Action::Exec => {
            if !rule.paths.is_empty() {
                parts.push(any_of(rule.paths.iter().map(path_condition).collect()));
            }
        }
        Action::NetConnect | Action::TlsConnect => {
            if !rule.cidrs.is_empty() {
                parts.push(any_of(rule.cidrs.iter().map(cidr_condition).collect()));
            }
            if !rule.ports.is_empty() {
                parts.push(any_of(
                    rule.ports
                        .iter()
                        .map(|p| {
                            if p.first == p.last {
                                format!("context.port == {}", p.first)
                            } else {
                                format!("(context.port >= {} && context.port <= {})", p.first, p.last)
                            }
                        })
                        .collect(),
                ));
            }
            if rule.action == Action::TlsConnect && !rule.server_names.is_empty() {
                parts.push(any_of(rule.server_names.iter().map(host_condition).collect()));
            }
        }
    }
    all_of(parts)
}

fn agent_uid(agent_type: &str) -> String {
    format!("Tyr::AgentType::{}", quoted(agent_type))
}

fn action_uid(action: Action) -> String {
    format!("Tyr::Action::{}", quoted(action.as_str()))
}

/// One rule's place in the order: its number and what it matches.
struct Numbered<'r> {
    index: u32,
    rule: &'r Rule,
    condition: String,
}

/// `rules` numbered on from `*next`.
fn numbered<'r>(rules: &'r [Rule], next: &mut u32) -> Vec<Numbered<'r>> {
    rules
        .iter()
        .map(|rule| {
            *next += 1;
            Numbered { index: *next, rule, condition: condition(rule) }
        })
        .collect()
}

/// The Cedar text of `set`, stamped with `version`.
pub fn to_cedar(set: &PolicySet, version: i64) -> String {
    // Numbered as the compiler numbers rules: base, then overlays in order.
    let mut next = 0u32;
    let base = numbered(&set.base.rules, &mut next);
    let overlays: Vec<(&str, Vec<Numbered<'_>>)> =
        set.overlays.iter().map(|(agent, rules)| (agent.as_str(), numbered(rules, &mut next))).collect();

    let mut out = String::new();
    let _ = writeln!(
        out,
        "// Tyr policy {}, version {version}: first match wins (overlay rules, then the base's), then the default ({}).",
        quoted(&set.name),
        set.base.default_verdict.as_str()
    );
    for action in Action::ALL {
        // Any overlay rule of this action that matches, for the principal's type.
        let overlay_matches: Vec<String> = overlays
            .iter()
            .filter_map(|(agent, rules)| {
                let conditions: Vec<String> =
                    rules.iter().filter(|n| n.rule.action == action).map(|n| n.condition.clone()).collect();
                (!conditions.is_empty())
                    .then(|| format!("(principal == {} && {})", agent_uid(agent), any_of(conditions)))
            })
            .collect();
        for (agent, rules) in &overlays {
            let mut earlier = Vec::new();
            for numbered in rules.iter().filter(|n| n.rule.action == action) {
                emit(&mut out, version, Some(agent), numbered, &earlier);
                earlier.push(numbered.condition.clone());
            }
        }
        let mut earlier = overlay_matches;
        for numbered in base.iter().filter(|n| n.rule.action == action) {
            emit(&mut out, version, None, numbered, &earlier);
            earlier.push(numbered.condition.clone());
        }
        if set.base.default_verdict != Verdict::Deny {
            let _ = writeln!(
                out,
                "@rule(\"\")\n@verdict({})\n@policy_version(\"{version}\")\npermit (principal, action == {}, resource){};",
                quoted(set.base.default_verdict.as_str()),
                action_uid(action),
                unless(&earlier)
            );
        }
    }
    out
}

fn unless(earlier: &[String]) -> String {
    if earlier.is_empty() { String::new() } else { format!("\nunless {{ {} }}", earlier.join(" || ")) }
}

fn emit(out: &mut String, version: i64, agent: Option<&str>, numbered: &Numbered<'_>, earlier: &[String]) {
    let rule = numbered.rule;
    let effect = if rule.verdict == Verdict::Deny { "forbid" } else { "permit" };
    let principal = agent.map_or_else(|| "principal".to_owned(), |a| format!("principal == {}", agent_uid(a)));
    let _ = writeln!(
        out,
        "@rule({})\n@rule_index(\"{}\")\n@verdict({})\n@severity({})\n@policy_version(\"{version}\")\n{effect} ({principal}, action == {}, resource)\nwhen {{ {} }}{};",
        quoted(&rule.name),
        numbered.index,
        quoted(rule.verdict.as_str()),
        quoted(rule.severity.as_str()),
        action_uid(rule.action),
        numbered.condition,
        unless(earlier)
    );
}

/// Why Cedar text could not be loaded or a request evaluated.
#[derive(Debug, thiserror::Error)]
pub enum CedarError {
    #[error("Cedar schema: {0}")]
    Schema(String),
    #[error("Cedar policies: {0}")]
    Policies(String),
    #[error("Cedar request: {0}")]
    Request(String),
    #[error("Cedar evaluation: {0}")]
    Evaluation(String),
}

/// A decision as Cedar reached it: the verdict and the rule's name (None:
/// the default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CedarVerdict {
    pub verdict: Verdict,
    pub rule: Option<String>,
}

/// Evaluates requests against a policy's Cedar text.
#[derive(Debug)]
pub struct CedarEvaluator {
    policies: CedarPolicySet,
    schema: Schema,
    authorizer: Authorizer,
    entities: Entities,
    host: EntityUid,
}

fn uid(text: &str) -> Result<EntityUid, CedarError> {
    EntityUid::from_str(text).map_err(|e| CedarError::Request(e.to_string()))
}

impl CedarEvaluator {
    /// Loads Cedar text produced by [`to_cedar`].
    pub fn new(cedar_text: &str) -> Result<Self, CedarError> {
        let (schema, _warnings) =
            Schema::from_cedarschema_str(CEDAR_SCHEMA).map_err(|e| CedarError::Schema(e.to_string()))?;
        let policies = CedarPolicySet::from_str(cedar_text).map_err(|e| CedarError::Policies(e.to_string()))?;
        Ok(Self {
            policies,
            schema,
            authorizer: Authorizer::new(),
            entities: Entities::empty(),
            host: uid(r#"Tyr::Host::"local""#)?,
        })
    }

    /// The schema the text is checked against.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// The loaded policies.
    pub fn policies(&self) -> &CedarPolicySet {
        &self.policies
    }

    /// The decision for `request` made by a process of `agent_type`.
    pub fn decide(&self, agent_type: &str, request: &Request<'_>) -> Result<CedarVerdict, CedarError> {
        let context = context_of(request)?;
        let cedar_request = CedarRequest::new(
            uid(&agent_uid(agent_type))?,
            uid(&action_uid(request.action()))?,
            self.host.clone(),
            context,
            Some(&self.schema),
        )
        .map_err(|e| CedarError::Request(e.to_string()))?;
        let response = self.authorizer.is_authorized(&cedar_request, &self.policies, &self.entities);
        if let Some(error) = response.diagnostics().errors().next() {
            return Err(CedarError::Evaluation(error.to_string()));
        }
        let annotation = |key: &str| {
            response.diagnostics().reason().find_map(|id| self.policies.annotation(id, key).map(str::to_owned))
        };
        let rule = annotation("rule").filter(|name| !name.is_empty());
        let verdict = match response.decision() {
            CedarDecision::Deny => Verdict::Deny,
            CedarDecision::Allow => annotation("verdict")
                .as_deref()
                .and_then(Verdict::parse)
                .ok_or_else(|| CedarError::Evaluation("an allowing policy without a verdict annotation".to_owned()))?,
        };
        Ok(CedarVerdict { verdict, rule })
    }
}

/// The request's context, in the schema's shape.
fn context_of(request: &Request<'_>) -> Result<Context, CedarError> {
    let network = |addr: IpAddr, port: u16| {
        let mut pairs = vec![
            ("ip".to_owned(), RestrictedExpression::new_ip(cedar_ip(addr))),
            ("port".to_owned(), RestrictedExpression::new_long(i64::from(port))),
        ];
        let v4 = match addr {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(v6) => v6.to_ipv4_mapped(),
        };
        if let Some(v4) = v4 {
            pairs.push(("ip4".to_owned(), RestrictedExpression::new_ip(v4.to_string())));
        }
        pairs
    };
    let pairs = match *request {
        Request::File { path, .. } | Request::Exec { path } => {
            vec![("path".to_owned(), RestrictedExpression::new_string(path.to_owned()))]
        }
        Request::Connect { addr, port } => network(addr, port),
        Request::Tls { server_name, addr, port } => {
            let mut pairs = network(addr, port);
            let name = server_name.trim_end_matches('.').to_ascii_lowercase();
            pairs.push(("server_name".to_owned(), RestrictedExpression::new_string(name)));
            pairs
        }
    };
    Context::from_pairs(pairs).map_err(|e| CedarError::Request(e.to_string()))
}
