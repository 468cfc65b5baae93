//! MetalLB's Community objects: names for community values, which
//! BGPAdvertisements may write instead of the values.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use super::{invalid, objects::Community as CommunityObject};
use crate::{announce::community::Community, k8s::translate::Skipped};

/// Community values by alias name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Aliases(BTreeMap<String, Community>);

impl Aliases {
    /// The aliases of every Community object; an object with an alias
    /// without a name or with a bad value is skipped whole.
    pub fn of(objects: &[Arc<CommunityObject>]) -> (Self, Vec<Skipped>) {
        let mut aliases = BTreeMap::new();
        let mut skipped = Vec::new();
        for object in objects {
            let parsed: Result<Vec<(String, Community)>, String> = object
                .spec
                .communities
                .iter()
                .enumerate()
                .map(|(index, alias)| {
                    if alias.name.is_empty() {
                        return Err(format!("spec.communities[{index}].name: empty"));
                    }
                    let value = alias
                        .value
                        .parse()
                        .map_err(|e| format!("spec.communities[{index}].value: {e}"))?;
                    Ok((alias.name.clone(), value))
                })
                .collect();
            match parsed {
                Ok(parsed) => aliases.extend(parsed),
                Err(reason) => skipped.push(invalid("Community", &object.metadata, reason)),
            }
        }
        (Self(aliases), skipped)
    }

    /// The values of an advertisement's `communities` (values or alias
    /// names), or the first that is neither, as `spec.communities[i]`.
    pub fn resolve(&self, communities: &[String]) -> Result<BTreeSet<Community>, String> {
        communities
            .iter()
            .enumerate()
            .map(|(index, text)| {
                self.0
                    .get(text)
                    .copied()
                    .or_else(|| text.parse().ok())
                    .ok_or_else(|| {
                        format!(
                            "spec.communities[{index}]: {text:?} is neither a community value \
                             (65535:65282, large:1:2:3) nor the name of one in a Community object"
                        )
                    })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
