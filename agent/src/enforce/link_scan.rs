//! Hard links that existed before the policy: the kernel keeps a protected
//! file's name on its inode when a link to it is made or it is moved while
//! a policy is in force (`tyr_inode_ids`, bpf/lib/kept_names.h), but a link
//! made earlier is just another name. After each install, a background
//! thread walks the directories the policy's file rules name, finds files
//! those rules cover (for any agent class) that have more than one link,
//! and gives their inodes the protected name, so an open through any other
//! name is decided on it.
//!
//! The walk is bounded (entries, depth) and skips rules too broad to walk
//! (no directory before the first `*`); what it skipped or cut is counted.

use std::collections::BTreeSet;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use libbpf_rs::{MapCore, MapFlags, MapHandle};
use tracing::{info, warn};
use tyr_common::policy::model::{Action, PathPattern, PolicySet, Request, Verdict};

use crate::bpf::file_lsm::types::tyr_inode_identity;

/// Most directory entries one scan visits.
const MAX_ENTRIES: u64 = 200_000;
/// Deepest directory a scan descends into, below its root.
const MAX_DEPTH: usize = 32;
/// Bytes of a kept name (the kernel's `TYR_PATH_MAX`, NUL excluded).
const NAME_MAX: usize = 4095;

/// What scans did, across installs.
#[derive(Debug, Default)]
pub struct LinkScanStats {
    /// Directory entries visited.
    pub visited: AtomicU64,
    /// Files whose inode was given its protected name.
    pub kept: AtomicU64,
    /// Scans cut at the entry bound.
    pub truncated: AtomicU64,
    /// Rule patterns too broad to walk (nothing before their first `*`).
    pub too_broad: AtomicU64,
    /// Inodes the kernel map refused.
    pub failures: AtomicU64,
}

/// The directory a pattern's matches are all under, or None when that is
/// the whole filesystem.
fn walk_root(pattern: &PathPattern) -> Option<PathBuf> {
    let text = match pattern {
        PathPattern::Prefix(p) | PathPattern::Exact(p) => p.as_str(),
        PathPattern::Glob(g) => &g[..g.find('*').unwrap_or(g.len())],
    };
    let dir = &text[..text.rfind('/')?];
    (!dir.is_empty()).then(|| PathBuf::from(dir))
}

/// The directories to walk: one per file rule that can deny or alert, any
/// class, none below another.
fn roots(set: &PolicySet, stats: &LinkScanStats) -> Vec<PathBuf> {
    let mut roots = BTreeSet::new();
    let rules = set.base.rules.iter().chain(set.overlays.values().flatten());
    for rule in rules.filter(|r| matches!(r.action, Action::FileRead | Action::FileWrite)) {
        if rule.verdict == Verdict::Allow {
            continue;
        }
        for pattern in &rule.paths {
            match walk_root(pattern) {
                Some(root) => {
                    roots.insert(root);
                }
                None => {
                    stats.too_broad.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
    let mut kept: Vec<PathBuf> = Vec::new();
    for root in roots {
        if !kept.iter().any(|k| root.starts_with(k)) {
            kept.push(root);
        }
    }
    kept
}

/// Whether a rule of any class denies or alerts on reading or writing `path`.
fn covered(set: &PolicySet, path: &str) -> bool {
    let classes = ["unknown", "unregistered"].into_iter().chain(set.overlays.keys().map(String::as_str));
    let requests = [Request::File { write: false, path }, Request::File { write: true, path }];
    classes.into_iter().any(|class| {
        requests.iter().any(|request| matches!(set.decide(class, request).verdict, Verdict::Deny | Verdict::Alert))
    })
}

/// Gives `path`'s inode its protected name (an existing one stays).
fn keep(map: &MapHandle, path: &Path, stats: &LinkScanStats) {
    let Some(text) = path.to_str().filter(|t| t.len() <= NAME_MAX) else { return };
    let Ok(file) = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_PATH | libc::O_NOFOLLOW).open(path)
    else {
        return;
    };
    let mut value = tyr_inode_identity { len: text.len() as u32, ..Default::default() };
    for (slot, byte) in value.path.iter_mut().zip(text.bytes()) {
        *slot = byte as _;
    }
    // SAFETY: tyr_inode_identity is a Plain repr(C) struct of integers and bytes.
    let bytes = unsafe { plain::as_bytes(&value) };
    match map.update(&file.as_raw_fd().to_ne_bytes(), bytes, MapFlags::NO_EXIST) {
        Ok(()) => {
            stats.kept.fetch_add(1, Ordering::Relaxed);
        }
        Err(error) if error.kind() == libbpf_rs::ErrorKind::AlreadyExists => {}
        Err(_) => {
            stats.failures.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Walks `root`, handing every covered file with more than one link to
/// `found`. Returns false when the entry bound cut it.
fn walk(set: &PolicySet, root: &Path, visited: &mut u64, found: &mut impl FnMut(&Path)) -> bool {
    let mut stack = vec![(root.to_path_buf(), 0usize)];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            *visited += 1;
            if *visited > MAX_ENTRIES {
                return false;
            }
            let path = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
            if meta.is_dir() && depth < MAX_DEPTH {
                stack.push((path, depth + 1));
            } else if meta.is_file() && meta.nlink() > 1 && path.to_str().is_some_and(|p| covered(set, p)) {
                found(&path);
            }
        }
    }
    true
}

/// Scans for the policy `set` on a background thread.
pub fn spawn(map: MapHandle, set: Arc<PolicySet>, stats: Arc<LinkScanStats>) {
    let started = std::thread::Builder::new().name("tyrd-link-scan".to_owned()).spawn(move || {
        let mut visited = 0;
        for root in roots(&set, &stats) {
            if !walk(&set, &root, &mut visited, &mut |path| keep(&map, path, &stats)) {
                stats.truncated.fetch_add(1, Ordering::Relaxed);
                warn!(root = %root.display(), "hard-link scan cut at {MAX_ENTRIES} entries");
                break;
            }
        }
        stats.visited.fetch_add(visited, Ordering::Relaxed);
        info!(visited, kept = stats.kept.load(Ordering::Relaxed), "hard-link scan done");
    });
    if let Err(error) = started {
        warn!(%error, "hard-link scan did not start: links made before the policy are not covered");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(yaml: &str) -> PolicySet {
        tyr_common::policy::parse_policy("t.yaml", yaml).expect("policy")
    }

    const POLICY: &str = "name: t\ndefault_verdict: allow\nrules:\n  - name: r\n    action: file_read\n    paths: [\"/srv/keys/\"]\n    verdict: deny\noverlays:\n  claude-code:\n    - name: c\n      action: file_write\n      paths: [\"/home/*/.ssh/*\", \"/*.pem\"]\n      verdict: alert\n";

    #[test]
    fn roots_are_the_directories_before_the_first_star() {
        let stats = LinkScanStats::default();
        let roots = roots(&set(POLICY), &stats);
        assert_eq!(roots, [PathBuf::from("/home"), PathBuf::from("/srv/keys")]);
        assert_eq!(stats.too_broad.load(Ordering::Relaxed), 1, "`/*.pem` cannot be walked");
    }

    #[test]
    fn coverage_looks_at_every_class() {
        let set = set(POLICY);
        assert!(covered(&set, "/srv/keys/a"), "the base, for everyone");
        assert!(covered(&set, "/home/u/.ssh/id"), "claude-code's overlay");
        assert!(!covered(&set, "/home/u/notes"));
    }

    #[test]
    fn walks_find_only_multiply_linked_covered_files() {
        let dir = std::env::temp_dir().join(format!("tyr-link-scan-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let keys = dir.join("keys");
        std::fs::create_dir_all(keys.join("deep")).expect("dirs");
        std::fs::write(keys.join("deep/one"), b"1").expect("one");
        std::fs::write(keys.join("linked"), b"2").expect("linked");
        std::fs::hard_link(keys.join("linked"), dir.join("elsewhere")).expect("link");
        let yaml = format!(
            "name: t\ndefault_verdict: allow\nrules:\n  - name: r\n    action: file_read\n    paths: [\"{}/\"]\n    verdict: deny\n",
            keys.display()
        );
        let set = set(&yaml);
        let mut found = Vec::new();
        let mut visited = 0;
        assert!(walk(&set, &keys, &mut visited, &mut |path| found.push(path.to_path_buf())));
        assert_eq!(found, [keys.join("linked")]);
        assert_eq!(visited, 3, "deep/, deep/one, linked");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
