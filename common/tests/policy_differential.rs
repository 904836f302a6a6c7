//! The three forms of a policy decide alike: the model (reference
//! semantics), the compiled kernel entries (evaluated in Rust over the bytes
//! that go to the kernel, after a serialisation round trip) and the Cedar
//! text (evaluated by cedar-policy against the schema). Generated policies
//! — base and overlays, every action, overlapping IPv4/IPv6 ranges, ports,
//! exact/prefix/glob paths, server-name patterns, the unregistered-agents
//! overlays — against generated requests, well over 100,000 in all.

use std::collections::BTreeMap;
use std::net::IpAddr;

use cedar_policy::{ValidationMode, Validator};
use tyr_common::policy::cedar::{CedarEvaluator, to_cedar};
use tyr_common::policy::compile::{BASE_CLASS, CompileError, CompiledPolicy, UNREGISTERED, class_of, compile};
use tyr_common::policy::model::{
    Action, Cidr, HostPattern, PathPattern, Policy, PolicySet, PortRange, Request, Rule, Severity, Verdict,
};
use tyr_common::policy::unregistered::{Restriction, with_unregistered};

/// A small deterministic generator (xorshift64*), so failures reproduce.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

/// Addresses cluster in a few ranges so that rules overlap and requests hit them.
fn address(g: &mut Gen) -> IpAddr {
    match g.below(4) {
        0 => IpAddr::from([127, 0, 0, g.below(8) as u8]),
        1 => IpAddr::from([10, g.below(4) as u8, g.below(4) as u8, g.below(256) as u8]),
        2 => IpAddr::from([0xfd00, 0, 0, 0, 0, 0, g.below(4) as u16, g.below(16) as u16]),
        _ => IpAddr::from([0, 0, 0, 0, 0, 0xffff, 0x0a00 + g.below(4) as u16, g.below(16) as u16]),
    }
}

fn cidr(g: &mut Gen) -> Cidr {
    let addr = address(g);
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = g.pick(&[0u8, 8, 16, 23, 24, 25, 30, 31, 32, 96, 112, 120, 123, 124, 127, 128]).min(max);
    // Clear host bits, as the parser requires.
    let bits = |octets: &mut [u8]| {
        for (i, b) in octets.iter_mut().enumerate() {
            let keep = (u32::from(prefix).saturating_sub(i as u32 * 8)).min(8);
            *b &= if keep == 0 { 0 } else { 0xffu8 << (8 - keep) };
        }
    };
    let addr = match addr {
        IpAddr::V4(a) => {
            let mut o = a.octets();
            bits(&mut o);
            IpAddr::from(o)
        }
        IpAddr::V6(a) => {
            let mut o = a.octets();
            bits(&mut o);
            IpAddr::from(o)
        }
    };
    Cidr { addr, prefix }
}

const COMPONENTS: [&str; 8] = ["etc", "home", "dev", ".ssh", "a.pem", "x", "secret", ".env"];

/// Paths cluster on a few components so that patterns overlap and match.
fn path(g: &mut Gen) -> String {
    let depth = 1 + g.below(4);
    (0..depth).map(|_| format!("/{}", g.pick(&COMPONENTS))).collect()
}

fn path_pattern(g: &mut Gen) -> PathPattern {
    let base = path(g);
    match g.below(5) {
        0 => PathPattern::Exact(base),
        1 => PathPattern::Prefix(format!("{base}/")),
        2 => {
            // A component replaced by a star.
            let parts: Vec<&str> = base.split('/').collect();
            let star = 1 + g.below(parts.len() as u64 - 1) as usize;
            let glob: Vec<&str> = parts.iter().enumerate().map(|(i, p)| if i == star { "*" } else { *p }).collect();
            PathPattern::Glob(glob.join("/"))
        }
        3 => PathPattern::Glob(format!("/*/{}", g.pick(&COMPONENTS))),
        _ => PathPattern::Glob(format!("{base}{}", g.pick(&["*", "/**", "*.pem", "*e*"]))),
    }
}

const NAMES: [&str; 6] =
    ["api.openai.com", "openai.com", "x.api.openai.com", "evil.example.com", "API.Anthropic.com.", "anthropic.com"];

fn host_pattern(g: &mut Gen) -> HostPattern {
    match g.below(3) {
        0 => HostPattern::Exact(g.pick(&["api.openai.com", "evil.example.com", "anthropic.com"]).to_owned()),
        _ => HostPattern::Subdomains(g.pick(&["openai.com", "anthropic.com", "example.com"]).to_owned()),
    }
}

fn rule(g: &mut Gen, name: String) -> Rule {
    let verdict = g.pick(&[Verdict::Allow, Verdict::Deny, Verdict::Alert]);
    let action = g.pick(&Action::ALL);
    let mut rule = Rule {
        name,
        action,
        verdict,
        severity: Severity::default_for(verdict),
        paths: Vec::new(),
        cidrs: Vec::new(),
        ports: Vec::new(),
        server_names: Vec::new(),
    };
    match action {
        Action::FileRead | Action::FileWrite | Action::Exec => {
            rule.paths = (0..g.below(3)).map(|_| path_pattern(g)).collect();
        }
        Action::NetConnect | Action::TlsConnect => {
            rule.cidrs = (0..g.below(3)).map(|_| cidr(g)).collect();
            rule.ports = (0..g.below(3))
                .map(|_| {
                    let first = g.pick(&[22u16, 80, 443, 8000, 8443]);
                    PortRange { first, last: first + g.pick(&[0u16, 0, 10, 100]) }
                })
                .collect();
            if action == Action::TlsConnect {
                rule.server_names = (0..g.below(3)).map(|_| host_pattern(g)).collect();
            }
        }
    }
    rule
}

fn policy(g: &mut Gen, id: usize) -> PolicySet {
    let base = (0..1 + g.below(14)).map(|i| rule(g, format!("p{id}-base-{i}"))).collect();
    let mut overlays = BTreeMap::new();
    for agent in ["cursor", "claude-code", "unknown"] {
        if g.below(2) == 0 {
            overlays
                .insert(agent.to_owned(), (0..1 + g.below(6)).map(|i| rule(g, format!("p{id}-{agent}-{i}"))).collect());
        }
    }
    let set = PolicySet {
        name: format!("generated-{id}"),
        base: Policy { default_verdict: g.pick(&[Verdict::Allow, Verdict::Deny, Verdict::Alert]), rules: base },
        overlays,
    };
    match g.below(4) {
        0 => with_unregistered(&set, Restriction::Quarantine).expect("quarantine"),
        1 => with_unregistered(&set, Restriction::Deny).expect("deny"),
        _ => set,
    }
}

fn request(g: &mut Gen, paths: &mut Vec<String>, names: &mut Vec<String>) -> (Action, usize) {
    let action = g.pick(&Action::ALL);
    match action {
        Action::FileRead | Action::FileWrite | Action::Exec => {
            paths.push(if g.below(10) == 0 { format!("{}/{}", path(g), "z".repeat(300)) } else { path(g) });
            (action, paths.len() - 1)
        }
        Action::TlsConnect => {
            names.push(g.pick(&NAMES).to_owned());
            (action, names.len() - 1)
        }
        Action::NetConnect => (action, 0),
    }
}

#[test]
fn model_compiled_entries_and_cedar_agree() {
    let mut g = Gen(0x7e57_ab1e_5eed_0001);
    let (mut kernel_checked, mut cedar_checked) = (0, 0);
    for id in 0..280 {
        let set = policy(&mut g, id);
        let version = id as i64 + 1;
        let compiled = match compile(&set, version) {
            Ok(compiled) => compiled,
            Err(CompileError::TooManyCandidates { .. }) => continue,
            Err(other) => panic!("{other}"),
        };
        // The kernel form is what came back from the wire bytes, unchanged.
        let round_trip = CompiledPolicy::from_bytes(&compiled.to_bytes()).expect("round trip");
        assert_eq!(round_trip, compiled, "policy {id}");
        let compiled = round_trip;
        let cedar_text = to_cedar(&set, version);
        let cedar = CedarEvaluator::new(&cedar_text).unwrap_or_else(|e| panic!("{e}\n{cedar_text}"));
        if id < 20 {
            let validation = Validator::new(cedar.schema().clone()).validate(cedar.policies(), ValidationMode::Strict);
            assert!(validation.validation_passed(), "{validation}\n{cedar_text}");
        }
        for _ in 0..500 {
            let agent = g.pick(&["cursor", "claude-code", "codex", "unknown", UNREGISTERED]);
            let (mut paths, mut names) = (Vec::new(), Vec::new());
            let (action, index) = request(&mut g, &mut paths, &mut names);
            let addr = address(&mut g);
            let port = g.pick(&[22u16, 80, 90, 443, 8000, 8005, 8443, 9000]);
            let request = match action {
                Action::FileRead => Request::File { write: false, path: &paths[index] },
                Action::FileWrite => Request::File { write: true, path: &paths[index] },
                Action::Exec => Request::Exec { path: &paths[index] },
                Action::NetConnect => Request::Connect { addr, port },
                Action::TlsConnect => Request::Tls { server_name: &names[index], addr, port },
            };
            let want = set.decide(agent, &request);
            let want_rule = want.rule.map(|r| r.name.as_str());
            let context = format!("policy {id}, {agent}: {request:?}");

            let class = class_of(agent).expect("known agent type");
            let kernel = match request {
                Request::Connect { addr, port } => Some(compiled.decide_connect(class, addr, port)),
                Request::File { path, .. } | Request::Exec { path } => {
                    Some(compiled.decide_path(class, action, path.as_bytes()))
                }
                Request::Tls { .. } => None, // decided in userspace, not in the kernel
            };
            if let Some((verdict, rule)) = kernel {
                assert_eq!(verdict, want.verdict, "kernel entries, {context}");
                assert_eq!(compiled.rule(rule).map(|r| r.name.as_str()), want_rule, "kernel entries, {context}");
                kernel_checked += 1;
            }

            let decided = cedar.decide(agent, &request).unwrap_or_else(|e| panic!("{e}: {context}"));
            assert_eq!(decided.verdict, want.verdict, "cedar, {context}");
            assert_eq!(decided.rule.as_deref(), want_rule, "cedar, {context}");
            if let Some((verdict, rule)) = kernel {
                assert_eq!((verdict, compiled.rule(rule).map(|r| r.name.clone())), (decided.verdict, decided.rule));
            }
            cedar_checked += 1;
        }
    }
    println!("kernel entries vs model vs cedar: {kernel_checked} kernel-decided requests, {cedar_checked} in all");
    assert!(kernel_checked >= 100_000, "only {kernel_checked} kernel-decided requests checked");
}

#[test]
fn corrupted_bytes_are_refused() {
    let mut g = Gen(42);
    let compiled = (0..)
        .find_map(|id| compile(&policy(&mut g, id), 9).ok().filter(|c| !c.globs.is_empty() && !c.net_lists.is_empty()))
        .expect("a policy with globs and connect rules");
    let bytes = compiled.to_bytes();
    for cut in 0..bytes.len() {
        assert!(CompiledPolicy::from_bytes(&bytes[..cut]).is_err(), "truncated at {cut}");
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(CompiledPolicy::from_bytes(&longer).is_err());
    for i in 0..bytes.len() {
        let mut flipped = bytes.clone();
        flipped[i] ^= 0xff;
        let _ = CompiledPolicy::from_bytes(&flipped); // never panics
    }
    assert_eq!(class_of("unknown"), Some(0xffff_fffe));
    assert_eq!(class_of(UNREGISTERED), Some(0xffff_fffd));
    assert_eq!(class_of("no-such-agent"), None);
    assert_eq!(BASE_CLASS, 0);
}

#[test]
fn kernel_limits_are_compile_errors_naming_the_rule() {
    let long = format!("/{}", "d".repeat(300));
    let mut g = Gen(7);
    let mut rule = rule(&mut g, "too-long".to_owned());
    rule.action = Action::FileRead;
    rule.paths = vec![PathPattern::Exact(long)];
    let set = PolicySet {
        name: "limits".to_owned(),
        base: Policy { default_verdict: Verdict::Allow, rules: vec![rule] },
        overlays: BTreeMap::new(),
    };
    let error = compile(&set, 1).expect_err("path longer than the key");
    assert!(error.to_string().contains("rule too-long"), "{error}");
}
