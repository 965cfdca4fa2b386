//! `/etc/os-release` (os-release(5)): which distribution the guest runs and so which package
//! manager the agent uses.

use std::path::Path;

use super::exec;
use crate::api::GuestOs;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OsRelease {
    pub id: String,
    pub id_like: Vec<String>,
    pub version_id: Option<String>,
    pub pretty_name: Option<String>,
}

/// The package manager family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Family {
    Apt,
    Dnf,
}

impl OsRelease {
    /// Parse os-release's shell-like `KEY=value` lines (values may be quoted).
    pub fn parse(text: &str) -> OsRelease {
        let mut out = OsRelease::default();
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('#') {
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v)
                .replace("\\\"", "\"");
            match k.trim() {
                "ID" => out.id = v.to_ascii_lowercase(),
                "ID_LIKE" => {
                    out.id_like = v.split_whitespace().map(str::to_ascii_lowercase).collect()
                }
                "VERSION_ID" => out.version_id = Some(v),
                "PRETTY_NAME" => out.pretty_name = Some(v),
                _ => {}
            }
        }
        out
    }

    /// Read `/etc/os-release`, else `/usr/lib/os-release`, under the root.
    pub fn read(root: &Path) -> Result<OsRelease, String> {
        let mut errors = Vec::new();
        for p in ["/etc/os-release", "/usr/lib/os-release"] {
            let path = exec::under(root, p);
            match std::fs::read_to_string(&path) {
                Ok(t) => {
                    let os = OsRelease::parse(&t);
                    if os.id.is_empty() {
                        return Err(format!("{} has no ID= line", path.display()));
                    }
                    return Ok(os);
                }
                Err(e) => errors.push(format!("{}: {e}", path.display())),
            }
        }
        Err(format!("cannot read os-release ({})", errors.join("; ")))
    }

    /// The package manager of this distribution (by ID, then ID_LIKE).
    pub fn family(&self) -> Result<Family, String> {
        let apt = ["debian", "ubuntu"];
        let dnf = [
            "rhel",
            "fedora",
            "centos",
            "rocky",
            "almalinux",
            "ol",
            "amzn",
        ];
        for id in std::iter::once(&self.id).chain(&self.id_like) {
            if apt.contains(&id.as_str()) {
                return Ok(Family::Apt);
            }
            if dnf.contains(&id.as_str()) {
                return Ok(Family::Dnf);
            }
        }
        Err(format!(
            "unsupported distribution {:?} (ID_LIKE {:?}): the agent patches Debian/Ubuntu (apt) and the RHEL family (dnf); pass --package-manager to choose",
            self.id, self.id_like
        ))
    }

    pub fn guest_os(&self, kernel: Option<String>) -> GuestOs {
        GuestOs {
            id: self.id.clone(),
            version: self.version_id.clone().unwrap_or_default(),
            kernel,
        }
    }
}

/// The running kernel's release (`/proc/sys/kernel/osrelease`).
pub fn kernel() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()
        .map(|s| s.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distributions_pick_their_package_manager() {
        let debian = OsRelease::parse(
            "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nID=debian\n",
        );
        assert_eq!(debian.id, "debian");
        assert_eq!(debian.version_id.as_deref(), Some("12"));
        assert_eq!(debian.family(), Ok(Family::Apt));
        let rocky =
            OsRelease::parse("ID=\"rocky\"\nID_LIKE=\"rhel centos fedora\"\nVERSION_ID=\"9.3\"\n");
        assert_eq!(rocky.family(), Ok(Family::Dnf));
        let mint = OsRelease::parse("ID=linuxmint\nID_LIKE='ubuntu debian'\n");
        assert_eq!(mint.family(), Ok(Family::Apt));
        let e = OsRelease::parse("ID=alpine\n").family().unwrap_err();
        assert!(
            e.contains("\"alpine\"") && e.contains("--package-manager"),
            "{e}"
        );
    }

    #[test]
    fn unreadable_os_release_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let e = OsRelease::read(dir.path()).unwrap_err();
        assert!(
            e.contains("os-release") && e.contains("No such file"),
            "{e}"
        );
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/os-release"), "NAME=x\n").unwrap();
        assert!(OsRelease::read(dir.path()).unwrap_err().contains("no ID="));
    }
}
