//! The caches the controllers share (read side), and when they are ready.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Namespace;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, Store};

use super::context::Error;
use crate::api::{ConfigurationProfile, VirtualMachine};
use crate::logic::vm::heartbeat::{self, Observed};

/// What the VM controller last wrote to each VM's status, until its cache shows it. Only the
/// controller writes those fields (the admission policy keeps guests to `status.guest`), so a
/// cached copy whose controller part differs from the write is one the watch has not brought up
/// to date — also when a guest's write landed in between, with a newer resourceVersion but
/// without ours. A reconcile decides from the write laid over such a copy, so a transition is
/// never decided — and announced — twice. Entries end when the cache shows the write, or after
/// `WRITE_LAG` (far beyond any watch delay) so that nothing masks a change for long.
///
/// The status is boxed (inline it made every slot of the table ~1.5 KB: 15 MB for 3,000 VMs,
/// kept after the entries were gone) and the table shrinks when it empties.
#[derive(Clone, Default)]
pub struct Written(Arc<Mutex<HashMap<VmKey, WrittenPart>>>);

/// When the controller wrote, and its part of the status.
type WrittenPart = (std::time::Instant, Box<crate::api::VirtualMachineStatus>);

/// Give back a table's room when it holds less than a quarter of it.
fn shrink<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>) {
    if map.capacity() > 64 && map.len() * 4 < map.capacity() {
        map.shrink_to(map.len() * 2);
    }
}

/// `part` as the API server stores it and the watch brings it back: through its JSON, where a
/// `metav1.Time` has whole seconds. (Kept as decided, a condition set at 13:37:47.245 never equalled
/// the watch's 13:37:47, so the watch never cleared an entry: a VM that was not decided on again —
/// no guest yet — kept its whole status here until a sweep, ~4 MB at 10,000 VMs.)
fn as_stored(part: &crate::api::VirtualMachineStatus) -> crate::api::VirtualMachineStatus {
    serde_json::to_value(part)
        .and_then(serde_json::from_value)
        .unwrap_or_else(|_| part.clone())
}

/// (namespace, name) of a VirtualMachine.
type VmKey = (String, String);

/// How long a write is laid over cached copies that do not show it yet.
const WRITE_LAG: Duration = Duration::from_secs(30);

impl Written {
    /// The status to decide from: the cached one, or the last write laid over it while the
    /// cache does not show that write yet.
    pub fn status_for(
        &self,
        ns: &str,
        name: &str,
        cached: Option<&crate::api::VirtualMachineStatus>,
    ) -> Option<crate::api::VirtualMachineStatus> {
        let Ok(mut w) = self.0.lock() else {
            return cached.cloned();
        };
        let key = (ns.to_string(), name.to_string());
        let Some((at, part)) = w.get(&key) else {
            return cached.cloned();
        };
        let shown = cached
            .map(crate::logic::vm::controller_part)
            .unwrap_or_default()
            == **part;
        if shown || at.elapsed() > WRITE_LAG {
            w.remove(&key);
            shrink(&mut w);
            return cached.cloned();
        }
        Some(crate::logic::vm::with_controller_part(
            &cached.cloned().unwrap_or_default(),
            part,
        ))
    }

    pub fn wrote(&self, ns: &str, name: &str, part: &crate::api::VirtualMachineStatus) {
        let part = Box::new(as_stored(part));
        if let Ok(mut w) = self.0.lock() {
            w.insert(
                (ns.to_string(), name.to_string()),
                (std::time::Instant::now(), part),
            );
            // Entries past WRITE_LAG end at their VM's next decision; sweep them as the table
            // grows (at 256, 512, 1,024… entries) so that quiet VMs do not keep theirs.
            if w.len() >= 256 && w.len().is_power_of_two() {
                w.retain(|_, (at, _)| at.elapsed() <= WRITE_LAG);
                shrink(&mut w);
            }
        }
    }

    /// The watch brought this copy of a VM: a write it shows is no longer laid over (without
    /// this an entry would wait for the VM's next reconcile, which its own write no longer causes).
    pub fn observe(&self, vm: &VirtualMachine) {
        let Ok(mut w) = self.0.lock() else { return };
        let key = (
            vm.metadata.namespace.clone().unwrap_or_default(),
            vm.metadata.name.clone().unwrap_or_default(),
        );
        let Some((_, part)) = w.get(&key) else { return };
        let shown = vm
            .status
            .as_ref()
            .map(crate::logic::vm::controller_part)
            .unwrap_or_default()
            == **part;
        if shown {
            w.remove(&key);
            shrink(&mut w);
        }
    }

    pub fn forget(&self, ns: &str, name: &str) {
        if let Ok(mut w) = self.0.lock() {
            w.remove(&(ns.to_string(), name.to_string()));
            shrink(&mut w);
        }
    }
}

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
    /// Which guest identity objects exist, per VM.
    pub identities: super::identities::Identities,
    pub heartbeats: Heartbeats,
    /// The controller's last status write per VM, until its cache shows it (see `Written`).
    pub written: Written,
    /// Which VM changes are the controller's own status writes (no reconcile for those).
    pub own_writes: super::own_writes::OwnWrites,
    /// VMs onboarded and not reported in an Event yet.
    pub onboardings: super::onboarded::Onboardings,
    /// New VMs held for their guest's first heartbeat.
    pub held: super::vm::first_heartbeat::Held,
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
}

impl Shared {
    pub fn start() -> Shared {
        let (vms, vw) = reflector::store();
        let (profiles, pw) = reflector::store();
        let (namespaces, nw) = reflector::store();
        let (ready_tx, ready) = tokio::sync::watch::channel(false);
        let (vm_changes, _) = tokio::sync::broadcast::channel(4096);
        let shared = Shared {
            ready,
            vm_changes,
            waiting_on: Arc::new(Mutex::new("virtualmachines")),
            vms,
            profiles,
            namespaces,
            identities: Default::default(),
            heartbeats: Heartbeats::default(),
            written: Written::default(),
            own_writes: Default::default(),
            onboardings: Default::default(),
            held: Default::default(),
            writers: Arc::new(Mutex::new(Some(Writers {
                vms: vw,
                profiles: pw,
                namespaces: nw,
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
            if let Ok(mut w) = me.waiting_on.lock() {
                *w = "guest identities and leases";
            }
            while !me.identities.ready() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = tx.send(true);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{VirtualMachineStatus, VmPhase};

    fn vm(phase: Option<VmPhase>) -> VirtualMachine {
        let mut v: VirtualMachine = serde_json::from_value(serde_json::json!({
            "apiVersion": "automend.io/v1alpha1", "kind": "VirtualMachine",
            "metadata": { "name": "web-1", "namespace": "fleet" },
            "spec": {
                "management": { "enabled": true },
                "os": { "type": "Linux", "image":
                    { "publisher": "Canonical", "offer": "ubuntu-24_04-lts", "sku": "server" } },
                "placement": { "region": "westeurope" },
            }
        }))
        .expect("vm");
        v.status = phase.map(|p| VirtualMachineStatus {
            phase: Some(p),
            ..Default::default()
        });
        v
    }

    #[test]
    fn expired_writes_of_quiet_vms_are_swept_as_the_table_grows() {
        let w = Written::default();
        let part = vm(Some(VmPhase::Pending)).status.expect("status");
        let long_ago = std::time::Instant::now()
            .checked_sub(WRITE_LAG * 2)
            .expect("an instant a minute ago");
        if let Ok(mut t) = w.0.lock() {
            for n in 0..255 {
                t.insert(
                    ("fleet".into(), format!("quiet-{n}")),
                    (long_ago, Box::new(part.clone())),
                );
            }
        }
        w.wrote("fleet", "web-1", &part);
        let left = w.0.lock().map(|t| t.len()).unwrap_or_default();
        assert_eq!(left, 1, "only the fresh write is kept");
        assert!(w.status_for("fleet", "web-1", None).is_some());
    }

    #[test]
    fn the_watch_clears_a_write_whose_times_it_shows_in_whole_seconds() {
        use crate::api::condition::{Condition, Text};
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
        let decided: jiff::Timestamp = "2026-11-24T13:37:47.245377Z".parse().expect("time");
        let mut part = vm(Some(VmPhase::Pending)).status.expect("status");
        part.conditions.push(Condition {
            last_transition_time: Time(decided),
            message: Text::new("the guest has never renewed its Lease"),
            observed_generation: Some(1),
            reason: Text::new("NoHeartbeat"),
            status: Text::new("False"),
            type_: Text::new("Heartbeat"),
        });
        let w = Written::default();
        w.wrote("fleet", "web-1", &part);
        // What the watch delivers: the status the API server stored, from the JSON sent.
        let mut shown = vm(None);
        shown.status = Some(
            serde_json::from_value(serde_json::to_value(&part).expect("json")).expect("status"),
        );
        w.observe(&shown);
        let left = w.0.lock().map(|t| t.len()).unwrap_or_default();
        assert_eq!(left, 0, "the watch showed the write: its entry is gone");
    }

    #[test]
    fn a_write_is_laid_over_until_the_watch_shows_it() {
        let w = Written::default();
        let part = vm(Some(VmPhase::Pending)).status.expect("status");
        w.wrote("fleet", "web-1", &part);
        let stale = vm(None);
        w.observe(&stale);
        assert_eq!(
            w.status_for("fleet", "web-1", None).and_then(|s| s.phase),
            Some(VmPhase::Pending),
            "a copy without the write keeps it laid over"
        );
        w.observe(&vm(Some(VmPhase::Pending)));
        assert_eq!(
            w.status_for("fleet", "web-1", None),
            None,
            "shown by the watch: the entry is gone, the cache decides"
        );
    }
}
