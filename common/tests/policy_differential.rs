//! The three forms of a policy decide alike: the model (reference
//! semantics), the compiled kernel entries (evaluated in Rust over the bytes
//! that go to the kernel, after a serialisation round trip) and the Cedar
//! text (evaluated by cedar-policy against the schema). Generated policies
//! — base and overlays, every action, overlapping IPv4/IPv6 ranges, ports,
//! exact/prefix/glob paths, server-name patterns, the unregistered-agents
//! overlays — against generated requests, well over 100,000 in all.
//! Large policies (hundreds of rules, mostly narrow so that the deciding
//! rule can sit anywhere in the list) check Cedar's first-match order
//! against the model, and the Cedar text of a policy at the rule limit
//! grows linearly with its rules.

use std::collections::BTreeMap;
use std::net::IpAddr;

use cedar_policy::{ValidationMode, Validator};
use tyr_common::policy::cedar::{CedarEvaluator, to_cedar};
use tyr_common::policy::compile::{BASE_CLASS, CompileError, CompiledPolicy, UNREGISTERED, class_of, compile};
use tyr_common::policy::model::{
    Action, Cidr, HostPattern, PathPattern, Policy, PolicySet, PortRange, Request, Rule, Severity, Verdict,
};
use tyr_common::policy::parse::MAX_RULES;
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

/// A rule matching only around bucket `n`: the paths `/srv/{n}/...`, the
/// addresses `10.9.{n}.x` and `fd09::{n}:x`, the names `h{n}.example.com`
/// and below `z{n}.example.com`. Several rules share a bucket (and broad
/// rules reach into them), so rules overlap far apart in the list.
fn narrow_rule(g: &mut Gen, name: String, n: u64) -> Rule {
    let mut rule = rule(g, name);
    match rule.action {
        Action::FileRead | Action::FileWrite | Action::Exec => {
            rule.paths = (0..1 + g.below(2))
                .map(|_| {
                    let leaf = g.pick(&COMPONENTS);
                    match g.below(4) {
                        0 => PathPattern::Exact(format!("/srv/{n}/{leaf}")),
                        1 => PathPattern::Prefix(format!("/srv/{n}/")),
                        2 => PathPattern::Glob(format!("/srv/{n}/*{}", &leaf[leaf.len().saturating_sub(2)..])),
                        _ => PathPattern::Glob(format!("/*/{n}/{leaf}")),
                    }
                })
                .collect();
        }
        Action::NetConnect | Action::TlsConnect => {
            rule.cidrs = vec![match g.below(3) {
                0 => Cidr { addr: IpAddr::from([10, 9, n as u8, 0]), prefix: 24 },
                1 => Cidr { addr: IpAddr::from([10, 9, n as u8, g.below(8) as u8]), prefix: 32 },
                _ => Cidr { addr: IpAddr::from([0xfd09, 0, 0, 0, 0, 0, n as u16, 0]), prefix: 112 },
            }];
            if rule.action == Action::TlsConnect {
                rule.server_names = vec![if g.below(2) == 0 {
                    HostPattern::Exact(format!("h{n}.example.com"))
                } else {
                    HostPattern::Subdomains(format!("z{n}.example.com"))
                }];
            }
        }
    }
    rule
}

/// A rule of [`rule`]'s that does not match every request of its action.
fn broad_rule(g: &mut Gen, name: String) -> Rule {
    let mut rule = rule(g, name);
    if rule.paths.is_empty() && matches!(rule.action, Action::FileRead | Action::FileWrite | Action::Exec) {
        rule.paths.push(path_pattern(g));
    }
    if rule.cidrs.is_empty() && matches!(rule.action, Action::NetConnect | Action::TlsConnect) {
        rule.cidrs.push(cidr(g));
    }
    rule
}

const BUCKETS: u64 = 64;

/// A policy of about `rules` rules: a base and three overlays, one rule in
/// twenty broad.
fn large_policy(g: &mut Gen, id: usize, rules: usize) -> PolicySet {
    let make = |g: &mut Gen, name: String| {
        if g.below(20) == 0 {
            broad_rule(g, name)
        } else {
            let n = g.below(BUCKETS);
            narrow_rule(g, name, n)
        }
    };
    let overlay_rules = rules / 8;
    let overlays = ["cursor", "claude-code", UNREGISTERED]
        .into_iter()
        .map(|agent| (agent.to_owned(), (0..overlay_rules).map(|i| make(g, format!("l{id}-{agent}-{i}"))).collect()))
        .collect();
    PolicySet {
        name: format!("large-{id}"),
        base: Policy {
            default_verdict: g.pick(&[Verdict::Allow, Verdict::Deny, Verdict::Alert]),
            rules: (0..rules - 3 * overlay_rules).map(|i| make(g, format!("l{id}-base-{i}"))).collect(),
        },
        overlays,
    }
}

#[test]
fn large_policies_decide_in_first_match_order() {
    let mut g = Gen(0x1a56_e5e7_0000_0007);
    let (mut checked, mut deep) = (0, 0);
    for id in 0..6 {
        let set = large_policy(&mut g, id, 300 + 60 * id);
        let cedar_text = to_cedar(&set, 1);
        let cedar = CedarEvaluator::new(&cedar_text).unwrap_or_else(|e| panic!("{e}"));
        if id == 0 {
            let validation = Validator::new(cedar.schema().clone()).validate(cedar.policies(), ValidationMode::Strict);
            assert!(validation.validation_passed(), "{validation}");
        }
        for _ in 0..1500 {
            let agent = g.pick(&["cursor", "claude-code", "codex", "unknown", UNREGISTERED]);
            let n = g.below(BUCKETS);
            let action = g.pick(&Action::ALL);
            let narrow = g.below(4) != 0;
            let path = if narrow {
                format!("/srv/{n}/{}{}", g.pick(&COMPONENTS), g.pick(&["", "/x", "/a.pem"]))
            } else {
                path(&mut g)
            };
            let addr = if narrow {
                match g.below(2) {
                    0 => IpAddr::from([10, 9, n as u8, g.below(8) as u8]),
                    _ => IpAddr::from([0xfd09, 0, 0, 0, 0, 0, n as u16, g.below(4) as u16]),
                }
            } else {
                address(&mut g)
            };
            let name = if narrow {
                format!("{}{n}.example.com", g.pick(&["h", "a.z", "z"]))
            } else {
                g.pick(&NAMES).to_owned()
            };
            let port = g.pick(&[22u16, 80, 443, 8005, 9000]);
            let request = match action {
                Action::FileRead => Request::File { write: false, path: &path },
                Action::FileWrite => Request::File { write: true, path: &path },
                Action::Exec => Request::Exec { path: &path },
                Action::NetConnect => Request::Connect { addr, port },
                Action::TlsConnect => Request::Tls { server_name: &name, addr, port },
            };
            let want = set.decide(agent, &request);
            let decided = cedar.decide(agent, &request).unwrap_or_else(|e| panic!("{e}"));
            let context = format!("large policy {id}, {agent}: {request:?}");
            assert_eq!(decided.verdict, want.verdict, "{context}");
            assert_eq!(decided.rule.as_deref(), want.rule.map(|r| r.name.as_str()), "{context}");
            // How far down its agent type's order the deciding rule is.
            let overlay = set.overlays.get(agent).map_or(0, Vec::len);
            let place = want.rule.and_then(|rule| {
                let in_overlay = set.overlays.get(agent).and_then(|o| o.iter().position(|r| r.name == rule.name));
                in_overlay.or_else(|| set.base.rules.iter().position(|r| r.name == rule.name).map(|i| overlay + i))
            });
            if place.is_some_and(|place| place >= 100) {
                deep += 1;
            }
            checked += 1;
        }
    }
    println!("large policies: {checked} requests, {deep} decided by a rule 100 or more places down");
    assert!(deep >= checked / 10, "only {deep} of {checked} decided deep in the list");
}

/// Generated policies of `rules` rules: base and overlays, as at the limit.
fn cedar_text_len(rules: usize) -> usize {
    to_cedar(&large_policy(&mut Gen(0x5133), 0, rules), 1).len()
}

#[test]
fn cedar_text_grows_linearly_with_rules() {
    let half = cedar_text_len(MAX_RULES / 2);
    let full = cedar_text_len(MAX_RULES);
    let ratio = full as f64 / half as f64;
    println!("cedar text: {half} bytes at {} rules, {full} at {MAX_RULES} ({ratio:.2}x)", MAX_RULES / 2);
    assert!(ratio < 2.2, "{ratio:.2}x the text for twice the rules");
    // A policy at the limit loads and decides.
    let set = large_policy(&mut Gen(0x5133), 0, MAX_RULES);
    let cedar = CedarEvaluator::new(&to_cedar(&set, 1)).expect("loads");
    let request = Request::File { write: false, path: "/srv/7/.env" };
    let decided = cedar.decide("cursor", &request).expect("decides");
    let want = set.decide("cursor", &request);
    assert_eq!((decided.verdict, decided.rule.as_deref()), (want.verdict, want.rule.map(|r| r.name.as_str())));
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

/// Deny over alert over allow.
fn rank(verdict: Verdict) -> u8 {
    match verdict {
        Verdict::Deny => 2,
        Verdict::Alert => 1,
        Verdict::Allow => 0,
    }
}

/// The directories above `path` and itself, should it be one: `/`, `/a`,
/// `/a/b`, `/a/b/c` for `/a/b/c`.
fn directories_above(path: &str) -> Vec<&str> {
    let mut dirs = vec!["/"];
    dirs.extend(path.match_indices('/').skip(1).map(|(i, _)| &path[..i]));
    dirs.push(path);
    dirs
}

/// A directory renamed or mounted over is decided as a whole: never less
/// strictly than itself or any path below it would be, for every class and action,
/// whatever order the rules come in (an allow rule first included) and
/// whatever part of a rule's path is literal.
#[test]
fn directory_decisions_are_never_weaker_than_a_path_below() {
    let mut g = Gen(0xd1e5_7a11_0000_0012);
    let (mut checked, mut stricter) = (0, 0);
    for id in 0..240 {
        let set = policy(&mut g, id);
        let compiled = match compile(&set, 1) {
            Ok(compiled) => CompiledPolicy::from_bytes(&compiled.to_bytes()).expect("round trip"),
            Err(CompileError::TooManyCandidates { .. }) => continue,
            Err(other) => panic!("{other}"),
        };
        for _ in 0..300 {
            let agent = g.pick(&["cursor", "claude-code", "codex", "unknown", UNREGISTERED]);
            let action = g.pick(&[Action::FileRead, Action::FileWrite, Action::Exec]);
            let path = format!("{}{}", path(&mut g), if g.below(3) == 0 { path(&mut g) } else { String::new() });
            let request = match action {
                Action::FileRead => Request::File { write: false, path: &path },
                Action::FileWrite => Request::File { write: true, path: &path },
                _ => Request::Exec { path: &path },
            };
            let below = set.decide(agent, &request).verdict;
            let class = class_of(agent).expect("known agent type");
            for dir in directories_above(&path) {
                let (verdict, _) = compiled.decide_directory(class, action, dir.as_bytes());
                assert!(
                    rank(verdict) >= rank(below),
                    "policy {id}, {agent} {action:?}: directory {dir} decided {verdict:?}, {path} below it {below:?}"
                );
                checked += 1;
                stricter += usize::from(rank(verdict) > rank(below));
            }
        }
    }
    println!("{checked} directory decisions checked, {stricter} stricter than the path");
    assert!(checked >= 100_000, "only {checked} directory decisions checked");
}

/// The cases a review found: a literal rule's directories (renaming
/// `~/.aws` or the home directory around `~/.aws/credentials`), an allow
/// rule before a deny rule, and a prefix rule that decides a whole
/// directory first.
#[test]
fn directories_above_a_literal_rule_are_decided_by_it() {
    let rule = |name: &str, verdict, path: PathPattern| Rule {
        name: name.to_owned(),
        action: Action::FileRead,
        verdict,
        severity: Severity::default_for(verdict),
        paths: vec![path],
        cidrs: Vec::new(),
        ports: Vec::new(),
        server_names: Vec::new(),
    };
    let decide = |rules: Vec<Rule>, dir: &str| {
        let set = PolicySet {
            name: "dirs".to_owned(),
            base: Policy { default_verdict: Verdict::Allow, rules },
            overlays: BTreeMap::new(),
        };
        let compiled = compile(&set, 1).expect("compiles");
        let (verdict, rule) = compiled.decide_directory(BASE_CLASS, Action::FileRead, dir.as_bytes());
        (verdict, compiled.rule(rule).map(|r| r.name.clone()))
    };
    let credentials = || rule("aws", Verdict::Deny, PathPattern::Exact("/home/u/.aws/credentials".to_owned()));
    for dir in ["/", "/home", "/home/u", "/home/u/.aws", "/home/u/.aws/credentials"] {
        assert_eq!(decide(vec![credentials()], dir), (Verdict::Deny, Some("aws".to_owned())), "{dir}");
    }
    for dir in ["/home/u/.aw", "/home/u/.aws2", "/home/v", "/srv"] {
        assert_eq!(decide(vec![credentials()], dir), (Verdict::Allow, None), "{dir}");
    }
    let config = rule("config", Verdict::Allow, PathPattern::Exact("/home/u/.aws/config".to_owned()));
    assert_eq!(decide(vec![config, credentials()], "/home/u/.aws"), (Verdict::Deny, Some("aws".to_owned())));
    let keys = rule("keys", Verdict::Alert, PathPattern::Glob("/home/*/.ssh/id_*".to_owned()));
    assert_eq!(decide(vec![keys.clone()], "/home/u/.ssh"), (Verdict::Alert, Some("keys".to_owned())));
    assert_eq!(decide(vec![keys, credentials()], "/home/u"), (Verdict::Deny, Some("aws".to_owned())));
    // A rule naming the directory itself, a rule below it after it.
    let project = rule("project", Verdict::Deny, PathPattern::Exact("/home/u/proj".to_owned()));
    let inside = rule("inside", Verdict::Alert, PathPattern::Exact("/home/u/proj/x".to_owned()));
    for rules in [vec![project.clone(), inside.clone()], vec![inside, project]] {
        assert_eq!(decide(rules, "/home/u/proj"), (Verdict::Deny, Some("project".to_owned())));
    }
    let home = rule("home", Verdict::Allow, PathPattern::Prefix("/home/u/".to_owned()));
    assert_eq!(decide(vec![home.clone(), credentials()], "/home/u/.aws"), (Verdict::Allow, Some("home".to_owned())));
    // What a prefix rule before it decides, a rule below cannot.
    assert_eq!(decide(vec![home, credentials()], "/home"), (Verdict::Allow, None));
}
