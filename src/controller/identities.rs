//! Which guest identity objects (ServiceAccount, Role, RoleBinding, heartbeat Lease) exist, per
//! VM: a few flags per VM instead of four cached objects (issue 17: the four metadata caches were
//! about a quarter of the controller's memory per VM).
//!
//! Fed by the four watches' events. It answers `ensure_identity` (create what is missing) and
//! says which VMs to reconcile: only when an object a VM had goes away (someone deleted it: the
//! reconcile creates it again) or its Role's rules are out of date — never for the controller's
//! own creations, which the old owner trigger turned into three reconciles per onboarded VM.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use kube::ResourceExt;
use kube::runtime::watcher::Event;

use crate::identity::{RULES_ANNOTATION, RULES_VERSION, VM_LABEL};

/// One kind of identity object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Part {
    ServiceAccount,
    Role,
    RoleBinding,
    Lease,
}

impl Part {
    fn bit(self) -> u8 {
        match self {
            Part::ServiceAccount => 1,
            Part::Role => 2,
            Part::RoleBinding => 4,
            Part::Lease => 8,
        }
    }

    fn index(self) -> usize {
        self.bit().trailing_zeros() as usize
    }
}

/// Bit set for a Role whose rules are of an older version.
const STALE_ROLE: u8 = 16;

/// What exists of one VM's identity.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Parts(u8);

impl Parts {
    pub fn has(self, part: Part) -> bool {
        self.0 & part.bit() != 0
    }

    /// The Role exists with rules of an older version (to be brought up to date).
    pub fn stale_role(self) -> bool {
        self.0 & STALE_ROLE != 0
    }
}

/// "namespace/vm": one allocation per VM for the controller's per-VM tables.
pub(super) type Key = Box<str>;

pub(super) fn key(ns: &str, vm: &str) -> Key {
    format!("{ns}/{vm}").into_boxed_str()
}

#[derive(Default)]
struct Inner {
    vms: HashMap<Key, u8>,
    /// Per part, the VMs seen in the relist under way (its end forgets the rest).
    relisting: [Option<HashSet<Key>>; 4],
    listed: [bool; 4],
}

#[derive(Clone, Default)]
pub struct Identities(Arc<Mutex<Inner>>);

/// The VM an identity object belongs to (its label; its name for the Lease), and its namespace.
fn owner<K: kube::Resource>(obj: &K, part: Part) -> Option<(String, String)> {
    let ns = obj.meta().namespace.clone()?;
    let vm = match part {
        Part::Lease => obj.meta().name.clone(),
        _ => obj.labels().get(VM_LABEL).cloned(),
    }?;
    Some((ns, vm))
}

fn bits_of<K: kube::Resource>(obj: &K, part: Part) -> u8 {
    let stale = part == Part::Role
        && obj.annotations().get(RULES_ANNOTATION).map(String::as_str) != Some(RULES_VERSION);
    part.bit() | if stale { STALE_ROLE } else { 0 }
}

/// The bits of `part` in a VM's flags (the stale-Role bit goes with the Role).
fn mask(part: Part) -> u8 {
    part.bit() | if part == Part::Role { STALE_ROLE } else { 0 }
}

impl Identities {
    pub fn get(&self, ns: &str, vm: &str) -> Parts {
        self.0
            .lock()
            .ok()
            .and_then(|i| i.vms.get(&key(ns, vm)).copied())
            .map(Parts)
            .unwrap_or_default()
    }

    /// The controller created `part` of the VM's identity (the watch confirms it a moment later;
    /// until then nothing asks to create it again).
    pub fn created(&self, ns: &str, vm: &str, part: Part) {
        if let Ok(mut i) = self.0.lock() {
            let flags = i.vms.entry(key(ns, vm)).or_default();
            *flags = (*flags & !mask(part)) | part.bit();
        }
    }

    /// Whether every part has been listed once.
    pub fn ready(&self) -> bool {
        self.0.lock().is_ok_and(|i| i.listed.iter().all(|l| *l))
    }

    /// Take one watch event of `part`; the (namespace, VM) pairs to reconcile.
    pub fn record<K: kube::Resource>(&self, part: Part, event: &Event<K>) -> Vec<(String, String)> {
        let Ok(mut guard) = self.0.lock() else {
            return Vec::new();
        };
        let inner = &mut *guard;
        let m = mask(part);
        let mut wake = Vec::new();
        let mut set = |vms: &mut HashMap<Key, u8>, ns: &str, vm: &str, bits: u8| {
            let flags = vms.entry(key(ns, vm)).or_default();
            let before = *flags;
            *flags = (before & !m) | bits;
            let lost = before & part.bit() != 0 && bits & part.bit() == 0;
            let went_stale = bits & STALE_ROLE != 0 && before & STALE_ROLE == 0;
            if *flags == 0 {
                vms.remove(&key(ns, vm));
            }
            if lost || went_stale {
                wake.push((ns.to_string(), vm.to_string()));
            }
        };
        match event {
            Event::Init => inner.relisting[part.index()] = Some(HashSet::new()),
            Event::InitApply(obj) | Event::Apply(obj) => {
                if let Some((ns, vm)) = owner(obj, part) {
                    set(&mut inner.vms, &ns, &vm, bits_of(obj, part));
                    if let (Event::InitApply(_), Some(seen)) =
                        (event, inner.relisting[part.index()].as_mut())
                    {
                        seen.insert(key(&ns, &vm));
                    }
                }
            }
            Event::Delete(obj) => {
                if let Some((ns, vm)) = owner(obj, part) {
                    set(&mut inner.vms, &ns, &vm, 0);
                }
            }
            Event::InitDone => {
                let seen = inner.relisting[part.index()].take().unwrap_or_default();
                let gone: Vec<Key> = inner
                    .vms
                    .iter()
                    .filter(|(k, flags)| **flags & part.bit() != 0 && !seen.contains(*k))
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in gone {
                    if let Some((ns, vm)) = k.split_once('/') {
                        set(&mut inner.vms, ns, vm, 0);
                    }
                }
                inner.listed[part.index()] = true;
            }
        }
        wake
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::rbac::v1::Role;
    use kube::core::PartialObjectMeta;

    const PARTS: [Part; 4] = [
        Part::ServiceAccount,
        Part::Role,
        Part::RoleBinding,
        Part::Lease,
    ];

    fn role(vm: &str, version: &str) -> PartialObjectMeta<Role> {
        let mut r = PartialObjectMeta::<Role>::default();
        r.metadata.name = Some(format!("automend-guest-{vm}"));
        r.metadata.namespace = Some("fleet".into());
        r.metadata.labels = Some([(VM_LABEL.to_string(), vm.to_string())].into());
        r.metadata.annotations = Some([(RULES_ANNOTATION.to_string(), version.to_string())].into());
        r
    }

    #[test]
    fn own_creations_wake_nothing_and_a_deletion_wakes_its_vm() {
        let ids = Identities::default();
        ids.created("fleet", "a", Part::Role);
        assert!(ids.get("fleet", "a").has(Part::Role));
        assert!(!ids.get("fleet", "a").has(Part::Lease));
        let current = role("a", RULES_VERSION);
        assert!(
            ids.record(Part::Role, &Event::Apply(current.clone()))
                .is_empty()
        );
        assert_eq!(
            ids.record(Part::Role, &Event::Delete(current)),
            [("fleet".to_string(), "a".to_string())]
        );
        assert!(!ids.get("fleet", "a").has(Part::Role));
    }

    #[test]
    fn a_role_of_older_rules_is_stale_and_wakes_its_vm_once() {
        let ids = Identities::default();
        let old = role("a", "1");
        assert_eq!(ids.record(Part::Role, &Event::Apply(old.clone())).len(), 1);
        assert!(ids.get("fleet", "a").stale_role());
        assert!(ids.record(Part::Role, &Event::Apply(old)).is_empty());
        ids.record(Part::Role, &Event::Apply(role("a", RULES_VERSION)));
        assert!(!ids.get("fleet", "a").stale_role());
    }

    #[test]
    fn a_relist_forgets_what_it_no_longer_lists() {
        let ids = Identities::default();
        assert!(!ids.ready());
        for part in PARTS {
            ids.record::<Role>(part, &Event::Init);
            ids.record::<Role>(part, &Event::InitDone);
        }
        assert!(ids.ready());
        ids.record(Part::Role, &Event::Apply(role("a", RULES_VERSION)));
        ids.record(Part::Role, &Event::Apply(role("b", RULES_VERSION)));
        // The watch was down while a's Role was deleted: the relist lists only b.
        ids.record::<PartialObjectMeta<Role>>(Part::Role, &Event::Init);
        ids.record(Part::Role, &Event::InitApply(role("b", RULES_VERSION)));
        let woken = ids.record::<PartialObjectMeta<Role>>(Part::Role, &Event::InitDone);
        assert_eq!(woken, [("fleet".to_string(), "a".to_string())]);
        assert!(!ids.get("fleet", "a").has(Part::Role));
        assert!(ids.get("fleet", "b").has(Part::Role));
    }
}
