//! What a process shows of itself for classification: its arguments,
//! kept bounded, its executable identity, and which file events are worth
//! adding as behavioural evidence.

use std::sync::LazyLock;

use tyr_common::agents::{Fingerprint, KNOWN_AGENTS, Matcher};

/// Arguments kept in a fingerprint, their length, and their total length.
const ARGV_KEPT: usize = 32;
const ARG_MAX_LEN: usize = 512;
const ARGV_MAX_BYTES: usize = 4096;
/// Behavioural evidence kept per process, and the longest path kept.
pub(super) const EVIDENCE_KEPT: usize = 16;
pub(super) const EVIDENCE_MAX_LEN: usize = 512;
/// Interpreters whose entry script is part of an agent's identity.
const INTERPRETERS: [&str; 5] = ["node", "python", "bun", "deno", "ruby"];

/// `ReadPathContains` texts of the known-agent table.
static MODULE_PATHS: LazyLock<Vec<&'static str>> = LazyLock::new(|| {
    KNOWN_AGENTS
        .iter()
        .flat_map(|a| a.signals)
        .filter_map(|s| match s.matcher {
            Matcher::ReadPathContains(text) => Some(text),
            _ => None,
        })
        .collect()
});

/// `WroteFileNamed` names of the known-agent table.
static WRITTEN_NAMES: LazyLock<Vec<&'static str>> = LazyLock::new(|| {
    KNOWN_AGENTS
        .iter()
        .flat_map(|a| a.signals)
        .filter_map(|s| match s.matcher {
            Matcher::WroteFileNamed(name) => Some(name),
            _ => None,
        })
        .collect()
});

/// Is `path`'s file name an interpreter (`python3.11`, `node`, ...)?
fn is_interpreter(exe: &str) -> bool {
    let name = exe.rsplit('/').next().unwrap_or(exe);
    INTERPRETERS.iter().any(|i| name.starts_with(i))
}

/// The executable identity of a discovered agent: its exe, and for
/// interpreters the script they run.
pub(super) fn identity(fp: &Fingerprint) -> String {
    if !is_interpreter(&fp.exe) {
        return fp.exe.clone();
    }
    let script = fp.argv.iter().skip(1).find(|a| !a.starts_with('-') && (a.contains('/') || a.contains('.')));
    match script {
        Some(script) => format!("{} {script}", fp.exe),
        None => fp.exe.clone(),
    }
}

pub(super) fn split_argv(argv: &[u8]) -> Vec<String> {
    let mut total = 0;
    argv.split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .take(ARGV_KEPT)
        .map(|a| &a[..a.len().min(ARG_MAX_LEN)])
        .take_while(|a| {
            total += a.len();
            total <= ARGV_MAX_BYTES
        })
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// The largest index at most `max` that is a character boundary of `text`.
pub(super) fn floor_char_boundary(text: &str, max: usize) -> usize {
    let mut end = max.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    end
}

/// Whether a file event is evidence for classification: a known agent's
/// module read, or a file a known agent writes. Runs for every file event:
/// a cheap gate first, the table after.
pub(super) fn is_evidence(path: &str, write: bool) -> bool {
    if write {
        let name = path.rsplit('/').next().unwrap_or(path);
        name.starts_with('.') && WRITTEN_NAMES.contains(&name)
    } else {
        path.contains("/site-packages/") && MODULE_PATHS.iter().any(|m| path.contains(m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_gate_covers_the_table() {
        assert!(!MODULE_PATHS.is_empty() && MODULE_PATHS.iter().all(|m| m.contains("/site-packages/")));
        assert!(!WRITTEN_NAMES.is_empty() && WRITTEN_NAMES.iter().all(|n| n.starts_with('.')));
        assert!(is_evidence("/v/lib/python3/site-packages/langgraph/graph.py", false));
        assert!(is_evidence("/src/.aider.chat.history.md", true) && !is_evidence("/src/.bashrc", true));
    }
}
