//! `tyr-server discovered list|show|rename|merge|reclassify|archive|promote`:
//! the discovered AI agents and the operators' overrides, run on the server
//! host with its database credentials (audited as `local-admin`). The REST
//! layer calls the same [`crate::control_db::discovered`] functions. Data
//! goes to stdout as JSON, diagnostics to stderr.

use anyhow::Context;
use clap::Subcommand;
use uuid::Uuid;

use crate::config::ControlDbConfig;
use crate::control_db::audit::Actor;
use crate::control_db::discovered::{self, AgentState, DiscoveredAgent, DiscoveredError, DiscoveredFilter};
use crate::control_db::{self};
use crate::enrollment_admin::print_json;

/// The `discovered` subcommands.
#[derive(Debug, Subcommand)]
pub enum DiscoveredCommand {
    /// List discovered agents as JSON, in id order.
    List {
        /// Only agents of this effective type (`unknown` for unregistered ones).
        #[arg(long = "type")]
        agent_type: Option<String>,
        /// Only agents of this daemon.
        #[arg(long)]
        daemon: Option<Uuid>,
        /// Only agents in this state: active, archived or merged.
        #[arg(long, value_parser = parse_state)]
        state: Option<AgentState>,
        /// Continue after this agent id (the last one of the previous page).
        #[arg(long)]
        after: Option<Uuid>,
        /// At most this many agents.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(i64).range(1..=discovered::MAX_LIST_LIMIT))]
        limit: i64,
        #[command(flatten)]
        control_db: ControlDbConfig,
    },
    /// Show one discovered agent as JSON, with the ids merged into it.
    Show {
        /// The agent's id.
        id: Uuid,
        #[command(flatten)]
        control_db: ControlDbConfig,
    },
    /// Give an agent a display name.
    Rename {
        /// The agent's id.
        id: Uuid,
        /// The name: 1 to 128 characters, no control characters.
        name: String,
        #[command(flatten)]
        control_db: ControlDbConfig,
    },
    /// Merge a duplicate into another agent of the same daemon (the
    /// survivor keeps its id; events of both count for it); prints the survivor.
    Merge {
        /// The duplicate.
        id: Uuid,
        /// The survivor.
        #[arg(long)]
        into: Uuid,
        #[command(flatten)]
        control_db: ControlDbConfig,
    },
    /// Govern an agent as another type (a type of the known-agent table, or
    /// `unknown`); its daemon applies it to the agent's running processes.
    Reclassify {
        /// The agent's id.
        id: Uuid,
        /// The new type.
        #[arg(long = "type")]
        agent_type: String,
        #[command(flatten)]
        control_db: ControlDbConfig,
    },
    /// Archive a long-gone agent (a new sighting makes it active again).
    Archive {
        /// The agent's id.
        id: Uuid,
        #[command(flatten)]
        control_db: ControlDbConfig,
    },
    /// Promote an unregistered (`unknown`) agent to a known type: it is then
    /// governed as that type, no longer quarantined.
    Promote {
        /// The agent's id.
        id: Uuid,
        /// The type.
        #[arg(long = "type")]
        agent_type: String,
        #[command(flatten)]
        control_db: ControlDbConfig,
    },
}

fn parse_state(text: &str) -> Result<AgentState, String> {
    match text {
        "active" => Ok(AgentState::Active),
        "archived" => Ok(AgentState::Archived),
        "merged" => Ok(AgentState::Merged),
        _ => Err(format!("{text:?} is not a state: active, archived or merged")),
    }
}

/// How a command ended when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Done (exit 0).
    Done,
    /// The agent does not exist (exit 1), said on stderr.
    NotFound,
}

/// Prints a changed agent, or says it does not exist.
fn changed(result: Result<DiscoveredAgent, DiscoveredError>, what: &str) -> anyhow::Result<Outcome> {
    match result {
        Ok(agent) => print_json(&agent).map(|()| Outcome::Done),
        Err(DiscoveredError::NotFound(id)) => {
            eprintln!("tyr-server: no discovered agent {id}");
            Ok(Outcome::NotFound)
        }
        Err(error) => Err(error).context(what.to_owned()),
    }
}

/// Runs one `discovered` subcommand.
pub async fn run(command: DiscoveredCommand) -> anyhow::Result<Outcome> {
    let actor = Actor::local_admin();
    match command {
        DiscoveredCommand::List { agent_type, daemon, state, after, limit, control_db } => {
            let pool = control_db::connect(&control_db).await?;
            let filter = DiscoveredFilter { agent_type, daemon_id: daemon, state };
            let listed = discovered::list(&pool, &filter, after, limit).await;
            pool.close().await;
            print_json(&listed.context("listing discovered agents")?)?;
            Ok(Outcome::Done)
        }
        DiscoveredCommand::Show { id, control_db } => {
            let pool = control_db::connect(&control_db).await?;
            let shown = async {
                let Some(agent) = discovered::get(&pool, id).await? else { return Ok(None) };
                let merged = discovered::merged_ids(&pool, id).await?;
                Ok::<_, DiscoveredError>(Some((agent, merged)))
            }
            .await;
            pool.close().await;
            match shown.context("reading the discovered agent")? {
                Some((agent, merged)) => {
                    let mut value = serde_json::to_value(&agent)?;
                    value["merged_ids"] = serde_json::to_value(merged)?;
                    print_json(&value)?;
                    Ok(Outcome::Done)
                }
                None => {
                    eprintln!("tyr-server: no discovered agent {id}");
                    Ok(Outcome::NotFound)
                }
            }
        }
        DiscoveredCommand::Rename { id, name, control_db } => {
            let pool = control_db::connect(&control_db).await?;
            let result = discovered::rename(&pool, &actor, id, &name).await;
            pool.close().await;
            changed(result, "renaming the discovered agent")
        }
        DiscoveredCommand::Merge { id, into, control_db } => {
            let pool = control_db::connect(&control_db).await?;
            let result = discovered::merge(&pool, &actor, id, into).await;
            pool.close().await;
            changed(result, "merging the discovered agent")
        }
        DiscoveredCommand::Reclassify { id, agent_type, control_db } => {
            let pool = control_db::connect(&control_db).await?;
            let result = discovered::reclassify(&pool, &actor, id, &agent_type).await;
            pool.close().await;
            changed(result, "reclassifying the discovered agent")
        }
        DiscoveredCommand::Archive { id, control_db } => {
            let pool = control_db::connect(&control_db).await?;
            let result = discovered::archive(&pool, &actor, id).await;
            pool.close().await;
            changed(result, "archiving the discovered agent")
        }
        DiscoveredCommand::Promote { id, agent_type, control_db } => {
            let pool = control_db::connect(&control_db).await?;
            let result = discovered::promote(&pool, &actor, id, &agent_type).await;
            pool.close().await;
            changed(result, "promoting the discovered agent")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_parse() {
        assert_eq!(parse_state("merged"), Ok(AgentState::Merged));
        assert!(parse_state("gone").is_err());
    }
}
