//! UpdateRing: a group of VMs that receives a release together.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Condition, MaintenanceWindow};
use super::schema;

/// The desired state of the UpdateRing: order, members, deferral, deadline, concurrency and health gate.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    doc = "A group of VirtualMachines in this namespace that receives each release together, like Windows Autopatch's Test, First, Fast and Broad rings.\n\nRings receive a release in ascending `order`, each after its deferral and after the previous ring passed its health gate and bake time. Members are chosen by `selector`, or as a `share` (percentage) of the VMs that no selector ring takes, by a stable hash of each VM's uid.",
    group = "automend.io",
    version = "v1alpha1",
    kind = "UpdateRing",
    plural = "updaterings",
    shortname = "ring",
    category = "automend",
    namespaced,
    status = "UpdateRingStatus",
    printcolumn = r#"{"name":"Order","type":"integer","jsonPath":".spec.order"}"#,
    printcolumn = r#"{"name":"Deferral","type":"string","jsonPath":".spec.deferral"}"#,
    printcolumn = r#"{"name":"Deadline","type":"string","jsonPath":".spec.deadline"}"#,
    printcolumn = r#"{"name":"Paused","type":"boolean","jsonPath":".spec.paused"}"#,
    printcolumn = r#"{"name":"VMs","type":"integer","jsonPath":".status.total"}"#,
    printcolumn = r#"{"name":"Healthy","type":"integer","jsonPath":".status.healthy"}"#,
    printcolumn = r#"{"name":"Unhealthy","type":"integer","jsonPath":".status.unhealthy"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.selector) != has(self.share)")
    .message("set exactly one of selector (pick VMs by label) or share (a percentage of the VMs no selector ring takes)"))]
pub struct UpdateRingSpec {
    /// Position of the ring: rings receive a release in ascending order, 0 to 1000.
    #[schemars(range(min = 0, max = 1000))]
    pub order: i32,

    /// VirtualMachines of this namespace that belong to the ring.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::label_selector")]
    pub selector: Option<LabelSelector>,

    /// Percentage (1 to 100) of the VMs that no selector ring takes, assigned by a stable hash of
    /// each VM's uid so that assignments do not churn as the fleet grows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub share: Option<i32>,

    /// How long after a release this ring may start, e.g. "0s" (Test), "24h" (First), "144h" (Fast),
    /// "216h" (Broad). From 0s to 720h (default 0s).
    #[serde(default = "zero_duration")]
    #[x_kube(validation = schema::duration_between("0s", "720h"))]
    pub deferral: String,

    /// How long after the deferral the ring's VMs must be patched, e.g. "48h"; from 0s to 720h
    /// (default 0s: as soon as windows allow).
    #[serde(default = "zero_duration")]
    #[x_kube(validation = schema::duration_between("0s", "720h"))]
    pub deadline: String,

    /// At most this many of the ring's VMs patch at once, those in availability sets included: a
    /// count (5) or a percentage of the ring's eligible VMs ("10%", the default; rounded down, at
    /// least 1). Availability sets and zones may hold a wave below it.
    #[serde(default = "default_max_unavailable")]
    #[schemars(schema_with = "schema::count_or_percent")]
    pub max_unavailable: IntOrString,

    /// Installation attempts per VM in one rollout, 1 to 10 (default 3). A failed installation is
    /// retried in the VM's next maintenance window (an hour later for a VM without one) until this
    /// many have failed; only then does the VM count against the health gate. A VM unhealthy after
    /// installing, or not back from its reboot, is not retried.
    #[serde(default = "default_max_attempts")]
    #[schemars(range(min = 1, max = 10))]
    pub max_attempts: i32,

    /// A paused ring starts no new installations; those running finish.
    #[serde(default)]
    pub paused: bool,

    /// When a ring counts as healthy and the next may start.
    #[serde(default)]
    pub health_gate: HealthGate,

    /// Overrides the profile's maintenance window for the ring's VMs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance_window: Option<MaintenanceWindow>,

    /// Patch hooks for the ring's VMs: each hook set here (preInstall, preReboot, postInstall)
    /// replaces the profile's hook of the same name; `kubectl explain
    /// configurationprofile.spec.preferences.updateManagement.hooks` describes them and their
    /// environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hooks: Option<super::hooks::PatchHooks>,

    /// Replaces the profile's snapshot repositories for the ring's VMs (`kubectl explain
    /// configurationprofile.spec.preferences.updateManagement.snapshots`). At most 16.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    pub snapshots: Option<Vec<super::release::SnapshotRepository>>,

    /// The ring's approval policy: each field set here (approveAfter, include, exclude) replaces
    /// the profile's for the ring's VMs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<super::release::ApprovalPolicy>,
}

fn zero_duration() -> String {
    "0s".into()
}

fn default_max_attempts() -> i32 {
    3
}

fn default_max_unavailable() -> IntOrString {
    IntOrString::String("10%".into())
}

/// The health gate of a ring.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthGate {
    /// The rollout halts when more than this percentage of the ring's patched VMs fail, 0 to 100
    /// (default 10).
    #[serde(default = "HealthGate::default_max_failed_percent")]
    #[schemars(range(min = 0, max = 100))]
    pub max_failed_percent: i32,
    /// Wait after the ring's last wave before the next ring may start, 0s to 720h (default 1h).
    #[serde(default = "HealthGate::default_bake_time")]
    #[x_kube(validation = schema::duration_between("0s", "720h"))]
    pub bake_time: String,
    /// How long a patched VM must stay healthy to count as a success, 0s to 168h (default 30m).
    #[serde(default = "HealthGate::default_healthy_for")]
    #[x_kube(validation = schema::duration_between("0s", "168h"))]
    pub healthy_for: String,
    /// How long a VM may be away after announcing its reboot before it counts as failed
    /// (reason RebootTimeout), 1m to 24h (default 15m). Its heartbeat gap meanwhile is no failure.
    #[serde(default = "HealthGate::default_reboot_timeout")]
    #[x_kube(validation = schema::duration_between("1m", "24h"))]
    pub reboot_timeout: String,
}

impl HealthGate {
    fn default_max_failed_percent() -> i32 {
        10
    }
    fn default_bake_time() -> String {
        "1h".into()
    }
    fn default_healthy_for() -> String {
        "30m".into()
    }
    fn default_reboot_timeout() -> String {
        "15m".into()
    }
}

impl Default for HealthGate {
    fn default() -> Self {
        Self {
            max_failed_percent: Self::default_max_failed_percent(),
            bake_time: Self::default_bake_time(),
            healthy_for: Self::default_healthy_for(),
            reboot_timeout: Self::default_reboot_timeout(),
        }
    }
}

/// Observed state of an UpdateRing.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpdateRingStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Member VMs.
    #[serde(default)]
    pub total: i32,
    /// Members eligible for rollouts (heartbeat within 5 days, supported image, AutomaticByPlatform).
    #[serde(default)]
    pub eligible: i32,
    /// Members on the current release and healthy.
    #[serde(default)]
    pub healthy: i32,
    /// Members whose last installation failed or whose health checks fail.
    #[serde(default)]
    pub unhealthy: i32,
    /// A fingerprint of the namespace's rings (names, orders, selectors, shares) when this status
    /// was written: a change tells that VMs may have moved between rings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rings_hash: Option<String>,
    /// VMs of the namespace in no ring: rollouts do not patch them.
    #[serde(default)]
    pub in_no_ring: i32,
    /// The rollout this ring is taking part in, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_rollout: Option<String>,
    /// Ready (the ring is valid and selects VMs) and what is wrong with it when not: NoMembers,
    /// DuplicateOrder, SharesOverflow; MembershipChanged when a change of the namespace's rings
    /// moved VMs into or out of this ring.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}
