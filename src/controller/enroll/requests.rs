//! EnrollmentRequests: decided one at a time per namespace (so an Enrollment's limit is exact and
//! two machines never get one name), then answered with the VM's guest token sealed to the
//! machine's key. Decided requests are deleted after an hour.
//!
//! Order of writes: the Enrollment's counter (with its resourceVersion, so concurrent decisions
//! cannot both take the last slot), then the VirtualMachine, then the request's answer. A crash
//! in between can waste one slot (fail-safe: never more machines than the limit), never admit one
//! twice: the VM carries the machine's key, so the retried request gets that VM back.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::{WatchStreamExt, reflector};
use kube::{Resource, ResourceExt};
use tracing::{info, warn};

use super::super::context::{Context, Error, namespaced};
use super::super::reconcile::{instrumented, on_error};
use super::super::shared::Shared;
use crate::api::{
    Enrollment, EnrollmentRequest, EnrollmentRequestStatus, RequestPhase, VirtualMachine,
};
use crate::identity::CONTROLLER_MANAGER;
use crate::logic::enroll::{self, Decision, KnownVm};
use crate::logic::events::EventSpec;
use crate::watch;

/// How long a guest token issued at enrollment lives; the agent renews it long before.
pub const GUEST_TOKEN_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

/// One lock per namespace, guarding the VMs this process created that the cache may not show yet.
#[derive(Clone, Default)]
struct Locks(Arc<Mutex<HashMap<String, NamespaceLock>>>);

/// A namespace's decision lock, holding the VMs created under it.
type NamespaceLock = Arc<tokio::sync::Mutex<Vec<KnownVm>>>;

impl Locks {
    fn of(&self, ns: &str) -> NamespaceLock {
        let mut map = match self.0.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        map.entry(ns.to_string()).or_default().clone()
    }
}

pub(super) async fn run(
    ctx: Arc<Context>,
    shared: Shared,
    stop: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let api: Api<EnrollmentRequest> = namespaced(&ctx.client, &ctx.settings.namespace);
    let (store, writer) = reflector::store();
    let stream = watch::supervised(
        api,
        watch::config(),
        ctx.health.probe("enroll/enrollmentrequests"),
    )
    .modify(|r| r.managed_fields_mut().clear())
    .reflect(writer)
    .applied_objects();
    let stream = watch::events_only(watch::changed(stream), "enrollmentrequests");
    let locks = Locks::default();
    Controller::for_stream(stream, store)
        .graceful_shutdown_on(stop)
        .run(
            move |r, ctx| {
                let shared = shared.clone();
                let locks = locks.clone();
                async move { reconcile(r, ctx, &shared, &locks).await }
            },
            on_error("enrollmentrequest"),
            ctx,
        )
        .for_each(|_| futures::future::ready(()))
        .await;
    info!("EnrollmentRequest controller stopped");
}

async fn reconcile(
    r: Arc<EnrollmentRequest>,
    ctx: Arc<Context>,
    shared: &Shared,
    locks: &Locks,
) -> Result<Action, Error> {
    instrumented(&ctx, "enrollmentrequest", &*r, shared.ready(), || async {
        let status = r.status.clone().unwrap_or_default();
        let now = Timestamp::now();
        match (status.phase, status.sealed_token.is_some()) {
            (RequestPhase::Approved, false) => {
                let vm = status.virtual_machine.clone().unwrap_or_default();
                deliver(&r, &vm, &ctx, shared).await
            }
            (RequestPhase::Approved | RequestPhase::Refused, _) => {
                collect(&r, status.decided_at.as_ref(), &ctx, now).await
            }
            (RequestPhase::Pending, _) => {
                // The decision runs to its end even when this reconcile is cut off at its time
                // bound (waiting for the namespace's lock under a burst counts): a counter patched
                // without its VM would waste a slot, and the retry would count the machine again.
                let task = tokio::spawn({
                    let (r, c, shared, locks) =
                        (r.clone(), ctx.clone(), shared.clone(), locks.clone());
                    async move { decide(&r, &c, &shared, &locks, now).await }
                });
                let approved = task.await.map_err(|e| Error::Task(e.to_string()))??;
                match approved {
                    Some(vm) => deliver(&r, &vm, &ctx, shared).await,
                    None => Ok(Action::requeue(enroll::DECIDED_RETENTION)),
                }
            }
        }
    })
    .await
}

/// Delete a decided request once it has been kept an hour.
async fn collect(
    r: &EnrollmentRequest,
    decided: Option<&Time>,
    ctx: &Context,
    now: Timestamp,
) -> Result<Action, Error> {
    if enroll::expired_request(decided, now) || decided.is_none() {
        let api: Api<EnrollmentRequest> =
            Api::namespaced(ctx.client.clone(), &r.namespace().unwrap_or_default());
        match api.delete(&r.name_any(), &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
        return Ok(Action::await_change());
    }
    let at = decided.map(|t| t.0).unwrap_or(now);
    let left = crate::logic::duration::until(now, enroll::expired_at(at));
    Ok(Action::requeue(left + Duration::from_secs(1)))
}

/// Decide the request under its namespace's lock; the approved VM's name, if approved.
async fn decide(
    r: &EnrollmentRequest,
    ctx: &Context,
    shared: &Shared,
    locks: &Locks,
    now: Timestamp,
) -> Result<Option<String>, Error> {
    let ns = r.namespace().unwrap_or_default();
    let lock = locks.of(&ns);
    let mut created = lock.lock().await;
    let enrollments: Api<Enrollment> = Api::namespaced(ctx.client.clone(), &ns);
    // The Enrollment as stored now (not a cache): its counter decides the limit.
    let mut attempt = 0;
    let (decision, enrollment) = loop {
        attempt += 1;
        let enrollment = enrollments.get_opt(&r.spec.enrollment).await?;
        let cached: Vec<KnownVm> = shared
            .vms
            .state()
            .iter()
            .filter(|v| v.namespace().as_deref() == Some(ns.as_str()))
            .map(|v| KnownVm::of(v))
            .collect();
        created.retain(|c| !cached.iter().any(|k| k.name == c.name));
        let known: Vec<KnownVm> = cached.into_iter().chain(created.iter().cloned()).collect();
        let status = enrollment
            .as_ref()
            .and_then(|e| e.status.clone())
            .unwrap_or_default();
        let decision = enroll::decide_all(
            enrollment.as_ref(),
            status.machines_enrolled,
            &[r],
            &known,
            &ctx.catalog,
            now,
        )
        .pop()
        .map(|(_, d)| d);
        let Some(decision) = decision else {
            return Ok(None);
        };
        let Some(e) = &enrollment else {
            break (decision, None);
        };
        let (enrolled, refused, last) = match &decision {
            Decision::Approve {
                reenrolled: true, ..
            } => break (decision, enrollment),
            Decision::Approve { vm, .. } => (
                status.machines_enrolled + 1,
                status.machines_refused,
                Some(vm.clone()),
            ),
            Decision::Refuse { .. } => (
                status.machines_enrolled,
                status.machines_refused + 1,
                status.last_enrolled.clone(),
            ),
        };
        let patch = serde_json::json!({
            "metadata": { "resourceVersion": e.resource_version() },
            "status": { "machinesEnrolled": enrolled, "machinesRefused": refused, "lastEnrolled": last },
        });
        match enrollments
            .patch_status(
                &e.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => break (decision, enrollment),
            Err(kube::Error::Api(s)) if s.code == 409 && attempt < 10 => continue,
            Err(err) => return Err(err.into()),
        }
    };
    let requests: Api<EnrollmentRequest> = Api::namespaced(ctx.client.clone(), &ns);
    let who = format!(
        "machine {} (request {})",
        crate::logic::text::clip(&r.spec.hostname, 80),
        r.name_any()
    );
    match decision {
        Decision::Refuse { why, message } => {
            let answer = EnrollmentRequestStatus {
                phase: RequestPhase::Refused,
                reason: Some(why.reason().into()),
                message: Some(message.clone()),
                decided_at: Some(Time(now)),
                ..Default::default()
            };
            crate::status::apply(&requests, &r.name_any(), CONTROLLER_MANAGER, &answer).await?;
            info!(request = %r.name_any(), reason = why.reason(), %message, "enrollment refused");
            let ev = EventSpec::warning("EnrollmentRefused", "Enroll", format!("{who}: {message}"));
            let regarding = match &enrollment {
                Some(e) => e.object_ref(&()),
                None => r.object_ref(&()),
            };
            super::super::publish_events(ctx, &regarding, &[ev]).await;
            Ok(None)
        }
        Decision::Approve {
            vm,
            key,
            reenrolled,
            create,
        } => {
            if let Some(new) = create {
                let vms: Api<VirtualMachine> = Api::namespaced(ctx.client.clone(), &ns);
                let pp = PostParams {
                    field_manager: Some(CONTROLLER_MANAGER.into()),
                    ..Default::default()
                };
                vms.create(&pp, &new).await?;
                created.push(KnownVm {
                    name: vm.clone(),
                    key: Some(key),
                });
            }
            let enrollment_name = &r.spec.enrollment;
            let message = if reenrolled {
                format!(
                    "enrolled again through {enrollment_name}: the machine's key belongs to VM {vm}"
                )
            } else {
                format!("enrolled through {enrollment_name} as VM {vm}")
            };
            let answer = EnrollmentRequestStatus {
                phase: RequestPhase::Approved,
                virtual_machine: Some(vm.clone()),
                reenrolled,
                message: Some(message.clone()),
                decided_at: Some(Time(now)),
                ..Default::default()
            };
            crate::status::apply(&requests, &r.name_any(), CONTROLLER_MANAGER, &answer).await?;
            info!(request = %r.name_any(), vm = %vm, reenrolled, "enrollment approved");
            let reference = k8s_openapi::api::core::v1::ObjectReference {
                api_version: Some(VirtualMachine::api_version(&()).into()),
                kind: Some(VirtualMachine::kind(&()).into()),
                namespace: Some(ns.clone()),
                name: Some(vm.clone()),
                ..Default::default()
            };
            let ev = EventSpec::normal(
                if reenrolled { "Reenrolled" } else { "Enrolled" },
                "Enroll",
                format!("{who}: {message}"),
            );
            super::super::publish_events(ctx, &reference, &[ev]).await;
            Ok(Some(vm))
        }
    }
}

/// Issue the VM's guest token and hand it over sealed to the machine's key.
async fn deliver(
    r: &EnrollmentRequest,
    vm: &str,
    ctx: &Context,
    shared: &Shared,
) -> Result<Action, Error> {
    let ns = r.namespace().unwrap_or_default();
    let vms: Api<VirtualMachine> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(machine) = vms.get_opt(vm).await? else {
        warn!(request = %r.name_any(), vm, "the approved VM is gone; waiting");
        return Ok(Action::requeue(Duration::from_secs(5)));
    };
    super::super::vm::guest_identity::ensure_identity(&machine, ctx, shared).await?;
    let token =
        match crate::guest::sim::request_token(&ctx.client, &ns, vm, GUEST_TOKEN_LIFETIME).await {
            Ok(t) => t,
            // The ServiceAccount was created a moment ago; the token API may not see it yet.
            Err(kube::Error::Api(s)) if s.code == 404 => {
                return Ok(Action::requeue(Duration::from_millis(500)));
            }
            Err(e) => return Err(e.into()),
        };
    let expires = crate::logic::duration::add(Timestamp::now(), GUEST_TOKEN_LIFETIME);
    let sealed = match crate::sealed::seal(&r.spec.public_key, token.as_bytes()) {
        Ok(s) => s,
        Err(e) => {
            warn!(request = %r.name_any(), error = %e, "cannot seal to the request's key");
            return Ok(Action::await_change());
        }
    };
    let mut answer = r.status.clone().unwrap_or_default();
    answer.sealed_token = Some(sealed);
    answer.token_expires_at = Some(Time(expires));
    let requests: Api<EnrollmentRequest> = Api::namespaced(ctx.client.clone(), &ns);
    crate::status::apply(&requests, &r.name_any(), CONTROLLER_MANAGER, &answer).await?;
    Ok(Action::requeue(enroll::DECIDED_RETENTION))
}
