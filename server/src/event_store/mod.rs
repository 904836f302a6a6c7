//! The ClickHouse event store: the client, the `events` schema, and the Arrow
//! batches events are written in.

pub mod arrow_batch;
pub mod schema;

use arrow::record_batch::RecordBatch;
use clickhouse::Client;
use clickhouse_ext_arrow::ArrowClientExt;

use crate::config::EventStoreConfig;

/// Name of the events table inside the configured database.
pub const EVENTS_TABLE: &str = "events";

/// Errors of the event store.
#[derive(Debug, thiserror::Error)]
pub enum EventStoreError {
    #[error("invalid ClickHouse database name {0:?}: use letters, digits and underscores")]
    InvalidDatabaseName(String),
    #[error("ClickHouse request failed: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
}

/// A handle on the ClickHouse database holding Tyr's events.
#[derive(Clone)]
pub struct EventStore {
    /// Client scoped to `database`.
    client: Client,
    /// Client with no database selected, for statements that create it.
    server: Client,
    database: String,
}

impl std::fmt::Debug for EventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The clients hold credentials: never print them.
        f.debug_struct("EventStore").field("database", &self.database).finish_non_exhaustive()
    }
}

impl EventStore {
    /// Builds the clients; does not connect until the first request.
    pub fn new(config: &EventStoreConfig) -> Result<Self, EventStoreError> {
        if !is_identifier(&config.database) {
            return Err(EventStoreError::InvalidDatabaseName(config.database.clone()));
        }
        let mut server = Client::default().with_url(&config.url);
        if let Some(user) = &config.user {
            server = server.with_user(user);
        }
        if let Some(password) = &config.password {
            server = server.with_password(password);
        }
        Ok(Self { client: server.clone().with_database(&config.database), server, database: config.database.clone() })
    }

    /// The client scoped to Tyr's database.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The database holding the events table.
    pub fn database(&self) -> &str {
        &self.database
    }

    /// Checks that ClickHouse answers; returns its version.
    pub async fn server_version(&self) -> Result<String, EventStoreError> {
        Ok(self.server.query("SELECT version()").fetch_one::<String>().await?)
    }

    /// The highest per-host seq stored for the daemon `agent_id` (0: none).
    pub async fn max_seq(&self, agent_id: uuid::Uuid) -> Result<u64, EventStoreError> {
        const MAX_SEQ: &str = "SELECT max(seq) FROM events WHERE agent_id = {agent_id:UUID}";
        debug_assert_eq!(EVENTS_TABLE, "events");
        Ok(self.client.query(MAX_SEQ).param("agent_id", agent_id.to_string()).fetch_one::<u64>().await?)
    }

    /// Writes Arrow batches of events (see [`arrow_batch`]) in one INSERT.
    pub async fn insert_batches(&self, batches: &[RecordBatch]) -> Result<(), EventStoreError> {
        let mut insert = self.client.insert_arrow(EVENTS_TABLE)?;
        for batch in batches {
            insert.write(batch).await?;
        }
        insert.end().await?;
        Ok(())
    }
}

/// True for names safe to splice into DDL between backquotes.
fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 64
}

#[cfg(test)]
mod tests {
    use super::is_identifier;

    #[test]
    fn identifiers() {
        assert!(is_identifier("tyr"));
        assert!(is_identifier("_tyr_2"));
        assert!(!is_identifier(""));
        assert!(!is_identifier("2tyr"));
        assert!(!is_identifier("tyr`; DROP"));
        assert!(!is_identifier("tyr-events"));
        assert!(!is_identifier(&"a".repeat(65)));
    }
}
