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

/// The note of an `Onboarded` Event about a ConfigurationProfile: how many VMs were onboarded to
/// its configuration `hash` since the last such Event, and which (`namespace/name`, in the order
/// given), as many as fit in an Event's note, then how many more.
///
/// One Event per batch instead of one per VM: at fleet scale a per-VM Event was one API write in
/// four of an onboarding, for a fact each VM's `Onboarded` condition already carries (issue 17).
pub fn onboarded_note(hash: &str, vms: &[String]) -> String {
    let head = format!(
        "{} VM(s) onboarded: configured with this profile's configuration {hash}: ",
        vms.len()
    );
    let mut note = head.clone();
    for (i, vm) in vms.iter().enumerate() {
        let sep = if i == 0 { "" } else { ", " };
        let rest = vms.len() - i - 1;
        // Room for this name and, if more follow, the longest tail this note could get.
        let tail = if rest == 0 {
            0
        } else {
            format!(" and {} more", vms.len()).len()
        };
        if note.len() + sep.len() + vm.len() + tail > super::text::EVENT_NOTE {
            note.push_str(&format!(" and {} more", vms.len() - i));
            return note;
        }
        note.push_str(sep);
        note.push_str(vm);
    }
    note
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_onboarded_note_names_every_vm_that_fits_and_counts_the_rest() {
        let few: Vec<String> = vec!["team-a/web-1".into(), "team-b/db-1".into()];
        assert_eq!(
            onboarded_note("abc123", &few),
            "2 VM(s) onboarded: configured with this profile's configuration abc123: team-a/web-1, team-b/db-1"
        );
        let many: Vec<String> = (0..500).map(|i| format!("fleet/vm-{i:05}")).collect();
        let note = onboarded_note("abc123", &many);
        assert!(
            note.len() <= crate::logic::text::EVENT_NOTE,
            "{}",
            note.len()
        );
        assert!(note.starts_with("500 VM(s) onboarded"), "{note}");
        let named = note.matches("fleet/vm-").count();
        assert!(named > 40, "as many names as fit: {named}");
        assert!(
            note.ends_with(&format!(" and {} more", 500 - named)),
            "the rest counted: {note}"
        );
        assert!(note.contains("fleet/vm-00000, fleet/vm-00001"), "in order");
    }
}
