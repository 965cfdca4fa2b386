//! The Linux agent against real apt, dpkg and systemctl on a sandboxed Debian root: assessment by
//! pocket, exact-version installation, rollback, failures reported; services applied, observed,
//! drifted behind its back and re-applied. No cluster needed.

#[path = "fixtures/guestroot.rs"]
mod guestroot;

use automend::agent::Linux;
use automend::agent::services::HostSettings;
use automend::api::{
    Classification, EffectiveConfiguration, PatchMode, PinnedPackage, VirtualMachine,
};
use automend::guest::Backend;
use guestroot::{GuestRoot, put};

fn backend(g: &GuestRoot) -> Linux {
    Linux::new(
        &g.root,
        &g.state,
        None,
        HostSettings::default(),
        automend::clock::Clock::real(),
    )
}

fn pin(name: &str, version: &str) -> PinnedPackage {
    PinnedPackage {
        name: name.into(),
        version: version.into(),
        classification: None,
    }
}

/// A root with libfoo 1.0 and tool 2.0 installed; the repository offers libfoo 1.1 (stable),
/// libfoo 1.2 (stable-security), tool 2.1 (stable) and newdep 0.1 (stable).
fn patched_root() -> GuestRoot {
    let g = GuestRoot::debian();
    g.build("libfoo", "1.0", "stable");
    g.build("libfoo", "1.1", "stable");
    g.build("libfoo", "1.2", "stable-security");
    g.build("tool", "2.0", "stable");
    g.build("tool", "2.1", "stable");
    g.build("newdep", "0.1", "stable");
    g.index();
    g.dpkg_install(&[("libfoo", "1.0", "stable"), ("tool", "2.0", "stable")]);
    g
}

#[tokio::test]
async fn apt_assessment_counts_by_pocket_and_installs_exactly_the_pinned_versions() {
    let g = patched_root();
    let mut b = backend(&g);
    assert!(b.problems().is_empty(), "{:?}", b.problems());
    assert_eq!(b.os().id, "debian");
    let found = b.assess(None).await.expect("assessment");
    let seen = guestroot::assessment_lines(&found);
    assert_eq!(seen, ["libfoo 1.0->1.2 Security", "tool 2.0->2.1 Other"]);
    let security = found
        .packages
        .iter()
        .filter(|p| {
            matches!(
                p.classification,
                Classification::Security | Classification::Critical
            )
        })
        .count();
    assert_eq!((security, found.packages.len() - security), (1, 1));
    assert!(!found.reboot_pending);
    // Assessment installs nothing.
    assert_eq!(g.versions(), ["libfoo 1.0", "tool 2.0"]);

    // The manifest pins libfoo 1.1 (not the newest) and leaves tool out (excluded): exactly that.
    let before = b
        .installed_versions(&["libfoo".into()])
        .await
        .expect("versions");
    assert_eq!(before, [pin("libfoo", "1.0")]);
    let out = b.install(&[pin("libfoo", "1.1")], &[], None).await;
    assert_eq!(out.installed, [pin("libfoo", "1.1")], "{:?}", out.error);
    assert!(out.failed.is_empty() && out.error.is_none());
    assert_eq!(g.versions(), ["libfoo 1.1", "tool 2.0"]);

    // Upgrading adds a package that was absent; the rollback returns to the recorded versions and
    // removes what was not there.
    let out = b
        .install(&[pin("libfoo", "1.2"), pin("newdep", "0.1")], &[], None)
        .await;
    assert_eq!(out.installed.len(), 2, "{:?}", out.error);
    assert_eq!(g.versions(), ["libfoo 1.2", "newdep 0.1", "tool 2.0"]);
    let out = b.install(&before, &["newdep".into()], None).await;
    assert_eq!(out.installed, [pin("libfoo", "1.0")], "{:?}", out.error);
    assert_eq!(g.versions(), ["libfoo 1.0", "tool 2.0"]);

    // A reboot asked for by a package is seen.
    put(
        &g.root,
        "/run/reboot-required",
        "*** System restart required ***\n",
        0o644,
    );
    assert!(b.assess(None).await.expect("assessment").reboot_pending);
}

#[tokio::test]
async fn apt_failures_are_reported_per_package_and_never_fatal() {
    let g = patched_root();
    let mut b = backend(&g);
    b.assess(None).await.expect("assessment");
    // One version that does not exist does not hold back the other package.
    let out = b
        .install(&[pin("libfoo", "9.9"), pin("tool", "2.1")], &[], None)
        .await;
    assert_eq!(out.installed, [pin("tool", "2.1")]);
    assert_eq!(out.failed, [pin("libfoo", "9.9")]);
    let e = out.error.expect("error");
    // Named before apt is asked: the version, the repository searched and what it offers.
    assert!(
        e.contains("libfoo=9.9: PinnedVersionUnavailable: not offered by file:")
            && e.contains("(offered: 1.2, 1.1, 1.0)"),
        "{e}"
    );
    assert_eq!(out.unavailable.len(), 1);
    assert_eq!(g.versions(), ["libfoo 1.0", "tool 2.1"]);

    // A repository that went away: the assessment fails naming the step and apt's words.
    std::fs::remove_dir_all(g.repo.join("dists/stable-security")).expect("rm");
    let e = b.assess(None).await.expect_err("assessment must fail");
    assert!(
        e.contains("refreshing the package lists") && e.contains("stable-security"),
        "{e}"
    );

    // No package manager to be found: every operation says so; the agent goes on.
    std::fs::remove_file(g.root.join("etc/os-release")).expect("rm");
    let mut b = backend(&g);
    assert!(
        b.problems().iter().any(|p| p.contains("os-release")),
        "{:?}",
        b.problems()
    );
    let e = b.assess(None).await.expect_err("no package manager");
    assert!(e.contains("--package-manager"), "{e}");
    let out = b.install(&[pin("tool", "2.0")], &[], None).await;
    assert_eq!(out.failed.len(), 1);
}

fn snapshot_at(served: &guestroot::Served, ts: &str) -> automend::api::ReleaseSnapshot {
    let repo = automend::api::SnapshotRepository {
        repository: format!("{}/repo", served.base),
        template: format!("{}/repo-snapshots/{{timestamp}}/", served.base),
    };
    automend::api::ReleaseSnapshot {
        timestamp: ts.into(),
        repositories: vec![automend::api::SnapshotUrl {
            url: repo.at(ts),
            repository: repo.repository,
        }],
    }
}

/// A real suite keeps one version of each package: when a newer security update is published,
/// the one a release pinned leaves the index. The release's snapshot still has it.
#[tokio::test]
async fn a_pinned_version_the_suite_replaced_installs_from_the_release_snapshot() {
    let g = GuestRoot::debian();
    g.build("libfoo", "1.0", "stable");
    g.build("libfoo", "1.1", "stable-security");
    g.build("tool", "2.0", "stable");
    g.index();
    g.dpkg_install(&[("libfoo", "1.0", "stable"), ("tool", "2.0", "stable")]);
    let served = g.serve();
    // The release froze at T1 with libfoo 1.1; then 1.2 replaced it in the security suite.
    g.freeze_snapshot("20261110T000000Z");
    g.build("libfoo", "1.2", "stable-security");
    g.drop_from_pool("libfoo", "1.1", "stable-security");
    g.index();
    g.freeze_snapshot("20261120T000000Z");
    let sources = g.read("/etc/apt/sources.list");
    let mut b = backend(&g);
    let now = b.assess(None).await.expect("assessment");
    assert_eq!(
        guestroot::assessment_lines(&now),
        ["libfoo 1.0->1.2 Security"]
    );
    let lists_before = g.snapshot();

    // Without a snapshot the pinned version is gone: reported per package, naming the repository.
    let out = b.install(&[pin("libfoo", "1.1")], &[], None).await;
    assert!(out.installed.is_empty(), "{:?}", out.installed);
    assert_eq!(out.failed, [pin("libfoo", "1.1")]);
    let u = &out.unavailable;
    assert_eq!(u.len(), 1, "{:?}", out.error);
    assert_eq!(
        (u[0].name.as_str(), u[0].version.as_str()),
        ("libfoo", "1.1")
    );
    assert!(
        u[0].repositories.contains(&format!("{}/repo", served.base)),
        "{:?}",
        u[0]
    );
    assert_eq!(u[0].offered, ["1.2", "1.0"]);
    let e = out.error.expect("error");
    assert!(e.contains("PinnedVersionUnavailable"), "{e}");
    assert_eq!(g.versions(), ["libfoo 1.0", "tool 2.0"]);

    // Against the release's snapshot: assessed and installed as frozen.
    let t1 = snapshot_at(&served, "20261110T000000Z");
    let then = b.assess(Some(&t1)).await.expect("snapshot assessment");
    assert_eq!(
        guestroot::assessment_lines(&then),
        ["libfoo 1.0->1.1 Security"]
    );
    let out = b.install(&[pin("libfoo", "1.1")], &[], Some(&t1)).await;
    assert_eq!(out.installed, [pin("libfoo", "1.1")], "{:?}", out.error);
    assert!(out.unavailable.is_empty() && out.error.is_none());
    assert_eq!(g.versions(), ["libfoo 1.1", "tool 2.0"]);

    // The machine's repository configuration and package lists were never touched.
    assert_eq!(g.read("/etc/apt/sources.list"), sources);
    let lists = |s: &[(String, Vec<u8>, u32)]| -> Vec<(String, Vec<u8>)> {
        s.iter()
            .filter(|(p, _, _)| p.contains("/etc/apt/") || p.contains("/var/lib/apt/lists/"))
            .map(|(p, c, _)| (p.clone(), c.clone()))
            .collect()
    };
    assert!(
        lists(&lists_before)
            .iter()
            .any(|(p, _)| p.ends_with("_Packages"))
    );
    assert_eq!(lists(&g.snapshot()), lists(&lists_before));

    // A snapshot that does not exist fails the assessment, naming it.
    let missing = snapshot_at(&served, "20200101T000000Z");
    let e = b
        .assess(Some(&missing))
        .await
        .expect_err("no such snapshot");
    assert!(e.contains("snapshot 20200101T000000Z"), "{e}");
}

fn production() -> EffectiveConfiguration {
    let spec = automend::api::ConfigurationProfileSpec::with_defaults(
        automend::api::Environment::Production,
    );
    let mut c = automend::logic::resolve::resolve(&spec);
    c.services.time_sync.servers = vec!["time1.example.com".into(), "time2.example.com".into()];
    c.services.change_tracking.tracked_files = vec!["/etc/hosts".into(), "/etc/motd".into()];
    c
}

fn platform_vm() -> VirtualMachine {
    let mut vm: VirtualMachine = serde_json::from_value(serde_json::json!({
        "apiVersion": "automend.io/v1alpha1", "kind": "VirtualMachine",
        "metadata": { "name": "web-1", "namespace": "x" },
        "spec": {
            "management": { "enabled": true },
            "os": { "type": "Linux", "image": { "publisher": "Debian", "offer": "debian-12", "sku": "12" } },
            "placement": { "region": "westeurope" },
            "patchSettings": { "patchMode": "AutomaticByPlatform" },
        },
    }))
    .expect("vm");
    vm.status = Some(automend::api::VirtualMachineStatus {
        patch_mode: Some(PatchMode::AutomaticByPlatform),
        ..Default::default()
    });
    vm
}

fn differences(obs: &[automend::api::ServiceObservation], name: &str) -> Vec<String> {
    obs.iter()
        .find(|o| o.name == name)
        .map(|o| o.differences.clone())
        .unwrap_or_else(|| panic!("no observation for {name}"))
}

#[tokio::test]
async fn services_are_applied_observed_and_drift_is_reported_exactly() {
    let g = GuestRoot::debian();
    let mut b = backend(&g);
    b.seen(&platform_vm());
    let config = production();

    // Before applying: every service reports what is missing, and observing changes nothing.
    let before = g.snapshot();
    let obs = b.observe(&config).await;
    assert_eq!(g.snapshot(), before, "observing changed the machine");
    let um = differences(&obs, "updateManagement");
    assert!(
        um.iter()
            .any(|d| d.contains("APT::Periodic::Unattended-Upgrade: want \"0\", have \"1\"")),
        "{um:?}"
    );
    assert!(
        differences(&obs, "backup")
            .iter()
            .any(|d| d == "/etc/systemd/system/automend-backup.timer: missing")
    );
    assert!(
        differences(&obs, "monitoring")
            .iter()
            .any(|d| d == "unit prometheus-node-exporter.service: want enabled, have disabled")
    );
    let sb = differences(&obs, "securityBaseline");
    assert!(
        sb.contains(
            &"sshd.X11Forwarding: want no, have yes (from /etc/ssh/sshd_config)".to_string()
        ),
        "{sb:?}"
    );
    assert!(
        sb.contains(&"file./etc/shadow: mode want 0640 or stricter, have 0644".to_string()),
        "{sb:?}"
    );
    assert!(
        sb.contains(&"sysctl.net.ipv4.ip_forward: want 0, not configured".to_string()),
        "{sb:?}"
    );
    assert!(differences(&obs, "changeTracking").is_empty());

    // Apply: everything compliant, with the real files and units.
    b.apply(&config).await.expect("apply");
    let obs = b.observe(&config).await;
    for o in &obs {
        assert!(o.compliant, "{}: {:?}", o.name, o.differences);
    }
    assert_eq!(g.is_enabled("automend-backup.timer"), "enabled");
    assert_eq!(g.is_enabled("automend-scan.timer"), "enabled");
    assert_eq!(g.is_enabled("prometheus-node-exporter.service"), "enabled");
    assert_eq!(g.is_enabled("systemd-timesyncd.service"), "enabled");
    assert!(
        g.read("/etc/systemd/system/automend-backup.service")
            .contains("AUTOMEND_BACKUP_RETENTION_DAYS=180")
    );
    assert!(
        g.read("/etc/systemd/timesyncd.conf.d/automend.conf")
            .contains("NTP=time1.example.com time2.example.com")
    );
    assert!(
        g.read("/etc/ssh/sshd_config.d/00-automend.conf")
            .contains("PermitRootLogin no")
    );
    assert!(
        g.read("/etc/ssh/sshd_config").contains("X11Forwarding yes"),
        "a later line sshd never reads is left as it was"
    );

    // Applying again changes nothing (idempotent).
    let applied = g.snapshot();
    b.apply(&config).await.expect("apply again");
    assert_eq!(g.snapshot(), applied);

    // Drift behind the agent's back: an earlier sshd line, a disabled timer, a sysctl override,
    // a widened permission, a local apt file turning unattended upgrades back on, a tracked file.
    let sshd = g.read("/etc/ssh/sshd_config");
    put(
        &g.root,
        "/etc/ssh/sshd_config",
        &format!("PermitRootLogin yes\n{sshd}"),
        0o600,
    );
    g.systemctl(&["disable", "automend-backup.timer"]);
    put(
        &g.root,
        "/etc/sysctl.conf",
        "net.ipv4.ip_forward=1\n",
        0o644,
    );
    put(
        &g.root,
        "/etc/apt/apt.conf.d/99zz-local",
        "APT::Periodic::Unattended-Upgrade \"1\";\n",
        0o644,
    );
    put(&g.root, "/etc/shadow", "root:*:19000:0:99999:7:::\n", 0o666);
    put(
        &g.root,
        "/etc/hosts",
        "127.0.0.1 localhost\n10.0.0.9 rogue\n",
        0o644,
    );
    let drifted = g.snapshot();
    let obs = b.observe(&config).await;
    let sb = differences(&obs, "securityBaseline");
    assert!(
        sb.contains(
            &"sshd.PermitRootLogin: want no, have yes (from /etc/ssh/sshd_config)".to_string()
        ),
        "{sb:?}"
    );
    assert!(
        sb.contains(
            &"sysctl.net.ipv4.ip_forward: want 0, have 1 (from /etc/sysctl.conf)".to_string()
        ),
        "{sb:?}"
    );
    assert!(
        sb.contains(&"file./etc/shadow: mode want 0640 or stricter, have 0666".to_string()),
        "{sb:?}"
    );
    assert_eq!(
        differences(&obs, "backup"),
        ["unit automend-backup.timer: want enabled, have disabled"]
    );
    assert_eq!(
        differences(&obs, "updateManagement"),
        ["APT::Periodic::Unattended-Upgrade: want \"0\", have \"1\""]
    );
    assert!(
        b.changes()
            .iter()
            .any(|c| c.ends_with("file /etc/hosts modified")),
        "{:?}",
        b.changes()
    );
    assert!(
        b.changes()
            .iter()
            .any(|c| c.ends_with("service automend-backup.timer disabled")),
        "{:?}",
        b.changes()
    );
    assert_eq!(g.snapshot(), drifted, "observing changed the machine");

    // Re-applied: sshd's overriding line and the sysctl one are commented out (kept), the timer
    // enabled, the mode tightened; the local apt file is reported, not edited.
    let e = b
        .apply(&config)
        .await
        .expect_err("the apt override is not edited");
    assert!(
        e.contains("updateManagement") && e.contains("overrides"),
        "{e}"
    );
    let obs = b.observe(&config).await;
    for o in obs.iter().filter(|o| o.name != "updateManagement") {
        assert!(o.compliant, "{}: {:?}", o.name, o.differences);
    }
    assert!(
        g.read("/etc/ssh/sshd_config")
            .starts_with("# automend: PermitRootLogin yes\n")
    );
    assert!(
        g.read("/etc/sysctl.conf")
            .contains("# automend: net.ipv4.ip_forward=1")
    );
    assert_eq!(g.is_enabled("automend-backup.timer"), "enabled");
    std::fs::remove_file(g.root.join("etc/apt/apt.conf.d/99zz-local")).expect("rm");
    assert!(differences(&b.observe(&config).await, "updateManagement").is_empty());
}

#[tokio::test]
async fn exemptions_disabled_services_and_missing_units_are_honoured_and_named() {
    let g = GuestRoot::debian();
    std::fs::remove_file(
        g.root
            .join("lib/systemd/system/prometheus-node-exporter.service"),
    )
    .expect("rm");
    let mut b = backend(&g);
    let mut config = production();
    config.services.security_baseline.exempt_rules =
        vec!["sshd.X11Forwarding".into(), "file./etc/shadow".into()];
    config.services.backup.enabled = false;
    config.services.change_tracking.tracked_files = vec!["/etc".into()];
    // ImageDefault: the image's own automatic-update setting is left alone.
    b.seen(&VirtualMachine {
        status: Some(automend::api::VirtualMachineStatus {
            patch_mode: Some(PatchMode::ImageDefault),
            ..Default::default()
        }),
        ..platform_vm()
    });
    let e = b.apply(&config).await.expect_err("the exporter is missing");
    assert!(
        e.contains("monitoring: systemctl enable prometheus-node-exporter.service failed"),
        "{e}"
    );
    let obs = b.observe(&config).await;
    assert_eq!(
        differences(&obs, "monitoring"),
        ["unit prometheus-node-exporter.service: not installed on this machine"]
    );
    assert!(
        differences(&obs, "securityBaseline").is_empty(),
        "{:?}",
        differences(&obs, "securityBaseline")
    );
    assert!(g.read("/etc/ssh/sshd_config").contains("X11Forwarding yes"));
    assert!(differences(&obs, "backup").is_empty());
    assert!(
        !g.root
            .join("etc/systemd/system/automend-backup.timer")
            .exists()
    );
    assert!(differences(&obs, "updateManagement").is_empty());
    assert!(
        !g.root
            .join("etc/apt/apt.conf.d/99automend-auto-upgrades")
            .exists()
    );
    let ct = differences(&obs, "changeTracking");
    assert!(
        ct.iter()
            .any(|d| d.starts_with("tracked file /etc: unreadable")),
        "{ct:?}"
    );
}
