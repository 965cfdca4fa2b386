//! dnf's advisories as `dnf -v updateinfo info` prints them: each advisory's id, date, CVEs and
//! the package files it ships, read into what an assessment reports per package (when it was
//! published, its advisories and the CVEs they fix).

use std::collections::BTreeMap;

use jiff::Timestamp;

/// One advisory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Advisory {
    pub id: String,
    /// The advisory's date (`Updated:`, which is its issue date unless it was revised later).
    pub date: Option<Timestamp>,
    pub cves: Vec<String>,
    /// Package files (`name-version-release.arch.rpm`).
    pub files: Vec<String>,
}

/// What the advisories say of one package's update.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct About {
    /// The latest date of its advisories (a revised advisory counts from its revision).
    pub published: Option<Timestamp>,
    pub ids: Vec<String>,
    pub cves: Vec<String>,
}

/// Parse `dnf -q -v updateinfo info` output: blocks separated by `====` rules, `Key: value`
/// lines and `: value` continuation lines.
pub fn parse(text: &str) -> Vec<Advisory> {
    let mut out: Vec<Advisory> = Vec::new();
    let mut key = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("====") {
            continue;
        }
        let Some((k, v)) = t.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        if !k.is_empty() {
            key = k.to_string();
        }
        if key == "Update ID" && !k.is_empty() {
            out.push(Advisory {
                id: v.to_string(),
                ..Default::default()
            });
            continue;
        }
        let Some(a) = out.last_mut() else { continue };
        match key.as_str() {
            "Updated" | "Issued" if !k.is_empty() => {
                let date = parse_date(v);
                a.date = a.date.max(date);
            }
            "CVEs" => a.cves.extend(v.split_whitespace().map(str::to_string)),
            "Files" => a.files.extend(v.split_whitespace().map(str::to_string)),
            _ => {}
        }
    }
    out
}

/// `2026-11-02 10:00:00` (UTC, as updateinfo.xml gives it) or a bare date.
fn parse_date(v: &str) -> Option<Timestamp> {
    let v = v.trim();
    let civil = jiff::civil::DateTime::strptime("%Y-%m-%d %H:%M:%S", v)
        .or_else(|_| {
            jiff::civil::Date::strptime("%Y-%m-%d", v)
                .map(|d| d.to_datetime(jiff::civil::Time::midnight()))
        })
        .ok()?;
    civil
        .to_zoned(jiff::tz::TimeZone::UTC)
        .ok()
        .map(|z| z.timestamp())
}

/// `name-version-release.arch(.rpm)` as (name, `version-release`).
fn name_and_version(file: &str) -> Option<(String, String)> {
    let (rest, _arch) = file.trim_end_matches(".rpm").rsplit_once('.')?;
    let (rest, release) = rest.rsplit_once('-')?;
    let (name, version) = rest.rsplit_once('-')?;
    (!name.is_empty()).then(|| (name.to_string(), format!("{version}-{release}")))
}

/// The advisories of an update: those whose files ship this package at this version (`dnf
/// check-update`'s `[epoch:]version-release`).
pub fn about<'a>(
    map: &'a BTreeMap<(String, String), About>,
    name: &str,
    version: &str,
) -> Option<&'a About> {
    let v = version.split_once(':').map_or(version, |(_, v)| v);
    map.get(&(name.to_string(), v.to_string()))
}

/// Per package and version (from each advisory's files), its advisories, their CVEs and the
/// latest date. An advisory for an older version (still listed: it applies to what is
/// installed) says nothing of a newer update.
pub fn by_package(advisories: &[Advisory]) -> BTreeMap<(String, String), About> {
    let mut out: BTreeMap<(String, String), About> = BTreeMap::new();
    for a in advisories {
        for f in &a.files {
            let Some(key) = name_and_version(f) else {
                continue;
            };
            let about = out.entry(key).or_default();
            about.published = about.published.max(a.date);
            if !about.ids.contains(&a.id) {
                about.ids.push(a.id.clone());
            }
            for c in &a.cves {
                if !about.cves.contains(c) {
                    about.cves.push(c.clone());
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // `dnf -q -v updateinfo info --updates` of dnf 4.14 (Debian 12's), its preamble included.
    const INFO: &str = "\
DNF version: 4.14.0
cachedir: /tmp/root/var/cache/dnf
===============================================================================
  libfoo security update
===============================================================================
  Update ID: AUTOMEND-2026:0001
       Type: security
    Updated: 2026-11-02 10:00:00
       Bugs: 1 - bug
       CVEs: CVE-2026-1111
           : CVE-2026-2222
Description: fix: a long
           : description
   Severity: Critical
      Files: libfoo-1.2-1.noarch.rpm
           : libfoo-devel-1.2-1.noarch.rpm

===============================================================================
  tool bugfix
===============================================================================
  Update ID: AUTOMEND-2026:0002
       Type: bugfix
    Updated: 2026-11-20 00:00:00
Description: fix
      Files: tool-2.1-1.noarch.rpm
";

    #[test]
    fn advisories_give_each_package_its_date_ids_and_cves() {
        let a = parse(INFO);
        assert_eq!(a.len(), 2);
        assert_eq!(a[0].cves, ["CVE-2026-1111", "CVE-2026-2222"]);
        assert_eq!(a[0].files.len(), 2);
        let p = by_package(&a);
        let libfoo = about(&p, "libfoo", "0:1.2-1").expect("libfoo 1.2-1");
        assert_eq!(libfoo.ids, ["AUTOMEND-2026:0001"]);
        assert_eq!(libfoo.cves, ["CVE-2026-1111", "CVE-2026-2222"]);
        assert_eq!(
            libfoo.published.map(|t| t.to_string()).as_deref(),
            Some("2026-11-02T10:00:00Z")
        );
        assert!(about(&p, "libfoo-devel", "1.2-1").is_some());
        assert!(about(&p, "libfoo", "1.3-1").is_none());
        let tool = about(&p, "tool", "2.1-1").expect("tool");
        assert_eq!(
            tool.published.map(|t| t.to_string()).as_deref(),
            Some("2026-11-20T00:00:00Z")
        );
        assert!(tool.cves.is_empty());
        assert!(parse("nothing here\n: stray").is_empty());
    }
}
