//! The frame every reconcile runs in: a span naming the object, the caches' readiness, the
//! `automend_reconciles_total` / `_duration_seconds` metrics, and one error policy.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::ResourceExt;
use kube::runtime::controller::Action;
use tracing::{Instrument, warn};

use super::context::{Context, Error};
use super::metrics::{ErrorLabel, Metrics};

/// The longest a reconcile may take.
pub const RECONCILE_TIMEOUT: Duration = Duration::from_secs(20);

/// Run `work` as one reconcile of `controller` (a metric label such as "virtualmachine") for
/// the object, after `ready` (the caches it reads).
pub async fn instrumented<K, Fut>(
    ctx: &Context,
    controller: &'static str,
    obj: &K,
    ready: impl Future<Output = Result<(), Error>>,
    work: impl FnOnce() -> Fut,
) -> Result<Action, Error>
where
    K: kube::Resource<DynamicType = ()>,
    Fut: Future<Output = Result<Action, Error>>,
{
    let span = tracing::info_span!(
        "reconcile",
        kind = %K::kind(&()),
        namespace = %obj.namespace().unwrap_or_default(),
        name = %obj.name_any()
    );
    async move {
        let started = Instant::now();
        ready.await?;
        let label = Metrics::label(controller);
        ctx.metrics.reconciles.get_or_create(&label).inc();
        // A reconcile never holds one of the controller's slots for ever (a request to an API
        // server that went away mid-answer): it fails and is retried.
        let result = match tokio::time::timeout(RECONCILE_TIMEOUT, work()).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout(RECONCILE_TIMEOUT)),
        };
        ctx.metrics
            .reconcile_duration
            .get_or_create(&label)
            .observe(started.elapsed().as_secs_f64());
        result
    }
    .instrument(span)
    .await
}

/// The error policy of every controller: count the error by controller and kind, log it with
/// the object, and retry in 5 seconds.
pub fn on_error<K>(controller: &'static str) -> impl Fn(Arc<K>, &Error, Arc<Context>) -> Action
where
    K: kube::Resource<DynamicType = ()>,
{
    move |obj, error, ctx| {
        ctx.metrics
            .reconcile_errors
            .get_or_create(&ErrorLabel {
                controller: controller.into(),
                error: error.metric_label(),
            })
            .inc();
        warn!(
            kind = %K::kind(&()),
            name = %obj.name_any(),
            namespace = ?obj.namespace(),
            %error,
            "reconcile failed; retrying"
        );
        Action::requeue(Duration::from_secs(5))
    }
}
