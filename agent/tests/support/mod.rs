//! Runs the real `tyrd observe` (as root, on this kernel) and collects what
//! it prints, for the capture integration tests.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A running `tyrd observe` and everything it printed so far.
pub struct Observer {
    child: Child,
    events: Arc<Mutex<Vec<Value>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    state_dir: std::path::PathBuf,
}

/// What `tyrd observe` printed once stopped.
pub struct Observed {
    pub events: Vec<Value>,
    /// The counters line printed on exit.
    pub counters: Value,
    pub stderr: Vec<String>,
}

fn collect_lines<R: std::io::Read + Send + 'static>(reader: R, sink: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines().map_while(Result::ok) {
            sink.lock().expect("lock").push(line);
        }
    });
}

impl Observer {
    /// Starts `tyrd observe` with `args` and waits until its hooks are attached.
    pub fn start(args: &[&str]) -> Self {
        Self::start_in(&std::env::temp_dir().join(format!("tyrd-test-{}", uuid::Uuid::new_v4().simple())), args)
    }

    /// As [`start`](Self::start), keeping state in `state_dir` (left in place on stop).
    pub fn start_in(state_dir: &std::path::Path, args: &[&str]) -> Self {
        let state_dir = state_dir.to_path_buf();
        let mut child = Command::new(env!("CARGO_BIN_EXE_tyrd"))
            .arg("observe")
            .arg("--state-dir")
            .arg(&state_dir)
            .args(["--batch-max-ms", "20"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tyrd");
        let events = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("stdout");
        let parsed = Arc::clone(&events);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // A line that is not JSON is kept as a string and fails stop().
                let value = serde_json::from_str(&line).unwrap_or(Value::String(line));
                parsed.lock().expect("lock").push(value);
            }
        });
        collect_lines(child.stderr.take().expect("stderr"), Arc::clone(&stderr));
        let observer = Self { child, events, stderr, state_dir };
        observer.wait_stderr("tyrd: observing", Duration::from_secs(30));
        observer
    }

    fn wait_stderr(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.stderr.lock().expect("lock").iter().any(|l| l.contains(needle)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("tyrd did not print {needle:?}; stderr: {:?}", self.stderr.lock().expect("lock"));
    }

    /// A live view of the stderr lines printed so far.
    pub fn stderr_lines(&self) -> Arc<Mutex<Vec<String>>> {
        Arc::clone(&self.stderr)
    }

    /// tyrd's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Events printed so far.
    pub fn events(&self) -> Vec<Value> {
        self.events.lock().expect("lock").clone()
    }

    /// Waits until `predicate` holds for some printed event; returns it.
    pub fn wait_for(&self, what: &str, predicate: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(found) = self.events.lock().expect("lock").iter().find(|e| predicate(e)) {
                return found.clone();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("no event for {what} within 20 s");
    }

    /// Waits until the number of printed events stops growing.
    pub fn settle(&self) {
        let mut last = usize::MAX;
        loop {
            std::thread::sleep(Duration::from_millis(300));
            let now = self.events.lock().expect("lock").len();
            if now == last {
                return;
            }
            last = now;
        }
    }

    /// Stops tyrd with SIGINT; returns everything it printed.
    pub fn stop(mut self) -> Observed {
        // SAFETY: kill(2) on our own child's pid with a valid signal number.
        let rc = unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        assert_eq!(rc, 0, "signal tyrd");
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            assert!(Instant::now() < deadline, "tyrd did not exit after SIGINT");
            std::thread::sleep(Duration::from_millis(20));
        };
        std::thread::sleep(Duration::from_millis(300));
        let stderr = self.stderr.lock().expect("lock").clone();
        assert!(status.success(), "tyrd failed: {status}; stderr: {stderr:?}");
        let counters = stderr
            .iter()
            .rev()
            .find_map(|line| serde_json::from_str::<Value>(line).ok())
            .unwrap_or_else(|| panic!("no counters line on stderr: {stderr:?}"));
        if self.state_dir.starts_with(std::env::temp_dir()) && self.state_dir.to_string_lossy().contains("tyrd-test-") {
            let _ = std::fs::remove_dir_all(&self.state_dir);
        }
        let events = self.events();
        if let Some(bad) = events.iter().find(|e| !e.is_object()) {
            panic!("tyrd printed a line that is not a JSON event: {bad}");
        }
        Observed { events, counters, stderr }
    }
}

/// A field of an event as text.
pub fn field<'a>(event: &'a Value, name: &str) -> &'a str {
    event[name].as_str().unwrap_or("")
}

/// A metadata entry of an event.
pub fn meta<'a>(event: &'a Value, name: &str) -> &'a str {
    event["metadata"][name].as_str().unwrap_or("")
}

/// A string unique to one test run, for names the test can find again.
pub fn marker(prefix: &str) -> String {
    format!("{prefix}{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// Compiles a C stand-in program `source` (gcc -O2) into a fresh temporary
/// directory named from `prefix`; returns the binary.
#[allow(dead_code)] // not every test binary builds stand-ins
pub fn compile_standin(prefix: &str, source: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(marker(prefix));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("standin.c"), source).expect("source");
    let status = Command::new("gcc").args(["-O2", "-o"]).arg(dir.join("standin")).arg(dir.join("standin.c")).status();
    assert!(status.expect("gcc").success(), "compile the stand-in");
    dir.join("standin")
}

/// Copies `binary` to `path` (directories created); returns `path`.
#[allow(dead_code)] // not every test binary installs stand-ins
pub fn install_copy(binary: &std::path::Path, path: &std::path::Path) -> std::path::PathBuf {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("dirs");
    std::fs::copy(binary, path).expect("copy stand-in");
    path.to_path_buf()
}
