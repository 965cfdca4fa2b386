//! `status --watch`'s live tree of a rollout (rings, waves, each VM's state) and `vm`, one view
//! of a VM's configuration, drift, patching and identity.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use jiff::Timestamp;
use kube::ResourceExt;

use super::Snapshot;
use super::tables::ts;
use crate::api::{PatchRollout, VirtualMachine};
use crate::clock::Clock;
use crate::logic::rollout::{Settings, VmState, decide_gathered, gather};

/// A VM's state in a rollout, in a word or two (and the reason where there is one).
pub fn state_label(s: &VmState) -> String {
    match s {
        VmState::Skipped(r) => format!("skipped ({r})"),
        VmState::UpToDate => "up to date".into(),
        VmState::Waiting(None) => "waiting".into(),
        VmState::Waiting(Some(r)) => format!("waiting ({r})"),
        VmState::Patching => "patching".into(),
        VmState::Succeeded => "succeeded".into(),
        VmState::Failed(r) => format!("FAILED ({r})"),
        VmState::RolledBack { failed: true } => "rolled back (failed)".into(),
        VmState::RolledBack { failed: false } => "rolled back".into(),
    }
}

/// A VM in a rollout: its ring (if any) and its state.
pub type Standing = (Option<String>, VmState);

/// Each VM's ring and state in the rollout, by name, as the controller decides them.
pub fn states(
    rollout: &PatchRollout,
    snap: &Snapshot,
    clock: &Clock,
    settings: &Settings,
    now: Timestamp,
) -> BTreeMap<String, Standing> {
    let g = gather(rollout, &snap.rollouts, &snap.rings, &snap.vms, clock);
    let out = decide_gathered(rollout, &g, now, settings, &Default::default());
    g.views
        .iter()
        .zip(out.states)
        .map(|(v, s)| {
            (
                v.vm.name_any(),
                (v.ring.map(|r| g.ring_names[r].clone()), s),
            )
        })
        .collect()
}

/// The rollout as a tree: rings, their waves with each member's state, and the ring's VMs in
/// no wave yet (grouped by what they wait for).
pub fn tree_text(rollout: &PatchRollout, states: &BTreeMap<String, Standing>) -> String {
    let mut t = String::new();
    let st = rollout.status.clone().unwrap_or_default();
    let _ = writeln!(
        t,
        "patchrollout/{}  {}{}",
        rollout.name_any(),
        st.phase.map_or("-".into(), |p| format!("{p:?}")),
        st.slo.as_ref().map_or(String::new(), |s| format!(
            "  {} of {} eligible VMs on the release ({})",
            s.on_manifest, s.eligible, s.percent
        ))
    );
    for c in st.conditions.iter().filter(|c| c.status == "True") {
        let _ = writeln!(t, "  ! {} {}: {}", c.type_, c.reason, c.message);
    }
    for ring in &st.rings {
        let _ = writeln!(
            t,
            "  ring {}  {}  {} succeeded, {} failed, {} in progress of {}{}",
            ring.name,
            ring.phase.map_or("-".into(), |p| format!("{p:?}")),
            ring.succeeded,
            ring.failed,
            ring.in_progress,
            ring.total,
            if ring.deadline_missed {
                "  (deadline missed)"
            } else {
                ""
            }
        );
        let mut in_wave = std::collections::BTreeSet::new();
        // A VM in several waves (its start refused for the window, or retried): its state is
        // that of its last wave.
        let last_wave: BTreeMap<&str, i32> = ring
            .waves
            .iter()
            .flat_map(|w| w.members.iter().map(move |m| (m.as_str(), w.index)))
            .collect();
        for w in &ring.waves {
            let _ = writeln!(
                t,
                "    wave {}  started {}  {}",
                w.index,
                ts(w.started_time.as_ref()),
                if w.completed_time.is_some() {
                    "complete"
                } else {
                    "running"
                }
            );
            for m in &w.members {
                in_wave.insert(m.clone());
                let label = if w.retried.contains(m) {
                    "retried in a later wave".to_string()
                } else if w.failed_members.contains(m) {
                    "failed here".to_string()
                } else if last_wave.get(m.as_str()).is_some_and(|l| *l > w.index) {
                    "started again in a later wave".to_string()
                } else {
                    states.get(m).map_or("-".into(), |(_, s)| state_label(s))
                };
                let _ = writeln!(t, "      {m}  {label}");
            }
        }
        for r in &ring.retries {
            let _ = writeln!(
                t,
                "    retry {}  {} failed attempt(s){}{}",
                r.name,
                r.attempts,
                r.next_attempt
                    .as_ref()
                    .map_or(", no attempt left".to_string(), |n| format!(
                        ", next from {}",
                        ts(Some(n))
                    )),
                r.last_error
                    .as_ref()
                    .map_or(String::new(), |e| format!(": {e}"))
            );
        }
        // The ring's other VMs, grouped by state.
        let mut rest: BTreeMap<String, Vec<&str>> = BTreeMap::new();
        for (name, (r, s)) in states {
            if in_wave.contains(name) || r.as_deref() != Some(ring.name.as_str()) {
                continue;
            }
            rest.entry(state_label(s)).or_default().push(name);
        }
        for (label, names) in rest {
            let shown: Vec<&str> = names.iter().take(8).copied().collect();
            let more = names.len().saturating_sub(shown.len());
            let _ = writeln!(
                t,
                "    {} VM(s) {label}: {}{}",
                names.len(),
                shown.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            );
        }
    }
    t
}

/// One view of a VM: configuration, drift, patching and identity.
pub fn vm_text(vm: &VirtualMachine, lease_renewed: Option<Timestamp>, now: Timestamp) -> String {
    let mut t = String::new();
    let st = vm.status.clone().unwrap_or_default();
    let ns = vm.namespace().unwrap_or_default();
    let _ = writeln!(t, "VirtualMachine {}/{}", ns, vm.name_any());
    let _ = writeln!(
        t,
        "  phase:          {}{}",
        st.phase.map_or("-".into(), |p| format!("{p:?}")),
        st.message
            .as_ref()
            .map_or(String::new(), |m| format!(" — {m}"))
    );
    let _ = writeln!(
        t,
        "  management:     {}",
        if vm.spec.management.enabled {
            "enabled"
        } else {
            "disabled"
        }
    );
    let desired = st.desired.as_ref();
    let _ = writeln!(
        t,
        "  profile:        {}{}",
        st.profile.clone().unwrap_or_else(|| "-".into()),
        desired
            .and_then(|d| d.configuration.as_ref())
            .map_or(String::new(), |c| format!(
                " (configuration {}, {})",
                c.hash,
                c.environment.map_or("-".into(), |e| format!("{e:?}"))
            ))
    );
    let _ = writeln!(t, "  conditions:");
    for c in &st.conditions {
        let _ = writeln!(
            t,
            "    {:<14} {:<5} {}: {}",
            c.type_, c.status, c.reason, c.message
        );
    }
    let guest = st.guest.clone().unwrap_or_default();
    let drift: Vec<String> = guest
        .services
        .iter()
        .filter(|s| !s.compliant)
        .flat_map(|s| {
            if s.differences.is_empty() {
                vec![format!("{}: not compliant", s.name)]
            } else {
                s.differences
                    .iter()
                    .map(|d| format!("{}: {d}", s.name))
                    .collect()
            }
        })
        .collect();
    if drift.is_empty() {
        let _ = writeln!(t, "  drift:          none reported");
    } else {
        let _ = writeln!(t, "  drift:");
        for d in drift {
            let _ = writeln!(t, "    {d}");
        }
    }
    for p in &guest.problems {
        let _ = writeln!(t, "  guest problem:  {p}");
    }
    let _ = writeln!(
        t,
        "  patch mode:     {}",
        st.patch_mode.map_or("-".into(), |m| format!("{m:?}"))
    );
    let ps = st.patch_status.clone().unwrap_or_default();
    match &ps.available_patch_summary {
        Some(a) => {
            let _ = writeln!(
                t,
                "  assessment:     {:?} {} — {} critical/security, {} other{} ({})",
                a.status,
                ts(a.last_modified_time.as_ref().or(a.start_time.as_ref())),
                a.critical_and_security_patch_count,
                a.other_patch_count,
                if a.reboot_pending {
                    ", reboot pending"
                } else {
                    ""
                },
                a.assessment_activity_id.clone().unwrap_or_default()
            );
        }
        None => {
            let _ = writeln!(t, "  assessment:     none yet");
        }
    }
    match &ps.last_patch_installation_summary {
        Some(i) => {
            let _ = writeln!(
                t,
                "  installation:   {:?} {} — {} installed, {} failed, {} pending{}",
                i.status,
                ts(i.last_modified_time.as_ref().or(i.start_time.as_ref())),
                i.installed_patch_count,
                i.failed_patch_count,
                i.pending_patch_count,
                if i.maintenance_window_exceeded {
                    ", maintenance window exceeded"
                } else {
                    ""
                }
            );
        }
        None => {
            let _ = writeln!(t, "  installation:   none yet");
        }
    }
    if let Some(d) = desired.and_then(|d| d.installation.as_ref()) {
        let _ = writeln!(
            t,
            "  directive:      rollout {} wave {}{} ({} packages)",
            d.rollout,
            d.wave,
            if d.rollback { " (rollback)" } else { "" },
            d.packages.len()
        );
    }
    let _ = writeln!(
        t,
        "  identity:       serviceaccount {}, lease {}",
        crate::identity::guest_name(&vm.name_any()),
        crate::identity::lease_name(&vm.name_any())
    );
    let _ = writeln!(
        t,
        "  heartbeat:      {}",
        lease_renewed.map_or("never renewed".into(), |r| format!(
            "renewed {} ago",
            crate::logic::duration::format(crate::logic::duration::until(r, now))
        ))
    );
    if let Some(os) = &guest.os {
        let _ = writeln!(
            t,
            "  guest:          {} {} (kernel {}), agent {}",
            os.id,
            os.version,
            os.kernel.clone().unwrap_or_default(),
            guest.agent_version.clone().unwrap_or_else(|| "-".into())
        );
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{PatchRolloutStatus, RingPhase, RingProgress, RolloutPhase, Wave};

    #[test]
    fn the_tree_says_where_each_vm_stands_in_each_wave() {
        let mut r: PatchRollout = serde_json::from_value(serde_json::json!({
            "apiVersion": "automend.io/v1alpha1", "kind": "PatchRollout",
            "metadata": { "name": "nov" }, "spec": { "releaseTime": "2026-11-10T17:00:00Z" },
        }))
        .expect("rollout");
        let wave = |index, members: &[&str], failed: &[&str]| Wave {
            index,
            members: members.iter().map(|m| m.to_string()).collect(),
            failed_members: failed.iter().map(|m| m.to_string()).collect(),
            ..Default::default()
        };
        r.status = Some(PatchRolloutStatus {
            phase: Some(RolloutPhase::Progressing),
            rings: vec![RingProgress {
                name: "test".into(),
                phase: Some(RingPhase::Progressing),
                waves: vec![wave(1, &["a", "b"], &["b"]), wave(2, &["a"], &[])],
                ..Default::default()
            }],
            ..Default::default()
        });
        let ring = Some("test".to_string());
        let states = BTreeMap::from([
            ("a".to_string(), (ring.clone(), VmState::Succeeded)),
            (
                "b".to_string(),
                (ring.clone(), VmState::Failed("dpkg".into())),
            ),
            (
                "c".to_string(),
                (ring.clone(), VmState::Waiting(Some("window".into()))),
            ),
        ]);
        let t = tree_text(&r, &states);
        assert!(t.contains("      a  started again in a later wave"), "{t}");
        assert!(t.contains("      b  failed here"), "{t}");
        assert!(t.contains("    wave 2"), "{t}");
        assert!(t.contains("      a  succeeded"), "{t}");
        assert!(t.contains("1 VM(s) waiting (window): c"), "{t}");
    }
}
