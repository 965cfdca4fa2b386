//! The chart's controller as Pods on a node: `helm install` onto a control plane with a real node
//! (containerd, kubelet, kube-proxy; `hack/cluster.sh up --node`) and the image built offline by
//! `hack/image.sh`. Everything the controller does here it does under the chart's own
//! ServiceAccount, RBAC and restricted Pod Security; the simulator plays the guests from outside.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use automend::api::VmPhase;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;
use support::env::Env;
use support::{guest_webhook_node_cluster, run_checked, wait_for};

const CHART: &str = "charts/automend";
const RELEASE: &str = "automend";
const TAG: &str = "e2e";

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The image of this build (the test binary's own automend), imported into the node.
fn build_and_import_image(c: &support::Cluster) {
    let mut cmd = std::process::Command::new("bash");
    cmd.arg(support::repo().join("hack/image.sh")).args([
        "build",
        "--binary",
        env!("CARGO_BIN_EXE_automend"),
        "--tag",
        TAG,
        "--out",
    ]);
    cmd.arg(support::repo().join("target/image/automend-e2e.tar"));
    if let Some(state) = &c.state {
        cmd.arg("--import").env("AUTOMEND_CLUSTER_DIR", state);
    }
    run_checked(&mut cmd, "hack/image.sh build --import");
}

/// `helm install --wait` of the chart with this build's image into `system`, with `sets`.
fn install(
    c: &support::Cluster,
    system: &str,
    sets: &[&str],
    timeout: &str,
) -> std::process::Output {
    let tag = format!("image.tag={TAG}");
    let mut args = vec![
        "install",
        RELEASE,
        CHART,
        "-n",
        system,
        "--take-ownership",
        "--set",
        &tag,
        "--set",
        "image.pullPolicy=Never",
        "--wait",
        "--timeout",
        timeout,
    ];
    for s in sets {
        args.extend(["--set", s]);
    }
    c.helm(&args)
}

/// The series' value on one Pod's /metrics, read through the API server's Pod proxy.
async fn pod_metric(client: &kube::Client, ns: &str, pod: &str, series: &str) -> Option<f64> {
    let req = http::Request::get(format!(
        "/api/v1/namespaces/{ns}/pods/{pod}:8080/proxy/metrics"
    ))
    .body(Vec::new())
    .ok()?;
    let body = client.request_text(req).await.ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
}

/// The Pods behind the metrics Service (its EndpointSlices), ready ones only.
async fn metrics_endpoints(client: &kube::Client, ns: &str) -> Vec<String> {
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let lp = ListParams::default().labels(&format!("kubernetes.io/service-name={RELEASE}-metrics"));
    let mut pods = Vec::new();
    for s in slices.list(&lp).await.map(|l| l.items).unwrap_or_default() {
        for e in s.endpoints {
            let ready = e.conditions.and_then(|c| c.ready).unwrap_or(false);
            if let (true, Some(t)) = (ready, e.target_ref.and_then(|t| t.name)) {
                pods.push(t);
            }
        }
    }
    pods.sort();
    pods
}

async fn lease_holder(leases: &Api<Lease>) -> Option<String> {
    leases
        .get_opt(&format!("{RELEASE}-controller"))
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
}

async fn ready_replicas(deploys: &Api<Deployment>) -> (i32, i32, i64) {
    let d = deploys
        .get_opt(&format!("{RELEASE}-controller"))
        .await
        .ok()
        .flatten();
    let status = d
        .as_ref()
        .and_then(|d| d.status.clone())
        .unwrap_or_default();
    (
        status.ready_replicas.unwrap_or(0),
        status.updated_replicas.unwrap_or(0),
        status.observed_generation.unwrap_or(0),
    )
}

#[tokio::test]
async fn the_chart_runs_on_a_node_under_its_own_rbac_and_pod_security() {
    let c = guest_webhook_node_cluster();
    build_and_import_image(c);
    let client = c.client().await;

    // The release's namespace enforces restricted Pod Security.
    let system = format!("automend-system-{}", std::process::id());
    let ns: Namespace = serde_json::from_value(json!({ "metadata": { "name": system, "labels": {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
    }}}))
    .expect("namespace");
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("creating the release namespace");

    let started = Instant::now();
    let out = install(c, &system, &[], "180s");
    assert!(out.status.success(), "helm install failed:\n{}", text(&out));
    eprintln!(
        "helm install --wait: {:.1}s",
        started.elapsed().as_secs_f64()
    );

    // Both replicas Ready: their probes are served.
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), &system);
    let (ready, _, _) = ready_replicas(&deploys).await;
    assert_eq!(ready, 2, "both controller replicas Ready after helm --wait");

    // The PodDisruptionBudget sees both and allows one voluntary disruption.
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &system);
    wait_for(
        "the PDB to count 2 healthy replicas",
        Duration::from_secs(60),
        || async {
            let status = pdbs
                .get_opt(&format!("{RELEASE}-controller"))
                .await
                .ok()
                .flatten()?
                .status?;
            (status.current_healthy == 2 && status.disruptions_allowed == 1).then_some(())
        },
    )
    .await;

    // One leader: the Lease names one Pod, and only that Pod says automend_leader 1 on /metrics,
    // reached through the metrics Service's endpoints.
    let leases: Api<Lease> = Api::namespaced(client.clone(), &system);
    let holder = wait_for("a leader", Duration::from_secs(60), || async {
        lease_holder(&leases).await
    })
    .await;
    let (endpoints, leaders) = wait_for(
        "automend_leader 1 on exactly the Lease holder",
        Duration::from_secs(60),
        || async {
            let pods = metrics_endpoints(&client, &system).await;
            if pods.len() != 2 {
                return None;
            }
            let mut leaders = Vec::new();
            for p in &pods {
                match pod_metric(&client, &system, p, "automend_leader ").await {
                    Some(1.0) => leaders.push(p.clone()),
                    Some(_) => {}
                    None => return None,
                }
            }
            (leaders == [holder.clone()]).then_some((pods, leaders))
        },
    )
    .await;
    eprintln!("metrics Service endpoints {endpoints:?}; leader {leaders:?}");

    // VMs in a test namespace onboard to Configured: the chart's controller (all namespaces,
    // the chart's default profiles) with the simulator outside the cluster as their guests.
    let mut env = Env::new("node").await;
    for i in 0..5 {
        env.vm(
            &format!("vm-{i}"),
            Some("dev-test"),
            BTreeMap::new(),
            BTreeMap::new(),
        )
        .await;
    }
    env.start_sim(c.config().await);
    for i in 0..5 {
        env.wait_phase(&format!("vm-{i}"), VmPhase::Configured)
            .await;
    }

    // The liveness probe never failed: no container restarted while all this happened.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &system);
    for p in pods.list(&ListParams::default()).await.expect("Pods").items {
        let restarts: i32 = p
            .status
            .and_then(|s| s.container_statuses)
            .unwrap_or_default()
            .iter()
            .map(|c| c.restart_count)
            .sum();
        assert_eq!(restarts, 0, "restarts of {:?}", p.metadata.name);
    }

    // Deleting the leader Pod hands over within the lease duration (15 s).
    let deleted = Instant::now();
    pods.delete(&holder, &DeleteParams::default())
        .await
        .expect("deleting the leader Pod");
    let next = wait_for("a new leader", Duration::from_secs(60), || async {
        lease_holder(&leases).await.filter(|h| h != &holder)
    })
    .await;
    let handover = deleted.elapsed();
    eprintln!("leader {holder} deleted; {next} leads after {handover:?}");
    assert!(
        handover <= Duration::from_secs(15),
        "handover took {handover:?}, longer than the 15 s lease"
    );

    // helm upgrade with a changed value rolls the Deployment.
    let (_, _, generation) = ready_replicas(&deploys).await;
    let out = c.helm(&[
        "upgrade",
        RELEASE,
        CHART,
        "-n",
        &system,
        "--set",
        &format!("image.tag={TAG}"),
        "--set",
        "image.pullPolicy=Never",
        "--set",
        "controller.logLevel=debug",
        "--wait",
        "--timeout",
        "180s",
    ]);
    assert!(out.status.success(), "helm upgrade failed:\n{}", text(&out));
    wait_for(
        "the upgraded Deployment rolled out",
        Duration::from_secs(120),
        || async {
            let (ready, updated, observed) = ready_replicas(&deploys).await;
            (observed > generation && ready == 2 && updated == 2).then_some(())
        },
    )
    .await;
    let running = pods
        .list(&ListParams::default().labels("app.kubernetes.io/name=automend"))
        .await
        .expect("listing the controller Pods");
    for p in &running.items {
        if p.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let env_vars = p.spec.as_ref().map(|s| s.containers[0].env.clone());
        let log_level = env_vars
            .flatten()
            .unwrap_or_default()
            .into_iter()
            .find(|e| e.name == "RUST_LOG")
            .and_then(|e| e.value);
        assert_eq!(log_level.as_deref(), Some("debug"), "Pod after the upgrade");
    }

    // helm uninstall keeps the CRDs, the VMs and the default profiles.
    let out = c.helm(&["uninstall", RELEASE, "-n", &system, "--wait"]);
    assert!(
        out.status.success(),
        "helm uninstall failed:\n{}",
        text(&out)
    );
    c.kubectl_ok(&["get", "crd", "virtualmachines.automend.io"]);
    c.kubectl_ok(&["get", "configurationprofile", "production", "dev-test"]);
    let left = env.vms.list(&ListParams::default()).await.expect("VMs");
    assert_eq!(left.items.len(), 5, "VMs survive helm uninstall");

    // The same VMs under the chart's webhook mode (the local control plane only: the test
    // configures the API server).
    if let Some(state) = &c.state {
        webhook_mode_as_pods(c, state, &client, &system, &env).await;
    }

    let _ = c.kubectl(&[
        "delete",
        "clusterrole,clusterrolebinding",
        "-l",
        &format!("app.kubernetes.io/instance={RELEASE}"),
    ]);
    env.ns.delete().await;
    let _ = Api::<Namespace>::all(client)
        .delete(&system, &DeleteParams::background())
        .await;
}

/// The guest authorizer's fixed ClusterIP (in the local control plane's 10.96.0.0/16).
const AUTHORIZER_IP: &str = "10.96.255.200";

/// `helm install` in webhook mode: the API server's AuthorizationConfiguration sends guest
/// reviews to the chart's Service (a fixed ClusterIP, reached through kube-proxy on this
/// machine, with a certificate naming it). The controller Pods start only once the API server
/// asks them; they delete the Roles and RoleBindings the `rbac` release made, the guests go on,
/// and both replicas report `automend_guest_authorizer_routed 1`.
async fn webhook_mode_as_pods(
    c: &support::Cluster,
    state: &std::path::Path,
    client: &kube::Client,
    system: &str,
    env: &Env,
) {
    let pki = state.join("pki");
    let certs = tempfile::tempdir().expect("tempdir");
    let (cert, key) = (certs.path().join("tls.crt"), certs.path().join("tls.key"));
    support::issue_serving_cert(&pki, &format!("IP:{AUTHORIZER_IP}"), &cert, &key);
    c.kubectl_ok(&[
        "create",
        "secret",
        "tls",
        "authorizer-tls",
        "-n",
        system,
        &format!("--cert={}", cert.display()),
        &format!("--key={}", key.display()),
    ]);
    // The API server's webhook now names the Service (it reloads the file within a minute).
    let kubeconfig = state.join("guest-authorizer-pods.kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: a\n  cluster:\n    server: https://{AUTHORIZER_IP}:443/authorize\n    certificate-authority: {}\nusers:\n- name: kube-apiserver\n  user: {{}}\ncontexts:\n- name: a\n  context: {{cluster: a, user: kube-apiserver}}\ncurrent-context: a\n",
            pki.join("ca.crt").display()
        ),
    )
    .expect("the webhook kubeconfig");
    let authz = state.join("authorization.yaml");
    let original = std::fs::read_to_string(&authz).expect("the AuthorizationConfiguration");
    let local = state.join("guest-authorizer.kubeconfig");
    assert!(original.contains(&*local.to_string_lossy()), "{original}");
    let _restore = support::Restore::new(&authz, &original);
    support::write_atomically(
        &authz,
        &original.replace(&*local.to_string_lossy(), &kubeconfig.to_string_lossy()),
    );

    let started = Instant::now();
    let cluster_ip = format!("guestAuthorization.clusterIP={AUTHORIZER_IP}");
    let out = install(
        c,
        system,
        &[
            "guestAuthorization.mode=webhook",
            "guestAuthorization.tlsSecret=authorizer-tls",
            &cluster_ip,
            "guestAuthorization.recheckEvery=5s",
        ],
        "300s",
    );
    assert!(
        out.status.success(),
        "helm install (webhook mode) failed:\n{}\n{}",
        text(&out),
        text(&c.kubectl(&[
            "logs",
            "-n",
            system,
            "-l",
            "app.kubernetes.io/name=automend",
            "--tail=30"
        ]))
    );
    eprintln!(
        "helm install --wait (webhook mode): {:.1}s",
        started.elapsed().as_secs_f64()
    );
    // The per-VM RBAC goes; the guests, now authorized by the Pods, keep their VMs Configured.
    wait_for(
        "the per-VM Roles and RoleBindings removed",
        Duration::from_secs(120),
        || async {
            (env.owned::<Role>().await == 0 && env.owned::<RoleBinding>().await == 0).then_some(())
        },
    )
    .await;
    // A VM created now is onboarded by a guest that never had a Role.
    env.vm("vm-5", Some("dev-test"), BTreeMap::new(), BTreeMap::new())
        .await;
    for i in 0..6 {
        env.wait_phase(&format!("vm-{i}"), VmPhase::Configured)
            .await;
    }
    let pods = metrics_endpoints(client, system).await;
    assert_eq!(pods.len(), 2, "{pods:?}");
    let mut allowed = 0.0;
    for p in &pods {
        assert_eq!(
            pod_metric(client, system, p, "automend_guest_authorizer_routed ").await,
            Some(1.0),
            "{p}"
        );
        allowed += pod_metric(
            client,
            system,
            p,
            "automend_guest_authorizations_total{decision=\"allowed\"}",
        )
        .await
        .unwrap_or(0.0);
    }
    assert!(allowed > 0.0, "no guest review answered by the Pods");
    let out = c.helm(&["uninstall", RELEASE, "-n", system, "--wait"]);
    assert!(
        out.status.success(),
        "helm uninstall failed:\n{}",
        text(&out)
    );
}
