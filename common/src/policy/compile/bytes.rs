//! The serialised form of a compiled policy (PolicyPush.bpf_entries): what
//! the server sends and tyrd writes into the kernel's maps, checked field
//! by field when read back.
//!
//! Layout (little-endian), version [`LAYOUT_VERSION`]:
//!
//! ```text
//! "TYRPOL" u16:layout  i64:policy_version  u8:default_verdict
//! u32:rules      { u8:action u8:verdict u8:severity u16:len name }
//! u32:net_lists  { u16:count { u32:rule u8:verdict u8:nports { u16:first u16:last } } }
//! u32:net_prefixes { u8:family(4|6) u32:class u8:prefix_len addr(4|16) u32:list }
//! u32:globs      { u16:len pattern }
//! u32:path_lists { u16:count { u32:rule u8:verdict u8:match(1 prefix|2 exact|3 glob|4 below) u16:len u32:glob } }
//! u32:path_prefixes { u32:class u8:action u16:len bytes u32:list }
//! ```
//!
//! Codes: action 1 file_read, 2 file_write, 3 exec, 4 net_connect,
//! 5 tls_connect; verdict as tyr.v1.Verdict (1 allow, 2 deny, 3 alert);
//! severity 1 info … 5 critical. `len` of a path candidate is the exact
//! path's length (exact), where the glob starts in the path (glob), or the
//! directory entry's length with its `/` (below).

use std::net::IpAddr;

use super::glob::GlobAutomaton;
use super::{
    ACTION_EXEC, ACTION_FILE_READ, ACTION_FILE_WRITE, CompileError, CompiledPolicy, MAX_CANDIDATES, MAX_GLOBS,
    MAX_PATH_CANDIDATES, MAX_PORT_RANGES, NetCandidate, NetPrefix, PATH_KEY_BYTES, PATH_MATCH_BELOW, PATH_MATCH_EXACT,
    PATH_MATCH_GLOB, PATH_MATCH_PREFIX, PathCandidate, PathMatch, PathPrefix, RuleInfo, VERDICT_ALERT, VERDICT_ALLOW,
    VERDICT_DENY,
};
use crate::policy::model::{Action, Cidr, PortRange, Severity, Verdict};

/// Version of the byte layout above; bumped on any change.
pub const LAYOUT_VERSION: u16 = 3;

impl CompiledPolicy {
    /// The flat serialised form.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Writer(Vec::new());
        out.0.extend_from_slice(b"TYRPOL");
        out.u16(LAYOUT_VERSION);
        out.0.extend_from_slice(&self.version.to_le_bytes());
        out.u8(verdict_code(self.default_verdict));
        out.u32(self.rules.len() as u32);
        for rule in &self.rules {
            out.u8(action_code(rule.action));
            out.u8(verdict_code(rule.verdict));
            out.u8(severity_code(rule.severity));
            out.text(rule.name.as_bytes());
        }
        out.u32(self.net_lists.len() as u32);
        for list in &self.net_lists {
            out.u16(list.len() as u16);
            for c in list {
                out.u32(c.rule);
                out.u8(verdict_code(c.verdict));
                out.u8(c.ports.len() as u8);
                for p in &c.ports {
                    out.u16(p.first);
                    out.u16(p.last);
                }
            }
        }
        out.u32(self.net_prefixes.len() as u32);
        for p in &self.net_prefixes {
            out.u8(if p.cidr.addr.is_ipv4() { 4 } else { 6 });
            out.u32(p.class);
            out.u8(p.cidr.prefix);
            match p.cidr.addr {
                IpAddr::V4(a) => out.0.extend_from_slice(&a.octets()),
                IpAddr::V6(a) => out.0.extend_from_slice(&a.octets()),
            }
            out.u32(p.list);
        }
        out.u32(self.globs.len() as u32);
        for glob in &self.globs {
            out.text(glob.as_bytes());
        }
        out.u32(self.path_lists.len() as u32);
        for list in &self.path_lists {
            out.u16(list.len() as u16);
            for c in list {
                out.u32(c.rule);
                out.u8(verdict_code(c.verdict));
                let (code, len, glob) = c.matcher.fields();
                out.u8(code);
                out.u16(len);
                out.u32(glob);
            }
        }
        out.u32(self.path_prefixes.len() as u32);
        for p in &self.path_prefixes {
            out.u32(p.class);
            out.u8(action_code(p.action));
            out.text(&p.bytes);
            out.u32(p.list);
        }
        out.0
    }

    /// Parses [`to_bytes`](Self::to_bytes) output; every length, count and
    /// index is checked, so whatever it returns the kernel can hold.
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
        for _ in 0..r.count(5)? {
            let action = action_from(r.u8()?)?;
            let verdict = verdict_from(r.u8()?)?;
            let severity = severity_from(r.u8()?)?;
            let name = String::from_utf8(r.text()?.to_vec()).map_err(|_| CompileError::Malformed("rule name"))?;
            rules.push(RuleInfo { name, action, verdict, severity });
        }
        let rule_index = |rule: u32| {
            if rule == 0 || rule as usize > rules.len() {
                Err(CompileError::Malformed("candidate names no rule"))
            } else {
                Ok(rule)
            }
        };
        let net_lists = r.lists(MAX_CANDIDATES, |r| {
            let rule = rule_index(r.u32()?)?;
            let verdict = verdict_from(r.u8()?)?;
            let nports = r.u8()? as usize;
            if nports > MAX_PORT_RANGES {
                return Err(CompileError::Malformed("too many port ranges"));
            }
            let ports =
                (0..nports).map(|_| Ok(PortRange { first: r.u16()?, last: r.u16()? })).collect::<Result<_, _>>()?;
            Ok(NetCandidate { rule, verdict, ports })
        })?;
        let mut net_prefixes = Vec::new();
        for _ in 0..r.count(10)? {
            let family = r.u8()?;
            let class = r.u32()?;
            let prefix = r.u8()?;
            let addr = match family {
                4 if prefix <= 32 => IpAddr::from(r.array::<4>()?),
                6 if prefix <= 128 => IpAddr::from(r.array::<16>()?),
                _ => return Err(CompileError::Malformed("prefix family or length")),
            };
            let list = list_of(r.u32()?, net_lists.len())?;
            net_prefixes.push(NetPrefix { class, cidr: Cidr { addr, prefix }, list });
        }
        let mut globs = Vec::new();
        for _ in 0..r.count(2)? {
            let glob = String::from_utf8(r.text()?.to_vec()).map_err(|_| CompileError::Malformed("glob"))?;
            if GlobAutomaton::new(&glob).is_none() || globs.len() >= MAX_GLOBS {
                return Err(CompileError::Malformed("glob too long or too many globs"));
            }
            globs.push(glob);
        }
        let path_lists = r.lists(MAX_PATH_CANDIDATES, |r| {
            let rule = rule_index(r.u32()?)?;
            let verdict = verdict_from(r.u8()?)?;
            let code = r.u8()?;
            let len = r.u16()?;
            let glob = r.u32()?;
            let matcher = match code {
                PATH_MATCH_PREFIX => PathMatch::Prefix,
                PATH_MATCH_EXACT => PathMatch::Exact { len },
                PATH_MATCH_GLOB if (glob as usize) < globs.len() && usize::from(len) <= PATH_KEY_BYTES => {
                    PathMatch::Glob { start: len, glob }
                }
                PATH_MATCH_BELOW if usize::from(len) <= PATH_KEY_BYTES => PathMatch::Below { len },
                _ => return Err(CompileError::Malformed("path candidate")),
            };
            Ok(PathCandidate { rule, verdict, matcher })
        })?;
        let mut path_prefixes = Vec::new();
        for _ in 0..r.count(11)? {
            let class = r.u32()?;
            let action = action_from(r.u8()?)?;
            if !matches!(action, Action::FileRead | Action::FileWrite | Action::Exec) {
                return Err(CompileError::Malformed("path prefix action"));
            }
            let bytes = r.text()?.to_vec();
            if bytes.len() > PATH_KEY_BYTES {
                return Err(CompileError::Malformed("path prefix too long"));
            }
            let list = list_of(r.u32()?, path_lists.len())?;
            path_prefixes.push(PathPrefix { class, action, bytes, list });
        }
        if !r.bytes.is_empty() {
            return Err(CompileError::Malformed("trailing bytes"));
        }
        Ok(Self { version, default_verdict, rules, net_lists, net_prefixes, globs, path_lists, path_prefixes })
    }
}

/// A prefix's list index, checked against the lists read.
fn list_of(list: u32, lists: usize) -> Result<u32, CompileError> {
    if (list as usize) < lists { Ok(list) } else { Err(CompileError::Malformed("prefix names no list")) }
}

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    /// u16 length, then the bytes (names, globs and prefixes are short).
    fn text(&mut self, bytes: &[u8]) {
        self.u16(bytes.len() as u16);
        self.0.extend_from_slice(bytes);
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
    fn u32(&mut self) -> Result<u32, CompileError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn text(&mut self) -> Result<&'a [u8], CompileError> {
        let len = self.u16()? as usize;
        self.take(len)
    }
    /// A u32 count of candidate lists, each a u16 count (at most `max`)
    /// of items read by `item`.
    fn lists<T>(
        &mut self,
        max: usize,
        mut item: impl FnMut(&mut Self) -> Result<T, CompileError>,
    ) -> Result<Vec<Vec<T>>, CompileError> {
        let mut lists = Vec::new();
        for _ in 0..self.count(2)? {
            let count = self.u16()? as usize;
            if count > max {
                return Err(CompileError::Malformed("candidate list too long"));
            }
            lists.push((0..count).map(|_| item(self)).collect::<Result<_, _>>()?);
        }
        Ok(lists)
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

/// A verdict's code, on the wire and in the kernel's maps.
pub const fn verdict_code(v: Verdict) -> u8 {
    match v {
        Verdict::Allow => VERDICT_ALLOW,
        Verdict::Deny => VERDICT_DENY,
        Verdict::Alert => VERDICT_ALERT,
    }
}

fn verdict_from(code: u8) -> Result<Verdict, CompileError> {
    match code {
        VERDICT_ALLOW => Ok(Verdict::Allow),
        VERDICT_DENY => Ok(Verdict::Deny),
        VERDICT_ALERT => Ok(Verdict::Alert),
        _ => Err(CompileError::Malformed("verdict")),
    }
}

/// Wire codes of the actions the kernel never sees in a key.
const ACTION_NET_CONNECT: u8 = 4;
const ACTION_TLS_CONNECT: u8 = 5;

/// An action's code, on the wire and (for path rules) in the kernel's trie keys.
pub const fn action_code(a: Action) -> u8 {
    match a {
        Action::FileRead => ACTION_FILE_READ,
        Action::FileWrite => ACTION_FILE_WRITE,
        Action::Exec => ACTION_EXEC,
        Action::NetConnect => ACTION_NET_CONNECT,
        Action::TlsConnect => ACTION_TLS_CONNECT,
    }
}

fn action_from(code: u8) -> Result<Action, CompileError> {
    Action::ALL.into_iter().find(|a| action_code(*a) == code).ok_or(CompileError::Malformed("action"))
}

const SEVERITIES: [Severity; 5] = [Severity::Info, Severity::Low, Severity::Medium, Severity::High, Severity::Critical];

fn severity_code(s: Severity) -> u8 {
    SEVERITIES.iter().position(|x| *x == s).map_or(0, |i| i as u8 + 1)
}

fn severity_from(code: u8) -> Result<Severity, CompileError> {
    SEVERITIES.get((code as usize).wrapping_sub(1)).copied().ok_or(CompileError::Malformed("severity"))
}
