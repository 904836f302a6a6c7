//! `--unregistered-agents deny` on the CI host, with no policy file: a
//! process showing only a weak agent signal (an executable named `cursor`)
//! is an unregistered agent, and once tyrd has seen it, its connects — and
//! its children's, from their first syscall — are refused in the kernel
//! (ECONNREFUSED), while a plain process connects. Loopback only.

use std::process::{Command, Stdio};

use tyr_bench::kernel_vm::{compile_probe, result_lines, tyrd_binary};
use tyr_bench::tyrd_process;

const ECONNREFUSED: i64 = 111;

#[test]
fn deny_mode_refuses_an_unregistered_agent_and_its_children() {
    let work = std::env::temp_dir().join(format!("tyr-unregistered-{}", std::process::id()));
    std::fs::create_dir_all(work.join("tools")).expect("work dir");
    let probe = compile_probe(&work).expect("probe");
    let agent = work.join("tools/cursor");
    std::fs::copy(&probe, &agent).expect("stand-in");
    let tyrd = tyrd_binary().expect("tyrd");
    let observer = tyrd_process::start(
        tyrd.to_str().expect("utf-8 path"),
        &work.join("state"),
        &["--kind", "exec", "--unregistered-agents", "deny"],
    );

    let run = |exe: &std::path::Path, args: &[&str]| {
        let out = Command::new(exe).args(args).stderr(Stdio::inherit()).output().expect("run probe");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let plain = run(&probe, &["connect", "127.0.0.9", "9"]);
    let governed = run(&agent, &["governed-connect", "127.0.0.9", "9"]);
    tyrd_process::stop(observer);

    let plain = result_lines(&plain);
    assert_eq!(plain.first().and_then(|l| l.num("errno")), Some(0), "a plain process connects: {plain:?}");
    let governed = result_lines(&governed);
    let line = governed.iter().find(|l| l.test == "governed-connect").expect("governed-connect result");
    assert_eq!(line.num("parent_errno"), Some(ECONNREFUSED), "{line:?}");
    assert_eq!(line.num("child_errno"), Some(ECONNREFUSED), "the child is refused from its first syscall: {line:?}");
    let _ = std::fs::remove_dir_all(&work);
}
