//! `tyrd run`'s configuration: file < environment < flags, unknown keys and
//! bad values refused with the file and key named, the token never shown.

mod client_support;

use std::collections::HashMap;
use std::path::PathBuf;

use client_support::scratch_dir;
use tyr_agent::config::{ConfigError, ConfigOverrides, DaemonConfig, ENV_BATCH_MAX_EVENTS, ENV_SPOOL_MAX_MB, Secret};
use tyr_agent::detect::tracker::UnregisteredAgents;

const FILE: &str = r#"
server = "https://tyr.example:7700"
token = "tokid.filesecret"
ca_pin = "sha256:0000000000000000000000000000000000000000000000000000000000000000"
name = "from-file"
state_dir = "/tmp/tyrd-from-file"
spool_max_mb = 10
batch_max_events = 50
heartbeat_interval_s = 15
unregistered_agents = "quarantine"
tls_capture = false
"#;

fn write(text: &str) -> PathBuf {
    let path = scratch_dir("tyrd-config").join("tyrd.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let vars: HashMap<String, String> = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    move |key| vars.get(key).cloned()
}

#[test]
fn the_file_then_the_environment_then_flags() {
    let path = write(FILE);
    let file_only = DaemonConfig::load(Some(&path), env(&[]), ConfigOverrides::default()).expect("loads");
    assert_eq!(file_only.server.as_deref(), Some("https://tyr.example:7700"));
    assert_eq!(file_only.spool_max_mb, 10);
    assert_eq!(file_only.batch_max_events, 50);
    assert_eq!(file_only.batch_max_ms, 1000, "unset keys keep their defaults");
    assert_eq!(file_only.unregistered_agents, UnregisteredAgents::Quarantine);
    assert!(!file_only.tls_capture);

    let vars = env(&[
        ("TYR_SPOOL_MAX_MB", "20"),
        ("TYR_STATE_DIR", "/tmp/tyrd-from-env"),
        ("TYR_HEARTBEAT_INTERVAL_S", "5"),
        ("TYR_UNREGISTERED_AGENTS", "deny"),
    ]);
    let with_env = DaemonConfig::load(Some(&path), &vars, ConfigOverrides::default()).expect("loads");
    assert_eq!(with_env.spool_max_mb, 20);
    assert_eq!(with_env.state_dir, PathBuf::from("/tmp/tyrd-from-env"));
    assert_eq!(with_env.heartbeat_interval_s, 5);
    assert_eq!(with_env.unregistered_agents, UnregisteredAgents::Deny);
    assert_eq!(with_env.name.as_deref(), Some("from-file"));

    let flags = ConfigOverrides {
        spool_max_mb: Some(30),
        token: Some(Secret::new("tokid.flagsecret")),
        unregistered_agents: Some(UnregisteredAgents::Audit),
        reenroll: true,
        ..ConfigOverrides::default()
    };
    let with_flags = DaemonConfig::load(Some(&path), &vars, flags).expect("loads");
    assert_eq!(with_flags.spool_max_mb, 30, "flags win");
    assert_eq!(with_flags.state_dir, PathBuf::from("/tmp/tyrd-from-env"), "the environment still wins over the file");
    assert_eq!(with_flags.token.as_ref().map(Secret::expose), Some("tokid.flagsecret"));
    assert_eq!(with_flags.unregistered_agents, UnregisteredAgents::Audit);
    assert!(with_flags.reenroll);
    assert!(!format!("{with_flags:?}").contains("flagsecret"), "the token never shows in Debug");
}

#[test]
fn unknown_keys_and_bad_values_name_the_file_and_key() {
    let path = write("server = \"https://tyr.example:7700\"\nspool_max_megabytes = 5\n");
    let error = DaemonConfig::load(Some(&path), env(&[]), ConfigOverrides::default()).expect_err("unknown key");
    let message = error.to_string();
    assert!(matches!(error, ConfigError::Parse { .. }));
    assert!(message.contains(&path.display().to_string()) && message.contains("spool_max_megabytes"), "{message}");

    let path = write("server = \"https://tyr.example:7700\"\nunregistered_agents = \"maybe\"\n");
    let message = DaemonConfig::load(Some(&path), env(&[]), ConfigOverrides::default()).expect_err("bad").to_string();
    assert!(message.contains("unregistered_agents") && message.contains("maybe"), "{message}");

    let path = write("server = \"https://tyr.example:7700\"\n");
    let error = DaemonConfig::load(Some(&path), env(&[(ENV_SPOOL_MAX_MB, "lots")]), ConfigOverrides::default())
        .expect_err("bad env");
    assert!(error.to_string().contains("TYR_SPOOL_MAX_MB"), "{error}");

    let path = write("server = \"http://tyr.example:7700\"\n");
    let error = DaemonConfig::load(Some(&path), env(&[]), ConfigOverrides::default()).expect_err("plain http");
    assert!(matches!(error, ConfigError::Invalid { key: "server", .. }), "{error}");

    let path = write("server = \"https://tyr.example:7700\"\nca_pin = \"sha256:abc\"\n");
    let error = DaemonConfig::load(Some(&path), env(&[]), ConfigOverrides::default()).expect_err("bad pin");
    assert!(matches!(error, ConfigError::Invalid { key: "ca_pin", .. }), "{error}");
}

#[test]
fn batch_max_events_is_capped_at_the_wire_limit() {
    let max = tyr_proto::limits::MAX_EVENTS_PER_BATCH;
    let path = write(&format!("server = \"https://tyr.example:7700\"\nbatch_max_events = {max}\n"));
    let config =
        DaemonConfig::load(Some(&path), env(&[]), ConfigOverrides::default()).expect("the limit itself is fine");
    assert_eq!(config.batch_max_events as usize, max);

    let path = write(&format!("server = \"https://tyr.example:7700\"\nbatch_max_events = {}\n", max + 1));
    let error = DaemonConfig::load(Some(&path), env(&[]), ConfigOverrides::default()).expect_err("above the limit");
    assert!(matches!(error, ConfigError::Invalid { key: "batch_max_events", .. }), "{error}");
    assert!(error.to_string().contains(&max.to_string()), "the message names the limit: {error}");

    let path = write("server = \"https://tyr.example:7700\"\n");
    let flags = ConfigOverrides { batch_max_events: Some(100_000), ..ConfigOverrides::default() };
    let error = DaemonConfig::load(Some(&path), env(&[]), flags).expect_err("a flag above the limit");
    assert!(matches!(error, ConfigError::Invalid { key: "batch_max_events", .. }), "{error}");
    let error = DaemonConfig::load(Some(&path), env(&[(ENV_BATCH_MAX_EVENTS, "0")]), ConfigOverrides::default())
        .expect_err("zero");
    assert!(matches!(error, ConfigError::Invalid { key: "batch_max_events", .. }), "{error}");
}

#[test]
fn an_explicit_missing_file_is_an_error_and_the_name_defaults_to_the_hostname() {
    let missing = scratch_dir("tyrd-config-missing").join("nope.toml");
    let error = DaemonConfig::load(Some(&missing), env(&[]), ConfigOverrides::default()).expect_err("missing");
    assert!(matches!(error, ConfigError::Read { .. }), "{error}");

    let path = write("server = \"https://127.0.0.1:7700\"\n");
    let config = DaemonConfig::load(Some(&path), env(&[]), ConfigOverrides::default()).expect("loads");
    assert_eq!(config.name, Some(tyr_agent::config::hostname()));
    assert_eq!(config.heartbeat_interval_s, 30);
    assert_eq!(config.spool_max_mb, 1024);
}
