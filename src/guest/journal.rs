//! The guest's results on disk: what it applied, assessed and installed, written before it is
//! reported, so that an agent restarted during an API outage (or killed mid-install) neither loses
//! a result nor repeats an installation with the wrong "previous versions".

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::api::{GuestAssessment, GuestInstallation, InstallationDirective, OperationStatus};

/// A reboot the guest announced (journaled before it starts): the installation it belongs to
/// finishes when the machine is back.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingReboot {
    /// The directive of the installation (its postInstall hook runs after the boot).
    pub directive: InstallationDirective,
    /// The status the installation finishes with once the machine is back.
    pub then: OperationStatus,
}

/// What the journal holds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    #[serde(default)]
    pub applied_hash: Option<String>,
    #[serde(default)]
    pub applied_attempt: i32,
    #[serde(default)]
    pub assessment: Option<GuestAssessment>,
    #[serde(default)]
    pub installation: Option<GuestInstallation>,
    /// The latest release assessment (against a release's snapshot).
    #[serde(default)]
    pub release_assessment: Option<GuestAssessment>,
    /// An installation started and not finished (the agent stopped during it); its
    /// `previousVersions` were read before anything changed.
    #[serde(default)]
    pub in_progress: Option<GuestInstallation>,
    /// A reboot announced and not yet seen to complete.
    #[serde(default)]
    pub reboot: Option<PendingReboot>,
    /// Whether the API server has acknowledged everything above.
    #[serde(default)]
    pub acknowledged: bool,
}

/// The journal file (`<state-dir>/guest.json`).
#[derive(Clone, Debug)]
pub struct Journal {
    path: PathBuf,
}

impl Journal {
    pub fn new(dir: &Path) -> Journal {
        Journal {
            path: dir.join("guest.json"),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The record, `None` when there is none yet. A damaged file (half-written, edited) is moved
    /// aside to `guest.json.damaged` and reported as an error naming both files.
    pub fn load(&self) -> Result<Option<Record>, String> {
        let text = match std::fs::read(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(format!(
                    "cannot read the state file {}: {e}",
                    self.path.display()
                ));
            }
        };
        match serde_json::from_slice::<Record>(&text) {
            Ok(r) => Ok(Some(r)),
            Err(e) => {
                let aside = self.path.with_extension("json.damaged");
                let moved = std::fs::rename(&self.path, &aside);
                Err(format!(
                    "the state file {} is damaged ({e}); {}; results not yet reported from it are lost",
                    self.path.display(),
                    match moved {
                        Ok(()) => format!("kept as {}", aside.display()),
                        Err(m) => format!("could not move it aside: {m}"),
                    }
                ))
            }
        }
    }

    /// Write the record atomically (a temporary file renamed over the old one, synced first).
    pub fn save(&self, record: &Record) -> Result<(), String> {
        use std::io::Write as _;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let tmp = self.path.with_extension("json.tmp");
        let body = serde_json::to_vec_pretty(record).map_err(|e| e.to_string())?;
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&body)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        };
        write().map_err(|e| format!("writing the state file {}: {e}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_and_damage_is_named_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::new(dir.path());
        assert_eq!(j.load(), Ok(None));
        let r = Record {
            applied_hash: Some("abc".into()),
            applied_attempt: 2,
            ..Default::default()
        };
        j.save(&r).unwrap();
        assert_eq!(j.load(), Ok(Some(r)));
        std::fs::write(j.path(), "{\"appliedHash\": \"ab").unwrap();
        let e = j.load().unwrap_err();
        assert!(
            e.contains("is damaged") && e.contains("guest.json.damaged"),
            "{e}"
        );
        assert!(dir.path().join("guest.json.damaged").exists());
        assert_eq!(j.load(), Ok(None));
    }
}
