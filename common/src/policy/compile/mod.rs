//! Compiles a policy into the flat entries tyrd writes to the kernel's
//! policy maps, and serialises them (PolicyPush.bpf_entries).
//!
//! Connect rules become longest-prefix-match entries over addresses
//! ([`net`]); file and exec rules become longest-prefix-match entries over
//! path bytes plus glob automata ([`path`], [`glob`]). Both are keyed by the
//! agent class of the calling process: class 0 holds the base policy, and a
//! class with an overlay holds its overlay rules then the base rules, so
//! one lookup and one ordered candidate walk give exactly
//! [`PolicySet::decide`]'s first match. [`CompiledPolicy::decide_connect`]
//! and [`CompiledPolicy::decide_path`] run the kernel's steps over the
//! compiled entries, so the two can be compared.
//!
//! The byte layout is in [`bytes`]; the kernel's view of it is
//! `bpf/include/tyr_records.h`.

pub mod bytes;
pub mod glob;
pub mod net;
pub mod path;

use std::net::IpAddr;

pub use net::{NetCandidate, NetPrefix};
pub use path::{PathCandidate, PathMatch, PathPrefix};

use super::model::{Action, PolicySet, Rule, Severity, Verdict};

/// The rules of `action` among `first` then `then`, in that order: the
/// decision order of one class for one action.
fn in_order<'r>(action: Action, first: &[(u32, &'r Rule)], then: &[(u32, &'r Rule)]) -> Vec<(u32, &'r Rule)> {
    first.iter().chain(then).filter(|(_, r)| r.action == action).copied().collect()
}
use crate::agents::{KNOWN_AGENTS, UNKNOWN};

// What the kernel's maps hold is defined by bpf/include/tyr_records.h;
// these are the compiler's copies of its bounds and codes (this crate
// cannot see the generated skeleton), and tyr-agent's `enforce::layout`
// const-asserts every one of them against the header and the skeleton.

/// Kernel bounds (bpf/include/tyr_records.h).
pub const MAX_CANDIDATES: usize = 16;
pub const MAX_PATH_CANDIDATES: usize = 32;
pub const MAX_PORT_RANGES: usize = 8;
pub const MAX_LISTS: usize = 4096;
pub const MAX_GLOBS: usize = 1024;
/// Bytes of a path the kernel's trie key holds (the kernel caps LPM keys at
/// 256 data bytes; class and action take 8): literal prefixes (exact
/// paths, directory prefixes, a glob's text before its first `*`) may not
/// be longer.
pub const PATH_KEY_BYTES: usize = 248;
/// Class of the base policy.
pub const BASE_CLASS: u32 = 0;
/// Class of processes no agent claims (`unknown` overlay).
pub const UNKNOWN_CLASS: u32 = 0xffff_fffe;
/// Class of unregistered agents under `unregistered_agents: quarantine` or
/// `deny` (see [`crate::policy::unregistered`]).
pub const UNREGISTERED_CLASS: u32 = 0xffff_fffd;
/// The overlay name of that class.
pub const UNREGISTERED: &str = "unregistered";

/// Verdict codes, as tyr.v1.Verdict (`TYR_VERDICT_*`).
pub const VERDICT_ALLOW: u8 = 1;
pub const VERDICT_DENY: u8 = 2;
pub const VERDICT_ALERT: u8 = 3;
/// Actions of path rules in the trie key (`TYR_ACTION_*`).
pub const ACTION_FILE_READ: u8 = 1;
pub const ACTION_FILE_WRITE: u8 = 2;
pub const ACTION_EXEC: u8 = 3;
/// Checks of a path candidate (`TYR_PATH_MATCH_*`).
pub const PATH_MATCH_PREFIX: u8 = 1;
pub const PATH_MATCH_EXACT: u8 = 2;
pub const PATH_MATCH_GLOB: u8 = 3;
pub const PATH_MATCH_BELOW: u8 = 4;

/// The kernel class of an agent type: 1 + its index in the known-agent
/// table, [`UNKNOWN_CLASS`] for `unknown`, [`UNREGISTERED_CLASS`] for
/// `unregistered`.
pub fn class_of(agent_type: &str) -> Option<u32> {
    match agent_type {
        UNKNOWN => Some(UNKNOWN_CLASS),
        UNREGISTERED => Some(UNREGISTERED_CLASS),
        _ => KNOWN_AGENTS.iter().position(|a| a.agent_type == agent_type).map(|i| i as u32 + 1),
    }
}

/// What a rule is, as events and the server need it (the matchers are in
/// the entries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleInfo {
    pub name: String,
    pub action: Action,
    pub verdict: Verdict,
    pub severity: Severity,
}

/// A policy as the kernel holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledPolicy {
    pub version: i64,
    pub default_verdict: Verdict,
    pub rules: Vec<RuleInfo>,
    pub net_lists: Vec<Vec<NetCandidate>>,
    pub net_prefixes: Vec<NetPrefix>,
    /// Glob patterns from their first `*` on (their literal start is a trie prefix).
    pub globs: Vec<String>,
    pub path_lists: Vec<Vec<PathCandidate>>,
    pub path_prefixes: Vec<PathPrefix>,
}

/// Why a policy cannot be compiled for the kernel.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    #[error("rule {rule}: {count} port ranges, the kernel takes at most {MAX_PORT_RANGES}")]
    TooManyPorts { rule: String, count: usize },
    #[error(
        "{count} rules can match {prefix:?}; the kernel checks at most {MAX_CANDIDATES} per address and {MAX_PATH_CANDIDATES} per path (split the ranges or order a catch-all earlier)"
    )]
    TooManyCandidates { prefix: String, count: usize },
    #[error("{0} distinct rule lists; the kernel holds at most {MAX_LISTS}")]
    TooManyLists(usize),
    #[error("rule {rule}: path {path:?} has more than {PATH_KEY_BYTES} bytes before its first `*`")]
    PathTooLong { rule: String, path: String },
    #[error("rule {rule}: glob {pattern:?} is longer than the kernel matches (63 characters after the first `*`)")]
    GlobTooLong { rule: String, pattern: String },
    #[error("{0} distinct globs; the kernel holds at most {MAX_GLOBS}")]
    TooManyGlobs(usize),
    #[error("malformed compiled policy: {0}")]
    Malformed(&'static str),
}

/// Compiles `set`, stamped with `version`.
pub fn compile(set: &PolicySet, version: i64) -> Result<CompiledPolicy, CompileError> {
    let mut rules = Vec::new();
    let mut numbered = |rule: &Rule| -> Result<u32, CompileError> {
        if rule.ports.len() > MAX_PORT_RANGES {
            return Err(CompileError::TooManyPorts { rule: rule.name.clone(), count: rule.ports.len() });
        }
        rules.push(RuleInfo {
            name: rule.name.clone(),
            action: rule.action,
            verdict: rule.verdict,
            severity: rule.severity,
        });
        Ok(rules.len() as u32)
    };
    let base: Vec<(u32, &Rule)> = set.base.rules.iter().map(|r| Ok((numbered(r)?, r))).collect::<Result<_, _>>()?;
    let mut overlays = Vec::new();
    for (agent_type, overlay) in &set.overlays {
        let numbered_overlay: Vec<(u32, &Rule)> =
            overlay.iter().map(|r| Ok((numbered(r)?, r))).collect::<Result<_, CompileError>>()?;
        overlays.push((class_of(agent_type), numbered_overlay));
    }

    let mut net = net::NetBuilder::new();
    let mut path = path::PathBuilder::new();
    net.class(BASE_CLASS, &base, &[])?;
    path.class(BASE_CLASS, &base, &[])?;
    for (class, overlay) in &overlays {
        let Some(class) = *class else { continue };
        net.class(class, overlay, &base)?;
        path.class(class, overlay, &base)?;
    }
    Ok(CompiledPolicy {
        version,
        default_verdict: set.base.default_verdict,
        rules,
        net_lists: net.lists.lists,
        net_prefixes: net.prefixes,
        globs: path.globs,
        path_lists: path.lists.lists,
        path_prefixes: path.prefixes,
    })
}

impl CompiledPolicy {
    /// The kernel's connect decision, over the compiled entries: (verdict,
    /// 1-based rule or 0 for the default).
    pub fn decide_connect(&self, class: u32, addr: IpAddr, port: u16) -> (Verdict, u32) {
        net::decide(&self.net_prefixes, &self.net_lists, class, addr, port).unwrap_or((self.default_verdict, 0))
    }

    /// The kernel's decision for opening (`FileRead`, `FileWrite`) or
    /// executing (`Exec`) `path`: (verdict, 1-based rule or 0 for the default).
    pub fn decide_path(&self, class: u32, action: Action, path: &[u8]) -> (Verdict, u32) {
        path::decide(self, class, action, path, false).map_or((self.default_verdict, 0), |f| (f.verdict, f.rule))
    }

    /// The kernel's decision for directory `path` as a whole (renamed, or
    /// mounted over): the strictest decision of anything below it, where a
    /// rule could match there; the default's too unless one rule decides
    /// everything below it. Never less strict than the decision of any
    /// path below it.
    pub fn decide_directory(&self, class: u32, action: Action, path: &[u8]) -> (Verdict, u32) {
        let default = (self.default_verdict, 0);
        match path::decide(self, class, action, path, true) {
            None => default,
            Some(found) if found.covers => (found.verdict, found.rule),
            Some(found) => path::stricter((found.verdict, found.rule), default),
        }
    }

    /// The rule with 1-based index `rule`.
    pub fn rule(&self, rule: u32) -> Option<&RuleInfo> {
        self.rules.get((rule as usize).checked_sub(1)?)
    }
}
