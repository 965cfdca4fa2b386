//! The pinned release manifest: frozen once, when the first ring starts, and installed exactly
//! by every ring.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::{
    Classification, ManifestFamily, OperationStatus, PatchRolloutSpec, PinnedPackage,
    ReleaseManifest,
};

use super::VmFacts;
use super::versions::{compare_versions, excluded};

/// Freeze the manifest: per image family, the newest version of every package in the rollout's
/// classifications that an eligible VM's assessment offers, minus the exclusions.
pub fn freeze_manifest(
    spec: &PatchRolloutSpec,
    vms: &[VmFacts<'_>],
    now: Timestamp,
) -> ReleaseManifest {
    let mut families: BTreeMap<&str, BTreeMap<&str, (&str, Classification)>> = BTreeMap::new();
    for vm in vms
        .iter()
        .filter(|v| v.ineligible.is_none() && v.ring.is_some())
    {
        let Some(a) = vm
            .assessment
            .filter(|a| a.status == OperationStatus::Succeeded)
        else {
            continue;
        };
        let fam = families.entry(vm.family.as_str()).or_default();
        for p in &a.packages {
            if !spec.classifications.contains(&p.classification) || excluded(&spec.exclude, &p.name)
            {
                continue;
            }
            let e = fam
                .entry(p.name.as_str())
                .or_insert((p.version.as_str(), p.classification));
            if compare_versions(&p.version, e.0).is_gt() {
                *e = (p.version.as_str(), p.classification);
            }
        }
    }
    ReleaseManifest {
        frozen_time: Some(Time(now)),
        families: families
            .into_iter()
            .map(|(f, pkgs)| ManifestFamily {
                image_family: f.to_string(),
                packages: pkgs
                    .into_iter()
                    .map(|(n, (v, c))| PinnedPackage {
                        name: n.to_string(),
                        version: v.to_string(),
                        classification: Some(c),
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// The manifest's packages this VM needs: those its assessment reports installed at another
/// version (a package the VM does not have is never added). None: no assessment yet.
pub fn packages_for(manifest: &ReleaseManifest, vm: &VmFacts<'_>) -> Option<Vec<PinnedPackage>> {
    let a = vm
        .assessment
        .filter(|a| a.status == OperationStatus::Succeeded)?;
    let fam = manifest
        .families
        .iter()
        .find(|f| f.image_family == vm.family);
    Some(
        fam.map(|f| {
            f.packages
                .iter()
                .filter(|p| {
                    a.packages.iter().any(|q| {
                        q.name == p.name
                            && q.installed_version.as_deref() != Some(p.version.as_str())
                    })
                })
                .cloned()
                .collect()
        })
        .unwrap_or_default(),
    )
}

/// The Event of a freeze.
pub(super) fn frozen_event(m: &ReleaseManifest) -> crate::logic::events::EventSpec {
    let count: usize = m.families.iter().map(|f| f.packages.len()).sum();
    crate::logic::events::EventSpec::normal(
        "ManifestFrozen",
        "Freeze",
        format!(
            "release manifest frozen: {count} package version(s) over {} image famil(ies); every ring installs exactly these",
            m.families.len()
        ),
    )
}
