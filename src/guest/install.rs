//! The install decisions of a guest, pure: whether a directive may start, what it installs and
//! removes (a rollback returns to the versions recorded before this rollout's install), how the
//! outcome is classified, and whether a reboot is left pending.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::{
    GuestInstallation, HookName, HookRun, InstallationDirective, OperationStatus, PinnedPackage,
    RebootSetting,
};

use super::Installed;

/// The reason of an installation some of whose pinned versions the repositories do not offer.
pub const UNAVAILABLE: &str = "PinnedVersionUnavailable";

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
        unavailable: Vec::new(),
        previous_versions: Vec::new(),
        reboot_pending: false,
        maintenance_window_exceeded: false,
        error: None,
        reason: None,
        reboot_started_at: None,
        rebooted_at: None,
        hooks: Vec::new(),
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
    let ended = d.window_end.as_ref().is_some_and(|end| end.0 <= start);
    let too_late = d.latest_start.as_ref().is_some_and(|l| l.0 < start);
    if !ended && !too_late {
        return None;
    }
    let why = if ended {
        "the maintenance window ended before the installation could start".to_string()
    } else {
        format!(
            "too little of the maintenance window was left to start the installation (latest start {})",
            d.latest_start
                .as_ref()
                .map(|l| l.0.to_string())
                .unwrap_or_default()
        )
    };
    let mut r = failed(record.clone(), why, start);
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

/// What follows an installation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterInstall {
    /// Nothing: no reboot is needed (or hotpatch applied the fixes to the running system).
    Done,
    /// Reboot now (the window is still open).
    Reboot,
    /// A reboot is needed but left pending: `rebootSetting: Never`, or the window ended first
    /// (`window_exceeded`).
    Pending { window_exceeded: bool },
}

/// The reboot rule: `IfRequired` (the default) reboots when the OS says so, `Always` after every
/// install that changed something, `Never` leaves a required reboot pending; hotpatch-only
/// installs never reboot; no reboot starts once the maintenance window has ended.
pub fn after_install(d: &InstallationDirective, out: &Installed, now: Timestamp) -> AfterInstall {
    if d.hotpatch_only {
        return AfterInstall::Done;
    }
    let changed = !out.installed.is_empty();
    let wanted = match d.reboot_setting.unwrap_or(RebootSetting::IfRequired) {
        RebootSetting::Never => {
            return if out.reboot_required {
                AfterInstall::Pending {
                    window_exceeded: false,
                }
            } else {
                AfterInstall::Done
            };
        }
        RebootSetting::IfRequired => out.reboot_required,
        RebootSetting::Always => changed,
    };
    if !wanted {
        AfterInstall::Done
    } else if d.window_end.as_ref().is_some_and(|end| end.0 <= now) {
        AfterInstall::Pending {
            window_exceeded: true,
        }
    } else {
        AfterInstall::Reboot
    }
}

/// The environment of a hook (documented on `PatchHooks`).
pub fn hook_env(
    hook: HookName,
    d: &InstallationDirective,
    packages: &[PinnedPackage],
    reboot: bool,
) -> Vec<(String, String)> {
    let list = packages
        .iter()
        .map(|p| format!("{}={}", p.name, p.version))
        .collect::<Vec<_>>()
        .join(" ");
    [
        ("AUTOMEND_HOOK", hook.to_string()),
        ("AUTOMEND_ROLLOUT", d.rollout.clone()),
        ("AUTOMEND_WAVE", d.wave.to_string()),
        ("AUTOMEND_ROLLBACK", d.rollback.to_string()),
        ("AUTOMEND_PACKAGES", list),
        ("AUTOMEND_REBOOT", reboot.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// The reason word of a failed hook.
pub fn hook_reason(hook: HookName) -> &'static str {
    match hook {
        HookName::PreInstall => "PreInstallHookFailed",
        HookName::PreReboot => "PreRebootHookFailed",
        HookName::PostInstall => "PostInstallHookFailed",
    }
}

/// Record a hook's run; a failure fails the record with the hook's reason, exit code and output
/// (an earlier failure's reason and error are kept: they say what went wrong first).
pub fn hook_ran(record: &mut GuestInstallation, run: HookRun, at: Timestamp) -> bool {
    let ok = run.succeeded;
    if !ok && (record.error.is_some() || record.reason.is_some()) {
        record.status = OperationStatus::Failed;
    } else if !ok {
        let code = run
            .exit_code
            .map_or_else(|| "did not finish".to_string(), |c| format!("exited {c}"));
        let tail = run.output.lines().last().unwrap_or_default().to_string();
        record.status = OperationStatus::Failed;
        record.reason = Some(hook_reason(run.hook).into());
        record.error = Some(format!("the {} hook {code}: {tail}", run.hook));
        record.finish_time = Some(Time(at));
    }
    record.hooks.push(run);
    ok
}

/// The record announcing a reboot: InProgress until the machine is back; `after` is the
/// status it then finishes with.
pub fn rebooting(record: &GuestInstallation, at: Timestamp) -> GuestInstallation {
    let mut r = record.clone();
    r.status = OperationStatus::InProgress;
    r.reboot_started_at = Some(Time(at));
    r.reboot_pending = true;
    r
}

/// The machine is back: the install finishes with the status it had before the reboot.
pub fn rebooted(
    record: &GuestInstallation,
    after: OperationStatus,
    at: Timestamp,
) -> GuestInstallation {
    let mut r = record.clone();
    r.status = after;
    r.reboot_pending = false;
    r.rebooted_at = Some(Time(at));
    r.finish_time = Some(Time(at));
    r
}

/// The announced reboot did not happen.
pub fn reboot_failed(record: &GuestInstallation, why: String, at: Timestamp) -> GuestInstallation {
    let mut r = record.clone();
    r.status = OperationStatus::Failed;
    r.reason = Some("RebootFailed".into());
    r.error = Some(why);
    r.reboot_pending = true;
    r.finish_time = Some(Time(at));
    r
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
    record.status = status(&out, wanted);
    let after = after_install(d, &out, finish);
    record.maintenance_window_exceeded = d.window_end.as_ref().is_some_and(|end| end.0 < finish)
        || after
            == AfterInstall::Pending {
                window_exceeded: true,
            };
    record.reboot_pending = matches!(after, AfterInstall::Pending { .. } | AfterInstall::Reboot);
    record.installed = out.installed;
    record.failed = out.failed;
    if !out.unavailable.is_empty() {
        record.reason.get_or_insert_with(|| UNAVAILABLE.to_string());
    }
    record.unavailable = out.unavailable;
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
            latest_start: None,
            reboot_setting: Some(RebootSetting::IfRequired),
            hotpatch_only: false,
            rollback,
            hooks: None,
            snapshot: None,
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
    fn an_install_never_starts_after_its_latest_start() {
        let mut d = directive(false);
        d.latest_start = Some(Time(ts("2026-01-01T03:30:00Z")));
        let late = ts("2026-01-01T03:45:00Z");
        let r = refused_after_window(&d, &started(&d, late), late).expect("refused");
        assert!(r.maintenance_window_exceeded);
        assert!(
            r.error
                .as_deref()
                .is_some_and(|e| e.contains("latest start")),
            "{:?}",
            r.error
        );
        let on_time = ts("2026-01-01T03:30:00Z");
        assert!(refused_after_window(&d, &started(&d, on_time), on_time).is_none());
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
        let mut unclassified = pkg("libssl", "1.0");
        unclassified.classification = None;
        assert_eq!(
            classified(vec![unclassified], &[pkg("libssl", "1.1")])[0].classification,
            Some(Classification::Security)
        );
    }

    fn outcome(installed: usize, reboot_required: bool) -> Installed {
        Installed {
            installed: (0..installed).map(|i| pkg(&format!("p{i}"), "2")).collect(),
            reboot_required,
            ..Default::default()
        }
    }

    #[test]
    fn the_reboot_rule_follows_the_setting_the_os_and_the_window() {
        let now = ts("2026-11-10T18:00:00Z");
        let mut d = directive(false);
        d.window_end = Some(Time(ts("2026-11-10T20:00:00Z")));
        let with = |s: Option<RebootSetting>| {
            let mut d = d.clone();
            d.reboot_setting = s;
            d
        };
        use AfterInstall::*;
        let if_required = with(Some(RebootSetting::IfRequired));
        assert_eq!(after_install(&if_required, &outcome(1, true), now), Reboot);
        assert_eq!(after_install(&if_required, &outcome(1, false), now), Done);
        assert_eq!(
            after_install(&with(None), &outcome(1, true), now),
            Reboot,
            "IfRequired is the default"
        );
        let always = with(Some(RebootSetting::Always));
        assert_eq!(after_install(&always, &outcome(1, false), now), Reboot);
        assert_eq!(
            after_install(&always, &outcome(0, false), now),
            Done,
            "nothing changed"
        );
        let never = with(Some(RebootSetting::Never));
        assert_eq!(
            after_install(&never, &outcome(1, true), now),
            Pending {
                window_exceeded: false
            }
        );
        assert_eq!(after_install(&never, &outcome(1, false), now), Done);
        let mut hot = if_required.clone();
        hot.hotpatch_only = true;
        assert_eq!(after_install(&hot, &outcome(1, true), now), Done);
        let late = ts("2026-11-10T20:00:00Z");
        assert_eq!(
            after_install(&if_required, &outcome(1, true), late),
            Pending {
                window_exceeded: true
            }
        );
        // The finished record says so: pending, and the window exceeded.
        let r = finished(
            started(&if_required, now),
            &if_required,
            1,
            vec![],
            outcome(1, true),
            late,
        );
        assert!(r.reboot_pending && r.maintenance_window_exceeded);
        let r = finished(
            started(&never, now),
            &never,
            1,
            vec![],
            outcome(1, true),
            now,
        );
        assert!(r.reboot_pending && !r.maintenance_window_exceeded);
        let r = finished(
            started(&if_required, now),
            &if_required,
            1,
            vec![],
            outcome(1, false),
            now,
        );
        assert!(!r.reboot_pending);
    }

    #[test]
    fn a_failed_hook_fails_the_record_with_its_reason_and_output() {
        let d = directive(false);
        let mut r = started(&d, ts("2026-11-10T18:00:00Z"));
        r.status = OperationStatus::Succeeded;
        let ok = HookRun {
            hook: HookName::PreInstall,
            exit_code: Some(0),
            succeeded: true,
            output: "drained".into(),
        };
        assert!(hook_ran(&mut r, ok, ts("2026-11-10T18:00:01Z")));
        assert_eq!(r.status, OperationStatus::Succeeded);
        let bad = HookRun {
            hook: HookName::PostInstall,
            exit_code: Some(3),
            succeeded: false,
            output: "starting app\napp did not answer".into(),
        };
        assert!(!hook_ran(&mut r, bad, ts("2026-11-10T18:00:02Z")));
        assert_eq!(r.status, OperationStatus::Failed);
        assert_eq!(r.reason.as_deref(), Some("PostInstallHookFailed"));
        assert_eq!(
            r.error.as_deref(),
            Some("the postInstall hook exited 3: app did not answer")
        );
        assert_eq!(r.hooks.len(), 2);
        // A failure before (the packages) keeps its words.
        let mut failed_install = started(&d, ts("2026-11-10T18:00:00Z"));
        failed_install.error = Some("dpkg: error processing libssl".into());
        let again = HookRun {
            hook: HookName::PostInstall,
            exit_code: Some(1),
            succeeded: false,
            output: "x".into(),
        };
        assert!(!hook_ran(
            &mut failed_install,
            again,
            ts("2026-11-10T18:00:03Z")
        ));
        assert_eq!(
            failed_install.error.as_deref(),
            Some("dpkg: error processing libssl")
        );
        assert_eq!(failed_install.reason, None);
        let env = hook_env(HookName::PreReboot, &d, &[pkg("openssl", "3.0.2")], true);
        assert!(env.contains(&("AUTOMEND_PACKAGES".into(), "openssl=3.0.2".into())));
        assert!(env.contains(&("AUTOMEND_REBOOT".into(), "true".into())));
        assert!(env.contains(&("AUTOMEND_HOOK".into(), "preReboot".into())));
    }

    #[test]
    fn a_reboot_is_announced_then_finished_or_failed() {
        let d = directive(false);
        let t0 = ts("2026-11-10T18:00:00Z");
        let mut r = started(&d, t0);
        r.status = OperationStatus::Succeeded;
        let announced = rebooting(&r, t0);
        assert_eq!(announced.status, OperationStatus::InProgress);
        assert!(announced.reboot_pending && announced.reboot_started_at.is_some());
        let back = rebooted(
            &announced,
            OperationStatus::Succeeded,
            ts("2026-11-10T18:02:00Z"),
        );
        assert_eq!(back.status, OperationStatus::Succeeded);
        assert!(!back.reboot_pending);
        assert_eq!(back.rebooted_at, Some(Time(ts("2026-11-10T18:02:00Z"))));
        let failed = reboot_failed(&announced, "the marker survived".into(), t0);
        assert_eq!(failed.reason.as_deref(), Some("RebootFailed"));
        assert!(failed.reboot_pending);
    }
}
