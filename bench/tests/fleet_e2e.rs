//! The fleet loop on this host, end to end, with the real binaries: a fresh
//! `tyr-server serve`, a one-use token, a fresh `tyrd run` enrolling with it
//! and the CA pin; a fleet policy denying connects to 127.0.0.66 reaches
//! tyrd's kernel maps, a connect there fails with ECONNREFUSED, and the DENY
//! event (rule, policy version, the daemon's id as agent_id) is in
//! ClickHouse within seconds. The used-up token enrolls nobody else, and a
//! policy change reaches the connected daemon's kernel. Loopback only.

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use serde::Deserialize;
use tyr_bench::fleet::{Daemon, Scratch, Server, Token, wait_until, work_dir, write_file};

const DENY_POLICY: &str = "\
name: e2e
default_verdict: allow
rules:
  - name: e2e-deny-127-0-0-66
    action: net_connect
    cidr_deny: [\"127.0.0.66/32\"]
    verdict: deny
    severity: high
";

const DENY_BOTH_POLICY: &str = "\
name: e2e-two
default_verdict: allow
rules:
  - name: e2e-deny-127-0-0-67
    action: net_connect
    cidr_deny: [\"127.0.0.67/32\"]
    verdict: deny
    severity: high
";

fn connect(address: SocketAddr) -> std::io::Result<()> {
    TcpStream::connect_timeout(&address, Duration::from_secs(2)).map(drop)
}

/// The daemons `tyr-server daemon list` shows.
fn daemons(server: &Server) -> Vec<serde_json::Value> {
    match server.cli_json(&["daemon", "list"]) {
        serde_json::Value::Array(rows) => rows,
        other => panic!("daemon list is not an array: {other}"),
    }
}

fn applied_version(server: &Server) -> i64 {
    daemons(server).first().and_then(|d| d["applied_policy_version"].as_i64()).unwrap_or(0)
}

#[derive(Debug, Deserialize, clickhouse::Row)]
struct DenyRow {
    rule: String,
    policy_version: i64,
    agent_id: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_push_deny_and_store() {
    let scratch = Scratch::create("tyr_e2e").await;
    let work = work_dir("tyr-e2e");
    let server = Server::start(&scratch, &work.join("server"), &[("TYR_HEARTBEAT_INTERVAL_S", "1")]);
    let token = Token::create(&server, 1);
    let stored = server.cli_json(&["policy", "set", "--file", &write_file(&work, "deny.yaml", DENY_POLICY)]);
    let version = stored["version"].as_i64().expect("policy version");

    // A listener, so a refusal below is the policy's and not a closed port's.
    let listener = TcpListener::bind("127.0.0.66:0").expect("bind 127.0.0.66");
    let target = listener.local_addr().expect("address");
    let second_listener = TcpListener::bind("127.0.0.67:0").expect("bind 127.0.0.67");
    let second = second_listener.local_addr().expect("address");
    connect(target).expect("without tyrd the connect succeeds");

    let mut daemon = Daemon::enroll(&server, &work.join("tyrd"), &token, &[]);
    let enrolled = wait_until(Duration::from_secs(60), || applied_version(&server) > 0);
    assert!(
        enrolled,
        "tyrd never reported a policy in force\ntyrd:\n{}\nserver:\n{}",
        daemon.log.text(),
        server.log.text()
    );
    let listed = daemons(&server);
    assert_eq!(listed.len(), 1, "one daemon enrolled: {listed:?}");
    let daemon_id = listed[0]["id"].as_str().expect("daemon id").to_owned();
    let applied = applied_version(&server);
    assert!(applied > 0 && applied >= version.min(applied), "policy version applied: {applied}");

    let refused = connect(target).expect_err("the policy denies 127.0.0.66");
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused, "ECONNREFUSED, from the kernel: {refused}");
    connect(second).expect("127.0.0.67 is not denied yet");

    let store = scratch.event_store();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let rows = loop {
        let rows = store
            .client()
            .query(
                "SELECT metadata['rule'] AS rule, policy_version, toString(agent_id) AS agent_id FROM events
                  WHERE kind = 'NET_CONNECT' AND verdict = 'DENY' AND resource = ?",
            )
            .bind(target.to_string())
            .fetch_all::<DenyRow>()
            .await
            .unwrap_or_default();
        if !rows.is_empty() || tokio::time::Instant::now() >= deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        !rows.is_empty(),
        "the DENY event reached ClickHouse\ntyrd:\n{}\nserver:\n{}",
        daemon.log.text(),
        server.log.text()
    );
    let row = &rows[0];
    assert_eq!(row.rule, "e2e-deny-127-0-0-66");
    assert_eq!(row.policy_version, applied, "decided under the version the daemon applied");
    assert_eq!(row.agent_id, daemon_id, "the daemon id from its certificate is the event's agent_id");

    // The token had one use.
    let mut intruder = Daemon::enroll(&server, &work.join("tyrd-2"), &token, &[]);
    let status = intruder.wait_exit(Duration::from_secs(60));
    assert!(status.is_some_and(|s| !s.success()), "a used-up token must not enroll: {}", intruder.log.text());
    assert!(intruder.log.text().contains("UNAUTHENTICATED") || intruder.log.text().contains("refused"));
    assert_eq!(daemons(&server).len(), 1, "still one daemon");

    // A policy change reaches the connected daemon's kernel.
    let changed = server.cli_json(&["policy", "set", "--file", &write_file(&work, "two.yaml", DENY_BOTH_POLICY)]);
    assert!(changed["version"].as_i64() > Some(version));
    let moved = wait_until(Duration::from_secs(30), || applied_version(&server) > applied);
    assert!(moved, "the new version was applied and reported in a heartbeat\n{}", daemon.log.text());
    let refused = connect(second).expect_err("the new policy denies 127.0.0.67");
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);
    connect(target).expect("127.0.0.66 is allowed again");

    daemon.terminate();
    drop(server);
    scratch.drop_now().await;
    let _ = std::fs::remove_dir_all(&work);
}
