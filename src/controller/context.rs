//! What every reconcile of every controller shares: the context, the one error type, and the
//! namespaced-or-cluster API helper.

use super::events::Recorder;
use kube::api::Api;
use kube::{Client, Resource};

use super::Settings;
use super::metrics::Metrics;
use crate::logic::catalog::ImageCatalog;

/// What every reconcile needs.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub catalog: ImageCatalog,
    pub metrics: Metrics,
    /// The records of every watch, behind /readyz and /healthz.
    pub health: crate::watch::Health,
    pub settings: Settings,
    /// The patching schedule's clock.
    pub clock: crate::clock::Clock,
    /// Whether the API server still sends guest reviews here (`--guest-authorization=webhook`).
    pub guest_routing: super::authorizer::Routing,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("the caches stopped")]
    CachesStopped,
    #[error("the {0} cache has not synced within a minute (is the list/watch permission missing?)")]
    CacheNotReady(&'static str),
    #[error("the reconcile took longer than {0:?} (an API request that never answered?)")]
    Timeout(std::time::Duration),
    #[error("a decision task ended abnormally: {0}")]
    Task(String),
}

impl Error {
    /// A short, bounded label for the `automend_reconcile_errors_total{error}` metric.
    pub fn metric_label(&self) -> String {
        match self {
            Error::Kube(kube::Error::Api(s)) => format!("api_{}", s.code),
            Error::Kube(_) => "api".into(),
            Error::CachesStopped => "caches_stopped".into(),
            Error::CacheNotReady(_) => "cache_not_ready".into(),
            Error::Timeout(_) => "timeout".into(),
            Error::Task(_) => "task".into(),
        }
    }
}

/// The watch of the ConfigurationProfiles this controller manages (`--profile-selector`).
pub fn profile_watch(settings: &Settings) -> kube::runtime::watcher::Config {
    match &settings.profile_selector {
        Some(sel) => crate::watch::config().labels(sel),
        None => crate::watch::config(),
    }
}

/// The API of a namespaced kind: one namespace when the controller is limited to one, else all.
pub fn namespaced<K>(client: &Client, ns: &Option<String>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as Resource>::DynamicType: Default,
{
    match ns {
        Some(n) => Api::namespaced(client.clone(), n),
        None => Api::all(client.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_labels_are_short_and_bounded() {
        let api = Error::Kube(kube::Error::Api(Box::new(
            kube::core::Status::failure("gone", "NotFound").with_code(404),
        )));
        assert_eq!(api.metric_label(), "api_404");
        assert_eq!(
            Error::CacheNotReady("leases").metric_label(),
            "cache_not_ready"
        );
    }
}
