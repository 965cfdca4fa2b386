//! Change tracking: an Event per change the guest reported since the last one published (at most
//! 10 at a time; the guest keeps the latest 50), remembered in `status.lastTrackedChange`.

use super::{EventSpec, Outcome};

pub(super) fn publish(
    managed: bool,
    bookmark: Option<&String>,
    changes: &[String],
    out: &mut Outcome,
) {
    out.status.last_tracked_change = bookmark.cloned();
    if !managed || changes.is_empty() || changes.last() == bookmark {
        return;
    }
    let from = bookmark
        .and_then(|l| changes.iter().position(|c| c == l))
        .map_or(0, |i| i + 1);
    let new = &changes[from..];
    for c in &new[new.len().saturating_sub(10)..] {
        out.events
            .push(EventSpec::normal("ChangeTracked", "Observe", c.clone()));
    }
    out.status.last_tracked_change = changes.last().cloned();
}
