//! Scratch PostgreSQL and ClickHouse databases for the ingest and drift
//! tests: each test gets its own, migrated, and drops it at the end.

#![allow(dead_code)]

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, PgPool};
use tyr_server::config::EventStoreConfig;
use tyr_server::control_db;
use tyr_server::event_store::{EventStore, schema};

use crate::support;

/// A fresh, migrated PostgreSQL database.
pub struct ScratchPg {
    admin: PgPool,
    name: String,
    /// Pool on the scratch database.
    pub pool: PgPool,
}

impl ScratchPg {
    /// Creates and migrates the database.
    pub async fn create() -> Self {
        let options = PgConnectOptions::from_str(&support::database_url()).expect("valid URL");
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await
            .expect("PostgreSQL must be running (deploy/dev/setup.sh starts it)");
        let name = support::scratch_name("tyr_ingest");
        // Identifiers cannot be bound; the name is generated above.
        sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .expect("create scratch database");
        let pool =
            PgPoolOptions::new().max_connections(4).connect_with(options.database(&name)).await.expect("connect");
        control_db::migrate(&pool).await.expect("migrations apply");
        Self { admin, name, pool }
    }

    /// Drops the database.
    pub async fn drop_now(self) {
        self.pool.close().await;
        sqlx::raw_sql(AssertSqlSafe(format!("DROP DATABASE {} WITH (FORCE)", self.name)))
            .execute(&self.admin)
            .await
            .expect("drop scratch database");
    }
}

/// The event store configuration of a ClickHouse database at `url`.
pub fn store_config(url: &str, database: &str) -> EventStoreConfig {
    EventStoreConfig {
        url: url.to_owned(),
        database: database.to_owned(),
        user: None,
        password: None,
        retention_days: 30,
    }
}

/// A fresh ClickHouse database with the events table, on the dev endpoint.
pub async fn scratch_store() -> EventStore {
    let store = EventStore::new(&store_config(&support::clickhouse_url(), &support::scratch_name("tyr_ingest")))
        .expect("valid config");
    schema::apply(&store, 30).await.expect("ClickHouse must be running (deploy/dev/setup.sh starts it)");
    store
}

/// Drops a scratch ClickHouse database.
pub async fn drop_store(store: &EventStore) {
    let database = store.database().to_owned();
    store.client().query(&format!("DROP DATABASE {database}")).execute().await.expect("drop scratch database");
}
