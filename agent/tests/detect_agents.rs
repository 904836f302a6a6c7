//! AI-agent detection against real processes (root, this kernel): realistic
//! stand-ins of the eight seed agent types are classified, plain processes
//! are not, a renamed binary is not confidently, children inherit, a
//! contradicting TLS destination is flagged, environment values never leak,
//! and discovered ids survive a tyrd restart.

mod support;

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::OnceLock;

use serde_json::Value;
use support::{Observer, compile_standin, field, install_copy, marker, meta};

/// A small program standing in for an agent binary: it waits (so tyrd can
/// read its environment), optionally reads and creates files and runs a
/// shell command, then waits again. Configured through STANDIN_* variables,
/// which are not agent markers, so argv and names stay realistic.
const STANDIN_C: &str = r#"
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>
int main(void) {
    usleep(400 * 1000);
    const char *read_path = getenv("STANDIN_READ");
    if (read_path) { int fd = open(read_path, O_RDONLY); if (fd >= 0) close(fd); }
    const char *create = getenv("STANDIN_CREATE");
    if (create) { int fd = open(create, O_CREAT | O_WRONLY | O_TRUNC, 0644); if (fd >= 0) close(fd); }
    usleep(200 * 1000);
    const char *run = getenv("STANDIN_RUN");
    if (run && system(run) == -1) return 3;
    usleep(600 * 1000);
    return 0;
}
"#;

fn standin_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| compile_standin("tyr-standin-", STANDIN_C))
}

/// Installs the stand-in at `path` (directories created).
fn install(path: &Path) -> PathBuf {
    install_copy(standin_binary(), path)
}

/// The secret every stand-in's API keys are set to; it must never appear
/// in anything tyrd writes.
fn secret() -> &'static str {
    static SECRET: OnceLock<String> = OnceLock::new();
    SECRET.get_or_init(|| marker("sk-tyr-SECRET-"))
}

fn spawn(exe: &Path, argv: &[&str], env: &[(&str, &str)]) -> Child {
    let mut command = Command::new(exe);
    command.args(argv).env_clear().env("PATH", "/usr/bin:/bin");
    for (name, value) in env {
        command.env(name, value);
    }
    command.spawn().expect("spawn stand-in")
}

fn exec_event(observer: &Observer, pid: u32) -> Value {
    observer
        .wait_for(&format!("exec of {pid}"), |e| field(e, "kind") == "EXEC" && e["pid"].as_i64() == Some(pid.into()))
}

fn exit_event(observer: &Observer, pid: u32) -> Value {
    observer
        .wait_for(&format!("exit of {pid}"), |e| field(e, "kind") == "EXIT" && e["pid"].as_i64() == Some(pid.into()))
}

/// A loopback TCP server that accepts and reads (enough for a ClientHello to be sent).
fn sink_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let _ = std::io::Read::read(&mut &stream, &mut buf);
            });
        }
    });
    port
}

#[test]
fn seed_agents_are_recognised_and_their_children_inherit() {
    let root = std::env::temp_dir().join(marker("tyr-agents-"));
    let state = root.join("state");
    let key = secret();
    let observer = Observer::start_in(&state, &[]);
    let mut expected: Vec<(&str, u32)> = Vec::new();
    let mut children = Vec::new();

    // cursor: under a path containing "cursor", CURSOR_TRACE_ID set.
    let cursor = install(&root.join("opt/cursor/resources/bin/cursor-agent"));
    let c = spawn(&cursor, &["--serve"], &[("CURSOR_TRACE_ID", key)]);
    expected.push(("cursor", c.id()));
    children.push(c);

    // claude-code: a node process running @anthropic-ai/claude-code/cli.js,
    // which starts a shell that starts a child.
    let node = install(&root.join("usr/bin/node"));
    let cli = root.join("lib/node_modules/@anthropic-ai/claude-code/cli.js");
    let shell_marker = marker("shell-");
    let run = format!("/bin/sh -c 'cat /dev/null {shell_marker}; /usr/bin/true {shell_marker}'");
    let c = spawn(&node, &[cli.to_str().expect("utf-8")], &[("ANTHROPIC_API_KEY", key), ("STANDIN_RUN", &run)]);
    let claude_pid = c.id();
    expected.push(("claude-code", c.id()));
    children.push(c);

    // claude-code again: the native `claude` executable.
    let claude = install(&root.join("home/dev/.local/share/claude/versions/2.0.1/claude"));
    let c = spawn(&claude, &["--print", "hello"], &[]);
    expected.push(("claude-code", c.id()));
    children.push(c);

    // copilot: the language server under the VS Code extension directory.
    let copilot =
        install(&root.join(".vscode-server/extensions/github.copilot-1.250.0/dist/github-copilot-language-server"));
    let c = spawn(&copilot, &["--stdio"], &[]);
    expected.push(("copilot", c.id()));
    children.push(c);

    // codex: the OpenAI Codex CLI as npm installs it.
    let codex = install(&root.join("lib/node_modules/@openai/codex/bin/codex"));
    let c = spawn(&codex, &["exec", "fix the tests"], &[("OPENAI_API_KEY", key)]);
    expected.push(("codex", c.id()));
    children.push(c);

    // cline: a helper under the saoudrizwan.claude-dev extension directory.
    let cline = install(&root.join(".vscode/extensions/saoudrizwan.claude-dev-3.17.0/dist/helper"));
    let c = spawn(&cline, &[], &[]);
    expected.push(("cline", c.id()));
    children.push(c);

    // aider: creates .aider.chat.history.md.
    let aider = install(&root.join("home/dev/.local/bin/aider"));
    let history = root.join("project/.aider.chat.history.md");
    std::fs::create_dir_all(history.parent().expect("parent")).expect("project");
    let c = spawn(&aider, &["--model", "gpt-4o"], &[("STANDIN_CREATE", history.to_str().expect("utf-8"))]);
    let aider_pid = c.id();
    children.push(c);

    // autogen and langgraph: Python importing the package from site-packages.
    let mut python_pids = Vec::new();
    for package in ["autogen", "langgraph"] {
        let site = root.join(format!("venv-{package}/lib/python3.11/site-packages"));
        std::fs::create_dir_all(site.join(package)).expect("package dir");
        std::fs::write(site.join(package).join("__init__.py"), "VERSION = '0.4'\n").expect("package");
        let script = format!(
            "import sys, time\nsys.path.insert(0, {site:?})\nimport {package}\ntime.sleep(1.0)\n",
            site = site.to_str().expect("utf-8")
        );
        let python = Command::new("python3").args(["-c", &script]).env("OPENAI_API_KEY", key).spawn().expect("python3");
        python_pids.push((package, python.id()));
        children.push(python);
    }

    // Plain processes.
    let plain: Vec<Child> = vec![
        Command::new("/usr/bin/ls").arg("/").stdout(std::process::Stdio::null()).spawn().expect("ls"),
        Command::new("python3").args(["-c", "import time; time.sleep(0.5)"]).spawn().expect("python3"),
        Command::new("/bin/sh").args(["-c", "sleep 0.5"]).spawn().expect("sh"),
    ];
    let plain_pids: Vec<u32> = plain.iter().map(Child::id).collect();

    // A plain binary renamed `cursor`, with nothing else pointing to Cursor.
    let renamed = install(&root.join("tmp-tools/cursor"));
    let c = spawn(&renamed, &[], &[]);
    let renamed_pid = c.id();
    children.push(c);

    for mut child in children.into_iter().chain(plain) {
        assert!(child.wait().expect("wait").success());
    }

    let mut ids: HashMap<&str, Vec<String>> = HashMap::new();
    for (agent_type, pid) in &expected {
        let exec = exec_event(&observer, *pid);
        assert_eq!(field(&exec, "agent_type"), *agent_type, "{exec}");
        assert!(!field(&exec, "discovered_agent_id").is_empty(), "{exec}");
        assert!(!meta(&exec, "agent_evidence").is_empty(), "evidence shown: {exec}");
        assert!(meta(&exec, "agent_confidence").parse::<u32>().expect("confidence") >= 60);
        ids.entry(agent_type).or_default().push(field(&exec, "discovered_agent_id").to_owned());
    }
    // Behavioural evidence arrives after exec: later events carry it.
    let aider_exit = exit_event(&observer, aider_pid);
    assert_eq!(field(&aider_exit, "agent_type"), "aider", "{aider_exit}");
    assert!(meta(&aider_exit, "agent_evidence").contains("wrote:.aider.chat.history.md"));
    for (package, pid) in &python_pids {
        let exit = exit_event(&observer, *pid);
        assert_eq!(field(&exit, "agent_type"), *package, "{exit}");
        assert!(meta(&exit, "agent_evidence").contains(&format!("module:/site-packages/{package}")), "{exit}");
    }

    // The shell claude-code started, and that shell's child, are claude-code.
    let claude_id = exec_event(&observer, claude_pid)["discovered_agent_id"].clone();
    let shell = observer.wait_for("shell", |e| {
        field(e, "kind") == "EXEC"
            && field(e, "cmdline").starts_with("/bin/sh -c")
            && field(e, "cmdline").contains(&shell_marker)
    });
    let grandchild = observer.wait_for("shell child", |e| {
        field(e, "kind") == "EXEC"
            && field(e, "resource") == "/usr/bin/true"
            && field(e, "cmdline").contains(&shell_marker)
    });
    assert!(meta(&grandchild, "agent_lineage").contains(&format!("{claude_pid}:claude-code")), "{grandchild}");
    for inherited in [&shell, &grandchild] {
        assert_eq!(field(inherited, "agent_type"), "claude-code", "{inherited}");
        assert_eq!(inherited["discovered_agent_id"], claude_id, "{inherited}");
        assert_eq!(meta(inherited, "agent_inherited"), "true");
    }
    // Their file events too (the shell's cat opens /dev/null).
    let cat_open = observer.wait_for("inherited open", |e| {
        field(e, "kind") == "FILE_READ"
            && field(e, "resource") == "/dev/null"
            && field(e, "cmdline").contains(&shell_marker)
    });
    assert_eq!(field(&cat_open, "agent_type"), "claude-code", "{cat_open}");

    // Plain processes are unknown.
    for pid in plain_pids {
        let exec = exec_event(&observer, pid);
        assert_eq!(field(&exec, "agent_type"), "unknown", "{exec}");
        assert_eq!(field(&exec, "discovered_agent_id"), "");
        assert_eq!(meta(&exec, "unregistered_agents"), "audit");
    }
    // The renamed binary is a weak candidate only, and the evidence says why.
    let renamed_exec = exec_event(&observer, renamed_pid);
    // Executables are hashed once, off the event path; later execs of the
    // same file carry the hash.
    // The hash may still be queued behind larger executables (the other
    // tests start tyrd itself): run it again until an exec carries it.
    let is_hashed = |e: &Value| {
        field(e, "kind") == "EXEC"
            && field(e, "resource") == renamed.to_str().unwrap_or("")
            && !meta(e, "exe_sha256").is_empty()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !observer.events().iter().any(is_hashed) && std::time::Instant::now() < deadline {
        let rerun = spawn(&renamed, &[], &[]).wait();
        assert!(rerun.expect("wait").success());
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    let hashed = observer.wait_for("hashed exec", is_hashed);
    assert_eq!(meta(&hashed, "exe_sha256").len(), 64);
    assert_eq!(field(&renamed_exec, "agent_type"), "unknown", "{renamed_exec}");
    assert_eq!(meta(&renamed_exec, "agent_candidate"), "cursor");
    assert_eq!(meta(&renamed_exec, "agent_evidence"), "exe_name:cursor=25");
    assert_eq!(meta(&renamed_exec, "agent_confidence"), "25");

    let observed = observer.stop();
    assert_eq!(ids["claude-code"].len(), 2);
    assert_ne!(ids["claude-code"][0], ids["claude-code"][1], "two executables, two discovered agents");

    // `tyrd agents` lists what was discovered.
    let listed = Command::new(env!("CARGO_BIN_EXE_tyrd"))
        .args(["agents", "--state-dir"])
        .arg(&state)
        .output()
        .expect("tyrd agents");
    assert!(listed.status.success());
    let listed = String::from_utf8(listed.stdout).expect("utf-8");
    for agent_type in ["cursor", "claude-code", "copilot", "codex", "cline", "aider", "autogen", "langgraph"] {
        assert!(listed.contains(&format!("\"agent_type\":\"{agent_type}\"")), "{agent_type} listed: {listed}");
    }

    // No environment value anywhere: stdout, stderr, state files.
    let everything =
        observed.events.iter().map(Value::to_string).chain(observed.stderr.iter().cloned()).collect::<String>();
    assert!(!everything.contains(key), "a secret value leaked into tyrd's output");
    assert!(!listed.contains(key));
    for entry in std::fs::read_dir(&state).expect("state dir") {
        let content = std::fs::read(entry.expect("entry").path()).expect("state file");
        assert!(!String::from_utf8_lossy(&content).contains(key), "a secret value leaked into a state file");
    }
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn tls_to_an_unexpected_host_is_a_fingerprint_mismatch() {
    let root = std::env::temp_dir().join(marker("tyr-mismatch-"));
    let port = sink_server();
    let observer = Observer::start(&[]);
    let cursor = install(&root.join("opt/cursor/bin/cursor-agent"));
    let run =
        format!("curl -sk --max-time 2 --resolve evil.example.com:{port}:127.0.0.1 https://evil.example.com:{port}/");
    let mut child = spawn(&cursor, &[], &[("CURSOR_TRACE_ID", "t-1"), ("STANDIN_RUN", &run)]);
    let pid = child.id();
    child.wait().expect("wait");
    let exec = exec_event(&observer, pid);
    assert_eq!(field(&exec, "agent_type"), "cursor");
    let tls = observer
        .wait_for("tls to evil.example.com", |e| field(e, "kind") == "TLS" && meta(e, "sni") == "evil.example.com");
    observer.stop();
    assert_eq!(field(&tls, "agent_type"), "cursor", "curl inherits the agent: {tls}");
    assert!(meta(&tls, "fingerprint_mismatch").contains("evil.example.com"), "{tls}");
    assert_eq!(field(&tls, "severity"), "HIGH");
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn discovered_ids_survive_a_tyrd_restart() {
    let root = std::env::temp_dir().join(marker("tyr-restart-"));
    let state = root.join("state");
    let cursor = install(&root.join("opt/cursor/bin/cursor-agent"));
    let mut ids = Vec::new();
    for _ in 0..2 {
        let observer = Observer::start_in(&state, &["--kind", "exec"]);
        let mut child = spawn(&cursor, &[], &[("CURSOR_TRACE_ID", "t-2")]);
        let pid = child.id();
        child.wait().expect("wait");
        let exec = exec_event(&observer, pid);
        assert_eq!(field(&exec, "agent_type"), "cursor");
        ids.push(field(&exec, "discovered_agent_id").to_owned());
        observer.stop();
    }
    assert_eq!(ids[0], ids[1], "same agent, same id across tyrd restarts");
    let _ = std::fs::remove_dir_all(&root);
}
