//! A summary of what a manifest directory defines, for `manifest list`.

use serde::Serialize;

use crate::load::{Linearized, Manifest};
use crate::model::Provider;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Listing {
    pub agents: Vec<AgentSummary>,
    pub bottles: Vec<BottleSummary>,
    pub skills: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AgentSummary {
    pub name: String,
    pub provider: Option<Provider>,
    pub description: Option<String>,
    /// The agent's `bottle:` list; empty for a portable agent.
    pub bottles: Vec<String>,
    /// The merged lineage of those bottles, root first.
    pub lineage: Vec<String>,
    /// Whether the agent's own file checked clean.
    pub valid: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BottleSummary {
    pub name: String,
    pub description: Option<String>,
    pub extends: Vec<String>,
    pub lineage: Vec<String>,
    pub valid: bool,
}

impl Manifest {
    pub fn listing(&self) -> Listing {
        let lineage = |names: &[String]| {
            let mut lin = Linearized::default();
            for n in names {
                self.linearize(n, &mut Vec::new(), &mut lin);
            }
            lin.order
        };
        let agents = self
            .agents
            .iter()
            .map(|(name, a)| {
                let bottles: Vec<String> =
                    a.head.iter().flat_map(|h| h.bottles.iter().map(|r| r.name.clone())).collect();
                AgentSummary {
                    name: name.clone(),
                    provider: a.head.as_ref().and_then(|h| h.provider),
                    description: a.head.as_ref().and_then(|h| h.description.clone()),
                    lineage: lineage(&bottles),
                    bottles,
                    valid: a.head.is_some() && a.diags.iter().all(|d| d.severity != crate::Severity::Error),
                }
            })
            .collect();
        let bottles = self
            .bottles
            .iter()
            .map(|(name, b)| BottleSummary {
                name: name.clone(),
                description: b.body.as_ref().and_then(|b| b.description.clone()),
                extends: b.body.iter().flat_map(|b| b.extends.iter().map(|r| r.name.clone())).collect(),
                lineage: lineage(std::slice::from_ref(name)),
                valid: b.body.is_some() && b.diags.iter().all(|d| d.severity != crate::Severity::Error),
            })
            .collect();
        Listing { agents, bottles, skills: self.skills.keys().cloned().collect() }
    }
}
