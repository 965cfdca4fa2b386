//! What a release contains: the release-time cut-off, approval policies (a profile's, a ring's
//! override), what is left out and why, and repository snapshots (the release assessment the
//! freeze waits for, the snapshot every install reads).

use super::*;
use crate::api::{ApprovalPolicy, LeftOutReason, SnapshotRepository};

fn dated(name: &str, version: &str, c: Classification, published: &str) -> AvailablePackage {
    AvailablePackage {
        published: Some(Time(ts(published))),
        ..pkg(name, version, "1.0", c)
    }
}

fn two_rings() -> World {
    let mut w = World::new(
        2,
        vec![
            ("test".into(), ring(0, "0s", "1h", 50)),
            ("broad".into(), ring(1, "24h", "1h", 50)),
        ],
    );
    for vm in &mut w.vms {
        vm.assessment.packages = vec![
            dated(
                "libssl",
                "1.1",
                Classification::Security,
                "2026-11-01T00:00:00Z",
            ),
            dated(
                "openssl",
                "3.1",
                Classification::Security,
                "2026-11-09T00:00:00Z",
            ),
            dated(
                "kernel",
                "5.2",
                Classification::Critical,
                "2026-11-12T00:00:00Z",
            ),
            pkg("curl", "8.0", "7.0", Classification::Security),
            pkg("tool", "2.0", "1.0", Classification::Other),
            pkg("secret-agent", "9", "8", Classification::Security),
        ];
        vm.approval = Some(ApprovalPolicy {
            approve_after: Some("168h".into()),
            ..Default::default()
        });
    }
    w
}

fn left(w: &World) -> Vec<String> {
    let m = w
        .status
        .as_ref()
        .and_then(|s| s.manifest.as_ref())
        .expect("frozen");
    m.left_out
        .iter()
        .map(|l| {
            format!(
                "{} {:?} {}",
                l.name,
                l.reason,
                l.policy.as_deref().unwrap_or("rollout")
            )
        })
        .collect()
}

#[test]
fn the_cut_off_and_approval_policies_leave_out_what_they_must_and_say_why() {
    let mut w = two_rings();
    // Broad's policy: only libssl and openssl, whatever the profile says.
    w.rings[1].1.approval = Some(ApprovalPolicy {
        include: Some(vec!["libssl".into(), "openssl*".into()]),
        approve_after: Some("0s".into()),
        ..Default::default()
    });
    let out = w.step();
    let m = out.status.manifest.clone().expect("frozen");
    let pinned: Vec<&str> = m.families[0]
        .packages
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    // Candidates: the rollout's own filters only (classification, exclude, the cut-off).
    assert_eq!(pinned, ["curl", "libssl", "openssl"]);
    assert_eq!(
        m.families[0].packages[1]
            .published
            .as_ref()
            .map(|t| t.0.to_string()),
        Some("2026-11-01T00:00:00Z".into())
    );
    let mut got = left(&w);
    got.sort();
    assert_eq!(
        got,
        [
            "curl NotIncluded profile production, ring broad",
            // No publication date while approveAfter is set: not approved.
            "curl NotYetApproved profile production",
            "kernel PublishedAfterRelease rollout",
            // Published a day before the release: not seven.
            "openssl NotYetApproved profile production",
            "secret-agent Excluded rollout",
            "tool OutsideClassifications rollout",
        ]
    );
    assert!(
        w.events
            .iter()
            .any(|e| e.reason == "ManifestFrozen" && e.note.contains("6 update(s) left out")),
        "{:?}",
        w.events
    );
    // The test ring installs what its profile's policy approves.
    for wr in &out.writes {
        let names: Vec<&str> = wr
            .directive
            .packages
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(names, ["libssl"]);
    }
    // Broad (its own policy) gets openssl too, a day later.
    w.run_until(ts("2026-11-12T18:00:00Z"), Duration::from_secs(1800));
    let broad: Vec<Vec<String>> = w
        .vms
        .iter()
        .filter(|v| v.ring == 1)
        .map(|v| {
            v.installs
                .iter()
                .flat_map(|(_, p)| p.iter().map(|p| p.name.clone()))
                .collect()
        })
        .collect();
    assert_eq!(
        broad,
        [vec!["libssl", "openssl"], vec!["libssl", "openssl"]]
    );
}

#[test]
fn policy_reasons_follow_the_patterns_and_the_dates() {
    let release = ts("2026-11-10T00:00:00Z");
    let p = ApprovalPolicy {
        approve_after: Some("72h".into()),
        include: Some(vec!["lib*".into(), "openssl".into()]),
        exclude: Some(vec!["libbad".into()]),
    };
    let day = |d: &str| Some(ts(&format!("2026-11-{d}T00:00:00Z")));
    assert_eq!(
        policy_reason(&p, "libbad", day("01"), release),
        Some(LeftOutReason::Excluded)
    );
    assert_eq!(
        policy_reason(&p, "curl", day("01"), release),
        Some(LeftOutReason::NotIncluded)
    );
    assert_eq!(policy_reason(&p, "libssl", day("07"), release), None);
    assert_eq!(
        policy_reason(&p, "libssl", day("08"), release),
        Some(LeftOutReason::NotYetApproved)
    );
    assert_eq!(
        policy_reason(&p, "openssl", None, release),
        Some(LeftOutReason::NotYetApproved)
    );
    assert_eq!(
        policy_reason(&ApprovalPolicy::default(), "x", None, release),
        None
    );
}

#[test]
fn a_snapshot_release_freezes_from_assessments_against_the_snapshot_and_installs_from_it() {
    let mut w = two_rings();
    for vm in &mut w.vms {
        vm.approval = None;
        vm.snapshots = vec![SnapshotRepository {
            repository: "http://deb.debian.org/debian".into(),
            template: "https://snapshot.debian.org/archive/debian/{timestamp}/".into(),
        }];
        // Now the repository offers libssl 1.2; at the release's snapshot it offered 1.1.
        vm.assessment.packages = vec![pkg("libssl", "1.2", "1.0", Classification::Security)];
        vm.at_snapshot = vec![pkg("libssl", "1.1", "1.0", Classification::Security)];
    }
    // One test VM is off: the freeze does not wait for it (as for ordinary assessments).
    w.vms[1].running = false;
    let out = w.decide();
    assert!(
        out.status.manifest.is_none(),
        "frozen before the release assessments"
    );
    let asked: Vec<usize> = out.release_assessments.iter().map(|(i, _)| *i).collect();
    assert_eq!(asked, [0, 2, 3], "every running VM in a ring is asked");
    let d = &out.release_assessments[0].1;
    assert!(
        d.request_id.starts_with("release-release-2026-11-"),
        "{}",
        d.request_id
    );
    let snap = d.snapshot.as_ref().expect("snapshot");
    assert_eq!(snap.timestamp, "20261110T180000Z");
    assert_eq!(
        snap.repositories[0].url,
        "https://snapshot.debian.org/archive/debian/20261110T180000Z/"
    );
    assert!(out.writes.is_empty());
    assert!(
        matches!(
            &out.states[0],
            VmState::Waiting(Some(why)) if why.contains("snapshot")
        ),
        "{:?}",
        out.states[0]
    );

    // The guests answer; the next decision freezes from their answers and installs from the
    // snapshot.
    w.step();
    let out = w.step();
    let m = out.status.manifest.clone().expect("frozen");
    assert_eq!(m.families[0].snapshot.as_deref(), Some("20261110T180000Z"));
    assert_eq!(m.families[0].packages[0].version, "1.1");
    let started: Vec<&VmWrite> = out.writes.iter().collect();
    assert!(!started.is_empty());
    for wr in started {
        assert_eq!(wr.directive.packages[0].version, "1.1");
        assert_eq!(
            wr.directive
                .snapshot
                .as_ref()
                .map(|s| s.repositories[0].url.as_str()),
            Some("https://snapshot.debian.org/archive/debian/20261110T180000Z/")
        );
    }
    // Asked once: the directive is in place, nothing asked again.
    assert!(w.decide().release_assessments.is_empty());
}

#[test]
fn a_failed_release_assessment_is_asked_again_and_a_new_template_is_assessed_anew() {
    let mut w = two_rings();
    for vm in &mut w.vms {
        vm.approval = None;
        vm.snapshots = vec![SnapshotRepository {
            repository: "http://deb.debian.org/debian".into(),
            template: "https://snapshot.example/wrong/{timestamp}/".into(),
        }];
    }
    w.step();
    // Every guest answers with a failure (the snapshot does not exist).
    for vm in &mut w.vms {
        let a = vm.release_assessment.as_mut().expect("answered");
        a.status = OperationStatus::Failed;
        a.error = Some("404 Not Found: https://snapshot.example/wrong/…".into());
        a.finish_time = Some(Time(w.now));
    }
    let out = w.decide();
    assert!(out.release_assessments.is_empty(), "not at once");
    assert!(
        matches!(
            &out.states[0],
            VmState::Waiting(Some(why)) if why.contains("failed") && why.contains("404 Not Found")
        ),
        "{:?}",
        out.states[0]
    );
    assert!(
        out.requeue_after
            .is_some_and(|d| d <= Duration::from_secs(600))
    );
    w.now = add(w.now, Duration::from_secs(600));
    let out = w.decide();
    let first = w.vms[0]
        .release_directive
        .clone()
        .expect("asked")
        .request_id;
    let again = &out.release_assessments[0].1.request_id;
    assert_eq!(*again, format!("{first}-2"));
    // A corrected template is a new request.
    for vm in &mut w.vms {
        vm.snapshots[0].template = "https://snapshot.debian.org/archive/debian/{timestamp}/".into();
    }
    let out = w.decide();
    let fixed = &out.release_assessments[0].1;
    assert!(
        !fixed.request_id.starts_with(first.as_str()),
        "{}",
        fixed.request_id
    );
    assert!(
        fixed
            .snapshot
            .as_ref()
            .is_some_and(|s| s.repositories[0].url.contains("snapshot.debian.org"))
    );
}
