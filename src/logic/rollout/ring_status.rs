//! UpdateRing status: member counts, healthy / unhealthy, and the namespace's current rollout.

use std::sync::Arc;

use kube::ResourceExt;

use jiff::Timestamp;

use crate::api::{PatchRollout, RolloutPhase, UpdateRing, UpdateRingStatus};
use crate::logic::conditions::Conditions;

use super::VmView;

/// The rollout a namespace's rings are working on: the oldest release that has started and not
/// succeeded or rolled back.
pub fn current_rollout(ns: &str, rollouts: &[Arc<PatchRollout>]) -> Option<String> {
    rollouts
        .iter()
        .filter(|r| r.namespace().as_deref() == Some(ns))
        .filter(|r| {
            matches!(
                r.status.as_ref().and_then(|s| s.phase),
                Some(RolloutPhase::Progressing | RolloutPhase::Paused | RolloutPhase::Halted)
            )
        })
        .min_by_key(|r| (r.spec.release_time.0, r.name_any()))
        .map(|r| r.name_any())
}

/// What is wrong with ring `index` of the namespace's sorted rings: (reason, message) each.
pub fn ring_problems(
    rings: &[Arc<UpdateRing>],
    index: usize,
    members: usize,
) -> Vec<(&'static str, String)> {
    let ring = &rings[index];
    let mut problems = Vec::new();
    if members == 0 {
        problems.push((
            "NoMembers",
            match ring.spec.share {
                Some(_) => "the ring's share takes no VM of the namespace (every VM is in a selector ring, or the namespace has none)".to_string(),
                None => "the ring's selector matches no VM of the namespace".to_string(),
            },
        ));
    }
    let same: Vec<String> = rings
        .iter()
        .filter(|r| r.spec.order == ring.spec.order && r.name_any() != ring.name_any())
        .map(|r| r.name_any())
        .collect();
    if !same.is_empty() {
        problems.push((
            "DuplicateOrder",
            format!(
                "order {} is also the order of {}: such rings run one after the other by name; give each ring its own order",
                ring.spec.order,
                same.join(", ")
            ),
        ));
    }
    let shares: i32 = rings.iter().filter_map(|r| r.spec.share).sum();
    if ring.spec.share.is_some() && shares > 100 {
        problems.push((
            "SharesOverflow",
            format!(
                "the share rings of the namespace add up to {shares}%, more than 100%: the rings ordered last get fewer VMs than their share"
            ),
        ));
    }
    problems
}

/// The status of ring `index` of the namespace's sorted rings, from its VMs' views.
pub fn ring_status(
    rings: &[Arc<UpdateRing>],
    index: usize,
    views: &[VmView],
    current: Option<String>,
    now: Timestamp,
) -> UpdateRingStatus {
    let ring = &rings[index];
    let members: Vec<&VmView> = views.iter().filter(|v| v.ring == Some(index)).collect();
    let eligible: Vec<&&VmView> = members.iter().filter(|v| v.ineligible.is_none()).collect();
    let healthy = eligible
        .iter()
        .filter(|v| {
            v.running
                && v.vm
                    .status
                    .as_ref()
                    .and_then(|s| s.guest.as_ref())
                    .and_then(|g| g.healthy)
                    != Some(false)
        })
        .count();
    let old = ring.status.clone().unwrap_or_default();
    let mut c = Conditions::new(&old.conditions, ring.metadata.generation, now);
    let problems = ring_problems(rings, index, members.len());
    match problems.first() {
        None => c.set(
            "Ready",
            true,
            "Valid",
            format!("{} VM(s) in the ring", members.len()),
        ),
        Some((reason, _)) => c.set(
            "Ready",
            false,
            reason,
            problems
                .iter()
                .map(|(_, m)| m.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        ),
    }
    UpdateRingStatus {
        observed_generation: ring.metadata.generation,
        in_no_ring: views.iter().filter(|v| v.ring.is_none()).count() as i32,
        total: members.len() as i32,
        eligible: eligible.len() as i32,
        healthy: healthy as i32,
        unhealthy: (eligible.len() - healthy) as i32,
        current_rollout: current,
        conditions: c.into_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(name: &str, order: i32, share: Option<i32>) -> Arc<UpdateRing> {
        let mut spec = serde_json::json!({ "order": order });
        match share {
            Some(s) => spec["share"] = s.into(),
            None => spec["selector"] = serde_json::json!({ "matchLabels": { "tier": name } }),
        }
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "apiVersion": "automend.io/v1alpha1", "kind": "UpdateRing",
                "metadata": { "name": name, "namespace": "ns" }, "spec": spec,
            }))
            .expect("ring"),
        )
    }

    #[test]
    fn invalid_rings_say_what_is_wrong() {
        let rings = vec![
            ring("test", 0, None),
            ring("first", 1, Some(60)),
            ring("broad", 1, Some(90)),
        ];
        let reasons = |i, members| -> Vec<&str> {
            ring_problems(&rings, i, members)
                .into_iter()
                .map(|p| p.0)
                .collect()
        };
        assert_eq!(reasons(0, 0), vec!["NoMembers"]);
        assert_eq!(reasons(0, 3), Vec::<&str>::new());
        assert_eq!(reasons(1, 5), vec!["DuplicateOrder", "SharesOverflow"]);
        let st = ring_status(
            &rings,
            2,
            &[],
            None,
            "2026-11-23T10:00:00Z".parse().expect("ts"),
        );
        let ready = st
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .expect("Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "NoMembers")
        );
        assert!(ready.message.contains("150%"), "{}", ready.message);
    }
}
