//! The real `tyrd run` (root, this kernel) against the fake server: it
//! enrolls with the pin, reports its capabilities, installs a pushed policy
//! (a denied connect fails with ECONNREFUSED and the DENY event is
//! streamed), exits cleanly on SIGTERM, and on the next start, with no
//! server at all, enforces the last policy it received.

mod client_support;

use std::io::ErrorKind;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use client_support::{FakeState, GOOD_TOKEN, scratch_dir, start, wait_for};
use tyr_agent::client::trust::pin_of;
use tyr_common::policy::{compile, parse_policy};
use tyr_proto::agent_message::Payload as Out;
use tyr_proto::server_message::Payload as In;
use tyr_proto::{BatchAck, PolicyPush, Verdict};

const WAIT: Duration = Duration::from_secs(30);
const POLICY: &str = "name: daemon-test\ndefault_verdict: allow\nrules:\n  - name: no-127-0-0-93\n    action: net_connect\n    cidr_deny: [\"127.0.0.93/32\"]\n    verdict: deny\n";

fn udp_connect(address: &str) -> Result<(), ErrorKind> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").map_err(|e| e.kind())?;
    socket.connect(address).map_err(|e| e.kind())
}

/// A `tyrd run` child, killed if the test panics before stopping it: a
/// leftover tyrd would keep enforcing its policy on this host.
struct Tyrd(Option<Child>);

impl Drop for Tyrd {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn tyrd_run(server: &str, pin: &str, state_dir: &std::path::Path, token: Option<&str>) -> Tyrd {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tyrd"));
    command
        .arg("run")
        .args(["--config", "/dev/null", "--server", server, "--ca-pin", pin])
        .arg("--state-dir")
        .arg(state_dir)
        .args(["--heartbeat-interval-s", "1", "--batch-max-ms", "20"])
        .env("TYR_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    if let Some(token) = token {
        command.env("TYR_TOKEN", token);
    }
    Tyrd(Some(command.spawn().expect("spawn tyrd run")))
}

fn terminate(mut tyrd: Tyrd) -> std::process::ExitStatus {
    let Some(mut child) = tyrd.0.take() else { panic!("tyrd already stopped") };
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

fn heartbeat_version(state: &FakeState) -> Option<i64> {
    state.messages().into_iter().rev().find_map(|(_, m)| match m.payload {
        Some(Out::Heartbeat(hb)) => Some(hb.policy_version),
        _ => None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tyrd_run_enrolls_enforces_pushes_and_keeps_the_last_policy_without_a_server() {
    let server = start().await;
    let state = Arc::clone(&server.state);
    let dir = scratch_dir("tyrd-run");
    let pin = pin_of(&server.ca.der);
    let tyrd = tyrd_run(&server.address, &pin, &dir, Some(GOOD_TOKEN));

    wait_for("the capability report", WAIT, || {
        state.messages().iter().any(|(_, m)| matches!(m.payload, Some(Out::Capabilities(_))))
    })
    .await;
    assert_eq!(state.registers.load(Ordering::SeqCst), 1);
    let first = state.messages().into_iter().next().expect("a message");
    assert!(matches!(first.1.payload, Some(Out::Capabilities(_))), "CapabilityReport comes first");

    let set = parse_policy("daemon-test", POLICY).expect("parses");
    state
        .send(In::Policy(PolicyPush {
            policy_version: 93,
            bpf_entries: compile(&set, 93).expect("compiles").to_bytes(),
            policy_yaml: POLICY.to_owned(),
            ..PolicyPush::default()
        }))
        .await;
    // Acknowledge what arrives, as a server would: a busy host fills tyrd's
    // in-flight window within seconds, and the DENY event must get through.
    let acker_state = Arc::clone(&state);
    let acker = tokio::spawn(async move {
        let mut acked = 0;
        loop {
            let last = acker_state
                .messages()
                .into_iter()
                .filter_map(|(_, m)| match m.payload {
                    Some(Out::EventBatch(batch)) => batch.events.last().map(|e| e.seq),
                    _ => None,
                })
                .max()
                .unwrap_or(0);
            if last > acked {
                acker_state.send(In::Ack(BatchAck { batch_id: 0, acked_seq: last })).await;
                acked = last;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    wait_for("a heartbeat reporting version 93", WAIT, || heartbeat_version(&state) == Some(93)).await;
    assert_eq!(udp_connect("127.0.0.93:9"), Err(ErrorKind::ConnectionRefused), "the pushed policy is enforced");
    assert_eq!(udp_connect("127.0.0.94:9"), Ok(()), "other addresses are not");

    let deny = || {
        state.messages().into_iter().find_map(|(_, m)| match m.payload {
            Some(Out::EventBatch(batch)) => batch
                .events
                .iter()
                .find(|e| e.resource.contains("127.0.0.93") && e.verdict == Verdict::Deny as i32)
                .map(|e| (e.seq, e.policy_version)),
            _ => None,
        })
    };
    wait_for("the DENY event", WAIT, || deny().is_some()).await;
    let (seq, version) = deny().expect("found");
    assert_eq!(version, 93);
    acker.abort();
    state.send(In::Ack(BatchAck { batch_id: 1, acked_seq: seq })).await;

    let ends = state.clean_ends.load(Ordering::SeqCst);
    let status = tokio::task::spawn_blocking(move || terminate(tyrd)).await.expect("join");
    assert!(status.success(), "tyrd run exits 0 on SIGTERM: {status}");
    wait_for("a clean end of stream", WAIT, || state.clean_ends.load(Ordering::SeqCst) > ends).await;

    // No server at all: the identity is reused and the last policy enforced.
    let address = server.address.clone();
    drop(server);
    let tyrd = tyrd_run(&address, &pin, &dir, None);
    let mut refused = false;
    for _ in 0..300 {
        if udp_connect("127.0.0.93:9") == Err(ErrorKind::ConnectionRefused) {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = tokio::task::spawn_blocking(move || terminate(tyrd)).await.expect("join");
    assert!(refused, "the stored policy is enforced before any server contact");
    assert!(status.success(), "tyrd run exits 0 on SIGTERM: {status}");
}
