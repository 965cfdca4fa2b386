//! What a guest does on its machine (`Backend`): the agent's backends do it for real, the
//! simulator in memory; and what assessments and installations return.

use std::future::Future;

use crate::api::{
    AvailablePackage, EffectiveConfiguration, GuestOs, Hook, HookName, HookRun, PinnedPackage,
    ReleaseSnapshot, ServiceObservation, UnavailablePackage, VirtualMachine,
};

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
    /// List the updates available (never installs anything): from the machine's repositories,
    /// or from a release's repository snapshot.
    fn assess(
        &mut self,
        snapshot: Option<&ReleaseSnapshot>,
    ) -> impl Future<Output = Result<Assessed, String>> + Send;
    /// Put each package at exactly the given version and remove the named packages (from the
    /// snapshot when one is given); report what was in place before, so that a rollback can
    /// return to it, and each pinned version the repositories do not offer.
    fn install(
        &mut self,
        packages: &[PinnedPackage],
        remove: &[String],
        snapshot: Option<&ReleaseSnapshot>,
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
    /// Run a patch hook (the agent: `/bin/sh -c` with the environment and the time limit).
    fn run_hook(
        &mut self,
        hook: HookName,
        _spec: &Hook,
        _env: Vec<(String, String)>,
    ) -> impl Future<Output = HookRun> + Send {
        async move {
            HookRun {
                hook,
                exit_code: Some(0),
                succeeded: true,
                output: String::new(),
            }
        }
    }
    /// Leave the boot marker before a reboot: a file under `/run`, which every boot clears
    /// (on VMs and containers alike; `boot_id` does not change inside a container).
    fn mark_boot(&mut self, _what: &str) -> Result<(), String> {
        Err("this guest cannot reboot".into())
    }
    /// Whether the boot marker is still there, i.e. the machine has not booted since.
    fn boot_marked(&self) -> bool {
        false
    }
    /// Start the reboot (it returns before the machine goes down).
    fn reboot(&mut self) -> impl Future<Output = Result<(), String>> + Send {
        async { Err("this guest cannot reboot".into()) }
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
    /// Pinned versions the repositories do not offer (also in `failed`).
    pub unavailable: Vec<UnavailablePackage>,
}
