//! The dnf backend against real dnf and rpm (Debian's packages) on a sandboxed RHEL-family root:
//! packages built with rpmbuild into a local repository (createrepo_c) with an updateinfo.xml
//! holding a Critical security advisory and a bugfix one.

use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "fixtures/guestroot.rs"]
mod guestroot;

use automend::agent::Linux;
use automend::agent::services::HostSettings;
use automend::api::{Classification, PinnedPackage};
use automend::guest::Backend;

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("running {cmd:?}: {e} (install Debian's dnf, rpm and createrepo-c; .ci/run does)")
    });
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn rpm(top: &Path, repo: &Path, name: &str, version: &str) {
    let spec = top.join(format!("{name}-{version}.spec"));
    std::fs::write(
        &spec,
        format!(
            "Name: {name}\nVersion: {version}\nRelease: 1\nSummary: test {name}\nLicense: MIT\nBuildArch: noarch\n%description\ntest package\n%install\nmkdir -p %{{buildroot}}/usr/share/{name}\necho {version} > %{{buildroot}}/usr/share/{name}/VERSION\n%files\n/usr/share/{name}/VERSION\n"
        ),
    )
    .expect("spec");
    run(Command::new("rpmbuild")
        .args(["--quiet", "-bb", "--define"])
        .arg(format!("_topdir {}", top.join("build").display()))
        .arg("--define")
        .arg(format!("_rpmdir {}", repo.display()))
        .arg(&spec));
}

const UPDATEINFO: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<updates>
  <update from="tests@automend.invalid" status="stable" type="security" version="1">
    <id>AUTOMEND-2026:0001</id><title>libfoo security update</title><severity>Critical</severity>
    <issued date="2026-11-01 00:00:00"/><description>fix</description>
    <pkglist><collection short="t"><name>t</name>
      <package name="libfoo" version="1.2" release="1" epoch="0" arch="noarch"><filename>libfoo-1.2-1.noarch.rpm</filename></package>
    </collection></pkglist>
  </update>
  <update from="tests@automend.invalid" status="stable" type="bugfix" version="1">
    <id>AUTOMEND-2026:0002</id><title>tool bugfix</title>
    <issued date="2026-11-01 00:00:00"/><description>fix</description>
    <pkglist><collection short="t"><name>t</name>
      <package name="tool" version="2.1" release="1" epoch="0" arch="noarch"><filename>tool-2.1-1.noarch.rpm</filename></package>
    </collection></pkglist>
  </update>
</updates>
"#;

struct RhelRoot {
    _dir: tempfile::TempDir,
    root: PathBuf,
    state: PathBuf,
    repo: PathBuf,
}

fn rhel_root() -> RhelRoot {
    let dir = tempfile::tempdir().expect("tempdir");
    let (root, repo, state) = (
        dir.path().join("root"),
        dir.path().join("repo"),
        dir.path().join("state"),
    );
    for d in [&root, &repo, &state] {
        std::fs::create_dir_all(d).expect("mkdir");
    }
    for (n, v) in [
        ("libfoo", "1.0"),
        ("libfoo", "1.2"),
        ("tool", "2.0"),
        ("tool", "2.1"),
    ] {
        rpm(dir.path(), &repo, n, v);
    }
    run(Command::new("createrepo_c").arg("-q").arg(&repo));
    let info = dir.path().join("updateinfo.xml");
    std::fs::write(&info, UPDATEINFO).expect("updateinfo");
    run(Command::new("modifyrepo_c")
        .arg("--mdtype=updateinfo")
        .arg(&info)
        .arg(repo.join("repodata")));
    std::fs::create_dir_all(root.join("etc/yum.repos.d")).expect("mkdir");
    std::fs::write(
        root.join("etc/os-release"),
        "NAME=\"Rocky Linux\"\nVERSION_ID=\"9.3\"\nID=\"rocky\"\nID_LIKE=\"rhel centos fedora\"\n",
    )
    .expect("os-release");
    std::fs::write(
        root.join("etc/yum.repos.d/tests.repo"),
        format!(
            "[tests]\nname=tests\nbaseurl=file://{}\ngpgcheck=0\n",
            repo.display()
        ),
    )
    .expect("repo");
    run(Command::new("rpm")
        .arg(format!("--root={}", root.display()))
        .arg("--initdb"));
    for f in ["libfoo-1.0-1.noarch.rpm", "tool-2.0-1.noarch.rpm"] {
        run(Command::new("rpm")
            .arg(format!("--root={}", root.display()))
            .args(["-i", "--nodeps"])
            .arg(repo.join("noarch").join(f)));
    }
    RhelRoot {
        _dir: dir,
        root,
        state,
        repo,
    }
}

fn pin(name: &str, version: &str) -> PinnedPackage {
    PinnedPackage {
        name: name.into(),
        version: version.into(),
        classification: None,
    }
}

#[tokio::test]
async fn dnf_assessment_by_advisory_exact_install_rollback_and_failures() {
    let r = rhel_root();
    let mut b = Linux::new(
        &r.root,
        &r.state,
        None,
        HostSettings::default(),
        automend::clock::Clock::real(),
    );
    assert!(b.problems().is_empty(), "{:?}", b.problems());
    assert_eq!(b.os().id, "rocky");
    let found = b.assess(None).await.expect("assessment");
    let seen = guestroot::assessment_lines(&found);
    assert_eq!(
        seen,
        ["libfoo 1.0-1->1.2-1 Critical", "tool 2.0-1->2.1-1 Other"]
    );
    assert_eq!(
        found
            .packages
            .iter()
            .filter(|p| p.classification == Classification::Other)
            .count(),
        1
    );

    let before = b
        .installed_versions(&["libfoo".into()])
        .await
        .expect("versions");
    assert_eq!(before, [pin("libfoo", "1.0-1")]);
    let out = b.install(&[pin("libfoo", "1.2-1")], &[], None).await;
    assert_eq!(out.installed, [pin("libfoo", "1.2-1")], "{:?}", out.error);
    let now = b
        .installed_versions(&["libfoo".into(), "tool".into()])
        .await
        .expect("versions");
    assert_eq!(
        now,
        [pin("libfoo", "1.2-1"), pin("tool", "2.0-1")],
        "tool is not in the manifest"
    );

    // Rollback: back to the recorded version (a downgrade).
    let out = b.install(&before, &[], None).await;
    assert_eq!(out.installed, [pin("libfoo", "1.0-1")], "{:?}", out.error);

    // A version that does not exist fails alone, named.
    let out = b
        .install(&[pin("libfoo", "9.9-1"), pin("tool", "2.1-1")], &[], None)
        .await;
    assert_eq!(out.installed, [pin("tool", "2.1-1")]);
    assert_eq!(out.failed, [pin("libfoo", "9.9-1")]);
    let e = out.error.expect("error");
    assert!(e.contains("libfoo-9.9-1"), "{e}");

    // A broken repository: the assessment fails with dnf's words.
    std::fs::remove_dir_all(r.repo.join("repodata")).expect("rm");
    let e = b.assess(None).await.expect_err("broken repository");
    assert!(e.contains("dnf"), "{e}");
}

/// An advisory of libfoo's update at `version` issued on `date`, fixing `cve`.
fn advisory(id: &str, version: &str, date: &str, cve: &str) -> String {
    format!(
        r#"  <update from="tests@automend.invalid" status="stable" type="security" version="1">
    <id>{id}</id><title>libfoo security update</title><severity>Important</severity>
    <issued date="{date} 00:00:00"/><description>fix</description>
    <references><reference href="https://cve.example/{cve}" id="{cve}" type="cve" title="{cve}"/></references>
    <pkglist><collection short="t"><name>t</name>
      <package name="libfoo" version="{version}" release="1" epoch="0" arch="noarch"><filename>libfoo-{version}-1.noarch.rpm</filename></package>
    </collection></pkglist>
  </update>
"#
    )
}

/// Publish the repository's metadata with these advisories.
fn publish(top: &Path, repo: &Path, advisories: &[String]) {
    run(Command::new("createrepo_c").arg("-q").arg(repo));
    let info = top.join("updateinfo.xml");
    std::fs::write(
        &info,
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<updates>\n{}</updates>\n",
            advisories.concat()
        ),
    )
    .expect("updateinfo");
    run(Command::new("modifyrepo_c")
        .arg("--mdtype=updateinfo")
        .arg(&info)
        .arg(repo.join("repodata")));
}

/// Two repository states, served over HTTP on loopback with a dated snapshot of each: libfoo 1.2
/// (issued 2026-11-01, CVE-2026-1111), then 1.3 (issued 2026-11-20, CVE-2026-3333) replacing it.
/// Assessments carry each update's advisory, date and CVEs; a pinned 1.2 is unavailable from
/// the repository as it is now and installs from the release's snapshot.
#[tokio::test]
async fn dnf_release_snapshot_dates_cves_and_unavailable_pins() {
    let dir = tempfile::tempdir().expect("tempdir");
    let top = dir.path();
    let (root, repo, state) = (top.join("root"), top.join("repo"), top.join("state"));
    for d in [&root, &repo, &state] {
        std::fs::create_dir_all(d).expect("mkdir");
    }
    for v in ["1.0", "1.2", "1.3"] {
        rpm(top, &top.join("rpms"), "libfoo", v);
    }
    let noarch = |v: &str| format!("noarch/libfoo-{v}-1.noarch.rpm");
    std::fs::create_dir_all(repo.join("noarch")).expect("mkdir");
    for v in ["1.0", "1.2"] {
        std::fs::copy(top.join("rpms").join(noarch(v)), repo.join(noarch(v))).expect("cp");
    }
    let a1 = advisory("AUTOMEND-2026:0101", "1.2", "2026-11-01", "CVE-2026-1111");
    publish(top, &repo, std::slice::from_ref(&a1));
    let snapshots = top.join("repo-snapshots");
    std::fs::create_dir_all(&snapshots).expect("mkdir");
    run(Command::new("cp")
        .arg("-a")
        .arg(&repo)
        .arg(snapshots.join("20261110T000000Z")));
    std::fs::remove_file(repo.join(noarch("1.2"))).expect("rm");
    std::fs::copy(
        top.join("rpms").join(noarch("1.3")),
        repo.join(noarch("1.3")),
    )
    .expect("cp");
    let a3 = advisory("AUTOMEND-2026:0103", "1.3", "2026-11-20", "CVE-2026-3333");
    publish(top, &repo, &[a1, a3]);

    let served = guestroot::Served::start(top);
    let base = served.base.clone();
    std::fs::create_dir_all(root.join("etc/yum.repos.d")).expect("mkdir");
    std::fs::write(
        root.join("etc/os-release"),
        "NAME=\"Rocky Linux\"\nVERSION_ID=\"9.3\"\nID=\"rocky\"\nID_LIKE=\"rhel centos fedora\"\n",
    )
    .expect("os-release");
    let repo_file = format!("[tests]\nname=tests\nbaseurl={base}/repo/\ngpgcheck=0\n");
    std::fs::write(root.join("etc/yum.repos.d/tests.repo"), &repo_file).expect("repo");
    run(Command::new("rpm")
        .arg(format!("--root={}", root.display()))
        .arg("--initdb"));
    run(Command::new("rpm")
        .arg(format!("--root={}", root.display()))
        .args(["-i", "--nodeps"])
        .arg(top.join("rpms").join(noarch("1.0"))));

    let mut b = Linux::new(
        &root,
        &state,
        None,
        HostSettings::default(),
        automend::clock::Clock::real(),
    );
    let now = b.assess(None).await.expect("assessment");
    assert_eq!(
        guestroot::assessment_lines(&now),
        ["libfoo 1.0-1->1.3-1 Security"]
    );
    let p = &now.packages[0];
    assert_eq!(p.advisories, ["AUTOMEND-2026:0103"]);
    assert_eq!(p.cves, ["CVE-2026-3333"]);
    assert_eq!(
        p.published.as_ref().map(|t| t.0.to_string()).as_deref(),
        Some("2026-11-20T00:00:00Z")
    );

    // Without the snapshot, the release's pin is gone: reported per package.
    let out = b.install(&[pin("libfoo", "1.2-1")], &[], None).await;
    assert_eq!(out.failed, [pin("libfoo", "1.2-1")]);
    assert_eq!(out.unavailable.len(), 1, "{:?}", out.error);
    assert_eq!(out.unavailable[0].offered, ["1.0-1", "1.3-1"]);
    assert!(
        out.error
            .as_deref()
            .unwrap_or_default()
            .contains("PinnedVersionUnavailable"),
        "{:?}",
        out.error
    );

    let snap = automend::api::ReleaseSnapshot {
        timestamp: "20261110T000000Z".into(),
        repositories: vec![automend::api::SnapshotUrl {
            repository: format!("{base}/repo"),
            url: format!("{base}/repo-snapshots/20261110T000000Z/"),
        }],
    };
    let then = b.assess(Some(&snap)).await.expect("snapshot assessment");
    assert_eq!(
        guestroot::assessment_lines(&then),
        ["libfoo 1.0-1->1.2-1 Security"]
    );
    assert_eq!(then.packages[0].cves, ["CVE-2026-1111"]);
    assert_eq!(
        then.packages[0]
            .published
            .as_ref()
            .map(|t| t.0.to_string())
            .as_deref(),
        Some("2026-11-01T00:00:00Z")
    );
    let out = b.install(&[pin("libfoo", "1.2-1")], &[], Some(&snap)).await;
    assert_eq!(out.installed, [pin("libfoo", "1.2-1")], "{:?}", out.error);
    assert!(out.unavailable.is_empty());
    // The machine's repository file is as it was.
    assert_eq!(
        std::fs::read_to_string(root.join("etc/yum.repos.d/tests.repo")).expect("read"),
        repo_file
    );
    drop(served);
}
