//! `tyr user create|list|disable`: operators' accounts (admin only).

use super::login::read_new_password;
use super::{CommandError, Context, Outcome};
use crate::args::UserCommand;
use crate::client::routes;
use crate::model::{CreateUser, User};
use crate::output::{Row, or_dash};
use crate::time_arg::short_time;

impl Row for User {
    const HEADERS: &'static [&'static str] = &["ID", "USERNAME", "ROLE", "CREATED", "DISABLED"];

    fn cells(&self) -> Vec<String> {
        vec![
            self.id.to_string(),
            self.username.clone(),
            self.role.clone(),
            short_time(&self.created_at),
            or_dash(self.disabled_at.as_deref().map(short_time)),
        ]
    }
}

/// Runs `tyr user ...`.
pub async fn run(ctx: &mut Context, command: UserCommand) -> Result<Outcome, CommandError> {
    let client = ctx.client()?;
    match command {
        UserCommand::Create { name, role } => {
            let password = read_new_password()?;
            let user =
                client.create_user(&CreateUser { username: &name, password: &password, role: role.as_str() }).await?;
            ctx.out.item(&user)?;
            ctx.out.finish()?;
            Ok(Outcome::Done)
        }
        UserCommand::List { page } => ctx.list::<User>(&client, routes::USERS, &Vec::new(), page).await,
        UserCommand::Disable { id } => {
            let user = client.disable_user(id).await?;
            ctx.out.item(&user)?;
            ctx.out.finish()?;
            Ok(Outcome::Done)
        }
    }
}
