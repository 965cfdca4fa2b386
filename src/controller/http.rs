//! The controller's small HTTP server: `/healthz`, `/readyz` and `/metrics` (Prometheus text format).
//!
//! `/readyz` answers ok once the automend.io API is served and while every watch has listed and
//! is not failing; `/healthz` fails when a watch has failed, or stayed silent after being
//! re-established, for longer than `--watch-unhealthy-after` (see `watch::health`), so the
//! kubelet restarts a controller that can no longer see the cluster.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State as AxumState;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

/// Shared state of the HTTP server.
#[derive(Clone)]
pub struct State {
    inner: Arc<Inner>,
    /// The controller's metrics, registered in this server's registry.
    pub metrics: super::metrics::Metrics,
}

struct Inner {
    ready: AtomicBool,
    health: crate::watch::Health,
    ready_gauge: Gauge,
    registry: Registry,
}

impl State {
    /// `guest_webhook`: under `--guest-authorization=webhook` (its metrics are served).
    pub fn new(health: crate::watch::Health, guest_webhook: bool) -> Self {
        let mut registry = Registry::with_prefix("automend");
        registry.register(
            "build",
            "Build information of the controller",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        let ready_gauge = Gauge::default();
        registry.register(
            "ready",
            "1 when the controller is ready",
            ready_gauge.clone(),
        );
        registry.register(
            "watch_restarts",
            "Watches re-established after delivering nothing for --watch-idle",
            health.restarts.clone(),
        );
        registry.register(
            "watch_failures",
            "Errors of watches (each retried)",
            health.failures.clone(),
        );
        let metrics = super::metrics::Metrics::register(&mut registry, guest_webhook);
        State {
            metrics,
            inner: Arc::new(Inner {
                ready: AtomicBool::new(false),
                health,
                ready_gauge,
                registry,
            }),
        }
    }

    pub fn set_ready(&self, ready: bool) {
        self.inner.ready.store(ready, Ordering::Relaxed);
        self.inner.ready_gauge.set(i64::from(ready));
    }

    pub fn metrics_text(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.inner.registry);
        out
    }
}

pub fn router(state: State) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn readyz(AxumState(state): AxumState<State>) -> impl IntoResponse {
    if !state.inner.ready.load(Ordering::Relaxed) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: waiting for the automend.io API".to_string(),
        );
    }
    match state.inner.health.verdict().ready {
        Ok(()) => (StatusCode::OK, "ok".to_string()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}")),
    }
}

async fn healthz(AxumState(state): AxumState<State>) -> impl IntoResponse {
    match state.inner.health.verdict().live {
        Ok(()) => (StatusCode::OK, "ok".to_string()),
        Err(why) => {
            tracing::error!(%why, "unhealthy: the kubelet should restart this controller");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("unhealthy: {why}"),
            )
        }
    }
}

async fn metrics(AxumState(state): AxumState<State>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics_text(),
    )
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    state: State,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_carry_build_info_and_readiness() {
        let state = State::new(crate::watch::Health::default(), false);
        state.set_ready(true);
        let text = state.metrics_text();
        assert!(text.contains("automend_build_info{version=\""), "{text}");
        assert!(text.contains("automend_ready 1"), "{text}");
    }

    #[tokio::test]
    async fn readyz_follows_readiness() {
        let health = crate::watch::Health::new(crate::watch::Limits {
            idle: std::time::Duration::from_millis(10),
            unhealthy_after: std::time::Duration::from_millis(10),
        });
        let state = State::new(health.clone(), false);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, state.clone(), async {
            let _ = rx.await;
        }));
        let get = |path: &'static str| async move {
            let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            stream.write_all(req.as_bytes()).await.expect("write");
            let mut buf = String::new();
            stream.read_to_string(&mut buf).await.expect("read");
            buf
        };
        assert!(get("/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(get("/readyz").await.starts_with("HTTP/1.1 503"));
        state.set_ready(true);
        assert!(get("/readyz").await.starts_with("HTTP/1.1 200"));
        assert!(get("/metrics").await.contains("automend_ready 1"));
        // A watch that has not listed: not ready, and once silent beyond its bounds, not live.
        let _probe = health.probe("virtualmachines");
        let r = get("/readyz").await;
        assert!(r.starts_with("HTTP/1.1 503"), "{r}");
        assert!(
            r.contains("virtualmachines has not completed its first list"),
            "{r}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        let h = get("/healthz").await;
        assert!(h.starts_with("HTTP/1.1 500"), "{h}");
        assert!(
            h.contains("watch virtualmachines has delivered nothing"),
            "{h}"
        );
        let _ = tx.send(());
        server.await.expect("join").expect("serve");
    }
}
