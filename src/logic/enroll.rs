//! Enrollment decisions (pure): whether a machine's EnrollmentRequest is approved, the
//! VirtualMachine it becomes (or gets back), and the Enrollment's own status.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

use crate::api::{
    Condition, Enrollment, EnrollmentRequest, ImageReference, Management, OsProfile, OsType,
    PatchMode, PatchSettings, Placement, Text, VirtualMachine, VirtualMachineSpec,
};
use crate::logic::catalog::ImageCatalog;
use crate::logic::conditions::Conditions;

/// Label on every VM an Enrollment created: the Enrollment's name.
pub const ENROLLMENT_LABEL: &str = "automend.io/enrollment";
/// Annotation on an enrolled VM: the fingerprint of its machine's key (`sealed::fingerprint`).
pub const KEY_ANNOTATION: &str = "automend.io/enrollment-key";
/// Annotation on an enrolled VM: the EnrollmentRequest that created it.
pub const REQUEST_ANNOTATION: &str = "automend.io/enrollment-request";
/// Annotations with the machine's facts.
pub const HOSTNAME_ANNOTATION: &str = "automend.io/hostname";
pub const OS_ANNOTATION: &str = "automend.io/os";
pub const ARCH_ANNOTATION: &str = "automend.io/architecture";
/// The enrollment ServiceAccount's name prefix; the admission policy keys on it.
pub const ENROLL_PREFIX: &str = "automend-enroll-";

/// The ServiceAccount whose tokens enroll machines through an Enrollment.
pub fn service_account_name(enrollment: &str) -> String {
    format!("{ENROLL_PREFIX}{enrollment}")
}

/// A VM of the namespace as enrollment sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KnownVm {
    pub name: String,
    /// Its machine's key fingerprint, when it was enrolled.
    pub key: Option<String>,
}

impl KnownVm {
    pub fn of(vm: &VirtualMachine) -> KnownVm {
        KnownVm {
            name: vm.metadata.name.clone().unwrap_or_default(),
            key: vm
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(KEY_ANNOTATION))
                .cloned(),
        }
    }
}

/// Why a request is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    EnrollmentNotFound,
    EnrollmentDeleted,
    Expired,
    LimitReached,
    LabelNotAllowed,
    InvalidFacts,
}

impl Refusal {
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::EnrollmentNotFound => "EnrollmentNotFound",
            Refusal::EnrollmentDeleted => "EnrollmentDeleted",
            Refusal::Expired => "Expired",
            Refusal::LimitReached => "LimitReached",
            Refusal::LabelNotAllowed => "LabelNotAllowed",
            Refusal::InvalidFacts => "InvalidFacts",
        }
    }
}

/// The decision on one request.
#[derive(Clone, Debug)]
pub enum Decision {
    /// The machine becomes (or gets back) this VM. `create` is the VM to create when it is new.
    Approve {
        vm: String,
        key: String,
        reenrolled: bool,
        create: Option<Box<VirtualMachine>>,
    },
    Refuse {
        why: Refusal,
        message: String,
    },
}

/// The requests of one Enrollment decided in order (oldest first), so the limit is exact:
/// `enrolled` is how many machines it admitted before; names chosen here are taken for the rest.
pub fn decide_all(
    enrollment: Option<&Enrollment>,
    mut enrolled: i32,
    requests: &[&EnrollmentRequest],
    vms: &[KnownVm],
    catalog: &ImageCatalog,
    now: Timestamp,
) -> Vec<(String, Decision)> {
    let mut taken: BTreeSet<String> = vms.iter().map(|v| v.name.clone()).collect();
    let mut keys: BTreeMap<String, String> = vms
        .iter()
        .filter_map(|v| v.key.clone().map(|k| (k, v.name.clone())))
        .collect();
    let mut out = Vec::new();
    for req in requests {
        let d = decide(enrollment, enrolled, req, &taken, &keys, catalog, now);
        if let Decision::Approve {
            vm,
            key,
            reenrolled,
            ..
        } = &d
        {
            if !reenrolled {
                enrolled += 1;
            }
            taken.insert(vm.clone());
            keys.insert(key.clone(), vm.clone());
        }
        out.push((req.metadata.name.clone().unwrap_or_default(), d));
    }
    out
}

fn refuse(why: Refusal, message: String) -> Decision {
    Decision::Refuse { why, message }
}

/// The decision on one request.
pub fn decide(
    enrollment: Option<&Enrollment>,
    enrolled: i32,
    req: &EnrollmentRequest,
    taken: &BTreeSet<String>,
    keys: &BTreeMap<String, String>,
    catalog: &ImageCatalog,
    now: Timestamp,
) -> Decision {
    let name = &req.spec.enrollment;
    let Some(e) = enrollment else {
        return refuse(
            Refusal::EnrollmentNotFound,
            format!("enrollment {name} does not exist in this namespace (deleted?)"),
        );
    };
    if e.metadata.deletion_timestamp.is_some() {
        return refuse(
            Refusal::EnrollmentDeleted,
            format!("enrollment {name} is being deleted"),
        );
    }
    if now >= e.spec.expires_at.0 {
        return refuse(
            Refusal::Expired,
            format!(
                "enrollment {name} expired at {}; create a new one (automend enroll create)",
                e.spec.expires_at.0
            ),
        );
    }
    let key = match crate::sealed::fingerprint(&req.spec.public_key) {
        Ok(k) => k,
        Err(m) => return refuse(Refusal::InvalidFacts, format!("spec.{m}")),
    };
    if let Err(m) = check_facts(req) {
        return refuse(Refusal::InvalidFacts, m);
    }
    for k in req.spec.labels.keys() {
        if !e.spec.allowed_labels.contains(k) {
            let allowed = if e.spec.allowed_labels.is_empty() {
                "none".to_string()
            } else {
                e.spec.allowed_labels.join(", ")
            };
            return refuse(
                Refusal::LabelNotAllowed,
                format!(
                    "label {k} is not allowed by enrollment {name} (spec.allowedLabels: {allowed})"
                ),
            );
        }
    }
    if let Some(vm) = keys.get(&key) {
        return Decision::Approve {
            vm: vm.clone(),
            key,
            reenrolled: true,
            create: None,
        };
    }
    if let Some(max) = e.spec.max_machines
        && enrolled >= max
    {
        return refuse(
            Refusal::LimitReached,
            format!("enrollment {name} has reached its limit of {max} machines (spec.maxMachines)"),
        );
    }
    let spec = match vm_spec(e, req, catalog) {
        Ok(s) => s,
        Err(m) => return refuse(Refusal::InvalidFacts, m),
    };
    let vm_name = unique_name(&req.spec.hostname, &key, taken);
    let vm = new_vm(e, req, &vm_name, &key, spec);
    Decision::Approve {
        vm: vm_name,
        key,
        reenrolled: false,
        create: Some(Box::new(vm)),
    }
}

fn is_region(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_label_value(v: &str) -> bool {
    v.len() <= 63
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && (v.is_empty()
            || (v.as_bytes()[0].is_ascii_alphanumeric()
                && v.as_bytes()[v.len() - 1].is_ascii_alphanumeric()))
}

/// Facts a machine reported that the VM cannot be made from, each named.
fn check_facts(req: &EnrollmentRequest) -> Result<(), String> {
    let s = &req.spec;
    let host_ok = s.hostname.split('.').all(|l| {
        !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    });
    if !host_ok {
        return Err(format!(
            "spec.hostname {:?} is not a hostname (letters, digits, '-' and '.')",
            crate::logic::text::clip(&s.hostname, 80)
        ));
    }
    let id_ok = |v: &str| {
        v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    };
    if !id_ok(&s.os_id) || s.os_version.as_deref().is_some_and(|v| !id_ok(v)) {
        return Err(
            "spec.osId and spec.osVersion must be os-release ID and VERSION_ID (letters, digits, '.', '_', '-')"
                .into(),
        );
    }
    if !id_ok(&s.architecture) {
        return Err("spec.architecture must be a machine name such as x86_64 or aarch64".into());
    }
    if let Some(r) = &s.region
        && !is_region(r)
    {
        return Err(format!(
            "spec.region {:?} must be lowercase letters, digits and '-', e.g. \"westeurope\"",
            crate::logic::text::clip(r, 80)
        ));
    }
    for (k, v) in &s.labels {
        if !is_label_value(v) {
            return Err(format!(
                "spec.labels.{k}: {:?} is not a label value (at most 63 letters, digits, '-', '_', '.')",
                crate::logic::text::clip(v, 80)
            ));
        }
    }
    if let Some(tz) = &s.time_zone
        && jiff::tz::TimeZone::get(tz).is_err()
    {
        return Err(format!(
            "spec.timeZone {:?} is not an IANA time zone",
            crate::logic::text::clip(tz, 80)
        ));
    }
    Ok(())
}

/// The image of a machine from its os-release: the marketplace names the catalog knows for the
/// common distributions, else `os-release/<ID>/<VERSION_ID>` (which the catalog does not list,
/// so such a VM is patched with ImageDefault).
pub fn image_for(os_id: &str, version: Option<&str>) -> ImageReference {
    let v = version.unwrap_or("unknown").to_string();
    let major = v.split('.').next().unwrap_or("").to_string();
    let (publisher, offer, sku) = match os_id {
        "debian" => ("Debian", format!("debian-{major}"), major.clone()),
        "ubuntu" => match v.as_str() {
            "20.04" => (
                "Canonical",
                "0001-com-ubuntu-server-focal".into(),
                "20_04-lts".into(),
            ),
            "22.04" => (
                "Canonical",
                "0001-com-ubuntu-server-jammy".into(),
                "22_04-lts".into(),
            ),
            "24.04" => ("Canonical", "ubuntu-24_04-lts".into(), "server".into()),
            _ => ("Canonical", "ubuntu".into(), v.replace('.', "_")),
        },
        "rhel" => ("RedHat", "RHEL".into(), v.clone()),
        "rocky" => ("resf", "rockylinux-x86_64".into(), major.clone()),
        "almalinux" => ("almalinux", "almalinux-x86_64".into(), major.clone()),
        "ol" => ("Oracle", "Oracle-Linux".into(), format!("ol{major}")),
        "fedora" => ("Fedora", "fedora-cloud".into(), major.clone()),
        other => ("os-release", other.to_string(), v.clone()),
    };
    ImageReference {
        publisher: publisher.into(),
        offer: offer.into(),
        sku: sku.into(),
        version: "latest".into(),
    }
}

fn vm_spec(
    e: &Enrollment,
    req: &EnrollmentRequest,
    catalog: &ImageCatalog,
) -> Result<VirtualMachineSpec, String> {
    let s = &req.spec;
    let base = e.spec.placement.clone();
    let region = s
        .region
        .clone()
        .or_else(|| base.as_ref().map(|p| p.region.to_string()))
        .ok_or_else(|| {
            "no region: the machine gave none (--region) and the enrollment has no spec.placement.region"
                .to_string()
        })?;
    let placement = Placement {
        region: region.into(),
        zone: s
            .zone
            .as_deref()
            .map(Text::from)
            .or_else(|| base.as_ref().and_then(|p| p.zone.clone())),
        availability_set: s
            .availability_set
            .as_deref()
            .map(Text::from)
            .or_else(|| base.as_ref().and_then(|p| p.availability_set.clone())),
        update_domain: s
            .update_domain
            .or_else(|| base.as_ref().and_then(|p| p.update_domain)),
        fault_domain: s
            .fault_domain
            .or_else(|| base.as_ref().and_then(|p| p.fault_domain)),
    };
    let image = image_for(&s.os_id, s.os_version.as_deref());
    let supported = catalog
        .lookup(&image)
        .is_some_and(|i| i.automatic_by_platform);
    let patch_mode = e.spec.patch_mode.unwrap_or(if supported {
        PatchMode::AutomaticByPlatform
    } else {
        PatchMode::ImageDefault
    });
    Ok(VirtualMachineSpec {
        management: Management {
            enabled: true,
            profile: e.spec.profile.as_deref().map(Text::from),
        },
        os: OsProfile {
            os_type: OsType::Linux,
            image,
        },
        placement,
        time_zone: s
            .time_zone
            .clone()
            .or_else(|| e.spec.time_zone.clone())
            .unwrap_or_else(|| "UTC".into())
            .into(),
        patch_settings: PatchSettings {
            patch_mode: Some(patch_mode),
            ..Default::default()
        },
        capabilities: Vec::new(),
        health_check: None,
    })
}

/// A DNS label from a hostname: its first label, lowercased, other characters as '-'.
pub fn name_from_hostname(hostname: &str) -> String {
    let first = hostname.split('.').next().unwrap_or("");
    let mut name: String = first
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .take(50)
        .collect();
    name = name.trim_matches('-').to_string();
    if name.is_empty() {
        "machine".into()
    } else {
        name
    }
}

/// The hostname's name, or when another VM has it, the name with the key's first digits (and a
/// counter should even that be taken): a machine never takes over another VM's name.
fn unique_name(hostname: &str, key: &str, taken: &BTreeSet<String>) -> String {
    let base = name_from_hostname(hostname);
    if !taken.contains(&base) {
        return base;
    }
    let short = format!("{base}-{}", &key[..6.min(key.len())]);
    if !taken.contains(&short) {
        return short;
    }
    (2..)
        .map(|i| format!("{short}-{i}"))
        .find(|n| !taken.contains(n))
        .unwrap_or(short)
}

fn new_vm(
    e: &Enrollment,
    req: &EnrollmentRequest,
    name: &str,
    key: &str,
    spec: VirtualMachineSpec,
) -> VirtualMachine {
    let s = &req.spec;
    let enrollment = e.metadata.name.clone().unwrap_or_default();
    let mut labels = s.labels.clone();
    labels.extend(e.spec.labels.clone());
    labels.insert(ENROLLMENT_LABEL.into(), enrollment);
    let os = match &s.os_pretty_name {
        Some(p) => crate::logic::text::clip(p, 128),
        None => format!("{} {}", s.os_id, s.os_version.as_deref().unwrap_or("")),
    };
    let annotations = BTreeMap::from([
        (KEY_ANNOTATION.to_string(), key.to_string()),
        (
            REQUEST_ANNOTATION.to_string(),
            req.metadata.name.clone().unwrap_or_default(),
        ),
        (HOSTNAME_ANNOTATION.to_string(), s.hostname.clone()),
        (OS_ANNOTATION.to_string(), os.trim().to_string()),
        (ARCH_ANNOTATION.to_string(), s.architecture.clone()),
    ]);
    VirtualMachine {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: e.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: Some(annotations),
            ..Default::default()
        },
        spec,
        status: None,
    }
}

/// The Enrollment's Ready condition: whether machines may enroll now, and when that changes.
pub fn conditions(e: &Enrollment, enrolled: i32, now: Timestamp) -> Vec<Condition> {
    let old = e
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or(&[]);
    let mut c = Conditions::new(old, e.metadata.generation, now);
    let expires = e.spec.expires_at.0;
    if e.metadata.deletion_timestamp.is_some() {
        c.set(
            "Ready",
            false,
            "Deleting",
            "the enrollment is being deleted; its credential no longer works",
        );
    } else if now >= expires {
        c.set(
            "Ready",
            false,
            "Expired",
            format!("expired at {expires}; enrolled VMs are not affected"),
        );
    } else if let Some(max) = e.spec.max_machines
        && enrolled >= max
    {
        c.set(
            "Ready",
            false,
            "Exhausted",
            format!("{enrolled} of {max} machines enrolled: the limit is reached"),
        );
    } else {
        let room = match e.spec.max_machines {
            Some(max) => format!("{enrolled} of {max} machines enrolled"),
            None => format!("{enrolled} machines enrolled, no limit"),
        };
        c.set(
            "Ready",
            true,
            "Active",
            format!("{room}; expires at {expires}"),
        );
    }
    c.into_sorted()
}

/// When a decided request is deleted (like a CertificateSigningRequest's garbage collection).
pub const DECIDED_RETENTION: std::time::Duration = std::time::Duration::from_secs(3600);

/// When a request decided at `decided` is deleted.
pub fn expired_at(decided: Timestamp) -> Timestamp {
    crate::logic::duration::add(decided, DECIDED_RETENTION)
}

/// Whether a decided request has been kept long enough.
pub fn expired_request(decided_at: Option<&Time>, now: Timestamp) -> bool {
    decided_at.is_some_and(|t| now >= expired_at(t.0))
}

#[cfg(test)]
#[path = "enroll_tests.rs"]
mod tests;
