//! The server's one error type for requests from daemons (and, later,
//! operators): each variant says what the caller can do about it, and maps to
//! one gRPC status. Internal causes are logged here and never shown to the
//! caller.

use tonic::{Code, Status};

/// A request the server could not serve.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The caller's credential (token or certificate) is not accepted.
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// The request is malformed; the message says what to fix.
    #[error("{0}")]
    InvalidArgument(String),
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
}

impl From<ServiceError> for Status {
    fn from(error: ServiceError) -> Self {
        match error {
            ServiceError::Unauthenticated(message) => Status::new(Code::Unauthenticated, message),
            ServiceError::InvalidArgument(message) => Status::new(Code::InvalidArgument, message),
            ServiceError::Unavailable(message) => Status::new(Code::Unavailable, message),
            ServiceError::Internal(cause) => {
                tracing::error!(error = format!("{cause:#}"), "internal error serving a daemon");
                Status::new(Code::Internal, "internal error")
            }
        }
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
}
