//! Discovered AI agents (`tyr discovered ...`): what each daemon recognised,
//! and the operators' overrides — rename, merge, reclassify, archive,
//! promote. A reclassification or promotion reaches the daemon, which then
//! governs that agent by the new type's overlay.

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use uuid::Uuid;

use super::context::ApiContext;
use super::extract::{AdminUser, ApiJson, ApiPath, AuthUser, ControlParams, FilterQuery};
use super::pagination::{Page, page_limit, uuid_cursor};
use crate::control_db::discovered::{self, DiscoveredAgent, DiscoveredFilter};
use crate::error::ServiceError;

/// Paging through discovered agents.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListControls {
    /// Items per page (1–1000, default 100).
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

impl ControlParams for ListControls {
    const KEYS: &'static [&'static str] = &["limit", "cursor"];
}

/// Discovered agents, by id, filtered by type, daemon and state.
#[utoipa::path(get, path = "/api/v1/discovered-agents", tag = "discovered", params(DiscoveredFilter, ListControls),
    security(("bearer" = [])), responses((status = 200, body = Page<DiscoveredAgent>)))]
pub async fn list(
    State(ctx): State<ApiContext>,
    _user: AuthUser,
    query: FilterQuery<DiscoveredFilter, ListControls>,
) -> Result<Json<Page<DiscoveredAgent>>, ServiceError> {
    let limit = page_limit(query.controls.limit)?;
    let after = uuid_cursor(query.controls.cursor.as_deref())?;
    let rows = discovered::list(&ctx.pool, &query.filter, after, i64::from(limit) + 1).await?;
    Ok(Json(Page::from_rows(rows, limit, |agent| agent.id.to_string())))
}

/// One discovered agent.
#[utoipa::path(get, path = "/api/v1/discovered-agents/{id}", tag = "discovered",
    params(("id" = Uuid, Path, description = "discovered agent id")), security(("bearer" = [])),
    responses((status = 200, body = DiscoveredAgent), (status = 404, body = super::ErrorBody)))]
pub async fn show(
    State(ctx): State<ApiContext>,
    _user: AuthUser,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<DiscoveredAgent>, ServiceError> {
    let agent = discovered::get(&ctx.pool, id).await?;
    Ok(Json(agent.ok_or_else(|| ServiceError::NotFound(format!("no discovered agent {id}")))?))
}

/// A new display name.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rename {
    /// 1 to 128 characters, no control characters.
    pub display_name: String,
}

/// Gives a discovered agent a display name.
#[utoipa::path(post, path = "/api/v1/discovered-agents/{id}/rename", tag = "discovered",
    params(("id" = Uuid, Path, description = "discovered agent id")), request_body = Rename, security(("bearer" = [])),
    responses((status = 200, body = DiscoveredAgent), (status = 400, body = super::ErrorBody),
              (status = 404, body = super::ErrorBody)))]
pub async fn rename(
    State(ctx): State<ApiContext>,
    AdminUser(user): AdminUser,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(request): ApiJson<Rename>,
) -> Result<Json<DiscoveredAgent>, ServiceError> {
    Ok(Json(discovered::rename(&ctx.pool, &user.actor(), id, &request.display_name).await?))
}

/// The agent to merge into.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Merge {
    /// The surviving agent: queries for it include the merged agent's events.
    pub into: Uuid,
}

/// Merges a duplicate into another agent (the survivor, returned).
#[utoipa::path(post, path = "/api/v1/discovered-agents/{id}/merge", tag = "discovered",
    params(("id" = Uuid, Path, description = "discovered agent id")), request_body = Merge, security(("bearer" = [])),
    responses((status = 200, body = DiscoveredAgent), (status = 404, body = super::ErrorBody),
              (status = 409, body = super::ErrorBody)))]
pub async fn merge(
    State(ctx): State<ApiContext>,
    AdminUser(user): AdminUser,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(request): ApiJson<Merge>,
) -> Result<Json<DiscoveredAgent>, ServiceError> {
    Ok(Json(discovered::merge(&ctx.pool, &user.actor(), id, request.into).await?))
}

/// An agent type.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentTypeChange {
    /// A type of the known-agent table, or `unknown`.
    pub agent_type: String,
}

/// Reclassifies a discovered agent: its host governs it by the new type's overlay.
#[utoipa::path(post, path = "/api/v1/discovered-agents/{id}/reclassify", tag = "discovered",
    params(("id" = Uuid, Path, description = "discovered agent id")), request_body = AgentTypeChange,
    security(("bearer" = [])),
    responses((status = 200, body = DiscoveredAgent), (status = 400, body = super::ErrorBody),
              (status = 404, body = super::ErrorBody)))]
pub async fn reclassify(
    State(ctx): State<ApiContext>,
    AdminUser(user): AdminUser,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(request): ApiJson<AgentTypeChange>,
) -> Result<Json<DiscoveredAgent>, ServiceError> {
    Ok(Json(discovered::reclassify(&ctx.pool, &user.actor(), id, &request.agent_type).await?))
}

/// Promotes an unregistered (`unknown`) agent to a type: no longer quarantined.
#[utoipa::path(post, path = "/api/v1/discovered-agents/{id}/promote", tag = "discovered",
    params(("id" = Uuid, Path, description = "discovered agent id")), request_body = AgentTypeChange,
    security(("bearer" = [])),
    responses((status = 200, body = DiscoveredAgent), (status = 400, body = super::ErrorBody),
              (status = 409, body = super::ErrorBody)))]
pub async fn promote(
    State(ctx): State<ApiContext>,
    AdminUser(user): AdminUser,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(request): ApiJson<AgentTypeChange>,
) -> Result<Json<DiscoveredAgent>, ServiceError> {
    Ok(Json(discovered::promote(&ctx.pool, &user.actor(), id, &request.agent_type).await?))
}

/// Archives a long-gone agent (hidden from the default list).
#[utoipa::path(post, path = "/api/v1/discovered-agents/{id}/archive", tag = "discovered",
    params(("id" = Uuid, Path, description = "discovered agent id")), security(("bearer" = [])),
    responses((status = 200, body = DiscoveredAgent), (status = 404, body = super::ErrorBody)))]
pub async fn archive(
    State(ctx): State<ApiContext>,
    AdminUser(user): AdminUser,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<DiscoveredAgent>, ServiceError> {
    Ok(Json(discovered::archive(&ctx.pool, &user.actor(), id).await?))
}
