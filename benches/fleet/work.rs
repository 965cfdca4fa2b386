//! What the bench does to the cluster: VMs created at a fixed concurrency, waits on their phases,
//! the write floor (the same per-VM writes from a plain client), and guest requests for the
//! identity model's cost.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use automend::api::{VirtualMachine, VmPhase};
use automend::identity::{self, CONTROLLER_MANAGER, GUEST_MANAGER};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

/// Regions the bench fleet spreads over (two geo-pairs), three zones each.
pub const REGIONS: [&str; 4] = ["eastus", "westus", "northeurope", "westeurope"];

pub fn vm_object(name: &str, i: usize) -> anyhow::Result<VirtualMachine> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "automend.io/v1alpha1", "kind": "VirtualMachine",
        "metadata": { "name": name, "labels": { "automend.io/ring": "all" } },
        "spec": {
            "management": { "enabled": true, "profile": "bench" },
            "os": { "type": "Linux", "image":
                { "publisher": "Canonical", "offer": "ubuntu-24_04-lts", "sku": "server" } },
            "placement": { "region": REGIONS[i % 4], "zone": format!("{}", (i / 4) % 3 + 1) },
            "patchSettings": { "patchMode": "AutomaticByPlatform" },
        }
    }))?)
}

pub async fn namespace(client: &Client, name: &str) -> anyhow::Result<()> {
    let ns: Namespace = serde_json::from_value(json!({ "metadata": { "name": name } }))?;
    match Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Run `f(i)` for every i in `range`, `concurrency` at a time; the first error stops the bench.
pub async fn each<F, Fut>(
    range: std::ops::Range<usize>,
    concurrency: usize,
    f: F,
) -> anyhow::Result<()>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    stream::iter(range.map(f))
        .buffer_unordered(concurrency)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// Create VMs `range` in `ns`, named `<prefix>-<i>`.
pub async fn create_vms(
    client: &Client,
    ns: &str,
    prefix: &str,
    range: std::ops::Range<usize>,
    concurrency: usize,
) -> anyhow::Result<()> {
    let api: Api<VirtualMachine> = Api::namespaced(client.clone(), ns);
    each(range, concurrency, |i| {
        let api = api.clone();
        async move {
            let vm = vm_object(&format!("{prefix}-{i:05}"), i)?;
            api.create(&PostParams::default(), &vm)
                .await
                .with_context(|| format!("creating VM {i}"))?;
            Ok(())
        }
    })
    .await
}

/// Wait until `want` VMs of `ns` are in a phase `ok` accepts (one watch, not a list per poll:
/// the bench should not load the API server it measures); the time it took from `since`.
pub async fn wait_phase(
    client: &Client,
    ns: &str,
    want: usize,
    limit: Duration,
    since: Instant,
    ok: impl Fn(Option<&VmPhase>) -> bool + Copy,
) -> anyhow::Result<Duration> {
    use kube::runtime::{WatchStreamExt, watcher};
    let api: Api<VirtualMachine> = Api::namespaced(client.clone(), ns);
    let mut seen: std::collections::HashMap<String, bool> = Default::default();
    let mut events = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
    let deadline = tokio::time::Instant::from_std(since + limit);
    loop {
        let next = tokio::time::timeout_at(deadline, events.next()).await;
        let Ok(Some(event)) = next else {
            let n = seen.values().filter(|v| **v).count();
            anyhow::bail!("{n} of {want} VMs of namespace {ns} reached the phase within {limit:?}");
        };
        let mut note = |vm: &VirtualMachine| {
            let phase = vm.status.as_ref().and_then(|s| s.phase.as_ref());
            seen.insert(vm.metadata.name.clone().unwrap_or_default(), ok(phase));
        };
        match event {
            Ok(watcher::Event::Apply(vm) | watcher::Event::InitApply(vm)) => note(&vm),
            Ok(watcher::Event::Delete(vm)) => {
                seen.remove(vm.metadata.name.as_deref().unwrap_or_default());
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "watching VMs"),
        }
        if seen.values().filter(|v| **v).count() >= want {
            return Ok(since.elapsed());
        }
    }
}

/// The status parts of one onboarded VM: what the controller wrote and what its guest wrote.
pub struct Payload {
    pub controller: serde_json::Value,
    pub guest: serde_json::Value,
}

impl Payload {
    pub fn from(vm: &VirtualMachine) -> anyhow::Result<Payload> {
        let mut status = serde_json::to_value(vm.status.as_ref().context("no status")?)?;
        let guest = status
            .as_object_mut()
            .and_then(|s| s.remove("guest"))
            .context("no status.guest")?;
        Ok(Payload {
            controller: status,
            guest: json!({ "guest": guest }),
        })
    }
}

/// The write floor: for each VM, the requests onboarding needs, from a plain client with no
/// controller logic and no waiting: the VM, its ServiceAccount, Role and RoleBinding (not with the
/// guest authorizer: `rbac` false); the controller's first status (the configuration to apply);
/// the guest's TokenRequest (and client), its Lease (created with its first renewal) and status
/// report; the controller's second status (Configured). Onboardings are reported per profile in
/// batches (one Event for many VMs), left out here. Returns the requests per VM.
pub async fn floor(
    admin: &Client,
    config: &kube::Config,
    ns: &str,
    n: usize,
    concurrency: usize,
    payload: &Payload,
    rbac: bool,
) -> anyhow::Result<usize> {
    each(0..n, concurrency, |i| async move {
        let name = format!("floor-{i:05}");
        let vms: Api<VirtualMachine> = Api::namespaced(admin.clone(), ns);
        let vm = vms
            .create(&PostParams::default(), &vm_object(&name, i)?)
            .await?;
        let pp = PostParams::default();
        Api::<ServiceAccount>::namespaced(admin.clone(), ns)
            .create(&pp, &identity::service_account(&vm))
            .await?;
        // With the guest authorizer (`--guest-authorization=webhook`) no Role and RoleBinding.
        if rbac {
            Api::<Role>::namespaced(admin.clone(), ns)
                .create(&pp, &identity::role(&vm))
                .await?;
            Api::<RoleBinding>::namespaced(admin.clone(), ns)
                .create(&pp, &identity::role_binding(&vm))
                .await?;
        }
        let mut first = payload.controller.clone();
        first["phase"] = json!("InProgress");
        automend::status::apply(&vms, &name, CONTROLLER_MANAGER, &first).await?;
        let guest =
            automend::guest::sim::guest_client(admin, config, ns, &name, Duration::from_secs(3600))
                .await?;
        let own: Api<VirtualMachine> = Api::namespaced(guest.clone(), ns);
        // The API server's RBAC cache may not show the new RoleBinding yet: a guest is answered
        // 403 for a moment and asks again (as the real ones do, with their watch's backoff).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match automend::status::apply(&own, &name, GUEST_MANAGER, &payload.guest).await {
                Err(kube::Error::Api(s))
                    if s.code == 403 && std::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                other => {
                    other?;
                    break;
                }
            };
        }
        // The guest creates its Lease with its first renewal (as `guest::lease` does).
        let lease = identity::guest_lease(
            ns,
            &name,
            identity::owner_of(&vm),
            k8s_openapi::api::coordination::v1::LeaseSpec {
                holder_identity: Some(identity::guest_name(&name)),
                renew_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
                    jiff::Timestamp::now(),
                )),
                ..Default::default()
            },
        );
        Api::<Lease>::namespaced(guest, ns)
            .patch(
                &identity::lease_name(&name),
                &PatchParams::apply(GUEST_MANAGER).force(),
                &Patch::Apply(&lease),
            )
            .await?;
        automend::status::apply(&vms, &name, CONTROLLER_MANAGER, &payload.controller).await?;
        Ok(())
    })
    .await?;
    Ok(if rbac { 9 } else { 7 })
}

/// `count` GETs of their own VM by `guests` guests of `ns` (each with its own token and
/// connection), `concurrency` at a time.
pub async fn guest_gets(
    admin: &Client,
    config: &kube::Config,
    ns: &str,
    names: &[String],
    count: usize,
    concurrency: usize,
) -> anyhow::Result<()> {
    let mut clients = Vec::new();
    for name in names {
        let c =
            automend::guest::sim::guest_client(admin, config, ns, name, Duration::from_secs(3600))
                .await
                .with_context(|| format!("a token for the guest of {name}"))?;
        // One request first, so the connection is up before the measurement.
        Api::<VirtualMachine>::namespaced(c.clone(), ns)
            .get(name)
            .await?;
        clients.push((Api::<VirtualMachine>::namespaced(c, ns), name.clone()));
    }
    let clients = &clients;
    each(0..count, concurrency, |i| async move {
        let (api, name) = &clients[i % clients.len()];
        api.get(name).await?;
        Ok(())
    })
    .await
}

/// `count` GETs of VMs by the bench's own (cluster-admin) client: the same request without the
/// namespace's RBAC bindings to search.
pub async fn admin_gets(
    admin: &Client,
    ns: &str,
    names: &[String],
    count: usize,
    concurrency: usize,
) -> anyhow::Result<()> {
    let api: Api<VirtualMachine> = Api::namespaced(admin.clone(), ns);
    let api = &api;
    each(0..count, concurrency, |i| async move {
        api.get(&names[i % names.len()]).await?;
        Ok(())
    })
    .await
}

/// The first VM of `ns` with a guest status (the floor's payload).
pub async fn sample(client: &Client, ns: &str) -> anyhow::Result<VirtualMachine> {
    let api: Api<VirtualMachine> = Api::namespaced(client.clone(), ns);
    api.list(&ListParams::default().limit(50))
        .await?
        .items
        .into_iter()
        .find(|v| v.status.as_ref().is_some_and(|s| s.guest.is_some()))
        .with_context(|| format!("no VM of {ns} has a guest status"))
}

/// The guest authorizer's settings when the control plane asks the controller about guests
/// (`hack/bench.sh --guest-webhook` exports them, and every controller started here inherits them).
pub fn webhook_mode() -> Option<automend::controller::authorizer::Args> {
    use clap::Parser as _;
    #[derive(clap::Parser)]
    struct Env {
        #[command(flatten)]
        authorizer: automend::controller::authorizer::Args,
    }
    let env = Env::try_parse_from(["env"]).ok()?;
    env.authorizer.webhook().then_some(env.authorizer)
}
