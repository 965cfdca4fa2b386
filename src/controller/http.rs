//! The controller's small HTTP server: `/healthz`, `/readyz` and `/metrics` (Prometheus text format).

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
    ready_gauge: Gauge,
    registry: Registry,
}

impl Default for State {
    fn default() -> Self {
        Self::new()
    }
}

impl State {
    pub fn new() -> Self {
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
        let metrics = super::metrics::Metrics::register(&mut registry);
        State {
            metrics,
            inner: Arc::new(Inner {
                ready: AtomicBool::new(false),
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
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn readyz(AxumState(state): AxumState<State>) -> impl IntoResponse {
    if state.inner.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: waiting for the automend.io API",
        )
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
        let state = State::new();
        state.set_ready(true);
        let text = state.metrics_text();
        assert!(text.contains("automend_build_info{version=\""), "{text}");
        assert!(text.contains("automend_ready 1"), "{text}");
    }

    #[tokio::test]
    async fn readyz_follows_readiness() {
        let state = State::new();
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
        let _ = tx.send(());
        server.await.expect("join").expect("serve");
    }
}
