//! The best-practice services of DESIGN.md §3 on a Linux guest.
//!
//! Each service is planned as a list of [`Item`]s — a managed file, a systemd unit's enablement, an
//! effective sshd / sysctl / apt setting, a file's permissions — and every item can be observed
//! (never changing the machine; the exact difference is reported) and applied (idempotent: only
//! what differs is written). Settings that live in layered configuration (sshd's first-wins
//! includes, sysctl.d's last-wins files, apt.conf.d) are observed as their effective value, so a
//! drop-in that some other file overrides is reported, and applying comments the overriding line
//! out (`# automend: …`, the text kept) rather than deleting anything.

mod apply;
mod files;
mod observe;
mod plan;
mod sshd;
mod sysctl;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::time::Duration;

use tracing::warn;

use super::exec;
use super::os::Family;
use crate::api::{EffectiveConfiguration, PatchMode, ServiceObservation};

pub use files::{first_difference, write_file};
pub use plan::{Facts, Planner, calendar};
pub use sshd::effective as sshd_effective;
pub use sysctl::effective as sysctl_effective;

pub(crate) const LIMIT: Duration = Duration::from_secs(120);
pub(crate) const HEADER: &str =
    "# Managed by automend: edits are reported as drift and reverted.\n";

/// Where the services' programs are on this machine (agent flags).
#[derive(Clone, Debug, clap::Args)]
pub struct HostSettings {
    /// Command the backup timer runs; it gets AUTOMEND_BACKUP_RETENTION_DAYS in its environment.
    #[arg(long, default_value = "/usr/local/sbin/automend-backup")]
    pub backup_command: String,
    /// The metrics exporter's systemd unit (monitoring).
    #[arg(long, default_value = "prometheus-node-exporter.service")]
    pub monitoring_unit: String,
    /// The malware signature updater's systemd unit (antimalware).
    #[arg(long, default_value = "clamav-freshclam.service")]
    pub signature_unit: String,
    /// The malware scan command (antimalware); each exclusion is added as --exclude-dir.
    #[arg(long, default_value = "/usr/bin/clamscan --recursive --infected /")]
    pub scan_command: String,
}

impl Default for HostSettings {
    fn default() -> Self {
        HostSettings {
            backup_command: "/usr/local/sbin/automend-backup".into(),
            monitoring_unit: "prometheus-node-exporter.service".into(),
            signature_unit: "clamav-freshclam.service".into(),
            scan_command: "/usr/bin/clamscan --recursive --infected /".into(),
        }
    }
}

/// One fact the configuration wants true on the machine.
#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    /// A file with exactly this content and mode.
    File {
        path: String,
        content: String,
        mode: u32,
    },
    /// A systemd unit enabled (and running, on a live system) or disabled.
    Unit { name: String, enabled: bool },
    /// An apt configuration value, as apt reads it from every apt.conf.d file.
    Apt { key: String, value: String },
    /// An sshd keyword's effective value (the first one sshd reads wins).
    Sshd {
        rule: String,
        keyword: String,
        value: String,
    },
    /// A kernel parameter's configured (and, on a live system, running) value; the last file wins.
    Sysctl {
        rule: String,
        key: String,
        value: String,
    },
    /// A file's permissions no looser than `mode` (an absent file is fine).
    MaxMode {
        rule: String,
        path: String,
        mode: u32,
    },
    /// A configuration file reads a drop-in directory (a line `line` is present).
    Reads { path: String, line: String },
}

/// The machine the agent manages.
#[derive(Clone, Debug)]
pub struct Host {
    pub root: PathBuf,
    /// The root is `/` and systemd runs: units are started/reloaded and runtime values read.
    pub live: bool,
    pub family: Family,
    pub settings: HostSettings,
    /// Configuration for `apt-config` in a sandbox (points apt's Dir at the root).
    pub apt_config: Option<PathBuf>,
}

/// The security baseline's rules: (rule id, what).
pub const SSHD_RULES: &[(&str, &str)] = &[
    ("PermitRootLogin", "no"),
    ("PasswordAuthentication", "no"),
    ("PermitEmptyPasswords", "no"),
    ("X11Forwarding", "no"),
    ("MaxAuthTries", "4"),
];
pub const SYSCTL_RULES: &[(&str, &str)] = &[
    ("net.ipv4.ip_forward", "0"),
    ("net.ipv4.conf.all.accept_redirects", "0"),
    ("net.ipv4.conf.all.send_redirects", "0"),
    ("net.ipv4.tcp_syncookies", "1"),
    ("kernel.randomize_va_space", "2"),
];
pub const FILE_RULES: &[(&str, u32)] = &[
    ("/etc/passwd", 0o644),
    ("/etc/shadow", 0o640),
    ("/etc/ssh/sshd_config", 0o600),
];

pub const SSHD_DROPIN: &str = "/etc/ssh/sshd_config.d/00-automend.conf";
pub const SYSCTL_DROPIN: &str = "/etc/sysctl.d/99-zz-automend.conf";
pub const APT_DROPIN: &str = "/etc/apt/apt.conf.d/99automend-auto-upgrades";

impl Host {
    fn path(&self, p: &str) -> PathBuf {
        exec::under(&self.root, p)
    }

    /// What the plans need to know of the machine.
    pub fn facts(&self) -> Facts {
        Facts {
            sshd_installed: self.path("/etc/ssh/sshd_config").exists(),
            chrony_conf: ["/etc/chrony/chrony.conf", "/etc/chrony.conf"]
                .into_iter()
                .find(|p| self.path(p).exists()),
        }
    }

    /// What each service wants on this machine now.
    pub fn plan(
        &self,
        config: &EffectiveConfiguration,
        patch_mode: Option<PatchMode>,
    ) -> Vec<(&'static str, Vec<Item>)> {
        Planner {
            family: self.family,
            settings: &self.settings,
            facts: &self.facts(),
        }
        .plan(config, patch_mode)
    }

    /// Observe every service; never changes the machine.
    pub async fn observe(
        &self,
        config: &EffectiveConfiguration,
        patch_mode: Option<PatchMode>,
        tracking: Vec<String>,
    ) -> Vec<ServiceObservation> {
        let mut out = Vec::new();
        for (name, items) in self.plan(config, patch_mode) {
            let mut differences = Vec::new();
            for item in &items {
                if let Some(d) = self.observe_item(item).await {
                    differences.push(d);
                }
            }
            if name == "changeTracking" {
                differences.extend(tracking.iter().cloned());
            }
            out.push(ServiceObservation {
                name: name.to_string(),
                compliant: differences.is_empty(),
                differences,
            });
        }
        out
    }

    /// Apply every service (only what differs is written); the errors, each naming its item.
    pub async fn apply(
        &self,
        config: &EffectiveConfiguration,
        patch_mode: Option<PatchMode>,
    ) -> Result<(), String> {
        let mut errors = Vec::new();
        let mut units_changed = false;
        for (name, items) in self.plan(config, patch_mode) {
            for item in &items {
                if self.observe_item(item).await.is_none() {
                    continue;
                }
                if matches!(item, Item::File { path, .. } if path.starts_with("/etc/systemd/")) {
                    units_changed = true;
                }
                if units_changed && self.live && matches!(item, Item::Unit { .. }) {
                    self.daemon_reload().await;
                    units_changed = false;
                }
                if let Err(e) = self.apply_item(item).await {
                    errors.push(format!("{name}: {e}"));
                }
            }
        }
        if units_changed && self.live {
            self.daemon_reload().await;
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    /// `systemctl daemon-reload` after unit files changed; a failure is logged (the unit
    /// operations that follow then report what systemd does not know).
    async fn daemon_reload(&self) {
        self.systemctl_logged(&["daemon-reload"]).await;
    }

    /// A systemctl call whose result does not decide anything: a failure is logged, not lost.
    async fn systemctl_logged(&self, args: &[&str]) {
        match self.systemctl(args).await {
            Ok(out) if out.success() => {}
            Ok(out) => {
                warn!(command = %format!("systemctl {}", args.join(" ")), output = %out.tail(), "systemctl failed")
            }
            Err(e) => {
                warn!(command = %format!("systemctl {}", args.join(" ")), error = %e, "systemctl failed")
            }
        }
    }

    async fn systemctl(&self, args: &[&str]) -> Result<exec::Output, String> {
        let mut a: Vec<String> = Vec::new();
        if !self.live {
            a.push(format!("--root={}", self.root.display()));
        }
        a.extend(args.iter().map(|s| s.to_string()));
        let env: &[(&str, &str)] = if self.live {
            &[]
        } else {
            &[("SYSTEMD_OFFLINE", "1")]
        };
        exec::run("systemctl", &a, env, LIMIT).await
    }

    async fn apt_value(&self, key: &str) -> Result<String, String> {
        let mut env = Vec::new();
        let cfg;
        if let Some(p) = &self.apt_config {
            cfg = p.display().to_string();
            env.push(("APT_CONFIG", cfg.as_str()));
        }
        let out = exec::check(
            "apt-config",
            &["shell".into(), "V".into(), key.into()],
            &env,
            LIMIT,
        )
        .await?;
        // Prints V='value' when set, nothing when unset.
        Ok(out
            .stdout
            .trim()
            .strip_prefix("V=")
            .map(|v| v.trim_matches('\'').to_string())
            .unwrap_or_default())
    }
}
