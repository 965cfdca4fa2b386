//! How every watch (the controller's and the guests') is set up so that it recovers quickly from an API server or
//! etcd restart: lists are quorum reads (a list served from a restarted API server's cache can
//! hand out a resource version its watch cache no longer serves, and every watch then fails with
//! 410 Gone over and over), and retries back off to at most a few seconds.

use std::time::Duration;

use kube::runtime::utils::Backoff;

pub mod health;
mod supervise;

pub use health::{Health, Limits, Probe};
use kube::runtime::watcher::{self, ListSemantic};
pub use supervise::{supervise, supervised};

/// The longest wait between two attempts of a failing watch.
pub const MAX_BACKOFF: Duration = Duration::from_secs(4);

/// A watch configuration: quorum-read lists.
pub fn config() -> watcher::Config {
    watcher::Config::default().list_semantic(ListSemantic::MostRecent)
}

/// Doubling from 250 ms to `MAX_BACKOFF`; back to the start once a watch has delivered again.
#[derive(Clone, Debug)]
pub struct QuickBackoff {
    next: Duration,
}

pub fn backoff() -> QuickBackoff {
    QuickBackoff {
        next: Duration::from_millis(250),
    }
}

impl Iterator for QuickBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let now = self.next;
        self.next = (self.next * 2).min(MAX_BACKOFF);
        Some(now)
    }
}

impl Backoff for QuickBackoff {
    fn reset(&mut self) {
        *self = backoff();
    }
}

/// A trigger stream for a kube-runtime `Controller` with its errors logged and dropped.
///
/// The Controller splits its trigger queue into Ok and Err halves that share one peekable stream;
/// an error queued right behind an event can leave both halves waiting with no wake-up registered,
/// and the Controller then never runs again (seen after an API server restart: every watch error
/// is followed by events). The watcher retries by itself after an error, so nothing is lost by
/// handing the Controller events only.
pub fn events_only<S, T, E>(
    stream: S,
    what: &'static str,
) -> impl futures::Stream<Item = Result<T, E>>
where
    S: futures::Stream<Item = Result<T, E>>,
    E: std::fmt::Display,
{
    use futures::StreamExt;
    stream.filter_map(move |item| {
        futures::future::ready(match item {
            Ok(x) => Some(Ok(x)),
            Err(error) => {
                tracing::warn!(watch = what, %error, "watch failed; retrying");
                None
            }
        })
    })
}

/// The objects of a watch that changed since it last delivered them: a relist (after an error or
/// when a silent watch is re-established) passes on only objects with a new resource version, so
/// it does not reconcile everything again.
pub fn changed<S, K>(stream: S) -> impl futures::Stream<Item = Result<K, watcher::Error>>
where
    S: futures::Stream<Item = Result<K, watcher::Error>>,
    K: kube::Resource + 'static,
{
    use kube::runtime::WatchStreamExt;
    stream.predicate_filter(
        kube::runtime::predicates::resource_version,
        kube::runtime::PredicateConfig::default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_and_resets() {
        let mut b = backoff();
        let waits: Vec<Duration> = (&mut b).take(7).collect();
        assert_eq!(waits[0], Duration::from_millis(250));
        assert_eq!(waits[1], Duration::from_millis(500));
        assert!(waits.iter().all(|w| *w <= MAX_BACKOFF));
        assert_eq!(waits[6], MAX_BACKOFF);
        b.reset();
        assert_eq!(b.next(), Some(Duration::from_millis(250)));
    }

    #[tokio::test]
    async fn a_relist_passes_on_only_the_objects_that_changed() {
        use futures::StreamExt;
        use k8s_openapi::api::core::v1::ConfigMap;
        let cm = |name: &str, rv: &str| {
            let mut c = ConfigMap::default();
            c.metadata.name = Some(name.into());
            c.metadata.namespace = Some("ns".into());
            c.metadata.resource_version = Some(rv.into());
            Ok::<_, watcher::Error>(c)
        };
        // The first list, then a relist in which only b changed.
        let seen: Vec<String> = changed(futures::stream::iter([
            cm("a", "1"),
            cm("b", "2"),
            cm("a", "1"),
            cm("b", "3"),
        ]))
        .filter_map(|r| async move { r.ok() })
        .map(|c| {
            format!(
                "{}@{}",
                c.metadata.name.unwrap_or_default(),
                c.metadata.resource_version.unwrap_or_default()
            )
        })
        .collect()
        .await;
        assert_eq!(seen, ["a@1", "b@2", "b@3"]);
    }
}
