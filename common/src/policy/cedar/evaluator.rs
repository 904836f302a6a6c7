//! Evaluates a policy's Cedar text as the policy means it: first match
//! wins. Cedar answers with the policies a request satisfies (its
//! "reasons"); of those, the one with the lowest `@order` decides.
//!
//! Cedar only names the satisfied policies of the winning effect (any
//! satisfied `forbid` hides the satisfied `permit`s), so the `permit`s and
//! `forbid`s are evaluated as two sets. Both are also split per action at
//! load, so a request evaluates only the policies of its action.

use std::collections::HashMap;
use std::net::IpAddr;
use std::str::FromStr;

use cedar_policy::{
    ActionConstraint, Authorizer, Context, Effect, Entities, EntityId, EntityTypeName, EntityUid, PolicyId,
    PolicySet as CedarPolicySet, Request as CedarRequest, RestrictedExpression, Schema,
};

use super::{CEDAR_SCHEMA, ORDER, action_uid, cedar_ip};
use crate::policy::model::{Action, Request, Verdict};

/// Why Cedar text could not be loaded or a request evaluated.
#[derive(Debug, thiserror::Error)]
pub enum CedarError {
    #[error("Cedar schema: {0}")]
    Schema(String),
    #[error("Cedar policies: {0}")]
    Policies(String),
    #[error("Cedar request: {0}")]
    Request(String),
    #[error("Cedar evaluation: {0}")]
    Evaluation(String),
}

/// A decision as Cedar reached it: the verdict and the rule's name (None:
/// the default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CedarVerdict {
    pub verdict: Verdict,
    pub rule: Option<String>,
}

const ACTIONS: usize = Action::ALL.len();

/// What a satisfied policy decides, read from its annotations at load.
#[derive(Debug)]
struct Rank {
    /// Lower wins. Texts written before `@order` existed put first-match
    /// order into `unless` clauses, so at most one of their policies is
    /// ever satisfied: they rank 0, and a tie goes to `forbid` as in Cedar.
    order: u64,
    effect: Effect,
    /// `@verdict` (a `permit` needs it: allow or alert).
    verdict: Option<Verdict>,
    /// `@rule`, None when empty (the default).
    rule: Option<String>,
}

/// The policies one action's requests are evaluated against.
#[derive(Debug, Default)]
struct Slice {
    forbids: CedarPolicySet,
    permits: CedarPolicySet,
}

/// Evaluates requests against a policy's Cedar text.
#[derive(Debug)]
pub struct CedarEvaluator {
    policies: CedarPolicySet,
    /// Per action, in [`Action::ALL`] order.
    slices: [Slice; ACTIONS],
    actions: [EntityUid; ACTIONS],
    ranks: HashMap<PolicyId, Rank>,
    schema: Schema,
    authorizer: Authorizer,
    entities: Entities,
    host: EntityUid,
    agent_type: EntityTypeName,
}

fn uid(text: &str) -> Result<EntityUid, CedarError> {
    EntityUid::from_str(text).map_err(|e| CedarError::Request(e.to_string()))
}

fn position(action: Action) -> usize {
    Action::ALL.iter().position(|a| *a == action).unwrap_or_default()
}

fn rank(policy: &cedar_policy::Policy) -> Result<Rank, CedarError> {
    // One pass over the annotations: looking each up by name parses the name.
    let (mut order, mut verdict, mut rule) = (None, None, None);
    for (key, value) in policy.annotations() {
        match key {
            ORDER => order = Some(value),
            "verdict" => verdict = Verdict::parse(value),
            "rule" => rule = Some(value).filter(|name| !name.is_empty()).map(str::to_owned),
            _ => {}
        }
    }
    let order = match order {
        None => 0,
        Some(text) => text
            .parse()
            .map_err(|_| CedarError::Policies(format!("policy {}: @{ORDER}({text:?}) is not a number", policy.id())))?,
    };
    Ok(Rank { order, effect: policy.effect(), verdict, rule })
}

impl CedarEvaluator {
    /// Loads Cedar text produced by [`super::to_cedar`].
    pub fn new(cedar_text: &str) -> Result<Self, CedarError> {
        let (schema, _warnings) =
            Schema::from_cedarschema_str(CEDAR_SCHEMA).map_err(|e| CedarError::Schema(e.to_string()))?;
        let policies = CedarPolicySet::from_str(cedar_text).map_err(|e| CedarError::Policies(e.to_string()))?;
        let actions = Action::ALL.iter().map(|action| uid(&action_uid(*action))).collect::<Result<Vec<_>, _>>()?;
        let actions: [EntityUid; ACTIONS] =
            actions.try_into().map_err(|_| CedarError::Request("one identifier per action".to_owned()))?;

        let mut slices: [Slice; ACTIONS] = Default::default();
        let mut ranks = HashMap::new();
        for policy in policies.policies() {
            ranks.insert(policy.id().clone(), rank(policy)?);
            // A policy goes to the actions it can apply to; one naming an
            // action of no request is never satisfied, so it goes nowhere.
            let constraint = policy.action_constraint();
            let applies = |action: &EntityUid| match &constraint {
                ActionConstraint::Eq(only) => only == action,
                ActionConstraint::Any | ActionConstraint::In(_) => true,
            };
            for (slice, _) in slices.iter_mut().zip(&actions).filter(|(_, action)| applies(action)) {
                let set = if policy.effect() == Effect::Forbid { &mut slice.forbids } else { &mut slice.permits };
                set.add(policy.clone()).map_err(|e| CedarError::Policies(e.to_string()))?;
            }
        }
        Ok(Self {
            policies,
            slices,
            actions,
            ranks,
            schema,
            authorizer: Authorizer::new(),
            entities: Entities::empty(),
            host: uid(r#"Tyr::Host::"local""#)?,
            agent_type: EntityTypeName::from_str("Tyr::AgentType").map_err(|e| CedarError::Request(e.to_string()))?,
        })
    }

    /// The schema the text is checked against.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// The loaded policies.
    pub fn policies(&self) -> &CedarPolicySet {
        &self.policies
    }

    /// The decision for `request` made by a process of `agent_type`.
    pub fn decide(&self, agent_type: &str, request: &Request<'_>) -> Result<CedarVerdict, CedarError> {
        let action = position(request.action());
        let cedar_request = CedarRequest::new(
            EntityUid::from_type_name_and_id(self.agent_type.clone(), EntityId::new(agent_type)),
            self.actions[action].clone(),
            self.host.clone(),
            context_of(request)?,
            Some(&self.schema),
        )
        .map_err(|e| CedarError::Request(e.to_string()))?;
        let slice = &self.slices[action];
        // Forbids first, and only a strictly lower order replaces: a tie goes to forbid.
        let mut first: Option<&Rank> = None;
        for set in [&slice.forbids, &slice.permits] {
            if set.is_empty() {
                continue;
            }
            let response = self.authorizer.is_authorized(&cedar_request, set, &self.entities);
            if let Some(error) = response.diagnostics().errors().next() {
                return Err(CedarError::Evaluation(error.to_string()));
            }
            for id in response.diagnostics().reason() {
                let rank = self
                    .ranks
                    .get(id)
                    .ok_or_else(|| CedarError::Evaluation(format!("policy {id} satisfied but not loaded")))?;
                if first.is_none_or(|best| rank.order < best.order) {
                    first = Some(rank);
                }
            }
        }
        let Some(rank) = first else {
            // Nothing applies and no default permits: Cedar's own deny.
            return Ok(CedarVerdict { verdict: Verdict::Deny, rule: None });
        };
        let verdict = match rank.effect {
            Effect::Forbid => Verdict::Deny,
            Effect::Permit => rank
                .verdict
                .ok_or_else(|| CedarError::Evaluation("an allowing policy without a verdict annotation".to_owned()))?,
        };
        Ok(CedarVerdict { verdict, rule: rank.rule.clone() })
    }
}

/// The request's context, in the schema's shape.
fn context_of(request: &Request<'_>) -> Result<Context, CedarError> {
    let network = |addr: IpAddr, port: u16| {
        let mut pairs = vec![
            ("ip".to_owned(), RestrictedExpression::new_ip(cedar_ip(addr))),
            ("port".to_owned(), RestrictedExpression::new_long(i64::from(port))),
        ];
        let v4 = match addr {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(v6) => v6.to_ipv4_mapped(),
        };
        if let Some(v4) = v4 {
            pairs.push(("ip4".to_owned(), RestrictedExpression::new_ip(v4.to_string())));
        }
        pairs
    };
    let pairs = match *request {
        Request::File { path, .. } | Request::Exec { path } => {
            vec![("path".to_owned(), RestrictedExpression::new_string(path.to_owned()))]
        }
        Request::Connect { addr, port } => network(addr, port),
        Request::Tls { server_name, addr, port } => {
            let mut pairs = network(addr, port);
            let name = server_name.trim_end_matches('.').to_ascii_lowercase();
            pairs.push(("server_name".to_owned(), RestrictedExpression::new_string(name)));
            pairs
        }
    };
    Context::from_pairs(pairs).map_err(|e| CedarError::Request(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A text as `to_cedar` wrote it before `@order`: first match in
    /// `unless` clauses. Versions stored then are still evaluated.
    const UNLESS_ENCODED: &str = r#"
@rule("allow-a")
@rule_index("1")
@verdict("allow")
permit (principal, action == Tyr::Action::"file_read", resource)
when { context.path == "/a" };
@rule("deny-rest")
@rule_index("2")
@verdict("deny")
forbid (principal, action == Tyr::Action::"file_read", resource)
when { context.path like "/*" }
unless { context.path == "/a" };
@rule("")
@verdict("alert")
permit (principal, action == Tyr::Action::"file_read", resource)
unless { context.path == "/a" || context.path like "/*" };
"#;

    fn read(evaluator: &CedarEvaluator, path: &str) -> (Verdict, Option<String>) {
        let decided = evaluator.decide("cursor", &Request::File { write: false, path }).expect("decides");
        (decided.verdict, decided.rule)
    }

    #[test]
    fn texts_without_order_decide_as_their_unless_clauses_say() {
        let evaluator = CedarEvaluator::new(UNLESS_ENCODED).expect("loads");
        assert_eq!(read(&evaluator, "/a"), (Verdict::Allow, Some("allow-a".to_owned())));
        assert_eq!(read(&evaluator, "/b"), (Verdict::Deny, Some("deny-rest".to_owned())));
        assert_eq!(read(&evaluator, "b"), (Verdict::Alert, None));
    }

    #[test]
    fn the_lowest_order_wins_whatever_the_effect() {
        let text = r#"
@rule("late-deny") @order("2") @verdict("deny")
forbid (principal, action == Tyr::Action::"file_read", resource) when { context.path like "/*" };
@rule("early-alert") @order("1") @verdict("alert")
permit (principal, action == Tyr::Action::"file_read", resource) when { context.path == "/a" };
@rule("") @order("3") @verdict("allow")
permit (principal, action == Tyr::Action::"file_read", resource);
"#;
        let evaluator = CedarEvaluator::new(text).expect("loads");
        assert_eq!(read(&evaluator, "/a"), (Verdict::Alert, Some("early-alert".to_owned())));
        assert_eq!(read(&evaluator, "/b"), (Verdict::Deny, Some("late-deny".to_owned())));
        assert_eq!(read(&evaluator, "b"), (Verdict::Allow, None));
        // Other actions have no policy: Cedar's own deny.
        let exec = evaluator.decide("cursor", &Request::Exec { path: "/a" }).expect("decides");
        assert_eq!((exec.verdict, exec.rule), (Verdict::Deny, None));
    }

    #[test]
    fn a_malformed_order_is_refused_at_load() {
        let text = r#"@order("first") permit (principal, action, resource);"#;
        assert!(matches!(CedarEvaluator::new(text), Err(CedarError::Policies(_))));
    }
}
