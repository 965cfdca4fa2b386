//! `why`: where one VM stands in a rollout, and why.

use std::fmt::Write as _;

use anyhow::bail;
use jiff::Timestamp;
use kube::ResourceExt;

use super::Snapshot;
use super::tables::ts;
use crate::api::PatchRollout;
use crate::clock::Clock;
use crate::logic::rollout::{
    Gathered, Outcome, Settings, VmState, VmView, decide_gathered, gather,
};

/// Why a VM is or is not being patched.
pub fn why_text(
    vm_name: &str,
    rollout: &PatchRollout,
    snap: &Snapshot,
    clock: &Clock,
    settings: &Settings,
    now: Timestamp,
) -> anyhow::Result<String> {
    let g = gather(rollout, &snap.rollouts, &snap.rings, &snap.vms, clock);
    let Some(i) = g
        .views
        .iter()
        .position(|v| v.vm.metadata.name.as_deref() == Some(vm_name))
    else {
        bail!("VirtualMachine {vm_name:?} not found");
    };
    let out = decide_gathered(rollout, &g, now, settings, &Default::default());
    let v = &g.views[i];
    let vm = &v.vm;
    let status = vm.status.clone().unwrap_or_default();
    let mut text = String::new();
    let _ = writeln!(
        text,
        "VirtualMachine {vm_name} — rollout {}",
        rollout.name_any()
    );
    let mode = status
        .patch_mode
        .or(vm.spec.patch_settings.patch_mode)
        .map(|m| format!("{m:?}"))
        .unwrap_or_else(|| "-".into());
    let _ = writeln!(text, "  patch mode:   {mode}");
    let _ = writeln!(
        text,
        "  eligibility:  {}",
        v.ineligible.clone().unwrap_or_else(|| "eligible".into())
    );
    let _ = writeln!(
        text,
        "  heartbeat:    {}",
        if v.running {
            "present"
        } else {
            "missing (not running)"
        }
    );
    let ring = v.ring.map(|r| g.ring_names[r].clone());
    let _ = writeln!(
        text,
        "  ring:         {}",
        ring.clone()
            .unwrap_or_else(|| "none (no ring selects it and no share takes it)".into())
    );
    ring_lines(&mut text, rollout, &g, &out, v.ring);
    window_line(&mut text, v, now);
    let rebooting = status
        .guest
        .as_ref()
        .and_then(|g| g.installation.as_ref())
        .filter(|r| {
            r.rollout == rollout.name_any() && r.status == crate::api::OperationStatus::InProgress
        })
        .and_then(|r| r.reboot_started_at.as_ref());
    let verdict = match (&out.states[i], rebooting) {
        (crate::logic::rollout::VmState::Patching, Some(t)) => format!(
            "rebooting since {} (announced by its guest; failed with RebootTimeout when not back within the ring's healthGate.rebootTimeout)",
            t.0
        ),
        _ => verdict(&out, i),
    };
    let _ = writeln!(text, "  verdict:      {verdict}");
    Ok(text)
}

/// The VM's ring: its phase, schedule and health gate.
fn ring_lines(
    text: &mut String,
    rollout: &PatchRollout,
    g: &Gathered,
    out: &Outcome,
    ring: Option<usize>,
) {
    if let Some(r) = ring
        && let Some(p) = out.status.rings.iter().find(|p| p.name == g.ring_names[r])
    {
        let spec = &g.rings[r].spec;
        let _ = writeln!(
            text,
            "  ring phase:   {}; not before {}; deferral {}{}; deadline {}",
            p.phase
                .map(|p| format!("{p:?}"))
                .unwrap_or_else(|| "-".into()),
            ts(p.start_not_before.as_ref()),
            spec.deferral,
            if rollout.spec.expedite {
                " (skipped: expedite)"
            } else {
                ""
            },
            ts(p.deadline.as_ref())
        );
        let _ = writeln!(
            text,
            "  health gate:  maxFailedPercent {}, healthyFor {}, bakeTime {}; {} failed of {}{}",
            spec.health_gate.max_failed_percent,
            spec.health_gate.healthy_for,
            spec.health_gate.bake_time,
            p.failed,
            p.total,
            if spec.paused { "; ring paused" } else { "" }
        );
    }
}

/// The VM's maintenance window, in its time zone.
fn window_line(text: &mut String, v: &VmView, now: Timestamp) {
    let vm = &v.vm;
    match &v.window {
        Some((w, tz)) => {
            let local = now.to_zoned(tz.clone());
            let open = w.current(tz, now).map(|(_, end)| end);
            let _ = writeln!(
                text,
                "  window:       {:02}:{:02} for {} in {} (now {}): {}",
                w.hour,
                w.minute,
                crate::logic::duration::format(w.length),
                vm.spec.time_zone,
                local.strftime("%a %H:%M"),
                match open {
                    Some(end) =>
                        format!("open until {}", end.to_zoned(tz.clone()).strftime("%H:%M")),
                    None => format!(
                        "closed; next opening {}",
                        w.next_opening(tz, now)
                            .map(|t| t
                                .to_zoned(tz.clone())
                                .strftime("%a %Y-%m-%d %H:%M")
                                .to_string())
                            .unwrap_or_else(|| "never".into())
                    ),
                }
            );
        }
        None => {
            let _ = writeln!(text, "  window:       none (installs may start any time)");
        }
    }
}

/// Where the VM stands, in words.
fn verdict(out: &Outcome, i: usize) -> String {
    match &out.states[i] {
        VmState::Skipped(r) => format!("not patched: {r}"),
        VmState::UpToDate => "already has every package of the release manifest".into(),
        VmState::Waiting(Some(r)) => format!("waiting: {r}"),
        VmState::Waiting(None) => "starts in the next wave".into(),
        VmState::Patching => {
            if out
                .writes
                .iter()
                .any(|w| w.vm == i && !w.directive.rollback)
            {
                "starts now".into()
            } else {
                "patching (installing, or proving healthy for healthyFor)".into()
            }
        }
        VmState::Succeeded => "patched and proven healthy".into(),
        VmState::Failed(r) => format!("failed: {r}"),
        VmState::RolledBack { failed: true } => {
            "failed, then rolled back to the versions recorded before the install".into()
        }
        VmState::RolledBack { failed: false } => {
            "rolled back with its wave to the versions recorded before the install (it had not failed)".into()
        }
    }
}
