//! Waves: the directives that start one, and the record of every wave of a ring (rebuilt from the
//! VMs when a status write was lost).

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::{InstallationDirective, PatchRolloutStatus, RingProgress, Wave};

use crate::logic::events::EventSpec;

use super::manifest::{install_snapshot, packages_for};
use super::state::VmState;
use super::summary::installation_summary;
use super::{Acc, Input, Run, VmWrite};

/// The number of the next wave: after every wave this rollout wrote to a VM or recorded.
pub(super) fn next_index(input: &Input<'_>, old: &PatchRolloutStatus) -> i32 {
    input
        .vms
        .iter()
        .filter_map(|v| {
            v.directive
                .filter(|d| d.rollout == input.name)
                .map(|d| d.wave)
        })
        .chain(
            old.rings
                .iter()
                .flat_map(|r| r.waves.iter().map(|w| w.index)),
        )
        .max()
        .unwrap_or(0)
        + 1
}

/// The installation directive that starts VM `i` in the next wave (None: nothing to install
/// without a manifest or an assessment).
pub(super) fn directive(run: &Run<'_>, i: usize, acc: &Acc) -> Option<VmWrite> {
    let input = run.input;
    let vm = &input.vms[i];
    let manifest = acc.manifest.as_ref()?;
    let packages = packages_for(manifest, vm, input.rings, run.release)?;
    let window_end = vm
        .window
        .as_ref()
        .and_then(|(w, tz)| w.current(tz, input.now))
        .map(|(_, end)| Time(end));
    let latest_start = window_end.as_ref().map(|end| {
        Time(
            end.0
                .checked_sub(
                    jiff::SignedDuration::try_from(input.settings.expected_duration)
                        .unwrap_or(jiff::SignedDuration::ZERO),
                )
                .unwrap_or(end.0),
        )
    });
    let directive = InstallationDirective {
        rollout: input.name.to_string(),
        wave: acc.next_wave,
        packages,
        window_end,
        latest_start,
        reboot_setting: vm.reboot_setting,
        hotpatch_only: vm.hotpatch,
        rollback: false,
        hooks: vm.hooks_in(input.rings),
        snapshot: install_snapshot(manifest, vm, input.rings),
    };
    let summary = installation_summary(input.spec, &directive, vm.assessment, None);
    Some(VmWrite {
        vm: i,
        directive,
        summary: Some(summary),
    })
}

/// The ring's waves: the old record, waves found on the VMs that the record misses (a write that
/// did not reach the rollout's status), and the one started now; with their counts.
pub(super) fn record(
    run: &Run<'_>,
    prev: &RingProgress,
    members: &[usize],
    new_wave: &[usize],
    acc: &mut Acc,
) -> Vec<Wave> {
    let input = run.input;
    let now = Time(input.now);
    let mut waves: BTreeMap<i32, Wave> = prev.waves.iter().map(|w| (w.index, w.clone())).collect();
    for i in members {
        let vm = &input.vms[*i];
        if let Some(d) = vm
            .directive
            .filter(|d| d.rollout == input.name && !d.rollback)
            && !waves
                .get(&d.wave)
                .is_some_and(|w| w.members.iter().any(|m| m == vm.name))
            && !new_wave.contains(i)
        {
            let w = waves.entry(d.wave).or_insert_with(|| Wave {
                index: d.wave,
                started_time: Some(now.clone()),
                ..Default::default()
            });
            w.members.push(vm.name.to_string());
        }
    }
    if !new_wave.is_empty() {
        waves.insert(
            acc.next_wave,
            Wave {
                index: acc.next_wave,
                members: new_wave
                    .iter()
                    .map(|i| input.vms[*i].name.to_string())
                    .collect(),
                started_time: Some(now.clone()),
                ..Default::default()
            },
        );
        acc.next_wave += 1;
    }
    let by_name: HashMap<&str, usize> = members.iter().map(|i| (input.vms[*i].name, *i)).collect();
    for w in waves.values_mut() {
        count(run, w, &by_name, new_wave, &acc.states, &mut acc.vm_events);
    }
    waves.into_values().collect()
}

/// A wave's successes and (sticky) failures; complete when none of its members is busy with it.
fn count(
    run: &Run<'_>,
    w: &mut Wave,
    by_name: &HashMap<&str, usize>,
    new_wave: &[usize],
    states: &[VmState],
    vm_events: &mut Vec<(usize, EventSpec)>,
) {
    let (mut ok, mut bad, mut busy) = (0, 0, 0);
    let mut seen: std::collections::HashSet<String> =
        w.installed_seen.iter().map(|s| s.name.clone()).collect();
    let mut rebooting: std::collections::HashSet<String> =
        w.reboots_seen.iter().map(|s| s.name.clone()).collect();
    for m in &w.members {
        let Some(&i) = by_name.get(m.as_str()) else {
            continue;
        };
        // Given another attempt by a retry: it counts in the wave it is retried in.
        if w.retried.contains(m) {
            continue;
        }
        // Started again in a later wave (an automatic retry): that wave counts it.
        let vm = &run.input.vms[i];
        if vm
            .directive
            .is_some_and(|d| d.rollout == run.input.name && d.wave > w.index)
            && !w.failed_members.contains(m)
        {
            continue;
        }
        let installed = vm.result.is_some_and(|r| {
            r.rollout == run.input.name
                && r.wave == w.index
                && !r.rollback
                && r.status == crate::api::OperationStatus::Succeeded
        });
        if installed && seen.insert(m.clone()) {
            w.installed_seen.push(crate::api::SeenInstall {
                name: m.clone(),
                time: Time(run.input.now),
            });
            let n = vm.result.map_or(0, |r| r.installed.len());
            vm_events.push((
                i,
                EventSpec::normal(
                    "PatchInstalled",
                    "Install",
                    format!(
                        "rollout {} wave {}: {n} package(s) installed{}; the health gate judges it next",
                        run.input.name,
                        w.index,
                        if vm.result.is_some_and(|r| r.rebooted_at.is_some()) {
                            ", rebooted"
                        } else {
                            ""
                        }
                    ),
                ),
            ));
        }
        let announced = vm.result.is_some_and(|r| {
            r.rollout == run.input.name
                && r.wave == w.index
                && !r.rollback
                && r.status == crate::api::OperationStatus::InProgress
                && r.reboot_started_at.is_some()
        });
        if announced && rebooting.insert(m.clone()) {
            w.reboots_seen.push(crate::api::SeenInstall {
                name: m.clone(),
                time: Time(run.input.now),
            });
        }
        match &states[i] {
            s if s.is_done() => ok += 1,
            s if s.is_failed() => {
                bad += 1;
                if !w.failed_members.contains(m) {
                    w.failed_members.push(m.clone());
                    if let VmState::Failed(why) = s {
                        vm_events.push((
                            i,
                            EventSpec::warning(
                                "PatchFailed",
                                "Install",
                                format!("rollout {} wave {}: {why}", run.input.name, w.index),
                            ),
                        ));
                    }
                }
            }
            // Part of this wave only while its directive is this wave's.
            VmState::Patching
                if run.input.vms[i]
                    .directive
                    .is_some_and(|d| d.rollout == run.input.name && d.wave == w.index)
                    || new_wave.contains(&i) =>
            {
                busy += 1;
            }
            _ => {}
        }
    }
    w.succeeded = ok;
    w.failed = bad;
    if busy == 0 && w.completed_time.is_none() {
        w.completed_time = Some(Time(run.input.now));
    }
}
