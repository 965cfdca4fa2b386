//! The rollout decision driven through whole rollouts: a small simulated world applies every
//! write, lets each guest act, and advances time.

mod controls;
mod reboots;
mod release;
mod retries;
mod scenarios;
mod signals;

use std::collections::BTreeSet;
use std::time::Duration;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::*;
use crate::api::{
    AvailablePackage, Classification, GuestAssessment, GuestInstallation, HealthGate,
    InstallationDirective, LastPatchInstallationSummary, MaintenanceWindow, OperationStatus,
    PatchRolloutSpec, PatchRolloutStatus, PinnedPackage, RebootSetting, RingPhase, RolloutPhase,
    SloTarget, UpdateRingSpec,
};
use crate::logic::duration::add;
use crate::logic::planner::Placement;
use crate::logic::window::Window;

fn dur(text: &str) -> Duration {
    crate::logic::duration::parse(text).unwrap_or(Duration::ZERO)
}

fn ts(s: &str) -> Timestamp {
    s.parse().expect("timestamp")
}

fn ring(order: i32, deferral: &str, bake: &str, max_failed: i32) -> UpdateRingSpec {
    UpdateRingSpec {
        order,
        selector: None,
        share: Some(25),
        deferral: deferral.into(),
        deadline: "48h".into(),
        max_unavailable: IntOrString::Int(2),
        // One attempt: the scenarios written before automatic retries (tests/retries.rs has them).
        max_attempts: 1,
        paused: false,
        health_gate: HealthGate {
            max_failed_percent: max_failed,
            bake_time: bake.into(),
            healthy_for: "30m".into(),
            reboot_timeout: "15m".into(),
        },
        maintenance_window: None,
        hooks: None,
        snapshots: None,
        approval: None,
    }
}

fn pkg(name: &str, version: &str, installed: &str, c: Classification) -> AvailablePackage {
    AvailablePackage {
        name: name.into(),
        version: version.into(),
        installed_version: Some(installed.into()),
        classification: c,
        published: None,
        advisories: Vec::new(),
        cves: Vec::new(),
    }
}

struct SimVm {
    name: String,
    ring: usize,
    placement: Placement,
    assessment: GuestAssessment,
    directive: Option<InstallationDirective>,
    result: Option<GuestInstallation>,
    summary: Option<LastPatchInstallationSummary>,
    healthy: bool,
    running: bool,
    fail: bool,
    /// Announces a reboot after installing (and stops its heartbeat) instead of finishing.
    reboots: bool,
    window: Option<(Window, TimeZone)>,
    ineligible: Option<String>,
    installs: Vec<(i32, Vec<PinnedPackage>)>,
    snapshots: Vec<crate::api::SnapshotRepository>,
    approval: Option<crate::api::ApprovalPolicy>,
    /// What the VM's repositories held at the release's snapshot (its release assessment).
    at_snapshot: Vec<AvailablePackage>,
    release_directive: Option<crate::api::AssessmentDirective>,
    release_assessment: Option<GuestAssessment>,
}

struct World {
    now: Timestamp,
    spec: PatchRolloutSpec,
    status: Option<PatchRolloutStatus>,
    rings: Vec<(String, UpdateRingSpec)>,
    vms: Vec<SimVm>,
    events: Vec<EventSpec>,
    settings: Settings,
}

impl World {
    fn new(per_ring: usize, rings: Vec<(String, UpdateRingSpec)>) -> World {
        let mut vms = Vec::new();
        for (ri, _) in rings.iter().enumerate() {
            for i in 0..per_ring {
                vms.push(SimVm {
                    name: format!("r{ri}-vm{i}"),
                    ring: ri,
                    placement: Placement {
                        region: if i % 2 == 0 {
                            "east".into()
                        } else {
                            "west".into()
                        },
                        zone: Some(format!("{}", i % 3 + 1)),
                        availability_set: None,
                        update_domain: 0,
                    },
                    assessment: GuestAssessment {
                        request_id: "a".into(),
                        status: OperationStatus::Succeeded,
                        start_time: None,
                        finish_time: None,
                        packages: vec![
                            pkg("libssl", "1.1", "1.0", Classification::Security),
                            pkg("kernel", "5.2", "5.0", Classification::Critical),
                            pkg("tool", "2.0", "1.0", Classification::Other),
                            pkg("secret-agent", "9", "8", Classification::Security),
                        ],
                        reboot_pending: false,
                        error: None,
                        snapshot: None,
                    },
                    directive: None,
                    result: None,
                    summary: None,
                    healthy: true,
                    running: true,
                    fail: false,
                    reboots: false,
                    window: None,
                    ineligible: None,
                    installs: Vec::new(),
                    snapshots: Vec::new(),
                    approval: None,
                    at_snapshot: Vec::new(),
                    release_directive: None,
                    release_assessment: None,
                });
            }
        }
        World {
            now: ts("2026-11-10T18:00:00Z"),
            spec: PatchRolloutSpec {
                release_time: Time(ts("2026-11-10T18:00:00Z")),
                classifications: vec![Classification::Critical, Classification::Security],
                expedite: false,
                paused: false,
                rollback_on_failure: false,
                rollback: false,
                abort: false,
                retry: 0,
                promoted_rings: Vec::new(),
                skipped_rings: Vec::new(),
                exclude: vec!["secret-*".into()],
                slo: SloTarget::default(),
            },
            status: None,
            rings,
            vms,
            events: Vec::new(),
            settings: Settings {
                pairs: vec![("east".into(), "west".into())],
                expected_duration: Duration::from_secs(1800),
                clock_speed: 1.0,
            },
        }
    }

    fn decide(&self) -> Outcome {
        let rings: Vec<RingFacts> = self
            .rings
            .iter()
            .map(|(n, s)| RingFacts { name: n, spec: s })
            .collect();
        let vms: Vec<VmFacts> = self
            .vms
            .iter()
            .map(|v| VmFacts {
                name: &v.name,
                ring: Some(v.ring),
                placement: v.placement.clone(),
                ineligible: v.ineligible.clone(),
                running: v.running,
                window: v.window.clone(),
                reboot_setting: Some(RebootSetting::IfRequired),
                hotpatch: false,
                family: "Canonical/ubuntu/22_04-lts".into(),
                assessment: Some(&v.assessment),
                directive: v.directive.as_ref(),
                result: v.result.as_ref(),
                summary: v.summary.as_ref(),
                healthy: v.healthy,
                hooks: None,
                profile: "production",
                snapshots: &v.snapshots,
                approval: v.approval.as_ref(),
                release_assessment: v.release_assessment.as_ref(),
                release_directive: v.release_directive.as_ref(),
            })
            .collect();
        decide(&Input {
            now: self.now,
            name: "release-2026-11",
            generation: Some(1),
            spec: &self.spec,
            status: self.status.as_ref(),
            rings: &rings,
            vms: &vms,
            blocked_by: None,
            settings: &self.settings,
        })
    }

    /// Decide, apply the writes and the status, then let every guest act.
    fn step(&mut self) -> Outcome {
        let out = self.decide();
        for w in &out.writes {
            let vm = &mut self.vms[w.vm];
            vm.directive = Some(w.directive.clone());
            if w.summary.is_some() {
                vm.summary = w.summary.clone();
            }
        }
        for (i, d) in &out.release_assessments {
            let vm = &mut self.vms[*i];
            vm.release_directive = Some(d.clone());
            if vm.running {
                vm.release_assessment = Some(GuestAssessment {
                    request_id: d.request_id.to_string(),
                    packages: vm.at_snapshot.clone(),
                    snapshot: d.snapshot.as_ref().map(|s| s.timestamp.clone()),
                    ..vm.assessment.clone()
                });
            }
        }
        self.status = Some(out.status.clone());
        self.events.extend(out.events.clone());
        let now = self.now;
        for vm in &mut self.vms {
            let Some(d) = vm.directive.clone() else {
                continue;
            };
            if !vm.running
                || vm.result.as_ref().is_some_and(|r| {
                    r.rollout == d.rollout && r.wave == d.wave && r.rollback == d.rollback
                })
            {
                continue;
            }
            vm.installs.push((d.wave, d.packages.clone()));
            vm.result = Some(GuestInstallation {
                rollout: d.rollout.clone(),
                wave: d.wave,
                rollback: d.rollback,
                status: if vm.fail {
                    OperationStatus::Failed
                } else {
                    OperationStatus::Succeeded
                },
                start_time: Some(Time(now)),
                finish_time: Some(Time(now)),
                installed: if vm.fail || d.rollback {
                    vec![]
                } else {
                    d.packages.clone()
                },
                failed: if vm.fail { d.packages.clone() } else { vec![] },
                previous_versions: vec![],
                reboot_pending: false,
                maintenance_window_exceeded: false,
                error: vm.fail.then(|| "dpkg failed".to_string()),
                reason: None,
                reboot_started_at: None,
                rebooted_at: None,
                hooks: Vec::new(),
                unavailable: Vec::new(),
            });
            if vm.reboots && !vm.fail && !d.rollback {
                let r = vm.result.as_mut().expect("just set");
                r.status = OperationStatus::InProgress;
                r.reboot_started_at = Some(Time(now));
                r.reboot_pending = true;
                r.finish_time = None;
                vm.running = false;
            }
        }
        out
    }

    fn run_until(&mut self, end: Timestamp, tick: Duration) {
        while self.now < end {
            self.step();
            self.now = add(self.now, tick);
        }
    }

    fn ring_phase(&self, i: usize) -> Option<RingPhase> {
        self.status
            .as_ref()
            .and_then(|s| s.rings.get(i))
            .and_then(|r| r.phase)
    }

    fn reasons(&self) -> Vec<&'static str> {
        self.events.iter().map(|e| e.reason).collect()
    }
}

fn four_rings() -> Vec<(String, UpdateRingSpec)> {
    vec![
        ("test".into(), ring(0, "0s", "1h", 10)),
        ("first".into(), ring(1, "24h", "1h", 10)),
        ("fast".into(), ring(2, "144h", "1h", 10)),
        ("broad".into(), ring(3, "216h", "1h", 10)),
    ]
}
