//! The audit log (`tyr audit`): every change operators made, newest first.

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::context::ApiContext;
use super::extract::{ApiQuery, AuthUser};
use super::pagination::{Page, page_limit, uuid_cursor};
use crate::control_db::audit::{self, AuditEntry, AuditFilter};
use crate::error::ServiceError;

/// Which entries to list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Only changes by this operator.
    pub actor: Option<String>,
    /// Only this action (`policy.apply`), or every action under a prefix ending in `.` (`policy.`).
    pub action: Option<String>,
    /// Only changes to this target (`policy:base`, `daemon:<id>`).
    pub target: Option<String>,
    /// Only changes at or after this time (RFC 3339).
    pub from: Option<String>,
    /// Only changes before this time (RFC 3339).
    pub to: Option<String>,
    /// Items per page (1–1000, default 100).
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Parses an RFC 3339 query value.
pub fn parse_time(field: &str, value: Option<&str>) -> Result<Option<OffsetDateTime>, ServiceError> {
    value
        .map(|text| {
            OffsetDateTime::parse(text, &Rfc3339).map_err(|_| {
                ServiceError::InvalidArgument(format!("{field} must be an RFC 3339 time such as 2026-11-30T12:00:00Z"))
            })
        })
        .transpose()
}

/// Changes operators made, newest first.
#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", params(AuditQuery), security(("bearer" = [])),
    responses((status = 200, body = Page<AuditEntry>), (status = 400, body = super::ErrorBody)))]
pub async fn list(
    State(ctx): State<ApiContext>,
    _user: AuthUser,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> Result<Json<Page<AuditEntry>>, ServiceError> {
    let limit = page_limit(query.limit)?;
    let filter = AuditFilter {
        actor: query.actor,
        action: query.action,
        target: query.target,
        since: parse_time("from", query.from.as_deref())?,
        until: parse_time("to", query.to.as_deref())?,
        after_id: uuid_cursor(query.cursor.as_deref())?,
        limit: i64::from(limit) + 1,
    };
    let rows = audit::list(&ctx.pool, &filter).await.map_err(ServiceError::internal)?;
    Ok(Json(Page::from_rows(rows, limit, |entry| entry.id.to_string())))
}
