//! The validated policy model and its reference semantics: what a rule
//! matches and which verdict a request gets (first match wins, then the
//! default). The kernel maps and the Cedar text compiled from a policy must
//! decide exactly as [`Policy::decide`] does.

use std::collections::BTreeMap;
use std::net::IpAddr;

/// The operation a rule governs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    FileRead,
    FileWrite,
    Exec,
    NetConnect,
    TlsConnect,
}

impl Action {
    pub const ALL: [Action; 5] =
        [Action::FileRead, Action::FileWrite, Action::Exec, Action::NetConnect, Action::TlsConnect];

    /// The name policies use.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::FileRead => "file_read",
            Action::FileWrite => "file_write",
            Action::Exec => "exec",
            Action::NetConnect => "net_connect",
            Action::TlsConnect => "tls_connect",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == name)
    }
}

/// The name policies use (as [`Action::as_str`]).
impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happens to a matching request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    Allow,
    Deny,
    /// Let through, and flag.
    Alert,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
            Verdict::Alert => "alert",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        [Verdict::Allow, Verdict::Deny, Verdict::Alert].into_iter().find(|v| v.as_str() == name)
    }
}

/// The name policies use (as [`Verdict::as_str`]).
impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How much a match matters to an operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        [Severity::Info, Severity::Low, Severity::Medium, Severity::High, Severity::Critical]
            .into_iter()
            .find(|s| s.as_str() == name)
    }

    /// The severity of a rule that does not say: a deny matters more than an allow.
    pub fn default_for(verdict: Verdict) -> Self {
        match verdict {
            Verdict::Allow => Severity::Low,
            Verdict::Alert => Severity::Medium,
            Verdict::Deny => Severity::High,
        }
    }
}

/// The name policies use (as [`Severity::as_str`]).
impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A path matcher of file and exec rules.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PathPattern {
    /// `/dir/`: the directory and everything below it.
    Prefix(String),
    /// `/etc/shadow`: exactly this path.
    Exact(String),
    /// `/home/*/.ssh/*`, `*.pem`: `*` matches any run of characters,
    /// `/` included (as Cedar's `like` does; `**` means the same). Matched
    /// by the kernel's automaton ([`super::compile::glob`]), in time linear
    /// in the path.
    Glob(String),
}

impl PathPattern {
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathPattern::Prefix(prefix) => path.starts_with(prefix.as_str()) || path == &prefix[..prefix.len() - 1],
            PathPattern::Exact(exact) => path == exact,
            PathPattern::Glob(glob) => super::compile::glob::matches(glob, path),
        }
    }

    /// The text as written in the policy.
    pub fn as_str(&self) -> &str {
        match self {
            PathPattern::Prefix(s) | PathPattern::Exact(s) | PathPattern::Glob(s) => s,
        }
    }
}

/// The text as written in the policy (as [`PathPattern::as_str`]); the
/// parser tells the kinds apart by it (`*`: a glob, a trailing `/`: a prefix).
impl std::fmt::Display for PathPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An address range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn contains(&self, addr: IpAddr) -> bool {
        match (self.addr, addr) {
            (IpAddr::V4(net), IpAddr::V4(a)) => prefix_eq(&net.octets(), &a.octets(), self.prefix),
            (IpAddr::V6(net), IpAddr::V6(a)) => prefix_eq(&net.octets(), &a.octets(), self.prefix),
            // An IPv4-mapped IPv6 destination (::ffff:a.b.c.d) is the IPv4 address.
            (IpAddr::V4(net), IpAddr::V6(a)) => {
                a.to_ipv4_mapped().is_some_and(|v4| prefix_eq(&net.octets(), &v4.octets(), self.prefix))
            }
            (IpAddr::V6(_), IpAddr::V4(_)) => false,
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn prefix_eq(a: &[u8], b: &[u8], prefix: u8) -> bool {
    let full = usize::from(prefix / 8);
    let rest = prefix % 8;
    a[..full] == b[..full] && (rest == 0 || (a[full] ^ b[full]) >> (8 - rest) == 0)
}

/// Destination ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

/// `443`, or `8000-8100` for a range, as the `ports` field takes them.
impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.first == self.last { write!(f, "{}", self.first) } else { write!(f, "{}-{}", self.first, self.last) }
    }
}

/// A TLS server name matcher: `api.openai.com` exactly, or `*.openai.com`
/// for any name below `openai.com` (not `openai.com` itself).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    Exact(String),
    Subdomains(String),
}

impl HostPattern {
    pub fn matches(&self, server_name: &str) -> bool {
        let name = server_name.trim_end_matches('.');
        match self {
            HostPattern::Exact(host) => name.eq_ignore_ascii_case(host),
            HostPattern::Subdomains(domain) => {
                name.len() > domain.len() + 1
                    && name.as_bytes()[name.len() - domain.len() - 1] == b'.'
                    && name[name.len() - domain.len()..].eq_ignore_ascii_case(domain)
            }
        }
    }
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostPattern::Exact(host) => f.write_str(host),
            HostPattern::Subdomains(domain) => write!(f, "*.{domain}"),
        }
    }
}

/// One rule. Matchers left empty match everything of the rule's action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub name: String,
    pub action: Action,
    pub verdict: Verdict,
    pub severity: Severity,
    /// file_read, file_write, exec: the path is one of these.
    pub paths: Vec<PathPattern>,
    /// net_connect, tls_connect: the destination is in one of these.
    pub cidrs: Vec<Cidr>,
    /// net_connect, tls_connect: the destination port is in one of these.
    pub ports: Vec<PortRange>,
    /// tls_connect: the server name matches one of these. Also accepted on
    /// net_connect rules (as in the product's examples), where it has no
    /// effect on the decision: the server name is unknown when connect()
    /// runs, and the kernel decides on addresses and ports.
    pub server_names: Vec<HostPattern>,
}

/// A request as policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request<'a> {
    File { write: bool, path: &'a str },
    Exec { path: &'a str },
    Connect { addr: IpAddr, port: u16 },
    Tls { server_name: &'a str, addr: IpAddr, port: u16 },
}

impl Request<'_> {
    pub fn action(&self) -> Action {
        match self {
            Request::File { write: false, .. } => Action::FileRead,
            Request::File { write: true, .. } => Action::FileWrite,
            Request::Exec { .. } => Action::Exec,
            Request::Connect { .. } => Action::NetConnect,
            Request::Tls { .. } => Action::TlsConnect,
        }
    }
}

fn any_or_empty<T>(items: &[T], matches: impl Fn(&T) -> bool) -> bool {
    items.is_empty() || items.iter().any(matches)
}

impl Rule {
    /// Whether this rule applies to the request.
    pub fn matches(&self, request: &Request<'_>) -> bool {
        if self.action != request.action() {
            return false;
        }
        match *request {
            Request::File { path, .. } | Request::Exec { path } => any_or_empty(&self.paths, |p| p.matches(path)),
            Request::Connect { addr, port } => {
                any_or_empty(&self.cidrs, |c| c.contains(addr)) && any_or_empty(&self.ports, |p| p.contains(port))
            }
            Request::Tls { server_name, addr, port } => {
                any_or_empty(&self.cidrs, |c| c.contains(addr))
                    && any_or_empty(&self.ports, |p| p.contains(port))
                    && any_or_empty(&self.server_names, |h| h.matches(server_name))
            }
        }
    }
}

/// A verdict and the rule that gave it (None: the default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision<'p> {
    pub verdict: Verdict,
    pub rule: Option<&'p Rule>,
}

/// Rules checked in order, and the verdict when none matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub default_verdict: Verdict,
    pub rules: Vec<Rule>,
}

impl Policy {
    /// First match wins; no match gets the default.
    pub fn decide(&self, request: &Request<'_>) -> Decision<'_> {
        self.rules.iter().find(|rule| rule.matches(request)).map_or(
            Decision { verdict: self.default_verdict, rule: None },
            |rule| Decision { verdict: rule.verdict, rule: Some(rule) },
        )
    }
}

/// A base policy for every process on the daemon and overlays per agent
/// type. An overlay's rules are checked before the base's, so an overlay
/// refines the base for its agent type; the default is the base's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySet {
    pub name: String,
    pub base: Policy,
    /// Agent type (from the known-agent table, or `unknown`) to its overlay rules.
    pub overlays: BTreeMap<String, Vec<Rule>>,
}

impl PolicySet {
    /// The decision for a request made by a process of `agent_type`.
    pub fn decide(&self, agent_type: &str, request: &Request<'_>) -> Decision<'_> {
        let overlay = self.overlays.get(agent_type).map(Vec::as_slice).unwrap_or_default();
        overlay.iter().chain(&self.base.rules).find(|rule| rule.matches(request)).map_or(
            Decision { verdict: self.base.default_verdict, rule: None },
            |rule| Decision { verdict: rule.verdict, rule: Some(rule) },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_and_prefixes() {
        let glob = |g: &str, p: &str| PathPattern::Glob(g.to_owned()).matches(p);
        assert!(glob("/home/*/.ssh/*", "/home/dev/.ssh/id_ed25519"));
        assert!(glob("/home/*/.ssh/**", "/home/dev/.ssh/keys/a"));
        assert!(glob("/home/*/.ssh/*", "/home/dev/x/.ssh/id"));
        assert!(!glob("/home/*/.ssh/*", "/home/dev/.ssh"));
        assert!(glob("/*.pem", "/etc/ssl/private/host.pem"));
        assert!(!glob("/*.pem", "/etc/ssl/private/host.pem.bak"));
        assert!(glob("/etc/*.conf", "/etc/resolv.conf"));
        assert!(glob("/a*b*c", "/abc") && glob("/a*b*c", "/aXbYbZc") && !glob("/a*b*c", "/aXbYc/d"));
        let prefix = PathPattern::Prefix("/workspace/".to_owned());
        assert!(prefix.matches("/workspace/src/main.rs") && prefix.matches("/workspace"));
        assert!(!prefix.matches("/workspace2/x"));
    }

    #[test]
    fn cidrs_and_hosts() {
        let cidr = |s: &str, p: u8| Cidr { addr: s.parse().expect("ip"), prefix: p };
        assert!(cidr("104.16.0.0", 13).contains("104.23.255.1".parse().expect("ip")));
        assert!(!cidr("104.16.0.0", 13).contains("104.24.0.1".parse().expect("ip")));
        assert!(cidr("0.0.0.0", 0).contains("127.0.0.1".parse().expect("ip")));
        assert!(cidr("127.0.0.0", 8).contains("::ffff:127.0.0.9".parse().expect("ip")));
        assert!(cidr("::1", 128).contains("::1".parse().expect("ip")));
        assert!(!cidr("fd00::", 8).contains("127.0.0.1".parse().expect("ip")));
        let sub = HostPattern::Subdomains("openai.com".to_owned());
        assert!(sub.matches("api.openai.com") && sub.matches("API.OpenAI.com."));
        assert!(!sub.matches("openai.com") && !sub.matches("evilopenai.com"));
        assert!(HostPattern::Exact("api.mistral.ai".to_owned()).matches("api.mistral.ai"));
    }
}
