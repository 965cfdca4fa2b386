//! New VMs held for their guest's first heartbeat (`logic::vm::FIRST_HEARTBEAT_WAIT`): a table of
//! names and due times, looked at every second, whose due VMs are reconciled.
//!
//! Each held VM used to be a requeue in kube-runtime's scheduler: two `ObjectRef`s (four strings)
//! and a slot in a hash table and a delay queue that keep their size after a burst — some 0.5 KiB
//! per VM, for thousands of new VMs at once (issue 17's memory target). Here it is one entry of a
//! name and an instant. A VM decided for any other reason leaves the table; one whose guest
//! heartbeats first is reconciled by its Lease, and its entry, if still there when due, costs one
//! reconcile that decides nothing new.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use kube::runtime::reflector::ObjectRef;
use tokio::time::Instant;

use crate::api::VirtualMachine;
use crate::controller::identities::{Key, key};

/// How often the table is looked at (the hold ends at most this late).
const SWEEP_EVERY: Duration = Duration::from_secs(1);

#[derive(Clone, Default)]
pub struct Held(Arc<Mutex<HashMap<Key, Instant>>>);

impl Held {
    /// Hold the VM until `due`.
    pub fn until(&self, ns: &str, name: &str, due: Instant) {
        if let Ok(mut held) = self.0.lock() {
            held.insert(key(ns, name), due);
        }
    }

    /// The VM is not held (any longer).
    pub fn release(&self, ns: &str, name: &str) {
        if let Ok(mut held) = self.0.lock()
            && !held.is_empty()
        {
            held.remove(&key(ns, name));
            if held.is_empty() {
                // Give back a burst's table.
                held.shrink_to_fit();
            }
        }
    }

    /// The VMs whose hold ended by `now`, taken out of the table.
    fn take_due(&self, now: Instant) -> Vec<Key> {
        let Ok(mut held) = self.0.lock() else {
            return Vec::new();
        };
        let due: Vec<Key> = held
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &due {
            held.remove(k);
        }
        if held.is_empty() && !due.is_empty() {
            held.shrink_to_fit();
        }
        due
    }

    /// The VMs to reconcile as their holds end.
    pub fn due(&self) -> impl Stream<Item = ObjectRef<VirtualMachine>> + Send + 'static {
        let held = self.clone();
        let ticks = futures::stream::unfold(tokio::time::interval(SWEEP_EVERY), |mut i| async {
            let now = i.tick().await;
            Some((now, i))
        });
        futures::StreamExt::flat_map(ticks, move |now| {
            let refs: Vec<ObjectRef<VirtualMachine>> = held
                .take_due(now)
                .iter()
                .filter_map(|k| k.split_once('/'))
                .map(|(ns, name)| ObjectRef::new(name).within(ns))
                .collect();
            futures::stream::iter(refs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_holds_are_taken_once_and_released_ones_never() {
        let h = Held::default();
        let t0 = Instant::now();
        h.until("fleet", "a", t0 + Duration::from_secs(5));
        h.until("fleet", "b", t0 + Duration::from_secs(30));
        h.until("fleet", "c", t0 + Duration::from_secs(5));
        h.release("fleet", "c");
        assert!(h.take_due(t0).is_empty());
        let due = h.take_due(t0 + Duration::from_secs(5));
        assert_eq!(due, vec![key("fleet", "a")]);
        assert!(
            h.take_due(t0 + Duration::from_secs(5)).is_empty(),
            "taken once"
        );
        // Held again (decided again while new): the later time counts.
        h.until("fleet", "b", t0 + Duration::from_secs(40));
        assert!(h.take_due(t0 + Duration::from_secs(35)).is_empty());
        assert_eq!(
            h.take_due(t0 + Duration::from_secs(40)),
            vec![key("fleet", "b")]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_stream_yields_each_vm_when_its_hold_ends() {
        use futures::StreamExt;
        let h = Held::default();
        h.until("fleet", "a", Instant::now() + Duration::from_secs(3));
        let mut due = std::pin::pin!(h.due());
        let first = tokio::time::timeout(Duration::from_secs(10), due.next()).await;
        assert_eq!(
            first.ok().flatten(),
            Some(ObjectRef::new("a").within("fleet"))
        );
    }
}
