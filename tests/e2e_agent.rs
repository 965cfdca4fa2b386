//! End to end with the real agent: the controller (child process) on the local control plane and
//! one `automend agent` (child process) on a sandboxed Debian root with real apt, dpkg and
//! systemctl, as its VM's own identity (a kubeconfig from `automend guest-kubeconfig`), through a
//! TCP proxy the test can cut. Onboarding to Configured, drift remediated on the files, an outage
//! with a result kept on disk across an agent kill, and a one-ring rollout installing a security
//! update on an accelerated clock.

mod support;

#[path = "fixtures/guestroot.rs"]
mod guestroot;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use automend::api::{PatchRollout, RolloutPhase, VmPhase};
use automend::clock::{Clock, ClockArgs};
use guestroot::{GuestRoot, put};
use jiff::Timestamp;
use kube::api::{Api, PostParams};
use serde_json::json;
use support::env::{Env, LONG};
use support::{cluster, repo, wait_for};

const SPEED: f64 = 3600.0;

/// A loopback TCP proxy to the API server that the test can cut (every connection dropped, new
/// ones refused) and restore.
struct Proxy {
    port: u16,
    cut: Arc<Mutex<bool>>,
    conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let cut = Arc::new(Mutex::new(false));
        let conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let (c2, k2) = (cut.clone(), conns.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if *c2.lock().expect("lock") {
                    continue; // dropped: connection refused as far as the client can tell
                }
                let up = upstream.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(up).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                k2.lock().expect("lock").push(task);
            }
        });
        Proxy { port, cut, conns }
    }

    fn set_cut(&self, cut: bool) {
        *self.cut.lock().expect("lock") = cut;
        if cut {
            for t in self.conns.lock().expect("lock").drain(..) {
                t.abort();
            }
        }
    }
}

struct Agent {
    child: Child,
}

impl Agent {
    fn start(g: &GuestRoot, vm: &str, kubeconfig: &Path, args: &ClockArgs, log: &str) -> Agent {
        let logdir = repo().join("target/e2e-logs");
        std::fs::create_dir_all(&logdir).expect("log folder");
        let file = std::fs::File::create(logdir.join(log)).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_automend"))
            .args(["agent", "--vm", vm, "--kubeconfig"])
            .arg(kubeconfig)
            .arg("--root")
            .arg(&g.root)
            .arg("--state-dir")
            .arg(&g.state)
            .args(["--heartbeat-interval", "1s", "--observe-interval", "1s"])
            .args(["--clock-speed", &SPEED.to_string()])
            .args([
                "--clock-start",
                &args.clock_start.map(|t| t.to_string()).unwrap_or_default(),
            ])
            .env("RUST_LOG", "info,kube=warn")
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("starting the agent");
        Agent { child }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

fn journal(g: &GuestRoot) -> serde_json::Value {
    std::fs::read(g.state.join("guest.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

#[tokio::test]
async fn agent_onboards_remediates_survives_an_outage_and_installs_a_security_update() {
    let env = Env::new("agent").await;
    let ns = env.ns.name.clone();
    let start = Timestamp::now();
    let clock_args = ClockArgs {
        clock_speed: SPEED,
        clock_start: Some(start),
    };
    let clock = Clock::from_args(&clock_args).expect("clock");

    // The machine: libfoo 1.0 and tool 2.0 installed; the repository has libfoo 1.2 in the
    // security suite and tool 2.1 in the normal one.
    let g = GuestRoot::debian();
    for (n, v, s) in [
        ("libfoo", "1.0", "stable"),
        ("libfoo", "1.2", "stable-security"),
        ("tool", "2.0", "stable"),
        ("tool", "2.1", "stable"),
    ] {
        g.build(n, v, s);
    }
    g.index();
    g.dpkg_install(&[("libfoo", "1.0", "stable"), ("tool", "2.0", "stable")]);

    let profile = env
        .profile(
            "linux",
            json!({ "environment": "Production",
                    "preferences": { "timeSync": { "servers": ["time.example.com"] },
                                     "changeTracking": { "trackedFiles": ["/etc/hosts"] } } }),
        )
        .await;
    let ctl = env.controller(&[
        "--leader-elect=false",
        "--clock-start",
        &start.to_string(),
        "--clock-speed",
        &SPEED.to_string(),
        "--release-cadence",
        "off",
        "--install-duration",
        "30m",
    ]);
    let rings: Api<automend::api::UpdateRing> = Api::namespaced(env.client.clone(), &ns);
    rings
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "automend.io/v1alpha1", "kind": "UpdateRing",
                "metadata": { "name": "test" },
                "spec": { "order": 0, "selector": { "matchLabels": { "automend.io/ring": "test" } },
                          "deferral": "0s", "deadline": "48h", "maxUnavailable": 1,
                          "healthGate": { "maxFailedPercent": 0, "bakeTime": "1h", "healthyFor": "30m" } },
            }))
            .expect("ring"),
        )
        .await
        .expect("creating the ring");
    let vm = "debian-1";
    env.vms
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "automend.io/v1alpha1", "kind": "VirtualMachine",
                "metadata": { "name": vm, "labels": { "automend.io/ring": "test" } },
                "spec": {
                    "management": { "enabled": true, "profile": profile },
                    "os": { "type": "Linux", "image": { "publisher": "Canonical", "offer": "ubuntu-24_04-lts", "sku": "server" } },
                    "placement": { "region": "westeurope", "zone": "1" },
                    "patchSettings": { "patchMode": "AutomaticByPlatform" },
                },
            }))
            .expect("vm"),
        )
        .await
        .expect("creating the VM");

    // The VM's own identity, through the proxy.
    let upstream = {
        let kc = std::fs::read_to_string(&cluster().kubeconfig).expect("kubeconfig");
        let server = kc
            .lines()
            .find_map(|l| l.trim().strip_prefix("server: "))
            .expect("server")
            .to_string();
        server.trim_start_matches("https://").to_string()
    };
    let proxy = Proxy::start(upstream).await;
    let kubeconfig = g.state.with_file_name("guest-kubeconfig.yaml");
    let yaml = wait_for(
        "a guest kubeconfig (the controller creates the identity)",
        LONG,
        || async {
            let out = Command::new(env!("CARGO_BIN_EXE_automend"))
                .args(["guest-kubeconfig", vm, "-n", &ns, "--server"])
                .arg(format!("https://127.0.0.1:{}", proxy.port))
                .env("KUBECONFIG", &cluster().kubeconfig)
                .output()
                .ok()?;
            out.status.success().then_some(out.stdout)
        },
    )
    .await;
    std::fs::write(&kubeconfig, yaml).expect("kubeconfig");
    let mut agent = Agent::start(
        &g,
        vm,
        &kubeconfig,
        &clock_args,
        &format!("agent-{ns}-1.log"),
    );

    // Onboarding: configured on the machine, every service compliant.
    let got = env.wait_phase(vm, VmPhase::Configured).await;
    let guest = got.status.and_then(|s| s.guest).expect("guest");
    assert_eq!(guest.os.as_ref().map(|o| o.id.as_str()), Some("debian"));
    assert!(
        guest.services.iter().all(|s| s.compliant),
        "{:?}",
        guest.services
    );
    assert!(guest.problems.is_empty(), "{:?}", guest.problems);
    assert_eq!(g.is_enabled("automend-backup.timer"), "enabled");
    assert!(
        g.read("/etc/apt/apt.conf.d/99automend-auto-upgrades")
            .contains("Unattended-Upgrade \"0\"")
    );
    assert!(
        g.read("/etc/systemd/timesyncd.conf.d/automend.conf")
            .contains("NTP=time.example.com")
    );

    // Drift behind the agent's back: reported, remediated on the files, Events.
    let sshd = g.read("/etc/ssh/sshd_config");
    put(
        &g.root,
        "/etc/ssh/sshd_config",
        &format!("PermitRootLogin yes\n{sshd}"),
        0o600,
    );
    wait_for("the drift remediated", LONG, || async {
        let events = env.events(vm).await;
        (events.iter().any(|e| e == "DriftDetected")
            && events.iter().any(|e| e == "Remediated")
            && g.read("/etc/ssh/sshd_config")
                .starts_with("# automend: PermitRootLogin yes"))
        .then_some(())
    })
    .await;
    env.wait_phase(vm, VmPhase::Configured).await;
    // A tracked file changed: change tracking reports it, and the controller publishes an Event.
    put(
        &g.root,
        "/etc/hosts",
        "127.0.0.1 localhost\n10.1.1.1 added\n",
        0o644,
    );
    wait_for("the tracked change reported", LONG, || async {
        let vm = env.vms.get(vm).await.ok()?;
        let changes = vm.status?.guest?.changes;
        changes
            .iter()
            .any(|c| c.ends_with("file /etc/hosts modified"))
            .then_some(())
    })
    .await;
    wait_for("a ChangeTracked Event", LONG, || async {
        let events = env.event_notes(vm).await;
        events
            .iter()
            .any(|(r, n)| r == "ChangeTracked" && n.ends_with("file /etc/hosts modified"))
            .then_some(())
    })
    .await;

    // An outage: the API server becomes unreachable while an on-demand assessment runs (apt's
    // Pre-Invoke hook marks the start and takes 4 s). The result is kept on disk; the agent is
    // killed; a new agent reports it once the API server is back, without assessing again.
    let marker = g.root.join("tmp/assessments");
    put(
        &g.root,
        "/etc/apt/apt.conf.d/10slow-update",
        &format!(
            "APT::Update::Pre-Invoke {{ \"echo run >> {} && sleep 4\"; }};\n",
            marker.display()
        ),
        0o644,
    );
    std::fs::create_dir_all(g.root.join("tmp")).expect("tmp");
    let _ = std::fs::remove_file(&marker);
    env.annotate(vm, "automend.io/assess", "outage").await;
    wait_for("the assessment to start", LONG, || async {
        marker.exists().then_some(())
    })
    .await;
    proxy.set_cut(true);
    let j = wait_for(
        "the assessment kept on disk, not acknowledged",
        LONG,
        || async {
            let j = journal(&g);
            (j["assessment"]["requestId"] == "ondemand-outage" && j["acknowledged"] == false)
                .then_some(j)
        },
    )
    .await;
    assert_eq!(j["assessment"]["status"], "Succeeded", "{j}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    agent.kill();
    proxy.set_cut(false);
    let mut agent = Agent::start(
        &g,
        vm,
        &kubeconfig,
        &clock_args,
        &format!("agent-{ns}-2.log"),
    );
    wait_for(
        "the kept assessment reported after the outage",
        LONG,
        || async {
            let vm = env.vms.get(vm).await.ok()?;
            let s = vm.status?;
            let a = s.guest?.assessment?;
            let summary = s.patch_status?.available_patch_summary?;
            (a.request_id == "ondemand-outage"
                && summary.critical_and_security_patch_count == 1
                && summary.other_patch_count == 1
                && journal(&g)["acknowledged"] == true)
                .then_some(())
        },
    )
    .await;
    let runs = std::fs::read_to_string(&marker).unwrap_or_default();
    assert_eq!(
        runs.lines().count(),
        1,
        "assessed again after the restart: {runs}"
    );
    std::fs::remove_file(g.root.join("etc/apt/apt.conf.d/10slow-update")).expect("rm");

    // A one-ring rollout: the security update (and only it) installed on the machine.
    let rollouts: Api<PatchRollout> = Api::namespaced(env.client.clone(), &ns);
    rollouts
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "automend.io/v1alpha1", "kind": "PatchRollout",
                "metadata": { "name": "november" },
                "spec": { "releaseTime": clock.now().to_string() },
            }))
            .expect("rollout"),
        )
        .await
        .expect("creating the rollout");
    let done = wait_for(
        "the rollout to succeed",
        Duration::from_secs(180),
        || async {
            let r = rollouts.get("november").await.ok()?;
            let phase = r.status.as_ref().and_then(|s| s.phase);
            assert_ne!(phase, Some(RolloutPhase::Halted), "{:?}", r.status);
            (phase == Some(RolloutPhase::Succeeded)).then_some(r)
        },
    )
    .await;
    let manifest = done.status.and_then(|s| s.manifest).expect("manifest");
    let pinned: Vec<String> = manifest
        .families
        .iter()
        .flat_map(|f| {
            f.packages
                .iter()
                .map(|p| format!("{}={}", p.name, p.version))
        })
        .collect();
    assert_eq!(pinned, ["libfoo=1.2"]);
    assert_eq!(g.versions(), ["libfoo 1.2", "tool 2.0"]);
    let got = env.get(vm).await;
    let st = got.status.expect("status");
    let summary = st
        .patch_status
        .and_then(|p| p.last_patch_installation_summary)
        .expect("installation summary");
    assert_eq!(summary.installed_patch_count, 1, "{summary:?}");
    let record = st.guest.and_then(|g| g.installation).expect("installation");
    let previous: BTreeMap<String, String> = record
        .previous_versions
        .iter()
        .map(|p| (p.name.clone(), p.version.clone()))
        .collect();
    assert_eq!(previous.get("libfoo").map(String::as_str), Some("1.0"));
    assert_eq!(env.wait_onboarded(&profile, &[vm]).await, vec![1]);

    // A half-written state file (the machine lost power mid-write): reported clearly, set aside,
    // and the agent carries on from what the API server has, installing nothing again.
    agent.kill();
    std::fs::write(g.state.join("guest.json"), "{\"appliedHash\": \"1f").expect("damage");
    let mut agent = Agent::start(
        &g,
        vm,
        &kubeconfig,
        &clock_args,
        &format!("agent-{ns}-3.log"),
    );
    wait_for("the damaged state file reported", LONG, || async {
        let vm = env.vms.get(vm).await.ok()?;
        let problems = vm.status?.guest?.problems;
        problems
            .iter()
            .any(|p| p.contains("guest.json is damaged") && p.contains("guest.json.damaged"))
            .then_some(())
    })
    .await;
    env.wait_phase(vm, VmPhase::Configured).await;
    assert_eq!(g.versions(), ["libfoo 1.2", "tool 2.0"]);

    // ReportOnly: drift is reported (Failed, DriftNotRemediated) and the machine left as it is.
    let mut p = env.profiles.get(&profile).await.expect("profile");
    p.spec.remediation.mode = automend::api::RemediationMode::ReportOnly;
    env.profiles
        .replace(&profile, &PostParams::default(), &p)
        .await
        .expect("ReportOnly");
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The drift happens while the API server is unreachable; the same agent reconnects (its watch
    // too: it answers an assessment asked for afterwards) and reports it.
    proxy.set_cut(true);
    g.systemctl(&["disable", "automend-scan.timer"]);
    // The configuration (the assessment below refreshes apt's lists, which is not configuration).
    let etc = |g: &GuestRoot| -> Vec<(String, Vec<u8>, u32)> {
        let prefix = g.root.join("etc").display().to_string();
        g.snapshot()
            .into_iter()
            .filter(|f| f.0.starts_with(&prefix))
            .collect()
    };
    let drifted = etc(&g);
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.set_cut(false);
    env.annotate(vm, "automend.io/assess", "after-outage").await;
    wait_for("an assessment answered after the outage", LONG, || async {
        let vm = env.vms.get(vm).await.ok()?;
        (vm.status?.guest?.assessment?.request_id == "ondemand-after-outage").then_some(())
    })
    .await;
    let failed = env.wait_phase(vm, VmPhase::Failed).await;
    let message = failed.status.and_then(|s| s.message).unwrap_or_default();
    assert!(message.contains("automend-scan.timer"), "{message}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(g.is_enabled("automend-scan.timer"), "disabled");
    assert!(
        etc(&g) == drifted,
        "ReportOnly changed the machine's configuration"
    );

    agent.kill();
    env.finish(ctl).await;
}
