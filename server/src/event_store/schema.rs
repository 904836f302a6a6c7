//! The `events` table: its DDL (from `schema/events.sql`) and how it is
//! applied and kept in line with the configured retention.

use super::{EVENTS_TABLE, EventStore, EventStoreError};

/// The DDL as written in `schema/events.sql`, with its `{retention_days}` slot.
pub const EVENTS_DDL_TEMPLATE: &str = include_str!("../../../schema/events.sql");

/// The `kind` column's type, as ClickHouse prints it. New `EventKind`
/// values are appended over time; ClickHouse extends an Enum8 in place.
pub const KIND_COLUMN_TYPE: &str = "Enum8('EVENT_KIND_UNSPECIFIED' = 0, 'FILE_READ' = 1, \
     'FILE_WRITE' = 2, 'EXEC' = 3, 'NET_CONNECT' = 4, 'TLS' = 5, 'EXIT' = 6, 'FORK' = 7)";

/// What applying the schema changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchemaOutcome {
    /// The events table did not exist and was created.
    pub created: bool,
    /// The table existed with another retention; its TTL was changed.
    pub retention_changed: bool,
    /// The table's `kind` enum lacked values this server knows; it was extended.
    pub kinds_extended: bool,
}

/// The events DDL for a retention of `retention_days` days.
///
/// DDL takes no bound parameters; the slot is filled with an integer only.
pub fn events_ddl(retention_days: u32) -> String {
    EVENTS_DDL_TEMPLATE.replace("{retention_days}", &retention_days.to_string())
}

/// The TTL clause as ClickHouse normalises it in `system.tables.engine_full`.
fn normalised_ttl(retention_days: u32) -> String {
    format!("TTL toDateTime(timestamp) + toIntervalDay({retention_days})")
}

/// Creates the database and the events table if missing, and sets the
/// table's TTL to the configured retention.
pub async fn apply(store: &EventStore, retention_days: u32) -> Result<SchemaOutcome, EventStoreError> {
    let database = store.database();
    store.server.query(&format!("CREATE DATABASE IF NOT EXISTS `{database}`")).execute().await?;

    let existing = table_engine(store).await?;
    let Some(engine_full) = existing else {
        store.client.query(&events_ddl(retention_days)).execute().await?;
        return Ok(SchemaOutcome { created: true, retention_changed: false, kinds_extended: false });
    };

    let retention_changed = !engine_full.contains(&normalised_ttl(retention_days));
    if retention_changed {
        store
            .client
            .query(&format!(
                "ALTER TABLE {EVENTS_TABLE} MODIFY TTL toDateTime(timestamp) + toIntervalDay({retention_days})"
            ))
            .execute()
            .await?;
    }
    let kinds_extended = column_type(store, "kind").await?.as_deref() != Some(KIND_COLUMN_TYPE);
    if kinds_extended {
        store
            .client
            .query(&format!("ALTER TABLE {EVENTS_TABLE} MODIFY COLUMN kind {KIND_COLUMN_TYPE}"))
            .execute()
            .await?;
    }
    Ok(SchemaOutcome { created: false, retention_changed, kinds_extended })
}

/// The type of a column of the events table, as ClickHouse prints it.
async fn column_type(store: &EventStore, column: &str) -> Result<Option<String>, EventStoreError> {
    let rows = store
        .server
        .query(
            "SELECT type FROM system.columns \
             WHERE database = {db:String} AND table = {table:String} AND name = {column:String}",
        )
        .param("db", store.database())
        .param("table", EVENTS_TABLE)
        .param("column", column)
        .fetch_all::<String>()
        .await?;
    Ok(rows.into_iter().next())
}

/// The `engine_full` text of the events table, or None when it does not exist.
async fn table_engine(store: &EventStore) -> Result<Option<String>, EventStoreError> {
    let rows = store
        .server
        .query("SELECT engine_full FROM system.tables WHERE database = {db:String} AND name = {table:String}")
        .param("db", store.database())
        .param("table", EVENTS_TABLE)
        .fetch_all::<String>()
        .await?;
    Ok(rows.into_iter().next())
}

/// Rows currently stored in the events table.
pub async fn event_count(store: &EventStore) -> Result<u64, EventStoreError> {
    Ok(store.client.query("SELECT count() FROM events").fetch_one::<u64>().await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ddl_carries_the_retention() {
        let ddl = events_ddl(30);
        assert!(ddl.contains("toIntervalDay(30)"));
        assert!(!ddl.contains("{retention_days}"));
        assert!(ddl.contains("CREATE TABLE IF NOT EXISTS events"));
        assert!(ddl.contains(&format!("kind                {KIND_COLUMN_TYPE},")), "DDL and constant agree");
    }
}
