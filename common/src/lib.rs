//! Code shared by tyrd, tyr-server and the CLI: data tables and models that
//! must mean the same thing on every side of the wire.

pub mod agents;
#[cfg(feature = "exposition")]
pub mod exposition;
pub mod pin;
pub mod policy;
pub mod providers;
