//! `spec.retry`: raising it gives the VMs that failed so far another attempt. The failures move
//! from each wave's `failedMembers` to its `retried`, and a halt is lifted; the VMs are then
//! planned again in new waves (a rolled-back wave's healthy members with them).

use crate::api::{PatchRolloutSpec, PatchRolloutStatus, RingPhase, RolloutPhase};

/// The record to decide from after a retry, and how many failures it forgave; None when there is
/// no new retry to act on (or the rollout is over: Succeeded, RolledBack and Aborted are final).
pub(super) fn forgive(
    spec: &PatchRolloutSpec,
    old: &PatchRolloutStatus,
) -> Option<(PatchRolloutStatus, usize)> {
    if spec.retry <= old.observed_retry
        || spec.rollback
        || spec.abort
        || matches!(
            old.phase,
            Some(RolloutPhase::Succeeded | RolloutPhase::RolledBack | RolloutPhase::Aborted)
        )
    {
        return None;
    }
    let mut status = old.clone();
    let mut forgiven = 0;
    for ring in &mut status.rings {
        for w in &mut ring.waves {
            for m in std::mem::take(&mut w.failed_members) {
                if !w.retried.contains(&m) {
                    w.retried.push(m);
                }
                forgiven += 1;
            }
            w.failed = 0;
        }
        // Attempts start again.
        ring.retries.clear();
        if matches!(ring.phase, Some(RingPhase::Halted | RingPhase::RolledBack)) {
            ring.phase = Some(RingPhase::Progressing);
        }
    }
    if status.phase == Some(RolloutPhase::Halted) {
        status.phase = Some(RolloutPhase::Progressing);
    }
    Some((status, forgiven))
}

/// Whether a VM's attempt in `wave` was forgiven by a retry: it is planned again. A member rolled
/// back with a retried wave is planned again with it.
pub(super) fn retried(old: &PatchRolloutStatus, vm: &str, wave: i32, rolled_back: bool) -> bool {
    old.rings
        .iter()
        .flat_map(|r| r.waves.iter())
        .filter(|w| w.index == wave)
        .any(|w| w.retried.iter().any(|m| m == vm) || (rolled_back && !w.retried.is_empty()))
}
