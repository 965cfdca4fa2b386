//! The pinned release manifest: frozen once, when the first ring starts, and installed exactly
//! by every ring. What the release leaves out is recorded with the reason: the rollout's own
//! filters (classifications, its exclude list, the release-time cut-off) for every VM, and each
//! approval policy in use (approveAfter, include, exclude) for the VMs under it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::{
    ApprovalPolicy, AvailablePackage, GuestAssessment, LeftOutPackage, LeftOutReason,
    ManifestFamily, ManifestPackage, OperationStatus, PinnedPackage, ReleaseManifest,
    ReleaseSnapshot, SnapshotUrl, snapshot_timestamp,
};

use super::versions::{compare_versions, excluded};
use super::{Input, RingFacts, VmFacts};

/// `leftOut` keeps this many entries; the rest are counted.
pub const LEFT_OUT_LIMIT: usize = 500;

/// A failed release assessment is asked again after this long (patching clock).
const RELEASE_RETRY: Duration = Duration::from_secs(600);

/// The id of a rollout's release assessment against a snapshot: it changes with the snapshot's
/// URLs, so a corrected template is assessed again. Retries after a failure add `-2`, `-3`, …
pub fn release_request(rollout: &str, snapshot: &ReleaseSnapshot) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for r in &snapshot.repositories {
        h.update(r.repository.as_bytes());
        h.update([0]);
        h.update(r.url.as_bytes());
        h.update([0]);
    }
    let hex: String = h
        .finalize()
        .iter()
        .take(4)
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("release-{rollout}-{hex}")
}

/// Whether `id` is the request `base` or one of its retries.
fn is_request(id: &str, base: &str) -> bool {
    id.strip_prefix(base).is_some_and(|rest| {
        rest.is_empty()
            || rest
                .strip_prefix('-')
                .is_some_and(|n| n.parse::<u32>().is_ok())
    })
}

/// The retry after `id` (`base`, `base-2`, …).
fn next_request(id: &str, base: &str) -> String {
    let n = id
        .strip_prefix(base)
        .and_then(|r| r.strip_prefix('-'))
        .and_then(|n| n.parse::<u32>().ok())
        .unwrap_or(1);
    format!("{base}-{}", n + 1)
}

/// The assessment a VM's share of the manifest is frozen from: its answer to the rollout's
/// release assessment when it reads snapshots, else its latest assessment; only a successful one.
pub fn freeze_assessment<'a>(input: &Input<'a>, vm: &VmFacts<'a>) -> Option<&'a GuestAssessment> {
    let a = match release_assessment(input, vm) {
        None => vm.assessment,
        Some(want) => vm
            .release_assessment
            .filter(|a| is_request(&a.request_id, &want.request_id)),
    };
    a.filter(|a| a.status == OperationStatus::Succeeded)
}

/// The release assessment a VM that reads snapshots is asked for before the freeze.
pub fn release_assessment(
    input: &Input<'_>,
    vm: &VmFacts<'_>,
) -> Option<crate::api::AssessmentDirective> {
    let repos = vm.snapshots_in(input.rings);
    if repos.is_empty() {
        return None;
    }
    let snapshot = snapshot_of(repos, &snapshot_timestamp(input.spec.release_time.0));
    Some(crate::api::AssessmentDirective {
        request_id: release_request(input.name, &snapshot).into(),
        on_demand: None,
        snapshot: Some(snapshot),
    })
}

/// The snapshot of these repositories at a timestamp.
pub fn snapshot_of(repos: &[crate::api::SnapshotRepository], timestamp: &str) -> ReleaseSnapshot {
    ReleaseSnapshot {
        timestamp: timestamp.to_string(),
        repositories: repos
            .iter()
            .map(|r| SnapshotUrl {
                repository: r.repository.clone(),
                url: r.at(timestamp),
            })
            .collect(),
    }
}

/// Ask every eligible, running VM in a ring that reads snapshots for the release assessment:
/// once per snapshot, and again `RELEASE_RETRY` after a failed answer.
pub(super) fn ask_release_assessments(run: &super::Run<'_>, acc: &mut super::Acc) {
    let input = run.input;
    for (i, vm) in input.vms.iter().enumerate() {
        if vm.ineligible.is_some() || vm.ring.is_none() || !vm.running {
            continue;
        }
        let Some(want) = release_assessment(input, vm) else {
            continue;
        };
        let asked = vm
            .release_directive
            .filter(|d| is_request(&d.request_id, &want.request_id));
        let ask = match asked {
            None => Some(want),
            Some(d) => {
                let failed = vm
                    .release_assessment
                    .filter(|a| a.request_id == d.request_id)
                    .filter(|a| a.status == OperationStatus::Failed);
                match failed {
                    None => None,
                    Some(a) => {
                        let at = a
                            .finish_time
                            .as_ref()
                            .map_or(input.now, |t| t.0.min(input.now));
                        let due = crate::logic::duration::add(at, RELEASE_RETRY);
                        if input.now >= due {
                            Some(crate::api::AssessmentDirective {
                                request_id: next_request(&d.request_id, &want.request_id).into(),
                                ..want
                            })
                        } else {
                            acc.wake.at(due);
                            None
                        }
                    }
                }
            }
        };
        if let Some(d) = ask
            && !acc.release_assessments.iter().any(|(j, _)| *j == i)
        {
            acc.release_assessments.push((i, d));
        }
    }
}

/// What a VM of the first ring waits for while the manifest is not frozen: the ring's
/// assessments, against the release's snapshot where it reads snapshots (and that assessment's
/// failure, when it failed).
pub(super) fn waiting_for_assessments(
    run: &super::Run<'_>,
    ring: &str,
    vm: &VmFacts<'_>,
) -> String {
    let input = run.input;
    if vm.snapshots_in(input.rings).is_empty() {
        return format!(
            "ring {ring} starts when its running VMs have reported a patch assessment (the manifest is frozen from them)"
        );
    }
    let ts = snapshot_timestamp(input.spec.release_time.0);
    let base = release_assessment(input, vm)
        .map(|d| d.request_id)
        .unwrap_or_default();
    match vm
        .release_assessment
        .filter(|a| is_request(&a.request_id, &base))
    {
        Some(a) if a.status == OperationStatus::Failed => format!(
            "the release assessment against repository snapshot {ts} failed (asked again {} minutes after): {}",
            RELEASE_RETRY.as_secs() / 60,
            crate::logic::text::safe(a.error.as_deref().unwrap_or("no reason given"), 512)
        ),
        _ => format!(
            "ring {ring} starts when its running VMs have reported an assessment against the release's repository snapshot {ts} (the manifest is frozen from them)"
        ),
    }
}

/// Why the rollout itself leaves an update out (for every VM), if it does.
fn rollout_reason(input: &Input<'_>, p: &AvailablePackage) -> Option<LeftOutReason> {
    let spec = input.spec;
    if !spec.classifications.contains(&p.classification) {
        Some(LeftOutReason::OutsideClassifications)
    } else if excluded(&spec.exclude, &p.name) {
        Some(LeftOutReason::Excluded)
    } else if p
        .published
        .as_ref()
        .is_some_and(|t| t.0 > spec.release_time.0)
    {
        Some(LeftOutReason::PublishedAfterRelease)
    } else {
        None
    }
}

/// Why an approval policy leaves a package out of a release published at `release`.
pub fn policy_reason(
    policy: &ApprovalPolicy,
    name: &str,
    published: Option<Timestamp>,
    release: Timestamp,
) -> Option<LeftOutReason> {
    reason_after(policy, approve_after(policy), name, published, release)
}

/// The policy's `approveAfter` (0s when unset or unreadable: admission allows only durations).
fn approve_after(policy: &ApprovalPolicy) -> Duration {
    policy
        .approve_after
        .as_deref()
        .and_then(|a| crate::logic::duration::parse(a).ok())
        .unwrap_or(Duration::ZERO)
}

/// `policy_reason` with `approveAfter` already read.
fn reason_after(
    policy: &ApprovalPolicy,
    after: Duration,
    name: &str,
    published: Option<Timestamp>,
    release: Timestamp,
) -> Option<LeftOutReason> {
    if policy.exclude.as_ref().is_some_and(|e| excluded(e, name)) {
        return Some(LeftOutReason::Excluded);
    }
    if policy.include.as_ref().is_some_and(|i| !excluded(i, name)) {
        return Some(LeftOutReason::NotIncluded);
    }
    if after.is_zero() {
        return None;
    }
    match published {
        Some(p) if crate::logic::duration::add(p, after) <= release => None,
        _ => Some(LeftOutReason::NotYetApproved),
    }
}

/// Freeze the manifest: per image family, the newest version of every package an eligible VM's
/// assessment offers that the rollout does not leave out, the family's snapshot when its VMs
/// read snapshots, and what each approval policy in use leaves out.
pub fn freeze_manifest(input: &Input<'_>, now: Timestamp) -> ReleaseManifest {
    let release = input.spec.release_time.0;
    let mut families: BTreeMap<&str, BTreeMap<&str, &AvailablePackage>> = BTreeMap::new();
    let mut snapshots: BTreeSet<&str> = BTreeSet::new();
    let mut left: BTreeSet<(String, String, String, LeftOutReason, Option<String>)> =
        BTreeSet::new();
    let mut published: BTreeMap<(String, String), Time> = BTreeMap::new();
    let eligible: Vec<&VmFacts<'_>> = input
        .vms
        .iter()
        .filter(|v| v.ineligible.is_none() && v.ring.is_some())
        .collect();
    for vm in &eligible {
        if !vm.snapshots_in(input.rings).is_empty() {
            snapshots.insert(vm.family.as_str());
        }
        let Some(a) = freeze_assessment(input, vm) else {
            continue;
        };
        let fam = families.entry(vm.family.as_str()).or_default();
        for p in &a.packages {
            if let Some(t) = &p.published {
                published.insert((p.name.clone(), p.version.clone()), t.clone());
            }
            if let Some(why) = rollout_reason(input, p) {
                left.insert((
                    vm.family.clone(),
                    p.name.clone(),
                    p.version.clone(),
                    why,
                    None,
                ));
                continue;
            }
            let e = fam.entry(p.name.as_str()).or_insert(p);
            if compare_versions(&p.version, &e.version).is_gt() {
                *e = p;
            }
        }
    }
    // Each approval policy in use, over the candidates of its VMs' family.
    let mut policies: BTreeSet<(&str, String, ApprovalPolicy)> = BTreeSet::new();
    for vm in &eligible {
        let (key, policy) = vm.approval_in(input.rings);
        if !policy.is_empty() {
            policies.insert((vm.family.as_str(), key, policy));
        }
    }
    for (family, key, policy) in &policies {
        for p in families.get(family).into_iter().flat_map(|f| f.values()) {
            if let Some(why) =
                policy_reason(policy, &p.name, p.published.as_ref().map(|t| t.0), release)
            {
                left.insert((
                    family.to_string(),
                    p.name.clone(),
                    p.version.clone(),
                    why,
                    Some(key.clone()),
                ));
            }
        }
    }
    let timestamp = snapshot_timestamp(release);
    let total = left.len();
    ReleaseManifest {
        frozen_time: Some(Time(now)),
        families: families
            .into_iter()
            .map(|(f, pkgs)| ManifestFamily {
                image_family: f.to_string(),
                snapshot: snapshots.contains(f).then(|| timestamp.clone()),
                packages: pkgs
                    .into_values()
                    .map(|p| ManifestPackage {
                        name: p.name.clone(),
                        version: p.version.clone(),
                        classification: Some(p.classification),
                        published: p.published.clone(),
                        advisories: p.advisories.clone(),
                        cves: p.cves.clone(),
                    })
                    .collect(),
            })
            .collect(),
        left_out: left
            .into_iter()
            .take(LEFT_OUT_LIMIT)
            .map(|(family, name, version, reason, policy)| LeftOutPackage {
                published: published.get(&(name.clone(), version.clone())).cloned(),
                image_family: family,
                name,
                version,
                reason,
                policy,
            })
            .collect(),
        left_out_truncated: total.saturating_sub(LEFT_OUT_LIMIT) as i32,
    }
}

/// The manifest's packages this VM needs: those its assessment reports installed at another
/// version (a package the VM does not have is never added), less what its approval policy leaves
/// out (as frozen, and as it reads now: an edit after the freeze can only narrow). None: no
/// assessment yet.
pub fn packages_for(
    manifest: &ReleaseManifest,
    vm: &VmFacts<'_>,
    rings: &[RingFacts<'_>],
    release: Timestamp,
) -> Option<Vec<PinnedPackage>> {
    let a = vm
        .assessment
        .filter(|a| a.status == OperationStatus::Succeeded)?;
    let (key, policy) = vm.approval_in(rings);
    let after = approve_after(&policy);
    // What the frozen policy left out for this VM, read once (it runs for every VM, every decision).
    let frozen: Vec<(&str, &str)> = manifest
        .left_out
        .iter()
        .filter(|l| l.policy.as_deref() == Some(key.as_str()) && l.image_family == vm.family)
        .map(|l| (l.name.as_str(), l.version.as_str()))
        .collect();
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
                .filter(|p| !frozen.contains(&(p.name.as_str(), p.version.as_str())))
                .filter(|p| {
                    let published = p.published.as_ref().map(|t| t.0);
                    reason_after(&policy, after, &p.name, published, release).is_none()
                })
                .map(ManifestPackage::pinned)
                .collect()
        })
        .unwrap_or_default(),
    )
}

/// The snapshot a VM installs the manifest from: its repositories at the family's frozen time.
pub fn install_snapshot(
    manifest: &ReleaseManifest,
    vm: &VmFacts<'_>,
    rings: &[RingFacts<'_>],
) -> Option<ReleaseSnapshot> {
    let ts = manifest
        .families
        .iter()
        .find(|f| f.image_family == vm.family)
        .and_then(|f| f.snapshot.as_deref())?;
    let repos = vm.snapshots_in(rings);
    (!repos.is_empty()).then(|| snapshot_of(repos, ts))
}

/// The Event of a freeze.
pub(super) fn frozen_event(m: &ReleaseManifest) -> crate::logic::events::EventSpec {
    let count: usize = m.families.iter().map(|f| f.packages.len()).sum();
    let left = m.left_out.len() + m.left_out_truncated.max(0) as usize;
    let snapshots: BTreeSet<&str> = m
        .families
        .iter()
        .filter_map(|f| f.snapshot.as_deref())
        .collect();
    crate::logic::events::EventSpec::normal(
        "ManifestFrozen",
        "Freeze",
        format!(
            "release manifest frozen: {count} package version(s) over {} image famil(ies){}; {left} update(s) left out (status.manifest.leftOut); every ring installs exactly these",
            m.families.len(),
            if snapshots.is_empty() {
                String::new()
            } else {
                format!(
                    " from repository snapshot {}",
                    snapshots.into_iter().collect::<Vec<_>>().join(", ")
                )
            }
        ),
    )
}
