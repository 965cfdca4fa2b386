//! The VM decision over whole VM lives: onboarding, drift, remediation, assessment.

use super::*;
use crate::api::*;
use crate::logic::resolve::resolve;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use proptest::prelude::*;

fn spec() -> VirtualMachineSpec {
    serde_json::from_value(serde_json::json!({
        "management": {"enabled": true, "profile": "production"},
        "os": {"type": "Linux", "image": {"publisher": "Canonical", "offer": "ubuntu-24_04-lts", "sku": "server"}},
        "placement": {"region": "westeurope"},
    }))
    .expect("spec")
}

fn config() -> EffectiveConfiguration {
    resolve(&ConfigurationProfileSpec::with_defaults(
        Environment::Production,
    ))
}

fn policy(mode: RemediationMode) -> RemediationPolicy {
    RemediationPolicy {
        mode,
        max_attempts: 3,
        initial_backoff: Duration::from_secs(30),
        max_backoff: Duration::from_secs(600),
    }
}

fn resolved(mode: RemediationMode) -> ProfileChoice {
    ProfileChoice::Resolved {
        name: "production".into(),
        generation: 1,
        configuration: config().into(),
        remediation: policy(mode),
        via_assignment: false,
        also_matched: vec![],
        outranked_by: None,
    }
}

fn t(secs: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + secs).expect("ts")
}

fn run(
    spec: &VirtualMachineSpec,
    status: Option<&VirtualMachineStatus>,
    now: i64,
    alive: bool,
    mode: RemediationMode,
) -> Outcome {
    decide(Inputs {
        created: None,
        now: t(now),
        generation: Some(1),
        spec,
        status,
        profile: resolved(mode),
        image_problems: vec![],
        heartbeat: if alive {
            Heartbeat::Alive {
                renewed: t(now),
                clock_skew: None,
            }
        } else {
            Heartbeat::Missing { last: None }
        },
        grace: Duration::from_secs(300),
        assess_request: None,
        clock: crate::clock::Clock::real(),
        guests_refused: None,
    })
}

#[test]
fn tracked_changes_become_events_once() {
    let s = spec();
    let o = run(&s, None, 0, true, RemediationMode::Auto);
    let mut st = o.status;
    guest_acts(&mut st, &[]);
    let changes = |n: usize| -> Vec<String> {
        (0..n)
            .map(|i| format!("t{i}: file /etc/f{i} modified"))
            .collect()
    };
    let tracked = |o: &Outcome| -> Vec<String> {
        o.events
            .iter()
            .filter(|e| e.reason == "ChangeTracked")
            .map(|e| e.note.clone())
            .collect()
    };
    st.guest.as_mut().expect("guest").changes = changes(2);
    let o = run(&s, Some(&st), 1, true, RemediationMode::Auto);
    let notes = tracked(&o);
    assert_eq!(notes, changes(2));
    let mut st2 = o.status.clone();
    st2.guest = st.guest.clone();
    let o = run(&s, Some(&st2), 2, true, RemediationMode::Auto);
    assert!(
        o.events.iter().all(|e| e.reason != "ChangeTracked"),
        "published twice"
    );
    st2.guest.as_mut().expect("guest").changes = changes(15);
    let o = run(&s, Some(&st2), 3, true, RemediationMode::Auto);
    let notes = tracked(&o);
    assert_eq!(
        notes,
        changes(15)[5..].to_vec(),
        "the newest 10 of the 13 new ones"
    );
    assert_eq!(o.status.last_tracked_change, changes(15).last().cloned());
}

/// The guest applies what is desired and reports `drifted` services as non-compliant.
fn guest_acts(status: &mut VirtualMachineStatus, drifted: &[&str]) {
    let d = status.desired.clone().expect("desired");
    status.guest = Some(Box::new(GuestState {
        applied_hash: d.configuration.map(|c| c.hash.clone()),
        applied_attempt: d.remediation_attempt,
        services: crate::logic::resolve::SERVICE_NAMES
            .iter()
            .map(|n| ServiceObservation {
                name: n.to_string(),
                compliant: !drifted.contains(n),
                differences: if drifted.contains(n) {
                    vec!["running: want true, have false".into()]
                } else {
                    vec![]
                },
            })
            .collect(),
        ..Default::default()
    }));
}

fn reasons(o: &Outcome) -> Vec<&'static str> {
    o.events.iter().map(|e| e.reason).collect()
}

#[test]
fn onboarding_goes_in_progress_then_configured_and_is_reported_once() {
    let s = spec();
    let o = run(&s, None, 0, true, RemediationMode::Auto);
    assert_eq!(o.status.phase, Some(VmPhase::InProgress));
    let d = o.status.desired.clone().expect("desired");
    assert!(d.enforce);
    assert_eq!(d.configuration.map(|c| c.hash.clone()), Some(config().hash));
    let mut st = o.status;
    guest_acts(&mut st, &[]);
    let o = run(&s, Some(&st), 10, true, RemediationMode::Auto);
    assert_eq!(o.status.phase, Some(VmPhase::Configured));
    assert!(reasons(&o).is_empty(), "{:?}", reasons(&o));
    assert_eq!(
        o.onboarded,
        Some(Onboarded {
            profile: "production".into(),
            hash: config().hash
        })
    );
    let mut st2 = o.status.clone();
    st2.guest = st.guest.clone();
    let again = run(&s, Some(&st2), 20, true, RemediationMode::Auto);
    assert!(
        again.events.is_empty(),
        "no repeated events: {:?}",
        again.events
    );
    assert_eq!(again.onboarded, None, "onboarded once");
    // Same decision again: conditions keep their transition times.
    assert_eq!(again.status.conditions, o.status.conditions);
}

#[test]
fn no_heartbeat_is_pending_and_desired_waits_for_the_guest() {
    let o = run(&spec(), None, 0, false, RemediationMode::Auto);
    assert_eq!(o.status.phase, Some(VmPhase::Pending));
    assert!(o.status.desired.is_some());
    assert!(
        o.status
            .conditions
            .iter()
            .any(|c| c.type_ == HEARTBEAT && c.status == "False")
    );
}

#[test]
fn drift_is_remediated_with_backoff_then_fails_after_max_attempts() {
    let s = spec();
    let mut st = run(&s, None, 0, true, RemediationMode::Auto).status;
    guest_acts(&mut st, &[]);
    st = run(&s, Some(&st), 1, true, RemediationMode::Auto).status;
    assert_eq!(st.phase, Some(VmPhase::Configured));
    // Drift appears: detected, first attempt at once.
    guest_acts(&mut st, &["monitoring"]);
    let o = run(&s, Some(&st), 100, true, RemediationMode::Auto);
    assert_eq!(reasons(&o), vec!["DriftDetected"]);
    assert!(o.remediation_attempted);
    assert_eq!(o.status.phase, Some(VmPhase::InProgress));
    assert_eq!(
        o.status.desired.as_ref().map(|d| d.remediation_attempt),
        Some(1)
    );
    let mut st = o.status;
    // Waiting for the guest: nothing new.
    let o = run(&s, Some(&st), 101, true, RemediationMode::Auto);
    assert!(!o.remediation_attempted && o.events.is_empty());
    // Guest re-applied, still drifted: second attempt only after 30 s.
    guest_acts(&mut st, &["monitoring"]);
    let o = run(&s, Some(&st), 110, true, RemediationMode::Auto);
    assert!(!o.remediation_attempted);
    assert_eq!(o.requeue_after, Some(Duration::from_secs(20)));
    let o = run(&s, Some(&st), 130, true, RemediationMode::Auto);
    assert!(o.remediation_attempted);
    st = o.status;
    guest_acts(&mut st, &["monitoring"]);
    // Third attempt after 60 s more.
    assert!(!run(&s, Some(&st), 189, true, RemediationMode::Auto).remediation_attempted);
    let o = run(&s, Some(&st), 190, true, RemediationMode::Auto);
    assert!(o.remediation_attempted);
    st = o.status;
    guest_acts(&mut st, &["monitoring"]);
    let o = run(&s, Some(&st), 500, true, RemediationMode::Auto);
    assert_eq!(o.status.phase, Some(VmPhase::Failed));
    assert_eq!(reasons(&o), vec!["RemediationFailed"]);
    assert!(
        o.status
            .message
            .as_deref()
            .is_some_and(|m| m.contains("after 3 attempt(s)") && m.contains("monitoring"))
    );
    // Fixed by hand later: Configured and Remediated.
    let mut st = o.status;
    guest_acts(&mut st, &[]);
    let o = run(&s, Some(&st), 900, true, RemediationMode::Auto);
    assert_eq!(o.status.phase, Some(VmPhase::Configured));
    assert_eq!(reasons(&o), vec!["Remediated"]);
}

#[test]
fn report_only_never_raises_the_attempt() {
    let s = spec();
    let mut st = run(&s, None, 0, true, RemediationMode::ReportOnly).status;
    guest_acts(&mut st, &["timeSync"]);
    let o = run(&s, Some(&st), 10, true, RemediationMode::ReportOnly);
    assert_eq!(o.status.phase, Some(VmPhase::Failed));
    assert_eq!(
        o.status
            .conditions
            .iter()
            .find(|c| c.type_ == READY)
            .map(|c| c.reason.as_str()),
        Some("DriftNotRemediated")
    );
    assert!(!o.remediation_attempted);
    assert_eq!(o.status.desired.map(|d| d.remediation_attempt), Some(0));
}

#[test]
fn disabling_clears_directives_and_keeps_the_configuration() {
    let mut s = spec();
    let mut st = run(&s, None, 0, true, RemediationMode::Auto).status;
    guest_acts(&mut st, &["backup"]);
    st = run(&s, Some(&st), 5, true, RemediationMode::Auto).status;
    s.management.enabled = false;
    let o = run(&s, Some(&st), 6, true, RemediationMode::Auto);
    assert_eq!(o.status.phase, Some(VmPhase::NotManaged));
    let d = o.status.desired.clone().expect("kept");
    assert!(!d.enforce);
    assert_eq!(d.configuration.map(|c| c.hash.clone()), Some(config().hash));
    assert_eq!(o.status.remediation, None);
    assert!(!o.status.conditions.iter().any(|c| c.type_ == DRIFTED));
    assert_eq!(reasons(&o), vec!["ManagementDisabled"]);
}

#[test]
fn unsupported_image_and_missing_profile_fail_with_the_reason() {
    let s = spec();
    let o = decide(Inputs {
        created: None,
        now: t(0),
        generation: Some(1),
        spec: &s,
        status: None,
        profile: resolved(RemediationMode::Auto),
        image_problems: vec![ImageProblem::CapabilityMissing {
            image: "a/b/c".into(),
            missing: vec![Capability::Hotpatch],
        }],
        heartbeat: Heartbeat::Alive {
            renewed: t(0),
            clock_skew: None,
        },
        grace: Duration::from_secs(300),
        assess_request: None,
        clock: crate::clock::Clock::real(),
        guests_refused: None,
    });
    assert_eq!(o.status.phase, Some(VmPhase::Failed));
    assert!(
        o.status
            .message
            .as_deref()
            .is_some_and(|m| m.contains("Hotpatch"))
    );
    assert!(
        o.status.desired.is_none(),
        "nothing is configured on an unsupported image"
    );
    let o = decide(Inputs {
        created: None,
        now: t(0),
        generation: Some(1),
        spec: &s,
        status: None,
        profile: ProfileChoice::Missing {
            name: "gone".into(),
        },
        image_problems: vec![],
        heartbeat: Heartbeat::Alive {
            renewed: t(0),
            clock_skew: None,
        },
        grace: Duration::from_secs(300),
        assess_request: None,
        clock: crate::clock::Clock::real(),
        guests_refused: None,
    });
    assert_eq!(o.status.phase, Some(VmPhase::Failed));
    assert!(
        o.status
            .message
            .as_deref()
            .is_some_and(|m| m.contains("gone"))
    );
}

fn assessed(status: &mut VirtualMachineStatus, at: i64, packages: Vec<(Classification, &str)>) {
    let id = status
        .desired
        .as_ref()
        .and_then(|d| d.assessment.as_ref())
        .map(|a| a.request_id.clone())
        .expect("a request");
    let g = status.guest.get_or_insert_with(Default::default);
    g.assessment = Some(GuestAssessment {
        request_id: id.to_string(),
        status: OperationStatus::Succeeded,
        start_time: Some(Time(t(at))),
        finish_time: Some(Time(t(at))),
        packages: packages
            .into_iter()
            .map(|(c, n)| AvailablePackage {
                name: n.into(),
                version: "2".into(),
                installed_version: None,
                classification: c,
                published: None,
                advisories: Vec::new(),
                cves: Vec::new(),
            })
            .collect(),
        reboot_pending: false,
        error: None,
        snapshot: None,
    });
}

fn with_request(
    spec: &VirtualMachineSpec,
    status: Option<&VirtualMachineStatus>,
    now: i64,
    alive: bool,
    request: Option<&str>,
) -> Outcome {
    decide(Inputs {
        created: None,
        now: t(now),
        generation: Some(1),
        spec,
        status,
        profile: resolved(RemediationMode::Auto),
        image_problems: vec![],
        heartbeat: if alive {
            Heartbeat::Alive {
                renewed: t(now),
                clock_skew: None,
            }
        } else {
            Heartbeat::Missing { last: None }
        },
        grace: Duration::from_secs(300),
        assess_request: request.map(Into::into),
        clock: crate::clock::Clock::real(),
        guests_refused: None,
    })
}

#[test]
fn periodic_assessment_runs_when_due_and_only_while_running() {
    let s = spec();
    // Never assessed: asked with the first configuration even while off (answered when it runs).
    let o = with_request(&s, None, 0, false, None);
    assert!(
        o.status
            .desired
            .as_ref()
            .and_then(|d| d.assessment.as_ref())
            .is_some_and(|a| a.request_id.starts_with("periodic-")),
        "the first request goes with the first configuration"
    );
    let o = with_request(&s, None, 0, true, None);
    let first = o
        .status
        .desired
        .clone()
        .and_then(|d| d.assessment)
        .expect("assess at once");
    assert!(first.request_id.starts_with("periodic-"));
    let mut st = o.status;
    // In flight: no new request.
    let o = with_request(&s, Some(&st), 60, true, None);
    assert_eq!(
        o.status.desired.as_ref().and_then(|d| d.assessment.clone()),
        Some(first.clone())
    );
    assessed(
        &mut st,
        100,
        vec![
            (Classification::Security, "openssl"),
            (Classification::Critical, "kernel"),
            (Classification::Other, "vim"),
        ],
    );
    let o = with_request(&s, Some(&st), 200, true, None);
    let sum = o
        .status
        .patch_status
        .clone()
        .and_then(|p| p.available_patch_summary)
        .expect("summary");
    assert_eq!(
        (sum.critical_and_security_patch_count, sum.other_patch_count),
        (2, 1)
    );
    assert_eq!(
        sum.assessment_activity_id.as_deref(),
        Some(first.request_id.as_str())
    );
    assert_eq!(
        o.status.desired.as_ref().and_then(|d| d.assessment.clone()),
        Some(first.clone()),
        "not due yet"
    );
    assert_eq!(
        o.requeue_after.map(|d| d.as_secs() <= 24 * 3600 - 100),
        Some(true)
    );
    // 24h later it is due again, but not asked while the VM is off.
    let off = with_request(&s, Some(&st), 100 + 24 * 3600, false, None);
    assert_eq!(
        off.status.desired.and_then(|d| d.assessment),
        Some(first.clone()),
        "not while off"
    );
    let o = with_request(&s, Some(&st), 100 + 24 * 3600, true, None);
    let next = o.status.desired.and_then(|d| d.assessment).expect("due");
    assert_ne!(next.request_id, first.request_id);
}

#[test]
fn on_demand_assessment_is_taken_once_and_never_installs() {
    let s = spec();
    let mut st = with_request(&s, None, 0, true, None).status;
    assessed(&mut st, 1, vec![]);
    let o = with_request(&s, Some(&st), 10, true, Some("r1"));
    let d = o.status.desired.clone().expect("desired");
    assert_eq!(
        d.assessment.as_ref().map(|a| a.request_id.as_str()),
        Some("ondemand-r1")
    );
    assert!(d.installation.is_none());
    assert_eq!(
        o.events.iter().map(|e| e.reason).collect::<Vec<_>>(),
        vec!["AssessmentRequested"]
    );
    let mut st = o.status;
    assessed(&mut st, 11, vec![]);
    let o = with_request(&s, Some(&st), 12, true, Some("r1"));
    assert!(o.events.is_empty(), "the same request is not taken twice");
    assert_eq!(
        o.status
            .desired
            .and_then(|d| d.assessment)
            .and_then(|a| a.on_demand),
        Some("r1".into())
    );
}

proptest! {
    /// Whatever the guest reports, in any order, the attempt number only grows, by at most one per
    /// decision, never past maxAttempts within one episode, and only when the guest has caught up.
    #[test]
    fn remediation_attempts_are_bounded(steps in proptest::collection::vec((any::<bool>(), any::<bool>(), 0i64..200), 1..40)) {
        let s = spec();
        let mut st = run(&s, None, 0, true, RemediationMode::Auto).status;
        let mut now = 0;
        for (acts, drifted, dt) in steps {
            now += dt;
            if acts { guest_acts(&mut st, if drifted { &["monitoring"] } else { &[] }); }
            let before = st.desired.as_ref().map_or(0, |d| d.remediation_attempt);
            let caught_up = st.guest.as_ref().is_some_and(|g| g.applied_attempt == before);
            let o = run(&s, Some(&st), now, true, RemediationMode::Auto);
            let after = o.status.desired.as_ref().map_or(0, |d| d.remediation_attempt);
            prop_assert!(after == before || (after == before + 1 && caught_up && o.remediation_attempted));
            prop_assert!(o.status.remediation.as_ref().map_or(0, |r| r.attempts) <= 3);
            let guest = st.guest.clone();
            st = o.status;
            st.guest = guest;
        }
    }

    /// Deciding is a fixed point: decided again on its own write (same inputs, same moment), the
    /// status stays and no Event is published again. The controller relies on it: its own status
    /// writes coming back through the watch reconcile nothing (`controller::own_writes`).
    #[test]
    fn a_decision_stands_on_its_own_write(steps in proptest::collection::vec((any::<bool>(), any::<bool>(), any::<bool>(), 0i64..400), 1..30)) {
        let s = spec();
        let mut st: Option<VirtualMachineStatus> = None;
        let mut now = 0;
        for (acts, drifted, alive, dt) in steps {
            now += dt;
            if let (true, Some(x)) = (acts, st.as_mut())
                && x.desired.is_some()
            {
                guest_acts(x, if drifted { &["monitoring"] } else { &[] });
            }
            let o = run(&s, st.as_ref(), now, alive, RemediationMode::Auto);
            let written = with_controller_part(&st.clone().unwrap_or_default(), &o.status);
            let again = run(&s, Some(&written), now, alive, RemediationMode::Auto);
            prop_assert_eq!(&again.status, &o.status);
            prop_assert!(again.events.is_empty(), "published again: {:?}", reasons(&again));
            st = Some(written);
        }
    }
}

#[test]
fn guest_text_reaches_messages_and_events_sanitised_and_bounded() {
    let s = spec();
    let mut st = run(&s, None, 0, true, RemediationMode::ReportOnly).status;
    guest_acts(&mut st, &["monitoring"]);
    if let Some(g) = st.guest.as_mut() {
        g.services[0].differences = vec![format!("{}\r\x1b[2J", "y".repeat(10_000))];
        g.services[0].compliant = false;
    }
    let o = run(&s, Some(&st), 1, true, RemediationMode::ReportOnly);
    let msg = o.status.message.clone().expect("message");
    assert!(
        msg.len() <= crate::logic::text::MESSAGE + 200,
        "{}",
        msg.len()
    );
    assert!(
        !msg.chars().any(char::is_control),
        "control characters in {msg:?}"
    );
    let drifted = o
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == DRIFTED)
        .expect("Drifted");
    assert!(drifted.message.len() <= crate::logic::text::MESSAGE);
    let note = &o
        .events
        .iter()
        .find(|e| e.reason == "DriftDetected")
        .expect("DriftDetected")
        .note;
    assert!(!note.chars().any(char::is_control));
}

#[test]
fn a_guest_clock_in_the_future_does_not_postpone_assessments() {
    let s = spec();
    let o = with_request(&s, None, 0, true, Some("first"));
    let mut st = o.status;
    // The on-demand answer claims to be from a year ahead.
    assessed(&mut st, 365 * 24 * 3600, vec![]);
    let o = with_request(&s, Some(&st), 10, true, Some("first"));
    let next = o
        .status
        .desired
        .and_then(|d| d.assessment)
        .expect("assessed again");
    assert!(next.request_id.starts_with("periodic-"), "{next:?}");
    // That periodic answer, however dated by the guest, dates from the controller's request.
    let mut st2 = st.clone();
    st2.desired.as_mut().expect("desired").assessment = Some(next.clone());
    assessed(&mut st2, 365 * 24 * 3600, vec![]);
    let o = with_request(&s, Some(&st2), 20, true, Some("first"));
    assert_eq!(
        o.status.desired.as_ref().and_then(|d| d.assessment.clone()),
        Some(next.clone()),
        "not due yet"
    );
    let o = with_request(&s, Some(&st2), 10 + 24 * 3600, true, Some("first"));
    let again = o
        .status
        .desired
        .and_then(|d| d.assessment)
        .expect("due after 24h");
    assert_ne!(again.request_id, next.request_id);
}

#[test]
fn a_skewed_guest_clock_is_reported_once_and_the_vm_still_managed() {
    let s = spec();
    let skewed = |now: i64| Heartbeat::Alive {
        renewed: t(now),
        clock_skew: Some(jiff::SignedDuration::from_hours(3)),
    };
    let input = |status, now| Inputs {
        created: None,
        now: t(now),
        generation: Some(1),
        spec: &s,
        status,
        profile: resolved(RemediationMode::Auto),
        image_problems: vec![],
        heartbeat: skewed(now),
        grace: Duration::from_secs(300),
        assess_request: None,
        clock: crate::clock::Clock::real(),
        guests_refused: None,
    };
    let o = decide(input(None, 0));
    let hb = o
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == HEARTBEAT)
        .expect("heartbeat condition");
    assert_eq!(
        (hb.status.as_str(), hb.reason.as_str()),
        ("True", "ClockSkewed")
    );
    assert!(
        hb.message.contains("3h0m0s ahead of the controller's"),
        "{}",
        hb.message
    );
    let skew_events = |o: &Outcome| {
        o.events
            .iter()
            .filter(|e| e.reason == "ClockSkewed")
            .count()
    };
    assert_eq!(skew_events(&o), 1);
    let mut st = o.status;
    guest_acts(&mut st, &[]);
    let o = decide(input(Some(&st), 30));
    assert_eq!(skew_events(&o), 0, "once per transition");
    assert_eq!(o.status.phase, Some(VmPhase::Configured));
}

#[test]
fn a_vm_rebooting_for_an_install_says_so_while_its_heartbeat_is_gone() {
    let s = spec();
    let o = run(&s, None, 0, true, RemediationMode::Auto);
    let mut st = o.status;
    guest_acts(&mut st, &[]);
    let o = run(&s, Some(&st), 1, true, RemediationMode::Auto);
    let guest = st.guest.clone();
    let mut st = o.status;
    st.guest = guest;
    st.guest.as_mut().expect("guest").installation = Some(GuestInstallation {
        rollout: "release-2026-11".into(),
        wave: 2,
        rollback: false,
        status: OperationStatus::InProgress,
        start_time: Some(Time(t(0))),
        finish_time: None,
        installed: vec![],
        failed: vec![],
        previous_versions: vec![],
        reboot_pending: true,
        maintenance_window_exceeded: false,
        error: None,
        reason: None,
        reboot_started_at: Some(Time(t(1))),
        rebooted_at: None,
        hooks: vec![],
        unavailable: Vec::new(),
    });
    let o = run(&s, Some(&st), 400, false, RemediationMode::Auto);
    assert_eq!(o.status.phase, Some(VmPhase::Pending));
    let hb = o
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == HEARTBEAT)
        .expect("heartbeat");
    assert_eq!(
        (hb.status.as_str(), hb.reason.as_str()),
        ("False", "Rebooting")
    );
    assert!(hb.message.starts_with("rebooting since"), "{}", hb.message);
    assert!(
        o.status
            .message
            .as_deref()
            .is_some_and(|m| m.contains("release-2026-11, wave 2"))
    );
    assert!(o.events.iter().any(|e| e.reason == "Rebooting"));
    assert!(o.events.iter().all(|e| e.reason != "HeartbeatLost"));
}

#[test]
fn a_silent_guest_while_the_api_server_refuses_guests_is_not_called_not_running() {
    let s = spec();
    let o = run(&s, None, 0, true, RemediationMode::Auto);
    let mut st = o.status;
    guest_acts(&mut st, &[]);
    let configured = run(&s, Some(&st), 1, true, RemediationMode::Auto).status;
    assert_eq!(configured.phase, Some(VmPhase::Configured));
    let why = "the API server no longer asks this controller about guest requests";
    let silent = |status: &VirtualMachineStatus, refused: Option<&str>| {
        decide(Inputs {
            created: None,
            now: t(400),
            generation: Some(1),
            spec: &s,
            status: Some(status),
            profile: resolved(RemediationMode::Auto),
            image_problems: vec![],
            heartbeat: Heartbeat::Missing { last: Some(t(1)) },
            grace: Duration::from_secs(300),
            assess_request: None,
            clock: crate::clock::Clock::real(),
            guests_refused: refused,
        })
    };
    let o = silent(&configured, Some(why));
    assert_eq!(o.status.phase, Some(VmPhase::Pending));
    let reason = |o: &Outcome, kind: &str| {
        let c = o
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == kind)
            .expect("condition");
        (c.reason.clone(), c.message.clone())
    };
    let (hb, hb_msg) = reason(&o, HEARTBEAT);
    assert_eq!(hb, "GuestsRefused");
    assert!(hb_msg.starts_with("no heartbeat since"), "{hb_msg}");
    assert!(hb_msg.contains(why), "{hb_msg}");
    assert!(!hb_msg.contains("not running"), "{hb_msg}");
    let (ready, ready_msg) = reason(&o, READY);
    assert_eq!(ready, "GuestsRefused");
    assert!(ready_msg.contains(why), "{ready_msg}");
    let lost: Vec<_> = o
        .events
        .iter()
        .filter(|e| e.reason == "HeartbeatLost")
        .collect();
    assert_eq!(lost.len(), 1, "{:?}", o.events);
    assert!(lost[0].note.contains(why), "{}", lost[0].note);
    // Without the known cause, the VM is not running, as before.
    let o = silent(&configured, None);
    assert_eq!(reason(&o, HEARTBEAT).0, "NoHeartbeat");
    assert_eq!(reason(&o, READY).0, "NoHeartbeat");
}

#[test]
fn a_stale_copy_decides_as_if_the_controllers_last_write_had_arrived() {
    let s = spec();
    let mut stale = run(&s, None, 0, true, RemediationMode::Auto).status;
    guest_acts(&mut stale, &[]);
    // The guest applied: this decision onboards the VM (and says so once).
    let o = run(&s, Some(&stale), 1, true, RemediationMode::Auto);
    let first: Vec<_> = o.events.iter().map(|e| e.reason).collect();
    assert!(o.onboarded.is_some(), "{o:?}");
    // The cache still holds `stale`; with the last write laid over it...
    let seen = with_controller_part(&stale, &o.status);
    assert_eq!(
        controller_part(&seen),
        o.status,
        "the write, as the decision's input"
    );
    assert_eq!(seen.guest, stale.guest, "the guest's report is kept");
    // ...deciding again publishes nothing twice.
    let again = run(&s, Some(&seen), 2, true, RemediationMode::Auto);
    for e in &again.events {
        assert!(!first.contains(&e.reason), "{} published twice", e.reason);
    }
    assert_eq!(again.onboarded, None, "onboarded once");
    // On the stale copy itself (the old code), the same transition is reported again.
    let stale_again = run(&s, Some(&stale), 2, true, RemediationMode::Auto);
    assert!(stale_again.onboarded.is_some());
}

#[test]
fn a_silent_guest_whose_credential_expired_is_told_to_re_enroll() {
    let s = spec();
    let status = VirtualMachineStatus {
        phase: Some(VmPhase::Configured),
        guest: Some(Box::new(GuestState {
            credential_expires_at: Some(Time(t(1000))),
            ..Default::default()
        })),
        ..Default::default()
    };
    // Silent before the expiry: a missing heartbeat, and a wake-up at the expiry.
    let o = with_request(&s, Some(&status), 400, false, None);
    assert_eq!(
        o.status.message.as_deref().map(|m| m.contains("re-enroll")),
        Some(false)
    );
    assert_eq!(o.requeue_after, Some(Duration::from_secs(601)));
    // After it: the condition and the verdict say so, with one Event.
    let o = with_request(&s, Some(&status), 1000, false, None);
    let hb = o
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == HEARTBEAT)
        .expect("heartbeat condition");
    assert_eq!(
        (hb.status.as_str(), hb.reason.as_str()),
        ("False", "CredentialExpired")
    );
    assert!(
        hb.message.contains("re-enroll the machine"),
        "{}",
        hb.message
    );
    assert!(
        o.status
            .message
            .as_deref()
            .unwrap_or("")
            .contains("credential expired at")
    );
    assert_eq!(
        o.events
            .iter()
            .filter(|e| e.reason == "CredentialExpired")
            .count(),
        1
    );
    let mut again = o.status.clone();
    again.guest = status.guest.clone();
    let o = with_request(&s, Some(&again), 1100, false, None);
    assert!(
        o.events.iter().all(|e| e.reason != "CredentialExpired"),
        "said once"
    );
    // A guest that heartbeats is fine whatever its old expiry said.
    let o = with_request(&s, Some(&status), 2000, true, None);
    assert!(o.events.iter().all(|e| e.reason != "CredentialExpired"));
}

#[test]
fn the_rollout_controllers_directives_are_left_to_it() {
    // The rollout controller (its own field manager) writes the installation and the release
    // assessment; the VM controller neither compares nor writes them (else every reconcile of a
    // VM asked for a release assessment would write again).
    let st = VirtualMachineStatus {
        desired: Some(Box::new(crate::api::DesiredState {
            profile: "p".into(),
            installation: Some(Box::default()),
            release_assessment: Some(Box::new(crate::api::AssessmentDirective {
                request_id: "release-r-0a1b2c3d".into(),
                ..Default::default()
            })),
            ..Default::default()
        })),
        ..Default::default()
    };
    let part = controller_part(&st);
    let d = part.desired.as_ref().expect("desired");
    assert!(d.installation.is_none() && d.release_assessment.is_none());
    assert_eq!(with_controller_part(&st, &part).desired, st.desired);
}

#[test]
fn a_new_vms_first_status_waits_briefly_for_its_first_heartbeat() {
    let s = spec();
    let at = |now: i64, alive: bool, status: Option<&VirtualMachineStatus>| {
        decide(Inputs {
            created: Some(t(0)),
            now: t(now),
            generation: Some(1),
            spec: &s,
            status,
            profile: resolved(RemediationMode::Auto),
            image_problems: vec![],
            heartbeat: if alive {
                Heartbeat::Alive {
                    renewed: t(now),
                    clock_skew: None,
                }
            } else {
                Heartbeat::Missing { last: None }
            },
            grace: Duration::from_secs(300),
            assess_request: None,
            clock: crate::clock::Clock::real(),
            guests_refused: None,
        })
    };
    // Just created, no heartbeat yet: nothing to write, a look again when the wait is over.
    let o = at(5, false, None);
    assert_eq!(o.status, VirtualMachineStatus::default());
    assert!(o.events.is_empty());
    assert_eq!(o.requeue_after, Some(Duration::from_secs(25)));
    assert!(o.held_for_first_heartbeat);
    // The guest heartbeats: straight to InProgress, with the configuration to apply.
    let o = at(6, true, None);
    assert!(!o.held_for_first_heartbeat);
    assert_eq!(o.status.phase, Some(VmPhase::InProgress));
    assert!(o.status.desired.is_some_and(|d| d.configuration.is_some()));
    // Silent past the wait: Pending, as before.
    let o = at(30, false, None);
    assert_eq!(o.status.phase, Some(VmPhase::Pending));
    assert!(o.status.desired.is_some());
    assert!(!o.held_for_first_heartbeat);
    // A VM decided before (or that lost its heartbeat) is never held.
    let o = at(5, false, Some(&o.status));
    assert_eq!(o.status.phase, Some(VmPhase::Pending));
}

#[test]
fn the_controller_creates_a_lease_only_for_a_guest_that_has_not() {
    let t0: Timestamp = "2026-11-24T10:00:00Z".parse().expect("time");
    let at = |secs: i64| t0 + jiff::SignedDuration::from_secs(secs);
    // Its guest creates it: not while the guest may still be starting.
    assert!(!lease_overdue(false, Some(t0), at(0)));
    assert!(!lease_overdue(false, Some(t0), at(29)));
    // Not within FIRST_HEARTBEAT_WAIT: an older agent, or a late one.
    assert!(lease_overdue(false, Some(t0), at(30)));
    assert!(lease_overdue(false, None, t0));
    // There is one (whoever made it): nothing to do.
    assert!(!lease_overdue(true, Some(t0), at(3600)));
    assert!(!lease_overdue(true, None, t0));
}
