//! The VirtualMachine's status: the controller's half (phase, conditions, desired state and
//! directives, patch status) and the guest's half (`status.guest`), the two sides of the guest
//! protocol (DESIGN.md §4).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Condition, Text};
use super::profile::EffectiveConfiguration;
use super::vm::PatchMode;

/// Bounds on what a guest may report (the schema enforces them at admission; the guest clips its
/// report to them before writing). Together they keep `status.guest` (two assessments of 500
/// updates each included) under about 1.1 MB, below etcd's 1.5 MiB request limit.
pub mod bounds {
    pub const PACKAGE_NAME: usize = 100;
    pub const VERSION: usize = 64;
    pub const ASSESSED_PACKAGES: usize = 500;
    pub const INSTALLED_PACKAGES: usize = 300;
    pub const SERVICES: usize = 16;
    pub const SERVICE_NAME: usize = 64;
    pub const DIFFERENCES: usize = 32;
    pub const DIFFERENCE: usize = 256;
    pub const PROBLEMS: usize = 32;
    pub const CHANGES: usize = 50;
    pub const LINE: usize = 1024;
    pub const ERROR: usize = 4096;
    pub const ID: usize = 253;
    pub const SHORT: usize = 64;
    pub const KERNEL: usize = 128;
    pub const HASH: usize = 128;
    pub const HOOK_OUTPUT: usize = 2048;
    pub const ADVISORIES: usize = 2;
    pub const CVES: usize = 8;
    pub const CVE: usize = 20;
    pub const UNAVAILABLE: usize = 100;
    pub const REPOSITORY: usize = 512;
}

// The lifecycle phase of a managed VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum VmPhase {
    /// The VM is not running (no heartbeat); onboarding or remediation waits until it runs.
    Pending,
    /// Being configured.
    InProgress,
    /// Compliant with its profile, no drift.
    Configured,
    /// Drifted and remediation failed, or a prerequisite is unmet; the message says why.
    Failed,
    /// Management is disabled.
    NotManaged,
}

/// Observed state of a VirtualMachine. Written by two field managers: the controller (everything
/// but `guest`) and the VM's guest agent (`guest` only).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Pending, InProgress, Configured, Failed or NotManaged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<VmPhase>,
    /// Why the VM is in its phase, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<Text>,
    /// The profile the VM is onboarded to (named in the spec, or chosen by assignment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<Text>,
    /// The effective patch mode, defaults applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch_mode: Option<PatchMode>,
    /// Conditions: Ready (Configured), ProfileResolved, ImageSupported, Heartbeat (the guest renews its Lease), Drifted, Onboarded (configured at least once with this profile).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    // The three large parts are boxed: inline they made every VirtualMachine ~3 KB before any
    // of them was set (the controller caches every VM).
    /// What the controller asks of the guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<Box<DesiredState>>,
    /// What the guest reports. Written only by the VM's own guest agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest: Option<Box<GuestState>>,
    /// Patch status, named as a cloud VM's instance view (assessment, installation, pending patches).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch_status: Option<Box<PatchStatus>>,
    /// The current drift episode and its remediation attempts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remediation: Option<Box<RemediationStatus>>,
    /// The newest change of `status.guest.changes` published as a `ChangeTracked` Event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_tracked_change: Option<String>,
}

/// A drift episode: when it started and the remediation attempts made so far.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RemediationStatus {
    /// When the guest first reported this drift.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift_since: Option<Time>,
    /// Remediation attempts in this episode.
    #[serde(default)]
    pub attempts: i32,
    /// When the last attempt was asked of the guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempt_time: Option<Time>,
}

/// The controller's half of the guest protocol.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DesiredState {
    /// The profile and its generation the configuration comes from.
    #[serde(default)]
    pub profile: Text,
    /// The profile's metadata.generation this configuration was resolved from.
    #[serde(default)]
    pub profile_generation: i64,
    /// The configuration to apply.
    // Shared: every VM of a profile asks for the same configuration, and the controller caches
    // every VM (one copy per profile instead of ~1 KB per VM; see `controller::interned`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configuration: Option<std::sync::Arc<EffectiveConfiguration>>,
    /// Raised for every remediation attempt; the guest re-applies when it changes.
    #[serde(default)]
    pub remediation_attempt: i32,
    /// Whether the guest enforces (false after management is disabled or in ReportOnly mode).
    #[serde(default)]
    pub enforce: bool,
    /// An on-demand or periodic assessment request; the guest assesses when the id changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assessment: Option<AssessmentDirective>,
    /// An installation the guest should run.
    // Boxed, as `release_assessment`: rarely set, and inline they were a third of a cached VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installation: Option<Box<InstallationDirective>>,
    /// An assessment against a release's repository snapshot, asked by the PatchRollout before it
    /// freezes its manifest; answered in `status.guest.releaseAssessment`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_assessment: Option<Box<AssessmentDirective>>,
}

/// Ask the guest to assess available patches.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AssessmentDirective {
    /// The guest assesses when this changes ("periodic-<time>" or "ondemand-<request>").
    pub request_id: Text,
    /// The last on-demand request (annotation `automend.io/assess`) the controller took up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_demand: Option<String>,
    /// Assess against these repository snapshots instead of the machine's repositories as they
    /// are now (a release assessment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<super::release::ReleaseSnapshot>,
}

/// Ask the guest to install a pinned set of packages.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstallationDirective {
    /// The PatchRollout this installation belongs to.
    pub rollout: String,
    /// The wave of the rollout's current ring (from 0).
    pub wave: i32,
    /// Exact package versions to install.
    #[serde(default)]
    pub packages: Vec<PinnedPackage>,
    /// The maintenance window's end: no installation or reboot starts after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_end: Option<Time>,
    /// The latest time an installation may start: the window's end minus the expected length of
    /// an installation (the controller's `--install-duration`). A guest that gets to it later
    /// refuses (`maintenanceWindowExceeded`); the VM is retried in its next window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_start: Option<Time>,
    /// When the guest reboots after installing: IfRequired, Never or Always.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reboot_setting: Option<super::profile::RebootSetting>,
    /// Install only what applies without a reboot (hotpatches).
    #[serde(default)]
    pub hotpatch_only: bool,
    /// Return the packages to the versions recorded before the install.
    #[serde(default)]
    pub rollback: bool,
    /// The hooks to run around this installation (the ring's over the profile's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hooks: Option<super::hooks::PatchHooks>,
    /// Install from these repository snapshots (the manifest's), never editing the machine's
    /// repository configuration; unset: from the machine's repositories.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<super::release::ReleaseSnapshot>,
}

/// A package at an exact version.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PinnedPackage {
    /// Package name (Linux) or KB id (Windows).
    #[schemars(length(min = 1, max = bounds::PACKAGE_NAME))]
    pub name: String,
    /// The exact version.
    #[schemars(length(max = bounds::VERSION))]
    pub version: String,
    /// Critical, Security or Other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classification: Option<super::common::Classification>,
}

/// The guest's half of the guest protocol.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GuestState {
    /// The guest agent's version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = bounds::SHORT))]
    pub agent_version: Option<String>,
    /// OS facts: distribution id and version, kernel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<GuestOs>,
    /// The configuration hash the guest last applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = bounds::HASH))]
    pub applied_hash: Option<String>,
    /// The remediation attempt the guest last acted on.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub applied_attempt: i32,
    /// Per service: compliant or the exact difference (at most 16 services).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = bounds::SERVICES))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub services: Vec<ServiceObservation>,
    /// The OS says a reboot is needed.
    #[serde(default)]
    pub reboot_pending: bool,
    /// The VM's health check passed at the last observation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy: Option<bool>,
    /// When the guest last observed the machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::schema::guest_time")]
    pub last_observed_time: Option<Time>,
    /// The latest patch assessment the guest ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assessment: Option<GuestAssessment>,
    /// The latest installation (or rollback) the guest ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installation: Option<GuestInstallation>,
    /// The latest release assessment (against a release's repository snapshot) the guest ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_assessment: Option<GuestAssessment>,
    /// Problems the agent met on the machine that are not a service's drift (an unreadable
    /// os-release, a damaged state file, a failing health check command), each naming its cause.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = bounds::PROBLEMS), inner(length(max = bounds::LINE)))]
    pub problems: Vec<String>,
    /// Changes change tracking saw (packages, enabled services, tracked files), newest last,
    /// at most 50, each prefixed with the time it was seen.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = bounds::CHANGES), inner(length(max = bounds::LINE)))]
    pub changes: Vec<String>,
    /// When the agent's credential (its ServiceAccount token) expires; the agent renews it
    /// before then. Past it, a silent guest is reported as "credential expired".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::schema::guest_time")]
    pub credential_expires_at: Option<Time>,
}

/// An installation (or rollback) as the guest ran it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GuestInstallation {
    /// The directive this answers: rollout, wave and whether it was a rollback.
    #[schemars(length(max = bounds::ID))]
    pub rollout: String,
    /// The wave of the directive it ran.
    #[schemars(range(min = 0))]
    pub wave: i32,
    /// Whether it returned packages to their previous versions.
    #[serde(default)]
    pub rollback: bool,
    /// Unknown, InProgress, Succeeded, CompletedWithWarnings or Failed.
    pub status: OperationStatus,
    /// When the installation started on the guest (guest clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::schema::guest_time")]
    pub start_time: Option<Time>,
    /// When it finished (guest clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::schema::guest_time")]
    pub finish_time: Option<Time>,
    /// Packages now at the pinned version (at most 300).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = bounds::INSTALLED_PACKAGES))]
    pub installed: Vec<PinnedPackage>,
    /// Packages that failed to install, with the reason in `error` (at most 300).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = bounds::INSTALLED_PACKAGES))]
    pub failed: Vec<PinnedPackage>,
    /// Pinned versions the repositories no longer offer (reason PinnedVersionUnavailable), each
    /// with the repositories searched and the versions they offer instead (at most 100; these are
    /// in `failed` too).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = bounds::UNAVAILABLE))]
    pub unavailable: Vec<UnavailablePackage>,
    /// The versions in place before the install, for a rollback (absent: the package was not
    /// installed; at most 300).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = bounds::INSTALLED_PACKAGES))]
    pub previous_versions: Vec<PinnedPackage>,
    /// A reboot is still needed for the installed patches to take effect.
    #[serde(default)]
    pub reboot_pending: bool,
    /// The installation did not finish before the window's end (or its reboot would not have).
    #[serde(default)]
    pub maintenance_window_exceeded: bool,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = bounds::ERROR))]
    pub error: Option<String>,
    /// Why it failed, in one word: PreInstallHookFailed, PreRebootHookFailed,
    /// PostInstallHookFailed, RebootFailed or PinnedVersionUnavailable (absent for other package
    /// failures).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = bounds::SHORT))]
    pub reason: Option<String>,
    /// The guest announced a reboot at this time and is restarting the machine (status
    /// InProgress until it is back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::schema::guest_time")]
    pub reboot_started_at: Option<Time>,
    /// The machine came back from the installation's reboot at this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::schema::guest_time")]
    pub rebooted_at: Option<Time>,
    /// The hooks that ran, in order (at most 3).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 3))]
    pub hooks: Vec<super::hooks::HookRun>,
}

/// A patch assessment as the guest ran it. Assessing never installs anything.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GuestAssessment {
    /// The directive's request id this answers.
    #[schemars(length(max = bounds::ID))]
    pub request_id: String,
    /// Unknown, InProgress, Succeeded, CompletedWithWarnings or Failed.
    pub status: OperationStatus,
    /// When the assessment started (guest clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::schema::guest_time")]
    pub start_time: Option<Time>,
    /// When it finished (guest clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::schema::guest_time")]
    pub finish_time: Option<Time>,
    /// Updates available, with their classification (at most 500).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = bounds::ASSESSED_PACKAGES))]
    pub packages: Vec<AvailablePackage>,
    /// The OS says a reboot is needed.
    #[serde(default)]
    pub reboot_pending: bool,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = bounds::ERROR))]
    pub error: Option<String>,
    /// The repository snapshot assessed (a release assessment), as `YYYYMMDDTHHMMSSZ`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = bounds::SHORT))]
    pub snapshot: Option<String>,
}

/// A pinned version the repositories do not offer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UnavailablePackage {
    /// The package.
    #[schemars(length(min = 1, max = bounds::PACKAGE_NAME))]
    pub name: String,
    /// The pinned version asked for.
    #[schemars(length(max = bounds::VERSION))]
    pub version: String,
    /// The repositories searched (their URLs, or the snapshot's).
    #[schemars(length(max = bounds::REPOSITORY))]
    pub repositories: String,
    /// The versions they offer instead.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8), inner(length(max = bounds::VERSION)))]
    pub offered: Vec<String>,
}

/// An available update.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AvailablePackage {
    /// Package name (Linux) or KB id (Windows).
    #[schemars(length(min = 1, max = bounds::PACKAGE_NAME))]
    pub name: String,
    /// The version available.
    #[schemars(length(max = bounds::VERSION))]
    pub version: String,
    /// The version installed now, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = bounds::VERSION))]
    pub installed_version: Option<String>,
    /// The update's classification.
    pub classification: super::common::Classification,
    /// When it was published, where the repository says (dnf: the advisory's issue date).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::schema::guest_time")]
    pub published: Option<Time>,
    /// The advisories that ship it (dnf updateinfo ids; at most 2).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = bounds::ADVISORIES), inner(length(max = bounds::SHORT)))]
    pub advisories: Vec<String>,
    /// The CVE ids its advisories fix (at most 8).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = bounds::CVES), inner(length(max = bounds::CVE)))]
    pub cves: Vec<String>,
}

/// Guest OS facts.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GuestOs {
    /// os-release ID, e.g. "debian", "ubuntu", "rocky".
    #[serde(default)]
    #[schemars(length(max = bounds::SHORT))]
    pub id: String,
    /// os-release VERSION_ID.
    #[serde(default)]
    #[schemars(length(max = bounds::SHORT))]
    pub version: String,
    /// The running kernel release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = bounds::KERNEL))]
    pub kernel: Option<String>,
}

/// One service as observed on the guest.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceObservation {
    /// The best-practice service.
    #[schemars(length(min = 1, max = bounds::SERVICE_NAME))]
    pub name: String,
    /// Whether the machine matches the desired configuration of the service.
    pub compliant: bool,
    /// Each difference between desired and observed, e.g. "sshd PermitRootLogin: want no, have
    /// yes" (at most 32, each at most 256 characters).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = bounds::DIFFERENCES), inner(length(max = bounds::DIFFERENCE)))]
    pub differences: Vec<String>,
}

/// Patch status, named as a cloud VM's instance view.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PatchStatus {
    /// The last assessment's result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_patch_summary: Option<AvailablePatchSummary>,
    /// The last installation's result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_patch_installation_summary: Option<LastPatchInstallationSummary>,
}

// Outcome of an operation on the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum OperationStatus {
    Unknown,
    InProgress,
    Succeeded,
    CompletedWithWarnings,
    Failed,
}

/// The latest assessment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AvailablePatchSummary {
    /// Unknown, InProgress, Succeeded, Failed or CompletedWithWarnings.
    pub status: OperationStatus,
    /// Identifies the assessment (a request id or "periodic-<unix time>").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assessment_activity_id: Option<String>,
    /// Critical and security patches available.
    #[serde(default)]
    pub critical_and_security_patch_count: i32,
    /// Other patches available.
    #[serde(default)]
    pub other_patch_count: i32,
    /// The OS says a reboot is needed.
    #[serde(default)]
    pub reboot_pending: bool,
    /// When the assessment started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the assessment finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_modified_time: Option<Time>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The latest installation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LastPatchInstallationSummary {
    /// Unknown, InProgress, Succeeded, Failed or CompletedWithWarnings.
    pub status: OperationStatus,
    /// Patches installed.
    #[serde(default)]
    pub installed_patch_count: i32,
    /// Patches of the release not yet installed.
    #[serde(default)]
    pub pending_patch_count: i32,
    /// Patches that failed to install.
    #[serde(default)]
    pub failed_patch_count: i32,
    /// Patches left out by the rollout's exclude list.
    #[serde(default)]
    pub excluded_patch_count: i32,
    /// Patches of classifications the rollout does not install.
    #[serde(default)]
    pub not_selected_patch_count: i32,
    /// Pinned versions the VM's repositories no longer offer (PinnedVersionUnavailable; counted
    /// in failedPatchCount too).
    #[serde(default)]
    pub unavailable_patch_count: i32,
    /// The maintenance window ended before the installation could finish or start.
    #[serde(default)]
    pub maintenance_window_exceeded: bool,
    /// When the installation started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When it last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_modified_time: Option<Time>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
