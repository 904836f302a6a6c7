//! `tyr drift`: where the kernel was more permissive than the server over a
//! time range, per daemon and per discovered agent, with the latest
//! drifting events. Unenforced events (a host without BPF LSM) are counted
//! apart. Exit 1 when nothing drifted.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{CommandError, Context, Outcome};
use crate::args::DriftArgs;
use crate::client::Query;
use crate::model::Event;
use crate::output::{Format, Row, or_dash};
use crate::time_arg::short_time;

/// Event counts of the whole selection.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Totals {
    #[serde(default)]
    events: u64,
    #[serde(default)]
    drift_events: u64,
    #[serde(default)]
    unenforced_events: u64,
}

/// One daemon's drift.
#[derive(Debug, Serialize, Deserialize)]
struct DaemonDrift {
    daemon_id: Uuid,
    #[serde(default)]
    events: u64,
    #[serde(default)]
    drift_events: u64,
    #[serde(default)]
    unenforced_events: u64,
    #[serde(default)]
    last_drift_at: Option<String>,
}

impl Row for DaemonDrift {
    const HEADERS: &'static [&'static str] = &["DAEMON", "EVENTS", "DRIFT", "UNENFORCED", "LAST DRIFT"];

    fn cells(&self) -> Vec<String> {
        vec![
            self.daemon_id.to_string(),
            self.events.to_string(),
            self.drift_events.to_string(),
            self.unenforced_events.to_string(),
            or_dash(self.last_drift_at.as_deref().map(short_time)),
        ]
    }
}

/// One discovered agent's drift.
#[derive(Debug, Serialize, Deserialize)]
struct AgentDrift {
    daemon_id: Uuid,
    #[serde(default)]
    discovered_agent_id: Option<Uuid>,
    #[serde(default)]
    agent_type: String,
    #[serde(default)]
    events: u64,
    #[serde(default)]
    drift_events: u64,
    #[serde(default)]
    unenforced_events: u64,
    #[serde(default)]
    last_drift_at: Option<String>,
}

impl Row for AgentDrift {
    const HEADERS: &'static [&'static str] =
        &["DISCOVERED AGENT", "TYPE", "DAEMON", "EVENTS", "DRIFT", "UNENFORCED", "LAST DRIFT"];

    fn cells(&self) -> Vec<String> {
        vec![
            or_dash(self.discovered_agent_id),
            self.agent_type.clone(),
            self.daemon_id.to_string(),
            self.events.to_string(),
            self.drift_events.to_string(),
            self.unenforced_events.to_string(),
            or_dash(self.last_drift_at.as_deref().map(short_time)),
        ]
    }
}

/// The summary, as the tables need it.
#[derive(Debug, Deserialize)]
struct Summary {
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    totals: Totals,
    #[serde(default)]
    by_daemon: Vec<DaemonDrift>,
    #[serde(default)]
    by_daemon_truncated: bool,
    #[serde(default)]
    by_discovered_agent: Vec<AgentDrift>,
    #[serde(default)]
    by_discovered_agent_truncated: bool,
    #[serde(default)]
    latest: Vec<Event>,
}

/// Runs `tyr drift`.
pub async fn run(ctx: &mut Context, args: DriftArgs) -> Result<Outcome, CommandError> {
    let client = ctx.client()?;
    let mut query: Query = vec![("latest", args.latest.to_string())];
    if let Some(from) = args.from {
        query.push(("from", from));
    }
    if let Some(to) = args.to {
        query.push(("to", to));
    }
    if let Some(daemon) = args.daemon {
        query.push(("daemon_id", daemon.to_string()));
    }
    let raw = client.drift(&query).await?;
    let summary: Summary = serde_json::from_value(raw.clone()).map_err(|error| crate::client::ClientError::Decode {
        url: format!("{}api/v1/drift", client.base()),
        message: error.to_string(),
    })?;
    let outcome = if summary.totals.drift_events == 0 { Outcome::NothingFound } else { Outcome::Done };
    if ctx.out.format() == Format::Json {
        ctx.out.json_line(&raw)?;
        ctx.out.finish()?;
        return Ok(outcome);
    }

    let range =
        format!("{} to {}", short_time(&summary.from), summary.to.as_deref().map_or("now".to_owned(), short_time));
    ctx.out.text(&format!(
        "{range}: {} events, {} drifting, {} unenforced",
        summary.totals.events, summary.totals.drift_events, summary.totals.unenforced_events
    ))?;
    if !summary.by_daemon.is_empty() {
        ctx.out.text("\nby daemon:")?;
        for row in &summary.by_daemon {
            ctx.out.item(row)?;
        }
        ctx.out.finish()?;
        if summary.by_daemon_truncated {
            ctx.out.text("(more daemons than listed)")?;
        }
    }
    if !summary.by_discovered_agent.is_empty() {
        ctx.out.text("\nby discovered agent:")?;
        for row in &summary.by_discovered_agent {
            ctx.out.item(row)?;
        }
        ctx.out.finish()?;
        if summary.by_discovered_agent_truncated {
            ctx.out.text("(more agents than listed)")?;
        }
    }
    if !summary.latest.is_empty() {
        ctx.out.text("\nlatest drifting events:")?;
        for event in &summary.latest {
            ctx.out.item(event)?;
        }
    }
    ctx.out.finish()?;
    Ok(outcome)
}
