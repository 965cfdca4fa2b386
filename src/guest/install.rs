//! The install decisions of a guest, pure: whether a directive may start, what it installs and
//! removes (a rollback returns to the versions recorded before this rollout's install), how the
//! outcome is classified, and whether a reboot is left pending.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::{
    GuestInstallation, InstallationDirective, OperationStatus, PinnedPackage, RebootSetting,
};

use super::Installed;

/// The record an installation of `d` starts with (Failed until it finishes).
pub fn started(d: &InstallationDirective, start: Timestamp) -> GuestInstallation {
    GuestInstallation {
        rollout: d.rollout.clone(),
        wave: d.wave,
        rollback: d.rollback,
        status: OperationStatus::Failed,
        start_time: Some(Time(start)),
        finish_time: None,
        installed: Vec::new(),
        failed: Vec::new(),
        previous_versions: Vec::new(),
        reboot_pending: false,
        maintenance_window_exceeded: false,
        error: None,
    }
}

/// A failed record, finished at `at`.
pub fn failed(mut record: GuestInstallation, error: String, at: Timestamp) -> GuestInstallation {
    record.error = Some(error);
    record.finish_time = Some(Time(at));
    record
}

/// Refused: the maintenance window ended before the installation could start (retried in the
/// next window by the controller, since nothing was installed).
pub fn refused_after_window(
    d: &InstallationDirective,
    record: &GuestInstallation,
    start: Timestamp,
) -> Option<GuestInstallation> {
    if d.window_end.as_ref().is_none_or(|end| end.0 > start) {
        return None;
    }
    let mut r = failed(
        record.clone(),
        "the maintenance window ended before the installation could start".into(),
        start,
    );
    r.maintenance_window_exceeded = true;
    Some(r)
}

/// What to install and which packages to remove: the directive's pinned packages, or for a
/// rollback the versions recorded before this rollout's install (removing what it added).
pub fn targets(
    d: &InstallationDirective,
    last: Option<&GuestInstallation>,
) -> Result<(Vec<PinnedPackage>, Vec<String>), String> {
    if !d.rollback {
        return Ok((d.packages.clone(), Vec::new()));
    }
    let Some(i) = last.filter(|i| i.rollout == d.rollout && !i.rollback) else {
        return Err(format!(
            "nothing of rollout {} was installed here to roll back",
            d.rollout
        ));
    };
    let remove = i
        .installed
        .iter()
        .filter(|p| !i.previous_versions.iter().any(|q| q.name == p.name))
        .map(|p| p.name.clone())
        .collect();
    Ok((i.previous_versions.clone(), remove))
}

/// The versions read before installing, with each package's classification filled in from the
/// directive.
pub fn classified(
    mut previous: Vec<PinnedPackage>,
    packages: &[PinnedPackage],
) -> Vec<PinnedPackage> {
    for q in previous.iter_mut().filter(|q| q.classification.is_none()) {
        q.classification = packages
            .iter()
            .find(|x| x.name == q.name)
            .and_then(|x| x.classification);
    }
    previous
}

/// Succeeded when nothing failed; Failed when nothing was installed of a non-empty set;
/// otherwise CompletedWithWarnings.
pub fn status(out: &Installed, wanted: usize) -> OperationStatus {
    match (
        out.failed.is_empty(),
        out.installed.is_empty() && wanted > 0,
    ) {
        (true, _) => OperationStatus::Succeeded,
        (false, true) => OperationStatus::Failed,
        (false, false) => OperationStatus::CompletedWithWarnings,
    }
}

/// Whether a reboot is reported pending after the install: `Never` leaves a required reboot
/// pending; hotpatch applies fixes to the running system and needs none.
pub fn reboot_pending(reboot_required: bool, d: &InstallationDirective) -> bool {
    reboot_required && !d.hotpatch_only && d.reboot_setting == Some(RebootSetting::Never)
}

/// The finished record of an install.
pub fn finished(
    mut record: GuestInstallation,
    d: &InstallationDirective,
    wanted: usize,
    previous: Vec<PinnedPackage>,
    out: Installed,
    finish: Timestamp,
) -> GuestInstallation {
    record.finish_time = Some(Time(finish));
    record.maintenance_window_exceeded = d.window_end.as_ref().is_some_and(|end| end.0 < finish);
    record.status = status(&out, wanted);
    record.reboot_pending = reboot_pending(out.reboot_required, d);
    record.installed = out.installed;
    record.failed = out.failed;
    record.previous_versions = if previous.is_empty() {
        out.previous_versions
    } else {
        previous
    };
    record.error = out.error;
    record
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Classification;

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    fn pkg(name: &str, version: &str) -> PinnedPackage {
        PinnedPackage {
            name: name.into(),
            version: version.into(),
            classification: Some(Classification::Security),
        }
    }

    fn directive(rollback: bool) -> InstallationDirective {
        InstallationDirective {
            rollout: "r".into(),
            wave: 1,
            packages: vec![pkg("libssl", "1.1"), pkg("new", "1.0")],
            window_end: Some(Time(ts("2026-01-01T04:00:00Z"))),
            reboot_setting: Some(RebootSetting::IfRequired),
            hotpatch_only: false,
            rollback,
        }
    }

    #[test]
    fn an_install_never_starts_after_the_window_end() {
        let d = directive(false);
        let at_end = ts("2026-01-01T04:00:00Z");
        let r = refused_after_window(&d, &started(&d, at_end), at_end).expect("refused");
        assert!(r.maintenance_window_exceeded);
        assert_eq!(r.status, OperationStatus::Failed);
        assert!(r.installed.is_empty() && r.failed.is_empty());
        assert!(
            refused_after_window(&d, &started(&d, at_end), ts("2026-01-01T03:59:00Z")).is_none()
        );
    }

    #[test]
    fn a_rollback_returns_to_the_recorded_versions_and_removes_what_was_added() {
        let d = directive(false);
        let mut done = started(&d, ts("2026-01-01T03:00:00Z"));
        done.installed = vec![pkg("libssl", "1.1"), pkg("new", "1.0")];
        done.previous_versions = vec![pkg("libssl", "1.0")];
        let (install, remove) = targets(&directive(true), Some(&done)).expect("targets");
        assert_eq!(install, vec![pkg("libssl", "1.0")]);
        assert_eq!(remove, vec!["new".to_string()]);
        let err = targets(&directive(true), None).expect_err("nothing to roll back");
        assert!(err.contains("nothing of rollout r"), "{err}");
        assert_eq!(targets(&d, None).expect("pinned").0, d.packages);
    }

    #[test]
    fn outcomes_are_classified_and_the_reboot_rule_holds() {
        let ok = Installed {
            installed: vec![pkg("a", "1")],
            ..Default::default()
        };
        let none = Installed {
            failed: vec![pkg("a", "1")],
            ..Default::default()
        };
        let some = Installed {
            installed: vec![pkg("a", "1")],
            failed: vec![pkg("b", "1")],
            ..Default::default()
        };
        assert_eq!(status(&ok, 1), OperationStatus::Succeeded);
        assert_eq!(status(&none, 1), OperationStatus::Failed);
        assert_eq!(status(&some, 2), OperationStatus::CompletedWithWarnings);
        let mut d = directive(false);
        d.reboot_setting = Some(RebootSetting::Never);
        assert!(reboot_pending(true, &d));
        assert!(!reboot_pending(false, &d));
        d.hotpatch_only = true;
        assert!(!reboot_pending(true, &d));
        let mut unclassified = pkg("libssl", "1.0");
        unclassified.classification = None;
        assert_eq!(
            classified(vec![unclassified], &[pkg("libssl", "1.1")])[0].classification,
            Some(Classification::Security)
        );
    }
}
