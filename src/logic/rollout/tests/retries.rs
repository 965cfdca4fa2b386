//! Automatic retries: a failed installation is retried in the VM's next maintenance window until
//! the ring's `maxAttempts` have failed; the status shows the attempts; each VM's patch story is in
//! its own Events.

use super::*;

fn with_attempts(mut r: UpdateRingSpec, n: i32) -> UpdateRingSpec {
    r.max_attempts = n;
    r
}

fn vm_events(out: &Outcome) -> Vec<(usize, &'static str, String)> {
    out.vm_events
        .iter()
        .map(|(i, e)| (*i, e.reason, e.note.clone()))
        .collect()
}

#[test]
fn a_failed_install_waits_for_the_next_window_then_succeeds() {
    let mut w = World::new(
        3,
        vec![("test".into(), with_attempts(ring(0, "0s", "0s", 0), 3))],
    );
    let win = Window::parse(&MaintenanceWindow {
        start: "18:00".into(),
        duration: "3h".into(),
        days_of_week: vec![],
    })
    .expect("window");
    for v in &mut w.vms {
        v.window = Some((win.clone(), TimeZone::UTC));
    }
    w.vms[0].fail = true;
    // The directive carries the latest start: the window's end less the expected 30 minutes.
    let first = w.step();
    let d = &first.writes.first().expect("a directive").directive;
    assert_eq!(
        d.window_end.as_ref().map(|t| t.0),
        Some(ts("2026-11-10T21:00:00Z"))
    );
    assert_eq!(
        d.latest_start.as_ref().map(|t| t.0),
        Some(ts("2026-11-10T20:30:00Z"))
    );
    w.run_until(add(w.now, dur("2h")), dur("10m"));
    // Not a failure for the health gate yet: retried in tomorrow's window.
    assert_ne!(
        w.status.as_ref().and_then(|s| s.phase),
        Some(RolloutPhase::Halted)
    );
    let st = w.status.clone().expect("status");
    let r = &st.rings[0].retries;
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!((r[0].name.as_str(), r[0].attempts), ("r0-vm0", 1));
    assert_eq!(
        r[0].next_attempt.as_ref().map(|t| t.0),
        Some(ts("2026-11-11T18:00:00Z")),
        "the next window's opening"
    );
    assert_eq!(st.rings[0].failed, 0);
    let out = w.decide();
    match &out.states[0] {
        VmState::Waiting(Some(why)) => assert!(why.contains("attempt 1 of 3 failed"), "{why}"),
        other => panic!("{other:?}"),
    }
    // Nothing starts it again before the window.
    let installs = w.vms[0].installs.len();
    w.run_until(ts("2026-11-11T17:50:00Z"), dur("1h"));
    assert_eq!(w.vms[0].installs.len(), installs);
    // Fixed meanwhile: the retry succeeds in the next window.
    w.vms[0].fail = false;
    w.run_until(ts("2026-11-11T21:00:00Z"), dur("10m"));
    assert_eq!(
        w.status.as_ref().and_then(|s| s.phase),
        Some(RolloutPhase::Succeeded),
        "{:?}",
        w.reasons()
    );
    assert_eq!(w.vms[0].installs.len(), 2);
    let st = w.status.as_ref().expect("status");
    assert_eq!((st.rings[0].succeeded, st.rings[0].failed), (3, 0));
}

#[test]
fn used_up_attempts_count_against_the_health_gate_with_the_vm_events_saying_so() {
    let mut w = World::new(
        4,
        vec![("test".into(), with_attempts(ring(0, "0s", "0s", 0), 2))],
    );
    w.vms[0].fail = true;
    let mut events = Vec::new();
    let end = add(w.now, dur("6h"));
    while w.now < end {
        let out = w.step();
        events.extend(vm_events(&out));
        w.now = add(w.now, dur("10m"));
    }
    assert_eq!(
        w.status.as_ref().and_then(|s| s.phase),
        Some(RolloutPhase::Halted)
    );
    assert_eq!(w.vms[0].installs.len(), 2, "two attempts");
    let r = &w.status.as_ref().expect("status").rings[0].retries[0];
    assert_eq!((r.attempts, r.next_attempt.is_none()), (2, true));
    let mine: Vec<&'static str> = events.iter().filter(|e| e.0 == 0).map(|e| e.1).collect();
    assert_eq!(
        mine,
        vec!["PatchRetryScheduled", "PatchFailed"],
        "{events:?}"
    );
    let failed = events
        .iter()
        .find(|e| e.1 == "PatchFailed")
        .expect("failed");
    assert!(failed.2.contains("all 2 attempts failed"), "{failed:?}");
    let installed: Vec<usize> = events
        .iter()
        .filter(|e| e.1 == "PatchInstalled")
        .map(|e| e.0)
        .collect();
    assert!(
        !installed.is_empty() && !installed.contains(&0),
        "PatchInstalled for the VMs that installed, not the failing one: {events:?}"
    );
}

#[test]
fn unhealthy_after_installing_is_not_retried() {
    let mut w = World::new(
        2,
        vec![("test".into(), with_attempts(ring(0, "0s", "0s", 0), 3))],
    );
    w.vms[0].healthy = false;
    w.run_until(add(w.now, dur("4h")), dur("10m"));
    assert_eq!(
        w.status.as_ref().and_then(|s| s.phase),
        Some(RolloutPhase::Halted)
    );
    assert_eq!(w.vms[0].installs.len(), 1);
    assert!(
        w.status.as_ref().expect("status").rings[0]
            .retries
            .is_empty()
    );
}
