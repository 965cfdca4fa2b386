//! The end-to-end environment of one test: its namespace, profiles labelled for it, a controller
//! child process scoped to both, and simulated guests in process.

use std::collections::BTreeMap;
use std::time::Duration;

use automend::api::{ConfigurationProfile, UpdateRing, VirtualMachine, VmPhase};
use automend::guest::sim::{self, SimSettings, Stats};
use k8s_openapi::api::events::v1::Event;
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

use super::{ControllerProcess, TestNamespace, cluster, wait_for};

pub const LONG: Duration = Duration::from_secs(90);

/// How long an Event may follow the status write that records what it reports.
const EVENT_WAIT: Duration = Duration::from_secs(30);

pub struct Env {
    pub ns: TestNamespace,
    pub client: Client,
    pub vms: Api<VirtualMachine>,
    pub profiles: Api<ConfigurationProfile>,
    pub stats: Stats,
    pub sim_stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Env {
    pub async fn new(prefix: &str) -> Env {
        let c = cluster();
        c.install_guest_policy();
        let client = c.client().await;
        let ns = TestNamespace::new(&client, prefix).await;
        Env {
            vms: Api::namespaced(client.clone(), &ns.name),
            profiles: Api::all(client.clone()),
            client,
            ns,
            stats: Stats::default(),
            sim_stop: None,
        }
    }

    pub fn controller(&self, extra: &[&str]) -> ControllerProcess {
        ControllerProcess::start(cluster(), &self.ns.name, extra)
    }

    /// A profile of this test (labelled so that only this test's controller manages it).
    pub async fn profile(&self, name: &str, spec: serde_json::Value) -> String {
        let full = format!("{}-{name}", self.ns.name);
        let obj: ConfigurationProfile = serde_json::from_value(json!({
            "apiVersion": "automend.io/v1alpha1", "kind": "ConfigurationProfile",
            "metadata": { "name": full, "labels": { "automend.io/e2e": self.ns.name } },
            "spec": spec,
        }))
        .expect("profile");
        self.profiles
            .create(&PostParams::default(), &obj)
            .await
            .expect("creating the profile");
        full
    }

    pub async fn vm(
        &self,
        name: &str,
        profile: Option<&str>,
        labels: BTreeMap<&str, &str>,
        annotations: BTreeMap<&str, &str>,
    ) {
        let mut management = json!({ "enabled": true });
        if let Some(p) = profile {
            management["profile"] = json!(p);
        }
        let obj: VirtualMachine = serde_json::from_value(json!({
            "apiVersion": "automend.io/v1alpha1", "kind": "VirtualMachine",
            "metadata": { "name": name, "labels": labels, "annotations": annotations },
            "spec": {
                "management": management,
                "os": { "type": "Linux", "image": { "publisher": "Canonical", "offer": "ubuntu-24_04-lts", "sku": "server" } },
                "placement": { "region": "westeurope", "zone": "1" },
            },
        }))
        .expect("vm");
        self.vms
            .create(&PostParams::default(), &obj)
            .await
            .expect("creating the VM");
    }

    pub fn start_sim(&mut self, config: kube::Config) {
        self.start_sim_with_clock(config, Default::default());
    }

    /// Simulate the namespace's guests on a (possibly accelerated) clock.
    pub fn start_sim_with_clock(
        &mut self,
        config: kube::Config,
        clock: automend::clock::ClockArgs,
    ) {
        let settings = SimSettings {
            namespace: self.ns.name.clone(),
            selector: None,
            heartbeat_interval: Duration::from_secs(1),
            observe_interval: Duration::from_secs(1),
            token_ttl: Duration::from_secs(3600),
            reboot_time: Duration::from_secs(2),
            enroll: 0,
            enroll_token_file: None,
            enroll_prefix: "sim".into(),
            enroll_region: None,
            clock,
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        self.sim_stop = Some(tx);
        tokio::spawn(sim::run(
            self.client.clone(),
            config,
            settings,
            self.stats.clone(),
            async {
                let _ = rx.await;
            },
        ));
    }

    /// `automend enroll …` in this namespace, as the admin; its stdout.
    pub fn enroll(&self, args: &[&str]) -> String {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_automend"))
            .args(["enroll", "-n", &self.ns.name])
            .args(args)
            .env("KUBECONFIG", &cluster().kubeconfig)
            .output()
            .expect("running automend enroll");
        assert!(
            out.status.success(),
            "automend enroll {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// An UpdateRing (order 0) of the VMs labelled `key=value`.
    pub async fn ring_selecting(&self, name: &str, key: &str, value: &str) -> Api<UpdateRing> {
        let rings: Api<UpdateRing> = Api::namespaced(self.client.clone(), &self.ns.name);
        let ring: UpdateRing = serde_json::from_value(json!({
            "apiVersion": "automend.io/v1alpha1", "kind": "UpdateRing",
            "metadata": { "name": name },
            "spec": { "order": 0, "selector": { "matchLabels": { key: value } } },
        }))
        .expect("ring");
        rings
            .create(&PostParams::default(), &ring)
            .await
            .expect("creating the ring");
        rings
    }

    /// Simulate `count` machines that enroll with the Enrollment token in `token_file`.
    pub async fn sim_enrolled(&mut self, token_file: &std::path::Path, count: usize, prefix: &str) {
        let config = cluster().config().await;
        let settings = SimSettings {
            namespace: self.ns.name.clone(),
            selector: None,
            heartbeat_interval: Duration::from_secs(2),
            observe_interval: Duration::from_secs(2),
            token_ttl: Duration::from_secs(3600),
            reboot_time: Duration::from_secs(2),
            enroll: count,
            enroll_token_file: Some(token_file.to_path_buf()),
            enroll_prefix: prefix.into(),
            enroll_region: None,
            clock: Default::default(),
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        self.sim_stop = Some(tx);
        tokio::spawn(sim::run(
            self.client.clone(),
            config,
            settings,
            self.stats.clone(),
            async {
                let _ = rx.await;
            },
        ));
    }

    pub async fn sim(&mut self) {
        let config = cluster().config().await;
        self.start_sim(config);
    }

    pub async fn get(&self, name: &str) -> VirtualMachine {
        self.vms.get(name).await.expect("get VM")
    }

    pub async fn wait_phase(&self, name: &str, phase: VmPhase) -> VirtualMachine {
        let vms = self.vms.clone();
        wait_for(&format!("{name} to be {phase:?}"), LONG, || {
            let vms = vms.clone();
            async move {
                let vm = vms.get(name).await.ok()?;
                (vm.status.as_ref()?.phase? == phase).then_some(vm)
            }
        })
        .await
    }

    pub async fn annotate(&self, name: &str, key: &str, value: &str) {
        self.vms
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "metadata": { "annotations": { key: value } } })),
            )
            .await
            .expect("annotating");
    }

    /// Event reasons about one VM, oldest first.
    pub async fn events(&self, name: &str) -> Vec<String> {
        self.event_notes(name)
            .await
            .into_iter()
            .map(|e| e.0)
            .collect()
    }

    /// The Events of a namespace, oldest first.
    async fn events_in(&self, ns: &str) -> Vec<Event> {
        let api: Api<Event> = Api::namespaced(self.client.clone(), ns);
        let mut list = api
            .list(&ListParams::default())
            .await
            .expect("events")
            .items;
        list.sort_by_key(|e| e.event_time.as_ref().map(|t| t.0));
        list
    }

    /// (reason, note) of the Events about one object of the namespace, oldest first.
    pub async fn event_notes(&self, name: &str) -> Vec<(String, String)> {
        self.events_in(&self.ns.name)
            .await
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
            .collect()
    }

    /// Event reasons about one object, oldest first, once every one of `reasons` is among them.
    ///
    /// The controller publishes an Event right after the status write that records what it
    /// reports, so a test that has seen the status waits for the Event: reading the Events at
    /// once races their publication (CI failed on that, with the Event published a moment later).
    pub async fn events_with(&self, name: &str, reasons: &[&str]) -> Vec<String> {
        let what = format!("{name}'s Events {reasons:?}");
        wait_for(&what, EVENT_WAIT, || async {
            let events = self.events(name).await;
            reasons
                .iter()
                .all(|r| events.iter().any(|e| e == r))
                .then_some(events)
        })
        .await
    }

    /// The notes of the Events with `reason` about one object, oldest first, once there are at
    /// least `count` of them (see `events_with` for why a test waits).
    pub async fn notes_with(&self, name: &str, reason: &str, count: usize) -> Vec<String> {
        let what = format!("{count} {reason} Event(s) about {name}");
        wait_for(&what, EVENT_WAIT, || async {
            let notes: Vec<String> = self
                .event_notes(name)
                .await
                .into_iter()
                .filter(|(r, _)| r == reason)
                .map(|(_, n)| n)
                .collect();
            (notes.len() >= count).then_some(notes)
        })
        .await
    }

    /// The VMs (`namespace/name`) the `Onboarded` Events about a ConfigurationProfile name,
    /// oldest first, each as often as it was published (a repeat of a whole note is a series),
    /// and how many VMs they counted without naming them.
    pub async fn onboarded(&self, profile: &str) -> (Vec<String>, usize) {
        // This profile, not one of the same name from an earlier run of the test.
        let uid = self
            .profiles
            .get(profile)
            .await
            .expect("the profile")
            .metadata
            .uid;
        let (mut names, mut unnamed) = (Vec::new(), 0);
        // A cluster-scoped object's Events are in `default`.
        for e in self.events_in("default").await {
            let about = e.regarding.as_ref();
            if about.and_then(|r| r.kind.as_deref()) != Some("ConfigurationProfile")
                || about.and_then(|r| r.name.as_deref()) != Some(profile)
                || about.and_then(|r| r.uid.as_ref()) != uid.as_ref()
                || e.reason.as_deref() != Some("Onboarded")
            {
                continue;
            }
            let note = e.note.unwrap_or_default();
            let Some((_, listed)) = note.rsplit_once(": ") else {
                panic!("an Onboarded note without VMs: {note}");
            };
            let (listed, more) = match listed.rsplit_once(" and ") {
                Some((l, m)) => (
                    l,
                    m.trim_end_matches(" more").parse::<usize>().expect("count"),
                ),
                None => (listed, 0),
            };
            for _ in 0..e.series.map_or(1, |s| s.count) {
                names.extend(listed.split(", ").map(str::to_string));
                unnamed += more;
            }
        }
        (names, unnamed)
    }

    /// Wait until the profile's `Onboarded` Events have named each of `vms` of this namespace,
    /// and return how often each was named (in `vms`' order).
    pub async fn wait_onboarded(&self, profile: &str, vms: &[&str]) -> Vec<usize> {
        let wanted: Vec<String> = vms
            .iter()
            .map(|v| format!("{}/{v}", self.ns.name))
            .collect();
        wait_for("the profile's Onboarded Events", LONG, || async {
            let (named, _) = self.onboarded(profile).await;
            let counts: Vec<usize> = wanted
                .iter()
                .map(|w| named.iter().filter(|n| *n == w).count())
                .collect();
            counts.iter().all(|c| *c > 0).then_some(counts)
        })
        .await
    }

    /// (reason, how often it was published: 1, or its series count) of an object's Events.
    pub async fn event_counts(&self, name: &str) -> Vec<(String, i32)> {
        let api: Api<Event> = Api::namespaced(self.client.clone(), &self.ns.name);
        let list = api
            .list(&ListParams::default())
            .await
            .expect("events")
            .items;
        list.into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .map(|e| {
                (
                    e.reason.unwrap_or_default(),
                    e.series.map_or(1, |s| s.count),
                )
            })
            .collect()
    }

    /// A VM's heartbeat Lease once its guest has renewed it after creating it, and the field
    /// managers that wrote it, each once (a renewal is a write of its own: looked at before
    /// one, the Lease does not show who renews it).
    pub async fn lease_managers(
        &self,
        vm: &str,
    ) -> (k8s_openapi::api::coordination::v1::Lease, Vec<String>) {
        let leases = Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(
            self.client.clone(),
            &self.ns.name,
        );
        let lease = wait_for(&format!("{vm}'s Lease renewed"), LONG, || async {
            let lease = leases.get(vm).await.ok()?;
            let spec = lease.spec.as_ref()?;
            (spec.renew_time.as_ref().map(|t| t.0) > spec.acquire_time.as_ref().map(|t| t.0))
                .then_some(lease)
        })
        .await;
        let managers = lease
            .metadata
            .managed_fields
            .iter()
            .flatten()
            .filter_map(|m| m.manager.clone())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        (lease, managers)
    }

    /// How many objects of kind `K` in the namespace the controller labelled as a guest
    /// identity's (ServiceAccounts, Roles, RoleBindings).
    pub async fn owned<K>(&self) -> usize
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        Api::<K>::namespaced(self.client.clone(), &self.ns.name)
            .list(&ListParams::default().labels(automend::identity::OWNED_SELECTOR))
            .await
            .map(|l| l.items.len())
            .expect("listing identity objects")
    }

    pub fn applies(&self, name: &str) -> u64 {
        self.stats
            .lock()
            .map(|s| s.get(name).map_or(0, |g| g.applies))
            .unwrap_or(0)
    }

    /// Delete the VMs while the controller still runs (so finalizers are honoured), then the namespace.
    pub async fn finish(mut self, controller: ControllerProcess) {
        let _ = self
            .vms
            .delete_collection(&Default::default(), &ListParams::default())
            .await;
        let vms = self.vms.clone();
        wait_for("the VMs to be deleted", LONG, || {
            let vms = vms.clone();
            async move {
                vms.list(&ListParams::default())
                    .await
                    .ok()
                    .filter(|l| l.items.is_empty())
                    .map(|_| ())
            }
        })
        .await;
        if let Some(tx) = self.sim_stop.take() {
            let _ = tx.send(());
        }
        drop(controller);
        let profiles = self.profiles.clone();
        let _ = profiles
            .delete_collection(
                &Default::default(),
                &ListParams::default().labels(&format!("automend.io/e2e={}", self.ns.name)),
            )
            .await;
        self.ns.delete().await;
    }
}
