//! The operators' overrides of discovered agents: the type each listed
//! agent is governed as, whatever tyrd detected.
//!
//! Only tyr-server sends overrides (operators reclassify or promote an
//! agent there): nothing a process does on the host can put itself in the
//! set. The set is keyed by discovered_agent_id, so an override for an
//! agent tyrd has not discovered (yet) waits until it appears.

use std::collections::BTreeMap;

use tyr_common::agents::{KNOWN_AGENTS, UNKNOWN};
use tyr_common::policy::compile::{UNKNOWN_CLASS, UNREGISTERED_CLASS, class_of};
use uuid::Uuid;

use super::registry::Registry;

/// The override set tyrd governs by.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OverrideSet {
    /// discovered_agent_id -> the type it is governed as.
    types: BTreeMap<Uuid, String>,
}

/// The known-agent table's own string for `agent_type` (or `unknown`).
pub fn known_type(agent_type: &str) -> Option<&'static str> {
    if agent_type == UNKNOWN {
        return Some(UNKNOWN);
    }
    KNOWN_AGENTS.iter().find(|a| a.agent_type == agent_type).map(|a| a.agent_type)
}

impl OverrideSet {
    /// The set a server message carries; entries with a malformed id or a
    /// type tyrd does not know are left out and counted (second value).
    pub fn from_proto(message: &tyr_proto::AgentOverrides) -> (Self, usize) {
        let mut types = BTreeMap::new();
        let mut skipped = 0;
        for entry in &message.overrides {
            match (Uuid::parse_str(&entry.discovered_agent_id), known_type(&entry.agent_type)) {
                (Ok(id), Some(agent_type)) => {
                    types.insert(id, agent_type.to_owned());
                }
                _ => skipped += 1,
            }
        }
        (Self { types }, skipped)
    }

    /// The type agent `id` is governed as, when overridden.
    pub fn get(&self, id: &Uuid) -> Option<&'static str> {
        self.types.get(id).and_then(|t| known_type(t))
    }

    /// Entries in the set.
    pub fn len(&self) -> usize {
        self.types.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.types.is_empty()
    }

    /// Adds or replaces one entry (tests, tools).
    pub fn insert(&mut self, id: Uuid, agent_type: &'static str) {
        self.types.insert(id, agent_type.to_owned());
    }
}

/// How each discovered agent is governed: the registry, the operators'
/// overrides and the unregistered-agents restriction, read together.
#[derive(Debug, Clone, Copy)]
pub struct Governing<'a> {
    /// The discovered agents.
    pub registry: &'a Registry,
    /// The operators' overrides.
    pub overrides: &'a OverrideSet,
    /// Whether unregistered agents are restricted (quarantine or deny).
    pub restricted: bool,
}

impl Governing<'_> {
    /// The type agent `index` is governed as (None: no such agent): the
    /// override, else the detected type.
    pub fn effective_type(&self, index: u32) -> Option<&'static str> {
        let agent = self.registry.by_index(index)?;
        Some(self.overrides.get(&agent.id).unwrap_or_else(|| known_type(&agent.agent_type).unwrap_or(UNKNOWN)))
    }

    /// Whether operators overrode agent `index`'s type (an unregistered
    /// agent overridden is promoted: no longer restricted).
    pub fn overridden(&self, index: u32) -> bool {
        self.registry.by_index(index).is_some_and(|a| self.overrides.get(&a.id).is_some())
    }

    /// The kernel class of agent `index`'s processes (0: none).
    pub fn class(&self, index: u32) -> u32 {
        let Some(agent) = self.registry.by_index(index) else { return 0 };
        match self.overrides.get(&agent.id) {
            Some(agent_type) => class_of(agent_type).unwrap_or(0),
            None if agent.agent_type == UNKNOWN && self.restricted => UNREGISTERED_CLASS,
            None if agent.agent_type == UNKNOWN => UNKNOWN_CLASS,
            None => class_of(&agent.agent_type).unwrap_or(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tyr_proto::{AgentOverride, AgentOverrides};

    #[test]
    fn only_known_types_and_ids_are_taken() {
        let id = Uuid::new_v4();
        let message = AgentOverrides {
            overrides: vec![
                AgentOverride { discovered_agent_id: id.to_string(), agent_type: "aider".into() },
                AgentOverride { discovered_agent_id: "not-a-uuid".into(), agent_type: "aider".into() },
                AgentOverride { discovered_agent_id: Uuid::new_v4().to_string(), agent_type: "made-up".into() },
            ],
        };
        let (set, skipped) = OverrideSet::from_proto(&message);
        assert_eq!((set.len(), skipped), (1, 2));
        assert_eq!(set.get(&id), Some("aider"));
        assert_eq!(set.get(&Uuid::new_v4()), None);
        let json = serde_json::to_string(&set).expect("json");
        assert_eq!(serde_json::from_str::<OverrideSet>(&json).expect("parse"), set);
    }

    #[test]
    fn overrides_decide_types_and_classes() {
        let mut registry = Registry::in_memory();
        let cursor = registry.discover("cursor", "/opt/cursor", "/opt/cursor", 70, "");
        let unregistered = registry.discover(UNKNOWN, "/tmp/x", "/tmp/x", 15, "");
        let mut overrides = OverrideSet::default();
        let quarantine = Governing { registry: &registry, overrides: &overrides, restricted: true };
        assert_eq!(quarantine.class(cursor), class_of("cursor").expect("class"));
        assert_eq!(quarantine.class(unregistered), UNREGISTERED_CLASS);
        assert_eq!(Governing { restricted: false, ..quarantine }.class(unregistered), UNKNOWN_CLASS);
        assert_eq!(quarantine.class(99), 0);
        let unregistered_id = registry.by_index(unregistered).expect("agent").id;
        overrides.insert(unregistered_id, "aider");
        overrides.insert(registry.by_index(cursor).expect("agent").id, UNKNOWN);
        let promoted = Governing { registry: &registry, overrides: &overrides, restricted: true };
        assert_eq!(promoted.class(unregistered), class_of("aider").expect("class"));
        assert_eq!(promoted.effective_type(unregistered), Some("aider"));
        assert!(promoted.overridden(unregistered));
        assert_eq!(promoted.class(cursor), UNKNOWN_CLASS);
        assert_eq!(promoted.effective_type(cursor), Some(UNKNOWN));
    }
}
