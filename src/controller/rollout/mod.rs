//! The PatchRollout and UpdateRing controllers and the release cadence.
//!
//! A rollout reconcile gathers its namespace's rings and VMs from the caches, runs the pure
//! decision (`logic::rollout`), writes installation directives and installation summaries to the
//! VMs (server-side apply as `automend-rollout`, so the VM controller's writes never touch them),
//! then the rollout's status, then its Events. VM changes in a namespace trigger that namespace's
//! unfinished rollouts; time-driven steps (deferrals, windows, bake and healthy-for timers) are
//! requeues on the patching clock.

mod cadence;
mod rings;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::{Resource, ResourceExt};
use tracing::info;

use super::context::{Context, Error, namespaced};
use super::metrics::{Metrics, RolloutLabel, RolloutPhaseLabel};
use super::reconcile::{instrumented, on_error};
use super::shared::Shared;
use crate::api::{
    InstallationDirective, LastPatchInstallationSummary, PatchRollout, PatchRolloutStatus,
    RolloutPhase, UpdateRing, VirtualMachine,
};
use crate::identity::{CONTROLLER_MANAGER, ROLLOUT_MANAGER};
use crate::logic::rollout::{
    Gathered, Settings as RolloutSettings, VmView, Written, decide_gathered, facts, gather,
};
use crate::watch;

/// Expectations of the whole process, shared by every rollout: a VM's directive is the last one any
/// rollout wrote, so an older rollout never acts on a directive a newer one has replaced.
#[derive(Debug, Default)]
struct ExpectationMap {
    /// By (namespace, VM).
    vms: HashMap<(String, String), (InstallationDirective, Option<LastPatchInstallationSummary>)>,
    /// By (namespace, rollout).
    statuses: HashMap<(String, String), PatchRolloutStatus>,
}

type Expectations = Arc<Mutex<ExpectationMap>>;

#[derive(Clone)]
pub(super) struct Stores {
    pub rollouts: Store<PatchRollout>,
    pub rings: Store<UpdateRing>,
    expectations: Expectations,
}

fn settings_of(ctx: &Context) -> RolloutSettings {
    RolloutSettings {
        pairs: ctx.settings.region_pairs.0.clone(),
        expected_duration: ctx.settings.install_duration,
        clock_speed: ctx.clock.speed(),
    }
}

/// Run the rollout and ring controllers and the cadence until `stop` resolves. `vm_changes`
/// carries the namespace of every VM change the VM controller's watch sees.
pub async fn run(
    ctx: Arc<Context>,
    shared: Shared,
    vm_changes: tokio::sync::broadcast::Receiver<String>,
    stop: impl Future<Output = ()> + Send + Sync + Clone + 'static,
) {
    let client = &ctx.client;
    let ns = &ctx.settings.namespace;
    let (rollouts, rollout_writer) = reflector::store();
    let (rings, ring_writer) = reflector::store();
    let stores = Stores {
        rollouts: rollouts.clone(),
        rings: rings.clone(),
        expectations: Expectations::default(),
    };
    let rollout_stream = watch::supervised(
        namespaced::<PatchRollout>(client, ns),
        watch::config(),
        ctx.health.probe("rollout/patchrollouts"),
    )
    .modify(|r| r.managed_fields_mut().clear())
    .reflect(rollout_writer)
    .applied_objects();
    let ring_stream = watch::supervised(
        namespaced::<UpdateRing>(client, ns),
        watch::config(),
        ctx.health.probe("rollout/updaterings"),
    )
    .modify(|r| r.managed_fields_mut().clear())
    .reflect(ring_writer)
    .touched_objects();

    // Ring spec changes and VM changes trigger the namespace's unfinished rollouts.
    let unfinished_in = {
        let rollouts = rollouts.clone();
        move |ns: &str| -> Vec<ObjectRef<PatchRollout>> {
            rollouts
                .state()
                .into_iter()
                .filter(|r| r.namespace().as_deref() == Some(ns))
                .filter(|r| {
                    !matches!(
                        r.status.as_ref().and_then(|s| s.phase),
                        Some(RolloutPhase::Succeeded | RolloutPhase::RolledBack)
                    )
                })
                .map(|r| ObjectRef::from_obj(&*r))
                .collect()
        }
    };
    let ring_mapper = {
        let f = unfinished_in.clone();
        move |r: UpdateRing| f(&r.namespace().unwrap_or_default())
    };
    let vm_triggers = futures::stream::unfold(vm_changes, |mut rx| async move {
        match rx.recv().await {
            Ok(ns) => Some((Some(ns), rx)),
            // Missed some: every namespace.
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => Some((None, rx)),
            Err(tokio::sync::broadcast::error::RecvError::Closed) => None,
        }
    })
    .flat_map({
        let f = unfinished_in.clone();
        let rollouts = rollouts.clone();
        move |ns: Option<String>| {
            let refs = match ns {
                Some(ns) => f(&ns),
                None => rollouts
                    .state()
                    .iter()
                    .map(|r| ObjectRef::from_obj(&**r))
                    .collect(),
            };
            futures::stream::iter(refs)
        }
    });

    let ring_loop = rings::status_loop(ctx.clone(), shared.clone(), stores.clone(), stop.clone());
    let cadence = cadence::run(ctx.clone(), stores.clone(), stop.clone());

    let ctx2 = ctx.clone();
    let shared2 = shared.clone();
    let stores2 = stores.clone();
    let controller = Controller::for_stream(
        watch::events_only(watch::changed(rollout_stream), "patchrollouts"),
        rollouts.clone(),
    )
    // No debounce: kube-runtime's debounce pushes a request back on every new trigger, and
    // VM changes arrive continuously in a busy namespace. Triggers during a reconcile
    // coalesce into one rerun anyway.
    .with_config(ControllerConfig::default().concurrency(ctx.settings.concurrency))
    .watches_stream(
        watch::events_only(watch::changed(ring_stream), "updaterings"),
        ring_mapper,
    )
    .reconcile_on(vm_triggers)
    .graceful_shutdown_on(stop)
    .run(
        move |r, _| {
            let ctx = ctx2.clone();
            let shared = shared2.clone();
            let stores = stores2.clone();
            async move { reconcile(r, &ctx, &shared, &stores).await }
        },
        on_error("patchrollout"),
        ctx.clone(),
    )
    .for_each(|_| futures::future::ready(()));
    tokio::join!(controller, ring_loop, cadence);
    info!("PatchRollout controller stopped");
}

pub(super) async fn wait_ready(shared: &Shared, stores: &Stores) -> Result<(), Error> {
    shared.ready().await?;
    for _ in 0..1200 {
        if futures::FutureExt::now_or_never(stores.rings.wait_until_ready()).is_some()
            && futures::FutureExt::now_or_never(stores.rollouts.wait_until_ready()).is_some()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(Error::CacheNotReady("updaterings or patchrollouts"))
}

async fn reconcile(
    r: Arc<PatchRollout>,
    ctx: &Context,
    shared: &Shared,
    stores: &Stores,
) -> Result<Action, Error> {
    instrumented(ctx, "patchrollout", &*r, wait_ready(shared, stores), || {
        apply(&r, ctx, shared, stores)
    })
    .await
}

/// Expectations for one decision: what the cache already shows (or VMs that are gone) is
/// dropped; the rest stands in for the cache.
fn expectations(stores: &Stores, r: &PatchRollout, g: &Gathered) -> Written {
    let ns = r.namespace().unwrap_or_default();
    let key = (ns.clone(), r.name_any());
    let by_name: HashMap<&str, &VmView> = g
        .views
        .iter()
        .map(|v| (v.vm.metadata.name.as_deref().unwrap_or_default(), v))
        .collect();
    let mut expected = Written::default();
    if let Ok(mut m) = stores.expectations.lock() {
        m.vms.retain(|(vns, vm), (d, s)| {
            *vns != ns
                || by_name.get(vm.as_str()).is_some_and(|v| {
                    let f = facts(v);
                    f.directive != Some(&*d) || f.summary != s.as_ref()
                })
        });
        expected.vms = m
            .vms
            .iter()
            .filter(|((vns, _), _)| *vns == ns)
            .map(|((_, vm), w)| (vm.clone(), w.clone()))
            .collect();
        match m.statuses.get(&key) {
            Some(st) if Some(st) != r.status.as_ref() => expected.status = Some(st.clone()),
            _ => {
                m.statuses.remove(&key);
            }
        }
    }
    expected
}

async fn apply(
    r: &PatchRollout,
    ctx: &Context,
    shared: &Shared,
    stores: &Stores,
) -> Result<Action, Error> {
    let ns = r.namespace().unwrap_or_default();
    let name = r.name_any();
    let now = ctx.clock.now();
    let g = gather(
        r,
        &stores.rollouts.state(),
        &stores.rings.state(),
        &shared.vms.state(),
        &ctx.clock,
    );
    let key = (ns.clone(), name.clone());
    let mut expected = expectations(stores, r, &g);
    let out = decide_gathered(r, &g, now, &settings_of(ctx), &expected);

    // 1. VM writes: directives first, so a crash before the status write loses nothing.
    let vms: Api<VirtualMachine> = Api::namespaced(ctx.client.clone(), &ns);
    for w in &out.writes {
        let vm = &g.views[w.vm].vm;
        let vm_name = vm.name_any();
        let summary = w.summary.clone().or_else(|| {
            vm.status
                .as_ref()
                .and_then(|s| s.patch_status.as_ref())
                .and_then(|p| p.last_patch_installation_summary.clone())
        });
        let mut status = serde_json::json!({ "desired": { "installation": w.directive } });
        if let Some(s) = &summary {
            status["patchStatus"] = serde_json::json!({ "lastPatchInstallationSummary": s });
        }
        let new_directive = vm
            .status
            .as_ref()
            .and_then(|s| s.desired.as_ref())
            .and_then(|d| d.installation.as_deref())
            != Some(&w.directive);
        let sent = summary.clone();
        crate::status::apply(&vms, &vm_name, ROLLOUT_MANAGER, &status).await?;
        expected
            .vms
            .insert(vm_name.clone(), (w.directive.clone(), sent.clone()));
        // Remember at once: an error further on must not forget a write that happened.
        if let Ok(mut m) = stores.expectations.lock() {
            m.vms
                .insert((ns.clone(), vm_name.clone()), (w.directive.clone(), sent));
        }
        if new_directive {
            if w.directive.rollback {
                info!(vm = %vm_name, wave = w.directive.wave, "rollback started");
            } else {
                ctx.metrics.installs_started.inc();
                info!(vm = %vm_name, wave = w.directive.wave, packages = w.directive.packages.len(), "installation started");
            }
        }
    }

    // Release assessments asked before the freeze (against the release's snapshot).
    for (i, d) in &out.release_assessments {
        let vm_name = g.views[*i].vm.name_any();
        let status = serde_json::json!({ "desired": { "releaseAssessment": d } });
        crate::status::apply(&vms, &vm_name, ROLLOUT_MANAGER, &status).await?;
        info!(vm = %vm_name, snapshot = ?d.snapshot.as_ref().map(|s| &s.timestamp), "release assessment asked");
    }

    // 2. The rollout's status, when it changed.
    if expected.status.as_ref().or(r.status.as_ref()) != Some(&out.status) {
        let api: Api<PatchRollout> = Api::namespaced(ctx.client.clone(), &ns);
        crate::status::apply(&api, &name, CONTROLLER_MANAGER, &out.status).await?;
        ctx.metrics
            .status_writes
            .get_or_create(&Metrics::label("patchrollout"))
            .inc();
        expected.status = Some(out.status.clone());
        if out.status.phase != r.status.as_ref().and_then(|s| s.phase) {
            info!(phase = ?out.status.phase, "rollout phase changed");
        }
    }
    if let (Some(st), Ok(mut m)) = (expected.status.clone(), stores.expectations.lock()) {
        m.statuses.insert(key, st);
    }
    record_metrics(ctx, &ns, &name, &out.status);

    // 3. Events, after the writes they describe: the rollout's, then each VM's patch story.
    super::publish_events(ctx, &r.object_ref(&()), &out.events).await;
    for (i, ev) in &out.vm_events {
        if let Some(v) = g.views.get(*i) {
            super::publish_events(ctx, &v.vm.object_ref(&()), std::slice::from_ref(ev)).await;
        }
    }

    let real = out
        .requeue_after
        .map(|d| ctx.clock.real_duration(d))
        .unwrap_or(Duration::from_secs(300))
        .min(Duration::from_secs(300))
        .max(Duration::from_millis(50));
    Ok(Action::requeue(real))
}

fn record_metrics(ctx: &Context, ns: &str, name: &str, s: &crate::api::PatchRolloutStatus) {
    for phase in [
        RolloutPhase::Pending,
        RolloutPhase::Progressing,
        RolloutPhase::Paused,
        RolloutPhase::Halted,
        RolloutPhase::Succeeded,
        RolloutPhase::RolledBack,
    ] {
        ctx.metrics
            .rollout_phase
            .get_or_create(&RolloutPhaseLabel {
                namespace: ns.into(),
                rollout: name.into(),
                phase: format!("{phase:?}"),
            })
            .set(i64::from(s.phase == Some(phase)));
    }
    let label = RolloutLabel {
        namespace: ns.into(),
        rollout: name.into(),
    };
    if let Some(slo) = &s.slo {
        ctx.metrics
            .slo_eligible
            .get_or_create(&label)
            .set(i64::from(slo.eligible));
        ctx.metrics
            .slo_on_manifest
            .get_or_create(&label)
            .set(i64::from(slo.on_manifest));
        ctx.metrics
            .slo_projected_to_meet
            .get_or_create(&label)
            .set(i64::from(slo.projected_to_meet == Some(true)));
    }
}
