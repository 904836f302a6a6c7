//! File and exec rules as kernel entries: per agent class and action, the
//! literal prefixes of the rules' path patterns (an exact path, a directory
//! prefix, or a glob's text before its first `*`) in a longest-prefix-match
//! trie over path bytes, each naming the ordered list of pattern checks
//! that can match a path whose longest configured prefix is that one:
//! `prefix` (matches), `exact` (the path has exactly that length), `glob`
//! (the glob automaton matches the path from the end of its literal). The
//! kernel takes the first candidate that matches.
//!
//! A directory is also decided as a whole, when it is renamed or mounted
//! over: as the strictest decision of anything below it. Each directory
//! above a rule's literal start (`/`, `/home/`, `/home/u/` for
//! `/home/u/.aws/credentials`) is an entry of its own, whose `below`
//! candidate names the strictest rule under it; it matches only such a
//! whole-directory decision of exactly that directory, so decisions of
//! single paths are unchanged.

use std::collections::{BTreeSet, HashMap};

use super::CompiledPolicy;
use super::glob::{GlobAutomaton, split_literal};
use super::net::Lists;
use super::{
    BASE_CLASS, CompileError, MAX_GLOBS, MAX_PATH_CANDIDATES, PATH_KEY_BYTES, PATH_MATCH_BELOW, PATH_MATCH_EXACT,
    PATH_MATCH_GLOB, PATH_MATCH_PREFIX, in_order,
};
use crate::policy::model::{Action, PathPattern, Rule, Verdict};

/// How a candidate checks a path whose start the trie already matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PathMatch {
    /// Everything under the prefix.
    Prefix,
    /// The path is exactly the prefix: it has this length.
    Exact { len: u16 },
    /// Glob `glob` (index into [`super::CompiledPolicy::globs`]) matches the
    /// path from byte `start` on.
    Glob { start: u16, glob: u32 },
    /// A rule's literal continues below this entry, a directory of `len`
    /// bytes with its closing `/`: matches a whole-directory decision of
    /// exactly that directory, nothing else.
    Below { len: u16 },
}

impl PathMatch {
    /// The fields the kernel and the wire bytes hold: the `TYR_PATH_MATCH_*`
    /// code (bpf/include/tyr_records.h), the exact length or glob start, and
    /// the glob index.
    pub fn fields(self) -> (u8, u16, u32) {
        match self {
            Self::Prefix => (PATH_MATCH_PREFIX, 0, 0),
            Self::Exact { len } => (PATH_MATCH_EXACT, len, 0),
            Self::Glob { start, glob } => (PATH_MATCH_GLOB, start, glob),
            Self::Below { len } => (PATH_MATCH_BELOW, len, 0),
        }
    }
}

/// One entry of a path candidate list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PathCandidate {
    /// 1-based index into [`super::CompiledPolicy::rules`].
    pub rule: u32,
    pub verdict: Verdict,
    pub matcher: PathMatch,
}

/// One trie entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPrefix {
    pub class: u32,
    /// FileRead, FileWrite or Exec.
    pub action: Action,
    pub bytes: Vec<u8>,
    /// Index into [`super::CompiledPolicy::path_lists`].
    pub list: u32,
}

/// A pattern as the trie sees it: its literal start and the check after it.
#[derive(Debug, Clone)]
struct Literal {
    bytes: Vec<u8>,
    matcher: PathMatch,
}

impl Literal {
    /// Whether this pattern belongs in the list of trie entry `node`. An
    /// exact path belongs at its own entry and, should it name a
    /// directory, at the entry of that directory with its `/` (where a
    /// whole-directory decision of it looks).
    fn applies_at(&self, node: &[u8]) -> bool {
        match self.matcher {
            PathMatch::Exact { .. } => node == self.bytes || node.strip_suffix(b"/") == Some(&self.bytes[..]),
            _ => node.starts_with(&self.bytes),
        }
    }

    /// Whether this pattern's literal continues below directory entry
    /// `node` (which ends with `/`).
    fn below(&self, node: &[u8]) -> bool {
        self.bytes.len() > node.len() && self.bytes.starts_with(node)
    }

    /// The directories above this literal's end, each with its closing `/`.
    fn ancestors(&self) -> impl Iterator<Item = &[u8]> {
        let bytes = &self.bytes;
        (0..bytes.len().saturating_sub(1)).filter(|&i| bytes[i] == b'/').map(move |i| &bytes[..=i])
    }
}

/// File and exec entries under construction.
#[derive(Debug)]
pub(super) struct PathBuilder {
    pub lists: Lists<PathCandidate>,
    pub prefixes: Vec<PathPrefix>,
    pub globs: Vec<String>,
    glob_index: HashMap<String, u32>,
}

fn too_long(rule: &Rule, path: &str) -> CompileError {
    CompileError::PathTooLong { rule: rule.name.clone(), path: path.to_owned() }
}

impl PathBuilder {
    pub fn new() -> Self {
        Self { lists: Lists::new(), prefixes: Vec::new(), globs: Vec::new(), glob_index: HashMap::new() }
    }

    fn glob(&mut self, rule: &Rule, pattern: &str) -> Result<u32, CompileError> {
        if let Some(&index) = self.glob_index.get(pattern) {
            return Ok(index);
        }
        if GlobAutomaton::new(pattern).is_none() {
            return Err(CompileError::GlobTooLong { rule: rule.name.clone(), pattern: pattern.to_owned() });
        }
        if self.globs.len() >= MAX_GLOBS {
            return Err(CompileError::TooManyGlobs(self.globs.len() + 1));
        }
        let index = self.globs.len() as u32;
        self.glob_index.insert(pattern.to_owned(), index);
        self.globs.push(pattern.to_owned());
        Ok(index)
    }

    /// The trie literals of one rule's patterns.
    fn literals(&mut self, rule: &Rule) -> Result<Vec<Literal>, CompileError> {
        if rule.paths.is_empty() {
            return Ok(vec![Literal { bytes: Vec::new(), matcher: PathMatch::Prefix }]);
        }
        let mut literals = Vec::new();
        for pattern in &rule.paths {
            let text = pattern.as_str();
            match pattern {
                PathPattern::Prefix(prefix) => {
                    if prefix.len() > PATH_KEY_BYTES {
                        return Err(too_long(rule, text));
                    }
                    literals.push(Literal { bytes: prefix.as_bytes().to_vec(), matcher: PathMatch::Prefix });
                    // `/dir/` also matches `/dir` itself.
                    let dir = &prefix[..prefix.len() - 1];
                    if !dir.is_empty() {
                        let len = dir.len() as u16;
                        literals.push(Literal { bytes: dir.as_bytes().to_vec(), matcher: PathMatch::Exact { len } });
                    }
                }
                PathPattern::Exact(exact) => {
                    if exact.len() > PATH_KEY_BYTES {
                        return Err(too_long(rule, text));
                    }
                    let len = exact.len() as u16;
                    literals.push(Literal { bytes: exact.as_bytes().to_vec(), matcher: PathMatch::Exact { len } });
                }
                PathPattern::Glob(glob) => {
                    let (literal, rest) = split_literal(glob);
                    if literal.len() > PATH_KEY_BYTES {
                        return Err(too_long(rule, text));
                    }
                    let glob = self.glob(rule, rest)?;
                    let start = literal.len() as u16;
                    literals
                        .push(Literal { bytes: literal.as_bytes().to_vec(), matcher: PathMatch::Glob { start, glob } });
                }
            }
        }
        Ok(literals)
    }

    /// Entries of one class: its own rules (the base's, for the base
    /// class), then the base's, as (rule index, rule). For an action the
    /// class has no rules of its own for, the base's entries decide.
    pub fn class(&mut self, class: u32, own: &[(u32, &Rule)], base: &[(u32, &Rule)]) -> Result<(), CompileError> {
        for action in [Action::FileRead, Action::FileWrite, Action::Exec] {
            if class != BASE_CLASS && !own.iter().any(|(_, r)| r.action == action) {
                continue;
            }
            let mut ordered = Vec::new();
            for (index, rule) in in_order(action, own, base) {
                ordered.push((index, rule.verdict, self.literals(rule)?));
            }
            let all = || ordered.iter().flat_map(|(_, _, literals)| literals.iter());
            let literal_nodes: BTreeSet<&[u8]> = all().map(|l| l.bytes.as_slice()).collect();
            let ancestors: BTreeSet<&[u8]> = all().flat_map(Literal::ancestors).collect();
            for node in literal_nodes.union(&ancestors) {
                let list = candidates_at(&ordered, node);
                // A directory above the literals that no deny or alert rule
                // lies below decides as the shorter entry would.
                if !literal_nodes.contains(node) && !list.iter().any(|c| matches!(c.matcher, PathMatch::Below { .. })) {
                    continue;
                }
                if list.len() > MAX_PATH_CANDIDATES {
                    return Err(CompileError::TooManyCandidates {
                        prefix: String::from_utf8_lossy(node).into_owned(),
                        count: list.len(),
                    });
                }
                if list.is_empty() {
                    continue;
                }
                let list = self.lists.index(list)?;
                self.prefixes.push(PathPrefix { class, action, bytes: node.to_vec(), list });
            }
        }
        Ok(())
    }
}

/// Deny over alert over allow.
fn rank(verdict: Verdict) -> u8 {
    match verdict {
        Verdict::Deny => 2,
        Verdict::Alert => 1,
        Verdict::Allow => 0,
    }
}

/// The candidates of trie entry `node`, in decision order, up to the first
/// unconditional one; for a directory entry, the strictest deny or alert
/// rule reachable below it (one `below` candidate, before that
/// unconditional one: nothing after it is reachable in the directory).
fn candidates_at(ordered: &[(u32, Verdict, Vec<Literal>)], node: &[u8]) -> Vec<PathCandidate> {
    let mut list = Vec::new();
    let mut below: Option<PathCandidate> = None;
    let is_directory = node.ends_with(b"/");
    // Prefixes of earlier rules: whatever starts with one is theirs.
    let mut decided: Vec<&[u8]> = Vec::new();
    for (rule, verdict, literals) in ordered {
        let reachable = |l: &&Literal| !decided.iter().any(|p| l.bytes.starts_with(p));
        if is_directory
            && rank(*verdict) > below.map_or(0, |b| rank(b.verdict))
            && literals.iter().filter(reachable).any(|l| l.below(node))
        {
            let len = node.len() as u16; // at most PATH_KEY_BYTES
            below = Some(PathCandidate { rule: *rule, verdict: *verdict, matcher: PathMatch::Below { len } });
        }
        for literal in literals.iter().filter(|l| l.applies_at(node)) {
            list.push(PathCandidate { rule: *rule, verdict: *verdict, matcher: literal.matcher });
            if literal.matcher == PathMatch::Prefix {
                // Nothing after an unconditional match is reachable.
                let last = list.pop();
                list.extend(below);
                list.extend(last);
                return list;
            }
        }
        decided.extend(literals.iter().filter(|l| l.matcher == PathMatch::Prefix).map(|l| l.bytes.as_slice()));
    }
    list.extend(below);
    list
}

/// The kernel's file or exec decision over compiled entries
/// (bpf/lib/path_policy.h). None: no candidate matched. With `directory`,
/// `path` is a directory decided as a whole: the strictest candidate that
/// matches something below it, up to one that decides all of it; `covers`
/// says whether one did.
pub(super) fn decide(
    compiled: &CompiledPolicy,
    class: u32,
    action: Action,
    path: &[u8],
    directory: bool,
) -> Option<Found> {
    // The kernel's key holds the first PATH_KEY_BYTES bytes of the path
    // (a directory's with the '/' below it).
    let mut key = path[..path.len().min(PATH_KEY_BYTES)].to_vec();
    if directory && key.len() < PATH_KEY_BYTES && path.len() > 1 {
        key.push(b'/');
    }
    let lookup = |class: u32| {
        compiled
            .path_prefixes
            .iter()
            .filter(|p| p.class == class && p.action == action && key.starts_with(&p.bytes))
            .max_by_key(|p| p.bytes.len())
    };
    let found = lookup(class).or_else(|| if class != BASE_CLASS { lookup(BASE_CLASS) } else { None })?;
    let automaton = |glob: u32| compiled.globs.get(glob as usize).and_then(|g| GlobAutomaton::new(g));
    let mut best: Option<Found> = None;
    for c in &compiled.path_lists[found.list as usize] {
        let hit = match c.matcher {
            PathMatch::Prefix => true,
            PathMatch::Exact { len } => path.len() == usize::from(len),
            PathMatch::Glob { start, glob } => {
                let rest = path.get(usize::from(start)..);
                match (directory, automaton(glob), rest) {
                    (true, _, None) => usize::from(start) == path.len() + 1,
                    (_, Some(a), Some(rest)) if directory => {
                        let state = rest.iter().fold(a.start(), |state, &b| a.step(state, b));
                        a.step(state, b'/') != 0
                    }
                    (_, Some(a), Some(rest)) => a.matches(rest),
                    _ => false,
                }
            }
            PathMatch::Below { len } => directory && usize::from(len) == key.len(),
        };
        if !hit {
            continue;
        }
        let this = Found { verdict: c.verdict, rule: c.rule, covers: c.matcher == PathMatch::Prefix };
        if !directory {
            return Some(this);
        }
        if best.is_none_or(|b| rank(c.verdict) > rank(b.verdict)) {
            best = Some(this);
        }
        if this.covers {
            return best.map(|b| Found { covers: true, ..b });
        }
    }
    best
}

/// A decision's candidate: its verdict and 1-based rule, and whether it
/// decides everything below a directory.
#[derive(Debug, Clone, Copy)]
pub(super) struct Found {
    pub verdict: Verdict,
    pub rule: u32,
    pub covers: bool,
}

/// The stricter of two decisions, `a` where they are as strict.
pub(super) fn stricter(a: (Verdict, u32), b: (Verdict, u32)) -> (Verdict, u32) {
    if rank(b.0) > rank(a.0) { b } else { a }
}
