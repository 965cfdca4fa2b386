//! End to end: guests authorized by the controller (`--guest-authorization=webhook`) on a control
//! plane of this binary's own whose API server sends guest reviews to it (`hack/cluster.sh up
//! --guest-webhook`). A controller whose API server does not ask it refuses to start; moving a
//! running fleet from `rbac` removes the per-VM Roles and RoleBindings while its guests keep
//! working; every denial the RBAC model gives a guest holds.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use automend::api::{VirtualMachine, VmPhase};
use automend::guest::sim;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;
use support::env::{Env, LONG};
use support::{ControllerProcess, guest_webhook_cluster, wait_for};

fn forbidden<T: std::fmt::Debug>(r: Result<T, kube::Error>, what: &str) {
    match r {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 403, "{what}: {s:?}"),
        other => panic!("{what} should be forbidden: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guests_authorized_by_the_controller_keep_every_rbac_denial() {
    let c = guest_webhook_cluster();
    let webhook = c.authorizer_args().expect("authorizer flags");
    let webhook: Vec<&str> = webhook.iter().map(String::as_str).collect();
    let mut env = Env::new("gwebhook").await;

    // Misconfigured: the controller serves elsewhere than where the API server asks. It says so
    // and stops instead of leaving guests without a Role.
    let elsewhere = format!("--authorizer-addr=127.0.0.1:{}", support::free_port());
    let mut wrong: Vec<&str> = webhook
        .iter()
        .copied()
        .filter(|a| !a.starts_with("--authorizer-addr="))
        .collect();
    wrong.extend(["--leader-elect=false", elsewhere.as_str()]);
    let mut ctl = env.controller(&wrong);
    let started = Instant::now();
    let status = loop {
        if let Ok(Some(s)) = ctl.child.try_wait() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "a controller the API server does not ask kept running"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(!status.success());
    let log = std::fs::read_to_string(&ctl.log).expect("controller log");
    assert!(
        log.contains("does not send guest SubjectAccessReviews to this controller"),
        "{log}"
    );
    drop(ctl);

    // A fleet onboarded under RBAC (the API server's webhook has no one to ask: RBAC decides).
    let prod = env
        .profile(
            "prod",
            json!({ "environment": "Production",
                    "remediation": { "mode": "Auto", "maxAttempts": 5, "initialBackoff": "1s", "maxBackoff": "2s" } }),
        )
        .await;
    for n in ["a", "b"] {
        env.vm(n, Some(&prod), BTreeMap::new(), BTreeMap::new())
            .await;
    }
    let mut rbac = env.controller(&["--leader-elect=false", "--guest-authorization=rbac"]);
    env.sim().await;
    env.wait_phase("a", VmPhase::Configured).await;
    env.wait_phase("b", VmPhase::Configured).await;
    assert_eq!(env.owned::<Role>().await, 2);
    assert_eq!(env.owned::<RoleBinding>().await, 2);
    assert_eq!(routed(&rbac).await, None, "nothing routed under rbac");
    rbac.terminate();

    // The same fleet under the guest authorizer: the Roles and RoleBindings go, the guests go on.
    // Its serving certificate is a copy, renewed at the end of the test.
    let pki = c.state.as_ref().expect("cluster state").join("pki");
    let certs = tempfile::tempdir().expect("tempdir");
    let (cert, key) = (certs.path().join("tls.crt"), certs.path().join("tls.key"));
    std::fs::copy(pki.join("guest-authorizer.crt"), &cert).expect("copy the certificate");
    std::fs::copy(pki.join("guest-authorizer.key"), &key).expect("copy the key");
    let (cert_arg, key_arg) = (
        format!("--authorizer-cert={}", cert.display()),
        format!("--authorizer-key={}", key.display()),
    );
    let mut args: Vec<&str> = webhook
        .iter()
        .copied()
        .filter(|a| !a.starts_with("--authorizer-cert=") && !a.starts_with("--authorizer-key="))
        .collect();
    args.extend([
        "--leader-elect=false",
        cert_arg.as_str(),
        key_arg.as_str(),
        "--authorizer-recheck-every=2s",
    ]);
    let ctl: ControllerProcess = env.controller(&args);
    wait_for(
        "the per-VM Roles and RoleBindings to be removed",
        LONG,
        || async {
            (env.owned::<Role>().await == 0 && env.owned::<RoleBinding>().await == 0).then_some(())
        },
    )
    .await;
    assert_eq!(env.owned::<ServiceAccount>().await, 2);
    // A VM created now gets a ServiceAccount and a Lease, nothing else, and is onboarded.
    env.vm("c", Some(&prod), BTreeMap::new(), BTreeMap::new())
        .await;
    env.wait_phase("c", VmPhase::Configured).await;
    assert_eq!(env.owned::<Role>().await, 0);
    assert_eq!(env.owned::<RoleBinding>().await, 0);
    assert_eq!(env.owned::<ServiceAccount>().await, 3);
    // Its guest created its Lease (the controller wrote nothing to it), owned by the VM.
    let (lease, managers) = env.lease_managers("c").await;
    assert_eq!(managers, [automend::identity::GUEST_MANAGER], "{lease:?}");
    let owner = &lease.metadata.owner_references.expect("owner")[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("VirtualMachine", "c")
    );
    // Drift: the guest reads its directive and reports (its own VM and status, authorized here).
    env.annotate("a", "sim.automend.io/drift", "monitoring")
        .await;
    wait_for("a's drift to be remediated", LONG, || async {
        env.events("a")
            .await
            .iter()
            .any(|e| e == "Remediated")
            .then_some(())
    })
    .await;
    let allowed = ctl
        .metric("automend_guest_authorizations_total{decision=\"allowed\"}")
        .await;
    assert!(allowed > 0.0, "no review answered: {}", ctl.metrics().await);

    // What a guest may and may not do.
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
    forbidden(mine.get("b").await, "reading another VM");
    forbidden(mine.list(&ListParams::default()).await, "listing every VM");
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
        mine.patch(
            "a",
            &pp,
            &Patch::Merge(json!({ "spec": { "management": { "enabled": false } } })),
        )
        .await,
        "writing its spec",
    );
    forbidden(
        mine.delete("a", &Default::default()).await,
        "deleting its VM",
    );
    mine.patch_status(
        "a",
        &pp,
        &Patch::Merge(json!({ "status": { "guest": { "agentVersion": "test" } } })),
    )
    .await
    .expect("a guest writes its own status.guest");
    let leases: Api<Lease> = Api::namespaced(guest.clone(), &env.ns.name);
    leases
        .patch(
            "a",
            &pp,
            &Patch::Merge(
                json!({ "spec": { "holderIdentity": automend::identity::guest_name("a") } }),
            ),
        )
        .await
        .expect("a guest renews its own Lease");
    forbidden(
        leases
            .patch(
                "b",
                &pp,
                &Patch::Merge(json!({ "spec": { "holderIdentity": "a" } })),
            )
            .await,
        "renewing another VM's Lease",
    );
    let accounts: Api<ServiceAccount> = Api::namespaced(guest.clone(), &env.ns.name);
    let request = TokenRequest {
        spec: k8s_openapi::api::authentication::v1::TokenRequestSpec {
            audiences: vec![],
            expiration_seconds: Some(600),
            bound_object_ref: None,
        },
        ..Default::default()
    };
    accounts
        .create_token_request(
            &automend::identity::guest_name("a"),
            &Default::default(),
            &request,
        )
        .await
        .expect("a guest renews its own token");
    forbidden(
        accounts
            .create_token_request(
                &automend::identity::guest_name("b"),
                &Default::default(),
                &request,
            )
            .await,
        "a token of another guest",
    );
    forbidden(
        Api::<k8s_openapi::api::core::v1::Secret>::namespaced(guest, &env.ns.name)
            .list(&ListParams::default())
            .await,
        "listing Secrets",
    );

    // The serving certificate is renewed on disk (as a mounted Secret is): new connections get
    // the new one within seconds, without a restart, and the API server goes on asking.
    let port = webhook
        .iter()
        .find_map(|a| a.strip_prefix("--authorizer-addr="))
        .expect("authorizer address")
        .to_string();
    let served = || serial_served(&port);
    let before = served().expect("the authorizer serves a certificate");
    assert_eq!(Some(before.clone()), serial_of(&cert));
    renew(&pki, &cert, &key);
    let renewed = serial_of(&cert).expect("the renewed certificate");
    assert_ne!(renewed, before);
    wait_for("the renewed certificate to be served", LONG, || async {
        (served().as_ref() == Some(&renewed)).then_some(())
    })
    .await;
    let log = std::fs::read_to_string(&ctl.log).expect("controller log");
    assert!(log.contains("serving the renewed certificate"), "{log}");
    // A review the API server has not cached (its authorizedTTL): it must ask this controller.
    let vm = format!("renewal-{}", std::process::id());
    let review: k8s_openapi::api::authorization::v1::SubjectAccessReview =
        serde_json::from_value(json!({
            "spec": { "user": format!("system:serviceaccount:{}:{}", env.ns.name,
                                      automend::identity::guest_name(&vm)),
                      "groups": ["system:serviceaccounts", "system:authenticated"],
                      "resourceAttributes": { "namespace": env.ns.name, "verb": "get",
                          "group": "automend.io", "resource": "virtualmachines", "name": vm } }
        }))
        .expect("review");
    let answer =
        Api::<k8s_openapi::api::authorization::v1::SubjectAccessReview>::all(env.client.clone())
            .create(&Default::default(), &review)
            .await
            .expect("a SubjectAccessReview")
            .status
            .expect("its answer");
    assert!(
        answer.allowed
            && answer
                .reason
                .as_deref()
                .is_some_and(|r| r.starts_with("automend:")),
        "the API server still asks this controller: {answer:?}"
    );
    mine.get("a").await.expect("a guest still reads its own VM");
    assert_eq!(routed(&ctl).await, Some(1), "{}", ctl.metrics().await);

    // The API server's configuration changed under the running controller: the webhook taken
    // out of its AuthorizationConfiguration (which it reloads within a minute). The controller
    // notices; the VMs whose guests fall silent say why instead of "not running".
    let authz = c
        .state
        .as_ref()
        .expect("cluster state")
        .join("authorization.yaml");
    let original = std::fs::read_to_string(&authz).expect("the AuthorizationConfiguration");
    let (head, rest) = original
        .split_once("- type: Webhook")
        .expect("the webhook authorizer");
    let (_, tail) = rest.split_once("- type: RBAC").expect("RBAC after it");
    let restore = support::Restore::new(&authz, &original);
    support::write_atomically(&authz, &format!("{head}- type: RBAC{tail}"));
    let reload = Duration::from_secs(240);
    let ready = |vm: VirtualMachine, kind: &str| {
        vm.status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == kind)
            .map(|c| (c.reason, c.message))
    };
    let (_, message) = wait_for(
        "a's guest to be refused, and a to say so",
        reload,
        || async {
            ready(env.get("a").await, "Ready").filter(|(reason, _)| reason == "GuestsRefused")
        },
    )
    .await;
    assert!(
        message.contains("does not send guest SubjectAccessReviews to this controller")
            && message.contains("restore the webhook"),
        "{message}"
    );
    assert_eq!(
        env.get("a").await.status.and_then(|s| s.phase),
        Some(VmPhase::Pending)
    );
    let (reason, message) = ready(env.get("a").await, "Heartbeat").expect("Heartbeat");
    assert_eq!(reason, "GuestsRefused");
    assert!(!message.contains("not running"), "{message}");
    assert_eq!(routed(&ctl).await, Some(0), "{}", ctl.metrics().await);
    let lost = env.notes_with("a", "HeartbeatLost", 1).await;
    assert!(
        lost.iter()
            .any(|n| n.contains("refuses every guest's requests")),
        "{lost:?}"
    );
    forbidden(mine.get("a").await, "a guest's read, nobody authorizing it");
    let log = std::fs::read_to_string(&ctl.log).expect("controller log");
    assert!(log.contains("guests are refused"), "{log}");

    // Restored: the API server asks again, the guests are heard, the VMs are Configured again.
    drop(restore);
    for vm in ["a", "b", "c"] {
        wait_for(&format!("{vm} Configured again"), reload, || async {
            (env.get(vm).await.status?.phase? == VmPhase::Configured).then_some(())
        })
        .await;
    }
    // The guests can be heard before the next check (every 2 s) sees the routing back.
    wait_for("automend_guest_authorizer_routed 1 again", LONG, || async {
        (routed(&ctl).await == Some(1)).then_some(())
    })
    .await;
    let log = std::fs::read_to_string(&ctl.log).expect("controller log");
    assert!(
        log.contains("asks this controller about guests again"),
        "{log}"
    );
    env.finish(ctl).await;
}

/// `automend_guest_authorizer_routed`, if the controller serves the series.
async fn routed(ctl: &ControllerProcess) -> Option<i64> {
    ctl.metrics().await.lines().find_map(|l| {
        l.strip_prefix("automend_guest_authorizer_routed ")?
            .trim()
            .parse()
            .ok()
    })
}

/// The serial number of the certificate the authorizer presents to a new connection.
fn serial_served(port: &str) -> Option<String> {
    let out = std::process::Command::new("openssl")
        .args(["s_client", "-connect", port])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .expect("openssl");
    let pem = String::from_utf8_lossy(&out.stdout).to_string();
    let dir = tempfile::tempdir().ok()?;
    let file = dir.path().join("served.pem");
    std::fs::write(&file, pem).ok()?;
    serial_of(&file)
}

fn serial_of(cert: &std::path::Path) -> Option<String> {
    let out = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in"])
        .arg(cert)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A new key and certificate for the authorizer from the cluster's CA, written over `cert` and
/// `key` (key first: the controller keeps serving the old pair until the two match).
fn renew(pki: &std::path::Path, cert: &std::path::Path, key: &std::path::Path) {
    support::issue_serving_cert(pki, "IP:127.0.0.1,DNS:localhost", cert, key);
}
