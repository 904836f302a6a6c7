//! The server's one error type for requests from daemons (gRPC) and from
//! operators (REST): each variant says what the caller can do about it, has a
//! stable code, and maps to one gRPC status and one HTTP status. Internal
//! causes are logged where the error is turned into a response and never
//! shown to the caller.

use std::time::Duration;

use axum::http::StatusCode;
use tonic::{Code, Status};

/// A request the server could not serve.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The caller's credential (token, password or certificate) is not accepted.
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// The caller is known but may not do this.
    #[error("{0}")]
    PermissionDenied(&'static str),
    /// The request is malformed; the message says what to fix.
    #[error("{0}")]
    InvalidArgument(String),
    /// A policy document does not validate; each error names its document,
    /// rule, field, line and column.
    #[error("policy is not valid:\n{0}")]
    InvalidPolicy(tyr_common::policy::PolicyErrors),
    /// What the request names does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the current state (a duplicate name, a
    /// policy still assigned); the message says which.
    #[error("{0}")]
    Conflict(String),
    /// The request (or one of its parts) is larger than the server accepts.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// Too many attempts; retry after the given time.
    #[error("too many attempts; retry in {} s", retry_after.as_secs().max(1))]
    RateLimited {
        /// How long the caller should wait.
        retry_after: Duration,
    },
    /// The server cannot serve the request now; retrying later may succeed.
    #[error("{0}")]
    Unavailable(&'static str),
    /// A fault of the server's own (database, bug): logged, shown as "internal error".
    #[error("internal error: {0:#}")]
    Internal(#[from] anyhow::Error),
}

impl ServiceError {
    /// Wraps any error as an internal one.
    pub fn internal(error: impl Into<anyhow::Error>) -> Self {
        Self::Internal(error.into())
    }

    /// The stable, machine-readable code of this error (REST `error.code`).
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unauthenticated(_) => "unauthenticated",
            Self::PermissionDenied(_) => "permission_denied",
            Self::InvalidArgument(_) => "invalid_argument",
            Self::InvalidPolicy(_) => "invalid_policy",
            Self::NotFound(_) => "not_found",
            Self::Conflict(_) => "conflict",
            Self::PayloadTooLarge(_) => "payload_too_large",
            Self::RateLimited { .. } => "rate_limited",
            Self::Unavailable(_) => "unavailable",
            Self::Internal(_) => "internal",
        }
    }

    /// The HTTP status of this error.
    pub fn http_status(&self) -> StatusCode {
        match self {
            Self::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Self::PermissionDenied(_) => StatusCode::FORBIDDEN,
            Self::InvalidArgument(_) | Self::InvalidPolicy(_) => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The gRPC status code of this error.
    pub fn grpc_code(&self) -> Code {
        match self {
            Self::Unauthenticated(_) => Code::Unauthenticated,
            Self::PermissionDenied(_) => Code::PermissionDenied,
            Self::InvalidArgument(_) | Self::InvalidPolicy(_) => Code::InvalidArgument,
            Self::NotFound(_) => Code::NotFound,
            Self::Conflict(_) => Code::FailedPrecondition,
            Self::PayloadTooLarge(_) | Self::RateLimited { .. } => Code::ResourceExhausted,
            Self::Unavailable(_) => Code::Unavailable,
            Self::Internal(_) => Code::Internal,
        }
    }

    /// The message a caller may see: internal causes are logged (with
    /// `context` naming who was being served) and replaced.
    pub fn public_message(&self, context: &'static str) -> String {
        match self {
            Self::Internal(cause) => {
                tracing::error!(error = format!("{cause:#}"), serving = context, "internal error");
                "internal error".to_owned()
            }
            other => other.to_string(),
        }
    }
}

impl From<ServiceError> for Status {
    fn from(error: ServiceError) -> Self {
        Status::new(error.grpc_code(), error.public_message("a daemon"))
    }
}

impl From<crate::control_db::ControlDbError> for ServiceError {
    fn from(error: crate::control_db::ControlDbError) -> Self {
        Self::internal(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_causes_are_not_shown() {
        let status = Status::from(ServiceError::internal(anyhow::anyhow!("password=hunter2 connection refused")));
        assert_eq!(status.code(), Code::Internal);
        assert_eq!(status.message(), "internal error");
        let status = Status::from(ServiceError::InvalidArgument("batch has 20000 events, at most 10000".into()));
        assert_eq!(status.code(), Code::InvalidArgument);
    }

    #[test]
    fn each_error_has_one_code_and_status_pair() {
        let errors = [
            ServiceError::Unauthenticated("x"),
            ServiceError::PermissionDenied("x"),
            ServiceError::InvalidArgument("x".into()),
            ServiceError::InvalidPolicy(tyr_common::policy::PolicyErrors(Vec::new())),
            ServiceError::NotFound("x".into()),
            ServiceError::Conflict("x".into()),
            ServiceError::PayloadTooLarge("x".into()),
            ServiceError::RateLimited { retry_after: Duration::from_secs(3) },
            ServiceError::Unavailable("x"),
            ServiceError::internal(anyhow::anyhow!("x")),
        ];
        let codes: std::collections::BTreeSet<_> = errors.iter().map(ServiceError::code).collect();
        let statuses: std::collections::BTreeSet<_> = errors.iter().map(|e| e.http_status().as_u16()).collect();
        assert_eq!(codes.len(), errors.len());
        // Two kinds of bad input share 400.
        assert_eq!(statuses.len(), errors.len() - 1);
        assert_eq!(errors[7].to_string(), "too many attempts; retry in 3 s");
    }
}
