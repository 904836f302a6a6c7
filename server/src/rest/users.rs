//! Operators' accounts (`tyr user create|list|disable`), admin only.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use uuid::Uuid;

use super::context::ApiContext;
use super::extract::{AdminUser, ApiJson, ApiPath, ApiQuery};
use super::pagination::{Page, page_limit, uuid_cursor};
use crate::auth::Role;
use crate::control_db::users::{self, User, UserError};
use crate::error::ServiceError;

fn user_error(error: UserError) -> ServiceError {
    match error {
        UserError::Exists(name) => ServiceError::Conflict(format!("a user named {name:?} exists")),
        UserError::NotFound(id) => ServiceError::NotFound(format!("no user {id}")),
        UserError::LastAdmin => ServiceError::Conflict("the last enabled admin cannot be disabled".to_owned()),
        error @ (UserError::WeakPassword(_) | UserError::InvalidName(_)) => {
            ServiceError::InvalidArgument(error.to_string())
        }
        other => ServiceError::internal(other),
    }
}

/// An account to create.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    /// Letters, digits, `_`, `.`, `@`, `-` (at most 64; unique ignoring case).
    pub username: String,
    /// At least 12 characters.
    pub password: String,
    /// `admin` (everything) or `viewer` (read only).
    pub role: Role,
}

/// Creates an operator account.
#[utoipa::path(post, path = "/api/v1/users", tag = "users", request_body = CreateUser, security(("bearer" = [])),
    responses((status = 201, body = User), (status = 400, body = super::ErrorBody), (status = 409, body = super::ErrorBody)))]
pub async fn create(
    State(ctx): State<ApiContext>,
    AdminUser(admin): AdminUser,
    ApiJson(request): ApiJson<CreateUser>,
) -> Result<(StatusCode, Json<User>), ServiceError> {
    let user = users::create(&ctx.pool, &admin.actor(), &request.username, request.password, request.role)
        .await
        .map_err(user_error)?;
    Ok((StatusCode::CREATED, Json(user)))
}

/// Paging through users.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct UserListQuery {
    /// Items per page (1–1000, default 100).
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Operator accounts, by id.
#[utoipa::path(get, path = "/api/v1/users", tag = "users", params(UserListQuery), security(("bearer" = [])),
    responses((status = 200, body = Page<User>), (status = 403, body = super::ErrorBody)))]
pub async fn list(
    State(ctx): State<ApiContext>,
    _admin: AdminUser,
    ApiQuery(query): ApiQuery<UserListQuery>,
) -> Result<Json<Page<User>>, ServiceError> {
    let limit = page_limit(query.limit)?;
    let after = uuid_cursor(query.cursor.as_deref())?;
    let rows = users::list(&ctx.pool, after, i64::from(limit) + 1).await.map_err(user_error)?;
    Ok(Json(Page::from_rows(rows, limit, |user| user.id.to_string())))
}

/// Disables an account: its tokens stop working at once. The last enabled
/// admin cannot be disabled.
#[utoipa::path(post, path = "/api/v1/users/{id}/disable", tag = "users", params(("id" = Uuid, Path, description = "user id")),
    security(("bearer" = [])),
    responses((status = 200, body = User), (status = 404, body = super::ErrorBody), (status = 409, body = super::ErrorBody)))]
pub async fn disable(
    State(ctx): State<ApiContext>,
    AdminUser(admin): AdminUser,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<User>, ServiceError> {
    Ok(Json(users::disable(&ctx.pool, &admin.actor(), id).await.map_err(user_error)?))
}
