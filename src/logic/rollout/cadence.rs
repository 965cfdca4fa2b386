//! The release cadence: which namespaces need a PatchRollout for the latest release, and the
//! rollout the cadence creates.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::{PatchRollout, PatchRolloutSpec};
use crate::logic::rings::Cadence;

/// The name of the rollout the cadence creates for a release.
pub fn release_name(release: Timestamp) -> String {
    format!("release-{}", release.strftime("%Y-%m-%d"))
}

/// The release to create rollouts for now, and the namespaces (with rings) that lack one: within a
/// day of the latest release only, so a rollout deleted later is not recreated.
pub fn due(
    cadence: Cadence,
    now: Timestamp,
    ring_namespaces: &BTreeSet<String>,
    rollouts: &[(String, Timestamp)],
) -> Option<(Timestamp, Vec<String>)> {
    let release = cadence.latest(now)?;
    if now.duration_since(release) > jiff::SignedDuration::from_hours(24) {
        return None;
    }
    let missing = ring_namespaces
        .iter()
        .filter(|ns| !rollouts.iter().any(|(n, r)| n == *ns && *r == release))
        .cloned()
        .collect();
    Some((release, missing))
}

/// The PatchRollout of a release, with the defaults.
pub fn release_rollout(release: Timestamp, cadence: Cadence) -> PatchRollout {
    let mut obj = PatchRollout::new(
        &release_name(release),
        PatchRolloutSpec {
            release_time: Time(release),
            classifications: crate::api::default_classifications(),
            expedite: false,
            paused: false,
            rollback_on_failure: false,
            rollback: false,
            abort: false,
            retry: 0,
            promoted_rings: Vec::new(),
            skipped_rings: Vec::new(),
            exclude: Vec::new(),
            slo: Default::default(),
        },
    );
    obj.metadata.labels = Some(BTreeMap::from([(
        "app.kubernetes.io/managed-by".to_string(),
        "automend".to_string(),
    )]));
    obj.metadata.annotations = Some(BTreeMap::from([(
        "automend.io/created-by".to_string(),
        format!("release cadence {cadence}"),
    )]));
    obj
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollouts_are_due_within_a_day_of_the_release_in_namespaces_lacking_one() {
        let cadence = Cadence::parse("2 Tuesday 17:00").expect("cadence");
        let release: Timestamp = "2026-11-10T17:00:00Z".parse().expect("ts");
        let ns: BTreeSet<String> = ["a".to_string(), "b".to_string()].into();
        let have = vec![("a".to_string(), release)];
        let hour_later = release + jiff::SignedDuration::from_hours(1);
        assert_eq!(
            due(cadence, hour_later, &ns, &have),
            Some((release, vec!["b".to_string()]))
        );
        let two_days_later = release + jiff::SignedDuration::from_hours(48);
        assert_eq!(due(cadence, two_days_later, &ns, &have), None);
        assert_eq!(due(Cadence::Off, hour_later, &ns, &have), None);
        let r = release_rollout(release, cadence);
        assert_eq!(r.metadata.name.as_deref(), Some("release-2026-11-10"));
        assert_eq!(r.spec.release_time, Time(release));
    }
}
