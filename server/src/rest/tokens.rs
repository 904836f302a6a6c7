//! Enrollment tokens (`tyr token create|list|delete`): the secret is shown
//! once, at creation, with the CA pin a new host checks.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use uuid::Uuid;

use super::context::ApiContext;
use super::extract::{AdminUser, ApiJson, ApiPath, ApiQuery};
use super::pagination::{Page, page_limit};
use crate::control_db::tokens::{self, TokenError};
use crate::enrollment_admin::{CreatedTokenView, TokenView};
use crate::error::ServiceError;

/// Longest token lifetime, in hours (ten years).
const MAX_EXPIRES_HOURS: u32 = 87_600;

/// A token to create.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// Hours until the token stops being accepted (1–87600).
    pub expires_hours: u32,
    /// How many daemons may enroll with it (default 1).
    #[serde(default = "one")]
    pub max_uses: u32,
    /// What it is for (at most 1024 characters).
    #[serde(default)]
    pub description: String,
}

fn one() -> u32 {
    1
}

fn token_error(error: TokenError) -> ServiceError {
    match error {
        TokenError::InvalidSettings(message) => ServiceError::InvalidArgument(message.to_owned()),
        other => ServiceError::internal(other),
    }
}

/// Creates an enrollment token. Its secret is in this answer only.
#[utoipa::path(post, path = "/api/v1/tokens", tag = "tokens", request_body = CreateToken, security(("bearer" = [])),
    responses((status = 201, body = CreatedTokenView), (status = 400, body = super::ErrorBody),
              (status = 403, body = super::ErrorBody)))]
pub async fn create(
    State(ctx): State<ApiContext>,
    AdminUser(user): AdminUser,
    ApiJson(request): ApiJson<CreateToken>,
) -> Result<(StatusCode, Json<CreatedTokenView>), ServiceError> {
    if request.expires_hours == 0 || request.expires_hours > MAX_EXPIRES_HOURS {
        return Err(ServiceError::InvalidArgument(format!("expires_hours must be between 1 and {MAX_EXPIRES_HOURS}")));
    }
    let lifetime = Duration::from_secs(u64::from(request.expires_hours) * 3600);
    let created = tokens::create(&ctx.pool, &user.actor(), lifetime, request.max_uses, &request.description)
        .await
        .map_err(token_error)?;
    Ok((StatusCode::CREATED, Json(CreatedTokenView::new(created, &ctx.ca))))
}

/// Paging through tokens.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct TokenListQuery {
    /// Items per page (1–1000, default 100).
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Enrollment tokens, without their secrets, by id.
#[utoipa::path(get, path = "/api/v1/tokens", tag = "tokens", params(TokenListQuery), security(("bearer" = [])),
    responses((status = 200, body = Page<TokenView>), (status = 403, body = super::ErrorBody)))]
pub async fn list(
    State(ctx): State<ApiContext>,
    _user: AdminUser,
    ApiQuery(query): ApiQuery<TokenListQuery>,
) -> Result<Json<Page<TokenView>>, ServiceError> {
    let limit = page_limit(query.limit)?;
    let mut all: Vec<TokenView> =
        tokens::list(&ctx.pool).await.map_err(token_error)?.into_iter().map(TokenView::from).collect();
    all.sort_by_key(|token| token.id.to_string());
    Ok(Json(Page::from_sorted(all, query.cursor.as_deref(), limit, |token| token.id.to_string())))
}

/// Deletes a token; daemons that enrolled with it stay enrolled.
#[utoipa::path(delete, path = "/api/v1/tokens/{id}", tag = "tokens", params(("id" = Uuid, Path, description = "token id")),
    security(("bearer" = [])),
    responses((status = 204), (status = 404, body = super::ErrorBody)))]
pub async fn delete(
    State(ctx): State<ApiContext>,
    AdminUser(user): AdminUser,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<StatusCode, ServiceError> {
    if tokens::delete(&ctx.pool, &user.actor(), id).await.map_err(token_error)? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ServiceError::NotFound(format!("no token {id}")))
    }
}
