//! Patch hooks: commands the guest agent runs around patching (drain a node, deregister from a
//! load balancer, stop a service), declared with the patch policy.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::schema;

/// Commands run on the guest around an installation. Each runs with `/bin/sh -c` as root, with
/// these environment variables: AUTOMEND_HOOK (preInstall, preReboot or postInstall),
/// AUTOMEND_ROLLOUT, AUTOMEND_WAVE, AUTOMEND_ROLLBACK (true/false), AUTOMEND_PACKAGES (the
/// packages to install, "name=version" separated by spaces) and AUTOMEND_REBOOT (true when a
/// reboot follows the installation, or, for postInstall, happened before it).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PatchHooks {
    /// Before anything is installed. A failure skips the installation on that VM (nothing
    /// changes) and counts as a failure (reason PreInstallHookFailed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_install: Option<Hook>,
    /// After installing, before the reboot (only when one follows). A failure leaves the reboot
    /// pending and fails the VM (reason PreRebootHookFailed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_reboot: Option<Hook>,
    /// After the installation and the reboot, if any. A failure makes the VM unhealthy: the
    /// health gate counts it (reason PostInstallHookFailed) and rollback applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_install: Option<Hook>,
}

/// One hook: a shell command and its time limit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Hook {
    /// The command, run with `/bin/sh -c`; exit status 0 is success.
    #[schemars(length(min = 1, max = 4096))]
    #[x_kube(validation = Rule::new("self.trim().size() > 0").message(Message::Message("must not be empty or blank: a shell command such as \"systemctl stop app\"".into())))]
    pub command: String,
    /// The hook is killed and counts as failed after this long, from 1s to 6h (default 10m).
    #[serde(default = "Hook::default_timeout")]
    #[x_kube(validation = schema::duration_between("1s", "6h"))]
    pub timeout: String,
}

impl Hook {
    fn default_timeout() -> String {
        "10m".into()
    }
}

impl PatchHooks {
    /// These hooks, each replaced by `over`'s hook of the same name when it sets one (an
    /// UpdateRing's hooks over the profile's).
    pub fn overridden_by(&self, over: Option<&PatchHooks>) -> PatchHooks {
        let Some(o) = over else {
            return self.clone();
        };
        PatchHooks {
            pre_install: o.pre_install.clone().or_else(|| self.pre_install.clone()),
            pre_reboot: o.pre_reboot.clone().or_else(|| self.pre_reboot.clone()),
            post_install: o.post_install.clone().or_else(|| self.post_install.clone()),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.pre_install.is_none() && self.pre_reboot.is_none() && self.post_install.is_none()
    }
}

// Which hook ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum HookName {
    PreInstall,
    PreReboot,
    PostInstall,
}

impl std::fmt::Display for HookName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HookName::PreInstall => "preInstall",
            HookName::PreReboot => "preReboot",
            HookName::PostInstall => "postInstall",
        })
    }
}

/// What one hook did on the guest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HookRun {
    /// Which hook ran: preInstall or postInstall.
    pub hook: HookName,
    /// Its exit status; absent when it could not start or was killed at its time limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Whether the hook exited 0 within its timeout.
    pub succeeded: bool,
    /// The last lines of its output (stdout and stderr), or why it did not finish.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = super::vm_status::bounds::HOOK_OUTPUT))]
    pub output: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(c: &str) -> Option<Hook> {
        Some(Hook {
            command: c.into(),
            timeout: "10m".into(),
        })
    }

    #[test]
    fn a_ring_replaces_the_profile_hooks_it_names() {
        let profile = PatchHooks {
            pre_install: hook("drain"),
            post_install: hook("undrain"),
            ..Default::default()
        };
        let ring = PatchHooks {
            pre_install: hook("drain --ring"),
            pre_reboot: hook("notify"),
            ..Default::default()
        };
        let h = profile.overridden_by(Some(&ring));
        assert_eq!(h.pre_install, hook("drain --ring"));
        assert_eq!(h.pre_reboot, hook("notify"));
        assert_eq!(h.post_install, hook("undrain"));
        assert_eq!(profile.overridden_by(None), profile);
    }
}
