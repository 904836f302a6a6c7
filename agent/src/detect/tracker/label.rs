//! The agent fields of events: the type a process is governed as, its
//! discovered agent, and the evidence behind them as metadata.

use std::sync::Arc;

use tyr_common::agents::{Classification, UNKNOWN};

use super::{Governed, UNREGISTERED_AGENT};
use crate::detect::overrides::Governing;

/// The agent fields an event gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentLabel {
    pub agent_type: &'static str,
    /// Empty for processes of no discovered agent.
    pub discovered_agent_id: String,
    /// `agent_evidence`, `agent_confidence`, ... metadata entries.
    pub metadata: Vec<(&'static str, Arc<str>)>,
}

/// What a label is built from: one process's detection state.
pub(super) struct Subject<'a> {
    pub governed: Governed,
    pub own: Option<&'a Classification>,
    pub inherited: bool,
    /// A confident classification its governance did not follow.
    pub claimed: Option<&'static str>,
}

/// The label of `subject`; `unknown` carries the unregistered-agents mode.
pub(super) fn build(governing: Governing<'_>, subject: &Subject<'_>, unknown: &AgentLabel) -> AgentLabel {
    let mut metadata = Vec::new();
    if let Some(own) = subject.own {
        metadata.push(("agent_evidence", Arc::from(own.evidence_text())));
        metadata.push(("agent_confidence", Arc::from(own.confidence.to_string())));
        if !own.is_confident() {
            metadata.push(("agent_candidate", Arc::from(own.agent_type)));
        }
    }
    if let Some(claimed) = subject.claimed {
        // Recorded as evidence only: governance stays (see `governance`).
        metadata.push(("agent_claimed_type", Arc::from(claimed)));
    }
    if subject.inherited && subject.governed != Governed::None {
        metadata.push(("agent_inherited", Arc::from("true")));
    }
    let unregistered = |mut metadata: Vec<(&'static str, Arc<str>)>| {
        metadata.extend(unknown.metadata.iter().cloned());
        metadata.push((UNREGISTERED_AGENT, Arc::from("true")));
        metadata
    };
    match subject.governed {
        Governed::Agent(index) => {
            let (Some(agent), Some(agent_type)) = (governing.registry.by_index(index), governing.effective_type(index))
            else {
                metadata.extend(unknown.metadata.iter().cloned());
                return AgentLabel { agent_type: UNKNOWN, discovered_agent_id: String::new(), metadata };
            };
            if governing.overridden(index) {
                metadata.push(("agent_detected_type", Arc::from(agent.agent_type.as_str())));
            } else if agent.agent_type == UNKNOWN {
                metadata = unregistered(metadata);
            }
            AgentLabel { agent_type, discovered_agent_id: agent.id.to_string(), metadata }
        }
        Governed::Type(agent_type) => {
            metadata.push(("agent_registry_full", Arc::from("true")));
            AgentLabel { agent_type, discovered_agent_id: String::new(), metadata }
        }
        Governed::Unregistered => {
            AgentLabel { agent_type: UNKNOWN, discovered_agent_id: String::new(), metadata: unregistered(metadata) }
        }
        Governed::None => {
            metadata.extend(unknown.metadata.iter().cloned());
            AgentLabel { agent_type: UNKNOWN, discovered_agent_id: String::new(), metadata }
        }
    }
}
