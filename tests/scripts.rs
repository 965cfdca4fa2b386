//! The README's scripts as a new user meets them.
//!
//! The first run of `hack/cluster.sh up` (what `hack/demo.sh` does first) is driven end to end
//! with an empty cache directory: a stand-in `go` "builds" each binary by copying the one
//! `hack/test.sh` already built, so the whole first-run path (build into a temporary folder, move
//! into the cache, then certificates, etcd, kube-apiserver, kube-controller-manager) runs in
//! seconds instead of rebuilding Kubernetes. `hack/deps.sh` is driven with tools hidden from it.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn write_exec(path: &Path, body: &str) {
    std::fs::write(path, body).expect("write script");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// Stops the control plane of a state folder however the test ends.
struct Down {
    env: Vec<(String, String)>,
}

impl Drop for Down {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(repo().join("hack/cluster.sh"))
            .args(["down", "--purge"])
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output();
    }
}

fn cluster_sh(args: &[&str], env: &[(String, String)]) -> Output {
    Command::new("bash")
        .arg(repo().join("hack/cluster.sh"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .expect("run hack/cluster.sh")
}

/// The binaries `hack/cluster.sh build` made in the default cache (hack/test.sh builds them first).
fn built_bindir() -> PathBuf {
    let out = cluster_sh(&["build"], &[]);
    assert!(
        out.status.success(),
        "hack/cluster.sh build: {}",
        text(&out.stderr)
    );
    let out = cluster_sh(&["bindir"], &[]);
    PathBuf::from(text(&out.stdout).trim())
}

const FAKE_GO: &str = r#"#!/usr/bin/env bash
# Stand-in for `go build`: records the call, then copies the already built binary for each package.
set -euo pipefail
echo "dir=$PWD GOFLAGS=$GOFLAGS GOTOOLCHAIN=$GOTOOLCHAIN args=$*" >>"$FAKE_GO_LOG"
[ "$1" = build ] || { echo "fake go: only build" >&2; exit 2; }
shift
out="" pkgs=()
while [ $# -gt 0 ]; do
  case "$1" in
    -o) out="$2"; shift ;;
    -ldflags) shift ;;
    -*) ;;
    *) pkgs+=("$1") ;;
  esac
  shift
done
for p in "${pkgs[@]}"; do
  name="${p##*/}"; src="$name"
  if [ "$p" = . ]; then name=etcd-wrapper; src=etcd; fi
  cp "$REAL_BINDIR/$src" "$out/$name"
done
"#;

#[test]
fn the_first_run_builds_into_an_empty_cache_then_starts_the_control_plane() {
    let real = built_bindir();
    let tmp = tempfile::tempdir().expect("tempdir");
    let fakebin = tmp.path().join("bin");
    std::fs::create_dir_all(&fakebin).expect("mkdir");
    write_exec(&fakebin.join("go"), FAKE_GO);
    let log = tmp.path().join("go.log");
    let cache = tmp.path().join("cache");
    let state = tmp.path().join("state");
    let path = format!(
        "{}:{}",
        fakebin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let env: Vec<(String, String)> = vec![
        ("PATH".into(), path),
        ("AUTOMEND_CACHE_DIR".into(), cache.display().to_string()),
        ("AUTOMEND_CLUSTER_DIR".into(), state.display().to_string()),
        ("FAKE_GO_LOG".into(), log.display().to_string()),
        ("REAL_BINDIR".into(), real.display().to_string()),
    ];
    let _down = Down { env: env.clone() };

    // First run: nothing cached.
    let up = cluster_sh(&["up"], &env);
    let stderr = text(&up.stderr);
    assert!(up.status.success(), "first `up` failed:\n{stderr}");
    assert!(stderr.contains("first run"), "{stderr}");
    for what in [
        "etcd built in",
        "helm built in",
        "kubectl built in",
        "binaries ready in",
    ] {
        assert!(stderr.contains(what), "no {what:?} in:\n{stderr}");
    }
    assert!(stderr.contains("control plane ready"), "{stderr}");

    // Each wrapper module was built once, verified against its committed go.sum.
    let calls = std::fs::read_to_string(&log).expect("go was called");
    let calls: Vec<&str> = calls.lines().collect();
    assert_eq!(calls.len(), 3, "{calls:#?}");
    for module in [
        "hack/tools/etcd",
        "hack/tools/helm",
        "hack/tools/kubernetes",
    ] {
        assert!(
            calls.iter().any(|c| c.contains(module)
                && c.contains("-mod=readonly")
                && c.contains("GOTOOLCHAIN=local")),
            "{module} not built as expected: {calls:#?}"
        );
    }
    let bindir = PathBuf::from(text(&cluster_sh(&["bindir"], &env).stdout).trim());
    assert!(bindir.starts_with(&cache), "{}", bindir.display());
    for b in [
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kubectl",
        "helm",
    ] {
        assert!(bindir.join(b).is_file(), "{b} missing in the cache");
    }
    let leftovers: Vec<_> = std::fs::read_dir(bindir.parent().expect("parent"))
        .expect("read cache")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp."))
        .collect();
    assert!(
        leftovers.is_empty(),
        "temporary build folders left: {leftovers:?}"
    );

    // The control plane answers with the admin kubeconfig.
    let get = Command::new(bindir.join("kubectl"))
        .args(["--kubeconfig"])
        .arg(state.join("kubeconfig"))
        .args(["get", "namespace", "default", "-o", "name"])
        .output()
        .expect("kubectl");
    assert_eq!(
        text(&get.stdout).trim(),
        "namespace/default",
        "{}",
        text(&get.stderr)
    );

    // Later runs reuse the cache: no build.
    let again = cluster_sh(&["up"], &env);
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert!(!text(&again.stderr).contains("first run"));
    let calls_after = std::fs::read_to_string(&log).expect("log");
    assert_eq!(
        calls_after.lines().count(),
        3,
        "go ran again: {calls_after}"
    );

    let down = cluster_sh(&["down", "--purge"], &env);
    assert!(down.status.success(), "{}", text(&down.stderr));
    assert!(!state.exists(), "state folder left behind");
}

/// A PATH with only the tools `hack/deps.sh` itself uses, plus what the test adds.
fn minimal_path(dir: &Path, extra: &[&str]) {
    for tool in [
        "bash", "awk", "sort", "head", "tr", "sed", "cat", "env", "dirname", "id",
    ]
    .iter()
    .chain(extra)
    {
        let Ok(out) = Command::new("bash")
            .args(["-c", &format!("command -v {tool}")])
            .output()
        else {
            continue;
        };
        let found = text(&out.stdout).trim().to_string();
        if !found.is_empty() {
            let _ = std::os::unix::fs::symlink(found, dir.join(tool));
        }
    }
}

fn deps(args: &[&str], path: &Path) -> Output {
    Command::new(path.join("bash"))
        .arg(repo().join("hack/deps.sh"))
        .args(args)
        .env("PATH", path)
        .output()
        .expect("run hack/deps.sh")
}

#[test]
fn deps_names_what_is_missing_and_the_exact_command_to_install_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let bin = tmp.path();
    // Go and cargo present; of the demo's tools only openssl and curl.
    minimal_path(bin, &["go", "cargo", "openssl", "curl", "python3"]);
    let check = deps(&["check", "demo"], bin);
    let err = text(&check.stderr);
    assert_eq!(check.status.code(), Some(1), "{err}");
    assert!(err.contains("missing: jq setsid"), "{err}");
    assert!(err.contains("Debian packages: jq util-linux"), "{err}");

    // A node's needs include files (the CNI plugins, libseccomp's headers), named by package.
    let node = deps(&["check", "node"], bin);
    let err = text(&node.stderr);
    assert_eq!(node.status.code(), Some(1), "{err}");
    for (what, package) in [
        ("iptables", "iptables"),
        ("conntrack", "conntrack"),
        ("buildah", "buildah"),
    ] {
        assert!(err.contains(what) && err.contains(package), "{err}");
    }

    // Not root: the exact command, and nothing installed.
    std::fs::remove_file(bin.join("id")).expect("rm id");
    write_exec(&bin.join("id"), "#!/bin/sh\necho 1000\n");
    let install = deps(&["install", "demo"], bin);
    let err = text(&install.stderr);
    assert_eq!(install.status.code(), Some(1), "{err}");
    assert!(
        err.contains("sudo apt-get update && sudo apt-get install -y jq util-linux"),
        "{err}"
    );

    // No Go: said so, with the version the control plane's modules need.
    std::fs::remove_file(bin.join("go")).expect("rm go");
    let nogo = deps(&["check", "demo"], bin);
    let err = text(&nogo.stderr);
    assert_eq!(nogo.status.code(), Some(1), "{err}");
    assert!(err.contains("Go 1.") && err.contains("is needed"), "{err}");

    // Usage names the verbs.
    let usage = deps(&["frobnicate"], bin);
    assert_eq!(usage.status.code(), Some(2));
    assert!(text(&usage.stdout).contains("hack/deps.sh install demo|node|test"));
}

/// `hack/image.sh` (what the tests and the in-cluster demo run) and the Dockerfile (for users
/// with Docker) make the same image: the same user, entrypoint, command, binary path and base.
#[test]
fn the_offline_image_and_the_dockerfile_agree() {
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).expect("Dockerfile");
    let script = std::fs::read_to_string(repo().join("hack/image.sh")).expect("hack/image.sh");
    let final_stage = dockerfile
        .rsplit_once("\nFROM ")
        .map(|(_, s)| s)
        .expect("a final stage");
    let directive = |name: &str| -> String {
        final_stage
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in the Dockerfile's final stage"))
            .trim()
            .to_string()
    };
    let assigned = |name: &str| -> String {
        script
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name}= in hack/image.sh"))
            .trim_matches('\'')
            .to_string()
    };
    let uid = assigned("USER_ID");
    assert_eq!(directive("USER"), format!("{uid}:{uid}"));
    assert_eq!(directive("ENTRYPOINT"), assigned("ENTRYPOINT"));
    assert_eq!(directive("CMD"), assigned("CMD"));
    assert!(
        final_stage.starts_with("gcr.io/distroless/cc-debian12:nonroot"),
        "the base the script imitates: {final_stage}"
    );
    assert!(directive("COPY").ends_with(" /usr/local/bin/automend"));
    assert!(script.contains("/usr/local/bin/automend"));
    assert!(
        assigned("SUITE") == "bookworm",
        "distroless cc-debian12 is Debian 12"
    );
}

/// Stopping a node that is not running (the test reaper's `down` after a failed start, or twice)
/// succeeds, so that the control plane behind it is stopped too. It once stopped at the first
/// `grep` that found no rule to remove, leaving kube-apiserver and etcd running.
#[test]
fn stopping_a_node_that_is_not_running_succeeds() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = Command::new("bash")
        .arg(repo().join("hack/node.sh"))
        .arg("down")
        .arg(tmp.path())
        .arg(tmp.path().join("no-binaries"))
        .output()
        .expect("run hack/node.sh down");
    assert!(
        out.status.success(),
        "hack/node.sh down: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}
