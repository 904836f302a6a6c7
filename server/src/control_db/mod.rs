//! PostgreSQL control data: connection pool and schema migrations.
//!
//! The migrations live in the repository's `migrations/` folder and are
//! embedded into the binary, so a deployed server migrates itself.

pub mod audit;
pub mod daemons;
pub mod discovered;
pub mod policies;
pub mod policy_catalog;
pub mod tokens;
pub mod users;

use std::time::Duration;

use sqlx::PgPool;
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::postgres::PgPoolOptions;

use crate::config::ControlDbConfig;

/// The control-data schema, embedded at build time.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// How long to wait for a connection before reporting PostgreSQL as down.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of the control database.
#[derive(Debug, thiserror::Error)]
pub enum ControlDbError {
    #[error("cannot connect to PostgreSQL: {0}")]
    Connect(#[source] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] MigrateError),
    #[error("PostgreSQL query failed: {0}")]
    Query(#[from] sqlx::Error),
}

/// Opens a connection pool to the control database.
pub async fn connect(config: &ControlDbConfig) -> Result<PgPool, ControlDbError> {
    PgPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect(&config.url)
        .await
        .map_err(ControlDbError::Connect)
}

/// Applies every migration not applied yet; returns how many were applied.
pub async fn migrate(pool: &PgPool) -> Result<usize, ControlDbError> {
    let before = applied_versions(pool).await?;
    MIGRATOR.run(pool).await?;
    let after = applied_versions(pool).await?;
    Ok(after.len().saturating_sub(before.len()))
}

/// Versions of the migrations applied to this database, oldest first.
///
/// An empty list means the database has never been migrated.
pub async fn applied_versions(pool: &PgPool) -> Result<Vec<i64>, ControlDbError> {
    let table: Option<String> =
        sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations')::text").fetch_one(pool).await?;
    if table.is_none() {
        return Ok(Vec::new());
    }
    let versions = sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
        .fetch_all(pool)
        .await?;
    Ok(versions)
}
