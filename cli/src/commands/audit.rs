//! `tyr audit`: the changes operators made (who, what, to what, when,
//! from where), newest first.

use super::{CommandError, Context, Outcome};
use crate::args::AuditArgs;
use crate::client::{Query, routes};
use crate::model::AuditEntry;
use crate::output::{Row, or_dash};
use crate::time_arg::short_time;

impl Row for AuditEntry {
    const HEADERS: &'static [&'static str] = &["TIME", "ACTOR", "ACTION", "TARGET", "SOURCE"];

    fn cells(&self) -> Vec<String> {
        vec![
            short_time(&self.at),
            self.actor_name.clone(),
            self.action.clone(),
            self.target.clone(),
            or_dash(self.source.as_deref()),
        ]
    }
}

/// Runs `tyr audit`.
pub async fn run(ctx: &mut Context, args: AuditArgs) -> Result<Outcome, CommandError> {
    let client = ctx.client()?;
    let mut query: Query = Vec::new();
    for (key, value) in
        [("actor", args.actor), ("action", args.action), ("target", args.target), ("from", args.from), ("to", args.to)]
    {
        if let Some(value) = value {
            query.push((key, value));
        }
    }
    ctx.list::<AuditEntry>(&client, routes::AUDIT, &query, args.page).await
}
