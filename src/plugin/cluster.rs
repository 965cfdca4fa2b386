//! What the plugin reads from and writes to the cluster.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::{Client, ResourceExt};

use crate::api::{PatchRollout, RolloutPhase, UpdateRing, VirtualMachine};
use crate::clock::Clock;
use crate::logic::rollout::Settings;

use super::Snapshot;

pub(super) struct Cluster {
    pub client: Client,
    pub ns: String,
    pub clock: Clock,
    pub install_duration: Duration,
}

impl Cluster {
    pub(super) fn rollouts(&self) -> Api<PatchRollout> {
        Api::namespaced(self.client.clone(), &self.ns)
    }
    pub(super) fn rings(&self) -> Api<UpdateRing> {
        Api::namespaced(self.client.clone(), &self.ns)
    }
    pub(super) fn vms(&self) -> Api<VirtualMachine> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    pub(super) async fn all(&self) -> anyhow::Result<Snapshot> {
        let lp = ListParams::default();
        let mut rollouts: Vec<Arc<PatchRollout>> = self
            .rollouts()
            .list(&lp)
            .await
            .context("listing PatchRollouts")?
            .items
            .into_iter()
            .map(Arc::new)
            .collect();
        rollouts.sort_by_key(|r| (r.spec.release_time.0, r.name_any()));
        let rings = self
            .rings()
            .list(&lp)
            .await
            .context("listing UpdateRings")?
            .items
            .into_iter()
            .map(Arc::new)
            .collect();
        // Object by object: one unreadable VM is named and left out, never a failed listing.
        let guarded: Api<DeserializeGuard<VirtualMachine>> =
            Api::namespaced(self.client.clone(), &self.ns);
        let mut vms = Vec::new();
        for item in guarded
            .list(&lp)
            .await
            .context("listing VirtualMachines")?
            .items
        {
            match item.0 {
                Ok(vm) => vms.push(Arc::new(vm)),
                Err(e) => eprintln!(
                    "warning: VirtualMachine {} cannot be read and is left out: {}",
                    e.metadata.name.as_deref().unwrap_or("?"),
                    crate::logic::text::safe(&e.error, 512)
                ),
            }
        }
        Ok(Snapshot {
            rollouts,
            rings,
            vms,
        })
    }

    pub(super) fn settings(&self, r: &PatchRollout) -> Settings {
        Settings {
            pairs: r
                .status
                .as_ref()
                .map(|s| {
                    s.region_pairs
                        .iter()
                        .filter_map(|p| p.split_once('/'))
                        .map(|(a, b)| (a.to_string(), b.to_string()))
                        .collect()
                })
                .unwrap_or_default(),
            expected_duration: self.install_duration,
            clock_speed: self.clock.speed(),
        }
    }

    pub(super) async fn spec_patch<K>(
        &self,
        api: Api<K>,
        name: &str,
        spec: serde_json::Value,
    ) -> anyhow::Result<()>
    where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
        <K as kube::Resource>::DynamicType: Default,
    {
        api.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "spec": spec })),
        )
        .await
        .map_err(|e| match e {
            kube::Error::Api(s) if s.code == 404 => anyhow!(
                "{} {name:?} not found in namespace {}",
                K::kind(&Default::default()),
                self.ns
            ),
            e => anyhow!(e),
        })?;
        Ok(())
    }
}

/// The rollout to act on: the named one, else the single unfinished one.
pub(super) fn pick(
    rollouts: &[Arc<PatchRollout>],
    name: Option<&str>,
) -> anyhow::Result<Arc<PatchRollout>> {
    if let Some(n) = name {
        return rollouts
            .iter()
            .find(|r| r.name_any() == n)
            .cloned()
            .ok_or_else(|| anyhow!("PatchRollout {n:?} not found"));
    }
    let unfinished: Vec<&Arc<PatchRollout>> = rollouts
        .iter()
        .filter(|r| {
            !matches!(
                r.status.as_ref().and_then(|s| s.phase),
                Some(RolloutPhase::Succeeded | RolloutPhase::RolledBack)
            )
        })
        .collect();
    match unfinished.as_slice() {
        [one] => Ok((*one).clone()),
        [] => rollouts
            .last()
            .cloned()
            .ok_or_else(|| anyhow!("no PatchRollouts in this namespace")),
        many => bail!(
            "several unfinished rollouts ({}): name one",
            many.iter()
                .map(|r| r.name_any())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}
