//! Glob matching, one automaton for the kernel and for userspace: a
//! pattern becomes a bit-parallel automaton (shift-and), one state bit per
//! token, so matching a path costs a handful of operations per byte with no
//! backtracking — linear in the path whatever the pattern — and a bounded
//! loop, which a BPF program can run. `*` matches any run of bytes, `/`
//! included (the model's and Cedar's `like` semantics); `**` means the same.
//! The parser accepts no other wildcard (`?`, `[...]`, `{...}` are refused).
//!
//! State bit `i` set means "the first `i` tokens matched so far". For each
//! input byte `c`: `next = ((state << 1) & chars[c]) | (state & star)`,
//! then `next |= (next & before_star) << 1` lets a star match nothing.
//! Consecutive stars are merged when the automaton is built, so one such
//! step is enough.
//!
//! [`GlobAutomaton`] is the one-word form the kernel runs
//! (bpf/lib/path_policy.h), at most [`MAX_GLOB_TOKENS`] tokens. [`Glob`] is
//! the same automaton over as many 64-bit words as a pattern needs, for the
//! policy model ([`crate::policy::model::PathPattern::matches`]), which
//! must decide every glob the parser accepts; with one word it performs
//! exactly the kernel's operations, and [`Glob::kernel_form`] is the
//! kernel's automaton. Before running it, [`matches`] rejects paths that
//! cannot match by the glob's literal prefix, suffix and longest literal
//! segment (necessary conditions, so the answer never changes).

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

/// The tokens of a pattern, consecutive stars merged: `None` is a star,
/// `Some(b)` the literal byte `b`.
fn tokens(pattern: &[u8]) -> impl Iterator<Item = Option<u8>> + '_ {
    pattern
        .iter()
        .enumerate()
        .filter(|&(i, &b)| b != b'*' || i == 0 || pattern[i - 1] != b'*')
        .map(|(_, &b)| (b != b'*').then_some(b))
}

impl GlobAutomaton {
    /// The automaton of `pattern`; None when it has more than
    /// [`MAX_GLOB_TOKENS`] tokens once consecutive stars are merged.
    pub fn new(pattern: &str) -> Option<Self> {
        let mut automaton = Self { chars: [0; 256], star: 0, before_star: 0, accept: 1 };
        for (index, token) in tokens(pattern.as_bytes()).enumerate() {
            if index >= MAX_GLOB_TOKENS {
                return None;
            }
            let bit = 1u64 << (index + 1);
            match token {
                None => {
                    automaton.star |= bit;
                    automaton.before_star |= bit >> 1;
                }
                Some(byte) => automaton.chars[usize::from(byte)] |= bit,
            }
            automaton.accept = bit;
        }
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
        // `step` written out: this loop runs for every byte of a path.
        let (chars, star, before_star, accept) = (&self.chars, self.star, self.before_star, self.accept);
        let mut state = self.start();
        for &byte in input {
            // A final star, once reached, stays matched whatever follows.
            if state & accept & star != 0 {
                return true;
            }
            let next = ((state << 1) & chars[usize::from(byte)]) | (state & star);
            state = next | ((next & before_star) << 1);
            if state == 0 {
                return false;
            }
        }
        state & accept != 0
    }
}

/// The automaton of a glob of any length: [`GlobAutomaton`]'s tables over
/// `words` 64-bit words. Built per match (it is small: one mask per
/// distinct byte of the pattern), so nothing is cached per policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    /// State words (bits: tokens + 1).
    words: usize,
    /// Byte -> row of `masks` (row 0: the byte is no token, all zero).
    row_of: [u8; 256],
    /// `words` words per row: bit `i` set when token `i` is that row's byte.
    masks: Vec<u64>,
    /// Bit `i` set: token `i` is a star.
    star: Vec<u64>,
    /// Bit `i - 1` set: token `i` is a star.
    before_star: Vec<u64>,
    /// The last token's bit, as (word, mask).
    accept: (usize, u64),
    /// Whether the last token is a star (once accepted, always accepted).
    ends_with_star: bool,
}

/// Sets bit `bit` of a multi-word bit set.
fn set(bits: &mut [u64], bit: usize) {
    bits[bit / 64] |= 1u64 << (bit % 64);
}

impl Glob {
    /// The automaton of `pattern` (its literal prefix included, if any).
    pub fn new(pattern: &str) -> Self {
        let count = tokens(pattern.as_bytes()).count();
        let words = (count + 1).div_ceil(64);
        let mut glob = Self {
            words,
            row_of: [0; 256],
            masks: vec![0; words],
            star: vec![0; words],
            before_star: vec![0; words],
            accept: (count / 64, 1u64 << (count % 64)),
            ends_with_star: false,
        };
        for (index, token) in tokens(pattern.as_bytes()).enumerate() {
            let bit = index + 1;
            glob.ends_with_star = token.is_none();
            match token {
                None => {
                    set(&mut glob.star, bit);
                    set(&mut glob.before_star, bit - 1);
                }
                Some(byte) => {
                    let mut row = usize::from(glob.row_of[usize::from(byte)]);
                    if row == 0 {
                        row = glob.masks.len() / words;
                        // `*` is never a literal: at most 255 rows besides row 0, so a row fits a u8.
                        glob.row_of[usize::from(byte)] = u8::try_from(row).unwrap_or(u8::MAX);
                        glob.masks.resize(glob.masks.len() + words, 0);
                    }
                    set(&mut glob.masks[row * words..(row + 1) * words], bit);
                }
            }
        }
        glob
    }

    /// The kernel's one-word automaton of the same pattern, from these
    /// tables; None when the pattern has more than [`MAX_GLOB_TOKENS`]
    /// tokens. Equal to [`GlobAutomaton::new`]'s (tested).
    pub fn kernel_form(&self) -> Option<GlobAutomaton> {
        if self.words != 1 {
            return None;
        }
        let mut chars = [0u64; 256];
        for (byte, &row) in self.row_of.iter().enumerate() {
            chars[byte] = self.masks[usize::from(row)];
        }
        Some(GlobAutomaton { chars, star: self.star[0], before_star: self.before_star[0], accept: self.accept.1 })
    }

    /// `state` after `byte`, into `next` (both `words` long): the kernel's
    /// step, with each shift carrying into the next word.
    fn step(&self, state: &[u64], byte: u8, next: &mut [u64]) {
        let row = usize::from(self.row_of[usize::from(byte)]) * self.words;
        let chars = &self.masks[row..row + self.words];
        let mut carry = 0;
        for (((next, &state), &chars), &star) in next.iter_mut().zip(state).zip(chars).zip(&self.star) {
            *next = (((state << 1) | carry) & chars) | (state & star);
            carry = state >> 63;
        }
        self.close(next);
    }

    /// Lets each star reached match nothing: `state |= (state & before_star) << 1`.
    fn close(&self, state: &mut [u64]) {
        let mut carry = 0;
        for (word, &before_star) in state.iter_mut().zip(&self.before_star) {
            let reach = *word & before_star;
            *word |= (reach << 1) | carry;
            carry = reach >> 63;
        }
    }

    /// Whether the whole of `input` matches.
    pub fn matches(&self, input: &[u8]) -> bool {
        let mut state = vec![0u64; self.words];
        let mut next = vec![0u64; self.words];
        state[0] = 1;
        self.close(&mut state);
        let (accept_word, accept_bit) = self.accept;
        for &byte in input {
            if self.ends_with_star && state[accept_word] & accept_bit != 0 {
                return true;
            }
            self.step(&state, byte, &mut next);
            std::mem::swap(&mut state, &mut next);
            if state.iter().all(|&w| w == 0) {
                return false;
            }
        }
        state[accept_word] & accept_bit != 0
    }
}

/// Whether `path` matches `glob` (any length), in time linear in the path.
pub fn matches(glob: &str, path: &str) -> bool {
    let (literal, rest) = split_literal(glob);
    let Some(tail) = path.strip_prefix(literal) else { return false };
    if rest.is_empty() {
        return tail.is_empty();
    }
    // Literals every match contains: the text after the last star ends the
    // path, and each literal segment appears somewhere in it.
    let suffix = &rest[rest.rfind('*').map_or(0, |i| i + 1)..];
    if !tail.ends_with(suffix) {
        return false;
    }
    let longest = rest.split('*').max_by_key(|s| s.len()).unwrap_or("");
    if !tail.contains(longest) {
        return false;
    }
    // The kernel's one-word automaton when the glob fits it (no allocation).
    match GlobAutomaton::new(rest) {
        Some(automaton) => automaton.matches(tail.as_bytes()),
        None => Glob::new(rest).matches(tail.as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::model::PathPattern;
    use proptest::prelude::*;

    /// The reference semantics, by dynamic programming over (glob, path)
    /// prefixes: what every automaton must agree with.
    fn reference(glob: &[u8], path: &[u8]) -> bool {
        let mut row = vec![false; path.len() + 1];
        row[0] = true;
        for &g in glob {
            let mut next = vec![false; path.len() + 1];
            for j in 0..=path.len() {
                next[j] =
                    if g == b'*' { row[j] || (j > 0 && next[j - 1]) } else { j > 0 && row[j - 1] && path[j - 1] == g };
            }
            row = next;
        }
        row[path.len()]
    }

    /// The kernel's way: the literal prefix (the trie), then the one-word
    /// automaton over the rest.
    fn kernel(glob: &str, path: &str) -> Option<bool> {
        let (literal, rest) = split_literal(glob);
        let automaton = GlobAutomaton::new(rest)?;
        Some(path.starts_with(literal) && automaton.matches(&path.as_bytes()[literal.len()..]))
    }

    fn agrees(glob: &str, path: &str) -> bool {
        let model = PathPattern::Glob(glob.to_owned()).matches(path);
        assert_eq!(kernel(glob, path), Some(model), "{glob} vs {path}");
        assert_eq!(reference(glob.as_bytes(), path.as_bytes()), model, "{glob} vs {path}");
        model
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
        assert!(agrees("/**/secrets/**", "/srv/app/secrets/k"));
        assert!(!agrees("/**/secrets/**", "/srv/app/secret/k"));
    }

    #[test]
    fn long_globs_are_refused_by_the_kernel_form_only() {
        assert!(GlobAutomaton::new(&"a".repeat(MAX_GLOB_TOKENS)).is_some());
        assert!(GlobAutomaton::new(&"a".repeat(MAX_GLOB_TOKENS + 1)).is_none());
        assert!(GlobAutomaton::new(&format!("{}***", "a".repeat(MAX_GLOB_TOKENS - 1))).is_some());
        // Across word boundaries, stars at the edges included.
        for tokens in [62, 63, 64, 65, 127, 128, 129, 300] {
            let body: String = (0..tokens).map(|i| if i % 5 == 4 { '*' } else { 'a' }).collect();
            let glob = format!("/{body}");
            for path_len in [tokens / 2, tokens, tokens + 3, 2 * tokens] {
                let path = format!("/{}", "a".repeat(path_len));
                assert_eq!(matches(&glob, &path), reference(glob.as_bytes(), path.as_bytes()), "{glob} vs {path}");
            }
        }
    }

    #[test]
    fn the_kernel_form_is_the_one_word_automaton() {
        let glob = Glob::new("*.pem*x**y");
        let kernel = glob.kernel_form().expect("one word");
        let mut state = kernel.start();
        let mut wide = vec![1u64];
        glob.close(&mut wide);
        assert_eq!(wide[0], state);
        for &byte in b"a.pemQxzzy" {
            state = kernel.step(state, byte);
            let mut next = vec![0u64];
            glob.step(&wide, byte, &mut next);
            wide = next;
            assert_eq!(wide[0], state, "after {}", byte as char);
        }
        assert_eq!(kernel.accept, glob.accept.1);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Model, wide automaton and (where it fits) the kernel's automaton
        /// agree with the reference on random globs, long ones included.
        #[test]
        fn automata_agree_with_the_reference(
            glob in "/[ab/*]{0,140}",
            path in "/[ab/]{0,160}",
        ) {
            let expected = reference(glob.as_bytes(), path.as_bytes());
            prop_assert_eq!(PathPattern::Glob(glob.clone()).matches(&path), expected);
            prop_assert_eq!(Glob::new(&glob).matches(path.as_bytes()), expected);
            prop_assert_eq!(Glob::new(&glob).kernel_form(), GlobAutomaton::new(&glob));
            if let Some(kernel) = kernel(&glob, &path) {
                prop_assert_eq!(kernel, expected);
            }
        }

        /// Paths built to match (each star replaced by random text) do.
        #[test]
        fn filled_in_globs_match(glob in "/[ab/*]{0,100}", fills in proptest::collection::vec("[ab/]{0,4}", 100)) {
            let mut fills = fills.into_iter();
            let path: String =
                glob.chars().map(|c| if c == '*' { fills.next().unwrap_or_default() } else { c.to_string() }).collect();
            prop_assert!(PathPattern::Glob(glob.clone()).matches(&path), "{} vs {}", glob, path);
        }
    }
}
