//! Label selectors over plain maps, with Kubernetes' semantics.

use std::collections::BTreeMap;

/// Labels of an object: key → value.
pub type Labels = BTreeMap<String, String>;

/// A label query: every `match_labels` pair and every expression must hold. An
/// empty selector matches everything, as in Kubernetes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector {
    /// Labels that must be present with exactly these values.
    pub match_labels: Labels,
    /// Further requirements, all of which must hold.
    pub match_expressions: Vec<Requirement>,
}

/// One `matchExpressions` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requirement {
    /// The label key.
    pub key: String,
    /// How the key relates to `values`.
    pub operator: Operator,
    /// The values for `In` and `NotIn`.
    pub values: Vec<String>,
}

/// A `matchExpressions` operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operator {
    /// The label is present with one of the values.
    In,
    /// The label is absent or has none of the values.
    NotIn,
    /// The label is present.
    Exists,
    /// The label is absent.
    DoesNotExist,
}

impl LabelSelector {
    /// A selector of exact label values.
    pub fn labels<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self {
            match_labels: pairs
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            match_expressions: Vec::new(),
        }
    }

    /// Whether `labels` satisfy the selector.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }
}

impl Requirement {
    fn matches(&self, labels: &Labels) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            Operator::In => value.is_some_and(|v| self.values.contains(v)),
            Operator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, operator: Operator, values: &[&str]) -> LabelSelector {
        LabelSelector {
            match_labels: Labels::new(),
            match_expressions: vec![Requirement {
                key: key.into(),
                operator,
                values: values.iter().map(|v| v.to_string()).collect(),
            }],
        }
    }

    #[test]
    fn empty_matches_everything() {
        assert!(LabelSelector::default().matches(&Labels::new()));
    }

    #[test]
    fn match_labels_need_every_pair() {
        let sel = LabelSelector::labels([("team", "a"), ("tier", "web")]);
        assert!(sel.matches(&labels(&[("team", "a"), ("tier", "web"), ("x", "y")])));
        assert!(!sel.matches(&labels(&[("team", "a")])));
        assert!(!sel.matches(&labels(&[("team", "b"), ("tier", "web")])));
    }

    #[test]
    fn operators_follow_kubernetes() {
        let l = labels(&[("env", "prod")]);
        assert!(expr("env", Operator::In, &["prod", "stage"]).matches(&l));
        assert!(!expr("env", Operator::In, &["dev"]).matches(&l));
        assert!(!expr("env", Operator::NotIn, &["prod"]).matches(&l));
        assert!(
            expr("other", Operator::NotIn, &["prod"]).matches(&l),
            "NotIn matches an absent key"
        );
        assert!(expr("env", Operator::Exists, &[]).matches(&l));
        assert!(expr("other", Operator::DoesNotExist, &[]).matches(&l));
        assert!(!expr("env", Operator::DoesNotExist, &[]).matches(&l));
    }
}
