//! VirtualMachine: one managed VM.

use kube::core::{Reason, Rule};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::Text;
use super::schema;
pub use super::vm_status::VirtualMachineStatus;

/// The effective patch mode, with the defaults applied (Windows: AutomaticByOS, Linux:
/// ImageDefault), as a CEL expression over `spec`; `s` is the spec variable name.
fn effective_mode(s: &str) -> String {
    format!(
        "(has({s}.patchSettings.patchMode) ? {s}.patchSettings.patchMode : ({s}.os.type == 'Windows' ? 'AutomaticByOS' : 'ImageDefault'))"
    )
}

fn manual_switch_rule() -> Rule {
    Rule::new(format!(
        "({} == 'Manual') == ({} == 'Manual')",
        effective_mode("self"),
        effective_mode("oldSelf")
    ))
    .message("switching between Manual and an automatic patch mode is not supported (only AutomaticByOS to AutomaticByPlatform, or between the Linux modes); recreate the VirtualMachine instead")
    .field_path(".patchSettings.patchMode")
    .reason(Reason::FieldValueForbidden)
}

/// Hotpatch installs are orchestrated by the platform, so (as on Azure) a VM asking for the Hotpatch
/// capability must use AutomaticByPlatform.
fn hotpatch_rule() -> Rule {
    Rule::new(format!(
        "!has(self.capabilities) || !self.capabilities.exists(c, c == 'Hotpatch') || {} == 'AutomaticByPlatform'",
        effective_mode("self")
    ))
    .message("the Hotpatch capability needs patchSettings.patchMode AutomaticByPlatform (hotpatches are installed by rollouts)")
    .field_path(".patchSettings.patchMode")
}

fn windows_auto_updates_rule() -> Rule {
    Rule::new(format!(
        "self.os.type != 'Windows' || ({mode} == 'Manual' ? (has(self.patchSettings.enableAutomaticUpdates) && !self.patchSettings.enableAutomaticUpdates) : (!has(self.patchSettings.enableAutomaticUpdates) || self.patchSettings.enableAutomaticUpdates))",
        mode = effective_mode("self")
    ))
    .message("on Windows, enableAutomaticUpdates must be true (or unset) for AutomaticByOS and AutomaticByPlatform, and false for Manual")
    .field_path(".patchSettings.enableAutomaticUpdates")
}

/// The desired state of the VirtualMachine: management, OS, placement, time zone and patch settings.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    doc = "One managed virtual machine.\n\nThe controller onboards it to a ConfigurationProfile, keeps it configured and watches it for drift; its guest agent reports through `status.guest` and renews a heartbeat Lease. Phases: Pending (no heartbeat: the VM is not running), InProgress (being configured), Configured (compliant, no drift), Failed (remediation failed or a prerequisite is unmet; the message says why), NotManaged (management disabled).",
    group = "automend.io",
    version = "v1alpha1",
    kind = "VirtualMachine",
    plural = "virtualmachines",
    shortname = "avm",
    category = "automend",
    namespaced,
    status = "VirtualMachineStatus",
    validation = Rule::new("self.metadata.name.size() <= 63 && self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')")
        .message("metadata.name must be a DNS label (at most 63 lowercase letters, digits and '-'): it names the VM's guest identity and heartbeat Lease"),
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Profile","type":"string","jsonPath":".status.profile"}"#,
    printcolumn = r#"{"name":"Region","type":"string","jsonPath":".spec.placement.region"}"#,
    printcolumn = r#"{"name":"Zone","type":"string","jsonPath":".spec.placement.zone"}"#,
    printcolumn = r#"{"name":"Patch Mode","type":"string","jsonPath":".status.patchMode"}"#,
    printcolumn = r#"{"name":"Crit+Sec","type":"integer","description":"Critical and security patches pending","jsonPath":".status.patchStatus.availablePatchSummary.criticalAndSecurityPatchCount"}"#,
    printcolumn = r#"{"name":"OS","type":"string","priority":1,"jsonPath":".spec.os.type"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Message","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].message"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = hotpatch_rule(),
    validation = Rule::new("!has(self.patchSettings.patchMode) || self.patchSettings.patchMode != 'AutomaticByOS' || self.os.type == 'Windows'")
        .message("AutomaticByOS is supported only on Windows; Linux VMs use AutomaticByPlatform or ImageDefault")
        .field_path(".patchSettings.patchMode"),
    validation = Rule::new("!has(self.patchSettings.patchMode) || self.patchSettings.patchMode != 'Manual' || self.os.type == 'Windows'")
        .message("Manual is supported only on Windows; Linux VMs use AutomaticByPlatform or ImageDefault")
        .field_path(".patchSettings.patchMode"),
    validation = Rule::new("!has(self.patchSettings.patchMode) || self.patchSettings.patchMode != 'ImageDefault' || self.os.type == 'Linux'")
        .message("ImageDefault is supported only on Linux; Windows VMs use AutomaticByOS, AutomaticByPlatform or Manual")
        .field_path(".patchSettings.patchMode"),
    validation = Rule::new("self.os.type == 'Windows' || !has(self.patchSettings.enableAutomaticUpdates)")
        .message("enableAutomaticUpdates applies to Windows only; leave it unset on Linux")
        .field_path(".patchSettings.enableAutomaticUpdates"),
    validation = windows_auto_updates_rule(),
    validation = Rule::new("has(self.patchSettings.enableAutomaticUpdates) == has(oldSelf.patchSettings.enableAutomaticUpdates) && (!has(self.patchSettings.enableAutomaticUpdates) || self.patchSettings.enableAutomaticUpdates == oldSelf.patchSettings.enableAutomaticUpdates)")
        .message("enableAutomaticUpdates can only be set when the VirtualMachine is created")
        .field_path(".patchSettings.enableAutomaticUpdates")
        .reason(Reason::FieldValueForbidden),
    validation = manual_switch_rule(),
)]
pub struct VirtualMachineSpec {
    /// Whether Automend manages this VM, and with which profile.
    #[serde(default)]
    pub management: Management,

    /// The guest operating system.
    pub os: OsProfile,

    /// Where the VM runs: rollouts use it to patch availability-first.
    pub placement: Placement,

    /// The VM's IANA time zone (e.g. "Europe/Paris"); maintenance windows and off-peak hours are
    /// computed in it, daylight saving included. Default UTC.
    #[serde(default = "default_time_zone")]
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(validation = Rule::new("self.matches('^(UTC|[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*)$')")
        .message("must be an IANA time zone name such as \"UTC\", \"Europe/Paris\" or \"America/Argentina/Buenos_Aires\""))]
    pub time_zone: Text,

    /// How the guest is patched: the patch mode and, on Windows, automatic updates.
    #[serde(default)]
    pub patch_settings: PatchSettings,

    /// Image capabilities this VM needs; each is checked against the image catalog and reported as a
    /// condition when the image lacks it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub capabilities: Vec<Capability>,

    /// How the guest judges its workload healthy after patching (in addition to the heartbeat).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<Box<HealthCheck>>,
}

fn default_time_zone() -> Text {
    "UTC".into()
}

/// Management of the VM.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(self.enabled && oldSelf.enabled) || (has(oldSelf.profile) ? has(self.profile) && self.profile == oldSelf.profile : true)")
    .message("the profile cannot change while management is enabled: set enabled to false first, then re-enable with the new profile")
    .field_path(".profile")
    .reason(Reason::FieldValueForbidden))]
pub struct Management {
    /// Whether Automend manages the VM (default true). Disabling stops drift monitoring at once and
    /// leaves everything configured on the guest as it is.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The ConfigurationProfile to onboard to. Unset: a profile whose assignment selectors match
    /// the VM is used. Cannot change while management is enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')")
        .message("must be the name of a ConfigurationProfile: lowercase letters, digits, '-' and '.'"))]
    pub profile: Option<Text>,
}

fn default_true() -> bool {
    true
}

impl Default for Management {
    fn default() -> Self {
        Self {
            enabled: true,
            profile: None,
        }
    }
}

/// The guest operating system.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct OsProfile {
    /// Linux or Windows. Cannot change.
    #[serde(rename = "type")]
    #[x_kube(validation = schema::immutable("os.type"))]
    pub os_type: OsType,
    /// The image the VM was created from.
    pub image: ImageReference,
}

// An operating system family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum OsType {
    Linux,
    Windows,
}

/// An image reference, as in a cloud marketplace: publisher, offer, SKU and version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageReference {
    /// e.g. "Canonical", "RedHat", "MicrosoftWindowsServer".
    #[schemars(length(min = 1, max = 128))]
    pub publisher: Text,
    /// e.g. "0001-com-ubuntu-server-jammy", "RHEL", "WindowsServer".
    #[schemars(length(min = 1, max = 128))]
    pub offer: Text,
    /// e.g. "22_04-lts-gen2", "9-lvm", "2022-datacenter-azure-edition-core".
    #[schemars(length(min = 1, max = 128))]
    pub sku: Text,
    /// Image version, or "latest" (default).
    #[serde(default = "default_image_version")]
    #[schemars(length(min = 1, max = 64))]
    pub version: Text,
}

fn default_image_version() -> Text {
    "latest".into()
}

/// Where the VM runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.updateDomain) || has(self.availabilitySet)")
        .message("updateDomain needs availabilitySet: update domains are numbered within an availability set")
        .field_path(".updateDomain"),
    validation = Rule::new("!has(self.faultDomain) || has(self.availabilitySet)")
        .message("faultDomain needs availabilitySet: fault domains are numbered within an availability set")
        .field_path(".faultDomain"),
)]
pub struct Placement {
    /// The region, e.g. "westeurope". Regions are patched in phases; geo-paired regions never together.
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')")
        .message("must be a region name of lowercase letters, digits and '-', e.g. \"westeurope\""))]
    pub region: Text,
    /// The availability zone within the region, e.g. "1". One zone of a region is patched at a time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub zone: Option<Text>,
    /// The availability set the VM belongs to, if any. Never every member of a set at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 80))]
    pub availability_set: Option<Text>,
    /// Update domain within the availability set, 0 to 19. One update domain at a time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 19))]
    pub update_domain: Option<i32>,
    /// Fault domain within the availability set, 0 to 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 2))]
    pub fault_domain: Option<i32>,
}

/// Patch settings: the patch mode and its rules for each OS.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PatchSettings {
    /// AutomaticByPlatform (rollouts patch it; Linux and Windows), AutomaticByOS (Windows' own
    /// automatic updates; the Windows default), Manual (Windows, nothing installed unless asked) or
    /// ImageDefault (Linux, the image's own setting; the Linux default). Manual cannot be switched to
    /// or from an automatic mode; AutomaticByOS may become AutomaticByPlatform.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch_mode: Option<PatchMode>,
    /// Windows only: true for the automatic modes (default), false for Manual. Can only be set when
    /// the VM is created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_automatic_updates: Option<bool>,
}

// A patch mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum PatchMode {
    /// Patched by Automend rollouts, availability-first. The only mode that joins rollouts.
    AutomaticByPlatform,
    /// Windows only: the guest's own automatic updates stay on.
    AutomaticByOS,
    /// Windows only: native automatic updates off; nothing installed unless asked.
    Manual,
    /// Linux only: the image's own automatic update setting is left alone.
    ImageDefault,
}

impl PatchMode {
    /// The mode that applies when none is set.
    pub fn default_for(os: OsType) -> PatchMode {
        match os {
            OsType::Windows => PatchMode::AutomaticByOS,
            OsType::Linux => PatchMode::ImageDefault,
        }
    }
}

/// An image capability (Windows Server Azure Edition).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
pub enum Capability {
    /// Security updates applied without a reboot.
    Hotpatch,
    /// SMB file shares over QUIC.
    SmbOverQuic,
    /// Extended network: subnets stretched to the cloud.
    ExtendedNetwork,
}

/// A health check the guest runs after patching. Exactly one of command and httpGet.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.command) != has(self.httpGet)")
    .message("set exactly one of command or httpGet"))]
pub struct HealthCheck {
    /// A command (argv) run on the guest; exit code 0 means healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub command: Option<Vec<String>>,
    /// An HTTP GET on the guest; a 2xx or 3xx answer means healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_get: Option<HttpGetCheck>,
    /// How long one check may take, from 1s to 10m (default 10s).
    #[serde(default = "default_check_timeout")]
    #[x_kube(validation = schema::duration_between("1s", "10m"))]
    pub timeout: String,
}

fn default_check_timeout() -> String {
    "10s".into()
}

/// An HTTP GET health check.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpGetCheck {
    /// Port on the guest, 1 to 65535.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Path, starting with "/" (default "/").
    #[serde(default = "default_http_path")]
    #[x_kube(validation = Rule::new("self.startsWith('/')").message("must start with \"/\""))]
    pub path: String,
    /// HTTP (default) or HTTPS.
    #[serde(default = "default_scheme")]
    pub scheme: HttpScheme,
}

fn default_http_path() -> String {
    "/".into()
}

fn default_scheme() -> HttpScheme {
    HttpScheme::HTTP
}

// Scheme of an HTTP health check.
#[allow(clippy::upper_case_acronyms)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum HttpScheme {
    HTTP,
    HTTPS,
}
