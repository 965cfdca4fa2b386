//! A watch under supervision: what it delivers and how it fails is recorded in its `Probe`, and
//! when it delivers nothing for the probe's `idle` time it is dropped and started again (a fresh
//! list). A quiet watch is thereby proven alive once per `idle`, and a stalled connection (a
//! socket the API server forgot, a half-open TCP connection) is replaced rather than waited on
//! for ever. Triggers downstream filter relisted objects by resource version, so a relist does
//! not reconcile what did not change.

use std::fmt::Debug;

use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use kube::Resource;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use serde::de::DeserializeOwned;
use tracing::{info, warn};

use super::health::Probe;

/// `watcher(api, config)` with quick backoff, supervised by `probe`.
pub fn supervised<K>(
    api: Api<K>,
    config: watcher::Config,
    probe: Probe,
) -> impl Stream<Item = Result<Event<K>, watcher::Error>> + Send + 'static
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    supervise(
        move || {
            watcher(api.clone(), config.clone())
                .backoff(super::backoff())
                .boxed()
        },
        probe,
    )
}

/// Supervise the streams `start` makes: restart after the probe's idle time without an item.
pub fn supervise<T, E, F>(
    start: F,
    probe: Probe,
) -> impl Stream<Item = Result<Event<T>, E>> + Send + 'static
where
    T: Send + 'static,
    E: std::fmt::Display + Send + 'static,
    F: FnMut() -> BoxStream<'static, Result<Event<T>, E>> + Send + 'static,
{
    let state = (
        None::<BoxStream<'static, Result<Event<T>, E>>>,
        start,
        probe,
    );
    futures::stream::unfold(state, |(current, mut start, probe)| async move {
        let mut inner = current.unwrap_or_else(&mut start);
        loop {
            match tokio::time::timeout(probe.idle, inner.next()).await {
                Ok(Some(item)) => {
                    match &item {
                        // kube's watcher emits Init before it even asks the API server (and
                        // again before every retried list): no sign of life.
                        Ok(Event::Init) => {}
                        Ok(event) => probe.delivered(matches!(event, Event::InitDone)),
                        Err(error) => probe.failed(&error.to_string()),
                    }
                    return Some((item, (Some(inner), start, probe)));
                }
                Ok(None) => {
                    warn!(watch = probe.name(), "watch ended; starting it again");
                }
                Err(_) => {
                    info!(
                        watch = probe.name(),
                        idle = %crate::logic::duration::format(probe.idle),
                        "watch delivered nothing for its idle time; re-establishing it"
                    );
                }
            }
            probe.restarted();
            inner = start();
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;
    use crate::watch::health::{Health, Limits, WatchLabel};

    /// A watch that lists one object and then hangs, like a stalled connection.
    fn hanging(starts: Arc<AtomicUsize>) -> BoxStream<'static, Result<Event<u32>, String>> {
        let n = starts.fetch_add(1, Ordering::SeqCst) as u32;
        futures::stream::iter([
            Ok(Event::Init),
            Ok(Event::InitApply(n)),
            Ok(Event::InitDone),
        ])
        .chain(futures::stream::pending())
        .boxed()
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_watch_is_started_again_after_its_idle_time() {
        let health = Health::new(Limits {
            idle: Duration::from_secs(60),
            unhealthy_after: Duration::from_secs(30),
        });
        let starts = Arc::new(AtomicUsize::new(0));
        let s = starts.clone();
        let mut stream = std::pin::pin!(supervise(move || hanging(s.clone()), health.probe("vms")));
        let mut items = Vec::new();
        for _ in 0..6 {
            items.push(stream.next().await.and_then(Result::ok));
        }
        assert_eq!(starts.load(Ordering::SeqCst), 2);
        assert!(matches!(items[1], Some(Event::InitApply(0))));
        assert!(matches!(items[4], Some(Event::InitApply(1))));
        let label = WatchLabel {
            watch: "vms".into(),
        };
        assert_eq!(health.restarts.get_or_create(&label).get(), 1);
        assert_eq!(health.verdict().ready, Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_retried_lists_init_is_no_sign_of_life() {
        // What kube's watcher yields while the API server is down: Err, then Init before the
        // next list attempt, then Err again.
        let health = Health::default();
        let mut stream = std::pin::pin!(supervise(
            || {
                futures::stream::iter([
                    Err::<Event<u32>, _>("connection refused".to_string()),
                    Ok(Event::Init),
                ])
                .chain(futures::stream::pending())
                .boxed()
            },
            health.probe("leases"),
        ));
        assert!(matches!(stream.next().await, Some(Err(_))));
        assert!(matches!(stream.next().await, Some(Ok(Event::Init))));
        let why = health.verdict().ready.unwrap_err();
        assert!(why.contains("leases is failing"), "{why}");
    }

    #[tokio::test(start_paused = true)]
    async fn errors_pass_through_and_are_recorded() {
        let health = Health::default();
        let mut stream = std::pin::pin!(supervise(
            || {
                futures::stream::iter([Err::<Event<u32>, _>("connection refused".to_string())])
                    .chain(futures::stream::pending())
                    .boxed()
            },
            health.probe("leases"),
        ));
        assert!(matches!(stream.next().await, Some(Err(_))));
        let why = health.verdict().ready.unwrap_err();
        assert!(
            why.contains("leases is failing: connection refused"),
            "{why}"
        );
    }
}
