//! Secrets never leave tyrd (root, this kernel): agent stand-ins started
//! with keys on their command lines (`--openai-api-key sk-…`,
//! `--token=ghp_…`, `Bearer …`, a URL password) and in their environment
//! are reported — exec events, flag names, their agent type — while no
//! secret value appears in anything tyrd prints, spools, sends or keeps in
//! its state directory, under `tyrd observe` and under `tyrd run`. Every
//! file tyrd writes there is 0600 and every directory it creates 0700.

mod client_support;
mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use client_support::{GOOD_TOKEN, scratch_dir, start, wait_for};
use serde_json::Value;
use support::{Observer, compile_standin, field, install_copy, marker};
use tyr_agent::client::trust::pin_of;
use tyr_agent::spool::Spool;
use tyr_proto::agent_message::Payload as Out;
use tyr_proto::{Event, EventKind};

/// A stand-in for an agent binary: it ignores its arguments and lives long
/// enough for tyrd to read its environment.
const STANDIN_C: &str = "#include <unistd.h>\nint main(void) { usleep(1500 * 1000); return 0; }\n";

fn standin_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| compile_standin("tyr-secret-standin-", STANDIN_C))
}

fn install(path: &Path) -> PathBuf {
    install_copy(standin_binary(), path)
}

/// Unique random cores: each secret holds one, and none may appear anywhere.
struct Secrets {
    cores: Vec<String>,
}

impl Secrets {
    fn new() -> Self {
        Self { cores: (0..9).map(|_| uuid::Uuid::new_v4().simple().to_string()).collect() }
    }

    /// The first core found in `bytes`, if any.
    fn leaked_in(&self, bytes: &[u8]) -> Option<&str> {
        let text = String::from_utf8_lossy(bytes);
        self.cores.iter().find(|core| text.contains(core.as_str())).map(String::as_str)
    }
}

/// The two stand-ins and their pids: a Codex CLI and a node running Claude Code.
struct Started {
    codex: u32,
    claude: u32,
    children: Vec<Child>,
}

fn start_agents(root: &Path, s: &Secrets) -> Started {
    let codex = install(&root.join("lib/node_modules/@openai/codex/bin/codex"));
    let codex = Command::new(codex)
        .arg("--openai-api-key")
        .arg(format!("sk-proj-{}AAAA", s.cores[0]))
        .arg(format!("--token=ghp_{}", s.cores[1]))
        .arg(format!("Bearer xyz{}", s.cores[2]))
        .arg("--password")
        .arg(format!("hunter-{}", s.cores[3]))
        .arg("--verbose")
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("OPENAI_API_KEY", format!("sk-{}", s.cores[4]))
        .env("ANTHROPIC_API_KEY", format!("ant-{}", s.cores[5]))
        .spawn()
        .expect("spawn codex stand-in");
    let node = install(&root.join("usr/bin/node"));
    let cli = root.join("lib/node_modules/@anthropic-ai/claude-code/cli.js");
    let claude = Command::new(node)
        .arg(&cli)
        .arg("--anthropic-api-key")
        .arg(format!("sk-ant-api03-{}", s.cores[6]))
        .arg(format!("https://user:{}@api.example.com/v1", s.cores[7]))
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("ANTHROPIC_API_KEY", format!("sk-ant-{}", s.cores[8]))
        .spawn()
        .expect("spawn claude stand-in");
    Started { codex: codex.id(), claude: claude.id(), children: vec![codex, claude] }
}

impl Started {
    fn wait(self) {
        for mut child in self.children {
            assert!(child.wait().expect("wait").success());
        }
    }
}

/// The redacted command lines, with the flag names kept.
fn assert_redacted(codex_cmdline: &str, claude_cmdline: &str) {
    for expected in ["--openai-api-key [REDACTED]", "--token=[REDACTED]", "Bearer [REDACTED]", "--password [REDACTED]"]
    {
        assert!(codex_cmdline.contains(expected), "{expected:?} in {codex_cmdline}");
    }
    assert!(codex_cmdline.ends_with("--verbose"), "ordinary flags stay: {codex_cmdline}");
    assert!(claude_cmdline.contains("cli.js --anthropic-api-key [REDACTED]"), "{claude_cmdline}");
    assert!(claude_cmdline.contains("https://user:[REDACTED]@api.example.com/v1"), "{claude_cmdline}");
}

/// Every file under `dir` (recursively): no secret in its bytes, files
/// 0600 and directories 0700 (tyrd created them all). Returns the files.
fn walk_private(dir: &Path, secrets: &Secrets, forbidden: &[&str]) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mode = std::fs::metadata(dir).expect("dir").permissions().mode() & 0o7777;
    assert_eq!(mode, 0o700, "{} is a directory tyrd created", dir.display());
    for entry in std::fs::read_dir(dir).expect("list") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            files.extend(walk_private(&path, secrets, forbidden));
            continue;
        }
        let bytes = std::fs::read(&path).expect("read state file");
        assert_eq!(secrets.leaked_in(&bytes), None, "a secret in {}", path.display());
        for text in forbidden {
            assert!(!String::from_utf8_lossy(&bytes).contains(text), "{text:?} in {}", path.display());
        }
        let mode = std::fs::metadata(&path).expect("file").permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600, "{} is private", path.display());
        files.push(path);
    }
    files
}

#[test]
fn tyrd_observe_reports_agents_without_their_secrets() {
    let root = std::env::temp_dir().join(marker("tyr-secrets-observe-"));
    let state = root.join("state");
    let secrets = Secrets::new();
    let observer = Observer::start_in(&state, &[]);
    let started = start_agents(&root, &secrets);
    let (codex_pid, claude_pid) = (started.codex, started.claude);
    started.wait();

    let exec_of = |pid: u32| {
        observer.wait_for(&format!("exec of {pid}"), |e| {
            field(e, "kind") == "EXEC" && e["pid"].as_i64() == Some(pid.into())
        })
    };
    let (codex, claude) = (exec_of(codex_pid), exec_of(claude_pid));
    assert_eq!(field(&codex, "agent_type"), "codex", "still detected: {codex}");
    assert_eq!(field(&claude, "agent_type"), "claude-code", "still detected: {claude}");
    assert_redacted(field(&codex, "cmdline"), field(&claude, "cmdline"));
    observer.wait_for("exit of the codex stand-in", |e| {
        field(e, "kind") == "EXIT" && e["pid"].as_i64() == Some(codex_pid.into())
    });

    let observed = observer.stop();
    for line in observed.events.iter().map(Value::to_string).chain(observed.stderr.iter().cloned()) {
        assert_eq!(secrets.leaked_in(line.as_bytes()), None, "a secret in tyrd's output: {line}");
    }
    let listed = Command::new(env!("CARGO_BIN_EXE_tyrd"))
        .args(["agents", "--state-dir"])
        .arg(&state)
        .output()
        .expect("tyrd agents");
    assert!(listed.status.success());
    assert_eq!(secrets.leaked_in(&listed.stdout), None, "a secret in `tyrd agents`");
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.contains("\"agent_type\":\"codex\"") && listed.contains("\"agent_type\":\"claude-code\""));
    let files = walk_private(&state, &secrets, &[]);
    assert!(files.iter().any(|f| f.ends_with("agents.json")), "the discovered agents were kept: {files:?}");
    let _ = std::fs::remove_dir_all(&root);
}

/// A `tyrd run` child, killed if the test panics before stopping it, and
/// the thread collecting its stderr (read as it comes: a full pipe would
/// stall tyrd).
struct Tyrd(Option<(Child, std::thread::JoinHandle<String>)>);

impl Tyrd {
    fn spawn(command: &mut Command) -> Self {
        let mut child = command.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawn tyrd run");
        let mut stderr = child.stderr.take().expect("stderr");
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
            text
        });
        Self(Some((child, reader)))
    }
}

impl Drop for Tyrd {
    fn drop(&mut self) {
        if let Some((mut child, _)) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Stops tyrd with SIGTERM; returns its stderr.
fn terminate(mut tyrd: Tyrd) -> String {
    let (mut child, reader) = tyrd.0.take().expect("running");
    // SAFETY: kill(2) on the pid of a child this test spawned and has not reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().expect("tyrd run exits");
    let stderr = reader.join().expect("stderr reader");
    assert!(status.success(), "tyrd run exits 0 on SIGTERM: {status}; {stderr}");
    stderr
}

/// The events of every batch left in the spool at `dir`.
fn spooled_events(dir: &Path) -> Vec<Event> {
    let spool = Spool::open(dir, u64::MAX).expect("open the spool tyrd left");
    let (mut events, mut after) = (Vec::new(), 0);
    while let Some(batch) = spool.next_batch(after).expect("read a batch") {
        after = batch.events.last().map_or(after + 1, |e| e.seq);
        events.extend(batch.events);
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tyrd_run_spools_and_sends_no_secret() {
    let server = start().await;
    let root = scratch_dir("tyr-secrets-run");
    // Created by tyrd: it must be 0700.
    let state_dir = root.join("state");
    let secrets = Secrets::new();
    let token_secret = GOOD_TOKEN.split_once('.').expect("id.secret").1;
    let tyrd = Tyrd::spawn(
        Command::new(env!("CARGO_BIN_EXE_tyrd"))
            .arg("run")
            .args(["--config", "/dev/null", "--server", &server.address, "--ca-pin", &pin_of(&server.ca.der)])
            .args(["--token", GOOD_TOKEN, "--batch-max-ms", "20", "--heartbeat-interval-s", "1"])
            .arg("--state-dir")
            .arg(&state_dir)
            .env("TYR_LOG", "debug"),
    );
    let state = std::sync::Arc::clone(&server.state);
    wait_for("the capability report", Duration::from_secs(30), || {
        state.messages().iter().any(|(_, m)| matches!(m.payload, Some(Out::Capabilities(_))))
    })
    .await;

    let started = start_agents(&root, &secrets);
    let (codex_pid, claude_pid) = (started.codex, started.claude);
    tokio::task::spawn_blocking(move || started.wait()).await.expect("join");
    // Batches are cut every 20 ms and the last one is spooled on shutdown.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stderr = tokio::task::spawn_blocking(move || terminate(tyrd)).await.expect("join");

    assert_eq!(secrets.leaked_in(stderr.as_bytes()), None, "a secret in tyrd's log");
    assert!(!stderr.contains(token_secret), "the enrollment token in tyrd's log");
    for (_, message) in state.messages() {
        let sent = format!("{message:?}");
        assert_eq!(secrets.leaked_in(sent.as_bytes()), None, "a secret sent to the server: {sent}");
    }
    let files = walk_private(&state_dir, &secrets, &[token_secret]);
    assert!(files.iter().any(|f| f.extension().is_some_and(|e| e == "batch")), "spooled batches: {files:?}");
    assert!(files.iter().any(|f| f.ends_with("client.key")), "the identity was kept: {files:?}");
    // Nothing was acknowledged: everything captured is still in the spool.
    let events = spooled_events(&state_dir.join(tyr_agent::daemon::SPOOL_DIR));
    let exec_of = |pid: u32| {
        events
            .iter()
            .find(|e| e.kind == EventKind::Exec as i32 && e.pid == i64::from(pid))
            .unwrap_or_else(|| panic!("the exec of {pid} was spooled"))
    };
    let (codex, claude) = (exec_of(codex_pid), exec_of(claude_pid));
    assert_eq!((codex.agent_type.as_str(), claude.agent_type.as_str()), ("codex", "claude-code"));
    assert_redacted(&codex.cmdline, &claude.cmdline);
    let _ = std::fs::remove_dir_all(&root);
}
