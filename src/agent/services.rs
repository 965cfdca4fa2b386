//! The best-practice services of DESIGN.md §3 on a Linux guest.
//!
//! Each service is planned as a list of [`Item`]s — a managed file, a systemd unit's enablement, an
//! effective sshd / sysctl / apt setting, a file's permissions — and every item can be observed
//! (never changing the machine; the exact difference is reported) and applied (idempotent: only
//! what differs is written). Settings that live in layered configuration (sshd's first-wins
//! includes, sysctl.d's last-wins files, apt.conf.d) are observed as their effective value, so a
//! drop-in that some other file overrides is reported, and applying comments the overriding line
//! out (`# automend: …`, the text kept) rather than deleting anything.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::exec;
use super::os::Family;
use crate::api::{
    BackupFrequency, DayOfWeek, EffectiveConfiguration, PatchMode, ServiceObservation,
};

const LIMIT: Duration = Duration::from_secs(120);
const HEADER: &str = "# Managed by automend: edits are reported as drift and reverted.\n";

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

    /// What each service wants, in the order of DESIGN.md §3. A service that is off is not
    /// managed: nothing is planned and nothing it left behind is undone.
    pub fn plan(
        &self,
        config: &EffectiveConfiguration,
        patch_mode: Option<PatchMode>,
    ) -> Vec<(&'static str, Vec<Item>)> {
        let s = &config.services;
        let mut out = Vec::new();
        out.push((
            "updateManagement",
            if s.update_management.enabled {
                self.plan_updates(patch_mode)
            } else {
                vec![]
            },
        ));
        out.push((
            "backup",
            if s.backup.enabled {
                self.plan_backup(config)
            } else {
                vec![]
            },
        ));
        out.push((
            "monitoring",
            if s.monitoring.enabled {
                vec![Item::Unit {
                    name: self.settings.monitoring_unit.clone(),
                    enabled: true,
                }]
            } else {
                vec![]
            },
        ));
        out.push((
            "antimalware",
            if s.antimalware.enabled {
                self.plan_antimalware(config)
            } else {
                vec![]
            },
        ));
        out.push((
            "securityBaseline",
            if s.security_baseline.enabled {
                self.plan_baseline(&s.security_baseline.exempt_rules)
            } else {
                vec![]
            },
        ));
        // Change tracking keeps an inventory in the agent's state; nothing on the machine.
        out.push(("changeTracking", vec![]));
        out.push((
            "timeSync",
            if s.time_sync.enabled {
                self.plan_time(&s.time_sync.servers)
            } else {
                vec![]
            },
        ));
        out
    }

    /// Native automatic updates per patch mode: off where Automend (AutomaticByPlatform) or
    /// nobody (Manual) installs, on for AutomaticByOS, left alone for ImageDefault.
    fn plan_updates(&self, mode: Option<PatchMode>) -> Vec<Item> {
        let on = match mode {
            Some(PatchMode::AutomaticByPlatform) | Some(PatchMode::Manual) => false,
            Some(PatchMode::AutomaticByOS) => true,
            Some(PatchMode::ImageDefault) | None => return vec![],
        };
        match self.family {
            Family::Apt => {
                let v = if on { "1" } else { "0" };
                vec![
                    Item::File {
                        path: APT_DROPIN.into(),
                        content: format!(
                            "{HEADER}// Native automatic updates for patch mode {}.\nAPT::Periodic::Update-Package-Lists \"1\";\nAPT::Periodic::Unattended-Upgrade \"{v}\";\n",
                            mode.map(|m| format!("{m:?}")).unwrap_or_default()
                        ),
                        mode: 0o644,
                    },
                    Item::Apt {
                        key: "APT::Periodic::Unattended-Upgrade".into(),
                        value: v.into(),
                    },
                ]
            }
            Family::Dnf => vec![
                Item::Unit {
                    name: "dnf-automatic.timer".into(),
                    enabled: false,
                },
                Item::Unit {
                    name: "dnf-automatic-install.timer".into(),
                    enabled: on,
                },
            ],
        }
    }

    fn plan_backup(&self, config: &EffectiveConfiguration) -> Vec<Item> {
        let b = &config.services.backup;
        let (calendar, what) = match &b.schedule {
            Some(s) => (
                calendar(s.frequency, &s.days_of_week, &s.time),
                format!("{:?} at {}", s.frequency, s.time),
            ),
            None => ("*-*-* 00:00:00".to_string(), "Daily at 00:00".to_string()),
        };
        vec![
            Item::File {
                path: "/etc/systemd/system/automend-backup.service".into(),
                content: format!(
                    "{HEADER}[Unit]\nDescription=Automend backup (keeps {days} days)\n\n[Service]\nType=oneshot\nEnvironment=AUTOMEND_BACKUP_RETENTION_DAYS={days}\nExecStart={cmd}\n",
                    days = b.retention_days,
                    cmd = self.settings.backup_command
                ),
                mode: 0o644,
            },
            Item::File {
                path: "/etc/systemd/system/automend-backup.timer".into(),
                content: format!(
                    "{HEADER}[Unit]\nDescription=Automend backup schedule ({what})\n\n[Timer]\nOnCalendar={calendar}\nPersistent=true\n\n[Install]\nWantedBy=timers.target\n"
                ),
                mode: 0o644,
            },
            Item::Unit {
                name: "automend-backup.timer".into(),
                enabled: true,
            },
        ]
    }

    fn plan_antimalware(&self, config: &EffectiveConfiguration) -> Vec<Item> {
        let a = &config.services.antimalware;
        let mut cmd = self.settings.scan_command.clone();
        for e in &a.exclusions {
            cmd.push_str(&format!(" --exclude-dir={}", systemd_quote(e)));
        }
        vec![
            Item::Unit {
                name: self.settings.signature_unit.clone(),
                enabled: true,
            },
            Item::File {
                path: "/etc/systemd/system/automend-scan.service".into(),
                content: format!(
                    "{HEADER}[Unit]\nDescription=Automend malware scan\n\n[Service]\nType=oneshot\nNice=19\nIOSchedulingClass=idle\nExecStart={cmd}\n"
                ),
                mode: 0o644,
            },
            Item::File {
                path: "/etc/systemd/system/automend-scan.timer".into(),
                content: format!(
                    "{HEADER}[Unit]\nDescription=Automend malware scan schedule (daily at {t})\n\n[Timer]\nOnCalendar=*-*-* {t}:00\nPersistent=true\n\n[Install]\nWantedBy=timers.target\n",
                    t = a.scan_time
                ),
                mode: 0o644,
            },
            Item::Unit {
                name: "automend-scan.timer".into(),
                enabled: true,
            },
        ]
    }

    fn plan_baseline(&self, exempt: &[String]) -> Vec<Item> {
        let mut items = Vec::new();
        let sshd: Vec<_> = SSHD_RULES
            .iter()
            .map(|(k, v)| (format!("sshd.{k}"), *k, *v))
            .filter(|(rule, _, _)| !exempt.contains(rule))
            .collect();
        // sshd rules apply where sshd is installed.
        if !sshd.is_empty() && self.path("/etc/ssh/sshd_config").exists() {
            let mut content = HEADER.to_string();
            for (_, k, v) in &sshd {
                content.push_str(&format!("{k} {v}\n"));
            }
            items.push(Item::File {
                path: SSHD_DROPIN.into(),
                content,
                mode: 0o600,
            });
            items.extend(sshd.into_iter().map(|(rule, k, v)| Item::Sshd {
                rule,
                keyword: k.into(),
                value: v.into(),
            }));
        }
        let sysctl: Vec<_> = SYSCTL_RULES
            .iter()
            .map(|(k, v)| (format!("sysctl.{k}"), *k, *v))
            .filter(|(rule, _, _)| !exempt.contains(rule))
            .collect();
        if !sysctl.is_empty() {
            let mut content = HEADER.to_string();
            for (_, k, v) in &sysctl {
                content.push_str(&format!("{k} = {v}\n"));
            }
            items.push(Item::File {
                path: SYSCTL_DROPIN.into(),
                content,
                mode: 0o644,
            });
            items.extend(sysctl.into_iter().map(|(rule, k, v)| Item::Sysctl {
                rule,
                key: k.into(),
                value: v.into(),
            }));
        }
        for (path, mode) in FILE_RULES {
            let rule = format!("file.{path}");
            if !exempt.contains(&rule) {
                items.push(Item::MaxMode {
                    rule,
                    path: path.to_string(),
                    mode: *mode,
                });
            }
        }
        items
    }

    fn plan_time(&self, servers: &[String]) -> Vec<Item> {
        let chrony_conf = ["/etc/chrony/chrony.conf", "/etc/chrony.conf"]
            .into_iter()
            .find(|p| self.path(p).exists());
        let mut items = Vec::new();
        match chrony_conf {
            Some(conf) => {
                let (dir, unit) = if conf == "/etc/chrony/chrony.conf" {
                    ("/etc/chrony/sources.d", "chrony.service")
                } else {
                    ("/etc/chrony.d", "chronyd.service")
                };
                if !servers.is_empty() {
                    let mut content = HEADER.to_string();
                    for s in servers {
                        content.push_str(&format!("server {s} iburst\n"));
                    }
                    items.push(Item::File {
                        path: format!("{dir}/automend.sources"),
                        content,
                        mode: 0o644,
                    });
                    items.push(Item::Reads {
                        path: conf.into(),
                        line: format!("sourcedir {dir}"),
                    });
                }
                items.push(Item::Unit {
                    name: unit.into(),
                    enabled: true,
                });
            }
            None => {
                if !servers.is_empty() {
                    items.push(Item::File {
                        path: "/etc/systemd/timesyncd.conf.d/automend.conf".into(),
                        content: format!("{HEADER}[Time]\nNTP={}\n", servers.join(" ")),
                        mode: 0o644,
                    });
                }
                items.push(Item::Unit {
                    name: "systemd-timesyncd.service".into(),
                    enabled: true,
                });
            }
        }
        items
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
                    let _ = self.systemctl(&["daemon-reload"]).await;
                    units_changed = false;
                }
                if let Err(e) = self.apply_item(item).await {
                    errors.push(format!("{name}: {e}"));
                }
            }
        }
        if units_changed && self.live {
            let _ = self.systemctl(&["daemon-reload"]).await;
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
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

    /// The difference, if any.
    pub async fn observe_item(&self, item: &Item) -> Option<String> {
        match item {
            Item::File {
                path,
                content,
                mode,
            } => {
                let full = self.path(path);
                let have = match std::fs::read_to_string(&full) {
                    Ok(h) => h,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        return Some(format!("{path}: missing"));
                    }
                    Err(e) => return Some(format!("{path}: unreadable ({e})")),
                };
                if have != *content {
                    return Some(format!("{path}: {}", first_difference(content, &have)));
                }
                let have_mode = std::fs::metadata(&full)
                    .map(|m| m.permissions().mode() & 0o7777)
                    .unwrap_or(0);
                (have_mode != *mode)
                    .then(|| format!("{path}: mode want {mode:04o}, have {have_mode:04o}"))
            }
            Item::Unit { name, enabled } => {
                let state = match self.systemctl(&["is-enabled", name]).await {
                    Ok(out) => {
                        let s = out.stdout.trim().to_string();
                        if s.is_empty() {
                            let t = out.tail();
                            if t.contains("No such file") || t.contains("not found") {
                                "not-found".to_string()
                            } else {
                                return Some(format!("unit {name}: cannot tell ({t})"));
                            }
                        } else {
                            s
                        }
                    }
                    Err(e) => return Some(format!("unit {name}: cannot tell ({e})")),
                };
                let is_enabled = matches!(state.as_str(), "enabled" | "enabled-runtime" | "alias");
                if *enabled && state == "not-found" {
                    return Some(format!("unit {name}: not installed on this machine"));
                }
                if *enabled != is_enabled && (*enabled || state != "not-found") {
                    return Some(format!(
                        "unit {name}: want {}, have {state}",
                        if *enabled { "enabled" } else { "disabled" }
                    ));
                }
                if *enabled && self.live && name.ends_with(".service") {
                    let active = self
                        .systemctl(&["is-active", name])
                        .await
                        .map(|o| o.stdout.trim().to_string())
                        .unwrap_or_default();
                    if active != "active" {
                        return Some(format!("unit {name}: want running, have {active}"));
                    }
                }
                None
            }
            Item::Apt { key, value } => {
                let have = self.apt_value(key).await;
                match have {
                    Ok(h) if h == *value => None,
                    Ok(h) => Some(format!(
                        "{key}: want {value:?}, have {}",
                        if h.is_empty() {
                            "unset".into()
                        } else {
                            format!("{h:?}")
                        }
                    )),
                    Err(e) => Some(format!("{key}: cannot read the apt configuration ({e})")),
                }
            }
            Item::Sshd {
                rule,
                keyword,
                value,
            } => match sshd_effective(&self.root, keyword) {
                Ok(Some((have, _))) if have.eq_ignore_ascii_case(value) => None,
                Ok(Some((have, from))) => {
                    Some(format!("{rule}: want {value}, have {have} (from {from})"))
                }
                Ok(None) => Some(format!("{rule}: want {value}, have sshd's default")),
                Err(e) => Some(format!("{rule}: {e}")),
            },
            Item::Sysctl { rule, key, value } => {
                let configured = sysctl_effective(&self.root, key);
                match configured {
                    Err(e) => return Some(format!("{rule}: {e}")),
                    Ok(Some((have, _))) if have == *value => {}
                    Ok(Some((have, from))) => {
                        return Some(format!("{rule}: want {value}, have {have} (from {from})"));
                    }
                    Ok(None) => return Some(format!("{rule}: want {value}, not configured")),
                }
                if self.live {
                    let proc = format!("/proc/sys/{}", key.replace('.', "/"));
                    if let Ok(now) = std::fs::read_to_string(&proc)
                        && now.split_whitespace().collect::<Vec<_>>().join(" ") != *value
                    {
                        return Some(format!("{rule}: want {value}, running {}", now.trim()));
                    }
                }
                None
            }
            Item::MaxMode { rule, path, mode } => match std::fs::metadata(self.path(path)) {
                Ok(m) => {
                    let have = m.permissions().mode() & 0o7777;
                    (have & !mode != 0).then(|| {
                        format!("{rule}: mode want {mode:04o} or stricter, have {have:04o}")
                    })
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => Some(format!("{rule}: cannot read {path} ({e})")),
            },
            Item::Reads { path, line } => match std::fs::read_to_string(self.path(path)) {
                Ok(t)
                    if t.lines().any(|l| {
                        l.split_whitespace().collect::<Vec<_>>()
                            == line.split_whitespace().collect::<Vec<_>>()
                    }) =>
                {
                    None
                }
                Ok(_) => Some(format!("{path}: does not read {line:?}")),
                Err(e) => Some(format!("{path}: unreadable ({e})")),
            },
        }
    }

    async fn apply_item(&self, item: &Item) -> Result<(), String> {
        match item {
            Item::File {
                path,
                content,
                mode,
            } => write_file(&self.path(path), content, *mode),
            Item::Unit { name, enabled } => {
                let verb = if *enabled { "enable" } else { "disable" };
                let mut args = vec![verb];
                if self.live {
                    args.push("--now");
                }
                args.push(name);
                let out = self.systemctl(&args).await?;
                if out.success() {
                    Ok(())
                } else {
                    Err(format!("systemctl {verb} {name} failed: {}", out.tail()))
                }
            }
            // The drop-in file is written by its File item; a later file overriding it is
            // reported, not edited (apt's own files decide their order).
            Item::Apt { key, .. } => Err(format!(
                "{key}: another file in /etc/apt/apt.conf.d overrides {APT_DROPIN}"
            )),
            Item::Sshd { keyword, .. } => {
                ensure_sshd_include(&self.root)?;
                // Comment out every earlier directive that wins over the drop-in.
                for _ in 0..16 {
                    match sshd_effective(&self.root, keyword)? {
                        Some((_, from)) if from != SSHD_DROPIN => {
                            comment_out(&self.root, &from, keyword, false)?
                        }
                        _ => break,
                    }
                }
                if self.live {
                    let _ = self
                        .systemctl(&["try-reload-or-restart", "ssh.service"])
                        .await;
                    let _ = self
                        .systemctl(&["try-reload-or-restart", "sshd.service"])
                        .await;
                }
                Ok(())
            }
            Item::Sysctl { key, .. } => {
                for _ in 0..16 {
                    match sysctl_effective(&self.root, key)? {
                        Some((_, from)) if from != SYSCTL_DROPIN => {
                            comment_out(&self.root, &from, key, true)?
                        }
                        _ => break,
                    }
                }
                if self.live {
                    exec::check(
                        "sysctl",
                        &["-q".into(), "-p".into(), SYSCTL_DROPIN.into()],
                        &[],
                        LIMIT,
                    )
                    .await?;
                }
                Ok(())
            }
            Item::MaxMode { path, mode, .. } => {
                let full = self.path(path);
                let m = std::fs::metadata(&full).map_err(|e| format!("{path}: {e}"))?;
                let have = m.permissions().mode() & 0o7777;
                std::fs::set_permissions(&full, std::fs::Permissions::from_mode(have & mode))
                    .map_err(|e| format!("chmod {path}: {e}"))
            }
            Item::Reads { path, line } => {
                let full = self.path(path);
                let mut t = std::fs::read_to_string(&full).map_err(|e| format!("{path}: {e}"))?;
                if !t.ends_with('\n') && !t.is_empty() {
                    t.push('\n');
                }
                t.push_str(&format!(
                    "# Added by automend for its time servers.\n{line}\n"
                ));
                let mode = std::fs::metadata(&full)
                    .map(|m| m.permissions().mode() & 0o7777)
                    .unwrap_or(0o644);
                write_file(&full, &t, mode)
            }
        }
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

/// systemd's OnCalendar for a backup schedule.
pub fn calendar(frequency: BackupFrequency, days: &[DayOfWeek], time: &str) -> String {
    match frequency {
        BackupFrequency::Daily => format!("*-*-* {time}:00"),
        BackupFrequency::Weekly => {
            let d: Vec<String> = days
                .iter()
                .map(|d| format!("{d:?}")[..3].to_string())
                .collect();
            format!("{} *-*-* {time}:00", d.join(","))
        }
    }
}

fn systemd_quote(s: &str) -> String {
    if s.chars()
        .any(|c| c.is_whitespace() || c == '"' || c == '\\')
    {
        format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
    } else {
        s.to_string()
    }
}

/// The first line where `have` differs from `want`, for a drift report.
pub fn first_difference(want: &str, have: &str) -> String {
    let (w, h): (Vec<&str>, Vec<&str>) = (want.lines().collect(), have.lines().collect());
    for i in 0..w.len().max(h.len()) {
        match (w.get(i), h.get(i)) {
            (Some(a), Some(b)) if a == b => continue,
            (Some(a), Some(b)) => return format!("line {}: want {a:?}, have {b:?}", i + 1),
            (Some(a), None) => return format!("line {}: want {a:?}, missing", i + 1),
            (None, Some(b)) => return format!("line {}: unexpected {b:?}", i + 1),
            (None, None) => break,
        }
    }
    "content differs (line endings)".into()
}

/// Write a file atomically (temporary file + rename) with its mode; directories are created.
pub fn write_file(path: &Path, content: &str, mode: u32) -> Result<(), String> {
    let dir = path
        .parent()
        .ok_or_else(|| format!("{}: no parent directory", path.display()))?;
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let tmp = dir.join(format!(
        ".{}.automend-tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    std::fs::write(&tmp, content).map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("chmod {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("renaming to {}: {e}", path.display()))
}

/// Files matching a pattern whose last component may hold `*` (sorted, as glob(3) does).
fn glob(root: &Path, pattern: &str) -> Vec<String> {
    let (dir, file) = pattern.rsplit_once('/').unwrap_or((".", pattern));
    if !file.contains('*') {
        return vec![pattern.to_string()];
    }
    let (pre, post) = file.split_once('*').unwrap_or((file, ""));
    let Ok(entries) = std::fs::read_dir(exec::under(root, dir)) else {
        return vec![];
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(pre) && n.ends_with(post) && n.len() >= pre.len() + post.len())
        .collect();
    names.sort();
    names.into_iter().map(|n| format!("{dir}/{n}")).collect()
}

/// sshd's effective value of a keyword and the file it comes from: the first occurrence wins,
/// `Include` is followed in place, lines after a `Match` are conditional and left out.
pub fn sshd_effective(root: &Path, keyword: &str) -> Result<Option<(String, String)>, String> {
    fn walk(
        root: &Path,
        file: &str,
        keyword: &str,
        depth: usize,
    ) -> Result<Option<(String, String)>, String> {
        if depth > 8 {
            return Err(format!("{file}: Include nested too deeply"));
        }
        let text = match std::fs::read_to_string(exec::under(root, file)) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && depth > 0 => return Ok(None),
            Err(e) => return Err(format!("cannot read {file} ({e})")),
        };
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let mut words = line.splitn(2, |c: char| c.is_whitespace() || c == '=');
            let (Some(k), rest) = (words.next(), words.next()) else {
                continue;
            };
            let rest = rest.unwrap_or("").trim().trim_start_matches('=').trim();
            if k.eq_ignore_ascii_case("Match") {
                return Ok(None);
            }
            if k.eq_ignore_ascii_case("Include") {
                for pattern in rest.split_whitespace() {
                    let pattern = if pattern.starts_with('/') {
                        pattern.to_string()
                    } else {
                        format!("/etc/ssh/{pattern}")
                    };
                    for f in glob(root, &pattern) {
                        if let Some(found) = walk(root, &f, keyword, depth + 1)? {
                            return Ok(Some(found));
                        }
                    }
                }
                continue;
            }
            if k.eq_ignore_ascii_case(keyword) {
                let v = rest.split_whitespace().next().unwrap_or("").to_string();
                return Ok(Some((v, file.to_string())));
            }
        }
        Ok(None)
    }
    walk(root, "/etc/ssh/sshd_config", keyword, 0)
}

/// Make sshd_config read the drop-in directory (Debian's does; older images may not).
fn ensure_sshd_include(root: &Path) -> Result<(), String> {
    let path = exec::under(root, "/etc/ssh/sshd_config");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read /etc/ssh/sshd_config ({e})"))?;
    let reads = text.lines().any(|l| {
        let l = l.trim();
        l.to_ascii_lowercase().starts_with("include") && l.contains("sshd_config.d/")
    });
    if reads {
        return Ok(());
    }
    let mode = std::fs::metadata(&path)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o600);
    write_file(
        &path,
        &format!(
            "# Added by automend: read the drop-in directory first.\nInclude /etc/ssh/sshd_config.d/*.conf\n{text}"
        ),
        mode,
    )
}

/// sysctl's configured value of a key and the file it comes from: files of /etc/sysctl.d,
/// /run/sysctl.d, /usr/local/lib/sysctl.d, /usr/lib/sysctl.d, /lib/sysctl.d by name (the first
/// directory wins for a name), each read in order, the last assignment wins; /etc/sysctl.conf last.
pub fn sysctl_effective(root: &Path, key: &str) -> Result<Option<(String, String)>, String> {
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

/// Comment out the lines of `file` that set `key` (`# automend: <line>`), keeping the text.
fn comment_out(root: &Path, file: &str, key: &str, sysctl: bool) -> Result<(), String> {
    let path = exec::under(root, file);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {file} ({e})"))?;
    let mut changed = false;
    let lines: Vec<String> = text
        .lines()
        .map(|l| {
            let t = l.trim();
            let hit = if sysctl {
                t.split_once('=').is_some_and(|(k, _)| {
                    !t.starts_with('#') && k.trim().trim_start_matches('-').replace('/', ".") == key
                })
            } else {
                !t.starts_with('#')
                    && t.split(|c: char| c.is_whitespace() || c == '=')
                        .next()
                        .is_some_and(|k| k.eq_ignore_ascii_case(key))
            };
            if hit {
                changed = true;
                format!("# automend: {l}")
            } else {
                l.to_string()
            }
        })
        .collect();
    if !changed {
        return Err(format!("{file}: no line setting {key} to comment out"));
    }
    let mode = std::fs::metadata(&path)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o644);
    write_file(&path, &(lines.join("\n") + "\n"), mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(root: &Path, p: &str, text: &str) {
        let full = exec::under(root, p);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(full, text).unwrap();
    }

    #[test]
    fn sshd_first_value_wins_through_includes() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        put(
            r,
            "/etc/ssh/sshd_config",
            "PermitRootLogin yes\nInclude /etc/ssh/sshd_config.d/*.conf\nPasswordAuthentication yes\nMatch User x\nX11Forwarding yes\n",
        );
        put(
            r,
            "/etc/ssh/sshd_config.d/00-automend.conf",
            "PasswordAuthentication no\nPermitRootLogin no\n",
        );
        assert_eq!(
            sshd_effective(r, "permitrootlogin").unwrap(),
            Some(("yes".into(), "/etc/ssh/sshd_config".into()))
        );
        assert_eq!(
            sshd_effective(r, "PasswordAuthentication").unwrap(),
            Some((
                "no".into(),
                "/etc/ssh/sshd_config.d/00-automend.conf".into()
            ))
        );
        assert_eq!(sshd_effective(r, "X11Forwarding").unwrap(), None);
        comment_out(r, "/etc/ssh/sshd_config", "PermitRootLogin", false).unwrap();
        assert_eq!(
            sshd_effective(r, "PermitRootLogin").unwrap().unwrap().1,
            "/etc/ssh/sshd_config.d/00-automend.conf"
        );
        let text = std::fs::read_to_string(r.join("etc/ssh/sshd_config")).unwrap();
        assert!(
            text.starts_with("# automend: PermitRootLogin yes\n"),
            "{text}"
        );
    }

    #[test]
    fn sysctl_last_file_wins_and_etc_shadows_lib() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        put(
            r,
            "/usr/lib/sysctl.d/50-default.conf",
            "net.ipv4.ip_forward = 1\n",
        );
        put(
            r,
            "/usr/lib/sysctl.d/10-x.conf",
            "kernel.randomize_va_space=0\n",
        );
        put(
            r,
            "/etc/sysctl.d/10-x.conf",
            "kernel/randomize_va_space = 2\n",
        );
        assert_eq!(
            sysctl_effective(r, "net.ipv4.ip_forward").unwrap(),
            Some(("1".into(), "/usr/lib/sysctl.d/50-default.conf".into()))
        );
        assert_eq!(
            sysctl_effective(r, "kernel.randomize_va_space")
                .unwrap()
                .unwrap()
                .0,
            "2"
        );
        put(r, "/etc/sysctl.conf", "net.ipv4.ip_forward=1\n");
        put(r, SYSCTL_DROPIN, "net.ipv4.ip_forward = 0\n");
        assert_eq!(
            sysctl_effective(r, "net.ipv4.ip_forward")
                .unwrap()
                .unwrap()
                .1,
            "/etc/sysctl.conf"
        );
    }

    #[test]
    fn calendars_and_differences() {
        assert_eq!(
            calendar(BackupFrequency::Daily, &[], "02:30"),
            "*-*-* 02:30:00"
        );
        assert_eq!(
            calendar(
                BackupFrequency::Weekly,
                &[DayOfWeek::Monday, DayOfWeek::Thursday],
                "23:00"
            ),
            "Mon,Thu *-*-* 23:00:00"
        );
        assert_eq!(
            first_difference("a\nb\n", "a\nc\n"),
            "line 2: want \"b\", have \"c\""
        );
        assert_eq!(
            first_difference("a\n", "a\nx\n"),
            "line 2: unexpected \"x\""
        );
    }
}
