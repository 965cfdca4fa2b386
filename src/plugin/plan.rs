//! `plan`: what starts now in the rollout's current ring, then the waves that would follow if
//! every VM were ready and succeeded.

use std::fmt::Write as _;

use jiff::Timestamp;
use kube::ResourceExt;

use super::Snapshot;
use crate::api::{PatchRollout, RolloutPhase};
use crate::clock::Clock;
use crate::logic::planner::{self, Limits, State, Topology};
use crate::logic::rollout::{self, Gathered, Outcome, Settings, VmState, decide_gathered, gather};

/// The plan preview: what starts now, then the waves that would follow if every VM were ready
/// and succeeded.
pub fn plan_text(
    rollout: &PatchRollout,
    snap: &Snapshot,
    clock: &Clock,
    settings: &Settings,
    now: Timestamp,
) -> String {
    let g = gather(rollout, &snap.rollouts, &snap.rings, &snap.vms, clock);
    let out = decide_gathered(rollout, &g, now, settings, &Default::default());
    let mut text = String::new();
    let Some(ring_name) = out.status.current_ring.clone() else {
        return format!("Rollout {}: every ring is done.\n", rollout.name_any());
    };
    let Some(ri) = g.ring_names.iter().position(|n| *n == ring_name) else {
        return format!(
            "Rollout {}: ring {ring_name} not found.\n",
            rollout.name_any()
        );
    };
    let _ = writeln!(
        text,
        "Rollout {} — phase {:?}, current ring {} ({})",
        rollout.name_any(),
        out.status.phase.unwrap_or(RolloutPhase::Pending),
        ring_name,
        out.status
            .rings
            .iter()
            .find(|p| p.name == ring_name)
            .and_then(|p| p.phase)
            .map(|p| format!("{p:?}"))
            .unwrap_or_else(|| "-".into())
    );
    let started_now = started_now(&g, &out, ri);
    let members: Vec<usize> = (0..g.views.len())
        .filter(|i| g.views[*i].ring == Some(ri))
        .collect();
    let eligible: Vec<usize> = members
        .iter()
        .copied()
        .filter(|i| !matches!(out.states[*i], VmState::Skipped(_)))
        .collect();
    let _ = writeln!(
        text,
        "Now: {}",
        if started_now.is_empty() {
            "nothing starts".to_string()
        } else {
            started_now.join(", ")
        }
    );
    if out.status.phase == Some(RolloutPhase::Paused) {
        let _ = writeln!(
            text,
            "The rollout is paused: waves in flight finish, no new wave starts (kubectl automend resume {}).",
            rollout.name_any()
        );
    }
    forward(&mut text, &g, &out, ri, &eligible, &started_now, settings);
    let waiting: Vec<String> = eligible
        .iter()
        .filter_map(|i| match &out.states[*i] {
            VmState::Waiting(Some(r)) => Some(format!(
                "  {}: {r}",
                g.views[*i].vm.metadata.name.as_deref().unwrap_or_default()
            )),
            _ => None,
        })
        .collect();
    if !waiting.is_empty() {
        let _ = writeln!(text, "Waiting:");
        for w in waiting {
            let _ = writeln!(text, "{w}");
        }
    }
    let frozen = rollout.status.as_ref().and_then(|s| s.manifest.as_ref());
    match frozen.or(out.status.manifest.as_ref()) {
        Some(m) => text.push_str(&super::release::manifest_text(m, frozen.is_some())),
        None => {
            let _ = writeln!(
                text,
                "Release manifest: not frozen yet (it is frozen when the first ring starts)."
            );
        }
    }
    text
}

/// The VMs of ring `ri` this decision starts now.
fn started_now<'g>(g: &'g Gathered, out: &Outcome, ri: usize) -> Vec<&'g str> {
    out.writes
        .iter()
        .filter(|w| !w.directive.rollback && g.views[w.vm].ring == Some(ri))
        .filter(|w| {
            g.views[w.vm]
                .vm
                .status
                .as_ref()
                .and_then(|s| s.desired.as_ref())
                .and_then(|d| d.installation.as_deref())
                != Some(&w.directive)
        })
        .map(|w| {
            g.views[w.vm]
                .vm
                .metadata
                .name
                .as_deref()
                .unwrap_or_default()
        })
        .collect()
}

/// Forward simulation in the ring: everything ready, every VM succeeds.
fn forward(
    text: &mut String,
    g: &Gathered,
    out: &Outcome,
    ri: usize,
    eligible: &[usize],
    started_now: &[&str],
    settings: &Settings,
) {
    let ring = &g.rings[ri];
    let topo = Topology::new(
        &eligible
            .iter()
            .map(|i| rollout::facts(&g.views[*i]).placement)
            .collect::<Vec<_>>(),
        &settings.pairs,
    );
    let mut states: Vec<State> = eligible.iter().map(|i| out.states[*i].planner()).collect();
    for i in started_now {
        if let Some(p) = eligible
            .iter()
            .position(|e| g.views[*e].vm.metadata.name.as_deref() == Some(*i))
        {
            states[p] = State::Patching;
        }
    }
    let limits = Limits {
        max_unavailable: rollout::max_unavailable(&ring.spec.max_unavailable, eligible.len()),
        max_failed: rollout::max_failed(ring.spec.health_gate.max_failed_percent, eligible.len()),
    };
    let sim = planner::simulate_from(&topo, states, limits, 10_000, |_| State::Succeeded);
    for (wave, (phase, start)) in sim.waves.iter().enumerate() {
        let names: Vec<&str> = start
            .iter()
            .map(|v| {
                g.views[eligible[*v as usize]]
                    .vm
                    .metadata
                    .name
                    .as_deref()
                    .unwrap_or_default()
            })
            .collect();
        let _ = writeln!(
            text,
            "Then wave +{} (phase {}): {}",
            wave + 1,
            phase.map_or(0, |x| x + 1),
            names.join(", ")
        );
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use serde_json::json;

    use super::*;

    /// A paused rollout says so even when its current ring has no VM waiting for the pause (here
    /// the ring still waits for its first assessments).
    #[test]
    fn a_paused_rollout_says_it_is_paused() {
        let now: Timestamp = "2026-11-23T12:00:00Z".parse().expect("time");
        let rollout: PatchRollout = serde_json::from_value(json!({
            "apiVersion": "automend.io/v1alpha1", "kind": "PatchRollout",
            "metadata": { "name": "monthly", "namespace": "fleet" },
            "spec": { "releaseTime": "2026-11-23T00:00:00Z", "paused": true }
        }))
        .expect("rollout");
        let ring = serde_json::from_value(json!({
            "apiVersion": "automend.io/v1alpha1", "kind": "UpdateRing",
            "metadata": { "name": "test", "namespace": "fleet" },
            "spec": { "order": 0 }
        }))
        .expect("ring");
        let vm = serde_json::from_value(json!({
            "apiVersion": "automend.io/v1alpha1", "kind": "VirtualMachine",
            "metadata": { "name": "web-0", "namespace": "fleet",
                          "labels": { "automend.io/ring": "test" } },
            "spec": { "management": { "enabled": true, "profile": "p" },
                      "os": { "type": "Linux", "image": { "publisher": "Canonical", "offer": "ubuntu-24_04-lts", "sku": "server" } },
                      "placement": { "region": "eastus" } }
        }))
        .expect("vm");
        let snap = Snapshot {
            rollouts: vec![Arc::new(rollout.clone())],
            rings: vec![Arc::new(ring)],
            vms: vec![Arc::new(vm)],
        };
        let settings = Settings {
            pairs: Vec::new(),
            expected_duration: Duration::from_secs(1800),
            clock_speed: 1.0,
        };
        let text = plan_text(&rollout, &snap, &Clock::real(), &settings, now);
        assert!(text.contains("phase Paused"), "{text}");
        assert!(
            text.contains("The rollout is paused") && text.contains("resume monthly"),
            "{text}"
        );
    }
}
