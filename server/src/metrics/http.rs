//! The metrics listener: `GET /metrics` in the Prometheus text format
//! (OpenMetrics when the scraper asks for it, as Prometheus does), 404
//! anywhere else. Plain HTTP on its own address, loopback by default: the
//! figures are operational, not secret, but nothing outside the host needs
//! them unless the operator says so.

use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::header::{ACCEPT, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{Format, Metrics};

/// Serves `/metrics` on `listener` until `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let address = listener.local_addr().ok();
    tracing::info!(metrics = ?address, "serving metrics");
    axum::serve(listener, router(metrics))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .context("serving metrics")?;
    Ok(())
}

/// The metrics routes: `GET /metrics`, 404 for everything else.
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new().route("/metrics", get(scrape)).fallback(not_found).with_state(metrics)
}

/// OpenMetrics when the `Accept` header names it, the 0.0.4 text otherwise.
fn negotiate(headers: &HeaderMap) -> Format {
    let accepts_openmetrics = headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|value| value.contains("application/openmetrics-text"));
    if accepts_openmetrics { Format::OpenMetrics } else { Format::PrometheusText }
}

async fn scrape(State(metrics): State<Arc<Metrics>>, headers: HeaderMap) -> Response {
    let format = negotiate(&headers);
    match metrics.encode(format) {
        Ok(text) => ([(CONTENT_TYPE, format.content_type())], text).into_response(),
        Err(error) => {
            tracing::error!(%error, "cannot encode metrics");
            (StatusCode::INTERNAL_SERVER_ERROR, "metrics unavailable\n").into_response()
        }
    }
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found; metrics are at /metrics\n").into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn negotiates_the_format_from_accept() {
        let mut headers = HeaderMap::new();
        assert_eq!(negotiate(&headers), Format::PrometheusText);
        headers.insert(
            ACCEPT,
            HeaderValue::from_static(
                "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3,*/*;q=0.1",
            ),
        );
        assert_eq!(negotiate(&headers), Format::OpenMetrics);
    }
}
