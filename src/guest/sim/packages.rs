//! A simulated machine's package repository: every version offered, with when it was published,
//! behaving as a real suite does. Its index lists one version per package (the newest), so a
//! pinned version it has replaced cannot be installed from it; a dated snapshot lists the newest
//! version published by its time.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::{
    AvailablePackage, Classification, PinnedPackage, ReleaseSnapshot, UnavailablePackage,
};
use crate::logic::rollout::compare_versions;

/// Parse `name=version:Classification[@published][#CVE|CVE…],...` (the simulated updates
/// available): `openssl=3.0.2-1:Security@2026-11-01T00:00:00Z#CVE-2026-1111`. A package may be
/// listed at several versions (a newer one replacing an older).
pub fn parse_patches(spec: &str) -> Result<Vec<AvailablePackage>, String> {
    spec.split(',')
        .map(str::trim)
        .filter(|i| !i.is_empty())
        .map(|item| {
            let usage = || format!("{item:?}: use name=version:Classification[@time][#CVE|CVE]");
            let (main, cves) = match item.split_once('#') {
                Some((m, c)) => (m, c.split('|').map(str::trim).map(String::from).collect()),
                None => (item, Vec::new()),
            };
            let (main, published) = match main.split_once('@') {
                Some((m, t)) => (
                    m,
                    Some(Time(t.trim().parse::<Timestamp>().map_err(|e| {
                        format!("{item:?}: the publication time {t:?} is not RFC 3339: {e}")
                    })?)),
                ),
                None => (main, None),
            };
            let (name, rest) = main.split_once('=').ok_or_else(usage)?;
            // The classification follows the last ':' (a Debian version may carry an epoch,
            // "2:9.1.0016-1").
            let (version, class) = rest
                .rsplit_once(':')
                .filter(|(v, _)| !v.is_empty())
                .ok_or_else(usage)?;
            let classification = match class.trim() {
                "Critical" => Classification::Critical,
                "Security" => Classification::Security,
                "Other" => Classification::Other,
                other => {
                    return Err(format!(
                        "{item:?}: classification {other:?} is not Critical, Security or Other"
                    ));
                }
            };
            Ok(AvailablePackage {
                name: name.trim().into(),
                version: version.trim().into(),
                installed_version: None,
                classification,
                published,
                advisories: Vec::new(),
                cves,
            })
        })
        .collect()
}

/// The updates a simulated machine has available by default: a few of each classification,
/// varying by VM.
pub fn default_patches(name: &str) -> Vec<AvailablePackage> {
    let h = sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(
        name.as_bytes(),
    ));
    let (sec, crit, other) = (1 + h[0] % 3, h[1] % 2, h[2] % 4);
    let mut out = Vec::new();
    for (count, class, prefix) in [
        (sec, Classification::Security, "libssl"),
        (crit, Classification::Critical, "kernel-fix"),
        (other, Classification::Other, "tool"),
    ] {
        for i in 0..count {
            out.push(AvailablePackage {
                name: format!("{prefix}{i}"),
                version: "2.0.0".into(),
                installed_version: Some("1.0.0".into()),
                classification: class,
                published: None,
                advisories: Vec::new(),
                cves: Vec::new(),
            });
        }
    }
    out
}

/// A snapshot's timestamp (`YYYYMMDDTHHMMSSZ`) as a time.
pub fn snapshot_time(ts: &str) -> Result<Timestamp, String> {
    jiff::civil::DateTime::strptime("%Y%m%dT%H%M%SZ", ts)
        .ok()
        .and_then(|d| d.to_zoned(jiff::tz::TimeZone::UTC).ok())
        .map(|z| z.timestamp())
        .ok_or_else(|| format!("snapshot timestamp {ts:?} is not YYYYMMDDTHHMMSSZ"))
}

/// Every version the repository has offered.
#[derive(Clone, Debug, Default)]
pub struct Repo(pub Vec<AvailablePackage>);

impl Repo {
    /// The version of `name` the index lists: the newest, or at a snapshot the newest published
    /// by its time (a version without a date counts as published long ago).
    fn current(&self, name: &str, at: Option<Timestamp>) -> Option<&AvailablePackage> {
        self.0
            .iter()
            .filter(|p| p.name == name)
            .filter(|p| match (at, &p.published) {
                (Some(at), Some(t)) => t.0 <= at,
                _ => true,
            })
            .max_by(|a, b| compare_versions(&a.version, &b.version))
    }

    /// The updates the index offers against what is installed.
    pub fn offered(
        &self,
        installed: &BTreeMap<String, String>,
        at: Option<Timestamp>,
    ) -> Vec<AvailablePackage> {
        let mut names: Vec<&str> = self.0.iter().map(|p| p.name.as_str()).collect();
        names.dedup();
        let mut seen = std::collections::BTreeSet::new();
        names
            .into_iter()
            .filter(|n| seen.insert(*n))
            .filter_map(|n| self.current(n, at))
            .filter(|p| installed.get(&p.name) != Some(&p.version))
            .map(|p| AvailablePackage {
                installed_version: installed.get(&p.name).cloned(),
                ..p.clone()
            })
            .collect()
    }

    /// Whether `p` can be installed: a version this repository once offered must be the one its
    /// index (or the snapshot's) lists now; versions it never offered (a rollback's) install.
    pub fn installable(
        &self,
        p: &PinnedPackage,
        at: Option<Timestamp>,
        snapshot: Option<&ReleaseSnapshot>,
    ) -> Result<(), UnavailablePackage> {
        let known = self
            .0
            .iter()
            .any(|q| q.name == p.name && q.version == p.version);
        let current = self.current(&p.name, at);
        if !known || current.is_some_and(|c| c.version == p.version) {
            return Ok(());
        }
        Err(UnavailablePackage {
            name: p.name.clone(),
            version: p.version.clone(),
            repositories: match snapshot {
                Some(s) => format!("the simulated repository at snapshot {}", s.timestamp),
                None => "the simulated repository".into(),
            },
            offered: current.map(|c| vec![c.version.clone()]).unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pin(name: &str, version: &str) -> PinnedPackage {
        PinnedPackage {
            name: name.into(),
            version: version.into(),
            classification: None,
        }
    }

    #[test]
    fn a_newer_version_replaces_the_older_in_the_index_but_not_in_an_earlier_snapshot() {
        let repo = Repo(
            parse_patches(
                "libssl=3.0.1:Security@2026-11-01T00:00:00Z#CVE-2026-1111|CVE-2026-2222, libssl=3.0.2:Security@2026-11-15T00:00:00Z, tool=2.0:Other",
            )
            .expect("parses"),
        );
        assert_eq!(repo.0[0].cves, ["CVE-2026-1111", "CVE-2026-2222"]);
        let installed: BTreeMap<String, String> =
            [("libssl".to_string(), "1.0".to_string())].into();
        let now: Vec<String> = repo
            .offered(&installed, None)
            .iter()
            .map(|p| format!("{}={}", p.name, p.version))
            .collect();
        assert_eq!(now, ["libssl=3.0.2", "tool=2.0"]);
        let at = snapshot_time("20261110T000000Z").expect("time");
        let then: Vec<String> = repo
            .offered(&installed, Some(at))
            .iter()
            .map(|p| format!("{}={}", p.name, p.version))
            .collect();
        assert_eq!(then, ["libssl=3.0.1", "tool=2.0"]);

        let gone = repo
            .installable(&pin("libssl", "3.0.1"), None, None)
            .expect_err("replaced");
        assert_eq!(gone.offered, ["3.0.2"]);
        assert!(
            repo.installable(&pin("libssl", "3.0.1"), Some(at), None)
                .is_ok()
        );
        // A rollback's version was never offered: it installs.
        assert!(repo.installable(&pin("libssl", "1.0"), None, None).is_ok());
        assert!(snapshot_time("2026-11-10").is_err());
        assert!(parse_patches("x=1:Other@yesterday").is_err());
    }
}
