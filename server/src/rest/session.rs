//! Logging in, who the caller is, and the server CA (public).

use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use super::context::ApiContext;
use super::extract::{ApiJson, AuthUser, ClientAddr};
use crate::auth::Role;
use crate::control_db::users;
use crate::error::ServiceError;

/// Longest username or password read from a login request.
const MAX_CREDENTIAL_BYTES: usize = 1024;

/// A login request.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// The operator's name.
    pub username: String,
    /// The operator's password.
    pub password: String,
}

/// A session: the bearer token and who it is for.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LoginResponse {
    /// Send as `Authorization: Bearer <token>`.
    pub token: String,
    /// When the token stops being accepted (24 h after login).
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: OffsetDateTime,
    /// Who logged in.
    pub user: Whoami,
}

/// The authenticated operator.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Whoami {
    /// The user's id.
    pub id: Uuid,
    /// The user's name.
    pub username: String,
    /// `admin` or `viewer`.
    pub role: Role,
}

const WRONG_CREDENTIALS: &str = "wrong username or password";

/// Exchanges a username and password for a 24-hour token. Repeated
/// failures for one name or from one address are refused for a while.
#[utoipa::path(post, path = "/api/v1/login", tag = "session", request_body = LoginRequest,
    responses((status = 200, body = LoginResponse), (status = 401, body = super::ErrorBody),
              (status = 429, body = super::ErrorBody)))]
pub async fn login(
    State(ctx): State<ApiContext>,
    ClientAddr(peer): ClientAddr,
    ApiJson(request): ApiJson<LoginRequest>,
) -> Result<Json<LoginResponse>, ServiceError> {
    if request.username.len() > MAX_CREDENTIAL_BYTES || request.password.len() > MAX_CREDENTIAL_BYTES {
        return Err(ServiceError::InvalidArgument(format!(
            "username and password are at most {MAX_CREDENTIAL_BYTES} bytes"
        )));
    }
    let ip = peer.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let username = request.username.to_lowercase();
    ctx.limiter
        .check(ip, &username, Instant::now())
        .map_err(|retry_after| ServiceError::RateLimited { retry_after })?;
    // A burst of logins must not run argon2 without bound (memory), nor
    // outrun the limiter, which learns of failures only after each check.
    let Ok(_check) = ctx.login_checks.try_acquire() else {
        return Err(ServiceError::RateLimited { retry_after: std::time::Duration::from_secs(1) });
    };
    let user =
        users::authenticate(&ctx.pool, &request.username, request.password).await.map_err(ServiceError::internal)?;
    let Some(user) = user else {
        ctx.limiter.record_failure(ip, &username, Instant::now());
        tracing::info!(%ip, "login refused");
        return Err(ServiceError::Unauthenticated(WRONG_CREDENTIALS));
    };
    ctx.limiter.record_success(ip, &username);
    let issued =
        ctx.jwt.issue(user.id, &user.username, user.role, OffsetDateTime::now_utc()).map_err(ServiceError::internal)?;
    tracing::info!(user = %user.username, %ip, "operator logged in");
    Ok(Json(LoginResponse {
        token: issued.token,
        expires_at: issued.expires_at,
        user: Whoami { id: user.id, username: user.username, role: user.role },
    }))
}

/// The operator the token belongs to.
#[utoipa::path(get, path = "/api/v1/whoami", tag = "session", security(("bearer" = [])),
    responses((status = 200, body = Whoami), (status = 401, body = super::ErrorBody)))]
pub async fn whoami(user: AuthUser) -> Json<Whoami> {
    Json(Whoami { id: user.id, username: user.name, role: user.role })
}

/// The server CA certificate (PEM) that daemons and the CLI pin. Needs no login.
#[utoipa::path(get, path = "/api/v1/ca.pem", tag = "session",
    responses((status = 200, description = "PEM certificate", content_type = "application/x-pem-file")))]
pub async fn ca_pem(State(ctx): State<ApiContext>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/x-pem-file")], ctx.ca.ca_pem().to_owned())
}
