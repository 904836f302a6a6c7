//! Helpers shared by the server's integration tests: the development
//! services' addresses (written by `deploy/dev/setup.sh`) and scratch
//! databases so tests never share state.

#![allow(dead_code)]

/// PostgreSQL URL of the development cluster. Missing is a failure, not a
/// skip: the README's test command sets it up.
pub fn database_url() -> String {
    std::env::var("TYR_DATABASE_URL")
        .expect("TYR_DATABASE_URL must be set: run the tests through deploy/test.sh (or source /var/lib/tyr-dev/env)")
}

/// ClickHouse HTTP endpoint (dev endpoint or a real server).
pub fn clickhouse_url() -> String {
    std::env::var("TYR_CLICKHOUSE_URL").unwrap_or_else(|_| "http://127.0.0.1:8123".to_owned())
}

/// A database name no other test run uses.
pub fn scratch_name(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

pub mod serving;
