//! End to end: what one broken or hostile guest can do to the controller. This binary has its own
//! control plane, because it loosens the VirtualMachine CRD for a moment (to store a value an older
//! CRD accepted) and restores it.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use automend::api::VmPhase;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use support::env::{Env, LONG};
use support::{cluster, repo, wait_for};

/// The VirtualMachine CRD without the bounds on guest times (as CRDs before them were).
fn loosened_crd() -> std::path::PathBuf {
    let text = std::fs::read_to_string(repo().join("crds/virtualmachines.automend.io.yaml"))
        .expect("reading the CRD");
    let mut out = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        // Drop each `x-kubernetes-validations:` block whose rule is the guest-time bound.
        if line.trim() == "x-kubernetes-validations:"
            && lines
                .peek()
                .is_some_and(|next| next.contains("must be a time between 2000-01-01"))
        {
            lines.next();
            lines.next();
            continue;
        }
        out.push(line);
    }
    let loose = out.join("\n");
    assert!(!loose.contains("timestamp('2200"), "the time bound is gone");
    let path = repo().join("target/e2e-loosened-vm-crd.yaml");
    std::fs::write(&path, loose + "\n").expect("writing the loosened CRD");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poisoned_vm_is_reported_and_every_other_vm_stays_managed() {
    let mut env = Env::new("poison").await;
    let c = cluster();
    let prod = env
        .profile(
            "prod",
            json!({ "environment": "Production",
                    "remediation": { "mode": "Auto", "maxAttempts": 3, "initialBackoff": "1s", "maxBackoff": "2s" } }),
        )
        .await;
    for vm in ["bad", "good-1", "good-2"] {
        env.vm(vm, Some(&prod), BTreeMap::new(), BTreeMap::new())
            .await;
    }

    // A time the controller's time type cannot hold, stored while the CRD allowed it (an object
    // from before the bounds). The restored CRD keeps it (validation ratcheting).
    let loose = loosened_crd();
    let loose = loose.to_string_lossy();
    c.kubectl_ok(&["apply", "--server-side", "--force-conflicts", "-f", &loose]);
    let poison = json!({ "status": { "guest": { "installation": {
        "rollout": "r", "wave": 1, "status": "Succeeded", "finishTime": "9999-12-31T23:59:59Z" } } } })
    .to_string();
    // kubectl, since this crate cannot even read the answer.
    let ns = env.ns.name.clone();
    wait_for("the loosened CRD to take the poison", LONG, || async {
        let out = c.kubectl(&[
            "patch",
            "virtualmachine",
            "-n",
            &ns,
            "bad",
            "--subresource=status",
            "--type=merge",
            "-p",
            &poison,
        ]);
        out.status.success().then_some(())
    })
    .await;
    c.kubectl_ok(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        "crds/virtualmachines.automend.io.yaml",
    ]);
    // kubectl, since this crate cannot even read the object.
    let bad = |jsonpath: &str| {
        c.kubectl_ok(&[
            "get",
            "virtualmachine",
            "-n",
            &ns,
            "bad",
            "-o",
            &format!("jsonpath={jsonpath}"),
        ])
        .trim()
        .to_string()
    };
    assert_eq!(
        bad("{.status.guest.installation.finishTime}"),
        "9999-12-31T23:59:59Z"
    );

    // A controller started now lists every VM of the namespace, the poisoned one among them.
    let ctl = env.controller(&["--leader-elect=false"]);
    env.sim().await;
    env.wait_phase("good-1", VmPhase::Configured).await;
    env.wait_phase("good-2", VmPhase::Configured).await;

    // The poisoned VM is reported: a Warning Event and the Ready condition, phase and message.
    let notes = wait_for("the InvalidObject Event", LONG, || async {
        let notes = env.event_notes("bad").await;
        notes
            .iter()
            .any(|(r, _)| r == "InvalidObject")
            .then_some(notes)
    })
    .await;
    let (_, note) = notes
        .iter()
        .find(|(r, _)| r == "InvalidObject")
        .expect("event");
    assert!(note.contains("cannot read this VirtualMachine"), "{note}");
    assert_eq!(
        bad("{.status.phase} {.status.conditions[?(@.type==\"Ready\")].reason}"),
        "Failed InvalidObject"
    );

    // Drift on the others is still handled.
    env.annotate("good-1", "sim.automend.io/drift", "monitoring")
        .await;
    wait_for("good-1's drift to be remediated", LONG, || async {
        env.events("good-1")
            .await
            .iter()
            .any(|e| e == "Remediated")
            .then_some(())
    })
    .await;

    // Fixed by hand (the field removed): managed again.
    env.vms
        .patch_status(
            "bad",
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": { "guest": { "installation": null } } })),
        )
        .await
        .expect("removing the poison");
    env.wait_phase("bad", VmPhase::Configured).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    env.finish(ctl).await;
}

/// A guest's clock (or a forged `renewTime`) three hours ahead: reported as skew, and a guest
/// that then stops renewing is Pending after the grace period, not three hours later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_clock_ahead_is_reported_and_does_not_keep_a_stopped_vm_alive() {
    use k8s_openapi::api::coordination::v1::Lease;
    let mut env = Env::new("clock").await;
    let prod = env
        .profile("prod", json!({ "environment": "Production" }))
        .await;
    env.vm("ahead", Some(&prod), BTreeMap::new(), BTreeMap::new())
        .await;
    let ctl = env.controller(&["--leader-elect=false"]);
    env.sim().await;
    env.wait_phase("ahead", VmPhase::Configured).await;
    // The simulated machine stops; its heartbeats stop with it.
    env.annotate("ahead", "sim.automend.io/power", "off").await;
    env.wait_phase("ahead", VmPhase::Pending).await;

    // As the VM's own guest identity: a renewal stamped three hours ahead.
    let c = cluster();
    let guest = automend::guest::sim::guest_client(
        &env.client,
        &c.config().await,
        &env.ns.name,
        "ahead",
        Duration::from_secs(600),
    )
    .await
    .expect("guest client");
    let leases: kube::Api<Lease> = kube::Api::namespaced(guest, &env.ns.name);
    let ahead = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(3);
    let renew =
        json!({ "spec": { "renewTime": ahead.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string() } });
    leases
        .patch("ahead", &PatchParams::default(), &Patch::Merge(renew))
        .await
        .expect("the guest renews its own Lease");
    let renewed_at = std::time::Instant::now();

    // Counted as a heartbeat, with the skew reported.
    let heartbeat = |vm: automend::api::VirtualMachine| {
        vm.status
            .and_then(|s| s.conditions.into_iter().find(|c| c.type_ == "Heartbeat"))
    };
    let hb = wait_for("the skew to be reported", LONG, || async {
        heartbeat(env.get("ahead").await).filter(|c| c.reason == "ClockSkewed")
    })
    .await;
    assert_eq!(hb.status, "True");
    assert!(
        hb.message.contains("ahead of the controller's"),
        "{}",
        hb.message
    );
    wait_for("the ClockSkewed Event", LONG, || async {
        env.events("ahead")
            .await
            .iter()
            .any(|e| e == "ClockSkewed")
            .then_some(())
    })
    .await;

    // No renewal since: Pending once the grace period (6 s) has passed on the controller's
    // clock — not when the guest's claimed time plus grace comes, three hours from now.
    env.wait_phase("ahead", VmPhase::Pending).await;
    let took = renewed_at.elapsed();
    assert!(took < Duration::from_secs(60), "{took:?}");
    let hb = heartbeat(env.get("ahead").await).expect("heartbeat condition");
    assert_eq!(
        (hb.status.as_str(), hb.reason.as_str()),
        ("False", "NoHeartbeat")
    );
    env.finish(ctl).await;
}
