//! Change tracking: an inventory of installed packages, enabled systemd units and tracked files
//! (SHA-256), compared with the previous one to report what changed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::exec;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Inventory {
    pub packages: BTreeMap<String, String>,
    pub units: BTreeSet<String>,
    /// Tracked file → SHA-256 (None: absent).
    pub files: BTreeMap<String, Option<String>>,
}

/// Units enabled under /etc/systemd/system (the `*.wants` / `*.requires` links).
pub fn enabled_units(root: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let Ok(dirs) = std::fs::read_dir(exec::under(root, "/etc/systemd/system")) else {
        return out;
    };
    for d in dirs.filter_map(|d| d.ok()) {
        let name = d.file_name().to_string_lossy().into_owned();
        if !(name.ends_with(".wants") || name.ends_with(".requires")) {
            continue;
        }
        if let Ok(links) = std::fs::read_dir(d.path()) {
            out.extend(
                links
                    .filter_map(|l| l.ok())
                    .map(|l| l.file_name().to_string_lossy().into_owned()),
            );
        }
    }
    out
}

/// A tracked file's digest; `Ok(None)` when it does not exist.
pub fn digest(root: &Path, path: &str) -> Result<Option<String>, String> {
    match std::fs::read(exec::under(root, path)) {
        Ok(bytes) => Ok(Some(
            Sha256::digest(&bytes)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("tracked file {path}: unreadable ({e})")),
    }
}

/// What changed from `old` to `new`, one line each.
pub fn diff(old: &Inventory, new: &Inventory) -> Vec<String> {
    let mut out = Vec::new();
    for (name, v) in &new.packages {
        match old.packages.get(name) {
            None => out.push(format!("package {name} {v} installed")),
            Some(o) if o != v => out.push(format!("package {name} {o} -> {v}")),
            _ => {}
        }
    }
    for (name, v) in &old.packages {
        if !new.packages.contains_key(name) {
            out.push(format!("package {name} {v} removed"));
        }
    }
    for u in new.units.difference(&old.units) {
        out.push(format!("service {u} enabled"));
    }
    for u in old.units.difference(&new.units) {
        out.push(format!("service {u} disabled"));
    }
    for (path, d) in &new.files {
        match (old.files.get(path), d) {
            (None, _) => {}
            (Some(None), Some(_)) => out.push(format!("file {path} created")),
            (Some(Some(_)), None) => out.push(format!("file {path} deleted")),
            (Some(Some(a)), Some(b)) if a != b => out.push(format!("file {path} modified")),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_listed() {
        let mut old = Inventory::default();
        old.packages.insert("libfoo".into(), "1.0".into());
        old.packages.insert("gone".into(), "2".into());
        old.units.insert("ssh.service".into());
        old.files.insert("/etc/hosts".into(), Some("a".into()));
        old.files.insert("/etc/new".into(), None);
        let mut new = old.clone();
        new.packages.insert("libfoo".into(), "1.2".into());
        new.packages.remove("gone");
        new.packages.insert("fresh".into(), "0.1".into());
        new.units.clear();
        new.units.insert("automend-backup.timer".into());
        new.files.insert("/etc/hosts".into(), Some("b".into()));
        new.files.insert("/etc/new".into(), Some("c".into()));
        new.files.insert("/etc/first-time".into(), Some("d".into()));
        assert_eq!(
            diff(&old, &new),
            [
                "package fresh 0.1 installed",
                "package libfoo 1.0 -> 1.2",
                "package gone 2 removed",
                "service automend-backup.timer enabled",
                "service ssh.service disabled",
                "file /etc/hosts modified",
                "file /etc/new created",
            ]
        );
        assert!(diff(&new, &new).is_empty());
    }

    #[test]
    fn digests_and_units() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("etc/systemd/system/timers.target.wants")).unwrap();
        std::fs::write(
            d.path()
                .join("etc/systemd/system/timers.target.wants/x.timer"),
            "",
        )
        .unwrap();
        std::fs::write(d.path().join("etc/hosts"), "127.0.0.1 localhost\n").unwrap();
        assert_eq!(
            enabled_units(d.path()).into_iter().collect::<Vec<_>>(),
            ["x.timer"]
        );
        assert_eq!(digest(d.path(), "/etc/missing"), Ok(None));
        assert_eq!(digest(d.path(), "/etc/hosts").unwrap().unwrap().len(), 64);
        let e = digest(d.path(), "/etc/systemd").unwrap_err();
        assert!(e.contains("/etc/systemd: unreadable"), "{e}");
    }
}
