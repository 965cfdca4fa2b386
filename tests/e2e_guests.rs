//! End to end on booted Linux guests: seven Debian machines booted with systemd as PID 1
//! (systemd-nspawn, see `support::booted`), each running `automend agent` as the systemd unit
//! from `dist/` with the kubeconfig from `automend guest-kubeconfig`, a local apt repository served
//! over HTTP, and the controller on the local control plane. Every step is asserted from the API
//! and from inside the guests; the steps' timings are printed (`--nocapture`).

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use automend::api::{OperationStatus, PatchRollout, RolloutPhase, UpdateRing, VmPhase};
use kube::api::{Api, PostParams};
use serde_json::json;
use support::booted::{Fleet, root_image};
use support::env::{Env, LONG};
use support::{cluster, free_port, repo, wait_for};

/// g1, g2: ring canary; g3–g7: ring broad. g4 uses rebootSetting Never, g5's preInstall hook
/// fails, g6 is not started again after its reboot, g7's reboot command only restarts the agent.
const GUESTS: [&str; 7] = ["g1", "g2", "g3", "g4", "g5", "g6", "g7"];
const HOOK_LOG: &str = "/var/log/automend-hooks.log";
const MINUTES: Duration = Duration::from_secs(240);

fn put(root: &Path, path: &str, text: &str) {
    let p = root.join(path.trim_start_matches('/'));
    std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    std::fs::write(&p, text).expect("write");
}

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A local apt repository: suites `stable` and `stable-security`, served over HTTP.
struct Repo {
    dir: tempfile::TempDir,
    server: Child,
    port: u16,
}

impl Repo {
    fn new() -> Repo {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let server = Command::new("python3")
            .args([
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--directory",
            ])
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("serving the repository");
        Repo { dir, server, port }
    }

    /// Build a package; `postinst` is its maintainer script, if any.
    fn build(&self, name: &str, version: &str, suite: &str, postinst: Option<&str>) {
        let src = self.dir.path().join(format!("build/{name}_{version}"));
        put(
            &src,
            "DEBIAN/control",
            &format!(
                "Package: {name}\nVersion: {version}\nArchitecture: all\nMaintainer: Automend tests <tests@automend.invalid>\nDescription: test package {name}\n"
            ),
        );
        put(
            &src,
            &format!("usr/share/doc/{name}/VERSION"),
            &format!("{version}\n"),
        );
        if let Some(script) = postinst {
            put(
                &src,
                "DEBIAN/postinst",
                &format!("#!/bin/sh\nset -e\n{script}\n"),
            );
            run(
                Command::new("chmod")
                    .arg("0755")
                    .arg(src.join("DEBIAN/postinst")),
                "chmod",
            );
        }
        let pool = self.dir.path().join(format!("pool/{suite}"));
        std::fs::create_dir_all(&pool).expect("pool");
        run(
            Command::new("dpkg-deb")
                .args(["--build", "-Zgzip", "--root-owner-group"])
                .arg(&src)
                .arg(pool.join(format!("{name}_{version}_all.deb"))),
            "dpkg-deb",
        );
    }

    fn index(&self) {
        for suite in ["stable", "stable-security"] {
            let packages = run(
                Command::new("dpkg-scanpackages")
                    .args(["--multiversion", &format!("pool/{suite}"), "/dev/null"])
                    .current_dir(self.dir.path())
                    .stderr(Stdio::null()),
                "dpkg-scanpackages",
            );
            let dist = self.dir.path().join(format!("dists/{suite}"));
            put(&dist, "main/binary-amd64/Packages", &packages);
            put(
                &dist,
                "Release",
                &format!(
                    "Origin: Automend-Tests\nLabel: Automend-Tests\nSuite: {suite}\nCodename: {suite}\nArchitectures: amd64 all\nComponents: main\n"
                ),
            );
        }
    }

    fn deb(&self, name: &str, version: &str, suite: &str) -> std::path::PathBuf {
        self.dir
            .path()
            .join(format!("pool/{suite}/{name}_{version}_all.deb"))
    }
}

impl Drop for Repo {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// The image's setup for one guest: the agent unit from `dist/`, its kubeconfig and env file,
/// stand-in units for the services' daemons, apt pointed at the local repository only, and the
/// old packages installed with dpkg.
fn prepare(root: &Path, vm: &str, ns: &str, kubeconfig: &[u8], repo: &Repo) {
    // g7: a wrong reboot command, which restarts the agent instead of the machine.
    let reboot = if vm == "g7" {
        "AUTOMEND_REBOOT_COMMAND=systemctl --no-block restart automend-agent.service\n"
    } else {
        ""
    };
    prepare_machine(root, repo);
    let wants = root.join("etc/systemd/system/multi-user.target.wants");
    std::fs::create_dir_all(&wants).expect("wants");
    let _ = std::os::unix::fs::symlink(
        "/etc/systemd/system/automend-agent.service",
        wants.join("automend-agent.service"),
    );
    std::fs::create_dir_all(root.join("etc/automend")).expect("etc/automend");
    std::fs::write(root.join("etc/automend/kubeconfig"), kubeconfig).expect("kubeconfig");
    put(
        root,
        "/etc/automend/agent.env",
        &format!(
            "AUTOMEND_VM={vm}\nAUTOMEND_NAMESPACE={ns}\nAUTOMEND_HEARTBEAT_INTERVAL=2s\nAUTOMEND_OBSERVE_INTERVAL=2s\nRUST_LOG=info,kube=warn\n{reboot}"
        ),
    );
}

/// The machine without an identity: the agent's unit (not enabled) and binary path as a package
/// would install them, stand-ins for the managed daemons, apt pointed at the local repository,
/// the old packages.
fn prepare_machine(root: &Path, repo: &Repo) {
    let unit = std::fs::read_to_string(repo_file("dist/automend-agent.service")).expect("unit");
    put(root, "/etc/systemd/system/automend-agent.service", &unit);
    // Stand-ins for the daemons the services manage (the real ones need the network or more
    // than a test image carries): long-running units systemd really starts and stops.
    for unit in [
        "prometheus-node-exporter.service",
        "clamav-freshclam.service",
        "systemd-timesyncd.service",
    ] {
        put(
            root,
            &format!("/etc/systemd/system/{unit}"),
            &format!(
                "[Unit]\nDescription=stand-in for {unit}\n\n[Service]\nExecStart=/bin/sleep infinity\n\n[Install]\nWantedBy=multi-user.target\n"
            ),
        );
    }
    put(
        root,
        "/etc/ssh/sshd_config",
        "Include /etc/ssh/sshd_config.d/*.conf\nUsePAM yes\nX11Forwarding yes\n",
    );
    put(
        root,
        "/etc/apt/sources.list",
        &format!(
            "deb [trusted=yes] http://127.0.0.1:{p} stable main\ndeb [trusted=yes] http://127.0.0.1:{p} stable-security main\n",
            p = repo.port
        ),
    );
    for (name, version) in [("kernel-sim", "1.0"), ("libfoo", "1.0")] {
        run(
            Command::new("dpkg")
                .arg(format!("--root={}", root.display()))
                .arg("--force-script-chrootless")
                .arg("-i")
                .arg(repo.deb(name, version, "stable")),
            "installing the old packages",
        );
    }
}

fn repo_file(path: &str) -> std::path::PathBuf {
    repo().join(path)
}

/// `name version` of a package inside a guest.
fn version(fleet: &Fleet, vm: &str, pkg: &str) -> String {
    fleet
        .guest(vm)
        .run(&format!("dpkg-query -W -f '${{Version}}' {pkg}"))
}

struct Steps {
    started: Instant,
    last: Instant,
    lines: Vec<String>,
}

impl Steps {
    fn new() -> Steps {
        let now = Instant::now();
        Steps {
            started: now,
            last: now,
            lines: Vec::new(),
        }
    }
    fn done(&mut self, what: &str) {
        let line = format!(
            "{:>6.1}s  (+{:>5.1}s)  {what}",
            self.started.elapsed().as_secs_f64(),
            self.last.elapsed().as_secs_f64()
        );
        eprintln!("[booted guests] {line}");
        self.lines.push(line);
        self.last = Instant::now();
    }
}

/// The repository: kernel-sim 1.1 in the security pocket writes /run/reboot-required (as a kernel
/// does); libfoo 1.1 needs no reboot. Guests start with both at 1.0.
fn release_repo() -> Repo {
    let repo = Repo::new();
    repo.build("kernel-sim", "1.0", "stable", None);
    repo.build("libfoo", "1.0", "stable", None);
    repo.build(
        "kernel-sim",
        "1.1",
        "stable-security",
        Some("mkdir -p /run && touch /run/reboot-required"),
    );
    repo.build("libfoo", "1.1", "stable-security", None);
    repo.index();
    repo
}

/// A Production profile (antimalware off: its daemon would need the network) with hooks that
/// append to `HOOK_LOG`; the preInstall hook fails where /etc/automend/fail-preinstall exists.
fn profile_spec(reboot: &str) -> serde_json::Value {
    let hooks = json!({
        "preInstall": { "command": format!("if [ -e /etc/automend/fail-preinstall ]; then echo 'drain refused by the load balancer' >&2; exit 3; fi; echo \"preInstall $AUTOMEND_ROLLOUT wave=$AUTOMEND_WAVE $AUTOMEND_PACKAGES\" >> {HOOK_LOG}"), "timeout": "1m" },
        "preReboot": { "command": format!("echo \"preReboot reboot=$AUTOMEND_REBOOT\" >> {HOOK_LOG}") },
        "postInstall": { "command": format!("echo \"postInstall reboot=$AUTOMEND_REBOOT\" >> {HOOK_LOG}") },
    });
    json!({ "environment": "Production",
            "preferences": {
                "antimalware": { "enabled": false },
                "updateManagement": { "rebootSetting": reboot, "hooks": hooks } } })
}

async fn create_vm(env: &Env, vm: &str, ring: &str, profile: &str) {
    env.vms
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "automend.io/v1alpha1", "kind": "VirtualMachine",
                "metadata": { "name": vm, "labels": { "automend.io/ring": ring } },
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
}

async fn create_ring(
    env: &Env,
    name: &str,
    order: i32,
    max_failed: i32,
    max_unavailable: serde_json::Value,
) {
    let rings: Api<UpdateRing> = Api::namespaced(env.client.clone(), &env.ns.name);
    rings
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "automend.io/v1alpha1", "kind": "UpdateRing",
                "metadata": { "name": name },
                "spec": { "order": order, "selector": { "matchLabels": { "automend.io/ring": name } },
                          "deferral": "0s", "maxUnavailable": max_unavailable, "maxAttempts": 1,
                          "healthGate": { "maxFailedPercent": max_failed, "bakeTime": "0s",
                                          "healthyFor": "15s", "rebootTimeout": "1m" } },
            }))
            .expect("ring"),
        )
        .await
        .expect("creating the ring");
}

async fn create_rollout(env: &Env, name: &str) -> Api<PatchRollout> {
    let rollouts: Api<PatchRollout> = Api::namespaced(env.client.clone(), &env.ns.name);
    rollouts
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "automend.io/v1alpha1", "kind": "PatchRollout",
                "metadata": { "name": name },
                "spec": { "releaseTime": jiff::Timestamp::now().to_string() },
            }))
            .expect("rollout"),
        )
        .await
        .expect("creating the rollout");
    rollouts
}

/// One guest per VM (whose identity the controller creates), prepared and booted; `extra` adds
/// to a guest's root before it boots.
async fn boot_fleet(
    env: &Env,
    names: &[String],
    image: &Path,
    repo: &Repo,
    extra: impl Fn(&str, &Path),
) -> Fleet {
    let c = cluster();
    let api_port: u16 = std::fs::read_to_string(&c.kubeconfig)
        .expect("kubeconfig")
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: https://127.0.0.1:"))
        .and_then(|p| p.trim().parse().ok())
        .expect("the API server's port");
    let mut fleet = Fleet::new(&env.ns.name);
    fleet.forward(api_port);
    fleet.forward(repo.port);
    let agent = std::path::PathBuf::from(env!("CARGO_BIN_EXE_automend"));
    for vm in names {
        let kubeconfig = wait_for("a guest kubeconfig", LONG, || async {
            let out = Command::new(&agent)
                .args([
                    "guest-kubeconfig",
                    vm,
                    "-n",
                    &env.ns.name,
                    "--duration",
                    "2h",
                ])
                .env("KUBECONFIG", &c.kubeconfig)
                .output()
                .ok()?;
            out.status.success().then_some(out.stdout)
        })
        .await;
        fleet.add(image, vm, |root| {
            prepare(root, vm, &env.ns.name, &kubeconfig, repo);
            extra(vm, root);
        });
    }
    for vm in names {
        fleet.boot(vm, &[(agent.clone(), "/usr/local/bin/automend")]);
    }
    wait_for("every guest booted (systemd running)", LONG, || async {
        names.iter().all(|g| fleet.guest(g).booted()).then_some(())
    })
    .await;
    fleet
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn booted_guests_onboard_drift_and_patch_with_hooks_and_real_reboots() {
    let mut steps = Steps::new();
    let (image, took) = root_image();
    steps.done(&format!(
        "guest root image ready (built or cached in {:.1}s)",
        took.as_secs_f64()
    ));
    let env = Env::new("booted").await;
    let ns = env.ns.name.clone();
    let c = cluster();
    let repo = release_repo();
    let profile = env.profile("booted", profile_spec("IfRequired")).await;
    let never = env.profile("never", profile_spec("Never")).await;
    let ctl = env.controller(&["--leader-elect=false", "--release-cadence", "off"]);
    for (i, vm) in GUESTS.iter().enumerate() {
        let ring = if i < 2 { "canary" } else { "broad" };
        let p = if *vm == "g4" { &never } else { &profile };
        create_vm(&env, vm, ring, p).await;
    }

    // The guests: one copy of the image each, the agent installed as a user would, booted.
    let names: Vec<String> = GUESTS.iter().map(|g| g.to_string()).collect();
    let fleet = boot_fleet(&env, &names, &image, &repo, |vm, root| {
        if vm == "g5" {
            std::fs::write(root.join("etc/automend/fail-preinstall"), "")
                .expect("g5's failing preInstall");
        }
    })
    .await;
    steps.done("seven guests booted with systemd as PID 1");

    // Onboarding: Configured, with the services really applied under a live systemd.
    for vm in GUESTS {
        let got = wait_for_phase(&env, vm, VmPhase::Configured).await;
        let guest = got.status.and_then(|s| s.guest).expect("guest");
        assert!(
            guest.services.iter().all(|s| s.compliant),
            "{vm}: {:?}",
            guest.services
        );
        // Reported by the agent inside the booted Debian guest.
        assert_eq!(
            guest.os.as_ref().map(|o| o.id.as_str()),
            Some("debian"),
            "{vm}"
        );
        assert!(guest.agent_version.is_some(), "{vm}");
    }
    for vm in GUESTS {
        let g = fleet.guest(vm);
        assert_eq!(
            g.run("systemctl is-active automend-agent.service"),
            "active",
            "{vm}"
        );
        assert_eq!(
            g.run("systemctl is-active automend-backup.timer"),
            "active",
            "{vm}"
        );
        assert_eq!(
            g.run("systemctl is-active prometheus-node-exporter.service"),
            "active",
            "{vm}"
        );
        assert_eq!(
            g.run("cat /proc/sys/net/ipv4/conf/all/accept_redirects"),
            "0",
            "{vm}: the baseline's sysctl in the guest's /proc/sys"
        );
    }
    steps.done("all seven Configured: units active, sysctls applied in the guests' /proc/sys");

    // Drift by hand inside g1: the monitoring daemon stopped; remediated by the agent.
    let g1 = fleet.guest("g1");
    let count = |notes: &[(String, String)], reason: &str| {
        notes.iter().filter(|(r, _)| r == reason).count()
    };
    let before = env.event_notes("g1").await;
    assert!(
        g1.exec("systemctl stop prometheus-node-exporter.service")
            .is_some_and(|o| o.status.success())
    );
    wait_for("g1's drift to be detected and remediated", LONG, || async {
        let notes = env.event_notes("g1").await;
        (notes
            .iter()
            .any(|(r, n)| r == "DriftDetected" && n.contains("monitoring"))
            && count(&notes, "Remediated") > count(&before, "Remediated"))
        .then_some(())
    })
    .await;
    wait_for("the daemon active again in g1", LONG, || async {
        (g1.run("systemctl is-active prometheus-node-exporter.service") == "active").then_some(())
    })
    .await;
    steps.done("drift made by hand in g1 (a unit stopped) detected and remediated");

    // The rollout: two rings; g6 will not come back from its reboot.
    fleet.guests[5]
        .restart
        .store(false, std::sync::atomic::Ordering::SeqCst);
    create_ring(&env, "canary", 0, 0, json!(4)).await;
    create_ring(&env, "broad", 1, 10, json!(5)).await;
    let rollouts = create_rollout(&env, "release-booted").await;

    // Canary: installed, hooks in order, rebooted for real, Succeeded only after it came back
    // and stayed healthy.
    let ring_phase = |r: &PatchRollout, i: usize| {
        r.status
            .as_ref()
            .and_then(|s| s.rings.get(i))
            .and_then(|p| p.phase)
            .map(|p| format!("{p:?}"))
    };
    wait_for("the canary ring to succeed", MINUTES, || async {
        let r = rollouts.get("release-booted").await.ok()?;
        (ring_phase(&r, 0).as_deref() == Some("Succeeded")).then_some(())
    })
    .await;
    for vm in ["g1", "g2"] {
        let g = fleet.guest(vm);
        assert_eq!(version(&fleet, vm, "kernel-sim"), "1.1", "{vm}");
        assert_eq!(version(&fleet, vm, "libfoo"), "1.1", "{vm}");
        assert_eq!(
            g.boots.load(std::sync::atomic::Ordering::SeqCst),
            2,
            "{vm} rebooted once"
        );
        let log: Vec<String> = g
            .read(HOOK_LOG)
            .lines()
            .map(|l| l.split(' ').next().unwrap_or_default().to_string())
            .collect();
        assert_eq!(
            log,
            ["preInstall", "preReboot", "postInstall"],
            "{vm}: {}",
            g.read(HOOK_LOG)
        );
        assert!(g.read(HOOK_LOG).contains("postInstall reboot=true"));
        let i = env
            .get(vm)
            .await
            .status
            .and_then(|s| s.guest)
            .and_then(|g| g.installation)
            .expect("installation");
        assert_eq!(i.status, OperationStatus::Succeeded, "{vm}");
        assert!(i.rebooted_at.is_some() && !i.reboot_pending, "{vm}: {i:?}");
        // The reboot was real: the guest's /run (a tmpfs) no longer holds the flag the kernel
        // package's postinst left there.
        assert_eq!(
            g.run("test -e /run/reboot-required && echo pending || echo clear"),
            "clear",
            "{vm}"
        );
    }
    steps.done("ring canary: g1, g2 patched, hooks preInstall → preReboot → postInstall, rebooted, healthy");

    // Broad: g3 like the canaries; g4 (rebootSetting Never) keeps its reboot pending; g5's
    // preInstall fails (nothing installed); g6 does not come back: RebootTimeout, and the ring,
    // over its failure budget, halts.
    let halted = wait_for("the rollout to halt on the broad ring", MINUTES, || async {
        let r = rollouts.get("release-booted").await.ok()?;
        let failed = r
            .status
            .as_ref()?
            .rings
            .get(1)?
            .waves
            .iter()
            .flat_map(|w| w.failed_members.clone())
            .collect::<Vec<_>>();
        (r.status.as_ref()?.phase == Some(RolloutPhase::Halted)
            && ["g5", "g6", "g7"]
                .iter()
                .all(|g| failed.contains(&g.to_string())))
        .then_some(r)
    })
    .await;
    assert_eq!(ring_phase(&halted, 1).as_deref(), Some("Halted"));
    steps.done("ring broad: g5 preInstall failed, g6 never came back, g7 did not reboot; halted");
    let g3 = fleet.guest("g3");
    assert_eq!(version(&fleet, "g3", "kernel-sim"), "1.1");
    assert_eq!(g3.boots.load(std::sync::atomic::Ordering::SeqCst), 2);
    let g4 = env
        .get("g4")
        .await
        .status
        .and_then(|s| s.guest)
        .and_then(|g| g.installation)
        .expect("g4");
    assert_eq!(g4.status, OperationStatus::Succeeded);
    assert!(g4.reboot_pending && g4.rebooted_at.is_none(), "{g4:?}");
    assert_eq!(
        fleet
            .guest("g4")
            .boots
            .load(std::sync::atomic::Ordering::SeqCst),
        1,
        "never rebooted"
    );
    assert_eq!(version(&fleet, "g4", "kernel-sim"), "1.1");
    let g5 = env
        .get("g5")
        .await
        .status
        .and_then(|s| s.guest)
        .and_then(|g| g.installation)
        .expect("g5");
    assert_eq!(g5.reason.as_deref(), Some("PreInstallHookFailed"), "{g5:?}");
    assert!(
        g5.error
            .as_deref()
            .is_some_and(|e| e.contains("exited 3: drain refused")),
        "{g5:?}"
    );
    assert_eq!(
        version(&fleet, "g5", "kernel-sim"),
        "1.0",
        "nothing installed"
    );
    assert!(!fleet.running("g6"), "g6 stayed down");
    // The plugin says why g6 failed.
    let why = run(
        Command::new(env!("CARGO_BIN_EXE_kubectl-automend"))
            .args(["-n", &ns, "why", "g6", "--rollout", "release-booted"])
            .env("KUBECONFIG", &c.kubeconfig),
        "kubectl automend why g6",
    );
    assert!(
        why.contains("failed: RebootTimeout: the VM did not come back within 1m0s"),
        "{why}"
    );
    let vm6 = env.get("g6").await.status.expect("status");
    let hb = vm6
        .conditions
        .iter()
        .find(|c| c.type_ == "Heartbeat")
        .expect("heartbeat");
    assert_eq!(hb.reason, "Rebooting", "{hb:?}");
    assert!(hb.message.starts_with("rebooting since"), "{}", hb.message);
    // g7: its agent came back in the same boot; the marker told it so.
    let g7 = env
        .get("g7")
        .await
        .status
        .and_then(|s| s.guest)
        .and_then(|g| g.installation)
        .expect("g7");
    assert_eq!(g7.reason.as_deref(), Some("RebootFailed"), "{g7:?}");
    assert!(
        g7.error
            .as_deref()
            .is_some_and(|e| e.contains("boot marker survived")),
        "{g7:?}"
    );
    assert!(g7.reboot_pending, "{g7:?}");
    assert_eq!(
        fleet
            .guest("g7")
            .boots
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    steps.done("g3 rebooted, g4 reboot pending (Never), g5 untouched, g6 down, g7 RebootFailed");

    drop(fleet);
    steps.done("guests stopped and removed");
    eprintln!("[booted guests] steps:\n{}", steps.lines.join("\n"));
    env.finish(ctl).await;
}

async fn wait_for_phase(env: &Env, vm: &str, phase: VmPhase) -> automend::api::VirtualMachine {
    wait_for(&format!("{vm} to be {phase:?}"), MINUTES, || async {
        let v = env.vms.get(vm).await.ok()?;
        (v.status.as_ref().and_then(|s| s.phase) == Some(phase)).then_some(v)
    })
    .await
}

/// The demo's real-guest act (`hack/demo.sh --real-guests N`): N booted guests (default 3,
/// `AUTOMEND_REAL_GUESTS`) onboard and are patched in one ring with real reboots, printed as it
/// goes. Ignored by `cargo test`; the suite above asserts the same path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the demo's act; run by hack/demo.sh --real-guests N"]
async fn demo_real_guests() {
    let n: usize = std::env::var("AUTOMEND_REAL_GUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| (1..=20).contains(n))
        .unwrap_or(3);
    let mut steps = Steps::new();
    let (image, took) = root_image();
    steps.done(&format!(
        "a Debian 12 root from Debian's packages (mmdebstrap; built or cached in {:.1}s)",
        took.as_secs_f64()
    ));
    let env = Env::new("real").await;
    let repo = release_repo();
    let profile = env.profile("real", profile_spec("IfRequired")).await;
    let ctl = env.controller(&["--leader-elect=false", "--release-cadence", "off"]);
    let names: Vec<String> = (1..=n).map(|i| format!("vm-{i}")).collect();
    for vm in &names {
        create_vm(&env, vm, "real", &profile).await;
    }
    let fleet = boot_fleet(&env, &names, &image, &repo, |_, _| {}).await;
    steps.done(&format!(
        "{n} guests booted with systemd as PID 1 (systemd-nspawn), automend-agent.service enabled"
    ));
    for vm in &names {
        wait_for_phase(&env, vm, VmPhase::Configured).await;
    }
    steps.done("every guest onboarded: Configured, its services applied by the agent");
    create_ring(&env, "real", 0, 0, json!("50%")).await;
    let rollouts = create_rollout(&env, "release-real").await;
    steps.done("ring `real` and PatchRollout release-real created (kernel-sim 1.1 needs a reboot)");
    let seen: std::sync::Mutex<BTreeMap<String, String>> = Default::default();
    let done = wait_for("the rollout to finish", MINUTES, || async {
        for vm in &names {
            let g = fleet.guest(vm);
            let i = env
                .get(vm)
                .await
                .status
                .and_then(|s| s.guest)
                .and_then(|g| g.installation);
            let now = match i {
                None => "waiting".to_string(),
                Some(i) if i.status == OperationStatus::InProgress => "rebooting".to_string(),
                Some(i) => format!(
                    "{:?}{} (boots: {})",
                    i.status,
                    if i.rebooted_at.is_some() {
                        ", back from its reboot"
                    } else {
                        ""
                    },
                    g.boots.load(std::sync::atomic::Ordering::SeqCst)
                ),
            };
            let mut seen = seen.lock().expect("lock");
            if seen.get(vm) != Some(&now) {
                eprintln!("[real guests]   {vm}: {now}");
                seen.insert(vm.clone(), now);
            }
        }
        let r = rollouts.get("release-real").await.ok()?;
        matches!(
            r.status.as_ref().and_then(|s| s.phase),
            Some(RolloutPhase::Succeeded | RolloutPhase::Halted)
        )
        .then_some(r)
    })
    .await;
    steps.done(&format!(
        "rollout release-real {:?}",
        done.status.and_then(|s| s.phase)
    ));
    for vm in &names {
        let g = fleet.guest(vm);
        eprintln!(
            "[real guests]   {vm}: kernel-sim {}, libfoo {}, booted {} times; hooks: {}",
            version(&fleet, vm, "kernel-sim"),
            version(&fleet, vm, "libfoo"),
            g.boots.load(std::sync::atomic::Ordering::SeqCst),
            g.read(HOOK_LOG)
                .lines()
                .filter_map(|l| l.split(' ').next())
                .collect::<Vec<_>>()
                .join(" → ")
        );
    }
    drop(fleet);
    steps.done("guests stopped and removed");
    env.finish(ctl).await;
}

/// Two booted guests enroll as a user would: each runs the shell snippet `automend enroll create`
/// printed (token, CA, env file, `systemctl enable --now`), with one Enrollment limited to 50
/// machines; then 50 simulated machines enroll with the same token: exactly 50 succeed, the rest
/// are refused with the reason, and the Enrollment's label puts every VM in the ring.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn booted_guests_enroll_with_the_snippet_and_the_limit_holds() {
    let (image, _) = root_image();
    let mut env = Env::new("enrollboot").await;
    let ns = env.ns.name.clone();
    let c = cluster();
    let repo = release_repo();
    let profile = env.profile("booted", profile_spec("IfRequired")).await;
    let ctl = env.controller(&["--leader-elect=false", "--release-cadence", "off"]);
    let rings = env.ring_selecting("pilot", "ring", "pilot").await;
    let snippet = env.enroll(&[
        "create",
        "fleet",
        "--profile",
        &profile,
        "--label",
        "ring=pilot",
        "--max-machines",
        "50",
        "--region",
        "westeurope",
        "--format",
        "shell",
    ]);

    let api_port: u16 = std::fs::read_to_string(&c.kubeconfig)
        .expect("kubeconfig")
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: https://127.0.0.1:"))
        .and_then(|p| p.trim().parse().ok())
        .expect("the API server's port");
    let mut fleet = Fleet::new(&ns);
    fleet.forward(api_port);
    fleet.forward(repo.port);
    let agent = std::path::PathBuf::from(env!("CARGO_BIN_EXE_automend"));
    let names = ["e1", "e2"];
    for name in names {
        fleet.add(&image, name, |root| {
            prepare_machine(root, &repo);
            put(root, "/root/enroll.sh", &snippet);
            put(
                root,
                "/etc/systemd/system/automend-agent.service.d/e2e.conf",
                "[Service]\nEnvironment=AUTOMEND_HEARTBEAT_INTERVAL=2s AUTOMEND_OBSERVE_INTERVAL=2s RUST_LOG=info,kube=warn\n",
            );
        });
        fleet.boot(name, &[(agent.clone(), "/usr/local/bin/automend")]);
    }
    wait_for("both guests booted", LONG, || async {
        names.iter().all(|g| fleet.guest(g).booted()).then_some(())
    })
    .await;
    for name in names {
        let out = fleet
            .guest(name)
            .exec("sh /root/enroll.sh")
            .expect("running the snippet");
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Each becomes a VM named after its hostname, onboarded by the agent inside.
    for name in names {
        let vm = wait_for_phase(&env, name, VmPhase::Configured).await;
        assert_eq!(
            vm.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("ring"))
                .map(String::as_str),
            Some("pilot")
        );
        let g = fleet.guest(name);
        assert_eq!(
            g.run("systemctl is-active automend-agent.service"),
            "active",
            "{name}"
        );
        assert_eq!(
            g.run("test -e /etc/automend/enroll-token && echo kept || echo dropped"),
            "dropped",
            "{name}"
        );
        assert!(
            g.read("/var/lib/automend/identity.json").contains(name),
            "{name}"
        );
    }

    // Fifty simulated machines with the same token: 48 fit, 2 are refused.
    let token = env.enroll(&["token", "fleet", "--format", "token"]);
    let dir = tempfile::tempdir().expect("dir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, token.trim()).expect("token");
    env.sim_enrolled(&token_file, 50, "sim").await;
    let enrollments: Api<automend::api::Enrollment> = Api::namespaced(env.client.clone(), &ns);
    wait_for("50 enrolled, 2 refused", MINUTES, || async {
        let s = enrollments.get("fleet").await.ok()?.status?;
        (s.machines_enrolled == 50 && s.machines_refused == 2).then_some(())
    })
    .await;
    let refused = env.notes_with("fleet", "EnrollmentRefused", 2).await;
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert!(
        refused
            .iter()
            .all(|n| n.contains("has reached its limit of 50 machines")),
        "{refused:?}"
    );
    wait_for("the ring holds all 50 enrolled VMs", MINUTES, || async {
        (rings.get("pilot").await.ok()?.status?.total == 50).then_some(())
    })
    .await;
    let vms = env.vms.list(&Default::default()).await.expect("vms").items;
    assert_eq!(vms.len(), 50);
    env.sim_stop.take().map(|tx| tx.send(()));
    drop(fleet);
    env.finish(ctl).await;
}
