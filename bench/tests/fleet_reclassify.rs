//! Issue 11's reclassification acceptance on this host, with the real
//! binaries: a fresh `tyr-server serve` and `tyrd run`; a fleet policy whose
//! base allows connects to 127.0.0.0/24 and whose `aider` overlay denies
//! 127.0.0.167. A stand-in process with agent signals and no confident
//! match (an LLM key in its environment) is discovered as an unregistered
//! `unknown` agent and reported; its connects to 127.0.0.167 succeed. An
//! operator reclassifies it as `aider` with `tyr discovered reclassify`
//! (logged in over REST): from then on a new connect from the SAME running process,
//! and from a child it forks afterwards, is refused in the kernel
//! (ECONNREFUSED), and the DENY event in ClickHouse carries agent_type
//! `aider` and the agent's id. Loopback only.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use serde::Deserialize;
use tyr_bench::fleet::{Daemon, OperatorCli, Scratch, Server, Token, wait_until, work_dir, write_file};
use tyr_server::auth::Role;
use tyr_server::control_db::audit::Actor;
use tyr_server::control_db::users;

const OPERATOR_PASSWORD: &str = "operator password for reclassify";

const POLICY: &str = "\
name: reclassify
default_verdict: allow
rules:
  - name: loopback-allowed
    action: net_connect
    cidr_allow: [\"127.0.0.0/24\"]
    verdict: allow
overlays:
  aider:
    - name: aider-no-127-0-0-167
      action: net_connect
      cidr_deny: [\"127.0.0.167/32\"]
      verdict: deny
      severity: high
";

/// Connects on command, from itself or from a child it forks then.
const STAND_IN: &str = r#"
import errno, os, socket, sys

def connect(host, port):
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect((host, int(port)))
        return 0
    except OSError as e:
        return e.errno or 1
    finally:
        s.close()

for line in sys.stdin:
    what, host, port = line.split()
    if what == "connect":
        code = connect(host, port)
    else:
        child = os.fork()
        if child == 0:
            os._exit(connect(host, port))
        code = os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])
    print(code, flush=True)
"#;

/// The stand-in agent: a Python process holding an LLM key.
struct StandIn {
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
}

impl StandIn {
    fn start(script: &str) -> Self {
        // The interpreter itself, not a shim script that execs it.
        let found = Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .expect("python3 runs (the ClickHouse dev endpoint needs it too)");
        let python = String::from_utf8(found.stdout).expect("path").trim().to_owned();
        let mut child = Command::new(python)
            .args(["-u", script])
            .env("OPENAI_API_KEY", "sk-stand-in-not-a-key")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the stand-in");
        let input = child.stdin.take().expect("stdin");
        let output = BufReader::new(child.stdout.take().expect("stdout"));
        Self { child, input, output }
    }

    /// The errno of a connect to `target` (0: connected), from the process
    /// itself (`connect`) or from a child it forks now (`fork`).
    fn connect(&mut self, how: &str, target: std::net::SocketAddr) -> i32 {
        writeln!(self.input, "{how} {} {}", target.ip(), target.port()).expect("command");
        let mut line = String::new();
        self.output.read_line(&mut line).expect("answer");
        line.trim().parse().unwrap_or_else(|_| panic!("stand-in answered {line:?}"))
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn applied_version(server: &Server) -> i64 {
    match server.cli_json(&["daemon", "list"]) {
        serde_json::Value::Array(rows) => rows.first().and_then(|d| d["applied_policy_version"].as_i64()).unwrap_or(0),
        _ => 0,
    }
}

#[derive(Debug, Deserialize, clickhouse::Row)]
struct DenyRow {
    agent_type: String,
    discovered_agent_id: String,
    rule: String,
    pid: i64,
}

const ECONNREFUSED: i32 = 111;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reclassified_agent_is_governed_by_its_new_type() {
    let scratch = Scratch::create("tyr_reclassify").await;
    let work = work_dir("tyr-reclassify");
    let server = Server::start(&scratch, &work.join("server"), &[("TYR_HEARTBEAT_INTERVAL_S", "1")]);
    let token = Token::create(&server, 1);
    server.cli_json(&["policy", "set", "--file", &write_file(&work, "policy.yaml", POLICY)]);
    let listener = TcpListener::bind("127.0.0.167:0").expect("bind 127.0.0.167");
    let target = listener.local_addr().expect("address");

    let daemon = Daemon::enroll(&server, &work.join("tyrd"), &token, &[]);
    let ready = wait_until(Duration::from_secs(60), || applied_version(&server) > 0);
    assert!(ready, "tyrd never applied the policy\ntyrd:\n{}\nserver:\n{}", daemon.log.text(), server.log.text());
    let daemon_id = daemon.daemon_id().expect("daemon id").to_string();

    let script = write_file(&work, "stand_in_agent.py", STAND_IN);
    let mut stand_in = StandIn::start(&script);
    assert_eq!(stand_in.connect("connect", target), 0, "the base policy allows 127.0.0.167");

    // tyrd discovered it as an unregistered agent and reported it.
    let mut agent = serde_json::Value::Null;
    let reported = wait_until(Duration::from_secs(20), || {
        let listed = server.cli_json(&["discovered", "list", "--daemon", &daemon_id, "--type", "unknown"]);
        let found = listed.as_array().and_then(|rows| {
            rows.iter().find(|r| r["exe_path"].as_str().is_some_and(|p| p.contains("stand_in_agent.py"))).cloned()
        });
        found.map(|row| agent = row).is_some()
    });
    assert!(reported, "the stand-in was never reported\ntyrd:\n{}", daemon.log.text());
    assert_eq!(agent["agent_type"], "unknown");
    assert_eq!(agent["state"], "active");
    let agent_id = agent["id"].as_str().expect("id").to_owned();
    assert_eq!(stand_in.connect("connect", target), 0, "still allowed before the reclassification");

    // The operator, through the `tyr` CLI over REST.
    let pool = scratch.pool().await;
    users::create(&pool, &Actor::local_admin(), "ops", OPERATOR_PASSWORD.to_owned(), Role::Admin)
        .await
        .expect("operator");
    let cli = OperatorCli::new(&work.join("operator"));
    let login = cli.run(
        &["login", "--server", &server.rest_url(), "--ca-pin", &token.ca_pin, "--username", "ops"],
        &format!("{OPERATOR_PASSWORD}\n"),
    );
    assert_eq!(login.status.code(), Some(0), "tyr login: {}", String::from_utf8_lossy(&login.stderr));
    let changed = cli.json_lines(&["discovered", "reclassify", &agent_id, "--type", "aider"]);
    assert_eq!(changed[0]["effective_type"], "aider", "{changed:?}");
    let audit: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = 'discovered.reclassify' AND target = $1")
            .bind(format!("discovered:{agent_id}"))
            .fetch_one(&scratch.pool().await)
            .await
            .expect("audit");
    assert_eq!(audit, 1, "the reclassification is audited");

    // The same running process is now governed by aider's overlay.
    let mut last = 0;
    let refused = wait_until(Duration::from_secs(20), || {
        last = stand_in.connect("connect", target);
        last != 0
    });
    assert!(
        refused,
        "the reclassified process still connects\ntyrd:\n{}\nserver:\n{}",
        daemon.log.text(),
        server.log.text()
    );
    assert_eq!(last, ECONNREFUSED, "refused in the kernel");
    assert_eq!(stand_in.connect("fork", target), ECONNREFUSED, "a child forked afterwards inherits the new type");
    let other = TcpListener::bind("127.0.0.168:0").expect("bind 127.0.0.168");
    assert_eq!(stand_in.connect("connect", other.local_addr().expect("address")), 0, "only the overlay's address");

    let store = scratch.event_store();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let rows = loop {
        let rows = store
            .client()
            .query(
                "SELECT agent_type, toString(discovered_agent_id) AS discovered_agent_id, metadata['rule'] AS rule, pid
                   FROM events WHERE kind = 'NET_CONNECT' AND verdict = 'DENY' AND resource = ?",
            )
            .bind(target.to_string())
            .fetch_all::<DenyRow>()
            .await
            .unwrap_or_default();
        if rows.len() >= 2 || tokio::time::Instant::now() >= deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(rows.len() >= 2, "the DENY events reached ClickHouse: {rows:?}\ntyrd:\n{}", daemon.log.text());
    for row in &rows {
        assert_eq!(row.agent_type, "aider", "{row:?}");
        assert_eq!(row.discovered_agent_id, agent_id, "{row:?}");
        assert_eq!(row.rule, "aider-no-127-0-0-167");
    }
    let stand_in_pid = i64::from(stand_in.child.id());
    assert!(rows.iter().any(|r| r.pid == stand_in_pid), "one from the running process itself: {rows:?}");
    assert!(rows.iter().any(|r| r.pid != stand_in_pid), "one from its child: {rows:?}");

    drop(stand_in);
    let mut daemon = daemon;
    daemon.terminate();
    drop(server);
    scratch.drop_now().await;
    let _ = std::fs::remove_dir_all(&work);
}
