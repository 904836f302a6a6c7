//! Compiles a policy into the flat entries tyrd writes to the kernel's
//! policy maps, and serialises them (PolicyPush.bpf_entries).
//!
//! Connect rules become, per address family and agent class, prefixes of a
//! longest-prefix-match trie, each naming an ordered candidate list: every
//! rule (overlay rules first, then base rules) that can match an address
//! whose longest configured prefix is that one. The kernel looks up the
//! destination, walks the list checking ports, and takes the first match —
//! exactly [`PolicySet::decide`]. [`CompiledPolicy::decide_connect`] runs
//! the same steps over the compiled entries, so the two can be compared.
//!
//! Byte layout (little-endian), version [`LAYOUT_VERSION`]:
//!
//! ```text
//! "TYRPOL" u16:layout  i64:policy_version  u8:default_verdict
//! u32:rules  { u8:action u8:verdict u8:severity u16:len name }
//! u32:lists  { u16:count { u32:rule u8:verdict u8:nports { u16:first u16:last } } }
//! u32:prefixes { u8:family(4|6) u32:class u8:prefix_len addr(4|16) u32:list }
//! ```

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};

use super::model::{Action, Cidr, PolicySet, PortRange, Rule, Severity, Verdict};
use crate::agents::{KNOWN_AGENTS, UNKNOWN};

/// Version of the byte layout below; bumped on any change.
pub const LAYOUT_VERSION: u16 = 1;
/// Kernel bounds (bpf/include/tyr_records.h).
pub const MAX_CANDIDATES: usize = 16;
pub const MAX_PORT_RANGES: usize = 8;
pub const MAX_LISTS: usize = 4096;
/// Class of the base policy.
pub const BASE_CLASS: u32 = 0;
/// Class of processes no agent claims (`unknown` overlay).
pub const UNKNOWN_CLASS: u32 = 0xffff_fffe;

/// The kernel class of an agent type: 1 + its index in the known-agent
/// table, [`UNKNOWN_CLASS`] for `unknown`.
pub fn class_of(agent_type: &str) -> Option<u32> {
    if agent_type == UNKNOWN {
        return Some(UNKNOWN_CLASS);
    }
    KNOWN_AGENTS.iter().position(|a| a.agent_type == agent_type).map(|i| i as u32 + 1)
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

/// One candidate of a list.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Candidate {
    /// 1-based index into [`CompiledPolicy::rules`].
    pub rule: u32,
    pub verdict: Verdict,
    /// Empty: any port.
    pub ports: Vec<PortRange>,
}

/// One trie entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetPrefix {
    pub class: u32,
    pub cidr: Cidr,
    /// Index into [`CompiledPolicy::lists`].
    pub list: u32,
}

/// A policy as the kernel holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledPolicy {
    pub version: i64,
    pub default_verdict: Verdict,
    pub rules: Vec<RuleInfo>,
    pub lists: Vec<Vec<Candidate>>,
    pub prefixes: Vec<NetPrefix>,
}

/// Why a policy cannot be compiled for the kernel.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    #[error("rule {rule}: {count} port ranges, the kernel takes at most {MAX_PORT_RANGES}")]
    TooManyPorts { rule: String, count: usize },
    #[error(
        "{count} rules can match addresses in {prefix}; the kernel checks at most {MAX_CANDIDATES} (split the ranges or order a catch-all earlier)"
    )]
    TooManyCandidates { prefix: String, count: usize },
    #[error("{0} distinct rule lists; the kernel holds at most {MAX_LISTS}")]
    TooManyLists(usize),
    #[error("malformed compiled policy: {0}")]
    Malformed(&'static str),
}

/// An IPv4 range as the IPv6 trie sees it: `::ffff:a.b.c.d/96+n`.
fn mapped(cidr: &Cidr) -> Option<Cidr> {
    match cidr.addr {
        IpAddr::V4(v4) => Some(Cidr { addr: IpAddr::V6(v4.to_ipv6_mapped()), prefix: cidr.prefix + 96 }),
        IpAddr::V6(_) => None,
    }
}

/// Whether `outer` contains the whole range `inner` (same family).
fn covers(outer: &Cidr, inner: &Cidr) -> bool {
    outer.prefix <= inner.prefix && outer.contains(inner.addr) && outer.addr.is_ipv4() == inner.addr.is_ipv4()
}

fn any_v4() -> Cidr {
    Cidr { addr: IpAddr::from([0u8; 4]), prefix: 0 }
}

fn any_v6() -> Cidr {
    Cidr { addr: IpAddr::V6(Ipv6Addr::UNSPECIFIED), prefix: 0 }
}

/// A rule's ranges in one family's trie (IPv4 ranges also appear, mapped,
/// in the IPv6 trie); None: the rule has no ranges (matches every address).
fn ranges_in(rule: &Rule, v6: bool) -> Option<Vec<Cidr>> {
    if rule.cidrs.is_empty() {
        return None;
    }
    Some(
        rule.cidrs
            .iter()
            .filter_map(|c| match (v6, c.addr.is_ipv4()) {
                (false, true) => Some(*c),
                (false, false) => None,
                (true, false) => Some(*c),
                (true, true) => mapped(c),
            })
            .collect(),
    )
}

struct Builder {
    lists: Vec<Vec<Candidate>>,
    by_list: HashMap<Vec<Candidate>, u32>,
    prefixes: Vec<NetPrefix>,
}

impl Builder {
    fn list_index(&mut self, list: Vec<Candidate>) -> Result<u32, CompileError> {
        if let Some(&i) = self.by_list.get(&list) {
            return Ok(i);
        }
        let index = self.lists.len() as u32;
        if self.lists.len() >= MAX_LISTS {
            return Err(CompileError::TooManyLists(self.lists.len() + 1));
        }
        self.by_list.insert(list.clone(), index);
        self.lists.push(list);
        Ok(index)
    }

    /// Entries of one class: `rules` are (rule index, rule) in decision order.
    fn class(&mut self, class: u32, rules: &[(u32, &Rule)]) -> Result<(), CompileError> {
        for v6 in [false, true] {
            let ranges: Vec<Option<Vec<Cidr>>> = rules.iter().map(|(_, r)| ranges_in(r, v6)).collect();
            let mut prefixes: Vec<Cidr> = ranges.iter().flatten().flatten().copied().collect();
            if ranges.iter().any(Option::is_none) {
                prefixes.push(if v6 { any_v6() } else { any_v4() });
            }
            prefixes.sort_by_key(|c| (c.prefix, c.addr));
            prefixes.dedup();
            for prefix in prefixes {
                let mut list = Vec::new();
                for ((index, rule), ranges) in rules.iter().zip(&ranges) {
                    let applies = match ranges {
                        None => true,
                        Some(ranges) => ranges.iter().any(|r| covers(r, &prefix)),
                    };
                    if !applies {
                        continue;
                    }
                    list.push(Candidate { rule: *index, verdict: rule.verdict, ports: rule.ports.clone() });
                    if rule.ports.is_empty() {
                        break; // nothing after an unconditional match is reachable
                    }
                }
                if list.len() > MAX_CANDIDATES {
                    return Err(CompileError::TooManyCandidates { prefix: prefix.to_string(), count: list.len() });
                }
                if list.is_empty() {
                    continue;
                }
                let list = self.list_index(list)?;
                self.prefixes.push(NetPrefix { class, cidr: prefix, list });
            }
        }
        Ok(())
    }
}

/// The connect rules of `rules`, in order.
fn connect_rules<'r>(rules: &[(u32, &'r Rule)]) -> Vec<(u32, &'r Rule)> {
    rules.iter().filter(|(_, r)| r.action == Action::NetConnect).copied().collect()
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

    let mut builder = Builder { lists: Vec::new(), by_list: HashMap::new(), prefixes: Vec::new() };
    builder.class(BASE_CLASS, &connect_rules(&base))?;
    for (class, overlay) in &overlays {
        let Some(class) = *class else { continue };
        let overlay_connect = connect_rules(overlay);
        if overlay_connect.is_empty() {
            continue; // the base entries (class 0) decide for this class
        }
        let mut ordered = overlay_connect;
        ordered.extend(connect_rules(&base));
        builder.class(class, &ordered)?;
    }
    Ok(CompiledPolicy {
        version,
        default_verdict: set.base.default_verdict,
        rules,
        lists: builder.lists,
        prefixes: builder.prefixes,
    })
}

impl CompiledPolicy {
    /// The kernel's connect decision, over the compiled entries: (verdict,
    /// 1-based rule or 0 for the default).
    pub fn decide_connect(&self, class: u32, addr: IpAddr, port: u16) -> (Verdict, u32) {
        let lookup = |class: u32| {
            self.prefixes
                .iter()
                .filter(|p| p.class == class && p.cidr.addr.is_ipv4() == addr.is_ipv4() && p.cidr.contains(addr))
                .max_by_key(|p| p.cidr.prefix)
        };
        let found = lookup(class).or_else(|| if class != BASE_CLASS { lookup(BASE_CLASS) } else { None });
        let Some(prefix) = found else { return (self.default_verdict, 0) };
        self.lists[prefix.list as usize]
            .iter()
            .find(|c| c.ports.is_empty() || c.ports.iter().any(|p| p.contains(port)))
            .map_or((self.default_verdict, 0), |c| (c.verdict, c.rule))
    }

    /// The rule with 1-based index `rule`.
    pub fn rule(&self, rule: u32) -> Option<&RuleInfo> {
        self.rules.get((rule as usize).checked_sub(1)?)
    }

    /// The flat serialised form.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(b"TYRPOL");
        out.extend_from_slice(&LAYOUT_VERSION.to_le_bytes());
        out.extend_from_slice(&self.version.to_le_bytes());
        out.push(verdict_code(self.default_verdict));
        out.extend_from_slice(&(self.rules.len() as u32).to_le_bytes());
        for rule in &self.rules {
            out.push(action_code(rule.action));
            out.push(verdict_code(rule.verdict));
            out.push(severity_code(rule.severity));
            out.extend_from_slice(&(rule.name.len() as u16).to_le_bytes());
            out.extend_from_slice(rule.name.as_bytes());
        }
        out.extend_from_slice(&(self.lists.len() as u32).to_le_bytes());
        for list in &self.lists {
            out.extend_from_slice(&(list.len() as u16).to_le_bytes());
            for c in list {
                out.extend_from_slice(&c.rule.to_le_bytes());
                out.push(verdict_code(c.verdict));
                out.push(c.ports.len() as u8);
                for p in &c.ports {
                    out.extend_from_slice(&p.first.to_le_bytes());
                    out.extend_from_slice(&p.last.to_le_bytes());
                }
            }
        }
        out.extend_from_slice(&(self.prefixes.len() as u32).to_le_bytes());
        for p in &self.prefixes {
            match p.cidr.addr {
                IpAddr::V4(a) => {
                    out.push(4);
                    out.extend_from_slice(&p.class.to_le_bytes());
                    out.push(p.cidr.prefix);
                    out.extend_from_slice(&a.octets());
                }
                IpAddr::V6(a) => {
                    out.push(6);
                    out.extend_from_slice(&p.class.to_le_bytes());
                    out.push(p.cidr.prefix);
                    out.extend_from_slice(&a.octets());
                }
            }
            out.extend_from_slice(&p.list.to_le_bytes());
        }
        out
    }

    /// Parses [`to_bytes`](Self::to_bytes) output; every length is checked.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CompileError> {
        let mut r = Reader { bytes };
        if r.take(6)? != b"TYRPOL" {
            return Err(CompileError::Malformed("not a compiled policy"));
        }
        if r.u16()? != LAYOUT_VERSION {
            return Err(CompileError::Malformed("unsupported layout version"));
        }
        let version = i64::from_le_bytes(r.array()?);
        let default_verdict = verdict_from(r.u8()?)?;
        let mut rules = Vec::new();
        for _ in 0..r.count(6)? {
            let action = action_from(r.u8()?)?;
            let verdict = verdict_from(r.u8()?)?;
            let severity = severity_from(r.u8()?)?;
            let len = r.u16()? as usize;
            let name = String::from_utf8(r.take(len)?.to_vec()).map_err(|_| CompileError::Malformed("rule name"))?;
            rules.push(RuleInfo { name, action, verdict, severity });
        }
        let mut lists = Vec::new();
        for _ in 0..r.count(2)? {
            let count = r.u16()? as usize;
            if count > MAX_CANDIDATES {
                return Err(CompileError::Malformed("candidate list too long"));
            }
            let mut list = Vec::with_capacity(count);
            for _ in 0..count {
                let rule = u32::from_le_bytes(r.array()?);
                if rule == 0 || rule as usize > rules.len() {
                    return Err(CompileError::Malformed("candidate names no rule"));
                }
                let verdict = verdict_from(r.u8()?)?;
                let nports = r.u8()? as usize;
                if nports > MAX_PORT_RANGES {
                    return Err(CompileError::Malformed("too many port ranges"));
                }
                let mut ports = Vec::with_capacity(nports);
                for _ in 0..nports {
                    ports.push(PortRange { first: r.u16()?, last: r.u16()? });
                }
                list.push(Candidate { rule, verdict, ports });
            }
            lists.push(list);
        }
        let mut prefixes = Vec::new();
        for _ in 0..r.count(10)? {
            let family = r.u8()?;
            let class = u32::from_le_bytes(r.array()?);
            let prefix = r.u8()?;
            let addr = match family {
                4 if prefix <= 32 => IpAddr::from(r.array::<4>()?),
                6 if prefix <= 128 => IpAddr::from(r.array::<16>()?),
                _ => return Err(CompileError::Malformed("prefix family or length")),
            };
            let list = u32::from_le_bytes(r.array()?);
            if list as usize >= lists.len() {
                return Err(CompileError::Malformed("prefix names no list"));
            }
            prefixes.push(NetPrefix { class, cidr: Cidr { addr, prefix }, list });
        }
        if !r.bytes.is_empty() {
            return Err(CompileError::Malformed("trailing bytes"));
        }
        Ok(Self { version, default_verdict, rules, lists, prefixes })
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CompileError> {
        let (head, rest) = self.bytes.split_at_checked(n).ok_or(CompileError::Malformed("truncated"))?;
        self.bytes = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], CompileError> {
        self.take(N)?.try_into().map_err(|_| CompileError::Malformed("truncated"))
    }
    fn u8(&mut self) -> Result<u8, CompileError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, CompileError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    /// A u32 count whose items take at least `min_item` bytes each: a count
    /// the remaining input cannot hold is refused before allocating.
    fn count(&mut self, min_item: usize) -> Result<usize, CompileError> {
        let n = u32::from_le_bytes(self.array()?) as usize;
        if n.saturating_mul(min_item) > self.bytes.len() {
            return Err(CompileError::Malformed("count exceeds the input"));
        }
        Ok(n)
    }
}

fn verdict_code(v: Verdict) -> u8 {
    match v {
        Verdict::Allow => 1,
        Verdict::Deny => 2,
        Verdict::Alert => 3,
    }
}

fn verdict_from(code: u8) -> Result<Verdict, CompileError> {
    match code {
        1 => Ok(Verdict::Allow),
        2 => Ok(Verdict::Deny),
        3 => Ok(Verdict::Alert),
        _ => Err(CompileError::Malformed("verdict")),
    }
}

fn action_code(a: Action) -> u8 {
    Action::ALL.iter().position(|x| *x == a).map_or(0, |i| i as u8 + 1)
}

fn action_from(code: u8) -> Result<Action, CompileError> {
    Action::ALL.get((code as usize).wrapping_sub(1)).copied().ok_or(CompileError::Malformed("action"))
}

const SEVERITIES: [Severity; 5] = [Severity::Info, Severity::Low, Severity::Medium, Severity::High, Severity::Critical];

fn severity_code(s: Severity) -> u8 {
    SEVERITIES.iter().position(|x| *x == s).map_or(0, |i| i as u8 + 1)
}

fn severity_from(code: u8) -> Result<Severity, CompileError> {
    SEVERITIES.get((code as usize).wrapping_sub(1)).copied().ok_or(CompileError::Malformed("severity"))
}
