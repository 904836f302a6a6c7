//! Administrative commands for enrollment until the REST API lands: create,
//! list and delete enrollment tokens; list and delete (revoke) daemons. Data
//! goes to stdout as JSON, hints to stderr.

use std::io::Write;
use std::net::IpAddr;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

use crate::config::{ControlDbConfig, IdentityConfig};
use crate::control_db::audit::Actor;
use crate::control_db::{self, daemons, tokens};
use crate::identity::CertificateAuthority;

/// The gRPC port daemons connect to unless configured otherwise.
const DEFAULT_GRPC_PORT: u16 = 7700;

/// What `token create` prints: the only time the token text is shown.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreatedTokenView {
    /// The token's id.
    pub id: Uuid,
    /// The full token, `<id>.<secret>`.
    pub token: String,
    /// Pin of the server CA a new host checks (`sha256:<hex>`).
    pub ca_pin: String,
    /// When the token stops being accepted (RFC 3339).
    pub expires_at: String,
    /// How many daemons may enroll with it.
    pub max_uses: u32,
}

/// A token as `token list` prints it (never its secret or hash).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TokenView {
    /// The token's id.
    pub id: Uuid,
    /// What the operator wrote about it.
    pub description: String,
    /// When it was created (RFC 3339).
    pub created_at: String,
    /// When it stops being accepted (RFC 3339).
    pub expires_at: String,
    /// How many daemons may enroll with it.
    pub max_uses: i32,
    /// How many have.
    pub uses: i32,
    /// `active`, `expired` or `exhausted`.
    pub state: &'static str,
}

/// A daemon as `daemon list` prints it.
#[derive(Debug, Serialize)]
pub struct DaemonView {
    /// The daemon id.
    pub id: Uuid,
    /// Host name.
    pub name: String,
    /// Kernel release.
    pub kernel_version: String,
    /// CPU architecture.
    pub arch: String,
    /// When it enrolled (RFC 3339).
    pub enrolled_at: String,
    /// Its last heartbeat (RFC 3339), if any.
    pub last_seen_at: Option<String>,
    /// When its client certificate expires (RFC 3339).
    pub cert_not_after: String,
    /// Policy version it reported installed.
    pub applied_policy_version: i64,
    /// Events in its disk spool at the last heartbeat.
    pub spooled_events: i64,
    /// Drop counters of the last heartbeat.
    pub drops: serde_json::Value,
    /// Sequence numbers the server never received from it.
    pub seq_gap_events: i64,
    /// Its last capability report.
    pub capabilities: serde_json::Value,
}

fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_else(|_| at.to_string())
}

impl From<tokens::TokenInfo> for TokenView {
    fn from(token: tokens::TokenInfo) -> Self {
        Self {
            id: token.id,
            description: token.description,
            created_at: rfc3339(token.created_at),
            expires_at: rfc3339(token.expires_at),
            max_uses: token.max_uses,
            uses: token.uses,
            state: token.state.as_str(),
        }
    }
}

impl From<daemons::DaemonSummary> for DaemonView {
    fn from(daemon: daemons::DaemonSummary) -> Self {
        Self {
            id: daemon.id,
            name: daemon.name,
            kernel_version: daemon.kernel_version,
            arch: daemon.arch,
            enrolled_at: rfc3339(daemon.enrolled_at),
            last_seen_at: daemon.last_seen_at.map(rfc3339),
            cert_not_after: rfc3339(daemon.cert_not_after),
            applied_policy_version: daemon.applied_policy_version,
            spooled_events: daemon.spooled_events,
            drops: daemon.drops,
            seq_gap_events: daemon.seq_gap_events,
            capabilities: daemon.capabilities,
        }
    }
}

/// Prints `value` as pretty JSON on stdout; a closed pipe is not an error.
/// (Every `tyr-server` admin subcommand prints its data through this.)
pub(crate) fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let written = serde_json::to_writer_pretty(&mut out, value)
        .map_err(std::io::Error::from)
        .and_then(|()| writeln!(out))
        .and_then(|()| out.flush());
    match written {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => Err(error).context("writing to stdout"),
        _ => Ok(()),
    }
}

/// Creates a token (migrating the database and making the CA first if this
/// is the first command ever run) and returns what to print.
pub async fn create_token(
    control_db_config: &ControlDbConfig,
    identity: &IdentityConfig,
    expires_hours: u32,
    max_uses: u32,
    description: &str,
) -> anyhow::Result<CreatedTokenView> {
    let data_dir = identity.data_dir.clone();
    let names = identity.tls_names.clone();
    let ca = tokio::task::spawn_blocking(move || CertificateAuthority::load_or_create(&data_dir, &names))
        .await?
        .with_context(|| format!("loading the server CA from {}", identity.data_dir.display()))?;
    let pool = control_db::connect(control_db_config).await?;
    control_db::migrate(&pool).await.context("migrating the control database")?;
    let lifetime = Duration::from_secs(u64::from(expires_hours) * 3600);
    let created = tokens::create(&pool, &Actor::local_admin(), lifetime, max_uses, description).await;
    pool.close().await;
    let created = created.context("creating the enrollment token")?;
    Ok(CreatedTokenView::new(created, &ca))
}

impl CreatedTokenView {
    /// What to show of a token just created (with the pin new hosts check).
    pub fn new(created: tokens::CreatedToken, ca: &CertificateAuthority) -> Self {
        Self {
            id: created.id,
            token: created.token,
            ca_pin: ca.ca_pin(),
            expires_at: rfc3339(created.expires_at),
            max_uses: created.max_uses,
        }
    }
}

/// `tyr-server token create`: prints the token and CA pin as JSON on stdout,
/// and how to use them on stderr.
pub async fn token_create(
    control_db_config: &ControlDbConfig,
    identity: &IdentityConfig,
    expires_hours: u32,
    max_uses: u32,
    description: &str,
) -> anyhow::Result<()> {
    let created = create_token(control_db_config, identity, expires_hours, max_uses, description).await?;
    print_json(&created)?;
    eprintln!(
        "enroll a host with (TOKEN is the \"token\" above, shown only once):\n  \
         tyrd run --server https://{}:{DEFAULT_GRPC_PORT} --token TOKEN --ca-pin {}",
        hint_host(&identity.tls_names),
        created.ca_pin
    );
    Ok(())
}

/// The name to suggest in the hint: the first configured name that is not
/// a loopback address or `localhost`, else `localhost`.
fn hint_host(names: &[String]) -> String {
    let remote = names.iter().map(|n| n.trim()).find(|name| match name.parse::<IpAddr>() {
        Ok(ip) => !ip.is_loopback(),
        Err(_) => !name.is_empty() && !name.eq_ignore_ascii_case("localhost"),
    });
    match remote {
        Some(name) if name.contains(':') => format!("[{name}]"),
        Some(name) => name.to_owned(),
        None => "localhost".to_owned(),
    }
}

/// `tyr-server token list`: every token as a JSON array, never secrets.
pub async fn token_list(control_db_config: &ControlDbConfig) -> anyhow::Result<()> {
    let pool = control_db::connect(control_db_config).await?;
    let listed = tokens::list(&pool).await;
    pool.close().await;
    let views: Vec<TokenView> = listed.context("listing enrollment tokens")?.into_iter().map(Into::into).collect();
    print_json(&views)
}

/// `tyr-server token delete ID`: `false` (exit 1) when there is no such token.
pub async fn token_delete(control_db_config: &ControlDbConfig, id: Uuid) -> anyhow::Result<bool> {
    let pool = control_db::connect(control_db_config).await?;
    let deleted = tokens::delete(&pool, &Actor::local_admin(), id).await;
    pool.close().await;
    let deleted = deleted.context("deleting the enrollment token")?;
    if !deleted {
        eprintln!("tyr-server: no enrollment token {id}");
    }
    Ok(deleted)
}

/// `tyr-server daemon list`: every enrolled daemon as a JSON array.
pub async fn daemon_list(control_db_config: &ControlDbConfig) -> anyhow::Result<()> {
    let pool = control_db::connect(control_db_config).await?;
    let listed = daemons::list(&pool).await;
    pool.close().await;
    let views: Vec<DaemonView> = listed.context("listing daemons")?.into_iter().map(Into::into).collect();
    print_json(&views)
}

/// `tyr-server daemon delete ID`: revokes the daemon (its live stream is
/// closed, its certificate refused); `false` (exit 1) when there is none.
pub async fn daemon_delete(control_db_config: &ControlDbConfig, id: Uuid) -> anyhow::Result<bool> {
    let pool = control_db::connect(control_db_config).await?;
    let deleted = daemons::delete(&pool, &Actor::local_admin(), id).await;
    pool.close().await;
    let deleted = deleted.context("deleting the daemon")?;
    if !deleted {
        eprintln!("tyr-server: no daemon {id}");
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hint_prefers_a_remote_name() {
        let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(hint_host(&names(&["localhost", "127.0.0.1", "::1"])), "localhost");
        assert_eq!(hint_host(&names(&["localhost", "127.0.0.1", "tyr.example.com"])), "tyr.example.com");
        assert_eq!(hint_host(&names(&["::1", "fd00::1"])), "[fd00::1]");
    }
}
