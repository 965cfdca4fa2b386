//! A simulated machine's patch lifecycle: hooks that succeed unless told to fail, and reboots —
//! the machine goes down (no heartbeat, no reports) for the reboot time, then boots with its
//! boot marker cleared, or never comes back when told to hang.
//!
//! Controls (annotations):
//! - `sim.automend.io/hook-fail`: hooks that fail, e.g. `preInstall` or `preReboot,postInstall`.
//! - `sim.automend.io/reboot-hang: "true"`: a reboot never completes (the VM stays down).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::api::{HookName, HookRun};

pub const HOOK_FAIL: &str = "sim.automend.io/hook-fail";
pub const REBOOT_HANG: &str = "sim.automend.io/reboot-hang";

#[derive(Debug)]
pub struct Lifecycle {
    /// How long a reboot keeps the machine down.
    pub reboot_time: Duration,
    failing: Vec<HookName>,
    hang: bool,
    marker: bool,
    down_until: Option<Instant>,
    down_for_good: bool,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            reboot_time: Duration::from_secs(5),
            failing: Vec::new(),
            hang: false,
            marker: false,
            down_until: None,
            down_for_good: false,
        }
    }
}

impl Lifecycle {
    pub fn annotations(&mut self, annotations: &BTreeMap<String, String>) {
        self.failing = annotations
            .get(HOOK_FAIL)
            .map(|v| {
                v.split(',')
                    .filter_map(|h| match h.trim() {
                        "preInstall" => Some(HookName::PreInstall),
                        "preReboot" => Some(HookName::PreReboot),
                        "postInstall" => Some(HookName::PostInstall),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        self.hang = annotations.get(REBOOT_HANG).is_some_and(|v| v == "true");
    }

    pub fn run_hook(&self, hook: HookName) -> HookRun {
        let fail = self.failing.contains(&hook);
        HookRun {
            hook,
            exit_code: Some(if fail { 1 } else { 0 }),
            succeeded: !fail,
            output: if fail {
                format!("simulated failure ({HOOK_FAIL})")
            } else {
                format!("simulated {hook} hook")
            },
        }
    }

    pub fn mark(&mut self) {
        self.marker = true;
        self.down_until = None;
    }

    /// The marker survives until the machine boots.
    pub fn marked(&self) -> bool {
        self.marker && !self.booted()
    }

    fn booted(&self) -> bool {
        self.down_until.is_some_and(|t| Instant::now() >= t)
    }

    pub fn reboot(&mut self) {
        if self.hang {
            self.down_for_good = true;
        } else {
            self.down_until = Some(Instant::now() + self.reboot_time);
        }
    }

    /// Whether the machine is up (a finished reboot has cleared the marker).
    pub fn is_up(&self) -> bool {
        !self.down_for_good && self.down_until.is_none_or(|t| Instant::now() >= t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reboot_takes_the_machine_down_then_clears_the_marker() {
        let mut l = Lifecycle {
            reboot_time: Duration::from_millis(30),
            ..Default::default()
        };
        l.mark();
        l.reboot();
        assert!(!l.is_up());
        assert!(l.marked());
        std::thread::sleep(Duration::from_millis(40));
        assert!(l.is_up());
        assert!(!l.marked());
    }

    #[test]
    fn a_hanging_machine_never_comes_back_and_hooks_fail_on_demand() {
        let mut l = Lifecycle::default();
        l.annotations(&BTreeMap::from([
            (REBOOT_HANG.to_string(), "true".to_string()),
            (HOOK_FAIL.to_string(), "preInstall, postInstall".to_string()),
        ]));
        l.mark();
        l.reboot();
        assert!(!l.is_up());
        assert!(!l.run_hook(HookName::PreInstall).succeeded);
        assert!(l.run_hook(HookName::PreReboot).succeeded);
        assert!(!l.run_hook(HookName::PostInstall).succeeded);
    }
}
