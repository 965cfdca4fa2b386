//! Enrollment and EnrollmentRequest: many machines join with one credential, the way kubelets
//! join with a bootstrap token and a CertificateSigningRequest.
//!
//! An operator creates an Enrollment; the controller gives it a ServiceAccount
//! (`automend-enroll-<name>`) that may only create EnrollmentRequests (and read one by its
//! unguessable name). A machine's agent, holding a token of that ServiceAccount, creates an
//! EnrollmentRequest with its facts and a public key; the controller decides it, creates the
//! VirtualMachine and answers with the VM's own guest token sealed to that key, so the answer is
//! useless to anyone but the machine that asked.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::Condition;
use super::vm::{PatchMode, Placement};

/// The desired state of an Enrollment: what the VMs it admits look like, how many and until when.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    doc = "One credential for many machines: each machine that presents a token of this Enrollment (`automend enroll create` prints one, with a cloud-init snippet) becomes a VirtualMachine of this namespace with the Enrollment's profile and labels and gets its own guest identity. Like AWS Systems Manager hybrid activations or kubelet bootstrap tokens.",
    group = "automend.io",
    version = "v1alpha1",
    kind = "Enrollment",
    plural = "enrollments",
    shortname = "enroll",
    category = "automend",
    namespaced,
    status = "EnrollmentStatus",
    printcolumn = r#"{"name":"Profile","type":"string","jsonPath":".spec.profile"}"#,
    printcolumn = r#"{"name":"Max","type":"integer","jsonPath":".spec.maxMachines"}"#,
    printcolumn = r#"{"name":"Enrolled","type":"integer","jsonPath":".status.machinesEnrolled"}"#,
    printcolumn = r#"{"name":"Refused","type":"integer","jsonPath":".status.machinesRefused"}"#,
    printcolumn = r#"{"name":"Expires","type":"date","jsonPath":".spec.expiresAt"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct EnrollmentSpec {
    /// The ConfigurationProfile new VMs are managed with (`spec.management.profile`); empty: the
    /// profiles' assignment rules choose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub profile: Option<String>,

    /// Labels every new VM gets, e.g. `ring: pilot`, so UpdateRings and profile assignments pick
    /// the machines up. They win over labels a machine asks for.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32))]
    pub labels: BTreeMap<String, String>,

    /// Label keys a machine may set itself (`automend agent --label role=web`); any other label a
    /// machine asks for refuses its enrollment. Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 317)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub allowed_labels: Vec<String>,

    /// How many machines may enroll with it, 1 to 100000; empty: no limit. A machine enrolling
    /// again (same key) does not count twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_machines: Option<i32>,

    /// After this time every enrollment is refused (RFC 3339). Enrolled VMs are not affected.
    pub expires_at: Time,

    /// Placement for machines that do not give their own (`--region`, `--zone` …): a machine's
    /// own values win field by field. A machine with no region here or of its own is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,

    /// IANA time zone of new VMs when the machine does not give one (default UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub time_zone: Option<String>,

    /// Patch mode of new VMs (Linux: AutomaticByPlatform or ImageDefault); default:
    /// AutomaticByPlatform when the image catalog supports the machine's image, else ImageDefault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch_mode: Option<PatchMode>,
}

/// What the controller observed of an Enrollment.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnrollmentStatus {
    /// The generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Machines that enrolled (a machine enrolling again with the same key counts once).
    #[serde(default)]
    pub machines_enrolled: i32,
    /// Enrollment requests refused (limit reached, expired, a label or fact not allowed).
    #[serde(default)]
    pub machines_refused: i32,
    /// The ServiceAccount whose tokens enroll machines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    /// The last VM enrolled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_enrolled: Option<String>,
    /// Ready: True Active while machines may enroll; False Expired, Exhausted (the limit is
    /// reached) or Deleting.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// A machine asking to enroll: its facts and the public key its credential is sealed to.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    doc = "A machine's request to join through an Enrollment, created by `automend agent --enroll-token-file` (like a kubelet's CertificateSigningRequest). The controller answers in its status: the VirtualMachine it became and that VM's guest token sealed to the request's public key, or why it was refused. Decided requests are deleted after an hour.",
    group = "automend.io",
    version = "v1alpha1",
    kind = "EnrollmentRequest",
    plural = "enrollmentrequests",
    shortname = "enrollreq",
    category = "automend",
    namespaced,
    status = "EnrollmentRequestStatus",
    printcolumn = r#"{"name":"Enrollment","type":"string","jsonPath":".spec.enrollment"}"#,
    printcolumn = r#"{"name":"Hostname","type":"string","jsonPath":".spec.hostname"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"VM","type":"string","jsonPath":".status.virtualMachine"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = super::schema::immutable("spec"))]
pub struct EnrollmentRequestSpec {
    /// The Enrollment (same namespace) whose token the machine holds.
    #[schemars(length(min = 1, max = 253))]
    pub enrollment: String,
    /// The machine's X25519 public key, base64 (32 bytes). The answer is sealed to it, and a
    /// later request with the same key is the same machine (it gets its VM back).
    #[schemars(length(min = 40, max = 64))]
    pub public_key: String,
    /// The machine's hostname; the VM is named after it.
    #[schemars(length(min = 1, max = 253))]
    pub hostname: String,
    /// `ID` of the machine's os-release, e.g. "debian".
    #[schemars(length(min = 1, max = 63))]
    pub os_id: String,
    /// `VERSION_ID` of the machine's os-release, e.g. "12".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub os_version: Option<String>,
    /// `PRETTY_NAME` of the machine's os-release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub os_pretty_name: Option<String>,
    /// The machine's architecture (uname -m), e.g. "x86_64".
    #[schemars(length(min = 1, max = 32))]
    pub architecture: String,
    /// The machine's region, when it knows it; the Enrollment's placement fills what the
    /// machine does not give.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub region: Option<String>,
    /// The machine's availability zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub zone: Option<String>,
    /// The machine's availability set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 80))]
    pub availability_set: Option<String>,
    /// The machine's update domain within its availability set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 19))]
    pub update_domain: Option<i32>,
    /// The machine's fault domain within its availability set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 2))]
    pub fault_domain: Option<i32>,
    /// The machine's IANA time zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub time_zone: Option<String>,
    /// Labels the machine asks for; only keys the Enrollment's `allowedLabels` lists.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32))]
    pub labels: BTreeMap<String, String>,
}

/// The controller's answer to an EnrollmentRequest.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnrollmentRequestStatus {
    /// Pending (undecided), Approved or Refused.
    #[serde(default)]
    pub phase: RequestPhase,
    /// Why it was refused: LimitReached, Expired, EnrollmentNotFound, LabelNotAllowed,
    /// InvalidFacts, NameUnavailable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The decision in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The VirtualMachine the machine is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_machine: Option<String>,
    /// Whether the machine got an existing VirtualMachine back (it had enrolled with this key).
    #[serde(default)]
    pub reenrolled: bool,
    /// The VM's guest token, sealed to the request's public key (libsodium sealed box), base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_token: Option<String>,
    /// When that token expires; the agent renews it before then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_expires_at: Option<Time>,
    /// When it was decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<Time>,
}

// Pending, Approved or Refused.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RequestPhase {
    #[default]
    Pending,
    Approved,
    Refused,
}
