//! Policies (`tyr policy apply|list|show|history|assign|unassign|delete|check`):
//! documents validated as `tyrd policy check` validates them, versioned
//! with who changed what, and assigned as the base or as an agent type's
//! overlay, fleet-wide or per daemon. Every change is pushed to the daemons
//! it concerns by their sessions (NOTIFY), and the daemons' applied
//! versions show in `GET /api/v1/daemons`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use tyr_common::policy::{compile, parse_policy};
use uuid::Uuid;

use super::context::ApiContext;
use super::error::{PolicyErrorDetail, policy_error_details};
use super::extract::{AdminUser, ApiJson, ApiPath, ApiQuery, AuthUser};
use super::pagination::{Page, page_limit};
use crate::control_db::policies::PolicyStoreError;
use crate::control_db::policy_catalog::{
    self, AppliedPolicy, Assignment, PolicyDetail, PolicySummary, PolicyVersion, Scope,
};
use crate::error::ServiceError;

/// One definition of how catalog errors reach operators.
fn policy_error(error: PolicyStoreError) -> ServiceError {
    match error {
        PolicyStoreError::Invalid(errors) => ServiceError::InvalidPolicy(errors),
        PolicyStoreError::NotFound(name) => ServiceError::NotFound(format!("no policy named {name:?}")),
        PolicyStoreError::NoSuchDaemon(id) => ServiceError::NotFound(format!("no daemon {id}")),
        error @ PolicyStoreError::StillAssigned { .. } => ServiceError::Conflict(error.to_string()),
        PolicyStoreError::NotAssigned(message) => ServiceError::NotFound(message),
        error @ (PolicyStoreError::Uncompilable(_)
        | PolicyStoreError::InvalidName(_)
        | PolicyStoreError::InvalidAgentType(_)
        | PolicyStoreError::InvalidDescription
        | PolicyStoreError::NestedOverlay(_)
        | PolicyStoreError::Composition(_)) => ServiceError::InvalidArgument(error.to_string()),
        PolicyStoreError::Query(error) => ServiceError::internal(error),
    }
}

/// A policy document to create or update.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApplyPolicy {
    /// The policy's name (letters, digits, `_`, `.`, `-`; at most 128).
    pub name: String,
    /// The document (YAML, at most 1 MiB).
    pub yaml: String,
    /// What the change is (kept in the history).
    #[serde(default)]
    pub description: String,
}

/// Creates a policy or stores a new version of it. Daemons it is assigned
/// to receive the new version through their streams.
#[utoipa::path(post, path = "/api/v1/policies", tag = "policies", request_body = ApplyPolicy, security(("bearer" = [])),
    responses((status = 201, description = "new version stored", body = AppliedPolicy),
              (status = 200, description = "unchanged", body = AppliedPolicy),
              (status = 400, body = super::ErrorBody), (status = 403, body = super::ErrorBody)))]
pub async fn apply(
    State(ctx): State<ApiContext>,
    AdminUser(user): AdminUser,
    ApiJson(request): ApiJson<ApplyPolicy>,
) -> Result<(StatusCode, Json<AppliedPolicy>), ServiceError> {
    let applied = policy_catalog::apply(&ctx.pool, &user.actor(), &request.name, &request.yaml, &request.description)
        .await
        .map_err(policy_error)?;
    let status = if applied.changed { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(applied)))
}

/// Paging through policies.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PolicyListQuery {
    /// Items per page (1–1000, default 100).
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Policies, by name.
#[utoipa::path(get, path = "/api/v1/policies", tag = "policies", params(PolicyListQuery), security(("bearer" = [])),
    responses((status = 200, body = Page<PolicySummary>)))]
pub async fn list(
    State(ctx): State<ApiContext>,
    _user: AuthUser,
    ApiQuery(query): ApiQuery<PolicyListQuery>,
) -> Result<Json<Page<PolicySummary>>, ServiceError> {
    let limit = page_limit(query.limit)?;
    let rows =
        policy_catalog::list(&ctx.pool, query.cursor.as_deref(), i64::from(limit) + 1).await.map_err(policy_error)?;
    Ok(Json(Page::from_rows(rows, limit, |policy| policy.name.clone())))
}

/// A document to check.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckPolicy {
    /// The document (YAML).
    pub yaml: String,
    /// The name errors are reported under (default `policy`).
    pub name: Option<String>,
}

/// Whether a document is valid, and if not, why.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CheckResult {
    /// True when the document parses, validates and compiles for the kernel.
    pub valid: bool,
    /// Each error with its document, rule, field, line and column.
    pub errors: Vec<PolicyErrorDetail>,
    /// Rules in the document (base and overlays), when valid.
    pub rules: Option<usize>,
}

/// Checks a document as `tyrd policy check` does, without storing it.
#[utoipa::path(post, path = "/api/v1/policies/check", tag = "policies", request_body = CheckPolicy,
    security(("bearer" = [])), responses((status = 200, body = CheckResult)))]
pub async fn check(_user: AuthUser, ApiJson(request): ApiJson<CheckPolicy>) -> Json<CheckResult> {
    let name = request.name.as_deref().unwrap_or("policy");
    let result = match parse_policy(name, &request.yaml) {
        Err(errors) => CheckResult { valid: false, errors: policy_error_details(&errors), rules: None },
        Ok(set) => match compile(&set, 1) {
            Ok(_) => {
                let rules = set.base.rules.len() + set.overlays.values().map(Vec::len).sum::<usize>();
                CheckResult { valid: true, errors: Vec::new(), rules: Some(rules) }
            }
            Err(error) => CheckResult {
                valid: false,
                errors: vec![PolicyErrorDetail {
                    document: name.to_owned(),
                    rule: None,
                    field: None,
                    line: 0,
                    column: 0,
                    message: format!("cannot be compiled for the kernel: {error}"),
                }],
                rules: None,
            },
        },
    };
    Json(result)
}

/// A policy with its document and where it is assigned.
#[utoipa::path(get, path = "/api/v1/policies/{name}", tag = "policies",
    params(("name" = String, Path, description = "policy name")), security(("bearer" = [])),
    responses((status = 200, body = PolicyDetail), (status = 404, body = super::ErrorBody)))]
pub async fn show(
    State(ctx): State<ApiContext>,
    _user: AuthUser,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<PolicyDetail>, ServiceError> {
    Ok(Json(policy_catalog::get(&ctx.pool, &name).await.map_err(policy_error)?))
}

/// Deletes a policy; refused (409) while it is assigned anywhere.
#[utoipa::path(delete, path = "/api/v1/policies/{name}", tag = "policies",
    params(("name" = String, Path, description = "policy name")), security(("bearer" = [])),
    responses((status = 204), (status = 404, body = super::ErrorBody), (status = 409, body = super::ErrorBody)))]
pub async fn delete(
    State(ctx): State<ApiContext>,
    AdminUser(user): AdminUser,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ServiceError> {
    policy_catalog::delete(&ctx.pool, &user.actor(), &name).await.map_err(policy_error)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Paging through a policy's versions.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// Items per page (1–1000, default 100).
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Every version of a policy, newest first, with who wrote it.
#[utoipa::path(get, path = "/api/v1/policies/{name}/history", tag = "policies",
    params(("name" = String, Path, description = "policy name"), HistoryQuery), security(("bearer" = [])),
    responses((status = 200, body = Page<PolicyVersion>), (status = 404, body = super::ErrorBody)))]
pub async fn history(
    State(ctx): State<ApiContext>,
    _user: AuthUser,
    ApiPath(name): ApiPath<String>,
    ApiQuery(query): ApiQuery<HistoryQuery>,
) -> Result<Json<Page<PolicyVersion>>, ServiceError> {
    let limit = page_limit(query.limit)?;
    let before = query
        .cursor
        .as_deref()
        .map(|cursor| cursor.parse::<i64>().map_err(|_| ServiceError::InvalidArgument("invalid cursor".to_owned())))
        .transpose()?;
    let rows = policy_catalog::history(&ctx.pool, &name, before, i64::from(limit) + 1).await.map_err(policy_error)?;
    Ok(Json(Page::from_rows(rows, limit, |version| version.version.to_string())))
}

/// Where to assign a policy.
#[derive(Debug, Deserialize, utoipa::ToSchema, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct Placement {
    /// `base` or `overlay`.
    pub scope: ScopeName,
    /// For an overlay: the agent type it governs (a known type, or `unknown`).
    pub agent_type: Option<String>,
    /// The daemon it applies to; absent: the whole fleet.
    pub daemon_id: Option<Uuid>,
}

/// Base or overlay.
#[derive(Debug, Clone, Copy, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ScopeName {
    /// The base policy.
    Base,
    /// An agent type's overlay.
    Overlay,
}

impl Placement {
    fn scope(&self) -> Result<Scope, ServiceError> {
        match (self.scope, &self.agent_type) {
            (ScopeName::Base, None) => Ok(Scope::Base),
            (ScopeName::Overlay, Some(agent_type)) => Ok(Scope::Overlay(agent_type.clone())),
            (ScopeName::Base, Some(_)) => {
                Err(ServiceError::InvalidArgument("a base assignment takes no agent_type".to_owned()))
            }
            (ScopeName::Overlay, None) => {
                Err(ServiceError::InvalidArgument("an overlay assignment needs an agent_type".to_owned()))
            }
        }
    }
}

/// Assigns a policy as the base or as an agent type's overlay, fleet-wide
/// or on one daemon, replacing what held that place; the daemons concerned
/// receive their new effective policy at once.
#[utoipa::path(post, path = "/api/v1/policies/{name}/assignments", tag = "policies",
    params(("name" = String, Path, description = "policy name")), request_body = Placement, security(("bearer" = [])),
    responses((status = 201, body = Assignment), (status = 400, body = super::ErrorBody),
              (status = 404, body = super::ErrorBody)))]
pub async fn assign(
    State(ctx): State<ApiContext>,
    AdminUser(user): AdminUser,
    ApiPath(name): ApiPath<String>,
    ApiJson(placement): ApiJson<Placement>,
) -> Result<(StatusCode, Json<Assignment>), ServiceError> {
    let scope = placement.scope()?;
    let assignment = policy_catalog::assign(&ctx.pool, &user.actor(), &name, &scope, placement.daemon_id)
        .await
        .map_err(policy_error)?;
    Ok((StatusCode::CREATED, Json(assignment)))
}

/// Removes an assignment of a policy.
#[utoipa::path(delete, path = "/api/v1/policies/{name}/assignments", tag = "policies",
    params(("name" = String, Path, description = "policy name"), Placement), security(("bearer" = [])),
    responses((status = 204), (status = 404, body = super::ErrorBody), (status = 409, body = super::ErrorBody)))]
pub async fn unassign(
    State(ctx): State<ApiContext>,
    AdminUser(user): AdminUser,
    ApiPath(name): ApiPath<String>,
    ApiQuery(placement): ApiQuery<Placement>,
) -> Result<StatusCode, ServiceError> {
    let scope = placement.scope()?;
    policy_catalog::unassign(&ctx.pool, &user.actor(), &name, &scope, placement.daemon_id)
        .await
        .map_err(policy_error)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Paging through assignments.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AssignmentQuery {
    /// Only assignments on this daemon.
    pub daemon_id: Option<Uuid>,
    /// Items per page (1–1000, default 100).
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

async fn assignment_page(
    ctx: &ApiContext,
    policy: Option<&str>,
    query: &AssignmentQuery,
) -> Result<Page<Assignment>, ServiceError> {
    let limit = page_limit(query.limit)?;
    let mut rows = policy_catalog::assignments(&ctx.pool, policy, query.daemon_id).await.map_err(policy_error)?;
    rows.sort_by_key(|assignment| assignment.id.to_string());
    Ok(Page::from_sorted(rows, query.cursor.as_deref(), limit, |assignment| assignment.id.to_string()))
}

/// Where a policy is assigned.
#[utoipa::path(get, path = "/api/v1/policies/{name}/assignments", tag = "policies",
    params(("name" = String, Path, description = "policy name"), AssignmentQuery), security(("bearer" = [])),
    responses((status = 200, body = Page<Assignment>)))]
pub async fn list_assignments_of(
    State(ctx): State<ApiContext>,
    _user: AuthUser,
    ApiPath(name): ApiPath<String>,
    ApiQuery(query): ApiQuery<AssignmentQuery>,
) -> Result<Json<Page<Assignment>>, ServiceError> {
    Ok(Json(assignment_page(&ctx, Some(&name), &query).await?))
}

/// Every assignment in the fleet.
#[utoipa::path(get, path = "/api/v1/assignments", tag = "policies", params(AssignmentQuery), security(("bearer" = [])),
    responses((status = 200, body = Page<Assignment>)))]
pub async fn assignments(
    State(ctx): State<ApiContext>,
    _user: AuthUser,
    ApiQuery(query): ApiQuery<AssignmentQuery>,
) -> Result<Json<Page<Assignment>>, ServiceError> {
    Ok(Json(assignment_page(&ctx, None, &query).await?))
}
