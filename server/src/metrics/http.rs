//! The metrics listener: `GET /metrics` in the Prometheus text format
//! (OpenMetrics when the scraper asks for it, as Prometheus does), 404
//! anywhere else (`tyr_common::exposition`, shared with tyrd). Plain HTTP
//! on its own address, loopback by default: the figures are operational,
//! not secret, but nothing outside the host needs them unless the operator
//! says so.

use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::Metrics;

/// Serves `/metrics` on `listener` until `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, shutdown: CancellationToken) -> anyhow::Result<()> {
    tyr_common::exposition::serve(listener, metrics, shutdown).await.context("serving metrics")
}
