//! Sets of event kinds, as the `--kind` filter and the kernel's
//! `kinds_enabled` mask use them.

use tyr_proto::EventKind;

/// Event kind numbers are below this (`TYR_KIND_COUNT` in the kernel).
pub const KIND_COUNT: usize = 8;

/// Every kind tyrd produces.
pub const ALL_KINDS: [EventKind; 7] = [
    EventKind::FileRead,
    EventKind::FileWrite,
    EventKind::Exec,
    EventKind::NetConnect,
    EventKind::Tls,
    EventKind::Exit,
    EventKind::Fork,
];

/// A set of event kinds, as a bit per kind number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KindSet(u32);

impl KindSet {
    /// Every kind.
    pub fn all() -> Self {
        ALL_KINDS.into_iter().collect()
    }

    pub fn contains(self, kind: EventKind) -> bool {
        self.0 & (1 << kind as u32) != 0
    }

    /// The kernel's `kinds_enabled` mask.
    pub fn bits(self) -> u32 {
        self.0
    }
}

impl FromIterator<EventKind> for KindSet {
    fn from_iter<I: IntoIterator<Item = EventKind>>(iter: I) -> Self {
        Self(iter.into_iter().fold(0, |bits, kind| bits | 1 << kind as u32))
    }
}

/// Parses a kind as written on the command line: `file_read`, `FILE_READ`,
/// `file-read`.
pub fn parse_kind(text: &str) -> Result<EventKind, String> {
    let name = text.trim().to_ascii_uppercase().replace('-', "_");
    EventKind::from_str_name(&name).filter(|kind| *kind != EventKind::Unspecified).ok_or_else(|| {
        let known: Vec<String> = ALL_KINDS.iter().map(|k| k.as_str_name().to_ascii_lowercase()).collect();
        format!("unknown event kind {text:?} (known: {})", known.join(", "))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_collects() {
        assert_eq!(parse_kind("file_read"), Ok(EventKind::FileRead));
        assert_eq!(parse_kind("NET-CONNECT"), Ok(EventKind::NetConnect));
        assert!(parse_kind("bogus").unwrap_err().contains("known: file_read"));
        assert!(parse_kind("event_kind_unspecified").is_err());
        let set: KindSet = [EventKind::Exec, EventKind::Tls].into_iter().collect();
        assert!(set.contains(EventKind::Exec) && !set.contains(EventKind::FileRead));
        assert_eq!(set.bits(), 1 << 3 | 1 << 5);
        assert_eq!(KindSet::all().bits(), 0b1111_1110);
    }
}
