//! The guest side of the protocol (DESIGN.md §4), shared by the agent and the simulator.
//!
//! A guest acts only as its VM's own identity: it watches its VirtualMachine, creates and renews
//! its heartbeat Lease (`lease`), applies the desired configuration when the controller asks (a new
//! configuration hash or a new remediation attempt, and only while `enforce` is on), re-observes on
//! an interval and reports `status.guest` with server-side apply as the `automend-guest` field
//! manager. It writes only when what it reports has changed.

mod backend;
pub mod enroll;
mod install;
pub mod journal;
mod lease;
mod lifecycle;
mod own_write;
mod report;
pub mod sim;

use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Client;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use tracing::{info, warn};

use crate::api::HookName;
use crate::api::{
    AssessmentDirective, DesiredState, EffectiveConfiguration, GuestAssessment, GuestInstallation,
    GuestState, InstallationDirective, OperationStatus, VirtualMachine,
};
use crate::identity::GUEST_MANAGER;
pub use backend::{Assessed, Backend, Installed};

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
    name: String,
    backend: B,
    timing: Timing,
    desired: Option<DesiredState>,
    /// What was last reported (and acknowledged by the API server), as the API server holds it
    /// (`report::as_stored`).
    reported: Option<GuestState>,
    /// `status.guest` was changed behind the guest's back: write the whole report again.
    tampered: bool,
    /// The version of the VM the last report made (events before it predate the report).
    own_write: own_write::OwnWrite,
    /// What the guest applied, assessed and installed (what the journal keeps).
    results: journal::Record,
    apply_error: Option<String>,
    /// Whatever besides the hash decided the last apply (`Backend::apply_key`).
    applied_key: Option<String>,
    /// The heartbeat Lease (created by the guest, renewed on `timing.heartbeat`).
    heartbeat: lease::Heartbeat,
    /// The results on disk (the agent); `None` keeps them in memory only (the simulator).
    journal: Option<journal::Journal>,
    /// Results were restored from the journal: they win over what the API server last saw.
    restored: bool,
    /// When this process started the announced reboot.
    reboot_issued: Option<std::time::Instant>,
    /// The announced reboot came from the journal: this process started after it.
    reboot_restored: bool,
    problems: Vec<String>,
    /// When the guest's credential expires, as its renewer last published it.
    credential: Option<tokio::sync::watch::Receiver<Option<Time>>>,
}

pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// A guest's watch of its VirtualMachine that delivers nothing for this long is re-established,
/// so a stalled connection cannot leave the guest deaf to its directives.
pub const WATCH_IDLE: Duration = Duration::from_secs(300);

impl<B: Backend> Guest<B> {
    pub fn new(client: Client, namespace: &str, vm: &str, backend: B, timing: Timing) -> Self {
        Guest {
            vms: Api::namespaced(client.clone(), namespace),
            heartbeat: lease::Heartbeat::new(Api::namespaced(client, namespace), namespace, vm),
            name: vm.to_string(),
            backend,
            timing,
            desired: None,
            reported: None,
            tampered: false,
            own_write: Default::default(),
            results: journal::Record {
                acknowledged: true,
                ..Default::default()
            },
            apply_error: None,
            applied_key: None,
            journal: None,
            restored: false,
            reboot_issued: None,
            reboot_restored: false,
            problems: Vec::new(),
            credential: None,
        }
    }

    /// Report the credential's expiry (`status.guest.credentialExpiresAt`) as the renewer
    /// publishes it.
    pub fn with_credential(mut self, expiry: tokio::sync::watch::Receiver<Option<Time>>) -> Self {
        self.credential = Some(expiry);
        self
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
                self.reboot_restored = r.reboot.is_some();
                self.results = r;
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
        self.results.acknowledged = acknowledged;
        let Some(j) = &self.journal else { return };
        if let Err(e) = j.save(&self.results) {
            warn!(vm = %self.name, error = %e, "keeping results on disk");
            if !self.problems.contains(&e) {
                self.problems.push(e);
            }
        }
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The VirtualMachine as the watch shows it.
    fn seen(&mut self, vm: &VirtualMachine) {
        self.heartbeat.seen(vm);
        self.backend
            .annotations(&vm.metadata.annotations.clone().unwrap_or_default());
        self.backend.seen(vm);
        self.desired = vm
            .status
            .as_ref()
            .and_then(|s| s.desired.as_deref().cloned());
        let now_stored = vm
            .status
            .as_ref()
            .and_then(|s| s.guest.as_deref())
            .map(report::without_time);
        let predates = self
            .own_write
            .predates(vm.metadata.resource_version.as_deref());
        if let Some(mine) = &self.reported
            && !predates
            && now_stored.as_ref() != Some(mine)
        {
            // Someone else changed (or removed part of) the report: say it all again.
            if !self.tampered {
                info!(vm = %self.name, "status.guest differs from what this guest reported; reporting again");
            }
            self.tampered = true;
        }
        if self.reported.is_none() {
            self.reported = now_stored;
            if let Some(r) = &self.reported
                && !self.restored
            {
                self.results.applied_hash = r.applied_hash.clone();
                self.results.applied_attempt = r.applied_attempt;
                self.results.assessment = r.assessment.clone();
                self.results.release_assessment = r.release_assessment.clone();
                self.results.installation = r.installation.clone();
            }
        }
    }

    /// Run until `stop` resolves; gives the backend back.
    pub async fn run(mut self, stop: impl Future<Output = ()>) -> B {
        let config = crate::watch::config().fields(&format!("metadata.name={}", self.name));
        let probe = crate::watch::Probe::detached("guest/virtualmachine", WATCH_IDLE);
        let mut stream = std::pin::pin!(
            crate::watch::supervised(self.vms.clone(), config, probe).applied_objects()
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
                    Some(Ok(vm)) => self.seen(&vm),
                    Some(Err(e)) => { warn!(vm = %self.name, error = %e, "watching the VirtualMachine"); continue; }
                    None => break,
                },
                _ = heartbeat.tick() => {
                    if self.backend.powered_on()
                        && let Some(retry) = self.heartbeat.renew(self.timing.heartbeat).await
                    {
                        heartbeat.reset_after(retry);
                    }
                    continue;
                }
                _ = observe.tick() => {}
            }
            let on = self.backend.powered_on();
            if on && !was_on {
                info!(vm = %self.name, "powered on");
                if let Some(retry) = self.heartbeat.renew(self.timing.heartbeat).await {
                    heartbeat.reset_after(retry);
                }
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
        let record = install::started(d, start);
        if let Some(refused) = install::refused_after_window(d, &record, start) {
            return refused;
        }
        let (packages, remove) = match install::targets(d, self.results.installation.as_ref()) {
            Ok(t) => t,
            Err(e) => return install::failed(record, e, clock.now()),
        };
        // The versions in place before anything changes, kept on disk with the directive: an
        // agent stopped mid-install resumes with them, not with what it had half installed.
        let resumed = self
            .results
            .in_progress
            .as_ref()
            .filter(|i| i.rollout == d.rollout && i.wave == d.wave && i.rollback == d.rollback)
            .cloned();
        let previous = match &resumed {
            Some(i) => Ok(i.previous_versions.clone()),
            None => {
                let names: Vec<String> = packages.iter().map(|p| p.name.clone()).collect();
                self.backend.installed_versions(&names).await
            }
        };
        let previous = match previous {
            Ok(p) => install::classified(p, &packages),
            Err(e) => {
                let e = format!("reading the installed versions before installing: {e}");
                return install::failed(record, e, clock.now());
            }
        };
        let mut record = record;
        if resumed.is_none()
            && !self
                .hook(&mut record, HookName::PreInstall, d, &packages, false)
                .await
        {
            // Nothing was installed.
            return record;
        }
        let mut in_progress = record.clone();
        in_progress.status = OperationStatus::InProgress;
        in_progress.previous_versions = previous.clone();
        self.results.in_progress = Some(in_progress);
        self.persist(false);
        let out = self
            .backend
            .install(&packages, &remove, d.snapshot.as_ref())
            .await;
        let after = install::after_install(d, &out, clock.now());
        let record = install::finished(record, d, packages.len(), previous, out, clock.now());
        self.after_install(d, record, &packages, after).await
    }

    /// Act on what is asked (assess, install, apply), observe, and report if anything changed.
    async fn step(&mut self) {
        if !self.settle_reboot().await {
            return;
        }
        let Some(desired) = self.desired.clone() else {
            return;
        };
        if let Some(request) = &desired.assessment {
            self.assess_if_new(request, false).await;
        }
        if let Some(request) = &desired.release_assessment {
            self.assess_if_new(request, true).await;
        }
        if let Some(d) = &desired.installation {
            self.install_if_new(d).await;
        }
        let Some(config) = desired.configuration.clone() else {
            return;
        };
        if desired.enforce {
            self.apply_if_asked(&config, desired.remediation_attempt)
                .await;
        }
        let state = self.observe(&config).await;
        self.report(state).await;
        self.reboot_if_announced().await;
    }

    /// Answer an assessment request once: the periodic/on-demand one, or a release's (against
    /// its snapshot, answered in `releaseAssessment`).
    async fn assess_if_new(&mut self, request: &AssessmentDirective, release: bool) {
        let slot = if release {
            &self.results.release_assessment
        } else {
            &self.results.assessment
        };
        if slot.as_ref().map(|a| a.request_id.as_str()) == Some(request.request_id.as_str()) {
            return;
        }
        let start = Some(Time(self.timing.clock.now()));
        let result = self.backend.assess(request.snapshot.as_ref()).await;
        let finish_time = Some(Time(self.timing.clock.now()));
        let (status, packages, reboot_pending, error) = match result {
            Ok(found) => (
                OperationStatus::Succeeded,
                found.packages,
                found.reboot_pending,
                None,
            ),
            Err(e) => {
                warn!(vm = %self.name, error = %e, "assessing patches");
                (OperationStatus::Failed, Vec::new(), false, Some(e))
            }
        };
        let answer = Some(GuestAssessment {
            request_id: request.request_id.to_string(),
            status,
            start_time: start,
            finish_time,
            packages,
            reboot_pending,
            error,
            snapshot: request.snapshot.as_ref().map(|s| s.timestamp.clone()),
        });
        if release {
            self.results.release_assessment = answer;
        } else {
            self.results.assessment = answer;
        }
        self.persist(false);
    }

    async fn install_if_new(&mut self, d: &InstallationDirective) {
        let handled = self.results.installation.as_ref().is_some_and(|i| {
            i.rollout == d.rollout && i.wave == d.wave && i.rollback == d.rollback
        });
        if handled {
            return;
        }
        let result = self.install(d).await;
        self.results.installation = Some(result);
        self.results.in_progress = None;
        self.persist(false);
    }

    /// Apply when the controller asks for a new (hash, attempt), or what else decides the apply
    /// changed.
    async fn apply_if_asked(&mut self, config: &EffectiveConfiguration, attempt: i32) {
        let asked = (Some(config.hash.clone()), attempt);
        let key = self.backend.apply_key();
        if (
            self.results.applied_hash.clone(),
            self.results.applied_attempt,
        ) == asked
            && self.applied_key == key
        {
            return;
        }
        match self.backend.apply(config).await {
            Ok(()) => self.apply_error = None,
            Err(e) => {
                warn!(vm = %self.name, error = %e, "applying the configuration");
                self.apply_error = Some(e);
            }
        }
        self.results.applied_hash = Some(config.hash.clone());
        self.results.applied_attempt = attempt;
        self.applied_key = key;
        self.persist(false);
    }

    /// What the guest reports now.
    async fn observe(&mut self, config: &EffectiveConfiguration) -> GuestState {
        let mut services = self.backend.observe(config).await;
        if let Some(e) = &self.apply_error {
            for s in services.iter_mut().filter(|s| !s.compliant) {
                s.differences.push(format!("apply failed: {e}"));
            }
        }
        GuestState {
            agent_version: Some(AGENT_VERSION.into()),
            os: Some(self.backend.os()),
            applied_hash: self.results.applied_hash.clone(),
            applied_attempt: self.results.applied_attempt,
            services,
            reboot_pending: self.backend.reboot_pending(),
            healthy: Some(self.backend.healthy()),
            last_observed_time: None,
            assessment: self.results.assessment.clone(),
            installation: self.results.installation.clone(),
            release_assessment: self.results.release_assessment.clone(),
            problems: self
                .problems
                .iter()
                .cloned()
                .chain(self.backend.problems())
                .take(32)
                .collect(),
            changes: self.backend.changes(),
            credential_expires_at: self.credential.as_ref().and_then(|c| c.borrow().clone()),
        }
    }

    /// Write `status.guest` when it differs from what was last reported, or was changed by
    /// someone else.
    async fn report(&mut self, mut state: GuestState) {
        let stored = report::as_stored(&state);
        if self.reported == stored && !self.tampered {
            if !self.results.acknowledged {
                self.persist(true);
            }
            return;
        }
        state.last_observed_time = Some(Time(Timestamp::now()));
        let status = serde_json::json!({ "guest": report::fit(state) });
        match crate::status::apply(&self.vms, &self.name, GUEST_MANAGER, &status).await {
            Ok(vm) => {
                self.own_write.wrote(vm.metadata.resource_version);
                self.reported = stored;
                self.tampered = false;
                if !self.results.acknowledged {
                    self.persist(true);
                }
            }
            Err(e) => warn!(vm = %self.name, error = %e, "reporting status.guest"),
        }
    }
}
