//! The SLO: eligible VMs (in a ring, not skipped) on the manifest by release + `slo.within`, and
//! a projection of whether the rings finish in time.

use jiff::Timestamp;

use crate::api::{RingPhase, RingProgress, RolloutPhase, SloStatus};
use crate::logic::duration::{Earliest, add, parse_or};
use crate::logic::events::EventSpec;

use super::Run;
use super::state::VmState;

/// The SLO figures of this decision.
pub(super) struct Slo {
    pub status: SloStatus,
    pub eligible: usize,
    pub on: usize,
    pub target: usize,
    pub deadline: Timestamp,
    pub projected: bool,
    /// The release was rolled back or aborted: the SLO no longer applies.
    pub withdrawn: bool,
}

/// When the rings would finish: each by its deadline (the later of start-not-before and now,
/// plus the ring's deadline, plus bake), a finished ring at its completion plus bake.
fn estimated_finish(run: &Run<'_>, computed: &[RingProgress]) -> Timestamp {
    let input = run.input;
    let mut est = run.release;
    for (ri, r) in computed.iter().enumerate() {
        let times = &run.times[ri];
        if r.phase == Some(RingPhase::Skipped) {
            continue;
        }
        if r.phase == Some(RingPhase::Succeeded) {
            est = r
                .completed_time
                .as_ref()
                .map_or(est, |c| add(c.0, times.bake));
            continue;
        }
        let deferral = if input.spec.expedite {
            std::time::Duration::ZERO
        } else {
            times.deferral
        };
        let start = add(run.release, deferral)
            .max(est)
            .max(r.started_time.as_ref().map_or(est, |s| s.0));
        let finish = add(start, times.deadline).max(input.now);
        est = add(finish, times.bake);
    }
    est
}

pub(super) fn project(
    run: &Run<'_>,
    computed: &[RingProgress],
    states: &[VmState],
    phase: RolloutPhase,
    wake: &mut Earliest<Timestamp>,
    events: &mut Vec<EventSpec>,
) -> Slo {
    let input = run.input;
    let spec = input.spec;
    let eligible: Vec<usize> = (0..input.vms.len())
        .filter(|i| input.vms[*i].ring.is_some() && !states[*i].is_skipped())
        .collect();
    let on = eligible.iter().filter(|i| states[**i].is_done()).count();
    let within = parse_or(
        &spec.slo.within,
        std::time::Duration::ZERO,
        format_args!("PatchRollout {}", input.name),
        "spec.slo.within",
    );
    let deadline = add(run.release, within);
    let target = spec.slo.target_percent.clamp(1, 100) as usize;
    let met = eligible.is_empty() || on * 100 >= target * eligible.len();
    // Rolled back or aborted by a person: the release is withdrawn, not at risk.
    let withdrawn = matches!(phase, RolloutPhase::RolledBack | RolloutPhase::Aborted);
    let projected = met
        || withdrawn
        || (!matches!(phase, RolloutPhase::Halted)
            && input.now <= deadline
            && estimated_finish(run, computed) <= deadline);
    let percent = if eligible.is_empty() {
        "100%".to_string()
    } else {
        format!("{:.1}%", on as f64 * 100.0 / eligible.len() as f64)
    };
    if !projected && run.old.slo.as_ref().and_then(|s| s.projected_to_meet) != Some(false) {
        events.push(EventSpec::warning(
            "SLOAtRisk",
            "Project",
            format!(
                "the projection misses the target: {}% of {} eligible VMs on the manifest by {} (now {} on it)",
                target,
                eligible.len(),
                deadline,
                on
            ),
        ));
    }
    if !met && input.now < deadline {
        wake.at(deadline);
    }
    Slo {
        status: SloStatus {
            eligible: eligible.len() as i32,
            on_manifest: on as i32,
            percent,
            deadline: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                deadline,
            )),
            projected_to_meet: (!withdrawn).then_some(projected),
        },
        withdrawn,
        eligible: eligible.len(),
        on,
        target,
        deadline,
        projected,
    }
}
