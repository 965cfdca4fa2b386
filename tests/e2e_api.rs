//! The API against a real kube-apiserver: CRDs establish, `kubectl explain` shows our docs, every
//! example applies, and invalid objects are rejected at admission with messages that name the field.

mod support;

use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use automend::api::{ConfigurationProfile, PatchRollout, UpdateRing, VirtualMachine};
use support::{TestNamespace, cluster};

#[test]
fn crds_are_established_with_names_and_category() {
    let c = cluster();
    let out = c.kubectl_ok(&["api-resources", "--api-group=automend.io", "-o", "wide"]);
    for (plural, short) in [
        ("virtualmachines", "avm"),
        ("configurationprofiles", "cprof"),
        ("updaterings", "ring"),
        ("patchrollouts", "rollout"),
    ] {
        let line = out
            .lines()
            .find(|l| l.starts_with(plural))
            .unwrap_or_else(|| panic!("{plural} missing from api-resources:\n{out}"));
        assert!(
            line.contains(short),
            "{plural} lacks short name {short}: {line}"
        );
        assert!(
            line.contains("automend"),
            "{plural} lacks the automend category: {line}"
        );
    }
}

#[test]
fn kubectl_explain_shows_our_documentation() {
    let c = cluster();
    let cases = [
        (
            "virtualmachine.spec.patchSettings.patchMode",
            "AutomaticByPlatform (rollouts patch it",
        ),
        ("virtualmachine.spec.timeZone", "IANA time zone"),
        ("virtualmachine", "One managed virtual machine."),
        ("configurationprofile.spec.environment", "DevTest"),
        (
            "configurationprofile.spec.preferences.backup.retentionDays",
            "from 7 to 3650",
        ),
        ("updatering.spec.share", "stable hash"),
        (
            "configurationprofile.spec.preferences.updateManagement.hooks",
            "AUTOMEND_PACKAGES",
        ),
        ("updatering.spec.healthGate.rebootTimeout", "RebootTimeout"),
        ("updatering.spec.hooks.preInstall.timeout", "from 1s to 6h"),
        (
            "configurationprofile.spec.preferences.updateManagement.snapshots.template",
            "{timestamp}",
        ),
        (
            "configurationprofile.spec.preferences.updateManagement.approval.approveAfter",
            "NotYetApproved",
        ),
        ("updatering.spec.approval", "replaces"),
        ("patchrollout.status.manifest.leftOut.reason", "NotIncluded"),
        (
            "virtualmachine.status.guest.installation.unavailable",
            "PinnedVersionUnavailable",
        ),
        ("patchrollout.spec.releaseTime", "Cannot change"),
        // Status fields explained too (they showed `<no value>`).
        ("patchrollout.status.phase", "Pending (no ring started)"),
        ("patchrollout.spec.retry", "Only counts up"),
        ("updatering.status.conditions", "SharesOverflow"),
    ];
    for (path, want) in cases {
        let text = c.kubectl_ok(&["explain", path]);
        assert!(
            text.contains(want),
            "kubectl explain {path} lacks {want:?}:\n{text}"
        );
    }
}

#[tokio::test]
async fn every_example_applies_and_lists_under_the_category() {
    let c = cluster();
    let client = c.client().await;
    let ns = TestNamespace::new(&client, "examples").await;
    let mut files: Vec<_> = std::fs::read_dir(support::repo().join("examples"))
        .expect("examples/")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 4,
        "expected the example files, found {files:?}"
    );
    for file in &files {
        let file = file.to_string_lossy();
        c.kubectl_ok(&["apply", "-n", &ns.name, "-f", &file]);
    }
    let listed = c.kubectl_ok(&["get", "automend", "-n", &ns.name, "-o", "name"]);
    let count = |prefix: &str| listed.lines().filter(|l| l.starts_with(prefix)).count();
    assert!(count("virtualmachine.automend.io/") >= 20, "{listed}");
    assert_eq!(count("updatering.automend.io/"), 4, "{listed}");
    assert_eq!(count("patchrollout.automend.io/"), 1, "{listed}");
    // Defaults are applied by the API server.
    let mode = c.kubectl_ok(&[
        "get",
        "-n",
        &ns.name,
        "avm",
        "weu-db-1",
        "-o",
        "jsonpath={.spec.timeZone}/{.spec.management.enabled}",
    ]);
    assert_eq!(mode, "Europe/Amsterdam/true");
    let gate = c.kubectl_ok(&[
        "get",
        "-n",
        &ns.name,
        "ring",
        "fast",
        "-o",
        "jsonpath={.spec.healthGate.bakeTime}/{.spec.maxUnavailable}",
    ]);
    assert_eq!(gate, "1h/20%");
    // The control plane's controller manager empties and removes deleted namespaces.
    let name = ns.name.clone();
    ns.delete().await;
    c.kubectl_ok(&[
        "wait",
        "--for=delete",
        &format!("namespace/{name}"),
        "--timeout=120s",
    ]);
}

// ---------------------------------------------------------------------------------------------
// Admission: the table of invalid objects.

#[derive(Clone, Copy, Debug)]
enum Kind {
    Vm,
    Profile,
    Ring,
    Rollout,
}

impl Kind {
    fn resource(self) -> ApiResource {
        match self {
            Kind::Vm => ApiResource::erase::<VirtualMachine>(&()),
            Kind::Profile => ApiResource::erase::<ConfigurationProfile>(&()),
            Kind::Ring => ApiResource::erase::<UpdateRing>(&()),
            Kind::Rollout => ApiResource::erase::<PatchRollout>(&()),
        }
    }

    fn api(self, client: &Client, ns: &str) -> Api<DynamicObject> {
        let ar = self.resource();
        match self {
            Kind::Profile => Api::all_with(client.clone(), &ar),
            _ => Api::namespaced_with(client.clone(), ns, &ar),
        }
    }

    fn type_meta(self) -> Value {
        let ar = self.resource();
        json!({ "apiVersion": ar.api_version, "kind": ar.kind })
    }
}

fn linux_vm() -> Value {
    json!({ "spec": {
        "management": { "profile": "production" },
        "os": { "type": "Linux", "image": { "publisher": "Canonical", "offer": "ubuntu-24_04-lts", "sku": "server" } },
        "placement": { "region": "westeurope", "zone": "1" },
        "patchSettings": { "patchMode": "AutomaticByPlatform" }
    }})
}

fn windows_vm() -> Value {
    json!({ "spec": {
        "management": { "profile": "production" },
        "os": { "type": "Windows", "image": { "publisher": "MicrosoftWindowsServer", "offer": "WindowsServer", "sku": "2022-datacenter-azure-edition-core" } },
        "placement": { "region": "westeurope", "zone": "2" },
        "patchSettings": { "patchMode": "AutomaticByPlatform", "enableAutomaticUpdates": true }
    }})
}

fn profile() -> Value {
    json!({ "spec": { "environment": "Production" } })
}

fn ring() -> Value {
    json!({ "spec": { "order": 1, "share": 50 } })
}

fn rollout() -> Value {
    json!({ "spec": { "releaseTime": "2026-11-10T17:00:00Z" } })
}

/// JSON merge patch (RFC 7396): objects merge, null removes, anything else replaces.
fn merge(base: &Value, patch: &Value) -> Value {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            let mut out = b.clone();
            for (k, v) in p {
                if v.is_null() {
                    out.remove(k);
                } else {
                    let merged = merge(b.get(k).unwrap_or(&Value::Null), v);
                    out.insert(k.clone(), merged);
                }
            }
            Value::Object(out)
        }
        (_, p) => p.clone(),
    }
}

enum Op {
    /// Create `base` merged with the patch.
    Create(Value),
    /// Create `base` (valid), then update it with the merge patch.
    Update(Value),
}

struct Case {
    name: &'static str,
    kind: Kind,
    base: fn() -> Value,
    op: Op,
    /// The field path the API server must name.
    field: &'static str,
    /// A phrase of the message saying what is allowed.
    says: &'static str,
}

fn cases() -> Vec<Case> {
    use Kind::*;
    use Op::*;
    let c = |name, kind, base, op, field, says| Case {
        name,
        kind,
        base,
        op,
        field,
        says,
    };
    vec![
        // VirtualMachine: the seed's patch-mode matrix.
        c(
            "linux AutomaticByOS",
            Vm,
            linux_vm,
            Create(json!({"spec": {"patchSettings": {"patchMode": "AutomaticByOS"}}})),
            "spec.patchSettings.patchMode",
            "AutomaticByOS is supported only on Windows",
        ),
        c(
            "hotpatch without AutomaticByPlatform",
            Vm,
            windows_vm,
            Create(
                json!({"spec": {"capabilities": ["Hotpatch"], "patchSettings": {"patchMode": "AutomaticByOS"}}}),
            ),
            "spec.patchSettings.patchMode",
            "Hotpatch capability needs patchSettings.patchMode AutomaticByPlatform",
        ),
        c(
            "linux Manual",
            Vm,
            linux_vm,
            Create(json!({"spec": {"patchSettings": {"patchMode": "Manual"}}})),
            "spec.patchSettings.patchMode",
            "Manual is supported only on Windows",
        ),
        c(
            "windows ImageDefault",
            Vm,
            windows_vm,
            Create(json!({"spec": {"patchSettings": {"patchMode": "ImageDefault"}}})),
            "spec.patchSettings.patchMode",
            "ImageDefault is supported only on Linux",
        ),
        c(
            "unknown patch mode",
            Vm,
            linux_vm,
            Create(json!({"spec": {"patchSettings": {"patchMode": "Whenever"}}})),
            "spec.patchSettings.patchMode",
            "supported values",
        ),
        c(
            "linux enableAutomaticUpdates",
            Vm,
            linux_vm,
            Create(json!({"spec": {"patchSettings": {"enableAutomaticUpdates": true}}})),
            "spec.patchSettings.enableAutomaticUpdates",
            "applies to Windows only",
        ),
        c(
            "windows Manual with automatic updates",
            Vm,
            windows_vm,
            Create(
                json!({"spec": {"patchSettings": {"patchMode": "Manual", "enableAutomaticUpdates": true}}}),
            ),
            "spec.patchSettings.enableAutomaticUpdates",
            "false for Manual",
        ),
        c(
            "windows Manual without enableAutomaticUpdates",
            Vm,
            windows_vm,
            Create(
                json!({"spec": {"patchSettings": {"patchMode": "Manual", "enableAutomaticUpdates": null}}}),
            ),
            "spec.patchSettings.enableAutomaticUpdates",
            "false for Manual",
        ),
        c(
            "windows AutomaticByPlatform without automatic updates",
            Vm,
            windows_vm,
            Create(json!({"spec": {"patchSettings": {"enableAutomaticUpdates": false}}})),
            "spec.patchSettings.enableAutomaticUpdates",
            "must be true (or unset) for AutomaticByOS and AutomaticByPlatform",
        ),
        c(
            "windows default mode without automatic updates",
            Vm,
            windows_vm,
            Create(
                json!({"spec": {"patchSettings": {"patchMode": null, "enableAutomaticUpdates": false}}}),
            ),
            "spec.patchSettings.enableAutomaticUpdates",
            "must be true (or unset)",
        ),
        // VirtualMachine: other fields.
        c(
            "time zone syntax",
            Vm,
            linux_vm,
            Create(json!({"spec": {"timeZone": "Central European Time"}})),
            "spec.timeZone",
            "IANA time zone name",
        ),
        c(
            "update domain without availability set",
            Vm,
            linux_vm,
            Create(json!({"spec": {"placement": {"updateDomain": 1}}})),
            "spec.placement.updateDomain",
            "updateDomain needs availabilitySet",
        ),
        c(
            "fault domain without availability set",
            Vm,
            linux_vm,
            Create(json!({"spec": {"placement": {"faultDomain": 1}}})),
            "spec.placement.faultDomain",
            "faultDomain needs availabilitySet",
        ),
        c(
            "update domain out of range",
            Vm,
            linux_vm,
            Create(json!({"spec": {"placement": {"availabilitySet": "web", "updateDomain": 20}}})),
            "spec.placement.updateDomain",
            "less than or equal to 19",
        ),
        c(
            "region syntax",
            Vm,
            linux_vm,
            Create(json!({"spec": {"placement": {"region": "West Europe"}}})),
            "spec.placement.region",
            "region name of lowercase letters",
        ),
        c(
            "missing placement",
            Vm,
            linux_vm,
            Create(json!({"spec": {"placement": null}})),
            "spec.placement",
            "Required value",
        ),
        c(
            "unknown OS type",
            Vm,
            linux_vm,
            Create(json!({"spec": {"os": {"type": "Solaris"}}})),
            "spec.os.type",
            "supported values: \"Linux\", \"Windows\"",
        ),
        c(
            "unknown capability",
            Vm,
            windows_vm,
            Create(json!({"spec": {"capabilities": ["Teleport"]}})),
            "spec.capabilities[0]",
            "supported values",
        ),
        c(
            "health check with command and httpGet",
            Vm,
            linux_vm,
            Create(
                json!({"spec": {"healthCheck": {"command": ["true"], "httpGet": {"port": 80}}}}),
            ),
            "spec.healthCheck",
            "set exactly one of command or httpGet",
        ),
        c(
            "health check path",
            Vm,
            linux_vm,
            Create(json!({"spec": {"healthCheck": {"httpGet": {"port": 80, "path": "healthz"}}}})),
            "spec.healthCheck.httpGet.path",
            "must start with \"/\"",
        ),
        c(
            "health check timeout unit",
            Vm,
            linux_vm,
            Create(json!({"spec": {"healthCheck": {"command": ["true"], "timeout": "1d"}}})),
            "spec.healthCheck.timeout",
            "write days as hours",
        ),
        c(
            "profile name syntax",
            Vm,
            linux_vm,
            Create(json!({"spec": {"management": {"profile": "Prod_1"}}})),
            "spec.management.profile",
            "name of a ConfigurationProfile",
        ),
        // VirtualMachine: transition rules.
        c(
            "profile changes while enabled",
            Vm,
            linux_vm,
            Update(json!({"spec": {"management": {"profile": "dev-test"}}})),
            "spec.management.profile",
            "cannot change while management is enabled",
        ),
        c(
            "profile removed while enabled",
            Vm,
            linux_vm,
            Update(json!({"spec": {"management": {"profile": null}}})),
            "spec.management.profile",
            "cannot change while management is enabled",
        ),
        c(
            "enableAutomaticUpdates set after creation",
            Vm,
            || {
                merge(
                    &windows_vm(),
                    &json!({"spec": {"patchSettings": {"patchMode": "AutomaticByOS", "enableAutomaticUpdates": null}}}),
                )
            },
            Update(json!({"spec": {"patchSettings": {"enableAutomaticUpdates": true}}})),
            "spec.patchSettings.enableAutomaticUpdates",
            "can only be set when the VirtualMachine is created",
        ),
        c(
            "Manual to AutomaticByPlatform",
            Vm,
            || {
                merge(
                    &windows_vm(),
                    &json!({"spec": {"patchSettings": {"patchMode": "Manual", "enableAutomaticUpdates": false}}}),
                )
            },
            Update(json!({"spec": {"patchSettings": {"patchMode": "AutomaticByPlatform"}}})),
            "spec.patchSettings.patchMode",
            "switching between Manual and an automatic patch mode is not supported",
        ),
        c(
            "AutomaticByPlatform to Manual",
            Vm,
            windows_vm,
            Update(json!({"spec": {"patchSettings": {"patchMode": "Manual"}}})),
            "spec.patchSettings.patchMode",
            "switching between Manual and an automatic patch mode is not supported",
        ),
        c(
            "OS type changes",
            Vm,
            linux_vm,
            Update(
                json!({"spec": {"os": {"type": "Windows"}, "patchSettings": {"patchMode": "AutomaticByPlatform"}}}),
            ),
            "spec.os.type",
            "immutable",
        ),
        // ConfigurationProfile.
        c(
            "DevTest with backup",
            Profile,
            profile,
            Create(
                json!({"spec": {"environment": "DevTest", "preferences": {"backup": {"enabled": true}}}}),
            ),
            "spec.preferences.backup.enabled",
            "DevTest profiles never back up",
        ),
        c(
            "DevTest turning backup on later",
            Profile,
            || json!({"spec": {"environment": "DevTest"}}),
            Update(json!({"spec": {"preferences": {"backup": {"enabled": true}}}})),
            "spec.preferences.backup.enabled",
            "DevTest profiles never back up",
        ),
        c(
            "unknown environment",
            Profile,
            profile,
            Create(json!({"spec": {"environment": "Staging"}})),
            "spec.environment",
            "supported values: \"Production\", \"DevTest\"",
        ),
        c(
            "retention below 7 days",
            Profile,
            profile,
            Create(json!({"spec": {"preferences": {"backup": {"retentionDays": 5}}}})),
            "spec.preferences.backup.retentionDays",
            "greater than or equal to 7",
        ),
        c(
            "retention above 3650 days",
            Profile,
            profile,
            Create(json!({"spec": {"preferences": {"backup": {"retentionDays": 4000}}}})),
            "spec.preferences.backup.retentionDays",
            "less than or equal to 3650",
        ),
        c(
            "weekly backup without days",
            Profile,
            profile,
            Create(
                json!({"spec": {"preferences": {"backup": {"schedule": {"frequency": "Weekly", "time": "01:00"}}}}}),
            ),
            "spec.preferences.backup.schedule.daysOfWeek",
            "required (at least one day) when frequency is Weekly",
        ),
        c(
            "daily backup with days",
            Profile,
            profile,
            Create(
                json!({"spec": {"preferences": {"backup": {"schedule": {"frequency": "Daily", "time": "01:00", "daysOfWeek": ["Monday"]}}}}}),
            ),
            "spec.preferences.backup.schedule.daysOfWeek",
            "not allowed when frequency is Daily",
        ),
        c(
            "backup time format",
            Profile,
            profile,
            Create(
                json!({"spec": {"preferences": {"backup": {"schedule": {"frequency": "Daily", "time": "7:00"}}}}}),
            ),
            "spec.preferences.backup.schedule.time",
            "24-hour time \"HH:MM\"",
        ),
        c(
            "maintenance window too short",
            Profile,
            profile,
            Create(
                json!({"spec": {"preferences": {"updateManagement": {"maintenanceWindow": {"start": "02:00", "duration": "30m"}}}}}),
            ),
            "spec.preferences.updateManagement.maintenanceWindow.duration",
            "between 1h and 24h",
        ),
        c(
            "maintenance window start",
            Profile,
            profile,
            Create(
                json!({"spec": {"preferences": {"updateManagement": {"maintenanceWindow": {"start": "24:00", "duration": "2h"}}}}}),
            ),
            "spec.preferences.updateManagement.maintenanceWindow.start",
            "between 00:00 and 23:59",
        ),
        c(
            "maintenance window day",
            Profile,
            profile,
            Create(
                json!({"spec": {"preferences": {"updateManagement": {"maintenanceWindow": {"start": "02:00", "duration": "2h", "daysOfWeek": ["Funday"]}}}}}),
            ),
            "spec.preferences.updateManagement.maintenanceWindow.daysOfWeek[0]",
            "supported values",
        ),
        c(
            "assessment interval too long",
            Profile,
            profile,
            Create(
                json!({"spec": {"preferences": {"updateManagement": {"assessmentInterval": "200h"}}}}),
            ),
            "spec.preferences.updateManagement.assessmentInterval",
            "between 1h and 168h",
        ),
        c(
            "no classifications",
            Profile,
            profile,
            Create(json!({"spec": {"preferences": {"updateManagement": {"classifications": []}}}})),
            "spec.preferences.updateManagement.classifications",
            "at least 1 items",
        ),
        c(
            "unknown reboot setting",
            Profile,
            profile,
            Create(
                json!({"spec": {"preferences": {"updateManagement": {"rebootSetting": "Sometimes"}}}}),
            ),
            "spec.preferences.updateManagement.rebootSetting",
            "supported values: \"IfRequired\", \"Never\", \"Always\"",
        ),
        c(
            "zero remediation attempts",
            Profile,
            profile,
            Create(json!({"spec": {"remediation": {"maxAttempts": 0}}})),
            "spec.remediation.maxAttempts",
            "greater than or equal to 1",
        ),
        c(
            "max backoff below initial backoff",
            Profile,
            profile,
            Create(json!({"spec": {"remediation": {"initialBackoff": "5m", "maxBackoff": "1m"}}})),
            "spec.remediation.maxBackoff",
            "maxBackoff must be at least initialBackoff",
        ),
        c(
            "unknown remediation mode",
            Profile,
            profile,
            Create(json!({"spec": {"remediation": {"mode": "Sometimes"}}})),
            "spec.remediation.mode",
            "supported values: \"Auto\", \"ReportOnly\"",
        ),
        c(
            "selector In without values",
            Profile,
            profile,
            Create(
                json!({"spec": {"assignment": {"selector": {"matchExpressions": [{"key": "tier", "operator": "In"}]}}}}),
            ),
            "spec.assignment.selector.matchExpressions[0].values",
            "must be non-empty for the In and NotIn operators",
        ),
        c(
            "selector Exists with values",
            Profile,
            profile,
            Create(
                json!({"spec": {"assignment": {"selector": {"matchExpressions": [{"key": "tier", "operator": "Exists", "values": ["a"]}]}}}}),
            ),
            "spec.assignment.selector.matchExpressions[0].values",
            "empty for Exists and DoesNotExist",
        ),
        c(
            "selector operator",
            Profile,
            profile,
            Create(
                json!({"spec": {"assignment": {"selector": {"matchExpressions": [{"key": "tier", "operator": "Like", "values": ["a"]}]}}}}),
            ),
            "spec.assignment.selector.matchExpressions[0].operator",
            "supported values",
        ),
        c(
            "assignment priority",
            Profile,
            profile,
            Create(json!({"spec": {"assignment": {"selector": {}, "priority": 5000}}})),
            "spec.assignment.priority",
            "less than or equal to 1000",
        ),
        // UpdateRing.
        c(
            "ring with selector and share",
            Ring,
            ring,
            Create(json!({"spec": {"selector": {"matchLabels": {"a": "b"}}}})),
            "spec",
            "set exactly one of selector",
        ),
        c(
            "ring with neither selector nor share",
            Ring,
            ring,
            Create(json!({"spec": {"share": null}})),
            "spec",
            "set exactly one of selector",
        ),
        c(
            "share out of range",
            Ring,
            ring,
            Create(json!({"spec": {"share": 0}})),
            "spec.share",
            "greater than or equal to 1",
        ),
        c(
            "maxUnavailable percentage above 100",
            Ring,
            ring,
            Create(json!({"spec": {"maxUnavailable": "150%"}})),
            "spec.maxUnavailable",
            "percentage from 1% to 100%",
        ),
        c(
            "maxUnavailable zero",
            Ring,
            ring,
            Create(json!({"spec": {"maxUnavailable": 0}})),
            "spec.maxUnavailable",
            "count of at least 1",
        ),
        c(
            "deferral in days",
            Ring,
            ring,
            Create(json!({"spec": {"deferral": "1d"}})),
            "spec.deferral",
            "write days as hours",
        ),
        c(
            "deadline too long",
            Ring,
            ring,
            Create(json!({"spec": {"deadline": "1000h"}})),
            "spec.deadline",
            "between 0s and 720h",
        ),
        c(
            "failure budget above 100",
            Ring,
            ring,
            Create(json!({"spec": {"healthGate": {"maxFailedPercent": 101}}})),
            "spec.healthGate.maxFailedPercent",
            "less than or equal to 100",
        ),
        c(
            "reboot timeout too short",
            Ring,
            ring,
            Create(json!({"spec": {"healthGate": {"rebootTimeout": "30s"}}})),
            "spec.healthGate.rebootTimeout",
            "between 1m and 24h",
        ),
        c(
            "ring hook with a blank command",
            Ring,
            ring,
            Create(json!({"spec": {"hooks": {"preReboot": {"command": "   "}}}})),
            "spec.hooks.preReboot.command",
            "must not be empty or blank",
        ),
        c(
            "profile hook with an empty command",
            Profile,
            profile,
            Create(
                json!({"spec": {"preferences": {"updateManagement": {"hooks": {"preInstall": {"command": ""}}}}}}),
            ),
            "spec.preferences.updateManagement.hooks.preInstall.command",
            "should be at least 1 chars long",
        ),
        c(
            "hook time limit above 6h",
            Profile,
            profile,
            Create(
                json!({"spec": {"preferences": {"updateManagement": {"hooks": {"postInstall": {"command": "true", "timeout": "7h"}}}}}}),
            ),
            "spec.preferences.updateManagement.hooks.postInstall.timeout",
            "between 1s and 6h",
        ),
        c(
            "snapshot template without {timestamp}",
            Profile,
            profile,
            Create(
                json!({"spec": {"preferences": {"updateManagement": {"snapshots": [{"repository": "http://deb.debian.org/debian", "template": "https://snapshot.debian.org/archive/debian/latest/"}]}}}}),
            ),
            "spec.preferences.updateManagement.snapshots[0].template",
            "containing {timestamp}",
        ),
        c(
            "snapshot template that is no URL",
            Ring,
            ring,
            Create(
                json!({"spec": {"snapshots": [{"repository": "http://deb.debian.org/debian", "template": "snapshot {timestamp}"}]}}),
            ),
            "spec.snapshots[0].template",
            "must be an http, https or file URL",
        ),
        c(
            "snapshot repository that is no URL",
            Ring,
            ring,
            Create(
                json!({"spec": {"snapshots": [{"repository": "deb.debian.org", "template": "https://snap.example/{timestamp}/"}]}}),
            ),
            "spec.snapshots[0].repository",
            "must be an absolute http, https or file URL",
        ),
        c(
            "negative approveAfter",
            Profile,
            profile,
            Create(
                json!({"spec": {"preferences": {"updateManagement": {"approval": {"approveAfter": "-24h"}}}}}),
            ),
            "spec.preferences.updateManagement.approval.approveAfter",
            "between 0s and 8760h",
        ),
        c(
            "blank include pattern",
            Ring,
            ring,
            Create(json!({"spec": {"approval": {"include": ["openssl", "  "]}}})),
            "spec.approval.include",
            "patterns must be package names or prefixes",
        ),
        c(
            "include everything by a bare *",
            Ring,
            ring,
            Create(json!({"spec": {"approval": {"include": ["*"]}}})),
            "spec.approval.include",
            "not empty or a bare *",
        ),
        c(
            "empty exclude pattern",
            Profile,
            profile,
            Create(
                json!({"spec": {"preferences": {"updateManagement": {"approval": {"exclude": [""]}}}}}),
            ),
            "spec.preferences.updateManagement.approval.exclude[0]",
            "should be at least 1 chars long",
        ),
        c(
            "hook time limit below 1s",
            Ring,
            ring,
            Create(
                json!({"spec": {"hooks": {"preInstall": {"command": "true", "timeout": "500ms"}}}}),
            ),
            "spec.hooks.preInstall.timeout",
            "between 1s and 6h",
        ),
        c(
            "negative order",
            Ring,
            ring,
            Create(json!({"spec": {"order": -1}})),
            "spec.order",
            "greater than or equal to 0",
        ),
        // PatchRollout.
        c(
            "retry counts down",
            Rollout,
            || json!({ "spec": { "releaseTime": "2026-11-10T17:00:00Z", "retry": 2 } }),
            Update(json!({"spec": {"retry": 1}})),
            "spec.retry",
            "retry only counts up",
        ),
        c(
            "missing release time",
            Rollout,
            rollout,
            Create(json!({"spec": {"releaseTime": null}})),
            "spec.releaseTime",
            "Required value",
        ),
        c(
            "release time changes",
            Rollout,
            rollout,
            Update(json!({"spec": {"releaseTime": "2026-12-08T17:00:00Z"}})),
            "spec.releaseTime",
            "releaseTime is immutable",
        ),
        c(
            "classifications change",
            Rollout,
            rollout,
            Update(json!({"spec": {"classifications": ["Critical", "Security", "Other"]}})),
            "spec.classifications",
            "classifications is immutable",
        ),
        c(
            "unknown classification",
            Rollout,
            rollout,
            Create(json!({"spec": {"classifications": ["Urgent"]}})),
            "spec.classifications[0]",
            "supported values: \"Critical\", \"Security\", \"Other\"",
        ),
        c(
            "SLO target zero",
            Rollout,
            rollout,
            Create(json!({"spec": {"slo": {"targetPercent": 0}}})),
            "spec.slo.targetPercent",
            "greater than or equal to 1",
        ),
        c(
            "SLO window too short",
            Rollout,
            rollout,
            Create(json!({"spec": {"slo": {"within": "10m"}}})),
            "spec.slo.within",
            "between 1h and 2160h",
        ),
    ]
}

fn with_name(kind: Kind, body: Value, name: &str) -> Value {
    merge(
        &merge(&kind.type_meta(), &json!({ "metadata": { "name": name } })),
        &body,
    )
}

async fn create(
    api: &Api<DynamicObject>,
    obj: &Value,
    dry_run: bool,
) -> Result<DynamicObject, kube::Error> {
    let obj: DynamicObject = serde_json::from_value(obj.clone()).expect("test object");
    let pp = PostParams {
        dry_run,
        ..PostParams::default()
    };
    api.create(&pp, &obj).await
}

#[tokio::test]
async fn invalid_objects_are_rejected_naming_the_field() {
    let c = cluster();
    let client = c.client().await;
    let ns = TestNamespace::new(&client, "admission").await;
    let table = cases();
    assert!(table.len() >= 25);
    let mut failures = Vec::new();
    for (i, case) in table.iter().enumerate() {
        let api = case.kind.api(&client, &ns.name);
        let name = format!("invalid-{}-{i}", std::process::id());
        let result = match &case.op {
            Op::Create(patch) => {
                let obj = with_name(case.kind, merge(&(case.base)(), patch), &name);
                create(&api, &obj, true).await.map(|_| ())
            }
            Op::Update(patch) => {
                let base = with_name(case.kind, (case.base)(), &name);
                if let Err(e) = create(&api, &base, false).await {
                    failures.push(format!(
                        "{}: the valid base object was rejected: {e}",
                        case.name
                    ));
                    continue;
                }
                let pp = PatchParams::default();
                let r = api
                    .patch(&name, &pp, &Patch::Merge(patch))
                    .await
                    .map(|_| ());
                let _ = api.delete(&name, &Default::default()).await;
                r
            }
        };
        match result {
            Ok(()) => failures.push(format!(
                "{}: accepted, expected a rejection naming {}",
                case.name, case.field
            )),
            Err(kube::Error::Api(status)) => {
                let msg = &status.message;
                let names_field = msg.contains(&format!("{}:", case.field));
                if status.code != 422 || !names_field || !msg.contains(case.says) {
                    failures.push(format!(
                        "{}: got {} {msg:?}; want field {:?} and {:?}",
                        case.name, status.code, case.field, case.says
                    ));
                }
            }
            Err(e) => failures.push(format!("{}: unexpected error {e}", case.name)),
        }
    }
    ns.delete().await;
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        table.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn allowed_transitions_are_accepted() {
    let c = cluster();
    let client = c.client().await;
    let ns = TestNamespace::new(&client, "transitions").await;
    let vms = Kind::Vm.api(&client, &ns.name);

    // AutomaticByOS -> AutomaticByPlatform is the one Windows switch the seed allows.
    let win = with_name(
        Kind::Vm,
        merge(
            &windows_vm(),
            &json!({"spec": {"patchSettings": {"patchMode": "AutomaticByOS"}}}),
        ),
        "win",
    );
    create(&vms, &win, false)
        .await
        .expect("AutomaticByOS Windows VM");
    vms.patch(
        "win",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"patchSettings": {"patchMode": "AutomaticByPlatform"}}})),
    )
    .await
    .expect("AutomaticByOS -> AutomaticByPlatform is allowed");

    // Disable, then re-enable with another profile (the seed's way to change environment).
    let linux = with_name(Kind::Vm, linux_vm(), "linux");
    create(&vms, &linux, false).await.expect("Linux VM");
    vms.patch(
        "linux",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"management": {"enabled": false}}})),
    )
    .await
    .expect("disabling management");
    vms.patch(
        "linux",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"management": {"enabled": true, "profile": "dev-test"}}})),
    )
    .await
    .expect("re-enabling with a new profile");
    // Linux may move between its two modes.
    vms.patch(
        "linux",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"patchSettings": {"patchMode": "ImageDefault"}}})),
    )
    .await
    .expect("AutomaticByPlatform -> ImageDefault on Linux");

    let got = vms.get("linux").await.expect("reading the VM back");
    assert_eq!(got.data["spec"]["management"]["profile"], "dev-test");
    assert_eq!(
        got.data["spec"]["timeZone"], "UTC",
        "timeZone defaults to UTC"
    );
    let win = vms.get("win").await.expect("reading the Windows VM back");
    assert_eq!(
        win.data["spec"]["patchSettings"]["patchMode"],
        "AutomaticByPlatform"
    );
    ns.delete().await;
}
