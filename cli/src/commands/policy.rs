//! `tyr policy apply|list|show|history|delete|check|assign|unassign|assignments`.
//! Documents are checked here as tyrd checks them (`check`), stored with a
//! name (`apply`: the `--name`, else the document's `name:`, else the file
//! stem) and assigned as the base or as an agent type's overlay.

use std::io::Read;
use std::path::Path;

use time::OffsetDateTime;
use tyr_common::policy::{compile, parse_policy};

use super::agent::display_value;
use super::{CommandError, Context, Outcome};
use crate::args::{PlacementArgs, PolicyCommand};
use crate::client::{Query, policy_path, routes};
use crate::model::{
    ApplyPolicy, Assignment, CheckPolicy, CheckResult, Placement, PolicyErrorDetail, PolicySummary, PolicyVersion,
};
use crate::output::{Format, Row, or_dash};
use crate::time_arg::{ago, short_time};

impl Row for PolicySummary {
    const HEADERS: &'static [&'static str] = &["NAME", "VERSION", "ASSIGNMENTS", "UPDATED", "DESCRIPTION"];

    fn cells(&self) -> Vec<String> {
        vec![
            self.name.clone(),
            self.version.to_string(),
            self.assignments.to_string(),
            ago(&self.updated_at, OffsetDateTime::now_utc()),
            self.description.clone(),
        ]
    }
}

impl Row for PolicyVersion {
    const HEADERS: &'static [&'static str] = &["VERSION", "CHANGED BY", "CHANGED AT", "DESCRIPTION"];

    fn cells(&self) -> Vec<String> {
        vec![self.version.to_string(), self.changed_by.clone(), short_time(&self.changed_at), self.description.clone()]
    }
}

impl Row for Assignment {
    const HEADERS: &'static [&'static str] = &["ID", "POLICY", "SCOPE", "AGENT TYPE", "DAEMON"];

    fn cells(&self) -> Vec<String> {
        vec![
            self.id.to_string(),
            self.policy.clone(),
            self.scope.clone(),
            or_dash(self.agent_type.as_deref()),
            self.daemon_id.map_or_else(|| "fleet".to_owned(), |id| id.to_string()),
        ]
    }
}

/// Reads a document: a file, or stdin for `-`.
fn read_document(path: &Path) -> Result<String, CommandError> {
    let read_error = |source| CommandError::Read { path: path.display().to_string(), source };
    if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin().lock().read_to_string(&mut text).map_err(read_error)?;
        return Ok(text);
    }
    std::fs::read_to_string(path).map_err(read_error)
}

/// The name a document is stored under when `--name` is not given: its
/// `name:` (read even from a document the server will refuse, so that the
/// refusal names it), else the file stem.
fn default_name(path: &Path, yaml: &str) -> Option<String> {
    let stem = path.file_stem().map(|stem| stem.to_string_lossy().into_owned()).filter(|stem| stem != "-");
    if let Ok(set) = parse_policy(stem.as_deref().unwrap_or("policy"), yaml)
        && (stem.is_some() || set.name != "policy")
    {
        return Some(set.name);
    }
    top_level_name(yaml).or(stem)
}

/// The value of a top-level `name:` line, without quotes.
fn top_level_name(yaml: &str) -> Option<String> {
    yaml.lines().find_map(|line| {
        let value = line.strip_prefix("name:")?;
        let value = value.split(" #").next().unwrap_or(value).trim();
        let value = value.trim_matches(|c| c == '"' || c == '\'');
        (!value.is_empty()).then(|| value.to_owned())
    })
}

/// Where `placement` puts a policy.
fn placement(args: PlacementArgs) -> Placement {
    match args.overlay {
        Some(agent_type) => Placement { scope: "overlay", agent_type: Some(agent_type), daemon_id: args.daemon },
        None => Placement { scope: "base", agent_type: None, daemon_id: args.daemon },
    }
}

/// Describes a placement for people.
fn describe(placement: &Placement) -> String {
    let target = placement.daemon_id.map_or_else(|| "the fleet".to_owned(), |id| format!("daemon {id}"));
    match &placement.agent_type {
        Some(agent_type) => format!("the {agent_type} overlay of {target}"),
        None => format!("the base of {target}"),
    }
}

/// Checks a document locally, as tyrd does.
fn check_locally(document: &str, yaml: &str) -> CheckResult {
    match parse_policy(document, yaml) {
        Err(errors) => CheckResult {
            valid: false,
            errors: errors
                .0
                .into_iter()
                .map(|e| PolicyErrorDetail {
                    document: e.document,
                    rule: e.rule,
                    field: e.field,
                    line: e.line,
                    column: e.column,
                    message: e.message,
                })
                .collect(),
            rules: None,
        },
        // Version 0: a local check, not a version anything runs under.
        Ok(set) => match compile(&set, 0) {
            Ok(_) => CheckResult {
                valid: true,
                errors: Vec::new(),
                rules: Some(set.base.rules.len() + set.overlays.values().map(Vec::len).sum::<usize>()),
            },
            Err(error) => CheckResult {
                valid: false,
                errors: vec![PolicyErrorDetail {
                    document: document.to_owned(),
                    rule: None,
                    field: None,
                    line: 0,
                    column: 0,
                    message: format!("cannot be compiled for the kernel: {error}"),
                }],
                rules: None,
            },
        },
    }
}

/// Runs `tyr policy ...`.
pub async fn run(ctx: &mut Context, command: PolicyCommand) -> Result<Outcome, CommandError> {
    if let PolicyCommand::Check { file, remote: false } = &command {
        let yaml = read_document(file)?;
        return print_check(ctx, &check_locally(&document_name(file), &yaml));
    }
    let client = ctx.client()?;
    match command {
        PolicyCommand::Apply { file, name, description } => {
            let yaml = read_document(&file)?;
            let name = name.or_else(|| default_name(&file, &yaml)).ok_or_else(|| {
                CommandError::Usage("the document has no name: and is read from stdin: give --name".to_owned())
            })?;
            let applied =
                client.apply_policy(&ApplyPolicy { name: &name, yaml: &yaml, description: &description }).await?;
            let fields = [
                ("name", applied.name.clone()),
                ("version", applied.version.to_string()),
                ("changed", applied.changed.to_string()),
            ];
            ctx.out.object(&applied, &fields)?;
            ctx.out.finish()?;
            if !applied.changed {
                eprintln!("policy {name} is unchanged (version {})", applied.version);
            }
            Ok(Outcome::Done)
        }
        PolicyCommand::List { page } => ctx.list::<PolicySummary>(&client, routes::POLICIES, &Vec::new(), page).await,
        PolicyCommand::Show { name } => {
            let policy = client.policy(&name).await?;
            let field = |key: &str| policy.get(key).map(display_value).unwrap_or_else(|| "-".to_owned());
            let assigned: Vec<String> = policy
                .get("assigned")
                .and_then(|a| a.as_array())
                .map(|items| {
                    items
                        .iter()
                        .filter_map(|item| serde_json::from_value::<Assignment>(item.clone()).ok())
                        .map(|a| describe(&Placement { scope: "", agent_type: a.agent_type, daemon_id: a.daemon_id }))
                        .collect()
                })
                .unwrap_or_default();
            let fields = [
                ("name", field("name")),
                ("version", field("version")),
                ("description", field("description")),
                ("updated", field("updated_at")),
                ("assigned to", if assigned.is_empty() { "nothing".to_owned() } else { assigned.join("; ") }),
            ];
            ctx.out.object(&policy, &fields)?;
            if let Some(yaml) = policy.get("source_yaml").and_then(|yaml| yaml.as_str()) {
                ctx.out.text("---")?;
                ctx.out.text(yaml)?;
            }
            ctx.out.finish()?;
            Ok(Outcome::Done)
        }
        PolicyCommand::History { name, page } => {
            ctx.list::<PolicyVersion>(&client, &policy_path(&name, "/history"), &Vec::new(), page).await
        }
        PolicyCommand::Delete { name } => {
            client.delete_policy(&name).await?;
            eprintln!("policy {name} deleted");
            Ok(Outcome::Done)
        }
        PolicyCommand::Check { file, .. } => {
            let yaml = read_document(&file)?;
            let result = client.check_policy(&CheckPolicy { yaml: &yaml, name: &document_name(&file) }).await?;
            print_check(ctx, &result)
        }
        PolicyCommand::Assign { name, placement: args } => {
            let placement = placement(args);
            let assignment = client.assign(&name, &placement).await?;
            ctx.out.item(&assignment)?;
            ctx.out.finish()?;
            eprintln!("policy {name} assigned as {}", describe(&placement));
            Ok(Outcome::Done)
        }
        PolicyCommand::Unassign { name, placement: args } => {
            let placement = placement(args);
            client.unassign(&name, &placement).await?;
            eprintln!("policy {name} is no longer {}", describe(&placement));
            Ok(Outcome::Done)
        }
        PolicyCommand::Assignments { daemon, page } => {
            let mut query: Query = Vec::new();
            if let Some(daemon) = daemon {
                query.push(("daemon_id", daemon.to_string()));
            }
            ctx.list::<Assignment>(&client, routes::ASSIGNMENTS, &query, page).await
        }
    }
}

/// The name errors are reported under: the file's name.
fn document_name(path: &Path) -> String {
    match path.file_name() {
        Some(name) if path != Path::new("-") => name.to_string_lossy().into_owned(),
        _ => "stdin".to_owned(),
    }
}

/// Prints a check: valid (exit 0) or its errors (exit 1).
fn print_check(ctx: &mut Context, result: &CheckResult) -> Result<Outcome, CommandError> {
    if ctx.out.format() == Format::Json {
        ctx.out.json_line(result)?;
    } else if result.valid {
        ctx.out.text(&format!("valid: {} rules", result.rules.unwrap_or(0)))?;
    } else {
        for error in &result.errors {
            eprintln!("{error}");
        }
    }
    ctx.out.finish()?;
    Ok(if result.valid { Outcome::Done } else { Outcome::NothingFound })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_local_checks() {
        let yaml = "name: fleet-base\ndefault_verdict: allow\nrules: []\n";
        assert_eq!(default_name(Path::new("/tmp/deny.yaml"), yaml).as_deref(), Some("fleet-base"));
        assert_eq!(default_name(Path::new("/tmp/deny.yaml"), "rules: []\n").as_deref(), Some("deny"));
        assert_eq!(default_name(Path::new("-"), "rules: []\n"), None);
        assert_eq!(default_name(Path::new("-"), yaml).as_deref(), Some("fleet-base"));
        let invalid = "name: \"broken\"  # a comment\nrules:\n  - name: x\n    action: fly\n";
        assert_eq!(default_name(Path::new("/tmp/bad.yaml"), invalid).as_deref(), Some("broken"));

        let good = "name: t\ndefault_verdict: allow\nrules:\n  - name: r\n    action: net_connect\n    \
                    cidr_deny: [\"127.0.0.168/32\"]\n    verdict: deny\n";
        let checked = check_locally("t.yaml", good);
        assert!(checked.valid, "{:?}", checked.errors);
        assert_eq!(checked.rules, Some(1));
        let bad = "name: t\nrules:\n  - name: r\n    action: net_connect\n    cidr_deny: [\"not-a-cidr\"]\n    verdict: deny\n";
        let checked = check_locally("t.yaml", bad);
        assert!(!checked.valid);
        let first = checked.errors.first().expect("an error").to_string();
        assert!(first.starts_with("t.yaml:5:"), "{first}");
        assert!(first.contains("rule r"), "{first}");
    }
}
