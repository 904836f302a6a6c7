//! How a [`ServiceError`] reaches an operator: one JSON shape with a stable
//! code, the matching HTTP status, `Retry-After` when rate limited, and
//! internal causes logged rather than shown. Rejections of axum's own
//! extractors (bad JSON, bad path, oversized body) become the same shape.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::error::ServiceError;

/// The body of every error response.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code: `unauthenticated`, `permission_denied`,
    /// `invalid_argument`, `invalid_policy`, `not_found`, `conflict`,
    /// `payload_too_large`, `rate_limited`, `unavailable`, `internal`.
    pub code: String,
    /// What to do about it, for a person.
    pub message: String,
    /// For `invalid_policy`: each error with its document, rule, field, line and column.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<Vec<PolicyErrorDetail>>,
}

/// One policy validation error.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PolicyErrorDetail {
    /// The document's name.
    pub document: String,
    /// The rule's name (or `#N`), when the error is in a rule.
    pub rule: Option<String>,
    /// The field, when the error is in one.
    pub field: Option<String>,
    /// 1-based line; 0 when unknown.
    pub line: usize,
    /// 1-based column; 0 when unknown.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

/// The details of a set of policy errors.
pub fn policy_error_details(errors: &tyr_common::policy::PolicyErrors) -> Vec<PolicyErrorDetail> {
    errors
        .0
        .iter()
        .map(|e| PolicyErrorDetail {
            document: e.document.clone(),
            rule: e.rule.clone(),
            field: e.field.clone(),
            line: e.line,
            column: e.column,
            message: e.message.clone(),
        })
        .collect()
}

impl IntoResponse for ServiceError {
    fn into_response(self) -> Response {
        let status = self.http_status();
        let details = match &self {
            Self::InvalidPolicy(errors) => Some(policy_error_details(errors)),
            _ => None,
        };
        let retry_after = match &self {
            Self::RateLimited { retry_after } => Some(retry_after.as_secs().max(1)),
            _ => None,
        };
        let body = ErrorBody {
            error: ErrorDetail { code: self.code().to_owned(), message: self.public_message("an operator"), details },
        };
        let mut response = (status, Json(body)).into_response();
        if let Some(seconds) = retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<JsonRejection> for ServiceError {
    fn from(rejection: JsonRejection) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return Self::PayloadTooLarge(format!("request body is larger than {} bytes", super::MAX_BODY_BYTES));
        }
        Self::InvalidArgument(rejection.body_text())
    }
}

impl From<PathRejection> for ServiceError {
    fn from(rejection: PathRejection) -> Self {
        Self::InvalidArgument(rejection.body_text())
    }
}

impl From<QueryRejection> for ServiceError {
    fn from(rejection: QueryRejection) -> Self {
        Self::InvalidArgument(rejection.body_text())
    }
}

/// Any path the API does not have.
pub async fn no_such_route() -> ServiceError {
    ServiceError::NotFound("no such API route".to_owned())
}

/// A path the API has, with a method it does not take.
pub async fn method_not_allowed() -> Response {
    let body = ErrorBody {
        error: ErrorDetail {
            code: "method_not_allowed".to_owned(),
            message: "this route does not take this method".to_owned(),
            details: None,
        },
    };
    (StatusCode::METHOD_NOT_ALLOWED, Json(body)).into_response()
}
