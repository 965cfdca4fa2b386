//! The apt backend (Debian, Ubuntu): `apt-get` for assessment and installation, `dpkg-query` for
//! what is installed, `/run/reboot-required` for reboots. With a sandbox root, apt's `Dir` option
//! and dpkg's `--root`/`--admindir` keep every read and write inside it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{exec, sources};
use crate::api::{
    AvailablePackage, Classification, PinnedPackage, ReleaseSnapshot, UnavailablePackage,
};

const UPDATE_LIMIT: Duration = Duration::from_secs(600);
const INSTALL_LIMIT: Duration = Duration::from_secs(3600);
const QUERY_LIMIT: Duration = Duration::from_secs(120);

#[derive(Clone, Debug)]
pub struct Apt {
    root: PathBuf,
    /// APT_CONFIG for a sandbox: sets `Dir` so apt reads the root's own apt.conf.d.
    config: Option<PathBuf>,
    /// The agent's own directory for a snapshot's sources and package lists.
    work: PathBuf,
}

/// What an installation did: installed, failed, the error, and the pinned versions the
/// repositories do not offer.
/// The machine's sources files rewritten (path, text).
type Rewritten = Vec<(PathBuf, String)>;

pub type Outcome = (
    Vec<PinnedPackage>,
    Vec<PinnedPackage>,
    Option<String>,
    Vec<UnavailablePackage>,
);

impl Apt {
    pub fn new(root: &Path, config: Option<PathBuf>, work: &Path) -> Apt {
        Apt {
            root: root.to_path_buf(),
            config,
            work: work.join("apt-snapshot"),
        }
    }

    /// The machine's sources files: `sources.list` and `sources.list.d/*.list|*.sources`, with
    /// whether each is deb822.
    fn source_files(&self) -> Vec<(PathBuf, bool)> {
        let mut files = vec![(exec::under(&self.root, "/etc/apt/sources.list"), false)];
        if let Ok(dir) = std::fs::read_dir(exec::under(&self.root, "/etc/apt/sources.list.d")) {
            let mut parts: Vec<(PathBuf, bool)> = dir
                .flatten()
                .map(|e| e.path())
                .filter_map(|p| match p.extension().and_then(|e| e.to_str()) {
                    Some("list") => Some((p, false)),
                    Some("sources") => Some((p, true)),
                    _ => None,
                })
                .collect();
            parts.sort();
            files.extend(parts);
        }
        files.retain(|(p, _)| p.is_file());
        files
    }

    /// The machine's sources files, each rewritten to the snapshot (as they are without one),
    /// and the URIs apt reads through them.
    fn read_sources(
        &self,
        snapshot: Option<&ReleaseSnapshot>,
    ) -> Result<(Rewritten, Vec<String>), String> {
        let empty = ReleaseSnapshot::default();
        let mut uris: Vec<String> = Vec::new();
        let mut rewritten = Vec::new();
        for (path, deb822) in self.source_files() {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("reading {}: {e}", path.display()))?;
            let (out, used) = sources::rewrite_apt(&text, deb822, snapshot.unwrap_or(&empty));
            for u in used {
                if !uris.contains(&u) {
                    uris.push(u);
                }
            }
            rewritten.push((path, out));
        }
        Ok((rewritten, uris))
    }

    /// apt options that read the snapshot instead of the machine's repositories (its sources
    /// rewritten into the agent's own directory, with package lists and no caches of their own:
    /// the machine's configuration, lists and caches stay as they are), and the URIs apt reads.
    fn snapshot_options(
        &self,
        snapshot: &ReleaseSnapshot,
    ) -> Result<(Vec<String>, Vec<String>), String> {
        let (rewritten, uris) = self.read_sources(Some(snapshot))?;
        let dir = &self.work;
        let parts = dir.join("sources.list.d");
        let lists = dir.join("lists");
        let prepare = || -> std::io::Result<()> {
            if parts.exists() {
                std::fs::remove_dir_all(&parts)?;
            }
            std::fs::create_dir_all(&parts)?;
            std::fs::create_dir_all(lists.join("partial"))?;
            std::fs::write(dir.join("sources.list"), "")?;
            for (i, (path, text)) in rewritten.iter().enumerate() {
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                std::fs::write(parts.join(format!("{i:02}-{name}")), text)?;
            }
            Ok(())
        };
        prepare().map_err(|e| {
            format!(
                "preparing the sources of snapshot {} in {}: {e}",
                snapshot.timestamp,
                dir.display()
            )
        })?;
        let mut o = Vec::new();
        for opt in [
            format!(
                "Dir::Etc::SourceList={}",
                dir.join("sources.list").display()
            ),
            format!("Dir::Etc::SourceParts={}", parts.display()),
            format!("Dir::State::Lists={}", lists.display()),
            "Dir::Cache::pkgcache=".to_string(),
            "Dir::Cache::srcpkgcache=".to_string(),
            // A snapshot's Release files are past their Valid-Until by design.
            "Acquire::Check-Valid-Until=false".to_string(),
        ] {
            o.push("-o".into());
            o.push(opt);
        }
        Ok((o, uris))
    }

    fn sandboxed(&self) -> bool {
        self.root != Path::new("/")
    }

    /// apt options that point every directory into the root.
    fn apt_options(&self) -> Vec<String> {
        let mut o = vec!["-q".to_string()];
        if self.sandboxed() {
            let r = self.root.display();
            for opt in [
                format!("Dir={r}"),
                format!("Dir::State::status={r}/var/lib/dpkg/status"),
                format!("DPkg::Options::=--root={r}"),
                format!("DPkg::Options::=--admindir={r}/var/lib/dpkg"),
                format!("DPkg::Options::=--log={r}/var/log/dpkg.log"),
                "APT::Sandbox::User=root".to_string(),
            ] {
                o.push("-o".into());
                o.push(opt);
            }
        }
        o
    }

    fn admindir(&self) -> String {
        exec::under(&self.root, "/var/lib/dpkg")
            .display()
            .to_string()
    }

    async fn apt(
        &self,
        tool: &str,
        extra: &[String],
        args: &[&str],
        limit: Duration,
    ) -> Result<exec::Output, String> {
        let mut a = self.apt_options();
        a.extend(extra.iter().cloned());
        a.extend(args.iter().map(|s| s.to_string()));
        let config = self.config.as_ref().map(|c| c.display().to_string());
        let mut env = vec![("DEBIAN_FRONTEND", "noninteractive")];
        if let Some(c) = &config {
            env.push(("APT_CONFIG", c.as_str()));
        }
        exec::check(tool, &a, &env, limit).await
    }

    /// Refresh the package lists (the machine's, or the snapshot's own) and list the upgrades
    /// `apt-get dist-upgrade` would make.
    pub async fn assess(
        &self,
        snapshot: Option<&ReleaseSnapshot>,
    ) -> Result<Vec<AvailablePackage>, String> {
        let extra = match snapshot {
            Some(s) => self.snapshot_options(s)?.0,
            None => Vec::new(),
        };
        self.refresh(&extra, snapshot).await?;
        let out = self
            .apt("apt-get", &extra, &["-s", "dist-upgrade"], QUERY_LIMIT)
            .await
            .map_err(|e| format!("listing the upgrades: {e}"))?;
        Ok(parse_simulation(&out.stdout))
    }

    async fn refresh(
        &self,
        extra: &[String],
        snapshot: Option<&ReleaseSnapshot>,
    ) -> Result<(), String> {
        self.apt("apt-get", extra, &["update"], UPDATE_LIMIT)
            .await
            .map(|_| ())
            .map_err(|e| match snapshot {
                Some(s) => format!(
                    "refreshing the package lists of snapshot {}: {e}",
                    s.timestamp
                ),
                None => format!("refreshing the package lists: {e}"),
            })
    }

    /// The versions the repositories offer of each named package, with the URI offering each
    /// (`apt-cache madison`).
    async fn offered(
        &self,
        extra: &[String],
        names: &[String],
    ) -> Result<Vec<(String, String, String)>, String> {
        let args: Vec<&str> = std::iter::once("madison")
            .chain(names.iter().map(String::as_str))
            .collect();
        let out = self.apt("apt-cache", extra, &args, QUERY_LIMIT).await?;
        Ok(parse_madison(&out.stdout))
    }

    /// Installed versions of the named packages (absent ones are left out); every package when
    /// `names` is empty.
    pub async fn installed(&self, names: &[String]) -> Result<Vec<PinnedPackage>, String> {
        let mut args = vec![
            format!("--admindir={}", self.admindir()),
            "-W".into(),
            "-f=${Package}\t${Version}\t${db:Status-Abbrev}\n".into(),
        ];
        args.extend(names.iter().cloned());
        // Exit 1 means some name is not installed; anything else is a real failure.
        let out = exec::run("dpkg-query", &args, &[], QUERY_LIMIT).await?;
        if !matches!(out.code, Some(0) | Some(1)) || (out.code == Some(1) && names.is_empty()) {
            return Err(format!(
                "{} failed: {}",
                exec::show("dpkg-query", &args),
                out.tail()
            ));
        }
        Ok(parse_dpkg_query(&out.stdout))
    }

    /// Put each package at exactly its version (from the snapshot when one is given) and remove
    /// the named ones. A pinned version the repositories do not offer is left out and reported
    /// (PinnedVersionUnavailable, with the repositories searched and what they offer). Tries the
    /// rest in one transaction first; when apt refuses it, each package on its own, so one
    /// failing package does not hold back the others. What ends up installed is read back from
    /// dpkg.
    pub async fn install(
        &self,
        packages: &[PinnedPackage],
        remove: &[String],
        snapshot: Option<&ReleaseSnapshot>,
    ) -> Outcome {
        let mut errors = Vec::new();
        // A snapshot's lists are the agent's own: refreshed before installing from it. Without a
        // snapshot the machine's lists (as the last assessment refreshed them) are used; its
        // sources only name the repositories searched.
        let prepared = async {
            match snapshot {
                Some(s) => {
                    let (extra, uris) = self.snapshot_options(s)?;
                    self.refresh(&extra, snapshot).await?;
                    Ok((extra, uris))
                }
                None => Ok((
                    Vec::new(),
                    self.read_sources(None).map(|r| r.1).unwrap_or_default(),
                )),
            }
        };
        let (extra, uris) = match prepared.await {
            Ok(p) => p,
            Err(e) => return (Vec::new(), packages.to_vec(), Some(e), Vec::new()),
        };
        let names: Vec<String> = packages.iter().map(|p| p.name.clone()).collect();
        let unavailable = if names.is_empty() {
            Vec::new()
        } else {
            match self.offered(&extra, &names).await {
                Ok(offered) => unavailable(packages, &offered, &uris, |a, b| a == b),
                // Not knowing is no reason to hold the install back: apt says why if it fails.
                Err(e) => {
                    tracing::warn!(error = %e, "listing the versions the repositories offer");
                    Vec::new()
                }
            }
        };
        for u in &unavailable {
            errors.push(format!(
                "{}={}: PinnedVersionUnavailable: not offered by {}{}",
                u.name,
                u.version,
                u.repositories,
                if u.offered.is_empty() {
                    String::new()
                } else {
                    format!(" (offered: {})", u.offered.join(", "))
                }
            ));
        }
        let mut items: Vec<String> = packages
            .iter()
            .filter(|p| !unavailable.iter().any(|u| u.name == p.name))
            .map(|p| format!("{}={}", p.name, p.version))
            .collect();
        items.extend(remove.iter().map(|n| format!("{n}-")));
        if !items.is_empty()
            && let Err(e) = self.install_items(&extra, &items).await
        {
            let known = errors.len();
            errors.push(e);
            if items.len() > 1 {
                errors.truncate(known);
                for item in &items {
                    if let Err(e) = self.install_items(&extra, std::slice::from_ref(item)).await {
                        errors.push(e);
                    }
                }
            }
        }
        let names: Vec<String> = packages.iter().map(|p| p.name.clone()).collect();
        let now = if names.is_empty() {
            Ok(Vec::new())
        } else {
            self.installed(&names).await
        };
        let now = match now {
            Ok(n) => n,
            Err(e) => {
                errors.push(format!("reading the installed versions back: {e}"));
                Vec::new()
            }
        };
        let (installed, failed): (Vec<_>, Vec<_>) = packages.iter().cloned().partition(|p| {
            now.iter()
                .any(|n| n.name == p.name && n.version == p.version)
        });
        let error = (!errors.is_empty()).then(|| errors.join("; "));
        (installed, failed, error, unavailable)
    }

    async fn install_items(&self, extra: &[String], items: &[String]) -> Result<(), String> {
        let mut args = vec![
            "install",
            "-y",
            "--allow-downgrades",
            "--no-install-recommends",
            "-o",
            "DPkg::Options::=--force-confdef",
            "-o",
            "DPkg::Options::=--force-confold",
        ];
        args.extend(items.iter().map(String::as_str));
        self.apt("apt-get", extra, &args, INSTALL_LIMIT)
            .await
            .map(|_| ())
    }

    /// Whether a package asked for a reboot (`/run/reboot-required`).
    pub fn reboot_required(&self) -> bool {
        ["/run/reboot-required", "/var/run/reboot-required"]
            .iter()
            .any(|p| exec::under(&self.root, p).exists())
    }
}

/// The upgrades in `apt-get -s` output: `Inst name [old] (new Origin:Version/suite, … [arch])`.
/// A package from a security pocket (an origin naming `security`) is Security; the rest Other.
pub fn parse_simulation(text: &str) -> Vec<AvailablePackage> {
    let mut out: Vec<AvailablePackage> = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("Inst ") else {
            continue;
        };
        let Some((name, rest)) = rest.split_once(' ') else {
            continue;
        };
        let rest = rest.trim_start();
        let (installed_version, rest) = match rest.strip_prefix('[') {
            Some(r) => match r.split_once(']') {
                Some((old, r)) => (Some(old.to_string()), r.trim_start()),
                None => continue,
            },
            None => (None, rest),
        };
        let Some(inner) = rest.strip_prefix('(') else {
            continue;
        };
        let inner = inner.split_once(')').map_or(inner, |(i, _)| i);
        let Some((version, origins)) = inner.split_once(' ') else {
            continue;
        };
        let origins = origins.rsplit_once(" [").map_or(origins, |(o, _)| o);
        let security = origins
            .split(", ")
            .any(|o| o.to_ascii_lowercase().contains("security"));
        if out.iter().any(|p| p.name == name) {
            continue;
        }
        out.push(AvailablePackage {
            name: name.to_string(),
            version: version.to_string(),
            installed_version,
            classification: if security {
                Classification::Security
            } else {
                Classification::Other
            },
            published: None,
            advisories: Vec::new(),
            cves: Vec::new(),
        });
    }
    out
}

/// The pinned packages the repositories offer (`name`, `version`, where from) at other versions
/// only, or not at all; `same` says when two versions are one (dnf: with or without epoch 0).
pub fn unavailable(
    packages: &[PinnedPackage],
    offered: &[(String, String, String)],
    uris: &[String],
    same: impl Fn(&str, &str) -> bool,
) -> Vec<UnavailablePackage> {
    packages
        .iter()
        .filter(|p| {
            !offered
                .iter()
                .any(|(n, v, _)| *n == p.name && same(v, &p.version))
        })
        .map(|p| {
            let mine: Vec<&(String, String, String)> =
                offered.iter().filter(|(n, _, _)| *n == p.name).collect();
            let mut searched: Vec<String> = mine.iter().map(|(_, _, u)| u.clone()).collect();
            searched.dedup();
            if searched.is_empty() {
                searched = uris.to_vec();
            }
            UnavailablePackage {
                name: p.name.clone(),
                version: p.version.clone(),
                repositories: if searched.is_empty() {
                    "no repository".into()
                } else {
                    searched.join(" ")
                },
                offered: mine.iter().map(|(_, v, _)| v.clone()).collect(),
            }
        })
        .collect()
}

/// `apt-cache madison` lines: ` name | version | uri suite/component arch Packages` (source
/// lines left out).
pub fn parse_madison(text: &str) -> Vec<(String, String, String)> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split('|').map(str::trim);
            let (name, version, from) = (f.next()?, f.next()?, f.next()?);
            if from.ends_with("Sources") || name.is_empty() || version.is_empty() {
                return None;
            }
            let uri = from.split_whitespace().next()?;
            Some((name.to_string(), version.to_string(), uri.to_string()))
        })
        .collect()
}

/// `dpkg-query -W -f '${Package}\t${Version}\t${db:Status-Abbrev}\n'`: installed packages only.
pub fn parse_dpkg_query(text: &str) -> Vec<PinnedPackage> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            let (name, version, status) = (f.next()?, f.next()?, f.next()?);
            // Status-Abbrev: desired, status, error; status `i` is installed.
            (status.chars().nth(1) == Some('i') && !version.is_empty()).then(|| PinnedPackage {
                name: name.to_string(),
                version: version.to_string(),
                classification: None,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // `apt-get -s dist-upgrade` output with Debian 12 and Ubuntu 22.04 origins.
    const SIMULATION: &str = "\
NOTE: This is only a simulation!
      apt-get needs root privileges for real execution.
Reading package lists...
Building dependency tree...
Calculating upgrade...
The following packages will be upgraded:
  libssl3 openssl tzdata
3 upgraded, 1 newly installed, 0 to remove and 0 not upgraded.
Inst libssl3 [3.0.11-1~deb12u1] (3.0.13-1~deb12u1 Debian-Security:12/stable-security [amd64])
Inst openssl [3.0.11-1~deb12u1] (3.0.13-1~deb12u1 Debian:12.5/stable, Debian-Security:12/stable-security [amd64]) []
Inst tzdata [2023c-5] (2024a-0+deb12u1 Debian:12.5/stable-updates [all])
Inst linux-image-6.1.0-18-amd64 (6.1.76-1 Debian:12.5/stable [amd64])
Inst libc6 [2.35-0ubuntu3.5] (2.35-0ubuntu3.6 Ubuntu:22.04/jammy-updates, Ubuntu:22.04/jammy-security [amd64])
Conf libssl3 (3.0.13-1~deb12u1 Debian-Security:12/stable-security [amd64])
Conf tzdata (2024a-0+deb12u1 Debian:12.5/stable-updates [all])
";

    #[test]
    fn simulation_lists_upgrades_with_their_pocket() {
        let got = parse_simulation(SIMULATION);
        let show: Vec<_> = got
            .iter()
            .map(|p| {
                format!(
                    "{} {:?}->{} {:?}",
                    p.name, p.installed_version, p.version, p.classification
                )
            })
            .collect();
        assert_eq!(
            show,
            [
                "libssl3 Some(\"3.0.11-1~deb12u1\")->3.0.13-1~deb12u1 Security",
                "openssl Some(\"3.0.11-1~deb12u1\")->3.0.13-1~deb12u1 Security",
                "tzdata Some(\"2023c-5\")->2024a-0+deb12u1 Other",
                "linux-image-6.1.0-18-amd64 None->6.1.76-1 Other",
                "libc6 Some(\"2.35-0ubuntu3.5\")->2.35-0ubuntu3.6 Security",
            ]
        );
        assert!(parse_simulation("Inst broken\nInst x [1\nnothing").is_empty());
    }

    #[test]
    fn madison_lists_versions_with_their_repository_and_unavailable_pins_name_them() {
        let text = "    libfoo |      1.2 | http://deb.example/debian stable-security/main amd64 Packages\n    libfoo |      1.1 | http://deb.example/debian stable/main amd64 Packages\n    libfoo |      1.1 | http://deb.example/debian stable/main Sources\n";
        let offered = parse_madison(text);
        assert_eq!(offered.len(), 2);
        let pins = [
            PinnedPackage {
                name: "libfoo".into(),
                version: "1.0".into(),
                classification: None,
            },
            PinnedPackage {
                name: "libfoo".into(),
                version: "1.1".into(),
                classification: None,
            },
            PinnedPackage {
                name: "gone".into(),
                version: "3".into(),
                classification: None,
            },
        ];
        let u = unavailable(
            &pins,
            &offered,
            &["http://deb.example/debian".into()],
            |a, b| a == b,
        );
        assert_eq!(u.len(), 2);
        assert_eq!(
            (
                u[0].name.as_str(),
                u[0].repositories.as_str(),
                u[0].offered.clone()
            ),
            (
                "libfoo",
                "http://deb.example/debian",
                vec!["1.2".to_string(), "1.1".into()]
            )
        );
        assert_eq!((u[1].name.as_str(), u[1].offered.len()), ("gone", 0));
    }

    #[test]
    fn dpkg_query_keeps_installed_packages_only() {
        let got =
            parse_dpkg_query("libfoo\t1.0\tii \nold\t2.0\trc \nhalf\t\tun \nheld\t3.1\thi \n");
        let names: Vec<_> = got
            .iter()
            .map(|p| format!("{}={}", p.name, p.version))
            .collect();
        assert_eq!(names, ["libfoo=1.0", "held=3.1"]);
    }
}
