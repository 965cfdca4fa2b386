//! Status conditions (metav1.Condition semantics) for every resource: `lastTransitionTime` moves
//! only when the status of a type changes, and `now` always comes from the caller's clock.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::Condition;

/// Builds the conditions of one status from the previous ones.
pub struct Conditions<'a> {
    now: Timestamp,
    generation: Option<i64>,
    old: &'a [Condition],
    list: Vec<Condition>,
}

impl<'a> Conditions<'a> {
    pub fn new(old: &'a [Condition], generation: Option<i64>, now: Timestamp) -> Self {
        Conditions {
            now,
            generation,
            old,
            list: Vec::new(),
        }
    }

    /// Set a condition (replacing one of the same type set before).
    pub fn set(&mut self, type_: &str, status: bool, reason: &str, message: impl Into<String>) {
        let status = if status { "True" } else { "False" };
        let last_transition_time = self
            .old
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or(Time(self.now));
        self.list.retain(|c| c.type_ != type_);
        self.list.push(Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into().into(),
            observed_generation: self.generation,
            last_transition_time,
        });
    }

    /// Keep the previous condition of this type as it was, if there was one.
    pub fn keep(&mut self, type_: &str) {
        if let Some(c) = self.old.iter().find(|c| c.type_ == type_) {
            self.list.retain(|x| x.type_ != type_);
            self.list.push(c.clone());
        }
    }

    /// Whether the condition is True in what was set so far.
    pub fn is_true(&self, type_: &str) -> bool {
        is_true(&self.list, type_)
    }

    /// The conditions in the order they were set.
    pub fn into_vec(self) -> Vec<Condition> {
        self.list
    }

    /// The conditions sorted by type.
    pub fn into_sorted(self) -> Vec<Condition> {
        let mut list = self.list;
        list.sort_by(|a, b| a.type_.cmp(&b.type_));
        list
    }
}

/// The status of a condition type: Some(true) for True, Some(false) otherwise, None when absent.
pub fn status_of(conditions: &[Condition], type_: &str) -> Option<bool> {
    conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status == "True")
}

/// Whether a condition type is present and True.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    status_of(conditions, type_) == Some(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    #[test]
    fn transition_time_moves_only_when_the_status_changes() {
        let t0 = ts("2026-01-01T00:00:00Z");
        let t1 = ts("2026-01-02T00:00:00Z");
        let mut c = Conditions::new(&[], Some(1), t0);
        c.set("Ready", true, "Ok", "fine");
        c.set("Drifted", false, "Compliant", "none");
        let first = c.into_vec();
        assert_eq!(first[0].type_, "Ready");

        let mut c = Conditions::new(&first, Some(2), t1);
        c.set("Ready", true, "StillOk", "still fine");
        c.set("Drifted", true, "DriftDetected", "sshd");
        c.keep("Missing");
        assert!(c.is_true("Drifted"));
        let second = c.into_sorted();
        assert_eq!(second[0].type_, "Drifted");
        assert_eq!(second[0].last_transition_time, Time(t1));
        assert_eq!(second[1].last_transition_time, Time(t0));
        assert_eq!(second[1].observed_generation, Some(2));
        assert_eq!(status_of(&second, "Ready"), Some(true));
        assert_eq!(status_of(&second, "Nope"), None);
        assert!(!is_true(&second, "Nope"));
    }
}
