//! What each rollout verb would change, decided from the rollout as it stands: a verb that
//! cannot do what it says is refused with the reason, and one with nothing to do says so.

use kube::ResourceExt;

use crate::api::{PatchRollout, RingPhase, RolloutPhase};

/// A rollout verb.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    Pause,
    Resume,
    Expedite,
    Rollback,
    Abort,
    Retry,
    /// Promote the current ring; `skip`: pass over it instead.
    Promote {
        skip: bool,
    },
}

/// What to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// Merge this into `spec` (with the rollout's resourceVersion as precondition), then print.
    Patch {
        spec: serde_json::Value,
        done: String,
    },
    /// Nothing to change; print this.
    Nothing(String),
}

fn phase_of(r: &PatchRollout) -> RolloutPhase {
    r.status
        .as_ref()
        .and_then(|s| s.phase)
        .unwrap_or(RolloutPhase::Pending)
}

/// The ring a rollout is on: the first not yet Succeeded or Skipped.
fn current_ring(r: &PatchRollout) -> Option<(&str, Option<RingPhase>)> {
    r.status.as_ref().and_then(|s| {
        s.rings
            .iter()
            .find(|g| !matches!(g.phase, Some(RingPhase::Succeeded | RingPhase::Skipped)))
            .map(|g| (g.name.as_str(), g.phase))
    })
}

fn failed(r: &PatchRollout) -> i32 {
    r.status
        .as_ref()
        .map_or(0, |s| s.rings.iter().map(|g| g.failed).sum())
}

/// Decide a verb on a rollout.
pub fn decide(verb: Verb, r: &PatchRollout) -> Result<Change, String> {
    let me = format!("patchrollout/{}", r.name_any());
    let spec = &r.spec;
    let phase = if spec.rollback {
        RolloutPhase::RolledBack
    } else if spec.abort && !matches!(phase_of(r), RolloutPhase::Succeeded) {
        RolloutPhase::Aborted
    } else {
        phase_of(r)
    };
    let halted_hint = "resume does not lift a halt: `kubectl automend retry` gives the failed VMs another attempt, `rollback` returns the VMs to their previous versions, `abort` stops the rollout";
    let over = |what: &str| -> Result<Change, String> { Err(format!("{me} is {phase:?}: {what}")) };
    match verb {
        Verb::Pause | Verb::Resume => {
            let pause = verb == Verb::Pause;
            match phase {
                RolloutPhase::Halted if pause => {
                    over("halted by its health gate; nothing starts until it is retried")
                }
                RolloutPhase::Halted => {
                    Err(format!("{me} is Halted by its health gate: {halted_hint}"))
                }
                RolloutPhase::Succeeded | RolloutPhase::RolledBack | RolloutPhase::Aborted => {
                    over(if pause {
                        "finished, there is nothing to pause"
                    } else {
                        "finished, there is nothing to resume"
                    })
                }
                _ if spec.paused == pause => Ok(Change::Nothing(format!(
                    "{me} is {} paused",
                    if pause { "already" } else { "not" }
                ))),
                _ => Ok(Change::Patch {
                    spec: serde_json::json!({ "paused": pause }),
                    done: if pause {
                        format!("{me} paused: waves in flight finish, no new wave starts")
                    } else {
                        format!("{me} resumed")
                    },
                }),
            }
        }
        Verb::Expedite => match phase {
            RolloutPhase::Halted
            | RolloutPhase::Succeeded
            | RolloutPhase::RolledBack
            | RolloutPhase::Aborted => over("finished, there is nothing to expedite"),
            _ if spec.expedite => Ok(Change::Nothing(format!("{me} is already expedited"))),
            _ if r.status.as_ref().is_some_and(|s| {
                !s.rings.is_empty()
                    && s.rings
                        .iter()
                        .all(|g| g.started_time.is_some() || g.phase == Some(RingPhase::Skipped))
            }) =>
            {
                Err(format!(
                    "{me}: every ring has started, no deferral is left to skip"
                ))
            }
            _ => Ok(Change::Patch {
                spec: serde_json::json!({ "expedite": true }),
                done: format!(
                    "{me} expedited: the rings that have not started skip their deferrals (health gates still apply)"
                ),
            }),
        },
        Verb::Rollback => match phase {
            RolloutPhase::RolledBack => Ok(Change::Nothing(format!(
                "{me} is already rolled back (or rolling back)"
            ))),
            RolloutPhase::Pending
                if r.status
                    .as_ref()
                    .is_none_or(|s| s.rings.iter().all(|g| g.started_time.is_none())) =>
            {
                Err(format!(
                    "{me} has installed nothing yet: there is nothing to roll back (`kubectl automend abort` stops it)"
                ))
            }
            _ => Ok(Change::Patch {
                spec: serde_json::json!({ "rollback": true }),
                done: format!(
                    "{me} rolling back: its VMs return to the versions recorded before the install"
                ),
            }),
        },
        Verb::Abort => match phase {
            RolloutPhase::Aborted => Ok(Change::Nothing(format!("{me} is already aborted"))),
            RolloutPhase::Succeeded | RolloutPhase::RolledBack => over(
                "finished, there is nothing to abort (`kubectl automend rollback` returns its VMs)",
            ),
            _ => Ok(Change::Patch {
                spec: serde_json::json!({ "abort": true }),
                done: format!(
                    "{me} aborted: nothing more is installed, nothing is rolled back; installations already running finish"
                ),
            }),
        },
        Verb::Retry => match phase {
            RolloutPhase::Succeeded | RolloutPhase::RolledBack | RolloutPhase::Aborted => {
                over("finished, there is nothing to retry")
            }
            _ if failed(r) == 0 && phase != RolloutPhase::Halted => {
                Err(format!("{me}: no VM has failed, there is nothing to retry"))
            }
            _ => Ok(Change::Patch {
                spec: serde_json::json!({ "retry": spec.retry + 1 }),
                done: format!(
                    "{me} retry {}: {} failed VM(s) get another attempt{}",
                    spec.retry + 1,
                    failed(r),
                    if phase == RolloutPhase::Halted {
                        "; the halt is lifted"
                    } else {
                        ""
                    }
                ),
            }),
        },
        Verb::Promote { skip } => {
            if matches!(
                phase,
                RolloutPhase::Halted
                    | RolloutPhase::Succeeded
                    | RolloutPhase::RolledBack
                    | RolloutPhase::Aborted
            ) {
                return over("finished, there is nothing to promote");
            }
            let Some((ring, ring_phase)) = current_ring(r) else {
                return Err(format!(
                    "{me} has no ring left to promote (or its status is not written yet)"
                ));
            };
            let (field, list) = if skip {
                ("skippedRings", &spec.skipped_rings)
            } else {
                ("promotedRings", &spec.promoted_rings)
            };
            if list.iter().any(|x| x == ring) {
                return Ok(Change::Nothing(format!(
                    "{me}: ring {ring} is already in spec.{field}"
                )));
            }
            let mut next = list.clone();
            next.push(ring.to_string());
            let done = if skip {
                format!(
                    "{me}: ring {ring} skipped: its VMs not yet patched are not patched by this rollout; the next ring follows"
                )
            } else {
                match ring_phase {
                    Some(RingPhase::Baking) => {
                        format!("{me}: ring {ring} promoted: the rest of its bake time is skipped")
                    }
                    _ => format!(
                        "{me}: ring {ring} promoted: its deferral and bake time are skipped (its health gate still applies)"
                    ),
                }
            };
            Ok(Change::Patch {
                spec: serde_json::json!({ field: next }),
                done,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{PatchRolloutStatus, RingProgress};

    fn rollout(phase: RolloutPhase, rings: &[(&str, RingPhase, i32)]) -> PatchRollout {
        let mut r: PatchRollout = serde_json::from_value(serde_json::json!({
            "apiVersion": "automend.io/v1alpha1", "kind": "PatchRollout",
            "metadata": { "name": "nov" }, "spec": { "releaseTime": "2026-11-10T17:00:00Z" },
        }))
        .expect("rollout");
        r.status = Some(PatchRolloutStatus {
            phase: Some(phase),
            rings: rings
                .iter()
                .map(|(n, p, f)| RingProgress {
                    name: n.to_string(),
                    phase: Some(*p),
                    failed: *f,
                    started_time: (*p != RingPhase::Waiting).then(|| {
                        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                            "2026-11-10T18:00:00Z".parse().expect("ts"),
                        )
                    }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        });
        r
    }

    fn refused(v: Verb, r: &PatchRollout) -> String {
        decide(v, r).expect_err("refused")
    }

    #[test]
    fn verbs_refuse_what_they_cannot_do_and_say_why() {
        let halted = rollout(RolloutPhase::Halted, &[("test", RingPhase::Halted, 2)]);
        assert!(refused(Verb::Resume, &halted).contains("retry"));
        let done = rollout(
            RolloutPhase::Succeeded,
            &[("test", RingPhase::Succeeded, 0)],
        );
        assert!(refused(Verb::Expedite, &done).contains("Succeeded"));
        assert!(refused(Verb::Pause, &done).contains("nothing to pause"));
        assert!(refused(Verb::Abort, &done).contains("rollback"));
        assert!(refused(Verb::Retry, &done).contains("nothing to retry"));
        let mut back = done.clone();
        back.status.as_mut().expect("status").phase = Some(RolloutPhase::RolledBack);
        assert!(refused(Verb::Pause, &back).contains("RolledBack"));
        let running = rollout(
            RolloutPhase::Progressing,
            &[("test", RingPhase::Progressing, 0)],
        );
        assert!(refused(Verb::Retry, &running).contains("no VM has failed"));
        assert!(refused(Verb::Expedite, &running).contains("every ring has started"));
        let pending = rollout(RolloutPhase::Pending, &[("test", RingPhase::Waiting, 0)]);
        assert!(refused(Verb::Rollback, &pending).contains("abort"));
    }

    #[test]
    fn verbs_that_can_act_change_exactly_their_field() {
        let halted = rollout(RolloutPhase::Halted, &[("test", RingPhase::Halted, 2)]);
        match decide(Verb::Retry, &halted) {
            Ok(Change::Patch { spec, done }) => {
                assert_eq!(spec, serde_json::json!({ "retry": 1 }));
                assert!(
                    done.contains("2 failed VM(s)") && done.contains("halt is lifted"),
                    "{done}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decide(Verb::Abort, &halted),
            Ok(Change::Patch { .. })
        ));
        let baking = rollout(
            RolloutPhase::Progressing,
            &[
                ("test", RingPhase::Baking, 0),
                ("broad", RingPhase::Waiting, 0),
            ],
        );
        match decide(Verb::Promote { skip: false }, &baking) {
            Ok(Change::Patch { spec, done }) => {
                assert_eq!(spec, serde_json::json!({ "promotedRings": ["test"] }));
                assert!(done.contains("bake"), "{done}");
            }
            other => panic!("{other:?}"),
        }
        let mut promoted = baking.clone();
        promoted.spec.promoted_rings = vec!["test".into()];
        assert!(matches!(
            decide(Verb::Promote { skip: false }, &promoted),
            Ok(Change::Nothing(_))
        ));
        assert!(matches!(
            decide(Verb::Promote { skip: true }, &promoted),
            Ok(Change::Patch { .. })
        ));
        assert!(matches!(
            decide(Verb::Expedite, &baking),
            Ok(Change::Patch { .. })
        ));
        let mut paused = baking.clone();
        paused.spec.paused = true;
        assert!(matches!(
            decide(Verb::Pause, &paused),
            Ok(Change::Nothing(_))
        ));
        assert!(matches!(
            decide(Verb::Resume, &paused),
            Ok(Change::Patch { .. })
        ));
    }
}
