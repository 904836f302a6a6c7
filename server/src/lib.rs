//! tyr-server: the control plane. Agents stream events over mTLS gRPC,
//! operators use REST, control data lives in PostgreSQL and events in
//! ClickHouse.

pub mod admin;
pub mod config;
pub mod control_db;
pub mod event_store;
