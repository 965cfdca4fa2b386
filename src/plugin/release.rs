//! What a release contains, as `plan` shows it (the manifest, its snapshot, what was left out
//! and why), and `exposed`: which VMs are still exposed to a CVE.

use std::fmt::Write as _;
use std::sync::Arc;

use kube::ResourceExt;

use crate::api::{PatchRollout, ReleaseManifest, VirtualMachine};

/// The manifest's lines: per image family its snapshot and packages, then what was left out.
/// `frozen`: the manifest in the rollout's status (else the one a freeze now would make).
pub fn manifest_text(m: &ReleaseManifest, frozen: bool) -> String {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "Release manifest ({}):",
        if frozen {
            "frozen"
        } else {
            "as a freeze now would make it"
        }
    );
    if m.families.is_empty() {
        let _ = writeln!(
            text,
            "  no package: no assessment offered one the release approves"
        );
    }
    for f in &m.families {
        let _ = writeln!(
            text,
            "  {}{}",
            f.image_family,
            f.snapshot
                .as_deref()
                .map(|s| format!(" — from repository snapshot {s}"))
                .unwrap_or_default()
        );
        for p in &f.packages {
            let about: Vec<String> = p.advisories.iter().chain(p.cves.iter()).cloned().collect();
            let _ = writeln!(
                text,
                "    {} {}{}",
                p.name,
                p.version,
                if about.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", about.join(", "))
                }
            );
        }
    }
    if !m.left_out.is_empty() {
        let _ = writeln!(text, "Left out:");
        for l in &m.left_out {
            let _ = writeln!(
                text,
                "  {} {} ({}): {:?}{}{}",
                l.name,
                l.version,
                l.image_family,
                l.reason,
                l.policy
                    .as_deref()
                    .map(|p| format!(" by the approval policy of {p}"))
                    .unwrap_or_default(),
                l.published
                    .as_ref()
                    .map(|t| format!(", published {}", t.0))
                    .unwrap_or_default()
            );
        }
        if m.left_out_truncated > 0 {
            let _ = writeln!(text, "  … and {} more", m.left_out_truncated);
        }
    }
    text
}

/// The VMs still exposed to `cve`: their latest assessment offers an update that fixes it, with
/// the rollouts whose manifest carries the fix.
pub fn exposed_text(
    cve: &str,
    vms: &[Arc<VirtualMachine>],
    rollouts: &[Arc<PatchRollout>],
) -> String {
    let mut text = String::new();
    let mut rows = Vec::new();
    for vm in vms {
        let Some(a) = vm
            .status
            .as_ref()
            .and_then(|s| s.guest.as_ref())
            .and_then(|g| g.assessment.as_ref())
        else {
            continue;
        };
        for p in a
            .packages
            .iter()
            .filter(|p| p.cves.iter().any(|c| c == cve))
        {
            let fixing: Vec<String> = rollouts
                .iter()
                .filter(|r| {
                    r.status
                        .as_ref()
                        .and_then(|s| s.manifest.as_ref())
                        .is_some_and(|m| {
                            m.families.iter().any(|f| {
                                f.packages
                                    .iter()
                                    .any(|q| q.name == p.name && q.cves.iter().any(|c| c == cve))
                            })
                        })
                })
                .map(|r| r.name_any())
                .collect();
            rows.push(vec![
                vm.name_any(),
                p.name.clone(),
                p.installed_version.clone().unwrap_or_else(|| "-".into()),
                p.version.clone(),
                if fixing.is_empty() {
                    "-".into()
                } else {
                    fixing.join(",")
                },
            ]);
        }
    }
    if rows.is_empty() {
        let _ = writeln!(
            text,
            "No VM's latest assessment offers an update for {cve}: none is known to be exposed (only repositories with advisories, such as dnf's updateinfo, name CVEs)."
        );
        return text;
    }
    let _ = writeln!(
        text,
        "{} VM(s) exposed to {cve} (their latest assessment offers the fix):",
        rows.iter()
            .map(|r| r[0].as_str())
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    );
    text.push_str(&super::table(
        &[
            "VM",
            "PACKAGE",
            "INSTALLED",
            "FIXED IN",
            "ROLLOUTS WITH THE FIX",
        ],
        &rows,
    ));
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{
        AvailablePackage, Classification, GuestAssessment, GuestState, LeftOutPackage,
        LeftOutReason, ManifestFamily, ManifestPackage, OperationStatus, PatchRolloutStatus,
        VirtualMachineStatus,
    };

    fn manifest() -> ReleaseManifest {
        ReleaseManifest {
            frozen_time: None,
            families: vec![ManifestFamily {
                image_family: "Rocky/rocky/9".into(),
                snapshot: Some("20261110T000000Z".into()),
                packages: vec![ManifestPackage {
                    name: "openssl".into(),
                    version: "3.0.7-25".into(),
                    classification: Some(Classification::Security),
                    published: None,
                    advisories: vec!["RLSA-2026:1".into()],
                    cves: vec!["CVE-2026-1111".into()],
                }],
            }],
            left_out: vec![LeftOutPackage {
                image_family: "Rocky/rocky/9".into(),
                name: "kernel".into(),
                version: "5.14".into(),
                reason: LeftOutReason::NotYetApproved,
                policy: Some("profile production".into()),
                published: None,
            }],
            left_out_truncated: 3,
        }
    }

    #[test]
    fn the_plan_shows_the_snapshot_the_packages_and_what_was_left_out() {
        let text = manifest_text(&manifest(), true);
        assert_eq!(
            text,
            "Release manifest (frozen):\n  Rocky/rocky/9 — from repository snapshot 20261110T000000Z\n    openssl 3.0.7-25 (RLSA-2026:1, CVE-2026-1111)\nLeft out:\n  kernel 5.14 (Rocky/rocky/9): NotYetApproved by the approval policy of profile production\n  … and 3 more\n"
        );
    }

    #[test]
    fn exposed_lists_the_vms_whose_assessment_offers_the_fix() {
        let vm = |name: &str, cves: Vec<String>| {
            let spec = serde_json::from_value(serde_json::json!({
                "os": { "type": "Linux", "image": { "publisher": "Rocky", "offer": "rocky", "sku": "9" } },
                "placement": { "region": "east" },
            }))
            .expect("spec");
            let mut v = VirtualMachine::new(name, spec);
            v.status = Some(VirtualMachineStatus {
                guest: Some(Box::new(GuestState {
                    assessment: Some(GuestAssessment {
                        request_id: "a".into(),
                        status: OperationStatus::Succeeded,
                        start_time: None,
                        finish_time: None,
                        packages: vec![AvailablePackage {
                            name: "openssl".into(),
                            version: "3.0.7-25".into(),
                            installed_version: Some("3.0.7-24".into()),
                            classification: Classification::Security,
                            published: None,
                            advisories: Vec::new(),
                            cves,
                        }],
                        reboot_pending: false,
                        error: None,
                        snapshot: None,
                    }),
                    ..Default::default()
                })),
                ..Default::default()
            });
            Arc::new(v)
        };
        let vms = vec![
            vm("web-1", vec!["CVE-2026-1111".into()]),
            vm("web-2", Vec::new()),
        ];
        let mut r = PatchRollout::new(
            "release-2026-11",
            serde_json::from_value(serde_json::json!({"releaseTime": "2026-11-10T00:00:00Z"}))
                .expect("spec"),
        );
        r.status = Some(PatchRolloutStatus {
            manifest: Some(manifest()),
            ..Default::default()
        });
        let text = exposed_text("CVE-2026-1111", &vms, &[Arc::new(r)]);
        assert!(
            text.starts_with("1 VM(s) exposed to CVE-2026-1111"),
            "{text}"
        );
        assert!(text.contains("web-1") && !text.contains("web-2"), "{text}");
        assert!(text.contains("release-2026-11"), "{text}");
        assert!(exposed_text("CVE-2000-0001", &vms, &[]).starts_with("No VM"));
    }
}
