//! What the plugin reads from and writes to the cluster.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::{Client, ResourceExt};

use crate::api::{PatchRollout, UpdateRing, VirtualMachine};
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

impl Cluster {
    pub(super) async fn vm(&self, name: &str) -> anyhow::Result<VirtualMachine> {
        self.vms()
            .get_opt(name)
            .await
            .with_context(|| format!("reading VirtualMachine {name:?}"))?
            .ok_or_else(|| anyhow!("VirtualMachine {name:?} not found in namespace {}", self.ns))
    }

    /// When the VM's heartbeat Lease was last renewed (None: no Lease or never renewed).
    pub(super) async fn lease_renewed(&self, vm: &str) -> anyhow::Result<Option<jiff::Timestamp>> {
        let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
            Api::namespaced(self.client.clone(), &self.ns);
        let lease = leases
            .get_opt(&crate::identity::lease_name(vm))
            .await
            .context("reading the VM's heartbeat Lease")?;
        Ok(lease
            .and_then(|l| l.spec)
            .and_then(|s| s.renew_time)
            .map(|t| t.0))
    }

    /// The image catalog published in the cluster (ConfigMaps labelled
    /// `automend.io/image-catalog`), as text.
    pub(super) async fn catalog(&self) -> anyhow::Result<String> {
        let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::all(self.client.clone());
        let found = cms
            .list(&ListParams::default().labels("automend.io/image-catalog"))
            .await
            .context("listing image catalog ConfigMaps")?;
        let mut out = String::new();
        for cm in &found.items {
            let text = cm
                .data
                .as_ref()
                .and_then(|d| d.get("images.yaml"))
                .cloned()
                .unwrap_or_default();
            let catalog = crate::logic::catalog::ImageCatalog::from_yaml(&text)
                .map_err(anyhow::Error::msg)?;
            out.push_str(&format!(
                "# configmap/{} in namespace {}\n",
                cm.name_any(),
                cm.namespace().unwrap_or_default()
            ));
            out.push_str(&catalog_table(&catalog));
        }
        if found.items.is_empty() {
            out.push_str("# no ConfigMap labelled automend.io/image-catalog: the controller uses its built-in catalog\n");
            out.push_str(&catalog_table(&Default::default()));
        }
        Ok(out)
    }

    /// Merge `spec` into the rollout, only if it did not change since it was read.
    pub(super) async fn spec_patch_checked(
        &self,
        r: &PatchRollout,
        spec: serde_json::Value,
    ) -> anyhow::Result<()> {
        let patch = serde_json::json!({
            "metadata": { "resourceVersion": r.resource_version() },
            "spec": spec,
        });
        self.rollouts()
            .patch(&r.name_any(), &PatchParams::default(), &Patch::Merge(patch))
            .await
            .map_err(|e| match e {
                kube::Error::Api(s) if s.code == 409 => anyhow!(
                    "patchrollout/{} changed while this command ran; run it again",
                    r.name_any()
                ),
                e => anyhow!(e),
            })?;
        Ok(())
    }
}

fn catalog_table(c: &crate::logic::catalog::ImageCatalog) -> String {
    let rows: Vec<Vec<String>> = c
        .images
        .iter()
        .map(|i| {
            vec![
                i.publisher.clone(),
                i.offer.clone(),
                i.sku.clone(),
                format!("{:?}", i.os),
                if i.automatic_by_platform { "yes" } else { "no" }.into(),
                i.capabilities
                    .iter()
                    .map(|c| format!("{c:?}"))
                    .collect::<Vec<_>>()
                    .join(","),
            ]
        })
        .collect();
    super::table(
        &[
            "PUBLISHER",
            "OFFER",
            "SKU",
            "OS",
            "AUTOMATICBYPLATFORM",
            "CAPABILITIES",
        ],
        &rows,
    )
}

/// The rollout to act on: the named one, else the single unfinished one (Halted counts as finished,
/// as for the controller: the next release may go), else the newest release.
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
        .filter(|r| !crate::logic::rollout::finished(r.status.as_ref().and_then(|s| s.phase)))
        .collect();
    match unfinished.as_slice() {
        [one] => Ok((*one).clone()),
        [] => rollouts
            .iter()
            .max_by_key(|r| (r.spec.release_time.0, r.name_any()))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::RolloutPhase;

    fn rollout(name: &str, release: &str, phase: Option<RolloutPhase>) -> Arc<PatchRollout> {
        let mut r: PatchRollout = serde_json::from_value(serde_json::json!({
            "apiVersion": "automend.io/v1alpha1", "kind": "PatchRollout",
            "metadata": { "name": name }, "spec": { "releaseTime": release },
        }))
        .expect("rollout");
        r.status = Some(crate::api::PatchRolloutStatus {
            phase,
            ..Default::default()
        });
        Arc::new(r)
    }

    #[test]
    fn a_halted_rollout_is_finished_for_the_plugin_as_for_the_controller() {
        let halted = rollout(
            "october",
            "2026-10-13T17:00:00Z",
            Some(RolloutPhase::Halted),
        );
        let running = rollout(
            "november",
            "2026-11-10T17:00:00Z",
            Some(RolloutPhase::Progressing),
        );
        let all = vec![running.clone(), halted.clone()];
        assert_eq!(pick(&all, None).expect("one").name_any(), "november");
        // Nothing unfinished: the newest release, not the last listed.
        let done = rollout(
            "november",
            "2026-11-10T17:00:00Z",
            Some(RolloutPhase::Succeeded),
        );
        assert_eq!(
            pick(&[done, halted.clone()], None)
                .expect("newest")
                .name_any(),
            "november"
        );
        assert_eq!(
            pick(&[halted], Some("october")).expect("named").name_any(),
            "october"
        );
    }
}
