//! Tyr's wire protocol: the `AgentService` (Register, Stream) and the event
//! messages, generated from `agent.proto` and `events.proto`.

#![allow(missing_docs, clippy::all, missing_debug_implementations)]

/// Version 1 of the protocol (`package tyr.v1`).
pub mod v1 {
    tonic::include_proto!("tyr.v1");
}

pub use v1::*;

pub mod limits;
