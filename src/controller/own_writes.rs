//! Which VM changes are worth a reconcile: not the controller's own status writes coming back
//! through the watch (issue 17: they were half of all reconciles, each deciding nothing new).
//!
//! A change passes when anything the VM controller did not write changed (spec, generation,
//! labels, annotations, finalizers, deletion, the guest's report, the rollout controller's
//! fields), or when the controller's part of the status changed to something the controller did
//! not write (a user or another tool edited it: the reconcile puts it right).

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};

use kube::ResourceExt;

use crate::api::{VirtualMachine, VirtualMachineStatus};
use crate::logic::vm::controller_part;

use super::identities::{Key, key};

/// What a VM change seen by the watch is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Nothing in it differs from what was seen before (a relist, a resourceVersion-only change).
    None,
    /// Only the controller's part of the status, to what the controller wrote.
    OwnWrite,
    /// Something else: worth a reconcile.
    Other,
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Seen {
    /// What others own, as last passed on.
    others: u64,
    /// The controller's part, as last seen.
    part: u64,
    /// The controller's part as this controller last wrote it.
    written: Option<u64>,
}

/// The filter's memory: three hashes per VM.
#[derive(Clone, Default)]
pub struct OwnWrites(Arc<Mutex<HashMap<Key, Seen>>>);

fn hash_json(value: &impl serde::Serialize) -> u64 {
    let mut h = DefaultHasher::new();
    // Serialization of these types cannot fail (no maps with non-string keys); an error hashes
    // as empty, which at worst passes one change too many.
    serde_json::to_vec(value).unwrap_or_default().hash(&mut h);
    h.finish()
}

/// The hash of the controller's part of a status (what `apply` writes).
pub fn part_hash(part: &VirtualMachineStatus) -> u64 {
    hash_json(part)
}

/// The hash of everything in a VM the VM controller does not write itself.
fn others_hash(vm: &VirtualMachine) -> u64 {
    let m = &vm.metadata;
    let s = vm.status.as_ref();
    let desired = s.and_then(|s| s.desired.as_ref());
    hash_json(&(
        (m.generation, &m.labels, &m.annotations, &m.finalizers),
        (&m.deletion_timestamp, &m.uid, &vm.spec),
        s.and_then(|s| s.guest.as_ref()),
        desired.and_then(|d| d.installation.as_ref()),
        desired.and_then(|d| d.release_assessment.as_ref()),
        s.and_then(|s| s.patch_status.as_ref())
            .and_then(|p| p.last_patch_installation_summary.as_ref()),
    ))
}

impl OwnWrites {
    /// What this change of `vm` (seen by the watch) is. It also stands in for a resourceVersion
    /// predicate: a relisted VM that did not change is `Change::None`.
    pub fn see(&self, vm: &VirtualMachine) -> Change {
        let others = others_hash(vm);
        let part = part_hash(&vm.status.as_ref().map(controller_part).unwrap_or_default());
        let Ok(mut seen) = self.0.lock() else {
            return Change::Other;
        };
        let k = key(&vm.namespace().unwrap_or_default(), &vm.name_any());
        match seen.get_mut(&k) {
            None => {
                seen.insert(
                    k,
                    Seen {
                        others,
                        part,
                        written: None,
                    },
                );
                Change::Other
            }
            Some(s) => {
                let change = if s.others != others {
                    Change::Other
                } else if s.part == part {
                    Change::None
                } else if s.written == Some(part) {
                    Change::OwnWrite
                } else {
                    Change::Other
                };
                s.others = others;
                s.part = part;
                change
            }
        }
    }

    /// Whether this change of `vm` should reconcile it.
    #[cfg(test)]
    fn passes(&self, vm: &VirtualMachine) -> bool {
        self.see(vm) == Change::Other
    }

    /// The controller wrote `part` to the VM's status.
    pub fn wrote(&self, ns: &str, name: &str, part: &VirtualMachineStatus) {
        if let Ok(mut seen) = self.0.lock() {
            seen.entry(key(ns, name)).or_default().written = Some(part_hash(part));
        }
    }

    /// The VM is gone.
    pub fn forget(&self, ns: &str, name: &str) {
        if let Ok(mut seen) = self.0.lock() {
            seen.remove(&key(ns, name));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{GuestState, VmPhase};

    fn vm() -> VirtualMachine {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "automend.io/v1alpha1", "kind": "VirtualMachine",
            "metadata": { "name": "web-1", "namespace": "fleet", "generation": 1 },
            "spec": {
                "management": { "enabled": true, "profile": "p" },
                "os": { "type": "Linux", "image":
                    { "publisher": "Canonical", "offer": "ubuntu-24_04-lts", "sku": "server" } },
                "placement": { "region": "westeurope" },
            }
        }))
        .expect("vm")
    }

    fn with_phase(vm: &VirtualMachine, phase: VmPhase) -> VirtualMachine {
        let mut v = vm.clone();
        v.status.get_or_insert_with(Default::default).phase = Some(phase);
        v
    }

    #[test]
    fn the_controllers_own_status_write_does_not_reconcile_again() {
        let own = OwnWrites::default();
        let created = vm();
        assert!(own.passes(&created), "a VM seen first reconciles");
        let written = with_phase(&created, VmPhase::Pending);
        own.wrote("fleet", "web-1", written.status.as_ref().expect("status"));
        assert_eq!(
            own.see(&written),
            Change::OwnWrite,
            "our own write coming back"
        );
        // The same write seen again (a relist) is no change at all.
        assert_eq!(own.see(&written), Change::None);
    }

    #[test]
    fn the_guests_report_and_spec_changes_reconcile() {
        let own = OwnWrites::default();
        let mut v = with_phase(&vm(), VmPhase::Pending);
        own.wrote("fleet", "web-1", v.status.as_ref().expect("status"));
        assert!(own.passes(&v));
        if let Some(s) = v.status.as_mut() {
            s.guest = Some(Box::new(GuestState {
                applied_hash: Some("abc".into()),
                ..Default::default()
            }));
        }
        assert!(own.passes(&v), "the guest reported");
        v.metadata.generation = Some(2);
        assert!(own.passes(&v), "the spec changed");
        v.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert("automend.io/assess".into(), "now".into());
        assert!(own.passes(&v), "an on-demand assessment was asked for");
        assert!(!own.passes(&v), "nothing changed");
    }

    #[test]
    fn someone_elses_edit_of_the_controllers_fields_reconciles() {
        let own = OwnWrites::default();
        let v = with_phase(&vm(), VmPhase::Configured);
        own.wrote("fleet", "web-1", v.status.as_ref().expect("status"));
        assert!(own.passes(&v));
        assert!(!own.passes(&v));
        // A user edits the phase: put right.
        let edited = with_phase(&vm(), VmPhase::Failed);
        assert!(own.passes(&edited));
        // A forgotten VM (deleted) starts afresh.
        own.forget("fleet", "web-1");
        assert!(own.passes(&v));
    }
}
