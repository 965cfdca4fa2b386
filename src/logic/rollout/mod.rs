//! The PatchRollout decision (DESIGN.md §2 and §5) as a pure function: a rollout, the rings of
//! its namespace and what is known of every VM, at a time, give the rollout's status, the
//! installation directives to write now, Events and when to look again.
//!
//! Everything needed to decide again is in the objects: a VM has started when its
//! `status.desired.installation` names this rollout; it finished when its guest reported that
//! (rollout, wave); failures are remembered in the rollout's waves. A restarted controller so
//! decides the same and never starts a VM twice.
//!
//! The kubectl plugin calls the same code for `plan` and `why`.

mod attempts;
mod cadence;
mod facts;
mod manifest;
mod phase;
mod retry;
mod ring;
mod ring_status;
mod rollback;
mod slo;
mod state;
mod summary;
#[cfg(test)]
mod tests;
mod versions;
mod waves;

use std::collections::BTreeSet;
use std::time::Duration;

use jiff::Timestamp;
use jiff::tz::TimeZone;

use crate::api::{
    GuestAssessment, GuestInstallation, InstallationDirective, LastPatchInstallationSummary,
    PatchRolloutSpec, PatchRolloutStatus, RebootSetting, ReleaseManifest, RingPhase,
    UpdateRingSpec,
};
use crate::logic::duration::{Earliest, parse_or};
use crate::logic::events::EventSpec;
use crate::logic::planner::Placement;
use crate::logic::window::Window;

pub use cadence::{due as cadence_due, release_name, release_rollout};
pub use facts::{
    Gathered, VmView, Written, blocked_by, decide_gathered, facts, finished, gather, sorted_rings,
    views,
};
pub use manifest::{
    LEFT_OUT_LIMIT, freeze_manifest, install_snapshot, packages_for, policy_reason, release_request,
};
pub use ring::{max_failed, max_unavailable};
pub use ring_status::{current_rollout, membership_moved, ring_status, rings_fingerprint};
pub use state::VmState;
pub use summary::installation_summary;
pub use versions::{compare_versions, excluded};

pub const HALTED: &str = "Halted";
pub const SLO_AT_RISK: &str = "SLOAtRisk";
pub const PAUSED: &str = "Paused";

/// A ring of the namespace, sorted by (order, name) by the caller.
#[derive(Clone, Debug)]
pub struct RingFacts<'a> {
    pub name: &'a str,
    pub spec: &'a UpdateRingSpec,
}

/// What the rollout needs to know of one VM.
#[derive(Clone, Debug)]
pub struct VmFacts<'a> {
    pub name: &'a str,
    /// Index into the rings, if the VM is in one.
    pub ring: Option<usize>,
    pub placement: Placement,
    /// Why the VM does not take part in rollouts (patch mode, image, management, heartbeat).
    pub ineligible: Option<String>,
    /// Heartbeat present now.
    pub running: bool,
    /// Its maintenance window (the ring's or the profile's), in its time zone; None: any time.
    pub window: Option<(Window, TimeZone)>,
    pub reboot_setting: Option<RebootSetting>,
    /// Hotpatch-capable and allowed by the profile: installs without a reboot.
    pub hotpatch: bool,
    /// Image family (publisher/offer/sku): the manifest pins versions per family.
    pub family: String,
    pub assessment: Option<&'a GuestAssessment>,
    pub directive: Option<&'a InstallationDirective>,
    pub result: Option<&'a GuestInstallation>,
    /// The VM's current `lastPatchInstallationSummary`.
    pub summary: Option<&'a LastPatchInstallationSummary>,
    /// The guest's own health report (agent checks and `spec.healthCheck`).
    pub healthy: bool,
    /// The profile's patch hooks.
    pub hooks: Option<&'a crate::api::PatchHooks>,
    /// The VM's profile (names its approval policy).
    pub profile: &'a str,
    /// The profile's snapshot repositories.
    pub snapshots: &'a [crate::api::SnapshotRepository],
    /// The profile's approval policy.
    pub approval: Option<&'a crate::api::ApprovalPolicy>,
    /// The guest's answer to the latest release assessment.
    pub release_assessment: Option<&'a GuestAssessment>,
    /// The release assessment the VM was last asked for.
    pub release_directive: Option<&'a crate::api::AssessmentDirective>,
}

impl VmFacts<'_> {
    /// The hooks of this VM's installations: its ring's over its profile's.
    pub fn hooks_in(&self, rings: &[RingFacts<'_>]) -> Option<crate::api::PatchHooks> {
        let ring = self
            .ring
            .and_then(|r| rings.get(r))
            .and_then(|r| r.spec.hooks.as_ref());
        let hooks = self.hooks.cloned().unwrap_or_default().overridden_by(ring);
        (!hooks.is_empty()).then_some(hooks)
    }

    fn ring_spec<'r>(&self, rings: &'r [RingFacts<'r>]) -> Option<&'r RingFacts<'r>> {
        self.ring.and_then(|r| rings.get(r))
    }

    /// The repositories this VM reads from snapshots: its ring's list, else its profile's.
    pub fn snapshots_in<'s>(
        &'s self,
        rings: &'s [RingFacts<'s>],
    ) -> &'s [crate::api::SnapshotRepository] {
        self.ring_spec(rings)
            .and_then(|r| r.spec.snapshots.as_deref())
            .unwrap_or(self.snapshots)
    }

    /// The approval policy of this VM's installations (its ring's fields over its profile's),
    /// named by where it comes from ("profile P", "profile P, ring R").
    pub fn approval_in(&self, rings: &[RingFacts<'_>]) -> (String, crate::api::ApprovalPolicy) {
        let ring = self.ring_spec(rings);
        let over = ring.and_then(|r| r.spec.approval.as_ref());
        let policy = self
            .approval
            .cloned()
            .unwrap_or_default()
            .overridden_by(over);
        let key = match (over, ring) {
            (Some(_), Some(r)) => format!("profile {}, ring {}", self.profile, r.name),
            _ => format!("profile {}", self.profile),
        };
        (key, policy)
    }
}

/// Controller settings the decision depends on.
#[derive(Clone, Debug)]
pub struct Settings {
    pub pairs: Vec<(String, String)>,
    /// How long an installation is expected to take: none starts with less window left.
    pub expected_duration: Duration,
    /// The patching clock's speed (1 in production): `rebootTimeout` is real time, so it is
    /// this many times longer on the patching clock.
    pub clock_speed: f64,
}

pub struct Input<'a> {
    pub now: Timestamp,
    pub name: &'a str,
    pub generation: Option<i64>,
    pub spec: &'a PatchRolloutSpec,
    pub status: Option<&'a PatchRolloutStatus>,
    pub rings: &'a [RingFacts<'a>],
    pub vms: &'a [VmFacts<'a>],
    /// An earlier rollout of the namespace that is still running: this one waits for it.
    pub blocked_by: Option<String>,
    pub settings: &'a Settings,
}

/// A VM status write: the directive (when new) and the seed's installation summary.
#[derive(Clone, Debug, PartialEq)]
pub struct VmWrite {
    pub vm: usize,
    pub directive: InstallationDirective,
    pub summary: Option<LastPatchInstallationSummary>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub status: PatchRolloutStatus,
    pub writes: Vec<VmWrite>,
    pub events: Vec<EventSpec>,
    /// Events about one VM (by index into the input's VMs).
    pub vm_events: Vec<(usize, EventSpec)>,
    /// Look again after this long (virtual time), even if nothing changes.
    pub requeue_after: Option<Duration>,
    /// Every VM's state, by index (for `why` and tests).
    pub states: Vec<VmState>,
    /// Release assessments to ask of VMs (by index) before the manifest is frozen.
    pub release_assessments: Vec<(usize, crate::api::AssessmentDirective)>,
}

/// What every part of one decision reads.
struct Run<'a> {
    input: &'a Input<'a>,
    /// The status decided last time (empty for a new rollout).
    old: &'a PatchRolloutStatus,
    release: Timestamp,
    /// Each ring's durations, by ring index.
    times: Vec<ring::RingTimes>,
    /// VMs that failed in an earlier wave of this rollout (failures are sticky).
    failed_before: BTreeSet<&'a str>,
    /// When the controller first saw each VM's successful install (by VM and wave).
    installed_seen: std::collections::BTreeMap<(&'a str, i32), Timestamp>,
    /// When the controller first saw each VM's announced reboot (by VM and wave).
    reboots_seen: std::collections::BTreeMap<(&'a str, i32), Timestamp>,
    /// Succeeded, RolledBack or Aborted: the record is kept as it is.
    terminal: bool,
    /// A halt is final: nothing new starts (only rolling back), even if the failures it counted
    /// are later patched over by another rollout.
    halted_before: bool,
    /// New waves may start.
    active: bool,
}

impl<'a> Run<'a> {
    fn new(input: &'a Input<'a>, old: &'a PatchRolloutStatus) -> Self {
        let spec = input.spec;
        let release = spec.release_time.0;
        let terminal = matches!(
            old.phase,
            Some(
                crate::api::RolloutPhase::Succeeded
                    | crate::api::RolloutPhase::RolledBack
                    | crate::api::RolloutPhase::Aborted
            )
        );
        let halted_before = old.phase == Some(crate::api::RolloutPhase::Halted);
        let times = input
            .rings
            .iter()
            .map(|r| {
                let d = |field: &'static str, text: &str| {
                    parse_or(
                        text,
                        Duration::ZERO,
                        format_args!("UpdateRing {}", r.name),
                        field,
                    )
                };
                ring::RingTimes {
                    deferral: d("spec.deferral", &r.spec.deferral),
                    deadline: d("spec.deadline", &r.spec.deadline),
                    bake: d("spec.healthGate.bakeTime", &r.spec.health_gate.bake_time),
                    healthy_for: d(
                        "spec.healthGate.healthyFor",
                        &r.spec.health_gate.healthy_for,
                    ),
                    reboot_timeout: parse_or(
                        &r.spec.health_gate.reboot_timeout,
                        Duration::from_secs(15 * 60),
                        format_args!("UpdateRing {}", r.name),
                        "spec.healthGate.rebootTimeout",
                    ),
                }
            })
            .collect();
        Run {
            input,
            old,
            release,
            times,
            failed_before: old
                .rings
                .iter()
                .flat_map(|r| r.waves.iter())
                .flat_map(|w| w.failed_members.iter().map(String::as_str))
                .collect(),
            installed_seen: old
                .rings
                .iter()
                .flat_map(|r| r.waves.iter())
                .flat_map(|w| {
                    w.installed_seen
                        .iter()
                        .map(move |s| ((s.name.as_str(), w.index), s.time.0))
                })
                .collect(),
            reboots_seen: old
                .rings
                .iter()
                .flat_map(|r| r.waves.iter())
                .flat_map(|w| {
                    w.reboots_seen
                        .iter()
                        .map(move |s| ((s.name.as_str(), w.index), s.time.0))
                })
                .collect(),
            terminal,
            halted_before,
            active: input.blocked_by.is_none()
                && input.now >= release
                && !terminal
                && !spec.rollback
                && !spec.abort
                && !halted_before,
        }
    }
}

/// What the parts of one decision add to.
struct Acc {
    manifest: Option<ReleaseManifest>,
    /// Every VM's state, by index.
    states: Vec<VmState>,
    next_wave: i32,
    wake: Earliest<Timestamp>,
    events: Vec<EventSpec>,
    /// Events about one VM (by index): its patch story in `kubectl describe virtualmachine`.
    vm_events: Vec<(usize, EventSpec)>,
    writes: Vec<VmWrite>,
    release_assessments: Vec<(usize, crate::api::AssessmentDirective)>,
}

/// Decide the rollout: ring by ring (start, waves, health gate), then rollback, summaries, the
/// rollout's phase, the SLO and the conditions.
pub fn decide(input: &Input<'_>) -> Outcome {
    let empty = PatchRolloutStatus::default();
    let old = input.status.unwrap_or(&empty);
    let retried = retry::forgive(input.spec, old);
    let old = retried.as_ref().map_or(old, |(s, _)| s);
    let run = Run::new(input, old);
    let mut acc = Acc {
        manifest: old.manifest.clone(),
        states: Vec::new(),
        next_wave: waves::next_index(input, old),
        wake: Earliest::default(),
        events: Vec::new(),
        vm_events: Vec::new(),
        writes: Vec::new(),
        release_assessments: Vec::new(),
    };
    acc.states = state::initial(&run, acc.manifest.as_ref(), &mut acc.wake);

    let mut rings = Vec::with_capacity(input.rings.len());
    let mut previous_done = Some(run.release);
    let mut halted_ring = None;
    for ri in 0..input.rings.len() {
        let decided = ring::decide(&run, ri, previous_done, &mut acc);
        if decided.progress.phase == Some(RingPhase::Halted) {
            halted_ring.get_or_insert(ri);
        }
        previous_done = decided.done;
        rings.push(decided.progress);
    }
    let rollback_set = rollback::set(&run, &rings, halted_ring);
    rollback::start(&run, &rollback_set, &mut rings, halted_ring, &mut acc);
    summary::refresh(&run, &mut acc.writes);

    if let Some((_, forgiven)) = &retried {
        acc.events.push(EventSpec::normal(
            "RolloutRetried",
            "Retry",
            format!(
                "retry {}: {forgiven} failed VM(s) get another attempt",
                input.spec.retry
            ),
        ));
    }
    let phase = phase::rollout_phase(&run, &rings, halted_ring, &mut acc.wake);
    acc.events
        .extend(phase::event(&run, phase, halted_ring, rollback_set.len()));
    // The rings as decided now, one per input ring (the record may be the old one).
    let computed = rings.clone();
    let slo = slo::project(
        &run,
        &computed,
        &acc.states,
        phase,
        &mut acc.wake,
        &mut acc.events,
    );
    let record = phase::ring_record(&run, rings);
    let status = PatchRolloutStatus {
        observed_generation: input.generation,
        region_pairs: input
            .settings
            .pairs
            .iter()
            .map(|(a, b)| format!("{a}/{b}"))
            .collect(),
        phase: Some(phase),
        observed_retry: input.spec.retry.max(old.observed_retry),
        current_ring: record
            .iter()
            .find(|r| !matches!(r.phase, Some(RingPhase::Succeeded | RingPhase::Skipped)))
            .map(|r| r.name.clone()),
        manifest: old.manifest.clone().or(acc.manifest),
        conditions: phase::conditions(&run, phase, halted_ring, &computed, &slo),
        slo: Some(slo.status),
        rings: record,
    };

    // Directive writes only when they differ from what the VM has.
    acc.writes.retain(|w| {
        let vm = &input.vms[w.vm];
        vm.directive != Some(&w.directive)
            || (w.summary.is_some() && w.summary.as_ref() != vm.summary)
    });
    Outcome {
        status,
        writes: acc.writes,
        events: acc.events,
        vm_events: acc.vm_events,
        requeue_after: acc
            .wake
            .get()
            .map(|w| crate::logic::duration::until(input.now, w).max(Duration::from_millis(1))),
        states: acc.states,
        release_assessments: acc.release_assessments,
    }
}
