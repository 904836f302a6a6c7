//! Policies and where they apply, and the effective policy of a daemon: the
//! document assigned to it (its own base, else the fleet-wide one) with the
//! unregistered-agents restriction of its configuration, compiled into
//! kernel entries and Cedar and stamped with a version.
//!
//! A version is drawn from `policy_version_seq` only when the inputs of a
//! daemon's effective policy change (daemons with the same inputs share
//! one version), and every version computed for a daemon is kept in
//! `effective_policies`: versions are monotonic per daemon, survive server
//! restarts and are the same on every replica, and drift evaluation can
//! tell a version the server sent from one it never did.

use sha2::{Digest, Sha256};
use sqlx::PgPool;
use tyr_common::policy::compile::bytes::LAYOUT_VERSION;
use tyr_common::policy::unregistered::{Restriction, with_unregistered};
use tyr_common::policy::{PolicyErrors, compile, parse_policy, to_cedar};
use uuid::Uuid;

/// PostgreSQL NOTIFY channel announcing that effective policies may have
/// changed; the payload is a daemon id, or `*` for the whole fleet.
pub const POLICY_CHANGED_CHANNEL: &str = "tyr_policy_changed";

/// The effective policy of a daemon with no policy assigned: observe
/// everything, refuse nothing.
const NO_POLICY_YAML: &str = "name: no-policy\ndefault_verdict: allow\nrules: []\n";

/// Why a policy could not be stored or computed.
#[derive(Debug, thiserror::Error)]
pub enum PolicyStoreError {
    #[error("policy is not valid:\n{0}")]
    Invalid(PolicyErrors),
    #[error("policy cannot be compiled for the kernel: {0}")]
    Uncompilable(#[from] tyr_common::policy::CompileError),
    #[error("invalid policy name {0:?}: letters, digits, '_', '.', '-' (at most 128, starting with a letter or digit)")]
    InvalidName(String),
    #[error("no daemon {0}")]
    NoSuchDaemon(Uuid),
    #[error("PostgreSQL query failed: {0}")]
    Query(#[from] sqlx::Error),
}

impl From<PolicyErrors> for PolicyStoreError {
    fn from(errors: PolicyErrors) -> Self {
        Self::Invalid(errors)
    }
}

/// What `set_base` stored.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StoredPolicy {
    /// The policy's id.
    pub id: Uuid,
    /// Its name (unique).
    pub name: String,
    /// The version of this change.
    pub version: i64,
    /// The daemon it is the base policy of; None: the whole fleet.
    pub daemon_id: Option<Uuid>,
}

/// A daemon's effective policy, ready to push.
#[derive(Debug, Clone)]
pub struct EffectivePolicy {
    /// Monotonic version of this daemon's effective policy.
    pub version: i64,
    /// The document the entries were compiled from (before the
    /// unregistered-agents restriction, which tyrd adds from its
    /// configuration as the server did).
    pub policy_yaml: String,
    /// Cedar text of the effective policy (restriction included).
    pub cedar_text: String,
    /// Kernel entries of the effective policy (restriction included).
    pub bpf_entries: Vec<u8>,
    /// The base policy's name; None when no policy is assigned.
    pub base_name: Option<String>,
}

/// The unregistered-agents restriction a configuration mode names.
pub fn restriction_of(mode: &str) -> Option<Restriction> {
    match mode {
        "quarantine" => Some(Restriction::Quarantine),
        "deny" => Some(Restriction::Deny),
        _ => None,
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && name.len() <= 128
}

/// Validates `yaml` (as `tyrd policy check` does, kernel limits included),
/// stores it under `name` (a new version when the name exists), makes it the
/// base policy of `daemon` (the fleet when None), and tells every server
/// replica that effective policies changed.
pub async fn set_base(
    pool: &PgPool,
    name: &str,
    yaml: &str,
    daemon: Option<Uuid>,
) -> Result<StoredPolicy, PolicyStoreError> {
    if !valid_name(name) {
        return Err(PolicyStoreError::InvalidName(name.to_owned()));
    }
    let set = parse_policy(name, yaml)?;
    compile(&set, 1)?;
    let mut tx = pool.begin().await?;
    if let Some(id) = daemon {
        let exists: Option<Uuid> = sqlx::query_scalar("SELECT id FROM daemons WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_none() {
            return Err(PolicyStoreError::NoSuchDaemon(id));
        }
    }
    let (id, version): (Uuid, i64) = sqlx::query_as(
        "INSERT INTO policies (id, name, source_yaml) VALUES ($1, $2, $3)
         ON CONFLICT (name) DO UPDATE
           SET source_yaml = EXCLUDED.source_yaml, version = nextval('policy_version_seq'), updated_at = now()
         RETURNING id, version",
    )
    .bind(Uuid::now_v7())
    .bind(name)
    .bind(yaml)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM policy_assignments WHERE scope = 'base' AND daemon_id IS NOT DISTINCT FROM $1")
        .bind(daemon)
        .execute(&mut *tx)
        .await?;
    sqlx::query("INSERT INTO policy_assignments (id, policy_id, daemon_id, scope) VALUES ($1, $2, $3, 'base')")
        .bind(Uuid::now_v7())
        .bind(id)
        .bind(daemon)
        .execute(&mut *tx)
        .await?;
    // A changed document can be the base of daemons other than `daemon`:
    // every session re-derives its policy; unchanged inputs keep their version.
    sqlx::query("SELECT pg_notify($1, '*')").bind(POLICY_CHANGED_CHANNEL).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(StoredPolicy { id, name: name.to_owned(), version, daemon_id: daemon })
}

/// The base policy that applies to `daemon`: its own, else the fleet's.
async fn assigned_base(pool: &PgPool, daemon: Uuid) -> Result<Option<(Uuid, String, i64, String)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT p.id, p.name, p.version, p.source_yaml
           FROM policy_assignments a JOIN policies p ON p.id = a.policy_id
          WHERE a.scope = 'base' AND (a.daemon_id = $1 OR a.daemon_id IS NULL)
          ORDER BY a.daemon_id NULLS LAST
          LIMIT 1",
    )
    .bind(daemon)
    .fetch_optional(pool)
    .await
}

/// Computes `daemon`'s effective policy, drawing a new version only when
/// its inputs changed since the last one.
pub async fn effective_for(pool: &PgPool, daemon: Uuid) -> Result<EffectivePolicy, PolicyStoreError> {
    let mode: Option<String> = sqlx::query_scalar("SELECT unregistered_agents FROM daemons WHERE id = $1")
        .bind(daemon)
        .fetch_optional(pool)
        .await?;
    let mode = mode.ok_or(PolicyStoreError::NoSuchDaemon(daemon))?;
    let base = assigned_base(pool, daemon).await?;
    let (base_name, yaml, inputs) = match &base {
        Some((id, name, version, yaml)) => (Some(name.clone()), yaml.clone(), format!("{id}:{version}")),
        None => (None, NO_POLICY_YAML.to_owned(), "none".to_owned()),
    };
    let inputs_hash = hex::encode(Sha256::digest(format!("{inputs}|{mode}|layout {LAYOUT_VERSION}")));

    let mut set = parse_policy(base_name.as_deref().unwrap_or("no-policy"), &yaml)?;
    if let Some(restriction) = restriction_of(&mode) {
        set = with_unregistered(&set, restriction)?;
    }

    let mut tx = pool.begin().await?;
    // Serialises concurrent computations for one daemon (two replicas, a reconnect).
    sqlx::query("SELECT id FROM daemons WHERE id = $1 FOR UPDATE").bind(daemon).execute(&mut *tx).await?;
    let latest: Option<(i64, String)> = sqlx::query_as(
        "SELECT version, inputs_hash FROM effective_policies WHERE daemon_id = $1 ORDER BY version DESC LIMIT 1",
    )
    .bind(daemon)
    .fetch_optional(&mut *tx)
    .await?;
    let version = match latest {
        Some((version, hash)) if hash == inputs_hash => version,
        // Daemons with the same inputs share a version (one Cedar parse,
        // one cache entry for the whole fleet), unless that would take this
        // daemon's version backwards.
        latest => {
            let shared: Option<i64> =
                sqlx::query_scalar("SELECT max(version) FROM effective_policies WHERE inputs_hash = $1")
                    .bind(&inputs_hash)
                    .fetch_one(&mut *tx)
                    .await?;
            match shared {
                Some(shared) if latest.is_none_or(|(mine, _)| shared > mine) => shared,
                _ => sqlx::query_scalar("SELECT nextval('policy_version_seq')").fetch_one(&mut *tx).await?,
            }
        }
    };
    let compiled = compile(&set, version)?;
    let cedar_text = to_cedar(&set, version);
    sqlx::query(
        "INSERT INTO effective_policies (daemon_id, version, inputs_hash, policy_yaml, cedar_text)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (daemon_id, version) DO NOTHING",
    )
    .bind(daemon)
    .bind(version)
    .bind(&inputs_hash)
    .bind(&yaml)
    .bind(&cedar_text)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(EffectivePolicy { version, policy_yaml: yaml, cedar_text, bpf_entries: compiled.to_bytes(), base_name })
}

/// The Cedar text of each of the `count` newest versions pushed to `daemon`.
pub async fn recent_cedar(pool: &PgPool, daemon: Uuid, count: i64) -> Result<Vec<(i64, String)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT version, cedar_text FROM effective_policies WHERE daemon_id = $1 ORDER BY version DESC LIMIT $2",
    )
    .bind(daemon)
    .bind(count)
    .fetch_all(pool)
    .await
}

/// Every effective-policy version the server computed (and pushed) for `daemon`.
pub async fn sent_versions(pool: &PgPool, daemon: Uuid) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT version FROM effective_policies WHERE daemon_id = $1 ORDER BY version")
        .bind(daemon)
        .fetch_all(pool)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_modes() {
        assert!(valid_name("base"));
        assert!(valid_name("fleet-base.v2"));
        assert!(!valid_name(""));
        assert!(!valid_name("-x"));
        assert!(!valid_name("a b"));
        assert!(!valid_name(&"a".repeat(129)));
        assert_eq!(restriction_of("deny"), Some(Restriction::Deny));
        assert_eq!(restriction_of("audit"), None);
    }

    #[test]
    fn the_no_policy_document_parses_and_allows() {
        let set = parse_policy("no-policy", NO_POLICY_YAML).expect("built-in document");
        assert!(set.base.rules.is_empty());
        assert_eq!(set.base.default_verdict, tyr_common::policy::Verdict::Allow);
    }
}
