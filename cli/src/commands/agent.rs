//! `tyr agent list|show|policy|delete`: the enrolled daemons, as the
//! product pages call them, with their live state.

use time::OffsetDateTime;

use super::{CommandError, Context, Outcome};
use crate::args::AgentCommand;
use crate::client::{Query, routes};
use crate::model::Daemon;
use crate::output::{Row, or_dash};
use crate::time_arg::ago;

impl Row for Daemon {
    const HEADERS: &'static [&'static str] =
        &["ID", "NAME", "CONNECTED", "LAST SEEN", "POLICY APPLIED/ASSIGNED", "DROPS", "SPOOLED", "GAPS"];

    fn cells(&self) -> Vec<String> {
        let now = OffsetDateTime::now_utc();
        vec![
            self.id.to_string(),
            self.name.clone(),
            if self.connected { "yes" } else { "no" }.to_owned(),
            self.last_seen_at.as_deref().map_or_else(|| "never".to_owned(), |seen| ago(seen, now)),
            format!("{}/{}", self.applied_policy_version, or_dash(self.assigned_policy_version)),
            self.total_drops().to_string(),
            self.spooled_events.to_string(),
            self.seq_gap_events.to_string(),
        ]
    }
}

/// Runs `tyr agent ...`.
pub async fn run(ctx: &mut Context, command: AgentCommand) -> Result<Outcome, CommandError> {
    let client = ctx.client()?;
    match command {
        AgentCommand::List { connected, page } => {
            let mut query: Query = Vec::new();
            if let Some(connected) = connected {
                query.push(("connected", connected.to_string()));
            }
            ctx.list::<Daemon>(&client, routes::DAEMONS, &query, page).await
        }
        AgentCommand::Show { id } => {
            let daemon = client.daemon(id).await?;
            let rest = |key: &str| daemon.rest.get(key).map(display_value).unwrap_or_else(|| "-".to_owned());
            let fields = [
                ("id", daemon.id.to_string()),
                ("name", daemon.name.clone()),
                ("connected", daemon.connected.to_string()),
                ("last seen", or_dash(daemon.last_seen_at.as_deref())),
                ("enrolled", rest("enrolled_at")),
                ("kernel", rest("kernel_version")),
                ("arch", rest("arch")),
                ("certificate expires", rest("cert_not_after")),
                ("policy assigned", or_dash(daemon.assigned_policy_version)),
                ("policy applied", daemon.applied_policy_version.to_string()),
                ("policy applied at", rest("policy_applied_at")),
                ("unregistered agents", rest("unregistered_agents")),
                ("spooled events", daemon.spooled_events.to_string()),
                ("sequence gaps", daemon.seq_gap_events.to_string()),
                ("drops", display_value(&daemon.drops)),
                ("capabilities", rest("capabilities")),
            ];
            ctx.out.object(&daemon, &fields)?;
            ctx.out.finish()?;
            Ok(Outcome::Done)
        }
        AgentCommand::Policy { id } => {
            let policy = client.daemon_policy(id).await?;
            let field = |key: &str| policy.get(key).map(display_value).unwrap_or_else(|| "-".to_owned());
            let fields = [
                ("daemon", field("daemon_id")),
                ("version", field("version")),
                ("applied version", field("applied_version")),
                ("applied at", field("applied_at")),
                ("computed at", field("computed_at")),
            ];
            ctx.out.object(&policy, &fields)?;
            if let Some(yaml) = policy.get("policy_yaml").and_then(|yaml| yaml.as_str()) {
                ctx.out.text("---")?;
                ctx.out.text(yaml)?;
            }
            ctx.out.finish()?;
            Ok(Outcome::Done)
        }
        AgentCommand::Delete { id } => {
            client.delete_daemon(id).await?;
            eprintln!("daemon {id} deleted: its certificate is refused from now on");
            Ok(Outcome::Done)
        }
    }
}

/// A JSON value for a `key: value` line: strings bare, null as `-`,
/// objects with their non-zero entries.
pub fn display_value(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Null => "-".to_owned(),
        serde_json::Value::String(text) => text.clone(),
        serde_json::Value::Object(map) => {
            let entries: Vec<String> = map
                .iter()
                .filter(|(_, v)| !matches!(v, serde_json::Value::Number(n) if n.as_u64() == Some(0)))
                .filter(|(_, v)| !matches!(v, serde_json::Value::Bool(false) | serde_json::Value::Null))
                .map(|(k, v)| match v {
                    serde_json::Value::Bool(true) => k.clone(),
                    other => format!("{k}={}", display_value(other)),
                })
                .collect();
            if entries.is_empty() { "none".to_owned() } else { entries.join(", ") }
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_for_people() {
        let value = serde_json::json!({"queue_overflow": 0, "spool_evicted": 4, "lsm": true, "uprobes": false});
        let shown = display_value(&value);
        assert!(shown == "spool_evicted=4, lsm" || shown == "lsm, spool_evicted=4", "{shown}");
        assert_eq!(display_value(&serde_json::json!({"a": 0})), "none");
        assert_eq!(display_value(&serde_json::Value::Null), "-");
    }
}
