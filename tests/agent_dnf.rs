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
