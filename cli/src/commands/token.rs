//! `tyr token create|list|delete`: enrollment tokens. The secret is shown
//! once, at creation, with the CA pin and the command a new host runs.

use time::OffsetDateTime;

use super::{CommandError, Context, Outcome};
use crate::args::TokenCommand;
use crate::client::routes;
use crate::model::{CreateToken, TokenView};
use crate::output::Row;
use crate::time_arg::{ago, short_time};

impl Row for TokenView {
    const HEADERS: &'static [&'static str] = &["ID", "STATE", "USES", "EXPIRES", "CREATED", "DESCRIPTION"];

    fn cells(&self) -> Vec<String> {
        let created = self.rest.get("created_at").and_then(|v| v.as_str()).unwrap_or_default();
        vec![
            self.id.to_string(),
            self.state.clone(),
            format!("{}/{}", self.uses, self.max_uses),
            short_time(&self.expires_at),
            ago(created, OffsetDateTime::now_utc()),
            self.description.clone(),
        ]
    }
}

/// Runs `tyr token ...`.
pub async fn run(ctx: &mut Context, command: TokenCommand) -> Result<Outcome, CommandError> {
    let client = ctx.client()?;
    match command {
        TokenCommand::Create { expires_hours, max_uses, description } => {
            let created =
                client.create_token(&CreateToken { expires_hours, max_uses, description: &description }).await?;
            let fields = [
                ("id", created.id.to_string()),
                ("token", created.token.clone()),
                ("ca pin", created.ca_pin.clone()),
                ("expires", created.expires_at.clone()),
                ("max uses", created.max_uses.to_string()),
            ];
            ctx.out.object(&created, &fields)?;
            ctx.out.finish()?;
            eprintln!(
                "the token is shown only this once; enroll a host with:\n  \
                 tyrd run --server https://SERVER:7700 --token TOKEN --ca-pin {}",
                created.ca_pin
            );
            Ok(Outcome::Done)
        }
        TokenCommand::List { page } => ctx.list::<TokenView>(&client, routes::TOKENS, &Vec::new(), page).await,
        TokenCommand::Delete { id } => {
            client.delete_token(id).await?;
            eprintln!("token {id} deleted");
            Ok(Outcome::Done)
        }
    }
}
