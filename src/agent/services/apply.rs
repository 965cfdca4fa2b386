//! Applying an item: only what differs is written; overriding lines are commented out, never
//! deleted.

use std::os::unix::fs::PermissionsExt;

use super::files::{comment_out, mode_of, write_file};
use super::{APT_DROPIN, Host, Item, LIMIT, SSHD_DROPIN, SYSCTL_DROPIN, sshd, sysctl};
use crate::agent::exec;

impl Host {
    pub(super) async fn apply_item(&self, item: &Item) -> Result<(), String> {
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
                sshd::ensure_include(&self.root)?;
                // Comment out every earlier directive that wins over the drop-in.
                for _ in 0..16 {
                    match sshd::effective(&self.root, keyword)? {
                        Some((_, from)) if from != SSHD_DROPIN => {
                            comment_out(&self.root, &from, keyword, sshd::sets)?
                        }
                        _ => break,
                    }
                }
                if self.live {
                    self.reload_sshd().await?;
                }
                Ok(())
            }
            Item::Sysctl { key, .. } => {
                for _ in 0..16 {
                    match sysctl::effective(&self.root, key)? {
                        Some((_, from)) if from != SYSCTL_DROPIN => {
                            comment_out(&self.root, &from, key, sysctl::sets)?
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
                write_file(&full, &t, mode_of(&full).unwrap_or(0o644))
            }
        }
    }

    /// Reload sshd under its Debian (`ssh`) or RHEL (`sshd`) unit name; neither working is an
    /// error of the item (logged and reported), since the new rules are not in force.
    async fn reload_sshd(&self) -> Result<(), String> {
        let mut failures = Vec::new();
        for unit in ["ssh.service", "sshd.service"] {
            match self.systemctl(&["try-reload-or-restart", unit]).await {
                Ok(out) if out.success() => return Ok(()),
                Ok(out) => failures.push(format!("{unit}: {}", out.tail())),
                Err(e) => failures.push(format!("{unit}: {e}")),
            }
        }
        let e = format!("sshd was not reloaded ({})", failures.join("; "));
        tracing::warn!(error = %e, "systemctl try-reload-or-restart failed");
        Err(e)
    }
}
