//! The rollout controls a person uses (`retry`, `abort`, `promote`, `rollback`) do what they say,
//! and the signals after them are true.

use super::*;

fn phase(w: &World) -> Option<RolloutPhase> {
    w.status.as_ref().and_then(|s| s.phase)
}

fn cond<'a>(w: &'a World, t: &str) -> &'a crate::api::Condition {
    w.status
        .as_ref()
        .expect("status")
        .conditions
        .iter()
        .find(|c| c.type_ == t)
        .expect("condition")
}

#[test]
fn rolling_back_a_succeeded_rollout_withdraws_the_slo_instead_of_putting_it_at_risk() {
    let mut w = World::new(2, vec![("test".into(), ring(0, "0s", "0s", 0))]);
    w.run_until(add(w.now, dur("4h")), dur("10m"));
    assert_eq!(phase(&w), Some(RolloutPhase::Succeeded));
    let before = w.events.len();
    w.spec.rollback = true;
    w.run_until(add(w.now, dur("24h")), dur("1h"));
    let after: Vec<_> = w.events[before..].iter().map(|e| e.reason).collect();
    assert!(!after.contains(&"SLOAtRisk"), "{after:?}");
    let slo = cond(&w, SLO_AT_RISK);
    assert_eq!(
        (slo.status.as_str(), slo.reason.as_str()),
        ("False", "Withdrawn")
    );
}

#[test]
fn retry_gives_the_failed_vms_of_a_halted_rollout_another_attempt() {
    let mut w = World::new(4, vec![("test".into(), ring(0, "0s", "0s", 0))]);
    w.vms[0].fail = true;
    w.run_until(add(w.now, dur("4h")), dur("10m"));
    assert_eq!(phase(&w), Some(RolloutPhase::Halted));
    // Retrying without fixing anything: still halted (a new halt, announced again).
    w.vms[0].fail = false;
    let before = w.events.len();
    w.spec.retry = 1;
    w.run_until(add(w.now, dur("6h")), dur("10m"));
    let after: Vec<_> = w.events[before..].iter().map(|e| e.reason).collect();
    assert!(after.contains(&"RolloutRetried"), "{after:?}");
    assert_eq!(phase(&w), Some(RolloutPhase::Succeeded), "{after:?}");
    let st = w.status.as_ref().expect("status");
    assert_eq!(st.observed_retry, 1);
    assert_eq!((st.rings[0].failed, st.rings[0].succeeded), (0, 4));
    let retried: Vec<&String> = st.rings[0].waves.iter().flat_map(|w| &w.retried).collect();
    assert_eq!(retried, vec!["r0-vm0"], "the first attempt stays on record");
    // The VM was installed twice: once failing, once in a later wave.
    let waves: Vec<i32> = w.vms[0].installs.iter().map(|(wave, _)| *wave).collect();
    assert_eq!(waves.len(), 2, "{waves:?}");
    assert!(waves[1] > waves[0]);
    // A retry seen once is not applied again.
    let n = w.events.len();
    w.step();
    assert!(!w.events[n..].iter().any(|e| e.reason == "RolloutRetried"));
}

#[test]
fn a_retry_that_fails_again_halts_again_and_says_so() {
    let mut w = World::new(4, vec![("test".into(), ring(0, "0s", "0s", 0))]);
    w.vms[0].fail = true;
    w.run_until(add(w.now, dur("4h")), dur("10m"));
    let before = w.events.len();
    w.spec.retry = 1;
    w.run_until(add(w.now, dur("4h")), dur("10m"));
    let after: Vec<_> = w.events[before..].iter().map(|e| e.reason).collect();
    assert!(after.contains(&"RingHalted"), "{after:?}");
    assert_eq!(phase(&w), Some(RolloutPhase::Halted));
    assert_eq!(w.status.as_ref().expect("status").rings[0].failed, 1);
}

#[test]
fn abort_stops_the_rollout_without_rolling_back_and_frees_the_next_release() {
    let mut w = World::new(3, four_rings());
    w.run_until(add(w.now, dur("4h")), dur("10m"));
    w.spec.abort = true;
    w.step();
    assert_eq!(phase(&w), Some(RolloutPhase::Aborted));
    assert!(w.reasons().contains(&"RolloutAborted"));
    assert!(facts::finished(phase(&w)));
    let installs = |w: &World| w.vms.iter().map(|v| v.installs.len()).sum::<usize>();
    let n = installs(&w);
    w.run_until(add(w.now, dur("400h")), dur("1h"));
    assert_eq!(installs(&w), n, "nothing more is installed");
    assert!(
        w.vms
            .iter()
            .all(|v| !v.directive.as_ref().is_some_and(|d| d.rollback))
    );
    assert_eq!(cond(&w, SLO_AT_RISK).reason, "Withdrawn");
}

#[test]
fn promote_skips_the_current_rings_bake_and_the_next_rings_deferral() {
    let rings = vec![
        ("test".into(), ring(0, "0s", "72h", 0)),
        ("broad".into(), ring(1, "168h", "0s", 0)),
    ];
    let mut w = World::new(2, rings);
    w.run_until(add(w.now, dur("4h")), dur("10m"));
    assert_eq!(w.ring_phase(0), Some(RingPhase::Baking));
    w.spec.promoted_rings = vec!["test".into(), "broad".into()];
    w.run_until(add(w.now, dur("4h")), dur("10m"));
    assert_eq!(w.ring_phase(0), Some(RingPhase::Succeeded));
    assert_eq!(
        phase(&w),
        Some(RolloutPhase::Succeeded),
        "{:?}",
        w.reasons()
    );
    assert_eq!(
        w.events
            .iter()
            .filter(|e| e.reason == "RingPromoted")
            .count(),
        2
    );
}

#[test]
fn a_skipped_ring_patches_nothing_more_and_the_next_ring_follows() {
    let rings = vec![
        ("test".into(), ring(0, "0s", "0s", 0)),
        ("first".into(), ring(1, "0s", "0s", 0)),
        ("broad".into(), ring(2, "0s", "0s", 0)),
    ];
    let mut w = World::new(2, rings);
    w.spec.skipped_rings = vec!["first".into()];
    w.run_until(add(w.now, dur("8h")), dur("10m"));
    assert_eq!(w.ring_phase(1), Some(RingPhase::Skipped));
    assert_eq!(
        phase(&w),
        Some(RolloutPhase::Succeeded),
        "{:?}",
        w.reasons()
    );
    assert!(
        w.vms
            .iter()
            .filter(|v| v.ring == 1)
            .all(|v| v.installs.is_empty())
    );
    assert!(
        w.vms
            .iter()
            .filter(|v| v.ring == 2)
            .all(|v| !v.installs.is_empty())
    );
    assert!(w.reasons().contains(&"RingSkipped"));
}
