//! The ConfigurationProfile controller: resolves each profile into its effective configuration and
//! reports how many VMs use it, by phase, and assignment overlaps.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use tracing::{Instrument, info, info_span, warn};

use super::Context;
use super::metrics::Metrics;
use super::vm::{Error, Shared, assigned_profile};
use crate::api::{
    Condition, ConfigurationProfile, ConfigurationProfileStatus, PhaseCounts, VmPhase,
};
use crate::identity::CONTROLLER_MANAGER;
use crate::logic::resolve;

/// How often VM counts are refreshed.
const RECOUNT: Duration = Duration::from_secs(10);

pub async fn run(
    ctx: Arc<Context>,
    shared: Shared,
    stop: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let config = match &ctx.settings.profile_selector {
        Some(sel) => watcher::Config::default().labels(sel),
        None => watcher::Config::default(),
    };
    let api = Api::<ConfigurationProfile>::all(ctx.client.clone());
    let shared2 = shared.clone();
    Controller::new(api, config)
        .graceful_shutdown_on(stop)
        .run(
            move |p, ctx| {
                let shared = shared2.clone();
                async move { reconcile(p, &ctx, &shared).await }
            },
            |p, error, ctx| {
                ctx.metrics
                    .reconcile_errors
                    .get_or_create(&Metrics::label("configurationprofile"))
                    .inc();
                warn!(profile = %p.name_any(), %error, "reconcile failed; retrying");
                Action::requeue(Duration::from_secs(5))
            },
            ctx.clone(),
        )
        .for_each(|_| futures::future::ready(()))
        .await;
    info!("ConfigurationProfile controller stopped");
}

fn condition(
    old: &[Condition],
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
) -> Condition {
    let status = if status { "True" } else { "False" };
    let last_transition_time = old
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(Timestamp::now()));
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

async fn reconcile(
    p: Arc<ConfigurationProfile>,
    ctx: &Context,
    shared: &Shared,
) -> Result<Action, Error> {
    let name = p.name_any();
    let span = info_span!("reconcile", kind = "ConfigurationProfile", name = %name);
    async move {
        let label = Metrics::label("configurationprofile");
        ctx.metrics.reconciles.get_or_create(&label).inc();
        shared.ready().await?;
        let effective = resolve::resolve(&p.spec);
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
        let old = p.status.clone().unwrap_or_default();
        let generation = p.metadata.generation;
        let mut conditions = vec![condition(
            &old.conditions,
            "Ready",
            true,
            "Resolved",
            format!("resolved to configuration {} ({:?} defaults with preferences)", effective.hash, p.spec.environment),
            generation,
        )];
        if p.spec.assignment.is_some() {
            conditions.push(if overlapped > 0 {
                condition(&old.conditions, "Overlapping", true, "AssignmentOverlap",
                    format!("{overlapped} VM(s) match this profile's assignment but were onboarded to another matching profile (higher priority, or an earlier name at equal priority)"), generation)
            } else {
                condition(&old.conditions, "Overlapping", false, "NoOverlap", "no VM matched by this assignment is onboarded to another profile".into(), generation)
            });
        }
        let status = ConfigurationProfileStatus {
            observed_generation: generation,
            effective_configuration: Some(effective),
            vm_count,
            phase_counts: counts,
            conditions,
        };
        if status != old {
            let api = Api::<ConfigurationProfile>::all(ctx.client.clone());
            let body = serde_json::json!({
                "apiVersion": ConfigurationProfile::api_version(&()),
                "kind": ConfigurationProfile::kind(&()),
                "metadata": { "name": name },
                "status": status,
            });
            api.patch_status(&name, &PatchParams::apply(CONTROLLER_MANAGER).force(), &Patch::Apply(body)).await?;
            ctx.metrics.status_writes.get_or_create(&label).inc();
        }
        Ok(Action::requeue(RECOUNT))
    }
    .instrument(span)
    .await
}
