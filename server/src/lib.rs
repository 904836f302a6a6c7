//! tyr-server: the control plane. Agents stream events over mTLS gRPC,
//! operators use REST, control data lives in PostgreSQL and events in
//! ClickHouse.

pub mod admin;
pub mod auth;
pub mod config;
pub mod control_db;
pub mod discovered_admin;
pub mod drift;
pub mod enrollment_admin;
pub mod error;
pub mod event_query;
pub mod event_store;
pub mod fleet;
pub mod grpc;
pub mod identity;
pub mod ingest;
pub mod metrics;
pub mod rest;
pub mod serve;
pub mod user_admin;
