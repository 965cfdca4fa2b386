//! End to end: the controller (a child process) and simulated guests (in process, each with its
//! own identity) against a real API server. Each test has its own namespace, profiles and
//! controller.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use automend::api::{VirtualMachine, VmPhase};
use automend::guest::sim;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use support::env::{Env, LONG};
use support::{cluster, wait_for};

fn fast_remediation() -> serde_json::Value {
    json!({ "mode": "Auto", "maxAttempts": 2, "initialBackoff": "1s", "maxBackoff": "2s" })
}

fn no_labels() -> BTreeMap<&'static str, &'static str> {
    BTreeMap::new()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onboarding_then_a_profile_edit_re_rolls_configuration() {
    let mut env = Env::new("onboard").await;
    let ctl = env.controller(&["--leader-elect=false"]);
    let prod = env
        .profile(
            "prod",
            json!({ "environment": "Production", "remediation": fast_remediation() }),
        )
        .await;
    let dev = env
        .profile("dev", json!({ "environment": "DevTest" }))
        .await;
    for vm in ["web-1", "web-2", "web-3"] {
        env.vm(vm, Some(&prod), no_labels(), no_labels()).await;
    }
    env.vm("build-1", Some(&dev), no_labels(), no_labels())
        .await;
    env.sim().await;
    for vm in ["web-1", "web-2", "web-3", "build-1"] {
        let v = env.wait_phase(vm, VmPhase::Configured).await;
        let st = v.status.expect("status");
        assert_eq!(st.observed_generation, v.metadata.generation);
        assert!(
            st.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True"),
            "{:?}",
            st.conditions
        );
        assert_eq!(env.applies(vm), 1, "{vm} applied once");
    }
    // Onboardings are reported per profile, once per VM; no VM has an Event of its own for it.
    assert_eq!(
        env.wait_onboarded(&prod, &["web-1", "web-2", "web-3"])
            .await,
        vec![1, 1, 1]
    );
    assert_eq!(env.wait_onboarded(&dev, &["build-1"]).await, vec![1]);
    assert_eq!(ctl.metric("automend_vms_onboarded_total").await, 4.0);
    for vm in ["web-1", "web-2", "web-3", "build-1"] {
        let events = env.events(vm).await;
        assert!(!events.iter().any(|e| e == "Onboarded"), "{vm}: {events:?}");
    }

    // Steady state (once every VM's first assessment is reported, which writes its
    // availablePatchSummary): guests renew their Leases every second, yet nothing is written and
    // the VMs are not reconciled once per renewal (at most once per grace period, to catch expiry).
    for vm in ["web-1", "web-2", "web-3", "build-1"] {
        wait_for("the first assessment's summary", LONG, || async {
            env.get(vm)
                .await
                .status
                .and_then(|s| s.patch_status)
                .and_then(|p| p.available_patch_summary)
                .map(|_| ())
        })
        .await;
    }
    // ...and once the profiles count their VMs as Configured (recounted every 10 s).
    for (profile, configured) in [(&prod, 3), (&dev, 1)] {
        wait_for("the profile's count of configured VMs", LONG, || async {
            let p = env.profiles.get(profile).await.ok()?;
            (p.status?.phase_counts.configured == configured).then_some(())
        })
        .await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let reconciles = r#"automend_reconciles_total{controller="virtualmachine"}"#;
    let writes = r#"automend_status_writes_total{controller="virtualmachine"}"#;
    // Every request the controller makes is counted by verb and resource; in steady state none
    // of them writes.
    let api_writes = |text: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with("automend_api_requests_total{"))
            .filter(|l| {
                ["create", "update", "patch", "delete"]
                    .iter()
                    .any(|v| l.contains(&format!("verb=\"{v}\"")))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let sa = r#"automend_api_requests_total{verb="create",resource="serviceaccounts"}"#;
    assert!(ctl.metric(sa).await >= 4.0, "{}", ctl.metrics().await);
    let (r0, w0) = (ctl.metric(reconciles).await, ctl.metric(writes).await);
    let m0 = ctl.metrics().await;
    let a0 = api_writes(&m0);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (r1, w1) = (ctl.metric(reconciles).await, ctl.metric(writes).await);
    assert_eq!(w1, w0, "no status writes in steady state");
    let metrics = ctl.metrics().await;
    let changed: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("automend_api_requests_total{") && !m0.lines().any(|m| m == *l))
        .collect();
    assert_eq!(
        api_writes(&metrics),
        a0,
        "no API writes in steady state; changed: {changed:#?}"
    );
    assert!(
        r1 - r0 <= 8.0,
        "4 VMs x 5 renewals caused {} reconciles",
        r1 - r0
    );

    // The profile's status is resolved and counted.
    let profiles = env.profiles.clone();
    let prod_name = prod.clone();
    let p = wait_for("the profile to count its 3 configured VMs", LONG, || {
        let profiles = profiles.clone();
        let prod_name = prod_name.clone();
        async move {
            let p = profiles.get(&prod_name).await.ok()?;
            (p.status.as_ref()?.phase_counts.configured == 3).then_some(p)
        }
    })
    .await;
    let st = p.status.expect("status");
    assert_eq!(st.vm_count, 3);
    let old_hash = st.effective_configuration.expect("effective").hash;
    assert_eq!(st.observed_generation, p.metadata.generation);

    // Edit the profile: its VMs get the new configuration; the other profile's VM is untouched.
    env.profiles
        .patch(
            &prod,
            &PatchParams::default(),
            &Patch::Merge(
                json!({ "spec": { "preferences": { "backup": { "retentionDays": 30 } } } }),
            ),
        )
        .await
        .expect("editing the profile");
    for vm in ["web-1", "web-2", "web-3"] {
        let vms = env.vms.clone();
        let old = old_hash.clone();
        wait_for(
            &format!("{vm} to apply the new configuration"),
            LONG,
            || {
                let vms = vms.clone();
                let old = old.clone();
                async move {
                    let v = vms.get(vm).await.ok()?;
                    let s = v.status?;
                    let g = s.guest?;
                    let d = s.desired?;
                    let hash = d.configuration?.hash.clone();
                    (hash != old
                        && g.applied_hash.as_deref() == Some(hash.as_str())
                        && s.phase == Some(VmPhase::Configured))
                    .then_some(())
                }
            },
        )
        .await;
        let v = env.get(vm).await;
        let backup = v
            .status
            .and_then(|s| s.desired)
            .and_then(|d| d.configuration)
            .map(|c| c.services.backup.clone());
        assert_eq!(backup.map(|b| b.retention_days), Some(30));
        assert_eq!(env.applies(vm), 2, "{vm} applied the edit once");
    }
    assert_eq!(
        env.applies("build-1"),
        1,
        "the DevTest VM was not re-configured"
    );
    env.finish(ctl).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_is_remediated_and_failing_remediation_ends_failed() {
    let mut env = Env::new("drift").await;
    let ctl = env.controller(&["--leader-elect=false"]);
    let prod = env
        .profile(
            "prod",
            json!({ "environment": "Production", "remediation": fast_remediation() }),
        )
        .await;
    env.vm("ok-1", Some(&prod), no_labels(), no_labels()).await;
    env.vm(
        "bad-1",
        Some(&prod),
        no_labels(),
        BTreeMap::from([(sim::FAIL_REMEDIATION, "true")]),
    )
    .await;
    env.sim().await;
    env.wait_phase("ok-1", VmPhase::Configured).await;
    env.wait_phase("bad-1", VmPhase::Configured).await;

    env.annotate("ok-1", sim::DRIFT, "monitoring").await;
    env.annotate("bad-1", sim::DRIFT, r#"timeSync.servers=["rogue.example"]"#)
        .await;

    let vms = env.vms.clone();
    wait_for("ok-1 to be remediated", LONG, || {
        let vms = vms.clone();
        async move {
            let v = vms.get("ok-1").await.ok()?;
            let s = v.status?;
            let remediated = s
                .conditions
                .iter()
                .any(|c| c.type_ == "Drifted" && c.status == "False");
            (s.phase == Some(VmPhase::Configured)
                && remediated
                && s.desired?.remediation_attempt >= 1)
                .then_some(())
        }
    })
    .await;
    let events = env
        .events_with("ok-1", &["DriftDetected", "Remediated"])
        .await;
    let detected = events
        .iter()
        .position(|e| e == "DriftDetected")
        .expect("DriftDetected event");
    let remediated = events
        .iter()
        .position(|e| e == "Remediated")
        .expect("Remediated event");
    assert!(detected < remediated, "{events:?}");

    let bad = env.wait_phase("bad-1", VmPhase::Failed).await;
    let st = bad.status.expect("status");
    let ready = st
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .expect("Ready");
    assert_eq!(ready.reason, "RemediationFailed");
    let msg = st.message.unwrap_or_default();
    assert!(
        msg.contains("after 2 attempt(s)")
            && msg.contains("timeSync")
            && msg.contains("rogue.example"),
        "{msg}"
    );
    env.events_with("bad-1", &["RemediationFailed"]).await;
    // Onboarding plus two attempts, and nothing after Failed.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(env.applies("bad-1"), 3);

    let metrics = ctl.metrics().await;
    assert!(
        ctl.metric("automend_drift_detected_total").await >= 2.0,
        "{metrics}"
    );
    assert!(
        ctl.metric("automend_remediation_failed_total").await >= 1.0,
        "{metrics}"
    );
    assert!(
        ctl.metric("automend_remediated_total").await >= 1.0,
        "{metrics}"
    );
    // Without leader election this process is the one that acts, and says so.
    assert_eq!(ctl.metric("automend_leader").await, 1.0, "{metrics}");
    env.finish(ctl).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_heartbeat_is_pending_until_the_vm_runs() {
    let mut env = Env::new("pending").await;
    let ctl = env.controller(&["--leader-elect=false"]);
    let prod = env
        .profile("prod", json!({ "environment": "Production" }))
        .await;
    env.vm(
        "off-1",
        Some(&prod),
        no_labels(),
        BTreeMap::from([(sim::POWER, "off")]),
    )
    .await;
    env.sim().await;
    let v = env.wait_phase("off-1", VmPhase::Pending).await;
    let st = v.status.expect("status");
    assert!(
        st.conditions
            .iter()
            .any(|c| c.type_ == "Heartbeat" && c.status == "False")
    );
    assert!(
        st.desired.is_some(),
        "the configuration waits for the guest"
    );
    assert_eq!(env.applies("off-1"), 0);
    env.annotate("off-1", sim::POWER, "on").await;
    env.wait_phase("off-1", VmPhase::Configured).await;
    // Power off again: Pending once the grace period (6 s) passes.
    env.annotate("off-1", sim::POWER, "off").await;
    env.wait_phase("off-1", VmPhase::Pending).await;
    env.events_with("off-1", &["HeartbeatLost"]).await;
    env.finish(ctl).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_stops_drift_handling_and_changes_nothing_on_the_guest() {
    let mut env = Env::new("disable").await;
    let ctl = env.controller(&["--leader-elect=false"]);
    let prod = env
        .profile(
            "prod",
            json!({ "environment": "Production", "remediation": fast_remediation() }),
        )
        .await;
    let other = env
        .profile("other", json!({ "environment": "DevTest" }))
        .await;
    env.vm("vm-1", Some(&prod), no_labels(), no_labels()).await;
    env.sim().await;
    env.wait_phase("vm-1", VmPhase::Configured).await;

    // The profile cannot change while management stays enabled.
    let err = env
        .vms
        .patch(
            "vm-1",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "management": { "profile": other } } })),
        )
        .await
        .expect_err("changing the profile while enabled");
    assert!(
        err.to_string()
            .contains("cannot change while management is enabled"),
        "{err}"
    );

    env.vms
        .patch(
            "vm-1",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "management": { "enabled": false } } })),
        )
        .await
        .expect("disabling");
    let v = env.wait_phase("vm-1", VmPhase::NotManaged).await;
    let d = v.status.and_then(|s| s.desired).expect("desired kept");
    assert!(!d.enforce);
    assert!(
        d.configuration.is_some(),
        "the configuration is kept, not undone"
    );
    let applies = env.applies("vm-1");
    env.annotate("vm-1", sim::DRIFT, "backup").await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let v = env.get("vm-1").await;
    let st = v.status.expect("status");
    assert_eq!(st.phase, Some(VmPhase::NotManaged));
    assert!(
        st.guest
            .expect("guest")
            .services
            .iter()
            .any(|s| s.name == "backup" && !s.compliant),
        "the guest still reports"
    );
    assert_eq!(
        env.applies("vm-1"),
        applies,
        "nothing applied on the guest after disabling"
    );
    let events = env.events_with("vm-1", &["ManagementDisabled"]).await;
    assert!(!events.contains(&"DriftDetected".to_string()), "{events:?}");

    // Re-enable with the other profile: allowed after disabling, and it onboards again.
    env.vms
        .patch(
            "vm-1",
            &PatchParams::default(),
            &Patch::Merge(
                json!({ "spec": { "management": { "enabled": true, "profile": other } } }),
            ),
        )
        .await
        .expect("re-enabling with another profile");
    let v = env.wait_phase("vm-1", VmPhase::Configured).await;
    assert_eq!(
        v.status.and_then(|s| s.profile).as_deref(),
        Some(other.as_str())
    );
    env.finish(ctl).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assignment_selectors_onboard_vms_that_name_no_profile() {
    let mut env = Env::new("assign").await;
    let ctl = env.controller(&["--leader-elect=false"]);
    let web = env
        .profile("web", json!({ "environment": "Production", "assignment": { "selector": { "matchLabels": { "tier": "web" } }, "priority": 10 } }))
        .await;
    let all = env
        .profile(
            "all",
            json!({ "environment": "DevTest", "assignment": { "selector": {} } }),
        )
        .await;
    env.vm("w-1", None, BTreeMap::from([("tier", "web")]), no_labels())
        .await;
    env.vm("d-1", None, BTreeMap::from([("tier", "db")]), no_labels())
        .await;
    env.sim().await;
    let w = env.wait_phase("w-1", VmPhase::Configured).await;
    let st = w.status.expect("status");
    assert_eq!(st.profile.as_deref(), Some(web.as_str()));
    let resolved = st
        .conditions
        .iter()
        .find(|c| c.type_ == "ProfileResolved")
        .expect("condition");
    assert_eq!(resolved.reason, "ResolvedWithOverlap");
    assert!(resolved.message.contains(&all), "{}", resolved.message);
    let d = env.wait_phase("d-1", VmPhase::Configured).await;
    assert_eq!(
        d.status.and_then(|s| s.profile).as_deref(),
        Some(all.as_str())
    );
    // The losing profile reports the overlap.
    let profiles = env.profiles.clone();
    let all2 = all.clone();
    wait_for(
        "the overlap condition on the lower-priority profile",
        LONG,
        || {
            let profiles = profiles.clone();
            let all2 = all2.clone();
            async move {
                let p = profiles.get(&all2).await.ok()?;
                p.status?
                    .conditions
                    .iter()
                    .any(|c| c.type_ == "Overlapping" && c.status == "True")
                    .then_some(())
            }
        },
    )
    .await;

    // Assignment is sticky, and the condition says so: `all` now outranks `web` for w-1, which
    // stays where it was onboarded.
    env.profiles
        .patch(
            &all,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "assignment": { "priority": 100 } } })),
        )
        .await
        .expect("raising all's priority");
    let vms = env.vms.clone();
    let msg = wait_for("w-1's condition to say it stays", LONG, || {
        let vms = vms.clone();
        async move {
            let v = vms.get("w-1").await.ok()?;
            let c = v
                .status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "ProfileResolved")?;
            c.message.contains("now ranks first").then_some(c.message)
        }
    })
    .await;
    assert!(msg.contains(&format!("stays with {web}")), "{msg}");
    assert_eq!(
        env.get("w-1")
            .await
            .status
            .and_then(|s| s.profile)
            .as_deref(),
        Some(web.as_str())
    );

    // Deleting a profile in use waits for its VMs: nothing moves them to another profile.
    env.profiles
        .delete(&web, &Default::default())
        .await
        .expect("deleting web");
    let profiles = env.profiles.clone();
    let web2 = web.clone();
    let deleting = wait_for("the Deleting condition on web", LONG, || {
        let profiles = profiles.clone();
        let web2 = web2.clone();
        async move {
            let p = profiles.get(&web2).await.ok()?;
            p.metadata.deletion_timestamp.as_ref()?;
            p.status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "Deleting" && c.status == "True")
        }
    })
    .await;
    assert_eq!(deleting.reason, "InUse");
    assert!(deleting.message.contains("/w-1"), "{}", deleting.message);
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(env.client.clone(), "default");
    // Published right after the condition: waited for, not raced.
    let blocked: Vec<_> = wait_for("the DeletionBlocked Event", LONG, || async {
        let blocked: Vec<_> = events
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .into_iter()
            .filter(|e| {
                e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(web.as_str())
                    && e.reason.as_deref() == Some("DeletionBlocked")
            })
            .collect();
        (!blocked.is_empty()).then_some(blocked)
    })
    .await;
    assert_eq!(blocked.len(), 1, "{blocked:?}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let w = env.get("w-1").await;
    assert_eq!(
        w.status.as_ref().and_then(|s| s.profile.as_deref()),
        Some(web.as_str()),
        "w-1 was moved by a deletion"
    );
    assert_eq!(w.status.and_then(|s| s.phase), Some(VmPhase::Configured));
    // Its last VM gone, the profile goes too.
    env.vms
        .delete("w-1", &Default::default())
        .await
        .expect("deleting w-1");
    let profiles = env.profiles.clone();
    let web2 = web.clone();
    wait_for("web to be deleted once unused", LONG, || {
        let profiles = profiles.clone();
        let web2 = web2.clone();
        async move { profiles.get_opt(&web2).await.ok()?.is_none().then_some(()) }
    })
    .await;
    env.finish(ctl).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_may_write_only_its_own_status_guest() {
    let mut env = Env::new("identity").await;
    let ctl = env.controller(&["--leader-elect=false"]);
    let prod = env
        .profile("prod", json!({ "environment": "Production" }))
        .await;
    env.vm("a", Some(&prod), no_labels(), no_labels()).await;
    env.vm("b", Some(&prod), no_labels(), no_labels()).await;
    env.sim().await;
    env.wait_phase("a", VmPhase::Configured).await;
    env.wait_phase("b", VmPhase::Configured).await;
    // Each guest created its own Lease (by name, as its Role allows); the controller wrote none.
    for vm in ["a", "b"] {
        let (lease, managers) = env.lease_managers(vm).await;
        assert_eq!(
            managers,
            [automend::identity::GUEST_MANAGER],
            "{vm}: {lease:?}"
        );
    }

    let c = cluster();
    let config = c.config().await;
    let guest = sim::guest_client(
        &env.client,
        &config,
        &env.ns.name,
        "a",
        Duration::from_secs(600),
    )
    .await
    .expect("guest client");
    let mine: Api<VirtualMachine> = Api::namespaced(guest.clone(), &env.ns.name);
    mine.get("a").await.expect("a guest reads its own VM");
    let forbidden = |r: Result<VirtualMachine, kube::Error>, what: &str| match r {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 403, "{what}: {s:?}"),
        other => panic!("{what} should be forbidden: {other:?}"),
    };
    forbidden(mine.get("b").await, "reading another VM");
    let pp = PatchParams::default();
    forbidden(
        mine.patch_status(
            "b",
            &pp,
            &Patch::Merge(json!({ "status": { "guest": { "healthy": false } } })),
        )
        .await,
        "writing another VM's status",
    );
    forbidden(
        mine.patch_status(
            "a",
            &pp,
            &Patch::Merge(json!({ "status": { "phase": "Failed" } })),
        )
        .await,
        "writing the controller's phase",
    );
    forbidden(
        mine.patch_status(
            "a",
            &pp,
            &Patch::Merge(json!({ "status": { "desired": { "enforce": false } } })),
        )
        .await,
        "writing the controller's directives",
    );
    forbidden(
        mine.patch(
            "a",
            &pp,
            &Patch::Merge(json!({ "spec": { "management": { "enabled": false } } })),
        )
        .await,
        "writing its spec",
    );
    let err = mine
        .patch_status(
            "a",
            &pp,
            &Patch::Merge(json!({ "status": { "message": "all good" } })),
        )
        .await
        .expect_err("message is the controller's");
    assert!(
        err.to_string().contains("may write only status.guest"),
        "{err}"
    );
    // Every other property of the status, read from the CRD, is the controller's.
    let crd = automend::api::crds()
        .into_iter()
        .find(|c| c.spec.names.kind == "VirtualMachine")
        .expect("VirtualMachine CRD");
    let schema = serde_json::to_value(&crd.spec.versions[0].schema).expect("schema");
    let status = &schema["openAPIV3Schema"]["properties"]["status"];
    let props = status["properties"].as_object().expect("status properties");
    assert!(
        props.contains_key("lastTrackedChange"),
        "{:?}",
        props.keys()
    );
    for (field, field_schema) in props.iter().filter(|(k, _)| *k != "guest") {
        let value = sample(field_schema);
        let err = mine
            .patch_status(
                "a",
                &pp,
                &Patch::Merge(json!({ "status": { field.as_str(): value } })),
            )
            .await
            .expect_err(&format!("status.{field} belongs to the controller"));
        assert!(
            err.to_string()
                .contains(&format!("status.{field} belongs to the controller")),
            "status.{field} = {value}: {err}"
        );
    }
    // Nonsense inside its own status.guest is refused at admission, naming the field: a time
    // the controller's time type cannot hold (the poison pill that once stopped every list of
    // VirtualMachines), unbounded lists and texts, negative counts.
    let long = "d".repeat(10_000);
    let services: Vec<serde_json::Value> = (0..1400)
        .map(|i| json!({ "name": format!("s{i}"), "compliant": false }))
        .collect();
    for (guest_status, field, why) in [
        (
            json!({ "installation": { "rollout": "r", "wave": 1, "status": "Succeeded",
                "finishTime": "9999-12-31T23:59:59Z" } }),
            "status.guest.installation.finishTime",
            "between 2000-01-01 and 2200-01-01",
        ),
        (
            json!({ "lastObservedTime": "1970-01-01T00:00:00Z" }),
            "status.guest.lastObservedTime",
            "between 2000-01-01 and 2200-01-01",
        ),
        (
            json!({ "services": services }),
            "status.guest.services",
            "Too many",
        ),
        (
            json!({ "services": [{ "name": "backup", "compliant": false, "differences": [long] }] }),
            "status.guest.services[0].differences[0]",
            "Too long",
        ),
        (
            json!({ "installation": { "rollout": "r", "wave": -1, "status": "Failed" } }),
            "status.guest.installation.wave",
            "greater than or equal to 0",
        ),
    ] {
        let err = mine
            .patch_status(
                "a",
                &pp,
                &Patch::Merge(json!({ "status": { "guest": guest_status } })),
            )
            .await
            .expect_err(&format!("{field} is refused"));
        let text = err.to_string();
        assert!(
            text.contains(field) && text.contains(why),
            "{field}: want {why:?} in {text}"
        );
    }
    mine.patch_status(
        "a",
        &pp,
        &Patch::Merge(json!({ "status": { "guest": { "agentVersion": "test" } } })),
    )
    .await
    .expect("a guest writes its own status.guest");
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(guest, &env.ns.name);
    match leases
        .patch(
            "b",
            &pp,
            &Patch::Merge(json!({ "spec": { "holderIdentity": "a" } })),
        )
        .await
    {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 403),
        other => panic!("renewing another VM's Lease should be forbidden: {other:?}"),
    }

    // Someone deletes a guest's RoleBinding, or puts an older rules version on its Role: the
    // controller puts each right (the identity watches wake the VM).
    {
        use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
        let b_guest = automend::identity::guest_name("b");
        let bindings: Api<RoleBinding> = Api::namespaced(env.client.clone(), &env.ns.name);
        let old_uid = bindings
            .get(&b_guest)
            .await
            .expect("b's RoleBinding")
            .metadata
            .uid;
        bindings
            .delete(&b_guest, &Default::default())
            .await
            .expect("delete b's RoleBinding");
        wait_for("b's RoleBinding created again", LONG, || {
            let (bindings, b_guest, old_uid) = (bindings.clone(), b_guest.clone(), old_uid.clone());
            async move {
                let rb = bindings.get_opt(&b_guest).await.ok()??;
                (rb.metadata.uid != old_uid).then_some(())
            }
        })
        .await;
        let roles: Api<Role> = Api::namespaced(env.client.clone(), &env.ns.name);
        roles
            .patch(
                &b_guest,
                &PatchParams::default(),
                &Patch::Merge(json!({ "metadata": { "annotations": {
                    automend::identity::RULES_ANNOTATION: "1" } } })),
            )
            .await
            .expect("an older rules version on b's Role");
        wait_for("b's Role brought up to date", LONG, || {
            let (roles, b_guest) = (roles.clone(), b_guest.clone());
            async move {
                let r = roles.get(&b_guest).await.ok()?;
                (r.metadata
                    .annotations?
                    .get(automend::identity::RULES_ANNOTATION)?
                    == automend::identity::RULES_VERSION)
                    .then_some(())
            }
        })
        .await;
    }

    // Deleting a VM goes at once (no finalizer of ours holds it), and the cluster's garbage
    // collector removes its guest identity and Lease (the VM owns them): the guest's token is
    // refused from then on.
    let vms: Api<VirtualMachine> = Api::namespaced(env.client.clone(), &env.ns.name);
    let a = vms.get("a").await.expect("VM a");
    assert!(
        a.metadata.finalizers.unwrap_or_default().is_empty(),
        "no finalizer on a VM"
    );
    vms.delete("a", &Default::default())
        .await
        .expect("delete a");
    let sa = automend::identity::guest_name("a");
    let ns = env.ns.name.clone();
    let client = env.client.clone();
    wait_for("VM a's identity and Lease removed", LONG, || {
        let (client, ns, sa) = (client.clone(), ns.clone(), sa.clone());
        async move {
            use k8s_openapi::api::core::v1::ServiceAccount;
            use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
            let gone = Api::<VirtualMachine>::namespaced(client.clone(), &ns)
                .get_opt("a")
                .await
                .ok()?
                .is_none()
                && Api::<ServiceAccount>::namespaced(client.clone(), &ns)
                    .get_opt(&sa)
                    .await
                    .ok()?
                    .is_none()
                && Api::<Role>::namespaced(client.clone(), &ns)
                    .get_opt(&sa)
                    .await
                    .ok()?
                    .is_none()
                && Api::<RoleBinding>::namespaced(client.clone(), &ns)
                    .get_opt(&sa)
                    .await
                    .ok()?
                    .is_none()
                && Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(client, &ns)
                    .get_opt("a")
                    .await
                    .ok()?
                    .is_none();
            gone.then_some(())
        }
    })
    .await;
    // A VM onboarded by an earlier version carries its finalizer: the controller removes it.
    vms.patch(
        "b",
        &PatchParams::default(),
        &Patch::Merge(json!({ "metadata": { "finalizers": ["automend.io/guest-identity"] } })),
    )
    .await
    .expect("the legacy finalizer on b");
    wait_for("b's legacy finalizer removed", LONG, || {
        let vms = vms.clone();
        async move {
            let b = vms.get("b").await.ok()?;
            b.metadata
                .finalizers
                .unwrap_or_default()
                .is_empty()
                .then_some(())
        }
    })
    .await;
    let mine = mine.clone();
    wait_for("the deleted VM's guest token refused", LONG, || {
        let mine = mine.clone();
        async move {
            match mine.get("a").await {
                Err(kube::Error::Api(s)) if s.code == 401 => Some(()),
                _ => None,
            }
        }
    })
    .await;
    env.finish(ctl).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_controller_converges_without_repeating_actions() {
    let mut env = Env::new("restart").await;
    let mut ctl = env.controller(&["--leader-elect=false"]);
    let prod = env
        .profile("prod", json!({ "environment": "Production" }))
        .await;
    let names: Vec<String> = (0..8).map(|i| format!("vm-{i}")).collect();
    // Half the machines are off: their onboarding stops after their identity (no heartbeat yet)
    // and is still under way when the controller is killed, however fast the other half goes.
    let off = BTreeMap::from([(automend::guest::sim::POWER, "off")]);
    for (i, n) in names.iter().enumerate() {
        let annotations = if i >= 4 { off.clone() } else { no_labels() };
        env.vm(n, Some(&prod), no_labels(), annotations).await;
    }
    env.sim().await;
    let sa = |n: &str| automend::identity::guest_name(n);
    let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(env.client.clone(), &env.ns.name);
    wait_for("the stopped machines' identities", LONG, || async {
        for n in &names[4..] {
            accounts.get_opt(&sa(n)).await.ok()??;
        }
        Some(())
    })
    .await;
    // Kill the controller as soon as onboarding is under way.
    let vms = env.vms.clone();
    wait_for("some VM to be onboarding", LONG, || {
        let vms = vms.clone();
        async move {
            let l = vms.list(&ListParams::default()).await.ok()?;
            l.items
                .iter()
                .any(|v| v.status.as_ref().is_some_and(|s| s.desired.is_some()))
                .then_some(())
        }
    })
    .await;
    ctl.kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The VMs the killed controller had already written Configured: a crash between that write
    // and its Event may have lost the Event (one per reconcile in flight at the crash).
    let configured_before: Vec<String> = env
        .vms
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|v| {
            v.status
                .as_ref()
                .is_some_and(|s| s.phase == Some(VmPhase::Configured))
        })
        .filter_map(|v| v.metadata.name)
        .collect();
    assert!(
        configured_before.len() < names.len(),
        "the controller was killed after onboarding, not during it"
    );
    let ctl = env.controller(&["--leader-elect=false"]);
    for n in &names[4..] {
        env.annotate(n, automend::guest::sim::POWER, "on").await;
    }
    for n in &names {
        env.wait_phase(n, VmPhase::Configured).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    for n in &names {
        assert_eq!(env.applies(n), 1, "{n} was configured exactly once");
    }
    // Onboardings are reported after the status write that says so: at most once (a crash before
    // the report loses it, never repeats it), and exactly once for every VM the restarted
    // controller configured.
    let after: Vec<&str> = names
        .iter()
        .filter(|n| !configured_before.contains(*n))
        .map(String::as_str)
        .collect();
    let counts = env.wait_onboarded(&prod, &after).await;
    assert!(counts.iter().all(|c| *c == 1), "{after:?}: {counts:?}");
    let (named, unnamed) = env.onboarded(&prod).await;
    assert_eq!(unnamed, 0, "every VM named");
    for n in &names {
        let full = format!("{}/{n}", env.ns.name);
        let count = named.iter().filter(|m| **m == full).count();
        assert!(count <= 1, "{n} reported {count} times: {named:?}");
    }
    env.finish(ctl).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_replicas_only_the_leader_acts() {
    let mut env = Env::new("leader").await;
    let ns = env.ns.name.clone();
    let args = [
        "--leader-elect=true",
        "--leader-election-namespace",
        &ns,
        "--leader-election-id",
        "automend-e2e",
    ];
    let mut a = env.controller(&[&args[..], &["--identity", "replica-a"]].concat());
    let prod = env
        .profile("prod", json!({ "environment": "Production" }))
        .await;
    env.vm("vm-1", Some(&prod), no_labels(), no_labels()).await;
    env.sim().await;
    env.wait_phase("vm-1", VmPhase::Configured).await;
    let b = env.controller(&[&args[..], &["--identity", "replica-b"]].concat());
    wait_for("replica b to serve metrics", LONG, || async {
        (!b.metrics().await.is_empty()).then_some(())
    })
    .await;
    env.vm("vm-2", Some(&prod), no_labels(), no_labels()).await;
    env.wait_phase("vm-2", VmPhase::Configured).await;
    assert_eq!(a.metric("automend_leader").await, 1.0);
    assert_eq!(b.metric("automend_leader").await, 0.0);
    assert!(
        a.metric(r#"automend_reconciles_total{controller="virtualmachine"}"#)
            .await
            > 0.0
    );
    assert_eq!(
        b.metric(r#"automend_reconciles_total{controller="virtualmachine"}"#)
            .await,
        0.0,
        "the follower never reconciles"
    );
    assert_eq!(
        b.metric(r#"automend_status_writes_total{controller="virtualmachine"}"#)
            .await,
        0.0
    );

    // The leader stops gracefully and releases the Lease: the follower takes over at once.
    a.terminate();
    wait_for("replica b to lead", LONG, || async {
        (b.metric("automend_leader").await == 1.0).then_some(())
    })
    .await;
    env.vm("vm-3", Some(&prod), no_labels(), no_labels()).await;
    env.wait_phase("vm-3", VmPhase::Configured).await;
    assert!(
        b.metric(r#"automend_status_writes_total{controller="virtualmachine"}"#)
            .await
            > 0.0
    );
    env.finish(b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_catalog_decides_patch_modes_and_capabilities() {
    let mut env = Env::new("catalog").await;
    let catalog = support::repo().join(format!("target/e2e-catalog-{}.yaml", env.ns.name));
    std::fs::write(
        &catalog,
        "images:\n- {publisher: Example, offer: Custom, sku: 'v1*', os: Linux, automaticByPlatform: true}\n",
    )
    .expect("writing the catalog");
    let catalog_arg = catalog.to_string_lossy().to_string();
    let ctl = env.controller(&["--leader-elect=false", "--image-catalog", &catalog_arg]);
    let prod = env
        .profile("prod", json!({ "environment": "Production" }))
        .await;
    let mk = |name: &str, publisher: &str, offer: &str, sku: &str, caps: Vec<&str>| {
        serde_json::from_value::<VirtualMachine>(json!({
            "apiVersion": "automend.io/v1alpha1", "kind": "VirtualMachine",
            "metadata": { "name": name },
            "spec": {
                "management": { "profile": prod },
                "os": { "type": "Linux", "image": { "publisher": publisher, "offer": offer, "sku": sku } },
                "placement": { "region": "westeurope" },
                "patchSettings": { "patchMode": "AutomaticByPlatform" },
                "capabilities": caps,
            },
        }))
        .expect("vm")
    };
    let pp = PostParams::default();
    env.vms
        .create(&pp, &mk("custom", "Example", "Custom", "v1.2", vec![]))
        .await
        .expect("create");
    // Ubuntu is in the built-in catalog, but this catalog replaces it.
    env.vms
        .create(
            &pp,
            &mk("ubuntu", "Canonical", "ubuntu-24_04-lts", "server", vec![]),
        )
        .await
        .expect("create");
    env.vms
        .create(
            &pp,
            &mk("hotpatch", "Example", "Custom", "v1.2", vec!["Hotpatch"]),
        )
        .await
        .expect("create");
    env.sim().await;
    env.wait_phase("custom", VmPhase::Configured).await;
    for (vm, reason, text) in [
        (
            "ubuntu",
            "PatchModeUnsupported",
            "AutomaticByPlatform is not supported on image Canonical/ubuntu-24_04-lts/server",
        ),
        (
            "hotpatch",
            "CapabilityMissing",
            "lacks the requested capabilities Hotpatch",
        ),
    ] {
        let v = env.wait_phase(vm, VmPhase::Failed).await;
        let st = v.status.expect("status");
        let c = st
            .conditions
            .iter()
            .find(|c| c.type_ == "ImageSupported")
            .expect("ImageSupported");
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", reason),
            "{vm}"
        );
        assert!(c.message.contains(text), "{vm}: {}", c.message);
        assert_eq!(
            env.applies(vm),
            0,
            "{vm}: nothing configured on an unsupported image"
        );
        env.events_with(vm, &["UnsupportedImage"]).await;
    }
    env.finish(ctl).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assessment_on_demand_and_when_a_vm_returns() {
    let mut env = Env::new("assess").await;
    let ctl = env.controller(&["--leader-elect=false"]);
    let prod = env
        .profile("prod", json!({ "environment": "Production" }))
        .await;
    let patches = "openssl=3.0.2-1:Security,linux-image=6.8.0-50:Critical,vim=9.1:Other";
    env.vm(
        "on-1",
        Some(&prod),
        no_labels(),
        BTreeMap::from([(sim::PATCHES, patches)]),
    )
    .await;
    env.vm(
        "off-1",
        Some(&prod),
        no_labels(),
        BTreeMap::from([(sim::POWER, "off")]),
    )
    .await;
    env.sim().await;

    let summary = |vms: Api<VirtualMachine>, name: &'static str, prefix: &'static str| async move {
        let v = vms.get(name).await.ok()?;
        let s = v.status?.patch_status?.available_patch_summary?;
        s.assessment_activity_id
            .as_deref()?
            .starts_with(prefix)
            .then_some(s)
    };
    let vms = env.vms.clone();
    let s = wait_for("the first (periodic) assessment of on-1", LONG, || {
        summary(vms.clone(), "on-1", "periodic-")
    })
    .await;
    assert_eq!(
        (s.critical_and_security_patch_count, s.other_patch_count),
        (2, 1)
    );
    assert_eq!(s.status, automend::api::OperationStatus::Succeeded);

    env.wait_phase("off-1", VmPhase::Pending).await;
    let off = env.get("off-1").await;
    assert!(
        off.status.and_then(|s| s.patch_status).is_none(),
        "a VM that is off is not assessed"
    );

    let applies = env.applies("on-1");
    env.annotate("on-1", "automend.io/assess", "req-1").await;
    let s = wait_for("the on-demand assessment", LONG, || {
        summary(vms.clone(), "on-1", "ondemand-req-1")
    })
    .await;
    assert_eq!(s.critical_and_security_patch_count, 2);
    let v = env.get("on-1").await;
    assert!(
        v.status
            .and_then(|s| s.desired)
            .and_then(|d| d.installation)
            .is_none(),
        "assessment never installs"
    );
    assert_eq!(env.applies("on-1"), applies, "nothing applied on the guest");
    env.events_with("on-1", &["AssessmentRequested"]).await;

    env.annotate("off-1", sim::POWER, "on").await;
    wait_for("off-1 to be assessed once it runs", LONG, || {
        summary(vms.clone(), "off-1", "periodic-")
    })
    .await;
    env.finish(ctl).await;
}

/// The guest half of installation (the rollout controller that issues directives is not built
/// yet): directives written into `status.desired.installation` are installed exactly, the previous
/// versions recorded, rolled back on request, and refused once the window has ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guests_install_pinned_packages_roll_back_and_respect_the_window() {
    let mut env = Env::new("install").await;
    let mut ctl = env.controller(&["--leader-elect=false"]);
    let prod = env
        .profile("prod", json!({ "environment": "Production" }))
        .await;
    let patches = "openssl=3.0.2-2:Security,linux-image=6.8.0-51:Critical";
    env.vm(
        "vm-1",
        Some(&prod),
        no_labels(),
        BTreeMap::from([(sim::PATCHES, patches)]),
    )
    .await;
    env.sim().await;
    env.wait_phase("vm-1", VmPhase::Configured).await;
    // Directives come from the controller's field manager; stop the controller so that this
    // test is the only writer of them.
    ctl.terminate();

    let directive = |d: serde_json::Value| {
        let vms = env.vms.clone();
        async move {
            vms.patch_status(
                "vm-1",
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": { "desired": { "installation": d } } })),
            )
            .await
            .expect("writing the directive");
        }
    };
    let result = |rollout: &'static str, rollback: bool| {
        let vms = env.vms.clone();
        async move {
            let g = vms.get("vm-1").await.ok()?.status?.guest?;
            let i = g.installation?;
            (i.rollout == rollout && i.rollback == rollback).then_some(i)
        }
    };
    let window_end = jiff::Timestamp::now() + Duration::from_secs(3600);
    directive(json!({
        "rollout": "r1", "wave": 0, "rebootSetting": "Never", "windowEnd": window_end.to_string(),
        "packages": [ { "name": "openssl", "version": "3.0.2-2" }, { "name": "linux-image", "version": "6.8.0-51" } ],
    }))
    .await;
    let i = wait_for("the installation", LONG, || result("r1", false)).await;
    assert_eq!(i.status, automend::api::OperationStatus::Succeeded);
    let names: Vec<(&str, &str)> = i
        .installed
        .iter()
        .map(|p| (p.name.as_str(), p.version.as_str()))
        .collect();
    assert_eq!(
        names,
        vec![("openssl", "3.0.2-2"), ("linux-image", "6.8.0-51")]
    );
    assert!(
        i.reboot_pending,
        "a kernel update with rebootSetting Never leaves a reboot pending"
    );
    assert!(!i.maintenance_window_exceeded);

    // (A merge patch: fields not named keep their values.)
    directive(json!({ "rollout": "r1", "wave": 0, "rollback": true, "packages": [] })).await;
    let r = wait_for("the rollback", LONG, || result("r1", true)).await;
    assert_eq!(r.status, automend::api::OperationStatus::Succeeded);
    let installs = env
        .stats
        .lock()
        .map(|s| s.get("vm-1").map_or(0, |g| g.installs))
        .unwrap_or(0);

    let past = jiff::Timestamp::now() - Duration::from_secs(60);
    directive(json!({
        "rollout": "r2", "wave": 1, "rollback": false, "windowEnd": past.to_string(),
        "packages": [ { "name": "openssl", "version": "3.0.2-2" } ],
    }))
    .await;
    let late = wait_for("the refused installation", LONG, || result("r2", false)).await;
    assert!(late.maintenance_window_exceeded);
    assert_eq!(late.status, automend::api::OperationStatus::Failed);
    assert!(late.installed.is_empty());
    let after = env
        .stats
        .lock()
        .map(|s| s.get("vm-1").map_or(0, |g| g.installs))
        .unwrap_or(0);
    assert_eq!(after, installs, "nothing installed after the window");

    let ctl = env.controller(&["--leader-elect=false"]);
    env.finish(ctl).await;
}

/// A value of a schema that passes the schema (so that admission policies, not the schema, answer):
/// required properties filled, one item per list, the first enum value.
fn sample(schema: &serde_json::Value) -> serde_json::Value {
    if let Some(first) = schema["enum"].as_array().and_then(|e| e.first()) {
        return first.clone();
    }
    match schema["type"].as_str() {
        Some("object") => {
            let mut obj = serde_json::Map::new();
            let required: Vec<&str> = schema["required"]
                .as_array()
                .map(|r| r.iter().filter_map(|v| v.as_str()).collect())
                .unwrap_or_default();
            if let Some(props) = schema["properties"].as_object() {
                for (k, v) in props {
                    if required.contains(&k.as_str()) || required.is_empty() && obj.is_empty() {
                        obj.insert(k.clone(), sample(v));
                    }
                }
            }
            serde_json::Value::Object(obj)
        }
        Some("array") => json!([sample(&schema["items"])]),
        Some("integer") | Some("number") => json!(987_654),
        Some("boolean") => json!(true),
        _ if schema["format"] == "date-time" => json!("2026-01-01T00:00:00Z"),
        _ => json!("forged"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_reports_again_when_its_report_is_changed_behind_its_back() {
    let mut env = Env::new("reassert").await;
    let ctl = env.controller(&["--leader-elect=false"]);
    let prod = env
        .profile("prod", json!({ "environment": "Production" }))
        .await;
    env.vm("a", Some(&prod), no_labels(), no_labels()).await;
    env.sim().await;
    env.wait_phase("a", VmPhase::Configured).await;

    // A partial apply as the guest's own field manager drops every other field of status.guest.
    let partial = json!({
        "apiVersion": "automend.io/v1alpha1", "kind": "VirtualMachine",
        "metadata": { "name": "a" },
        "status": { "guest": { "agentVersion": "someone-else" } },
    });
    // The answer to the apply is the object right after it (the guest may repair it at once).
    let after = env
        .vms
        .patch_status(
            "a",
            &PatchParams::apply("automend-guest").force(),
            &Patch::Apply(&partial),
        )
        .await
        .expect("partial apply");
    let guest = after.status.and_then(|s| s.guest).expect("guest");
    assert!(
        guest.services.is_empty(),
        "the partial apply removed the services"
    );

    // The guest notices and says it all again; the VM stays (or returns to) Configured.
    wait_for("the guest's whole report back", LONG, || async {
        let g = env.get("a").await.status.and_then(|s| s.guest)?;
        (g.services.len() == 7 && g.agent_version.as_deref() != Some("someone-else")).then_some(())
    })
    .await;
    env.wait_phase("a", VmPhase::Configured).await;
    env.finish(ctl).await;
}

/// Simulated guests wait for their identity (one ServiceAccount watch) and ask for a token once,
/// instead of asking until the controller has created the ServiceAccount (each such request was
/// answered 404: hundreds of thousands of them for a 2,000-VM fleet).
#[tokio::test]
async fn simulated_guests_ask_for_a_token_only_once_their_identity_exists() {
    let mut env = Env::new("tokenwait").await;
    let ctl = env.controller(&["--leader-elect=false"]);
    let dev = env
        .profile("dev", json!({ "environment": "DevTest" }))
        .await;
    // The simulator first: it sees each VM as soon as the controller does.
    env.sim().await;
    let names: Vec<String> = (0..10).map(|i| format!("t-{i}")).collect();
    for vm in &names {
        env.vm(vm, Some(&dev), no_labels(), no_labels()).await;
    }
    for vm in &names {
        env.wait_phase(vm, VmPhase::Configured).await;
    }
    let requests: Vec<u64> = {
        let stats = env.stats.lock().expect("stats");
        names
            .iter()
            .map(|n| stats.get(n).map_or(0, |s| s.token_requests))
            .collect()
    };
    assert_eq!(requests, vec![1; names.len()], "one TokenRequest per guest");
    env.finish(ctl).await;
}
