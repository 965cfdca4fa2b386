//! Observing an item: its difference from what is wanted, never changing the machine.

use super::files::{first_difference, mode_of};
use super::{Host, Item, sshd, sysctl};

impl Host {
    /// The difference, if any.
    pub async fn observe_item(&self, item: &Item) -> Option<String> {
        match item {
            Item::File {
                path,
                content,
                mode,
            } => self.observe_file(path, content, *mode),
            Item::Unit { name, enabled } => self.observe_unit(name, *enabled).await,
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
            } => match sshd::effective(&self.root, keyword) {
                Ok(Some((have, _))) if have.eq_ignore_ascii_case(value) => None,
                Ok(Some((have, from))) => {
                    Some(format!("{rule}: want {value}, have {have} (from {from})"))
                }
                Ok(None) => Some(format!("{rule}: want {value}, have sshd's default")),
                Err(e) => Some(format!("{rule}: {e}")),
            },
            Item::Sysctl { rule, key, value } => self.observe_sysctl(rule, key, value),
            Item::MaxMode { rule, path, mode } => match std::fs::metadata(self.path(path)) {
                Ok(m) => {
                    let have = std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7777;
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

    fn observe_file(&self, path: &str, content: &str, mode: u32) -> Option<String> {
        let full = self.path(path);
        let have = match std::fs::read_to_string(&full) {
            Ok(h) => h,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Some(format!("{path}: missing"));
            }
            Err(e) => return Some(format!("{path}: unreadable ({e})")),
        };
        if have != content {
            return Some(format!("{path}: {}", first_difference(content, &have)));
        }
        let have_mode = mode_of(&full).unwrap_or(0);
        (have_mode != mode).then(|| format!("{path}: mode want {mode:04o}, have {have_mode:04o}"))
    }

    /// Enabled (and, on a live system, running) as wanted; a unit that is not installed is fine
    /// when it is to be disabled.
    async fn observe_unit(&self, name: &str, enabled: bool) -> Option<String> {
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
        if enabled && state == "not-found" {
            return Some(format!("unit {name}: not installed on this machine"));
        }
        if enabled != is_enabled && (enabled || state != "not-found") {
            return Some(format!(
                "unit {name}: want {}, have {state}",
                if enabled { "enabled" } else { "disabled" }
            ));
        }
        if enabled && self.live && name.ends_with(".service") {
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

    /// The configured value (last file wins) and, on a live system, the running one.
    fn observe_sysctl(&self, rule: &str, key: &str, value: &str) -> Option<String> {
        let configured = sysctl::effective(&self.root, key);
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
}
