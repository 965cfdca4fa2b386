//! End to end: rollouts through UpdateRings on the real API server, with the controller as a child
//! process and simulated guests in process, both on an accelerated clock (one real second is one
//! virtual hour). Every install the guests report is recorded by a watch and checked afterwards
//! against the invariants of DESIGN.md §5.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use automend::api::{
    GuestInstallation, PatchRollout, RingPhase, RolloutPhase, UpdateRing, VirtualMachine, VmPhase,
};
use automend::clock::{Clock, ClockArgs};
use automend::logic::window::{self, Window};
use futures::StreamExt;
use jiff::Timestamp;
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use support::env::Env;
use support::{ControllerProcess, cluster, wait_for};

const SPEED: f64 = 3600.0;
const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(300);
const PATCHES: &str = "libssl=2.0.0:Security,kernel=5.2.0:Critical,tool=2.0.0:Other";

/// One recorded install: what a guest reported for (vm, rollout, wave).
#[derive(Clone, Debug)]
struct Install {
    vm: String,
    record: GuestInstallation,
}

/// Installs by (VM, rollout, wave, rollback).
type Installs = Arc<Mutex<BTreeMap<(String, String, i32, bool), Install>>>;

struct Rollouts {
    env: Env,
    clock: Clock,
    args: ClockArgs,
    rings: Api<UpdateRing>,
    rollouts: Api<PatchRollout>,
    installs: Installs,
    recorder: Option<tokio::task::JoinHandle<()>>,
}

impl Rollouts {
    async fn new(prefix: &str) -> Rollouts {
        Rollouts::new_at(prefix, Timestamp::now()).await
    }

    /// The patching clock reads `at` now (and runs SPEED times faster). The clock equals real time
    /// at its start S, so virtual(now) = S + (now − S) × SPEED = `at` gives S.
    async fn new_at(prefix: &str, at: Timestamp) -> Rollouts {
        let env = Env::new(prefix).await;
        let now = Timestamp::now();
        let ahead = at.duration_since(now).as_secs_f64();
        let start = now
            .checked_sub(jiff::SignedDuration::from_secs_f64(ahead / (SPEED - 1.0)))
            .expect("clock start");
        let args = ClockArgs {
            clock_speed: SPEED,
            clock_start: Some(start),
        };
        let clock = Clock::from_args(&args).expect("clock");
        Rollouts {
            rings: Api::namespaced(env.client.clone(), &env.ns.name),
            rollouts: Api::namespaced(env.client.clone(), &env.ns.name),
            env,
            clock,
            args,
            installs: Arc::default(),
            recorder: None,
        }
    }

    fn controller(&self, extra: &[&str]) -> ControllerProcess {
        let start = self
            .args
            .clock_start
            .map(|s| s.to_string())
            .unwrap_or_default();
        let speed = SPEED.to_string();
        let mut args = vec![
            "--leader-elect=false",
            "--clock-start",
            &start,
            "--clock-speed",
            &speed,
            "--region-pairs",
            "eastus=westus",
            "--release-cadence",
            "off",
            "--install-duration",
            "30m",
        ];
        args.extend_from_slice(extra);
        self.env.controller(&args)
    }

    async fn sim(&mut self) {
        let config = cluster().config().await;
        self.env.start_sim_with_clock(config, self.args.clone());
    }

    /// Record every installation result any guest reports.
    fn record(&mut self) {
        let api: Api<VirtualMachine> = Api::namespaced(self.env.client.clone(), &self.env.ns.name);
        let installs = self.installs.clone();
        self.recorder = Some(tokio::spawn(async move {
            let mut s = std::pin::pin!(
                watcher(api, Default::default())
                    .default_backoff()
                    .applied_objects()
            );
            while let Some(item) = s.next().await {
                let Ok(vm) = item else { continue };
                let Some(i) = vm
                    .status
                    .as_ref()
                    .and_then(|s| s.guest.as_ref())
                    .and_then(|g| g.installation.clone())
                else {
                    continue;
                };
                let name = vm.metadata.name.clone().unwrap_or_default();
                // The newest record of each installation (one that reboots is InProgress first).
                if let Ok(mut m) = installs.lock() {
                    m.insert(
                        (name.clone(), i.rollout.clone(), i.wave, i.rollback),
                        Install {
                            vm: name,
                            record: i,
                        },
                    );
                }
            }
        }));
    }

    fn installs(&self) -> Vec<Install> {
        self.installs
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    async fn ring(&self, name: &str, spec: serde_json::Value) {
        let obj: UpdateRing = serde_json::from_value(json!({
            "apiVersion": "automend.io/v1alpha1", "kind": "UpdateRing",
            "metadata": { "name": name }, "spec": spec,
        }))
        .expect("ring");
        self.rings
            .create(&PostParams::default(), &obj)
            .await
            .expect("creating the ring");
    }

    async fn vm(
        &self,
        name: &str,
        ring: &str,
        placement: serde_json::Value,
        tz: &str,
        profile: &str,
    ) {
        let ubuntu =
            json!({ "publisher": "Canonical", "offer": "ubuntu-24_04-lts", "sku": "server" });
        self.vm_of(name, ring, placement, tz, profile, (ubuntu, PATCHES))
            .await;
    }

    /// A VM of this test with an image and a simulated repository (`sim.automend.io/patches`).
    async fn vm_of(
        &self,
        name: &str,
        ring: &str,
        placement: serde_json::Value,
        tz: &str,
        profile: &str,
        (image, patches): (serde_json::Value, &str),
    ) {
        let obj: VirtualMachine = serde_json::from_value(json!({
            "apiVersion": "automend.io/v1alpha1", "kind": "VirtualMachine",
            "metadata": { "name": name, "labels": { "automend.io/ring": ring },
                          "annotations": { "sim.automend.io/patches": patches } },
            "spec": {
                "management": { "enabled": true, "profile": profile },
                "os": { "type": "Linux", "image": image },
                "placement": placement,
                "timeZone": tz,
                "patchSettings": { "patchMode": "AutomaticByPlatform" },
            },
        }))
        .expect("vm");
        self.env
            .vms
            .create(&PostParams::default(), &obj)
            .await
            .expect("creating the VM");
    }

    /// Wait until every VM is Configured and has a successful assessment.
    async fn wait_assessed(&self, count: usize) {
        self.wait_vms(
            &format!("{count} VMs configured and assessed"),
            count,
            |v| {
                v.status.as_ref().is_some_and(|s| {
                    s.phase == Some(VmPhase::Configured)
                        && s.patch_status
                            .as_ref()
                            .and_then(|p| p.available_patch_summary.as_ref())
                            .is_some_and(|a| a.critical_and_security_patch_count >= 2)
                })
            },
        )
        .await;
    }

    /// Wait until exactly `count` VMs of the namespace satisfy `ok`.
    async fn wait_vms(
        &self,
        what: &str,
        count: usize,
        ok: impl Fn(&VirtualMachine) -> bool + Copy,
    ) {
        let vms = self.env.vms.clone();
        wait_for(what, ROLLOUT_TIMEOUT, || {
            let vms = vms.clone();
            async move {
                let list = vms.list(&ListParams::default()).await.ok()?;
                (list.items.iter().filter(|v| ok(v)).count() == count).then_some(())
            }
        })
        .await;
    }

    async fn rollout(&self, name: &str, release: Timestamp, extra: serde_json::Value) {
        let mut spec = json!({ "releaseTime": release.to_string() });
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            s.extend(e.clone());
        }
        let obj: PatchRollout = serde_json::from_value(json!({
            "apiVersion": "automend.io/v1alpha1", "kind": "PatchRollout",
            "metadata": { "name": name }, "spec": spec,
        }))
        .expect("rollout");
        self.rollouts
            .create(&PostParams::default(), &obj)
            .await
            .expect("creating the rollout");
    }

    async fn wait_rollout(
        &self,
        name: &str,
        what: &str,
        f: impl Fn(&PatchRollout) -> bool,
    ) -> PatchRollout {
        let api = self.rollouts.clone();
        let f = &f;
        wait_for(&format!("rollout {name}: {what}"), ROLLOUT_TIMEOUT, || {
            let api = api.clone();
            async move { api.get(name).await.ok().filter(|r| f(r)) }
        })
        .await
    }

    /// Run the kubectl plugin against this test's namespace; panics with its stderr on failure.
    fn plugin(&self, args: &[&str]) -> String {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kubectl-automend"))
            .args(["-n", &self.env.ns.name])
            .args(args)
            .env("KUBECONFIG", &cluster().kubeconfig)
            .env("AUTOMEND_CLOCK_SPEED", SPEED.to_string())
            .env(
                "AUTOMEND_CLOCK_START",
                self.args
                    .clock_start
                    .map(|s| s.to_string())
                    .unwrap_or_default(),
            )
            .output()
            .expect("running kubectl-automend");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "kubectl-automend {args:?} failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// Run the kubectl plugin expecting a refusal; returns its stderr.
    fn plugin_refused(&self, args: &[&str]) -> String {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kubectl-automend"))
            .args(["-n", &self.env.ns.name])
            .args(args)
            .env("KUBECONFIG", &cluster().kubeconfig)
            .output()
            .expect("running kubectl-automend");
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(
            !out.status.success(),
            "kubectl-automend {args:?} was not refused:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        stderr
    }

    async fn finish(mut self, controller: ControllerProcess) {
        if let Some(r) = self.recorder.take() {
            r.abort();
        }
        let _ = self
            .rollouts
            .delete_collection(&Default::default(), &ListParams::default())
            .await;
        let _ = self
            .rings
            .delete_collection(&Default::default(), &ListParams::default())
            .await;
        self.env.finish(controller).await;
    }
}

fn phase(r: &PatchRollout) -> Option<RolloutPhase> {
    r.status.as_ref().and_then(|s| s.phase)
}

fn ring_spec(order: i32, deferral: &str, max_failed: i32) -> serde_json::Value {
    let label = ["test", "first", "fast", "broad"][order as usize];
    json!({
        "order": order,
        "selector": { "matchLabels": { "automend.io/ring": label } },
        "deferral": deferral, "deadline": "48h", "maxUnavailable": 2,
        "healthGate": { "maxFailedPercent": max_failed, "bakeTime": "1h", "healthyFor": "30m" },
    })
}

/// Where each VM sits: (region, zone, availability set, update domain).
type Where = (String, Option<String>, Option<String>, i32);

/// Rings × 8 VMs: six zonal (both regions, zones 1-3), two in an availability set (update domains
/// 0 and 1), in three time zones.
async fn fleet(
    r: &Rollouts,
    profile: &str,
    rings: &[&str],
) -> HashMap<String, (String, Where, String)> {
    let mut out = HashMap::new();
    for (ri, ring) in rings.iter().enumerate() {
        for j in 0..8 {
            let name = format!("{ring}-{j}");
            let tz = ["UTC", "Asia/Tokyo", "America/New_York"][j % 3];
            let w: Where = if j < 6 {
                let region = ["eastus", "westus"][j % 2];
                (region.into(), Some(format!("{}", j / 2 + 1)), None, 0)
            } else {
                (
                    "eastus".into(),
                    None,
                    Some(format!("set-{ri}")),
                    (j - 6) as i32,
                )
            };
            let mut placement = json!({ "region": w.0 });
            if let Some(z) = &w.1 {
                placement["zone"] = json!(z);
            }
            if let Some(a) = &w.2 {
                placement["availabilitySet"] = json!(a);
                placement["updateDomain"] = json!(w.3);
            }
            r.vm(&name, ring, placement, tz, profile).await;
            out.insert(name, (ring.to_string(), w, tz.to_string()));
        }
    }
    out
}

/// A rollout through four rings over two paired regions × three zones and availability sets, in
/// three time zones: every invariant holds at every install, installs start inside windows, rings
/// keep deferrals and bake times, later rings install exactly the frozen manifest, and a VM that
/// was off during its ring is patched when it returns.
#[tokio::test(flavor = "multi_thread")]
async fn rollout_through_four_rings_keeps_every_invariant() {
    let mut r = Rollouts::new("rollout").await;
    let profile = r
        .env
        .profile(
            "patching",
            json!({ "environment": "DevTest",
                    "preferences": { "updateManagement": { "maintenanceWindow": { "start": "00:00", "duration": "12h" } } } }),
        )
        .await;
    let ctl = r.controller(&[]);
    let deferrals = ["0s", "12h", "24h", "36h"];
    for (i, d) in deferrals.iter().enumerate() {
        r.ring(
            ["test", "first", "fast", "broad"][i],
            ring_spec(i as i32, d, 10),
        )
        .await;
    }
    let rings = ["test", "first", "fast", "broad"];
    let fleet = fleet(&r, &profile, &rings).await;
    r.record();
    r.sim().await;
    r.wait_assessed(32).await;

    let release = r.clock.now() + jiff::SignedDuration::from_hours(1);
    r.rollout("monthly", release, json!({})).await;

    // The manifest freezes when ring test starts; then broad's guests are offered a newer libssl,
    // which this rollout must not install.
    let frozen = r
        .wait_rollout("monthly", "manifest frozen", |x| {
            x.status.as_ref().is_some_and(|s| s.manifest.is_some())
        })
        .await;
    let manifest = frozen.status.and_then(|s| s.manifest).expect("manifest");
    let pinned: BTreeMap<String, String> = manifest
        .families
        .iter()
        .flat_map(|f| {
            f.packages
                .iter()
                .map(|p| (p.name.clone(), p.version.clone()))
        })
        .collect();
    assert_eq!(
        pinned,
        BTreeMap::from([
            ("kernel".into(), "5.2.0".into()),
            ("libssl".into(), "2.0.0".into())
        ]),
        "Critical + Security only"
    );
    for j in 1..8 {
        r.env
            .annotate(
                &format!("broad-{j}"),
                "sim.automend.io/patches",
                "libssl=2.1.0:Security,kernel=5.2.0:Critical,tool=2.0.0:Other",
            )
            .await;
    }

    // A broad VM in westus (the second region phase: eastus holds more of broad) goes off when
    // broad starts, so it cannot have been started yet (not for long: 5 virtual days without a
    // heartbeat, 2 real minutes here, would make it ineligible).
    r.wait_rollout("monthly", "ring broad started", |x| {
        x.status.as_ref().is_some_and(|s| {
            s.rings
                .iter()
                .any(|g| g.name == "broad" && g.started_time.is_some())
        })
    })
    .await;
    r.env
        .annotate("broad-1", "sim.automend.io/power", "off")
        .await;

    // Everything but the VM that is off.
    r.wait_rollout("monthly", "broad waits only for broad-1", |x| {
        x.status.as_ref().is_some_and(|s| {
            s.rings.iter().any(|g| {
                g.name == "broad"
                    && g.succeeded == g.total - 1
                    && g.total == 8
                    && g.in_progress == 0
            })
        })
    })
    .await;
    let st = r.rollouts.get("monthly").await.expect("rollout");
    assert_eq!(phase(&st), Some(RolloutPhase::Progressing));
    let back = r.clock.now();
    r.env
        .annotate("broad-1", "sim.automend.io/power", "on")
        .await;
    let done = r
        .wait_rollout("monthly", "Succeeded", |x| {
            phase(x) == Some(RolloutPhase::Succeeded)
        })
        .await;
    let status = done.status.clone().expect("status");

    // Checks over every recorded install.
    let installs: Vec<Install> = r
        .installs()
        .into_iter()
        .filter(|i| !i.record.rollback)
        .collect();
    let healthy_for = jiff::SignedDuration::from_mins(30);
    let interval = |i: &Install| {
        let s = i.record.start_time.as_ref().expect("start").0;
        let f = i.record.finish_time.as_ref().expect("finish").0;
        (s, f + healthy_for)
    };
    let succeeded: Vec<&Install> = installs
        .iter()
        .filter(|i| !i.record.maintenance_window_exceeded)
        .collect();
    assert_eq!(
        succeeded
            .iter()
            .map(|i| &i.vm)
            .collect::<BTreeSet<_>>()
            .len(),
        32,
        "every VM installed"
    );
    for a in &succeeded {
        let (ring_a, wa, tz) = &fleet[&a.vm];
        // Exactly the pinned manifest.
        let got: BTreeMap<String, String> = a
            .record
            .installed
            .iter()
            .map(|p| (p.name.clone(), p.version.clone()))
            .collect();
        assert_eq!(got, pinned, "{} installed exactly the manifest", a.vm);
        // Inside the window in the VM's own time zone, with 30 minutes left.
        let w = Window::parse(&automend::api::MaintenanceWindow {
            start: "00:00".into(),
            duration: "12h".into(),
            days_of_week: vec![],
        })
        .expect("window");
        let tzz = window::time_zone(tz).expect("tz");
        let start = interval(a).0;
        assert!(
            w.may_start(&tzz, start, Duration::from_secs(1800)),
            "{} started at {start} outside its window in {tz}",
            a.vm
        );
        // Pairwise invariants with everything patching at the same time.
        for b in &succeeded {
            if a.vm == b.vm {
                continue;
            }
            let ((sa, ea), (sb, eb)) = (interval(a), interval(b));
            if !(sa < eb && sb < ea) {
                continue;
            }
            let (ring_b, wb, _) = &fleet[&b.vm];
            assert_eq!(
                ring_a, ring_b,
                "{} and {} of different rings patch together",
                a.vm, b.vm
            );
            assert_eq!(
                wa.0, wb.0,
                "{} ({}) and {} ({}): paired regions patch together",
                a.vm, wa.0, b.vm, wb.0
            );
            if wa.1.is_some() && wb.1.is_some() {
                assert_eq!(
                    wa.1, wb.1,
                    "{} and {}: two zones of {} at once",
                    a.vm, b.vm, wa.0
                );
            }
            if wa.2.is_some() && wa.2 == wb.2 {
                panic!(
                    "{} and {}: both members of {:?} (a whole availability set) at once",
                    a.vm, b.vm, wa.2
                );
            }
        }
    }
    // maxUnavailable 2 of the VMs in no availability set, at every install start.
    for a in &succeeded {
        let t = interval(a).0;
        let loose = succeeded
            .iter()
            .filter(|b| fleet[&b.vm].1.2.is_none() && fleet[&b.vm].0 == fleet[&a.vm].0)
            .filter(|b| {
                let (s, e) = interval(b);
                s <= t && t < e
            })
            .count();
        assert!(
            loose <= 2,
            "{loose} VMs in no availability set patching at {t}"
        );
    }
    // Deferrals and bake times.
    for (i, ring) in rings.iter().enumerate() {
        let first = succeeded
            .iter()
            .filter(|a| fleet[&a.vm].0 == *ring)
            .map(|a| interval(a).0)
            .min()
            .expect("installs");
        let deferral = automend::logic::duration::parse(deferrals[i]).expect("duration");
        assert!(
            first >= release + jiff::SignedDuration::try_from(deferral).expect("d"),
            "ring {ring} started before its deferral"
        );
        if i > 0 {
            let prev_done = succeeded
                .iter()
                .filter(|a| fleet[&a.vm].0 == rings[i - 1])
                .map(|a| interval(a).1)
                .max()
                .expect("installs");
            assert!(
                first >= prev_done + jiff::SignedDuration::from_hours(1),
                "ring {ring} started before {}'s bake time ended",
                rings[i - 1]
            );
        }
    }
    // broad-1 was patched after it returned.
    let b1 = succeeded
        .iter()
        .find(|i| i.vm == "broad-1")
        .expect("broad-1 installed");
    assert!(
        interval(b1).0 >= back,
        "broad-1 installed at {} while off (back at {back})",
        interval(b1).0
    );
    assert!(
        status
            .rings
            .iter()
            .all(|g| g.phase == Some(RingPhase::Succeeded))
    );
    let slo = status.slo.expect("slo");
    assert_eq!(
        (slo.eligible, slo.on_manifest, slo.projected_to_meet),
        (32, 32, Some(true))
    );

    // The seed's installation summary on a VM.
    let vm = r.env.get("fast-3").await;
    let sum = vm
        .status
        .and_then(|s| s.patch_status)
        .and_then(|p| p.last_patch_installation_summary)
        .expect("summary");
    assert_eq!(sum.status, automend::api::OperationStatus::Succeeded);
    assert_eq!(
        (
            sum.installed_patch_count,
            sum.pending_patch_count,
            sum.not_selected_patch_count
        ),
        (2, 0, 1)
    );

    // Events, ring status, metrics.
    let env = &r.env;
    let notes = wait_for(
        "the RolloutSucceeded Event",
        Duration::from_secs(20),
        || async {
            let e = env.event_notes("monthly").await;
            e.iter().any(|e| e.0 == "RolloutSucceeded").then_some(e)
        },
    )
    .await;
    let reasons: Vec<String> = notes.iter().map(|e| e.0.clone()).collect();
    // One Event per ring that started, each with its own note (not the first ring's note
    // repeated as a series).
    for ring in ["test", "first", "fast", "broad"] {
        assert!(
            notes
                .iter()
                .any(|(r, n)| r == "RingStarted" && n.starts_with(&format!("ring {ring} started"))),
            "RingStarted for {ring} in {notes:?}"
        );
    }
    for want in [
        "ManifestFrozen",
        "RingStarted",
        "RingSucceeded",
        "RolloutSucceeded",
    ] {
        assert!(reasons.iter().any(|x| x == want), "{want} in {reasons:?}");
    }
    let ring = r.rings.get("fast").await.expect("ring");
    let rs = ring.status.expect("ring status");
    assert_eq!((rs.total, rs.eligible), (8, 8));
    let ready = rs
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .expect("the ring's Ready condition");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", "Valid")
    );
    let series = format!(
        "automend_rollout_slo_on_manifest_vms{{namespace=\"{}\",rollout=\"monthly\"}}",
        r.env.ns.name
    );
    assert_eq!(ctl.metric(&series).await, 32.0, "{series}");
    r.finish(ctl).await;
}

/// A bad patch: failures in ring first exceed its budget → Halted (Event, condition), the failed
/// wave rolls back, later rings get nothing; pause / resume; expedite; a manual rollback.
#[tokio::test(flavor = "multi_thread")]
async fn halt_rollback_pause_resume_and_expedite() {
    let mut r = Rollouts::new("halt").await;
    let profile = r
        .env
        .profile("patching", json!({ "environment": "DevTest" }))
        .await;
    let ctl = r.controller(&[]);
    let rings = ["test", "first", "fast", "broad"];
    for (i, d) in ["0s", "12h", "24h", "36h"].iter().enumerate() {
        r.ring(rings[i], ring_spec(i as i32, d, 0)).await;
    }
    fleet(&r, &profile, &rings[..3]).await;
    r.record();
    r.sim().await;
    r.wait_assessed(24).await;

    // Ring first's guests turn unhealthy after patching (a bad patch). Expedite: no deferrals.
    for j in 0..8 {
        r.env
            .annotate(&format!("first-{j}"), "sim.automend.io/unhealthy", "true")
            .await;
    }
    r.rollout(
        "bad",
        r.clock.now(),
        json!({ "expedite": true, "rollbackOnFailure": true }),
    )
    .await;
    let halted = r
        .wait_rollout("bad", "Halted", |x| phase(x) == Some(RolloutPhase::Halted))
        .await;
    let st = halted.status.expect("status");
    let cond = st
        .conditions
        .iter()
        .find(|c| c.type_ == "Halted")
        .expect("Halted condition");
    assert_eq!(cond.status, "True");
    assert!(cond.message.contains("ring first"), "{}", cond.message);
    assert_eq!(
        st.rings[0].phase,
        Some(RingPhase::Succeeded),
        "test passed before first started (expedite)"
    );
    // The controller publishes a transition's Events right after the status write that records
    // it: wait for them rather than racing the publication.
    let env = &r.env;
    let events = wait_for(
        "the RolloutHalted Event",
        Duration::from_secs(20),
        || async {
            let e = env.event_notes("bad").await;
            e.iter().any(|e| e.0 == "RolloutHalted").then_some(e)
        },
    )
    .await;
    assert!(
        events
            .iter()
            .any(|e| e.0 == "RingHalted" && e.1.contains("first")),
        "{events:?}"
    );
    // The failed wave rolls back to the recorded versions.
    let rb = r
        .wait_rollout("bad", "ring first rolled back", |x| {
            x.status.as_ref().is_some_and(|s| {
                s.rings
                    .get(1)
                    .is_some_and(|g| g.phase == Some(RingPhase::RolledBack))
            })
        })
        .await;
    let failed: Vec<String> = rb.status.expect("status").rings[1]
        .waves
        .iter()
        .flat_map(|w| w.failed_members.clone())
        .collect();
    assert!(!failed.is_empty());
    let installs = r.installs();
    for vm in &failed {
        let back = installs
            .iter()
            .find(|i| &i.vm == vm && i.record.rollback)
            .unwrap_or_else(|| panic!("{vm} rolled back"));
        assert_eq!(
            back.record.status,
            automend::api::OperationStatus::Succeeded,
            "{vm}: {:?}",
            back.record.error
        );
    }
    // Nothing reached ring fast; ring first stopped after its first failing wave.
    assert!(
        installs.iter().all(|i| !i.vm.starts_with("fast-")),
        "fast got installs after the halt"
    );
    // The rolled-back guests are on the versions from before the install again.
    for vm in &failed {
        let back = installs
            .iter()
            .find(|i| &i.vm == vm && i.record.rollback)
            .expect("rollback record");
        let versions: BTreeMap<&str, &str> = back
            .record
            .installed
            .iter()
            .map(|p| (p.name.as_str(), p.version.as_str()))
            .collect();
        assert_eq!(
            versions,
            BTreeMap::from([("kernel", "1.0.0"), ("libssl", "1.0.0")]),
            "{vm} rolled back"
        );
    }

    // The kubectl plugin on the halted rollout.
    let status = r.plugin(&["status", "bad"]);
    assert!(status.contains("Rollout bad (Halted)"), "{status}");
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("first") && l.contains("RolledBack")),
        "{status}"
    );
    assert!(status.contains("Halted: ring first"), "{status}");
    let why = r.plugin(&["why", &failed[0], "--rollout", "bad"]);
    assert!(why.contains("ring:         first"), "{why}");
    assert!(
        why.contains("verdict:      failed, then rolled back"),
        "{why}"
    );
    let why_fast = r.plugin(&["why", "fast-0", "--rollout", "bad"]);
    assert!(
        why_fast.contains("waiting: ring fast waits for the previous ring"),
        "{why_fast}"
    );
    let members = r.plugin(&["members", "fast"]);
    assert_eq!(
        members.lines().filter(|l| l.contains(" yes")).count(),
        8,
        "{members}"
    );
    // Verbs that cannot do what they say are refused with the reason.
    let refused = r.plugin_refused(&["resume", "bad"]);
    assert!(
        refused.contains("Halted") && refused.contains("retry"),
        "{refused}"
    );
    let refused = r.plugin_refused(&["expedite", "bad"]);
    assert!(refused.contains("nothing to expedite"), "{refused}");
    let vm = r.plugin(&["vm", &failed[0]]);
    assert!(
        vm.contains("profile:") && vm.contains("identity:       serviceaccount automend-guest-"),
        "{vm}"
    );
    let assessed = r.plugin(&["assess", "fast-1", "--wait", "--timeout", "120s"]);
    assert!(assessed.contains(": Succeeded"), "{assessed}");
    let annotated = r.env.get("fast-1").await;
    assert!(
        annotated
            .metadata
            .annotations
            .unwrap_or_default()
            .contains_key("automend.io/assess")
    );

    // The bad patch fixed, `retry` gives ring first's failed and rolled-back VMs another attempt
    // and the release goes on to the end.
    for j in 0..8 {
        r.env
            .annotate(&format!("first-{j}"), "sim.automend.io/unhealthy", "false")
            .await;
    }
    let retried = r.plugin(&["retry", "bad"]);
    assert!(retried.contains("halt is lifted"), "{retried}");
    let done = r
        .wait_rollout("bad", "Succeeded after retry", |x| {
            phase(x) == Some(RolloutPhase::Succeeded)
        })
        .await;
    let st = done.status.expect("status");
    assert_eq!(st.observed_retry, 1);
    assert_eq!((st.rings[1].failed, st.rings[1].succeeded), (0, 8));
    let tree = r.plugin(&["status", "bad", "--watch"]);
    assert!(tree.contains("ring first  Succeeded"), "{tree}");
    assert!(tree.contains("retried in a later wave"), "{tree}");
    let env = &r.env;
    wait_for(
        "the RolloutRetried Event",
        Duration::from_secs(20),
        || async {
            let e = env.event_notes("bad").await;
            e.iter().any(|e| e.0 == "RolloutRetried").then_some(())
        },
    )
    .await;

    // Pause / resume on a second rollout, with something to install: a newer libssl offered to
    // every guest (and assessed before the release is frozen from the assessments).
    for ring in &rings[..3] {
        for j in 0..8 {
            r.env
                .annotate(
                    &format!("{ring}-{j}"),
                    "sim.automend.io/patches",
                    "libssl=2.1.0:Security,kernel=5.2.0:Critical,tool=2.0.0:Other",
                )
                .await;
        }
    }
    r.wait_vms("every guest assessed libssl 2.1.0", 24, |v| {
        v.status
            .as_ref()
            .and_then(|s| s.guest.as_ref()?.assessment.as_ref())
            .is_some_and(|a| {
                a.packages
                    .iter()
                    .any(|p| p.name == "libssl" && p.version == "2.1.0")
            })
    })
    .await;
    r.rollout(
        "second",
        r.clock.now(),
        json!({ "expedite": true, "paused": true }),
    )
    .await;
    r.wait_rollout("second", "Paused", |x| {
        phase(x) == Some(RolloutPhase::Paused)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        r.installs().iter().all(|i| i.record.rollout != "second"),
        "a paused rollout installed"
    );
    let plan = r.plugin(&["plan", "second"]);
    assert!(plan.contains("Rollout second"), "{plan}");
    assert!(plan.contains("is paused"), "{plan}");
    r.plugin(&["resume", "second"]);
    r.wait_rollout("second", "Succeeded after resume", |x| {
        phase(x) == Some(RolloutPhase::Succeeded)
    })
    .await;

    // Manual rollback of the whole release.
    r.plugin(&["rollback", "second"]);
    let back = r
        .wait_rollout("second", "RolledBack", |x| {
            phase(x) == Some(RolloutPhase::RolledBack)
        })
        .await;
    // A rolled-back release is withdrawn, not "at risk".
    let slo = back
        .status
        .expect("status")
        .conditions
        .into_iter()
        .find(|c| c.type_ == "SLOAtRisk")
        .expect("SLOAtRisk condition");
    assert_eq!(
        (slo.status.as_str(), slo.reason.as_str()),
        ("False", "Withdrawn")
    );
    let refused = r.plugin_refused(&["abort", "second"]);
    assert!(refused.contains("RolledBack"), "{refused}");
    // Every VM installed libssl 2.1.0 in "second"; each is rolled back to 2.0.0.
    r.wait_vms("the 24 VMs second patched to be rolled back", 24, |v| {
        v.status
            .as_ref()
            .and_then(|s| s.guest.as_ref()?.installation.as_ref())
            .is_some_and(|i| {
                i.rollout == "second"
                    && i.rollback
                    && i.status == automend::api::OperationStatus::Succeeded
                    && i.installed
                        .iter()
                        .any(|p| p.name == "libssl" && p.version == "2.0.0")
            })
    })
    .await;
    r.finish(ctl).await;
}

/// The controller killed mid-wave resumes from the objects and starts no VM twice.
#[tokio::test(flavor = "multi_thread")]
async fn controller_killed_mid_wave_installs_nothing_twice() {
    let mut r = Rollouts::new("restart").await;
    let profile = r
        .env
        .profile("patching", json!({ "environment": "DevTest" }))
        .await;
    let mut ctl = r.controller(&[]);
    r.ring("test", ring_spec(0, "0s", 50)).await;
    r.ring("first", ring_spec(1, "0s", 50)).await;
    fleet(&r, &profile, &["test", "first"]).await;
    r.record();
    r.sim().await;
    r.wait_assessed(16).await;
    r.rollout("monthly", r.clock.now(), json!({})).await;
    r.wait_rollout("monthly", "a wave started", |x| {
        x.status
            .as_ref()
            .is_some_and(|s| s.rings.iter().any(|g| !g.waves.is_empty()))
    })
    .await;
    ctl.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ctl = r.controller(&[]);
    r.wait_rollout("monthly", "Succeeded", |x| {
        phase(x) == Some(RolloutPhase::Succeeded)
    })
    .await;
    let stats = r.env.stats.lock().map(|s| s.clone()).unwrap_or_default();
    for j in 0..8 {
        for ring in ["test", "first"] {
            let name = format!("{ring}-{j}");
            assert_eq!(
                stats.get(&name).map(|s| s.installs),
                Some(1),
                "{name} installed exactly once"
            );
        }
    }
    r.finish(ctl).await;
}

/// The release cadence creates the month's PatchRollout in namespaces with rings.
#[tokio::test(flavor = "multi_thread")]
async fn cadence_creates_the_release_rollout() {
    let env = Env::new("cadence").await;
    // Start the clock ten virtual minutes before the next Patch Tuesday (17:00 UTC).
    let cadence = automend::logic::rings::Cadence::parse("2 Tuesday 17:00").expect("cadence");
    let real = Timestamp::now();
    let release = cadence.next(real).expect("next release");
    let target = release - jiff::SignedDuration::from_mins(10);
    // virtual = T + (real − T)·S = target  ⇒  T = real + (real − target)/(S − 1)... solved for T.
    let s = SPEED;
    let secs = (real.as_millisecond() as f64 * s - target.as_millisecond() as f64) / (s - 1.0);
    let start = Timestamp::from_millisecond(secs as i64).expect("start");
    let start_s = start.to_string();
    let speed = SPEED.to_string();
    let ctl = env.controller(&[
        "--leader-elect=false",
        "--clock-start",
        &start_s,
        "--clock-speed",
        &speed,
        "--release-cadence",
        "2 Tuesday 17:00",
    ]);
    let rings: Api<UpdateRing> = Api::namespaced(env.client.clone(), &env.ns.name);
    let obj: UpdateRing = serde_json::from_value(json!({
        "apiVersion": "automend.io/v1alpha1", "kind": "UpdateRing",
        "metadata": { "name": "broad" }, "spec": { "order": 0, "share": 100 },
    }))
    .expect("ring");
    rings
        .create(&PostParams::default(), &obj)
        .await
        .expect("ring");
    let name = format!("release-{}", release.strftime("%Y-%m-%d"));
    let api: Api<PatchRollout> = Api::namespaced(env.client.clone(), &env.ns.name);
    let created = wait_for(
        &format!("{name} to be created"),
        Duration::from_secs(60),
        || {
            let api = api.clone();
            let name = name.clone();
            async move { api.get(&name).await.ok() }
        },
    )
    .await;
    assert_eq!(created.spec.release_time.0, release);
    // Exactly one, even as time goes on.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        api.list(&ListParams::default())
            .await
            .expect("list")
            .items
            .len(),
        1
    );
    let _ = api
        .delete_collection(&Default::default(), &ListParams::default())
        .await;
    let _ = rings
        .delete_collection(&Default::default(), &ListParams::default())
        .await;
    env.finish(ctl).await;
}

/// Across two daylight-saving changes (Paris springs forward on 2027-03-28, Sydney falls back on
/// 2027-04-04): every install starts inside its window in local time, with 30 minutes left; a
/// failed install is retried in the VM's next window, succeeds there, and the status and the VM's
/// Events tell the story.
#[tokio::test(flavor = "multi_thread")]
async fn retries_in_a_later_window_across_daylight_saving_changes() {
    let release: Timestamp = "2027-03-27T20:00:00Z".parse().expect("ts");
    // The patching clock reads 18 hours (18 real seconds) before the release: time to onboard.
    let mut r = Rollouts::new_at("dst", "2027-03-27T02:00:00Z".parse().expect("ts")).await;
    let profile = r
        .env
        .profile("patching", json!({ "environment": "DevTest" }))
        .await;
    let ctl = r.controller(&[]);
    let window = json!({ "start": "01:00", "duration": "3h" });
    let ring = |order: i32, label: &str, deferral: &str| {
        json!({
            "order": order,
            "selector": { "matchLabels": { "automend.io/ring": label } },
            "deferral": deferral, "maxUnavailable": 2, "maxAttempts": 3,
            "maintenanceWindow": window,
            "healthGate": { "maxFailedPercent": 0, "bakeTime": "0s", "healthyFor": "30m" },
        })
    };
    r.ring("paris", ring(0, "paris", "0s")).await;
    // Sydney's ring starts on 2027-04-03 13:00Z, the day before its change (local 2027-04-04).
    r.ring("sydney", ring(1, "sydney", "161h")).await;
    let mut zones = BTreeMap::new();
    for (ring, tz) in [("paris", "Europe/Paris"), ("sydney", "Australia/Sydney")] {
        for j in 0..3 {
            let name = format!("{ring}-{j}");
            r.vm(
                &name,
                ring,
                json!({ "region": format!("{ring}-region") }),
                tz,
                &profile,
            )
            .await;
            zones.insert(name, tz);
        }
    }
    r.env
        .annotate("paris-0", automend::guest::sim::INSTALL_FAIL, "true")
        .await;
    r.record();
    r.sim().await;
    r.wait_assessed(6).await;
    assert!(r.clock.now() < release, "onboarding took the whole lead");
    r.rollout("spring", release, json!({})).await;

    // paris-0 fails in the 2027-03-28 window: one attempt, the next in the following window.
    let failed = r
        .wait_rollout("spring", "paris-0's failed attempt recorded", |x| {
            x.status.as_ref().is_some_and(|s| {
                s.rings
                    .first()
                    .is_some_and(|g| g.retries.iter().any(|t| t.name == "paris-0"))
            })
        })
        .await;
    let retry = failed.status.expect("status").rings[0]
        .retries
        .iter()
        .find(|t| t.name == "paris-0")
        .cloned()
        .expect("retry");
    assert_eq!(retry.attempts, 1);
    let next = retry.next_attempt.expect("a next attempt").0;
    let paris = window::time_zone("Europe/Paris").expect("tz");
    assert_eq!(
        next.to_zoned(paris.clone()).strftime("%H:%M").to_string(),
        "01:00",
        "a window's opening, in local time"
    );
    r.env
        .annotate("paris-0", automend::guest::sim::INSTALL_FAIL, "false")
        .await;
    let done = r
        .wait_rollout("spring", "Succeeded", |x| {
            phase(x) == Some(RolloutPhase::Succeeded)
        })
        .await;
    let st = done.status.expect("status");
    assert_eq!((st.rings[0].succeeded, st.rings[0].failed), (3, 0));
    assert_eq!((st.rings[1].succeeded, st.rings[1].failed), (3, 0));

    // Every install started inside its window in local time, 30 minutes before its end; the
    // changes' days are among them.
    let w = Window::parse(&automend::api::MaintenanceWindow {
        start: "01:00".into(),
        duration: "3h".into(),
        days_of_week: vec![],
    })
    .expect("window");
    let installs: Vec<Install> = r
        .installs()
        .into_iter()
        .filter(|i| i.record.rollout == "spring" && !i.record.rollback)
        .collect();
    let mut days = BTreeSet::new();
    for i in &installs {
        let tz = window::time_zone(zones[&i.vm]).expect("tz");
        let start = i.record.start_time.as_ref().expect("start").0;
        assert!(
            w.may_start(&tz, start, Duration::from_secs(1800)),
            "{} started at {} local, outside its window",
            i.vm,
            start.to_zoned(tz.clone())
        );
        days.insert(start.to_zoned(tz).strftime("%Y-%m-%d").to_string());
    }
    assert!(days.contains("2027-03-28"), "{days:?}");
    assert!(days.contains("2027-04-04"), "{days:?}");
    // paris-0: two attempts, the second in the next day's window, successful.
    let mut mine: Vec<&Install> = installs.iter().filter(|i| i.vm == "paris-0").collect();
    mine.sort_by_key(|i| i.record.wave);
    assert_eq!(mine.len(), 2, "{mine:?}");
    assert_eq!(
        mine[0].record.status,
        automend::api::OperationStatus::Failed
    );
    assert_eq!(
        mine[1].record.status,
        automend::api::OperationStatus::Succeeded
    );
    // The retry waited for the window after the one it failed in.
    let first = mine[0].record.start_time.as_ref().expect("start").0;
    let second = mine[1].record.start_time.as_ref().expect("start").0;
    assert_eq!(w.next_opening(&paris, first), Some(next), "{mine:?}");
    assert!(
        second >= next,
        "retried at {second}, before its next window {next}"
    );
    let env = &r.env;
    let reasons = wait_for(
        "paris-0's patch Events",
        Duration::from_secs(20),
        || async {
            let e = env.events("paris-0").await;
            (e.iter().any(|x| x == "PatchRetryScheduled")
                && e.iter().any(|x| x == "PatchInstalled"))
            .then_some(e)
        },
    )
    .await;
    assert!(!reasons.iter().any(|x| x == "PatchFailed"), "{reasons:?}");
    r.finish(ctl).await;
}

/// What a release contains, on the real API server with simulated guests: a family whose
/// profile names a snapshot template is assessed against the release's snapshot and installs
/// the frozen version from it on every ring, although a newer one replaced it since; its
/// approval policy (approveAfter, exclude) leaves out what it must; a family without snapshots
/// has the release-time cut-off applied by publication dates, and its Broad VM, whose repository
/// replaced the pinned version before Broad started, reports PinnedVersionUnavailable. The
/// status and `kubectl automend plan` say what was left out and why.
#[tokio::test(flavor = "multi_thread")]
async fn a_release_installs_from_its_snapshot_and_leaves_out_what_its_policy_does() {
    let mut r = Rollouts::new("release").await;
    let snap = r
        .env
        .profile(
            "snap",
            json!({ "environment": "DevTest", "preferences": { "updateManagement": {
                "snapshots": [{ "repository": "http://deb.debian.org/debian",
                                "template": "https://snapshot.debian.org/archive/debian/{timestamp}/" }],
                "approval": { "approveAfter": "72h", "exclude": ["kernel*"] } } } }),
        )
        .await;
    let plain = r
        .env
        .profile("plain", json!({ "environment": "DevTest" }))
        .await;
    let ctl = r.controller(&[]);
    for (i, ring) in ["test", "broad"].iter().enumerate() {
        let mut spec = ring_spec(i as i32, ["0s", "24h"][i], 50);
        spec["maxAttempts"] = json!(1);
        spec["selector"] = json!({ "matchLabels": { "automend.io/ring": ring } });
        r.ring(ring, spec).await;
    }
    // The release, six virtual hours from now (whole seconds: the snapshot's timestamp). Nothing
    // depends on onboarding finishing before it: publication times are relative to it.
    let release = Timestamp::from_second(r.clock.now().as_second() + 6 * 3600).expect("time");
    let at = |hours: i64| (release + jiff::SignedDuration::from_hours(hours)).to_string();
    let ubuntu = json!({ "publisher": "Canonical", "offer": "ubuntu-24_04-lts", "sku": "server" });
    let debian = json!({ "publisher": "Debian", "offer": "debian-12", "sku": "12" });
    // The snapshot family's repository: libssl 2.0.0, replaced an hour after the release by
    // 2.0.1; openssl a day old at the release (not approved after 72h); a kernel (excluded by the
    // policy); a non-security tool.
    let snap_repo = format!(
        "libssl=2.0.0:Security@{},libssl=2.0.1:Security@{},openssl=3.0.0:Security@{},kernel=5.2.0:Critical@{},tool=2.0.0:Other@{}",
        at(-120),
        at(1),
        at(-24),
        at(-240),
        at(-240)
    );
    // The other family: libssl, and curl published an hour after the release (the cut-off).
    let plain_repo = format!(
        "libssl=2.0.0:Security@{},curl=8.1.0:Security@{}#CVE-2026-4242",
        at(-120),
        at(1)
    );
    for (name, ring) in [
        ("snap-test", "test"),
        ("snap-broad-0", "broad"),
        ("snap-broad-1", "broad"),
    ] {
        let east = json!({ "region": "eastus" });
        r.vm_of(name, ring, east, "UTC", &snap, (ubuntu.clone(), &snap_repo))
            .await;
    }
    for (name, ring) in [("plain-test", "test"), ("plain-broad", "broad")] {
        let east = json!({ "region": "eastus" });
        r.vm_of(
            name,
            ring,
            east,
            "UTC",
            &plain,
            (debian.clone(), &plain_repo),
        )
        .await;
    }
    r.record();
    r.sim().await;
    r.wait_assessed(5).await;
    r.rollout("monthly", release, json!({})).await;

    let frozen = r
        .wait_rollout("monthly", "manifest frozen", |x| {
            x.status.as_ref().is_some_and(|s| s.manifest.is_some())
        })
        .await;
    let m = frozen.status.and_then(|s| s.manifest).expect("manifest");
    let ts = release.strftime("%Y%m%dT%H%M%SZ").to_string();
    let fam = |f: &str| {
        m.families
            .iter()
            .find(|x| x.image_family == f)
            .unwrap_or_else(|| panic!("family {f} in {m:?}"))
    };
    let s = fam("Canonical/ubuntu-24_04-lts/server");
    assert_eq!(s.snapshot.as_deref(), Some(ts.as_str()));
    let pinned: Vec<String> = s
        .packages
        .iter()
        .map(|p| format!("{}={}", p.name, p.version))
        .collect();
    // libssl at the snapshot's version, not the 2.0.1 the repository offers now.
    assert_eq!(pinned, ["kernel=5.2.0", "libssl=2.0.0", "openssl=3.0.0"]);
    let p = fam("Debian/debian-12/12");
    assert_eq!(p.snapshot, None);
    assert_eq!(p.packages.len(), 1, "{:?}", p.packages);
    let mut left: Vec<String> = m
        .left_out
        .iter()
        .map(|l| {
            format!(
                "{} {:?} {}",
                l.name,
                l.reason,
                l.policy.as_deref().unwrap_or("rollout")
            )
        })
        .collect();
    left.sort();
    assert_eq!(
        left,
        [
            "curl PublishedAfterRelease rollout".to_string(),
            format!("kernel Excluded profile {snap}"),
            format!("openssl NotYetApproved profile {snap}"),
            "tool OutsideClassifications rollout".to_string(),
        ]
    );
    let plan = r.plugin(&["plan", "monthly"]);
    assert!(
        plan.contains(&format!("from repository snapshot {ts}")),
        "{plan}"
    );
    assert!(
        plan.contains(&format!("openssl 3.0.0 (Canonical/ubuntu-24_04-lts/server): NotYetApproved by the approval policy of profile {snap}")),
        "{plan}"
    );
    assert!(
        plan.contains("curl 8.1.0 (Debian/debian-12/12): PublishedAfterRelease"),
        "{plan}"
    );

    // Before Broad starts, a newer libssl replaces the pinned one in plain-broad's repository.
    r.env
        .annotate(
            "plain-broad",
            "sim.automend.io/patches",
            &format!(
                "libssl=2.0.0:Security@{},libssl=2.0.2:Security@{}",
                at(-120),
                at(20)
            ),
        )
        .await;
    let done = r
        .wait_rollout("monthly", "ring broad done", |x| {
            x.status.as_ref().is_some_and(|s| {
                s.rings
                    .iter()
                    .any(|g| g.name == "broad" && g.succeeded + g.failed == g.total && g.total == 3)
            })
        })
        .await;
    let broad = done
        .status
        .as_ref()
        .and_then(|s| s.rings.iter().find(|g| g.name == "broad"))
        .cloned()
        .expect("broad");
    assert_eq!((broad.succeeded, broad.failed), (2, 1), "{broad:?}");

    // Every snapshot VM installed exactly the frozen libssl, from the snapshot.
    let installs = r.installs();
    for vm in ["snap-test", "snap-broad-0", "snap-broad-1"] {
        let i = installs
            .iter()
            .find(|i| i.vm == vm && i.record.rollout == "monthly")
            .unwrap_or_else(|| panic!("{vm} installed"));
        let got: Vec<String> = i
            .record
            .installed
            .iter()
            .map(|p| format!("{}={}", p.name, p.version))
            .collect();
        assert_eq!(got, ["libssl=2.0.0"], "{vm}: {:?}", i.record);
        let obj = r.env.vms.get(vm).await.expect("vm");
        let d = obj
            .status
            .and_then(|s| s.desired)
            .and_then(|d| d.installation)
            .expect("directive");
        assert_eq!(
            d.snapshot.map(|s| s.repositories[0].url.clone()),
            Some(format!("https://snapshot.debian.org/archive/debian/{ts}/"))
        );
    }
    // plain-broad: the pinned version is gone, reported per package and counted.
    let vm = r.env.vms.get("plain-broad").await.expect("vm");
    let st = vm.status.expect("status");
    let i = st.guest.and_then(|g| g.installation).expect("installation");
    assert_eq!(
        i.reason.as_deref(),
        Some("PinnedVersionUnavailable"),
        "{i:?}"
    );
    assert_eq!(i.unavailable.len(), 1);
    assert_eq!(i.unavailable[0].offered, ["2.0.2"]);
    let summary = st
        .patch_status
        .and_then(|p| p.last_patch_installation_summary)
        .expect("summary");
    assert_eq!(summary.unavailable_patch_count, 1, "{summary:?}");
    r.finish(ctl).await;
}
