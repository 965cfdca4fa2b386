//! UpdateRing status every few seconds (the decision is `logic::rollout::ring_status`).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use kube::api::Api;
use kube::{Resource as _, ResourceExt};
use tracing::warn;

use super::super::context::Context;
use super::super::metrics::Metrics;
use super::super::shared::Shared;
use super::{Stores, wait_ready};
use crate::api::{UpdateRing, VirtualMachine};
use crate::identity::CONTROLLER_MANAGER;
use crate::logic::rollout::{current_rollout, membership_moved, ring_status, sorted_rings, views};

pub(super) async fn status_loop(
    ctx: Arc<Context>,
    shared: Shared,
    stores: Stores,
    stop: impl Future<Output = ()> + Send + Sync + Clone + 'static,
) {
    let mut stop = std::pin::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(Duration::from_secs(3)) => {}
        }
        if wait_ready(&shared, &stores).await.is_err() {
            continue;
        }
        let all_vms = shared.vms.state();
        let rollouts = stores.rollouts.state();
        let mut namespaces: BTreeMap<String, Vec<Arc<UpdateRing>>> = BTreeMap::new();
        for r in stores.rings.state() {
            namespaces
                .entry(r.namespace().unwrap_or_default())
                .or_default()
                .push(r);
        }
        for (ns, rings) in namespaces {
            let rings = sorted_rings(&rings);
            let vms: Vec<Arc<VirtualMachine>> = all_vms
                .iter()
                .filter(|v| v.namespace().as_deref() == Some(ns.as_str()))
                .cloned()
                .collect();
            let views = views(&vms, &rings, &ctx.clock);
            let current = current_rollout(&ns, &rollouts);
            for (i, ring) in rings.iter().enumerate() {
                let status =
                    ring_status(&rings, i, &views, current.clone(), jiff::Timestamp::now());
                if ring.status.as_ref() == Some(&status) {
                    continue;
                }
                let moved = membership_moved(ring, &status);
                let api: Api<UpdateRing> = Api::namespaced(ctx.client.clone(), &ns);
                match crate::status::apply(&api, &ring.name_any(), CONTROLLER_MANAGER, &status)
                    .await
                {
                    Ok(_) => {
                        ctx.metrics
                            .status_writes
                            .get_or_create(&Metrics::label("updatering"))
                            .inc();
                        if let Some(ev) = moved {
                            super::super::publish_events(&ctx, &ring.object_ref(&()), &[ev]).await;
                        }
                    }
                    Err(e) => {
                        warn!(ring = %ring.name_any(), namespace = %ns, error = %e, "writing UpdateRing status")
                    }
                }
            }
        }
    }
}
