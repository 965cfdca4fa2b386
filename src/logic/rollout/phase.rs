//! The rollout's phase, the record of its rings, its phase Events and its conditions.

use jiff::Timestamp;

use crate::api::{Condition, RingPhase, RingProgress, RolloutPhase};
use crate::logic::conditions::Conditions;
use crate::logic::duration::Earliest;
use crate::logic::events::EventSpec;

use super::slo::Slo;
use super::{HALTED, PAUSED, Run, SLO_AT_RISK};

pub(super) fn rollout_phase(
    run: &Run<'_>,
    rings: &[RingProgress],
    halted_ring: Option<usize>,
    wake: &mut Earliest<Timestamp>,
) -> RolloutPhase {
    let input = run.input;
    let now = input.now;
    if input.spec.rollback {
        RolloutPhase::RolledBack
    } else if run.terminal {
        run.old.phase.unwrap_or(RolloutPhase::Succeeded)
    } else if input.spec.abort {
        RolloutPhase::Aborted
    } else if input.blocked_by.is_some() || now < run.release {
        if now < run.release {
            wake.at(run.release);
        }
        RolloutPhase::Pending
    } else if halted_ring.is_some() || run.halted_before {
        RolloutPhase::Halted
    } else if rings
        .iter()
        .all(|r| matches!(r.phase, Some(RingPhase::Succeeded | RingPhase::Skipped)))
    {
        RolloutPhase::Succeeded
    } else if input.spec.paused {
        RolloutPhase::Paused
    } else {
        RolloutPhase::Progressing
    }
}

/// The rings to record: a finished rollout keeps its record as it was; a rollback marks every
/// started ring that had not succeeded.
pub(super) fn ring_record(run: &Run<'_>, mut rings: Vec<RingProgress>) -> Vec<RingProgress> {
    if run.terminal {
        return run.old.rings.clone();
    }
    if run.input.spec.rollback {
        for r in &mut rings {
            if r.phase != Some(RingPhase::Succeeded) && r.started_time.is_some() {
                r.phase = Some(RingPhase::RolledBack);
            }
        }
    }
    rings
}

/// The Event of a phase change (none for a rollout created Pending).
pub(super) fn event(
    run: &Run<'_>,
    phase: RolloutPhase,
    halted_ring: Option<usize>,
    rolling_back: usize,
) -> Option<EventSpec> {
    let input = run.input;
    let was = run.old.phase;
    if phase == was.unwrap_or(RolloutPhase::Pending) && was.is_some() {
        return None;
    }
    if was.is_none() && phase == RolloutPhase::Pending {
        return None;
    }
    let (warning, reason, note) = match phase {
        RolloutPhase::Halted => (
            true,
            "RolloutHalted",
            format!(
                "rollout halted in ring {}: failures exceed the health gate{}",
                halted_ring.map(|r| input.rings[r].name).unwrap_or_default(),
                if input.spec.rollback_on_failure {
                    "; the failed waves roll back"
                } else {
                    ""
                }
            ),
        ),
        RolloutPhase::Succeeded => (
            false,
            "RolloutSucceeded",
            "every ring passed its health gate".to_string(),
        ),
        RolloutPhase::RolledBack => (
            true,
            "RolloutRolledBack",
            format!(
                "rolling back: {rolling_back} VM(s) return to the versions recorded before the install"
            ),
        ),
        RolloutPhase::Paused => (
            false,
            "RolloutPaused",
            "paused: waves in flight finish, no new wave starts".to_string(),
        ),
        RolloutPhase::Aborted => (
            true,
            "RolloutAborted",
            "aborted (spec.abort): nothing more is installed and nothing is rolled back; installations already running finish".to_string(),
        ),
        RolloutPhase::Progressing => (false, "RolloutProgressing", "progressing".to_string()),
        RolloutPhase::Pending => (
            false,
            "RolloutPending",
            match &input.blocked_by {
                Some(b) => format!("waiting for rollout {b} to finish"),
                None => format!("waiting for the release time {}", run.release),
            },
        ),
    };
    Some(EventSpec {
        warning,
        reason,
        action: "Rollout",
        note,
    })
}

/// Halted, Paused and SLOAtRisk.
pub(super) fn conditions(
    run: &Run<'_>,
    phase: RolloutPhase,
    halted_ring: Option<usize>,
    computed: &[RingProgress],
    slo: &Slo,
) -> Vec<Condition> {
    let input = run.input;
    let mut c = Conditions::new(&run.old.conditions, input.generation, input.now);
    match halted_ring {
        Some(hr) => c.set(
            HALTED,
            true,
            "FailureBudgetExceeded",
            format!(
                "ring {}: {} of {} VMs failed (maxFailedPercent {}){}",
                input.rings[hr].name,
                computed[hr].failed,
                computed[hr].total,
                input.rings[hr].spec.health_gate.max_failed_percent,
                if input.spec.rollback_on_failure {
                    "; failed waves rolled back"
                } else {
                    ""
                }
            ),
        ),
        None => c.set(
            HALTED,
            false,
            "WithinBudget",
            "failures are within every ring's health gate",
        ),
    }
    let paused = phase == RolloutPhase::Paused;
    if paused {
        c.set(
            PAUSED,
            true,
            "PausedByUser",
            "spec.paused is true: no new wave starts",
        );
    } else {
        c.set(PAUSED, false, "NotPaused", "not paused");
    }
    if slo.withdrawn {
        c.set(
            SLO_AT_RISK,
            false,
            "Withdrawn",
            format!(
                "the release was {}: the SLO no longer applies ({} of {} eligible VMs on the manifest)",
                if phase == RolloutPhase::Aborted {
                    "aborted"
                } else {
                    "rolled back"
                },
                slo.on,
                slo.eligible
            ),
        );
        return c.into_vec();
    }
    c.set(
        SLO_AT_RISK,
        !slo.projected,
        if slo.projected {
            "OnTrack"
        } else {
            "ProjectedToMiss"
        },
        format!(
            "{} of {} eligible VMs on the manifest; target {}% by {}",
            slo.on, slo.eligible, slo.target, slo.deadline
        ),
    );
    c.into_vec()
}
