//! The VirtualMachine controller: guest identity, profile resolution, the phase decision, the
//! guest protocol's controller half and Events. The guest identity is owned by the VM (garbage
//! collected with it); the finalizer earlier versions put on VMs is removed.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, Patch, PatchParams};
use kube::core::{DeserializeGuard, PartialObjectMeta};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use tracing::{info, warn};

use super::context::{Context, Error, namespaced, profile_watch};
use super::identities::Part;
use super::metrics::{Metrics, PhaseLabel};
use super::own_writes::Change;
use super::reconcile::{instrumented, on_error};
use super::shared::Shared;
use crate::api::{ConfigurationProfile, VirtualMachine, VmPhase};
use crate::identity::{self, CONTROLLER_MANAGER, OWNED_SELECTOR};
use crate::logic::assign::{self, Candidate};
use crate::logic::duration::parse_or;
use crate::logic::resolve;
use crate::logic::vm::{self as decide, Inputs, ProfileChoice, RemediationPolicy};
use crate::watch;

pub(super) mod first_heartbeat;
pub(crate) mod guest_identity;
mod invalid;
mod triggers;

use guest_identity::{cleanup, ensure_identity, ensure_lease};

/// The finalizer earlier versions put on VMs (the controller now removes it).
pub const FINALIZER: &str = "automend.io/guest-identity";

/// Run the VirtualMachine controller until `stop` resolves.
pub async fn run(
    ctx: Arc<Context>,
    shared: Shared,
    stop: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let Some(w) = shared.take_writers() else {
        warn!("the VM controller was started twice");
        return;
    };
    let client = &ctx.client;
    let ns = &ctx.settings.namespace;

    // Object by object: an unreadable VM is reported and left out, never a broken watch.
    let (report, reports) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(invalid::reporter(ctx.clone(), reports));
    let probe = |name| ctx.health.probe(name);
    let vm_stream = watch::supervised(
        namespaced::<DeserializeGuard<VirtualMachine>>(client, ns),
        watch::config(),
        probe("vm/virtualmachines"),
    )
    .try_filter_map(move |event| futures::future::ready(Ok(invalid::screen(event, &report))))
    .inspect_ok({
        let (own, written) = (shared.own_writes.clone(), shared.written.clone());
        let held = shared.held.clone();
        move |event| {
            if let watcher::Event::Delete(vm) = event {
                let (ns, name) = (vm.namespace().unwrap_or_default(), vm.name_any());
                own.forget(&ns, &name);
                written.forget(&ns, &name);
                // A VM deleted while held for its first heartbeat is not woken for nothing.
                held.release(&ns, &name);
            }
        }
    })
    .modify(|vm| {
        slim(vm);
        super::interned::vm(vm);
    })
    .reflect(w.vms)
    .applied_objects()
    // What a change is (`OwnWrites`, which also stands in for a resourceVersion predicate and its
    // cache of one more entry per VM): the rollout controller hears of every change but a VM
    // relisted unchanged; only changes that are not the controller's own status writes coming
    // back reconcile.
    .try_filter({
        let own = shared.own_writes.clone();
        let written = shared.written.clone();
        let tx = shared.vm_changes.clone();
        move |vm| {
            written.observe(vm);
            let change = own.see(vm);
            if change != Change::None {
                let _ = tx.send(vm.namespace().unwrap_or_default());
            }
            futures::future::ready(change == Change::Other)
        }
    });

    let profile_stream = watch::supervised(
        Api::<ConfigurationProfile>::all(client.clone()),
        profile_watch(&ctx.settings),
        probe("vm/configurationprofiles"),
    )
    .modify(|p| p.managed_fields_mut().clear())
    .reflect(w.profiles)
    .touched_objects();
    // Namespaces: their labels feed assignment namespace selectors.
    let ns_config = match ns {
        Some(n) => watch::config().fields(&format!("metadata.name={n}")),
        None => watch::config(),
    };
    let ns_stream = watch::supervised(
        Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
        ns_config,
        probe("vm/namespaces"),
    )
    .modify(|n| n.managed_fields_mut().clear())
    .reflect(w.namespaces)
    .touched_objects();
    let ctx2 = ctx.clone();
    let shared2 = shared.clone();
    use watch::{changed, events_only};
    Controller::for_stream(
        events_only(vm_stream, "virtualmachines"),
        shared.vms.clone(),
    )
    .with_config(ControllerConfig::default().concurrency(ctx.settings.concurrency))
    .watches_stream(
        events_only(changed(profile_stream), "configurationprofiles"),
        triggers::profile_changes(&shared),
    )
    .watches_stream(
        events_only(changed(ns_stream), "namespaces"),
        triggers::namespace_changes(&shared),
    )
    .reconcile_on(identity_triggers(&ctx, &shared))
    // What a silent guest's VM says depends on whether the API server still asks us about guests.
    .reconcile_all_on(ctx.guest_routing.changes())
    .graceful_shutdown_on(stop)
    .run(
        move |vm, _| {
            let ctx = ctx2.clone();
            let shared = shared2.clone();
            async move { reconcile(vm, &ctx, &shared).await }
        },
        on_error("virtualmachine"),
        ctx.clone(),
    )
    .for_each(|_| futures::future::ready(()))
    .await;
    info!("VirtualMachine controller stopped");
}

/// The VMs to reconcile for their identity objects and heartbeats: the four watches feed
/// `Identities` (and the Lease watch the heartbeats); a VM wakes when an object it had goes away,
/// its Role's rules are out of date, or a Lease renewal comes from a guest not known to run.
fn identity_triggers(
    ctx: &Context,
    shared: &Shared,
) -> impl futures::Stream<Item = ObjectRef<VirtualMachine>> + Send + 'static {
    let heartbeats = shared.heartbeats.clone();
    let renewed = triggers::heartbeat_changes(shared);
    let leases = identity_watch::<Lease>(ctx, shared, Part::Lease, "vm/leases", move |event| {
        heartbeats.record(event);
        match event {
            watcher::Event::Apply(l) | watcher::Event::InitApply(l) => renewed(l),
            _ => None,
        }
    });
    futures::stream::select_all([
        shared.held.due().boxed(),
        leases.boxed(),
        identity_watch::<PartialObjectMeta<ServiceAccount>>(
            ctx,
            shared,
            Part::ServiceAccount,
            "vm/serviceaccounts",
            |_| None,
        )
        .boxed(),
        identity_watch::<PartialObjectMeta<Role>>(ctx, shared, Part::Role, "vm/roles", |_| None)
            .boxed(),
        identity_watch::<PartialObjectMeta<RoleBinding>>(
            ctx,
            shared,
            Part::RoleBinding,
            "vm/rolebindings",
            |_| None,
        )
        .boxed(),
    ])
}

/// One identity watch (the objects the controller labelled as its own), into `Identities`;
/// `more` may name one more VM to wake for an event.
fn identity_watch<K>(
    ctx: &Context,
    shared: &Shared,
    part: Part,
    what: &'static str,
    more: impl Fn(&watcher::Event<K>) -> Option<ObjectRef<VirtualMachine>> + Send + 'static,
) -> impl futures::Stream<Item = ObjectRef<VirtualMachine>> + Send + 'static
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default,
{
    let identities = shared.identities.clone();
    watch::supervised(
        namespaced::<K>(&ctx.client, &ctx.settings.namespace),
        watch::config().labels(OWNED_SELECTOR),
        ctx.health.probe(what),
    )
    .filter_map(move |event| {
        futures::future::ready(match event {
            Ok(event) => {
                let mut wake: Vec<ObjectRef<VirtualMachine>> = identities
                    .record(part, &event)
                    .into_iter()
                    .map(|(ns, vm)| ObjectRef::new(&vm).within(&ns))
                    .collect();
                wake.extend(more(&event));
                Some(futures::stream::iter(wake))
            }
            Err(error) => {
                warn!(watch = what, %error, "watch failed; retrying");
                None
            }
        })
    })
    .flatten()
}

async fn reconcile(
    vm: Arc<VirtualMachine>,
    ctx: &Context,
    shared: &Shared,
) -> Result<Action, Error> {
    let obj = vm.clone();
    instrumented(
        ctx,
        "virtualmachine",
        &*obj,
        shared.ready(),
        || async move {
            let ns = vm.namespace().unwrap_or_default();
            let name = vm.name_any();
            // The guest identity and the Lease are owned by the VM: the cluster's garbage
            // collector removes them with it. VMs onboarded by earlier versions carry a finalizer that
            // did it instead; it is removed (at their deletion, after that cleanup).
            let legacy = vm.finalizers().iter().any(|f| f == FINALIZER);
            if vm.metadata.deletion_timestamp.is_some() {
                shared.written.forget(&ns, &name);
                if legacy {
                    cleanup(&vm, ctx).await?;
                    remove_finalizer(ctx, &vm).await?;
                }
                return Ok(Action::await_change());
            }
            if legacy {
                remove_finalizer(ctx, &vm).await?;
            }
            apply(vm, ctx, shared).await
        },
    )
    .await
}

/// Remove our (legacy) finalizer, only from the VM as read: a concurrent change (409) or a VM
/// already gone (404) needs nothing, the watch brings the fresh object.
async fn remove_finalizer(ctx: &Context, vm: &VirtualMachine) -> Result<(), Error> {
    let finalizers: Vec<&String> = vm.finalizers().iter().filter(|f| *f != FINALIZER).collect();
    let patch = serde_json::json!({
        "metadata": { "resourceVersion": vm.resource_version(), "finalizers": finalizers }
    });
    let api: Api<VirtualMachine> =
        Api::namespaced(ctx.client.clone(), &vm.namespace().unwrap_or_default());
    match api
        .patch(
            &vm.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn policy(p: &ConfigurationProfile) -> RemediationPolicy {
    let r = &p.spec.remediation;
    let object = format!("ConfigurationProfile {}", p.name_any());
    RemediationPolicy {
        mode: r.mode,
        max_attempts: r.max_attempts,
        initial_backoff: parse_or(
            &r.initial_backoff,
            Duration::from_secs(30),
            &object,
            "spec.remediation.initialBackoff",
        ),
        max_backoff: parse_or(
            &r.max_backoff,
            Duration::from_secs(600),
            &object,
            "spec.remediation.maxBackoff",
        ),
    }
}

/// A found profile, resolved; `assignment`: the other matching profiles and the one that now
/// outranks it, when an assignment chose it.
fn resolved(
    p: &ConfigurationProfile,
    assignment: Option<(Vec<String>, Option<String>)>,
) -> ProfileChoice {
    let via_assignment = assignment.is_some();
    let (also_matched, outranked_by) = assignment.unwrap_or_default();
    ProfileChoice::Resolved {
        name: p.name_any(),
        generation: p.metadata.generation.unwrap_or_default(),
        configuration: super::interned::configuration(Arc::new(resolve::resolve(&p.spec))),
        remediation: policy(p),
        via_assignment,
        also_matched,
        outranked_by,
    }
}

/// The assignment choice for a VM that names no profile: the winner, the other matching profiles
/// and, when the VM keeps its profile although another now ranks first (`assign::sticky`), that
/// one. A profile being deleted wins no VM that is not already on it.
pub fn assigned_profile(
    vm: &VirtualMachine,
    shared: &Shared,
) -> Option<(assign::Choice, Option<String>)> {
    let ns_labels = vm
        .namespace()
        .and_then(|ns| shared.namespaces.get(&ObjectRef::new(&ns)))
        .map(|n| n.labels().clone())
        .unwrap_or_default();
    let current = vm
        .status
        .as_ref()
        .and_then(|s| s.profile.as_deref().map(String::from));
    let profiles = shared.profiles.state();
    let choice = assign::choose(
        profiles
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none() || p.metadata.name == current)
            .filter_map(|p| {
                p.spec.assignment.as_ref().map(|a| Candidate {
                    name: p.metadata.name.as_deref().unwrap_or_default(),
                    assignment: a,
                })
            }),
        vm.labels(),
        &ns_labels,
    )?;
    Some(assign::sticky(choice, current.as_deref()))
}

/// The profile a VM uses, resolved: the one it names, else the one an assignment picks.
fn choose_profile(vm: &VirtualMachine, shared: &Shared) -> ProfileChoice {
    if let Some(name) = &vm.spec.management.profile {
        return match shared.profiles.get(&ObjectRef::new(name)) {
            Some(p) => resolved(&p, None),
            None => ProfileChoice::Missing {
                name: name.to_string(),
            },
        };
    }
    let Some((choice, outranked_by)) = assigned_profile(vm, shared) else {
        return ProfileChoice::Unassigned;
    };
    match shared.profiles.get(&ObjectRef::new(&choice.winner)) {
        Some(p) => resolved(&p, Some((choice.others, outranked_by))),
        None => ProfileChoice::Unassigned,
    }
}

async fn apply(vm: Arc<VirtualMachine>, ctx: &Context, shared: &Shared) -> Result<Action, Error> {
    let ns = vm.namespace().unwrap_or_default();
    let name = vm.name_any();
    let account_created = ensure_identity(&vm, ctx, shared).await?;
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
    // Its guest can act from when its identity exists (under load that can be well after the
    // VM was created).
    let created = if account_created {
        Some(now)
    } else {
        vm.metadata.creation_timestamp.as_ref().map(|t| t.0)
    };
    let mut lease = shared.identities.get(&ns, &name).has(Part::Lease);
    if decide::lease_overdue(lease, created, now) {
        ensure_lease(&vm, ctx, shared).await?;
        lease = true;
    }
    let status = shared.written.status_for(&ns, &name, vm.status.as_ref());
    let guests_refused = ctx.guest_routing.problem();
    let outcome = decide::decide(Inputs {
        now,
        created,
        generation: vm.metadata.generation,
        spec: &vm.spec,
        status: status.as_ref(),
        profile,
        image_problems,
        heartbeat: decide::heartbeat::judge(
            lease
                .then(|| shared.heartbeats.get(&ns, &identity::lease_name(&name)))
                .flatten()
                .as_ref(),
            now,
            grace,
        ),
        grace,
        assess_request: vm.annotations().get(decide::ASSESS_ANNOTATION).cloned(),
        clock: ctx.clock,
        guests_refused: guests_refused.as_deref(),
    });
    let current = status
        .as_ref()
        .map(decide::controller_part)
        .unwrap_or_default();
    if outcome.status != current {
        let api: Api<VirtualMachine> = Api::namespaced(ctx.client.clone(), &ns);
        // Before the write: its watch event may come back before the call returns (recorded
        // after it, the entry waited for the VM's next reconcile: thousands of statuses kept
        // during a burst). A failed write is not laid over the cache.
        shared.own_writes.wrote(&ns, &name, &outcome.status);
        shared.written.wrote(&ns, &name, &outcome.status);
        if let Err(e) = crate::status::apply(&api, &name, CONTROLLER_MANAGER, &outcome.status).await
        {
            shared.written.forget(&ns, &name);
            return Err(e.into());
        }
        ctx.metrics
            .status_writes
            .get_or_create(&Metrics::label("virtualmachine"))
            .inc();
        if outcome.status.phase != current.phase {
            info!(phase = ?outcome.status.phase, message = outcome.status.message.as_deref().unwrap_or_default(), "phase changed");
        }
        tracing::debug!(fields = %changed_fields(&current, &outcome.status), "status written");
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
    if let Some(onboarded) = &outcome.onboarded {
        // Reported with the other onboardings of its profile (`onboarded`), after this write.
        ctx.metrics.onboarded.inc();
        shared.onboardings.note(onboarded, &ns, &name);
    }
    if outcome.held_for_first_heartbeat {
        // Held outside kube-runtime's scheduler (`first_heartbeat`).
        let wait = outcome.requeue_after.unwrap_or_default();
        shared
            .held
            .until(&ns, &name, tokio::time::Instant::now() + wait);
        return Ok(Action::await_change());
    }
    shared.held.release(&ns, &name);
    Ok(match outcome.requeue_after {
        Some(d) => Action::requeue(d),
        None => Action::await_change(),
    })
}

/// What the cache keeps of a VM's metadata: no managed fields, and of its annotations only those
/// of automend (`automend.io/…`, `*.automend.io/…`: all it reads). `kubectl apply`'s
/// last-applied-configuration alone is the VM's whole spec again, 1–2 KB per VM.
fn slim(vm: &mut VirtualMachine) {
    vm.managed_fields_mut().clear();
    if let Some(a) = vm.metadata.annotations.as_mut() {
        a.retain(|k, _| {
            k.split_once('/')
                .is_some_and(|(d, _)| d == "automend.io" || d.ends_with(".automend.io"))
        });
        if a.is_empty() {
            vm.metadata.annotations = None;
        }
    }
}

/// The top-level status fields (and condition types) a write changes, for the debug log.
fn changed_fields(
    before: &crate::api::VirtualMachineStatus,
    after: &crate::api::VirtualMachineStatus,
) -> String {
    let (a, b) = (
        serde_json::to_value(before).unwrap_or_default(),
        serde_json::to_value(after).unwrap_or_default(),
    );
    let empty = serde_json::Map::new();
    let (a, b) = (
        a.as_object().unwrap_or(&empty),
        b.as_object().unwrap_or(&empty),
    );
    let mut out: Vec<String> = b
        .keys()
        .chain(a.keys())
        .filter(|k| a.get(*k) != b.get(*k) && *k != "conditions")
        .cloned()
        .collect();
    out.sort();
    out.dedup();
    for c in &after.conditions {
        let was = before.conditions.iter().find(|o| o.type_ == c.type_);
        if was.map(|o| (&o.status, &o.reason, &o.message))
            != Some((&c.status, &c.reason, &c.message))
        {
            out.push(format!("conditions.{}", c.type_));
        }
    }
    out.join(",")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_keeps_only_automends_annotations_and_no_managed_fields() {
        let mut vm: VirtualMachine = serde_json::from_value(serde_json::json!({
            "apiVersion": "automend.io/v1alpha1", "kind": "VirtualMachine",
            "metadata": { "name": "web-1", "namespace": "fleet",
                "labels": { "team": "web" },
                "annotations": {
                    "kubectl.kubernetes.io/last-applied-configuration": "{\"spec\":{}}",
                    "automend.io/assess": "now",
                    "sim.automend.io/power": "off",
                    "notautomend.io.example/x": "y",
                    "notautomend.io/x": "y",
                },
                "managedFields": [{ "manager": "kubectl", "operation": "Apply" }] },
            "spec": {
                "management": {"enabled": true, "profile": "production"},
                "os": {"type": "Linux", "image": {"publisher": "Canonical", "offer": "ubuntu-24_04-lts", "sku": "server"}},
                "placement": {"region": "westeurope"},
            },
        }))
        .expect("vm");
        slim(&mut vm);
        let kept: Vec<&str> = vm.annotations().keys().map(String::as_str).collect();
        assert_eq!(kept, vec!["automend.io/assess", "sim.automend.io/power"]);
        assert!(vm.managed_fields().is_empty());
        assert_eq!(vm.labels().get("team").map(String::as_str), Some("web"));
        let mut bare = vm.clone();
        bare.metadata.annotations = Some([("a.example/b".to_string(), "c".to_string())].into());
        slim(&mut bare);
        assert_eq!(bare.metadata.annotations, None, "nothing kept: no map");
    }
}
