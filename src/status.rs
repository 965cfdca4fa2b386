//! Server-side apply of a status: the one way every writer (the controllers and the guests)
//! sends its part of a status, under its own field manager.

use kube::Resource;
use kube::api::{Api, Patch, PatchParams};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The apply body for `status` of the object `name`.
pub fn body<K>(name: &str, status: &impl Serialize) -> serde_json::Value
where
    K: Resource<DynamicType = ()>,
{
    serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "metadata": { "name": name },
        "status": status,
    })
}

/// Apply `status` to the object `name` as field manager `manager` (forcing: each manager owns
/// its part of the status alone).
pub async fn apply<K>(
    api: &Api<K>,
    name: &str,
    manager: &str,
    status: &impl Serialize,
) -> kube::Result<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    api.patch_status(
        name,
        &PatchParams::apply(manager).force(),
        &Patch::Apply(body::<K>(name, status)),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::VirtualMachine;

    #[test]
    fn the_body_names_the_object_and_carries_only_the_status() {
        let b =
            body::<VirtualMachine>("vm-1", &serde_json::json!({ "guest": { "healthy": true } }));
        assert_eq!(b["apiVersion"], "automend.io/v1alpha1");
        assert_eq!(b["kind"], "VirtualMachine");
        assert_eq!(b["metadata"], serde_json::json!({ "name": "vm-1" }));
        assert_eq!(b["status"]["guest"]["healthy"], true);
        assert!(b.get("spec").is_none());
    }
}
