//! What policy an unregistered agent gets: a process showing AI-agent
//! signals (an LLM API key in its environment, TLS to an LLM provider, an
//! agent-like name) that no known agent matched. Under
//! `unregistered_agents: audit` it is governed like any process; under
//! `quarantine` by the built-in strict policy (`quarantine.yaml`); under
//! `deny` every governed operation is refused. Both become the overlay of
//! the `unregistered` class, ending in catch-all rules so that the daemon's
//! base policy never applies to it.

use super::compile::UNREGISTERED;
use super::model::{Action, PolicySet, Rule, Severity, Verdict};
use super::parse::{PolicyErrors, parse_policy};

/// The built-in quarantine policy, as shipped.
pub const QUARANTINE_POLICY: &str = include_str!("quarantine.yaml");

/// How unregistered agents are restricted beyond observation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restriction {
    /// The built-in quarantine policy.
    Quarantine,
    /// Every governed operation refused.
    Deny,
}

fn catch_all(name: &str, action: Action, verdict: Verdict, severity: Severity) -> Rule {
    Rule {
        name: name.to_owned(),
        action,
        verdict,
        severity,
        paths: Vec::new(),
        cidrs: Vec::new(),
        ports: Vec::new(),
        server_names: Vec::new(),
    }
}

/// The quarantine policy as overlay rules: its rules, then its default for
/// every action.
pub fn quarantine_rules() -> Result<Vec<Rule>, PolicyErrors> {
    let quarantine = parse_policy("built-in quarantine.yaml", QUARANTINE_POLICY)?;
    let default = quarantine.base.default_verdict;
    let mut rules = quarantine.base.rules;
    for action in Action::ALL {
        let name = format!("quarantine-default-{}", action.as_str().replace('_', "-"));
        rules.push(catch_all(&name, action, default, Severity::default_for(default)));
    }
    Ok(rules)
}

/// The rules that refuse every governed operation.
pub fn deny_rules() -> Vec<Rule> {
    Action::ALL
        .into_iter()
        .map(|action| {
            let name = format!("unregistered-agents-deny-{}", action.as_str().replace('_', "-"));
            catch_all(&name, action, Verdict::Deny, Severity::High)
        })
        .collect()
}

/// `set` with the overlay for unregistered agents.
pub fn with_unregistered(set: &PolicySet, restriction: Restriction) -> Result<PolicySet, PolicyErrors> {
    let rules = match restriction {
        Restriction::Quarantine => quarantine_rules()?,
        Restriction::Deny => deny_rules(),
    };
    let mut effective = set.clone();
    effective.overlays.insert(UNREGISTERED.to_owned(), rules);
    Ok(effective)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::model::{Policy, Request};

    fn open_set() -> PolicySet {
        PolicySet {
            name: "open".to_owned(),
            base: Policy { default_verdict: Verdict::Allow, rules: Vec::new() },
            overlays: Default::default(),
        }
    }

    #[test]
    fn quarantine_is_strict_and_never_falls_through_to_the_base() {
        let set = with_unregistered(&open_set(), Restriction::Quarantine).expect("built-in policy parses");
        let decide = |r: Request<'_>| set.decide(UNREGISTERED, &r).verdict;
        assert_eq!(decide(Request::File { write: false, path: "/home/dev/.ssh/id_ed25519" }), Verdict::Deny);
        assert_eq!(decide(Request::File { write: false, path: "/usr/lib/libc.so.6" }), Verdict::Allow);
        assert_eq!(decide(Request::File { write: true, path: "/home/dev/project/main.rs" }), Verdict::Deny);
        assert_eq!(decide(Request::File { write: true, path: "/tmp/scratch" }), Verdict::Alert);
        assert_eq!(decide(Request::Exec { path: "/usr/bin/sudo" }), Verdict::Deny);
        let remote = Request::Connect { addr: "127.0.0.1".parse().expect("ip"), port: 80 };
        assert_eq!(decide(remote), Verdict::Alert);
        let remote = Request::Connect { addr: "10.1.2.3".parse().expect("ip"), port: 443 };
        assert_eq!(decide(remote), Verdict::Deny);
        // Everyone else still gets the base.
        assert_eq!(set.decide("unknown", &Request::File { write: true, path: "/home/dev/x" }).verdict, Verdict::Allow);
    }

    #[test]
    fn deny_refuses_everything() {
        let set = with_unregistered(&open_set(), Restriction::Deny).expect("deny overlay");
        let decision = set.decide(UNREGISTERED, &Request::File { write: false, path: "/usr/lib/libc.so.6" });
        assert_eq!(decision.verdict, Verdict::Deny);
        assert_eq!(decision.rule.map(|r| r.name.as_str()), Some("unregistered-agents-deny-file-read"));
    }
}
