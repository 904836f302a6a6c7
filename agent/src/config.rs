//! `tyrd run`'s configuration: `/etc/tyr/tyrd.toml`, then `TYR_*`
//! environment overrides, then command-line flags (flags win).
//!
//! A missing default file is fine (a host may be configured by flags and
//! environment alone); a missing file named by `--config` is an error. A
//! malformed file names the file and the key. The enrollment token is only
//! ever held in a [`Secret`], whose `Debug` never shows it.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use tyr_proto::limits::MAX_EVENTS_PER_BATCH;
use zeroize::Zeroize;

use crate::detect::tracker::UnregisteredAgents;
use crate::redact::REDACTED;

/// Where the configuration file is looked for without `--config`.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/tyr/tyrd.toml";
/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/tyrd";

/// Overrides `server`.
pub const ENV_SERVER: &str = "TYR_SERVER";
/// Overrides `token`.
pub const ENV_TOKEN: &str = "TYR_TOKEN";
/// Overrides `ca_pin`.
pub const ENV_CA_PIN: &str = "TYR_CA_PIN";
/// Overrides `ca_file`.
pub const ENV_CA_FILE: &str = "TYR_CA_FILE";
/// Overrides `name`.
pub const ENV_NAME: &str = "TYR_NAME";
/// Overrides `state_dir`.
pub const ENV_STATE_DIR: &str = "TYR_STATE_DIR";
/// Overrides `spool_max_mb`.
pub const ENV_SPOOL_MAX_MB: &str = "TYR_SPOOL_MAX_MB";
/// Overrides `batch_max_events`.
pub const ENV_BATCH_MAX_EVENTS: &str = "TYR_BATCH_MAX_EVENTS";
/// Overrides `batch_max_ms`.
pub const ENV_BATCH_MAX_MS: &str = "TYR_BATCH_MAX_MS";
/// Overrides `heartbeat_interval_s`.
pub const ENV_HEARTBEAT_INTERVAL_S: &str = "TYR_HEARTBEAT_INTERVAL_S";
/// Overrides `unregistered_agents`.
pub const ENV_UNREGISTERED_AGENTS: &str = "TYR_UNREGISTERED_AGENTS";
/// Overrides `tls_capture`.
pub const ENV_TLS_CAPTURE: &str = "TYR_TLS_CAPTURE";
/// Overrides `metrics_addr` (`TYRD_`: tyr-server's is `TYR_METRICS_ADDR`,
/// and both may run on one host).
pub const ENV_METRICS_ADDR: &str = "TYRD_METRICS_ADDR";

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file named by `--config` could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The configuration file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has a bad or unknown key (the TOML
    /// error names the key and the line).
    #[error("{path}: {message}")]
    Parse {
        /// The configuration file.
        path: PathBuf,
        /// The parser's description, naming the key.
        message: String,
    },
    /// An environment override has a value its key does not take.
    #[error("environment variable {var}: {message}")]
    Env {
        /// The variable.
        var: &'static str,
        /// What is wrong with its value.
        message: String,
    },
    /// The merged configuration is not usable.
    #[error("configuration key {key}: {message}")]
    Invalid {
        /// The key at fault.
        key: &'static str,
        /// What is wrong with it.
        message: String,
    },
}

/// A secret string (the enrollment token, a private key's PEM): `Debug`
/// and `Display` print [`REDACTED`], and the bytes are wiped when it is
/// dropped.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({REDACTED})")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// For command-line flags (`--token`), parsed straight into a `Secret`.
impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Ok(Self::new(value))
    }
}

/// tyrd's configuration for `tyrd run`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// The server's gRPC address, `https://host:7700`.
    pub server: Option<String>,
    /// Enrollment token (`<id>.<secret>`), needed on first boot only (or to
    /// re-enroll); never logged.
    pub token: Option<Secret>,
    /// Pin of the server CA, `sha256:<hex>` of its certificate (DER), as
    /// `tyr-server token create` prints it.
    pub ca_pin: Option<String>,
    /// The server CA's PEM file: an alternative to `ca_pin`.
    pub ca_file: Option<PathBuf>,
    /// This host's name in the fleet (default: the hostname).
    pub name: Option<String>,
    /// Directory for tyrd's identity, spool and state.
    pub state_dir: PathBuf,
    /// Most MiB the disk spool of unacknowledged batches holds; the oldest
    /// batches are evicted (and counted) past it.
    pub spool_max_mb: u64,
    /// Events per batch.
    pub batch_max_events: u32,
    /// Longest a batch waits for more events, in milliseconds.
    pub batch_max_ms: u64,
    /// Seconds between heartbeats (the server may change it).
    pub heartbeat_interval_s: u64,
    /// What happens to unregistered agents: audit, quarantine or deny.
    #[serde(deserialize_with = "deserialize_unregistered")]
    pub unregistered_agents: UnregisteredAgents,
    /// Capture TLS ClientHello (SNI) records.
    pub tls_capture: bool,
    /// Where to serve Prometheus `/metrics` (plain HTTP), e.g.
    /// `127.0.0.1:7703`; none (the default): no listener at all.
    pub metrics_addr: Option<SocketAddr>,
    /// Enroll again with a new key even when an identity exists (flag
    /// `--reenroll` only, never in the file).
    #[serde(skip)]
    pub reenroll: bool,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            server: None,
            token: None,
            ca_pin: None,
            ca_file: None,
            name: None,
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            spool_max_mb: 1024,
            batch_max_events: 100,
            batch_max_ms: 1000,
            heartbeat_interval_s: 30,
            unregistered_agents: UnregisteredAgents::Audit,
            tls_capture: true,
            metrics_addr: None,
            reenroll: false,
        }
    }
}

/// What the command line sets; `None` leaves the file and environment value.
#[derive(Debug, Clone, Default)]
pub struct ConfigOverrides {
    /// `--server`.
    pub server: Option<String>,
    /// `--token`.
    pub token: Option<Secret>,
    /// `--ca-pin`.
    pub ca_pin: Option<String>,
    /// `--ca-file`.
    pub ca_file: Option<PathBuf>,
    /// `--name`.
    pub name: Option<String>,
    /// `--state-dir`.
    pub state_dir: Option<PathBuf>,
    /// `--spool-max-mb`.
    pub spool_max_mb: Option<u64>,
    /// `--batch-max-events`.
    pub batch_max_events: Option<u32>,
    /// `--batch-max-ms`.
    pub batch_max_ms: Option<u64>,
    /// `--heartbeat-interval-s`.
    pub heartbeat_interval_s: Option<u64>,
    /// `--unregistered-agents`.
    pub unregistered_agents: Option<UnregisteredAgents>,
    /// `--tls-capture`.
    pub tls_capture: Option<bool>,
    /// `--metrics-addr`.
    pub metrics_addr: Option<SocketAddr>,
    /// `--reenroll`.
    pub reenroll: bool,
}

fn parse_unregistered(value: &str) -> Result<UnregisteredAgents, String> {
    <UnregisteredAgents as clap::ValueEnum>::from_str(value, false)
        .map_err(|_| format!("{value:?} is not one of audit, quarantine, deny"))
}

fn deserialize_unregistered<'de, D: Deserializer<'de>>(deserializer: D) -> Result<UnregisteredAgents, D::Error> {
    let value = String::deserialize(deserializer)?;
    parse_unregistered(&value).map_err(serde::de::Error::custom)
}

fn parse_env<T: std::str::FromStr>(var: &'static str, value: &str) -> Result<T, ConfigError>
where
    T::Err: fmt::Display,
{
    value.trim().parse().map_err(|error: T::Err| ConfigError::Env { var, message: error.to_string() })
}

/// The hostname (`/proc/sys/kernel/hostname`), or `localhost`.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

impl DaemonConfig {
    /// Loads the configuration: `path` (or [`DEFAULT_CONFIG_PATH`] when
    /// `None`, which may be missing), then the environment as `env` reads
    /// it, then `overrides`; fills the name and validates.
    pub fn load(
        path: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
        overrides: ConfigOverrides,
    ) -> Result<Self, ConfigError> {
        let mut config = match path {
            Some(path) => Self::from_file(path)?,
            None => {
                let default = Path::new(DEFAULT_CONFIG_PATH);
                if default.exists() { Self::from_file(default)? } else { Self::default() }
            }
        };
        config.apply_env(env)?;
        config.apply_overrides(overrides);
        if config.name.as_deref().is_none_or(str::is_empty) {
            config.name = Some(hostname());
        }
        config.validate()?;
        Ok(config)
    }

    /// Reads and parses one TOML file (unknown keys are refused).
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::from_toml(path, &text)
    }

    /// Parses TOML text read from `path`.
    pub fn from_toml(path: &Path, text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|error| ConfigError::Parse {
            path: path.to_owned(),
            message: error.to_string().trim_end().to_owned(),
        })
    }

    /// Applies the `TYR_*` variables `env` returns.
    pub fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let get = |var: &str| env(var).filter(|v| !v.is_empty());
        if let Some(v) = get(ENV_SERVER) {
            self.server = Some(v);
        }
        if let Some(v) = get(ENV_TOKEN) {
            self.token = Some(Secret::new(v));
        }
        if let Some(v) = get(ENV_CA_PIN) {
            self.ca_pin = Some(v);
        }
        if let Some(v) = get(ENV_CA_FILE) {
            self.ca_file = Some(PathBuf::from(v));
        }
        if let Some(v) = get(ENV_NAME) {
            self.name = Some(v);
        }
        if let Some(v) = get(ENV_STATE_DIR) {
            self.state_dir = PathBuf::from(v);
        }
        if let Some(v) = get(ENV_SPOOL_MAX_MB) {
            self.spool_max_mb = parse_env(ENV_SPOOL_MAX_MB, &v)?;
        }
        if let Some(v) = get(ENV_BATCH_MAX_EVENTS) {
            self.batch_max_events = parse_env(ENV_BATCH_MAX_EVENTS, &v)?;
        }
        if let Some(v) = get(ENV_BATCH_MAX_MS) {
            self.batch_max_ms = parse_env(ENV_BATCH_MAX_MS, &v)?;
        }
        if let Some(v) = get(ENV_HEARTBEAT_INTERVAL_S) {
            self.heartbeat_interval_s = parse_env(ENV_HEARTBEAT_INTERVAL_S, &v)?;
        }
        if let Some(v) = get(ENV_UNREGISTERED_AGENTS) {
            self.unregistered_agents = parse_unregistered(v.trim())
                .map_err(|message| ConfigError::Env { var: ENV_UNREGISTERED_AGENTS, message })?;
        }
        if let Some(v) = get(ENV_TLS_CAPTURE) {
            self.tls_capture = parse_env(ENV_TLS_CAPTURE, &v)?;
        }
        if let Some(v) = get(ENV_METRICS_ADDR) {
            self.metrics_addr = Some(parse_env(ENV_METRICS_ADDR, &v)?);
        }
        Ok(())
    }

    /// Applies the command line (flags win over everything).
    pub fn apply_overrides(&mut self, o: ConfigOverrides) {
        self.server = o.server.or(self.server.take());
        self.token = o.token.or(self.token.take());
        self.ca_pin = o.ca_pin.or(self.ca_pin.take());
        self.ca_file = o.ca_file.or(self.ca_file.take());
        self.name = o.name.or(self.name.take());
        if let Some(v) = o.state_dir {
            self.state_dir = v;
        }
        self.spool_max_mb = o.spool_max_mb.unwrap_or(self.spool_max_mb);
        self.batch_max_events = o.batch_max_events.unwrap_or(self.batch_max_events);
        self.batch_max_ms = o.batch_max_ms.unwrap_or(self.batch_max_ms);
        self.heartbeat_interval_s = o.heartbeat_interval_s.unwrap_or(self.heartbeat_interval_s);
        self.unregistered_agents = o.unregistered_agents.unwrap_or(self.unregistered_agents);
        self.tls_capture = o.tls_capture.unwrap_or(self.tls_capture);
        self.metrics_addr = o.metrics_addr.or(self.metrics_addr);
        self.reenroll |= o.reenroll;
    }

    /// Checks the merged values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, message: &str| Err(ConfigError::Invalid { key, message: message.to_owned() });
        match self.server.as_deref() {
            None | Some("") => return invalid("server", "missing (e.g. server = \"https://tyr.example:7700\")"),
            Some(server) if !server.starts_with("https://") => {
                return invalid("server", "must be an https:// address (tyrd only speaks TLS)");
            }
            Some(_) => {}
        }
        if let Some(pin) = &self.ca_pin
            && crate::client::trust::parse_pin(pin).is_err()
        {
            return invalid("ca_pin", "must be sha256:<64 hex digits>");
        }
        if self.spool_max_mb == 0 {
            return invalid("spool_max_mb", "must be at least 1");
        }
        let max_events = u32::try_from(MAX_EVENTS_PER_BATCH).unwrap_or(u32::MAX);
        if !(1..=max_events).contains(&self.batch_max_events) {
            return Err(ConfigError::Invalid {
                key: "batch_max_events",
                message: format!("must be between 1 and {max_events} (the server refuses longer batches)"),
            });
        }
        if !(1..=60_000).contains(&self.batch_max_ms) {
            return invalid("batch_max_ms", "must be between 1 and 60000");
        }
        if !(1..=86_400).contains(&self.heartbeat_interval_s) {
            return invalid("heartbeat_interval_s", "must be between 1 and 86400");
        }
        Ok(())
    }

    /// `heartbeat_interval_s` as a duration.
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_secs(self.heartbeat_interval_s)
    }

    /// The spool's bound in bytes.
    pub fn spool_max_bytes(&self) -> u64 {
        self.spool_max_mb.saturating_mul(1 << 20)
    }

    /// The name this host enrolls under.
    pub fn host_name(&self) -> String {
        self.name.clone().filter(|n| !n.is_empty()).unwrap_or_else(hostname)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(toml: &str, env: &[(&str, &str)], flags: ConfigOverrides) -> Result<DaemonConfig, ConfigError> {
        let mut config = DaemonConfig::from_toml(Path::new("tyrd.toml"), toml)?;
        config.apply_env(|key| env.iter().find(|(k, _)| *k == key).map(|(_, v)| (*v).to_owned()))?;
        config.apply_overrides(flags);
        Ok(config)
    }

    #[test]
    fn metrics_are_off_unless_an_address_is_given_and_flags_win() {
        let server = "server = \"https://tyr.example:7700\"\n";
        assert_eq!(DaemonConfig::default().metrics_addr, None, "no listener by default");
        assert_eq!(load(server, &[], ConfigOverrides::default()).expect("loads").metrics_addr, None);

        let file = format!("{server}metrics_addr = \"127.0.0.1:7703\"\n");
        let from_file = load(&file, &[], ConfigOverrides::default()).expect("loads");
        assert_eq!(from_file.metrics_addr, Some("127.0.0.1:7703".parse().expect("address")));
        let from_env = load(&file, &[(ENV_METRICS_ADDR, "0.0.0.0:9000")], ConfigOverrides::default()).expect("loads");
        assert_eq!(from_env.metrics_addr, Some("0.0.0.0:9000".parse().expect("address")));
        let flags =
            ConfigOverrides { metrics_addr: Some("[::1]:9001".parse().expect("address")), ..Default::default() };
        let from_flag = load(&file, &[(ENV_METRICS_ADDR, "0.0.0.0:9000")], flags).expect("loads");
        assert_eq!(from_flag.metrics_addr, Some("[::1]:9001".parse().expect("address")));

        let error = load(server, &[(ENV_METRICS_ADDR, "localhost")], ConfigOverrides::default()).expect_err("bad");
        assert!(error.to_string().contains(ENV_METRICS_ADDR), "{error}");
        assert!(load(&format!("{server}metrics_addr = 7703\n"), &[], ConfigOverrides::default()).is_err());
    }

    #[test]
    fn the_token_never_shows_in_debug_or_display() {
        let token = "tokid.supersecretvalue";
        let config = load("server = \"https://tyr.example:7700\"\n", &[(ENV_TOKEN, token)], ConfigOverrides::default())
            .expect("loads");
        assert_eq!(config.token.as_ref().map(Secret::expose), Some(token));
        let overrides = ConfigOverrides { token: Some(token.parse().expect("infallible")), ..Default::default() };
        for shown in [format!("{config:?}"), format!("{overrides:?}"), format!("{}", Secret::new(token))] {
            assert!(!shown.contains("supersecret"), "{shown}");
        }
        assert!(format!("{config:?}").contains(REDACTED));
    }
}
