//! Kubernetes label selectors (`matchLabels` and `matchExpressions`), as
//! MetalLB's objects use them to pick pools, namespaces and Services.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

/// A label selector checked once, so matching cannot fail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

impl Selector {
    /// The selector, or what is wrong with it (naming the part at fault).
    /// An empty selector matches everything, as in Kubernetes.
    pub fn new(selector: &LabelSelector) -> Result<Self, String> {
        let mut requirements = Vec::new();
        for (key, value) in selector.match_labels.iter().flatten() {
            requirements.push(Requirement::In(key.clone(), vec![value.clone()]));
        }
        for (index, expression) in selector.match_expressions.iter().flatten().enumerate() {
            let requirement = Requirement::of(expression)
                .map_err(|reason| format!("matchExpressions[{index}]: {reason}"))?;
            requirements.push(requirement);
        }
        Ok(Self { requirements })
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements
            .iter()
            .all(|requirement| match requirement {
                Requirement::In(key, values) => labels.get(key).is_some_and(|v| values.contains(v)),
                Requirement::NotIn(key, values) => {
                    labels.get(key).is_none_or(|v| !values.contains(v))
                }
                Requirement::Exists(key) => labels.contains_key(key),
                Requirement::DoesNotExist(key) => !labels.contains_key(key),
            })
    }
}

impl Requirement {
    fn of(expression: &LabelSelectorRequirement) -> Result<Self, String> {
        let key = expression.key.clone();
        let values = expression.values.clone().unwrap_or_default();
        let operator = expression.operator.as_str();
        match (operator, values.is_empty()) {
            ("In", false) => Ok(Self::In(key, values)),
            ("NotIn", false) => Ok(Self::NotIn(key, values)),
            ("Exists", true) => Ok(Self::Exists(key)),
            ("DoesNotExist", true) => Ok(Self::DoesNotExist(key)),
            ("In" | "NotIn", true) => Err(format!("operator {operator} needs values")),
            ("Exists" | "DoesNotExist", false) => {
                Err(format!("operator {operator} takes no values"))
            }
            _ => Err(format!(
                "operator {operator:?} is not In, NotIn, Exists or DoesNotExist"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn selector(yaml: &str) -> Result<Selector, String> {
        Selector::new(&serde_yaml::from_str(yaml).unwrap())
    }

    #[test]
    fn labels_and_expressions_all_have_to_match() {
        let s = selector(
            "matchLabels: {tier: premium}\n\
             matchExpressions:\n\
             - {key: zone, operator: In, values: [a, b]}\n\
             - {key: legacy, operator: DoesNotExist}\n\
             - {key: team, operator: NotIn, values: [red]}\n\
             - {key: owner, operator: Exists}",
        )
        .unwrap();
        let good = [("tier", "premium"), ("zone", "b"), ("owner", "x")];
        assert!(s.matches(&labels(&good)));
        assert!(s.matches(&labels(&[good[0], good[1], good[2], ("team", "blue")])));
        for bad in [
            vec![("tier", "basic"), ("zone", "b"), ("owner", "x")],
            vec![("tier", "premium"), ("zone", "c"), ("owner", "x")],
            vec![("tier", "premium"), ("zone", "a")],
            vec![good[0], good[1], good[2], ("legacy", "")],
            vec![good[0], good[1], good[2], ("team", "red")],
        ] {
            assert!(!s.matches(&labels(&bad)), "{bad:?}");
        }
        assert!(selector("{}").unwrap().matches(&labels(&[])));
    }

    #[test]
    fn bad_expressions_name_the_problem() {
        for (yaml, reason) in [
            (
                "matchExpressions: [{key: a, operator: In}]",
                "matchExpressions[0]: operator In needs values",
            ),
            (
                "matchExpressions: [{key: a, operator: Exists, values: [x]}]",
                "matchExpressions[0]: operator Exists takes no values",
            ),
            (
                "matchExpressions: [{key: a, operator: Exists}, {key: a, operator: Equals, values: [x]}]",
                "matchExpressions[1]: operator \"Equals\" is not In, NotIn, Exists or DoesNotExist",
            ),
        ] {
            assert_eq!(selector(yaml).unwrap_err(), reason);
        }
    }
}
