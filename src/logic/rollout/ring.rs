//! One ring of the rollout: when it may start, its waves, its health gate and its phase.

use std::collections::HashMap;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::api::{RingPhase, RingProgress};
use crate::logic::duration::add;
use crate::logic::events::EventSpec;
use crate::logic::planner::{self, Limits, Plan, Topology};

use super::state::{self, VmState};
use super::{Acc, Run, manifest, waves};

/// A ring's durations, parsed once per decision.
#[derive(Clone, Debug)]
pub(super) struct RingTimes {
    pub deferral: Duration,
    pub deadline: Duration,
    pub bake: Duration,
    pub healthy_for: Duration,
    pub reboot_timeout: Duration,
}

/// `maxUnavailable` of a ring of `total` VMs (a percentage rounds down, but at least 1).
pub fn max_unavailable(v: &IntOrString, total: usize) -> usize {
    match v {
        IntOrString::Int(n) => (*n).max(1) as usize,
        IntOrString::String(s) => {
            let pct: usize = s.trim_end_matches('%').parse().unwrap_or_else(|_| {
                tracing::warn!(field = "spec.maxUnavailable", value = %s, "not a count or a percentage; using 10%");
                10
            });
            (total * pct / 100).max(1)
        }
    }
}

/// Failures a ring tolerates: `maxFailedPercent` of its eligible members, rounded down.
pub fn max_failed(percent: i32, total: usize) -> usize {
    total * percent.clamp(0, 100) as usize / 100
}

/// What was decided for one ring.
pub(super) struct Decided {
    pub progress: RingProgress,
    /// When its bake ended (the next ring may start from then); None while it runs.
    pub done: Option<Timestamp>,
}

/// The ring's VMs, by index into the input's VMs.
struct Members {
    all: Vec<usize>,
    /// Taking part (not skipped).
    eligible: Vec<usize>,
}

/// The ring was promoted: no deferral and no bake.
fn promoted(run: &Run<'_>, ri: usize) -> bool {
    let name = run.input.rings[ri].name;
    run.input.spec.promoted_rings.iter().any(|r| r == name)
}

/// The ring is passed over by this rollout.
fn skipped(run: &Run<'_>, ri: usize) -> bool {
    let name = run.input.rings[ri].name;
    run.input.spec.skipped_rings.iter().any(|r| r == name)
}

/// When the ring may start: after the release plus its deferral (none when expedited), and after
/// the previous ring's bake. None while the previous ring runs.
fn start_not_before(
    run: &Run<'_>,
    ri: usize,
    previous_done: Option<Timestamp>,
) -> Option<Timestamp> {
    let deferral = if run.input.spec.expedite || promoted(run, ri) {
        Duration::ZERO
    } else {
        run.times[ri].deferral
    };
    previous_done.map(|d| add(run.release, deferral).max(d))
}

pub(super) fn decide(
    run: &Run<'_>,
    ri: usize,
    previous_done: Option<Timestamp>,
    acc: &mut Acc,
) -> Decided {
    let input = run.input;
    let now = input.now;
    let ring = &input.rings[ri];
    let prev = run
        .old
        .rings
        .iter()
        .find(|r| r.name == ring.name)
        .cloned()
        .unwrap_or_default();
    let mut p = RingProgress {
        name: ring.name.to_string(),
        ..prev.clone()
    };
    let all: Vec<usize> = (0..input.vms.len())
        .filter(|i| input.vms[*i].ring == Some(ri))
        .collect();
    let skip = skipped(run, ri) && !run.terminal;
    if skip {
        for i in &all {
            if matches!(acc.states[*i], VmState::Waiting(_)) {
                acc.states[*i] = VmState::Skipped(format!(
                    "ring {} is skipped by this rollout (spec.skippedRings)",
                    ring.name
                ));
            }
        }
    }
    super::attempts::apply(run, ri, &all, &prev, &mut p, acc);
    p.promoted = promoted(run, ri);
    if p.promoted && !prev.promoted && !run.terminal {
        acc.events.push(EventSpec::normal(
            "RingPromoted",
            "Promote",
            format!(
                "ring {} promoted: its deferral and bake time are skipped",
                ring.name
            ),
        ));
    }
    let eligible: Vec<usize> = all
        .iter()
        .copied()
        .filter(|i| !acc.states[*i].is_skipped())
        .collect();
    let members = Members { all, eligible };
    let not_before = start_not_before(run, ri, previous_done);
    p.start_not_before = not_before.map(Time);
    // A deadline of 0s (Autopatch's Test ring) means "at once", not a deadline to track.
    let deadline = run.times[ri].deadline;
    p.deadline = not_before
        .filter(|_| !deadline.is_zero())
        .map(|n| Time(add(n, deadline)));
    p.total = members.eligible.len() as i32;
    // The manifest is frozen from assessments: the first ring waits until every running,
    // eligible member of it has reported one.
    let unassessed = acc.manifest.is_none()
        && members.eligible.iter().any(|i| {
            let vm = &input.vms[*i];
            vm.running && manifest::freeze_assessment(input, vm).is_none()
        });
    // VMs that read snapshots are asked for an assessment against the release's snapshot once
    // the first ring is due.
    if acc.manifest.is_none() && run.active && !skip && not_before.is_some_and(|n| now >= n) {
        manifest::ask_release_assessments(run, acc);
    }
    let may_start = run.active && !skip && !unassessed && not_before.is_some_and(|n| now >= n);
    if let Some(n) = not_before.filter(|n| now < *n) {
        acc.wake.at(n);
    }
    // The first ring starting freezes the manifest.
    if may_start && acc.manifest.is_none() {
        let m = manifest::freeze_manifest(input, now);
        acc.events.push(manifest::frozen_event(&m));
        acc.manifest = Some(m);
        state::refresh_waiting(run, acc.manifest.as_ref(), &mut acc.states, &mut acc.wake);
    }
    if may_start && p.started_time.is_none() {
        p.started_time = Some(Time(now));
        acc.events.push(EventSpec::normal(
            "RingStarted",
            "Start",
            format!(
                "ring {} started ({} VMs)",
                ring.name,
                members.eligible.len()
            ),
        ));
    }
    let gate = Gate {
        started: p.started_time.is_some() && may_start,
        paused: ring.spec.paused || input.spec.paused,
    };
    let (plan, new_wave) = plan_and_start(run, ri, &members.eligible, gate, acc);
    let why = Waiting {
        started: p.started_time.is_some(),
        may_start,
        not_before,
        unassessed,
        paused: gate.paused,
        halted: plan.halted,
    };
    explain_waiting(
        run,
        ri,
        &members.eligible,
        &why,
        &plan.reasons,
        &mut acc.states,
    );
    p.waves = waves::record(run, &prev, &members.all, &new_wave, acc);
    count(&mut p, &members.eligible, &acc.states);
    if skip {
        let done = pass_over(run, ri, &prev, &mut p, previous_done, acc);
        return Decided { progress: p, done };
    }
    let done = finish(run, ri, &prev, &mut p, &plan, &members.eligible, acc);
    Decided { progress: p, done }
}

/// A skipped ring: Skipped once nothing of it is installing (the next ring follows the previous
/// one's end), else Progressing while its waves in flight finish.
fn pass_over(
    run: &Run<'_>,
    ri: usize,
    prev: &RingProgress,
    p: &mut RingProgress,
    previous_done: Option<Timestamp>,
    acc: &mut Acc,
) -> Option<Timestamp> {
    let phase = if p.in_progress == 0 {
        RingPhase::Skipped
    } else {
        RingPhase::Progressing
    };
    if phase == RingPhase::Skipped && prev.phase != Some(RingPhase::Skipped) {
        acc.events.push(EventSpec::normal(
            "RingSkipped",
            "Skip",
            format!(
                "ring {} skipped (spec.skippedRings): {} of its VMs patched before, the others are not patched by this rollout",
                run.input.rings[ri].name, p.succeeded
            ),
        ));
    }
    p.phase = Some(phase);
    if phase == RingPhase::Skipped {
        previous_done
    } else {
        None
    }
}

#[derive(Clone, Copy)]
struct Gate {
    /// The ring started and may run now.
    started: bool,
    paused: bool,
}

/// A plan with the reasons the waiting VMs it could not take are not ready.
struct Planned {
    halted: bool,
    done: bool,
    reasons: HashMap<usize, String>,
}

/// Plan the ring and write directives for the VMs that start now (one new wave).
fn plan_and_start(
    run: &Run<'_>,
    ri: usize,
    eligible: &[usize],
    gate: Gate,
    acc: &mut Acc,
) -> (Planned, Vec<usize>) {
    let input = run.input;
    let ring = &input.rings[ri];
    let topo = Topology::new(
        &eligible
            .iter()
            .map(|i| input.vms[*i].placement.clone())
            .collect::<Vec<_>>(),
        &input.settings.pairs,
    );
    let planner_states: Vec<_> = eligible.iter().map(|i| acc.states[*i].planner()).collect();
    let mut reasons: HashMap<usize, String> = HashMap::new();
    for i in eligible {
        match &acc.states[*i] {
            VmState::Waiting(None) => {
                if let Some(r) = state::not_ready(run, &input.vms[*i], &mut acc.wake) {
                    reasons.insert(*i, r);
                }
            }
            // Already says why it may not start (a retry's next window, no assessment).
            VmState::Waiting(Some(r)) => {
                reasons.insert(*i, r.clone());
            }
            _ => {}
        }
    }
    let ready =
        |v: u32| !gate.paused && gate.started && !reasons.contains_key(&eligible[v as usize]);
    let limits = Limits {
        max_unavailable: max_unavailable(&ring.spec.max_unavailable, eligible.len()),
        max_failed: max_failed(ring.spec.health_gate.max_failed_percent, eligible.len()),
    };
    let plan: Plan = planner::plan(&topo, &planner_states, &ready, limits);
    let mut new_wave = Vec::new();
    if !plan.halted && run.active {
        for v in &plan.start {
            let i = eligible[*v as usize];
            if let Some(write) = waves::directive(run, i, acc) {
                acc.writes.push(write);
                acc.states[i] = VmState::Patching;
                new_wave.push(i);
            }
        }
    }
    let planned = Planned {
        halted: plan.halted,
        done: plan.done,
        reasons,
    };
    (planned, new_wave)
}

/// What a waiting VM of the ring waits for.
struct Waiting {
    started: bool,
    may_start: bool,
    not_before: Option<Timestamp>,
    unassessed: bool,
    paused: bool,
    halted: bool,
}

fn explain_waiting(
    run: &Run<'_>,
    ri: usize,
    eligible: &[usize],
    why: &Waiting,
    reasons: &HashMap<usize, String>,
    states: &mut [VmState],
) {
    let input = run.input;
    let ring = &input.rings[ri];
    let now = input.now;
    for i in eligible {
        if states[*i] != VmState::Waiting(None) {
            continue;
        }
        let reason = if !why.started || !why.may_start {
            match why.not_before {
                Some(n) if now >= n && why.unassessed && run.active => {
                    super::manifest::waiting_for_assessments(run, ring.name, &input.vms[*i])
                }
                Some(n) if now < n => format!("ring {} starts at {}", ring.name, n),
                _ if input.blocked_by.is_some() => format!(
                    "waiting for rollout {}",
                    input.blocked_by.clone().unwrap_or_default()
                ),
                _ => format!("ring {} waits for the previous ring", ring.name),
            }
        } else if why.paused {
            if ring.spec.paused {
                format!("ring {} is paused", ring.name)
            } else {
                "the rollout is paused".to_string()
            }
        } else if why.halted {
            format!("ring {} is halted", ring.name)
        } else {
            reasons.get(i).cloned().unwrap_or_else(|| {
                "waiting for its turn: one zone per region, one update domain per availability set, maxUnavailable, region phases".into()
            })
        };
        states[*i] = VmState::Waiting(Some(reason));
    }
}

fn count(p: &mut RingProgress, eligible: &[usize], states: &[VmState]) {
    let n =
        |f: &dyn Fn(&VmState) -> bool| eligible.iter().filter(|i| f(&states[**i])).count() as i32;
    p.succeeded = n(&VmState::is_done);
    p.failed = n(&VmState::is_failed);
    p.in_progress = n(&|s| *s == VmState::Patching);
}

/// The ring's phase, its Events and its deadline; returns when its bake ended, if it did.
fn finish(
    run: &Run<'_>,
    ri: usize,
    prev: &RingProgress,
    p: &mut RingProgress,
    plan: &Planned,
    eligible: &[usize],
    acc: &mut Acc,
) -> Option<Timestamp> {
    let now = run.input.now;
    let ring = &run.input.rings[ri];
    let bake = if p.promoted {
        Duration::ZERO
    } else {
        run.times[ri].bake
    };
    let was = prev.phase;
    let all_done = plan.done || eligible.is_empty();
    let phase = if plan.halted {
        RingPhase::Halted
    } else if p.started_time.is_none() {
        RingPhase::Waiting
    } else if all_done {
        let completed = prev.completed_time.as_ref().map_or(now, |c| c.0);
        if p.completed_time.is_none() {
            p.completed_time = Some(Time(completed));
        }
        let bake_end = add(completed, bake);
        if now >= bake_end {
            RingPhase::Succeeded
        } else {
            acc.wake.at(bake_end);
            RingPhase::Baking
        }
    } else if ring.spec.paused || run.input.spec.paused {
        RingPhase::Paused
    } else {
        RingPhase::Progressing
    };
    if !all_done {
        p.completed_time = None;
    }
    if phase == RingPhase::Halted
        && was != Some(RingPhase::Halted)
        && was != Some(RingPhase::RolledBack)
    {
        acc.events
            .push(halted_event(run, ri, eligible, &acc.states));
    }
    if phase == RingPhase::Succeeded && was != Some(RingPhase::Succeeded) {
        acc.events.push(EventSpec::normal(
            "RingSucceeded",
            "Complete",
            format!(
                "ring {} passed its health gate: {} succeeded, {} failed of {}",
                ring.name, p.succeeded, p.failed, p.total
            ),
        ));
    }
    track_deadline(run, ri, prev, p, phase, acc);
    p.phase = Some(phase);
    match phase {
        RingPhase::Succeeded => p.completed_time.as_ref().map(|c| add(c.0, bake)),
        _ => None,
    }
}

fn halted_event(run: &Run<'_>, ri: usize, eligible: &[usize], states: &[VmState]) -> EventSpec {
    let ring = &run.input.rings[ri];
    let failed: Vec<usize> = eligible
        .iter()
        .copied()
        .filter(|i| states[*i].is_failed())
        .collect();
    EventSpec::warning(
        "RingHalted",
        "Halt",
        format!(
            "ring {} halted: {} of {} VMs failed, more than maxFailedPercent {}% allows ({})",
            ring.name,
            failed.len(),
            eligible.len(),
            ring.spec.health_gate.max_failed_percent,
            failed
                .iter()
                .take(5)
                .map(|i| match &states[*i] {
                    VmState::Failed(r) => format!("{}: {r}", run.input.vms[*i].name),
                    _ => run.input.vms[*i].name.to_string(),
                })
                .collect::<Vec<_>>()
                .join("; ")
        ),
    )
}

/// A ring late for its deadline gets an Event once and `deadlineMissed`; a wake just after the
/// deadline notices it.
fn track_deadline(
    run: &Run<'_>,
    ri: usize,
    prev: &RingProgress,
    p: &mut RingProgress,
    phase: RingPhase,
    acc: &mut Acc,
) {
    let now = run.input.now;
    let finished = matches!(phase, RingPhase::Succeeded | RingPhase::Baking);
    // A ring whose last wave completed by the deadline made it, whatever happens to it later
    // (a rollback changes its phase, not when it finished).
    let in_time = |d: &Time| {
        p.completed_time
            .as_ref()
            .or(prev.completed_time.as_ref())
            .is_some_and(|c| c.0 <= d.0)
    };
    let late = p
        .deadline
        .as_ref()
        .is_some_and(|d| now > d.0 && !finished && !in_time(d));
    if late && !prev.deadline_missed {
        acc.events.push(EventSpec::warning(
            "RingDeadlineMissed",
            "Track",
            format!(
                "ring {} has not finished by its deadline {}",
                run.input.rings[ri].name,
                p.deadline
                    .as_ref()
                    .map(|d| d.0.to_string())
                    .unwrap_or_default()
            ),
        ));
    }
    if let Some(d) = p.deadline.as_ref().map(|d| d.0).filter(|d| now <= *d) {
        acc.wake.at(add(d, Duration::from_secs(1)));
    }
    // Sticky: a ring that finishes late still missed its deadline.
    p.deadline_missed = late || prev.deadline_missed;
}
