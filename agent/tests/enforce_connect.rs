//! In-kernel connect policy on this host: a denied 127.0.0.x range gets
//! ECONNREFUSED, an allowed one connects, an alert rule lets the connect
//! through and flags it, every decision is an event with the verdict, rule
//! and policy version; a broken reload keeps the policy in force; and under
//! 100,000 connects while the policy flips 50 times, every verdict comes
//! whole from one version and every old slot is emptied after an RCU grace
//! period.

mod support;

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use support::{Observer, field, marker, meta};

fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write policy");
    std::fs::rename(&tmp, path).expect("rename policy");
}

/// Connects a UDP socket (no packet is sent) and reports whether policy let it.
fn udp_connect(addr: &str) -> Result<(), ErrorKind> {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket.connect(addr.parse::<SocketAddr>().expect("addr")).map_err(|e| e.kind())
}

/// The tests share this process's pid (and its connects): one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn deny_allow_alert_and_a_refused_reload() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = std::env::temp_dir().join(marker("tyr-enforce-"));
    std::fs::create_dir_all(&dir).expect("dir");
    let policy = dir.join("policy.yaml");
    write_atomically(
        &policy,
        "- name: deny-lab\n  action: net_connect\n  cidr_deny: [\"127.0.0.96/30\"]\n  verdict: deny\n\
         - name: watch-lab\n  action: net_connect\n  cidr_allow: [\"127.0.0.100/32\"]\n  ports: [\"7000-7999\"]\n  verdict: alert\n",
    );
    let me = std::process::id().to_string();
    let observer =
        Observer::start(&["--kind", "net_connect", "--pid", &me, "--policy", policy.to_str().expect("utf-8")]);

    assert_eq!(udp_connect("127.0.0.97:9"), Err(ErrorKind::ConnectionRefused), "denied range");
    assert_eq!(udp_connect("127.0.0.101:9"), Ok(()), "outside every rule: default allow");
    assert_eq!(udp_connect("127.0.0.100:7100"), Ok(()), "alert lets it through");
    assert_eq!(udp_connect("127.0.0.100:8100"), Ok(()), "alert rule is port-bound");
    // TCP too, against a real listener on an allowed address.
    let listener = std::net::TcpListener::bind("127.0.0.102:0").expect("listen");
    assert!(std::net::TcpStream::connect(listener.local_addr().expect("addr")).is_ok());
    let refused = std::net::TcpStream::connect("127.0.0.98:9").expect_err("denied");
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);

    let deny = observer.wait_for("deny", |e| field(e, "resource") == "127.0.0.97:9");
    let alert = observer.wait_for("alert", |e| field(e, "resource") == "127.0.0.100:7100");
    let allow = observer.wait_for("allow", |e| field(e, "resource") == "127.0.0.101:9");
    assert_eq!(field(&deny, "verdict"), "DENY");
    assert_eq!(meta(&deny, "rule"), "deny-lab");
    assert_eq!(meta(&deny, "enforced"), "true");
    assert_eq!(field(&deny, "severity"), "HIGH");
    assert_eq!(field(&alert, "verdict"), "ALERT");
    assert_eq!(meta(&alert, "rule"), "watch-lab");
    assert_eq!(field(&allow, "verdict"), "ALLOW");
    assert_eq!(meta(&allow, "rule"), "default");
    let version = deny["policy_version"].as_i64().expect("version");
    assert!(version > 0);
    assert_eq!(alert["policy_version"].as_i64(), Some(version));

    // A broken policy is refused on reload; the one in force stays.
    write_atomically(&policy, "- name: broken\n  action: net_connect\n  cidr_deny: [\"not-an-ip\"]\n  verdict: deny\n");
    let pid = observer_pid(&observer);
    // SAFETY: kill(2) to tyrd, our child process, with a valid signal.
    let signalled = unsafe { libc::kill(pid, libc::SIGHUP) };
    assert_eq!(signalled, 0);
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(udp_connect("127.0.0.97:9"), Err(ErrorKind::ConnectionRefused), "old policy still enforced");
    let observed = observer.stop();
    assert!(
        observed.stderr.iter().any(|l| l.contains("policy reload refused") && l.contains("field cidr_deny")),
        "{:?}",
        observed.stderr
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn observer_pid(observer: &Observer) -> i32 {
    observer.pid() as i32
}

#[test]
fn hot_swap_never_mixes_versions() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    const CONNECTS: usize = 100_000;
    const FLIPS: usize = 50;
    let dir = std::env::temp_dir().join(marker("tyr-swap-"));
    std::fs::create_dir_all(&dir).expect("dir");
    let policy = dir.join("policy.yaml");
    let policy_a = "- name: a-deny-50\n  action: net_connect\n  cidr_deny: [\"127.0.0.50/32\"]\n  verdict: deny\n\
                    - name: a-allow-51\n  action: net_connect\n  cidr_allow: [\"127.0.0.51/32\"]\n  verdict: allow\n";
    let policy_b = "- name: b-allow-50\n  action: net_connect\n  cidr_allow: [\"127.0.0.50/32\"]\n  verdict: allow\n\
                    - name: b-deny-51\n  action: net_connect\n  cidr_deny: [\"127.0.0.51/32\"]\n  verdict: deny\n";
    write_atomically(&policy, policy_a);
    let me = std::process::id().to_string();
    let observer = Observer::start(&[
        "--kind",
        "net_connect",
        "--pid",
        &me,
        "--policy",
        policy.to_str().expect("utf-8"),
        "--batch-max-events",
        "1000",
        "--ring-mb",
        "128",
    ]);
    let tyrd = observer_pid(&observer);

    let flipping = Arc::new(AtomicBool::new(true));
    let stderr = observer.stderr_lines();
    let installs = move || stderr.lock().expect("lock").iter().filter(|l| l.contains("in force")).count();
    let flipper = {
        let flipping = Arc::clone(&flipping);
        let policy = policy.clone();
        std::thread::spawn(move || {
            for flip in 0..FLIPS {
                let before = installs();
                write_atomically(&policy, if flip % 2 == 0 { policy_b } else { policy_a });
                // SAFETY: kill(2) to tyrd, our child process.
                assert_eq!(unsafe { libc::kill(tyrd, libc::SIGHUP) }, 0);
                // One reload at a time: signals sent while one is pending merge.
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
                while installs() == before {
                    assert!(std::time::Instant::now() < deadline, "reload {flip} not acknowledged");
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            flipping.store(false, Ordering::SeqCst);
        })
    };
    let mut results = Vec::with_capacity(CONNECTS * 2);
    while results.len() < CONNECTS || flipping.load(Ordering::SeqCst) {
        let target = if results.len() % 2 == 0 { "127.0.0.50:9" } else { "127.0.0.51:9" };
        results.push((target, udp_connect(target).is_ok()));
    }
    flipper.join().expect("flipper");
    observer.settle();
    let observed = observer.stop();

    let installed = observed.stderr.iter().filter(|l| l.contains("in force")).count();
    assert!(
        installed > FLIPS,
        "{installed} policies installed: {:?}",
        observed.stderr.iter().rev().take(5).collect::<Vec<_>>()
    );
    // Every old slot was emptied, each after a kernel RCU grace period
    // (membarrier) wherever the host has more than one CPU.
    assert_eq!(observed.counters["policy_clear_failures"], 0, "{}", observed.counters);
    if std::thread::available_parallelism().is_ok_and(|n| n.get() > 1) {
        assert_eq!(observed.counters["policy_swaps_unsynchronised"], 0, "{}", observed.counters);
    }
    let events: Vec<_> =
        observed.events.iter().filter(|e| matches!(field(e, "resource"), "127.0.0.50:9" | "127.0.0.51:9")).collect();
    // Exact accounting: every connect is an event or a counted loss.
    let lost = observed.counters["lost"]["NET_CONNECT"].as_u64().expect("lost counter") as usize;
    assert_eq!(
        events.len() + lost,
        results.len(),
        "connects {} = events {} + lost {lost}",
        results.len(),
        events.len()
    );
    let mut letter_of_version: HashMap<i64, char> = HashMap::new();
    let mut versions = Vec::new();
    let mut denied_events = 0;
    for event in &events {
        let target = field(event, "resource");
        let rule = meta(event, "rule");
        let letter = rule.chars().next().expect("rule name");
        let version = event["policy_version"].as_i64().expect("version");
        // One version, one policy: a mix would pair a version with the other policy's rules.
        assert_eq!(*letter_of_version.entry(version).or_insert(letter), letter, "version {version} mixed: {event}");
        let deny = rule.contains("deny");
        assert_eq!(field(event, "verdict") == "DENY", deny, "{event}");
        assert!(rule.ends_with(&target[8..10]), "rule {rule} is about {target}");
        denied_events += usize::from(deny);
        if versions.last() != Some(&version) {
            versions.push(version);
        }
    }
    // What the syscalls saw agrees with what the events say.
    let refused = results.iter().filter(|(_, connected)| !connected).count();
    assert!(
        refused >= denied_events && refused <= denied_events + lost,
        "refused {refused}, deny events {denied_events}"
    );
    assert!(versions.windows(2).all(|w| w[0] < w[1]), "versions only move forward");
    assert!(letter_of_version.len() > FLIPS / 2, "the connects saw {} versions", letter_of_version.len());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_would_be_denied_open_says_it_was_not_enforced() {
    let me = std::process::id().to_string();
    would_be_denied_open_is_reported(&["--kind", "file_read", "--pid", &me], true);
}

/// Policy decisions are reported whatever the filters: with only connects
/// of another command selected, the would-be-denied open still shows, and
/// the plain open does not.
#[test]
fn a_would_be_denied_open_is_reported_through_filters_that_exclude_it() {
    would_be_denied_open_is_reported(&["--kind", "net_connect", "--comm", "no-such-comm"], false);
}

fn would_be_denied_open_is_reported(filters: &[&str], plain_selected: bool) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = std::env::temp_dir().join(marker("tyr-unenforced-"));
    std::fs::create_dir_all(dir.join("secrets")).expect("dir");
    let secret = dir.join("secrets").join("token.txt");
    let public = dir.join("public.txt");
    std::fs::write(&secret, b"s").expect("secret");
    std::fs::write(&public, b"p").expect("public");
    let policy = dir.join("policy.yaml");
    let secrets_dir = format!("{}/", dir.join("secrets").display());
    write_atomically(
        &policy,
        &format!(
            "- name: no-secrets\n  action: file_read\n  paths: [\"{secrets_dir}\"]\n  verdict: deny\n  severity: critical\n"
        ),
    );
    let mut args = filters.to_vec();
    args.extend(["--policy", policy.to_str().expect("utf-8")]);
    let observer = Observer::start(&args);
    // No BPF LSM on this host: the open succeeds...
    std::fs::read(&public).expect("public");
    std::fs::read(&secret).expect("not enforced on this host");
    let secret_text = secret.to_str().expect("utf-8").to_owned();
    let public_text = public.to_str().expect("utf-8").to_owned();
    let denied = observer.wait_for("would-be-denied open", |e| field(e, "resource") == secret_text);
    let observed = observer.stop();
    let plain = observed.events.iter().find(|e| field(e, "resource") == public_text);
    // ...and its event says what the policy wanted and that it was not enforced.
    assert_eq!(field(&denied, "verdict"), "ALLOW", "the kernel's verdict");
    assert_eq!(meta(&denied, "policy_verdict"), "DENY");
    assert_eq!(meta(&denied, "enforced"), "false");
    assert_eq!(meta(&denied, "rule"), "no-secrets");
    assert_eq!(field(&denied, "severity"), "CRITICAL");
    assert!(denied["policy_version"].as_i64().expect("version") > 0);
    match plain {
        Some(plain) => {
            assert!(plain_selected, "a filtered-out plain open was printed: {plain}");
            assert_eq!(meta(plain, "policy_verdict"), "");
            assert_eq!(meta(plain, "enforced"), "");
        }
        None => assert!(!plain_selected, "the plain open was not printed"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}
