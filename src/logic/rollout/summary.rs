//! The seed's `lastPatchInstallationSummary` of a VM's installation in this rollout.

use crate::api::{
    GuestAssessment, GuestInstallation, InstallationDirective, LastPatchInstallationSummary,
    OperationStatus, PatchRolloutSpec,
};

use super::versions::excluded;
use super::{Run, VmWrite};

/// The seed's lastPatchInstallationSummary for a VM's installation of this rollout.
pub fn installation_summary(
    spec: &PatchRolloutSpec,
    directive: &InstallationDirective,
    assessment: Option<&GuestAssessment>,
    result: Option<&GuestInstallation>,
) -> LastPatchInstallationSummary {
    let available = assessment
        .map(|a| a.packages.as_slice())
        .unwrap_or_default();
    let excluded_count = available
        .iter()
        .filter(|p| excluded(&spec.exclude, &p.name))
        .count() as i32;
    // Every available update is in exactly one bucket: excluded, not selected (a classification
    // the rollout does not install, or not part of its release: published after the manifest
    // froze), or the directive's (installed, failed, pending).
    let not_selected = available
        .iter()
        .filter(|p| {
            !excluded(&spec.exclude, &p.name)
                && (!spec.classifications.contains(&p.classification)
                    || !directive.packages.iter().any(|d| d.name == p.name))
        })
        .count() as i32;
    let finished = result.filter(|r| {
        r.rollout == directive.rollout
            && r.wave == directive.wave
            && r.rollback == directive.rollback
    });
    match finished {
        None => LastPatchInstallationSummary {
            status: OperationStatus::InProgress,
            installed_patch_count: 0,
            pending_patch_count: directive.packages.len() as i32,
            failed_patch_count: 0,
            excluded_patch_count: excluded_count,
            not_selected_patch_count: not_selected,
            unavailable_patch_count: 0,
            maintenance_window_exceeded: false,
            start_time: None,
            last_modified_time: None,
            error: None,
        },
        Some(r) => {
            let done = r.installed.len() + r.failed.len();
            LastPatchInstallationSummary {
                status: r.status,
                installed_patch_count: r.installed.len() as i32,
                pending_patch_count: directive.packages.len().saturating_sub(done) as i32,
                failed_patch_count: r.failed.len() as i32,
                excluded_patch_count: excluded_count,
                not_selected_patch_count: not_selected,
                unavailable_patch_count: r.unavailable.len() as i32,
                maintenance_window_exceeded: r.maintenance_window_exceeded,
                start_time: r.start_time.clone(),
                last_modified_time: r.finish_time.clone(),
                error: r.error.clone(),
            }
        }
    }
}

/// Summaries of the installs of this rollout in flight or finished (VMs whose directive is this
/// rollout's and that no other write of this decision touches).
pub(super) fn refresh(run: &Run<'_>, writes: &mut Vec<VmWrite>) {
    if run.terminal {
        return;
    }
    let input = run.input;
    for (i, vm) in input.vms.iter().enumerate() {
        if writes.iter().any(|w| w.vm == i) {
            continue;
        }
        if let Some(d) = vm
            .directive
            .filter(|d| d.rollout == input.name && !d.rollback)
        {
            writes.push(VmWrite {
                vm: i,
                directive: d.clone(),
                summary: Some(installation_summary(
                    input.spec,
                    d,
                    vm.assessment,
                    vm.result,
                )),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{AvailablePackage, Classification, PinnedPackage};

    #[test]
    fn every_available_update_is_counted_in_exactly_one_bucket() {
        let spec: PatchRolloutSpec = serde_json::from_value(serde_json::json!({
            "releaseTime": "2026-11-10T17:00:00Z", "exclude": ["secret"]
        }))
        .expect("spec");
        let avail = |name: &str, c| AvailablePackage {
            name: name.into(),
            version: "2".into(),
            installed_version: Some("1".into()),
            classification: c,
            published: None,
            advisories: Vec::new(),
            cves: Vec::new(),
        };
        let assessment = GuestAssessment {
            packages: vec![
                avail("libssl", Classification::Security),
                // Published after the manifest froze: not part of this release.
                avail("kernel", Classification::Security),
                avail("tool", Classification::Other),
                avail("secret", Classification::Critical),
            ],
            ..serde_json::from_value(serde_json::json!({ "requestId": "x", "status": "Succeeded" }))
                .expect("assessment")
        };
        let directive: InstallationDirective = serde_json::from_value(serde_json::json!({
            "rollout": "r", "wave": 1,
        }))
        .expect("directive");
        let directive = InstallationDirective {
            packages: vec![PinnedPackage {
                name: "libssl".into(),
                version: "2".into(),
                classification: Some(Classification::Security),
            }],
            ..directive
        };
        let s = installation_summary(&spec, &directive, Some(&assessment), None);
        assert_eq!(
            (
                s.pending_patch_count,
                s.not_selected_patch_count,
                s.excluded_patch_count
            ),
            (1, 2, 1)
        );
        let total = s.installed_patch_count
            + s.pending_patch_count
            + s.failed_patch_count
            + s.not_selected_patch_count
            + s.excluded_patch_count;
        assert_eq!(total, 4);
    }
}
