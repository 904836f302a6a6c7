//! The `tyr` binary without a server: help, completions, exit status 2 on
//! bad arguments and on a missing login, offline policy checks, a closed
//! stdout, and logins that must fail before sending anything (bad pin, a
//! refused loopback port). Each run gets a private, empty HOME and
//! XDG_CONFIG_HOME.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

/// A private home directory, removed on drop.
struct Home(PathBuf);

impl Home {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("tyr-cli-test-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(dir.join("config")).expect("home");
        Self(dir)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tyr"));
        command
            .args(args)
            .env("HOME", &self.0)
            .env("XDG_CONFIG_HOME", self.0.join("config"))
            .env_remove("TYR_SERVER")
            .env_remove("TYR_TOKEN")
            .env_remove("TYR_CA_FILE")
            .env_remove("NO_COLOR");
        command
    }

    /// Runs `tyr ARGS` with `stdin` as standard input.
    fn run_with_stdin(&self, args: &[&str], stdin: &str, envs: &[(&str, &str)]) -> Output {
        let mut child = self
            .command(args)
            .envs(envs.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tyr");
        // tyr may exit before it reads (a login refused before the password
        // is asked for): a closed pipe is its answer, not a test failure.
        let written = child.stdin.take().expect("stdin").write_all(stdin.as_bytes());
        if let Err(error) = written {
            assert_eq!(error.kind(), std::io::ErrorKind::BrokenPipe, "write stdin: {error}");
        }
        child.wait_with_output().expect("tyr runs")
    }

    fn run(&self, args: &[&str]) -> Output {
        self.run_with_stdin(args, "", &[])
    }

    fn file(&self, name: &str, text: &str) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("write file");
        path.display().to_string()
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

const VALID_POLICY: &str = "\
name: fleet-base
default_verdict: allow
rules:
  - name: deny-168
    action: net_connect
    cidr_deny: [\"127.0.0.168/32\"]
    verdict: deny
";

const INVALID_POLICY: &str = "\
name: broken
rules:
  - name: bad-cidr
    action: net_connect
    cidr_deny: [\"not-a-cidr\"]
    verdict: deny
";

#[test]
fn help_names_every_command() {
    let home = Home::new();
    let output = home.run(&["--help"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let help = stdout(&output);
    for command in
        ["login", "logout", "agent", "discovered", "token", "policy", "events", "drift", "user", "audit", "completions"]
    {
        assert!(help.contains(command), "--help lists {command}:\n{help}");
    }
    let output = home.run(&["token", "create", "--help"]);
    assert_eq!(output.status.code(), Some(0));
    assert!(stdout(&output).contains("--expires-hours"));
    assert!(stdout(&output).contains("--max-uses"));
    let output = home.run(&["events", "query", "--help"]);
    for filter in ["--from", "--to", "--daemon", "--discovered-agent", "--agent-type", "--kind", "--verdict"] {
        assert!(stdout(&output).contains(filter), "events query takes {filter}");
    }
}

#[test]
fn completions_for_each_shell() {
    let home = Home::new();
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let output = home.run(&["completions", shell]);
        assert_eq!(output.status.code(), Some(0), "{shell}: {}", stderr(&output));
        let script = stdout(&output);
        assert!(script.contains("tyr"), "{shell} script names tyr");
        assert!(script.contains("discovered"), "{shell} script completes subcommands");
    }
}

#[test]
fn bad_arguments_exit_2() {
    let home = Home::new();
    for args in [
        &["frobnicate"][..],
        &["agent", "show", "not-a-uuid"],
        &["token", "create", "--max-uses", "1"],
        &["token", "create", "--expires-hours", "0"],
        &["events", "query", "--kind", "SQL_INJECTION"],
        &["events", "query", "--from", "yesterday"],
        &["policy", "assign"],
        &["--format", "yaml", "agent", "list"],
    ] {
        let output = home.run(args);
        assert_eq!(output.status.code(), Some(2), "tyr {args:?}: {}", stderr(&output));
        assert!(stdout(&output).is_empty(), "nothing on stdout for tyr {args:?}");
    }
}

#[test]
fn without_login_commands_exit_2() {
    let home = Home::new();
    let output = home.run(&["agent", "list"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("tyr login"), "{}", stderr(&output));

    let output = home.run_with_stdin(&["agent", "list"], "", &[("TYR_SERVER", "https://127.0.0.1:7701")]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("not logged in"), "{}", stderr(&output));
    assert!(stdout(&output).is_empty());

    let output = home.run(&["logout"]);
    assert_eq!(output.status.code(), Some(0), "logging out twice is fine");
}

#[test]
fn logins_that_cannot_be_trusted_exit_2() {
    let home = Home::new();
    let output = home.run_with_stdin(
        &["login", "--server", "https://127.0.0.1:1", "--ca-pin", "sha256:abcd", "--username", "ops"],
        "password\n",
        &[],
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("--ca-pin must be sha256:"), "{}", stderr(&output));

    // Nothing listens on port 1: refused, and nothing saved.
    let pin = format!("sha256:{}", "0".repeat(64));
    let output = home.run_with_stdin(
        &["login", "--server", "https://127.0.0.1:1", "--ca-pin", &pin, "--username", "ops"],
        "password\n",
        &[],
    );
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(stderr(&output).contains("127.0.0.1:1"), "{}", stderr(&output));
    assert!(!home.0.join("config/tyr/session.json").exists());

    let output = home.run_with_stdin(&["login", "--server", "https://127.0.0.1:1", "--ca-pin", &pin], "pw\n", &[]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("--username"), "{}", stderr(&output));
}

#[test]
fn policy_check_offline() {
    let home = Home::new();
    let good = home.file("good.yaml", VALID_POLICY);
    let output = home.run(&["policy", "check", "-f", &good, "--format", "json"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let result: serde_json::Value = serde_json::from_str(stdout(&output).trim()).expect("one JSON line");
    assert_eq!(result["valid"], true);
    assert_eq!(result["rules"], 1);

    let bad = home.file("bad.yaml", INVALID_POLICY);
    let output = home.run(&["policy", "check", "-f", &bad, "--format", "table"]);
    assert_eq!(output.status.code(), Some(1), "an invalid document is a no: {}", stderr(&output));
    let errors = stderr(&output);
    assert!(errors.contains("bad.yaml:5:"), "document:line:column: {errors}");
    assert!(errors.contains("rule bad-cidr"), "{errors}");

    let output = home.run(&["policy", "check", "-f", &home.0.join("missing.yaml").display().to_string()]);
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn piped_output_is_json_lines_and_a_closed_pipe_is_quiet() {
    let home = Home::new();
    let good = home.file("good.yaml", VALID_POLICY);
    let output = home.run(&["policy", "check", "-f", &good]);
    assert_eq!(output.status.code(), Some(0));
    assert!(stdout(&output).trim().starts_with('{'), "JSON when piped: {}", stdout(&output));

    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let output = home
        .command(&["completions", "bash"])
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .expect("tyr runs");
    assert_eq!(output.status.code(), Some(0), "broken pipe: {}", stderr(&output));
    assert!(stderr(&output).is_empty(), "quiet on a broken pipe: {}", stderr(&output));
}
