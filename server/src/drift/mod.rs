//! Drift: Cedar re-evaluation of every event against the policy the server assigned.
//!
//! The stream session builds a [`DriftContext`] per daemon (the effective
//! policy it pushed last, every version it ever pushed), hands event batches
//! to the [`DriftPool`] and gets them back with `server_verdict` and
//! `drift_detected` filled. [`evaluate`] holds the rules (DESIGN "Drift");
//! [`counts`] reads the per-daemon and per-agent figures back from ClickHouse.

pub mod cache;
pub mod counts;
pub mod evaluate;
pub mod memo;
pub mod pool;

pub use cache::{DriftPolicy, PolicyCache};
pub use evaluate::{DriftContext, DriftOutcome, evaluate};
pub use pool::{DriftPool, DriftPoolConfig, DriftStats, EvaluatedBatch, EvaluatedEvent};

/// Errors of the drift evaluator.
#[derive(Debug, thiserror::Error)]
pub enum DriftError {
    /// The Cedar text of a policy version did not load.
    #[error("policy version {version} does not load as Cedar: {reason}")]
    Policy {
        /// The version whose text was refused.
        version: i64,
        /// Cedar's reason.
        reason: tyr_common::policy::cedar::CedarError,
    },
    /// Reading drift counts from ClickHouse failed (the cause is in the
    /// message, not chained, so that it is printed once).
    #[error("reading drift counts: {0}")]
    Query(clickhouse::error::Error),
}

impl From<clickhouse::error::Error> for DriftError {
    fn from(error: clickhouse::error::Error) -> Self {
        DriftError::Query(error)
    }
}
