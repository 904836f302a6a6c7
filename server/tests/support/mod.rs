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

/// A fresh PostgreSQL database no other test uses, dropped by
/// [`ScratchDb::drop_now`].
pub struct ScratchDb {
    admin: sqlx::PgPool,
    /// Its name.
    pub name: String,
    /// A pool on it.
    pub pool: sqlx::PgPool,
    /// Its URL (for processes started by the test).
    pub url: String,
}

impl ScratchDb {
    /// Creates an empty database.
    pub async fn create(prefix: &str) -> Self {
        use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
        use std::str::FromStr;
        let admin_options = PgConnectOptions::from_str(&database_url()).expect("valid TYR_DATABASE_URL");
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(admin_options.clone())
            .await
            .expect("PostgreSQL must be running (deploy/dev/setup.sh starts it)");
        let name = scratch_name(prefix);
        // Identifiers cannot be bound; the name is generated above.
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .expect("create scratch database");
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .connect_with(admin_options.database(&name))
            .await
            .expect("connect to scratch database");
        let url = match database_url().rsplit_once('/') {
            Some((server, _)) => format!("{server}/{name}"),
            None => panic!("TYR_DATABASE_URL has no database part"),
        };
        Self { admin, name, pool, url }
    }

    /// Creates a database with the control-data migrations applied.
    pub async fn migrated(prefix: &str) -> Self {
        let db = Self::create(prefix).await;
        tyr_server::control_db::migrate(&db.pool).await.expect("migrations apply");
        db
    }

    /// Drops the database. A drop that keeps failing (PostgreSQL refuses
    /// to end a background worker that just attached to the new database)
    /// is reported, not a test failure: the test's own checks have passed.
    pub async fn drop_now(self) {
        self.pool.close().await;
        let mut last = None;
        for _ in 0..10 {
            let dropped =
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)))
                    .execute(&self.admin)
                    .await;
            match dropped {
                Ok(_) => return,
                Err(error) => last = Some(error),
            }
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        }
        eprintln!("warning: scratch database {} was not dropped: {last:?}", self.name);
    }
}
