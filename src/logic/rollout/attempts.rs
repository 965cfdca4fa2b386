//! Automatic retries (the seed: "pending and failed patches are automatically retried during the
//! next maintenance window"): a VM whose guest reported a failed installation is planned again
//! from its next maintenance window (an hour later without one) until the ring's `maxAttempts`
//! have failed; only then is it a failure for the health gate. The controller's own verdicts
//! (unhealthy after installing, not back from a reboot) are not retried.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::{InstallRetry, OperationStatus, RingProgress};
use crate::logic::duration::add;
use crate::logic::events::EventSpec;

use super::state::VmState;
use super::{Acc, Run, VmFacts};

/// When a VM without a maintenance window is retried.
pub const RETRY_WITHOUT_WINDOW: Duration = Duration::from_secs(3600);

/// The guest's own failure of this rollout's installation (None: none, or not one to retry).
fn guest_failure(run: &Run<'_>, vm: &VmFacts<'_>, wave: i32) -> Option<String> {
    let r = vm.result.filter(|r| {
        r.rollout == run.input.name
            && r.wave == wave
            && !r.rollback
            && r.status == OperationStatus::Failed
    })?;
    if r.maintenance_window_exceeded && r.installed.is_empty() && r.failed.is_empty() {
        // Nothing was tried: not an attempt (the VM waits for its next window anyway).
        return None;
    }
    let what = r.error.as_deref().map_or_else(
        || format!("{} package(s) failed to install", r.failed.len()),
        |e| crate::logic::text::safe(e, 256),
    );
    Some(match r.reason.as_deref() {
        Some(reason) => format!("{}: {what}", crate::logic::text::safe(reason, 64)),
        None => what,
    })
}

/// When the VM may try again: its next window's opening, else an hour from now.
fn next_attempt(vm: &VmFacts<'_>, now: Timestamp) -> Timestamp {
    vm.window
        .as_ref()
        .and_then(|(w, tz)| w.next_opening(tz, now))
        .unwrap_or_else(|| add(now, RETRY_WITHOUT_WINDOW))
}

/// Count the ring's failed attempts and turn the failures that have attempts left into waiting
/// VMs (not ready before their next attempt).
pub(super) fn apply(
    run: &Run<'_>,
    ri: usize,
    members: &[usize],
    prev: &RingProgress,
    p: &mut RingProgress,
    acc: &mut Acc,
) {
    let input = run.input;
    let now = input.now;
    let max = input.rings[ri].spec.max_attempts.clamp(1, 10);
    let mut retries: BTreeMap<String, InstallRetry> = prev
        .retries
        .iter()
        .map(|r| (r.name.clone(), r.clone()))
        .collect();
    for &i in members {
        let vm = &input.vms[i];
        if !matches!(acc.states[i], VmState::Failed(_)) || run.failed_before.contains(vm.name) {
            continue;
        }
        let Some(d) = vm
            .directive
            .filter(|d| d.rollout == input.name && !d.rollback)
        else {
            continue;
        };
        let Some(reason) = guest_failure(run, vm, d.wave) else {
            continue;
        };
        let e = retries
            .entry(vm.name.to_string())
            .or_insert_with(|| InstallRetry {
                name: vm.name.to_string(),
                ..Default::default()
            });
        if e.attempts == 0 || e.last_failed_wave != d.wave {
            e.attempts += 1;
            e.last_failed_wave = d.wave;
            e.last_error = Some(reason.clone());
            e.next_attempt = (e.attempts < max).then(|| Time(next_attempt(vm, now)));
            if let Some(at) = &e.next_attempt {
                acc.vm_events.push((
                    i,
                    EventSpec::warning(
                        "PatchRetryScheduled",
                        "Retry",
                        format!(
                            "rollout {}: attempt {} of {} failed ({reason}); retried from {}",
                            input.name, e.attempts, max, at.0
                        ),
                    ),
                ));
            }
        }
        match e.next_attempt.as_ref().map(|t| t.0) {
            Some(at) if now < at => {
                acc.wake.at(at);
                acc.states[i] = VmState::Waiting(Some(format!(
                    "attempt {} of {} failed ({reason}); retried in its next maintenance window, from {at}",
                    e.attempts, max
                )));
            }
            Some(_) => acc.states[i] = VmState::Waiting(None),
            None => {
                acc.states[i] = VmState::Failed(if max > 1 {
                    format!("{reason} (all {max} attempts failed)")
                } else {
                    reason
                });
            }
        }
    }
    p.retries = retries.into_values().collect();
}
