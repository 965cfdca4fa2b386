//! The guest authorizer's HTTPS server (`--guest-authorization=webhook`): the API server's
//! authorization webhook posts a SubjectAccessReview for each guest request its
//! AuthorizationConfiguration routes here, and gets `identity::authorizer::decide`'s answer.
//!
//! Served by every replica from the start (the decision needs no cache and no leadership), so a
//! standby or a restarting leader never leaves guests without answers. A review it cannot parse
//! gets 400; the API server then applies the webhook's failurePolicy (NoOpinion: RBAC decides).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tracing::{debug, error, info, warn};

use super::metrics::{DecisionLabel, Metrics};
use super::serving_cert::{self, ServingCert};
use crate::identity::authorizer::{answer, decide};

/// How guests' requests to the API server are authorized.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum GuestAuthorization {
    /// A Role and RoleBinding per VM (any cluster). The API server's RBAC authorizer scans the
    /// namespace's RoleBindings on each guest request, so its cost grows with the VMs there.
    #[default]
    Rbac,
    /// This controller answers the API server's authorization webhook for guest ServiceAccounts:
    /// no per-VM Role or RoleBinding, and a guest request costs the same at any fleet size. Needs
    /// an AuthorizationConfiguration on the API server (README "Guest authorization").
    Webhook,
}

#[derive(Clone, Debug, clap::Args)]
pub struct Args {
    /// How guests' requests are authorized: `rbac` (a Role and RoleBinding per VM) or `webhook`
    /// (this controller is the API server's authorization webhook for guest ServiceAccounts).
    #[arg(long, env = "AUTOMEND_GUEST_AUTHORIZATION", value_enum, default_value_t = GuestAuthorization::Rbac)]
    pub guest_authorization: GuestAuthorization,
    /// Address of the guest authorizer's HTTPS server (with --guest-authorization=webhook); the
    /// API server posts SubjectAccessReviews to https://<this>/authorize.
    #[arg(
        long,
        env = "AUTOMEND_AUTHORIZER_ADDR",
        default_value = "127.0.0.1:8443"
    )]
    pub authorizer_addr: SocketAddr,
    /// PEM certificate (chain) of the guest authorizer's HTTPS server.
    #[arg(long, env = "AUTOMEND_AUTHORIZER_CERT")]
    pub authorizer_cert: Option<PathBuf>,
    /// PEM private key of that certificate.
    #[arg(long, env = "AUTOMEND_AUTHORIZER_KEY")]
    pub authorizer_key: Option<PathBuf>,
    /// How often a running controller checks that the API server still sends guest reviews to
    /// it (with --guest-authorization=webhook); when it does not, VMs whose guests fall silent
    /// say why, and automend_guest_authorizer_routed is 0.
    #[arg(long, default_value = "30s", value_parser = recheck_interval)]
    pub authorizer_recheck_every: Duration,
}

/// `--authorizer-recheck-every`: a duration of at least a second (one SubjectAccessReview each).
fn recheck_interval(s: &str) -> Result<Duration, String> {
    let d = crate::logic::duration::parse(s)?;
    if d < Duration::from_secs(1) {
        return Err(format!("{s} is shorter than the allowed minimum of 1s"));
    }
    Ok(d)
}

impl Args {
    pub fn webhook(&self) -> bool {
        self.guest_authorization == GuestAuthorization::Webhook
    }
}

/// The TLS configuration from the certificate and key files (read again when they change:
/// `serving_cert`); errors name the flag at fault.
pub fn tls_config(args: &Args) -> anyhow::Result<rustls::ServerConfig> {
    let (Some(cert), Some(key)) = (&args.authorizer_cert, &args.authorizer_key) else {
        anyhow::bail!(
            "--guest-authorization=webhook needs --authorizer-cert and --authorizer-key (PEM files of the HTTPS server the API server's webhook calls)"
        );
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cert = ServingCert::load(cert, key, provider.clone(), serving_cert::CHECK_EVERY)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(cert));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A TCP listener that hands out connections after their TLS handshake (one failed or slow
/// handshake is dropped, never the listener).
struct TlsListener {
    tcp: TcpListener,
    tls: TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, addr) = match self.tcp.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    warn!(error = %e, "guest authorizer: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            match tokio::time::timeout(Duration::from_secs(10), self.tls.accept(stream)).await {
                Ok(Ok(tls)) => return (tls, addr),
                Ok(Err(e)) => debug!(%addr, error = %e, "guest authorizer: TLS handshake failed"),
                Err(_) => debug!(%addr, "guest authorizer: TLS handshake timed out"),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

#[derive(Clone)]
struct Authorizer {
    scope: Option<Arc<str>>,
    metrics: Metrics,
}

async fn review(State(a): State<Authorizer>, body: Bytes) -> Response {
    let request: SubjectAccessReview = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("not a SubjectAccessReview: {e}"),
            )
                .into_response();
        }
    };
    let decision = decide(&request.spec, a.scope.as_deref());
    let label = if decision.allowed() {
        "allowed"
    } else {
        "no_opinion"
    };
    a.metrics
        .guest_authorizations
        .get_or_create(&DecisionLabel {
            decision: label.into(),
        })
        .inc();
    match serde_json::to_vec(&answer(&decision)) {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Bind the authorizer's address (so a taken port fails the start, naming the flag).
pub async fn bind(args: &Args) -> anyhow::Result<(TcpListener, TlsAcceptor)> {
    let tls = TlsAcceptor::from(Arc::new(tls_config(args)?));
    let tcp = TcpListener::bind(args.authorizer_addr)
        .await
        .with_context(|| format!("--authorizer-addr {}", args.authorizer_addr))?;
    Ok((tcp, tls))
}

/// Serve reviews until `shutdown`.
pub async fn serve(
    (tcp, tls): (TcpListener, TlsAcceptor),
    scope: Option<String>,
    metrics: Metrics,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let addr = tcp.local_addr()?;
    info!(%addr, "guest authorizer: answering SubjectAccessReviews at https://{addr}/authorize");
    axum::serve(TlsListener { tcp, tls }, app(scope, metrics))
        .with_graceful_shutdown(shutdown)
        .await
}

fn app(scope: Option<String>, metrics: Metrics) -> Router {
    Router::new()
        .route("/authorize", post(review))
        .with_state(Authorizer {
            scope: scope.map(Arc::from),
            metrics,
        })
}

/// What the controller last learnt of the API server's routing of guest reviews: nothing wrong
/// (`None`), or why every guest's requests are refused. Read by VM decisions
/// (`Inputs::guests_refused`); a change wakes every VM (`changes`).
#[derive(Clone)]
pub struct Routing {
    problem: Arc<std::sync::RwLock<Option<Arc<str>>>>,
    changed: tokio::sync::watch::Sender<()>,
}

impl Default for Routing {
    fn default() -> Self {
        Routing {
            problem: Arc::default(),
            changed: tokio::sync::watch::Sender::new(()),
        }
    }
}

impl Routing {
    /// Why guests are refused, if they are known to be.
    pub fn problem(&self) -> Option<Arc<str>> {
        self.problem.read().ok().and_then(|p| p.clone())
    }

    /// Record what the last check found; true when that changed.
    fn set(&self, problem: Option<String>) -> bool {
        let Ok(mut p) = self.problem.write() else {
            return false;
        };
        if p.as_deref() == problem.as_deref() {
            return false;
        }
        *p = problem.map(Arc::from);
        self.changed.send_replace(());
        true
    }

    /// A stream that yields once per change of what `problem` says.
    pub fn changes(&self) -> impl futures::Stream<Item = ()> + Send + 'static {
        let mut rx = self.changed.subscribe();
        rx.mark_unchanged();
        futures::stream::unfold(rx, |mut rx| async move {
            rx.changed().await.ok()?;
            Some(((), rx))
        })
    }
}

/// The review the probe asks for: the guest of a VM that need not exist reading that VM.
fn probe_review(scope: Option<&str>) -> SubjectAccessReview {
    use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReviewSpec};
    let ns = scope.unwrap_or("default");
    SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(format!(
                "system:serviceaccount:{ns}:{}",
                crate::identity::guest_name("automend-authorizer-probe")
            )),
            groups: Some(vec!["system:serviceaccounts".into()]),
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(ns.into()),
                verb: Some("get".into()),
                group: Some(crate::api::GROUP.into()),
                resource: Some("virtualmachines".into()),
                name: Some("automend-authorizer-probe".into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// What one probe found.
enum Probe {
    /// The API server asked this authorizer.
    Routed,
    /// The API server answered without it (what it answered).
    NotRouted(String),
    /// No answer (the API server unreachable, or refusing the controller).
    Unknown(String),
}

async fn probe(api: &kube::Api<SubjectAccessReview>, review: &SubjectAccessReview) -> Probe {
    match api.create(&Default::default(), review).await {
        Ok(r) => {
            let status = r.status.unwrap_or_default();
            let reason = status.reason.unwrap_or_default();
            if status.allowed && reason.starts_with("automend:") {
                Probe::Routed
            } else {
                Probe::NotRouted(format!("allowed={}, reason {reason:?}", status.allowed))
            }
        }
        Err(e) => Probe::Unknown(e.to_string()),
    }
}

/// Why guests are refused when the API server does not ask this controller.
fn refused_because(answer: &str) -> String {
    format!(
        "the API server does not send guest SubjectAccessReviews to this controller (--guest-authorization=webhook; a review for a guest came back {answer}), so it refuses every guest's requests: restore the webhook in its AuthorizationConfiguration (README \"Guest authorization\")"
    )
}

/// Whether the API server sends guest reviews here: a SubjectAccessReview for the guest of a
/// VM that need not exist must come back allowed by this authorizer. Retried for half a minute
/// (the API server may still be connecting); then an error that says what to fix.
pub async fn check_routed(client: &kube::Client, scope: Option<&str>) -> anyhow::Result<()> {
    let review = probe_review(scope);
    let api = kube::Api::<SubjectAccessReview>::all(client.clone());
    let mut last = String::new();
    for attempt in 0..7 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        match probe(&api, &review).await {
            Probe::Routed => {
                info!("guest authorizer: the API server asks this controller about guests");
                return Ok(());
            }
            Probe::NotRouted(answer) | Probe::Unknown(answer) => last = answer,
        }
        warn!(answer = %last, "guest authorizer: the API server does not ask this controller about guests yet");
    }
    anyhow::bail!(
        "--guest-authorization=webhook: the API server does not send guest SubjectAccessReviews to this controller (a review for a guest came back {last}); add the webhook to its AuthorizationConfiguration (README \"Guest authorization\") or use --guest-authorization=rbac"
    )
}

/// After a successful `check_routed`: ask again every `every` until `stopped`, so that an
/// AuthorizationConfiguration changed under a running controller is noticed. Each answer sets
/// `automend_guest_authorizer_routed` and `routing`; a probe that gets no answer changes
/// nothing (an API server restart is not a routing change).
pub async fn keep_checking(
    client: kube::Client,
    scope: Option<String>,
    metrics: Metrics,
    routing: Routing,
    every: Duration,
    stopped: impl std::future::Future<Output = ()>,
) {
    let review = probe_review(scope.as_deref());
    let api = kube::Api::<SubjectAccessReview>::all(client);
    metrics.guest_authorizer_routed.set(1);
    let checks = async {
        loop {
            tokio::time::sleep(every).await;
            match probe(&api, &review).await {
                Probe::Routed => {
                    metrics.guest_authorizer_routed.set(1);
                    if routing.set(None) {
                        info!(
                            "guest authorizer: the API server asks this controller about guests again"
                        );
                    }
                }
                Probe::NotRouted(answer) => {
                    metrics.guest_authorizer_routed.set(0);
                    let problem = refused_because(&answer);
                    if routing.set(Some(problem.clone())) {
                        error!(%problem, "guest authorizer: guests are refused");
                    }
                }
                Probe::Unknown(e) => {
                    debug!(error = %e, "guest authorizer: no answer to the routing probe");
                }
            }
        }
    };
    tokio::select! {
        () = checks => {}
        () = stopped => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The handler over plain HTTP (TLS is the e2e suite's: `e2e_guest_webhook`).
    async fn post_review(addr: SocketAddr, body: &str) -> String {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let req = format!(
            "POST /authorize HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(req.as_bytes()).await.expect("write");
        let mut out = String::new();
        stream.read_to_string(&mut out).await.expect("read");
        out
    }

    #[tokio::test]
    async fn reviews_are_answered_and_counted_and_nonsense_is_refused() {
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = Metrics::register(&mut registry, true);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let router = app(Some("fleet".into()), metrics.clone());
        let server = tokio::spawn(async move { axum::serve(listener, router).await });
        let review = |user: &str, name: &str| {
            serde_json::json!({
                "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                "spec": { "user": user, "groups": ["system:serviceaccounts", "system:authenticated"],
                    "resourceAttributes": { "namespace": "fleet", "verb": "get",
                        "group": "automend.io", "resource": "virtualmachines", "name": name } },
            })
            .to_string()
        };
        let guest = "system:serviceaccount:fleet:automend-guest-a";
        let yes = post_review(addr, &review(guest, "a")).await;
        assert!(yes.starts_with("HTTP/1.1 200"), "{yes}");
        assert!(yes.contains(r#""allowed":true"#), "{yes}");
        assert!(yes.contains(r#""kind":"SubjectAccessReview""#), "{yes}");
        let other = post_review(addr, &review(guest, "b")).await;
        assert!(other.contains(r#""allowed":false"#), "{other}");
        assert!(!other.contains("denied"), "{other}");
        let bad = post_review(addr, "{not json").await;
        assert!(bad.starts_with("HTTP/1.1 400"), "{bad}");
        assert!(bad.contains("not a SubjectAccessReview"), "{bad}");
        let count = |decision: &str| {
            metrics
                .guest_authorizations
                .get_or_create(&DecisionLabel {
                    decision: decision.into(),
                })
                .get()
        };
        assert_eq!((count("allowed"), count("no_opinion")), (1, 1));
        server.abort();
    }

    #[tokio::test]
    async fn a_change_of_routing_is_told_once_and_wakes_the_vms_once() {
        use futures::StreamExt;
        let routing = Routing::default();
        let mut changes = Box::pin(routing.changes());
        let woken = |changes: &mut std::pin::Pin<Box<_>>| {
            futures::FutureExt::now_or_never(StreamExt::next(changes)).flatten()
        };
        assert_eq!(routing.problem(), None);
        assert!(!routing.set(None), "nothing changed");
        assert_eq!(woken(&mut changes), None);
        let why = refused_because("allowed=false, reason \"\"");
        assert!(why.contains("restore the webhook"), "{why}");
        assert!(routing.set(Some(why.clone())));
        assert!(!routing.set(Some(why.clone())), "the same answer again");
        assert_eq!(routing.problem().as_deref(), Some(why.as_str()));
        assert_eq!(woken(&mut changes), Some(()));
        assert_eq!(woken(&mut changes), None, "once per change");
        assert!(routing.set(None));
        assert_eq!(woken(&mut changes), Some(()));
        assert_eq!(routing.problem(), None);
    }

    #[test]
    fn the_recheck_interval_is_at_least_a_second() {
        assert_eq!(recheck_interval("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(recheck_interval("1s"), Ok(Duration::from_secs(1)));
        let err = recheck_interval("0s").expect_err("0s");
        assert!(err.contains("minimum of 1s"), "{err}");
        assert!(recheck_interval("often").is_err());
    }

    #[test]
    fn webhook_mode_needs_a_usable_certificate_and_says_which_flag() {
        let args = |cert: Option<&str>, key: Option<&str>| Args {
            guest_authorization: GuestAuthorization::Webhook,
            authorizer_addr: "127.0.0.1:0".parse().expect("addr"),
            authorizer_cert: cert.map(PathBuf::from),
            authorizer_key: key.map(PathBuf::from),
            authorizer_recheck_every: Duration::from_secs(30),
        };
        let err = tls_config(&args(None, None))
            .expect_err("no files")
            .to_string();
        assert!(
            err.contains("--authorizer-cert and --authorizer-key"),
            "{err}"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").expect("write");
        let junk = junk.to_str().expect("path");
        let err = format!(
            "{:#}",
            tls_config(&args(Some(junk), Some(junk))).expect_err("junk")
        );
        assert!(err.contains("--authorizer-cert"), "{err}");
    }
}
