//! The guest side of the protocol (DESIGN.md §4), shared by the agent and the simulator.
//!
//! A guest acts only as its VM's own identity: it watches its VirtualMachine, renews its heartbeat
//! Lease, applies the desired configuration when the controller asks (a new configuration hash or
//! a new remediation attempt, and only while `enforce` is on), re-observes on an interval and
//! reports `status.guest` with server-side apply as the `automend-guest` field manager. It writes
//! only when what it reports has changed.

pub mod journal;
pub mod sim;

use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
use tracing::{debug, info, warn};

use crate::api::{
    AvailablePackage, DesiredState, EffectiveConfiguration, GuestAssessment, GuestInstallation,
    GuestOs, GuestState, InstallationDirective, OperationStatus, PinnedPackage, RebootSetting,
    ServiceObservation, VirtualMachine,
};
use crate::identity::{self, GUEST_MANAGER};

/// What a guest does on its machine: the agent's backends do it for real, the simulator in memory.
pub trait Backend: Send {
    /// OS facts.
    fn os(&self) -> GuestOs;
    /// Apply a configuration (idempotent).
    fn apply(
        &mut self,
        config: &EffectiveConfiguration,
    ) -> impl Future<Output = Result<(), String>> + Send;
    /// Observe every service against a configuration; never changes the machine.
    fn observe(
        &mut self,
        config: &EffectiveConfiguration,
    ) -> impl Future<Output = Vec<ServiceObservation>> + Send;
    /// List the updates available (never installs anything).
    fn assess(&mut self) -> impl Future<Output = Result<Assessed, String>> + Send;
    /// Put each package at exactly the given version and remove the named packages; report what
    /// was in place before, so that a rollback can return to it.
    fn install(
        &mut self,
        packages: &[PinnedPackage],
        remove: &[String],
    ) -> impl Future<Output = Installed> + Send;
    /// The VM's annotations changed (the simulator reads its controls from them).
    fn annotations(&mut self, _annotations: &std::collections::BTreeMap<String, String>) {}
    /// The VirtualMachine as last seen (patch mode, health check).
    fn seen(&mut self, _vm: &VirtualMachine) {}
    /// Whatever besides the configuration hash decides what `apply` writes (the agent: the
    /// effective patch mode); a change re-applies.
    fn apply_key(&self) -> Option<String> {
        None
    }
    /// The installed versions of these packages (absent ones left out), read before an install
    /// so that a rollback can return to them.
    fn installed_versions(
        &mut self,
        _names: &[String],
    ) -> impl Future<Output = Result<Vec<PinnedPackage>, String>> + Send {
        async { Ok(Vec::new()) }
    }
    /// Whether an installed update waits for a reboot (as of the last observation).
    fn reboot_pending(&self) -> bool {
        false
    }
    /// Problems met on the machine outside any service (reported in `status.guest.problems`).
    fn problems(&self) -> Vec<String> {
        Vec::new()
    }
    /// Changes change tracking saw, newest last.
    fn changes(&self) -> Vec<String> {
        Vec::new()
    }
    /// Whether the machine is running; a powered-off guest neither heartbeats nor reports.
    /// The machine's own health (agent checks and the VM's `spec.healthCheck`).
    fn healthy(&self) -> bool {
        true
    }
    fn powered_on(&self) -> bool {
        true
    }
}

/// What an assessment found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Assessed {
    pub packages: Vec<AvailablePackage>,
    pub reboot_pending: bool,
}

/// What an installation did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Installed {
    pub installed: Vec<PinnedPackage>,
    pub failed: Vec<PinnedPackage>,
    /// Versions before the install (packages that were absent are not listed).
    pub previous_versions: Vec<PinnedPackage>,
    pub reboot_required: bool,
    pub error: Option<String>,
}

/// Timing of a guest.
#[derive(Clone, Debug)]
pub struct Timing {
    /// How often the Lease is renewed.
    pub heartbeat: Duration,
    /// How often the machine is re-observed for drift.
    pub observe: Duration,
    /// The patching schedule's clock: assessment and installation times, window ends.
    pub clock: crate::clock::Clock,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            heartbeat: Duration::from_secs(60),
            observe: Duration::from_secs(60),
            clock: crate::clock::Clock::real(),
        }
    }
}

/// One guest, bound to its VM.
pub struct Guest<B: Backend> {
    vms: Api<VirtualMachine>,
    leases: Api<Lease>,
    name: String,
    backend: B,
    timing: Timing,
    desired: Option<DesiredState>,
    /// What was last reported (and acknowledged by the API server).
    reported: Option<GuestState>,
    /// What the guest has applied.
    applied_hash: Option<String>,
    applied_attempt: i32,
    apply_error: Option<String>,
    acquired: bool,
    assessment: Option<GuestAssessment>,
    installation: Option<GuestInstallation>,
    /// The results on disk (the agent); `None` keeps them in memory only (the simulator).
    journal: Option<journal::Journal>,
    /// Results were restored from the journal: they win over what the API server last saw.
    restored: bool,
    in_progress: Option<GuestInstallation>,
    acknowledged: bool,
    applied_key: Option<String>,
    problems: Vec<String>,
}

pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

impl<B: Backend> Guest<B> {
    pub fn new(client: Client, namespace: &str, vm: &str, backend: B, timing: Timing) -> Self {
        Guest {
            vms: Api::namespaced(client.clone(), namespace),
            leases: Api::namespaced(client, namespace),
            name: vm.to_string(),
            backend,
            timing,
            desired: None,
            reported: None,
            applied_hash: None,
            applied_attempt: 0,
            apply_error: None,
            acquired: false,
            assessment: None,
            installation: None,
            journal: None,
            restored: false,
            in_progress: None,
            acknowledged: true,
            applied_key: None,
            problems: Vec::new(),
        }
    }

    /// Keep results in a journal on disk until the API server has them.
    pub fn with_journal(mut self, journal: journal::Journal) -> Self {
        self.journal = Some(journal);
        self
    }

    fn restore(&mut self) {
        let Some(j) = &self.journal else { return };
        match j.load() {
            Ok(Some(r)) => {
                info!(vm = %self.name, acknowledged = r.acknowledged, "restored results from {}", j.path().display());
                self.applied_hash = r.applied_hash;
                self.applied_attempt = r.applied_attempt;
                self.assessment = r.assessment;
                self.installation = r.installation;
                self.in_progress = r.in_progress;
                self.acknowledged = r.acknowledged;
                self.restored = true;
            }
            Ok(None) => {}
            Err(e) => {
                warn!(vm = %self.name, error = %e, "restoring results");
                self.problems.push(e);
            }
        }
    }

    /// Write the results to the journal (before they are reported).
    fn persist(&mut self, acknowledged: bool) {
        self.acknowledged = acknowledged;
        let Some(j) = &self.journal else { return };
        let record = journal::Record {
            applied_hash: self.applied_hash.clone(),
            applied_attempt: self.applied_attempt,
            assessment: self.assessment.clone(),
            installation: self.installation.clone(),
            in_progress: self.in_progress.clone(),
            acknowledged,
        };
        if let Err(e) = j.save(&record) {
            warn!(vm = %self.name, error = %e, "keeping results on disk");
            if !self.problems.contains(&e) {
                self.problems.push(e);
            }
        }
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Run until `stop` resolves; gives the backend back.
    pub async fn run(mut self, stop: impl Future<Output = ()>) -> B {
        let config = watcher::Config::default().fields(&format!("metadata.name={}", self.name));
        let mut stream = std::pin::pin!(
            watcher(self.vms.clone(), config)
                .default_backoff()
                .applied_objects()
        );
        let mut stop = std::pin::pin!(stop);
        let mut heartbeat = tokio::time::interval(self.timing.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut observe = tokio::time::interval(self.timing.observe);
        observe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut was_on = true;
        self.restore();
        loop {
            tokio::select! {
                _ = &mut stop => break,
                item = stream.next() => match item {
                    Some(Ok(vm)) => {
                        self.backend.annotations(&vm.metadata.annotations.clone().unwrap_or_default());
                        self.backend.seen(&vm);
                        self.desired = vm.status.as_ref().and_then(|s| s.desired.clone());
                        if self.reported.is_none() {
                            self.reported = vm.status.as_ref().and_then(|s| s.guest.clone());
                            if let Some(r) = &self.reported
                                && !self.restored
                            {
                                self.applied_hash = r.applied_hash.clone();
                                self.applied_attempt = r.applied_attempt;
                                self.assessment = r.assessment.clone();
                                self.installation = r.installation.clone();
                            }
                        }
                    }
                    Some(Err(e)) => { warn!(vm = %self.name, error = %e, "watching the VirtualMachine"); continue; }
                    None => break,
                },
                _ = heartbeat.tick() => {
                    if self.backend.powered_on() {
                        self.renew().await;
                    }
                    continue;
                }
                _ = observe.tick() => {}
            }
            let on = self.backend.powered_on();
            if on && !was_on {
                info!(vm = %self.name, "powered on");
                self.renew().await;
            }
            was_on = on;
            if on {
                self.step().await;
            }
        }
        self.backend
    }

    /// Run one installation directive: never past the window's end; a rollback returns the
    /// packages to the versions recorded before this rollout's install.
    async fn install(&mut self, d: &InstallationDirective) -> GuestInstallation {
        let clock = self.timing.clock;
        let start = clock.now();
        let mut record = GuestInstallation {
            rollout: d.rollout.clone(),
            wave: d.wave,
            rollback: d.rollback,
            status: OperationStatus::Failed,
            start_time: Some(Time(start)),
            finish_time: None,
            installed: Vec::new(),
            failed: Vec::new(),
            previous_versions: Vec::new(),
            reboot_pending: false,
            maintenance_window_exceeded: false,
            error: None,
        };
        if d.window_end.as_ref().is_some_and(|end| end.0 <= start) {
            record.maintenance_window_exceeded = true;
            record.error =
                Some("the maintenance window ended before the installation could start".into());
            record.finish_time = Some(Time(start));
            return record;
        }
        let (packages, remove) = if d.rollback {
            let before = self
                .installation
                .as_ref()
                .filter(|i| i.rollout == d.rollout && !i.rollback)
                .map(|i| (i.previous_versions.clone(), i.installed.clone()));
            let Some((previous, installed)) = before else {
                record.error = Some(format!(
                    "nothing of rollout {} was installed here to roll back",
                    d.rollout
                ));
                record.finish_time = Some(Time(clock.now()));
                return record;
            };
            let remove: Vec<String> = installed
                .iter()
                .filter(|p| !previous.iter().any(|q| q.name == p.name))
                .map(|p| p.name.clone())
                .collect();
            (previous, remove)
        } else {
            (d.packages.clone(), Vec::new())
        };
        // The versions in place before anything changes, kept on disk with the directive: an
        // agent stopped mid-install resumes with them, not with what it had half installed.
        let resumed = self
            .in_progress
            .as_ref()
            .filter(|i| i.rollout == d.rollout && i.wave == d.wave && i.rollback == d.rollback);
        let previous = match resumed {
            Some(i) => Ok(i.previous_versions.clone()),
            None => {
                let names: Vec<String> = packages.iter().map(|p| p.name.clone()).collect();
                self.backend.installed_versions(&names).await
            }
        };
        let previous = match previous {
            Ok(mut p) => {
                for q in p.iter_mut().filter(|q| q.classification.is_none()) {
                    q.classification = packages
                        .iter()
                        .find(|x| x.name == q.name)
                        .and_then(|x| x.classification);
                }
                p
            }
            Err(e) => {
                record.error = Some(format!(
                    "reading the installed versions before installing: {e}"
                ));
                record.finish_time = Some(Time(clock.now()));
                return record;
            }
        };
        let mut started = record.clone();
        started.status = OperationStatus::InProgress;
        started.previous_versions = previous.clone();
        self.in_progress = Some(started);
        self.persist(false);
        let out = self.backend.install(&packages, &remove).await;
        let finish = clock.now();
        record.finish_time = Some(Time(finish));
        record.maintenance_window_exceeded =
            d.window_end.as_ref().is_some_and(|end| end.0 < finish);
        record.status = match (
            out.failed.is_empty(),
            out.installed.is_empty() && !packages.is_empty(),
        ) {
            (true, _) => OperationStatus::Succeeded,
            (false, true) => OperationStatus::Failed,
            (false, false) => OperationStatus::CompletedWithWarnings,
        };
        record.installed = out.installed;
        record.failed = out.failed;
        record.previous_versions = if previous.is_empty() {
            out.previous_versions
        } else {
            previous
        };
        record.error = out.error;
        // Reboot per the directive: Never leaves it pending; the others reboot when needed
        // (Always: regardless). Hotpatch applies fixes to the running system: no reboot.
        record.reboot_pending = out.reboot_required
            && !d.hotpatch_only
            && d.reboot_setting == Some(RebootSetting::Never);
        record
    }

    async fn renew(&mut self) {
        let now = MicroTime(Timestamp::now());
        let mut spec = serde_json::json!({
            "holderIdentity": identity::guest_name(&self.name),
            "leaseDurationSeconds": self.timing.heartbeat.as_secs().max(1) * 3,
            "renewTime": now,
        });
        if !self.acquired {
            spec["acquireTime"] = serde_json::json!(now);
        }
        let patch = serde_json::json!({ "spec": spec });
        match self
            .leases
            .patch(
                &identity::lease_name(&self.name),
                &PatchParams::default(),
                &Patch::Merge(patch),
            )
            .await
        {
            Ok(_) => self.acquired = true,
            Err(e) => debug!(vm = %self.name, error = %e, "renewing the heartbeat Lease"),
        }
    }

    /// Apply if asked, observe, and report if anything changed.
    async fn step(&mut self) {
        let Some(desired) = self.desired.clone() else {
            return;
        };
        if let Some(request) = &desired.assessment
            && self.assessment.as_ref().map(|a| &a.request_id) != Some(&request.request_id)
        {
            let start = Time(self.timing.clock.now());
            let result = self.backend.assess().await;
            let finish = Some(Time(self.timing.clock.now()));
            self.assessment = Some(match result {
                Ok(found) => GuestAssessment {
                    request_id: request.request_id.clone(),
                    status: OperationStatus::Succeeded,
                    start_time: Some(start),
                    finish_time: finish,
                    packages: found.packages,
                    reboot_pending: found.reboot_pending,
                    error: None,
                },
                Err(e) => {
                    warn!(vm = %self.name, error = %e, "assessing patches");
                    GuestAssessment {
                        request_id: request.request_id.clone(),
                        status: OperationStatus::Failed,
                        start_time: Some(start),
                        finish_time: finish,
                        packages: Vec::new(),
                        reboot_pending: false,
                        error: Some(e),
                    }
                }
            });
            self.persist(false);
        }
        if let Some(d) = &desired.installation {
            let handled = self.installation.as_ref().is_some_and(|i| {
                i.rollout == d.rollout && i.wave == d.wave && i.rollback == d.rollback
            });
            if !handled {
                let result = self.install(d).await;
                self.installation = Some(result);
                self.in_progress = None;
                self.persist(false);
            }
        }
        let Some(config) = desired.configuration.clone() else {
            return;
        };
        let asked = (Some(config.hash.clone()), desired.remediation_attempt);
        let key = self.backend.apply_key();
        if desired.enforce
            && ((self.applied_hash.clone(), self.applied_attempt) != asked
                || self.applied_key != key)
        {
            match self.backend.apply(&config).await {
                Ok(()) => self.apply_error = None,
                Err(e) => {
                    warn!(vm = %self.name, error = %e, "applying the configuration");
                    self.apply_error = Some(e);
                }
            }
            self.applied_hash = Some(config.hash.clone());
            self.applied_attempt = desired.remediation_attempt;
            self.applied_key = key;
            self.persist(false);
        }
        let mut services = self.backend.observe(&config).await;
        if let Some(e) = &self.apply_error {
            for s in services.iter_mut().filter(|s| !s.compliant) {
                s.differences.push(format!("apply failed: {e}"));
            }
        }
        let mut state = GuestState {
            agent_version: Some(AGENT_VERSION.into()),
            os: Some(self.backend.os()),
            applied_hash: self.applied_hash.clone(),
            applied_attempt: self.applied_attempt,
            services,
            reboot_pending: self.backend.reboot_pending(),
            healthy: Some(self.backend.healthy()),
            last_observed_time: None,
            assessment: self.assessment.clone(),
            installation: self.installation.clone(),
            problems: self
                .problems
                .iter()
                .cloned()
                .chain(self.backend.problems())
                .take(32)
                .collect(),
            changes: self.backend.changes(),
        };
        let unchanged = self.reported.as_ref().is_some_and(|r| {
            let mut r = r.clone();
            r.last_observed_time = None;
            r == state
        });
        if unchanged {
            if !self.acknowledged {
                self.persist(true);
            }
            return;
        }
        state.last_observed_time = Some(Time(Timestamp::now()));
        let body = serde_json::json!({
            "apiVersion": VirtualMachine::api_version(&()),
            "kind": VirtualMachine::kind(&()),
            "metadata": { "name": self.name },
            "status": { "guest": state },
        });
        match self
            .vms
            .patch_status(
                &self.name,
                &PatchParams::apply(GUEST_MANAGER).force(),
                &Patch::Apply(body),
            )
            .await
        {
            Ok(_) => {
                self.reported = Some(state);
                if !self.acknowledged {
                    self.persist(true);
                }
            }
            Err(e) => warn!(vm = %self.name, error = %e, "reporting status.guest"),
        }
    }
}
