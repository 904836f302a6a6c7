//! Request extractors: the authenticated operator (from a bearer JWT,
//! checked against the user's current row so a disabled account or a
//! changed role counts at once), the admin gate, and JSON, path and query
//! extractors whose rejections use the API's error shape.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequest, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use time::OffsetDateTime;
use uuid::Uuid;

use super::context::ApiContext;
use crate::auth::Role;
use crate::control_db::audit::Actor;
use crate::control_db::users;
use crate::error::ServiceError;

/// A JSON body; malformed JSON, unknown fields and oversized bodies are 4xx
/// in the API's error shape.
#[derive(Debug, FromRequest)]
#[from_request(via(axum::Json), rejection(ServiceError))]
pub struct ApiJson<T>(pub T);

/// Path parameters (an invalid UUID is a 400 in the API's error shape).
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ServiceError))]
pub struct ApiPath<T>(pub T);

/// Query parameters (unknown or malformed ones are a 400).
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ServiceError))]
pub struct ApiQuery<T>(pub T);

/// The operator making the request.
#[derive(Debug, Clone)]
pub struct AuthUser {
    /// The user's id.
    pub id: Uuid,
    /// The user's name.
    pub name: String,
    /// The user's role now (not when the token was issued).
    pub role: Role,
    /// The client's address.
    pub source: Option<IpAddr>,
}

impl AuthUser {
    /// The audit log's actor for changes this operator makes.
    pub fn actor(&self) -> Actor {
        Actor { user_id: Some(self.id), name: self.name.clone(), source: self.source }
    }
}

/// The client's address, when the server knows it.
pub fn client_address(parts: &Parts) -> Option<IpAddr> {
    parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|info| info.0.ip())
}

const NOT_LOGGED_IN: &str =
    "missing or malformed Authorization header: log in and send `Authorization: Bearer <token>`";
const BAD_TOKEN: &str = "token is invalid or expired: log in again";
const ACCOUNT_GONE: &str = "account is disabled or removed";

impl FromRequestParts<ApiContext> for AuthUser {
    type Rejection = ServiceError;

    async fn from_request_parts(parts: &mut Parts, ctx: &ApiContext) -> Result<Self, Self::Rejection> {
        let header = parts.headers.get(AUTHORIZATION).and_then(|value| value.to_str().ok());
        let token = header
            .and_then(|value| value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|token| !token.is_empty())
            .ok_or(ServiceError::Unauthenticated(NOT_LOGGED_IN))?;
        let claims =
            ctx.jwt.verify(token, OffsetDateTime::now_utc()).map_err(|_| ServiceError::Unauthenticated(BAD_TOKEN))?;
        let user = users::get(&ctx.pool, claims.sub).await.map_err(ServiceError::internal)?;
        match user {
            Some(user) if user.disabled_at.is_none() => {
                Ok(Self { id: user.id, name: user.username, role: user.role, source: client_address(parts) })
            }
            _ => Err(ServiceError::Unauthenticated(ACCOUNT_GONE)),
        }
    }
}

/// An operator with the `admin` role: everything that changes state.
#[derive(Debug, Clone)]
pub struct AdminUser(pub AuthUser);

impl FromRequestParts<ApiContext> for AdminUser {
    type Rejection = ServiceError;

    async fn from_request_parts(parts: &mut Parts, ctx: &ApiContext) -> Result<Self, Self::Rejection> {
        let user = AuthUser::from_request_parts(parts, ctx).await?;
        if user.role != Role::Admin {
            return Err(ServiceError::PermissionDenied("this needs the admin role"));
        }
        Ok(Self(user))
    }
}

/// The client's address, when the server knows it.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(client_address(parts)))
    }
}

/// Page controls (and other per-route settings) that travel in the query
/// string beside a filter which refuses unknown fields.
pub trait ControlParams: serde::de::DeserializeOwned {
    /// The query keys that belong to these controls, not to the filter.
    const KEYS: &'static [&'static str];
}

/// A query string split between a filter `F` and controls `P`, each
/// refusing keys that are neither's.
#[derive(Debug)]
pub struct FilterQuery<F, P> {
    /// The filter.
    pub filter: F,
    /// The controls.
    pub controls: P,
}

fn query_part<T: serde::de::DeserializeOwned>(pairs: &[&str]) -> Result<T, ServiceError> {
    let uri: axum::http::Uri = format!("/?{}", pairs.join("&"))
        .parse()
        .map_err(|_| ServiceError::InvalidArgument("malformed query string".to_owned()))?;
    Ok(axum::extract::Query::<T>::try_from_uri(&uri)?.0)
}

impl<S: Send + Sync, F: serde::de::DeserializeOwned, P: ControlParams> FromRequestParts<S> for FilterQuery<F, P> {
    type Rejection = ServiceError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let raw = parts.uri.query().unwrap_or("");
        let (controls, filter): (Vec<&str>, Vec<&str>) = raw
            .split('&')
            .filter(|pair| !pair.is_empty())
            .partition(|pair| P::KEYS.contains(&pair.split('=').next().unwrap_or("")));
        Ok(Self { filter: query_part(&filter)?, controls: query_part(&controls)? })
    }
}
