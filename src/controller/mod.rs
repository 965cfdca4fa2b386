//! `automend controller`: the operator process.
//!
//! Today it serves `/healthz`, `/readyz` and `/metrics` and checks that the Automend API is installed;
//! the reconcilers, leader election and Events arrive with the controller work (see ARCHITECTURE.md).

mod http;

use std::net::SocketAddr;

use kube::Client;
use kube::discovery::ApiGroup;
use tracing::{info, warn};

pub use http::State;

/// Settings of the controller process.
#[derive(Clone, Debug, clap::Args)]
pub struct Settings {
    /// Elect a leader among replicas through a Lease, so that only one acts.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// Namespace of the leader-election Lease (the Helm release's namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "automend-system")]
    pub leader_election_namespace: String,
    /// Address of the HTTP server for /metrics, /healthz and /readyz.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,
}

/// Run until SIGTERM or Ctrl-C.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let client = Client::try_default().await?;
    let state = State::new();
    let listener = tokio::net::TcpListener::bind(settings.http_addr).await?;
    info!(addr = %settings.http_addr, leader_elect = settings.leader_elect, "serving /metrics, /healthz and /readyz");
    let server = http::serve(listener, state.clone(), shutdown_signal());

    let readiness = async {
        // Ready once the API server answers and serves our group.
        loop {
            match api_group(&client).await {
                Ok(group) => {
                    info!(
                        version = group.preferred_version_or_latest(),
                        "the automend.io API is installed"
                    );
                    state.set_ready(true);
                    break;
                }
                Err(e) => {
                    warn!(error = %e, "waiting for the automend.io API (are the CRDs installed?)")
                }
            }
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        }
    };
    tokio::select! {
        r = server => r?,
        _ = async { readiness.await; std::future::pending::<()>().await } => {}
    }
    info!("shut down");
    Ok(())
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
