//! Onboardings, reported per ConfigurationProfile in batches: the VM reconciler notes each VM it
//! onboarded (after the status write that says so), and one task publishes, every
//! `FLUSH_EVERY`, one `Onboarded` Event per profile and configuration naming the VMs onboarded
//! since the last one (`logic::events::onboarded_note`).
//!
//! A per-VM Event was one API write in four of an onboarding (issue 17): 10,000 Events for a
//! fleet of 10,000, each saying what the VM's `Onboarded` condition says. Like every Event,
//! these are best effort: a controller stopped between a VM's status write and the next flush
//! (other than by a signal, which flushes) loses that VM's mention, never repeats it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::Resource;
use kube::runtime::reflector::ObjectRef;
use tracing::debug;

use super::context::Context;
use super::shared::Shared;
use crate::logic::events::{EventSpec, onboarded_note};
use crate::logic::vm::Onboarded;

/// How often the onboardings noted since the last flush are published.
pub const FLUSH_EVERY: Duration = Duration::from_secs(5);

/// VMs onboarded and not reported yet: `namespace/name` by (profile, configuration hash), in the
/// order they were onboarded.
#[derive(Clone, Default)]
pub struct Onboardings(Arc<Mutex<Pending>>);

/// `namespace/name` of the VMs onboarded, by (profile, configuration hash).
type Pending = BTreeMap<(String, String), Vec<String>>;

impl Onboardings {
    pub fn note(&self, onboarded: &Onboarded, namespace: &str, name: &str) {
        if let Ok(mut pending) = self.0.lock() {
            pending
                .entry((onboarded.profile.clone(), onboarded.hash.clone()))
                .or_default()
                .push(format!("{namespace}/{name}"));
        }
    }

    fn take(&self) -> Pending {
        self.0
            .lock()
            .map(|mut pending| std::mem::take(&mut *pending))
            .unwrap_or_default()
    }
}

/// Publish the noted onboardings every `FLUSH_EVERY`, and once more when stopped.
pub async fn run(
    ctx: Arc<Context>,
    shared: Shared,
    stop: impl std::future::Future<Output = ()> + Send + Sync + Clone + 'static,
) {
    let stopped = stop.clone();
    tokio::pin!(stopped);
    loop {
        let done = tokio::select! {
            _ = tokio::time::sleep(FLUSH_EVERY) => false,
            _ = &mut stopped => true,
        };
        flush(&ctx, &shared).await;
        if done {
            return;
        }
    }
}

async fn flush(ctx: &Context, shared: &Shared) {
    for ((profile, hash), vms) in shared.onboardings.take() {
        let Some(p) = shared.profiles.get(&ObjectRef::new(&profile)) else {
            debug!(
                profile,
                vms = vms.len(),
                "onboardings of a profile no longer cached: not reported"
            );
            continue;
        };
        let event = EventSpec::normal("Onboarded", "Onboard", onboarded_note(&hash, &vms));
        super::publish_events(ctx, &p.object_ref(&()), &[event]).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn onboardings_are_grouped_by_profile_and_configuration_in_order_and_taken_once() {
        let o = Onboardings::default();
        let prod = |hash: &str| Onboarded {
            profile: "prod".into(),
            hash: hash.into(),
        };
        o.note(&prod("h1"), "a", "web-2");
        o.note(&prod("h1"), "b", "web-1");
        o.note(&prod("h2"), "a", "web-3");
        o.note(
            &Onboarded {
                profile: "dev".into(),
                hash: "h1".into(),
            },
            "a",
            "build-1",
        );
        let taken = o.take();
        assert_eq!(
            taken.get(&("prod".into(), "h1".into())),
            Some(&vec!["a/web-2".to_string(), "b/web-1".to_string()])
        );
        assert_eq!(taken.len(), 3);
        assert!(o.take().is_empty(), "reported once");
    }
}
