//! A bounded cache of what tyrd knows about each live process: executable,
//! command line, parent and a short ancestor chain. Fed by exec, fork and
//! exit records; processes that started before tyrd are read from /proc
//! once, on first sight. Bounded in entries and bytes (a flood of forks
//! with long command lines evicts the least recently used, counted).

use std::fs;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;

use super::bounded_lru::BoundedLru;

use crate::redact;

/// Longest command line kept, in bytes.
pub const CMDLINE_MAX: usize = 1024;
/// Bytes of a /proc command line scanned for credentials (redaction can
/// lengthen a value, so more than is kept).
const REDACT_SCAN_MAX: usize = 4 * CMDLINE_MAX;
/// Ancestors listed in a process's lineage.
pub const LINEAGE_DEPTH: usize = 4;
/// Longest executable path of an ancestor kept in a lineage (its end).
pub const LINEAGE_EXE_MAX: usize = 256;
/// Bytes of executables, command lines and lineages cached, at most.
pub const CACHE_BYTES: usize = 32 << 20;
/// What an entry costs besides its strings (map slot, Arc headers).
const ENTRY_OVERHEAD: usize = 128;

/// What the cache knows about one process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessInfo {
    pub exe: Arc<str>,
    pub cmdline: Arc<str>,
    pub ppid: u32,
    /// Ancestors nearest first, as `pid:exe` joined by `,` (bounded).
    pub lineage: Arc<str>,
}

/// The cache. Single-threaded: owned by the ring reader.
#[derive(Debug)]
pub struct ProcessCache {
    entries: BoundedLru<u32, Arc<ProcessInfo>>,
    proc_root: PathBuf,
    /// Lookups answered from /proc because the process was not seen starting.
    pub proc_reads: u64,
}

/// Joins NUL-separated arguments with spaces, bounded to CMDLINE_MAX bytes.
pub fn cmdline_from_argv(argv: &[u8]) -> String {
    let trimmed = argv.strip_suffix(&[0]).unwrap_or(argv);
    let bounded = &trimmed[..trimmed.len().min(CMDLINE_MAX)];
    String::from_utf8_lossy(bounded).replace('\0', " ")
}

/// The command line of an argv read whole from /proc, credentials
/// redacted (exec records are redacted when built into events). Only a
/// bounded prefix is scanned: the rest would be cut at [`CMDLINE_MAX`].
fn redacted_cmdline(argv: &[u8]) -> String {
    let scanned = &argv[..argv.len().min(REDACT_SCAN_MAX)];
    cmdline_from_argv(&redact::argv(scanned, scanned.len() < argv.len()))
}

impl ProcessCache {
    /// A cache of at most `capacity` processes, reading misses from /proc.
    pub fn new(capacity: NonZeroUsize) -> Self {
        Self::with_proc_root(capacity, PathBuf::from("/proc"))
    }

    /// As [`new`](Self::new), with another procfs root (tests, benchmarks).
    pub fn with_proc_root(capacity: NonZeroUsize, proc_root: PathBuf) -> Self {
        Self { entries: BoundedLru::new(capacity, CACHE_BYTES), proc_root, proc_reads: 0 }
    }

    fn put(&mut self, pid: u32, info: Arc<ProcessInfo>) {
        let size = ENTRY_OVERHEAD + info.exe.len() + info.cmdline.len() + info.lineage.len();
        self.entries.put(pid, info, size);
    }

    fn lineage_of(&mut self, ppid: u32) -> Arc<str> {
        if ppid == 0 {
            return Arc::from("");
        }
        let parent = self.get(ppid);
        let mut chain = format!("{ppid}:{}", tail(&parent.exe, LINEAGE_EXE_MAX));
        for ancestor in parent.lineage.split(',').filter(|a| !a.is_empty()).take(LINEAGE_DEPTH - 1) {
            chain.push(',');
            chain.push_str(ancestor);
        }
        Arc::from(chain)
    }

    /// A process replaced its image.
    pub fn on_exec(&mut self, pid: u32, ppid: u32, exe: &str, argv: &[u8]) -> Arc<ProcessInfo> {
        let lineage = self.lineage_of(ppid);
        let info =
            Arc::new(ProcessInfo { exe: Arc::from(exe), cmdline: Arc::from(cmdline_from_argv(argv)), ppid, lineage });
        self.put(pid, Arc::clone(&info));
        info
    }

    /// A process forked: the child runs the parent's image until it execs.
    pub fn on_fork(&mut self, parent: u32, child: u32) {
        let parent_info = self.get(parent);
        let lineage = self.lineage_of(parent);
        let info = ProcessInfo { ppid: parent, lineage, ..(*parent_info).clone() };
        self.put(child, Arc::new(info));
    }

    /// A process exited; returns what was known about it.
    pub fn on_exit(&mut self, pid: u32) -> Arc<ProcessInfo> {
        let info = self.get(pid);
        self.entries.pop(&pid);
        info
    }

    /// What is known about `pid`, reading /proc when it was not seen starting.
    pub fn get(&mut self, pid: u32) -> Arc<ProcessInfo> {
        if let Some(info) = self.entries.get(&pid) {
            return Arc::clone(info);
        }
        self.proc_reads += 1;
        let info = Arc::new(self.read_proc(pid));
        self.put(pid, Arc::clone(&info));
        info
    }

    /// Reads a process from procfs; a vanished process yields empty fields.
    fn read_proc(&mut self, pid: u32) -> ProcessInfo {
        let dir = self.proc_root.join(pid.to_string());
        let exe = fs::read_link(dir.join("exe")).map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
        let cmdline = fs::read(dir.join("cmdline")).map(|argv| redacted_cmdline(&argv)).unwrap_or_default();
        let ppid = fs::read_to_string(dir.join("stat")).ok().and_then(|stat| parse_stat_ppid(&stat)).unwrap_or(0);
        // Lineage of a process found late is left empty rather than walking
        // /proc up the tree on the hot path.
        ProcessInfo { exe: Arc::from(exe), cmdline: Arc::from(cmdline), ppid, lineage: Arc::from("") }
    }

    /// Processes currently cached.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Processes evicted to keep the cache within its bounds.
    pub fn evicted(&self) -> u64 {
        self.entries.evicted
    }
}

/// The last `max` bytes of `text` (at a character boundary).
fn tail(text: &str, max: usize) -> &str {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// The ppid field of /proc/PID/stat ("pid (comm) state ppid ..."); comm may
/// contain spaces and parentheses, so parse after the last ')'.
fn parse_stat_ppid(stat: &str) -> Option<u32> {
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache() -> ProcessCache {
        ProcessCache::with_proc_root(NonZeroUsize::new(4).expect("nonzero"), PathBuf::from("/nonexistent"))
    }

    #[test]
    fn exec_fork_exit_and_lineage() {
        let mut cache = cache();
        cache.on_exec(100, 1, "/usr/bin/bash", b"bash\0-l\0");
        cache.on_fork(100, 101);
        let child = cache.get(101);
        assert_eq!(&*child.exe, "/usr/bin/bash");
        assert_eq!(child.ppid, 100);
        let exec = cache.on_exec(101, 100, "/usr/bin/python3", b"python3\0-c\0pass\0");
        assert_eq!(&*exec.cmdline, "python3 -c pass");
        assert_eq!(&*exec.lineage, "100:/usr/bin/bash,1:");
        let gone = cache.on_exit(101);
        assert_eq!(&*gone.exe, "/usr/bin/python3");
        assert_eq!(cache.get(101).exe.as_ref(), "", "unknown after exit");
    }

    #[test]
    fn stays_bounded() {
        let mut cache = cache();
        for pid in 0..100 {
            cache.on_exec(pid + 2, 1, "/bin/true", b"true\0");
        }
        assert!(cache.len() <= 4);
        assert_eq!(cache.evicted(), 100 - 4 + 1, "each exec past the fourth entry evicted one");
        // Long command lines and paths: bounded in bytes as well.
        let mut cache = ProcessCache::with_proc_root(NonZeroUsize::new(1 << 20).expect("nonzero"), "/x".into());
        let long = format!("/{}", "a".repeat(4000));
        let argv = vec![b'x'; 8000];
        for pid in 2..20_000 {
            cache.on_exec(pid, pid - 1, &long, &argv);
        }
        assert!(cache.entries.bytes() <= CACHE_BYTES && cache.len() < 20_000, "{} entries", cache.len());
        assert!(cache.get(19_999).lineage.len() <= LINEAGE_DEPTH * (LINEAGE_EXE_MAX + 8), "lineage bounded");
    }

    #[test]
    fn stat_parsing_survives_odd_comms() {
        assert_eq!(parse_stat_ppid("42 (a) b) c) S 7 42 42 0"), Some(7));
        assert_eq!(parse_stat_ppid("garbage"), None);
        assert_eq!(cmdline_from_argv(b"a\0b c\0"), "a b c");
    }

    #[test]
    fn reads_this_process_from_proc() {
        let mut cache = ProcessCache::new(NonZeroUsize::new(8).expect("nonzero"));
        let me = cache.get(std::process::id());
        assert!(!me.exe.is_empty());
        assert_eq!(cache.proc_reads, 1);
        cache.get(std::process::id());
        assert_eq!(cache.proc_reads, 1, "second lookup is cached");
    }
}
