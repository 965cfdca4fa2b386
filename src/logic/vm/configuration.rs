//! The configuration verdict: management, profile, image, heartbeat, whether the guest applied
//! what is asked, drift and remediation. Each step either ends in a `Verdict` or lets the next
//! one look; the phase, `Ready` and the message are written once, from the verdict.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::{
    DesiredState, EffectiveConfiguration, PatchMode, RemediationMode, VirtualMachineStatus, VmPhase,
};
use crate::logic::catalog::ImageProblem;
use crate::logic::conditions::{Conditions, is_true};
use crate::logic::duration::{self, Earliest};
use crate::logic::text;

use super::heartbeat::CREDENTIAL_EXPIRED;
use super::{
    DRIFTED, EventSpec, HEARTBEAT, Heartbeat, IMAGE_SUPPORTED, Inputs, ONBOARDED, Onboarded,
    Outcome, PROFILE_RESOLVED, ProfileChoice, READY, RemediationPolicy,
};

/// The Heartbeat condition's reason (and the Event's) for a guest whose clock is off.
pub const CLOCK_SKEWED: &str = "ClockSkewed";

/// Where the VM stands, and why.
struct Verdict {
    phase: VmPhase,
    reason: &'static str,
    message: String,
    /// Requeue at the heartbeat's expiry (the VM's state may change then).
    watch_heartbeat: bool,
    /// Requeue after this long too (remediation backoff).
    wait: Option<Duration>,
    remediation_attempted: bool,
}

impl Verdict {
    fn new(phase: VmPhase, reason: &'static str, message: impl Into<String>) -> Self {
        Verdict {
            phase,
            reason,
            message: message.into(),
            watch_heartbeat: false,
            wait: None,
            remediation_attempted: false,
        }
    }

    fn watching_heartbeat(mut self) -> Self {
        self.watch_heartbeat = true;
        self
    }
}

/// One decision in the making.
struct Decision<'a> {
    input: &'a Inputs<'a>,
    old: &'a VirtualMachineStatus,
    conditions: Conditions<'a>,
    status: VirtualMachineStatus,
    events: Vec<EventSpec>,
    onboarded: Option<Onboarded>,
}

/// The profile the VM is configured with, once resolved.
struct Resolved {
    name: String,
    generation: i64,
    configuration: std::sync::Arc<EffectiveConfiguration>,
    policy: RemediationPolicy,
}

pub(super) fn decide(input: &Inputs<'_>) -> Outcome {
    let empty = VirtualMachineStatus::default();
    let old = input.status.unwrap_or(&empty);
    let mut d = Decision {
        input,
        old,
        conditions: Conditions::new(&old.conditions, input.generation, input.now),
        status: VirtualMachineStatus {
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
        },
        events: Vec::new(),
        onboarded: None,
    };
    // Heartbeat first: it is reported whatever else happens.
    let heartbeat_requeue = d.heartbeat();
    let verdict = d.verdict();
    let mut requeue = Earliest::default();
    if verdict.watch_heartbeat {
        requeue.maybe(heartbeat_requeue);
    }
    requeue.maybe(verdict.wait);
    d.conditions.set(
        READY,
        verdict.phase == VmPhase::Configured,
        verdict.reason,
        verdict.message.clone(),
    );
    let mut status = d.status;
    status.conditions = d.conditions.into_sorted();
    status.phase = Some(verdict.phase);
    status.message = Some(verdict.message.into());
    Outcome {
        status,
        events: d.events,
        requeue_after: requeue.get(),
        remediation_attempted: verdict.remediation_attempted,
        onboarded: d.onboarded,
        held_for_first_heartbeat: false,
    }
}

impl Decision<'_> {
    fn was(&self) -> Option<VmPhase> {
        self.old.phase
    }

    /// The Heartbeat condition; the requeue at the Lease's expiry while alive.
    fn heartbeat(&mut self) -> Option<Duration> {
        match &self.input.heartbeat {
            Heartbeat::Alive {
                renewed,
                clock_skew,
            } => {
                let expires = duration::add(*renewed, self.input.grace);
                match clock_skew {
                    None => self.conditions.set(
                        HEARTBEAT,
                        true,
                        "LeaseRenewed",
                        "the guest renews its heartbeat Lease",
                    ),
                    Some(skew) => {
                        let msg = format!(
                            "the guest renews its heartbeat Lease, but its clock is {} the controller's (tolerance {}): the controller times the guest's heartbeats, assessments and installs with its own clock; fix the guest's time synchronisation (chrony, systemd-timesyncd)",
                            super::heartbeat::describe_skew(*skew),
                            duration::format(super::heartbeat::MAX_CLOCK_SKEW),
                        );
                        let was_skewed = self
                            .old
                            .conditions
                            .iter()
                            .any(|c| c.type_ == HEARTBEAT && c.reason == CLOCK_SKEWED);
                        if !was_skewed {
                            self.events.push(EventSpec::warning(
                                CLOCK_SKEWED,
                                "Heartbeat",
                                msg.clone(),
                            ));
                        }
                        self.conditions.set(HEARTBEAT, true, CLOCK_SKEWED, msg);
                    }
                }
                Some(duration::until(self.input.now, expires) + Duration::from_secs(1))
            }
            Heartbeat::Missing { last } => {
                let (reason, msg) = super::heartbeat::silent(
                    *last,
                    self.input.grace,
                    super::heartbeat::credential_expired(self.old, self.input.now),
                    self.input.guests_refused,
                );
                self.conditions.set(HEARTBEAT, false, reason, msg);
                None
            }
        }
    }

    fn verdict(&mut self) -> Verdict {
        if !self.input.spec.management.enabled {
            return self.disabled();
        }
        let profile = match self.profile() {
            Ok(p) => p,
            Err(v) => return v,
        };
        let profile_changed = self.status.profile.as_deref() != Some(profile.name.as_str());
        self.status.profile = Some(profile.name.as_str().into());
        if let Some(v) = self.image() {
            return v;
        }
        self.desire(&profile, profile_changed);
        if !matches!(self.input.heartbeat, Heartbeat::Alive { .. }) {
            return self.not_running();
        }
        self.guest_state(&profile)
    }

    /// Management disabled: drift monitoring stops at once, directives are cleared, nothing on
    /// the guest is undone.
    fn disabled(&mut self) -> Verdict {
        if let Some(d) = self.status.desired.as_mut() {
            d.enforce = false;
            d.assessment = None;
            d.installation = None;
        }
        self.status.remediation = None;
        self.conditions.keep(PROFILE_RESOLVED);
        self.conditions.keep(ONBOARDED);
        if self.was() != Some(VmPhase::NotManaged) && self.was().is_some() {
            self.events.push(EventSpec::normal(
                "ManagementDisabled",
                "Disable",
                "management disabled: drift monitoring stopped; everything configured on the guest stays as it is",
            ));
        }
        Verdict::new(
            VmPhase::NotManaged,
            "ManagementDisabled",
            "management is disabled (spec.management.enabled=false): drift is not monitored and nothing on the guest is changed",
        )
    }

    /// The profile, or why there is none (Failed).
    fn profile(&mut self) -> Result<Resolved, Verdict> {
        let (reason, condition, msg) = match &self.input.profile {
            ProfileChoice::Resolved {
                name,
                generation,
                configuration,
                remediation,
                via_assignment,
                also_matched,
                outranked_by,
            } => {
                let mut msg = if *via_assignment {
                    format!("onboarded to ConfigurationProfile {name} by its assignment selector")
                } else {
                    format!("ConfigurationProfile {name} found")
                };
                if let Some(high) = outranked_by {
                    msg.push_str(&format!(
                        "; it stays with {name} although {high} now ranks first: a VM onboarded by assignment keeps its profile while that profile's assignment matches it (to move it, set spec.management.profile, or disable and re-enable management)"
                    ));
                    let rest: Vec<&String> = also_matched.iter().filter(|o| *o != high).collect();
                    if !rest.is_empty() {
                        msg.push_str(&format!(
                            "; the assignments of {} also match",
                            rest.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                        ));
                    }
                } else if !also_matched.is_empty() {
                    msg.push_str(&format!(
                        "; the assignments of {} also match this VM (when a VM is onboarded the highest priority, then the first name, wins; it then keeps its profile)",
                        also_matched.join(", ")
                    ));
                }
                let reason = if also_matched.is_empty() {
                    "Resolved"
                } else {
                    "ResolvedWithOverlap"
                };
                self.conditions.set(PROFILE_RESOLVED, true, reason, msg);
                return Ok(Resolved {
                    name: name.clone(),
                    generation: *generation,
                    configuration: configuration.clone(),
                    policy: remediation.clone(),
                });
            }
            ProfileChoice::Missing { name } => (
                "ProfileNotFound",
                format!("ConfigurationProfile {name} (spec.management.profile) does not exist"),
                format!(
                    "ConfigurationProfile {name} named in spec.management.profile does not exist; create it or name another profile"
                ),
            ),
            ProfileChoice::Unassigned => (
                "NoProfile",
                "spec.management.profile is unset and no ConfigurationProfile assignment matches the VM".to_string(),
                "no profile: set spec.management.profile, or give a ConfigurationProfile an assignment that matches this VM".to_string(),
            ),
        };
        self.conditions
            .set(PROFILE_RESOLVED, false, reason, condition);
        self.conditions.keep(ONBOARDED);
        if self.was() != Some(VmPhase::Failed) {
            self.events
                .push(EventSpec::warning(reason, "Onboard", msg.clone()));
        }
        Err(Verdict::new(VmPhase::Failed, reason, msg))
    }

    /// The image must support what the VM asks for.
    fn image(&mut self) -> Option<Verdict> {
        let problems = &self.input.image_problems;
        let Some(first) = problems.first() else {
            self.conditions.set(
                IMAGE_SUPPORTED,
                true,
                "Supported",
                "the image supports the patch mode and the capabilities asked for",
            );
            return None;
        };
        let msg = problems
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        let reason = match first {
            ImageProblem::PatchModeUnsupported { .. } => "PatchModeUnsupported",
            ImageProblem::CapabilityMissing { .. } => "CapabilityMissing",
        };
        self.conditions
            .set(IMAGE_SUPPORTED, false, reason, msg.clone());
        self.conditions.keep(ONBOARDED);
        let reported = self.was() == Some(VmPhase::Failed)
            && self
                .old
                .conditions
                .iter()
                .any(|c| c.type_ == IMAGE_SUPPORTED && c.status == "False");
        if !reported {
            self.events.push(EventSpec::warning(
                "UnsupportedImage",
                "Onboard",
                msg.clone(),
            ));
        }
        Some(Verdict::new(VmPhase::Failed, reason, msg))
    }

    /// What the guest should apply. A new configuration starts a new remediation count; a new
    /// profile makes Onboarded to be earned again.
    fn desire(&mut self, p: &Resolved, profile_changed: bool) {
        let prev = self.status.desired.clone().unwrap_or_default();
        let config_changed = prev.configuration.as_ref().map(|c| c.hash.as_str())
            != Some(p.configuration.hash.as_str());
        if config_changed {
            self.status.remediation = None;
        }
        self.status.desired = Some(Box::new(DesiredState {
            profile: p.name.as_str().into(),
            profile_generation: p.generation,
            configuration: Some(p.configuration.clone()),
            remediation_attempt: prev.remediation_attempt,
            enforce: true,
            assessment: prev.assessment.clone(),
            // Written by the rollout controller (its own field manager), never here.
            installation: None,
            release_assessment: None,
        }));
        if profile_changed {
            self.conditions.set(
                ONBOARDED,
                false,
                "Onboarding",
                format!("configuring with ConfigurationProfile {}", p.name),
            );
        } else {
            self.conditions.keep(ONBOARDED);
        }
    }

    /// Not running: everything waits for the heartbeat.
    fn not_running(&mut self) -> Verdict {
        self.conditions.keep(DRIFTED);
        if let Some(msg) = super::heartbeat::rebooting(self.old) {
            if self.was() != Some(VmPhase::Pending) && self.was().is_some() {
                self.events
                    .push(EventSpec::normal("Rebooting", "Reboot", msg.clone()));
            }
            self.conditions
                .set(HEARTBEAT, false, "Rebooting", msg.clone());
            return Verdict::new(VmPhase::Pending, "Rebooting", msg);
        }
        if let Some(expired) = super::heartbeat::credential_expired(self.old, self.input.now) {
            let was = self
                .old
                .conditions
                .iter()
                .any(|c| c.type_ == HEARTBEAT && c.reason == CREDENTIAL_EXPIRED);
            if !was {
                self.events.push(EventSpec::warning(
                    CREDENTIAL_EXPIRED,
                    "Heartbeat",
                    expired.clone(),
                ));
            }
            return Verdict::new(VmPhase::Pending, CREDENTIAL_EXPIRED, expired);
        }
        let (reason, msg) = super::heartbeat::pending(self.input.guests_refused);
        if self.was() != Some(VmPhase::Pending) && self.was().is_some() {
            self.events.push(EventSpec::warning(
                "HeartbeatLost",
                "Heartbeat",
                msg.clone(),
            ));
        }
        let mut verdict = Verdict::new(VmPhase::Pending, reason, msg);
        // Wake when the credential expires, to say so.
        verdict.wait = self
            .old
            .guest
            .as_ref()
            .and_then(|g| g.credential_expires_at.as_ref())
            .filter(|at| at.0 > self.input.now)
            .map(|at| duration::until(self.input.now, at.0) + Duration::from_secs(1));
        verdict
    }

    /// Running: has the guest applied what is asked, and does it match?
    fn guest_state(&mut self, p: &Resolved) -> Verdict {
        let hash = &p.configuration.hash;
        let attempt = self
            .status
            .desired
            .as_ref()
            .map_or(0, |d| d.remediation_attempt);
        let guest = self.old.guest.clone().unwrap_or_default();
        let applied = guest.applied_hash.as_deref() == Some(hash.as_str())
            && guest.applied_attempt == attempt;
        if !applied {
            self.conditions.keep(DRIFTED);
            let attempts = self.status.remediation.as_ref().map_or(0, |r| r.attempts);
            if attempts > 0 {
                return remediating(attempts, p.policy.max_attempts, hash).watching_heartbeat();
            }
            let msg = format!(
                "configuring: waiting for the guest to apply configuration {hash} of ConfigurationProfile {}",
                p.name
            );
            return Verdict::new(VmPhase::InProgress, "Configuring", msg).watching_heartbeat();
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
        if drift.is_empty() {
            self.compliant(p)
        } else {
            // Guest text: one printable line, bounded (it reaches messages, Events and logs).
            self.drifted(p, &text::safe(&drift.join("; "), text::MESSAGE))
        }
    }

    fn compliant(&mut self, p: &Resolved) -> Verdict {
        let name = &p.name;
        self.conditions.set(
            DRIFTED,
            false,
            "Compliant",
            "every service matches the profile",
        );
        if is_true(&self.old.conditions, DRIFTED) {
            let attempts = self.old.remediation.as_ref().map_or(0, |r| r.attempts);
            self.events.push(EventSpec::normal(
                "Remediated",
                "Remediate",
                format!("drift corrected; the VM is back on ConfigurationProfile {name} ({attempts} remediation attempt(s))"),
            ));
        }
        if !self.conditions.is_true(ONBOARDED) {
            self.conditions.set(
                ONBOARDED,
                true,
                "Configured",
                format!("configured with ConfigurationProfile {name}"),
            );
            self.onboarded = Some(Onboarded {
                profile: name.clone(),
                hash: p.configuration.hash.clone(),
            });
        }
        self.status.remediation = None;
        Verdict::new(
            VmPhase::Configured,
            "Configured",
            format!("configured with ConfigurationProfile {name}; no drift"),
        )
        .watching_heartbeat()
    }

    /// Drift: reported (ReportOnly), or remediated with backoff until `maxAttempts` (Auto).
    fn drifted(&mut self, p: &Resolved, summary: &str) -> Verdict {
        self.conditions
            .set(DRIFTED, true, "DriftDetected", summary.to_string());
        if !is_true(&self.old.conditions, DRIFTED) {
            self.events.push(EventSpec::warning(
                "DriftDetected",
                "Observe",
                format!("drift from ConfigurationProfile {}: {summary}", p.name),
            ));
        }
        let mut rem = self.status.remediation.clone().unwrap_or_default();
        if rem.drift_since.is_none() {
            rem.drift_since = Some(Time(self.input.now));
        }
        let policy = &p.policy;
        let verdict = if policy.mode == RemediationMode::ReportOnly {
            Verdict::new(
                VmPhase::Failed,
                "DriftNotRemediated",
                format!(
                    "drift is reported and not corrected (spec.remediation.mode=ReportOnly): {summary}"
                ),
            )
        } else if rem.attempts >= policy.max_attempts {
            // The guest has acted on every attempt so far and is still drifted.
            let msg = format!(
                "remediation failed after {} attempt(s): {summary}",
                rem.attempts
            );
            if self.was() != Some(VmPhase::Failed) {
                self.events.push(EventSpec::warning(
                    "RemediationFailed",
                    "Remediate",
                    msg.clone(),
                ));
            }
            Verdict::new(VmPhase::Failed, "RemediationFailed", msg)
        } else {
            self.remediate(policy, &mut rem, summary, &p.configuration.hash)
        };
        self.status.remediation = Some(rem);
        verdict.watching_heartbeat()
    }

    /// The next remediation attempt, now or after the backoff.
    fn remediate(
        &mut self,
        policy: &RemediationPolicy,
        rem: &mut crate::api::RemediationStatus,
        summary: &str,
        hash: &str,
    ) -> Verdict {
        let now = self.input.now;
        let due = match (&rem.last_attempt_time, rem.attempts) {
            (_, 0) | (None, _) => now,
            (Some(last), n) => last.0 + policy.backoff_after(n),
        };
        if now >= due {
            rem.attempts += 1;
            rem.last_attempt_time = Some(Time(now));
            if let Some(d) = self.status.desired.as_mut() {
                d.remediation_attempt += 1;
            }
            // What the next decision says while the guest re-applies (the drift is in the
            // Drifted condition): a decision stands on its own write.
            let mut v = remediating(rem.attempts, policy.max_attempts, hash);
            v.remediation_attempted = true;
            return v;
        }
        let wait = duration::until(now, due);
        let mut v = Verdict::new(
            VmPhase::InProgress,
            "RemediationBackoff",
            format!(
                "remediating: attempt {} of {} in {}: {summary}",
                rem.attempts + 1,
                policy.max_attempts,
                duration::format(wait)
            ),
        );
        v.wait = Some(wait);
        v
    }
}

/// Remediation attempt `attempt` of `max` is out: the guest is asked to re-apply `hash`.
fn remediating(attempt: i32, max: i32, hash: &str) -> Verdict {
    Verdict::new(
        VmPhase::InProgress,
        "Remediating",
        format!(
            "remediating: attempt {attempt} of {max}: waiting for the guest to re-apply configuration {hash}"
        ),
    )
}
