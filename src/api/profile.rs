//! ConfigurationProfile: a best-practice configuration for a class of VMs (Automanage's environment
//! plus preferences).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Classification, Condition, DayOfWeek, MaintenanceWindow};
use super::schema;

/// The desired state of the ConfigurationProfile: environment, preferences, remediation and assignment.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    doc = "A best-practice configuration that VirtualMachines are onboarded to, kept on and watched for drift.\n\nThe environment decides which services are on by default (Production: all seven; DevTest: all but backup); preferences adjust each service within allowed ranges. The controller resolves the two into `status.effectiveConfiguration`, which is what every VM using the profile is configured with.",
    group = "automend.io",
    version = "v1alpha1",
    kind = "ConfigurationProfile",
    plural = "configurationprofiles",
    shortname = "cprof",
    shortname = "profile",
    category = "automend",
    status = "ConfigurationProfileStatus",
    printcolumn = r#"{"name":"Environment","type":"string","jsonPath":".spec.environment"}"#,
    printcolumn = r#"{"name":"Remediation","type":"string","jsonPath":".spec.remediation.mode"}"#,
    printcolumn = r#"{"name":"VMs","type":"integer","jsonPath":".status.vmCount"}"#,
    printcolumn = r#"{"name":"Configured","type":"integer","jsonPath":".status.phaseCounts.configured"}"#,
    printcolumn = r#"{"name":"Failed","type":"integer","jsonPath":".status.phaseCounts.failed"}"#,
    printcolumn = r#"{"name":"Hash","type":"string","priority":1,"jsonPath":".status.effectiveConfiguration.hash"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "self.environment != 'DevTest' || !has(self.preferences) || !has(self.preferences.backup) || !has(self.preferences.backup.enabled) || !self.preferences.backup.enabled"
).message("DevTest profiles never back up: backup cannot be enabled when spec.environment is DevTest (use a Production profile)").field_path(".preferences.backup.enabled"))]
pub struct ConfigurationProfileSpec {
    /// The environment this profile configures: Production (every best-practice service, backup
    /// included) or DevTest (the same without backup, which cannot be enabled).
    pub environment: Environment,

    /// Per-service overrides of the environment's defaults, each within its allowed range.
    #[serde(default)]
    pub preferences: Preferences,

    /// What the controller does when a VM drifts from this profile.
    #[serde(default)]
    pub remediation: Remediation,

    /// Enable at scale: VMs matching these selectors that name no profile are onboarded with this one.
    /// When several profiles match a VM, the one with the highest `priority` wins, then the
    /// alphabetically first name; the VM's status reports the overlap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignment: Option<Assignment>,
}

impl ConfigurationProfileSpec {
    /// A profile of the environment's defaults: no preferences, default remediation, no assignment.
    pub fn with_defaults(environment: Environment) -> Self {
        ConfigurationProfileSpec {
            environment,
            preferences: Preferences::default(),
            remediation: Remediation::default(),
            assignment: None,
        }
    }
}

// The environment of a profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum Environment {
    /// Production: every best-practice service, including daily backup with 180 days of retention.
    Production,
    /// Dev/Test: every service but backup, which cannot be enabled.
    DevTest,
}

/// Per-service preferences. A service left out keeps its environment default.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Preferences {
    /// Update management: assessment, classifications, reboots and the maintenance window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_management: Option<UpdateManagementPreferences>,
    /// Backup: schedule and retention. Production only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupPreferences>,
    /// Monitoring: the metrics exporter service on the guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitoring: Option<ServiceToggle>,
    /// Antimalware: signature updates and a scheduled scan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub antimalware: Option<AntimalwarePreferences>,
    /// Security baseline: sshd and sysctl hardening and file permissions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_baseline: Option<SecurityBaselinePreferences>,
    /// Change tracking: inventory of packages, services and tracked files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change_tracking: Option<ChangeTrackingPreferences>,
    /// Time synchronisation: chrony or systemd-timesyncd with the configured servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_sync: Option<TimeSyncPreferences>,
}

/// A service that only has an on/off preference.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceToggle {
    /// Turn the service on or off; unset keeps the environment default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

/// Update management preferences.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpdateManagementPreferences {
    /// Turn the service on or off; unset keeps the environment default (on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Classifications installed by rollouts that do not name their own (default Critical, Security).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1), extend("x-kubernetes-list-type" = "set"))]
    pub classifications: Option<Vec<Classification>>,
    /// When the guest reboots after installing: IfRequired (default), Never or Always.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reboot_setting: Option<RebootSetting>,
    /// How often the guest assesses available patches, from 1h to 168h (default 24h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = schema::duration_between("1h", "168h"))]
    pub assessment_interval: Option<String>,
    /// When installations may start, in each VM's own time zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance_window: Option<MaintenanceWindow>,
    /// Install hotpatch-eligible fixes without a reboot on images that support hotpatching.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hotpatch: Option<bool>,
    /// Commands the guest agent runs around each installation (an UpdateRing may override each):
    /// preInstall, preReboot (only when a reboot follows) and postInstall (after the reboot, if
    /// any). Each runs with `/bin/sh -c` as root, killed at its timeout, with the environment
    /// AUTOMEND_HOOK (the hook's name), AUTOMEND_ROLLOUT, AUTOMEND_WAVE, AUTOMEND_ROLLBACK
    /// (true/false), AUTOMEND_PACKAGES ("name=version" separated by spaces) and AUTOMEND_REBOOT
    /// (true when a reboot follows, or for postInstall happened). A failing preInstall skips the
    /// install (reason PreInstallHookFailed); a failing preReboot leaves the reboot pending and
    /// fails the VM (PreRebootHookFailed); a failing postInstall fails the VM
    /// (PostInstallHookFailed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hooks: Option<super::hooks::PatchHooks>,
    /// Repositories whose dated snapshots releases install from (an UpdateRing may replace the
    /// list): the manifest freezes the snapshot at the release time, and every ring assesses and
    /// installs from that snapshot, so versions a repository later replaces stay installable and
    /// nothing published after the release gets in. The agent reads the snapshot through a
    /// sources list of its own for that operation, never editing the machine's repository
    /// configuration. Without snapshots, a pinned version a repository no longer offers is
    /// reported as PinnedVersionUnavailable. At most 16.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    pub snapshots: Option<Vec<super::release::SnapshotRepository>>,
    /// Which updates releases approve beyond their classifications (an UpdateRing may override
    /// each field): approveAfter, include and exclude patterns. What it leaves out is listed in
    /// the PatchRollout's `status.manifest.leftOut` with the reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<super::release::ApprovalPolicy>,
}

// When a guest reboots after installing patches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum RebootSetting {
    /// Reboot only when an installed patch requires it.
    IfRequired,
    /// Never reboot; the VM reports a pending reboot instead.
    Never,
    /// Always reboot after an installation.
    Always,
}

/// Backup preferences.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupPreferences {
    /// Turn backup on or off; unset keeps the environment default (on for Production). DevTest
    /// profiles cannot enable it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// How many days backups are kept, from 7 to 3650 (default 180).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 7, max = 3650))]
    pub retention_days: Option<i32>,
    /// When backups run (default daily at 02:00).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<BackupSchedule>,
}

/// When backups run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.frequency == 'Weekly' ? has(self.daysOfWeek) && size(self.daysOfWeek) > 0 : !has(self.daysOfWeek) || size(self.daysOfWeek) == 0")
        .message("daysOfWeek is required (at least one day) when frequency is Weekly, and not allowed when frequency is Daily")
        .field_path(".daysOfWeek")
)]
pub struct BackupSchedule {
    /// Daily or Weekly.
    pub frequency: BackupFrequency,
    /// The days a Weekly backup runs; not allowed for Daily.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub days_of_week: Vec<DayOfWeek>,
    /// Local start time, 24-hour "HH:MM".
    #[x_kube(validation = schema::hhmm())]
    pub time: String,
}

// How often backups run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum BackupFrequency {
    Daily,
    Weekly,
}

/// Antimalware preferences.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AntimalwarePreferences {
    /// Turn antimalware on or off; unset keeps the environment default (on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Local time of the daily scan, 24-hour "HH:MM" (default 02:00).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = schema::hhmm())]
    pub scan_time: Option<String>,
    /// Paths the scan skips.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub exclusions: Vec<String>,
}

/// Security baseline preferences.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecurityBaselinePreferences {
    /// Turn the baseline on or off; unset keeps the environment default (on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Baseline rule ids that are observed but not enforced (e.g. "sshd.PasswordAuthentication").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub exempt_rules: Vec<String>,
}

/// Change tracking preferences.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChangeTrackingPreferences {
    /// Turn change tracking on or off; unset keeps the environment default (on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Absolute paths of extra files whose changes are reported.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "set", "items" = {"type": "string", "pattern": "^/", "maxLength": 4096}))]
    pub tracked_files: Vec<String>,
}

/// Time synchronisation preferences.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TimeSyncPreferences {
    /// Turn time synchronisation on or off; unset keeps the environment default (on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// NTP servers (host names or addresses); default the distribution's pool.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8), extend("x-kubernetes-list-type" = "set"))]
    pub servers: Vec<String>,
}

/// Drift remediation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("duration(self.maxBackoff) >= duration(self.initialBackoff)")
    .message("maxBackoff must be at least initialBackoff")
    .field_path(".maxBackoff"))]
pub struct Remediation {
    /// Auto (default): drift is corrected. ReportOnly: drift is reported, never corrected.
    #[serde(default = "Remediation::default_mode")]
    pub mode: RemediationMode,
    /// Attempts before the VM is marked Failed, from 1 to 10 (default 3).
    #[serde(default = "Remediation::default_max_attempts")]
    #[schemars(range(min = 1, max = 10))]
    pub max_attempts: i32,
    /// Wait before the second attempt, doubling after each failure; from 1s to 1h (default 30s).
    #[serde(default = "Remediation::default_initial_backoff")]
    #[x_kube(validation = schema::duration_between("1s", "1h"))]
    pub initial_backoff: String,
    /// Longest wait between attempts, from 1s to 24h (default 10m).
    #[serde(default = "Remediation::default_max_backoff")]
    #[x_kube(validation = schema::duration_between("1s", "24h"))]
    pub max_backoff: String,
}

impl Remediation {
    fn default_mode() -> RemediationMode {
        RemediationMode::Auto
    }
    fn default_max_attempts() -> i32 {
        3
    }
    fn default_initial_backoff() -> String {
        "30s".into()
    }
    fn default_max_backoff() -> String {
        "10m".into()
    }
}

impl Default for Remediation {
    fn default() -> Self {
        Self {
            mode: Self::default_mode(),
            max_attempts: Self::default_max_attempts(),
            initial_backoff: Self::default_initial_backoff(),
            max_backoff: Self::default_max_backoff(),
        }
    }
}

// What happens on drift.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum RemediationMode {
    /// Drift is corrected automatically, with backoff, up to maxAttempts.
    Auto,
    /// Drift is reported (condition and Event) and never corrected.
    ReportOnly,
}

/// Which VMs are onboarded with this profile when they name none.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Assignment {
    /// Namespaces whose VMs are considered (by namespace labels); unset means every namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::label_selector")]
    pub namespace_selector: Option<LabelSelector>,
    /// VMs (by their labels) that are onboarded; an empty selector matches every VM.
    #[schemars(schema_with = "schema::label_selector")]
    pub selector: LabelSelector,
    /// Decides overlaps: the matching profile with the highest priority wins, then the first name
    /// alphabetically. From -1000 to 1000 (default 0).
    #[serde(default)]
    #[schemars(range(min = -1000, max = 1000))]
    pub priority: i32,
}

/// Observed state of a ConfigurationProfile.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigurationProfileStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The environment defaults merged with the preferences: what VMs using this profile get.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective_configuration: Option<EffectiveConfiguration>,
    /// How many VMs use this profile.
    #[serde(default)]
    pub vm_count: i32,
    /// VMs using this profile, by phase.
    #[serde(default)]
    pub phase_counts: PhaseCounts,
    /// Ready, and Overlapping when assignment selectors of several profiles match one VM.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// VMs by phase.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PhaseCounts {
    /// VMs waiting for a heartbeat (not running).
    #[serde(default)]
    pub pending: i32,
    /// VMs being configured.
    #[serde(default)]
    pub in_progress: i32,
    /// VMs compliant with the profile, with no drift.
    #[serde(default)]
    pub configured: i32,
    /// VMs whose configuration failed or whose prerequisites are unmet.
    #[serde(default)]
    pub failed: i32,
    /// VMs with management disabled.
    #[serde(default)]
    pub not_managed: i32,
}

/// A fully resolved configuration: every service with every setting decided, and a stable hash.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EffectiveConfiguration {
    /// A stable hash of `services`: equal configurations have equal hashes.
    pub hash: String,
    /// The environment the configuration was resolved from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<Environment>,
    /// Every best-practice service, resolved.
    #[serde(default)]
    pub services: EffectiveServices,
}

/// Every best-practice service with its resolved settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EffectiveServices {
    /// Patch assessment and installation.
    pub update_management: EffectiveUpdateManagement,
    /// Backup of the VM.
    pub backup: EffectiveBackup,
    /// Guest monitoring.
    pub monitoring: EffectiveToggle,
    /// Antimalware scanning.
    pub antimalware: EffectiveAntimalware,
    /// The OS security baseline.
    pub security_baseline: EffectiveSecurityBaseline,
    /// Change tracking of files and packages.
    pub change_tracking: EffectiveChangeTracking,
    /// Time synchronization.
    pub time_sync: EffectiveTimeSync,
}

/// A resolved on/off service.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EffectiveToggle {
    /// Whether the service is on.
    pub enabled: bool,
}

/// Resolved update management.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EffectiveUpdateManagement {
    /// Whether patches are assessed and installed.
    pub enabled: bool,
    /// Classifications that are installed.
    #[serde(default)]
    pub classifications: Vec<Classification>,
    /// When the guest reboots after installing: IfRequired, Never or Always.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reboot_setting: Option<RebootSetting>,
    /// How often the guest assesses available patches (Go duration).
    #[serde(default)]
    pub assessment_interval: String,
    /// When installations may run, in the VM's time zone (unset: off-peak hours).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance_window: Option<MaintenanceWindow>,
    /// Whether hotpatches are installed where the image supports them.
    #[serde(default)]
    pub hotpatch: bool,
    /// Commands the guest runs before and after installing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hooks: Option<super::hooks::PatchHooks>,
    /// Repositories read from their dated snapshots during a release.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub snapshots: Vec<super::release::SnapshotRepository>,
    /// The approval policy of releases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<super::release::ApprovalPolicy>,
}

/// Resolved backup.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EffectiveBackup {
    /// Whether the VM is backed up.
    pub enabled: bool,
    /// How many days backups are kept.
    #[serde(default)]
    pub retention_days: i32,
    /// When backups run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<BackupSchedule>,
}

/// Resolved antimalware.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EffectiveAntimalware {
    /// Whether antimalware scanning is on.
    pub enabled: bool,
    /// When the daily scan runs (HH:MM, the VM's time zone).
    #[serde(default)]
    pub scan_time: String,
    /// Paths left out of scans.
    #[serde(default)]
    pub exclusions: Vec<String>,
}

/// Resolved security baseline.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EffectiveSecurityBaseline {
    /// Whether the security baseline is enforced.
    pub enabled: bool,
    /// Baseline rules not enforced.
    #[serde(default)]
    pub exempt_rules: Vec<String>,
}

/// Resolved change tracking.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EffectiveChangeTracking {
    /// Whether changes are tracked.
    pub enabled: bool,
    /// Files whose changes are tracked.
    #[serde(default)]
    pub tracked_files: Vec<String>,
}

/// Resolved time synchronisation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EffectiveTimeSync {
    /// Whether time synchronization is configured.
    pub enabled: bool,
    /// NTP servers.
    #[serde(default)]
    pub servers: Vec<String>,
}
