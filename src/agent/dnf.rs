//! The dnf backend (RHEL, Rocky, Alma, Fedora): `dnf check-update` and `dnf updateinfo` for
//! assessment (an advisory of type security is Security, Critical when its severity is Critical;
//! everything else Other), `dnf install`/`downgrade`/`remove` for exact versions, `rpm -q` for what
//! is installed. With a sandbox root, dnf's `--installroot` and rpm's `--root` keep it inside.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{exec, sources, updateinfo};
use crate::api::{
    AvailablePackage, Classification, PinnedPackage, ReleaseSnapshot, UnavailablePackage,
};

const QUERY_LIMIT: Duration = Duration::from_secs(600);
const INSTALL_LIMIT: Duration = Duration::from_secs(3600);

/// Packages whose update needs a reboot to take effect (as `dnf needs-restarting -r` counts them).
const REBOOT_PACKAGES: &[&str] = &[
    "kernel",
    "kernel-core",
    "kernel-rt",
    "glibc",
    "linux-firmware",
    "systemd",
    "dbus",
    "dbus-broker",
    "dbus-daemon",
    "openssl-libs",
    "gnutls",
];

#[derive(Clone, Debug)]
pub struct Dnf {
    root: PathBuf,
    /// The agent's own metadata cache for a snapshot's repositories.
    work: PathBuf,
}

impl Dnf {
    pub fn new(root: &Path, work: &Path) -> Dnf {
        Dnf {
            root: root.to_path_buf(),
            work: work.join("dnf-snapshot"),
        }
    }

    /// The machine's repository files.
    fn repo_files(&self) -> Result<Vec<(PathBuf, String)>, String> {
        let dir = exec::under(&self.root, "/etc/yum.repos.d");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        files.retain(|p| p.extension().is_some_and(|e| e == "repo"));
        files.sort();
        files
            .into_iter()
            .map(|f| {
                let text = std::fs::read_to_string(&f)
                    .map_err(|e| format!("reading {}: {e}", f.display()))?;
                Ok((f, text))
            })
            .collect()
    }

    /// Options that read every repository under a snapshot repository from the snapshot
    /// (`--setopt` of its baseurl, with a metadata cache of the agent's own: the machine's
    /// repository files and cache stay as they are), and the URLs of the repositories read.
    fn snapshot_options(
        &self,
        snapshot: &ReleaseSnapshot,
    ) -> Result<(Vec<String>, Vec<String>), String> {
        let (mut opts, mut urls) = (Vec::new(), Vec::new());
        for (_, text) in self.repo_files()? {
            let (o, u) = sources::dnf_setopts(&text, snapshot);
            opts.extend(o);
            urls.extend(u);
        }
        std::fs::create_dir_all(&self.work)
            .map_err(|e| format!("creating {}: {e}", self.work.display()))?;
        opts.push(format!("--setopt=cachedir={}", self.work.display()));
        Ok((opts, urls))
    }

    fn options_for(
        &self,
        snapshot: Option<&ReleaseSnapshot>,
    ) -> Result<(Vec<String>, Vec<String>), String> {
        match snapshot {
            Some(s) => self.snapshot_options(s),
            // Without a snapshot the repositories' own baseurls only name where was searched.
            None => Ok((
                Vec::new(),
                self.repo_files()
                    .unwrap_or_default()
                    .iter()
                    .flat_map(|(_, t)| sources::dnf_baseurls(t))
                    .collect(),
            )),
        }
    }

    fn sandboxed(&self) -> bool {
        self.root != Path::new("/")
    }

    fn options(&self) -> Vec<String> {
        let mut o = vec![
            "-y".to_string(),
            "--setopt=install_weak_deps=False".to_string(),
            // An unreachable repository fails the assessment instead of hiding its updates.
            "--setopt=skip_if_unavailable=False".to_string(),
        ];
        if self.sandboxed() {
            let r = self.root.display();
            o.push(format!("--installroot={r}"));
            o.push(format!("--setopt=reposdir={r}/etc/yum.repos.d"));
            // An installroot without /etc/os-release gives dnf no $releasever of its own.
            o.push(format!("--releasever={}", release_version(&self.root)));
        }
        o
    }

    async fn dnf(&self, args: &[&str], limit: Duration) -> Result<exec::Output, String> {
        self.dnf_with(&[], args, limit).await
    }

    async fn dnf_with(
        &self,
        extra: &[String],
        args: &[&str],
        limit: Duration,
    ) -> Result<exec::Output, String> {
        let mut a = self.options();
        a.extend(extra.iter().cloned());
        a.extend(args.iter().map(|s| s.to_string()));
        exec::run("dnf", &a, &[], limit).await
    }

    /// List the updates (`check-update`; from the snapshot when one is given) and classify them
    /// by their advisories (`updateinfo`), with each advisory's date, id and CVEs.
    pub async fn assess(
        &self,
        snapshot: Option<&ReleaseSnapshot>,
    ) -> Result<Vec<AvailablePackage>, String> {
        let extra = match snapshot {
            Some(s) => self.snapshot_options(s)?.0,
            None => Vec::new(),
        };
        let out = self
            .dnf_with(&extra, &["check-update", "--refresh"], QUERY_LIMIT)
            .await?;
        // check-update: 100 = updates available, 0 = none, anything else failed.
        if !matches!(out.code, Some(0) | Some(100)) {
            return Err(format!("dnf check-update failed: {}", out.tail()));
        }
        let updates = parse_check_update(&out.stdout);
        let info = self
            .dnf_with(
                &extra,
                &["-q", "updateinfo", "list", "--updates"],
                QUERY_LIMIT,
            )
            .await?;
        if !info.success() {
            return Err(format!("dnf updateinfo list failed: {}", info.tail()));
        }
        let classes = parse_updateinfo(&info.stdout);
        let details = self
            .dnf_with(
                &extra,
                &["-q", "-v", "updateinfo", "info", "--updates"],
                QUERY_LIMIT,
            )
            .await?;
        if !details.success() {
            return Err(format!("dnf updateinfo info failed: {}", details.tail()));
        }
        let advisories = updateinfo::by_package(&updateinfo::parse(&details.stdout));
        let names: Vec<String> = updates.iter().map(|(n, _)| n.clone()).collect();
        let installed = self.installed(&names).await?;
        Ok(updates
            .into_iter()
            .map(|(name, version)| {
                let about = updateinfo::about(&advisories, &name, &version)
                    .cloned()
                    .unwrap_or_default();
                AvailablePackage {
                    classification: classes.get(&name).copied().unwrap_or(Classification::Other),
                    installed_version: installed
                        .iter()
                        .find(|p| p.name == name)
                        .map(|p| p.version.clone()),
                    name,
                    version,
                    published: about
                        .published
                        .map(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time),
                    advisories: about.ids,
                    cves: about.cves,
                }
            })
            .collect())
    }

    /// Installed versions (`[epoch:]version-release`) of the named packages, or of all.
    pub async fn installed(&self, names: &[String]) -> Result<Vec<PinnedPackage>, String> {
        let mut args = vec![
            format!("--root={}", self.root.display()),
            "-q".to_string(),
            "--qf".into(),
            "%{NAME}\t%{EPOCHNUM}:%{VERSION}-%{RELEASE}\n".into(),
        ];
        if names.is_empty() {
            args.push("-a".into());
        } else {
            args.extend(names.iter().cloned());
        }
        // rpm -q exits with the number of names not installed; those lines go to stdout too.
        let out = exec::run("rpm", &args, &[], QUERY_LIMIT).await?;
        if out.code.is_none() || (names.is_empty() && !out.success()) {
            return Err(format!(
                "{} failed: {}",
                exec::show("rpm", &args),
                out.tail()
            ));
        }
        Ok(parse_rpm_query(&out.stdout))
    }

    /// The versions the repositories offer of each named package, with the repository offering
    /// each (`dnf repoquery`).
    async fn offered(
        &self,
        extra: &[String],
        names: &[String],
    ) -> Result<Vec<(String, String, String)>, String> {
        let mut args = vec![
            "-q",
            "repoquery",
            "--qf",
            "%{name}\t%{epoch}:%{version}-%{release}\t%{repoid}",
        ];
        args.extend(names.iter().map(String::as_str));
        let out = self.dnf_with(extra, &args, QUERY_LIMIT).await?;
        if !out.success() {
            return Err(format!("dnf repoquery failed: {}", out.tail()));
        }
        Ok(out
            .stdout
            .lines()
            .filter_map(|l| {
                let mut f = l.split('\t');
                let (n, v, r) = (f.next()?, f.next()?, f.next()?);
                Some((
                    n.to_string(),
                    v.trim_start_matches("0:").to_string(),
                    r.to_string(),
                ))
            })
            .collect())
    }

    /// Put each package at exactly its version (`install` upgrades and downgrades to a named
    /// version; from the snapshot when one is given), remove the named ones, and read back what
    /// is installed. A pinned version no repository offers is left out and reported
    /// (PinnedVersionUnavailable).
    pub async fn install(
        &self,
        packages: &[PinnedPackage],
        remove: &[String],
        snapshot: Option<&ReleaseSnapshot>,
    ) -> super::apt::Outcome {
        let mut errors = Vec::new();
        let (extra, urls) = match self.options_for(snapshot) {
            Ok(p) => p,
            Err(e) => return (Vec::new(), packages.to_vec(), Some(e), Vec::new()),
        };
        let names: Vec<String> = packages.iter().map(|p| p.name.clone()).collect();
        let unavailable: Vec<UnavailablePackage> = if names.is_empty() {
            Vec::new()
        } else {
            match self.offered(&extra, &names).await {
                Ok(offered) => super::apt::unavailable(packages, &offered, &urls, same_version),
                Err(e) => {
                    tracing::warn!(error = %e, "listing the versions the repositories offer");
                    Vec::new()
                }
            }
        };
        for u in &unavailable {
            errors.push(format!(
                "{}-{}: PinnedVersionUnavailable: not offered by {}",
                u.name, u.version, u.repositories
            ));
        }
        let specs: Vec<String> = packages
            .iter()
            .filter(|p| !unavailable.iter().any(|u| u.name == p.name))
            .map(|p| format!("{}-{}", p.name, p.version.trim_start_matches("0:")))
            .collect();
        if !specs.is_empty() {
            let mut args = vec!["install"];
            args.extend(specs.iter().map(String::as_str));
            if let Err(e) = self.dnf_checked(&extra, &args).await {
                let known = errors.len();
                errors.push(e);
                if specs.len() > 1 {
                    errors.truncate(known);
                    for s in &specs {
                        if let Err(e) = self.dnf_checked(&extra, &["install", s]).await {
                            errors.push(e);
                        }
                    }
                }
            }
        }
        if !remove.is_empty() {
            let mut args = vec!["remove"];
            args.extend(remove.iter().map(String::as_str));
            if let Err(e) = self.dnf_checked(&extra, &args).await {
                errors.push(e);
            }
        }
        let names: Vec<String> = packages.iter().map(|p| p.name.clone()).collect();
        let now = if names.is_empty() {
            Vec::new()
        } else {
            self.installed(&names).await.unwrap_or_else(|e| {
                errors.push(format!("reading the installed versions back: {e}"));
                Vec::new()
            })
        };
        let (installed, failed): (Vec<_>, Vec<_>) = packages.iter().cloned().partition(|p| {
            now.iter()
                .any(|n| n.name == p.name && same_version(&n.version, &p.version))
        });
        (
            installed,
            failed,
            (!errors.is_empty()).then(|| errors.join("; ")),
            unavailable,
        )
    }

    async fn dnf_checked(&self, extra: &[String], args: &[&str]) -> Result<(), String> {
        let out = self.dnf_with(extra, args, INSTALL_LIMIT).await?;
        if out.success() {
            Ok(())
        } else {
            Err(format!("dnf {} failed: {}", args.join(" "), out.tail()))
        }
    }

    /// Whether an installed update needs a reboot: `dnf needs-restarting -r` where the plugin is
    /// there, else whether one of the core packages was installed after the last boot.
    pub async fn reboot_required(&self) -> bool {
        if let Ok(out) = self
            .dnf(&["-q", "needs-restarting", "-r"], QUERY_LIMIT)
            .await
            && !out.stderr.contains("No such command")
            && matches!(out.code, Some(0) | Some(1))
        {
            return out.code == Some(1);
        }
        if self.sandboxed() {
            return false;
        }
        let Some(boot) = boot_time() else {
            return false;
        };
        let mut args = vec![
            "-q".to_string(),
            "--qf".into(),
            "%{NAME}\t%{INSTALLTIME}\n".into(),
        ];
        args.extend(REBOOT_PACKAGES.iter().map(|s| s.to_string()));
        let Ok(out) = exec::run("rpm", &args, &[], QUERY_LIMIT).await else {
            return false;
        };
        out.stdout.lines().any(|l| {
            l.split_once('\t')
                .and_then(|(_, t)| t.trim().parse::<u64>().ok())
                .is_some_and(|t| t > boot)
        })
    }

    /// Whether installing these packages calls for a reboot.
    pub fn needs_reboot(packages: &[PinnedPackage]) -> bool {
        packages
            .iter()
            .any(|p| REBOOT_PACKAGES.contains(&p.name.as_str()))
    }
}

fn boot_time() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// `VERSION_ID`'s major version, for `--releasever` in a sandbox.
fn release_version(root: &Path) -> String {
    std::fs::read_to_string(exec::under(root, "/etc/os-release"))
        .ok()
        .and_then(|t| super::os::OsRelease::parse(&t).version_id)
        .and_then(|v| v.split('.').next().map(str::to_string))
        .unwrap_or_else(|| "9".into())
}

/// Versions as rpm prints them (`0:1.2-1`) and as dnf does (`1.2-1`) are the same.
pub fn same_version(a: &str, b: &str) -> bool {
    a.trim_start_matches("0:") == b.trim_start_matches("0:")
}

/// `dnf check-update`: `name.arch  [epoch:]version-release  repo` per update (wrapped lines,
/// where a long name pushes the rest onto the next line, are joined).
pub fn parse_check_update(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut pending: Vec<String> = Vec::new();
    for line in text.lines() {
        let t = line.trim();
        if t.is_empty() {
            pending.clear();
            continue;
        }
        if t.starts_with("Last metadata")
            || t.starts_with("Obsoleting")
            || t.starts_with("Security:")
        {
            if t.starts_with("Obsoleting") {
                break;
            }
            continue;
        }
        pending.extend(t.split_whitespace().map(str::to_string));
        if pending.len() < 3 {
            continue;
        }
        if pending.len() == 3
            && let Some((name, _arch)) = pending[0].rsplit_once('.')
            && pending[1].contains('-')
            && !out.iter().any(|(n, _)| n == name)
        {
            out.push((name.to_string(), pending[1].clone()));
        }
        pending.clear();
    }
    out
}

/// `dnf updateinfo list`: `ADVISORY  TYPE  NEVRA`; the type is `bugfix`, `enhancement`,
/// `newpackage` or `<Severity>/Sec.`. The highest classification per package name wins.
pub fn parse_updateinfo(text: &str) -> BTreeMap<String, Classification> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() != 3 {
            continue;
        }
        let class = match f[1] {
            "Critical/Sec." => Classification::Critical,
            t if t.ends_with("/Sec.") || t == "security" => Classification::Security,
            _ => Classification::Other,
        };
        let Some(name) = nevra_name(f[2]) else {
            continue;
        };
        let e = out.entry(name).or_insert(Classification::Other);
        if rank(class) > rank(*e) {
            *e = class;
        }
    }
    out
}

fn rank(c: Classification) -> u8 {
    match c {
        Classification::Critical => 3,
        Classification::Security => 2,
        _ => 1,
    }
}

/// The name of `name-[epoch:]version-release.arch`.
pub fn nevra_name(nevra: &str) -> Option<String> {
    let (rest, _arch) = nevra.rsplit_once('.')?;
    let (rest, _release) = rest.rsplit_once('-')?;
    let (name, _version) = rest.rsplit_once('-')?;
    (!name.is_empty()).then(|| name.to_string())
}

/// `rpm -q --qf '%{NAME}\t%{EPOCHNUM}:%{VERSION}-%{RELEASE}\n'`, epoch 0 left out.
pub fn parse_rpm_query(text: &str) -> Vec<PinnedPackage> {
    text.lines()
        .filter_map(|l| {
            let (name, version) = l.split_once('\t')?;
            Some(PinnedPackage {
                name: name.to_string(),
                version: version.trim().trim_start_matches("0:").to_string(),
                classification: None,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured from dnf 4.14 (`dnf check-update`, `dnf -q updateinfo list --updates`) against a
    // local repository with an updateinfo.xml, plus RHEL 9 lines of the same format.
    const CHECK_UPDATE: &str = "\
Last metadata expiration check: 0:00:01 ago on Sun Nov 22 07:36:02 2026.

libfoo.noarch                             1.2-1                             test
tool.noarch                               2.1-1                             test
openssl-libs.x86_64                       1:3.0.7-25.el9_3                  baseos
a-very-long-package-name-that-wraps.x86_64
                                          4.5-6.el9                         appstream

Obsoleting Packages
grub2-tools.x86_64                        1:2.06-70.el9_3.2                 baseos
";
    const UPDATEINFO: &str = "\
TEST-2026:0001 Critical/Sec. libfoo-1.2-1.noarch
TEST-2026:0002 bugfix        tool-2.1-1.noarch
RHSA-2024:1234 Important/Sec. openssl-libs-1:3.0.7-25.el9_3.x86_64
RHBA-2024:1111 bugfix        openssl-libs-1:3.0.7-25.el9_3.x86_64
";

    #[test]
    fn check_update_lists_name_and_version() {
        let got = parse_check_update(CHECK_UPDATE);
        assert_eq!(
            got,
            [
                ("libfoo".to_string(), "1.2-1".to_string()),
                ("tool".into(), "2.1-1".into()),
                ("openssl-libs".into(), "1:3.0.7-25.el9_3".into()),
                (
                    "a-very-long-package-name-that-wraps".into(),
                    "4.5-6.el9".into()
                ),
            ]
        );
    }

    #[test]
    fn advisories_classify_by_type_and_severity() {
        let got = parse_updateinfo(UPDATEINFO);
        assert_eq!(got["libfoo"], Classification::Critical);
        assert_eq!(got["tool"], Classification::Other);
        assert_eq!(got["openssl-libs"], Classification::Security);
        assert!(parse_updateinfo("garbage\nx y\n").is_empty());
    }

    #[test]
    fn nevra_and_rpm_query() {
        assert_eq!(
            nevra_name("openssl-libs-1:3.0.7-25.el9_3.x86_64").as_deref(),
            Some("openssl-libs")
        );
        assert_eq!(nevra_name("broken"), None);
        let got = parse_rpm_query("tool\t0:2.0-1\nopenssl-libs\t1:3.0.7-25.el9_3\n");
        assert_eq!(got[0].version, "2.0-1");
        assert_eq!(got[1].version, "1:3.0.7-25.el9_3");
        assert!(same_version("0:2.0-1", "2.0-1"));
        assert!(Dnf::needs_reboot(&[PinnedPackage {
            name: "kernel-core".into(),
            version: "5.14".into(),
            classification: None
        }]));
    }
}
