//! The PatchRollout and UpdateRing controllers and the release cadence.
//!
//! A rollout reconcile gathers its namespace's rings and VMs from the caches, runs the pure
//! decision (`logic::rollout`), writes installation directives and installation summaries to the
//! VMs (server-side apply as `automend-rollout`, so the VM controller's writes never touch them),
//! then the rollout's status, then its Events. VM changes in a namespace trigger that namespace's
//! unfinished rollouts; time-driven steps (deferrals, windows, bake and healthy-for timers) are
//! requeues on the patching clock.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use tracing::{Instrument, info, info_span, warn};

use super::Context;
use super::metrics::{Metrics, RolloutLabel, RolloutPhaseLabel};
use super::vm::{Error, Shared};
use crate::api::{
    Capability, InstallationDirective, LastPatchInstallationSummary, PatchMode, PatchRollout,
    PatchRolloutSpec, PatchRolloutStatus, RolloutPhase, UpdateRing, UpdateRingStatus,
    VirtualMachine,
};
use crate::identity::{CONTROLLER_MANAGER, ROLLOUT_MANAGER};
use crate::logic::decide;
use crate::logic::planner::Placement;
use crate::logic::rings::{self, Cadence, RingRule};
use crate::logic::rollout::{self, Input, RingFacts, Settings as RolloutSettings, VmFacts};
use crate::logic::window::{self, Window};

/// VMs without a heartbeat for this long (on the patching clock) leave the SLO's eligible set.
const ELIGIBLE_HEARTBEAT: Duration = Duration::from_secs(5 * 24 * 3600);

fn is_true(vm: &VirtualMachine, type_: &str) -> Option<bool> {
    vm.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status == "True")
}

/// Everything a rollout decision needs of one VM, read from its object.
pub struct VmView {
    pub vm: Arc<VirtualMachine>,
    pub ring: Option<usize>,
    pub ineligible: Option<String>,
    pub running: bool,
    pub window: Option<(Window, jiff::tz::TimeZone)>,
}

/// The rings of a namespace, sorted by (order, name).
pub fn sorted_rings(rings: &[Arc<UpdateRing>]) -> Vec<Arc<UpdateRing>> {
    let mut r = rings.to_vec();
    r.sort_by(|a, b| {
        a.spec
            .order
            .cmp(&b.spec.order)
            .then_with(|| a.name_any().cmp(&b.name_any()))
    });
    r
}

/// Read a namespace's VMs for a decision: ring membership, eligibility, heartbeat, window.
pub fn views(
    vms: &[Arc<VirtualMachine>],
    rings: &[Arc<UpdateRing>],
    clock: &crate::clock::Clock,
) -> Vec<VmView> {
    let names: Vec<String> = rings.iter().map(|r| r.name_any()).collect();
    let rules: Vec<RingRule> = rings
        .iter()
        .zip(&names)
        .map(|(r, n)| RingRule {
            name: n,
            order: r.spec.order,
            selector: r.spec.selector.as_ref(),
            share: r.spec.share,
        })
        .collect();
    let now = clock.now();
    vms.iter()
        .map(|vm| {
            let uid = vm.uid().unwrap_or_default();
            let ring = rings::ring_of(&rules, &uid, vm.labels())
                .and_then(|n| names.iter().position(|x| x == n));
            let status = vm.status.as_ref();
            let config = status
                .and_then(|s| s.desired.as_ref())
                .and_then(|d| d.configuration.as_ref());
            let running = is_true(vm, decide::HEARTBEAT) == Some(true);
            let last_heartbeat = status.and_then(|s| {
                s.conditions
                    .iter()
                    .find(|c| c.type_ == decide::HEARTBEAT)
                    .map(|c| (c.status == "True", clock.at(c.last_transition_time.0)))
            });
            let mode = status
                .and_then(|s| s.patch_mode)
                .or(vm.spec.patch_settings.patch_mode)
                .unwrap_or(PatchMode::default_for(vm.spec.os.os_type));
            let window_spec = ring
                .and_then(|r| rings[r].spec.maintenance_window.clone())
                .or_else(|| {
                    config.and_then(|c| c.services.update_management.maintenance_window.clone())
                });
            let mut window = None;
            let mut ineligible = if !vm.spec.management.enabled {
                Some("management is disabled".to_string())
            } else if mode != PatchMode::AutomaticByPlatform {
                Some(format!(
                    "patch mode is {mode:?}: only AutomaticByPlatform VMs join rollouts"
                ))
            } else if is_true(vm, decide::IMAGE_SUPPORTED) == Some(false) {
                Some(
                    "its image does not support AutomaticByPlatform (see condition ImageSupported)"
                        .into(),
                )
            } else if config.is_none() {
                Some("not onboarded to a ConfigurationProfile yet".into())
            } else if config.is_some_and(|c| !c.services.update_management.enabled) {
                Some("its ConfigurationProfile turns update management off".into())
            } else {
                match last_heartbeat {
                    None => Some("no heartbeat yet".into()),
                    Some((false, since)) if since + ELIGIBLE_HEARTBEAT < now => {
                        Some("no heartbeat for more than 5 days".into())
                    }
                    _ => None,
                }
            };
            if ineligible.is_none()
                && let Some(w) = &window_spec
            {
                match (Window::parse(w), window::time_zone(&vm.spec.time_zone)) {
                    (Ok(w), Ok(tz)) => window = Some((w, tz)),
                    (Err(e), _) | (_, Err(e)) => ineligible = Some(e),
                }
            }
            VmView {
                vm: vm.clone(),
                ring,
                ineligible,
                running,
                window,
            }
        })
        .collect()
}

/// The facts of a view (borrowing from it).
pub fn facts(v: &VmView) -> VmFacts<'_> {
    let vm = &v.vm;
    let status = vm.status.as_ref();
    let config = status
        .and_then(|s| s.desired.as_ref())
        .and_then(|d| d.configuration.as_ref());
    let guest = status.and_then(|s| s.guest.as_ref());
    let img = &vm.spec.os.image;
    VmFacts {
        name: vm.metadata.name.as_deref().unwrap_or_default(),
        ring: v.ring,
        placement: Placement {
            region: vm.spec.placement.region.clone(),
            zone: vm.spec.placement.zone.clone(),
            availability_set: vm.spec.placement.availability_set.clone(),
            update_domain: vm.spec.placement.update_domain.unwrap_or(0),
        },
        ineligible: v.ineligible.clone(),
        running: v.running,
        window: v.window.clone(),
        reboot_setting: config.and_then(|c| c.services.update_management.reboot_setting),
        hotpatch: config.is_some_and(|c| c.services.update_management.hotpatch)
            && vm.spec.capabilities.contains(&Capability::Hotpatch),
        family: format!("{}/{}/{}", img.publisher, img.offer, img.sku),
        assessment: guest.and_then(|g| g.assessment.as_ref()),
        directive: status
            .and_then(|s| s.desired.as_ref())
            .and_then(|d| d.installation.as_ref()),
        result: guest.and_then(|g| g.installation.as_ref()),
        summary: status
            .and_then(|s| s.patch_status.as_ref())
            .and_then(|p| p.last_patch_installation_summary.as_ref()),
        healthy: guest.and_then(|g| g.healthy) != Some(false),
    }
}

fn finished(phase: Option<RolloutPhase>) -> bool {
    matches!(
        phase,
        Some(RolloutPhase::Succeeded | RolloutPhase::RolledBack | RolloutPhase::Halted)
    )
}

/// The unfinished rollout of the namespace that goes before `me` (earlier release), if any.
pub fn blocked_by(me: &PatchRollout, all: &[Arc<PatchRollout>]) -> Option<String> {
    let key = |r: &PatchRollout| (r.spec.release_time.0, r.name_any());
    all.iter()
        .filter(|r| r.namespace() == me.namespace() && r.name_any() != me.name_any())
        .filter(|r| !finished(r.status.as_ref().and_then(|s| s.phase)))
        .filter(|r| key(r) < key(me))
        .min_by_key(|r| key(r))
        .map(|r| r.name_any())
}

/// Everything needed to decide one rollout, gathered from caches.
pub struct Gathered {
    pub rings: Vec<Arc<UpdateRing>>,
    pub ring_names: Vec<String>,
    pub views: Vec<VmView>,
    pub blocked_by: Option<String>,
}

pub fn gather(
    rollout: &PatchRollout,
    rollouts: &[Arc<PatchRollout>],
    rings: &[Arc<UpdateRing>],
    vms: &[Arc<VirtualMachine>],
    clock: &crate::clock::Clock,
) -> Gathered {
    let ns = rollout.namespace();
    let rings: Vec<Arc<UpdateRing>> = sorted_rings(
        &rings
            .iter()
            .filter(|r| r.namespace() == ns)
            .cloned()
            .collect::<Vec<_>>(),
    );
    let vms: Vec<Arc<VirtualMachine>> = vms
        .iter()
        .filter(|v| v.namespace() == ns)
        .cloned()
        .collect();
    let views = views(&vms, &rings, clock);
    Gathered {
        ring_names: rings.iter().map(|r| r.name_any()).collect(),
        rings,
        views,
        blocked_by: blocked_by(rollout, rollouts),
    }
}

/// Run the pure decision over gathered facts.
pub fn decide_gathered(
    rollout: &PatchRollout,
    g: &Gathered,
    now: Timestamp,
    settings: &RolloutSettings,
    expected: &Written,
) -> rollout::Outcome {
    let ring_facts: Vec<RingFacts> = g
        .rings
        .iter()
        .zip(&g.ring_names)
        .map(|(r, n)| RingFacts {
            name: n,
            spec: &r.spec,
        })
        .collect();
    let name = rollout.name_any();
    let vm_facts: Vec<VmFacts> = g
        .views
        .iter()
        .map(|v| {
            let mut f = facts(v);
            // What this process wrote and the cache has not shown yet.
            if let Some((d, s)) = expected.vms.get(f.name) {
                f.directive = Some(d);
                f.summary = s.as_ref();
            }
            f
        })
        .collect();
    rollout::decide(&Input {
        now,
        name: &name,
        generation: rollout.metadata.generation,
        spec: &rollout.spec,
        status: expected.status.as_ref().or(rollout.status.as_ref()),
        rings: &ring_facts,
        vms: &vm_facts,
        blocked_by: g.blocked_by.clone(),
        settings,
    })
}

/// Writes of this process that the caches may not show yet ("expectations"): a decision made on
/// a stale cache would otherwise start a VM twice or reuse a wave number.
#[derive(Clone, Debug, Default)]
pub struct Written {
    /// By VM name (in the rollout's namespace): the directive and summary last written by any
    /// rollout.
    pub vms: HashMap<String, (InstallationDirective, Option<LastPatchInstallationSummary>)>,
    /// The rollout status last written.
    pub status: Option<PatchRolloutStatus>,
}

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
struct Stores {
    rollouts: Store<PatchRollout>,
    rings: Store<UpdateRing>,
    expectations: Expectations,
}

fn settings_of(ctx: &Context) -> RolloutSettings {
    RolloutSettings {
        pairs: ctx.settings.region_pairs.0.clone(),
        expected_duration: ctx.settings.install_duration,
    }
}

fn namespaced<K>(client: &kube::Client, ns: &Option<String>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as Resource>::DynamicType: Default,
{
    match ns {
        Some(n) => Api::namespaced(client.clone(), n),
        None => Api::all(client.clone()),
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
    let rollout_stream = watcher(namespaced::<PatchRollout>(client, ns), Default::default())
        .default_backoff()
        .modify(|r| r.managed_fields_mut().clear())
        .reflect(rollout_writer)
        .applied_objects();
    let ring_stream = watcher(namespaced::<UpdateRing>(client, ns), Default::default())
        .default_backoff()
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

    let ring_loop = ring_status_loop(ctx.clone(), shared.clone(), stores.clone(), stop.clone());
    let cadence = cadence_loop(ctx.clone(), stores.clone(), stop.clone());

    let ctx2 = ctx.clone();
    let shared2 = shared.clone();
    let stores2 = stores.clone();
    let controller = Controller::for_stream(rollout_stream, rollouts.clone())
        // No debounce: kube-runtime's debounce pushes a request back on every new trigger, and
        // VM changes arrive continuously in a busy namespace. Triggers during a reconcile
        // coalesce into one rerun anyway.
        .with_config(ControllerConfig::default().concurrency(ctx.settings.concurrency))
        .watches_stream(ring_stream, ring_mapper)
        .reconcile_on(vm_triggers)
        .graceful_shutdown_on(stop)
        .run(
            move |r, _| {
                let ctx = ctx2.clone();
                let shared = shared2.clone();
                let stores = stores2.clone();
                async move { reconcile(r, &ctx, &shared, &stores).await }
            },
            |r, error, ctx| {
                ctx.metrics
                    .reconcile_errors
                    .get_or_create(&Metrics::label("patchrollout"))
                    .inc();
                warn!(rollout = %r.name_any(), namespace = ?r.namespace(), %error, "reconcile failed; retrying");
                Action::requeue(Duration::from_secs(5))
            },
            ctx.clone(),
        )
        .for_each(|_| futures::future::ready(()));
    tokio::join!(controller, ring_loop, cadence);
    info!("PatchRollout controller stopped");
}

async fn wait_ready(shared: &Shared, stores: &Stores) -> Result<(), Error> {
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
    let span = info_span!("reconcile", kind = "PatchRollout", namespace = %r.namespace().unwrap_or_default(), name = %r.name_any());
    async move {
        let started = std::time::Instant::now();
        wait_ready(shared, stores).await?;
        let label = Metrics::label("patchrollout");
        ctx.metrics.reconciles.get_or_create(&label).inc();
        let result = apply(&r, ctx, shared, stores).await;
        ctx.metrics
            .reconcile_duration
            .get_or_create(&label)
            .observe(started.elapsed().as_secs_f64());
        result
    }
    .instrument(span)
    .await
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
    // Expectations: drop what the cache already shows (or VMs that are gone), use the rest.
    let key = (ns.clone(), name.clone());
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
        let body = serde_json::json!({
            "apiVersion": VirtualMachine::api_version(&()),
            "kind": VirtualMachine::kind(&()),
            "metadata": { "name": vm_name },
            "status": status,
        });
        let new_directive = vm
            .status
            .as_ref()
            .and_then(|s| s.desired.as_ref())
            .and_then(|d| d.installation.as_ref())
            != Some(&w.directive);
        let sent = summary.clone();
        vms.patch_status(
            &vm_name,
            &PatchParams::apply(ROLLOUT_MANAGER).force(),
            &Patch::Apply(body),
        )
        .await?;
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

    // 2. The rollout's status, when it changed.
    if expected.status.as_ref().or(r.status.as_ref()) != Some(&out.status) {
        let api: Api<PatchRollout> = Api::namespaced(ctx.client.clone(), &ns);
        let body = serde_json::json!({
            "apiVersion": PatchRollout::api_version(&()),
            "kind": PatchRollout::kind(&()),
            "metadata": { "name": name },
            "status": out.status,
        });
        api.patch_status(
            &name,
            &PatchParams::apply(CONTROLLER_MANAGER).force(),
            &Patch::Apply(body),
        )
        .await?;
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

    // 3. Events, after the writes they describe.
    super::publish_events(ctx, &r.object_ref(&()), &out.events).await;

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

/// UpdateRing status every few seconds: member counts, healthy / unhealthy, the current rollout.
async fn ring_status_loop(
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
        let all_rings = stores.rings.state();
        let all_vms = shared.vms.state();
        let rollouts = stores.rollouts.state();
        let mut namespaces: BTreeMap<String, Vec<Arc<UpdateRing>>> = BTreeMap::new();
        for r in &all_rings {
            namespaces
                .entry(r.namespace().unwrap_or_default())
                .or_default()
                .push(r.clone());
        }
        for (ns, rings) in namespaces {
            let rings = sorted_rings(&rings);
            let vms: Vec<Arc<VirtualMachine>> = all_vms
                .iter()
                .filter(|v| v.namespace().as_deref() == Some(ns.as_str()))
                .cloned()
                .collect();
            let views = views(&vms, &rings, &ctx.clock);
            let current = rollouts
                .iter()
                .filter(|r| r.namespace().as_deref() == Some(ns.as_str()))
                .filter(|r| {
                    matches!(
                        r.status.as_ref().and_then(|s| s.phase),
                        Some(
                            RolloutPhase::Progressing | RolloutPhase::Paused | RolloutPhase::Halted
                        )
                    )
                })
                .min_by_key(|r| (r.spec.release_time.0, r.name_any()))
                .map(|r| r.name_any());
            for (i, ring) in rings.iter().enumerate() {
                let members: Vec<&VmView> = views.iter().filter(|v| v.ring == Some(i)).collect();
                let eligible: Vec<&&VmView> =
                    members.iter().filter(|v| v.ineligible.is_none()).collect();
                let healthy = eligible
                    .iter()
                    .filter(|v| {
                        v.running
                            && v.vm
                                .status
                                .as_ref()
                                .and_then(|s| s.guest.as_ref())
                                .and_then(|g| g.healthy)
                                != Some(false)
                    })
                    .count();
                let status = UpdateRingStatus {
                    observed_generation: ring.metadata.generation,
                    total: members.len() as i32,
                    eligible: eligible.len() as i32,
                    healthy: healthy as i32,
                    unhealthy: (eligible.len() - healthy) as i32,
                    current_rollout: current.clone(),
                    conditions: Vec::new(),
                };
                if ring.status.as_ref() == Some(&status) {
                    continue;
                }
                let api: Api<UpdateRing> = Api::namespaced(ctx.client.clone(), &ns);
                let body = serde_json::json!({
                    "apiVersion": UpdateRing::api_version(&()),
                    "kind": UpdateRing::kind(&()),
                    "metadata": { "name": ring.name_any() },
                    "status": status,
                });
                match api
                    .patch_status(
                        &ring.name_any(),
                        &PatchParams::apply(CONTROLLER_MANAGER).force(),
                        &Patch::Apply(body),
                    )
                    .await
                {
                    Ok(_) => {
                        ctx.metrics
                            .status_writes
                            .get_or_create(&Metrics::label("updatering"))
                            .inc();
                    }
                    Err(e) => {
                        warn!(ring = %ring.name_any(), namespace = %ns, error = %e, "writing UpdateRing status")
                    }
                }
            }
        }
    }
}

/// The name of the rollout the cadence creates for a release.
pub fn release_name(release: Timestamp) -> String {
    format!("release-{}", release.strftime("%Y-%m-%d"))
}

/// Create a PatchRollout for the latest release in every namespace with UpdateRings, within a day
/// of the release (a rollout deleted later is not recreated).
async fn cadence_loop(
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
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(ctx.clock.real_duration(Duration::from_secs(600)).clamp(Duration::from_millis(500), Duration::from_secs(30))) => {}
        }
        let (Some(_), Some(_)) = (
            futures::FutureExt::now_or_never(stores.rings.wait_until_ready()),
            futures::FutureExt::now_or_never(stores.rollouts.wait_until_ready()),
        ) else {
            continue;
        };
        let now = ctx.clock.now();
        let Some(release) = cadence.latest(now) else {
            continue;
        };
        if now.duration_since(release) > jiff::SignedDuration::from_hours(24) {
            continue;
        }
        let namespaces: std::collections::BTreeSet<String> = stores
            .rings
            .state()
            .iter()
            .filter_map(|r| r.namespace())
            .collect();
        let rollouts = stores.rollouts.state();
        for ns in namespaces {
            if rollouts.iter().any(|r| {
                r.namespace().as_deref() == Some(ns.as_str()) && r.spec.release_time.0 == release
            }) {
                continue;
            }
            let name = release_name(release);
            let mut obj = PatchRollout::new(
                &name,
                PatchRolloutSpec {
                    release_time: Time(release),
                    classifications: crate::api::default_classifications(),
                    expedite: false,
                    paused: false,
                    rollback_on_failure: false,
                    rollback: false,
                    exclude: Vec::new(),
                    slo: Default::default(),
                },
            );
            obj.metadata.labels = Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_string(),
                "automend".to_string(),
            )]));
            obj.metadata.annotations = Some(BTreeMap::from([(
                "automend.io/created-by".to_string(),
                format!("release cadence {cadence}"),
            )]));
            let api: Api<PatchRollout> = Api::namespaced(ctx.client.clone(), &ns);
            match api.create(&PostParams::default(), &obj).await {
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
