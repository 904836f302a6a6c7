//! Administrative commands: migrate the control database, apply the event
//! schema, and report the state of both stores.

use anyhow::Context;
use serde::Serialize;

use crate::config::{ControlDbConfig, EventStoreConfig};
use crate::control_db;
use crate::event_store::{EventStore, schema};

/// Applies pending PostgreSQL migrations; returns how many were applied.
pub async fn migrate(config: &ControlDbConfig) -> anyhow::Result<usize> {
    let pool = control_db::connect(config).await?;
    let applied = control_db::migrate(&pool).await?;
    pool.close().await;
    Ok(applied)
}

/// Creates or updates the ClickHouse events table.
pub async fn apply_event_schema(config: &EventStoreConfig) -> anyhow::Result<schema::SchemaOutcome> {
    let store = EventStore::new(config)?;
    schema::apply(&store, config.retention_days)
        .await
        .with_context(|| format!("applying the events schema to {}", config.url))
}

/// Reads a policy file and makes it the base policy of the fleet or of one daemon.
pub async fn set_policy(
    config: &ControlDbConfig,
    file: &std::path::Path,
    daemon: Option<uuid::Uuid>,
    name: Option<String>,
) -> anyhow::Result<control_db::policies::StoredPolicy> {
    let yaml = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let name = name.unwrap_or_else(|| daemon.map_or_else(|| "fleet-base".to_owned(), |id| format!("daemon-{id}")));
    let pool = control_db::connect(config).await?;
    control_db::migrate(&pool).await?;
    let stored = control_db::policies::set_base(&pool, &name, &yaml, daemon).await;
    pool.close().await;
    Ok(stored?)
}

/// The state of both stores, as `tyr-server status` prints it.
#[derive(Debug, Serialize)]
pub struct StoreStatus {
    /// Migrations applied to PostgreSQL, by version.
    pub control_db_migrations: Vec<i64>,
    /// Migrations this binary knows but the database lacks.
    pub control_db_pending: usize,
    /// Version string ClickHouse reports.
    pub clickhouse_version: String,
    /// ClickHouse database holding the events.
    pub clickhouse_database: String,
    /// Rows in the events table.
    pub events_stored: u64,
}

/// Reads the state of both stores; fails when either is unreachable.
pub async fn status(control: &ControlDbConfig, events: &EventStoreConfig) -> anyhow::Result<StoreStatus> {
    let pool = control_db::connect(control).await?;
    let applied = control_db::applied_versions(&pool).await?;
    pool.close().await;
    let known = control_db::MIGRATOR.iter().count();

    let store = EventStore::new(events)?;
    let clickhouse_version =
        store.server_version().await.with_context(|| format!("ClickHouse at {} does not answer", events.url))?;
    let events_stored =
        schema::event_count(&store).await.context("reading the events table (run `tyr-server schema` first)")?;

    Ok(StoreStatus {
        control_db_pending: known.saturating_sub(applied.len()),
        control_db_migrations: applied,
        clickhouse_version,
        clickhouse_database: store.database().to_owned(),
        events_stored,
    })
}
