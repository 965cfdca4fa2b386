//! The ConfigurationProfile controller: resolves each profile into its effective configuration and
//! reports how many VMs use it, by phase, and assignment overlaps.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector;
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
    instrumented(ctx, "configurationprofile", &*p, shared.ready(), || {
        update_status(&p, ctx, shared)
    })
    .await
}

/// VMs that use the profile, by phase, and VMs its assignment matched that another profile won.
fn count(p: &ConfigurationProfile, shared: &Shared) -> (i32, PhaseCounts, usize) {
    let name = p.name_any();
    let mut counts = PhaseCounts::default();
    let mut vm_count = 0;
    let mut overlapped = 0;
    for vm in shared.vms.state() {
        let status_profile = vm.status.as_ref().and_then(|s| s.profile.as_deref());
        let uses = vm.spec.management.profile.as_deref() == Some(name.as_str())
            || (vm.spec.management.profile.is_none() && status_profile == Some(name.as_str()));
        if uses {
            vm_count += 1;
            match vm.status.as_ref().and_then(|s| s.phase) {
                Some(VmPhase::Pending) | None => counts.pending += 1,
                Some(VmPhase::InProgress) => counts.in_progress += 1,
                Some(VmPhase::Configured) => counts.configured += 1,
                Some(VmPhase::Failed) => counts.failed += 1,
                Some(VmPhase::NotManaged) => counts.not_managed += 1,
            }
        } else if vm.spec.management.profile.is_none() && p.spec.assignment.is_some() {
            // Matched by this profile's assignment but onboarded to another one?
            if let Some(choice) = assigned_profile(&vm, shared)
                && choice.winner != name
                && choice.others.contains(&name)
            {
                overlapped += 1;
            }
        }
    }
    (vm_count, counts, overlapped)
}

async fn update_status(
    p: &ConfigurationProfile,
    ctx: &Context,
    shared: &Shared,
) -> Result<Action, Error> {
    let name = p.name_any();
    let effective = resolve::resolve(&p.spec);
    let (vm_count, phase_counts, overlapped) = count(p, shared);
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
                format!("{overlapped} VM(s) match this profile's assignment but were onboarded to another matching profile (higher priority, or an earlier name at equal priority)"));
        } else {
            c.set(
                "Overlapping",
                false,
                "NoOverlap",
                "no VM matched by this assignment is onboarded to another profile",
            );
        }
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
    Ok(Action::requeue(RECOUNT))
}
