//! tyrd cannot be blinded or exhausted by a local process (root, this
//! kernel): under a glob-heavy policy (300 `**` globs, decided in userspace
//! here where BPF LSM is missing), a load process makes 100,000 distinct
//! fake agent identities, execs 10,000 distinct executables and opens
//! paths of 4 KiB. tyrd's resident memory stays bounded, its ring reader
//! stays live (a marker exec is seen within a second of the flood), and
//! what it drops is counted: registrations refused, digests evicted, hash
//! requests dropped, records lost in the kernel.
//!
//! Only the markers are printed (`--kind net_connect`, and an exec rule
//! alerting on the marker binary; the flood still reaches the ring reader,
//! which sees every record when a policy is loaded), so their latency is
//! the ring reader's, not that of printing the flood.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Observer, field, marker};

/// Fake agent identities: interpreter scripts (90,000) plus the distinct
/// executables, each also an identity (10,000).
const SCRIPT_IDENTITIES: usize = 90_000;
const EXECUTABLES: usize = 10_000;
/// Opens of ~4 KiB paths.
const OPENS: usize = 20_000;
/// Rules with `**` globs.
const GLOB_RULES: usize = 300;
/// tyrd's resident memory, at most, in KiB: about 125 MiB at start here
/// (the 32 MiB ring and the BPF maps included), every cache full adds at
/// most ~100 MiB (processes and agent processes 32 MiB each, registry,
/// digests, hash queue).
const RSS_BOUND_KIB: u64 = 256 * 1024;

/// A program that exits at once, without libc: cheap to exec, and small
/// enough to copy 10,000 times.
const TINY_C: &str = r#"
void _start(void) {
#if defined(__x86_64__)
    __asm__ volatile("mov $60, %eax\n xor %edi, %edi\n syscall");
#elif defined(__aarch64__)
    __asm__ volatile("mov x8, #93\n mov x0, #0\n svc #0");
#else
#error "unsupported architecture"
#endif
    for (;;) {}
}
"#;

/// The load: `exes DIR N` execs DIR/I/cursor-agent for I < N; `scripts
/// NODE N TAG` execs NODE with a distinct agent script per I (claude-code
/// for even I, a weak cline candidate for odd I); `opens DIR N` opens
/// DIR/qI. Up to 32 children run at once (vfork + exec).
const LOAD_C: &str = r#"
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
static int running = 0;
static void spawn(const char *exe, char **argv, char **env) {
    while (running >= 32) { if (wait(NULL) > 0) running--; else break; }
    pid_t pid = vfork();
    if (pid == 0) { execve(exe, argv, env); _exit(127); }
    if (pid > 0) running++;
}
int main(int argc, char **argv) {
    if (argc < 4) return 2;
    long n = atol(argv[3]);
    char path[4200], arg[512];
    char *env[] = { "CLAUDECODE=1", "OPENAI_API_KEY=sk-tyr-exhaustion-not-a-key", NULL };
    if (strcmp(argv[1], "exes") == 0) {
        for (long i = 0; i < n; i++) {
            snprintf(path, sizeof path, "%s/%ld/cursor-agent", argv[2], i);
            char *args[] = { "cursor-agent", NULL };
            spawn(path, args, env);
        }
    } else if (strcmp(argv[1], "scripts") == 0 && argc == 5) {
        for (long i = 0; i < n; i++) {
            if (i % 2 == 0)
                snprintf(arg, sizeof arg, "/srv/%s/%ld/node_modules/@anthropic-ai/claude-code/cli.js", argv[4], i);
            else
                snprintf(arg, sizeof arg, "/srv/%s/%ld/saoudrizwan.claude-dev/dist/extension.js", argv[4], i);
            char *args[] = { "node", arg, NULL };
            spawn(argv[2], args, env);
        }
    } else if (strcmp(argv[1], "opens") == 0) {
        for (long i = 0; i < n; i++) {
            snprintf(path, sizeof path, "%s/q%ld", argv[2], i);
            int fd = open(path, O_RDONLY);
            if (fd >= 0) close(fd);
        }
    } else {
        return 2;
    }
    while (wait(NULL) > 0) {}
    return 0;
}
"#;

fn compile(dir: &Path, name: &str, source: &str, flags: &[&str]) -> PathBuf {
    let (src, out) = (dir.join(format!("{name}.c")), dir.join(name));
    std::fs::write(&src, source).expect("source");
    let status = Command::new("gcc").args(["-O2"]).args(flags).arg("-o").arg(&out).arg(&src).status().expect("gcc");
    assert!(status.success(), "compile {name}");
    out
}

/// Runs the marker binary with `text` as its argument; returns how long
/// until its exec event was printed (None: not within `wait`).
fn marker_latency(observer: &Observer, binary: &Path, text: &str, wait: Duration) -> Option<Duration> {
    let started = Instant::now();
    assert!(Command::new(binary).arg(text).status().expect("marker").success());
    loop {
        let seen = observer.events().iter().any(|e| field(e, "kind") == "EXEC" && field(e, "cmdline").contains(text));
        if seen {
            return Some(started.elapsed());
        }
        if started.elapsed() > wait {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
}

fn count(counters: &Value, name: &str) -> u64 {
    counters[name].as_u64().unwrap_or_else(|| panic!("no counter {name}: {counters}"))
}

fn by_kind(counters: &Value, family: &str, kind: &str) -> u64 {
    counters[family][kind].as_u64().unwrap_or_else(|| panic!("no {family}.{kind}: {counters}"))
}

/// 300 rules of `**` globs, none matching the flood (nothing printed). The
/// kernel lets at most 32 rules be candidates for one path, so 20 apply to
/// the flooded tree — half rejected early by their literals, half running
/// the automaton over the whole path — and the others to other trees
/// (rejected by their literal prefix). One exec rule flags the marker.
fn glob_policy(root: &Path, marker: &Path) -> PathBuf {
    let root = root.display();
    let mut text = String::from("name: globs\ndefault_verdict: allow\nrules:\n");
    for i in 0..GLOB_RULES {
        let glob = match i {
            0..10 => format!("/**/q{i}*d*d*d*d*d*d*d*d*/**"),
            10..15 => format!("{root}/**/nomatch-{i}/**"),
            15..20 => format!("{root}/**/*.key-{i}"),
            _ if i % 2 == 0 => format!("/home/u{i}/**/.ssh/**"),
            _ => format!("/srv/app{i}/**/secrets/**/*.pem"),
        };
        text.push_str(&format!("  - name: g{i}\n    action: file_read\n    paths: [\"{glob}\"]\n    verdict: alert\n"));
    }
    text.push_str(&format!(
        "  - name: live-marker\n    action: exec\n    paths: [\"{}\"]\n    verdict: alert\n",
        marker.display()
    ));
    let path = PathBuf::from(format!("{root}/policy.yaml"));
    std::fs::write(&path, text).expect("policy");
    path
}

/// A tmpfs mounted for the test's files (tens of thousands of them, made
/// and removed in a moment), unmounted and removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn mount(path: PathBuf) -> Self {
        std::fs::create_dir_all(&path).expect("mount point");
        let c = |text: &str| std::ffi::CString::new(text).expect("no NUL");
        let (source, target, kind, options) =
            (c("tmpfs"), c(path.to_str().expect("utf-8")), c("tmpfs"), c("size=512m,mode=0700"));
        // SAFETY: every pointer is a NUL-terminated string alive across the call.
        let rc = unsafe { libc::mount(source.as_ptr(), target.as_ptr(), kind.as_ptr(), 0, options.as_ptr().cast()) };
        assert_eq!(rc, 0, "mount a tmpfs: {}", std::io::Error::last_os_error());
        Self(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Ok(target) = std::ffi::CString::new(self.0.to_string_lossy().as_bytes()) {
            // SAFETY: a NUL-terminated path; MNT_DETACH lets a busy mount go lazily.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_flood_degrades_into_counted_drops() {
    let started = Instant::now();
    let tag = marker("tyr-flood-");
    let scratch = Scratch::mount(std::env::temp_dir().join(&tag));
    let root = scratch.0.clone();
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).expect("dirs");
    let tiny = compile(&bin, "tiny", TINY_C, &["-static", "-nostdlib", "-s"]);
    let load = compile(&bin, "load", LOAD_C, &[]);
    let node = bin.join("node");
    std::fs::copy(&tiny, &node).expect("node");
    let exes = root.join("cursor");
    for i in 0..EXECUTABLES {
        let dir = exes.join(i.to_string());
        std::fs::create_dir_all(&dir).expect("exe dir");
        std::fs::copy(&tiny, dir.join("cursor-agent")).expect("copy");
    }
    // Nineteen components of 200 bytes: paths of about 3.9 KiB.
    let deep = (0..19).fold(root.join("d"), |dir, _| dir.join("d".repeat(200)));
    std::fs::create_dir_all(&deep).expect("deep dir");
    let mark = root.join("marker").join("mark");
    std::fs::create_dir_all(mark.parent().expect("dir")).expect("marker dir");
    std::fs::copy(&tiny, &mark).expect("marker");
    let policy = glob_policy(&root, &mark);
    let needle = marker("tyr-live-");
    // The ring holds what tyrd drains before it sees a new record: 8 MiB
    // (~1,900 records of 4 KiB paths) drains within a second even in a
    // debug build, where deciding 300 globs over a 4 KiB path costs ~0.1 ms.
    let observer = Observer::start_in(
        &root.join("state"),
        &["--kind", "net_connect", "--ring-mb", "8", "--policy", policy.to_str().expect("utf-8")],
    );
    let setup = started.elapsed();

    let peak = Arc::new(AtomicU64::new(0));
    let flooding = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, flooding, pid) = (Arc::clone(&peak), Arc::clone(&flooding), observer.pid());
        std::thread::spawn(move || {
            while flooding.load(Ordering::Relaxed) {
                if let Some(rss) = rss_kib(pid) {
                    peak.fetch_max(rss, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let baseline = rss_kib(observer.pid()).expect("rss");
    let load_run = |args: &[&str]| {
        let status = Command::new(&load).args(args).status().expect("load");
        assert!(status.success(), "load {args:?}");
    };
    let latency = |text: String, wait: Duration| marker_latency(&observer, &mark, &text, wait);
    let mut during = Vec::new();
    let phases: [(&str, Vec<String>); 3] = [
        ("exes", vec![exes.display().to_string(), EXECUTABLES.to_string()]),
        ("scripts", vec![node.display().to_string(), SCRIPT_IDENTITIES.to_string(), tag.clone()]),
        ("opens", vec![deep.display().to_string(), OPENS.to_string()]),
    ];
    let flood_started = Instant::now();
    for (phase, args) in &phases {
        let mut argv = vec![*phase];
        argv.extend(args.iter().map(String::as_str));
        // A marker while the phase floods.
        std::thread::scope(|scope| {
            let flood = scope.spawn(|| load_run(&argv));
            std::thread::sleep(Duration::from_millis(300));
            during.push(latency(format!("{needle}-{phase}-during"), Duration::from_secs(10)));
            flood.join().expect("flood");
        });
    }
    let flood = flood_started.elapsed();
    let after = latency(format!("{needle}-after"), Duration::from_secs(1));
    flooding.store(false, Ordering::Relaxed);
    sampler.join().expect("sampler");
    let final_rss = rss_kib(observer.pid()).expect("rss");
    let stopping = Instant::now();
    let observed = observer.stop();
    let stop = stopping.elapsed();
    let counters = observed.counters;
    let peak = peak.load(Ordering::Relaxed);
    eprintln!(
        "exhaustion: setup {setup:?}, flood {flood:?}, stop {stop:?}; tyrd RSS baseline {baseline} KiB, peak {peak} KiB, \
         final {final_rss} KiB (bound {RSS_BOUND_KIB} KiB); marker latency during {during:?}, after \
         {after:?}\ncounters: {counters}"
    );

    assert!(peak > 0 && peak < RSS_BOUND_KIB, "tyrd's RSS peaked at {peak} KiB");
    let lost_execs = by_kind(&counters, "lost", "EXEC");
    // Live: a marker right after the flood is seen within a second, and
    // one during each phase is seen (late, behind the flood) or counted lost.
    assert!(after.is_some(), "no marker exec seen within 1 s after the flood");
    assert!(during.iter().all(Option::is_some) || lost_execs > 0, "a marker vanished uncounted: {during:?}");
    // Counted: every identity was registered, refused, or its exec lost in
    // the kernel; the registry stayed within its bound.
    let identities = (SCRIPT_IDENTITIES + EXECUTABLES) as u64;
    let discovered = count(&counters, "agents_discovered");
    let refused = count(&counters, "agents_refused");
    assert!(discovered <= tyr_agent::detect::registry::MAX_AGENTS as u64, "{discovered} agents registered");
    assert!(refused > 0, "the registry refused nothing: {counters}");
    assert!(discovered + refused + lost_execs >= identities, "identities unaccounted for: {counters}");
    // Every distinct executable was hashed, failed, dropped from a full
    // queue, or never seen (lost); the cache evicted, counted.
    let hashes =
        ["exe_hashed", "exe_hash_failed", "exe_hash_queue_full"].iter().map(|n| count(&counters, n)).sum::<u64>();
    assert!(hashes + lost_execs >= EXECUTABLES as u64, "hash requests unaccounted for: {counters}");
    assert!(count(&counters, "exe_hash_evicted") > 0, "{counters}");
    // Every open was decoded or counted lost.
    let opens = by_kind(&counters, "seen", "FILE_READ") + by_kind(&counters, "lost", "FILE_READ");
    assert!(opens >= OPENS as u64, "opens unaccounted for: {counters}");
    drop(scratch);
}
