//! End to end: fleet enrollment and credentials that last, on the local control plane with the
//! controller as a child process. Real agents (`automend agent` on a sandboxed Debian root with
//! real apt and dpkg) and simulated machines enroll with one Enrollment's token as `automend
//! enroll create` prints it; the limit, the refusals, what the enrollment credential is denied,
//! token renewals, a second start, and an agent stopped past its credential's expiry that comes
//! back by re-enrolling as the same VM. (Booted guests enrolling with the shell snippet:
//! `e2e_guests`.)

mod support;

#[path = "fixtures/guestroot.rs"]
mod guestroot;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use automend::api::{Enrollment, EnrollmentRequest, EnrollmentRequestSpec, RequestPhase, VmPhase};
use automend::guest::enroll::{Refusal, ask};
use automend::sealed::KeyPair;
use guestroot::GuestRoot;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use support::env::{Env, LONG};
use support::{cluster, repo, wait_for};

/// The API server's URL and its CA in a file, as a machine gets them from the snippet.
fn server_and_ca(dir: &Path) -> (String, PathBuf) {
    let kc = kube::config::Kubeconfig::read_from(&cluster().kubeconfig).expect("kubeconfig");
    let cl = kc.clusters[0].cluster.clone().expect("cluster");
    let pem = match (&cl.certificate_authority, &cl.certificate_authority_data) {
        (Some(path), _) => std::fs::read(path).expect("ca"),
        (None, Some(data)) => {
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, data).expect("ca")
        }
        _ => panic!("the kubeconfig has no CA"),
    };
    let ca = dir.join("ca.crt");
    std::fs::write(&ca, pem).expect("ca");
    (cl.server.expect("server"), ca)
}

/// A client acting with a token (the enrollment credential).
async fn client_with(token: &str, ns: &str) -> Client {
    let mut config = cluster().config().await;
    config.auth_info = kube::config::AuthInfo {
        token: Some(secrecy::SecretString::from(token.to_string())),
        ..Default::default()
    };
    config.default_namespace = ns.into();
    Client::try_from(config).expect("client")
}

struct Agent {
    child: Child,
    log: PathBuf,
}

impl Agent {
    fn start(
        g: &GuestRoot,
        host: &str,
        server: &str,
        ca: &Path,
        token: &Path,
        extra: &[&str],
    ) -> Agent {
        let logdir = repo().join("target/e2e-logs");
        std::fs::create_dir_all(&logdir).expect("log folder");
        let log = logdir.join(format!("enroll-agent-{host}-{}.log", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_automend"))
            .arg("agent")
            .arg("--root")
            .arg(&g.root)
            .arg("--state-dir")
            .arg(&g.state)
            .args(["--server", server, "--hostname", host])
            .arg("--ca-file")
            .arg(ca)
            .arg("--enroll-token-file")
            .arg(token)
            .args(["--heartbeat-interval", "1s", "--observe-interval", "2s"])
            .args(extra)
            .env("RUST_LOG", "info,kube=warn")
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("starting the agent");
        Agent { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
    }
}

fn machine(enrollment: &str, host: &str, key: &KeyPair) -> EnrollmentRequestSpec {
    EnrollmentRequestSpec {
        enrollment: enrollment.into(),
        public_key: key.public(),
        hostname: host.into(),
        os_id: "debian".into(),
        os_version: Some("12".into()),
        os_pretty_name: None,
        architecture: "x86_64".into(),
        region: None,
        zone: None,
        availability_set: None,
        update_domain: None,
        fault_domain: None,
        time_zone: None,
        labels: Default::default(),
    }
}

/// The answer to a denied request is 403 Forbidden; `what` names it in the failure.
fn denied<T: std::fmt::Debug>(what: &str, r: Result<T, kube::Error>) -> String {
    match r {
        Err(kube::Error::Api(s)) if s.code == 403 => s.message,
        other => panic!("{what}: expected 403 Forbidden, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machines_enroll_within_the_limit_and_the_credential_does_nothing_else() {
    let mut env = Env::new("enroll").await;
    let ns = env.ns.name.clone();
    let dir = tempfile::tempdir().expect("dir");
    let (server, ca) = server_and_ca(dir.path());
    let profile = env
        .profile("linux", json!({ "environment": "DevTest" }))
        .await;
    let ctl = env.controller(&["--leader-elect=false", "--release-cadence", "off"]);
    let rings = env.ring_selecting("pilot", "ring", "pilot").await;

    // One Enrollment for three machines, as an operator creates it.
    let token = env.enroll(&[
        "create",
        "fleet",
        "--profile",
        &profile,
        "--label",
        "ring=pilot",
        "--allow-label",
        "role",
        "--max-machines",
        "3",
        "--region",
        "westeurope",
        "--ttl",
        "1h",
        "--format",
        "token",
    ]);
    let token = token.trim().to_string();
    let token_file = dir.path().join("enroll-token");
    std::fs::write(&token_file, &token).expect("token");
    let snippet = env.enroll(&["token", "fleet", "--format", "cloud-init"]);
    assert!(snippet.starts_with("#cloud-config"), "{snippet}");
    assert!(
        snippet.contains(&format!("AUTOMEND_SERVER={server}")),
        "{snippet}"
    );

    // A real agent enrolls: a VM named after its hostname, with the Enrollment's labels and
    // profile, Configured; the enrollment token is dropped.
    let g = GuestRoot::debian();
    let mut agent = Agent::start(
        &g,
        "web-1",
        &server,
        &ca,
        &token_file,
        &["--token-renew-every", "2s", "--token-lifetime", "10m"],
    );
    let vm = env.wait_phase("web-1", VmPhase::Configured).await;
    let configured_at = jiff::Timestamp::now();
    assert_eq!(vm.labels().get("ring").map(String::as_str), Some("pilot"));
    assert_eq!(
        vm.labels()
            .get("automend.io/enrollment")
            .map(String::as_str),
        Some("fleet")
    );
    assert_eq!(
        vm.spec.management.profile.as_deref(),
        Some(profile.as_str())
    );
    assert_eq!(vm.spec.placement.region, "westeurope");
    assert_eq!(
        vm.spec.os.image.offer, "debian-12",
        "from the machine's os-release"
    );
    assert!(
        !token_file.exists(),
        "the agent drops the enrollment token once enrolled"
    );
    assert!(g.state.join("identity.json").exists());

    // It renews its own token (at least three times) and never misses a heartbeat.
    let log = wait_for("three token renewals", LONG, || async {
        let log = agent.log();
        (log.matches("credential renewed").count() >= 3).then_some(log)
    })
    .await;
    assert!(
        !log.contains("renewing the credential"),
        "no failed renewal: {log}"
    );
    let vm = env.get("web-1").await;
    let status = vm.status.clone().expect("status");
    let hb = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Heartbeat")
        .expect("heartbeat");
    assert_eq!(hb.status, "True", "{hb:?}");
    assert!(
        hb.last_transition_time.0 < configured_at,
        "the heartbeat never lapsed: {hb:?}"
    );
    let expires = status
        .guest
        .and_then(|g| g.credential_expires_at)
        .expect("credentialExpiresAt");
    assert!(
        expires.0 > jiff::Timestamp::now(),
        "the renewed token's expiry is reported"
    );
    assert!(
        !env.events("web-1")
            .await
            .contains(&"HeartbeatLost".to_string())
    );

    // A second start does not enroll again.
    agent.stop();
    std::fs::write(&token_file, &token).expect("token again");
    let mut agent = Agent::start(&g, "web-1", &server, &ca, &token_file, &[]);
    wait_for("the restarted agent runs as web-1", LONG, || async {
        (agent.log().matches("automend agent starting").count() >= 2).then_some(())
    })
    .await;
    assert_eq!(
        agent.log().matches("enrolling this machine").count(),
        1,
        "{}",
        agent.log()
    );
    agent.stop();

    // What the enrollment credential may not do.
    let enroller = client_with(&token, &ns).await;
    let requests: Api<EnrollmentRequest> = Api::namespaced(enroller.clone(), &ns);
    let vms: Api<automend::api::VirtualMachine> = Api::namespaced(enroller.clone(), &ns);
    let mut denials = vec![
        denied(
            "list EnrollmentRequests",
            requests.list(&ListParams::default()).await,
        ),
        denied("get a VirtualMachine", vms.get("web-1").await),
        denied(
            "list VirtualMachines",
            vms.list(&ListParams::default()).await,
        ),
        denied(
            "create a VirtualMachine",
            vms.create(&PostParams::default(), &vm).await,
        ),
        denied(
            "patch a VirtualMachine's status",
            vms.patch_status(
                "web-1",
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"phase": "Failed"}})),
            )
            .await,
        ),
        denied(
            "get the Enrollment",
            Api::<Enrollment>::namespaced(enroller.clone(), &ns)
                .get("fleet")
                .await,
        ),
        denied(
            "list Secrets",
            Api::<Secret>::namespaced(enroller.clone(), &ns)
                .list(&ListParams::default())
                .await,
        ),
        denied(
            "get a ConfigMap",
            Api::<ConfigMap>::namespaced(enroller.clone(), &ns)
                .get("kube-root-ca.crt")
                .await,
        ),
        denied(
            "list ServiceAccounts",
            Api::<ServiceAccount>::namespaced(enroller.clone(), &ns)
                .list(&ListParams::default())
                .await,
        ),
        denied(
            "update a Lease",
            Api::<Lease>::namespaced(enroller.clone(), &ns)
                .patch(
                    "web-1",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"holderIdentity": "x"}})),
                )
                .await,
        ),
        denied(
            "a token of web-1's guest identity",
            automend::guest::sim::request_token(&enroller, &ns, "web-1", Duration::from_secs(600))
                .await,
        ),
    ];
    let mine = requests
        .create(
            &PostParams::default(),
            &EnrollmentRequest::new(
                &format!("probe-{}", automend::sealed::random_hex(8)),
                machine("fleet", "probe", &KeyPair::generate()),
            ),
        )
        .await
        .expect("creating a request is what it may do");
    denials.push(denied(
        "delete a request",
        requests
            .delete(&mine.name_any(), &DeleteParams::default())
            .await,
    ));
    denials.push(denied(
        "answer its own request",
        requests
            .patch_status(
                &mine.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"phase": "Approved"}})),
            )
            .await,
    ));
    // Another Enrollment of the namespace: its credential cannot borrow it.
    env.enroll(&[
        "create",
        "other",
        "--max-machines",
        "100",
        "--format",
        "token",
    ]);
    // The kubectl plugin prints tokens the same way.
    let out = Command::new(env!("CARGO_BIN_EXE_kubectl-automend"))
        .args(["-n", &ns, "enroll", "token", "other", "--format", "token"])
        .env("KUBECONFIG", &cluster().kubeconfig)
        .output()
        .expect("kubectl automend enroll");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plugin_token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(plugin_token.split('.').count(), 3, "a JWT: {plugin_token}");
    let other = denied(
        "a request naming another Enrollment",
        requests
            .create(
                &PostParams::default(),
                &EnrollmentRequest::new("borrow", machine("other", "borrow", &KeyPair::generate())),
            )
            .await,
    );
    assert!(other.contains("its own Enrollment"), "{other}");
    // Every one denied by RBAC, for the Enrollment's own ServiceAccount.
    assert_eq!(denials.len(), 13);
    for d in &denials {
        assert!(
            d.contains(&format!(
                "\"system:serviceaccount:{ns}:automend-enroll-fleet\" cannot"
            )),
            "{d}"
        );
    }

    // A label the Enrollment does not allow: refused, naming it.
    let key = KeyPair::generate();
    let mut spec = machine("fleet", "db-1", &key);
    spec.labels.insert("team".into(), "x".into());
    match ask(&requests, spec, &key, LONG).await {
        Err(Refusal::Refused(why)) => assert!(
            why.starts_with("LabelNotAllowed") && why.contains("label team"),
            "{why}"
        ),
        other => panic!("expected a refusal: {other:?}"),
    }

    // Simulated machines fill the limit (probe + web-1 + 1 = 3); the rest are refused.
    env.sim_enrolled(&token_file_with(dir.path(), &token), 3, "sim")
        .await;
    let enrollments: Api<Enrollment> = Api::namespaced(env.client.clone(), &ns);
    let e = wait_for("the limit reached: 3 enrolled, 3 refused", LONG, || async {
        let e = enrollments.get("fleet").await.ok()?;
        let s = e.status.clone()?;
        (s.machines_enrolled == 3 && s.machines_refused == 3).then_some(e)
    })
    .await;
    let ready = e
        .status
        .expect("status")
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .expect("Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "Exhausted")
    );
    let refusals = env.notes_with("fleet", "EnrollmentRefused", 3).await;
    assert_eq!(refusals.len(), 3, "{refusals:?}");
    assert_eq!(
        refusals
            .iter()
            .filter(|n| n.contains("limit of 3 machines"))
            .count(),
        2,
        "{refusals:?}"
    );
    assert_eq!(
        refusals.iter().filter(|n| n.contains("label team")).count(),
        1,
        "{refusals:?}"
    );
    // The Enrollment's labels put every enrolled VM into the ring.
    wait_for("the ring holds the three enrolled VMs", LONG, || async {
        let r = rings.get("pilot").await.ok()?;
        (r.status?.total == 3).then_some(())
    })
    .await;

    // An expired Enrollment refuses, saying so.
    enrollments
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "automend.io/v1alpha1", "kind": "Enrollment",
                "metadata": { "name": "old" },
                "spec": { "expiresAt": "2026-01-01T00:00:00Z", "placement": { "region": "westeurope" } },
            }))
            .expect("enrollment"),
        )
        .await
        .expect("creating an expired enrollment");
    let sa = "automend-enroll-old";
    let old_token = wait_for("the old enrollment's credential", LONG, || async {
        let sas: Api<ServiceAccount> = Api::namespaced(env.client.clone(), &ns);
        let tr = k8s_openapi::api::authentication::v1::TokenRequest {
            spec: k8s_openapi::api::authentication::v1::TokenRequestSpec {
                expiration_seconds: Some(600),
                ..Default::default()
            },
            ..Default::default()
        };
        sas.create_token_request(sa, &PostParams::default(), &tr)
            .await
            .ok()?
            .status
            .map(|s| s.token)
    })
    .await;
    let old = client_with(&old_token, &ns).await;
    let key = KeyPair::generate();
    match ask(
        &Api::namespaced(old, &ns),
        machine("old", "late-1", &key),
        &key,
        LONG,
    )
    .await
    {
        Err(Refusal::Refused(why)) => assert!(
            why.starts_with("Expired") && why.contains("expired at 2026-01-01T00:00:00Z"),
            "{why}"
        ),
        other => panic!("expected a refusal: {other:?}"),
    }

    // Deleting the Enrollment stops new enrollments (its ServiceAccount goes, and with it every
    // token) and leaves the enrolled VMs alone.
    enrollments
        .delete("fleet", &DeleteParams::default())
        .await
        .expect("deleting the enrollment");
    let key = KeyPair::generate();
    let gone = wait_for("the deleted enrollment's token rejected", LONG, || async {
        match ask(
            &requests,
            machine("fleet", "late-2", &key),
            &key,
            Duration::from_secs(5),
        )
        .await
        {
            Err(Refusal::Failed(why)) if why.contains("token was rejected") => Some(why),
            _ => None,
        }
    })
    .await;
    assert!(gone.contains("was deleted"), "{gone}");
    assert_eq!(
        env.get("web-1").await.spec.management.profile.as_deref(),
        Some(profile.as_str())
    );
    env.finish(ctl).await;
}

fn token_file_with(dir: &Path, token: &str) -> PathBuf {
    let path = dir.join("sim-token");
    std::fs::write(&path, token).expect("token");
    path
}

/// An agent stopped until its credential expired is reported as such; given a new enrollment
/// token it enrolls again and gets its VM back (same name and uid), not a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_past_its_credential_re_enrolls_as_the_same_vm() {
    let env = Env::new("reenroll").await;
    let ns = env.ns.name.clone();
    let dir = tempfile::tempdir().expect("dir");
    let (server, ca) = server_and_ca(dir.path());
    let profile = env
        .profile("linux", json!({ "environment": "DevTest" }))
        .await;
    let ctl = env.controller(&["--leader-elect=false", "--release-cadence", "off"]);
    let token_file = dir.path().join("enroll-token");
    let token = env.enroll(&[
        "create",
        "fleet",
        "--profile",
        &profile,
        "--region",
        "westeurope",
        "--ttl",
        "1h",
        "--format",
        "token",
    ]);
    std::fs::write(&token_file, token.trim()).expect("token");
    let g = GuestRoot::debian();
    // Tokens of the shortest lifetime the API allows (10 minutes), renewed at once.
    let short = ["--token-lifetime", "10m", "--token-renew-every", "1s"];
    let mut agent = Agent::start(&g, "app-1", &server, &ca, &token_file, &short);
    let before = env.wait_phase("app-1", VmPhase::Configured).await;
    wait_for("a 10-minute token renewed and reported", LONG, || async {
        let vm = env.get("app-1").await;
        let at = vm.status?.guest?.credential_expires_at?;
        (jiff::Timestamp::now().duration_until(at.0).as_secs() < 700).then_some(())
    })
    .await;
    agent.stop();
    let expiry = env
        .get("app-1")
        .await
        .status
        .and_then(|s| s.guest)
        .and_then(|g| g.credential_expires_at)
        .expect("expiry");

    // Past the expiry the VM says why it is silent and what to do.
    let waited = jiff::Timestamp::now()
        .duration_until(expiry.0)
        .as_secs()
        .max(0) as u64;
    let vm = wait_for(
        "the VM reported with an expired credential",
        Duration::from_secs(waited + 120),
        || async {
            let vm = env.get("app-1").await;
            let c = vm
                .status
                .as_ref()?
                .conditions
                .iter()
                .find(|c| c.type_ == "Heartbeat")?
                .clone();
            (c.reason == "CredentialExpired").then_some((vm, c))
        },
    )
    .await;
    assert!(vm.1.message.contains("re-enroll the machine"), "{:?}", vm.1);
    assert_eq!(vm.0.status.and_then(|s| s.phase), Some(VmPhase::Pending));
    env.events_with("app-1", &["CredentialExpired"]).await;

    // The agent, started again, says the same and waits for a token.
    let mut agent = Agent::start(&g, "app-1", &server, &ca, &token_file, &short);
    wait_for("the agent says its credential expired", LONG, || async {
        agent
            .log()
            .contains("re-enroll the machine: put a new enrollment token in")
            .then_some(())
    })
    .await;
    // The operator hands over a new token: the machine gets its VM back.
    let again = env.enroll(&["token", "fleet", "--format", "token"]);
    std::fs::write(&token_file, again.trim()).expect("token");
    let after = env.wait_phase("app-1", VmPhase::Configured).await;
    assert_eq!(
        after.uid(),
        before.uid(),
        "the same VirtualMachine, history kept"
    );
    let all = env.vms.list(&ListParams::default()).await.expect("vms");
    assert_eq!(all.items.len(), 1, "no duplicate VM");
    let requests: Api<EnrollmentRequest> = Api::namespaced(env.client.clone(), &ns);
    let answers: Vec<_> = requests
        .list(&ListParams::default())
        .await
        .expect("requests")
        .items
        .into_iter()
        .filter_map(|r| r.status)
        .collect();
    assert!(
        answers.iter().any(|s| s.reenrolled
            && s.phase == RequestPhase::Approved
            && s.virtual_machine.as_deref() == Some("app-1")),
        "{answers:?}"
    );
    let e: Enrollment = Api::namespaced(env.client.clone(), &ns)
        .get("fleet")
        .await
        .expect("enrollment");
    assert_eq!(
        e.status.map(|s| s.machines_enrolled),
        Some(1),
        "a machine enrolling again counts once"
    );
    agent.stop();
    env.finish(ctl).await;
}
