//! Publishing Events (events.k8s.io/v1). Repeats of the same event — same object, type, reason,
//! action and note — within `SERIES_TTL` become one Event with a series count, as Kubernetes
//! recommends; an event whose note differs is an Event of its own.
//!
//! kube-runtime's `Recorder` keys its series without the note, so "ring first started" was
//! folded into the first "ring test started" Event and `kubectl describe` kept showing the
//! first note: the message users read was not what happened.

use std::collections::HashMap;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event as K8sEvent, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Reporter};
use std::sync::Mutex;

/// How long a published Event may still be continued as a series (kube-runtime's value).
pub const SERIES_TTL: Duration = Duration::from_secs(6 * 60);

/// What identifies one event for its series.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    regarding: (
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
    ),
    warning: bool,
    reason: String,
    action: String,
    note: Option<String>,
}

impl Key {
    pub fn of(ev: &Event, regarding: &ObjectReference) -> Key {
        Key {
            regarding: (
                regarding.kind.clone(),
                regarding.namespace.clone(),
                regarding.name.clone(),
                regarding.uid.clone(),
            ),
            warning: matches!(ev.type_, EventType::Warning),
            reason: ev.reason.clone(),
            action: ev.action.clone(),
            note: ev.note.clone(),
        }
    }
}

/// An Event published, and how often.
#[derive(Clone, Debug)]
pub struct Published {
    pub name: String,
    pub count: i32,
    pub last: Timestamp,
}

/// Create a new Event, or continue the series of `name` with `count`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Create,
    Continue { name: String, count: i32 },
}

/// What publishing an event with this key does now.
pub fn step(cached: Option<&Published>, now: Timestamp) -> Step {
    match cached {
        Some(p) if crate::logic::duration::add(p.last, SERIES_TTL) > now => Step::Continue {
            name: p.name.clone(),
            count: p.count + 1,
        },
        _ => Step::Create,
    }
}

/// The controller's Event publisher.
pub struct Recorder {
    client: kube::Client,
    reporter: Reporter,
    published: Mutex<Series>,
}

/// The series published lately; expired ones are dropped once a minute.
#[derive(Default)]
struct Series {
    by_key: HashMap<Key, Published>,
    pruned: Option<Timestamp>,
}

/// How often expired series are dropped (a scan of them all).
const PRUNE_EVERY: Duration = Duration::from_secs(60);

impl Recorder {
    pub fn new(client: kube::Client, reporter: Reporter) -> Recorder {
        Recorder {
            client,
            reporter,
            published: Mutex::default(),
        }
    }

    pub async fn publish(
        &self,
        ev: &Event,
        regarding: &ObjectReference,
    ) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        let key = Key::of(ev, regarding);
        // The lock is held to decide and to record, never across the API call: reconciles
        // publishing Events at once do not wait on each other's requests.
        let next = {
            let Ok(mut series) = self.published.lock() else {
                return Ok(());
            };
            if series
                .pruned
                .is_none_or(|at| crate::logic::duration::add(at, PRUNE_EVERY) <= now)
            {
                series
                    .by_key
                    .retain(|_, p| crate::logic::duration::add(p.last, SERIES_TTL) > now);
                series.pruned = Some(now);
            }
            step(series.by_key.get(&key), now)
        };
        let ns = regarding
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), &ns);
        let (name, count) = match next {
            Step::Continue { name, count } => {
                let series = serde_json::json!({ "series": EventSeries {
                    count,
                    last_observed_time: MicroTime(now),
                } });
                api.patch(&name, &PatchParams::default(), &Patch::Merge(&series))
                    .await?;
                (name, count)
            }
            Step::Create => {
                let name = format!(
                    "{}.{:x}",
                    regarding
                        .name
                        .as_deref()
                        .unwrap_or(&self.reporter.controller),
                    now.as_nanosecond()
                );
                let event = K8sEvent {
                    action: Some(ev.action.clone()),
                    reason: Some(ev.reason.clone()),
                    event_time: Some(MicroTime(now)),
                    regarding: Some(regarding.clone()),
                    related: ev.secondary.clone(),
                    note: ev.note.clone(),
                    metadata: ObjectMeta {
                        namespace: Some(ns),
                        name: Some(name.clone()),
                        ..Default::default()
                    },
                    reporting_controller: Some(self.reporter.controller.clone()),
                    reporting_instance: Some(
                        self.reporter
                            .instance
                            .clone()
                            .unwrap_or_else(|| self.reporter.controller.clone()),
                    ),
                    type_: Some(if matches!(ev.type_, EventType::Warning) {
                        "Warning".into()
                    } else {
                        "Normal".into()
                    }),
                    ..Default::default()
                };
                api.create(&PostParams::default(), &event).await?;
                (name, 1)
            }
        };
        if let Ok(mut series) = self.published.lock() {
            series.by_key.insert(
                key,
                Published {
                    name,
                    count,
                    last: now,
                },
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(reason: &str, note: &str) -> Event {
        Event {
            type_: EventType::Normal,
            reason: reason.into(),
            note: Some(note.into()),
            action: "Start".into(),
            secondary: None,
        }
    }

    #[test]
    fn a_different_note_is_a_different_event_and_a_repeat_continues_the_series() {
        let rollout = ObjectReference {
            kind: Some("PatchRollout".into()),
            name: Some("release".into()),
            namespace: Some("fleet".into()),
            uid: Some("u1".into()),
            ..Default::default()
        };
        let test = Key::of(&ev("RingStarted", "ring test started (3 VMs)"), &rollout);
        let first = Key::of(&ev("RingStarted", "ring first started (5 VMs)"), &rollout);
        assert_ne!(test, first, "the note identifies the event");
        assert_eq!(
            test,
            Key::of(&ev("RingStarted", "ring test started (3 VMs)"), &rollout)
        );
        let t0: Timestamp = "2026-11-10T18:00:00Z".parse().expect("time");
        assert_eq!(step(None, t0), Step::Create);
        let p = Published {
            name: "release.1".into(),
            count: 1,
            last: t0,
        };
        assert_eq!(
            step(
                Some(&p),
                crate::logic::duration::add(t0, Duration::from_secs(60))
            ),
            Step::Continue {
                name: "release.1".into(),
                count: 2
            }
        );
        assert_eq!(
            step(Some(&p), crate::logic::duration::add(t0, SERIES_TTL)),
            Step::Create,
            "an old series is not continued"
        );
    }
}
