//! Where each VM stands in the rollout, and why a waiting VM may not start now.

use jiff::Timestamp;

use crate::api::{OperationStatus, ReleaseManifest};
use crate::logic::duration::{self, Earliest};
use crate::logic::planner::State;

use super::manifest::packages_for;
use super::{Run, VmFacts};

/// The failure reason of a VM that did not come back from its announced reboot.
pub const REBOOT_TIMEOUT: &str = "RebootTimeout";
const DEFAULT_REBOOT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// Where one VM stands in the rollout, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmState {
    /// Not taking part (reason).
    Skipped(String),
    /// Already has every package of the manifest.
    UpToDate,
    /// To be patched; `Some(reason)` when it may not start now.
    Waiting(Option<String>),
    /// Installing, or installed and proving healthy.
    Patching,
    Succeeded,
    Failed(String),
    /// Returned to the versions recorded before the install; `failed`: it had failed (the
    /// others of its wave are rolled back with it, healthy).
    RolledBack {
        failed: bool,
    },
}

impl VmState {
    /// The state the wave planner works with.
    pub fn planner(&self) -> State {
        match self {
            VmState::Skipped(_) => State::Skipped,
            VmState::UpToDate | VmState::Succeeded => State::Succeeded,
            VmState::Waiting(_) => State::Waiting,
            VmState::Patching => State::Patching,
            VmState::Failed(_) | VmState::RolledBack { failed: true } => State::Failed,
            // Rolled back with its wave (or by hand) without having failed: not patched
            // further, and no failure for the gate.
            VmState::RolledBack { failed: false } => State::Skipped,
        }
    }

    pub fn is_skipped(&self) -> bool {
        matches!(self, VmState::Skipped(_))
    }

    /// Succeeded, or had nothing to install.
    pub fn is_done(&self) -> bool {
        matches!(self, VmState::Succeeded | VmState::UpToDate)
    }

    pub fn is_failed(&self) -> bool {
        matches!(
            self,
            VmState::Failed(_) | VmState::RolledBack { failed: true }
        )
    }
}

/// Every VM's state before planning; VMs in no ring are skipped.
pub(super) fn initial(
    run: &Run<'_>,
    manifest: Option<&ReleaseManifest>,
    wake: &mut Earliest<Timestamp>,
) -> Vec<VmState> {
    run.input
        .vms
        .iter()
        .map(|vm| match of(run, vm, manifest, wake) {
            s if vm.ring.is_none() && !s.is_skipped() => {
                VmState::Skipped("in no UpdateRing".into())
            }
            s => s,
        })
        .collect()
}

/// After the manifest froze: the waiting VMs' states depended on it.
pub(super) fn refresh_waiting(
    run: &Run<'_>,
    manifest: Option<&ReleaseManifest>,
    states: &mut [VmState],
    wake: &mut Earliest<Timestamp>,
) {
    for (state, vm) in states.iter_mut().zip(run.input.vms) {
        if matches!(state, VmState::Waiting(_)) {
            *state = of(run, vm, manifest, wake);
        }
    }
}

/// The state of one VM in this rollout, before planning.
fn of(
    run: &Run<'_>,
    vm: &VmFacts<'_>,
    manifest: Option<&ReleaseManifest>,
    wake: &mut Earliest<Timestamp>,
) -> VmState {
    let input = run.input;
    // An attempt forgiven by a retry is no attempt: the VM is planned again.
    let mine = vm.directive.filter(|d| {
        d.rollout == input.name && !super::retry::retried(run.old, vm.name, d.wave, d.rollback)
    });
    if let Some(d) = mine {
        if d.rollback {
            return VmState::RolledBack {
                failed: run.failed_before.contains(vm.name),
            };
        }
        let now = from_result(run, vm, d, wake);
        if run.failed_before.contains(vm.name) {
            // Failures are sticky; the reason is the guest's when its result still says why.
            return match now {
                Some(VmState::Failed(why)) => VmState::Failed(why),
                _ if !vm.healthy => {
                    VmState::Failed("the guest reported itself unhealthy after the install".into())
                }
                _ => VmState::Failed("failed earlier in this rollout".into()),
            };
        }
        if let Some(state) = now {
            return state;
        }
    } else if let Some(reason) = &vm.ineligible {
        return VmState::Skipped(reason.clone());
    }
    let Some(manifest) = manifest else {
        // Before the first ring starts; the ring explains the wait.
        return VmState::Waiting(None);
    };
    match packages_for(manifest, vm, run.input.rings, run.release) {
        None => VmState::Waiting(Some("waiting for a successful patch assessment".into())),
        Some(p) if p.is_empty() && mine.is_none() => VmState::UpToDate,
        Some(_) => VmState::Waiting(None),
    }
}

/// What the guest's result for the rollout's directive says (None: it may start again, as when
/// the window ended before anything was installed).
fn from_result(
    run: &Run<'_>,
    vm: &VmFacts<'_>,
    d: &crate::api::InstallationDirective,
    wake: &mut Earliest<Timestamp>,
) -> Option<VmState> {
    let input = run.input;
    let result = vm
        .result
        .filter(|r| r.rollout == d.rollout && r.wave == d.wave && !r.rollback);
    let Some(r) = result else {
        return Some(VmState::Patching);
    };
    match r.status {
        OperationStatus::Succeeded => {
            // From when this controller first saw the result, not a time the guest chose.
            let finished = run
                .installed_seen
                .get(&(vm.name, d.wave))
                .copied()
                .unwrap_or(input.now);
            let healthy_for = vm
                .ring
                .map_or(std::time::Duration::ZERO, |ri| run.times[ri].healthy_for);
            let proven = duration::add(finished, healthy_for);
            if input.now >= proven {
                return Some(VmState::Succeeded);
            }
            if !vm.healthy {
                return Some(VmState::Failed(
                    "the guest reported itself unhealthy after the install".into(),
                ));
            }
            // Installed and proving healthy (a VM without heartbeat may be rebooting: only
            // the end of healthyFor tells).
            wake.at(proven);
            return Some(VmState::Patching);
        }
        OperationStatus::InProgress if r.reboot_started_at.is_some() => {
            // Announced its reboot: its heartbeat may stop, which is no failure until the
            // ring's rebootTimeout has passed since the controller first saw the
            // announcement.
            let since = run
                .reboots_seen
                .get(&(vm.name, d.wave))
                .copied()
                .unwrap_or(input.now);
            let timeout = vm
                .ring
                .map_or(DEFAULT_REBOOT_TIMEOUT, |ri| run.times[ri].reboot_timeout);
            // Real time: a machine boots no faster on an accelerated patching clock.
            let speed = input.settings.clock_speed.max(1.0);
            let deadline = duration::add(since, timeout.mul_f64(speed));
            if input.now >= deadline {
                return Some(VmState::Failed(format!(
                    "{REBOOT_TIMEOUT}: the VM did not come back within {} of announcing its reboot",
                    duration::format(timeout)
                )));
            }
            wake.at(deadline);
            return Some(VmState::Patching);
        }
        OperationStatus::InProgress => return Some(VmState::Patching),
        OperationStatus::Failed
            if r.maintenance_window_exceeded && r.installed.is_empty() && r.failed.is_empty() =>
        {
            // Never started: retried in the next window.
        }
        _ => {
            // The guest's words, bounded: they reach Events, conditions and `why`.
            let what = r.error.as_deref().map_or_else(
                || format!("{} package(s) failed to install", r.failed.len()),
                |e| crate::logic::text::safe(e, 256),
            );
            return Some(VmState::Failed(match r.reason.as_deref() {
                Some(reason) => format!("{}: {what}", crate::logic::text::safe(reason, 64)),
                None => what,
            }));
        }
    }
    None
}

/// Why a waiting VM may not start now (None: it may).
pub(super) fn not_ready(
    run: &Run<'_>,
    vm: &VmFacts<'_>,
    wake: &mut Earliest<Timestamp>,
) -> Option<String> {
    let input = run.input;
    if !vm.running {
        return Some("no heartbeat: the VM is not running (it is patched when it returns)".into());
    }
    if let Some(d) = vm.directive.filter(|d| d.rollout != input.name)
        && vm
            .result
            .is_none_or(|r| r.rollout != d.rollout || r.wave != d.wave || r.rollback != d.rollback)
    {
        return Some(format!("busy with rollout {}", d.rollout));
    }
    if let Some((w, tz)) = &vm.window
        && !w.may_start(tz, input.now, input.settings.expected_duration)
    {
        if let Some(next) = w.next_opening(tz, input.now) {
            wake.at(next);
            return Some(format!(
                "outside its maintenance window (or less than {} left); next opening {}",
                duration::format(input.settings.expected_duration),
                next.to_zoned(tz.clone()).strftime("%Y-%m-%d %H:%M %Z")
            ));
        }
        return Some("its maintenance window never opens".into());
    }
    None
}
