//! Enrollment: an Enrollment's credential (a ServiceAccount that may only create and read
//! EnrollmentRequests) and its Ready condition; the requests themselves are decided in
//! `requests.rs`. Decisions are `logic::enroll`.

mod requests;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::{WatchStreamExt, reflector};
use kube::{Resource, ResourceExt};
use tracing::info;

use super::context::{Context, Error, namespaced};
use super::reconcile::{instrumented, on_error};
use super::shared::Shared;
use crate::api::{Enrollment, EnrollmentStatus};
use crate::identity::{CONTROLLER_MANAGER, MANAGED_BY, MANAGED_BY_VALUE};
use crate::logic::conditions::status_of;
use crate::logic::enroll::{self, service_account_name};
use crate::logic::events::EventSpec;
use crate::watch;

/// Run the Enrollment and EnrollmentRequest controllers until `stop`.
pub async fn run(
    ctx: Arc<Context>,
    shared: Shared,
    stop: impl Future<Output = ()> + Send + Sync + Clone + 'static,
) {
    tokio::join!(
        enrollments(ctx.clone(), shared.clone(), stop.clone()),
        requests::run(ctx, shared, stop),
    );
}

async fn enrollments(
    ctx: Arc<Context>,
    shared: Shared,
    stop: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let api: Api<Enrollment> = namespaced(&ctx.client, &ctx.settings.namespace);
    let (store, writer) = reflector::store();
    let stream = watch::supervised(api, watch::config(), ctx.health.probe("enroll/enrollments"))
        .modify(|e| e.managed_fields_mut().clear())
        .reflect(writer)
        .applied_objects();
    let stream = watch::events_only(watch::changed(stream), "enrollments");
    Controller::for_stream(stream, store)
        .graceful_shutdown_on(stop)
        .run(
            move |e, ctx| {
                let shared = shared.clone();
                async move { reconcile(e, &ctx, &shared).await }
            },
            on_error("enrollment"),
            ctx,
        )
        .for_each(|_| futures::future::ready(()))
        .await;
    info!("Enrollment controller stopped");
}

async fn reconcile(e: Arc<Enrollment>, ctx: &Context, shared: &Shared) -> Result<Action, Error> {
    instrumented(ctx, "enrollment", &*e, shared.ready(), || async {
        let ns = e.namespace().unwrap_or_default();
        if e.metadata.deletion_timestamp.is_none() {
            ensure_credential(&e, ctx, &ns).await?;
        }
        let now = jiff::Timestamp::now();
        let old = e.status.clone().unwrap_or_default();
        let status = EnrollmentStatus {
            observed_generation: e.metadata.generation,
            service_account: Some(service_account_name(&e.name_any())),
            conditions: enroll::conditions(&e, old.machines_enrolled, now),
            ..old.clone()
        };
        if status != old {
            let api: Api<Enrollment> = Api::namespaced(ctx.client.clone(), &ns);
            let body = serde_json::json!({
                "observedGeneration": status.observed_generation,
                "serviceAccount": status.service_account,
                "conditions": status.conditions,
            });
            crate::status::apply(&api, &e.name_any(), CONTROLLER_MANAGER, &body).await?;
            let was = old.conditions.iter().find(|c| c.type_ == "Ready");
            let is = status.conditions.iter().find(|c| c.type_ == "Ready");
            if let Some(c) = is
                && was.map(|w| &w.reason) != Some(&c.reason)
                && status_of(&status.conditions, "Ready") == Some(false)
            {
                let reason = if c.reason == "Expired" {
                    "EnrollmentExpired"
                } else {
                    "EnrollmentExhausted"
                };
                let ev = EventSpec::normal(reason, "Enroll", c.message.clone());
                if c.reason != "Deleting" {
                    super::publish_events(ctx, &e.object_ref(&()), &[ev]).await;
                }
            }
        }
        // Wake at the expiry, to say so.
        let left = crate::logic::duration::until(now, e.spec.expires_at.0);
        Ok(if left > Duration::ZERO {
            Action::requeue(left + Duration::from_secs(1))
        } else {
            Action::await_change()
        })
    })
    .await
}

/// The Enrollment's ServiceAccount, and a Role that lets it create EnrollmentRequests and read
/// one by name (names are unguessable; list and watch are not granted). Owned by the
/// Enrollment, so deleting it deletes them, which invalidates every token of it.
async fn ensure_credential(e: &Enrollment, ctx: &Context, ns: &str) -> Result<(), Error> {
    let name = service_account_name(&e.name_any());
    let sas: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), ns);
    if sas.get_opt(&name).await?.is_some() {
        return Ok(());
    }
    let owner = e.controller_owner_ref(&()).map(|o| OwnerReference {
        block_owner_deletion: Some(false),
        ..o
    });
    let meta = ObjectMeta {
        name: Some(name.clone()),
        namespace: Some(ns.to_string()),
        labels: Some(
            [
                (MANAGED_BY.to_string(), MANAGED_BY_VALUE.to_string()),
                (enroll::ENROLLMENT_LABEL.to_string(), e.name_any()),
            ]
            .into(),
        ),
        owner_references: owner.map(|o| vec![o]),
        ..Default::default()
    };
    let pp = PostParams {
        field_manager: Some(CONTROLLER_MANAGER.into()),
        ..Default::default()
    };
    let role = Role {
        metadata: meta.clone(),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![crate::api::GROUP.into()]),
            resources: Some(vec!["enrollmentrequests".into()]),
            verbs: vec!["create".into(), "get".into()],
            ..Default::default()
        }]),
    };
    let binding = crate::identity::binding(meta.clone());
    let sa = ServiceAccount {
        metadata: meta,
        automount_service_account_token: Some(false),
        ..Default::default()
    };
    fn created<T>(r: Result<T, kube::Error>) -> Result<(), Error> {
        match r {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
    created(
        Api::<Role>::namespaced(ctx.client.clone(), ns)
            .create(&pp, &role)
            .await,
    )?;
    created(
        Api::<RoleBinding>::namespaced(ctx.client.clone(), ns)
            .create(&pp, &binding)
            .await,
    )?;
    created(sas.create(&pp, &sa).await)?;
    info!(service_account = %name, "enrollment credential created");
    Ok(())
}
