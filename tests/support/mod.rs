//! Test support for the end-to-end suites: one real control plane per test binary, and a namespace
//! per test.
//!
//! With `KUBECONFIG` set, the tests use that cluster (kind, for instance) instead of starting one.
//! Otherwise the first test to ask starts etcd + kube-apiserver + kube-controller-manager with
//! `hack/cluster.sh up` in `target/e2e/<binary>-<pid>`, and a detached reaper stops them and removes
//! the folder when the test process exits, however it exits.
#![allow(dead_code)]

pub mod booted;
pub mod env;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

pub struct Cluster {
    pub kubeconfig: PathBuf,
    pub bindir: PathBuf,
    /// Whether the cluster runs Pods (a node of ours, or the caller's cluster).
    pub has_node: bool,
    /// The state folder of a local control plane (None with the caller's KUBECONFIG).
    pub state: Option<PathBuf>,
}

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn script() -> PathBuf {
    repo().join("hack/cluster.sh")
}

pub(crate) fn run_checked(cmd: &mut Command, what: &str) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

static WITH_NODE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static WITH_GUEST_WEBHOOK: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// The shared control plane of this test binary, its API server asking the controller about
/// guest requests (`hack/cluster.sh up --guest-webhook`). Call it before anything else of this
/// module in a test binary; not with the caller's `KUBECONFIG`.
pub fn guest_webhook_cluster() -> &'static Cluster {
    WITH_GUEST_WEBHOOK.store(true, Ordering::SeqCst);
    let c = cluster();
    assert!(
        c.authorizer_args().is_some(),
        "this test binary's control plane was started without --guest-webhook"
    );
    c
}

/// `node_cluster`, its API server also configured for the guest webhook (`hack/cluster.sh up
/// --node --guest-webhook`; nobody answers there until a test routes it: RBAC decides as
/// without it). With `KUBECONFIG` set, that cluster as it is (`state` is then `None`).
pub fn guest_webhook_node_cluster() -> &'static Cluster {
    WITH_GUEST_WEBHOOK.store(true, Ordering::SeqCst);
    let c = node_cluster();
    assert!(
        c.state.is_none() || c.authorizer_args().is_some(),
        "this test binary's control plane was started without --guest-webhook"
    );
    c
}

/// The shared control plane of this test binary with a node that runs Pods (`hack/cluster.sh up
/// --node`: containerd, kubelet, kube-proxy on this machine; needs root). Call it before anything
/// else of this module in a test binary. With `KUBECONFIG` set, that cluster is used as it is.
pub fn node_cluster() -> &'static Cluster {
    WITH_NODE.store(true, Ordering::SeqCst);
    let c = cluster();
    assert!(
        c.has_node,
        "this test binary's control plane was started without a node"
    );
    c
}

/// The shared control plane of this test binary, started on first use.
pub fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let bindir = run_checked(
            Command::new("bash").arg(script()).arg("bindir"),
            "hack/cluster.sh bindir",
        );
        let bindir = PathBuf::from(String::from_utf8_lossy(&bindir.stdout).trim());
        run_checked(
            Command::new("bash").arg(script()).arg("build"),
            "hack/cluster.sh build",
        );
        let node = WITH_NODE.load(Ordering::SeqCst);
        let cluster = match std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty()) {
            Some(kc) => Cluster {
                kubeconfig: PathBuf::from(kc),
                bindir,
                has_node: true,
                state: None,
            },
            None => {
                let state = start_local(node, WITH_GUEST_WEBHOOK.load(Ordering::SeqCst));
                Cluster {
                    kubeconfig: state.join("kubeconfig"),
                    bindir,
                    has_node: node,
                    state: Some(state),
                }
            }
        };
        // Every suite works against the CRDs of this tree.
        cluster.kubectl_ok(&["apply", "--server-side", "--force-conflicts", "-f", "crds/"]);
        cluster.wait_crds_established();
        cluster
    })
}

fn start_local(node: bool, guest_webhook: bool) -> PathBuf {
    let exe = std::env::current_exe().expect("current test executable");
    let name = exe
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("e2e")
        .to_string();
    let dir = repo()
        .join("target/e2e")
        .join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("creating the cluster folder");
    // The reaper: detached (its own session) so that Ctrl-C on the tests does not kill it first.
    let reaper = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; bash {script} down --purge >/dev/null 2>&1",
        pid = std::process::id(),
        script = script().display()
    );
    // `setsid -f` forks: the command returns at once and the reaper lives on in its own session.
    Command::new("setsid")
        .args(["-f", "bash", "-c", &reaper])
        .env("AUTOMEND_CLUSTER_DIR", &dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("starting the cluster reaper");
    if node {
        assert!(
            nix_is_root(),
            "this suite runs Pods on a node of its own (hack/cluster.sh up --node), which needs root"
        );
    }
    run_checked(
        Command::new("bash")
            .arg(script())
            .arg("up")
            .args(node.then_some("--node"))
            .args(guest_webhook.then_some("--guest-webhook"))
            .env("AUTOMEND_CLUSTER_DIR", &dir),
        "hack/cluster.sh up",
    );
    dir
}

fn nix_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl Cluster {
    /// The controller's flags for this control plane's guest authorizer (`up --guest-webhook`).
    pub fn authorizer_args(&self) -> Option<Vec<String>> {
        let state = self.state.as_ref()?;
        if !state.join("guest-webhook-mode").exists() {
            return None;
        }
        let port = std::fs::read_to_string(state.join("ports/guest-authorizer")).ok()?;
        let pki = state.join("pki");
        Some(vec![
            "--guest-authorization=webhook".into(),
            format!("--authorizer-addr=127.0.0.1:{}", port.trim()),
            format!(
                "--authorizer-cert={}",
                pki.join("guest-authorizer.crt").display()
            ),
            format!(
                "--authorizer-key={}",
                pki.join("guest-authorizer.key").display()
            ),
        ])
    }

    pub fn kubectl(&self, args: &[&str]) -> Output {
        Command::new(self.bindir.join("kubectl"))
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .current_dir(repo())
            .output()
            .expect("running kubectl")
    }

    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Wait until the API server serves the CRDs. `kubectl wait --for=condition=Established`
    /// fails at once ("<nil> is of the type <nil>") on a CRD whose status has no conditions yet —
    /// right after it is created — so that answer is asked again until the deadline.
    fn wait_crds_established(&self) {
        let args = [
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/virtualmachines.automend.io",
            "crd/configurationprofiles.automend.io",
            "crd/updaterings.automend.io",
            "crd/patchrollouts.automend.io",
        ];
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let out = self.kubectl(&args);
            if out.status.success() {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "kubectl {args:?} failed:\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
    }

    pub fn helm(&self, args: &[&str]) -> Output {
        Command::new(self.bindir.join("helm"))
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .current_dir(repo())
            .env("HELM_CACHE_HOME", repo().join("target/helm/cache"))
            .env("HELM_CONFIG_HOME", repo().join("target/helm/config"))
            .env("HELM_DATA_HOME", repo().join("target/helm/data"))
            .output()
            .expect("running helm")
    }

    pub async fn client(&self) -> Client {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig).expect("reading the kubeconfig");
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .expect("kubeconfig to client config");
        Client::try_from(config).expect("building the client")
    }
}

/// A fresh namespace for one test, labelled so that leftovers are easy to find.
pub struct TestNamespace {
    pub name: String,
    client: Client,
}

impl TestNamespace {
    pub async fn new(client: &Client, prefix: &str) -> TestNamespace {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": { "name": name, "labels": { "automend.io/e2e": "true" } }
        }))
        .expect("namespace object");
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .expect("creating the test namespace");
        TestNamespace {
            name,
            client: client.clone(),
        }
    }

    /// Delete the namespace (the control plane's namespace controller removes what is in it).
    pub async fn delete(self) {
        let _ = Api::<Namespace>::all(self.client)
            .delete(&self.name, &DeleteParams::background())
            .await;
    }
}

impl Cluster {
    /// The client configuration of the admin kubeconfig.
    pub async fn config(&self) -> Config {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig).expect("reading the kubeconfig");
        Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .expect("kubeconfig to client config")
    }

    /// Install the chart's guest ValidatingAdmissionPolicy (once per test binary).
    pub fn install_guest_policy(&self) {
        static DONE: OnceLock<()> = OnceLock::new();
        DONE.get_or_init(|| {
            let version = self.kubectl_ok(&["version", "-o", "json"]);
            let v: serde_json::Value = serde_json::from_str(&version).expect("version json");
            let server = v["serverVersion"]["gitVersion"]
                .as_str()
                .unwrap_or("v1.36.0")
                .to_string();
            let out = self.helm(&[
                "template",
                "e2e",
                "charts/automend",
                "--kube-version",
                &server,
                "-s",
                "templates/guest-admission.yaml",
            ]);
            assert!(
                out.status.success(),
                "helm template: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let path = repo().join("target/e2e-guest-admission.yaml");
            std::fs::write(&path, &out.stdout).expect("writing the policy");
            self.kubectl_ok(&[
                "apply",
                "--server-side",
                "--force-conflicts",
                "-f",
                path.to_str().unwrap_or_default(),
            ]);
            // The policy takes effect once the API server's admission plugin has loaded it.
            std::thread::sleep(std::time::Duration::from_secs(2));
        });
    }
}

/// A new serving key and certificate for the guest authorizer from the local control plane's CA
/// (`pki`), naming `san` ("IP:…,DNS:…"), written over `cert` and `key` (key first: a server
/// keeps the old pair until the two match).
pub fn issue_serving_cert(pki: &Path, san: &str, cert: &Path, key: &Path) {
    // Unique per certificate issued here (the CA's own and earlier ones are from other runs).
    static ISSUED: AtomicU32 = AtomicU32::new(1);
    let serial = format!(
        "{}{:04}",
        std::process::id(),
        ISSUED.fetch_add(1, Ordering::Relaxed)
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let (new_key, csr, ext, new_cert) = (
        dir.path().join("k"),
        dir.path().join("csr"),
        dir.path().join("ext"),
        dir.path().join("c"),
    );
    std::fs::write(
        &ext,
        format!("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName={san}\n"),
    )
    .expect("extensions");
    let run = |args: &[&std::ffi::OsStr]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl");
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    };
    run(&[
        "req".as_ref(),
        "-new".as_ref(),
        "-nodes".as_ref(),
        "-newkey".as_ref(),
        "rsa:2048".as_ref(),
        "-subj".as_ref(),
        "/CN=automend-guest-authorizer".as_ref(),
        "-keyout".as_ref(),
        new_key.as_os_str(),
        "-out".as_ref(),
        csr.as_os_str(),
    ]);
    run(&[
        "x509".as_ref(),
        "-req".as_ref(),
        "-in".as_ref(),
        csr.as_os_str(),
        "-CA".as_ref(),
        pki.join("ca.crt").as_os_str(),
        "-CAkey".as_ref(),
        pki.join("ca.key").as_os_str(),
        "-set_serial".as_ref(),
        serial.as_ref(),
        "-days".as_ref(),
        "1".as_ref(),
        "-extfile".as_ref(),
        ext.as_os_str(),
        "-out".as_ref(),
        new_cert.as_os_str(),
    ]);
    std::fs::copy(&new_key, key).expect("the new key");
    std::fs::copy(&new_cert, cert).expect("the new certificate");
}

/// Replace a file the API server reads in one step (it never reads half of it).
pub fn write_atomically(path: &Path, content: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).expect("writing");
    std::fs::rename(&tmp, path).expect("renaming");
}

/// Puts a file of the control plane back however the test ends (the control plane outlives
/// the test): e.g. the API server's AuthorizationConfiguration a test changed.
pub struct Restore {
    path: PathBuf,
    content: String,
}

impl Restore {
    pub fn new(path: &Path, content: &str) -> Restore {
        Restore {
            path: path.to_path_buf(),
            content: content.to_string(),
        }
    }
}

impl Drop for Restore {
    fn drop(&mut self) {
        write_atomically(&self.path, &self.content);
    }
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `automend controller` as a child process, killed on drop.
pub struct ControllerProcess {
    pub child: std::process::Child,
    pub port: u16,
    pub log: PathBuf,
}

impl ControllerProcess {
    /// Start the controller scoped to one namespace and the profiles labelled for it.
    pub fn start(cluster: &Cluster, namespace: &str, extra: &[&str]) -> ControllerProcess {
        let port = free_port();
        let logdir = repo().join("target/e2e-logs");
        std::fs::create_dir_all(&logdir).expect("log folder");
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let log = logdir.join(format!(
            "controller-{namespace}-{}.log",
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_automend"))
            .args([
                "controller",
                "--namespace",
                namespace,
                "--profile-selector",
                &format!("automend.io/e2e={namespace}"),
                "--heartbeat-grace",
                "6s",
                "--http-addr",
                &format!("127.0.0.1:{port}"),
            ])
            .args(extra)
            .env("KUBECONFIG", &cluster.kubeconfig)
            .env(
                "RUST_LOG",
                std::env::var("AUTOMEND_E2E_LOG").unwrap_or_else(|_| "info,kube=warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("starting the controller");
        ControllerProcess { child, port, log }
    }

    /// The controller's /metrics text ("" while it is not serving).
    pub async fn metrics(&self) -> String {
        self.http_get("/metrics")
            .await
            .map(|(_, body)| body)
            .unwrap_or_default()
    }

    /// GET a path of the controller's HTTP server: (status code, whole response), or None while
    /// it is not serving.
    pub async fn http_get(&self, path: &str) -> Option<(u16, String)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .ok()?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = String::new();
        let _ = s.read_to_string(&mut buf).await;
        let code = buf.split_whitespace().nth(1)?.parse().ok()?;
        Some((code, buf))
    }

    /// The value of a metric line (exact series name with labels), 0 when absent.
    pub async fn metric(&self, series: &str) -> f64 {
        self.metrics()
            .await
            .lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0.0)
    }

    /// SIGTERM, then wait for the process to exit.
    pub fn terminate(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGKILL: a crash.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Poll `check` until it returns Some, or panic after `timeout` naming what was awaited.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: std::time::Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if std::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}
