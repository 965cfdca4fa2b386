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

/// A fingerprint of what decides ring membership in a namespace: each ring's name, order,
/// selector and share.
pub fn rings_fingerprint(rings: &[Arc<UpdateRing>]) -> String {
    use sha2::{Digest, Sha256};
    let parts: Vec<serde_json::Value> = rings
        .iter()
        .map(|r| serde_json::json!([r.name_any(), r.spec.order, r.spec.selector, r.spec.share]))
        .collect();
    let digest = Sha256::digest(serde_json::Value::Array(parts).to_string().as_bytes());
    digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

/// When the namespace's rings changed (a ring added, removed, reordered or resized) and this
/// ring's membership changed with them: what to tell people (VMs moved between rings).
pub fn membership_moved(
    ring: &UpdateRing,
    new: &UpdateRingStatus,
) -> Option<crate::logic::events::EventSpec> {
    let old = ring.status.as_ref()?;
    let before = old.rings_hash.as_deref().filter(|h| !h.is_empty())?;
    if Some(before) == new.rings_hash.as_deref() || old.total == new.total {
        return None;
    }
    Some(crate::logic::events::EventSpec::warning(
        "MembersMoved",
        "Assign",
        moved_message(old.total, new.total, new.current_rollout.as_deref()),
    ))
}

fn moved_message(before: i32, now: i32, rollout: Option<&str>) -> String {
    format!(
        "the namespace's rings changed and this ring now has {now} VM(s) (was {before}): VMs moved between rings (share rings take VMs by a stable hash over the rings in order){}",
        rollout.map_or(String::new(), |r| format!(
            "; rollout {r} is in progress and patches them by their new ring"
        ))
    )
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
    let rings_hash = rings_fingerprint(rings);
    let moved = old
        .rings_hash
        .as_deref()
        .is_some_and(|h| !h.is_empty() && h != rings_hash)
        && old.total != members.len() as i32;
    if moved {
        c.set(
            "MembershipChanged",
            true,
            "RingsChanged",
            format!(
                "{} (seen {})",
                moved_message(old.total, members.len() as i32, current.as_deref()),
                now.strftime("%Y-%m-%d %H:%M UTC")
            ),
        );
    } else {
        c.keep("MembershipChanged");
    }
    UpdateRingStatus {
        observed_generation: ring.metadata.generation,
        rings_hash: Some(rings_hash),
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

    #[test]
    fn a_ring_added_later_reports_the_vms_it_moved() {
        let now: Timestamp = "2026-11-23T10:00:00Z".parse().expect("ts");
        let two = vec![ring("first", 1, Some(50)), ring("broad", 2, Some(50))];
        let mut first = (*two[0]).clone();
        first.status = Some(UpdateRingStatus {
            total: 10,
            rings_hash: Some(rings_fingerprint(&two)),
            ..Default::default()
        });
        // Same rings, same members: nothing to say.
        let same = vec![Arc::new(first.clone()), two[1].clone()];
        let st = ring_status(&same, 0, &[], None, now);
        assert!(
            membership_moved(&first, &st).is_none(),
            "same rings: nothing moved"
        );
        // A ring added before it: its count changes with the rings.
        let three = vec![
            ring("fast", 0, Some(30)),
            Arc::new(first.clone()),
            two[1].clone(),
        ];
        let st = ring_status(&three, 1, &[], Some("nov".into()), now);
        let ev = membership_moved(&first, &st).expect("an Event");
        assert_eq!(ev.reason, "MembersMoved");
        assert!(
            ev.note.contains("now has 0 VM(s) (was 10)") && ev.note.contains("rollout nov"),
            "{}",
            ev.note
        );
        let c = st
            .conditions
            .iter()
            .find(|c| c.type_ == "MembershipChanged")
            .expect("condition");
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "RingsChanged")
        );
        // The first status ever written has nothing to compare with.
        let fresh = (*two[0]).clone();
        assert!(membership_moved(&fresh, &st).is_none());
    }
}
