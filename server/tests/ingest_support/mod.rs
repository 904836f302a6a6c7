//! Scratch PostgreSQL and ClickHouse databases for the ingest and drift
//! tests: each test gets its own, migrated, and drops it at the end.

#![allow(dead_code)]

use tyr_server::config::EventStoreConfig;
use tyr_server::event_store::{EventStore, schema};

use crate::support;

/// A fresh, migrated PostgreSQL database.
pub async fn scratch_pg() -> support::ScratchDb {
    support::ScratchDb::migrated("tyr_ingest").await
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
