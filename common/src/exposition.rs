//! Prometheus exposition, one implementation for tyr-server and tyrd:
//! `GET /metrics` answering OpenMetrics when the scraper asks for it (as
//! Prometheus does) and the 0.0.4 text otherwise, 404 anywhere else, and
//! the helpers collectors use to write families of counters and gauges
//! read from the daemons' own atomics at scrape time.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header::{ACCEPT, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Exposition formats `/metrics` answers in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0 text (what Prometheus asks for first).
    OpenMetrics,
    /// The Prometheus text format 0.0.4 (what `curl` gets).
    PrometheusText,
}

impl Format {
    /// The `Content-Type` of this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::PrometheusText => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        }
    }
}

/// What a metrics endpoint serves: its registry, written in a format.
pub trait Scrape: Send + Sync + 'static {
    /// The metrics as text in `format`.
    fn scrape(&self, format: Format) -> Result<String, std::fmt::Error>;
}

/// Writes `registry` in `format`.
pub fn encode(registry: &Registry, format: Format) -> Result<String, std::fmt::Error> {
    let mut text = String::with_capacity(16 * 1024);
    match format {
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut text, registry),
        Format::PrometheusText => prometheus_client::encoding::prometheus_text::encode(&mut text, registry),
    }?;
    Ok(text)
}

/// OpenMetrics when the `Accept` header names it, the 0.0.4 text otherwise.
pub fn negotiate(headers: &HeaderMap) -> Format {
    let openmetrics = headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|value| value.contains("application/openmetrics-text"));
    if openmetrics { Format::OpenMetrics } else { Format::PrometheusText }
}

/// The metrics routes: `GET /metrics`, 404 for everything else.
pub fn router<M: Scrape>(metrics: Arc<M>) -> Router {
    Router::new().route("/metrics", get(scrape::<M>)).fallback(not_found).with_state(metrics)
}

/// Serves `/metrics` on `listener` until `shutdown` is cancelled.
pub async fn serve<M: Scrape>(
    listener: TcpListener,
    metrics: Arc<M>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let address = listener.local_addr().ok();
    tracing::info!(metrics = ?address, "serving metrics");
    axum::serve(listener, router(metrics)).with_graceful_shutdown(shutdown.cancelled_owned()).await
}

async fn scrape<M: Scrape>(State(metrics): State<Arc<M>>, headers: HeaderMap) -> Response {
    let format = negotiate(&headers);
    match metrics.scrape(format) {
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

/// Writes one counter family without labels.
pub fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> Result<(), std::fmt::Error> {
    let counter = ConstCounter::new(value);
    counter.encode(encoder.encode_descriptor(name, &format!("{help}."), None, counter.metric_type())?)
}

/// Writes one gauge family without labels.
pub fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: i64) -> Result<(), std::fmt::Error> {
    let gauge = ConstGauge::new(value);
    gauge.encode(encoder.encode_descriptor(name, &format!("{help}."), None, gauge.metric_type())?)
}

/// Writes one counter family with one `label` value per entry.
pub fn labelled_counters<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    counts: impl IntoIterator<Item = (&'a str, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, &format!("{help}."), None, MetricType::Counter)?;
    for (value, count) in counts {
        ConstCounter::new(count).encode(family.encode_family(&[(label, value)])?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn negotiates_the_format_from_accept() {
        let mut headers = HeaderMap::new();
        assert_eq!(negotiate(&headers), Format::PrometheusText);
        headers.insert(ACCEPT, HeaderValue::from_static("application/openmetrics-text;version=1.0.0,text/plain;q=0.5"));
        assert_eq!(negotiate(&headers), Format::OpenMetrics);
        headers.insert(ACCEPT, HeaderValue::from_static("text/plain"));
        assert_eq!(negotiate(&headers), Format::PrometheusText);
    }
}
