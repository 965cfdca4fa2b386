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
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
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

/// The API request a client makes, as the API server's own metrics name it: verb (get, list,
/// watch, create, update, patch, delete, deletecollection) and resource (with its subresource,
/// `virtualmachines/status`); `-` for a path that names no resource (`/version`, discovery).
pub fn request_kind(method: &http::Method, path: &str, query: Option<&str>) -> (String, String) {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let rest = match segments.as_slice() {
        ["api", _version, rest @ ..] => rest,
        ["apis", _group, _version, rest @ ..] => rest,
        _ => &[][..],
    };
    let (resource, name, sub) = match rest {
        ["namespaces", _ns, resource, rest @ ..] => (*resource, rest.first(), rest.get(1)),
        [resource, rest @ ..] if !resource.is_empty() => (*resource, rest.first(), rest.get(1)),
        _ => return (method.as_str().to_ascii_lowercase(), "-".into()),
    };
    let watch = query.is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"));
    let verb = match (method.as_str(), name.is_some()) {
        ("GET", _) if watch => "watch",
        ("GET", true) => "get",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        (other, _) => return (other.to_ascii_lowercase(), "-".into()),
    };
    let resource = match sub {
        Some(s) => format!("{resource}/{s}"),
        None => resource.to_string(),
    };
    (verb.into(), resource)
}

/// Counts every request a client makes by `request_kind` (the controller's
/// `automend_api_requests_total`: what it costs the API server, per verb and resource).
#[derive(Clone)]
pub struct CountLayer(pub Family<ApiRequestLabel, Counter>);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiRequestLabel {
    pub verb: String,
    pub resource: String,
}

impl<S> Layer<S> for CountLayer {
    type Service = Count<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Count {
            inner,
            counts: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Count<S> {
    inner: S,
    counts: Family<ApiRequestLabel, Counter>,
}

impl<S, B> Service<http::Request<B>> for Count<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let (verb, resource) = request_kind(req.method(), req.uri().path(), req.uri().query());
        self.counts
            .get_or_create(&ApiRequestLabel { verb, resource })
            .inc();
        self.inner.call(req)
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

/// A client from the environment's configuration, with request time limits, counting its
/// requests into `counts`.
pub async fn counted_client(counts: Family<ApiRequestLabel, Counter>) -> anyhow::Result<Client> {
    Ok(ClientBuilder::try_from(Config::infer().await?)?
        .with_layer(&RequestTimeoutLayer(REQUEST_TIMEOUT))
        .with_layer(&CountLayer(counts))
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_named_as_the_api_server_names_them() {
        let kind = |m: http::Method, uri: &str| {
            let uri: http::Uri = uri.parse().expect("uri");
            let (v, r) = request_kind(&m, uri.path(), uri.query());
            format!("{v} {r}")
        };
        use http::Method as M;
        for (m, uri, want) in [
            (M::GET, "/api/v1/namespaces", "list namespaces"),
            (M::GET, "/api/v1/namespaces/fleet", "get namespaces"),
            (
                M::POST,
                "/api/v1/namespaces/fleet/serviceaccounts",
                "create serviceaccounts",
            ),
            (
                M::POST,
                "/api/v1/namespaces/fleet/serviceaccounts/g/token",
                "create serviceaccounts/token",
            ),
            (
                M::PATCH,
                "/apis/automend.io/v1alpha1/namespaces/fleet/virtualmachines/web-0/status?fieldManager=x",
                "patch virtualmachines/status",
            ),
            (
                M::GET,
                "/apis/automend.io/v1alpha1/virtualmachines?watch=true&resourceVersion=1",
                "watch virtualmachines",
            ),
            (
                M::GET,
                "/apis/automend.io/v1alpha1/virtualmachines?limit=500",
                "list virtualmachines",
            ),
            (
                M::PUT,
                "/apis/coordination.k8s.io/v1/namespaces/f/leases/l",
                "update leases",
            ),
            (
                M::DELETE,
                "/apis/rbac.authorization.k8s.io/v1/namespaces/f/roles/r",
                "delete roles",
            ),
            (
                M::DELETE,
                "/api/v1/namespaces/f/pods",
                "deletecollection pods",
            ),
            (M::GET, "/version", "get -"),
            (M::GET, "/apis/automend.io/v1alpha1", "get -"),
        ] {
            assert_eq!(kind(m, uri), want, "{uri}");
        }
    }

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
