//! The policy catalog operators manage: documents by name with their version
//! history, and where each applies (assignments). Every change validates the
//! document as `tyrd policy check` does, is written to the audit log in the
//! same transaction, and tells every server replica (NOTIFY) so sessions
//! push the new effective policies to the daemons concerned.

use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;
use tyr_common::policy::{compile, parse_policy};
use uuid::Uuid;

use super::audit::{self, Actor, Change};
use super::policies::{POLICY_CHANGED_CHANNEL, PolicyStoreError, check_compositions, compose_overlay_rules};

/// Longest description kept with a policy.
const MAX_DESCRIPTION_CHARS: usize = 1024;

/// Where a policy applies on its target: as the base policy, or as the
/// overlay of one agent type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(tag = "scope", content = "agent_type", rename_all = "lowercase")]
pub enum Scope {
    /// The daemon's (or fleet's) base policy.
    Base,
    /// The overlay for processes of this agent type.
    Overlay(String),
}

impl Scope {
    fn parts(&self) -> (&'static str, Option<&str>) {
        match self {
            Self::Base => ("base", None),
            Self::Overlay(agent_type) => ("overlay", Some(agent_type)),
        }
    }

    fn describe(&self, daemon: Option<Uuid>) -> String {
        let target = daemon.map_or_else(|| "fleet".to_owned(), |id| format!("daemon {id}"));
        match self {
            Self::Base => format!("base of {target}"),
            Self::Overlay(agent_type) => format!("overlay for {agent_type} on {target}"),
        }
    }
}

/// A policy as listed.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct PolicySummary {
    /// The policy's id.
    pub id: Uuid,
    /// Its name (unique).
    pub name: String,
    /// What the operator wrote about it.
    pub description: String,
    /// The version of its last change.
    pub version: i64,
    /// When it was created.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    /// When it last changed.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: OffsetDateTime,
    /// How many assignments use it.
    pub assignments: i64,
}

/// Where a policy is assigned.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Assignment {
    /// The assignment's id.
    pub id: Uuid,
    /// The policy's name.
    pub policy: String,
    /// Base, or the overlay of an agent type (`scope`, and `agent_type` for an overlay).
    #[serde(flatten)]
    pub scope: Scope,
    /// The daemon it applies to; None: the whole fleet.
    pub daemon_id: Option<Uuid>,
    /// When it was made.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
}

#[derive(sqlx::FromRow)]
struct AssignmentRow {
    id: Uuid,
    policy: String,
    scope: String,
    agent_type: Option<String>,
    daemon_id: Option<Uuid>,
    created_at: OffsetDateTime,
}

impl From<AssignmentRow> for Assignment {
    fn from(row: AssignmentRow) -> Self {
        let scope = match (row.scope.as_str(), row.agent_type) {
            ("overlay", Some(agent_type)) => Scope::Overlay(agent_type),
            _ => Scope::Base,
        };
        Self { id: row.id, policy: row.policy, scope, daemon_id: row.daemon_id, created_at: row.created_at }
    }
}

/// A policy with its document and assignments.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PolicyDetail {
    /// The policy as listed.
    #[serde(flatten)]
    pub summary: PolicySummary,
    /// The document (YAML) of its current version.
    pub source_yaml: String,
    /// Where it applies.
    pub assigned: Vec<Assignment>,
}

/// One version of a policy.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct PolicyVersion {
    /// The version.
    pub version: i64,
    /// The operator who wrote it (`local-admin` for server subcommands).
    pub changed_by: String,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub changed_at: OffsetDateTime,
    /// The description given with it.
    pub description: String,
    /// The document of that version.
    pub source_yaml: String,
}

/// What `apply` stored.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AppliedPolicy {
    /// The policy's id.
    pub id: Uuid,
    /// Its name.
    pub name: String,
    /// The version of this change.
    pub version: i64,
    /// False when the document and description were already the current version (nothing changed).
    pub changed: bool,
}

macro_rules! select_summary {
    () => {
        "SELECT p.id, p.name, p.description, p.version, p.created_at, p.updated_at, \
         (SELECT count(*) FROM policy_assignments a WHERE a.policy_id = p.id) AS assignments FROM policies p"
    };
}
const LIST_POLICIES: &str =
    concat!(select_summary!(), " WHERE ($1::text IS NULL OR p.name > $1) ORDER BY p.name LIMIT $2");
const GET_POLICY: &str = concat!(select_summary!(), " WHERE p.name = $1");
const LIST_ASSIGNMENTS: &str = "SELECT a.id, p.name AS policy, a.scope, a.agent_type, a.daemon_id, a.created_at \
     FROM policy_assignments a JOIN policies p ON p.id = a.policy_id \
     WHERE ($1::text IS NULL OR p.name = $1) AND ($2::uuid IS NULL OR a.daemon_id = $2) \
     ORDER BY a.daemon_id NULLS FIRST, a.scope, a.agent_type NULLS FIRST";

/// Validates a policy name: letters, digits, `_`, `.`, `-`, at most 128, starting with a letter or digit.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && name.len() <= 128
}

fn validate(name: &str, yaml: &str, description: &str) -> Result<(), PolicyStoreError> {
    if !valid_name(name) {
        return Err(PolicyStoreError::InvalidName(name.to_owned()));
    }
    if description.chars().count() > MAX_DESCRIPTION_CHARS {
        return Err(PolicyStoreError::InvalidDescription);
    }
    let set = parse_policy(name, yaml)?;
    compile(&set, 1)?;
    Ok(())
}

async fn notify(conn: &mut PgConnection, daemon: Option<Uuid>) -> Result<(), sqlx::Error> {
    let payload = daemon.map_or_else(|| "*".to_owned(), |id| id.to_string());
    sqlx::query("SELECT pg_notify($1, $2)").bind(POLICY_CHANGED_CHANNEL).bind(payload).execute(conn).await?;
    Ok(())
}

/// Creates the policy `name` or stores a new version of it (validated as
/// `tyrd policy check` does); an unchanged document is not a new version.
pub async fn apply(
    pool: &PgPool,
    actor: &Actor,
    name: &str,
    yaml: &str,
    description: &str,
) -> Result<AppliedPolicy, PolicyStoreError> {
    validate(name, yaml, description)?;
    let mut tx = pool.begin().await?;
    let applied = apply_on(&mut tx, actor, name, yaml, description).await?;
    tx.commit().await?;
    Ok(applied)
}

/// [`apply`] on an open transaction.
pub(crate) async fn apply_on(
    tx: &mut PgConnection,
    actor: &Actor,
    name: &str,
    yaml: &str,
    description: &str,
) -> Result<AppliedPolicy, PolicyStoreError> {
    let current: Option<(Uuid, i64, String, String)> =
        sqlx::query_as("SELECT id, version, source_yaml, description FROM policies WHERE name = $1 FOR UPDATE")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
    if let Some((id, version, source, current_description)) = &current
        && source == yaml
        && current_description == description
    {
        return Ok(AppliedPolicy { id: *id, name: name.to_owned(), version: *version, changed: false });
    }
    let (id, version): (Uuid, i64) = sqlx::query_as(
        "INSERT INTO policies (id, name, source_yaml, description, created_by) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (name) DO UPDATE
           SET source_yaml = EXCLUDED.source_yaml, description = EXCLUDED.description,
               version = nextval('policy_version_seq'), updated_at = now()
         RETURNING id, version",
    )
    .bind(Uuid::now_v7())
    .bind(name)
    .bind(yaml)
    .bind(description)
    .bind(actor.user_id)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO policy_versions (policy_id, version, source_yaml, description, changed_by_id, changed_by)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(id)
    .bind(version)
    .bind(yaml)
    .bind(description)
    .bind(actor.user_id)
    .bind(&actor.name)
    .execute(&mut *tx)
    .await?;
    let before = current.as_ref().map(|(_, version, ..)| serde_json::json!({ "version": version }));
    let change = Change {
        action: "policy.apply",
        target: format!("policy:{name}"),
        before,
        after: Some(serde_json::json!({ "version": version, "bytes": yaml.len() })),
    };
    audit::record(&mut *tx, actor, &change).await?;
    // The document may be assigned anywhere: what it is part of must still
    // compose and compile; every session re-derives its effective policy
    // (daemons whose inputs did not change keep their version).
    if current.is_some() {
        check_compositions(&mut *tx).await?;
        notify(&mut *tx, None).await?;
    }
    Ok(AppliedPolicy { id, name: name.to_owned(), version, changed: true })
}

/// Policies by name, after `after` (a name), at most `limit`.
pub async fn list(pool: &PgPool, after: Option<&str>, limit: i64) -> Result<Vec<PolicySummary>, PolicyStoreError> {
    Ok(sqlx::query_as(LIST_POLICIES).bind(after).bind(limit).fetch_all(pool).await?)
}

/// The policy `name` with its document and assignments.
pub async fn get(pool: &PgPool, name: &str) -> Result<PolicyDetail, PolicyStoreError> {
    let summary: Option<PolicySummary> = sqlx::query_as(GET_POLICY).bind(name).fetch_optional(pool).await?;
    let summary = summary.ok_or_else(|| PolicyStoreError::NotFound(name.to_owned()))?;
    let source_yaml: String =
        sqlx::query_scalar("SELECT source_yaml FROM policies WHERE id = $1").bind(summary.id).fetch_one(pool).await?;
    let assigned = assignments(pool, Some(name), None).await?;
    Ok(PolicyDetail { summary, source_yaml, assigned })
}

/// Versions of the policy `name` older than `before` (all when None),
/// newest first, at most `limit`.
pub async fn history(
    pool: &PgPool,
    name: &str,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<PolicyVersion>, PolicyStoreError> {
    let id: Option<Uuid> =
        sqlx::query_scalar("SELECT id FROM policies WHERE name = $1").bind(name).fetch_optional(pool).await?;
    let id = id.ok_or_else(|| PolicyStoreError::NotFound(name.to_owned()))?;
    Ok(sqlx::query_as(
        "SELECT version, changed_by, changed_at, description, source_yaml FROM policy_versions
          WHERE policy_id = $1 AND ($2::bigint IS NULL OR version < $2) ORDER BY version DESC LIMIT $3",
    )
    .bind(id)
    .bind(before)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// Deletes the policy `name`; refused while it is assigned anywhere.
pub async fn delete(pool: &PgPool, actor: &Actor, name: &str) -> Result<(), PolicyStoreError> {
    let mut tx = pool.begin().await?;
    let found: Option<(Uuid, i64)> = sqlx::query_as("SELECT id, version FROM policies WHERE name = $1 FOR UPDATE")
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
    let (id, version) = found.ok_or_else(|| PolicyStoreError::NotFound(name.to_owned()))?;
    let assigned: i64 = sqlx::query_scalar("SELECT count(*) FROM policy_assignments WHERE policy_id = $1")
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
    if assigned > 0 {
        return Err(PolicyStoreError::StillAssigned { name: name.to_owned(), assignments: assigned });
    }
    sqlx::query("DELETE FROM policies WHERE id = $1").bind(id).execute(&mut *tx).await?;
    let change = Change {
        action: "policy.delete",
        target: format!("policy:{name}"),
        before: Some(serde_json::json!({ "version": version })),
        after: None,
    };
    audit::record(&mut tx, actor, &change).await?;
    tx.commit().await?;
    Ok(())
}

/// Assignments of policy `name` (all policies when None), on `daemon` (all
/// targets when None).
pub async fn assignments(
    pool: &PgPool,
    name: Option<&str>,
    daemon: Option<Uuid>,
) -> Result<Vec<Assignment>, PolicyStoreError> {
    let rows: Vec<AssignmentRow> = sqlx::query_as(LIST_ASSIGNMENTS).bind(name).bind(daemon).fetch_all(pool).await?;
    Ok(rows.into_iter().map(Assignment::from).collect())
}

/// Makes `name` the base policy (or the overlay of an agent type) of
/// `daemon` (the fleet when None), replacing what held that place.
pub async fn assign(
    pool: &PgPool,
    actor: &Actor,
    name: &str,
    scope: &Scope,
    daemon: Option<Uuid>,
) -> Result<Assignment, PolicyStoreError> {
    let mut tx = pool.begin().await?;
    let assignment = assign_on(&mut tx, actor, name, scope, daemon).await?;
    tx.commit().await?;
    Ok(assignment)
}

/// [`assign`] on an open transaction.
pub(crate) async fn assign_on(
    tx: &mut PgConnection,
    actor: &Actor,
    name: &str,
    scope: &Scope,
    daemon: Option<Uuid>,
) -> Result<Assignment, PolicyStoreError> {
    let (scope_name, agent_type) = scope.parts();
    if let Some(agent_type) = agent_type
        && !valid_agent_type(agent_type)
    {
        return Err(PolicyStoreError::InvalidAgentType(agent_type.to_owned()));
    }
    lock_place(&mut *tx, scope, daemon).await?;
    if let Some(id) = daemon {
        let exists: Option<Uuid> = sqlx::query_scalar("SELECT id FROM daemons WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_none() {
            return Err(PolicyStoreError::NoSuchDaemon(id));
        }
    }
    let found: Option<(Uuid, String)> =
        sqlx::query_as("SELECT id, source_yaml FROM policies WHERE name = $1 FOR SHARE")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
    let (policy_id, yaml) = found.ok_or_else(|| PolicyStoreError::NotFound(name.to_owned()))?;
    if agent_type.is_some() {
        // An overlay contributes its top-level rules; they must compose with
        // the rules of any base (checked again when a daemon's policy is computed).
        let overlay = parse_policy(name, &yaml)?;
        compose_overlay_rules(name, &overlay)?;
    }
    let previous: Option<String> = sqlx::query_scalar(
        "DELETE FROM policy_assignments a USING policies p
          WHERE p.id = a.policy_id AND a.scope = $1 AND a.agent_type IS NOT DISTINCT FROM $2
            AND a.daemon_id IS NOT DISTINCT FROM $3
          RETURNING p.name",
    )
    .bind(scope_name)
    .bind(agent_type)
    .bind(daemon)
    .fetch_optional(&mut *tx)
    .await?;
    let row: AssignmentRow = sqlx::query_as(
        "WITH inserted AS (
           INSERT INTO policy_assignments (id, policy_id, daemon_id, scope, agent_type)
           VALUES ($1, $2, $3, $4, $5) RETURNING id, policy_id, scope, agent_type, daemon_id, created_at)
         SELECT i.id, p.name AS policy, i.scope, i.agent_type, i.daemon_id, i.created_at
           FROM inserted i JOIN policies p ON p.id = i.policy_id",
    )
    .bind(Uuid::now_v7())
    .bind(policy_id)
    .bind(daemon)
    .bind(scope_name)
    .bind(agent_type)
    .fetch_one(&mut *tx)
    .await?;
    let change = Change {
        action: "policy.assign",
        target: format!("policy:{name}"),
        before: previous.map(|policy| serde_json::json!({ "place": scope.describe(daemon), "policy": policy })),
        after: Some(serde_json::json!({ "place": scope.describe(daemon), "policy": name })),
    };
    audit::record(&mut *tx, actor, &change).await?;
    check_compositions(&mut *tx).await?;
    notify(&mut *tx, daemon).await?;
    Ok(row.into())
}

/// Removes the assignment of `name` as `scope` on `daemon` (the fleet when None).
pub async fn unassign(
    pool: &PgPool,
    actor: &Actor,
    name: &str,
    scope: &Scope,
    daemon: Option<Uuid>,
) -> Result<(), PolicyStoreError> {
    let (scope_name, agent_type) = scope.parts();
    let mut tx = pool.begin().await?;
    lock_place(&mut tx, scope, daemon).await?;
    let removed = sqlx::query(
        "DELETE FROM policy_assignments a USING policies p
          WHERE p.id = a.policy_id AND p.name = $1 AND a.scope = $2 AND a.agent_type IS NOT DISTINCT FROM $3
            AND a.daemon_id IS NOT DISTINCT FROM $4",
    )
    .bind(name)
    .bind(scope_name)
    .bind(agent_type)
    .bind(daemon)
    .execute(&mut *tx)
    .await?;
    if removed.rows_affected() == 0 {
        return Err(PolicyStoreError::NotAssigned(format!("{name} is not the {}", scope.describe(daemon))));
    }
    let change = Change {
        action: "policy.unassign",
        target: format!("policy:{name}"),
        before: Some(serde_json::json!({ "place": scope.describe(daemon), "policy": name })),
        after: None,
    };
    audit::record(&mut tx, actor, &change).await?;
    notify(&mut tx, daemon).await?;
    tx.commit().await?;
    Ok(())
}

/// Serialises changes to one place (base or an agent type's overlay, on
/// the fleet or one daemon) for the rest of the transaction: two concurrent
/// assignments to the same fleet-wide place would otherwise both insert.
async fn lock_place(conn: &mut PgConnection, scope: &Scope, daemon: Option<Uuid>) -> Result<(), sqlx::Error> {
    let (scope_name, agent_type) = scope.parts();
    let key = format!(
        "policy_assignment:{scope_name}:{}:{}",
        agent_type.unwrap_or(""),
        daemon.map_or_else(String::new, |d| d.to_string())
    );
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))").bind(key).execute(conn).await?;
    Ok(())
}

/// An agent type an overlay may name: the known-agent table or `unknown`
/// (the kernel has one class per known type).
pub fn valid_agent_type(name: &str) -> bool {
    name == tyr_common::agents::UNKNOWN || tyr_common::agents::KNOWN_AGENTS.iter().any(|a| a.agent_type == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_types() {
        assert!(valid_name("base"));
        assert!(valid_name("fleet-base.v2"));
        assert!(!valid_name(""));
        assert!(!valid_name("-x"));
        assert!(!valid_name("a b"));
        assert!(!valid_name(&"a".repeat(129)));
        assert!(valid_agent_type("claude-code"));
        assert!(valid_agent_type("unknown"));
        assert!(!valid_agent_type("Claude"));
        assert!(!valid_agent_type("my-agent"));
        assert!(!valid_agent_type(""));
    }

    #[test]
    fn scope_is_tagged_in_json() {
        let json = serde_json::to_value(Scope::Overlay("cursor".into())).expect("serializes");
        assert_eq!(json, serde_json::json!({ "scope": "overlay", "agent_type": "cursor" }));
        let base: Scope = serde_json::from_value(serde_json::json!({ "scope": "base" })).expect("base");
        assert_eq!(base, Scope::Base);
    }
}
