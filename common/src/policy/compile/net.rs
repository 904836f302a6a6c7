//! Connect rules as kernel entries: per agent class and address family, the
//! prefixes of a longest-prefix-match trie, each naming an ordered list of
//! the rules that can match an address whose longest configured prefix is
//! that one. The kernel looks the destination up, walks the list checking
//! ports, and takes the first match.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};

use super::{BASE_CLASS, CompileError, MAX_CANDIDATES, MAX_LISTS, in_order};
use crate::policy::model::{Action, Cidr, PortRange, Rule, Verdict};

/// One entry of a connect candidate list.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NetCandidate {
    /// 1-based index into [`super::CompiledPolicy::rules`].
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
    /// Index into [`super::CompiledPolicy::net_lists`].
    pub list: u32,
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

fn any_address(v6: bool) -> Cidr {
    if v6 {
        Cidr { addr: IpAddr::V6(Ipv6Addr::UNSPECIFIED), prefix: 0 }
    } else {
        Cidr { addr: IpAddr::from([0u8; 4]), prefix: 0 }
    }
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
                (false, true) | (true, false) => Some(*c),
                (false, false) => None,
                (true, true) => mapped(c),
            })
            .collect(),
    )
}

/// Deduplicated candidate lists, shared by every class.
#[derive(Debug)]
pub(super) struct Lists<C> {
    pub lists: Vec<Vec<C>>,
    by_list: HashMap<Vec<C>, u32>,
}

impl<C: Clone + Eq + std::hash::Hash> Lists<C> {
    pub fn new() -> Self {
        Self { lists: Vec::new(), by_list: HashMap::new() }
    }

    pub fn index(&mut self, list: Vec<C>) -> Result<u32, CompileError> {
        if let Some(&i) = self.by_list.get(&list) {
            return Ok(i);
        }
        if self.lists.len() >= MAX_LISTS {
            return Err(CompileError::TooManyLists(self.lists.len() + 1));
        }
        let index = self.lists.len() as u32;
        self.by_list.insert(list.clone(), index);
        self.lists.push(list);
        Ok(index)
    }
}

/// Connect entries under construction.
#[derive(Debug)]
pub(super) struct NetBuilder {
    pub lists: Lists<NetCandidate>,
    pub prefixes: Vec<NetPrefix>,
}

impl NetBuilder {
    pub fn new() -> Self {
        Self { lists: Lists::new(), prefixes: Vec::new() }
    }

    /// Entries of one class: its own rules (the base's, for the base
    /// class), then the base's, as (rule index, rule). A class with no
    /// connect rules of its own gets no entries: the base's decide for it.
    pub fn class(&mut self, class: u32, own: &[(u32, &Rule)], base: &[(u32, &Rule)]) -> Result<(), CompileError> {
        if class != BASE_CLASS && !own.iter().any(|(_, r)| r.action == Action::NetConnect) {
            return Ok(());
        }
        let rules = in_order(Action::NetConnect, own, base);
        for v6 in [false, true] {
            let ranges: Vec<Option<Vec<Cidr>>> = rules.iter().map(|(_, r)| ranges_in(r, v6)).collect();
            let mut prefixes: Vec<Cidr> = ranges.iter().flatten().flatten().copied().collect();
            if ranges.iter().any(Option::is_none) {
                prefixes.push(any_address(v6));
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
                    list.push(NetCandidate { rule: *index, verdict: rule.verdict, ports: rule.ports.clone() });
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
                let list = self.lists.index(list)?;
                self.prefixes.push(NetPrefix { class, cidr: prefix, list });
            }
        }
        Ok(())
    }
}

/// The kernel's connect decision over compiled entries: the longest prefix
/// of `class` (else of the base class) containing `addr`, then the first
/// candidate whose ports contain `port`. None: no candidate matched.
pub(super) fn decide(
    prefixes: &[NetPrefix],
    lists: &[Vec<NetCandidate>],
    class: u32,
    addr: IpAddr,
    port: u16,
) -> Option<(Verdict, u32)> {
    let lookup = |class: u32| {
        prefixes
            .iter()
            .filter(|p| p.class == class && p.cidr.addr.is_ipv4() == addr.is_ipv4() && p.cidr.contains(addr))
            .max_by_key(|p| p.cidr.prefix)
    };
    let found = lookup(class).or_else(|| if class != BASE_CLASS { lookup(BASE_CLASS) } else { None })?;
    lists[found.list as usize]
        .iter()
        .find(|c| c.ports.is_empty() || c.ports.iter().any(|p| p.contains(port)))
        .map(|c| (c.verdict, c.rule))
}
