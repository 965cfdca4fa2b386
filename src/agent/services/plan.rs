//! What each service wants on the machine, as [`Item`]s: a pure function of the configuration,
//! the patch mode and the facts read from the machine beforehand ([`Facts`]).

use super::{
    APT_DROPIN, FILE_RULES, HEADER, HostSettings, Item, SSHD_DROPIN, SSHD_RULES, SYSCTL_DROPIN,
    SYSCTL_RULES,
};
use crate::agent::os::Family;
use crate::api::{BackupFrequency, DayOfWeek, EffectiveConfiguration, PatchMode};

/// What the plans read from the machine (probed once, before planning).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    /// `/etc/ssh/sshd_config` exists: the sshd rules apply.
    pub sshd_installed: bool,
    /// chrony's configuration file, if chrony is installed (else systemd-timesyncd is used).
    pub chrony_conf: Option<&'static str>,
}

/// The inputs of a plan.
pub struct Planner<'a> {
    pub family: Family,
    pub settings: &'a HostSettings,
    pub facts: &'a Facts,
}

impl Planner<'_> {
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
        if !sshd.is_empty() && self.facts.sshd_installed {
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
        let mut items = Vec::new();
        match self.facts.chrony_conf {
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
