//! The Kubernetes client of the controller, the simulator and the agent, with a time limit on
//! every request until its answer's headers arrive.
//!
//! kube sets no read timeout by default (watches are long-lived and guarded by their own idle
//! timeout once they stream), so a request an API server accepted and then never answered — as
//! happens around an API server restart, to lists and to the start of watches alike — waits for
//! ever, and a watcher stuck that way never watches again. Here every request fails after
//! `REQUEST_TIMEOUT` without headers and is retried by its caller. A watch's headers come as soon
//! as the API server has started it; only its body streams for minutes, which this limit does not
//! touch.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use kube::client::ClientBuilder;
use kube::{Client, Config};
use tower::{BoxError, Layer, Service};

/// The longest a non-watch request may take to get its answer's headers.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Clone, Copy, Debug)]
pub struct RequestTimeoutLayer(pub Duration);

impl<S> Layer<S> for RequestTimeoutLayer {
    type Service = RequestTimeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestTimeout {
            inner,
            timeout: self.0,
        }
    }
}

#[derive(Clone, Debug)]
pub struct RequestTimeout<S> {
    inner: S,
    timeout: Duration,
}

type Boxed<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

impl<S, B> Service<http::Request<B>> for RequestTimeout<S>
where
    S: Service<http::Request<B>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Boxed<S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let limit = self.timeout;
        let what = format!("{} {}", req.method(), req.uri().path());
        let fut = self.inner.call(req);
        Box::pin(async move {
            match tokio::time::timeout(limit, fut).await {
                Ok(r) => r.map_err(Into::into),
                Err(_) => Err(format!("{what}: no answer within {limit:?}").into()),
            }
        })
    }
}

/// A client from the environment's kubeconfig (or in-cluster config), with request time limits.
pub async fn client() -> anyhow::Result<Client> {
    client_for(Config::infer().await?)
}

/// A client for a configuration, with request time limits.
pub fn client_for(config: Config) -> anyhow::Result<Client> {
    Ok(ClientBuilder::try_from(config)?
        .with_layer(&RequestTimeoutLayer(REQUEST_TIMEOUT))
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_request_that_never_answers_fails_after_the_limit() {
        let never = tower::service_fn(|_req: http::Request<()>| async {
            std::future::pending::<Result<http::Response<()>, BoxError>>().await
        });
        let mut svc = RequestTimeoutLayer(Duration::from_millis(50)).layer(never);
        let req = http::Request::get("https://h/api/v1/namespaces")
            .body(())
            .expect("req");
        let err = svc.call(req).await.expect_err("timed out");
        assert!(err.to_string().contains("no answer within"), "{err}");
        let answering = tower::service_fn(|_req: http::Request<()>| async {
            Ok::<_, BoxError>(http::Response::new(()))
        });
        let mut ok = RequestTimeoutLayer(Duration::from_millis(50)).layer(answering);
        let req = http::Request::get("https://h/api/v1/namespaces?watch=true")
            .body(())
            .expect("req");
        ok.call(req).await.expect("answered in time");
    }
}
