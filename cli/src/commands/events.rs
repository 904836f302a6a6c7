//! `tyr events query|count|tail [--follow]`: what daemons reported, filtered as
//! the API filters (time range, daemon, discovered agent, agent type, kind,
//! verdicts, drift, resource, pid).
//!
//! A tail opens the live stream before it reads the newest events, so no
//! event stored in between is missed; events it already printed are not
//! printed twice.

use std::collections::HashSet;

use uuid::Uuid;

use super::{CommandError, Context, Outcome};
use crate::args::{EventFilterArgs, EventsCommand};
use crate::client::{Client, Query, StreamItem, routes};
use crate::model::{Event, Page};
use crate::output::{Format, Row, safe};
use crate::time_arg::short_time;

impl Row for Event {
    const HEADERS: &'static [&'static str] =
        &["TIME", "DAEMON", "AGENT TYPE", "PID", "KIND", "VERDICT", "SERVER", "DRIFT", "RESOURCE"];

    fn cells(&self) -> Vec<String> {
        let daemon = self.daemon_id.to_string();
        vec![
            short_time(&self.timestamp),
            daemon.get(..8).unwrap_or(&daemon).to_owned(),
            self.agent_type.clone(),
            self.pid.to_string(),
            self.kind.clone(),
            self.verdict.clone(),
            self.server_verdict.clone(),
            if self.drift { "yes" } else { "no" }.to_owned(),
            self.resource.clone(),
        ]
    }
}

/// Column widths of a live tail's table rows (the resource is not padded).
const LIVE_WIDTHS: [usize; 9] = [20, 8, 12, 7, 11, 7, 6, 5, 0];

/// The API's query parameters for a filter.
pub fn filter_query(filter: &EventFilterArgs) -> Query {
    let mut query: Query = Vec::new();
    let mut text = |key: &'static str, value: &Option<String>| {
        if let Some(value) = value {
            query.push((key, value.clone()));
        }
    };
    text("from", &filter.from);
    text("to", &filter.to);
    text("agent_type", &filter.agent_type);
    text("kind", &filter.kind.as_ref().map(|kind| kind.to_ascii_uppercase()));
    text("verdict", &filter.verdict.as_ref().map(|verdict| verdict.to_ascii_uppercase()));
    text("server_verdict", &filter.server_verdict.as_ref().map(|verdict| verdict.to_ascii_uppercase()));
    text("resource", &filter.resource);
    text("resource_prefix", &filter.resource_prefix);
    if let Some(daemon) = filter.daemon {
        query.push(("daemon_id", daemon.to_string()));
    }
    if let Some(agent) = filter.discovered_agent {
        query.push(("discovered_agent_id", agent.to_string()));
    }
    if let Some(drift) = filter.drift {
        query.push(("drift", drift.to_string()));
    }
    if let Some(pid) = filter.pid {
        query.push(("pid", pid.to_string()));
    }
    query
}

/// Runs `tyr events ...`.
pub async fn run(ctx: &mut Context, command: EventsCommand) -> Result<Outcome, CommandError> {
    let client = ctx.client()?;
    match command {
        EventsCommand::Query { filter, page } => {
            ctx.list::<Event>(&client, routes::EVENTS, &filter_query(&filter), page).await
        }
        EventsCommand::Count { filter } => {
            let counted: serde_json::Value = client.get(routes::EVENT_COUNT, &filter_query(&filter)).await?;
            let count = counted.get("count").and_then(serde_json::Value::as_u64).unwrap_or(0);
            ctx.out.object(&counted, &[("count", count.to_string())])?;
            ctx.out.finish()?;
            Ok(if count == 0 { Outcome::NothingFound } else { Outcome::Done })
        }
        EventsCommand::Tail { filter, lines, follow } => tail(ctx, &client, &filter, lines, follow).await,
    }
}

/// The newest `lines` events, oldest first.
async fn newest(client: &Client, query: &Query, lines: u32) -> Result<Vec<Event>, CommandError> {
    if lines == 0 {
        return Ok(Vec::new());
    }
    let page: Page<Event> = client.page(routes::EVENTS, query, lines, None).await?;
    let mut events = page.items;
    events.reverse();
    Ok(events)
}

async fn tail(
    ctx: &mut Context,
    client: &Client,
    filter: &EventFilterArgs,
    lines: u32,
    follow: bool,
) -> Result<Outcome, CommandError> {
    let query = filter_query(filter);
    if !follow {
        for event in newest(client, &query, lines).await? {
            ctx.out.item(&event)?;
        }
        return ctx.finish_list();
    }

    let mut stream = client.event_stream(&query).await?;
    let mut printed: HashSet<Uuid> = HashSet::new();
    for event in newest(client, &query, lines).await? {
        printed.insert(event.event_id);
        ctx.out.live_item(&event, &LIVE_WIDTHS)?;
    }
    if ctx.out.format() == Format::Table {
        eprintln!("following new events (interrupt to stop)");
    }
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        tokio::select! {
            next = stream.next() => match next? {
                Some(StreamItem::Event(event)) => {
                    // Only the first events of the stream can repeat what was printed.
                    if !printed.is_empty() && printed.remove(&event.event_id) {
                        continue;
                    }
                    ctx.out.live_item(event.as_ref(), &LIVE_WIDTHS)?;
                }
                Some(StreamItem::Warning(message)) => eprintln!("tyr: warning: {}", safe(&message)),
                None => {
                    eprintln!("the server ended the stream");
                    return Ok(Outcome::Done);
                }
            },
            _ = &mut interrupted => return Ok(Outcome::Done),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_become_query_parameters() {
        let daemon = Uuid::now_v7();
        let filter = EventFilterArgs {
            kind: Some("net_connect".to_owned()),
            verdict: Some("deny".to_owned()),
            daemon: Some(daemon),
            drift: Some(false),
            resource: Some("'; DROP TABLE events; --".to_owned()),
            pid: Some(42),
            ..EventFilterArgs::default()
        };
        let query = filter_query(&filter);
        let get = |key: &str| query.iter().find(|(k, _)| *k == key).map(|(_, v)| v.as_str());
        assert_eq!(get("kind"), Some("NET_CONNECT"));
        assert_eq!(get("verdict"), Some("DENY"));
        assert_eq!(get("daemon_id"), Some(daemon.to_string().as_str()));
        assert_eq!(get("drift"), Some("false"));
        assert_eq!(get("resource"), Some("'; DROP TABLE events; --"));
        assert_eq!(get("pid"), Some("42"));
        assert_eq!(get("from"), None);
    }
}
