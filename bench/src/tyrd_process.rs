//! Starting and stopping a real `tyrd observe` for the load harnesses.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, signal: i32) -> i32;
}

const SIGINT: i32 = 2;

/// Starts `tyrd observe --state-dir STATE extra...` and returns once its
/// hooks are attached; its stdout is discarded and its stderr drained.
pub fn start(tyrd: &str, state_dir: &Path, extra: &[&str]) -> Child {
    let mut child = Command::new(tyrd)
        .args(["observe", "--state-dir"])
        .arg(state_dir)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tyrd");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    loop {
        match lines.next() {
            Some(Ok(line)) if line.contains("tyrd: observing") => break,
            Some(Ok(_)) => continue,
            _ => panic!("tyrd exited before attaching"),
        }
    }
    // Keep draining stderr so tyrd never blocks on it.
    std::thread::spawn(move || lines.for_each(drop));
    child
}

/// Stops tyrd with SIGINT and waits for it to exit.
pub fn stop(mut child: Child) {
    // SAFETY: kill(2) on our own child's pid with SIGINT.
    unsafe { libc_kill(child.id() as i32, SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "tyrd did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
}
