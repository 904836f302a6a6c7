//! The kernel's policy map layouts as tyrd writes them, tied to their one
//! definition, `bpf/include/tyr_records.h`: keys are built from the
//! skeleton's types, and every bound and code the compiler (tyr-common,
//! which cannot see the skeleton) keeps a copy of is checked at compile
//! time — against the skeleton where BTF carries it (struct sizes, field
//! offsets, array lengths), against the header's text where it is only a
//! `#define` (BTF has no macros).

use std::mem::{offset_of, size_of};
use std::net::IpAddr;

use tyr_common::policy::compile::bytes::action_code;
use tyr_common::policy::compile::glob::MAX_GLOB_TOKENS;
use tyr_common::policy::compile::{
    ACTION_EXEC, ACTION_FILE_READ, ACTION_FILE_WRITE, MAX_CANDIDATES, MAX_GLOBS, MAX_LISTS, MAX_PATH_CANDIDATES,
    MAX_PORT_RANGES, PATH_KEY_BYTES, PATH_MATCH_BELOW, PATH_MATCH_EXACT, PATH_MATCH_GLOB, PATH_MATCH_PREFIX,
    UNKNOWN_CLASS, UNREGISTERED_CLASS, VERDICT_ALERT, VERDICT_ALLOW, VERDICT_DENY,
};
use tyr_common::policy::model::Action;

use crate::bpf::records::{
    tyr_glob, tyr_net_candidate, tyr_net_candidates, tyr_net_key4, tyr_net_key6, tyr_path_candidates, tyr_path_key,
};

/// The header, for what it only `#define`s.
const HEADER: &[u8] = include_bytes!("../../../bpf/include/tyr_records.h");

// SAFETY: #[repr(C)] structs of integers and byte arrays generated from
// tyr_records.h; every bit pattern is a valid value.
unsafe impl plain::Plain for tyr_net_key4 {}
// SAFETY: as above.
unsafe impl plain::Plain for tyr_net_key6 {}

/// Bits of a connect key's prefix taken by the class, before the address.
const NET_KEY_CLASS_BITS: u32 = 8 * (offset_of!(tyr_net_key4, addr) - offset_of!(tyr_net_key4, class)) as u32;
/// Bits of a path key's prefix taken by the class and action, before the path.
const PATH_KEY_FIXED_BITS: u32 = 8 * (offset_of!(tyr_path_key, path) - offset_of!(tyr_path_key, class)) as u32;

/// The length of the array a field reaches (`|s| &s.field`), from its type.
const fn array_len<S, T, const N: usize>(_field: fn(&S) -> &[T; N]) -> usize {
    N
}

/// The size of a field (`|s| &s.field`), from its type.
const fn field_size<S, T>(_field: fn(&S) -> &T) -> usize {
    size_of::<T>()
}

/// Whether `text` holds `word` at `at`.
const fn holds(text: &[u8], at: usize, word: &[u8]) -> bool {
    if at + word.len() > text.len() {
        return false;
    }
    let mut i = 0;
    while i < word.len() {
        if text[at + i] != word[i] {
            return false;
        }
        i += 1;
    }
    true
}

const fn is_blank(byte: u8) -> bool {
    byte == b' ' || byte == b'\t'
}

/// The number at `at` (after blanks): decimal or `0x` hex, with an
/// optional `U` suffix; the build fails on anything else.
const fn number(text: &[u8], mut at: usize) -> u64 {
    while at < text.len() && is_blank(text[at]) {
        at += 1;
    }
    let hex = holds(text, at, b"0x") || holds(text, at, b"0X");
    if hex {
        at += 2;
    }
    let (mut value, mut digits) = (0u64, 0);
    while at < text.len() {
        let digit = match text[at] {
            b @ b'0'..=b'9' => (b - b'0') as u64,
            b @ b'a'..=b'f' if hex => (b - b'a' + 10) as u64,
            b @ b'A'..=b'F' if hex => (b - b'A' + 10) as u64,
            _ => break,
        };
        value = value * if hex { 16 } else { 10 } + digit;
        digits += 1;
        at += 1;
    }
    if at < text.len() && (text[at] == b'U' || text[at] == b'u') {
        at += 1;
    }
    let ends = at == text.len() || matches!(text[at], b' ' | b'\t' | b'\n' | b',' | b'/');
    assert!(digits > 0 && ends, "a tyr_records.h constant tyrd checks is not a plain number");
    value
}

/// The value `tyr_records.h` gives `name`, as `#define NAME value` or as an
/// enum member `NAME = value,`; the build fails when it gives none.
const fn defined(name: &str) -> u64 {
    let (text, name) = (HEADER, name.as_bytes());
    let mut line = 0;
    while line < text.len() {
        let mut at = line;
        while at < text.len() && is_blank(text[at]) {
            at += 1;
        }
        if holds(text, at, b"#define") {
            at += b"#define".len();
            while at < text.len() && is_blank(text[at]) {
                at += 1;
            }
        }
        let after = at + name.len();
        if holds(text, at, name) && after < text.len() && is_blank(text[after]) {
            let mut value = after;
            while value < text.len() && is_blank(text[value]) {
                value += 1;
            }
            if value < text.len() && text[value] == b'=' {
                value += 1;
            }
            return number(text, value);
        }
        while line < text.len() && text[line] != b'\n' {
            line += 1;
        }
        line += 1;
    }
    panic!("a constant tyrd checks is missing from tyr_records.h")
}

// Bounds of the candidate lists, keys, arrays: the header's, the
// skeleton's, the compiler's.
const _: () = {
    assert!(defined("TYR_POLICY_CANDIDATES") == MAX_CANDIDATES as u64);
    assert!(array_len(|c: &tyr_net_candidates| &c.list) == MAX_CANDIDATES);
    assert!(defined("TYR_POLICY_PORT_RANGES") == MAX_PORT_RANGES as u64);
    assert!(array_len(|c: &tyr_net_candidate| &c.ports) == MAX_PORT_RANGES);
    assert!(defined("TYR_POLICY_PATH_CANDIDATES") == MAX_PATH_CANDIDATES as u64);
    assert!(array_len(|c: &tyr_path_candidates| &c.list) == MAX_PATH_CANDIDATES);
    assert!(defined("TYR_POLICY_PATH_KEY") == PATH_KEY_BYTES as u64);
    assert!(array_len(|k: &tyr_path_key| &k.path) == PATH_KEY_BYTES);
    assert!(defined("TYR_POLICY_LISTS") == MAX_LISTS as u64);
    assert!(defined("TYR_POLICY_GLOBS") == MAX_GLOBS as u64);
    // The kernel's glob state is one word: a bit per token, plus bit 0
    // (nothing matched yet); one mask per byte value.
    assert!(MAX_GLOB_TOKENS < 8 * field_size(|g: &tyr_glob| &g.accept));
    assert!(field_size(|g: &tyr_glob| &g.star) == field_size(|g: &tyr_glob| &g.accept));
    assert!(array_len(|g: &tyr_glob| &g.chars) == 256);
};

// Keys are whole structs, no padding: the bytes written are the key.
const _: () = {
    assert!(size_of::<tyr_net_key4>() == offset_of!(tyr_net_key4, addr) + 4);
    assert!(size_of::<tyr_net_key6>() == offset_of!(tyr_net_key6, addr) + 16);
    assert!(offset_of!(tyr_net_key6, class) == offset_of!(tyr_net_key4, class));
    assert!(size_of::<tyr_path_key>() == offset_of!(tyr_path_key, path) + PATH_KEY_BYTES);
    // The kernel caps an LPM key's data (after prefixlen) at 256 bytes.
    assert!(size_of::<tyr_path_key>() - offset_of!(tyr_path_key, class) <= 256);
    assert!(NET_KEY_CLASS_BITS == 32 && PATH_KEY_FIXED_BITS == 64);
};

// Codes written into keys and candidate lists.
const _: () = {
    assert!(defined("TYR_CLASS_UNKNOWN") == UNKNOWN_CLASS as u64);
    assert!(defined("TYR_CLASS_UNREGISTERED") == UNREGISTERED_CLASS as u64);
    assert!(defined("TYR_ACTION_FILE_READ") == ACTION_FILE_READ as u64);
    assert!(defined("TYR_ACTION_FILE_WRITE") == ACTION_FILE_WRITE as u64);
    assert!(defined("TYR_ACTION_EXEC") == ACTION_EXEC as u64);
    assert!(action_code(Action::FileRead) == ACTION_FILE_READ);
    assert!(action_code(Action::FileWrite) == ACTION_FILE_WRITE);
    assert!(action_code(Action::Exec) == ACTION_EXEC);
    assert!(defined("TYR_PATH_MATCH_PREFIX") == PATH_MATCH_PREFIX as u64);
    assert!(defined("TYR_PATH_MATCH_EXACT") == PATH_MATCH_EXACT as u64);
    assert!(defined("TYR_PATH_MATCH_GLOB") == PATH_MATCH_GLOB as u64);
    assert!(defined("TYR_PATH_MATCH_BELOW") == PATH_MATCH_BELOW as u64);
    // Verdicts: the compiler's codes, the header's, and tyr.v1.Verdict
    // (events carry the kernel's verdict as it is).
    assert!(defined("TYR_VERDICT_ALLOW") == VERDICT_ALLOW as u64);
    assert!(defined("TYR_VERDICT_DENY") == VERDICT_DENY as u64);
    assert!(defined("TYR_VERDICT_ALERT") == VERDICT_ALERT as u64);
    assert!(tyr_proto::Verdict::Allow as u64 == VERDICT_ALLOW as u64);
    assert!(tyr_proto::Verdict::Deny as u64 == VERDICT_DENY as u64);
    assert!(tyr_proto::Verdict::Alert as u64 == VERDICT_ALERT as u64);
};

/// The connect trie key (`struct tyr_net_key4` or `tyr_net_key6`) of
/// `class` and the range `addr/prefix`.
pub(super) fn net_key(class: u32, prefix: u8, addr: IpAddr) -> Vec<u8> {
    let prefixlen = NET_KEY_CLASS_BITS + u32::from(prefix);
    // The class is big-endian in the key: its high bytes come first in the trie.
    let class = class.to_be();
    match addr {
        IpAddr::V4(addr) => plain_bytes(&tyr_net_key4 { prefixlen, class, addr: addr.octets() }),
        IpAddr::V6(addr) => plain_bytes(&tyr_net_key6 { prefixlen, class, addr: addr.octets() }),
    }
}

/// The path trie key (`struct tyr_path_key`) of `class`, `action` and the
/// literal `bytes` (at most [`PATH_KEY_BYTES`]: the compiler and the wire
/// form refuse longer ones).
pub(super) fn path_key(class: u32, action: Action, bytes: &[u8]) -> Vec<u8> {
    debug_assert!(bytes.len() <= PATH_KEY_BYTES, "path prefix longer than the key");
    let mut key =
        tyr_path_key { class: class.to_be(), action: u32::from(action_code(action)).to_be(), ..Default::default() };
    let mut len = 0;
    for (slot, byte) in key.path.iter_mut().zip(bytes) {
        *slot = *byte;
        len += 1;
    }
    key.prefixlen = PATH_KEY_FIXED_BITS + 8 * len;
    plain_bytes(&key)
}

fn plain_bytes<T: plain::Plain>(value: &T) -> Vec<u8> {
    // SAFETY: T is a Plain repr(C) struct without padding (asserted above for the keys).
    unsafe { plain::as_bytes(value) }.to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The keys as the kernel reads them, spelt out byte by byte.
    #[test]
    fn keys_are_prefix_length_then_big_endian_class_then_data() {
        let key = net_key(0x0102_0304, 24, IpAddr::from([10, 1, 2, 0]));
        let mut want = (32u32 + 24).to_ne_bytes().to_vec();
        want.extend_from_slice(&[1, 2, 3, 4, 10, 1, 2, 0]);
        assert_eq!(key, want);
        assert_eq!(net_key(7, 128, "fd00::1".parse().expect("ip")).len(), 24);

        let key = path_key(UNKNOWN_CLASS, Action::Exec, b"/usr/");
        assert_eq!(key.len(), 12 + PATH_KEY_BYTES);
        assert_eq!(key[..4], (64u32 + 8 * 5).to_ne_bytes());
        assert_eq!(key[4..12], [0xff, 0xff, 0xff, 0xfe, 0, 0, 0, 3]);
        assert_eq!(&key[12..17], b"/usr/");
        assert!(key[17..].iter().all(|b| *b == 0));
    }

    #[test]
    fn header_numbers_read_as_written() {
        assert_eq!(defined("TYR_CLASS_UNKNOWN"), 0xffff_fffe);
        assert_eq!(defined("TYR_POLICY_PATH_KEY"), 248);
        assert_eq!(number(b" 0x1fU,", 0), 0x1f);
        assert_eq!(number(b"= 42\n", 1), 42);
    }
}
