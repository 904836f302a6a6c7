//! The real `tyrd run` (root, this kernel) against the fake server, with
//! `--metrics-addr`: `/metrics` answers in both text formats with
//! well-formed names; file opens this test makes raise
//! `tyrd_events_seen_total{kind="file_read"}` by at least their number;
//! unacknowledged events show as spool depth and leave it once acknowledged;
//! a pushed policy shows as the applied version; a stream the server cuts
//! shows as a reconnect. Without the flag, tyrd listens on no TCP port.

mod client_support;
#[path = "../../server/tests/support/exposition.rs"]
mod exposition;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use client_support::{FakeState, GOOD_TOKEN, scratch_dir, start, wait_for};
use exposition::{Exposition, Flavor, check_names, http_get, parse};
use tyr_agent::client::trust::pin_of;
use tyr_common::policy::{compile, parse_policy};
use tyr_proto::agent_message::Payload as Out;
use tyr_proto::server_message::Payload as In;
use tyr_proto::{BatchAck, PolicyPush};

const WAIT: Duration = Duration::from_secs(30);
const UNITS: &[&str] = &["events", "bytes", "batches", "streams", "agents", "version"];
const POLICY: &str = "name: metrics-test\ndefault_verdict: allow\nrules: []\n";
const OPENS: usize = 60;

/// A `tyrd run` child, killed if the test panics before stopping it.
struct Tyrd(Option<Child>);

impl Drop for Tyrd {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Tyrd {
    fn start(server: &str, pin: &str, state_dir: &std::path::Path, metrics: Option<SocketAddr>) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tyrd"));
        command
            .arg("run")
            .args(["--config", "/dev/null", "--server", server, "--ca-pin", pin])
            .arg("--state-dir")
            .arg(state_dir)
            .args(["--heartbeat-interval-s", "1", "--batch-max-ms", "20"])
            .env("TYR_LOG", "info")
            .env("TYR_TOKEN", GOOD_TOKEN)
            .env_remove("TYRD_METRICS_ADDR")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if let Some(address) = metrics {
            command.arg("--metrics-addr").arg(address.to_string());
        }
        Self(Some(command.spawn().expect("spawn tyrd run")))
    }

    fn pid(&self) -> u32 {
        self.0.as_ref().expect("running").id()
    }

    /// SIGTERM, then the exit status (tyrd must stop within 15 s).
    fn terminate(mut self) -> std::process::ExitStatus {
        let mut child = self.0.take().expect("running");
        // SAFETY: kill(2) on the pid of a child this test spawned and has not reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        for _ in 0..300 {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        panic!("tyrd run did not exit within 15 s of SIGTERM");
    }
}

fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address")
}

/// Scrapes in both formats; both must parse and follow the naming rules.
fn scrape(address: SocketAddr) -> Option<Exposition> {
    let (status, content_type, text) = http_get(address, "/metrics", "*/*").ok()?;
    assert_eq!(status, 200, "{text}");
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    let plain = parse(&text, Flavor::Prometheus).unwrap_or_else(|e| panic!("0.0.4 text does not parse: {e}\n{text}"));
    check_names(&plain, Flavor::Prometheus, "tyrd_", UNITS).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let (status, content_type, text) =
        http_get(address, "/metrics", "application/openmetrics-text;version=1.0.0").expect("scrape");
    assert_eq!(status, 200);
    assert!(content_type.starts_with("application/openmetrics-text"), "{content_type}");
    let open = parse(&text, Flavor::OpenMetrics).unwrap_or_else(|e| panic!("OpenMetrics does not parse: {e}\n{text}"));
    check_names(&open, Flavor::OpenMetrics, "tyrd_", UNITS).unwrap_or_else(|e| panic!("{e}\n{text}"));
    Some(plain)
}

/// Scrapes until `done` holds (or panics after [`WAIT`]); returns that scrape.
async fn scrape_until(address: SocketAddr, what: &str, done: impl Fn(&Exposition) -> bool) -> Exposition {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let scraped = tokio::task::spawn_blocking(move || scrape(address)).await.expect("scrape task");
        if let Some(scraped) = scraped {
            if done(&scraped) {
                return scraped;
            }
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}: {scraped:?}");
        } else {
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}: nothing listens");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn last_seq(state: &FakeState) -> u64 {
    state
        .messages()
        .into_iter()
        .filter_map(|(_, m)| match m.payload {
            Some(Out::EventBatch(batch)) => batch.events.last().map(|e| e.seq),
            _ => None,
        })
        .max()
        .unwrap_or(0)
}

/// Events the fake server received whose resource is `path`.
fn streamed_opens(state: &FakeState, path: &str) -> usize {
    state
        .messages()
        .into_iter()
        .filter_map(|(_, m)| match m.payload {
            Some(Out::EventBatch(batch)) => Some(batch.events.iter().filter(|e| e.resource == path).count()),
            _ => None,
        })
        .sum()
}

/// TCP sockets in LISTEN state that `pid` holds open.
fn listening_sockets(pid: u32) -> usize {
    let mut inodes = HashSet::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).expect("fd dir").flatten() {
        if let Ok(target) = std::fs::read_link(entry.path())
            && let Some(inode) =
                target.to_str().and_then(|t| t.strip_prefix("socket:[")).and_then(|t| t.strip_suffix(']'))
        {
            inodes.insert(inode.to_owned());
        }
    }
    let mut listening = 0;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // st 0A is LISTEN; the inode is the tenth field.
            if fields.get(3) == Some(&"0A") && fields.get(9).is_some_and(|inode| inodes.contains(*inode)) {
                listening += 1;
            }
        }
    }
    listening
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tyrd_serves_its_counters_only_when_asked() {
    let server = start().await;
    let state = Arc::clone(&server.state);
    let pin = pin_of(&server.ca.der);
    let address = free_port();
    let dir = scratch_dir("tyrd-metrics");
    let tyrd = Tyrd::start(&server.address, &pin, &dir, Some(address));

    wait_for("the capability report", WAIT, || {
        state.messages().iter().any(|(_, m)| matches!(m.payload, Some(Out::Capabilities(_))))
    })
    .await;
    let connected =
        scrape_until(address, "the stream counted as open", |m| m.value("tyrd_connected_streams", &[]) == 1.0).await;
    assert_eq!(connected.value("tyrd_streams_opened_total", &[]), 1.0);
    assert_eq!(connected.value("tyrd_reconnects_total", &[]), 0.0);
    let kinds: HashSet<&str> = connected
        .samples
        .iter()
        .filter(|s| s.name == "tyrd_events_lost_total")
        .filter_map(|s| s.labels.get("kind").map(String::as_str))
        .collect();
    assert_eq!(kinds.len(), 7, "a lost counter per kind: {kinds:?}");
    let (status, _, _) = http_get(address, "/", "*/*").expect("get /");
    assert_eq!(status, 404);

    // A pushed policy shows as the applied version.
    let set = parse_policy("metrics-test", POLICY).expect("parses");
    state
        .send(In::Policy(PolicyPush {
            policy_version: 77,
            bpf_entries: compile(&set, 77).expect("compiles").to_bytes(),
            policy_yaml: POLICY.to_owned(),
            ..PolicyPush::default()
        }))
        .await;
    scrape_until(address, "policy version 77", |m| m.value("tyrd_applied_policy_version", &[]) == 77.0).await;

    // Opens of a file of our own: seen (by kind) and, unacknowledged, in the spool.
    let before = scrape_until(address, "a scrape", |_| true).await;
    let seen = |m: &Exposition| m.value("tyrd_events_seen_total", &[("kind", "file_read")]);
    let path = dir.join("opened-for-metrics");
    std::fs::write(&path, b"x").expect("write");
    for _ in 0..OPENS {
        std::fs::read(&path).expect("read");
    }
    let delivered = |m: &Exposition| m.value("tyrd_delivered_events_total", &[]);
    let after = scrape_until(address, "our opens seen and delivered to the spool", |m| {
        seen(m) - seen(&before) >= OPENS as f64 && delivered(m) - delivered(&before) >= OPENS as f64
    })
    .await;
    let spooled = after.value("tyrd_spool_events", &[]);
    assert!(spooled >= OPENS as f64, "nothing acknowledged yet: {spooled} events spooled");
    assert!(after.value("tyrd_spool_bytes", &[]) > 0.0);
    assert_eq!(after.value("tyrd_spool_evicted_events_total", &[]), 0.0);

    // Acknowledged as a server would (continually): the spool drains and our opens reach the server.
    let acker_state = Arc::clone(&state);
    let acker = tokio::spawn(async move {
        let mut acked = 0;
        loop {
            let last = last_seq(&acker_state);
            if last > acked {
                acker_state.send(In::Ack(BatchAck { batch_id: 0, acked_seq: last })).await;
                acked = last;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let path_text = path.display().to_string();
    wait_for("our opens streamed", WAIT, || streamed_opens(&state, &path_text) >= OPENS).await;
    scrape_until(address, "the spool drained", |m| m.value("tyrd_spool_events", &[]) < OPENS as f64).await;
    acker.abort();
    let _ = acker.await;

    // With the flag, the one TCP listener tyrd holds is the metrics one.
    assert_eq!(listening_sockets(tyrd.pid()), 1);

    // The server cuts the stream: tyrd reconnects, and says so.
    state.close_stream();
    let again = scrape_until(address, "a reconnect", |m| {
        m.value("tyrd_streams_opened_total", &[]) == 2.0 && m.value("tyrd_connected_streams", &[]) == 1.0
    })
    .await;
    assert!(again.value("tyrd_reconnects_total", &[]) >= 1.0);

    let status = tokio::task::spawn_blocking(move || tyrd.terminate()).await.expect("join");
    assert!(status.success(), "tyrd run exits 0 on SIGTERM: {status}");
    assert!(http_get(address, "/metrics", "*/*").is_err(), "the listener is gone with tyrd");

    // Without --metrics-addr (nor tyrd.toml, nor TYRD_METRICS_ADDR): no listener at all.
    let streams = state.streams.load(std::sync::atomic::Ordering::SeqCst);
    let tyrd = Tyrd::start(&server.address, &pin, &dir, None);
    wait_for("the stream of the second tyrd", WAIT, || {
        state.streams.load(std::sync::atomic::Ordering::SeqCst) > streams
    })
    .await;
    assert_eq!(listening_sockets(tyrd.pid()), 0, "tyrd listens on no TCP port by default");
    let status = tokio::task::spawn_blocking(move || tyrd.terminate()).await.expect("join");
    assert!(status.success(), "tyrd run exits 0 on SIGTERM: {status}");
    let _ = std::fs::remove_dir_all(&dir);
}
