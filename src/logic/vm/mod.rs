//! The VirtualMachine phase decision (DESIGN.md §2 and §4), as a pure function of what the
//! controller knows: the VM, its resolved profile, the image check and the heartbeat, at a time.
//! The controller turns the outcome into one status write and its Events; everything that needs
//! remembering (remediation attempts, the drift episode) lives in the status, so a restarted
//! controller decides the same and never repeats an action.
//!
//! `decide` runs the configuration verdict (`configuration`), then three concepts of their own:
//! change tracking (`tracking`), the seed's availablePatchSummary (`patch_summary`) and the
//! assessment schedule (`assessment`).

mod assessment;
mod configuration;
pub mod heartbeat;
mod patch_summary;
#[cfg(test)]
mod tests;
mod tracking;

use std::time::Duration;

use jiff::Timestamp;

use crate::api::{
    EffectiveConfiguration, RemediationMode, VirtualMachineSpec, VirtualMachineStatus,
};

use super::catalog::ImageProblem;
pub use crate::logic::events::EventSpec;

pub const READY: &str = "Ready";
pub const PROFILE_RESOLVED: &str = "ProfileResolved";
pub const IMAGE_SUPPORTED: &str = "ImageSupported";
pub const HEARTBEAT: &str = "Heartbeat";
pub const DRIFTED: &str = "Drifted";
pub const ONBOARDED: &str = "Onboarded";

/// The profile the VM resolves to.
#[derive(Clone, Debug, PartialEq)]
#[allow(clippy::large_enum_variant)] // built once per reconcile, never stored
pub enum ProfileChoice {
    /// Found and resolved. `via_assignment` is set when no profile was named and an assignment
    /// chose it; `also_matched` lists other profiles whose assignment matched (overlap).
    Resolved {
        name: String,
        generation: i64,
        /// Shared with every VM of the profile (see `DesiredState::configuration`).
        configuration: std::sync::Arc<EffectiveConfiguration>,
        remediation: RemediationPolicy,
        via_assignment: bool,
        also_matched: Vec<String>,
        /// The VM keeps this profile although this one now ranks first (assignment is sticky).
        outranked_by: Option<String>,
    },
    /// The VM names a profile that does not exist.
    Missing { name: String },
    /// The VM names no profile and no assignment matches it.
    Unassigned,
}

/// The profile's remediation settings, parsed.
#[derive(Clone, Debug, PartialEq)]
pub struct RemediationPolicy {
    pub mode: RemediationMode,
    pub max_attempts: i32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl RemediationPolicy {
    /// The wait after attempt `n` (1-based) before attempt `n + 1`: initial, doubling, capped.
    pub fn backoff_after(&self, attempt: i32) -> Duration {
        let doublings = attempt.saturating_sub(1).clamp(0, 30) as u32;
        self.initial_backoff
            .saturating_mul(1u32 << doublings)
            .min(self.max_backoff)
    }
}

/// The guest's heartbeat as seen through its Lease.
#[derive(Clone, Debug, PartialEq)]
pub enum Heartbeat {
    /// Renewal seen at `renewed` (the controller's clock); counts as running until
    /// `renewed + grace`. `clock_skew`: the guest's clock is this far off (beyond the tolerance).
    Alive {
        renewed: Timestamp,
        clock_skew: Option<jiff::SignedDuration>,
    },
    /// Last renewal seen at the given time (or never), longer ago than the grace period.
    Missing { last: Option<Timestamp> },
}

pub struct Inputs<'a> {
    pub now: Timestamp,
    /// Since when the VM's guest could have heartbeaten: the VM's creation, or now when its
    /// heartbeat Lease was only just created.
    pub created: Option<Timestamp>,
    pub generation: Option<i64>,
    pub spec: &'a VirtualMachineSpec,
    pub status: Option<&'a VirtualMachineStatus>,
    pub profile: ProfileChoice,
    pub image_problems: Vec<ImageProblem>,
    pub heartbeat: Heartbeat,
    pub grace: Duration,
    /// The on-demand assessment request (annotation `automend.io/assess`), if any.
    pub assess_request: Option<String>,
    /// The patching schedule's clock (assessment intervals run on it; `now` is real time).
    pub clock: crate::clock::Clock,
    /// Why the API server refuses every guest's requests, when the controller knows it
    /// (`--guest-authorization=webhook` and the API server no longer asks the controller): a
    /// silent guest is then not "not running".
    pub guests_refused: Option<&'a str>,
}

/// How long a new VM's first status waits for its guest's first heartbeat. A guest that runs
/// when its identity appears heartbeats within seconds, and its VM then goes straight to
/// InProgress with its configuration: one status write saved per onboarded VM (issue 17). A VM
/// whose guest is silent that long is Pending.
pub const FIRST_HEARTBEAT_WAIT: Duration = Duration::from_secs(30);

/// The annotation that asks for an on-demand assessment; any new value is a new request.
pub const ASSESS_ANNOTATION: &str = "automend.io/assess";

#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// The controller's half of the status (no `guest`).
    pub status: VirtualMachineStatus,
    pub events: Vec<EventSpec>,
    /// Reconcile again after this long even if nothing changes (backoff or heartbeat expiry).
    pub requeue_after: Option<Duration>,
    /// Whether a remediation attempt was made in this decision.
    pub remediation_attempted: bool,
    /// The VM was onboarded by this decision (its first Configured with this profile). Not an
    /// Event of its own: the controller reports onboardings per profile, in batches
    /// (`logic::events::onboarded_note`), and the VM's `Onboarded` condition carries the fact.
    pub onboarded: Option<Onboarded>,
    /// The VM is new and held for its guest's first heartbeat (`FIRST_HEARTBEAT_WAIT`):
    /// `requeue_after` is when the hold ends.
    pub held_for_first_heartbeat: bool,
}

/// A VM's onboarding to a profile's configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Onboarded {
    pub profile: String,
    /// The configuration's hash.
    pub hash: String,
}

/// The controller-owned part of a status (everything but `guest`).
pub fn controller_part(status: &VirtualMachineStatus) -> VirtualMachineStatus {
    let mut s = VirtualMachineStatus {
        guest: None,
        ..status.clone()
    };
    // The rollout controller's fields (field manager `automend-rollout`).
    if let Some(d) = s.desired.as_mut() {
        d.installation = None;
        d.release_assessment = None;
    }
    if let Some(p) = s.patch_status.as_mut() {
        p.last_patch_installation_summary = None;
        if p.available_patch_summary.is_none() {
            s.patch_status = None;
        }
    }
    s
}

/// `status` with the controller's part replaced by `part` (what the controller last wrote, when
/// its cache has not caught up yet): the guest's report and the rollout controller's fields stay.
pub fn with_controller_part(
    status: &VirtualMachineStatus,
    part: &VirtualMachineStatus,
) -> VirtualMachineStatus {
    let mut s = part.clone();
    s.guest = status.guest.clone();
    let theirs = status.desired.as_ref();
    let installation = theirs.and_then(|d| d.installation.clone());
    let release_assessment = theirs.and_then(|d| d.release_assessment.clone());
    if let Some(d) = s.desired.as_mut() {
        d.installation = installation;
        d.release_assessment = release_assessment;
    }
    let summary = status
        .patch_status
        .as_ref()
        .and_then(|p| p.last_patch_installation_summary.clone());
    if summary.is_some() {
        s.patch_status
            .get_or_insert_with(Default::default)
            .last_patch_installation_summary = summary;
    }
    s
}

/// Decide the VM's phase, conditions, desired state, assessment directive, patch status and Events.
pub fn decide(input: Inputs<'_>) -> Outcome {
    let managed = input.spec.management.enabled;
    let old = input.status;
    let guest = old.and_then(|s| s.guest.as_ref());
    let mut out = configuration::decide(&input);
    out.status = controller_part(&out.status);
    tracking::publish(
        managed,
        old.and_then(|s| s.last_tracked_change.as_ref()),
        guest.map(|g| g.changes.as_slice()).unwrap_or_default(),
        &mut out,
    );
    let assessment = guest.and_then(|g| g.assessment.as_ref());
    if let Some(a) = assessment {
        out.status
            .patch_status
            .get_or_insert_with(Default::default)
            .available_patch_summary = Some(patch_summary::of(a));
    }
    if managed {
        assessment::schedule(&input, assessment, &mut out);
    }
    if let Some(wait) = first_heartbeat_wait(&input, &out) {
        return Outcome {
            status: old.map(controller_part).unwrap_or_default(),
            events: Vec::new(),
            requeue_after: Some(wait),
            remediation_attempted: false,
            onboarded: None,
            held_for_first_heartbeat: true,
        };
    }
    out
}

/// Whether the controller creates the VM's heartbeat Lease itself. Its guest creates it with its
/// first renewal; an agent older than that only renews one, and a guest may be late: with none
/// `FIRST_HEARTBEAT_WAIT` after the guest could first act (`created`: its identity's creation,
/// else the VM's), the controller creates it.
pub fn lease_overdue(has_lease: bool, created: Option<Timestamp>, now: Timestamp) -> bool {
    if has_lease {
        return false;
    }
    let Ok(wait) = jiff::SignedDuration::try_from(FIRST_HEARTBEAT_WAIT) else {
        return true;
    };
    created.is_none_or(|c| c + wait <= now)
}

/// A VM never decided, created less than `FIRST_HEARTBEAT_WAIT` ago, whose guest has not
/// heartbeaten yet and which would be Pending only for that: how long to hold its first write.
fn first_heartbeat_wait(input: &Inputs<'_>, out: &Outcome) -> Option<Duration> {
    let never_decided = input.status.is_none_or(|s| s.phase.is_none());
    let no_heartbeat_yet = matches!(input.heartbeat, Heartbeat::Missing { last: None });
    let only_waiting = out.status.phase == Some(crate::api::VmPhase::Pending)
        && out
            .status
            .conditions
            .iter()
            .any(|c| c.type_ == READY && c.reason == "NoHeartbeat");
    if !(never_decided && no_heartbeat_yet && only_waiting) {
        return None;
    }
    let until = input.created? + jiff::SignedDuration::try_from(FIRST_HEARTBEAT_WAIT).ok()?;
    (until > input.now).then(|| super::duration::until(input.now, until))
}
