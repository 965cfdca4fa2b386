//! Whole rollouts: deferral, bake, the frozen manifest, halts, rollback, windows, restarts.

use super::*;

#[test]
fn pending_before_release_then_the_first_ring_freezes_the_manifest() {
    let mut w = World::new(4, four_rings());
    w.now = ts("2026-11-10T17:00:00Z");
    let out = w.step();
    assert_eq!(out.status.phase, Some(RolloutPhase::Pending));
    assert!(out.writes.is_empty());
    assert!(out.status.manifest.is_none());
    assert_eq!(out.requeue_after, Some(Duration::from_secs(3600)));

    w.now = ts("2026-11-10T18:00:00Z");
    let out = w.step();
    assert_eq!(out.status.phase, Some(RolloutPhase::Progressing));
    let m = out.status.manifest.clone().expect("frozen");
    let names: Vec<_> = m.families[0]
        .packages
        .iter()
        .map(|p| (p.name.as_str(), p.version.as_str()))
        .collect();
    // Classification filter (no "tool"), exclusion (no "secret-agent").
    assert_eq!(names, vec![("kernel", "5.2"), ("libssl", "1.1")]);
    assert!(w.reasons().contains(&"ManifestFrozen"));
    assert!(w.reasons().contains(&"RingStarted"));
    // Only ring "test" VMs were started, with the manifest's versions.
    assert!(!out.writes.is_empty());
    for wr in &out.writes {
        assert_eq!(w.vms[wr.vm].ring, 0);
        assert_eq!(wr.directive.packages.len(), 2);
        let s = wr.summary.as_ref().expect("summary");
        assert_eq!(
            (
                s.not_selected_patch_count,
                s.excluded_patch_count,
                s.pending_patch_count
            ),
            (1, 1, 2)
        );
    }
}

#[test]
fn rings_honour_deferral_and_bake_and_later_rings_install_the_frozen_manifest() {
    let mut w = World::new(6, four_rings());
    // A newer libssl appears after the freeze: it must never be installed by this rollout.
    w.run_until(ts("2026-11-10T20:00:00Z"), Duration::from_secs(600));
    assert!(
        w.status
            .as_ref()
            .and_then(|s| s.manifest.as_ref())
            .is_some()
    );
    for vm in w.vms.iter_mut() {
        vm.assessment.packages[0].version = "1.2".into();
    }
    w.run_until(ts("2026-11-25T00:00:00Z"), Duration::from_secs(600));
    let st = w.status.clone().expect("status");
    assert_eq!(st.phase, Some(RolloutPhase::Succeeded), "{st:#?}");
    for vm in &w.vms {
        assert_eq!(vm.installs.len(), 1, "{} installed once", vm.name);
        assert!(
            vm.installs[0]
                .1
                .iter()
                .any(|p| p.name == "libssl" && p.version == "1.1")
        );
    }
    let release = ts("2026-11-10T18:00:00Z");
    for (i, (_, spec)) in w.rings.iter().enumerate() {
        let r = &st.rings[i];
        let started = r.started_time.as_ref().expect("started").0;
        assert!(
            started >= add(release, dur(&spec.deferral)),
            "ring {i} deferral"
        );
        if i > 0 {
            let prev = st.rings[i - 1]
                .completed_time
                .as_ref()
                .expect("prev completed")
                .0;
            assert!(started >= add(prev, dur("1h")), "ring {i} bake time");
        }
    }
    assert_eq!(
        st.slo.as_ref().map(|s| (s.eligible, s.on_manifest)),
        Some((24, 24))
    );
    assert!(w.reasons().contains(&"RolloutSucceeded"));
}

#[test]
fn expedite_skips_deferrals() {
    let mut w = World::new(2, four_rings());
    w.spec.expedite = true;
    w.run_until(ts("2026-11-11T06:00:00Z"), Duration::from_secs(600));
    assert_eq!(
        w.status.as_ref().and_then(|s| s.phase),
        Some(RolloutPhase::Succeeded)
    );
}

#[test]
fn failures_past_the_budget_halt_with_event_and_condition_and_roll_back() {
    let mut w = World::new(6, four_rings());
    w.spec.rollback_on_failure = true;
    // The patch breaks ring "first": its VMs install fine but report themselves unhealthy.
    for vm in w.vms.iter_mut().filter(|v| v.ring == 1) {
        vm.healthy = false;
    }
    w.run_until(ts("2026-11-14T00:00:00Z"), Duration::from_secs(600));
    let st = w.status.clone().expect("status");
    assert_eq!(st.phase, Some(RolloutPhase::Halted));
    assert_eq!(w.ring_phase(0), Some(RingPhase::Succeeded));
    assert_eq!(w.ring_phase(1), Some(RingPhase::RolledBack));
    assert_eq!(w.ring_phase(2), Some(RingPhase::Waiting));
    assert!(w.reasons().contains(&"RingHalted"));
    assert!(w.reasons().contains(&"RolloutHalted"));
    let halted = st
        .conditions
        .iter()
        .find(|c| c.type_ == HALTED)
        .expect("condition");
    assert_eq!(halted.status, "True");
    assert!(halted.message.contains("first"), "{}", halted.message);
    // Budget: 10% of 6 is 0 failures, so the first failure halts; nothing beyond the first
    // wave that failed is installed, and the failed ones were rolled back.
    let started: Vec<_> = w
        .vms
        .iter()
        .filter(|v| v.ring == 1 && !v.installs.is_empty())
        .collect();
    assert!(!started.is_empty());
    for v in &started {
        assert!(
            v.directive.as_ref().is_some_and(|d| d.rollback),
            "{} rolled back",
            v.name
        );
    }
    assert!(
        w.vms
            .iter()
            .filter(|v| v.ring >= 2)
            .all(|v| v.installs.is_empty())
    );
}

#[test]
fn unhealthy_after_install_counts_as_failure() {
    let mut w = World::new(4, vec![("test".into(), ring(0, "0s", "1h", 10))]);
    w.step();
    let started: Vec<usize> = (0..4).filter(|i| w.vms[*i].directive.is_some()).collect();
    w.vms[started[0]].healthy = false;
    w.now = add(w.now, Duration::from_secs(60));
    w.step();
    assert_eq!(w.ring_phase(0), Some(RingPhase::Halted));
    let wave = &w.status.as_ref().expect("status").rings[0].waves[0];
    assert_eq!(wave.failed_members, vec![w.vms[started[0]].name.clone()]);
    // Sticky: healthy again later does not undo the failure.
    w.vms[started[0]].healthy = true;
    w.now = add(w.now, Duration::from_secs(7200));
    w.step();
    assert_eq!(w.ring_phase(0), Some(RingPhase::Halted));
}

#[test]
fn paused_rollout_or_ring_starts_nothing_new() {
    let mut w = World::new(6, vec![("test".into(), ring(0, "0s", "1h", 50))]);
    w.spec.paused = true;
    let out = w.step();
    assert!(out.writes.is_empty());
    assert_eq!(out.status.phase, Some(RolloutPhase::Paused));
    assert!(matches!(&out.states[0], VmState::Waiting(Some(r)) if r.contains("paused")));
    w.spec.paused = false;
    w.rings[0].1.paused = true;
    let out = w.step();
    assert!(out.writes.is_empty());
    assert_eq!(out.status.rings[0].phase, Some(RingPhase::Paused));
    w.rings[0].1.paused = false;
    let out = w.step();
    assert!(!out.writes.is_empty());
}

#[test]
fn a_restarted_controller_starts_nothing_twice() {
    let mut w = World::new(6, four_rings());
    w.step();
    // The status write was lost (crash): decide again from the VMs alone.
    w.status = None;
    let out = w.decide();
    assert!(
        out.writes
            .iter()
            .all(|wr| w.vms[wr.vm].directive.as_ref() == Some(&wr.directive))
    );
    // The wave is recovered from the VMs.
    let waves = &out.status.rings[0].waves;
    assert_eq!(waves.len(), 1);
    assert!(!waves[0].members.is_empty());
}

#[test]
fn windows_gate_starts_and_name_the_next_opening() {
    let mut w = World::new(2, vec![("test".into(), ring(0, "0s", "0s", 10))]);
    let win = Window::parse(&MaintenanceWindow {
        start: "02:00".into(),
        duration: "3h".into(),
        days_of_week: vec![],
    })
    .expect("window");
    let tz = crate::logic::window::time_zone("Asia/Tokyo").expect("tz");
    for v in &mut w.vms {
        v.window = Some((win.clone(), tz.clone()));
    }
    // 18:00Z is 03:00 in Tokyo: inside (2h left >= 30m). The two VMs are in paired regions:
    // one starts now.
    let out = w.step();
    assert_eq!(out.writes.len(), 1);
    assert!(
        out.writes
            .iter()
            .all(|wr| wr.directive.window_end == Some(Time(ts("2026-11-10T20:00:00Z"))))
    );
    // 20:30Z is 05:30 in Tokyo: closed.
    let mut w2 = World::new(1, vec![("test".into(), ring(0, "0s", "0s", 10))]);
    w2.vms[0].window = Some((win, tz));
    w2.now = ts("2026-11-10T20:30:00Z");
    w2.spec.release_time = Time(w2.now);
    let out = w2.step();
    assert!(out.writes.is_empty());
    assert!(
        matches!(&out.states[0], VmState::Waiting(Some(r)) if r.contains("maintenance window")),
        "{:?}",
        out.states[0]
    );
    // Next opening: 02:00 the next day in Tokyo, 17:00Z.
    assert_eq!(
        out.requeue_after,
        Some(Duration::from_secs(20 * 3600 + 30 * 60))
    );
}

#[test]
fn ineligible_and_up_to_date_vms_do_not_block() {
    let mut w = World::new(3, vec![("test".into(), ring(0, "0s", "0s", 10))]);
    w.vms[0].ineligible = Some("patch mode ImageDefault".into());
    w.vms[1].assessment.packages.clear();
    w.run_until(ts("2026-11-11T00:00:00Z"), Duration::from_secs(600));
    let st = w.status.clone().expect("status");
    assert_eq!(st.phase, Some(RolloutPhase::Succeeded));
    assert!(w.vms[0].installs.is_empty() && w.vms[1].installs.is_empty());
    assert_eq!(st.slo.map(|s| (s.eligible, s.on_manifest)), Some((2, 2)));
}

#[test]
fn powered_off_vm_is_patched_when_it_returns() {
    let mut w = World::new(3, vec![("test".into(), ring(0, "0s", "0s", 10))]);
    w.vms[2].running = false;
    w.run_until(ts("2026-11-11T00:00:00Z"), Duration::from_secs(600));
    assert_eq!(w.ring_phase(0), Some(RingPhase::Progressing));
    assert!(w.vms[2].installs.is_empty());
    w.vms[2].running = true;
    w.run_until(ts("2026-11-11T03:00:00Z"), Duration::from_secs(600));
    assert_eq!(w.vms[2].installs.len(), 1);
    assert_eq!(w.ring_phase(0), Some(RingPhase::Succeeded));
}

#[test]
fn manual_rollback_returns_every_patched_vm() {
    let mut w = World::new(3, vec![("test".into(), ring(0, "0s", "0s", 10))]);
    w.run_until(ts("2026-11-11T00:00:00Z"), Duration::from_secs(600));
    assert_eq!(
        w.status.as_ref().and_then(|s| s.phase),
        Some(RolloutPhase::Succeeded)
    );
    w.spec.rollback = true;
    let out = w.step();
    assert_eq!(out.status.phase, Some(RolloutPhase::RolledBack));
    assert_eq!(
        out.writes.iter().filter(|wr| wr.directive.rollback).count(),
        3
    );
}

#[test]
fn slo_projection_misses_when_halted() {
    let mut w = World::new(4, vec![("test".into(), ring(0, "0s", "0s", 0))]);
    w.vms[0].fail = true;
    w.run_until(ts("2026-11-11T00:00:00Z"), Duration::from_secs(600));
    let st = w.status.clone().expect("status");
    assert_eq!(st.slo.and_then(|s| s.projected_to_meet), Some(false));
    assert!(w.reasons().contains(&"SLOAtRisk"));
    assert_eq!(w.reasons().iter().filter(|r| **r == "SLOAtRisk").count(), 1);
}

#[test]
fn waves_never_break_the_planner_invariants() {
    let mut w = World::new(12, four_rings());
    w.settings.pairs = vec![("east".into(), "west".into())];
    let mut t0 = w.now;
    while t0 < ts("2026-11-26T00:00:00Z") {
        w.step();
        // At every moment: VMs patching in one ring, one region phase, one zone per region.
        let patching: Vec<&SimVm> = w
            .vms
            .iter()
            .filter(|v| {
                v.directive.as_ref().is_some_and(|d| !d.rollback)
                    && v.result
                        .as_ref()
                        .and_then(|r| r.finish_time.as_ref())
                        .is_some_and(|f| add(f.0, dur("30m")) > w.now)
            })
            .collect();
        let regions: BTreeSet<&str> = patching
            .iter()
            .map(|v| v.placement.region.as_str())
            .collect();
        assert!(
            regions.len() <= 1,
            "paired regions together at {}: {regions:?}",
            w.now
        );
        let zones: BTreeSet<&str> = patching
            .iter()
            .filter_map(|v| v.placement.zone.as_deref())
            .collect();
        assert!(zones.len() <= 1, "two zones of a region at {}", w.now);
        assert!(patching.len() <= 2, "maxUnavailable 2 exceeded");
        t0 = add(t0, Duration::from_secs(300));
        w.now = t0;
    }
    assert_eq!(
        w.status.as_ref().and_then(|s| s.phase),
        Some(RolloutPhase::Succeeded)
    );
}

#[test]
fn the_first_ring_waits_for_its_assessments_before_freezing() {
    let mut w = World::new(2, vec![("test".into(), ring(0, "0s", "0s", 10))]);
    w.vms[1].assessment.status = OperationStatus::InProgress;
    let out = w.step();
    assert!(out.writes.is_empty());
    assert!(out.status.manifest.is_none());
    assert!(
        matches!(&out.states[0], VmState::Waiting(Some(r)) if r.contains("assessment")),
        "{:?}",
        out.states[0]
    );
    w.vms[1].assessment.status = OperationStatus::Succeeded;
    let out = w.step();
    assert!(out.status.manifest.is_some());
    assert!(!out.writes.is_empty());
}

#[test]
fn directives_carry_window_end_reboot_setting_and_hotpatch() {
    let w = World::new(1, vec![("test".into(), ring(0, "0s", "0s", 10))]);
    let out = {
        let rings: Vec<RingFacts> = w
            .rings
            .iter()
            .map(|(n, s)| RingFacts { name: n, spec: s })
            .collect();
        let v = &w.vms[0];
        let facts = vec![VmFacts {
            name: &v.name,
            ring: Some(0),
            placement: v.placement.clone(),
            ineligible: None,
            running: true,
            window: None,
            reboot_setting: Some(RebootSetting::Never),
            hotpatch: true,
            family: "f".into(),
            assessment: Some(&v.assessment),
            directive: None,
            result: None,
            summary: None,
            healthy: true,
            hooks: None,
            profile: "production",
            snapshots: &[],
            approval: None,
            release_assessment: None,
            release_directive: None,
        }];
        decide(&Input {
            now: w.now,
            name: "r",
            generation: None,
            spec: &w.spec,
            status: None,
            rings: &rings,
            vms: &facts,
            blocked_by: None,
            settings: &w.settings,
        })
    };
    let d = &out.writes[0].directive;
    assert!(d.hotpatch_only);
    assert_eq!(d.reboot_setting, Some(RebootSetting::Never));
    assert_eq!(d.window_end, None, "no window: no end");
}

#[test]
fn an_install_refused_at_the_window_end_is_retried_in_a_new_wave() {
    let mut w = World::new(1, vec![("test".into(), ring(0, "0s", "0s", 0))]);
    w.step();
    let first = w.vms[0].directive.clone().expect("directive");
    // The guest reports it could not start before the window ended.
    if let Some(r) = w.vms[0].result.as_mut() {
        r.status = OperationStatus::Failed;
        r.installed.clear();
        r.maintenance_window_exceeded = true;
    }
    w.vms[0].installs.clear();
    w.now = add(w.now, Duration::from_secs(60));
    let out = w.step();
    assert_ne!(
        out.status.phase,
        Some(RolloutPhase::Halted),
        "not a failure"
    );
    let again = w.vms[0].directive.clone().expect("directive");
    assert!(
        again.wave > first.wave,
        "a new wave: {} after {}",
        again.wave,
        first.wave
    );
    assert_eq!(w.vms[0].installs.len(), 1);
}

#[test]
fn a_halted_rollout_starts_nothing_when_a_newer_one_takes_its_vms() {
    let mut w = World::new(
        4,
        vec![
            ("test".into(), ring(0, "0s", "0s", 0)),
            ("first".into(), ring(1, "0s", "0s", 0)),
        ],
    );
    // Ring test passes; ring first halts.
    w.vms[4].healthy = false;
    w.run_until(ts("2026-11-11T00:00:00Z"), Duration::from_secs(600));
    assert_eq!(
        w.status.as_ref().and_then(|s| s.phase),
        Some(RolloutPhase::Halted)
    );
    // A newer release patches every VM.
    for (i, vm) in w.vms.iter_mut().enumerate() {
        vm.healthy = true;
        let d = InstallationDirective {
            rollout: "newer".into(),
            wave: i as i32 + 1,
            ..Default::default()
        };
        vm.result = Some(GuestInstallation {
            rollout: "newer".into(),
            wave: d.wave,
            rollback: false,
            status: OperationStatus::Succeeded,
            start_time: Some(Time(w.now)),
            finish_time: Some(Time(w.now)),
            installed: Vec::new(),
            failed: Vec::new(),
            previous_versions: Vec::new(),
            reboot_pending: false,
            maintenance_window_exceeded: false,
            error: None,
            reason: None,
            reboot_started_at: None,
            rebooted_at: None,
            hooks: Vec::new(),
            unavailable: Vec::new(),
        });
        vm.directive = Some(d);
    }
    w.now = add(w.now, Duration::from_secs(3600));
    let out = w.step();
    assert_eq!(out.status.phase, Some(RolloutPhase::Halted));
    assert!(
        out.writes.iter().all(|wr| wr.directive.rollout == "newer"),
        "the halted rollout wrote {:?}",
        out.writes
    );
}

#[test]
fn a_finished_rollout_keeps_its_record_when_rings_change() {
    let mut w = World::new(2, vec![("test".into(), ring(0, "0s", "0s", 10))]);
    w.run_until(ts("2026-11-11T00:00:00Z"), Duration::from_secs(600));
    assert_eq!(
        w.status.as_ref().and_then(|s| s.phase),
        Some(RolloutPhase::Succeeded)
    );
    w.rings
        .insert(0, ("canary".into(), ring(0, "0s", "0s", 10)));
    w.rings.push(("late".into(), ring(5, "0s", "0s", 10)));
    let out = w.step();
    assert_eq!(out.status.phase, Some(RolloutPhase::Succeeded));
    assert_eq!(
        out.status.rings.len(),
        1,
        "the record is the one the rollout ran"
    );
    assert!(out.writes.is_empty());
}

#[test]
fn healthy_for_counts_from_when_the_controller_saw_the_install_not_the_guests_clock() {
    let mut w = World::new(2, vec![("test".into(), ring(0, "0s", "1h", 10))]);
    w.step(); // directives written; the guests install at once
    let vm = (0..2)
        .find(|i| w.vms[*i].result.is_some())
        .expect("one VM installed");
    // The guest claims it finished two days ago.
    if let Some(r) = w.vms[vm].result.as_mut() {
        r.finish_time = Some(Time(ts("2026-11-08T18:00:00Z")));
    }
    w.now = add(w.now, Duration::from_secs(60));
    let out = w.step();
    assert_eq!(out.states[vm], VmState::Patching, "not proven yet");
    let seen = &w.status.as_ref().expect("status").rings[0].waves[0].installed_seen;
    assert!(
        seen.iter()
            .any(|s| s.name == w.vms[vm].name && s.time == Time(w.now)),
        "{seen:?}"
    );
    // healthyFor (30m) from first sight.
    w.now = add(w.now, Duration::from_secs(29 * 60));
    assert_eq!(w.step().states[vm], VmState::Patching);
    w.now = add(w.now, Duration::from_secs(60));
    assert_eq!(w.step().states[vm], VmState::Succeeded);
}
