//! Create a PatchRollout for the latest release in every namespace with UpdateRings (the
//! decision is `logic::rollout::cadence_due`).

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;
use kube::api::{Api, PostParams};
use tracing::{info, warn};

use super::super::context::Context;
use super::Stores;
use crate::api::PatchRollout;
use crate::logic::rings::Cadence;
use crate::logic::rollout::{cadence_due, release_name, release_rollout};

pub(super) async fn run(
    ctx: Arc<Context>,
    stores: Stores,
    stop: impl Future<Output = ()> + Send + Sync + Clone + 'static,
) {
    let cadence = ctx.settings.release_cadence;
    if cadence == Cadence::Off {
        info!("release cadence off: PatchRollouts are created by hand");
        return;
    }
    info!(%cadence, "creating PatchRollouts on the release cadence (UTC)");
    let mut stop = std::pin::pin!(stop);
    let tick = ctx
        .clock
        .real_duration(Duration::from_secs(600))
        .clamp(Duration::from_millis(500), Duration::from_secs(30));
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(tick) => {}
        }
        let (Some(_), Some(_)) = (
            futures::FutureExt::now_or_never(stores.rings.wait_until_ready()),
            futures::FutureExt::now_or_never(stores.rollouts.wait_until_ready()),
        ) else {
            continue;
        };
        let namespaces: BTreeSet<String> = stores
            .rings
            .state()
            .iter()
            .filter_map(|r| r.namespace())
            .collect();
        let existing: Vec<(String, jiff::Timestamp)> = stores
            .rollouts
            .state()
            .iter()
            .map(|r| (r.namespace().unwrap_or_default(), r.spec.release_time.0))
            .collect();
        let Some((release, missing)) =
            cadence_due(cadence, ctx.clock.now(), &namespaces, &existing)
        else {
            continue;
        };
        for ns in missing {
            let name = release_name(release);
            let api: Api<PatchRollout> = Api::namespaced(ctx.client.clone(), &ns);
            match api
                .create(&PostParams::default(), &release_rollout(release, cadence))
                .await
            {
                Ok(_) => {
                    info!(namespace = %ns, rollout = %name, %release, "created the release's PatchRollout")
                }
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => {
                    warn!(namespace = %ns, rollout = %name, error = %e, "creating the release's PatchRollout")
                }
            }
        }
    }
}
