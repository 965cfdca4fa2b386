//! Names and objects of a VM's guest identity: a ServiceAccount, a Role that lets it read its own
//! VirtualMachine, write that VM's status, renew its own heartbeat Lease and its own token, the RoleBinding, and
//! the Lease. The ValidatingAdmissionPolicy in the chart narrows status writes to `status.guest`.

use std::collections::BTreeMap;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;

use crate::api::VirtualMachine;

pub mod authorizer;

/// Every guest ServiceAccount's name starts with this; the admission policy keys on it.
pub const GUEST_PREFIX: &str = "automend-guest-";
/// Field manager of the controller's writes.
pub const CONTROLLER_MANAGER: &str = "automend-controller";
/// Field manager of the guest's writes (agent and simulator).
pub const GUEST_MANAGER: &str = "automend-guest";
/// Field manager of the rollout controller's part of a VM's status (`desired.installation`,
/// `patchStatus.lastPatchInstallationSummary`).
pub const ROLLOUT_MANAGER: &str = "automend-rollout";
/// Label on everything the controller creates for a VM: the VM's name.
pub const VM_LABEL: &str = "automend.io/virtual-machine";
/// Annotation on a guest Role: the version of its rules. A Role of an older version is updated
/// (version 2 added the renewal of the guest's own token; version 3 the creation of its own Lease).
pub const RULES_ANNOTATION: &str = "automend.io/rules-version";
pub const RULES_VERSION: &str = "3";
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "automend";
/// The label selector of objects the controller created for VMs.
pub const OWNED_SELECTOR: &str =
    "app.kubernetes.io/managed-by=automend,automend.io/virtual-machine";

/// The guest ServiceAccount (and Role, RoleBinding) of a VM.
pub fn guest_name(vm: &str) -> String {
    format!("{GUEST_PREFIX}{vm}")
}

/// The heartbeat Lease of a VM has the VM's name, in the VM's namespace (like a Node's Lease).
pub fn lease_name(vm: &str) -> String {
    vm.to_string()
}

/// The VM as the owner of what is created for it (its deletion deletes them; no
/// blockOwnerDeletion, which would need permissions on the VM's finalizers).
pub fn owner_of(vm: &VirtualMachine) -> Option<OwnerReference> {
    vm.controller_owner_ref(&()).map(|o| OwnerReference {
        block_owner_deletion: Some(false),
        ..o
    })
}

fn meta(vm: &VirtualMachine, name: String) -> ObjectMeta {
    let vm_name = vm.meta().name.clone().unwrap_or_default();
    meta_for(vm.meta().namespace.clone(), &vm_name, name, owner_of(vm))
}

fn meta_for(
    namespace: Option<String>,
    vm_name: &str,
    name: String,
    owner: Option<OwnerReference>,
) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace,
        labels: Some(BTreeMap::from([
            (MANAGED_BY.to_string(), MANAGED_BY_VALUE.to_string()),
            (VM_LABEL.to_string(), vm_name.to_string()),
        ])),
        owner_references: owner.map(|o| vec![o]),
        ..Default::default()
    }
}

pub fn service_account(vm: &VirtualMachine) -> ServiceAccount {
    let name = guest_name(&vm.meta().name.clone().unwrap_or_default());
    ServiceAccount {
        metadata: meta(vm, name),
        automount_service_account_token: Some(false),
        ..Default::default()
    }
}

/// What a VM's guest may do, as RBAC rules: read its own VirtualMachine, write that VM's status,
/// renew its own heartbeat Lease and its own token. The guest Role carries exactly these rules and
/// the guest authorizer (`authorizer`, for clusters that route guest requests to the controller)
/// allows exactly these requests.
pub fn guest_rules(vm_name: &str) -> Vec<PolicyRule> {
    let rule = |group: &str, resource: &str, name: &str, verbs: &[&str]| PolicyRule {
        api_groups: Some(vec![group.to_string()]),
        resources: Some(vec![resource.to_string()]),
        resource_names: Some(vec![name.to_string()]),
        verbs: verbs.iter().map(|v| v.to_string()).collect(),
        non_resource_urls: None,
    };
    vec![
        rule(
            crate::api::GROUP,
            "virtualmachines",
            vm_name,
            &["get", "list", "watch"],
        ),
        rule(
            crate::api::GROUP,
            "virtualmachines/status",
            vm_name,
            &["get", "patch", "update"],
        ),
        // The guest creates its own Lease (server-side apply creates it by name, which the API
        // server authorizes as `create` of that name) and renews it.
        rule(
            "coordination.k8s.io",
            "leases",
            &lease_name(vm_name),
            &["get", "patch", "update", "create"],
        ),
        // The agent renews its own token (TokenRequest) before it expires.
        rule(
            "",
            "serviceaccounts/token",
            &guest_name(vm_name),
            &["create"],
        ),
    ]
}

pub fn role(vm: &VirtualMachine) -> Role {
    let vm_name = vm.meta().name.clone().unwrap_or_default();
    let mut metadata = meta(vm, guest_name(&vm_name));
    metadata.annotations = Some(BTreeMap::from([(
        RULES_ANNOTATION.to_string(),
        RULES_VERSION.to_string(),
    )]));
    Role {
        metadata,
        rules: Some(guest_rules(&vm_name)),
    }
}

pub fn role_binding(vm: &VirtualMachine) -> RoleBinding {
    let vm_name = vm.meta().name.clone().unwrap_or_default();
    binding(meta(vm, guest_name(&vm_name)))
}

/// A RoleBinding of the Role named like it to the ServiceAccount named like it, in its namespace
/// (every identity the controller creates is a ServiceAccount, Role and RoleBinding of one name).
pub fn binding(metadata: ObjectMeta) -> RoleBinding {
    let name = metadata.name.clone().unwrap_or_default();
    let namespace = metadata.namespace.clone();
    RoleBinding {
        metadata,
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: name.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name,
            namespace,
            api_group: None,
        }]),
    }
}

pub fn lease(vm: &VirtualMachine) -> Lease {
    let vm_name = vm.meta().name.clone().unwrap_or_default();
    Lease {
        metadata: meta(vm, lease_name(&vm_name)),
        spec: Some(LeaseSpec::default()),
    }
}

/// The heartbeat Lease as its guest creates it: labelled like everything of the VM's identity
/// (the controller's Lease watch selects on that) and owned by the VM.
pub fn guest_lease(
    namespace: &str,
    vm_name: &str,
    owner: Option<OwnerReference>,
    spec: LeaseSpec,
) -> Lease {
    Lease {
        metadata: meta_for(
            Some(namespace.to_string()),
            vm_name,
            lease_name(vm_name),
            owner,
        ),
        spec: Some(spec),
    }
}
