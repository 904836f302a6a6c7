//! No class laundering, on this host (root, cgroup connect hooks): a
//! process classified as claude-code, whose overlay denies a connect, execs
//! — itself, or through a forked child — a binary fingerprinted as cursor,
//! whose overlay allows it. The new image keeps claude-code's governance:
//! the connect is refused (ECONNREFUSED) with a DENY event naming
//! claude-code's rule, and the exec event records the cursor claim as
//! evidence only.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Observer, compile_standin, field, install_copy, marker, meta};

/// One binary playing both agents. `wait-exec GO MODE TARGET ARGS...`
/// waits for the file GO, then execs TARGET (MODE `exec`) or forks a child
/// that does (MODE `fork`), with cursor's marker as the only environment.
/// `connect GO IP PORT RESULT` waits for GO, connects a UDP socket to
/// IP:PORT and writes the errno (0: connected) to RESULT.
const STANDIN_C: &str = r#"
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
static void wait_for(const char *path) {
    for (int i = 0; i < 3000 && access(path, F_OK) != 0; i++) usleep(10 * 1000);
}
int main(int argc, char **argv) {
    if (argc >= 5 && strcmp(argv[1], "wait-exec") == 0) {
        wait_for(argv[2]);
        char *env[] = { "CURSOR_TRACE_ID=tyr-laundering-test", "PATH=/usr/bin:/bin", NULL };
        if (strcmp(argv[3], "fork") == 0) {
            pid_t child = fork();
            if (child < 0) return 10;
            if (child > 0) {
                int status = 0;
                if (waitpid(child, &status, 0) < 0) return 11;
                return WIFEXITED(status) ? WEXITSTATUS(status) : 12;
            }
        }
        execve(argv[4], &argv[4], env);
        return 13;
    }
    if (argc == 6 && strcmp(argv[1], "connect") == 0) {
        wait_for(argv[2]);
        int fd = socket(AF_INET, SOCK_DGRAM, 0);
        if (fd < 0) return 20;
        struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons(atoi(argv[4])) };
        if (inet_pton(AF_INET, argv[3], &addr.sin_addr) != 1) return 21;
        int rc = connect(fd, (struct sockaddr *)&addr, sizeof(addr));
        FILE *out = fopen(argv[5], "w");
        if (!out) return 22;
        fprintf(out, "%d\n", rc == 0 ? 0 : errno);
        fclose(out);
        return 0;
    }
    return 2;
}
"#;

/// The denied address (loopback only) and a port no other test uses.
const TARGET_IP: &str = "127.0.0.9";
const TARGET_PORT: &str = "47191";

fn standin_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| compile_standin("tyr-launder-bin-", STANDIN_C))
}

fn install(path: &Path) -> PathBuf {
    install_copy(standin_binary(), path)
}

fn text(path: &Path) -> &str {
    path.to_str().expect("utf-8")
}

/// Waits until `path` exists (the stand-in writes it), returns its text.
fn read_result(path: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(result) = std::fs::read_to_string(path)
            && result.ends_with('\n')
        {
            return result.trim().to_owned();
        }
        assert!(Instant::now() < deadline, "no result in {}", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The policy: claude-code may not connect to the target, cursor may.
fn policy(dir: &Path, tag: &str) -> PathBuf {
    let path = dir.join("policy.yaml");
    let text = format!(
        "name: laundering\ndefault_verdict: allow\nrules: []\noverlays:\n  claude-code:\n    - name: claude-no-{tag}\n      \
         action: net_connect\n      cidr_deny: [\"{TARGET_IP}/32\"]\n      ports: [\"{TARGET_PORT}\"]\n      verdict: deny\n  \
         cursor:\n    - name: cursor-may-{tag}\n      action: net_connect\n      cidr_allow: [\"{TARGET_IP}/32\"]\n      \
         ports: [\"{TARGET_PORT}\"]\n      verdict: allow\n"
    );
    std::fs::write(&path, text).expect("policy");
    path
}

fn exec_of(observer: &Observer, what: &str, predicate: impl Fn(&Value) -> bool) -> Value {
    observer.wait_for(what, |e| field(e, "kind") == "EXEC" && predicate(e))
}

/// Runs one scenario: claude-code (A) execs cursor (B) directly (`exec`)
/// or from a forked child (`fork`); returns B's exec event and the errno of
/// B's connect.
fn scenario(observer: &Observer, root: &Path, mode: &str) -> (Value, Value, i32) {
    let claude = install(&root.join(format!("{mode}/home/dev/.local/bin/claude")));
    let cursor = install(&root.join(format!("{mode}/opt/cursor/resources/bin/cursor-agent")));
    let (go_a, go_b, result) =
        (root.join(format!("{mode}-go-a")), root.join(format!("{mode}-go-b")), root.join(format!("{mode}-result")));
    let mut a: Child = Command::new(&claude)
        .args(["wait-exec", text(&go_a), mode, text(&cursor), "connect", text(&go_b), TARGET_IP, TARGET_PORT])
        .arg(text(&result))
        .env_clear()
        .env("CLAUDECODE", "1")
        .env("PATH", "/usr/bin:/bin")
        .spawn()
        .expect("spawn the claude-code stand-in");
    let a_pid = i64::from(a.id());
    // A is claude-code in tyrd, and so in the kernel's agent map, before it execs.
    let a_exec = exec_of(observer, "claude-code's exec", |e| e["pid"].as_i64() == Some(a_pid));
    assert_eq!(field(&a_exec, "agent_type"), "claude-code", "{a_exec}");
    std::fs::write(&go_a, b"").expect("go a");
    // B's exec is processed (where a laundering tracker would move it) before it connects.
    let b_exec = exec_of(observer, "cursor's exec", |e| field(e, "resource") == text(&cursor));
    std::fs::write(&go_b, b"").expect("go b");
    let errno: i32 = read_result(&result).parse().expect("errno");
    assert!(a.wait().expect("wait").success());
    let b_pid = b_exec["pid"].as_i64().expect("pid");
    let target = format!("{TARGET_IP}:{TARGET_PORT}");
    let connect =
        observer.wait_for("b's connect", |e| field(e, "resource") == target && e["pid"].as_i64() == Some(b_pid));
    if mode == "exec" {
        assert_eq!(b_pid, a_pid, "the same process");
    }
    (b_exec, connect, errno)
}

#[test]
fn a_governed_agent_keeps_its_overlay_whatever_it_execs() {
    let root = std::env::temp_dir().join(marker("tyr-launder-"));
    std::fs::create_dir_all(&root).expect("root");
    let tag = marker("");
    let policy = policy(&root, &tag);
    let observer = Observer::start(&["--kind", "exec", "--kind", "net_connect", "--policy", text(&policy)]);
    for mode in ["exec", "fork"] {
        let (b_exec, connect, errno) = scenario(&observer, &root, mode);
        // Governed as claude-code still; the cursor fingerprint is evidence only.
        assert_eq!(field(&b_exec, "agent_type"), "claude-code", "{mode}: {b_exec}");
        assert_eq!(meta(&b_exec, "agent_claimed_type"), "cursor", "{mode}: {b_exec}");
        assert_eq!(meta(&b_exec, "agent_inherited"), "true", "{mode}: {b_exec}");
        // claude-code's overlay decided the connect, in the kernel.
        assert_eq!(errno, libc::ECONNREFUSED, "{mode}: connect refused");
        assert_eq!(field(&connect, "verdict"), "DENY", "{mode}: {connect}");
        assert_eq!(meta(&connect, "rule"), format!("claude-no-{tag}"), "{mode}: {connect}");
        assert_eq!(field(&connect, "agent_type"), "claude-code", "{mode}: {connect}");
    }
    let observed = observer.stop();
    assert!(observed.counters["agent_claims_ignored"].as_u64().expect("counter") >= 2, "{}", observed.counters);
    let _ = std::fs::remove_dir_all(&root);
    let _ = std::fs::remove_dir_all(standin_binary().parent().expect("the stand-in's directory"));
}
