//! Enrolled daemons (`tyr agent list|show|delete`): live status, and
//! deletion, which revokes the daemon (its stream closes, its certificate is
//! refused from then on).

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use super::context::ApiContext;
use super::extract::{AdminUser, ApiPath, ApiQuery, AuthUser};
use super::pagination::{Page, page_limit, uuid_cursor};
use crate::control_db::{daemons, policies};
use crate::error::ServiceError;

/// An enrolled daemon and its live state.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DaemonStatus {
    /// The daemon id.
    pub id: Uuid,
    /// Host name.
    pub name: String,
    /// Kernel release.
    pub kernel_version: String,
    /// CPU architecture.
    pub arch: String,
    /// Whether it is streaming now: to this replica, or heard from within
    /// two heartbeat intervals.
    pub connected: bool,
    /// When it enrolled.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub enrolled_at: OffsetDateTime,
    /// Its last heartbeat.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_seen_at: Option<OffsetDateTime>,
    /// When its client certificate expires.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub cert_not_after: OffsetDateTime,
    /// The newest effective policy version the server computed for it.
    pub assigned_policy_version: Option<i64>,
    /// The policy version it reports installed in its kernel.
    pub applied_policy_version: i64,
    /// When it first reported that version installed.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub policy_applied_at: Option<OffsetDateTime>,
    /// What its kernel does with unregistered agents.
    pub unregistered_agents: String,
    /// Events in its disk spool at the last heartbeat.
    pub spooled_events: i64,
    /// Sequence numbers the server never received from it (lost on the host).
    pub seq_gap_events: i64,
    /// Drop counters of its last heartbeat.
    #[schema(value_type = Object)]
    pub drops: serde_json::Value,
    /// Its last capability report.
    #[schema(value_type = Object)]
    pub capabilities: serde_json::Value,
}

fn status(ctx: &ApiContext, daemon: daemons::DaemonSummary, now: OffsetDateTime) -> DaemonStatus {
    let recent = Duration::from_secs(2 * u64::from(ctx.heartbeat_interval_s));
    let heard_recently = daemon.last_seen_at.is_some_and(|seen| (now - seen).unsigned_abs() <= recent);
    DaemonStatus {
        connected: ctx.fleet.is_connected(daemon.id) || heard_recently,
        id: daemon.id,
        name: daemon.name,
        kernel_version: daemon.kernel_version,
        arch: daemon.arch,
        enrolled_at: daemon.enrolled_at,
        last_seen_at: daemon.last_seen_at,
        cert_not_after: daemon.cert_not_after,
        assigned_policy_version: daemon.assigned_policy_version,
        applied_policy_version: daemon.applied_policy_version,
        policy_applied_at: daemon.policy_applied_at,
        unregistered_agents: daemon.unregistered_agents,
        spooled_events: daemon.spooled_events,
        seq_gap_events: daemon.seq_gap_events,
        drops: daemon.drops,
        capabilities: daemon.capabilities,
    }
}

/// Paging through daemons.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DaemonListQuery {
    /// Items per page (1–1000, default 100).
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Only daemons that are (true) or are not (false) connected.
    pub connected: Option<bool>,
}

/// Enrolled daemons, by id.
#[utoipa::path(get, path = "/api/v1/daemons", tag = "daemons", params(DaemonListQuery), security(("bearer" = [])),
    responses((status = 200, body = Page<DaemonStatus>), (status = 401, body = super::ErrorBody)))]
pub async fn list(
    State(ctx): State<ApiContext>,
    _user: AuthUser,
    ApiQuery(query): ApiQuery<DaemonListQuery>,
) -> Result<Json<Page<DaemonStatus>>, ServiceError> {
    let limit = page_limit(query.limit)?;
    let mut after = uuid_cursor(query.cursor.as_deref())?;
    let now = OffsetDateTime::now_utc();
    let mut items = Vec::new();
    // The connected filter is applied after the query: keep reading pages
    // until this one is full or the daemons run out.
    loop {
        let rows = daemons::list_page(&ctx.pool, after, i64::from(limit) + 1).await.map_err(ServiceError::internal)?;
        let exhausted = rows.len() <= limit as usize;
        for row in rows {
            after = Some(row.id);
            let daemon = status(&ctx, row, now);
            if query.connected.is_none_or(|wanted| wanted == daemon.connected) {
                items.push(daemon);
            }
            if items.len() > limit as usize {
                break;
            }
        }
        if exhausted || items.len() > limit as usize {
            break;
        }
    }
    Ok(Json(Page::from_rows(items, limit, |daemon| daemon.id.to_string())))
}

/// One daemon.
#[utoipa::path(get, path = "/api/v1/daemons/{id}", tag = "daemons", params(("id" = Uuid, Path, description = "daemon id")),
    security(("bearer" = [])),
    responses((status = 200, body = DaemonStatus), (status = 404, body = super::ErrorBody)))]
pub async fn show(
    State(ctx): State<ApiContext>,
    _user: AuthUser,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<DaemonStatus>, ServiceError> {
    let daemon = daemons::summary(&ctx.pool, id).await.map_err(ServiceError::internal)?;
    let daemon = daemon.ok_or_else(|| ServiceError::NotFound(format!("no daemon {id}")))?;
    Ok(Json(status(&ctx, daemon, OffsetDateTime::now_utc())))
}

/// Deletes (revokes) a daemon: its stream closes within a second and its
/// certificate is refused from then on. It may enroll again with a new token.
#[utoipa::path(delete, path = "/api/v1/daemons/{id}", tag = "daemons", params(("id" = Uuid, Path, description = "daemon id")),
    security(("bearer" = [])),
    responses((status = 204), (status = 403, body = super::ErrorBody), (status = 404, body = super::ErrorBody)))]
pub async fn delete(
    State(ctx): State<ApiContext>,
    AdminUser(user): AdminUser,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<StatusCode, ServiceError> {
    if daemons::delete(&ctx.pool, &user.actor(), id).await.map_err(ServiceError::internal)? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ServiceError::NotFound(format!("no daemon {id}")))
    }
}

/// A daemon's effective policy: what the server pushes to it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EffectivePolicyView {
    /// The daemon id.
    pub daemon_id: Uuid,
    /// The version pushed.
    pub version: i64,
    /// The version the daemon reports installed (equal once applied).
    pub applied_version: i64,
    /// When the daemon first reported its applied version.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub applied_at: Option<OffsetDateTime>,
    /// When the server computed this version.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub computed_at: OffsetDateTime,
    /// The composed document (base with assigned overlays), as pushed.
    pub policy_yaml: String,
    /// Its Cedar text, as the server evaluates drift with.
    pub cedar_text: String,
}

/// The effective policy of a daemon, as last computed and pushed.
#[utoipa::path(get, path = "/api/v1/daemons/{id}/policy", tag = "daemons",
    params(("id" = Uuid, Path, description = "daemon id")), security(("bearer" = [])),
    responses((status = 200, body = EffectivePolicyView), (status = 404, body = super::ErrorBody)))]
pub async fn effective_policy(
    State(ctx): State<ApiContext>,
    _user: AuthUser,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<EffectivePolicyView>, ServiceError> {
    let daemon = daemons::summary(&ctx.pool, id).await.map_err(ServiceError::internal)?;
    let daemon = daemon.ok_or_else(|| ServiceError::NotFound(format!("no daemon {id}")))?;
    let latest = policies::latest_effective(&ctx.pool, id).await.map_err(ServiceError::internal)?;
    let (version, policy_yaml, cedar_text, computed_at) = latest.ok_or_else(|| {
        ServiceError::NotFound(format!("no policy computed for daemon {id} yet (it has not streamed)"))
    })?;
    Ok(Json(EffectivePolicyView {
        daemon_id: id,
        version,
        applied_version: daemon.applied_policy_version,
        applied_at: daemon.policy_applied_at,
        computed_at,
        policy_yaml,
        cedar_text,
    }))
}
