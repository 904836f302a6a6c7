//! `tyr discovered list|show|rename|merge|reclassify|archive|promote`: the
//! AI agents daemons discovered, and the operators' overrides of them.

use time::OffsetDateTime;

use super::agent::display_value;
use super::{CommandError, Context, Outcome};
use crate::args::DiscoveredCommand;
use crate::client::{Client, Query, routes};
use crate::model::DiscoveredAgent;
use crate::output::{Row, or_dash};
use crate::time_arg::ago;

impl Row for DiscoveredAgent {
    const HEADERS: &'static [&'static str] =
        &["ID", "DAEMON", "TYPE", "DETECTED AS", "NAME", "STATE", "CONFIDENCE", "LAST SEEN", "EXECUTABLE"];

    fn cells(&self) -> Vec<String> {
        vec![
            self.id.to_string(),
            self.daemon_id.to_string(),
            self.effective_type.clone(),
            self.agent_type.clone(),
            or_dash(self.display_name.as_deref()),
            self.state.clone(),
            self.confidence.to_string(),
            ago(&self.last_seen_at, OffsetDateTime::now_utc()),
            self.exe_path.clone(),
        ]
    }
}

/// Prints one agent as `key: value` lines (or a JSON line).
fn show(ctx: &mut Context, agent: &DiscoveredAgent) -> Result<Outcome, CommandError> {
    let rest = |key: &str| agent.rest.get(key).map(display_value).unwrap_or_else(|| "-".to_owned());
    let fields = [
        ("id", agent.id.to_string()),
        ("daemon", agent.daemon_id.to_string()),
        ("type", agent.effective_type.clone()),
        ("detected as", agent.agent_type.clone()),
        ("reclassified as", rest("reclassified_as")),
        ("name", or_dash(agent.display_name.as_deref())),
        ("state", agent.state.clone()),
        ("merged into", rest("merged_into")),
        ("merged ids", rest("merged_ids")),
        ("executable", agent.exe_path.clone()),
        ("sha256", rest("exe_sha256")),
        ("confidence", agent.confidence.to_string()),
        ("evidence", rest("evidence")),
        ("first seen", rest("first_seen_at")),
        ("last seen", agent.last_seen_at.clone()),
        ("archived at", rest("archived_at")),
    ];
    ctx.out.object(agent, &fields)?;
    ctx.out.finish()?;
    Ok(Outcome::Done)
}

async fn act(
    ctx: &mut Context,
    client: &Client,
    id: uuid::Uuid,
    action: &str,
    body: serde_json::Value,
) -> Result<Outcome, CommandError> {
    let agent = client.discovered_action(id, action, &body).await?;
    show(ctx, &agent)
}

/// Runs `tyr discovered ...`.
pub async fn run(ctx: &mut Context, command: DiscoveredCommand) -> Result<Outcome, CommandError> {
    let client = ctx.client()?;
    match command {
        DiscoveredCommand::List { agent_type, daemon, state, page } => {
            let mut query: Query = Vec::new();
            if let Some(agent_type) = agent_type {
                query.push(("agent_type", agent_type));
            }
            if let Some(daemon) = daemon {
                query.push(("daemon_id", daemon.to_string()));
            }
            if let Some(state) = state {
                query.push(("state", state.as_str().to_owned()));
            }
            ctx.list::<DiscoveredAgent>(&client, routes::DISCOVERED, &query, page).await
        }
        DiscoveredCommand::Show { id } => {
            let agent = client.discovered_agent(id).await?;
            show(ctx, &agent)
        }
        DiscoveredCommand::Rename { id, name } => {
            act(ctx, &client, id, "rename", serde_json::json!({ "display_name": name })).await
        }
        DiscoveredCommand::Merge { id, into } => {
            act(ctx, &client, id, "merge", serde_json::json!({ "into": into })).await
        }
        DiscoveredCommand::Reclassify { id, agent_type } => {
            act(ctx, &client, id, "reclassify", serde_json::json!({ "agent_type": agent_type })).await
        }
        DiscoveredCommand::Archive { id } => act(ctx, &client, id, "archive", serde_json::json!({})).await,
        DiscoveredCommand::Promote { id, agent_type } => {
            act(ctx, &client, id, "promote", serde_json::json!({ "agent_type": agent_type })).await
        }
    }
}
