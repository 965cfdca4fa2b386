//! The sshd and sysctl dialects, calendars and differences.

use std::path::Path;

use super::files::comment_out;
use super::*;
use crate::api::{BackupFrequency, DayOfWeek};

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
    comment_out(r, "/etc/ssh/sshd_config", "PermitRootLogin", sshd::sets).unwrap();
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

#[test]
fn plans_are_pure_functions_of_the_facts() {
    use crate::api::{ConfigurationProfileSpec, Environment};
    let config = crate::logic::resolve::resolve(&ConfigurationProfileSpec::with_defaults(
        Environment::Production,
    ));
    let settings = HostSettings::default();
    let plan = |facts: &Facts| {
        Planner {
            family: Family::Apt,
            settings: &settings,
            facts,
        }
        .plan(&config, Some(PatchMode::AutomaticByPlatform))
    };
    let items = |p: &[(&str, Vec<Item>)], name: &str| -> Vec<Item> {
        p.iter()
            .find(|(n, _)| *n == name)
            .map(|(_, i)| i.clone())
            .unwrap_or_default()
    };
    let bare = plan(&Facts::default());
    assert!(
        !items(&bare, "securityBaseline")
            .iter()
            .any(|i| matches!(i, Item::Sshd { .. })),
        "no sshd rules without sshd"
    );
    assert!(items(&bare, "timeSync").contains(&Item::Unit {
        name: "systemd-timesyncd.service".into(),
        enabled: true
    }));
    let full = plan(&Facts {
        sshd_installed: true,
        chrony_conf: Some("/etc/chrony/chrony.conf"),
    });
    assert!(
        items(&full, "securityBaseline")
            .iter()
            .any(|i| matches!(i, Item::Sshd { keyword, .. } if keyword == "PermitRootLogin"))
    );
    assert!(items(&full, "timeSync").contains(&Item::Unit {
        name: "chrony.service".into(),
        enabled: true
    }));
    assert_eq!(plan(&Facts::default()), bare, "same facts, same plan");
}
