//! The guest's report fitted to the bounds the API server enforces (`api::bounds`): a report one
//! byte over a limit would be refused whole, leaving the VM without any report, so every string
//! is sanitised and clipped and every list cut, saying what was left out.

use crate::api::bounds as b;
use crate::api::{
    AvailablePackage, GuestAssessment, GuestInstallation, GuestOs, GuestState, PinnedPackage,
    ServiceObservation, UnavailablePackage,
};
use crate::logic::text::{clip_list, safe};

fn opt(s: Option<String>, max: usize) -> Option<String> {
    s.map(|s| safe(&s, max))
}

fn pinned(p: PinnedPackage) -> PinnedPackage {
    PinnedPackage {
        name: safe(&p.name, b::PACKAGE_NAME),
        version: safe(&p.version, b::VERSION),
        classification: p.classification,
    }
}

fn pinned_list(list: Vec<PinnedPackage>) -> Vec<PinnedPackage> {
    let mut list: Vec<PinnedPackage> = list.into_iter().map(pinned).collect();
    list.truncate(b::INSTALLED_PACKAGES);
    list
}

fn clipped(list: Vec<String>, items: usize, len: usize) -> Vec<String> {
    list.iter().take(items).map(|s| safe(s, len)).collect()
}

fn unavailable(u: UnavailablePackage) -> UnavailablePackage {
    UnavailablePackage {
        name: safe(&u.name, b::PACKAGE_NAME),
        version: safe(&u.version, b::VERSION),
        repositories: safe(&u.repositories, b::REPOSITORY),
        offered: clipped(u.offered, 8, b::VERSION),
    }
}

fn service(s: ServiceObservation) -> ServiceObservation {
    let differences = clip_list(
        s.differences
            .iter()
            .map(|d| safe(d, b::DIFFERENCE))
            .collect(),
        b::DIFFERENCES,
        |n| format!("… and {n} more differences"),
    );
    ServiceObservation {
        name: safe(&s.name, b::SERVICE_NAME),
        compliant: s.compliant,
        differences,
    }
}

fn assessment(a: GuestAssessment) -> GuestAssessment {
    let mut packages: Vec<AvailablePackage> = a
        .packages
        .into_iter()
        .map(|p| AvailablePackage {
            name: safe(&p.name, b::PACKAGE_NAME),
            version: safe(&p.version, b::VERSION),
            installed_version: opt(p.installed_version, b::VERSION),
            classification: p.classification,
            published: p.published,
            advisories: clipped(p.advisories, b::ADVISORIES, b::SHORT),
            cves: clipped(p.cves, b::CVES, b::CVE),
        })
        .collect();
    let left_out = packages.len().saturating_sub(b::ASSESSED_PACKAGES);
    packages.truncate(b::ASSESSED_PACKAGES);
    let error = match (a.error, left_out) {
        (e, 0) => e,
        (Some(e), n) => Some(format!("{e}; {n} more updates not listed")),
        (None, n) => Some(format!("{n} more updates not listed")),
    };
    GuestAssessment {
        request_id: safe(&a.request_id, b::ID),
        packages,
        error: opt(error, b::ERROR),
        snapshot: opt(a.snapshot, b::SHORT),
        ..a
    }
}

fn installation(i: GuestInstallation) -> GuestInstallation {
    GuestInstallation {
        rollout: safe(&i.rollout, b::ID),
        wave: i.wave.max(0),
        installed: pinned_list(i.installed),
        failed: pinned_list(i.failed),
        unavailable: i
            .unavailable
            .into_iter()
            .take(b::UNAVAILABLE)
            .map(unavailable)
            .collect(),
        previous_versions: pinned_list(i.previous_versions),
        error: opt(i.error, b::ERROR),
        ..i
    }
}

/// The report, within every bound.
pub fn fit(state: GuestState) -> GuestState {
    let mut services: Vec<ServiceObservation> = state.services.into_iter().map(service).collect();
    services.truncate(b::SERVICES);
    let line = |v: Vec<String>, max: usize| -> Vec<String> {
        let mut v: Vec<String> = v.iter().map(|s| safe(s, b::LINE)).collect();
        // The newest last: keep the end.
        if v.len() > max {
            v.drain(..v.len() - max);
        }
        v
    };
    GuestState {
        agent_version: opt(state.agent_version, b::SHORT),
        os: state.os.map(|o| GuestOs {
            id: safe(&o.id, b::SHORT),
            version: safe(&o.version, b::SHORT),
            kernel: opt(o.kernel, b::KERNEL),
        }),
        applied_hash: opt(state.applied_hash, b::HASH),
        applied_attempt: state.applied_attempt.max(0),
        services,
        assessment: state.assessment.map(assessment),
        release_assessment: state.release_assessment.map(assessment),
        installation: state.installation.map(installation),
        problems: line(state.problems, b::PROBLEMS),
        changes: line(state.changes, b::CHANGES),
        ..state
    }
}

/// A report as the API server stores it (fitted, times at the second), without its observation
/// time: what the guest compares its next report, and what the watch shows, against.
pub fn as_stored(state: &GuestState) -> Option<GuestState> {
    let fitted = fit(GuestState {
        last_observed_time: None,
        ..state.clone()
    });
    serde_json::to_value(&fitted)
        .ok()
        .and_then(|v| serde_json::from_value(v).ok())
}

/// A stored report without its observation time.
pub fn without_time(state: &GuestState) -> GuestState {
    GuestState {
        last_observed_time: None,
        ..state.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Classification, OperationStatus};

    #[test]
    fn an_oversized_report_fits_every_bound_and_says_what_was_cut() {
        let huge = "x".repeat(10_000);
        let state = GuestState {
            agent_version: Some(huge.clone()),
            services: (0..40)
                .map(|i| ServiceObservation {
                    name: format!("svc-{i}"),
                    compliant: false,
                    differences: (0..100).map(|_| format!("{huge}\r")).collect(),
                })
                .collect(),
            assessment: Some(GuestAssessment {
                request_id: "a".into(),
                status: OperationStatus::Succeeded,
                start_time: None,
                finish_time: None,
                packages: (0..1500)
                    .map(|i| AvailablePackage {
                        name: format!("p{i}"),
                        version: huge.clone(),
                        installed_version: None,
                        classification: Classification::Other,
                        published: None,
                        advisories: Vec::new(),
                        cves: Vec::new(),
                    })
                    .collect(),
                reboot_pending: false,
                error: None,
                snapshot: None,
            }),
            problems: (0..40).map(|i| format!("problem {i}")).collect(),
            ..Default::default()
        };
        let f = fit(state);
        assert!(
            f.agent_version
                .as_ref()
                .is_some_and(|v| v.len() <= b::SHORT)
        );
        assert_eq!(f.services.len(), b::SERVICES);
        let d = &f.services[0].differences;
        assert_eq!(d.len(), b::DIFFERENCES);
        assert!(
            d.iter()
                .all(|x| x.len() <= b::DIFFERENCE && !x.contains('\r'))
        );
        assert_eq!(
            d.last().map(String::as_str),
            Some("… and 69 more differences")
        );
        let a = f.assessment.expect("assessment");
        assert_eq!(a.packages.len(), b::ASSESSED_PACKAGES);
        assert!(a.packages.iter().all(|p| p.version.len() <= b::VERSION));
        assert_eq!(a.error.as_deref(), Some("1000 more updates not listed"));
        assert_eq!(f.problems.len(), b::PROBLEMS);
        assert_eq!(f.problems.last().map(String::as_str), Some("problem 39"));
        let json = serde_json::to_string(&GuestState {
            problems: vec![],
            ..Default::default()
        })
        .expect("json");
        assert!(json.len() < 100);
    }

    #[test]
    fn the_stored_form_matches_what_the_api_server_echoes() {
        let now = jiff::Timestamp::now();
        let state = GuestState {
            agent_version: Some("1".into()),
            last_observed_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now)),
            assessment: Some(GuestAssessment {
                request_id: "a".into(),
                status: OperationStatus::Succeeded,
                start_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now)),
                finish_time: None,
                packages: vec![],
                reboot_pending: false,
                error: None,
                snapshot: None,
            }),
            ..Default::default()
        };
        let stored = as_stored(&state).expect("stored");
        // The echo: the JSON the API server keeps, read back.
        let echo: GuestState =
            serde_json::from_value(serde_json::to_value(fit(state)).expect("json")).expect("echo");
        assert_eq!(without_time(&echo), stored);
    }
}
