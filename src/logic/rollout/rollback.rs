//! Rollback: by hand (`spec.rollback`, every VM this rollout installed on) or on failure
//! (`rollbackOnFailure`, the halted ring's failed waves). The guests return their packages to the
//! versions recorded before the install.

use std::collections::BTreeSet;

use crate::api::{InstallationDirective, RingPhase, RingProgress};

use crate::logic::events::EventSpec;

use super::{Acc, Run, VmFacts, VmWrite};

/// Whether a VM installed something of this rollout, or is being rolled back already.
fn patched_here(name: &str, vm: &VmFacts<'_>) -> bool {
    vm.directive
        .is_some_and(|d| d.rollout == name && d.rollback)
        || vm
            .result
            .is_some_and(|r| r.rollout == name && !r.rollback && !r.installed.is_empty())
}

/// The VMs to roll back, by index.
pub(super) fn set(run: &Run<'_>, rings: &[RingProgress], halted_ring: Option<usize>) -> Vec<usize> {
    let input = run.input;
    let vms = input.vms;
    if input.spec.rollback {
        return (0..vms.len())
            .filter(|i| patched_here(input.name, &vms[*i]))
            .collect();
    }
    let Some(hr) = halted_ring.filter(|_| input.spec.rollback_on_failure) else {
        return Vec::new();
    };
    let failed_waves: BTreeSet<i32> = rings[hr]
        .waves
        .iter()
        .filter(|w| w.failed > 0)
        .map(|w| w.index)
        .collect();
    (0..vms.len())
        .filter(|i| {
            let vm = &vms[*i];
            vm.ring == Some(hr)
                && vm
                    .directive
                    .is_some_and(|d| d.rollout == input.name && failed_waves.contains(&d.wave))
                && patched_here(input.name, vm)
        })
        .collect()
}

/// Write rollback directives to the VMs of `set` not rolling back yet; when every one of them has
/// reported its rollback, the halted ring is RolledBack.
pub(super) fn start(
    run: &Run<'_>,
    set: &[usize],
    rings: &mut [RingProgress],
    halted_ring: Option<usize>,
    acc: &mut Acc,
) {
    let name = run.input.name;
    let mut rolled_back = 0;
    for i in set {
        let vm = &run.input.vms[*i];
        let (Some(d), Some(r)) = (vm.directive, vm.result) else {
            continue;
        };
        if d.rollout == name && d.rollback {
            // Finished (a rollback that reboots is InProgress until the machine is back).
            if r.rollout == name
                && r.rollback
                && r.wave == d.wave
                && r.status != crate::api::OperationStatus::InProgress
            {
                rolled_back += 1;
            }
            continue;
        }
        acc.vm_events.push((
            *i,
            EventSpec::warning(
                "PatchRollback",
                "Rollback",
                format!(
                    "rollout {name}: returning to the package versions recorded before its install{}",
                    if run.input.spec.rollback {
                        " (the rollout is rolled back)"
                    } else {
                        " (its wave failed the health gate)"
                    }
                ),
            ),
        ));
        acc.writes.push(VmWrite {
            vm: *i,
            directive: InstallationDirective {
                rollout: name.to_string(),
                wave: r.wave,
                packages: Vec::new(),
                window_end: None,
                latest_start: None,
                reboot_setting: vm.reboot_setting,
                hotpatch_only: vm.hotpatch,
                rollback: true,
                hooks: vm.hooks_in(run.input.rings),
                // The versions recorded before the install come from the machine's own
                // repositories (a release's snapshot holds the versions it replaced them with).
                snapshot: None,
            },
            summary: None,
        });
    }
    if let Some(hr) = halted_ring
        && !set.is_empty()
        && rolled_back == set.len()
    {
        rings[hr].phase = Some(RingPhase::RolledBack);
    }
}
