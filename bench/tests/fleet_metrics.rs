//! Both `/metrics` endpoints with the real binaries on this host: a fresh
//! `tyr-server serve` (`TYR_METRICS_ADDR`) and a `tyrd run --metrics-addr`
//! enrolled with it. The server counts the daemon connected and the policy
//! change it applied; tyrd shows the stream and the applied version; the
//! server's ingested-events counter agrees with what ClickHouse holds; the
//! daemon leaving shows on the server. Loopback only.

#[path = "../../server/tests/support/exposition.rs"]
mod exposition;

use std::net::SocketAddr;
use std::time::Duration;

use exposition::{Exposition, Flavor, check_names, http_get, parse};
use tyr_bench::fleet::{Daemon, Scratch, Server, Token, free_port, wait_until, work_dir, write_file};

const POLICY: &str = "\
name: metrics
default_verdict: allow
rules:
  - name: metrics-deny-127-0-0-69
    action: net_connect
    cidr_deny: [\"127.0.0.69/32\"]
    verdict: deny
";

/// Scrapes `address` (0.0.4 text); None while nothing answers.
fn scrape(address: SocketAddr, prefix: &str, units: &[&str]) -> Option<Exposition> {
    let (status, _, text) = http_get(address, "/metrics", "*/*").ok()?;
    assert_eq!(status, 200, "{text}");
    let scraped = parse(&text, Flavor::Prometheus).unwrap_or_else(|e| panic!("does not parse: {e}\n{text}"));
    check_names(&scraped, Flavor::Prometheus, prefix, units).unwrap_or_else(|e| panic!("{e}\n{text}"));
    Some(scraped)
}

fn server_metrics(server: &Server) -> Option<Exposition> {
    scrape(server.metrics_addr, "tyr_", &["seconds", "events", "batches", "daemons"])
}

fn tyrd_metrics(address: SocketAddr) -> Option<Exposition> {
    scrape(address, "tyrd_", &["events", "bytes", "batches", "streams", "agents", "version"])
}

fn holds(scraped: Option<Exposition>, check: impl Fn(&Exposition) -> bool) -> bool {
    scraped.is_some_and(|m| check(&m))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_and_tyrd_metrics_agree_with_the_fleet() {
    let scratch = Scratch::create("tyr_metrics").await;
    let work = work_dir("tyr-metrics");
    let server = Server::start(&scratch, &work.join("server"), &[("TYR_HEARTBEAT_INTERVAL_S", "1")]);
    let up = wait_until(Duration::from_secs(30), || server_metrics(&server).is_some());
    assert!(up, "the server's metrics endpoint answers\n{}", server.log.text());
    let token = Token::create(&server, 1);
    let tyrd_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("address");
    let mut daemon = Daemon::enroll(&server, &work.join("tyrd"), &token, &["--metrics-addr", &tyrd_addr.to_string()]);

    let connected = wait_until(Duration::from_secs(60), || {
        holds(server_metrics(&server), |m| m.value("tyr_connected_daemons", &[]) == 1.0)
            && holds(tyrd_metrics(tyrd_addr), |m| m.value("tyrd_connected_streams", &[]) == 1.0)
    });
    assert!(connected, "both sides count the stream\ntyrd:\n{}\nserver:\n{}", daemon.log.text(), server.log.text());

    // A policy change pushed to the live stream: applied by tyrd, timed by the server.
    let applied_version = || tyrd_metrics(tyrd_addr).map_or(0.0, |m| m.value("tyrd_applied_policy_version", &[]));
    assert!(wait_until(Duration::from_secs(30), || applied_version() > 0.0), "the first push is applied");
    let first = applied_version();
    server.cli_json(&["policy", "set", "--file", &write_file(&work, "policy.yaml", POLICY)]);
    let applied = wait_until(Duration::from_secs(30), || {
        applied_version() > first
            && holds(server_metrics(&server), |m| m.value("tyr_policy_apply_duration_seconds_count", &[]) >= 1.0)
    });
    assert!(applied, "the change applied and timed\ntyrd:\n{}", daemon.log.text());
    let listed = wait_until(Duration::from_secs(10), || {
        let daemons = server.cli_json(&["daemon", "list"]);
        daemons[0]["applied_policy_version"].as_f64() == Some(applied_version())
    });
    assert!(listed, "the server lists the version tyrd's gauge shows");

    // Events flow; the counter brackets what ClickHouse holds.
    for _ in 0..20 {
        let _ = std::fs::read(work.join("server").join("ca.pem"));
    }
    let flowing = wait_until(Duration::from_secs(30), || {
        holds(server_metrics(&server), |m| m.value("tyr_ingested_events_total", &[]) > 0.0)
    });
    assert!(flowing, "events reach ClickHouse\n{}", server.log.text());
    let ingested = |server: &Server| server_metrics(server).expect("scrape").value("tyr_ingested_events_total", &[]);
    let store = scratch.event_store();
    let mut bracket = (0.0, 0, 0.0);
    // An insert may commit between the two scrapes and the count: a few tries.
    for _ in 0..10 {
        let low = ingested(&server);
        let rows: u64 = store.client().query("SELECT count() FROM events").fetch_one().await.expect("count events");
        let high = ingested(&server);
        bracket = (low, rows, high);
        if low <= rows as f64 && rows as f64 <= high {
            break;
        }
    }
    let (low, rows, high) = bracket;
    assert!(low <= rows as f64 && rows as f64 <= high, "{low} <= {rows} <= {high}");
    let tyrd = tyrd_metrics(tyrd_addr).expect("tyrd scrape");
    assert!(tyrd.sum("tyrd_events_seen_total") > 0.0);
    assert_eq!(tyrd.value("tyrd_spool_evicted_events_total", &[]), 0.0);

    // The daemon leaves: the server sees it go.
    daemon.terminate();
    let left = wait_until(Duration::from_secs(30), || {
        holds(server_metrics(&server), |m| m.value("tyr_connected_daemons", &[]) == 0.0)
    });
    assert!(left, "the server no longer counts the daemon");
    assert!(tyrd_metrics(tyrd_addr).is_none(), "tyrd's endpoint is gone with it");
    drop(server);
    scratch.drop_now().await;
    let _ = std::fs::remove_dir_all(&work);
}
