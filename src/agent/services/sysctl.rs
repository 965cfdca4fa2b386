//! sysctl's dialect: sysctl.d files by name over several directories, read in order, the last
//! assignment wins; `/etc/sysctl.conf` last.

use std::collections::BTreeMap;
use std::path::Path;

use super::files::glob;
use crate::agent::exec;

/// The key of a (trimmed) sysctl line, normalised (`a/b` → `a.b`, a leading `-` dropped).
fn key_of(line: &str) -> Option<String> {
    let (k, _) = line.split_once('=')?;
    Some(k.trim().trim_start_matches('-').replace('/', "."))
}

/// Whether a (trimmed) sysctl.d line sets `key`.
pub fn sets(line: &str, key: &str) -> bool {
    !line.starts_with('#') && key_of(line).is_some_and(|k| k == key)
}

/// sysctl's configured value of a key and the file it comes from: files of /etc/sysctl.d,
/// /run/sysctl.d, /usr/local/lib/sysctl.d, /usr/lib/sysctl.d, /lib/sysctl.d by name (the first
/// directory wins for a name), each read in order, the last assignment wins; /etc/sysctl.conf last.
pub fn effective(root: &Path, key: &str) -> Result<Option<(String, String)>, String> {
    let mut by_name: BTreeMap<String, String> = BTreeMap::new();
    for dir in [
        "/etc/sysctl.d",
        "/run/sysctl.d",
        "/usr/local/lib/sysctl.d",
        "/usr/lib/sysctl.d",
        "/lib/sysctl.d",
    ] {
        for f in glob(root, &format!("{dir}/*.conf")) {
            let name = f.rsplit('/').next().unwrap_or(&f).to_string();
            by_name.entry(name).or_insert(f);
        }
    }
    let mut files: Vec<String> = by_name.into_values().collect();
    files.push("/etc/sysctl.conf".into());
    let mut found = None;
    for f in files {
        let text = match std::fs::read_to_string(exec::under(root, &f)) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("cannot read {f} ({e})")),
        };
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            let k = k.trim().trim_start_matches('-').replace('/', ".");
            if k == key {
                found = Some((
                    v.split_whitespace().collect::<Vec<_>>().join(" "),
                    f.clone(),
                ));
            }
        }
    }
    Ok(found)
}
