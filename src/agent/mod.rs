//! `automend agent`: the guest agent on a Linux VM (DESIGN.md §3–§5).
//!
//! It speaks the guest protocol through the shared [`Guest`] loop (the simulator's), as its VM's
//! own identity from a kubeconfig issued by `automend guest-kubeconfig`, with a real machine
//! behind the [`Backend`]: apt or dnf (chosen from `/etc/os-release`) for assessment and exact-version
//! installation, systemd and configuration files for the services. `--root` points it at a
//! sandboxed root instead of `/` (tests, image building); results are kept in `--state-dir` until
//! the API server has them.

pub mod apt;
pub mod credential;
pub mod dnf;
pub mod enroll;
pub mod exec;
pub mod inventory;
pub mod os;
pub mod patching;
mod run;
pub mod services;
pub mod sources;
pub mod updateinfo;

use std::path::{Path, PathBuf};
use std::time::Duration;

use tracing::{info, warn};

use crate::api::{
    AvailablePackage, EffectiveConfiguration, GuestOs, HealthCheck, HttpScheme, PatchMode,
    PinnedPackage, ReleaseSnapshot, ServiceObservation, VirtualMachine,
};
use crate::guest::{Assessed, Backend, Installed};
use os::{Family, OsRelease};
pub use run::run;
use services::{Host, HostSettings};

/// `automend agent` flags.
#[derive(Clone, Debug, clap::Args)]
pub struct AgentArgs {
    /// The VirtualMachine this machine is, with `--kubeconfig` (the manual path); an enrolled
    /// machine knows its VM from its state directory.
    #[arg(long, env = "AUTOMEND_VM")]
    pub vm: Option<String>,
    /// Its namespace (default: the kubeconfig context's namespace).
    #[arg(long, short = 'n', env = "AUTOMEND_NAMESPACE")]
    pub namespace: Option<String>,
    /// The kubeconfig from `automend guest-kubeconfig` (the VM's own identity).
    #[arg(
        long,
        env = "AUTOMEND_KUBECONFIG",
        default_value = "/etc/automend/kubeconfig"
    )]
    pub kubeconfig: PathBuf,
    /// The machine's root: `/`, or a sandboxed root (dpkg --root, apt Dir, dnf --installroot,
    /// systemctl --root); nothing outside it is changed.
    #[arg(long, default_value = "/")]
    pub root: PathBuf,
    /// Where the agent keeps its results until reported, and its inventory.
    #[arg(long, default_value = "/var/lib/automend")]
    pub state_dir: PathBuf,
    /// The package manager (default: from os-release: apt for Debian/Ubuntu, dnf for RHEL).
    #[arg(long, value_enum)]
    pub package_manager: Option<Family>,
    /// How often the heartbeat Lease is renewed.
    #[arg(long, env = "AUTOMEND_HEARTBEAT_INTERVAL", default_value = "60s", value_parser = crate::logic::duration::parse)]
    pub heartbeat_interval: Duration,
    /// How often the machine is re-observed for drift.
    #[arg(long, env = "AUTOMEND_OBSERVE_INTERVAL", default_value = "60s", value_parser = crate::logic::duration::parse)]
    pub observe_interval: Duration,
    /// Lifetime asked for each renewed token (at least 10m; the API server may shorten it).
    #[arg(long, env = "AUTOMEND_TOKEN_LIFETIME", default_value = "168h", value_parser = crate::logic::duration::parse)]
    pub token_lifetime: Duration,
    /// Renew the token this often instead of at 80% of its lifetime (tests).
    #[arg(long, value_parser = crate::logic::duration::parse)]
    pub token_renew_every: Option<Duration>,
    #[command(flatten)]
    pub enroll: enroll::EnrollArgs,
    #[command(flatten)]
    pub host: HostSettings,
    #[command(flatten)]
    pub reboot: patching::RebootSettings,
    #[command(flatten)]
    pub clock: crate::clock::ClockArgs,
}

/// The package manager in use, or why there is none.
#[derive(Clone, Debug)]
pub enum Packages {
    Apt(apt::Apt),
    Dnf(dnf::Dnf),
    Unavailable(String),
}

impl Packages {
    pub async fn assess(&self, snapshot: Option<&ReleaseSnapshot>) -> Result<Assessed, String> {
        match self {
            Packages::Apt(a) => Ok(Assessed {
                packages: a.assess(snapshot).await?,
                reboot_pending: a.reboot_required(),
            }),
            Packages::Dnf(d) => Ok(Assessed {
                packages: d.assess(snapshot).await?,
                reboot_pending: d.reboot_required().await,
            }),
            Packages::Unavailable(why) => Err(why.clone()),
        }
    }

    pub async fn installed(&self, names: &[String]) -> Result<Vec<PinnedPackage>, String> {
        match self {
            Packages::Apt(a) => a.installed(names).await,
            Packages::Dnf(d) => d.installed(names).await,
            Packages::Unavailable(why) => Err(why.clone()),
        }
    }

    pub async fn install(
        &self,
        packages: &[PinnedPackage],
        remove: &[String],
        snapshot: Option<&ReleaseSnapshot>,
    ) -> Installed {
        let ((installed, failed, error, unavailable), reboot) = match self {
            Packages::Apt(a) => {
                let out = a.install(packages, remove, snapshot).await;
                (out, a.reboot_required())
            }
            Packages::Dnf(d) => {
                let out = d.install(packages, remove, snapshot).await;
                let reboot = dnf::Dnf::needs_reboot(&out.0) || d.reboot_required().await;
                (out, reboot)
            }
            Packages::Unavailable(why) => (
                (vec![], packages.to_vec(), Some(why.clone()), Vec::new()),
                false,
            ),
        };
        Installed {
            installed,
            failed,
            previous_versions: Vec::new(),
            reboot_required: reboot,
            error,
            unavailable,
        }
    }

    pub async fn reboot_required(&self) -> bool {
        match self {
            Packages::Apt(a) => a.reboot_required(),
            Packages::Dnf(d) => d.reboot_required().await,
            Packages::Unavailable(_) => false,
        }
    }
}

/// What change tracking keeps in the state directory.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Tracking {
    inventory: Option<inventory::Inventory>,
    changes: Vec<String>,
}

/// The Linux guest behind the protocol.
pub struct Linux {
    host: Host,
    packages: Packages,
    os: GuestOs,
    state_dir: PathBuf,
    clock: crate::clock::Clock,
    patch_mode: Option<PatchMode>,
    health_check: Option<HealthCheck>,
    healthy: bool,
    reboot_pending: bool,
    problems: Vec<String>,
    health_problem: Option<String>,
    tracking: Tracking,
    reboot: patching::RebootSettings,
}

impl Linux {
    /// A backend for the machine at `root`; what cannot be found out is kept as a problem.
    pub fn new(
        root: &Path,
        state_dir: &Path,
        family: Option<Family>,
        settings: HostSettings,
        clock: crate::clock::Clock,
    ) -> Linux {
        let mut problems = Vec::new();
        let release = OsRelease::read(root).map_err(|e| problems.push(e)).ok();
        let family = family.map(Ok).unwrap_or_else(|| match &release {
            Some(r) => r.family(),
            None => Err(
                "cannot choose a package manager without os-release: pass --package-manager".into(),
            ),
        });
        let sandboxed = root != Path::new("/");
        let apt_config = (sandboxed && family == Ok(Family::Apt)).then(|| {
            let path = state_dir.join("apt-sandbox.conf");
            let r = root.display();
            let body = format!("Dir \"{r}/\";\nDir::State::status \"{r}/var/lib/dpkg/status\";\n");
            if let Err(e) = services::write_file(&path, &body, 0o644) {
                problems.push(format!("preparing apt for the sandbox root: {e}"));
            }
            path
        });
        let packages = match &family {
            Ok(Family::Apt) => Packages::Apt(apt::Apt::new(root, apt_config.clone(), state_dir)),
            Ok(Family::Dnf) => Packages::Dnf(dnf::Dnf::new(root, state_dir)),
            Err(e) => {
                problems.push(e.clone());
                Packages::Unavailable(e.clone())
            }
        };
        let tracking = match std::fs::read(state_dir.join("inventory.json")) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                problems.push(format!(
                    "the change-tracking inventory {} is damaged ({e}); starting a new one",
                    state_dir.join("inventory.json").display()
                ));
                Tracking::default()
            }),
            Err(_) => Tracking::default(),
        };
        Linux {
            host: Host {
                root: root.to_path_buf(),
                live: !sandboxed && Path::new("/run/systemd/system").exists(),
                family: *family.as_ref().unwrap_or(&Family::Apt),
                settings,
                apt_config,
            },
            packages,
            os: release
                .map(|r| r.guest_os(os::kernel()))
                .unwrap_or_default(),
            state_dir: state_dir.to_path_buf(),
            clock,
            patch_mode: None,
            health_check: None,
            healthy: true,
            reboot_pending: false,
            problems,
            health_problem: None,
            tracking,
            reboot: patching::RebootSettings::default(),
        }
    }

    /// How this machine reboots and where its boot marker lives.
    pub fn with_reboot(mut self, reboot: patching::RebootSettings) -> Self {
        self.reboot = reboot;
        self
    }

    pub fn host(&self) -> &Host {
        &self.host
    }

    /// Take the inventory, record what changed; the differences are why tracking is incomplete.
    async fn track(&mut self, tracked: &[String]) -> Vec<String> {
        let mut differences = Vec::new();
        let mut inv = inventory::Inventory {
            units: inventory::enabled_units(&self.host.root),
            ..Default::default()
        };
        match self.packages.installed(&[]).await {
            Ok(p) => inv.packages = p.into_iter().map(|p| (p.name, p.version)).collect(),
            Err(e) => {
                differences.push(format!("package inventory: {e}"));
                if let Some(old) = &self.tracking.inventory {
                    inv.packages = old.packages.clone();
                }
            }
        }
        for path in tracked {
            match inventory::digest(&self.host.root, path) {
                Ok(d) => {
                    inv.files.insert(path.clone(), d);
                }
                Err(e) => {
                    differences.push(e);
                    if let Some(d) = self
                        .tracking
                        .inventory
                        .as_ref()
                        .and_then(|o| o.files.get(path))
                    {
                        inv.files.insert(path.clone(), d.clone());
                    }
                }
            }
        }
        if self.tracking.inventory.as_ref() != Some(&inv) {
            if let Some(old) = &self.tracking.inventory {
                let now = self.clock.now();
                for c in inventory::diff(old, &inv) {
                    info!(change = %c, "change tracking");
                    self.tracking.changes.push(format!("{now}: {c}"));
                }
                let n = self.tracking.changes.len();
                self.tracking.changes.drain(..n.saturating_sub(50));
            }
            self.tracking.inventory = Some(inv);
            let path = self.state_dir.join("inventory.json");
            match serde_json::to_string(&self.tracking) {
                Ok(body) => {
                    if let Err(e) = services::write_file(&path, &body, 0o600) {
                        differences.push(format!("keeping the inventory: {e}"));
                    }
                }
                Err(e) => differences.push(format!("keeping the inventory: {e}")),
            }
        }
        differences
    }

    async fn check_health(&mut self) {
        let Some(check) = self.health_check.clone() else {
            self.healthy = true;
            self.health_problem = None;
            return;
        };
        let timeout = crate::logic::duration::parse_or(
            &check.timeout,
            Duration::from_secs(10),
            "this VirtualMachine",
            "spec.healthCheck.timeout",
        );
        let result = if let Some(argv) = check.command.as_ref().filter(|a| !a.is_empty()) {
            match exec::run(&argv[0], &argv[1..], &[], timeout).await {
                Ok(o) if o.success() => Ok(()),
                Ok(o) => Err(format!(
                    "health check {:?} failed (exit {}): {}",
                    argv.join(" "),
                    o.code.map_or("signal".into(), |c| c.to_string()),
                    o.tail()
                )),
                Err(e) => Err(format!("health check: {e}")),
            }
        } else if let Some(http) = &check.http_get {
            http_check(http.scheme, http.port, &http.path, timeout).await
        } else {
            Ok(())
        };
        self.healthy = result.is_ok();
        self.health_problem = result.err();
    }
}

/// An HTTP GET on the guest's loopback: a 2xx or 3xx answer is healthy.
async fn http_check(
    scheme: HttpScheme,
    port: i32,
    path: &str,
    limit: Duration,
) -> Result<(), String> {
    use http_body_util::Empty;
    use hyper::body::Bytes;
    if scheme == HttpScheme::HTTPS {
        return Err(format!(
            "health check https://127.0.0.1:{port}{path}: HTTPS checks are not supported by the Linux agent; use a command check (e.g. curl)"
        ));
    }
    let url = format!("http://127.0.0.1:{port}{path}");
    let attempt = async {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port as u16))
            .await
            .map_err(|e| e.to_string())?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = hyper::Request::get(path)
            .header("host", format!("127.0.0.1:{port}"))
            .header(
                "user-agent",
                concat!("automend-agent/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        Ok::<u16, String>(resp.status().as_u16())
    };
    match tokio::time::timeout(limit, attempt).await {
        Err(_) => Err(format!(
            "health check {url}: no answer within {}s",
            limit.as_secs()
        )),
        Ok(Err(e)) => Err(format!("health check {url}: {e}")),
        Ok(Ok(code)) if (200..400).contains(&code) => Ok(()),
        Ok(Ok(code)) => Err(format!("health check {url}: HTTP {code}")),
    }
}

impl Backend for Linux {
    fn os(&self) -> GuestOs {
        self.os.clone()
    }

    async fn run_hook(
        &mut self,
        hook: crate::api::HookName,
        spec: &crate::api::Hook,
        env: Vec<(String, String)>,
    ) -> crate::api::HookRun {
        info!(hook = %hook, command = %spec.command, "running a patch hook");
        patching::run_hook(hook, spec, env).await
    }

    fn mark_boot(&mut self, what: &str) -> Result<(), String> {
        patching::mark(&self.reboot.marker(), what)
    }

    fn boot_marked(&self) -> bool {
        self.reboot.marker().exists()
    }

    async fn reboot(&mut self) -> Result<(), String> {
        patching::reboot(&self.reboot.reboot_command).await
    }

    async fn apply(&mut self, config: &EffectiveConfiguration) -> Result<(), String> {
        self.host.apply(config, self.patch_mode).await
    }

    async fn observe(&mut self, config: &EffectiveConfiguration) -> Vec<ServiceObservation> {
        self.check_health().await;
        self.reboot_pending = self.packages.reboot_required().await;
        let tracking = if config.services.change_tracking.enabled {
            let files = config.services.change_tracking.tracked_files.clone();
            self.track(&files).await
        } else {
            Vec::new()
        };
        self.host.observe(config, self.patch_mode, tracking).await
    }

    async fn assess(&mut self, snapshot: Option<&ReleaseSnapshot>) -> Result<Assessed, String> {
        if let Some(s) = snapshot {
            info!(snapshot = %s.timestamp, "assessing against a release's snapshot");
        }
        let out = self.packages.assess(snapshot).await;
        if let Ok(a) = &out {
            let count =
                |f: fn(&AvailablePackage) -> bool| a.packages.iter().filter(|p| f(p)).count();
            info!(
                security = count(|p| p.classification != crate::api::Classification::Other),
                other = count(|p| p.classification == crate::api::Classification::Other),
                "assessed"
            );
        }
        out
    }

    async fn install(
        &mut self,
        packages: &[PinnedPackage],
        remove: &[String],
        snapshot: Option<&ReleaseSnapshot>,
    ) -> Installed {
        info!(
            packages = %packages.iter().map(|p| format!("{}={}", p.name, p.version)).collect::<Vec<_>>().join(" "),
            remove = %remove.join(" "),
            snapshot = %snapshot.map(|s| s.timestamp.as_str()).unwrap_or("none"),
            "installing"
        );
        let out = self.packages.install(packages, remove, snapshot).await;
        if let Some(e) = &out.error {
            warn!(error = %e, "installing");
        }
        out
    }

    fn seen(&mut self, vm: &VirtualMachine) {
        self.patch_mode = vm.status.as_ref().and_then(|s| s.patch_mode);
        self.health_check = vm.spec.health_check.as_deref().cloned();
    }

    fn apply_key(&self) -> Option<String> {
        self.patch_mode.map(|m| format!("{m:?}"))
    }

    async fn installed_versions(&mut self, names: &[String]) -> Result<Vec<PinnedPackage>, String> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        self.packages.installed(names).await
    }

    fn problems(&self) -> Vec<String> {
        self.problems
            .iter()
            .cloned()
            .chain(self.health_problem.clone())
            .collect()
    }

    fn changes(&self) -> Vec<String> {
        self.tracking.changes.clone()
    }

    fn healthy(&self) -> bool {
        self.healthy
    }

    fn reboot_pending(&self) -> bool {
        self.reboot_pending
    }
}
