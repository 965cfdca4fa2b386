//! UpdateRing status: member counts, healthy / unhealthy, and the namespace's current rollout.

use std::sync::Arc;

use kube::ResourceExt;

use crate::api::{PatchRollout, RolloutPhase, UpdateRing, UpdateRingStatus};

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

/// The status of ring `index` of the namespace, from its VMs' views.
pub fn ring_status(
    ring: &UpdateRing,
    index: usize,
    views: &[VmView],
    current: Option<String>,
) -> UpdateRingStatus {
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
    UpdateRingStatus {
        observed_generation: ring.metadata.generation,
        total: members.len() as i32,
        eligible: eligible.len() as i32,
        healthy: healthy as i32,
        unhealthy: (eligible.len() - healthy) as i32,
        current_rollout: current,
        conditions: Vec::new(),
    }
}
