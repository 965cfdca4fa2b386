//! Telling the guest's own report coming back from somebody changing it behind its back.
//!
//! A write's response can arrive before the watch has delivered the events that precede the
//! write; such an event shows the status *before* the report and looked like tampering, so the
//! guest reported everything again (issue 17: about 0.7 extra status writes per onboarded VM).
//! Watch events come in order, so every event until the one carrying the write's
//! resourceVersion predates it. Resource versions are compared for equality only.

use std::time::{Duration, Instant};

/// How long events are taken as predating a write whose own event has not come (a relist may
/// show a later version and never that one).
const LAG: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
pub struct OwnWrite(Option<(String, Instant)>);

impl OwnWrite {
    /// The guest's report was written; the object's version after it.
    pub fn wrote(&mut self, resource_version: Option<String>) {
        self.0 = resource_version.map(|rv| (rv, Instant::now()));
    }

    /// Whether a watched object of this version may predate the last write (then what it shows
    /// of the report says nothing about tampering).
    pub fn predates(&mut self, resource_version: Option<&str>) -> bool {
        let Some((rv, at)) = &self.0 else {
            return false;
        };
        if resource_version == Some(rv.as_str()) || at.elapsed() > LAG {
            self.0 = None;
            return false;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_before_the_writes_own_predate_it() {
        let mut w = OwnWrite::default();
        assert!(!w.predates(Some("10")), "nothing written yet");
        w.wrote(Some("12".into()));
        assert!(w.predates(Some("11")), "the event before the write");
        assert!(!w.predates(Some("12")), "the write's own event");
        assert!(
            !w.predates(Some("13")),
            "after it: a change by someone else"
        );
    }
}
