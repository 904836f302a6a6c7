//! The compiled connect entries decide exactly as the policy model does:
//! generated policies (base and overlays, overlapping IPv4 and IPv6 ranges,
//! ports, catch-alls) against generated requests, 100,000 in all; and the
//! serialised form round-trips and refuses corrupted input.

use std::collections::BTreeMap;
use std::net::IpAddr;

use tyr_common::policy::compile::{BASE_CLASS, CompileError, CompiledPolicy, class_of, compile};
use tyr_common::policy::model::{Action, Cidr, Policy, PolicySet, PortRange, Request, Rule, Severity, Verdict};

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

fn rule(g: &mut Gen, name: String) -> Rule {
    let verdict = g.pick(&[Verdict::Allow, Verdict::Deny, Verdict::Alert]);
    let cidrs = (0..g.below(3)).map(|_| cidr(g)).collect();
    let ports = (0..g.below(3))
        .map(|_| {
            let first = g.pick(&[22u16, 80, 443, 8000, 8443]);
            PortRange { first, last: first + g.pick(&[0u16, 0, 10, 100]) }
        })
        .collect();
    Rule {
        name,
        action: if g.below(8) == 0 { Action::TlsConnect } else { Action::NetConnect },
        verdict,
        severity: Severity::default_for(verdict),
        paths: Vec::new(),
        cidrs,
        ports,
        server_names: Vec::new(),
    }
}

fn policy(g: &mut Gen, id: usize) -> PolicySet {
    let base = (0..1 + g.below(10)).map(|i| rule(g, format!("p{id}-base-{i}"))).collect();
    let mut overlays = BTreeMap::new();
    for agent in ["cursor", "claude-code", "unknown"] {
        if g.below(2) == 0 {
            overlays
                .insert(agent.to_owned(), (0..1 + g.below(4)).map(|i| rule(g, format!("p{id}-{agent}-{i}"))).collect());
        }
    }
    PolicySet {
        name: format!("generated-{id}"),
        base: Policy { default_verdict: g.pick(&[Verdict::Allow, Verdict::Deny]), rules: base },
        overlays,
    }
}

#[test]
fn compiled_entries_decide_like_the_model() {
    let mut g = Gen(0x7e57_ab1e_5eed_0001);
    let mut checked = 0;
    for id in 0..200 {
        let set = policy(&mut g, id);
        let compiled = match compile(&set, id as i64 + 1) {
            Ok(compiled) => compiled,
            Err(CompileError::TooManyCandidates { .. }) => continue,
            Err(other) => panic!("{other}"),
        };
        let round_trip = CompiledPolicy::from_bytes(&compiled.to_bytes()).expect("round trip");
        assert_eq!(round_trip, compiled);
        for _ in 0..500 {
            let agent = g.pick(&["cursor", "claude-code", "codex", "unknown"]);
            let addr = address(&mut g);
            let port = g.pick(&[22u16, 80, 90, 443, 8000, 8005, 8443, 9000]);
            let want = set.decide(agent, &Request::Connect { addr, port });
            let class = class_of(agent).expect("known agent type");
            let (verdict, rule) = compiled.decide_connect(class, addr, port);
            assert_eq!(verdict, want.verdict, "policy {id}, {agent} -> {addr}:{port}");
            let want_rule = want.rule.map(|r| r.name.as_str());
            assert_eq!(
                compiled.rule(rule).map(|r| r.name.as_str()),
                want_rule,
                "policy {id}, {agent} -> {addr}:{port}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 100_000, "only {checked} requests checked");
}

#[test]
fn corrupted_bytes_are_refused() {
    let mut g = Gen(42);
    let compiled = compile(&policy(&mut g, 1), 9).expect("compile");
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
    assert_eq!(class_of("no-such-agent"), None);
    let _ = BASE_CLASS;
}
