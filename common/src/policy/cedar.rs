//! A policy as Cedar (PolicyPush.cedar_text): the text and schema the
//! server re-evaluates events with, and tyrd evaluates what the kernel
//! cannot decide (TLS server names). Both decide as [`PolicySet::decide`].
//!
//! Encoding. Principals are agent types (`Tyr::AgentType::"cursor"`,
//! `"unknown"`, `"unregistered"`), actions the rule actions, the resource
//! the daemon's host; what a rule matches is in the context (`path`; `ip`,
//! `ip4` for IPv4 and IPv4-mapped destinations, `port`; `server_name`,
//! lower-cased without trailing dots). Each rule is one Cedar policy with
//! only its own condition (an overlay's rules also name their agent type):
//! `allow` and `alert` rules are `permit`s, `deny` rules `forbid`s, and a
//! default of allow or alert is an unconditional `permit` per action (a
//! default of deny is Cedar's own). First match wins through the `@order`
//! annotation: of the policies a request satisfies, the one with the lowest
//! order decides (an agent type's overlay rules, then the base's, then the
//! default), which [`CedarEvaluator`] reads from Cedar's response. So the
//! text and its compile time grow linearly with the rules, where writing
//! the precedence into each condition (`unless` any earlier rule) grew with
//! their square. Cedar's own combination (any `forbid` wins) is not the
//! policy's meaning. Further annotations carry the rule's name, 1-based
//! index (as in the compiled entries), verdict and severity, and the policy
//! version.
//!
//! Paths: `/dir/` is `like "/dir/*"` or the directory itself; a glob's `*`
//! is `like`'s `*` (any characters, `/` included), which is why policy
//! globs mean exactly that.

mod evaluator;

use std::fmt::Write as _;
use std::net::IpAddr;

pub use evaluator::{CedarError, CedarEvaluator, CedarVerdict};

use super::model::{Action, Cidr, HostPattern, PathPattern, PolicySet, Rule, Verdict};

/// The annotation whose lowest value among the satisfied policies decides.
const ORDER: &str = "order";

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

/// The Cedar text of `set`, stamped with `version`.
pub fn to_cedar(set: &PolicySet, version: i64) -> String {
    // An overlay's rules come before the base's for its agent type; agent
    // types never share a request, so every overlay can start at order 1.
    let overlay_span = set.overlays.values().map(Vec::len).max().unwrap_or(0);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "// Tyr policy {}, version {version}: first match wins (of the policies a request satisfies, the lowest @order: overlay rules, then the base's), then the default ({}).",
        quoted(&set.name),
        set.base.default_verdict.as_str()
    );
    // Numbered as the compiler numbers rules: base, then overlays in order.
    let mut index = 0u32;
    for (position, rule) in set.base.rules.iter().enumerate() {
        index += 1;
        emit(&mut out, version, None, rule, index, overlay_span + position + 1);
    }
    for (agent, rules) in &set.overlays {
        for (position, rule) in rules.iter().enumerate() {
            index += 1;
            emit(&mut out, version, Some(agent), rule, index, position + 1);
        }
    }
    if set.base.default_verdict != Verdict::Deny {
        let order = overlay_span + set.base.rules.len() + 1;
        for action in Action::ALL {
            let _ = writeln!(
                out,
                "@rule(\"\")\n@{ORDER}(\"{order}\")\n@verdict({})\n@policy_version(\"{version}\")\npermit (principal, action == {}, resource);",
                quoted(set.base.default_verdict.as_str()),
                action_uid(action),
            );
        }
    }
    out
}

/// One rule as a Cedar policy: its own condition and its place in the order.
fn emit(out: &mut String, version: i64, agent: Option<&str>, rule: &Rule, index: u32, order: usize) {
    let effect = if rule.verdict == Verdict::Deny { "forbid" } else { "permit" };
    let principal = agent.map_or_else(|| "principal".to_owned(), |a| format!("principal == {}", agent_uid(a)));
    let _ = writeln!(
        out,
        "@rule({})\n@rule_index(\"{index}\")\n@{ORDER}(\"{order}\")\n@verdict({})\n@severity({})\n@policy_version(\"{version}\")\n{effect} ({principal}, action == {}, resource)\nwhen {{ {} }};",
        quoted(&rule.name),
        quoted(rule.verdict.as_str()),
        quoted(rule.severity.as_str()),
        action_uid(rule.action),
        condition(rule),
    );
}
