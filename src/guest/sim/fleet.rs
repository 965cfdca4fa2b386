//! The simulated fleet: one guest per VirtualMachine of a namespace, each with its own identity
//! (a TokenRequest token of its guest ServiceAccount, renewed before it ends).

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{Api, PostParams};
use kube::core::DeserializeGuard;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tracing::{debug, info, warn};

use super::super::{Guest, Timing};
use super::{GUEST_WATCH_IDLE, SimBackend, Stats};
use crate::api::VirtualMachine;
use crate::identity;

/// Settings of a simulated fleet.
#[derive(Clone, Debug, clap::Args)]
pub struct SimSettings {
    /// Namespace whose VirtualMachines are simulated.
    #[arg(long, short = 'n', default_value = "default")]
    pub namespace: String,
    /// Only VMs matching this label selector.
    #[arg(long, short = 'l')]
    pub selector: Option<String>,
    /// How often each guest renews its heartbeat Lease.
    #[arg(long, default_value = "10s", value_parser = crate::logic::duration::parse)]
    pub heartbeat_interval: Duration,
    /// How often each guest re-observes its machine.
    #[arg(long, default_value = "5s", value_parser = crate::logic::duration::parse)]
    pub observe_interval: Duration,
    /// Lifetime of each guest's token (renewed before it ends).
    #[arg(long, default_value = "1h", value_parser = crate::logic::duration::parse)]
    pub token_ttl: Duration,
    /// How long a simulated reboot keeps a machine down (no heartbeat, no reports).
    #[arg(long, default_value = "5s", value_parser = crate::logic::duration::parse)]
    pub reboot_time: Duration,
    /// Instead of playing the namespace's VMs, enroll this many simulated machines with the
    /// Enrollment token in `--enroll-token-file` and play those (each renews its own token).
    #[arg(long, default_value_t = 0)]
    pub enroll: usize,
    /// The Enrollment token the simulated machines enroll with.
    #[arg(long)]
    pub enroll_token_file: Option<std::path::PathBuf>,
    /// Simulated machines' hostnames: `<prefix>-<n>`.
    #[arg(long, default_value = "sim")]
    pub enroll_prefix: String,
    /// Region the simulated machines report (default: the Enrollment's).
    #[arg(long)]
    pub enroll_region: Option<String>,
    #[command(flatten)]
    pub clock: crate::clock::ClockArgs,
}

/// A client that acts as the VM's guest ServiceAccount, with a fresh TokenRequest token.
pub async fn guest_client(
    admin: &Client,
    base: &kube::Config,
    namespace: &str,
    vm: &str,
    ttl: Duration,
) -> Result<Client, kube::Error> {
    let token = request_token(admin, namespace, vm, ttl).await?;
    own_client(base, namespace, &token)
}

/// A client that acts with a token the guest holds.
pub(super) fn own_client(
    base: &kube::Config,
    namespace: &str,
    token: &str,
) -> Result<Client, kube::Error> {
    let mut config = base.clone();
    config.auth_info = kube::config::AuthInfo {
        token: Some(secrecy::SecretString::from(token.to_string())),
        ..Default::default()
    };
    config.default_namespace = namespace.into();
    crate::kubeclient::client_for(config).map_err(|e| kube::Error::Service(e.into()))
}

/// A TokenRequest for the VM's guest ServiceAccount.
pub async fn request_token(
    admin: &Client,
    namespace: &str,
    vm: &str,
    ttl: Duration,
) -> Result<String, kube::Error> {
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), namespace);
    let tr = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![],
            expiration_seconds: Some(ttl.as_secs().max(600) as i64),
            bound_object_ref: None,
        },
        ..Default::default()
    };
    let resp = sas
        .create_token_request(&identity::guest_name(vm), &PostParams::default(), &tr)
        .await?;
    Ok(resp.status.map(|s| s.token).unwrap_or_default())
}

/// Play every VM of the namespace until `stop` resolves.
pub async fn run(
    admin: Client,
    base: kube::Config,
    settings: SimSettings,
    stats: Stats,
    stop: impl Future<Output = ()>,
) {
    if settings.enroll > 0 {
        return super::run_enrolled(base, settings, stats, stop).await;
    }
    // Object by object: an unreadable VM is skipped, never a broken watch of the namespace.
    let api: Api<DeserializeGuard<VirtualMachine>> =
        Api::namespaced(admin.clone(), &settings.namespace);
    let config = match &settings.selector {
        Some(s) => crate::watch::config().labels(s),
        None => crate::watch::config(),
    };
    let identities = identities(&admin, &settings.namespace);
    let probe = crate::watch::Probe::detached("sim/virtualmachines", GUEST_WATCH_IDLE);
    let mut events = std::pin::pin!(crate::watch::supervised(api, config, probe));
    let mut guests: HashMap<String, tokio::sync::oneshot::Sender<()>> = HashMap::new();
    let mut stop = std::pin::pin!(stop);
    info!(namespace = %settings.namespace, "simulating the namespace's VirtualMachines");
    loop {
        let event = tokio::select! {
            _ = &mut stop => break,
            e = events.next() => e,
        };
        let guarded = match event {
            Some(Ok(watcher::Event::Apply(vm) | watcher::Event::InitApply(vm))) => vm,
            Some(Ok(watcher::Event::Delete(vm))) => {
                if let Some(tx) = guests.remove(&vm.name_any()) {
                    let _ = tx.send(());
                }
                continue;
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => {
                warn!(error = %e, "watching VirtualMachines");
                continue;
            }
            None => break,
        };
        let vms: Vec<VirtualMachine> = match guarded.0 {
            Ok(vm) => vec![vm],
            Err(e) => {
                warn!(vm = ?e.metadata.name, error = %e.error, "an unreadable VirtualMachine is not simulated");
                continue;
            }
        };
        for vm in vms {
            let name = vm.name_any();
            if guests.contains_key(&name) {
                continue;
            }
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            guests.insert(name.clone(), tx);
            let linux = vm.spec.os.os_type == crate::api::OsType::Linux;
            tokio::spawn(play(
                Identity::Admin(admin.clone(), identities.clone()),
                base.clone(),
                settings.clone(),
                name,
                linux,
                stats.clone(),
                rx,
            ));
        }
    }
    for (_, tx) in guests.drain() {
        let _ = tx.send(());
    }
    info!("simulator stopped");
}

/// Where a simulated guest's token comes from: the admin's TokenRequests, or the guest itself
/// (an enrolled machine renewing its own token, as the agent does).
#[derive(Clone)]
pub(super) enum Identity {
    /// The admin's TokenRequests, once the guest's identity is complete (see `Identities`).
    Admin(Client, Identities),
    Own(String),
}

/// The guest identities of the namespace, from two metadata watches (ServiceAccounts and
/// RoleBindings the controller labelled). The controller creates a guest's ServiceAccount, then
/// (with `--guest-authorization=rbac`) its Role and RoleBinding: a simulated guest starts (asks
/// for a token, watches its VM, creates its Lease) once they exist, instead of asking and being
/// answered 404 (no ServiceAccount yet) or 403 (no RoleBinding yet) and backing off.
#[derive(Clone)]
pub(super) struct Identities {
    accounts: Store<PartialObjectMeta<ServiceAccount>>,
    bindings: Store<PartialObjectMeta<RoleBinding>>,
}

fn owned_store<K>(
    admin: &Client,
    namespace: &str,
    what: &'static str,
) -> Store<PartialObjectMeta<K>>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let api: Api<PartialObjectMeta<K>> = Api::namespaced(admin.clone(), namespace);
    let config = crate::watch::config().labels(identity::OWNED_SELECTOR);
    let stream = watcher(api, config)
        .backoff(crate::watch::backoff())
        .reflect(writer)
        .for_each(move |e| {
            if let Err(e) = e {
                debug!(error = %e, "watching guest {what}");
            }
            futures::future::ready(())
        });
    tokio::spawn(stream);
    store
}

fn identities(admin: &Client, namespace: &str) -> Identities {
    Identities {
        accounts: owned_store(admin, namespace, "ServiceAccounts"),
        bindings: owned_store(admin, namespace, "RoleBindings"),
    }
}

/// Wait until the VM's guest identity is complete (local looks at the stores, no API request):
/// its RoleBinding exists, or its ServiceAccount has for a second and no RoleBinding came (the
/// controller authorizes guests itself: `--guest-authorization=webhook`).
async fn identity_ready(ids: &Identities, namespace: &str, vm: &str) {
    let name = identity::guest_name(vm);
    let binding = ObjectRef::new(&name).within(namespace);
    let account = ObjectRef::new(&name).within(namespace);
    let mut account_seen: Option<std::time::Instant> = None;
    loop {
        if ids.bindings.get(&binding).is_some() {
            return;
        }
        if ids.accounts.get(&account).is_some() {
            let since = *account_seen.get_or_insert_with(std::time::Instant::now);
            if since.elapsed() >= Duration::from_secs(1) {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub(super) async fn play(
    identity: Identity,
    base: kube::Config,
    settings: SimSettings,
    name: String,
    linux: bool,
    stats: Stats,
    stop: tokio::sync::oneshot::Receiver<()>,
) {
    let stop = futures::FutureExt::shared(async move {
        let _ = stop.await;
    });
    let clock = match crate::clock::Clock::from_args(&settings.clock) {
        Ok(c) => c,
        Err(e) => {
            warn!(vm = %name, error = %e, "bad clock settings; using real time");
            crate::clock::Clock::real()
        }
    };
    let timing = Timing {
        heartbeat: settings.heartbeat_interval,
        observe: settings.observe_interval,
        clock,
    };
    let mut identity = identity;
    let count_request = {
        let (stats, name) = (stats.clone(), name.clone());
        move || {
            if let Ok(mut s) = stats.lock() {
                s.entry(name.clone()).or_default().token_requests += 1;
            }
        }
    };
    let mut backend =
        Some(SimBackend::new(&name, linux, stats).with_reboot_time(settings.reboot_time));
    loop {
        // The controller creates the guest identity; wait for it.
        let mut backoff = Duration::from_millis(500);
        let client = loop {
            let made = match &mut identity {
                Identity::Admin(admin, store) => {
                    tokio::select! {
                        _ = identity_ready(store, &settings.namespace, &name) => {}
                        _ = stop.clone() => return,
                    }
                    count_request();
                    guest_client(admin, &base, &settings.namespace, &name, settings.token_ttl).await
                }
                Identity::Own(token) => own_client(&base, &settings.namespace, token),
            };
            match made {
                Ok(c) => break c,
                Err(e) => {
                    debug!(vm = %name, error = %e, retry_in = ?backoff, "getting the guest's token");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.clone() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(15));
                }
            }
        };
        let Some(b) = backend.take() else { return };
        let own = client.clone();
        let guest = Guest::new(client, &settings.namespace, &name, b, timing.clone());
        // Run until the token is close to expiring, then carry the machine over to a fresh token.
        let renew_at = settings
            .token_ttl
            .max(Duration::from_secs(600))
            .mul_f64(0.8);
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        let runner = guest.run(async move {
            let _ = done_rx.await;
        });
        let mut runner = std::pin::pin!(runner);
        tokio::select! {
            _ = &mut runner => return,
            _ = stop.clone() => { let _ = done_tx.send(()); let _ = runner.await; return; }
            _ = tokio::time::sleep(renew_at) => { let _ = done_tx.send(()); backend = Some(runner.await); }
        }
        // An enrolled guest renews its own token with the token it has.
        if let Identity::Own(token) = &mut identity {
            count_request();
            match request_token(&own, &settings.namespace, &name, settings.token_ttl).await {
                Ok(t) if !t.is_empty() => *token = t,
                Ok(_) => warn!(vm = %name, "the TokenRequest answered without a token"),
                Err(e) => warn!(vm = %name, error = %e, "renewing the guest's own token"),
            }
        }
    }
}
