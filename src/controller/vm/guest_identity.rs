//! A VM's guest identity (ServiceAccount, Role, RoleBinding, heartbeat Lease; no Role and
//! RoleBinding with `--guest-authorization=webhook`): created when missing, owned by the VM (the
//! garbage collector deletes them with it, which revokes the guest's tokens). Nothing on the guest
//! is touched.

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use tracing::info;

use super::super::context::{Context, Error};
use super::super::identities::Part;
use super::super::shared::Shared;
use crate::api::VirtualMachine;
use crate::identity::{self, CONTROLLER_MANAGER};

/// Create what the VM's guest needs to act as itself, if missing; whether its ServiceAccount was
/// created now (its guest cannot have acted yet). The heartbeat Lease is the guest's to create
/// (`guest::lease`); `ensure_lease` is for a guest that has not.
pub(crate) async fn ensure_identity(
    vm: &VirtualMachine,
    ctx: &Context,
    shared: &Shared,
) -> Result<bool, Error> {
    let ns = vm.namespace().unwrap_or_default();
    let name = vm.name_any();
    let pp = PostParams {
        field_manager: Some(CONTROLLER_MANAGER.into()),
        ..Default::default()
    };
    let have = shared.identities.get(&ns, &name);
    let created = |part| shared.identities.created(&ns, &name, part);
    async fn create<K>(ctx: &Context, ns: &str, obj: K, pp: &PostParams) -> Result<(), Error>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::Serialize
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        match Api::<K>::namespaced(ctx.client.clone(), ns)
            .create(pp, &obj)
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
    let mut account_created = false;
    if !have.has(Part::ServiceAccount) {
        create::<ServiceAccount>(ctx, &ns, identity::service_account(vm), &pp).await?;
        created(Part::ServiceAccount);
        account_created = true;
    }
    if ctx.settings.guest_authorizer.webhook() {
        // The controller authorizes the guest (`authorizer`): a Role and RoleBinding left from
        // `rbac` would only make every request in the namespace cost more (RBAC scans them).
        let guest = identity::guest_name(&name);
        if have.has(Part::RoleBinding) {
            gone(
                Api::<RoleBinding>::namespaced(ctx.client.clone(), &ns)
                    .delete(&guest, &DeleteParams::default())
                    .await,
            )?;
        }
        if have.has(Part::Role) {
            gone(
                Api::<Role>::namespaced(ctx.client.clone(), &ns)
                    .delete(&guest, &DeleteParams::default())
                    .await,
            )?;
        }
    } else {
        if !have.has(Part::Role) {
            create::<Role>(ctx, &ns, identity::role(vm), &pp).await?;
            created(Part::Role);
        } else if have.stale_role() {
            // A Role of older rules (before guests renewed their own tokens) is brought up to date.
            let guest = identity::guest_name(&name);
            Api::<Role>::namespaced(ctx.client.clone(), &ns)
                .patch(
                    &guest,
                    &PatchParams::apply(CONTROLLER_MANAGER).force(),
                    &Patch::Apply(&identity::role(vm)),
                )
                .await?;
            created(Part::Role);
            info!(role = %guest, "guest Role updated to the current rules");
        }
        if !have.has(Part::RoleBinding) {
            create::<RoleBinding>(ctx, &ns, identity::role_binding(vm), &pp).await?;
            created(Part::RoleBinding);
        }
    }
    Ok(account_created)
}

/// The guest has not created its heartbeat Lease within `FIRST_HEARTBEAT_WAIT` (an agent older
/// than this version only renews one; or it is late): create it for it.
pub(crate) async fn ensure_lease(
    vm: &VirtualMachine,
    ctx: &Context,
    shared: &Shared,
) -> Result<(), Error> {
    let ns = vm.namespace().unwrap_or_default();
    let pp = PostParams {
        field_manager: Some(CONTROLLER_MANAGER.into()),
        ..Default::default()
    };
    match Api::<Lease>::namespaced(ctx.client.clone(), &ns)
        .create(&pp, &identity::lease(vm))
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    shared.identities.created(&ns, &vm.name_any(), Part::Lease);
    Ok(())
}

/// A delete that found nothing to delete did its job.
fn gone<T>(r: Result<T, kube::Error>) -> Result<(), Error> {
    match r {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// A VM of an older version (with the legacy finalizer) is being deleted: revoke its guest's
/// identity at once (deleting the ServiceAccount invalidates its tokens) and remove the
/// heartbeat Lease, as that version promised. Nothing on the guest is touched.
pub(super) async fn cleanup(vm: &VirtualMachine, ctx: &Context) -> Result<(), Error> {
    let ns = vm.namespace().unwrap_or_default();
    let name = vm.name_any();
    let guest = identity::guest_name(&name);
    let dp = DeleteParams::default();
    gone(
        Api::<RoleBinding>::namespaced(ctx.client.clone(), &ns)
            .delete(&guest, &dp)
            .await,
    )?;
    gone(
        Api::<Role>::namespaced(ctx.client.clone(), &ns)
            .delete(&guest, &dp)
            .await,
    )?;
    gone(
        Api::<ServiceAccount>::namespaced(ctx.client.clone(), &ns)
            .delete(&guest, &dp)
            .await,
    )?;
    gone(
        Api::<Lease>::namespaced(ctx.client.clone(), &ns)
            .delete(&identity::lease_name(&name), &dp)
            .await,
    )?;
    info!("guest identity and heartbeat Lease removed");
    Ok(())
}
