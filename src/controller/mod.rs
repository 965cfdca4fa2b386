//! `automend controller`: the operator process.
//!
//! One replica at a time is the leader (a `coordination.k8s.io` Lease); the leader runs the
//! ConfigurationProfile and VirtualMachine controllers. Every replica serves `/healthz`, `/readyz`
//! and `/metrics`. SIGTERM stops the controllers gracefully and releases the Lease.

pub mod authorizer;
mod context;
mod enroll;
mod events;
mod http;
mod identities;
mod interned;
pub mod metrics;
mod onboarded;
mod own_writes;
mod profile;
mod reconcile;
mod rollout;
mod serving_cert;
mod shared;
mod vm;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::FutureExt;
use kube::Client;
use kube::discovery::ApiGroup;
use kube::runtime::events::Reporter;
use kube_lease_manager::LeaseManagerBuilder;
use tracing::{error, info, warn};

pub use context::{Context, Error};
pub use http::State;

use crate::logic::catalog::ImageCatalog;
use crate::logic::duration::parse as parse_duration;

/// Settings of the controller process.
#[derive(Clone, Debug, clap::Args)]
pub struct Settings {
    /// Elect a leader among replicas through a Lease, so that only one acts.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// Namespace of the leader-election Lease (the Helm release's namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "automend-system")]
    pub leader_election_namespace: String,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "automend-controller")]
    pub leader_election_id: String,
    /// This replica's identity in the election and in Events (default: $POD_NAME, else host-pid).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Address of the HTTP server for /metrics, /healthz and /readyz.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,
    /// Manage only the VirtualMachines of this namespace (default: every namespace).
    #[arg(long)]
    pub namespace: Option<String>,
    /// Manage only the ConfigurationProfiles matching this label selector (default: all).
    #[arg(long)]
    pub profile_selector: Option<String>,
    /// A VM whose guest has not renewed its Lease for this long is not running (Pending).
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub heartbeat_grace: Duration,
    /// A YAML image catalog that replaces the built-in one (see `automend catalog`).
    #[arg(long)]
    pub image_catalog: Option<std::path::PathBuf>,
    /// How many reconciles run at once, per controller.
    #[arg(long, default_value_t = 16)]
    pub concurrency: u16,
    /// Geo-paired regions, never patched in the same phase: "eastus=westus,northeurope=westeurope".
    #[arg(long, value_parser = parse_pairs, default_value = "")]
    pub region_pairs: RegionPairs,
    /// How long an installation is expected to take: none starts with less maintenance window left.
    #[arg(long, default_value = "30m", value_parser = parse_duration)]
    pub install_duration: Duration,
    /// When PatchRollouts are created in namespaces with UpdateRings: "<nth> <weekday> <HH:MM>" in
    /// UTC, e.g. "2 Tuesday 17:00" (Patch Tuesday), or "off".
    #[arg(long, default_value = "2 Tuesday 17:00", value_parser = crate::logic::rings::Cadence::parse)]
    pub release_cadence: crate::logic::rings::Cadence,
    /// A watch that delivers nothing for this long is re-established (a fresh list).
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub watch_idle: Duration,
    /// /healthz fails (so Kubernetes restarts the controller) when a watch has failed, or stayed
    /// silent after being re-established, for this long; /readyz fails at once.
    #[arg(long, default_value = "2m", value_parser = parse_duration)]
    pub watch_unhealthy_after: Duration,
    #[command(flatten)]
    pub clock: crate::clock::ClockArgs,
    #[command(flatten)]
    pub guest_authorizer: authorizer::Args,
}

/// Geo-pairs of regions.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RegionPairs(pub Vec<(String, String)>);

pub fn parse_pairs(s: &str) -> Result<RegionPairs, String> {
    let mut out = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (a, b) = item
            .split_once('=')
            .ok_or_else(|| format!("region pair {item:?} must be \"region-a=region-b\""))?;
        let (a, b) = (a.trim(), b.trim());
        if a.is_empty() || b.is_empty() || a == b {
            return Err(format!(
                "region pair {item:?} must name two different regions, \"region-a=region-b\""
            ));
        }
        out.push((a.to_string(), b.to_string()));
    }
    Ok(RegionPairs(out))
}

fn identity(settings: &Settings) -> String {
    settings.identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "automend".into());
        format!("{host}-{}", std::process::id())
    })
}

/// Run until SIGTERM or Ctrl-C, or until leadership is lost (an error, so the Pod restarts).
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let catalog = match &settings.image_catalog {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the image catalog {}", path.display()))?;
            ImageCatalog::from_yaml(&text).map_err(anyhow::Error::msg)?
        }
        None => ImageCatalog::default(),
    };
    let clock = crate::clock::Clock::from_args(&settings.clock).map_err(anyhow::Error::msg)?;
    let health = crate::watch::Health::new(crate::watch::Limits {
        idle: settings.watch_idle,
        unhealthy_after: settings.watch_unhealthy_after,
    });
    let state = State::new(health.clone(), settings.guest_authorizer.webhook());
    let client = crate::kubeclient::counted_client(state.metrics.api_requests.clone()).await?;
    let listener = tokio::net::TcpListener::bind(settings.http_addr).await?;
    // The address bound (with port 0 the system picks the port; say which).
    let addr = listener.local_addr().unwrap_or(settings.http_addr);
    info!(%addr, leader_elect = settings.leader_elect, "serving /metrics, /healthz and /readyz");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
        .shared()
    };
    tokio::spawn(async move {
        shutdown_signal().await;
        info!("shutting down");
        let _ = stop_tx.send(true);
    });
    let server = tokio::spawn(http::serve(listener, state.clone(), stopped.clone()));
    if settings.guest_authorizer.webhook() {
        let bound = authorizer::bind(&settings.guest_authorizer).await?;
        tokio::spawn(authorizer::serve(
            bound,
            settings.namespace.clone(),
            state.metrics.clone(),
            stopped.clone(),
        ));
    }

    if !wait_for_api(&client, &state, stopped.clone()).await {
        let _ = server.await;
        return Ok(());
    }
    let guest_routing = authorizer::Routing::default();
    if settings.guest_authorizer.webhook() {
        // Guests get no Role: make sure the API server really asks us before relying on it, and
        // keep making sure (its configuration can change under us).
        authorizer::check_routed(&client, settings.namespace.as_deref()).await?;
        tokio::spawn(authorizer::keep_checking(
            client.clone(),
            settings.namespace.clone(),
            state.metrics.clone(),
            guest_routing.clone(),
            settings.guest_authorizer.authorizer_recheck_every,
            stopped.clone(),
        ));
    }

    let me = identity(&settings);
    let ctx = Arc::new(Context {
        recorder: events::Recorder::new(
            client.clone(),
            Reporter {
                controller: crate::identity::CONTROLLER_MANAGER.into(),
                instance: Some(me.clone()),
            },
        ),
        client: client.clone(),
        catalog,
        metrics: state.metrics.clone(),
        health,
        settings: settings.clone(),
        clock,
        guest_routing,
    });

    let result = if settings.leader_elect {
        lead(ctx.clone(), &me, stopped.clone()).await
    } else {
        // Without an election this process is the one that acts.
        ctx.metrics.leader.set(1);
        run_controllers(ctx.clone(), stopped.clone()).await;
        ctx.metrics.leader.set(0);
        Ok(())
    };
    state.set_ready(false);
    let _ = server.await;
    if let Err(e) = &result {
        error!(error = %e, "controller stopped");
    }
    info!("shut down");
    result
}

/// Wait until the API server answers and serves our group (readiness follows); false when
/// stopped first.
async fn wait_for_api(
    client: &Client,
    state: &State,
    stopped: impl std::future::Future<Output = ()> + Clone,
) -> bool {
    loop {
        match api_group(client).await {
            Ok(group) => {
                info!(
                    version = group.preferred_version_or_latest(),
                    "the automend.io API is installed"
                );
                state.set_ready(true);
                return true;
            }
            Err(e) => warn!(error = %e, "waiting for the automend.io API: {}", api_wait_reason(&e)),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = stopped.clone() => return false,
        }
    }
}

/// What a failed API discovery means, for the log: only a missing group is "install the CRDs".
fn api_wait_reason(e: &kube::Error) -> String {
    use kube::error::DiscoveryError;
    match e {
        kube::Error::Discovery(DiscoveryError::MissingApiGroup(g)) => format!(
            "the API server does not serve {g}; install the CRDs (helm install, or kubectl apply -f crds/)"
        ),
        kube::Error::Api(s) if s.code == 401 => {
            "the API server refuses our credentials (401); check the kubeconfig or the ServiceAccount token".into()
        }
        kube::Error::Api(s) if s.code == 403 => {
            "not allowed to read API discovery (403); check the controller's RBAC".into()
        }
        kube::Error::Api(s) => format!("the API server answered {} {}", s.code, s.reason),
        kube::Error::HyperError(_) | kube::Error::Service(_) => {
            "cannot reach the API server (is it running, and is the kubeconfig's server address right?)".into()
        }
        other => format!("unexpected error: {other}"),
    }
}

/// Run the controllers while this replica holds the leader Lease; losing it is an error (the Pod
/// restarts and a fresh replica takes over).
async fn lead(
    ctx: Arc<Context>,
    me: &str,
    stopped: impl std::future::Future<Output = ()> + Send + Sync + Clone + Unpin + 'static,
) -> anyhow::Result<()> {
    let manager = LeaseManagerBuilder::new(ctx.client.clone(), &ctx.settings.leader_election_id)
        .with_namespace(&ctx.settings.leader_election_namespace)
        .with_identity(me)
        .with_duration(15)
        .with_grace(5)
        .build()
        .await
        .context("setting up leader election")?;
    let (mut leader, handle) = manager.watch().await;
    info!(identity = %me, lease = %ctx.settings.leader_election_id, "waiting to be elected leader");
    let elected = tokio::select! {
        r = leader.wait_for(|l| *l) => r.is_ok(),
        _ = stopped.clone() => false,
    };
    let result = if elected {
        info!(identity = %me, "elected leader; starting the controllers");
        ctx.metrics.leader.set(1);
        let mut lost_rx = leader.clone();
        let lost = async move {
            let _ = lost_rx.wait_for(|l| !*l).await;
        }
        .shared();
        let stop = futures::future::select(stopped.clone(), lost.clone())
            .map(|_| ())
            .shared();
        run_controllers(ctx.clone(), stop).await;
        ctx.metrics.leader.set(0);
        if lost.now_or_never().is_some() {
            Err(anyhow::anyhow!(
                "lost the leader election Lease; exiting so that a fresh replica takes over"
            ))
        } else {
            Ok(())
        }
    } else {
        Ok(())
    };
    // Dropping the receiver makes the manager release the Lease, so another replica takes
    // over at once instead of after the Lease expires.
    drop(leader);
    match tokio::time::timeout(Duration::from_secs(5), handle).await {
        Ok(Ok(Err(e))) => warn!(error = %e, "releasing the leader Lease"),
        Err(_) => warn!("timed out releasing the leader Lease"),
        _ => info!("released the leader Lease"),
    }
    result
}

async fn run_controllers(
    ctx: Arc<Context>,
    stop: impl std::future::Future<Output = ()> + Send + Sync + Clone + 'static,
) {
    let shared = shared::Shared::start();
    let vm_changes = shared.vm_changes.subscribe();
    let vm_controller = vm::run(ctx.clone(), shared.clone(), stop.clone());
    let profile_controller = profile::run(ctx.clone(), shared.clone(), stop.clone());
    let rollout_controller = rollout::run(ctx.clone(), shared.clone(), vm_changes, stop.clone());
    let enrollment = enroll::run(ctx.clone(), shared.clone(), stop.clone());
    let onboardings = onboarded::run(ctx.clone(), shared.clone(), stop.clone());
    let gauges = vm::phase_gauges(ctx.clone(), shared, stop);
    tokio::join!(
        vm_controller,
        profile_controller,
        rollout_controller,
        enrollment,
        onboardings,
        gauges
    );
}

/// Publish Events about an object (after the writes they describe), counting them by reason.
pub(crate) async fn publish_events(
    ctx: &Context,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
    events: &[crate::logic::events::EventSpec],
) {
    for ev in events {
        ctx.metrics
            .events
            .get_or_create(&metrics::EventLabel {
                reason: ev.reason.into(),
            })
            .inc();
        let event = kube::runtime::events::Event {
            type_: if ev.warning {
                kube::runtime::events::EventType::Warning
            } else {
                kube::runtime::events::EventType::Normal
            },
            reason: ev.reason.into(),
            // The API server refuses notes over 1024 bytes (and the Event would be lost).
            note: Some(crate::logic::text::safe(
                &ev.note,
                crate::logic::text::EVENT_NOTE,
            )),
            action: ev.action.into(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&event, reference).await {
            warn!(error = %e, reason = ev.reason, "publishing an Event failed");
        }
    }
}

async fn api_group(client: &Client) -> Result<ApiGroup, kube::Error> {
    kube::discovery::group(client, crate::api::GROUP).await
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_wait_reasons_tell_a_closed_port_from_missing_crds() {
        let missing = kube::Error::Discovery(kube::error::DiscoveryError::MissingApiGroup(
            "automend.io".into(),
        ));
        assert!(api_wait_reason(&missing).contains("install the CRDs"));
        let unreachable = kube::Error::Service(Box::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "connection refused",
        )));
        let r = api_wait_reason(&unreachable);
        assert!(r.contains("cannot reach the API server"), "{r}");
        assert!(!r.contains("CRD"), "{r}");
        let forbidden = kube::Error::Api(Box::new(
            kube::core::Status::failure("no", "Forbidden").with_code(403),
        ));
        assert!(api_wait_reason(&forbidden).contains("RBAC"));
    }
}
