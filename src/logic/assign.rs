//! Enable at scale: which ConfigurationProfile's assignment onboards a VM that names none.
//! Deterministic: the highest `priority` wins, then the alphabetically first name.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::core::{Selector, SelectorExt};

use crate::api::Assignment;

/// A profile's assignment, with its name.
pub struct Candidate<'a> {
    pub name: &'a str,
    pub assignment: &'a Assignment,
}

/// The winner and the other matching profiles (in precedence order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice {
    pub winner: String,
    pub others: Vec<String>,
}

/// Whether a label selector matches the labels. An invalid selector (which admission rejects)
/// matches nothing.
pub fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    Selector::try_from(selector.clone()).is_ok_and(|s| s.matches(labels))
}

/// Choose among the profiles whose assignment matches the VM's labels and its namespace's labels.
pub fn choose<'a>(
    candidates: impl IntoIterator<Item = Candidate<'a>>,
    vm_labels: &BTreeMap<String, String>,
    namespace_labels: &BTreeMap<String, String>,
) -> Option<Choice> {
    let mut matching: Vec<(i32, &str)> = candidates
        .into_iter()
        .filter(|c| {
            c.assignment
                .namespace_selector
                .as_ref()
                .is_none_or(|ns| selector_matches(ns, namespace_labels))
                && selector_matches(&c.assignment.selector, vm_labels)
        })
        .map(|c| (c.assignment.priority, c.name))
        .collect();
    matching.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    let mut names = matching.into_iter().map(|(_, n)| n.to_string());
    let winner = names.next()?;
    Some(Choice {
        winner,
        others: names.collect(),
    })
}

/// Assignment is sticky: a VM onboarded by an assignment stays with that profile while the
/// profile's assignment still matches it, whatever priorities say later (no churn when another
/// matching profile appears or priorities change). Returns the choice and, when the VM stays
/// although another profile now ranks first, that profile.
pub fn sticky(mut choice: Choice, current: Option<&str>) -> (Choice, Option<String>) {
    match current {
        Some(cur) if cur != choice.winner && choice.others.iter().any(|o| o == cur) => {
            choice.others.retain(|o| o != cur);
            let outranking = std::mem::replace(&mut choice.winner, cur.to_string());
            choice.others.insert(0, outranking.clone());
            (choice, Some(outranking))
        }
        _ => (choice, None),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_vm_keeps_its_profile_when_another_outranks_it_later() {
        let choice = || Choice {
            winner: "high".into(),
            others: vec!["low".into()],
        };
        let (kept, outranked) = sticky(choice(), Some("low"));
        assert_eq!(kept.winner, "low");
        assert_eq!(outranked.as_deref(), Some("high"));
        assert_eq!(kept.others, vec!["high".to_string()]);
        // Not onboarded yet, or its profile no longer matches: the highest priority wins.
        assert_eq!(sticky(choice(), None).0.winner, "high");
        assert_eq!(sticky(choice(), Some("gone")).0.winner, "high");
        assert_eq!(sticky(choice(), Some("high")).1, None);
    }

    use super::*;
    use proptest::prelude::*;

    fn sel(pairs: &[(&str, &str)]) -> LabelSelector {
        LabelSelector {
            match_labels: Some(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            match_expressions: None,
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn assignment(s: LabelSelector, ns: Option<LabelSelector>, priority: i32) -> Assignment {
        Assignment {
            namespace_selector: ns,
            selector: s,
            priority,
        }
    }

    #[test]
    fn priority_then_name_decides() {
        let a = assignment(sel(&[("env", "prod")]), None, 0);
        let b = assignment(sel(&[]), None, 0);
        let c = assignment(sel(&[("env", "prod")]), None, 10);
        let vm = labels(&[("env", "prod")]);
        let got = choose(
            [
                Candidate {
                    name: "zeta",
                    assignment: &a,
                },
                Candidate {
                    name: "alpha",
                    assignment: &b,
                },
                Candidate {
                    name: "mid",
                    assignment: &c,
                },
            ],
            &vm,
            &BTreeMap::new(),
        );
        assert_eq!(
            got,
            Some(Choice {
                winner: "mid".into(),
                others: vec!["alpha".into(), "zeta".into()]
            })
        );
        let other = labels(&[("env", "dev")]);
        let got = choose(
            [Candidate {
                name: "zeta",
                assignment: &a,
            }],
            &other,
            &BTreeMap::new(),
        );
        assert_eq!(got, None);
    }

    #[test]
    fn namespace_selector_filters() {
        let a = assignment(sel(&[]), Some(sel(&[("team", "web")])), 0);
        let vm = labels(&[]);
        assert!(
            choose(
                [Candidate {
                    name: "a",
                    assignment: &a
                }],
                &vm,
                &labels(&[("team", "db")])
            )
            .is_none()
        );
        assert!(
            choose(
                [Candidate {
                    name: "a",
                    assignment: &a
                }],
                &vm,
                &labels(&[("team", "web")])
            )
            .is_some()
        );
    }

    proptest! {
        #[test]
        fn the_choice_does_not_depend_on_order(prios in proptest::collection::vec(-3i32..3, 1..6), rot in 0usize..6) {
            let names: Vec<String> = (0..prios.len()).map(|i| format!("p{i}")).collect();
            let assignments: Vec<Assignment> = prios.iter().map(|p| assignment(sel(&[]), None, *p)).collect();
            let mk = |order: Vec<usize>| {
                choose(order.into_iter().map(|i| Candidate { name: &names[i], assignment: &assignments[i] }), &BTreeMap::new(), &BTreeMap::new())
            };
            let mut order: Vec<usize> = (0..prios.len()).collect();
            let first = mk(order.clone());
            order.rotate_left(rot % prios.len());
            order.reverse();
            prop_assert_eq!(first, mk(order));
        }
    }
}
