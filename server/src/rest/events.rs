//! Events (`tyr events query|tail`, `tyr drift`): filtered, newest-first
//! queries over ClickHouse with every value a bound parameter, a live tail
//! as server-sent events, analytics, and drift summaries. A discovered
//! agent's filter includes the agents merged into it.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use serde::{Deserialize, Serialize};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use uuid::Uuid;

use super::context::ApiContext;
use super::extract::{AuthUser, ControlParams, FilterQuery};
use super::pagination::page_limit;
use crate::control_db::{discovered, users};
use crate::error::ServiceError;
use crate::event_query::analytics::{self, AgentTypeReach, Bucket, CountBucket, ResourceCount};
use crate::event_query::drift::{self, DiscoveredAgentDrift, DriftSummary};
use crate::event_query::{self, EventFilter, EventRow, Page, QueryError, ResolvedFilter};

/// Events a live tail may hold for a slow client before it is cut.
const TAIL_BUFFER: usize = 1024;
/// How often a live tail checks that its operator's account is still enabled.
const ACCOUNT_RECHECK: Duration = Duration::from_secs(30);

fn query_error(error: QueryError) -> ServiceError {
    match error {
        QueryError::Invalid(message) => ServiceError::InvalidArgument(message),
        QueryError::BadCursor => ServiceError::InvalidArgument("invalid cursor".to_owned()),
        QueryError::Store(error) => ServiceError::internal(error),
    }
}

/// Checks `filter` and widens a discovered agent to the agents merged into it.
async fn resolve(ctx: &ApiContext, filter: &EventFilter) -> Result<ResolvedFilter, ServiceError> {
    let ids = match filter.discovered_agent_id {
        Some(id) => discovered::merged_ids(&ctx.pool, id).await?,
        None => Vec::new(),
    };
    filter.resolve(ids).map_err(query_error)
}

/// Paging through events.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventPageControls {
    /// Items per page (1–1000, default 100).
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

impl ControlParams for EventPageControls {
    const KEYS: &'static [&'static str] = &["limit", "cursor"];
}

/// Events matching the filters, newest first (default range: the last 24 h).
#[utoipa::path(get, path = "/api/v1/events", tag = "events", params(EventFilter, EventPageControls),
    security(("bearer" = [])),
    responses((status = 200, body = Page<EventRow>), (status = 400, body = super::ErrorBody)))]
pub async fn query(
    State(ctx): State<ApiContext>,
    _user: AuthUser,
    query: FilterQuery<EventFilter, EventPageControls>,
) -> Result<Json<Page<EventRow>>, ServiceError> {
    let limit = page_limit(query.controls.limit)?;
    let filter = resolve(&ctx, &query.filter).await?;
    let page =
        event_query::search(&ctx.store, &filter, query.controls.cursor.as_deref(), limit).await.map_err(query_error)?;
    Ok(Json(page))
}

/// No controls beyond the filter.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct NoControls {}

impl ControlParams for NoControls {
    const KEYS: &'static [&'static str] = &[];
}

/// How many events match.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventCount {
    /// Matching events (each stored event once).
    pub count: u64,
}

/// How many events match the filters.
#[utoipa::path(get, path = "/api/v1/events/count", tag = "events", params(EventFilter), security(("bearer" = [])),
    responses((status = 200, body = EventCount), (status = 400, body = super::ErrorBody)))]
pub async fn count(
    State(ctx): State<ApiContext>,
    _user: AuthUser,
    query: FilterQuery<EventFilter, NoControls>,
) -> Result<Json<EventCount>, ServiceError> {
    let filter = resolve(&ctx, &query.filter).await?;
    let count = event_query::count(&ctx.store, &filter).await.map_err(query_error)?;
    Ok(Json(EventCount { count }))
}

/// New events matching the filters, as they are stored: server-sent events
/// named `event` whose data is one event (JSON); `error` events report a
/// failed poll (the tail goes on). Keep-alive comments every 15 s.
#[utoipa::path(get, path = "/api/v1/events/stream", tag = "events", params(EventFilter), security(("bearer" = [])),
    responses((status = 200, description = "text/event-stream of events", content_type = "text/event-stream"),
              (status = 400, body = super::ErrorBody)))]
pub async fn stream(
    State(ctx): State<ApiContext>,
    user: AuthUser,
    query: FilterQuery<EventFilter, NoControls>,
) -> Result<impl IntoResponse, ServiceError> {
    let filter = resolve(&ctx, &query.filter).await?;
    let Ok(permit) = Arc::clone(&ctx.tails).try_acquire_owned() else {
        return Err(ServiceError::RateLimited { retry_after: Duration::from_secs(5) });
    };
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<SseEvent, Infallible>>(TAIL_BUFFER);
    let shutdown = ctx.shutdown.clone();
    let store = ctx.store.clone();
    let pool = ctx.pool.clone();
    tokio::spawn(async move {
        let _permit = permit;
        let tail = event_query::tail(store, filter);
        tokio::pin!(tail);
        // The operator's account is checked again while the tail runs: a
        // disabled or removed account stops receiving events.
        let mut recheck = tokio::time::interval(ACCOUNT_RECHECK);
        recheck.tick().await;
        loop {
            let next = tokio::select! {
                () = shutdown.cancelled() => break,
                () = sender.closed() => break,
                _ = recheck.tick() => {
                    match users::get(&pool, user.id).await {
                        Ok(Some(account)) if account.disabled_at.is_none() => continue,
                        Ok(_) => {
                            tracing::info!(user = %user.name, "live tail closed: the account is disabled or removed");
                            break;
                        }
                        Err(error) => {
                            tracing::warn!(%error, "live tail: the account could not be checked; it goes on");
                            continue;
                        }
                    }
                }
                next = tail.next() => next,
            };
            let event = match next {
                Some(Ok(row)) => SseEvent::default().event("event").json_data(&row),
                Some(Err(error)) => Ok(SseEvent::default().event("error").data(error.to_string())),
                None => break,
            };
            let Ok(event) = event else { continue };
            if sender.try_send(Ok(event)).is_err() {
                // A client that does not keep up is cut rather than buffered without bound.
                tracing::info!("live tail closed: the client fell behind or left");
                break;
            }
        }
    });
    Ok(Sse::new(ReceiverStream::new(receiver)).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// Time-bucketed counts.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct BucketControls {
    /// `minute`, `hour` (default) or `day`.
    pub bucket: Option<Bucket>,
}

impl ControlParams for BucketControls {
    const KEYS: &'static [&'static str] = &["bucket"];
}

/// Event counts by kind and verdict per time bucket.
#[utoipa::path(get, path = "/api/v1/analytics/counts", tag = "analytics", params(EventFilter, BucketControls),
    security(("bearer" = [])),
    responses((status = 200, body = Vec<CountBucket>), (status = 400, body = super::ErrorBody)))]
pub async fn counts(
    State(ctx): State<ApiContext>,
    _user: AuthUser,
    query: FilterQuery<EventFilter, BucketControls>,
) -> Result<Json<Vec<CountBucket>>, ServiceError> {
    let filter = resolve(&ctx, &query.filter).await?;
    let bucket = query.controls.bucket.unwrap_or(Bucket::Hour);
    Ok(Json(analytics::counts_over_time(&ctx.store, &filter, bucket).await.map_err(query_error)?))
}

/// How many of the top entries.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TopControls {
    /// Entries to return (1–1000, default 10).
    pub n: Option<u32>,
}

impl ControlParams for TopControls {
    const KEYS: &'static [&'static str] = &["n"];
}

/// The resources with the most matching events.
#[utoipa::path(get, path = "/api/v1/analytics/top-resources", tag = "analytics", params(EventFilter, TopControls),
    security(("bearer" = [])),
    responses((status = 200, body = Vec<ResourceCount>), (status = 400, body = super::ErrorBody)))]
pub async fn top_resources(
    State(ctx): State<ApiContext>,
    _user: AuthUser,
    query: FilterQuery<EventFilter, TopControls>,
) -> Result<Json<Vec<ResourceCount>>, ServiceError> {
    let filter = resolve(&ctx, &query.filter).await?;
    let n = query.controls.n.unwrap_or(10);
    if n == 0 || n > analytics::MAX_TOP {
        return Err(ServiceError::InvalidArgument(format!("n must be between 1 and {}", analytics::MAX_TOP)));
    }
    Ok(Json(analytics::top_resources(&ctx.store, &filter, n).await.map_err(query_error)?))
}

/// Hosts and server names (SNI) per agent type.
#[utoipa::path(get, path = "/api/v1/analytics/agent-types", tag = "analytics", params(EventFilter),
    security(("bearer" = [])),
    responses((status = 200, body = Vec<AgentTypeReach>), (status = 400, body = super::ErrorBody)))]
pub async fn agent_types(
    State(ctx): State<ApiContext>,
    _user: AuthUser,
    query: FilterQuery<EventFilter, NoControls>,
) -> Result<Json<Vec<AgentTypeReach>>, ServiceError> {
    let filter = resolve(&ctx, &query.filter).await?;
    Ok(Json(analytics::agent_type_reach(&ctx.store, &filter).await.map_err(query_error)?))
}

/// How many latest drifting events to include.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DriftControls {
    /// Latest drifting events to include (0–1000, default 20).
    pub latest: Option<u32>,
}

impl ControlParams for DriftControls {
    const KEYS: &'static [&'static str] = &["latest"];
}

/// Where the kernel and the server disagree: drift counts per daemon and
/// per discovered agent, unenforced events counted apart, and the latest
/// drifting events.
#[utoipa::path(get, path = "/api/v1/drift", tag = "drift", params(EventFilter, DriftControls), security(("bearer" = [])),
    responses((status = 200, body = DriftSummary), (status = 400, body = super::ErrorBody)))]
pub async fn summary(
    State(ctx): State<ApiContext>,
    _user: AuthUser,
    query: FilterQuery<EventFilter, DriftControls>,
) -> Result<Json<DriftSummary>, ServiceError> {
    let filter = resolve(&ctx, &query.filter).await?;
    let latest = query.controls.latest.unwrap_or(20);
    let mut summary = drift::drift_summary(&ctx.store, &filter, latest).await.map_err(query_error)?;
    let ids: Vec<Uuid> = summary.by_discovered_agent.iter().filter_map(|row| row.discovered_agent_id).collect();
    let survivors = discovered::survivors(&ctx.pool, &ids).await?;
    summary.by_discovered_agent = fold_merged(std::mem::take(&mut summary.by_discovered_agent), &survivors);
    Ok(Json(summary))
}

/// Attributes the drift of merged agents to their survivors, most drift first.
fn fold_merged(rows: Vec<DiscoveredAgentDrift>, survivors: &HashMap<Uuid, Uuid>) -> Vec<DiscoveredAgentDrift> {
    let mut folded: Vec<DiscoveredAgentDrift> = Vec::with_capacity(rows.len());
    for mut row in rows {
        let merged = row.discovered_agent_id.and_then(|id| survivors.get(&id).copied());
        if merged.is_some() {
            row.discovered_agent_id = merged;
        }
        match folded
            .iter_mut()
            .find(|f| f.daemon_id == row.daemon_id && f.discovered_agent_id == row.discovered_agent_id)
        {
            Some(into) => {
                into.events += row.events;
                into.drift_events += row.drift_events;
                into.unenforced_events += row.unenforced_events;
                // Same RFC 3339 form, all UTC: text order is time order.
                into.last_drift_at = into.last_drift_at.take().max(row.last_drift_at);
                if merged.is_none() {
                    into.agent_type = row.agent_type;
                }
            }
            None => folded.push(row),
        }
    }
    folded.sort_by(|a, b| b.drift_events.cmp(&a.drift_events).then(b.events.cmp(&a.events)));
    folded
}
