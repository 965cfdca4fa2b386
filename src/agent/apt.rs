//! The apt backend (Debian, Ubuntu): `apt-get` for assessment and installation, `dpkg-query` for
//! what is installed, `/run/reboot-required` for reboots. With a sandbox root, apt's `Dir` option
//! and dpkg's `--root`/`--admindir` keep every read and write inside it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::exec;
use crate::api::{AvailablePackage, Classification, PinnedPackage};

const UPDATE_LIMIT: Duration = Duration::from_secs(600);
const INSTALL_LIMIT: Duration = Duration::from_secs(3600);
const QUERY_LIMIT: Duration = Duration::from_secs(120);

#[derive(Clone, Debug)]
pub struct Apt {
    root: PathBuf,
    /// APT_CONFIG for a sandbox: sets `Dir` so apt reads the root's own apt.conf.d.
    config: Option<PathBuf>,
}

impl Apt {
    pub fn new(root: &Path, config: Option<PathBuf>) -> Apt {
        Apt {
            root: root.to_path_buf(),
            config,
        }
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

    async fn apt_get(&self, args: &[&str], limit: Duration) -> Result<exec::Output, String> {
        let mut a = self.apt_options();
        a.extend(args.iter().map(|s| s.to_string()));
        let config = self.config.as_ref().map(|c| c.display().to_string());
        let mut env = vec![("DEBIAN_FRONTEND", "noninteractive")];
        if let Some(c) = &config {
            env.push(("APT_CONFIG", c.as_str()));
        }
        exec::check("apt-get", &a, &env, limit).await
    }

    /// Refresh the package lists and list the upgrades `apt-get dist-upgrade` would make.
    pub async fn assess(&self) -> Result<Vec<AvailablePackage>, String> {
        self.apt_get(&["update"], UPDATE_LIMIT)
            .await
            .map_err(|e| format!("refreshing the package lists: {e}"))?;
        let out = self
            .apt_get(&["-s", "dist-upgrade"], QUERY_LIMIT)
            .await
            .map_err(|e| format!("listing the upgrades: {e}"))?;
        Ok(parse_simulation(&out.stdout))
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

    /// Put each package at exactly its version and remove the named ones. Tries everything in one
    /// transaction first; when apt refuses it, each package on its own, so one unavailable version
    /// does not hold back the others. What ends up installed is read back from dpkg.
    pub async fn install(
        &self,
        packages: &[PinnedPackage],
        remove: &[String],
    ) -> (Vec<PinnedPackage>, Vec<PinnedPackage>, Option<String>) {
        let mut items: Vec<String> = packages
            .iter()
            .map(|p| format!("{}={}", p.name, p.version))
            .collect();
        items.extend(remove.iter().map(|n| format!("{n}-")));
        let mut errors = Vec::new();
        if !items.is_empty()
            && let Err(e) = self.install_items(&items).await
        {
            errors.push(e);
            if items.len() > 1 {
                errors.clear();
                for item in &items {
                    if let Err(e) = self.install_items(std::slice::from_ref(item)).await {
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
        (installed, failed, error)
    }

    async fn install_items(&self, items: &[String]) -> Result<(), String> {
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
        self.apt_get(&args, INSTALL_LIMIT).await.map(|_| ())
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
        });
    }
    out
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
