//! Glob matching as the kernel does it: a pattern becomes a bit-parallel
//! automaton (shift-and), one state bit per token, so matching a path costs
//! a handful of operations per byte with no backtracking and a bounded
//! loop — what a BPF program can run. `*` matches any run of bytes, `/`
//! included (the model's and Cedar's `like` semantics).
//!
//! State bit `i` set means "the first `i` tokens matched so far". For each
//! input byte `c`: `next = ((state << 1) & chars[c]) | (state & star)`,
//! then `next |= (next & before_star) << 1` lets a star match nothing.
//! Consecutive stars are merged when the automaton is built, so one such
//! step is enough.

/// Most tokens (literal bytes and stars) after a glob's literal prefix.
pub const MAX_GLOB_TOKENS: usize = 63;

/// The automaton of one glob, as tyrd writes it to the kernel (`struct tyr_glob`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobAutomaton {
    /// Bit `i` set in `chars[c]`: token `i` is the literal byte `c`.
    pub chars: [u64; 256],
    /// Bit `i` set: token `i` is a star (stays matched on any byte).
    pub star: u64,
    /// Bit `i - 1` set: token `i` is a star (may match nothing).
    pub before_star: u64,
    /// The bit of the last token: the whole pattern matched.
    pub accept: u64,
}

/// Splits a glob into its literal prefix (looked up in the prefix trie)
/// and the rest, which starts at its first `*`.
pub fn split_literal(glob: &str) -> (&str, &str) {
    glob.split_at(glob.find('*').unwrap_or(glob.len()))
}

impl GlobAutomaton {
    /// The automaton of `pattern`; None when it has more than
    /// [`MAX_GLOB_TOKENS`] tokens once consecutive stars are merged.
    pub fn new(pattern: &str) -> Option<Self> {
        let mut automaton = Self { chars: [0; 256], star: 0, before_star: 0, accept: 1 };
        let mut tokens = 0usize;
        let mut previous_star = false;
        for &byte in pattern.as_bytes() {
            if byte == b'*' && previous_star {
                continue;
            }
            tokens += 1;
            if tokens > MAX_GLOB_TOKENS {
                return None;
            }
            let bit = 1u64 << tokens;
            if byte == b'*' {
                automaton.star |= bit;
                automaton.before_star |= bit >> 1;
            } else {
                automaton.chars[usize::from(byte)] |= bit;
            }
            previous_star = byte == b'*';
        }
        automaton.accept = 1u64 << tokens;
        Some(automaton)
    }

    fn close(&self, state: u64) -> u64 {
        state | ((state & self.before_star) << 1)
    }

    /// The state before any byte.
    pub fn start(&self) -> u64 {
        self.close(1)
    }

    /// The state after `byte`.
    pub fn step(&self, state: u64, byte: u8) -> u64 {
        self.close(((state << 1) & self.chars[usize::from(byte)]) | (state & self.star))
    }

    /// Whether the whole of `input` matches.
    pub fn matches(&self, input: &[u8]) -> bool {
        let mut state = self.start();
        for &byte in input {
            state = self.step(state, byte);
            if state == 0 {
                return false;
            }
        }
        state & self.accept != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::model::PathPattern;

    fn agrees(glob: &str, path: &str) -> bool {
        let (literal, rest) = split_literal(glob);
        let kernel = path.starts_with(literal)
            && GlobAutomaton::new(rest).expect("small glob").matches(&path.as_bytes()[literal.len()..]);
        assert_eq!(kernel, PathPattern::Glob(glob.to_owned()).matches(path), "{glob} vs {path}");
        kernel
    }

    #[test]
    fn matches_like_the_model() {
        assert!(agrees("/home/*/.ssh/*", "/home/dev/.ssh/id_rsa"));
        assert!(!agrees("/home/*/.ssh/*", "/home/dev/.ssh"));
        assert!(agrees("/*.pem", "/etc/ssl/a.pem"));
        assert!(!agrees("/*.pem", "/etc/ssl/a.pem.bak"));
        assert!(agrees("/a**b", "/ab"));
        assert!(agrees("/a*b*c", "/aXbYbZc"));
        assert!(!agrees("/a*b*c", "/aXbYc/d"));
        assert!(agrees("/x/*", "/x/"));
        assert!(!agrees("/x/*", "/x"));
        assert!(agrees("/ab*ab*", "/abab"));
    }

    #[test]
    fn long_globs_are_refused() {
        assert!(GlobAutomaton::new(&"a".repeat(MAX_GLOB_TOKENS)).is_some());
        assert!(GlobAutomaton::new(&"a".repeat(MAX_GLOB_TOKENS + 1)).is_none());
        assert!(GlobAutomaton::new(&format!("{}***", "a".repeat(MAX_GLOB_TOKENS - 1))).is_some());
    }
}
