//! Enrollment against a fake in-process server: trust on first contact by
//! CA pin or CA file (a wrong one refuses before any RPC), the stored
//! identity (key 0600), and refused tokens.

mod client_support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use client_support::{GOOD_TOKEN, TestCa, scratch_dir, start};
use tyr_agent::client::enroll::{self, EnrollError};
use tyr_agent::client::identity::{CERT_FILE, KEY_FILE, StoredIdentity};
use tyr_agent::client::trust::{TrustError, pin_of};
use tyr_agent::config::{DaemonConfig, Secret};

fn config(server: &str, state_dir: &Path) -> DaemonConfig {
    DaemonConfig {
        server: Some(server.to_owned()),
        token: Some(Secret::new(GOOD_TOKEN)),
        name: Some("test-host".to_owned()),
        state_dir: state_dir.to_owned(),
        ..DaemonConfig::default()
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("file exists").permissions().mode() & 0o777
}

#[tokio::test]
async fn the_right_pin_enrolls_and_stores_the_identity() {
    let server = start().await;
    let dir = scratch_dir("tyrd-enroll-pin");
    let mut config = config(&server.address, &dir);
    config.ca_pin = Some(pin_of(&server.ca.der));

    let identity = enroll::enroll(&config, "6.8.0-test", "x86_64").await.expect("enrollment succeeds");
    assert_eq!(server.state.registers.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(*server.state.enrolled.lock().expect("lock"), vec![identity.daemon_id.clone()]);

    assert_eq!(mode(&dir.join(KEY_FILE)), 0o600, "the private key is 0600");
    let stored = StoredIdentity::load(&dir).expect("readable").expect("enrolled");
    assert_eq!(stored.daemon_id, identity.daemon_id);
    assert_eq!(stored.ca_pem, server.ca.pem.as_bytes());
    assert!(stored.key_pem.expose().contains("PRIVATE KEY"));
    assert!(!format!("{stored:?}").contains("PRIVATE KEY"), "the key never shows in Debug");
    // The token that enrolled this identity is remembered (hashed): it does
    // not re-enroll a refused identity, another token does.
    assert!(enroll::enrolled_with(&dir, &Secret::new(GOOD_TOKEN)));
    assert!(!enroll::may_reenroll_after_refusal(&config));
    config.token = Some(Secret::new("new.token"));
    assert!(enroll::may_reenroll_after_refusal(&config));
}

#[tokio::test]
async fn a_wrong_pin_refuses_before_any_rpc() {
    let server = start().await;
    let dir = scratch_dir("tyrd-enroll-wrong-pin");
    let mut config = config(&server.address, &dir);
    config.ca_pin = Some(pin_of(&TestCa::new("another CA").der));

    let error = enroll::enroll(&config, "6.8.0-test", "x86_64").await.expect_err("a wrong pin is refused");
    assert!(matches!(error, EnrollError::Trust(TrustError::PinMismatch)), "{error}");
    assert_eq!(error.to_string(), "server CA does not match --ca-pin");
    assert_eq!(server.state.registers.load(std::sync::atomic::Ordering::SeqCst), 0, "no RPC reached the server");
    assert!(!dir.join(CERT_FILE).exists());
    assert!(!dir.join(KEY_FILE).exists());
}

#[tokio::test]
async fn a_ca_file_of_another_ca_is_refused_and_the_right_one_enrolls() {
    let server = start().await;
    let dir = scratch_dir("tyrd-enroll-ca-file");
    let wrong = dir.join("wrong-ca.pem");
    std::fs::write(&wrong, TestCa::new("another CA").pem).expect("write");
    let mut config = config(&server.address, &dir.join("state"));
    config.ca_file = Some(wrong);

    let error = enroll::enroll(&config, "6.8.0-test", "x86_64").await.expect_err("the wrong CA is refused");
    assert!(matches!(error, EnrollError::Trust(TrustError::Untrusted(_))), "{error}");
    assert_eq!(server.state.registers.load(std::sync::atomic::Ordering::SeqCst), 0, "no RPC reached the server");

    let right = dir.join("ca.pem");
    std::fs::write(&right, &server.ca.pem).expect("write");
    config.ca_file = Some(right);
    enroll::enroll(&config, "6.8.0-test", "x86_64").await.expect("the right CA file enrolls");
    assert_eq!(server.state.registers.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_refused_token_is_unauthenticated_and_stores_nothing() {
    let server = start().await;
    let dir = scratch_dir("tyrd-enroll-bad-token");
    let mut config = config(&server.address, &dir);
    config.ca_pin = Some(pin_of(&server.ca.der));
    config.token = Some(Secret::new("tokid.wrongsecret"));

    let error = enroll::enroll(&config, "6.8.0-test", "x86_64").await.expect_err("refused");
    assert!(matches!(error, EnrollError::Refused { code: tonic::Code::Unauthenticated, .. }), "{error}");
    assert!(StoredIdentity::load(&dir).expect("readable").is_none());
}

#[tokio::test]
async fn no_token_and_no_trust_anchor_are_clear_errors() {
    let server = start().await;
    let dir = scratch_dir("tyrd-enroll-missing");
    let mut config = config(&server.address, &dir);
    let error = enroll::enroll(&config, "k", "x86_64").await.expect_err("no anchor");
    assert!(matches!(error, EnrollError::NoTrustAnchor), "{error}");
    config.token = None;
    let error = enroll::enroll(&config, "k", "x86_64").await.expect_err("no token");
    assert!(matches!(error, EnrollError::NoToken), "{error}");
    assert_eq!(server.state.registers.load(std::sync::atomic::Ordering::SeqCst), 0);
}
