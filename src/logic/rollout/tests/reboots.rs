//! Reboots in a rollout: an announced reboot is no failure until the ring's rebootTimeout (real
//! time) passes; a VM back from its reboot proves itself healthy from the controller's first
//! sight of its result; one that never returns fails with RebootTimeout.

use super::*;

fn one_ring(per_ring: usize, max_failed: i32) -> World {
    let mut w = World::new(
        per_ring,
        vec![("test".into(), ring(0, "0s", "1h", max_failed))],
    );
    w.now = ts("2026-11-10T18:00:00Z");
    w
}

fn state(w: &World, i: usize) -> VmState {
    w.decide().states[i].clone()
}

#[test]
fn a_rebooting_vm_is_patching_until_it_is_back_then_proves_itself_healthy() {
    let mut w = one_ring(1, 50);
    w.vms[0].reboots = true;
    w.step();
    let r = w.vms[0].result.clone().expect("announced");
    assert_eq!(r.status, OperationStatus::InProgress);
    // Silent for 14 minutes of its 15: still patching, no failure.
    w.now = add(w.now, Duration::from_secs(14 * 60));
    w.step();
    assert_eq!(state(&w, 0), VmState::Patching);
    let seen = w.status.as_ref().expect("status").rings[0].waves[0]
        .reboots_seen
        .clone();
    assert_eq!(
        seen.len(),
        1,
        "the controller recorded when it saw the announcement"
    );
    // Back: the guest reports the install finished after the boot.
    let vm = &mut w.vms[0];
    vm.running = true;
    vm.reboots = false;
    let r = vm.result.as_mut().expect("result");
    r.status = OperationStatus::Succeeded;
    r.rebooted_at = Some(Time(w.now));
    r.reboot_pending = false;
    let back = w.now;
    w.step();
    assert_eq!(
        state(&w, 0),
        VmState::Patching,
        "healthyFor (30m) counts from now"
    );
    w.now = add(back, Duration::from_secs(29 * 60));
    assert_eq!(state(&w, 0), VmState::Patching);
    w.now = add(back, Duration::from_secs(30 * 60));
    assert_eq!(state(&w, 0), VmState::Succeeded);
}

#[test]
fn a_vm_that_does_not_come_back_fails_with_reboot_timeout_and_halts_the_ring() {
    let mut w = one_ring(2, 10);
    w.vms[0].reboots = true;
    w.step();
    w.step(); // the controller sees the announcement
    w.now = add(w.now, Duration::from_secs(15 * 60));
    let out = w.step();
    let VmState::Failed(why) = &out.states[0] else {
        panic!("failed: {:?}", out.states[0]);
    };
    assert!(
        why.starts_with("RebootTimeout: the VM did not come back within 15m0s"),
        "{why}"
    );
    assert_eq!(
        w.status.as_ref().and_then(|s| s.phase),
        Some(RolloutPhase::Halted)
    );
    assert!(w.reasons().contains(&"RingHalted"));
}

#[test]
fn reboot_timeout_is_real_time_on_an_accelerated_clock() {
    let mut w = one_ring(1, 50);
    w.settings.clock_speed = 60.0;
    w.vms[0].reboots = true;
    w.step();
    w.step(); // the controller sees the announcement
    // 15 minutes of real time are 15 hours on this clock.
    w.now = add(w.now, Duration::from_secs(14 * 3600));
    assert_eq!(state(&w, 0), VmState::Patching);
    w.now = add(w.now, Duration::from_secs(3600));
    assert!(matches!(state(&w, 0), VmState::Failed(_)));
}

#[test]
fn a_guest_failure_reason_leads_the_failure() {
    let mut w = one_ring(1, 50);
    w.vms[0].fail = true;
    w.step();
    let r = w.vms[0].result.as_mut().expect("result");
    r.reason = Some("PreInstallHookFailed".into());
    r.error = Some("the preInstall hook exited 3: drain refused".into());
    let VmState::Failed(why) = state(&w, 0) else {
        panic!("failed");
    };
    assert_eq!(
        why,
        "PreInstallHookFailed: the preInstall hook exited 3: drain refused"
    );
}

#[test]
fn vms_rolled_back_with_their_wave_are_not_counted_as_failed() {
    // Two VMs in one wave; one fails, the ring halts and the whole wave rolls back.
    let mut w = one_ring(2, 10);
    w.spec.rollback_on_failure = true;
    for vm in w.vms.iter_mut() {
        vm.placement.region = "east".into();
        vm.placement.zone = Some("1".into());
    }
    w.step();
    let started: Vec<usize> = (0..2).filter(|i| w.vms[*i].directive.is_some()).collect();
    assert_eq!(started.len(), 2, "one wave of both");
    w.vms[started[0]].healthy = false;
    w.now = add(w.now, Duration::from_secs(60));
    w.run_until(
        add(w.now, Duration::from_secs(3 * 3600)),
        Duration::from_secs(600),
    );
    assert_eq!(w.ring_phase(0), Some(RingPhase::RolledBack));
    let st = w.status.clone().expect("status");
    let wave = &st.rings[0].waves[0];
    assert_eq!(wave.failed_members, vec![w.vms[started[0]].name.clone()]);
    assert_eq!(
        wave.failed, 1,
        "the healthy VM rolled back with it did not fail"
    );
    assert_eq!(st.rings[0].failed, 1);
    assert_eq!(state(&w, started[1]), VmState::RolledBack { failed: false });
    assert_eq!(state(&w, started[0]), VmState::RolledBack { failed: true });
}
