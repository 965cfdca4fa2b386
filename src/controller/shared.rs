//! The caches the controllers share (read side), and when they are ready.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, Store};

use super::context::Error;
use crate::api::{ConfigurationProfile, VirtualMachine};
use crate::logic::vm::heartbeat::{self, Observed};

/// The controller's own record of every guest's last heartbeat, fed by the Lease watch (see
/// `logic::vm::heartbeat`: renewals are timed with the controller's clock, not the guest's).
#[derive(Clone, Default)]
pub struct Heartbeats(Arc<Mutex<HashMap<(String, String), Observed>>>);

impl Heartbeats {
    /// Record what the Lease watch delivered.
    pub fn record(&self, event: &kube::runtime::watcher::Event<Lease>) {
        use kube::runtime::watcher::Event;
        let Ok(mut seen) = self.0.lock() else {
            return;
        };
        let key = |l: &Lease| Some((l.metadata.namespace.clone()?, l.metadata.name.clone()?));
        match event {
            Event::Apply(l) | Event::InitApply(l) => {
                let Some(k) = key(l) else { return };
                let renew = l
                    .spec
                    .as_ref()
                    .and_then(|s| s.renew_time.as_ref())
                    .map(|t| t.0);
                if let Some(o) = heartbeat::observe(seen.get(&k), renew, jiff::Timestamp::now()) {
                    seen.insert(k, o);
                }
            }
            Event::Delete(l) => {
                if let Some(k) = key(l) {
                    seen.remove(&k);
                }
            }
            Event::Init | Event::InitDone => {}
        }
    }

    pub fn get(&self, namespace: &str, name: &str) -> Option<Observed> {
        let seen = self.0.lock().ok()?;
        seen.get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }
}

/// Caches the two controllers share (read side).
#[derive(Clone)]
pub struct Shared {
    pub vms: Store<VirtualMachine>,
    pub profiles: Store<ConfigurationProfile>,
    pub namespaces: Store<PartialObjectMeta<Namespace>>,
    pub leases: Store<Lease>,
    pub service_accounts: Store<PartialObjectMeta<ServiceAccount>>,
    pub roles: Store<PartialObjectMeta<Role>>,
    pub role_bindings: Store<PartialObjectMeta<RoleBinding>>,
    pub heartbeats: Heartbeats,
    writers: Arc<Mutex<Option<Writers>>>,
    ready: tokio::sync::watch::Receiver<bool>,
    /// The namespace of every VM change the VM watch sees (for the rollout controller).
    pub vm_changes: tokio::sync::broadcast::Sender<String>,
    waiting_on: Arc<Mutex<&'static str>>,
}

pub(super) struct Writers {
    pub vms: reflector::store::Writer<VirtualMachine>,
    pub profiles: reflector::store::Writer<ConfigurationProfile>,
    pub namespaces: reflector::store::Writer<PartialObjectMeta<Namespace>>,
    pub leases: reflector::store::Writer<Lease>,
    pub service_accounts: reflector::store::Writer<PartialObjectMeta<ServiceAccount>>,
    pub roles: reflector::store::Writer<PartialObjectMeta<Role>>,
    pub role_bindings: reflector::store::Writer<PartialObjectMeta<RoleBinding>>,
}

impl Shared {
    pub fn start() -> Shared {
        let (vms, vw) = reflector::store();
        let (profiles, pw) = reflector::store();
        let (namespaces, nw) = reflector::store();
        let (leases, lw) = reflector::store();
        let (service_accounts, sw) = reflector::store();
        let (roles, rw) = reflector::store();
        let (role_bindings, bw) = reflector::store();
        let (ready_tx, ready) = tokio::sync::watch::channel(false);
        let (vm_changes, _) = tokio::sync::broadcast::channel(4096);
        let shared = Shared {
            ready,
            vm_changes,
            waiting_on: Arc::new(Mutex::new("virtualmachines")),
            vms,
            profiles,
            namespaces,
            leases,
            service_accounts,
            roles,
            role_bindings,
            heartbeats: Heartbeats::default(),
            writers: Arc::new(Mutex::new(Some(Writers {
                vms: vw,
                profiles: pw,
                namespaces: nw,
                leases: lw,
                service_accounts: sw,
                roles: rw,
                role_bindings: bw,
            }))),
        };
        shared.watch_readiness(ready_tx);
        shared
    }

    /// Wait until every cache has listed once. One task waits on the stores and publishes the
    /// result on a watch channel, because a store wakes only one of several concurrent waiters.
    /// The writers of the caches, to the one controller that runs their watches.
    pub(super) fn take_writers(&self) -> Option<Writers> {
        self.writers.lock().ok().and_then(|mut w| w.take())
    }

    pub async fn ready(&self) -> Result<(), Error> {
        let mut rx = self.ready.clone();
        match tokio::time::timeout(Duration::from_secs(60), rx.wait_for(|r| *r)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(Error::CachesStopped),
            Err(_) => Err(Error::CacheNotReady(
                self.waiting_on.lock().map(|w| *w).unwrap_or("?"),
            )),
        }
    }

    fn watch_readiness(&self, tx: tokio::sync::watch::Sender<bool>) {
        let me = self.clone();
        tokio::spawn(async move {
            // Poll rather than await: a store wakes only one of its concurrent waiters, and the
            // Controller waits on the VM store too.
            macro_rules! wait {
                ($store:expr, $what:expr) => {
                    if let Ok(mut w) = me.waiting_on.lock() {
                        *w = $what;
                    }
                    loop {
                        match $store.wait_until_ready().now_or_never() {
                            Some(Ok(())) => break,
                            Some(Err(_)) => return,
                            None => tokio::time::sleep(Duration::from_millis(50)).await,
                        }
                    }
                };
            }
            wait!(me.vms, "virtualmachines");
            wait!(me.profiles, "configurationprofiles");
            wait!(me.namespaces, "namespaces");
            wait!(me.leases, "leases");
            wait!(me.service_accounts, "serviceaccounts");
            wait!(me.roles, "roles");
            wait!(me.role_bindings, "rolebindings");
            let _ = tx.send(true);
        });
    }
}
