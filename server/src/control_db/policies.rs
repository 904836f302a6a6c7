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
use sqlx::{PgConnection, PgPool};
use tyr_common::policy::compile::bytes::LAYOUT_VERSION;
use tyr_common::policy::unregistered::{Restriction, with_unregistered};
use tyr_common::policy::{PolicyErrors, PolicySet, Rule, compile, parse_policy, to_cedar, to_yaml_verified};
use uuid::Uuid;

use super::audit::Actor;
use super::policy_catalog::{self, Scope, valid_name};

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
    #[error("no policy named {0:?}")]
    NotFound(String),
    #[error("policy {name:?} is still assigned ({assignments} assignments); unassign it first")]
    StillAssigned { name: String, assignments: i64 },
    #[error("{0}")]
    NotAssigned(String),
    #[error("unknown agent type {0:?}: a type of the known-agent table, or unknown")]
    InvalidAgentType(String),
    #[error("description is longer than 1024 characters")]
    InvalidDescription,
    #[error("policy {0:?} has overlays of its own; an overlay assignment takes a document's top-level rules only")]
    NestedOverlay(String),
    #[error("composed policy cannot be written: {0}")]
    Composition(#[from] tyr_common::policy::EmitError),
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

/// Validates `yaml` (as `tyrd policy check` does, kernel limits included),
/// stores it under `name` (a new version when the document changed), makes
/// it the base policy of `daemon` (the fleet when None), and tells every
/// server replica that effective policies changed: one transaction, audited
/// as the server's local administrator (`tyr-server policy set`).
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
    let actor = Actor::local_admin();
    let mut tx = pool.begin().await?;
    let applied = policy_catalog::apply_on(&mut tx, &actor, name, yaml, "").await?;
    policy_catalog::assign_on(&mut tx, &actor, name, &Scope::Base, daemon).await?;
    tx.commit().await?;
    Ok(StoredPolicy { id: applied.id, name: applied.name, version: applied.version, daemon_id: daemon })
}

/// The rules an overlay assignment of `document` contributes: its top-level
/// rules (its default verdict does not apply; the base's does).
pub fn compose_overlay_rules(name: &str, document: &PolicySet) -> Result<Vec<Rule>, PolicyStoreError> {
    if !document.overlays.is_empty() {
        return Err(PolicyStoreError::NestedOverlay(name.to_owned()));
    }
    Ok(document.base.rules.clone())
}

/// Overlay assignments that apply to `daemon`, one per agent type (its own
/// before the fleet's): (agent type, policy id, version, name, document).
async fn assigned_overlays(
    conn: &mut PgConnection,
    daemon: Option<Uuid>,
) -> Result<Vec<(String, Uuid, i64, String, String)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT DISTINCT ON (a.agent_type) a.agent_type, p.id, p.version, p.name, p.source_yaml
           FROM policy_assignments a JOIN policies p ON p.id = a.policy_id
          WHERE a.scope = 'overlay' AND (a.daemon_id = $1 OR a.daemon_id IS NULL)
          ORDER BY a.agent_type, a.daemon_id NULLS LAST",
    )
    .bind(daemon)
    .fetch_all(conn)
    .await
}

/// The base policy that applies to `daemon` (its own, else the fleet's;
/// None: the fleet's own): (policy id, name, version, document).
async fn assigned_base(
    conn: &mut PgConnection,
    daemon: Option<Uuid>,
) -> Result<Option<(Uuid, String, i64, String)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT p.id, p.name, p.version, p.source_yaml
           FROM policy_assignments a JOIN policies p ON p.id = a.policy_id
          WHERE a.scope = 'base' AND (a.daemon_id = $1 OR a.daemon_id IS NULL)
          ORDER BY a.daemon_id NULLS LAST
          LIMIT 1",
    )
    .bind(daemon)
    .fetch_optional(conn)
    .await
}

/// A policy composed from the assignments of a daemon (or of the fleet).
#[derive(Debug)]
pub(crate) struct Composed {
    /// The base policy's name; None when no base is assigned.
    pub base_name: Option<String>,
    /// The composed set (before any unregistered-agents restriction).
    pub set: PolicySet,
    /// The composed document, as tyrd receives and recompiles it.
    pub yaml: String,
    /// What it was composed from (ids and versions), for the inputs hash.
    pub inputs: String,
}

/// Composes the base policy of `daemon` (the fleet when None) with the
/// overlays assigned to it.
pub(crate) async fn compose(conn: &mut PgConnection, daemon: Option<Uuid>) -> Result<Composed, PolicyStoreError> {
    let base = assigned_base(&mut *conn, daemon).await?;
    let (base_name, mut yaml, mut inputs) = match &base {
        Some((id, name, version, yaml)) => (Some(name.clone()), yaml.clone(), format!("{id}:{version}")),
        None => (None, NO_POLICY_YAML.to_owned(), "none".to_owned()),
    };
    let mut set = parse_policy(base_name.as_deref().unwrap_or("no-policy"), &yaml)?;
    let overlays = assigned_overlays(&mut *conn, daemon).await?;
    for (agent_type, id, version, name, document) in &overlays {
        // Assigned overlay rules come before the base document's own overlay
        // rules for the type, which come before the base rules.
        let rules = compose_overlay_rules(name, &parse_policy(name, document)?)?;
        let existing = set.overlays.remove(agent_type).unwrap_or_default();
        set.overlays.insert(agent_type.clone(), rules.into_iter().chain(existing).collect());
        inputs.push_str(&format!("|{agent_type}={id}:{version}"));
    }
    if !overlays.is_empty() {
        // tyrd recompiles the pushed document: it must be the composed one.
        yaml = to_yaml_verified(&set)?;
    }
    Ok(Composed { base_name, set, yaml, inputs })
}

/// Checks that every composition the assignments make — the fleet's and
/// each daemon's with assignments of its own — composes and compiles for
/// the kernel, so that a change that would leave daemons without a
/// computable policy is refused before it commits.
pub(crate) async fn check_compositions(conn: &mut PgConnection) -> Result<(), PolicyStoreError> {
    let daemons: Vec<Uuid> =
        sqlx::query_scalar("SELECT DISTINCT daemon_id FROM policy_assignments WHERE daemon_id IS NOT NULL")
            .fetch_all(&mut *conn)
            .await?;
    for daemon in std::iter::once(None).chain(daemons.into_iter().map(Some)) {
        let composed = compose(&mut *conn, daemon).await?;
        compile(&composed.set, 1)?;
    }
    Ok(())
}

/// Computes `daemon`'s effective policy, drawing a new version only when
/// its inputs changed since the last one.
pub async fn effective_for(pool: &PgPool, daemon: Uuid) -> Result<EffectivePolicy, PolicyStoreError> {
    let mode: Option<String> = sqlx::query_scalar("SELECT unregistered_agents FROM daemons WHERE id = $1")
        .bind(daemon)
        .fetch_optional(pool)
        .await?;
    let mode = mode.ok_or(PolicyStoreError::NoSuchDaemon(daemon))?;
    let Composed { base_name, set, yaml, inputs } = compose(&mut *pool.acquire().await?, Some(daemon)).await?;
    let mut set = set;
    let inputs_hash = hex::encode(Sha256::digest(format!("{inputs}|{mode}|layout {LAYOUT_VERSION}")));

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

/// The newest effective policy computed (and pushed) for `daemon`:
/// (version, document, Cedar text, when it was computed).
pub async fn latest_effective(
    pool: &PgPool,
    daemon: Uuid,
) -> Result<Option<(i64, String, String, time::OffsetDateTime)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT version, policy_yaml, cedar_text, created_at FROM effective_policies
          WHERE daemon_id = $1 ORDER BY version DESC LIMIT 1",
    )
    .bind(daemon)
    .fetch_optional(pool)
    .await
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
