//! One VirtualMachine the controller cannot read must not blind it to every other one: the watch
//! deserializes object by object (`DeserializeGuard`), screens the unreadable ones out of the
//! cache (a stale readable copy is removed) and reports each, once per error: a Warning Event, a
//! `Ready=False InvalidObject` condition, phase Failed and a message naming the error.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Resource;
use kube::api::{Api, Patch, PatchParams};
use kube::core::{DeserializeGuard, error_boundary::InvalidObject};
use kube::runtime::watcher::Event;
use tokio::sync::mpsc;
use tracing::{error, warn};

use super::super::context::Context;
use crate::api::VirtualMachine;
use crate::identity::CONTROLLER_MANAGER;
use crate::logic::events::EventSpec;
use crate::logic::text;

/// A VirtualMachine standing in for an unreadable one in a Delete event (only its identity is read).
fn stand_in(invalid: &InvalidObject) -> Option<VirtualMachine> {
    let spec = serde_json::from_value(serde_json::json!({
        "os": { "type": "Linux", "image": { "publisher": "-", "offer": "-", "sku": "-" } },
        "placement": { "region": "-" },
    }))
    .ok()?;
    let mut vm = VirtualMachine::new(invalid.metadata.name.as_deref()?, spec);
    vm.metadata = invalid.metadata.clone();
    Some(vm)
}

/// The watch's events with unreadable objects screened out: an unreadable object is sent to
/// `report` and, outside a relist, removed from the cache.
pub(super) fn screen(
    event: Event<DeserializeGuard<VirtualMachine>>,
    report: &mpsc::UnboundedSender<InvalidObject>,
) -> Option<Event<VirtualMachine>> {
    let bad = |e: InvalidObject| {
        let _ = report.send(e);
    };
    match event {
        Event::Init => Some(Event::Init),
        Event::InitDone => Some(Event::InitDone),
        Event::InitApply(DeserializeGuard(Ok(vm))) => Some(Event::InitApply(vm)),
        Event::Apply(DeserializeGuard(Ok(vm))) => Some(Event::Apply(vm)),
        Event::Delete(DeserializeGuard(Ok(vm))) => Some(Event::Delete(vm)),
        // Left out of the relist: the store forgets it.
        Event::InitApply(DeserializeGuard(Err(e))) => {
            bad(e);
            None
        }
        Event::Apply(DeserializeGuard(Err(e))) => {
            let gone = stand_in(&e).map(Event::Delete);
            bad(e);
            gone
        }
        Event::Delete(DeserializeGuard(Err(e))) => stand_in(&e).map(Event::Delete),
    }
}

/// The report of one unreadable VirtualMachine.
pub(super) fn report_text(e: &InvalidObject) -> String {
    text::safe(
        &format!(
            "the controller cannot read this VirtualMachine ({}); it is skipped until the field is fixed (a guest writing it is refused at admission since the status bounds; an object stored before may still hold it)",
            e.error
        ),
        text::MESSAGE,
    )
}

/// Report unreadable VirtualMachines as they come, once per (object, error).
pub(super) async fn reporter(ctx: Arc<Context>, mut rx: mpsc::UnboundedReceiver<InvalidObject>) {
    let mut reported: HashMap<String, String> = HashMap::new();
    while let Some(e) = rx.recv().await {
        let (Some(name), Some(ns)) = (e.metadata.name.clone(), e.metadata.namespace.clone()) else {
            continue;
        };
        let key = e
            .metadata
            .uid
            .clone()
            .unwrap_or_else(|| format!("{ns}/{name}"));
        if reported.get(&key) == Some(&e.error) {
            continue;
        }
        let message = report_text(&e);
        error!(vm = %name, namespace = %ns, error = %e.error, "unreadable VirtualMachine skipped");
        let api: Api<VirtualMachine> = Api::namespaced(ctx.client.clone(), &ns);
        // A merge patch of the fields the report needs (the rest of the status cannot be read).
        let now = jiff::Timestamp::now();
        let patch = serde_json::json!({ "status": {
            "phase": "Failed",
            "message": message,
            "conditions": [{
                "type": "Ready", "status": "False", "reason": "InvalidObject",
                "message": message, "lastTransitionTime": now.to_string(),
            }],
        }});
        let pp = PatchParams {
            field_manager: Some(CONTROLLER_MANAGER.into()),
            ..Default::default()
        };
        if let Err(err) = api.patch_status(&name, &pp, &Patch::Merge(patch)).await {
            warn!(vm = %name, namespace = %ns, error = %err, "reporting an unreadable VirtualMachine");
        }
        let reference = ObjectReference {
            api_version: Some(VirtualMachine::api_version(&()).into()),
            kind: Some(VirtualMachine::kind(&()).into()),
            name: Some(name.clone()),
            namespace: Some(ns.clone()),
            uid: e.metadata.uid.clone(),
            ..Default::default()
        };
        super::super::publish_events(
            &ctx,
            &reference,
            &[EventSpec::warning("InvalidObject", "Read", message)],
        )
        .await;
        reported.insert(key, e.error.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::ResourceExt;

    fn guard(json: serde_json::Value) -> DeserializeGuard<VirtualMachine> {
        serde_json::from_value(json).expect("guard")
    }

    #[test]
    fn an_unreadable_vm_is_screened_out_and_reported() {
        let good = serde_json::json!({
            "apiVersion": "automend.io/v1alpha1", "kind": "VirtualMachine",
            "metadata": { "name": "ok", "namespace": "ns", "uid": "u1" },
            "spec": { "os": { "type": "Linux", "image": { "publisher": "C", "offer": "o", "sku": "s" } },
                      "placement": { "region": "r" } },
        });
        let mut poisoned = good.clone();
        poisoned["metadata"]["name"] = "bad".into();
        poisoned["status"] = serde_json::json!({ "guest": { "installation": {
            "rollout": "r", "wave": 1, "status": "Succeeded", "finishTime": "9999-12-31T23:59:59Z" } } });
        let (tx, mut rx) = mpsc::unbounded_channel();
        assert!(matches!(
            screen(Event::Apply(guard(good.clone())), &tx),
            Some(Event::Apply(vm)) if vm.name_any() == "ok"
        ));
        match screen(Event::Apply(guard(poisoned.clone())), &tx) {
            Some(Event::Delete(vm)) => assert_eq!(vm.name_any(), "bad"),
            other => panic!("want a Delete of the stale copy, got {other:?}"),
        }
        assert!(screen(Event::InitApply(guard(poisoned)), &tx).is_none());
        let e = rx.try_recv().expect("reported");
        assert_eq!(e.metadata.name.as_deref(), Some("bad"));
        let text = report_text(&e);
        assert!(text.contains("cannot read this VirtualMachine"), "{text}");
        assert!(
            rx.try_recv().is_ok(),
            "the relist's copy is reported too (deduplicated later)"
        );
    }
}
