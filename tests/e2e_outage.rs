//! End to end: an API server and etcd outage under load. This binary has its own control plane,
//! which the test kills (SIGKILL, as a crash) and starts again.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use automend::api::VmPhase;
use serde_json::json;
use support::env::{Env, LONG};
use support::{cluster, repo, wait_for};

fn kill9(state: &Path, process: &str) {
    let pid = std::fs::read_to_string(state.join("pids").join(process))
        .unwrap_or_else(|e| panic!("{process} pid: {e}"));
    let ok = Command::new("kill")
        .args(["-9", pid.trim()])
        .status()
        .expect("kill");
    assert!(ok.success(), "kill -9 {process}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_controller_reconciles_again_within_30s_of_an_api_server_restart() {
    let mut env = Env::new("outage").await;
    let c = cluster();
    let state = c.kubeconfig.parent().expect("state folder").to_path_buf();
    let prod = env
        .profile(
            "prod",
            json!({ "environment": "Production",
                    "remediation": { "mode": "Auto", "maxAttempts": 5, "initialBackoff": "1s", "maxBackoff": "2s" } }),
        )
        .await;
    let names: Vec<String> = (0..40).map(|i| format!("vm-{i:02}")).collect();
    for n in &names {
        env.vm(n, Some(&prod), BTreeMap::new(), BTreeMap::new())
            .await;
    }
    // Short watch bounds, so the probes' answers can be seen within the outage.
    let ctl = env.controller(&[
        "--leader-elect=false",
        "--watch-idle=4s",
        "--watch-unhealthy-after=8s",
    ]);
    env.sim().await;
    for n in &names {
        env.wait_phase(n, VmPhase::Configured).await;
    }
    // Quiet watches (no UpdateRing in the namespace) are re-established after --watch-idle and
    // the controller stays ready and live meanwhile.
    wait_for("a quiet watch to be re-established", LONG, || async {
        let restarts = ctl
            .metric("automend_watch_restarts_total{watch=\"rollout/updaterings\"}")
            .await;
        (restarts >= 2.0).then_some(())
    })
    .await;
    assert_eq!(ctl.http_get("/readyz").await.map(|r| r.0), Some(200));
    assert_eq!(ctl.http_get("/healthz").await.map(|r| r.0), Some(200));

    // The crash: etcd and the API server die; 20 s later they start again.
    kill9(&state, "kube-apiserver");
    kill9(&state, "etcd");
    let down = Instant::now();
    // Not ready as soon as the watches fail; not live once they have failed for 8 s, so a
    // kubelet would restart the controller.
    let (code, body) = wait_for("/readyz to fail", Duration::from_secs(10), || async {
        ctl.http_get("/readyz")
            .await
            .filter(|(code, _)| *code == 503)
    })
    .await;
    assert!(body.contains("is failing"), "{code} {body}");
    let (_, body) = wait_for("/healthz to fail", Duration::from_secs(28), || async {
        ctl.http_get("/healthz")
            .await
            .filter(|(code, _)| *code == 500)
    })
    .await;
    assert!(body.contains("has failed for"), "{body}");
    tokio::time::sleep(Duration::from_secs(20).saturating_sub(down.elapsed())).await;
    let up = Command::new("bash")
        .arg(repo().join("hack/cluster.sh"))
        .arg("up")
        .env("AUTOMEND_CLUSTER_DIR", &state)
        .output()
        .expect("restarting the control plane");
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    let back = Instant::now();

    // Within 30 s: drift on a VM is remediated (the VM controller and the guests are back), a
    // VM created now is onboarded, and a profile edit is resolved (the profile controller).
    // (The rollout controller shares the VM controller's watch and the same trigger fix.)
    let client = c.client().await;
    let vms: kube::Api<automend::api::VirtualMachine> = kube::Api::namespaced(client, &env.ns.name);
    wait_for("the API server to answer", LONG, || async {
        vms.list(&Default::default()).await.ok().map(|_| ())
    })
    .await;
    env.annotate("vm-07", "sim.automend.io/drift", "monitoring")
        .await;
    env.vm("late", Some(&prod), BTreeMap::new(), BTreeMap::new())
        .await;
    let edited = env
        .profiles
        .patch(
            &prod,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({ "spec": { "remediation": { "maxAttempts": 4 } } })),
        )
        .await
        .expect("editing the profile");
    let within = Duration::from_secs(30);
    wait_for("vm-07's drift to be remediated", within, || async {
        env.events("vm-07")
            .await
            .iter()
            .any(|e| e == "Remediated")
            .then_some(())
    })
    .await;
    wait_for(
        "a VM created after the restart to be Configured",
        within,
        || async {
            (env.get("late").await.status.and_then(|s| s.phase) == Some(VmPhase::Configured))
                .then_some(())
        },
    )
    .await;
    wait_for("the profile edit to be resolved", within, || async {
        let p = env.profiles.get(&prod).await.ok()?;
        (p.status.and_then(|s| s.observed_generation) == edited.metadata.generation).then_some(())
    })
    .await;
    wait_for(
        "/healthz and /readyz to answer ok again",
        within,
        || async {
            let ok = |r: Option<(u16, String)>| r.is_some_and(|(code, _)| code == 200);
            (ok(ctl.http_get("/healthz").await) && ok(ctl.http_get("/readyz").await)).then_some(())
        },
    )
    .await;
    let took = back.elapsed();
    eprintln!("recovered {took:?} after the control plane came back");
    assert!(took <= within, "{took:?}");
    env.finish(ctl).await;
}
