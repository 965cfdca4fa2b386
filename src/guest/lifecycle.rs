//! The patch lifecycle around an installation: hooks before and after, and the reboot — announced
//! in `status.guest` and journaled (with a boot marker under `/run`) before it starts, and
//! finished only once the machine is seen to have booted.
//!
//! A reboot is announced, then started once the API server has the announcement; the guest then
//! does nothing until the machine goes down. On the next start the boot marker tells whether the
//! machine booted (the marker is gone: the installation finishes, `rebootedAt`, the postInstall
//! hook runs) or not (the marker survived: RebootFailed, the reboot left pending).

use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::journal::PendingReboot;
use super::{Backend, Guest, install};
use crate::api::{
    GuestInstallation, HookName, InstallationDirective, OperationStatus, PinnedPackage,
};

/// How long a guest waits for its machine to go down after the reboot command returned.
pub const REBOOT_WAIT: Duration = Duration::from_secs(600);

impl<B: Backend> Guest<B> {
    /// Run one hook of the directive, if it has one; false when it failed (the record says why).
    pub(super) async fn hook(
        &mut self,
        record: &mut GuestInstallation,
        name: HookName,
        d: &InstallationDirective,
        packages: &[PinnedPackage],
        reboot: bool,
    ) -> bool {
        let hooks = d.hooks.clone().unwrap_or_default();
        let spec = match name {
            HookName::PreInstall => hooks.pre_install,
            HookName::PreReboot => hooks.pre_reboot,
            HookName::PostInstall => hooks.post_install,
        };
        let Some(spec) = spec else {
            return true;
        };
        let env = install::hook_env(name, d, packages, reboot);
        let run = self.backend.run_hook(name, &spec, env).await;
        if !run.succeeded {
            warn!(vm = %self.name, hook = %name, exit_code = ?run.exit_code, "patch hook failed");
        }
        install::hook_ran(record, run, self.timing.clock.now())
    }

    /// After the packages are in: the preReboot hook and the announced reboot, or the
    /// postInstall hook when no reboot follows.
    pub(super) async fn after_install(
        &mut self,
        d: &InstallationDirective,
        mut record: GuestInstallation,
        packages: &[PinnedPackage],
        after: install::AfterInstall,
    ) -> GuestInstallation {
        let now = self.timing.clock.now();
        if after != install::AfterInstall::Reboot || record.status == OperationStatus::Failed {
            self.hook(&mut record, HookName::PostInstall, d, packages, false)
                .await;
            return record;
        }
        if !self
            .hook(&mut record, HookName::PreReboot, d, packages, true)
            .await
        {
            // The reboot stays pending (the record says so), the VM failed.
            return record;
        }
        if let Err(e) = self.backend.mark_boot(&format!("{}/{}", d.rollout, d.wave)) {
            return install::reboot_failed(
                &record,
                format!("cannot leave the boot marker before rebooting: {e}"),
                now,
            );
        }
        info!(vm = %self.name, rollout = %d.rollout, wave = d.wave, "announcing a reboot");
        self.results.reboot = Some(PendingReboot {
            directive: d.clone(),
            then: record.status,
        });
        install::rebooting(&record, now)
    }

    /// Before anything else in a step: settle an announced reboot. False while the machine is
    /// going down (nothing else happens then).
    pub(super) async fn settle_reboot(&mut self) -> bool {
        let Some(pending) = self.results.reboot.clone() else {
            return true;
        };
        let now = self.timing.clock.now();
        let Some(record) = self.results.installation.clone() else {
            self.results.reboot = None;
            return true;
        };
        if !self.backend.boot_marked() {
            info!(vm = %self.name, "the machine is back from its reboot");
            let mut done = install::rebooted(&record, pending.then, now);
            let packages = pending.directive.packages.clone();
            self.hook(
                &mut done,
                HookName::PostInstall,
                &pending.directive,
                &packages,
                true,
            )
            .await;
            self.finish_reboot(done);
            return true;
        }
        let why = match (self.reboot_issued, self.reboot_restored) {
            (Some(at), _) if at.elapsed() < REBOOT_WAIT => return false,
            (Some(_), _) => format!(
                "the reboot command returned but the machine did not go down within {}",
                crate::logic::duration::format(REBOOT_WAIT)
            ),
            (None, true) => "the machine did not reboot: the boot marker survived (the agent was restarted without a reboot)".to_string(),
            // Announced by this process and not started yet: it starts after the report.
            (None, false) => return true,
        };
        warn!(vm = %self.name, %why, "the announced reboot did not happen");
        self.finish_reboot(install::reboot_failed(&record, why, now));
        true
    }

    /// After a report: start the announced reboot once the API server has the announcement.
    pub(super) async fn reboot_if_announced(&mut self) {
        if self.results.reboot.is_none()
            || self.reboot_issued.is_some()
            || self.reboot_restored
            || !self.results.acknowledged
        {
            return;
        }
        info!(vm = %self.name, "rebooting");
        match self.backend.reboot().await {
            Ok(()) => self.reboot_issued = Some(Instant::now()),
            Err(e) => {
                warn!(vm = %self.name, error = %e, "the reboot command failed");
                if let Some(record) = self.results.installation.clone() {
                    let now = self.timing.clock.now();
                    self.finish_reboot(install::reboot_failed(
                        &record,
                        format!("the reboot command failed: {e}"),
                        now,
                    ));
                }
            }
        }
    }

    fn finish_reboot(&mut self, record: GuestInstallation) {
        self.results.installation = Some(record);
        self.results.reboot = None;
        self.reboot_issued = None;
        self.reboot_restored = false;
        self.persist(false);
    }
}
