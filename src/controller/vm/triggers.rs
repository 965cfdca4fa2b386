//! What makes a VM reconcile besides its own changes: a profile's spec, a namespace's labels, a
//! heartbeat that starts or stops.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Namespace;
use kube::ResourceExt;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::ObjectRef;

use super::super::shared::Shared;
use crate::api::{ConfigurationProfile, VirtualMachine};
use crate::logic::conditions::is_true;
use crate::logic::vm::HEARTBEAT;

/// Profiles: exactly the VMs that use (or could be assigned) a profile, when its spec changes or
/// it goes away; its status updates are ignored (the generation is remembered).
pub(super) fn profile_changes(
    shared: &Shared,
) -> impl Fn(ConfigurationProfile) -> Vec<ObjectRef<VirtualMachine>> + Send + Sync + 'static {
    let seen_generations: Mutex<HashMap<String, Option<i64>>> = Mutex::default();
    let profiles_store = shared.profiles.clone();
    let vms_for_profiles = shared.vms.clone();
    move |p: ConfigurationProfile| {
        let name = p.name_any();
        let current = profiles_store.get(&ObjectRef::new(&name));
        let generation = current.as_ref().and_then(|c| c.metadata.generation);
        let changed = match seen_generations.lock() {
            Ok(mut seen) => {
                let before = seen.insert(name.clone(), generation);
                if current.is_none() {
                    seen.remove(&name);
                }
                before != Some(generation) || current.is_none()
            }
            Err(_) => true,
        };
        if !changed {
            return Vec::new();
        }
        vms_for_profiles
            .state()
            .into_iter()
            .filter(|vm| {
                vm.spec.management.profile.as_deref() == Some(name.as_str())
                    || vm.status.as_ref().and_then(|s| s.profile.as_deref()) == Some(name.as_str())
                    || vm.spec.management.profile.is_none()
            })
            .map(|vm| ObjectRef::from_obj(&*vm))
            .collect()
    }
}

/// Namespaces: their labels feed assignment namespace selectors.
pub(super) fn namespace_changes(
    shared: &Shared,
) -> impl Fn(PartialObjectMeta<Namespace>) -> Vec<ObjectRef<VirtualMachine>> + Send + Sync + 'static
{
    let vms_for_ns = shared.vms.clone();
    move |n: PartialObjectMeta<Namespace>| {
        let name = n.name_any();
        vms_for_ns
            .state()
            .into_iter()
            .filter(|vm| {
                vm.namespace().as_deref() == Some(name.as_str())
                    && vm.spec.management.profile.is_none()
            })
            .map(|vm| ObjectRef::from_obj(&*vm))
            .collect::<Vec<_>>()
    }
}

/// Heartbeats: a renewal only matters when the VM is not known to be running; expiry is caught
/// by the requeue each reconcile sets at the Lease's expiry. No reconcile per renewal. (A Lease
/// that goes away wakes its VM through `Identities`.)
pub(super) fn heartbeat_changes(
    shared: &Shared,
) -> impl Fn(&Lease) -> Option<ObjectRef<VirtualMachine>> + Send + Sync + 'static {
    let vms_for_leases = shared.vms.clone();
    move |lease: &Lease| {
        let (Some(name), Some(ns)) = (
            lease.metadata.name.as_deref(),
            lease.metadata.namespace.as_deref(),
        ) else {
            return None;
        };
        // A Lease nobody has renewed yet (the controller created it for a guest that had not)
        // says nothing new about the VM.
        lease.spec.as_ref()?.renew_time.as_ref()?;
        let vm_ref = ObjectRef::<VirtualMachine>::new(name).within(ns);
        let vm = vms_for_leases.get(&vm_ref)?;
        let known_alive = vm
            .status
            .as_ref()
            .is_some_and(|s| is_true(&s.conditions, HEARTBEAT));
        (!known_alive).then_some(vm_ref)
    }
}
