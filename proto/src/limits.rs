//! The wire's limits on one event and one batch: tyr-server refuses a batch
//! that exceeds them, so tyrd fits every event into them before it spools
//! it. One definition, so the two can never disagree (a batch the server
//! refuses would otherwise be replayed from tyrd's spool forever).

use crate::Event;

/// Most events in one batch.
pub const MAX_EVENTS_PER_BATCH: usize = 10_000;
/// Longest `resource`, in bytes.
pub const MAX_RESOURCE_BYTES: usize = 4096;
/// Longest `cmdline`, in bytes.
pub const MAX_CMDLINE_BYTES: usize = 4096;
/// Longest `process_exe`, in bytes.
pub const MAX_PROCESS_EXE_BYTES: usize = 4096;
/// Longest `agent_type`, in bytes.
pub const MAX_AGENT_TYPE_BYTES: usize = 256;
/// Most metadata entries on one event.
pub const MAX_METADATA_ENTRIES: usize = 64;
/// Longest metadata key, in bytes.
pub const MAX_METADATA_KEY_BYTES: usize = 64;
/// Longest metadata value, in bytes.
pub const MAX_METADATA_VALUE_BYTES: usize = 4096;
/// Metadata key marking an event some of whose fields were cut to fit.
pub const TRUNCATED_KEY: &str = "truncated";

/// Cuts `text` to at most `max` bytes on a character boundary; true when it cut.
fn fit(text: &mut String, max: usize) -> bool {
    if text.len() <= max {
        return false;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    true
}

/// Fits `event` into the limits: long strings are cut, metadata entries
/// with over-long keys and entries past the limit are dropped, and the
/// event is marked `truncated`. Returns whether anything was cut.
pub fn fit_event(event: &mut Event) -> bool {
    let mut cut = fit(&mut event.resource, MAX_RESOURCE_BYTES);
    cut |= fit(&mut event.cmdline, MAX_CMDLINE_BYTES);
    cut |= fit(&mut event.process_exe, MAX_PROCESS_EXE_BYTES);
    cut |= fit(&mut event.agent_type, MAX_AGENT_TYPE_BYTES);
    let entries = event.metadata.len();
    event.metadata.retain(|key, _| key.len() <= MAX_METADATA_KEY_BYTES);
    cut |= event.metadata.len() != entries;
    for value in event.metadata.values_mut() {
        cut |= fit(value, MAX_METADATA_VALUE_BYTES);
    }
    // Room for the marker itself.
    if event.metadata.len() > MAX_METADATA_ENTRIES - 1 {
        let mut keys: Vec<String> = event.metadata.keys().cloned().collect();
        keys.sort();
        for key in keys.into_iter().skip(MAX_METADATA_ENTRIES - 1) {
            if key != TRUNCATED_KEY {
                event.metadata.remove(&key);
                cut = true;
            }
        }
    }
    if cut {
        event.metadata.insert(TRUNCATED_KEY.to_owned(), "true".to_owned());
    }
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_on_character_boundaries_and_marks_the_event() {
        let mut event = Event {
            resource: "é".repeat(MAX_RESOURCE_BYTES), // two bytes each
            cmdline: "ok".to_owned(),
            ..Event::default()
        };
        for i in 0..100 {
            event.metadata.insert(format!("k{i:03}"), "v".repeat(MAX_METADATA_VALUE_BYTES + 1));
        }
        event.metadata.insert("k".repeat(MAX_METADATA_KEY_BYTES + 1), "x".to_owned());
        assert!(fit_event(&mut event));
        assert!(event.resource.len() <= MAX_RESOURCE_BYTES && event.resource.chars().all(|c| c == 'é'));
        assert_eq!(event.cmdline, "ok");
        assert_eq!(event.metadata.len(), MAX_METADATA_ENTRIES);
        assert!(event.metadata.keys().all(|k| k.len() <= MAX_METADATA_KEY_BYTES));
        assert!(event.metadata.values().all(|v| v.len() <= MAX_METADATA_VALUE_BYTES));
        assert_eq!(event.metadata.get(TRUNCATED_KEY).map(String::as_str), Some("true"));

        let mut small = Event { resource: "/etc/hosts".to_owned(), ..Event::default() };
        assert!(!fit_event(&mut small));
        assert!(small.metadata.is_empty());
    }
}
