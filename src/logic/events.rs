//! Events the decisions ask the controller to publish (after the status write they describe).

/// An Event about the object a decision was made for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventSpec {
    pub warning: bool,
    pub reason: &'static str,
    pub action: &'static str,
    pub note: String,
}

impl EventSpec {
    pub fn normal(reason: &'static str, action: &'static str, note: impl Into<String>) -> Self {
        EventSpec {
            warning: false,
            reason,
            action,
            note: note.into(),
        }
    }

    pub fn warning(reason: &'static str, action: &'static str, note: impl Into<String>) -> Self {
        EventSpec {
            warning: true,
            reason,
            action,
            note: note.into(),
        }
    }
}
