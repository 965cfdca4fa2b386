//! The VirtualMachine phase decision (DESIGN.md §2 and §4), as a pure function of what the
//! controller knows: the VM, its resolved profile, the image check and the heartbeat, at a time.
//! The controller turns the outcome into one status write and its Events; everything that needs
//! remembering (remediation attempts, the drift episode) lives in the status, so a restarted
//! controller decides the same and never repeats an action.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::{
    AssessmentDirective, AvailablePatchSummary, Classification, Condition, DesiredState,
    EffectiveConfiguration, PatchMode, RemediationMode, VirtualMachineSpec, VirtualMachineStatus,
    VmPhase,
};

use super::catalog::ImageProblem;

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
        configuration: EffectiveConfiguration,
        remediation: RemediationPolicy,
        via_assignment: bool,
        also_matched: Vec<String>,
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
    /// Renewed at `renewed`; counts as running until `renewed + grace`.
    Alive { renewed: Timestamp },
    /// Last renewed at the given time (or never), longer ago than the grace period.
    Missing { last: Option<Timestamp> },
}

pub struct Inputs<'a> {
    pub now: Timestamp,
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
}

/// The annotation that asks for an on-demand assessment; any new value is a new request.
pub const ASSESS_ANNOTATION: &str = "automend.io/assess";

/// An Event to publish about the VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventSpec {
    pub warning: bool,
    pub reason: &'static str,
    pub action: &'static str,
    pub note: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// The controller's half of the status (no `guest`).
    pub status: VirtualMachineStatus,
    pub events: Vec<EventSpec>,
    /// Reconcile again after this long even if nothing changes (backoff or heartbeat expiry).
    pub requeue_after: Option<Duration>,
    /// Whether a remediation attempt was made in this decision.
    pub remediation_attempted: bool,
}

fn time(t: Timestamp) -> Time {
    Time(t)
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
    }
    if let Some(p) = s.patch_status.as_mut() {
        p.last_patch_installation_summary = None;
        if p.available_patch_summary.is_none() {
            s.patch_status = None;
        }
    }
    s
}

struct Builder<'a> {
    now: Timestamp,
    generation: Option<i64>,
    old: &'a [Condition],
    conditions: Vec<Condition>,
}

impl Builder<'_> {
    fn set(&mut self, type_: &str, status: bool, reason: &str, message: impl Into<String>) {
        let status = if status { "True" } else { "False" };
        let message = message.into();
        let last_transition_time = self
            .old
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| time(self.now));
        self.conditions.retain(|c| c.type_ != type_);
        self.conditions.push(Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message,
            observed_generation: self.generation,
            last_transition_time,
        });
    }

    fn keep(&mut self, type_: &str) {
        if let Some(c) = self.old.iter().find(|c| c.type_ == type_) {
            self.conditions.retain(|x| x.type_ != type_);
            self.conditions.push(c.clone());
        }
    }
}

fn is_true(conditions: &[Condition], type_: &str) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
}

/// Decide the VM's phase, conditions, desired state, assessment directive, patch status and Events.
pub fn decide(input: Inputs<'_>) -> Outcome {
    let now = input.now;
    let managed = input.spec.management.enabled;
    let alive = matches!(input.heartbeat, Heartbeat::Alive { .. });
    let request = input.assess_request.clone();
    let guest_assessment = input
        .status
        .and_then(|s| s.guest.as_ref())
        .and_then(|g| g.assessment.clone());
    let clock = input.clock;
    let old_tracked = input.status.and_then(|s| s.last_tracked_change.clone());
    let guest_changes = input
        .status
        .and_then(|s| s.guest.as_ref())
        .map(|g| g.changes.clone())
        .unwrap_or_default();
    let mut out = decide_configuration(input);
    out.status = controller_part(&out.status);

    // Change tracking: an Event per change the guest reported since the last one published
    // (at most 10 at a time; the guest keeps the latest 50).
    out.status.last_tracked_change = old_tracked.clone();
    if managed && !guest_changes.is_empty() && guest_changes.last() != old_tracked.as_ref() {
        let from = old_tracked
            .as_ref()
            .and_then(|l| guest_changes.iter().position(|c| c == l))
            .map_or(0, |i| i + 1);
        let new = &guest_changes[from..];
        for c in &new[new.len().saturating_sub(10)..] {
            out.events.push(EventSpec {
                warning: false,
                reason: "ChangeTracked",
                action: "Observe",
                note: c.clone(),
            });
        }
        out.status.last_tracked_change = guest_changes.last().cloned();
    }

    // The seed's availablePatchSummary, from the guest's latest assessment.
    if let Some(a) = &guest_assessment {
        let critical_and_security = a
            .packages
            .iter()
            .filter(|p| {
                matches!(
                    p.classification,
                    Classification::Critical | Classification::Security
                )
            })
            .count() as i32;
        out.status
            .patch_status
            .get_or_insert_with(Default::default)
            .available_patch_summary = Some(AvailablePatchSummary {
            status: a.status,
            assessment_activity_id: Some(a.request_id.clone()),
            critical_and_security_patch_count: critical_and_security,
            other_patch_count: a.packages.len() as i32 - critical_and_security,
            reboot_pending: a.reboot_pending,
            start_time: a.start_time.clone(),
            last_modified_time: a.finish_time.clone(),
            error: a.error.clone(),
        });
    }

    // Assessment: on demand (never installs), and periodically while the VM runs; a VM that was
    // off is assessed when it returns because its periodic assessment is then overdue.
    let Some(desired) = out.status.desired.as_mut().filter(|_| managed) else {
        return out;
    };
    let current = desired.assessment.clone();
    let answered = |id: &str| {
        guest_assessment
            .as_ref()
            .is_some_and(|a| a.request_id == id)
    };
    let in_flight = current.as_ref().is_some_and(|c| !answered(&c.request_id));
    let on_demand_taken = current.as_ref().and_then(|c| c.on_demand.clone());
    if let Some(req) = request.filter(|r| Some(r) != on_demand_taken.as_ref()) {
        desired.assessment = Some(AssessmentDirective {
            request_id: format!("ondemand-{req}"),
            on_demand: Some(req.clone()),
        });
        out.events.push(EventSpec {
            warning: false,
            reason: "AssessmentRequested",
            action: "Assess",
            note: format!("on-demand patch assessment {req} requested (assessment never installs)"),
        });
        return out;
    }
    let um = desired
        .configuration
        .as_ref()
        .map(|c| c.services.update_management.clone())
        .unwrap_or_default();
    if !alive || !um.enabled || in_flight {
        return out;
    }
    let interval =
        super::duration::parse(&um.assessment_interval).unwrap_or(Duration::from_secs(24 * 3600));
    let last = guest_assessment
        .as_ref()
        .and_then(|a| a.finish_time.as_ref().or(a.start_time.as_ref()))
        .map(|t| t.0);
    // Guests stamp assessments on the patching clock.
    let patch_now = clock.at(now);
    let due = last.map_or(patch_now, |l| l + interval);
    if patch_now >= due {
        desired.assessment = Some(AssessmentDirective {
            request_id: format!("periodic-{}", patch_now.as_second()),
            on_demand: on_demand_taken,
        });
    } else {
        let wait = clock.real_duration(
            Duration::try_from(due.duration_since(patch_now)).unwrap_or(Duration::ZERO),
        );
        out.requeue_after = Some(out.requeue_after.map_or(wait, |r| r.min(wait)));
    }
    out
}

fn decide_configuration(input: Inputs<'_>) -> Outcome {
    let empty = VirtualMachineStatus::default();
    let old = input.status.unwrap_or(&empty);
    let mut b = Builder {
        now: input.now,
        generation: input.generation,
        old: &old.conditions,
        conditions: Vec::new(),
    };
    let mut events = Vec::new();
    let mut status = VirtualMachineStatus {
        observed_generation: input.generation,
        patch_mode: Some(
            input
                .spec
                .patch_settings
                .patch_mode
                .unwrap_or_else(|| PatchMode::default_for(input.spec.os.os_type)),
        ),
        profile: old.profile.clone(),
        desired: old.desired.clone(),
        patch_status: old.patch_status.clone(),
        remediation: old.remediation.clone(),
        ..Default::default()
    };
    let was = old.phase;
    let mut requeue_after = None;

    // Heartbeat first: it is reported whatever else happens.
    let alive = match &input.heartbeat {
        Heartbeat::Alive { renewed } => {
            let expires = *renewed + input.grace;
            let left = expires.duration_since(input.now);
            requeue_after =
                Some(Duration::try_from(left).unwrap_or(Duration::ZERO) + Duration::from_secs(1));
            b.set(
                HEARTBEAT,
                true,
                "LeaseRenewed",
                "the guest renews its heartbeat Lease",
            );
            true
        }
        Heartbeat::Missing { last } => {
            let msg = match last {
                Some(t) => format!(
                    "no heartbeat since {t} (grace period {}): the VM is not running",
                    super::duration::format(input.grace)
                ),
                None => {
                    "the guest has never renewed its Lease: the VM is not running or has no agent"
                        .into()
                }
            };
            b.set(HEARTBEAT, false, "NoHeartbeat", msg);
            false
        }
    };

    let finish = |mut status: VirtualMachineStatus,
                  b: Builder<'_>,
                  phase: VmPhase,
                  reason: &str,
                  message: String,
                  events: Vec<EventSpec>,
                  requeue_after: Option<Duration>,
                  remediation_attempted: bool| {
        let mut b = b;
        b.set(READY, phase == VmPhase::Configured, reason, message.clone());
        let mut conditions = b.conditions;
        conditions.sort_by(|a, c| a.type_.cmp(&c.type_));
        status.conditions = conditions;
        status.phase = Some(phase);
        status.message = Some(message);
        Outcome {
            status,
            events,
            requeue_after,
            remediation_attempted,
        }
    };

    // 1. Management disabled: drift monitoring stops at once, directives are cleared, nothing on
    // the guest is undone.
    if !input.spec.management.enabled {
        if let Some(d) = status.desired.as_mut() {
            d.enforce = false;
            d.assessment = None;
            d.installation = None;
        }
        status.remediation = None;
        b.keep(PROFILE_RESOLVED);
        b.keep(ONBOARDED);
        if was != Some(VmPhase::NotManaged) && was.is_some() {
            events.push(EventSpec {
                warning: false,
                reason: "ManagementDisabled",
                action: "Disable",
                note: "management disabled: drift monitoring stopped; everything configured on the guest stays as it is".into(),
            });
        }
        return finish(
            status,
            b,
            VmPhase::NotManaged,
            "ManagementDisabled",
            "management is disabled (spec.management.enabled=false): drift is not monitored and nothing on the guest is changed".into(),
            events,
            None,
            false,
        );
    }

    // 2. The profile.
    let (profile_name, generation, configuration, policy) = match input.profile {
        ProfileChoice::Resolved {
            name,
            generation,
            configuration,
            remediation,
            via_assignment,
            also_matched,
        } => {
            let mut msg = if via_assignment {
                format!("onboarded to ConfigurationProfile {name} by its assignment selector")
            } else {
                format!("ConfigurationProfile {name} found")
            };
            if !also_matched.is_empty() {
                msg.push_str(&format!(
                    "; the assignments of {} also match this VM (the highest priority, then the first name, wins)",
                    also_matched.join(", ")
                ));
            }
            let reason = if also_matched.is_empty() {
                "Resolved"
            } else {
                "ResolvedWithOverlap"
            };
            b.set(PROFILE_RESOLVED, true, reason, msg);
            (name, generation, configuration, remediation)
        }
        ProfileChoice::Missing { name } => {
            b.set(
                PROFILE_RESOLVED,
                false,
                "ProfileNotFound",
                format!("ConfigurationProfile {name} (spec.management.profile) does not exist"),
            );
            b.keep(ONBOARDED);
            let msg = format!(
                "ConfigurationProfile {name} named in spec.management.profile does not exist; create it or name another profile"
            );
            if was != Some(VmPhase::Failed) {
                events.push(EventSpec {
                    warning: true,
                    reason: "ProfileNotFound",
                    action: "Onboard",
                    note: msg.clone(),
                });
            }
            return finish(
                status,
                b,
                VmPhase::Failed,
                "ProfileNotFound",
                msg,
                events,
                None,
                false,
            );
        }
        ProfileChoice::Unassigned => {
            b.set(PROFILE_RESOLVED, false, "NoProfile", "spec.management.profile is unset and no ConfigurationProfile assignment matches the VM");
            b.keep(ONBOARDED);
            let msg = "no profile: set spec.management.profile, or give a ConfigurationProfile an assignment that matches this VM".to_string();
            if was != Some(VmPhase::Failed) {
                events.push(EventSpec {
                    warning: true,
                    reason: "NoProfile",
                    action: "Onboard",
                    note: msg.clone(),
                });
            }
            return finish(
                status,
                b,
                VmPhase::Failed,
                "NoProfile",
                msg,
                events,
                None,
                false,
            );
        }
    };
    let profile_changed = status.profile.as_deref() != Some(profile_name.as_str());
    status.profile = Some(profile_name.clone());

    // 3. The image must support what the VM asks for.
    if !input.image_problems.is_empty() {
        let msg = input
            .image_problems
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        let reason = match input.image_problems[0] {
            ImageProblem::PatchModeUnsupported { .. } => "PatchModeUnsupported",
            ImageProblem::CapabilityMissing { .. } => "CapabilityMissing",
        };
        b.set(IMAGE_SUPPORTED, false, reason, msg.clone());
        b.keep(ONBOARDED);
        if !(was == Some(VmPhase::Failed)
            && old
                .conditions
                .iter()
                .any(|c| c.type_ == IMAGE_SUPPORTED && c.status == "False"))
        {
            events.push(EventSpec {
                warning: true,
                reason: "UnsupportedImage",
                action: "Onboard",
                note: msg.clone(),
            });
        }
        return finish(status, b, VmPhase::Failed, reason, msg, events, None, false);
    }
    b.set(
        IMAGE_SUPPORTED,
        true,
        "Supported",
        "the image supports the patch mode and the capabilities asked for",
    );

    // 4. What the guest should apply. A new configuration starts a new remediation count.
    let prev = status.desired.clone().unwrap_or_default();
    let config_changed =
        prev.configuration.as_ref().map(|c| c.hash.as_str()) != Some(configuration.hash.as_str());
    let desired = DesiredState {
        profile: profile_name.clone(),
        profile_generation: generation,
        configuration: Some(configuration.clone()),
        remediation_attempt: prev.remediation_attempt,
        enforce: true,
        assessment: prev.assessment.clone(),
        // Written by the rollout controller (its own field manager), never here.
        installation: None,
    };
    if config_changed {
        status.remediation = None;
    }
    let hash = configuration.hash.clone();
    status.desired = Some(desired);
    if profile_changed {
        // A (re-)onboarding: Onboarded must be earned again.
        b.set(
            ONBOARDED,
            false,
            "Onboarding",
            format!("configuring with ConfigurationProfile {profile_name}"),
        );
    } else {
        b.keep(ONBOARDED);
    }

    // 5. Not running: everything waits for the heartbeat.
    if !alive {
        b.keep(DRIFTED);
        let msg = "the VM is not running (no heartbeat); onboarding or remediation continues when it runs".to_string();
        if was != Some(VmPhase::Pending) && was.is_some() {
            events.push(EventSpec {
                warning: true,
                reason: "HeartbeatLost",
                action: "Heartbeat",
                note: msg.clone(),
            });
        }
        return finish(
            status,
            b,
            VmPhase::Pending,
            "NoHeartbeat",
            msg,
            events,
            None,
            false,
        );
    }

    let desired_attempt = status.desired.as_ref().map_or(0, |d| d.remediation_attempt);
    let guest = old.guest.clone().unwrap_or_default();
    let applied = guest.applied_hash.as_deref() == Some(hash.as_str())
        && guest.applied_attempt == desired_attempt;

    // 6. The guest has not applied what is asked yet.
    if !applied {
        b.keep(DRIFTED);
        let msg = if status.remediation.as_ref().is_some_and(|r| r.attempts > 0) {
            format!(
                "remediating: waiting for the guest to re-apply configuration {hash} (attempt {desired_attempt})"
            )
        } else {
            format!(
                "configuring: waiting for the guest to apply configuration {hash} of ConfigurationProfile {profile_name}"
            )
        };
        return finish(
            status,
            b,
            VmPhase::InProgress,
            "Configuring",
            msg,
            events,
            requeue_after,
            false,
        );
    }

    let drift: Vec<String> = guest
        .services
        .iter()
        .filter(|s| !s.compliant)
        .map(|s| {
            if s.differences.is_empty() {
                format!("{}: not compliant", s.name)
            } else {
                format!("{}: {}", s.name, s.differences.join(", "))
            }
        })
        .collect();
    let was_drifted = is_true(&old.conditions, DRIFTED);

    // 7. Compliant.
    if drift.is_empty() {
        b.set(
            DRIFTED,
            false,
            "Compliant",
            "every service matches the profile",
        );
        if was_drifted {
            let attempts = old.remediation.as_ref().map_or(0, |r| r.attempts);
            events.push(EventSpec {
                warning: false,
                reason: "Remediated",
                action: "Remediate",
                note: format!("drift corrected; the VM is back on ConfigurationProfile {profile_name} ({attempts} remediation attempt(s))"),
            });
        }
        if !is_true(&b.conditions, ONBOARDED) {
            b.set(
                ONBOARDED,
                true,
                "Configured",
                format!("configured with ConfigurationProfile {profile_name}"),
            );
            events.push(EventSpec {
                warning: false,
                reason: "Onboarded",
                action: "Onboard",
                note: format!(
                    "configured with ConfigurationProfile {profile_name} (configuration {hash})"
                ),
            });
        }
        status.remediation = None;
        let msg = format!("configured with ConfigurationProfile {profile_name}; no drift");
        return finish(
            status,
            b,
            VmPhase::Configured,
            "Configured",
            msg,
            events,
            requeue_after,
            false,
        );
    }

    // 8. Drift.
    let summary = drift.join("; ");
    b.set(DRIFTED, true, "DriftDetected", summary.clone());
    if !was_drifted {
        events.push(EventSpec {
            warning: true,
            reason: "DriftDetected",
            action: "Observe",
            note: format!("drift from ConfigurationProfile {profile_name}: {summary}"),
        });
    }
    let mut rem = status.remediation.clone().unwrap_or_default();
    if rem.drift_since.is_none() {
        rem.drift_since = Some(time(input.now));
    }

    if policy.mode == RemediationMode::ReportOnly {
        status.remediation = Some(rem);
        let msg = format!(
            "drift is reported and not corrected (spec.remediation.mode=ReportOnly): {summary}"
        );
        return finish(
            status,
            b,
            VmPhase::Failed,
            "DriftNotRemediated",
            msg,
            events,
            requeue_after,
            false,
        );
    }

    // Auto: the guest has acted on every attempt so far and is still drifted.
    if rem.attempts >= policy.max_attempts {
        let msg = format!(
            "remediation failed after {} attempt(s): {summary}",
            rem.attempts
        );
        if was != Some(VmPhase::Failed) {
            events.push(EventSpec {
                warning: true,
                reason: "RemediationFailed",
                action: "Remediate",
                note: msg.clone(),
            });
        }
        status.remediation = Some(rem);
        return finish(
            status,
            b,
            VmPhase::Failed,
            "RemediationFailed",
            msg,
            events,
            requeue_after,
            false,
        );
    }
    let due = match (&rem.last_attempt_time, rem.attempts) {
        (_, 0) | (None, _) => input.now,
        (Some(last), n) => last.0 + policy.backoff_after(n),
    };
    if input.now >= due {
        rem.attempts += 1;
        rem.last_attempt_time = Some(time(input.now));
        if let Some(d) = status.desired.as_mut() {
            d.remediation_attempt += 1;
        }
        let msg = format!(
            "remediating: attempt {} of {}: {summary}",
            rem.attempts, policy.max_attempts
        );
        status.remediation = Some(rem);
        return finish(
            status,
            b,
            VmPhase::InProgress,
            "Remediating",
            msg,
            events,
            requeue_after,
            true,
        );
    }
    let wait = Duration::try_from(due.duration_since(input.now)).unwrap_or(Duration::ZERO);
    let msg = format!(
        "remediating: attempt {} of {} in {}: {summary}",
        rem.attempts + 1,
        policy.max_attempts,
        super::duration::format(wait)
    );
    status.remediation = Some(rem);
    let requeue = Some(requeue_after.map_or(wait, |r| r.min(wait)));
    finish(
        status,
        b,
        VmPhase::InProgress,
        "RemediationBackoff",
        msg,
        events,
        requeue,
        false,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::*;
    use crate::logic::resolve::resolve;
    use proptest::prelude::*;

    fn spec() -> VirtualMachineSpec {
        serde_json::from_value(serde_json::json!({
            "management": {"enabled": true, "profile": "production"},
            "os": {"type": "Linux", "image": {"publisher": "Canonical", "offer": "ubuntu-24_04-lts", "sku": "server"}},
            "placement": {"region": "westeurope"},
        }))
        .expect("spec")
    }

    fn config() -> EffectiveConfiguration {
        resolve(&ConfigurationProfileSpec::with_defaults(
            Environment::Production,
        ))
    }

    fn policy(mode: RemediationMode) -> RemediationPolicy {
        RemediationPolicy {
            mode,
            max_attempts: 3,
            initial_backoff: Duration::from_secs(30),
            max_backoff: Duration::from_secs(600),
        }
    }

    fn resolved(mode: RemediationMode) -> ProfileChoice {
        ProfileChoice::Resolved {
            name: "production".into(),
            generation: 1,
            configuration: config(),
            remediation: policy(mode),
            via_assignment: false,
            also_matched: vec![],
        }
    }

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).expect("ts")
    }

    fn run(
        spec: &VirtualMachineSpec,
        status: Option<&VirtualMachineStatus>,
        now: i64,
        alive: bool,
        mode: RemediationMode,
    ) -> Outcome {
        decide(Inputs {
            now: t(now),
            generation: Some(1),
            spec,
            status,
            profile: resolved(mode),
            image_problems: vec![],
            heartbeat: if alive {
                Heartbeat::Alive { renewed: t(now) }
            } else {
                Heartbeat::Missing { last: None }
            },
            grace: Duration::from_secs(300),
            assess_request: None,
            clock: crate::clock::Clock::real(),
        })
    }

    #[test]
    fn tracked_changes_become_events_once() {
        let s = spec();
        let o = run(&s, None, 0, true, RemediationMode::Auto);
        let mut st = o.status;
        guest_acts(&mut st, &[]);
        let changes = |n: usize| -> Vec<String> {
            (0..n)
                .map(|i| format!("t{i}: file /etc/f{i} modified"))
                .collect()
        };
        let tracked = |o: &Outcome| -> Vec<String> {
            o.events
                .iter()
                .filter(|e| e.reason == "ChangeTracked")
                .map(|e| e.note.clone())
                .collect()
        };
        st.guest.as_mut().expect("guest").changes = changes(2);
        let o = run(&s, Some(&st), 1, true, RemediationMode::Auto);
        let notes = tracked(&o);
        assert_eq!(notes, changes(2));
        let mut st2 = o.status.clone();
        st2.guest = st.guest.clone();
        let o = run(&s, Some(&st2), 2, true, RemediationMode::Auto);
        assert!(
            o.events.iter().all(|e| e.reason != "ChangeTracked"),
            "published twice"
        );
        st2.guest.as_mut().expect("guest").changes = changes(15);
        let o = run(&s, Some(&st2), 3, true, RemediationMode::Auto);
        let notes = tracked(&o);
        assert_eq!(
            notes,
            changes(15)[5..].to_vec(),
            "the newest 10 of the 13 new ones"
        );
        assert_eq!(o.status.last_tracked_change, changes(15).last().cloned());
    }

    /// The guest applies what is desired and reports `drifted` services as non-compliant.
    fn guest_acts(status: &mut VirtualMachineStatus, drifted: &[&str]) {
        let d = status.desired.clone().expect("desired");
        status.guest = Some(GuestState {
            applied_hash: d.configuration.map(|c| c.hash),
            applied_attempt: d.remediation_attempt,
            services: crate::logic::resolve::SERVICE_NAMES
                .iter()
                .map(|n| ServiceObservation {
                    name: n.to_string(),
                    compliant: !drifted.contains(n),
                    differences: if drifted.contains(n) {
                        vec!["running: want true, have false".into()]
                    } else {
                        vec![]
                    },
                })
                .collect(),
            ..Default::default()
        });
    }

    fn reasons(o: &Outcome) -> Vec<&'static str> {
        o.events.iter().map(|e| e.reason).collect()
    }

    #[test]
    fn onboarding_goes_in_progress_then_configured_with_one_onboarded_event() {
        let s = spec();
        let o = run(&s, None, 0, true, RemediationMode::Auto);
        assert_eq!(o.status.phase, Some(VmPhase::InProgress));
        let d = o.status.desired.clone().expect("desired");
        assert!(d.enforce);
        assert_eq!(d.configuration.map(|c| c.hash), Some(config().hash));
        let mut st = o.status;
        guest_acts(&mut st, &[]);
        let o = run(&s, Some(&st), 10, true, RemediationMode::Auto);
        assert_eq!(o.status.phase, Some(VmPhase::Configured));
        assert_eq!(reasons(&o), vec!["Onboarded"]);
        let mut st2 = o.status.clone();
        st2.guest = st.guest.clone();
        let again = run(&s, Some(&st2), 20, true, RemediationMode::Auto);
        assert!(
            again.events.is_empty(),
            "no repeated events: {:?}",
            again.events
        );
        // Same decision again: conditions keep their transition times.
        assert_eq!(again.status.conditions, o.status.conditions);
    }

    #[test]
    fn no_heartbeat_is_pending_and_desired_waits_for_the_guest() {
        let o = run(&spec(), None, 0, false, RemediationMode::Auto);
        assert_eq!(o.status.phase, Some(VmPhase::Pending));
        assert!(o.status.desired.is_some());
        assert!(
            o.status
                .conditions
                .iter()
                .any(|c| c.type_ == HEARTBEAT && c.status == "False")
        );
    }

    #[test]
    fn drift_is_remediated_with_backoff_then_fails_after_max_attempts() {
        let s = spec();
        let mut st = run(&s, None, 0, true, RemediationMode::Auto).status;
        guest_acts(&mut st, &[]);
        st = run(&s, Some(&st), 1, true, RemediationMode::Auto).status;
        assert_eq!(st.phase, Some(VmPhase::Configured));
        // Drift appears: detected, first attempt at once.
        guest_acts(&mut st, &["monitoring"]);
        let o = run(&s, Some(&st), 100, true, RemediationMode::Auto);
        assert_eq!(reasons(&o), vec!["DriftDetected"]);
        assert!(o.remediation_attempted);
        assert_eq!(o.status.phase, Some(VmPhase::InProgress));
        assert_eq!(
            o.status.desired.as_ref().map(|d| d.remediation_attempt),
            Some(1)
        );
        let mut st = o.status;
        // Waiting for the guest: nothing new.
        let o = run(&s, Some(&st), 101, true, RemediationMode::Auto);
        assert!(!o.remediation_attempted && o.events.is_empty());
        // Guest re-applied, still drifted: second attempt only after 30 s.
        guest_acts(&mut st, &["monitoring"]);
        let o = run(&s, Some(&st), 110, true, RemediationMode::Auto);
        assert!(!o.remediation_attempted);
        assert_eq!(o.requeue_after, Some(Duration::from_secs(20)));
        let o = run(&s, Some(&st), 130, true, RemediationMode::Auto);
        assert!(o.remediation_attempted);
        st = o.status;
        guest_acts(&mut st, &["monitoring"]);
        // Third attempt after 60 s more.
        assert!(!run(&s, Some(&st), 189, true, RemediationMode::Auto).remediation_attempted);
        let o = run(&s, Some(&st), 190, true, RemediationMode::Auto);
        assert!(o.remediation_attempted);
        st = o.status;
        guest_acts(&mut st, &["monitoring"]);
        let o = run(&s, Some(&st), 500, true, RemediationMode::Auto);
        assert_eq!(o.status.phase, Some(VmPhase::Failed));
        assert_eq!(reasons(&o), vec!["RemediationFailed"]);
        assert!(
            o.status
                .message
                .as_deref()
                .is_some_and(|m| m.contains("after 3 attempt(s)") && m.contains("monitoring"))
        );
        // Fixed by hand later: Configured and Remediated.
        let mut st = o.status;
        guest_acts(&mut st, &[]);
        let o = run(&s, Some(&st), 900, true, RemediationMode::Auto);
        assert_eq!(o.status.phase, Some(VmPhase::Configured));
        assert_eq!(reasons(&o), vec!["Remediated"]);
    }

    #[test]
    fn report_only_never_raises_the_attempt() {
        let s = spec();
        let mut st = run(&s, None, 0, true, RemediationMode::ReportOnly).status;
        guest_acts(&mut st, &["timeSync"]);
        let o = run(&s, Some(&st), 10, true, RemediationMode::ReportOnly);
        assert_eq!(o.status.phase, Some(VmPhase::Failed));
        assert_eq!(
            o.status
                .conditions
                .iter()
                .find(|c| c.type_ == READY)
                .map(|c| c.reason.as_str()),
            Some("DriftNotRemediated")
        );
        assert!(!o.remediation_attempted);
        assert_eq!(o.status.desired.map(|d| d.remediation_attempt), Some(0));
    }

    #[test]
    fn disabling_clears_directives_and_keeps_the_configuration() {
        let mut s = spec();
        let mut st = run(&s, None, 0, true, RemediationMode::Auto).status;
        guest_acts(&mut st, &["backup"]);
        st = run(&s, Some(&st), 5, true, RemediationMode::Auto).status;
        s.management.enabled = false;
        let o = run(&s, Some(&st), 6, true, RemediationMode::Auto);
        assert_eq!(o.status.phase, Some(VmPhase::NotManaged));
        let d = o.status.desired.clone().expect("kept");
        assert!(!d.enforce);
        assert_eq!(d.configuration.map(|c| c.hash), Some(config().hash));
        assert_eq!(o.status.remediation, None);
        assert!(!o.status.conditions.iter().any(|c| c.type_ == DRIFTED));
        assert_eq!(reasons(&o), vec!["ManagementDisabled"]);
    }

    #[test]
    fn unsupported_image_and_missing_profile_fail_with_the_reason() {
        let s = spec();
        let o = decide(Inputs {
            now: t(0),
            generation: Some(1),
            spec: &s,
            status: None,
            profile: resolved(RemediationMode::Auto),
            image_problems: vec![ImageProblem::CapabilityMissing {
                image: "a/b/c".into(),
                missing: vec![Capability::Hotpatch],
            }],
            heartbeat: Heartbeat::Alive { renewed: t(0) },
            grace: Duration::from_secs(300),
            assess_request: None,
            clock: crate::clock::Clock::real(),
        });
        assert_eq!(o.status.phase, Some(VmPhase::Failed));
        assert!(
            o.status
                .message
                .as_deref()
                .is_some_and(|m| m.contains("Hotpatch"))
        );
        assert!(
            o.status.desired.is_none(),
            "nothing is configured on an unsupported image"
        );
        let o = decide(Inputs {
            now: t(0),
            generation: Some(1),
            spec: &s,
            status: None,
            profile: ProfileChoice::Missing {
                name: "gone".into(),
            },
            image_problems: vec![],
            heartbeat: Heartbeat::Alive { renewed: t(0) },
            grace: Duration::from_secs(300),
            assess_request: None,
            clock: crate::clock::Clock::real(),
        });
        assert_eq!(o.status.phase, Some(VmPhase::Failed));
        assert!(
            o.status
                .message
                .as_deref()
                .is_some_and(|m| m.contains("gone"))
        );
    }

    fn assessed(status: &mut VirtualMachineStatus, at: i64, packages: Vec<(Classification, &str)>) {
        let id = status
            .desired
            .as_ref()
            .and_then(|d| d.assessment.as_ref())
            .map(|a| a.request_id.clone())
            .expect("a request");
        let g = status.guest.get_or_insert_with(Default::default);
        g.assessment = Some(GuestAssessment {
            request_id: id,
            status: OperationStatus::Succeeded,
            start_time: Some(Time(t(at))),
            finish_time: Some(Time(t(at))),
            packages: packages
                .into_iter()
                .map(|(c, n)| AvailablePackage {
                    name: n.into(),
                    version: "2".into(),
                    installed_version: None,
                    classification: c,
                })
                .collect(),
            reboot_pending: false,
            error: None,
        });
    }

    fn with_request(
        spec: &VirtualMachineSpec,
        status: Option<&VirtualMachineStatus>,
        now: i64,
        alive: bool,
        request: Option<&str>,
    ) -> Outcome {
        decide(Inputs {
            now: t(now),
            generation: Some(1),
            spec,
            status,
            profile: resolved(RemediationMode::Auto),
            image_problems: vec![],
            heartbeat: if alive {
                Heartbeat::Alive { renewed: t(now) }
            } else {
                Heartbeat::Missing { last: None }
            },
            grace: Duration::from_secs(300),
            assess_request: request.map(Into::into),
            clock: crate::clock::Clock::real(),
        })
    }

    #[test]
    fn periodic_assessment_runs_when_due_and_only_while_running() {
        let s = spec();
        let o = with_request(&s, None, 0, false, None);
        assert!(
            o.status
                .desired
                .as_ref()
                .and_then(|d| d.assessment.as_ref())
                .is_none(),
            "not while off"
        );
        let o = with_request(&s, None, 0, true, None);
        let first = o
            .status
            .desired
            .clone()
            .and_then(|d| d.assessment)
            .expect("assess at once");
        assert!(first.request_id.starts_with("periodic-"));
        let mut st = o.status;
        // In flight: no new request.
        let o = with_request(&s, Some(&st), 60, true, None);
        assert_eq!(
            o.status.desired.as_ref().and_then(|d| d.assessment.clone()),
            Some(first.clone())
        );
        assessed(
            &mut st,
            100,
            vec![
                (Classification::Security, "openssl"),
                (Classification::Critical, "kernel"),
                (Classification::Other, "vim"),
            ],
        );
        let o = with_request(&s, Some(&st), 200, true, None);
        let sum = o
            .status
            .patch_status
            .clone()
            .and_then(|p| p.available_patch_summary)
            .expect("summary");
        assert_eq!(
            (sum.critical_and_security_patch_count, sum.other_patch_count),
            (2, 1)
        );
        assert_eq!(
            sum.assessment_activity_id.as_deref(),
            Some(first.request_id.as_str())
        );
        assert_eq!(
            o.status.desired.as_ref().and_then(|d| d.assessment.clone()),
            Some(first.clone()),
            "not due yet"
        );
        assert_eq!(
            o.requeue_after.map(|d| d.as_secs() <= 24 * 3600 - 100),
            Some(true)
        );
        // 24h later it is due again.
        let o = with_request(&s, Some(&st), 100 + 24 * 3600, true, None);
        let next = o.status.desired.and_then(|d| d.assessment).expect("due");
        assert_ne!(next.request_id, first.request_id);
    }

    #[test]
    fn on_demand_assessment_is_taken_once_and_never_installs() {
        let s = spec();
        let mut st = with_request(&s, None, 0, true, None).status;
        assessed(&mut st, 1, vec![]);
        let o = with_request(&s, Some(&st), 10, true, Some("r1"));
        let d = o.status.desired.clone().expect("desired");
        assert_eq!(
            d.assessment.as_ref().map(|a| a.request_id.as_str()),
            Some("ondemand-r1")
        );
        assert!(d.installation.is_none());
        assert_eq!(
            o.events.iter().map(|e| e.reason).collect::<Vec<_>>(),
            vec!["AssessmentRequested"]
        );
        let mut st = o.status;
        assessed(&mut st, 11, vec![]);
        let o = with_request(&s, Some(&st), 12, true, Some("r1"));
        assert!(o.events.is_empty(), "the same request is not taken twice");
        assert_eq!(
            o.status
                .desired
                .and_then(|d| d.assessment)
                .and_then(|a| a.on_demand),
            Some("r1".into())
        );
    }

    proptest! {
        /// Whatever the guest reports, in any order, the attempt number only grows, by at most one per
        /// decision, never past maxAttempts within one episode, and only when the guest has caught up.
        #[test]
        fn remediation_attempts_are_bounded(steps in proptest::collection::vec((any::<bool>(), any::<bool>(), 0i64..200), 1..40)) {
            let s = spec();
            let mut st = run(&s, None, 0, true, RemediationMode::Auto).status;
            let mut now = 0;
            for (acts, drifted, dt) in steps {
                now += dt;
                if acts { guest_acts(&mut st, if drifted { &["monitoring"] } else { &[] }); }
                let before = st.desired.as_ref().map_or(0, |d| d.remediation_attempt);
                let caught_up = st.guest.as_ref().is_some_and(|g| g.applied_attempt == before);
                let o = run(&s, Some(&st), now, true, RemediationMode::Auto);
                let after = o.status.desired.as_ref().map_or(0, |d| d.remediation_attempt);
                prop_assert!(after == before || (after == before + 1 && caught_up && o.remediation_attempted));
                prop_assert!(o.status.remediation.as_ref().map_or(0, |r| r.attempts) <= 3);
                let guest = st.guest.clone();
                st = o.status;
                st.guest = guest;
            }
        }
    }
}
