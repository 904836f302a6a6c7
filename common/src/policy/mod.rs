//! Tyr policy: YAML rules, validated into a model with one meaning.
//!
//! A rule names an `action` (file_read, file_write, exec, net_connect,
//! tls_connect), optional matchers (paths, cidr_allow / cidr_deny, ports,
//! sni_pattern), a `verdict` (allow, deny, alert) and a `severity`. Rules
//! are checked in order and the first match wins; a request no rule matches
//! gets the default verdict. A base policy applies to every process of the
//! daemon; overlays add rules for one agent type, checked before the base.

pub mod cedar;
pub mod compile;
pub mod emit;
pub mod model;
pub mod parse;
pub mod unregistered;

pub use cedar::{CEDAR_SCHEMA, CedarEvaluator, to_cedar};
pub use compile::{CompileError, CompiledPolicy, compile};
pub use emit::{EmitError, to_yaml, to_yaml_verified};
pub use model::{Action, Decision, Policy, PolicySet, Request, Rule, Severity, Verdict};
pub use parse::{PolicyError, PolicyErrors, parse_policy};
