//! Oversized requests: a body declared larger than the API accepts is
//! refused with 413 before any handler runs. Up to a bound, the body is
//! read and discarded first, so that the client (which is still sending)
//! gets the answer instead of a broken connection; beyond it the
//! connection is simply closed.

use axum::extract::Request;
use axum::http::header::CONTENT_LENGTH;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio_stream::StreamExt;

use crate::error::ServiceError;

/// Largest refused body that is still drained so the client reads the 413.
const DRAIN_LIMIT: u64 = 64 * 1024 * 1024;

/// Refuses requests whose declared body exceeds [`super::MAX_BODY_BYTES`].
/// (Bodies without a declared length are cut by the body limit layer.)
pub async fn refuse_oversized(request: Request, next: Next) -> Response {
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    match declared {
        Some(length) if length > super::MAX_BODY_BYTES as u64 => {
            if length <= DRAIN_LIMIT {
                let mut body = request.into_body().into_data_stream();
                while let Some(chunk) = body.next().await {
                    if chunk.is_err() {
                        break;
                    }
                }
            }
            ServiceError::PayloadTooLarge(format!(
                "request body of {length} bytes is larger than the {} bytes accepted",
                super::MAX_BODY_BYTES
            ))
            .into_response()
        }
        _ => next.run(request).await,
    }
}
