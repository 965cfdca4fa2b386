//! Assessment: on demand (annotation `automend.io/assess`, never installs), and periodically
//! while the VM runs; a VM that was off is assessed when it returns because its periodic
//! assessment is then overdue. A VM never assessed is asked with its first configuration.

use std::time::Duration;

use crate::api::{AssessmentDirective, GuestAssessment};
use crate::logic::duration::{self, Earliest};

use super::{EventSpec, Heartbeat, Inputs, Outcome};

/// When the last assessment happened, on the controller's clock where it can be: the answer to
/// the controller's own periodic request dates from that request (its id carries the time);
/// otherwise the guest's time, unless it lies in the future (a guest's wrong clock must not
/// postpone assessments; the VM is then assessed at once, and dated by that request).
fn assessed_at(
    a: &GuestAssessment,
    current: Option<&AssessmentDirective>,
    latest_believable: jiff::Timestamp,
) -> Option<jiff::Timestamp> {
    let ours = current
        .filter(|c| c.request_id == a.request_id)
        .and_then(|c| c.request_id.strip_prefix("periodic-"))
        .and_then(|s| s.parse::<i64>().ok())
        .and_then(|s| jiff::Timestamp::from_second(s).ok());
    ours.or_else(|| {
        a.finish_time
            .as_ref()
            .or(a.start_time.as_ref())
            .map(|t| t.0)
            .filter(|t| *t <= latest_believable)
    })
}

pub(super) fn schedule(input: &Inputs<'_>, latest: Option<&GuestAssessment>, out: &mut Outcome) {
    let Some(desired) = out.status.desired.as_mut() else {
        return;
    };
    let current = desired.assessment.clone();
    let answered = |id: &str| latest.is_some_and(|a| a.request_id == id);
    let in_flight = current.as_ref().is_some_and(|c| !answered(&c.request_id));
    let on_demand_taken = current.as_ref().and_then(|c| c.on_demand.clone());
    if let Some(req) = input
        .assess_request
        .clone()
        .filter(|r| Some(r) != on_demand_taken.as_ref())
    {
        desired.assessment = Some(AssessmentDirective {
            request_id: format!("ondemand-{req}").into(),
            on_demand: Some(req.clone()),
            snapshot: None,
        });
        out.events.push(EventSpec::normal(
            "AssessmentRequested",
            "Assess",
            format!("on-demand patch assessment {req} requested (assessment never installs)"),
        ));
        return;
    }
    let um = desired
        .configuration
        .as_ref()
        .map(|c| c.services.update_management.clone())
        .unwrap_or_default();
    let alive = matches!(input.heartbeat, Heartbeat::Alive { .. });
    // A VM never assessed is asked at once, running or not: its guest answers in its first
    // report, with the configuration (one report and one status write, not two).
    let never_asked = latest.is_none() && current.is_none();
    if !(alive || never_asked) || !um.enabled || in_flight {
        return;
    }
    let interval = duration::parse_or(
        &um.assessment_interval,
        Duration::from_secs(24 * 3600),
        format_args!("ConfigurationProfile {}", desired.profile),
        "spec.preferences.updateManagement.assessmentInterval",
    );
    // Guests stamp assessments on the patching clock.
    let clock = input.clock;
    let patch_now = clock.at(input.now);
    let last = latest.and_then(|a| {
        assessed_at(
            a,
            current.as_ref(),
            clock.at(duration::add(input.now, super::heartbeat::MAX_CLOCK_SKEW)),
        )
    });
    let due = last.map_or(patch_now, |l| l + interval);
    if patch_now >= due {
        desired.assessment = Some(AssessmentDirective {
            request_id: format!("periodic-{}", patch_now.as_second()).into(),
            on_demand: on_demand_taken,
            snapshot: None,
        });
    } else {
        let mut requeue = Earliest::default();
        requeue.maybe(out.requeue_after);
        requeue.at(clock.real_duration(duration::until(patch_now, due)));
        out.requeue_after = requeue.get();
    }
}
