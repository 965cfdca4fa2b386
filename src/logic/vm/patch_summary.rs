//! The seed's `availablePatchSummary`, from the guest's latest assessment.

use crate::api::{AvailablePatchSummary, Classification, GuestAssessment};

pub(super) fn of(a: &GuestAssessment) -> AvailablePatchSummary {
    let critical_and_security = a
        .packages
        .iter()
        .filter(|p| {
            matches!(
                p.classification,
                Classification::Critical | Classification::Security
            )
        })
        .count() as i32;
    AvailablePatchSummary {
        status: a.status,
        assessment_activity_id: Some(a.request_id.clone()),
        critical_and_security_patch_count: critical_and_security,
        other_patch_count: a.packages.len() as i32 - critical_and_security,
        reboot_pending: a.reboot_pending,
        start_time: a.start_time.clone(),
        last_modified_time: a.finish_time.clone(),
        error: a.error.clone(),
    }
}
