//! Profile resolution: environment defaults ⊕ preferences → the effective configuration, with a
//! stable hash. Pure; the profile controller publishes the result and the VM controller hands it to
//! guests.

use sha2::{Digest, Sha256};

use crate::api::{
    BackupFrequency, BackupSchedule, ConfigurationProfileSpec, EffectiveAntimalware,
    EffectiveBackup, EffectiveChangeTracking, EffectiveConfiguration, EffectiveSecurityBaseline,
    EffectiveServices, EffectiveTimeSync, EffectiveToggle, EffectiveUpdateManagement, Environment,
    RebootSetting, default_classifications,
};

/// Backups run daily at 02:00 and are kept six months: the seed's best practice.
pub const DEFAULT_BACKUP_RETENTION_DAYS: i32 = 180;
pub const DEFAULT_BACKUP_TIME: &str = "02:00";
pub const DEFAULT_SCAN_TIME: &str = "03:00";
pub const DEFAULT_ASSESSMENT_INTERVAL: &str = "24h";

/// Resolve a profile spec into the configuration every VM using it receives.
pub fn resolve(spec: &ConfigurationProfileSpec) -> EffectiveConfiguration {
    let prefs = &spec.preferences;
    let production = spec.environment == Environment::Production;

    let um = prefs.update_management.clone().unwrap_or_default();
    let mut classifications = um.classifications.unwrap_or_else(default_classifications);
    classifications.sort();
    classifications.dedup();
    let update_management = EffectiveUpdateManagement {
        enabled: um.enabled.unwrap_or(true),
        classifications,
        reboot_setting: Some(um.reboot_setting.unwrap_or(RebootSetting::IfRequired)),
        assessment_interval: um
            .assessment_interval
            .unwrap_or_else(|| DEFAULT_ASSESSMENT_INTERVAL.into()),
        maintenance_window: um.maintenance_window.map(|mut w| {
            w.days_of_week.sort();
            w.days_of_week.dedup();
            w
        }),
        hotpatch: um.hotpatch.unwrap_or(true),
        hooks: um.hooks.filter(|h| !h.is_empty()),
        snapshots: {
            let mut s = um.snapshots.unwrap_or_default();
            s.sort();
            s.dedup();
            s
        },
        approval: um.approval.filter(|a| !a.is_empty()),
    };

    let bp = prefs.backup.clone().unwrap_or_default();
    // DevTest never backs up (admission rejects enabling it; resolution agrees).
    let backup = EffectiveBackup {
        enabled: production && bp.enabled.unwrap_or(true),
        retention_days: bp.retention_days.unwrap_or(DEFAULT_BACKUP_RETENTION_DAYS),
        schedule: Some(bp.schedule.map_or_else(
            || BackupSchedule {
                frequency: BackupFrequency::Daily,
                days_of_week: Vec::new(),
                time: DEFAULT_BACKUP_TIME.into(),
            },
            |mut s| {
                s.days_of_week.sort();
                s.days_of_week.dedup();
                s
            },
        )),
    };

    let monitoring = EffectiveToggle {
        enabled: prefs
            .monitoring
            .as_ref()
            .and_then(|m| m.enabled)
            .unwrap_or(true),
    };

    let am = prefs.antimalware.clone().unwrap_or_default();
    let antimalware = EffectiveAntimalware {
        enabled: am.enabled.unwrap_or(true),
        scan_time: am.scan_time.unwrap_or_else(|| DEFAULT_SCAN_TIME.into()),
        exclusions: sorted(am.exclusions),
    };

    let sb = prefs.security_baseline.clone().unwrap_or_default();
    let security_baseline = EffectiveSecurityBaseline {
        enabled: sb.enabled.unwrap_or(true),
        exempt_rules: sorted(sb.exempt_rules),
    };

    let ct = prefs.change_tracking.clone().unwrap_or_default();
    let change_tracking = EffectiveChangeTracking {
        enabled: ct.enabled.unwrap_or(true),
        tracked_files: sorted(ct.tracked_files),
    };

    let ts = prefs.time_sync.clone().unwrap_or_default();
    let time_sync = EffectiveTimeSync {
        enabled: ts.enabled.unwrap_or(true),
        servers: sorted(ts.servers),
    };

    let mut services = EffectiveServices {
        update_management,
        backup,
        monitoring,
        antimalware,
        security_baseline,
        change_tracking,
        time_sync,
    };
    blank_disabled(&mut services);
    EffectiveConfiguration {
        hash: hash(&services),
        environment: Some(spec.environment),
        services,
    }
}

/// A disabled service carries no settings, so settings of a service that is off never change the hash.
fn blank_disabled(s: &mut EffectiveServices) {
    if !s.update_management.enabled {
        s.update_management = EffectiveUpdateManagement::default();
    }
    if !s.backup.enabled {
        s.backup = EffectiveBackup::default();
    }
    if !s.antimalware.enabled {
        s.antimalware = EffectiveAntimalware::default();
    }
    if !s.security_baseline.enabled {
        s.security_baseline = EffectiveSecurityBaseline::default();
    }
    if !s.change_tracking.enabled {
        s.change_tracking = EffectiveChangeTracking::default();
    }
    if !s.time_sync.enabled {
        s.time_sync = EffectiveTimeSync::default();
    }
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v.dedup();
    v
}

/// The first 16 hex digits of the SHA-256 of the services' canonical JSON (struct fields in
/// declaration order, sets sorted): equal configurations hash equal, on every platform and release.
pub fn hash(services: &EffectiveServices) -> String {
    let json = serde_json::to_vec(services).unwrap_or_default();
    let digest = Sha256::digest(&json);
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// The names of the best-practice services, as the guest reports them.
pub const SERVICE_NAMES: [&str; 7] = [
    "updateManagement",
    "backup",
    "monitoring",
    "antimalware",
    "securityBaseline",
    "changeTracking",
    "timeSync",
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::*;
    use proptest::prelude::*;

    fn spec(env: Environment) -> ConfigurationProfileSpec {
        ConfigurationProfileSpec::with_defaults(env)
    }

    #[test]
    fn production_defaults_are_the_seed_best_practice() {
        let c = resolve(&spec(Environment::Production));
        let s = &c.services;
        assert!(s.backup.enabled);
        assert_eq!(s.backup.retention_days, 180);
        let sched = s.backup.schedule.as_ref().expect("schedule");
        assert_eq!(sched.frequency, BackupFrequency::Daily);
        assert_eq!(sched.time, "02:00");
        for on in [
            s.update_management.enabled,
            s.monitoring.enabled,
            s.antimalware.enabled,
            s.security_baseline.enabled,
            s.change_tracking.enabled,
            s.time_sync.enabled,
        ] {
            assert!(on);
        }
        assert_eq!(
            s.update_management.classifications,
            vec![Classification::Critical, Classification::Security]
        );
        assert_eq!(s.update_management.assessment_interval, "24h");
        assert_eq!(c.hash.len(), 16);
        assert_eq!(c.environment, Some(Environment::Production));
    }

    #[test]
    fn devtest_never_backs_up_even_if_a_preference_says_so() {
        let mut sp = spec(Environment::DevTest);
        sp.preferences.backup = Some(BackupPreferences {
            enabled: Some(true),
            retention_days: Some(30),
            schedule: None,
        });
        let c = resolve(&sp);
        assert!(!c.services.backup.enabled);
        assert_eq!(c.services.backup, EffectiveBackup::default());
        assert!(c.services.monitoring.enabled);
        assert_ne!(c.hash, resolve(&spec(Environment::Production)).hash);
    }

    #[test]
    fn preferences_override_defaults() {
        let mut sp = spec(Environment::Production);
        sp.preferences.backup = Some(BackupPreferences {
            enabled: None,
            retention_days: Some(30),
            schedule: Some(BackupSchedule {
                frequency: BackupFrequency::Weekly,
                days_of_week: vec![DayOfWeek::Sunday, DayOfWeek::Monday],
                time: "22:30".into(),
            }),
        });
        sp.preferences.monitoring = Some(ServiceToggle {
            enabled: Some(false),
        });
        sp.preferences.time_sync = Some(TimeSyncPreferences {
            enabled: None,
            servers: vec!["b.example".into(), "a.example".into()],
        });
        let c = resolve(&sp);
        assert_eq!(c.services.backup.retention_days, 30);
        let sched = c.services.backup.schedule.expect("schedule");
        assert_eq!(
            sched.days_of_week,
            vec![DayOfWeek::Monday, DayOfWeek::Sunday]
        );
        assert!(!c.services.monitoring.enabled);
        assert_eq!(c.services.time_sync.servers, vec!["a.example", "b.example"]);
    }

    #[test]
    fn settings_of_a_disabled_service_do_not_change_the_hash() {
        let mut a = spec(Environment::Production);
        a.preferences.antimalware = Some(AntimalwarePreferences {
            enabled: Some(false),
            scan_time: Some("01:00".into()),
            exclusions: vec![],
        });
        let mut b = a.clone();
        b.preferences.antimalware = Some(AntimalwarePreferences {
            enabled: Some(false),
            scan_time: Some("05:00".into()),
            exclusions: vec!["/tmp".into()],
        });
        assert_eq!(resolve(&a).hash, resolve(&b).hash);
    }

    #[test]
    fn the_hash_is_stable_across_releases() {
        // A changed hash re-configures every VM of every profile: it must only change on purpose.
        assert_eq!(
            resolve(&spec(Environment::Production)).hash,
            "80b23682ff7308e4"
        );
    }

    fn arb_servers() -> impl Strategy<Value = Vec<String>> {
        proptest::collection::vec("[a-c]{1,2}\\.example", 0..5)
    }

    proptest! {
        #[test]
        fn set_order_and_duplicates_never_change_the_hash(servers in arb_servers(), files in proptest::collection::vec("/[a-c]{1,3}", 0..5)) {
            let mut a = spec(Environment::Production);
            a.preferences.time_sync = Some(TimeSyncPreferences { enabled: None, servers: servers.clone() });
            a.preferences.change_tracking = Some(ChangeTrackingPreferences { enabled: None, tracked_files: files.clone() });
            let mut b = a.clone();
            let mut rs = servers.clone(); rs.reverse(); rs.extend(servers.iter().take(1).cloned());
            let mut rf = files.clone(); rf.reverse();
            b.preferences.time_sync = Some(TimeSyncPreferences { enabled: None, servers: rs });
            b.preferences.change_tracking = Some(ChangeTrackingPreferences { enabled: None, tracked_files: rf });
            prop_assert_eq!(resolve(&a), resolve(&b));
        }

        #[test]
        fn different_retention_means_different_hash(d1 in 7i32..3650, d2 in 7i32..3650) {
            let mk = |d| {
                let mut s = spec(Environment::Production);
                s.preferences.backup = Some(BackupPreferences { enabled: None, retention_days: Some(d), schedule: None });
                resolve(&s).hash
            };
            prop_assert_eq!(mk(d1) == mk(d2), d1 == d2);
        }
    }
}
