//! The VirtualMachine controller: guest identity, profile resolution, the phase decision, the
//! guest protocol's controller half, Events and the cleanup finalizer.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use tracing::{Instrument, info, info_span, warn};

use super::Context;
use super::metrics::{Metrics, PhaseLabel};
use crate::api::{ConfigurationProfile, VirtualMachine, VmPhase};
use crate::identity::{self, CONTROLLER_MANAGER, OWNED_SELECTOR};
use crate::logic::assign::{self, Candidate};
use crate::logic::decide::{self, Heartbeat, Inputs, ProfileChoice, RemediationPolicy};
use crate::logic::{duration, resolve};

pub const FINALIZER: &str = "automend.io/guest-identity";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(String),
    #[error("the caches stopped")]
    CachesStopped,
    #[error("the {0} cache has not synced within a minute (is the list/watch permission missing?)")]
    CacheNotReady(&'static str),
}

/// Caches the two controllers share (read side).
#[derive(Clone)]
pub struct Shared {
    pub vms: Store<VirtualMachine>,
    pub profiles: Store<ConfigurationProfile>,
    pub namespaces: Store<PartialObjectMeta<Namespace>>,
    pub leases: Store<Lease>,
    pub service_accounts: Store<PartialObjectMeta<ServiceAccount>>,
    pub roles: Store<PartialObjectMeta<Role>>,
    pub role_bindings: Store<PartialObjectMeta<RoleBinding>>,
    writers: Arc<Mutex<Option<Writers>>>,
    ready: tokio::sync::watch::Receiver<bool>,
    /// The namespace of every VM change the VM watch sees (for the rollout controller).
    pub vm_changes: tokio::sync::broadcast::Sender<String>,
    waiting_on: Arc<Mutex<&'static str>>,
}

struct Writers {
    vms: reflector::store::Writer<VirtualMachine>,
    profiles: reflector::store::Writer<ConfigurationProfile>,
    namespaces: reflector::store::Writer<PartialObjectMeta<Namespace>>,
    leases: reflector::store::Writer<Lease>,
    service_accounts: reflector::store::Writer<PartialObjectMeta<ServiceAccount>>,
    roles: reflector::store::Writer<PartialObjectMeta<Role>>,
    role_bindings: reflector::store::Writer<PartialObjectMeta<RoleBinding>>,
}

impl Shared {
    pub fn start() -> Shared {
        let (vms, vw) = reflector::store();
        let (profiles, pw) = reflector::store();
        let (namespaces, nw) = reflector::store();
        let (leases, lw) = reflector::store();
        let (service_accounts, sw) = reflector::store();
        let (roles, rw) = reflector::store();
        let (role_bindings, bw) = reflector::store();
        let (ready_tx, ready) = tokio::sync::watch::channel(false);
        let (vm_changes, _) = tokio::sync::broadcast::channel(4096);
        let shared = Shared {
            ready,
            vm_changes,
            waiting_on: Arc::new(Mutex::new("virtualmachines")),
            vms,
            profiles,
            namespaces,
            leases,
            service_accounts,
            roles,
            role_bindings,
            writers: Arc::new(Mutex::new(Some(Writers {
                vms: vw,
                profiles: pw,
                namespaces: nw,
                leases: lw,
                service_accounts: sw,
                roles: rw,
                role_bindings: bw,
            }))),
        };
        shared.watch_readiness(ready_tx);
        shared
    }

    /// Wait until every cache has listed once. One task waits on the stores and publishes the
    /// result on a watch channel, because a store wakes only one of several concurrent waiters.
    pub async fn ready(&self) -> Result<(), Error> {
        let mut rx = self.ready.clone();
        match tokio::time::timeout(Duration::from_secs(60), rx.wait_for(|r| *r)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(Error::CachesStopped),
            Err(_) => Err(Error::CacheNotReady(
                self.waiting_on.lock().map(|w| *w).unwrap_or("?"),
            )),
        }
    }

    fn watch_readiness(&self, tx: tokio::sync::watch::Sender<bool>) {
        let me = self.clone();
        tokio::spawn(async move {
            // Poll rather than await: a store wakes only one of its concurrent waiters, and the
            // Controller waits on the VM store too.
            macro_rules! wait {
                ($store:expr, $what:expr) => {
                    if let Ok(mut w) = me.waiting_on.lock() {
                        *w = $what;
                    }
                    loop {
                        match $store.wait_until_ready().now_or_never() {
                            Some(Ok(())) => break,
                            Some(Err(_)) => return,
                            None => tokio::time::sleep(Duration::from_millis(50)).await,
                        }
                    }
                };
            }
            wait!(me.vms, "virtualmachines");
            wait!(me.profiles, "configurationprofiles");
            wait!(me.namespaces, "namespaces");
            wait!(me.leases, "leases");
            wait!(me.service_accounts, "serviceaccounts");
            wait!(me.roles, "roles");
            wait!(me.role_bindings, "rolebindings");
            let _ = tx.send(true);
        });
    }
}

fn namespaced<K>(client: &kube::Client, ns: &Option<String>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

fn profile_config(ctx: &Context) -> watcher::Config {
    match &ctx.settings.profile_selector {
        Some(sel) => watcher::Config::default().labels(sel),
        None => watcher::Config::default(),
    }
}

/// Run the VirtualMachine controller until `stop` resolves.
pub async fn run(
    ctx: Arc<Context>,
    shared: Shared,
    stop: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let Some(w) = shared.writers.lock().ok().and_then(|mut w| w.take()) else {
        warn!("the VM controller was started twice");
        return;
    };
    let client = &ctx.client;
    let ns = &ctx.settings.namespace;
    let owned = || watcher::Config::default().labels(OWNED_SELECTOR);

    let vm_stream = watcher(
        namespaced::<VirtualMachine>(client, ns),
        watcher::Config::default(),
    )
    .default_backoff()
    .modify(|vm| vm.managed_fields_mut().clear())
    .reflect(w.vms)
    .applied_objects()
    .inspect({
        let tx = shared.vm_changes.clone();
        move |vm| {
            if let Ok(vm) = vm {
                let _ = tx.send(vm.namespace().unwrap_or_default());
            }
        }
    });

    // Profiles: re-reconcile exactly the VMs that use (or could be assigned) a profile when its
    // spec changes or it goes away; its status updates are ignored.
    let seen_generations: Mutex<HashMap<String, Option<i64>>> = Mutex::default();
    let profiles_store = shared.profiles.clone();
    let vms_for_profiles = shared.vms.clone();
    let profile_stream = watcher(
        Api::<ConfigurationProfile>::all(client.clone()),
        profile_config(&ctx),
    )
    .default_backoff()
    .modify(|p| p.managed_fields_mut().clear())
    .reflect(w.profiles)
    .touched_objects();
    let profile_mapper = move |p: ConfigurationProfile| {
        let name = p.name_any();
        let current = profiles_store.get(&ObjectRef::new(&name));
        let generation = current.as_ref().and_then(|c| c.metadata.generation);
        let changed = match seen_generations.lock() {
            Ok(mut seen) => {
                let before = seen.insert(name.clone(), generation);
                if current.is_none() {
                    seen.remove(&name);
                }
                before != Some(generation) || current.is_none()
            }
            Err(_) => true,
        };
        if !changed {
            return Vec::new();
        }
        vms_for_profiles
            .state()
            .into_iter()
            .filter(|vm| {
                vm.spec.management.profile.as_deref() == Some(name.as_str())
                    || vm.status.as_ref().and_then(|s| s.profile.as_deref()) == Some(name.as_str())
                    || vm.spec.management.profile.is_none()
            })
            .map(|vm| ObjectRef::from_obj(&*vm))
            .collect()
    };

    // Namespaces: their labels feed assignment namespace selectors.
    let ns_config = match ns {
        Some(n) => watcher::Config::default().fields(&format!("metadata.name={n}")),
        None => watcher::Config::default(),
    };
    let vms_for_ns = shared.vms.clone();
    let ns_stream = watcher(
        Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
        ns_config,
    )
    .default_backoff()
    .reflect(w.namespaces)
    .touched_objects();
    let ns_mapper = move |n: PartialObjectMeta<Namespace>| {
        let name = n.name_any();
        vms_for_ns
            .state()
            .into_iter()
            .filter(|vm| {
                vm.namespace().as_deref() == Some(name.as_str())
                    && vm.spec.management.profile.is_none()
            })
            .map(|vm| ObjectRef::from_obj(&*vm))
            .collect::<Vec<_>>()
    };

    // Heartbeats: a renewal only matters when the VM is not known to be running; expiry is
    // caught by the requeue each reconcile sets at the Lease's expiry. No reconcile per renewal.
    let vms_for_leases = shared.vms.clone();
    let leases_store = shared.leases.clone();
    let lease_stream = watcher(namespaced::<Lease>(client, ns), owned())
        .default_backoff()
        .modify(|l| l.managed_fields_mut().clear())
        .reflect(w.leases)
        .touched_objects();
    let lease_mapper = move |lease: Lease| {
        let (Some(name), Some(ns)) = (
            lease.metadata.name.clone(),
            lease.metadata.namespace.clone(),
        ) else {
            return None;
        };
        let vm_ref = ObjectRef::<VirtualMachine>::new(&name).within(&ns);
        let vm = vms_for_leases.get(&vm_ref)?;
        let gone = leases_store
            .get(&ObjectRef::new(&name).within(&ns))
            .is_none();
        let known_alive = vm.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == decide::HEARTBEAT && c.status == "True")
        });
        (gone || !known_alive).then_some(vm_ref)
    };

    let sa_stream = watcher(
        namespaced::<PartialObjectMeta<ServiceAccount>>(client, ns),
        owned(),
    )
    .default_backoff()
    .reflect(w.service_accounts)
    .touched_objects();
    let role_stream = watcher(namespaced::<PartialObjectMeta<Role>>(client, ns), owned())
        .default_backoff()
        .reflect(w.roles)
        .touched_objects();
    let binding_stream = watcher(
        namespaced::<PartialObjectMeta<RoleBinding>>(client, ns),
        owned(),
    )
    .default_backoff()
    .reflect(w.role_bindings)
    .touched_objects();

    let ctx2 = ctx.clone();
    let shared2 = shared.clone();
    Controller::for_stream(vm_stream, shared.vms.clone())
        .with_config(ControllerConfig::default().concurrency(ctx.settings.concurrency))
        .watches_stream(profile_stream, profile_mapper)
        .watches_stream(ns_stream, ns_mapper)
        .watches_stream(lease_stream, lease_mapper)
        .owns_stream(sa_stream)
        .owns_stream(role_stream)
        .owns_stream(binding_stream)
        .graceful_shutdown_on(stop)
        .run(
            move |vm, _| {
                let ctx = ctx2.clone();
                let shared = shared2.clone();
                async move { reconcile(vm, &ctx, &shared).await }
            },
            |vm, error, ctx| {
                ctx.metrics.reconcile_errors.get_or_create(&Metrics::label("virtualmachine")).inc();
                warn!(vm = %vm.name_any(), namespace = ?vm.namespace(), %error, "reconcile failed; retrying");
                Action::requeue(Duration::from_secs(5))
            },
            ctx.clone(),
        )
        .for_each(|_| futures::future::ready(()))
        .await;
    info!("VirtualMachine controller stopped");
}

async fn reconcile(
    vm: Arc<VirtualMachine>,
    ctx: &Context,
    shared: &Shared,
) -> Result<Action, Error> {
    let span = info_span!("reconcile", kind = "VirtualMachine", namespace = %vm.namespace().unwrap_or_default(), name = %vm.name_any());
    async move {
        let started = std::time::Instant::now();
        shared.ready().await?;
        tracing::debug!(
            waited_ms = started.elapsed().as_millis() as u64,
            "caches ready"
        );
        let label = Metrics::label("virtualmachine");
        ctx.metrics.reconciles.get_or_create(&label).inc();
        let ns = vm.namespace().unwrap_or_default();
        let api: Api<VirtualMachine> = Api::namespaced(ctx.client.clone(), &ns);
        let result = finalizer(&api, FINALIZER, vm, |event| async {
            match event {
                Finalizer::Apply(vm) => apply(vm, ctx, shared).await,
                Finalizer::Cleanup(vm) => cleanup(vm, ctx).await,
            }
        })
        .await;
        use kube::runtime::finalizer::Error as F;
        let result = match result {
            Ok(a) => Ok(a),
            Err(F::ApplyFailed(e) | F::CleanupFailed(e)) => Err(e),
            // The cached VM predates our own finalizer patch (its JSON-patch test failed): the
            // watch brings the fresh object in a moment.
            Err(F::AddFinalizer(kube::Error::Api(s)) | F::RemoveFinalizer(kube::Error::Api(s)))
                if s.code == 422 || s.code == 409 =>
            {
                tracing::debug!("stale cache while patching the finalizer; retrying");
                Ok(Action::requeue(Duration::from_millis(500)))
            }
            Err(other) => Err(Error::Finalizer(other.to_string())),
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

/// Create what the VM's guest needs to act as itself, if missing.
async fn ensure_identity(vm: &VirtualMachine, ctx: &Context, shared: &Shared) -> Result<(), Error> {
    let ns = vm.namespace().unwrap_or_default();
    let name = vm.name_any();
    let guest = identity::guest_name(&name);
    let pp = PostParams {
        field_manager: Some(CONTROLLER_MANAGER.into()),
        ..Default::default()
    };
    async fn create<K>(api: Api<K>, obj: K, pp: &PostParams) -> Result<(), Error>
    where
        K: Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        match api.create(pp, &obj).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
    if shared
        .service_accounts
        .get(&ObjectRef::new(&guest).within(&ns))
        .is_none()
    {
        create(
            Api::namespaced(ctx.client.clone(), &ns),
            identity::service_account(vm),
            &pp,
        )
        .await?;
    }
    if shared
        .roles
        .get(&ObjectRef::new(&guest).within(&ns))
        .is_none()
    {
        create(
            Api::namespaced(ctx.client.clone(), &ns),
            identity::role(vm),
            &pp,
        )
        .await?;
    }
    if shared
        .role_bindings
        .get(&ObjectRef::new(&guest).within(&ns))
        .is_none()
    {
        create(
            Api::namespaced(ctx.client.clone(), &ns),
            identity::role_binding(vm),
            &pp,
        )
        .await?;
    }
    if shared
        .leases
        .get(&ObjectRef::new(&identity::lease_name(&name)).within(&ns))
        .is_none()
    {
        create(
            Api::namespaced(ctx.client.clone(), &ns),
            identity::lease(vm),
            &pp,
        )
        .await?;
    }
    Ok(())
}

fn policy(p: &ConfigurationProfile) -> RemediationPolicy {
    let r = &p.spec.remediation;
    RemediationPolicy {
        mode: r.mode,
        max_attempts: r.max_attempts,
        initial_backoff: duration::parse(&r.initial_backoff).unwrap_or(Duration::from_secs(30)),
        max_backoff: duration::parse(&r.max_backoff).unwrap_or(Duration::from_secs(600)),
    }
}

fn resolved(
    p: &ConfigurationProfile,
    via_assignment: bool,
    also_matched: Vec<String>,
) -> ProfileChoice {
    ProfileChoice::Resolved {
        name: p.name_any(),
        generation: p.metadata.generation.unwrap_or_default(),
        configuration: resolve::resolve(&p.spec),
        remediation: policy(p),
        via_assignment,
        also_matched,
    }
}

/// The assignment choice for a VM that names no profile: the winner and the other matching
/// profiles. A VM onboarded by assignment stays with its profile while that profile still matches
/// (no churn when another matching profile appears).
pub fn assigned_profile(vm: &VirtualMachine, shared: &Shared) -> Option<assign::Choice> {
    let ns_labels = vm
        .namespace()
        .and_then(|ns| shared.namespaces.get(&ObjectRef::new(&ns)))
        .map(|n| n.labels().clone())
        .unwrap_or_default();
    let profiles = shared.profiles.state();
    let mut choice = assign::choose(
        profiles.iter().filter_map(|p| {
            p.spec.assignment.as_ref().map(|a| Candidate {
                name: p.metadata.name.as_deref().unwrap_or_default(),
                assignment: a,
            })
        }),
        vm.labels(),
        &ns_labels,
    )?;
    if let Some(current) = vm.status.as_ref().and_then(|s| s.profile.clone())
        && current != choice.winner
        && choice.others.contains(&current)
    {
        choice.others.retain(|o| o != &current);
        choice
            .others
            .insert(0, std::mem::replace(&mut choice.winner, current));
    }
    Some(choice)
}

/// The profile a VM uses, resolved: the one it names, else the one an assignment picks.
fn choose_profile(vm: &VirtualMachine, shared: &Shared) -> ProfileChoice {
    if let Some(name) = &vm.spec.management.profile {
        return match shared.profiles.get(&ObjectRef::new(name)) {
            Some(p) => resolved(&p, false, Vec::new()),
            None => ProfileChoice::Missing { name: name.clone() },
        };
    }
    let Some(choice) = assigned_profile(vm, shared) else {
        return ProfileChoice::Unassigned;
    };
    match shared.profiles.get(&ObjectRef::new(&choice.winner)) {
        Some(p) => resolved(&p, true, choice.others),
        None => ProfileChoice::Unassigned,
    }
}

fn heartbeat(lease: Option<Arc<Lease>>, now: Timestamp, grace: Duration) -> Heartbeat {
    let renewed = lease
        .as_ref()
        .and_then(|l| l.spec.as_ref())
        .and_then(|s| s.renew_time.as_ref())
        .map(|t| t.0);
    match renewed {
        Some(r) if r + grace > now => Heartbeat::Alive { renewed: r },
        last => Heartbeat::Missing { last },
    }
}

async fn apply(vm: Arc<VirtualMachine>, ctx: &Context, shared: &Shared) -> Result<Action, Error> {
    let ns = vm.namespace().unwrap_or_default();
    let name = vm.name_any();
    ensure_identity(&vm, ctx, shared).await?;
    let now = Timestamp::now();
    let grace = ctx.settings.heartbeat_grace;
    let profile = if vm.spec.management.enabled {
        choose_profile(&vm, shared)
    } else {
        ProfileChoice::Unassigned
    };
    let image_problems = if vm.spec.management.enabled {
        ctx.catalog.check(&vm.spec)
    } else {
        Vec::new()
    };
    let lease = shared
        .leases
        .get(&ObjectRef::new(&identity::lease_name(&name)).within(&ns));
    let outcome = decide::decide(Inputs {
        now,
        generation: vm.metadata.generation,
        spec: &vm.spec,
        status: vm.status.as_ref(),
        profile,
        image_problems,
        heartbeat: heartbeat(lease, now, grace),
        grace,
        assess_request: vm.annotations().get(decide::ASSESS_ANNOTATION).cloned(),
        clock: ctx.clock,
    });
    let current = vm
        .status
        .as_ref()
        .map(decide::controller_part)
        .unwrap_or_default();
    if outcome.status != current {
        let api: Api<VirtualMachine> = Api::namespaced(ctx.client.clone(), &ns);
        let body = serde_json::json!({
            "apiVersion": VirtualMachine::api_version(&()),
            "kind": VirtualMachine::kind(&()),
            "metadata": { "name": name },
            "status": outcome.status,
        });
        api.patch_status(
            &name,
            &PatchParams::apply(CONTROLLER_MANAGER).force(),
            &Patch::Apply(body),
        )
        .await?;
        ctx.metrics
            .status_writes
            .get_or_create(&Metrics::label("virtualmachine"))
            .inc();
        if outcome.status.phase != current.phase {
            info!(phase = ?outcome.status.phase, message = outcome.status.message.as_deref().unwrap_or_default(), "phase changed");
        }
    }
    if outcome.remediation_attempted {
        ctx.metrics.remediation_attempts.inc();
    }
    for ev in &outcome.events {
        match ev.reason {
            "DriftDetected" => ctx.metrics.drift_detected.inc(),
            "Remediated" => ctx.metrics.remediated.inc(),
            "RemediationFailed" => ctx.metrics.remediation_failed.inc(),
            _ => 0,
        };
    }
    super::publish_events(ctx, &vm.object_ref(&()), &outcome.events).await;
    Ok(match outcome.requeue_after {
        Some(d) => Action::requeue(d),
        None => Action::await_change(),
    })
}

/// The VM is being deleted: revoke its guest's identity at once (deleting the ServiceAccount
/// invalidates its tokens) and remove the heartbeat Lease. Nothing on the guest is touched.
async fn cleanup(vm: Arc<VirtualMachine>, ctx: &Context) -> Result<Action, Error> {
    let ns = vm.namespace().unwrap_or_default();
    let name = vm.name_any();
    let guest = identity::guest_name(&name);
    let dp = DeleteParams::default();
    fn ok_if_gone<T>(r: Result<T, kube::Error>) -> Result<(), Error> {
        match r {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
    ok_if_gone(
        Api::<RoleBinding>::namespaced(ctx.client.clone(), &ns)
            .delete(&guest, &dp)
            .await,
    )?;
    ok_if_gone(
        Api::<Role>::namespaced(ctx.client.clone(), &ns)
            .delete(&guest, &dp)
            .await,
    )?;
    ok_if_gone(
        Api::<ServiceAccount>::namespaced(ctx.client.clone(), &ns)
            .delete(&guest, &dp)
            .await,
    )?;
    ok_if_gone(
        Api::<Lease>::namespaced(ctx.client.clone(), &ns)
            .delete(&identity::lease_name(&name), &dp)
            .await,
    )?;
    info!("guest identity and heartbeat Lease removed");
    Ok(Action::await_change())
}

/// Keep the `automend_virtual_machines{phase}` gauges current from the cache.
pub async fn phase_gauges(
    ctx: Arc<Context>,
    shared: Shared,
    stop: impl Future<Output = ()> + Send,
) {
    let work = async {
        loop {
            let mut counts: BTreeMap<&'static str, i64> = BTreeMap::new();
            for p in [
                "Pending",
                "InProgress",
                "Configured",
                "Failed",
                "NotManaged",
                "Unknown",
            ] {
                counts.insert(p, 0);
            }
            for vm in shared.vms.state() {
                let phase = match vm.status.as_ref().and_then(|s| s.phase) {
                    Some(VmPhase::Pending) => "Pending",
                    Some(VmPhase::InProgress) => "InProgress",
                    Some(VmPhase::Configured) => "Configured",
                    Some(VmPhase::Failed) => "Failed",
                    Some(VmPhase::NotManaged) => "NotManaged",
                    None => "Unknown",
                };
                *counts.entry(phase).or_default() += 1;
            }
            for (phase, n) in counts {
                ctx.metrics
                    .vms
                    .get_or_create(&PhaseLabel {
                        phase: phase.into(),
                    })
                    .set(n);
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    };
    tokio::select! { _ = work => {}, _ = stop => {} }
}
