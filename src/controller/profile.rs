//! The ConfigurationProfile controller: resolves each profile into its effective configuration and
//! reports how many VMs use it, by phase, and assignment overlaps. A profile in use cannot be
//! deleted: its finalizer holds the deletion while any VM uses it (condition `Deleting`, a
//! `DeletionBlocked` Event naming them), so no VM is ever moved to another configuration by a
//! deletion.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector;
use kube::{Resource as _, ResourceExt};
use tracing::info;

use super::context::{Context, Error, profile_watch};
use super::metrics::Metrics;
use super::reconcile::{instrumented, on_error};
use super::shared::Shared;
use super::vm::assigned_profile;
use crate::api::{ConfigurationProfile, ConfigurationProfileStatus, PhaseCounts, VmPhase};
use crate::identity::CONTROLLER_MANAGER;
use crate::logic::conditions::Conditions;
use crate::logic::resolve;
use crate::watch;

/// Holds a profile's deletion while VMs use it.
pub const IN_USE_FINALIZER: &str = "automend.io/in-use";

/// How often VM counts are refreshed.
const RECOUNT: Duration = Duration::from_secs(10);

pub async fn run(
    ctx: Arc<Context>,
    shared: Shared,
    stop: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let config = profile_watch(&ctx.settings);
    let api = Api::<ConfigurationProfile>::all(ctx.client.clone());
    let (store, writer) = reflector::store();
    let profiles = watch::supervised(
        api,
        config,
        ctx.health.probe("profile/configurationprofiles"),
    )
    .modify(|p| p.managed_fields_mut().clear())
    .reflect(writer)
    .applied_objects();
    let shared2 = shared.clone();
    let profiles = watch::events_only(watch::changed(profiles), "configurationprofiles");
    Controller::for_stream(profiles, store)
        .graceful_shutdown_on(stop)
        .run(
            move |p, ctx| {
                let shared = shared2.clone();
                async move { reconcile(p, &ctx, &shared).await }
            },
            on_error("configurationprofile"),
            ctx.clone(),
        )
        .for_each(|_| futures::future::ready(()))
        .await;
    info!("ConfigurationProfile controller stopped");
}

async fn reconcile(
    p: Arc<ConfigurationProfile>,
    ctx: &Context,
    shared: &Shared,
) -> Result<Action, Error> {
    instrumented(ctx, "configurationprofile", &*p, shared.ready(), || async {
        let ours = p.finalizers().iter().any(|f| f == IN_USE_FINALIZER);
        if p.metadata.deletion_timestamp.is_some() {
            if !ours {
                return Ok(Action::await_change());
            }
            let usage = count(&p, shared);
            if usage.vm_count == 0 {
                set_finalizer(&p, ctx, false).await?;
                return Ok(Action::await_change());
            }
            return update_status(&p, ctx, usage).await;
        }
        if !ours {
            set_finalizer(&p, ctx, true).await?;
        }
        update_status(&p, ctx, count(&p, shared)).await
    })
    .await
}

/// Add or remove our finalizer, only on the object as read (a concurrent change makes the patch
/// fail and the next reconcile decide again).
async fn set_finalizer(p: &ConfigurationProfile, ctx: &Context, on: bool) -> Result<(), Error> {
    let mut finalizers: Vec<String> = p
        .finalizers()
        .iter()
        .filter(|f| *f != IN_USE_FINALIZER)
        .cloned()
        .collect();
    if on {
        finalizers.push(IN_USE_FINALIZER.to_string());
    }
    let patch = serde_json::json!({
        "metadata": { "resourceVersion": p.resource_version(), "finalizers": finalizers }
    });
    let api = Api::<ConfigurationProfile>::all(ctx.client.clone());
    match api
        .patch(
            &p.name_any(),
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        // Gone already, or changed since we read it: the watch brings the news.
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The VMs that use a profile, by phase, and VMs its assignment matched that another profile has.
struct Usage {
    vm_count: i32,
    counts: PhaseCounts,
    overlapped: usize,
    /// "namespace/name" of up to five VMs that use it.
    some: Vec<String>,
}

/// VMs that use the profile, by phase, and VMs its assignment matched that another profile won.
fn count(p: &ConfigurationProfile, shared: &Shared) -> Usage {
    let name = p.name_any();
    let mut counts = PhaseCounts::default();
    let mut vm_count = 0;
    let mut overlapped = 0;
    let mut some = Vec::new();
    for vm in shared.vms.state() {
        let status_profile = vm.status.as_ref().and_then(|s| s.profile.as_deref());
        let uses = vm.spec.management.profile.as_deref() == Some(name.as_str())
            || (vm.spec.management.profile.is_none() && status_profile == Some(name.as_str()));
        if uses {
            vm_count += 1;
            if some.len() < 5 {
                some.push(format!(
                    "{}/{}",
                    vm.namespace().unwrap_or_default(),
                    vm.name_any()
                ));
            }
            match vm.status.as_ref().and_then(|s| s.phase) {
                Some(VmPhase::Pending) | None => counts.pending += 1,
                Some(VmPhase::InProgress) => counts.in_progress += 1,
                Some(VmPhase::Configured) => counts.configured += 1,
                Some(VmPhase::Failed) => counts.failed += 1,
                Some(VmPhase::NotManaged) => counts.not_managed += 1,
            }
        } else if vm.spec.management.profile.is_none() && p.spec.assignment.is_some() {
            // Matched by this profile's assignment but onboarded to another one?
            if let Some((choice, _)) = assigned_profile(&vm, shared)
                && choice.winner != name
                && choice.others.contains(&name)
            {
                overlapped += 1;
            }
        }
    }
    Usage {
        vm_count,
        counts,
        overlapped,
        some,
    }
}

async fn update_status(
    p: &ConfigurationProfile,
    ctx: &Context,
    usage: Usage,
) -> Result<Action, Error> {
    let name = p.name_any();
    let effective = resolve::resolve(&p.spec);
    let Usage {
        vm_count,
        counts: phase_counts,
        overlapped,
        some,
    } = usage;
    let old = p.status.clone().unwrap_or_default();
    let generation = p.metadata.generation;
    let mut c = Conditions::new(&old.conditions, generation, Timestamp::now());
    c.set(
        "Ready",
        true,
        "Resolved",
        format!(
            "resolved to configuration {} ({:?} defaults with preferences)",
            effective.hash, p.spec.environment
        ),
    );
    if p.spec.assignment.is_some() {
        if overlapped > 0 {
            c.set("Overlapping", true, "AssignmentOverlap",
                format!("{overlapped} VM(s) match this profile's assignment but use another matching profile: the one that ranked first when they were onboarded (higher priority, or an earlier name at equal priority), which they keep while it matches"));
        } else {
            c.set(
                "Overlapping",
                false,
                "NoOverlap",
                "no VM matched by this assignment is onboarded to another profile",
            );
        }
    }
    let mut events = Vec::new();
    if p.metadata.deletion_timestamp.is_some() {
        let msg = deletion_blocked(vm_count, &some);
        let was = old
            .conditions
            .iter()
            .find(|c| c.type_ == DELETING)
            .map(|c| c.message.clone());
        if was.as_deref() != Some(msg.as_str()) {
            events.push(crate::logic::events::EventSpec::warning(
                "DeletionBlocked",
                "Delete",
                msg.clone(),
            ));
        }
        c.set(DELETING, true, "InUse", msg);
    }
    let status = ConfigurationProfileStatus {
        observed_generation: generation,
        effective_configuration: Some(effective),
        vm_count,
        phase_counts,
        conditions: c.into_vec(),
    };
    if status != old {
        let api = Api::<ConfigurationProfile>::all(ctx.client.clone());
        crate::status::apply(&api, &name, CONTROLLER_MANAGER, &status).await?;
        ctx.metrics
            .status_writes
            .get_or_create(&Metrics::label("configurationprofile"))
            .inc();
    }
    super::publish_events(ctx, &p.object_ref(&()), &events).await;
    Ok(Action::requeue(RECOUNT))
}

const DELETING: &str = "Deleting";

/// Why a deletion waits, naming (some of) the VMs that hold it.
fn deletion_blocked(vm_count: i32, some: &[String]) -> String {
    let more = (vm_count as usize).saturating_sub(some.len());
    format!(
        "deletion waits until no VM uses this profile: {vm_count} VM(s) do ({}{}); move them to another profile (disable management, then re-enable it naming the profile) or delete them",
        some.join(", "),
        if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        }
    )
}
