//! PatchRollout: one release moving through the rings of its namespace.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Classification, Condition, default_classifications};
use super::schema;
use super::vm_status::PinnedPackage;

/// The desired state of the PatchRollout: the release, what it installs and how it is steered.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    doc = "One release moving through the UpdateRings of its namespace, ring by ring and wave by wave.\n\nThe controller creates one on the release cadence (by default the second Tuesday of each month); create one by hand for an out-of-band release. When its first ring starts, the approved set of packages is frozen in `status.manifest`, and every later ring installs exactly that set.",
    group = "automend.io",
    version = "v1alpha1",
    kind = "PatchRollout",
    plural = "patchrollouts",
    shortname = "rollout",
    shortname = "pr",
    category = "automend",
    namespaced,
    status = "PatchRolloutStatus",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Release","type":"string","description":"When the release was published (RFC 3339; a date column would show <invalid> for a future release)","jsonPath":".spec.releaseTime"}"#,
    printcolumn = r#"{"name":"Ring","type":"string","jsonPath":".status.currentRing"}"#,
    printcolumn = r#"{"name":"Patched","type":"integer","jsonPath":".status.slo.onManifest"}"#,
    printcolumn = r#"{"name":"Eligible","type":"integer","jsonPath":".status.slo.eligible"}"#,
    printcolumn = r#"{"name":"Paused","type":"boolean","jsonPath":".spec.paused"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct PatchRolloutSpec {
    /// When the release was published (RFC 3339). Patches published after it are not part of this
    /// release; ring deferrals count from it. Cannot change.
    #[x_kube(validation = schema::immutable("releaseTime"))]
    pub release_time: Time,

    /// Classifications installed (default Critical and Security); the rest are counted as not
    /// selected. Cannot change.
    #[serde(default = "default_classifications")]
    #[schemars(length(min = 1), extend("x-kubernetes-list-type" = "set"))]
    #[x_kube(validation = schema::immutable("classifications"))]
    pub classifications: Vec<Classification>,

    /// Skip ring deferrals (an expedited release); health gates still apply.
    #[serde(default)]
    pub expedite: bool,

    /// A paused rollout starts no new installations; those running finish.
    #[serde(default)]
    pub paused: bool,

    /// When a ring's failures exceed its health gate, the failed wave's guests return their packages
    /// to the versions recorded before installing.
    #[serde(default)]
    pub rollback_on_failure: bool,

    /// Roll the release back: every VM this rollout installed on returns its packages to the
    /// versions recorded before the install, and nothing more is installed (phase RolledBack).
    /// `kubectl automend rollback` sets it.
    #[serde(default)]
    pub rollback: bool,

    /// Abort the rollout: nothing more is installed, nothing is rolled back, and the next release
    /// may start (phase Aborted). Installations already running finish. `kubectl automend abort`
    /// sets it.
    #[serde(default)]
    pub abort: bool,

    /// Raise by one to retry: the VMs that failed so far get another attempt in new waves, and a
    /// rollout halted by its health gate goes on. `kubectl automend retry` raises it. Only counts up.
    #[serde(default)]
    #[schemars(range(min = 0))]
    #[x_kube(validation = Rule::new("self >= oldSelf").message("retry only counts up: raise it by one to retry"))]
    pub retry: i32,

    /// Rings that need not wait: their deferral and bake time are skipped (health gates still
    /// apply). `kubectl automend promote` adds the current ring.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), extend("x-kubernetes-list-type" = "set"))]
    pub promoted_rings: Vec<String>,

    /// Rings this rollout passes over: their VMs not yet patched are not patched by it, and the next
    /// ring starts without waiting for them (phase Skipped). `kubectl automend promote --skip-ring`
    /// adds the current ring.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), extend("x-kubernetes-list-type" = "set"))]
    pub skipped_rings: Vec<String>,

    /// Package names (Linux) or KB ids (Windows, e.g. "KB5034441") that are never installed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), extend("x-kubernetes-list-type" = "set"))]
    pub exclude: Vec<String>,

    /// The service level objective the rollout is measured against.
    #[serde(default)]
    pub slo: SloTarget,
}

/// A service level objective: this share of eligible VMs on the release within this time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SloTarget {
    /// Percentage of eligible VMs, 1 to 100 (default 95).
    #[serde(default = "SloTarget::default_percent")]
    #[schemars(range(min = 1, max = 100))]
    pub target_percent: i32,
    /// Time from release, 1h to 2160h (default 504h, 21 days).
    #[serde(default = "SloTarget::default_within")]
    #[x_kube(validation = schema::duration_between("1h", "2160h"))]
    pub within: String,
}

impl SloTarget {
    fn default_percent() -> i32 {
        95
    }
    fn default_within() -> String {
        "504h".into()
    }
}

impl Default for SloTarget {
    fn default() -> Self {
        Self {
            target_percent: Self::default_percent(),
            within: Self::default_within(),
        }
    }
}

// The phase of a rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum RolloutPhase {
    /// Before the release time, or waiting for an earlier rollout.
    Pending,
    Progressing,
    /// `spec.paused`: no new wave starts.
    Paused,
    /// A health gate stopped it: retry, roll back or abort it.
    Halted,
    /// Every ring passed its health gate.
    Succeeded,
    /// `spec.rollback`: its VMs returned to the versions from before the install.
    RolledBack,
    /// `spec.abort`: stopped, nothing rolled back.
    Aborted,
}

// The phase of one ring within a rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum RingPhase {
    /// Waiting for its deferral or for the previous ring.
    Waiting,
    Progressing,
    /// The last wave finished; waiting out the bake time.
    Baking,
    Paused,
    Halted,
    Succeeded,
    /// Passed over (`spec.skippedRings`).
    Skipped,
    RolledBack,
}

/// Observed state of a PatchRollout.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PatchRolloutStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Pending (no ring started), Progressing, Paused, Halted (a health gate stopped it: retry, rollback or abort), Succeeded (every ring done), RolledBack, Aborted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RolloutPhase>,
    /// The last `spec.retry` the controller acted on.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub observed_retry: i32,
    /// The ring currently receiving the release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_ring: Option<String>,
    /// The pinned release manifest, frozen when the first ring started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<ReleaseManifest>,
    /// Per ring progress, in ring order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub rings: Vec<RingProgress>,
    /// Progress against the service level objective.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slo: Option<SloStatus>,
    /// The geo-pairs the controller was configured with ("region-a/region-b"): paired regions
    /// are never patched in the same phase.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub region_pairs: Vec<String>,
    /// Progressing, Paused, Halted, SLOAtRisk and DeadlineMissed, with reasons.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// The approved set of a release, per image family.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseManifest {
    /// When the manifest was frozen (the first ring's start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frozen_time: Option<Time>,
    /// The approved packages of each image family.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["imageFamily"]))]
    pub families: Vec<ManifestFamily>,
    /// Updates the assessments offered that the release leaves out, and why: published after the
    /// release time, not yet approved, excluded, not included, outside the classifications (at
    /// most 500; `leftOutTruncated` counts the rest).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left_out: Vec<super::release::LeftOutPackage>,
    /// Left-out updates not listed in `leftOut` (it keeps 500).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub left_out_truncated: i32,
}

/// The packages of one image family (e.g. "Canonical/UbuntuServer/22.04-LTS").
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManifestFamily {
    /// Publisher/offer/SKU of the image, e.g. "Canonical/0001-com-ubuntu-server-jammy/22_04-lts-gen2".
    pub image_family: String,
    /// The repository snapshot every ring installs from (UTC, `YYYYMMDDTHHMMSSZ`: the release
    /// time), when the family's VMs name snapshot templates (`updateManagement.snapshots`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// Packages with the exact versions every ring installs.
    #[serde(default)]
    pub packages: Vec<ManifestPackage>,
}

/// A package of the release at its exact version, with what the repository said of it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManifestPackage {
    /// Package name (Linux) or KB id (Windows).
    pub name: String,
    /// The exact version.
    pub version: String,
    /// Critical, Security or Other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classification: Option<super::common::Classification>,
    /// When the update was published, where the repository says (dnf's advisory issue date).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published: Option<Time>,
    /// The advisories that ship it (dnf updateinfo ids such as "RLSA-2026:1234").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub advisories: Vec<String>,
    /// The CVE ids it fixes, where the advisories name them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cves: Vec<String>,
}

impl ManifestPackage {
    /// The package at its version, as a directive carries it.
    pub fn pinned(&self) -> PinnedPackage {
        PinnedPackage {
            name: self.name.clone(),
            version: self.version.clone(),
            classification: self.classification,
        }
    }
}

/// One ring's progress.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RingProgress {
    /// The UpdateRing's name.
    pub name: String,
    /// Waiting, Progressing, Baking, Paused, Halted, Succeeded, Skipped or RolledBack.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RingPhase>,
    /// The ring does not start before this time (release time plus deferral, unless expedited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_not_before: Option<Time>,
    /// When the ring's first wave started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_time: Option<Time>,
    /// When the ring finished (its bake time included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_time: Option<Time>,
    /// When the ring should have finished: its start-not-before plus the ring's deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Time>,
    /// The ring was promoted (`spec.promotedRings`): no deferral, no bake.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub promoted: bool,
    /// The ring passed its deadline unfinished (an Event was recorded).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deadline_missed: bool,
    /// VMs of the ring that take part in the rollout.
    #[serde(default)]
    pub total: i32,
    /// VMs patched and healthy.
    #[serde(default)]
    pub succeeded: i32,
    /// VMs whose install failed or that were unhealthy after it.
    #[serde(default)]
    pub failed: i32,
    /// VMs installing or waiting out their health check.
    #[serde(default)]
    pub in_progress: i32,
    /// The ring's waves, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waves: Vec<Wave>,
    /// VMs whose installation failed in this rollout: their attempts, and when the next one may
    /// start (the ring's `maxAttempts` bounds them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub retries: Vec<InstallRetry>,
}

/// A VM whose installation failed, and its attempts.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstallRetry {
    /// The VM.
    pub name: String,
    /// Failed installation attempts so far.
    pub attempts: i32,
    /// The wave of the last failed attempt.
    pub last_failed_wave: i32,
    /// Why the last attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When the next attempt may start (its next maintenance window); unset when no attempt is
    /// left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt: Option<Time>,
}

/// One wave of installations.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Wave {
    /// The wave's position in its ring, from 0.
    pub index: i32,
    /// Member VM names.
    #[serde(default)]
    pub members: Vec<String>,
    /// When the wave's directives were written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_time: Option<Time>,
    /// When every member finished (succeeded or failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_time: Option<Time>,
    /// Members patched and healthy.
    #[serde(default)]
    pub succeeded: i32,
    /// Members that failed.
    #[serde(default)]
    pub failed: i32,
    /// Members that failed (install failed, or unhealthy before `healthyFor` passed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_members: Vec<String>,
    /// Members that failed here and were given another attempt by a retry (`spec.retry`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retried: Vec<String>,
    /// Members whose guest reported a successful install, with when the controller first saw it:
    /// `healthyFor` counts from then, never from a time the guest reports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub installed_seen: Vec<SeenInstall>,
    /// Members whose guest announced a reboot, with when the controller first saw it: the ring's
    /// `healthGate.rebootTimeout` counts from then.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reboots_seen: Vec<SeenInstall>,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

/// When the controller first saw a member's successful install.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SeenInstall {
    /// The member VM.
    pub name: String,
    /// When the controller first saw it.
    pub time: Time,
}

/// Progress against the SLO.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SloStatus {
    /// Eligible VMs: heartbeat within 5 days, supported image, AutomaticByPlatform.
    #[serde(default)]
    pub eligible: i32,
    /// Eligible VMs on the release's manifest.
    #[serde(default)]
    pub on_manifest: i32,
    /// on_manifest / eligible, as a percentage with one decimal ("96.4").
    #[serde(default)]
    pub percent: String,
    /// The deadline: release time plus `spec.slo.within`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Time>,
    /// Whether the projection says the target will be met.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub projected_to_meet: Option<bool>,
}
