//! `automend sim`: simulated guests for every VirtualMachine of a namespace, each speaking the
//! guest protocol through the API with its VM's own identity (a TokenRequest token of the VM's
//! guest ServiceAccount). Machines are kept in memory.
//!
//! Controls, set as annotations on a VirtualMachine (so `kubectl annotate` drives them):
//! - `sim.automend.io/drift`: drift to inject, once per distinct value; `;`-separated items, each
//!   `service` (the service stops running) or `service.setting=value` (a setting changed; the value
//!   is JSON or a plain string), e.g. `monitoring` or `timeSync.servers=["rogue.example"]`.
//! - `sim.automend.io/fail-remediation: "true"`: applying does not correct injected drift.
//! - `sim.automend.io/power: "off"`: the VM stops (no heartbeat, no reports); `"on"` starts it.
//! - `sim.automend.io/patches`: the updates available, `name=version:Classification,...`, taken
//!   once per distinct value, for packages installed at 1.0.0 unless installed already
//!   (default: a few of each classification, varying by VM).
//! - `sim.automend.io/install-fail: "true"`: every package installation fails.
//! - `sim.automend.io/unhealthy: "true"`: the guest reports itself unhealthy (a failing health
//!   check), e.g. to show a bad patch halting a rollout.
//! - `sim.automend.io/hook-fail`, `sim.automend.io/reboot-hang`: see `lifecycle`. Reboots keep a
//!   machine down for `--reboot-time`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tracing::{info, warn};

use super::Backend;

mod enrolled;
mod fleet;
mod lifecycle;
mod packages;
use crate::api::{EffectiveConfiguration, GuestOs, PinnedPackage, ServiceObservation};
use crate::logic::resolve::SERVICE_NAMES;
pub use enrolled::run as run_enrolled;
pub use fleet::{SimSettings, guest_client, request_token, run};
pub use lifecycle::{HOOK_FAIL, REBOOT_HANG};
pub use packages::parse_patches;
use packages::{Repo, default_patches};

/// The simulator's fleet watch is re-established after this much silence.
const GUEST_WATCH_IDLE: Duration = super::WATCH_IDLE;

pub const DRIFT: &str = "sim.automend.io/drift";
pub const FAIL_REMEDIATION: &str = "sim.automend.io/fail-remediation";
pub const POWER: &str = "sim.automend.io/power";
pub const PATCHES: &str = "sim.automend.io/patches";
pub const INSTALL_FAIL: &str = "sim.automend.io/install-fail";
pub const UNHEALTHY: &str = "sim.automend.io/unhealthy";

/// Counters per simulated VM, for tests and the demo.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuestStats {
    /// Configurations applied (onboarding, profile changes and remediation attempts).
    pub applies: u64,
    /// Drift items injected.
    pub injected: u64,
    /// Assessments run.
    pub assessments: u64,
    /// Installations (and rollbacks) run.
    pub installs: u64,
    /// Reboots started.
    pub reboots: u64,
    /// TokenRequests made for the guest (one at the start, one per renewal).
    pub token_requests: u64,
}

pub type Stats = Arc<Mutex<HashMap<String, GuestStats>>>;

/// An in-memory machine.
pub struct SimBackend {
    name: String,
    os: GuestOs,
    /// Service settings in place, as JSON objects (absent until first applied).
    actual: BTreeMap<String, Value>,
    stopped: BTreeSet<String>,
    last_drift: Option<String>,
    last_patches: Option<String>,
    /// Why the last `sim.automend.io/patches` annotation was refused (a guest problem).
    patches_problem: Option<String>,
    fail_remediation: bool,
    powered_on: bool,
    /// The machine's repository: every version offered, with when it was published.
    repo: Repo,
    /// Package versions in place.
    installed: BTreeMap<String, String>,
    fail_install: bool,
    unhealthy: bool,
    stats: Stats,
    lifecycle: lifecycle::Lifecycle,
}

impl SimBackend {
    pub fn new(name: &str, linux: bool, stats: Stats) -> Self {
        SimBackend {
            name: name.into(),
            os: if linux {
                GuestOs {
                    id: "ubuntu".into(),
                    version: "24.04".into(),
                    kernel: Some("6.8.0-sim".into()),
                }
            } else {
                GuestOs {
                    id: "windows".into(),
                    version: "2022".into(),
                    kernel: None,
                }
            },
            actual: BTreeMap::new(),
            stopped: BTreeSet::new(),
            last_drift: None,
            last_patches: None,
            patches_problem: None,
            fail_remediation: false,
            powered_on: true,
            installed: default_patches(name)
                .into_iter()
                .filter_map(|p| p.installed_version.map(|v| (p.name, v)))
                .collect(),
            repo: Repo(default_patches(name)),
            fail_install: false,
            unhealthy: false,
            stats,
            lifecycle: lifecycle::Lifecycle::default(),
        }
    }

    /// How long a reboot keeps the machine down.
    pub fn with_reboot_time(mut self, d: Duration) -> Self {
        self.lifecycle.reboot_time = d;
        self
    }

    fn bump(&self, f: impl FnOnce(&mut GuestStats)) {
        if let Ok(mut s) = self.stats.lock() {
            f(s.entry(self.name.clone()).or_default());
        }
    }

    /// Inject one drift item; errors name what is wrong.
    pub fn inject(&mut self, item: &str) -> Result<(), String> {
        let item = item.trim();
        let (path, value) = match item.split_once('=') {
            Some((p, v)) => (p.trim(), Some(v.trim())),
            None => (item, None),
        };
        let (service, setting) = match path.split_once('.') {
            Some((s, k)) => (s, Some(k)),
            None => (path, None),
        };
        if !SERVICE_NAMES.contains(&service) {
            return Err(format!(
                "unknown service {service:?}; one of {}",
                SERVICE_NAMES.join(", ")
            ));
        }
        match (setting, value) {
            (None, None) => {
                self.stopped.insert(service.into());
            }
            (Some(k), Some(v)) => {
                let v = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.into()));
                let obj = self
                    .actual
                    .entry(service.into())
                    .or_insert_with(|| Value::Object(Default::default()));
                if let Value::Object(m) = obj {
                    m.insert(k.into(), v);
                }
            }
            _ => {
                return Err(format!(
                    "{item:?}: use \"service\" or \"service.setting=value\""
                ));
            }
        }
        self.bump(|s| s.injected += 1);
        Ok(())
    }
}

fn service_json(config: &EffectiveConfiguration) -> BTreeMap<String, Value> {
    match serde_json::to_value(&config.services) {
        Ok(Value::Object(m)) => m.into_iter().collect(),
        _ => BTreeMap::new(),
    }
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl Backend for SimBackend {
    fn os(&self) -> GuestOs {
        self.os.clone()
    }

    fn problems(&self) -> Vec<String> {
        self.patches_problem.iter().cloned().collect()
    }

    async fn apply(&mut self, config: &EffectiveConfiguration) -> Result<(), String> {
        self.bump(|s| s.applies += 1);
        let drifted = !self.stopped.is_empty() || !self.actual.is_empty();
        if self.fail_remediation && drifted {
            return Err(
                "simulated failure: the change did not take (sim.automend.io/fail-remediation)"
                    .into(),
            );
        }
        self.actual = service_json(config);
        self.stopped.clear();
        Ok(())
    }

    async fn observe(&mut self, config: &EffectiveConfiguration) -> Vec<ServiceObservation> {
        let desired = service_json(config);
        SERVICE_NAMES
            .iter()
            .map(|name| {
                let want = desired.get(*name).cloned().unwrap_or(Value::Null);
                let mut differences = Vec::new();
                match self.actual.get(*name) {
                    None => differences.push("not configured".to_string()),
                    Some(have) => {
                        if let (Value::Object(w), Value::Object(h)) = (&want, have) {
                            for (k, wv) in w {
                                let hv = h.get(k).unwrap_or(&Value::Null);
                                if hv != wv {
                                    differences.push(format!(
                                        "{k}: want {}, have {}",
                                        show(wv),
                                        show(hv)
                                    ));
                                }
                            }
                        }
                    }
                }
                let enabled = want
                    .get("enabled")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                if enabled && self.stopped.contains(*name) {
                    differences.push("running: want true, have false".into());
                }
                ServiceObservation {
                    name: name.to_string(),
                    compliant: differences.is_empty(),
                    differences,
                }
            })
            .collect()
    }

    async fn assess(
        &mut self,
        snapshot: Option<&crate::api::ReleaseSnapshot>,
    ) -> Result<super::Assessed, String> {
        self.bump(|s| s.assessments += 1);
        let at = snapshot
            .map(|s| packages::snapshot_time(&s.timestamp))
            .transpose()?;
        Ok(super::Assessed {
            packages: self.repo.offered(&self.installed, at),
            reboot_pending: false,
        })
    }

    async fn installed_versions(&mut self, names: &[String]) -> Result<Vec<PinnedPackage>, String> {
        Ok(names
            .iter()
            .filter_map(|n| {
                self.installed.get(n).map(|v| PinnedPackage {
                    name: n.clone(),
                    version: v.clone(),
                    classification: None,
                })
            })
            .collect())
    }

    async fn install(
        &mut self,
        packages: &[PinnedPackage],
        remove: &[String],
        snapshot: Option<&crate::api::ReleaseSnapshot>,
    ) -> super::Installed {
        self.bump(|s| s.installs += 1);
        let mut out = super::Installed::default();
        let at = match snapshot
            .map(|s| packages::snapshot_time(&s.timestamp))
            .transpose()
        {
            Ok(at) => at,
            Err(e) => {
                out.failed = packages.to_vec();
                out.error = Some(e);
                return out;
            }
        };
        let mut errors = Vec::new();
        for p in packages {
            if self.fail_install {
                out.failed.push(p.clone());
                continue;
            }
            if let Err(u) = self.repo.installable(p, at, snapshot) {
                errors.push(format!(
                    "{}={}: PinnedVersionUnavailable: not offered by {}",
                    p.name, p.version, u.repositories
                ));
                out.failed.push(p.clone());
                out.unavailable.push(u);
                continue;
            }
            if let Some(v) = self.installed.insert(p.name.clone(), p.version.clone()) {
                out.previous_versions.push(PinnedPackage {
                    name: p.name.clone(),
                    version: v,
                    classification: p.classification,
                });
            }
            out.installed.push(p.clone());
            out.reboot_required |=
                p.name.starts_with("linux-image") || p.name.starts_with("kernel");
        }
        for name in remove {
            self.installed.remove(name);
        }
        if self.fail_install && !packages.is_empty() {
            errors.push(
                "simulated failure: the package manager failed (sim.automend.io/install-fail)"
                    .into(),
            );
        }
        out.error = (!errors.is_empty()).then(|| errors.join("; "));
        out
    }

    fn annotations(&mut self, annotations: &BTreeMap<String, String>) {
        self.fail_install = annotations.get(INSTALL_FAIL).is_some_and(|v| v == "true");
        self.unhealthy = annotations.get(UNHEALTHY).is_some_and(|v| v == "true");
        if let Some(spec) = annotations.get(PATCHES)
            && self.last_patches.as_ref() != Some(spec)
        {
            self.last_patches = Some(spec.clone());
            match parse_patches(spec) {
                Ok(offered) => {
                    self.patches_problem = None;
                    // Updates are offered for installed packages: a package the machine lacks is
                    // taken to be installed at the baseline 1.0.0.
                    for p in &offered {
                        self.installed
                            .entry(p.name.clone())
                            .or_insert_with(|| "1.0.0".into());
                    }
                    self.repo = Repo(offered);
                }
                Err(e) => {
                    warn!(vm = %self.name, error = %e, "ignoring {PATCHES}");
                    self.patches_problem = Some(format!("annotation {PATCHES} ignored: {e}"));
                }
            }
        }
        self.fail_remediation = annotations
            .get(FAIL_REMEDIATION)
            .is_some_and(|v| v == "true");
        let on = annotations.get(POWER).is_none_or(|v| v != "off");
        if on != self.powered_on {
            info!(vm = %self.name, on, "simulated power change");
        }
        self.powered_on = on;
        self.lifecycle.annotations(annotations);
        let drift = annotations.get(DRIFT).cloned();
        if drift != self.last_drift {
            if let Some(d) = &drift {
                // Drift needs a configured machine; before that there is nothing to drift from.
                if !self.actual.is_empty() {
                    for item in d.split(';').filter(|i| !i.trim().is_empty()) {
                        match self.inject(item) {
                            Ok(()) => info!(vm = %self.name, drift = item, "injected drift"),
                            Err(e) => warn!(vm = %self.name, error = %e, "ignoring {DRIFT}"),
                        }
                    }
                } else {
                    return;
                }
            }
            self.last_drift = drift;
        }
    }

    fn powered_on(&self) -> bool {
        self.powered_on && self.lifecycle.is_up()
    }

    fn healthy(&self) -> bool {
        !self.unhealthy
    }

    async fn run_hook(
        &mut self,
        hook: crate::api::HookName,
        _spec: &crate::api::Hook,
        _env: Vec<(String, String)>,
    ) -> crate::api::HookRun {
        self.lifecycle.run_hook(hook)
    }

    fn mark_boot(&mut self, _what: &str) -> Result<(), String> {
        self.lifecycle.mark();
        Ok(())
    }

    fn boot_marked(&self) -> bool {
        self.lifecycle.marked()
    }

    async fn reboot(&mut self) -> Result<(), String> {
        info!(vm = %self.name, "simulated reboot");
        self.lifecycle.reboot();
        self.bump(|s| s.reboots += 1);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ConfigurationProfileSpec, Environment};
    use crate::logic::resolve::resolve;

    fn config() -> EffectiveConfiguration {
        resolve(&ConfigurationProfileSpec::with_defaults(
            Environment::Production,
        ))
    }

    fn differences(obs: &[ServiceObservation], name: &str) -> Vec<String> {
        obs.iter()
            .find(|o| o.name == name)
            .map(|o| o.differences.clone())
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn observation_reports_the_exact_difference_and_apply_fixes_it() {
        let stats = Stats::default();
        let mut b = SimBackend::new("vm", true, stats.clone());
        let c = config();
        let before = b.observe(&c).await;
        assert!(
            before
                .iter()
                .all(|o| !o.compliant && o.differences == vec!["not configured"])
        );
        b.apply(&c).await.expect("apply");
        assert!(b.observe(&c).await.iter().all(|o| o.compliant));

        b.inject("monitoring").expect("inject");
        b.inject(r#"timeSync.servers=["rogue.example"]"#)
            .expect("inject");
        b.inject("backup.retentionDays=7").expect("inject");
        let obs = b.observe(&c).await;
        assert_eq!(
            differences(&obs, "monitoring"),
            vec!["running: want true, have false"]
        );
        assert_eq!(
            differences(&obs, "timeSync"),
            vec![r#"servers: want [], have ["rogue.example"]"#]
        );
        assert_eq!(
            differences(&obs, "backup"),
            vec!["retentionDays: want 180, have 7"]
        );
        assert!(obs.iter().filter(|o| o.compliant).count() == 4);

        b.apply(&c).await.expect("re-apply");
        assert!(b.observe(&c).await.iter().all(|o| o.compliant));
        let s = stats
            .lock()
            .expect("stats")
            .get("vm")
            .cloned()
            .expect("counted");
        assert_eq!(
            s,
            GuestStats {
                applies: 2,
                injected: 3,
                assessments: 0,
                installs: 0,
                reboots: 0,
                token_requests: 0,
            }
        );
    }

    #[tokio::test]
    async fn failing_remediation_keeps_the_drift() {
        let mut b = SimBackend::new("vm", true, Stats::default());
        let c = config();
        b.apply(&c).await.expect("onboarding works");
        b.annotations(&BTreeMap::from([
            (FAIL_REMEDIATION.to_string(), "true".to_string()),
            (DRIFT.to_string(), "antimalware".to_string()),
        ]));
        assert!(b.apply(&c).await.is_err());
        assert!(
            !b.observe(&c)
                .await
                .iter()
                .find(|o| o.name == "antimalware")
                .expect("obs")
                .compliant
        );
        // The same annotation value is injected once.
        b.annotations(&BTreeMap::from([(
            DRIFT.to_string(),
            "antimalware".to_string(),
        )]));
        assert!(b.apply(&c).await.is_ok());
        assert!(b.observe(&c).await.iter().all(|o| o.compliant));
    }

    #[test]
    fn bad_drift_items_are_named() {
        let mut b = SimBackend::new("vm", true, Stats::default());
        assert!(
            b.inject("nosuch")
                .unwrap_err()
                .contains("unknown service \"nosuch\"")
        );
        assert!(
            b.inject("backup=1")
                .unwrap_err()
                .contains("service.setting=value")
        );
    }

    #[test]
    fn power_follows_the_annotation() {
        let mut b = SimBackend::new("vm", false, Stats::default());
        assert!(b.powered_on());
        b.annotations(&BTreeMap::from([(POWER.to_string(), "off".to_string())]));
        assert!(!b.powered_on());
        b.annotations(&BTreeMap::new());
        assert!(b.powered_on());
    }
}

#[cfg(test)]
mod patch_tests {
    use super::*;
    use crate::api::Classification;

    #[test]
    fn patches_annotation_parses_and_errors_name_the_item() {
        let epoch = parse_patches("vim=2:9.1.0016-1:Other, openssl=3.0.2-1:Security")
            .expect("a Debian epoch parses");
        assert_eq!(epoch[0].version, "2:9.1.0016-1");
        assert_eq!(epoch.len(), 2);
        let p = parse_patches("openssl=3.0.2-1:Security, vim=9.1:Other").expect("parses");
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].classification, Classification::Security);
        assert!(
            parse_patches("openssl=3:Urgent")
                .unwrap_err()
                .contains("\"Urgent\" is not Critical, Security or Other")
        );
        assert!(
            parse_patches("openssl")
                .unwrap_err()
                .contains("name=version:Classification")
        );
        assert!(!default_patches("vm-a").is_empty());
        assert_eq!(default_patches("vm-a"), default_patches("vm-a"));
    }
}

#[cfg(test)]
mod install_tests {
    use super::*;

    #[tokio::test]
    async fn install_records_previous_versions_and_rollback_restores_them() {
        let mut b = SimBackend::new("vm", true, Stats::default());
        b.annotations(&BTreeMap::from([(
            PATCHES.to_string(),
            "openssl=3.0.2-2:Security".to_string(),
        )]));
        b.installed.insert("openssl".into(), "3.0.2-1".into());
        let pin = |n: &str, v: &str| PinnedPackage {
            name: n.into(),
            version: v.into(),
            classification: None,
        };
        let out = b
            .install(
                &[pin("openssl", "3.0.2-2"), pin("newpkg", "1.0")],
                &[],
                None,
            )
            .await;
        assert_eq!(out.installed.len(), 2);
        assert_eq!(out.previous_versions, vec![pin("openssl", "3.0.2-1")]);
        assert!(
            b.assess(None).await.expect("assess").packages.is_empty(),
            "installed updates are no longer available"
        );
        // Rollback: previous versions back, packages that were absent removed.
        let back = b
            .install(&out.previous_versions, &["newpkg".to_string()], None)
            .await;
        assert!(back.failed.is_empty());
        assert_eq!(
            b.installed.get("openssl").map(String::as_str),
            Some("3.0.2-1")
        );
        assert!(!b.installed.contains_key("newpkg"));
        b.annotations(&BTreeMap::from([(
            INSTALL_FAIL.to_string(),
            "true".to_string(),
        )]));
        let failed = b.install(&[pin("openssl", "3.0.2-2")], &[], None).await;
        assert_eq!(failed.failed.len(), 1);
        // A newer update offered, an intermediate version installed: the next assessment reports
        // the version installed now, not the one from before the install.
        b.annotations(&BTreeMap::from([(
            PATCHES.to_string(),
            "openssl=3.0.2-4:Security".to_string(),
        )]));
        b.fail_install = false;
        b.install(&[pin("openssl", "3.0.2-3")], &[], None).await;
        let seen = b.assess(None).await.expect("assess").packages;
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].installed_version.as_deref(), Some("3.0.2-3"));
        // A refused annotation is a guest problem, not a silent fallback.
        b.annotations(&BTreeMap::from([(
            PATCHES.to_string(),
            "openssl=3.0.2-4".to_string(),
        )]));
        assert!(
            b.problems()
                .iter()
                .any(|p| p.contains("sim.automend.io/patches")),
            "{:?}",
            b.problems()
        );
        assert!(
            failed
                .error
                .as_deref()
                .is_some_and(|e| e.contains("install-fail"))
        );
    }
}
