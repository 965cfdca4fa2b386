//! What the rollout tells people must be true: a missed deadline is recorded (and stays recorded
//! once the ring finishes late); a ring that finished in time never "misses" it afterwards.

use super::*;

fn deadline_events(w: &World) -> usize {
    w.events
        .iter()
        .filter(|e| e.reason == "RingDeadlineMissed")
        .count()
}

#[test]
fn a_missed_deadline_is_recorded_and_stays_recorded_after_a_late_finish() {
    let mut w = World::new(1, vec![("test".into(), ring(0, "0s", "0s", 50))]);
    w.vms[0].running = false;
    w.step();
    w.now = add(w.now, Duration::from_secs(49 * 3600));
    w.step();
    assert_eq!(deadline_events(&w), 1);
    let missed = |w: &World| w.status.as_ref().expect("status").rings[0].deadline_missed;
    assert!(missed(&w), "deadlineMissed is set with the Event");
    // The VM returns; the ring finishes, late: it still missed its deadline.
    w.vms[0].running = true;
    w.run_until(
        add(w.now, Duration::from_secs(4 * 3600)),
        Duration::from_secs(600),
    );
    assert_eq!(w.ring_phase(0), Some(RingPhase::Succeeded));
    assert!(missed(&w), "a late finish does not erase the miss");
    assert_eq!(deadline_events(&w), 1, "one Event");
}

#[test]
fn a_ring_that_finished_in_time_never_misses_its_deadline_later() {
    let mut w = World::new(1, vec![("test".into(), ring(0, "0s", "0s", 50))]);
    w.run_until(
        add(w.now, Duration::from_secs(4 * 3600)),
        Duration::from_secs(600),
    );
    assert_eq!(w.ring_phase(0), Some(RingPhase::Succeeded));
    // Rolled back by hand two days later: the ring's phase changes, its deadline is long past.
    w.spec.rollback = true;
    w.run_until(
        add(w.now, Duration::from_secs(60 * 3600)),
        Duration::from_secs(3600),
    );
    assert_eq!(deadline_events(&w), 0, "{:?}", w.reasons());
    assert!(!w.status.as_ref().expect("status").rings[0].deadline_missed);
}

#[test]
fn rolling_back_a_succeeded_rollout_halts_nothing_and_blames_no_one() {
    let mut w = World::new(2, vec![("test".into(), ring(0, "0s", "0s", 0))]);
    w.run_until(
        add(w.now, Duration::from_secs(4 * 3600)),
        Duration::from_secs(600),
    );
    assert_eq!(
        w.status.as_ref().and_then(|s| s.phase),
        Some(RolloutPhase::Succeeded)
    );
    let before = w.events.len();
    w.spec.rollback = true;
    w.run_until(
        add(w.now, Duration::from_secs(24 * 3600)),
        Duration::from_secs(3600),
    );
    let after: Vec<_> = w.events[before..].iter().map(|e| e.reason).collect();
    assert!(after.contains(&"RolloutRolledBack"), "{after:?}");
    assert!(!after.contains(&"RingHalted"), "nothing failed: {after:?}");
    let st = w.status.as_ref().expect("status");
    assert_eq!(st.phase, Some(RolloutPhase::RolledBack));
    assert_eq!(st.rings[0].failed, 0);
    assert!(
        !st.conditions
            .iter()
            .any(|c| c.type_ == HALTED && c.status == "True"),
        "{:?}",
        st.conditions
    );
}
