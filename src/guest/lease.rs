//! The guest's heartbeat Lease. The guest creates it itself, with its first renewal: a
//! server-side apply of the whole Lease (labelled like the VM's identity, owned by the VM), which
//! creates it when missing — the API server authorizes that as `create` of that one name, so the
//! guest's Role (or the guest authorizer) confines it to its own Lease. Later renewals are merge
//! patches of the times. Until the first renewal succeeds (the VM not seen yet, its identity not
//! yet authorized), it is tried again within seconds rather than a heartbeat interval later.
//!
//! (Controllers before this version created the Lease; a guest of this version takes over one
//! that exists. The controller still creates it for a guest that has not within
//! `logic::vm::FIRST_HEARTBEAT_WAIT`: an agent of an older version renews but never creates.)

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, OwnerReference};
use kube::api::{Api, Patch, PatchParams};
use tracing::debug;

use crate::api::VirtualMachine;
use crate::identity::{self, GUEST_MANAGER};

pub(super) struct Heartbeat {
    leases: Api<Lease>,
    namespace: String,
    vm: String,
    /// The VM as the Lease's owner, once the watch has shown it.
    owner: Option<OwnerReference>,
    /// The Lease has been created or renewed by this guest.
    acquired: bool,
    /// Failed tries since the last success (the retry delay grows with them).
    failures: u32,
}

/// The spec a renewal writes.
fn spec(vm: &str, every: Duration, now: Timestamp, acquire: bool) -> LeaseSpec {
    LeaseSpec {
        holder_identity: Some(identity::guest_name(vm)),
        lease_duration_seconds: Some(i32::try_from(every.as_secs().max(1) * 3).unwrap_or(i32::MAX)),
        renew_time: Some(MicroTime(now)),
        acquire_time: acquire.then_some(MicroTime(now)),
        ..Default::default()
    }
}

/// When to try again after `failures` failed tries before the Lease was first acquired: 1 s,
/// 2 s, 4 s, … never later than the regular interval.
pub(super) fn retry_delay(failures: u32, every: Duration) -> Duration {
    Duration::from_secs(1u64 << failures.min(16)).min(every)
}

impl Heartbeat {
    pub fn new(leases: Api<Lease>, namespace: &str, vm: &str) -> Self {
        Heartbeat {
            leases,
            namespace: namespace.to_string(),
            vm: vm.to_string(),
            owner: None,
            acquired: false,
            failures: 0,
        }
    }

    /// The VM as the watch shows it (its uid makes it the Lease's owner).
    pub fn seen(&mut self, vm: &VirtualMachine) {
        if self.owner.is_none() {
            self.owner = identity::owner_of(vm);
        }
    }

    /// Renew (creating the Lease the first time). Returns when to try again if this failed
    /// before the Lease was ever acquired (`None`: at the regular interval).
    pub async fn renew(&mut self, every: Duration) -> Option<Duration> {
        let now = Timestamp::now();
        let result = if self.acquired {
            let patch = serde_json::json!({ "spec": spec(&self.vm, every, now, false) });
            let renewed = self
                .leases
                .patch(
                    &identity::lease_name(&self.vm),
                    // Named, so the Lease's managedFields say who renews it (unnamed, the API
                    // server records "unknown").
                    &PatchParams {
                        field_manager: Some(GUEST_MANAGER.into()),
                        ..Default::default()
                    },
                    &Patch::Merge(patch),
                )
                .await;
            match renewed {
                // Someone deleted it: create it again at once.
                Err(kube::Error::Api(s)) if s.code == 404 => self.create(every, now).await,
                other => other.map(|_| ()),
            }
        } else {
            self.create(every, now).await
        };
        match result {
            Ok(()) => {
                self.acquired = true;
                self.failures = 0;
                None
            }
            Err(e) => {
                debug!(vm = %self.vm, error = %e, "renewing the heartbeat Lease");
                self.failures = self.failures.saturating_add(1);
                (!self.acquired).then(|| retry_delay(self.failures - 1, every))
            }
        }
    }

    /// The whole Lease, applied: created when missing, taken over when it exists.
    async fn create(&self, every: Duration, now: Timestamp) -> Result<(), kube::Error> {
        let Some(owner) = self.owner.clone() else {
            return Err(kube::Error::Service(
                "the VirtualMachine has not been seen yet (the Lease's owner)".into(),
            ));
        };
        let lease = identity::guest_lease(
            &self.namespace,
            &self.vm,
            Some(owner),
            spec(&self.vm, every, now, true),
        );
        self.leases
            .patch(
                &identity::lease_name(&self.vm),
                &PatchParams::apply(GUEST_MANAGER).force(),
                &Patch::Apply(&lease),
            )
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guest_not_yet_heartbeating_tries_again_within_seconds() {
        let every = Duration::from_secs(60);
        let delays: Vec<u64> = (0..8).map(|f| retry_delay(f, every).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(retry_delay(1000, every), every);
        assert_eq!(
            retry_delay(3, Duration::from_secs(2)),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn the_guests_lease_is_labelled_and_owned_like_the_controllers() {
        let vm: VirtualMachine = serde_json::from_value(serde_json::json!({
            "apiVersion": "automend.io/v1alpha1", "kind": "VirtualMachine",
            "metadata": { "name": "web-1", "namespace": "fleet", "uid": "u-1" },
            "spec": {
                "os": { "type": "Linux", "image": { "publisher": "Canonical", "offer": "ubuntu-24_04-lts", "sku": "server" } },
                "placement": { "region": "westeurope" },
            },
        }))
        .expect("vm");
        let now = Timestamp::UNIX_EPOCH;
        let mine = identity::guest_lease(
            "fleet",
            "web-1",
            identity::owner_of(&vm),
            spec("web-1", Duration::from_secs(60), now, true),
        );
        let controllers = identity::lease(&vm);
        assert_eq!(mine.metadata.name, controllers.metadata.name);
        assert_eq!(mine.metadata.namespace, controllers.metadata.namespace);
        assert_eq!(mine.metadata.labels, controllers.metadata.labels);
        assert_eq!(
            mine.metadata.owner_references,
            controllers.metadata.owner_references
        );
        let owner = &mine.metadata.owner_references.expect("owner")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("VirtualMachine", "u-1")
        );
        assert_eq!(owner.block_owner_deletion, Some(false));
        let spec = mine.spec.expect("spec");
        assert_eq!(
            spec.holder_identity.as_deref(),
            Some("automend-guest-web-1")
        );
        assert_eq!(spec.lease_duration_seconds, Some(180));
        assert!(spec.acquire_time.is_some() && spec.renew_time.is_some());
    }
}
