//! What a rollout decision knows of its namespace, read from the objects: ring membership and the
//! rollout-eligibility policy (patch mode, image, onboarding, a heartbeat within 5 days), the
//! VMs' facts, and the rollout that goes first. Shared by the controller and the kubectl plugin.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use kube::ResourceExt;

use crate::api::{
    Capability, InstallationDirective, LastPatchInstallationSummary, PatchMode, PatchRollout,
    PatchRolloutStatus, RolloutPhase, UpdateRing, VirtualMachine,
};
use crate::clock::Clock;
use crate::logic::conditions::status_of;
use crate::logic::planner::Placement;
use crate::logic::rings::{self, RingRule};
use crate::logic::vm::{HEARTBEAT, IMAGE_SUPPORTED};
use crate::logic::window::{self, Window};

use super::{Input, Outcome, RingFacts, Settings, VmFacts};

/// VMs without a heartbeat for this long (on the patching clock) leave the SLO's eligible set.
pub const ELIGIBLE_HEARTBEAT: Duration = Duration::from_secs(5 * 24 * 3600);

/// Everything a rollout decision needs of one VM, read from its object.
pub struct VmView {
    pub vm: Arc<VirtualMachine>,
    pub ring: Option<usize>,
    pub ineligible: Option<String>,
    pub running: bool,
    pub window: Option<(Window, jiff::tz::TimeZone)>,
}

/// The rings of a namespace, sorted by (order, name).
pub fn sorted_rings(rings: &[Arc<UpdateRing>]) -> Vec<Arc<UpdateRing>> {
    let mut r = rings.to_vec();
    r.sort_by(|a, b| {
        a.spec
            .order
            .cmp(&b.spec.order)
            .then_with(|| a.name_any().cmp(&b.name_any()))
    });
    r
}

/// Why a VM does not take part in rollouts (None: it does).
fn ineligible(vm: &VirtualMachine, now: Timestamp, clock: &Clock) -> Option<String> {
    let status = vm.status.as_ref();
    let conditions = status.map(|s| s.conditions.as_slice()).unwrap_or_default();
    let config = status
        .and_then(|s| s.desired.as_ref())
        .and_then(|d| d.configuration.as_ref());
    let mode = status
        .and_then(|s| s.patch_mode)
        .or(vm.spec.patch_settings.patch_mode)
        .unwrap_or(PatchMode::default_for(vm.spec.os.os_type));
    let last_heartbeat = conditions
        .iter()
        .find(|c| c.type_ == HEARTBEAT)
        .map(|c| (c.status == "True", clock.at(c.last_transition_time.0)));
    if !vm.spec.management.enabled {
        Some("management is disabled".to_string())
    } else if mode != PatchMode::AutomaticByPlatform {
        Some(format!(
            "patch mode is {mode:?}: only AutomaticByPlatform VMs join rollouts"
        ))
    } else if status_of(conditions, IMAGE_SUPPORTED) == Some(false) {
        Some("its image does not support AutomaticByPlatform (see condition ImageSupported)".into())
    } else if config.is_none() {
        Some("not onboarded to a ConfigurationProfile yet".into())
    } else if config.is_some_and(|c| !c.services.update_management.enabled) {
        Some("its ConfigurationProfile turns update management off".into())
    } else {
        match last_heartbeat {
            None => Some("no heartbeat yet".into()),
            Some((false, since)) if since + ELIGIBLE_HEARTBEAT < now => {
                Some("no heartbeat for more than 5 days".into())
            }
            _ => None,
        }
    }
}

/// Read a namespace's VMs for a decision: ring membership, eligibility, heartbeat, window.
pub fn views(vms: &[Arc<VirtualMachine>], rings: &[Arc<UpdateRing>], clock: &Clock) -> Vec<VmView> {
    let names: Vec<String> = rings.iter().map(|r| r.name_any()).collect();
    let rules: Vec<RingRule> = rings
        .iter()
        .zip(&names)
        .map(|(r, n)| RingRule {
            name: n,
            order: r.spec.order,
            selector: r.spec.selector.as_ref(),
            share: r.spec.share,
        })
        .collect();
    let now = clock.now();
    vms.iter()
        .map(|vm| {
            let uid = vm.uid().unwrap_or_default();
            let ring = rings::ring_of(&rules, &uid, vm.labels())
                .and_then(|n| names.iter().position(|x| x == n));
            let status = vm.status.as_ref();
            let conditions = status.map(|s| s.conditions.as_slice()).unwrap_or_default();
            let window_spec = ring
                .and_then(|r| rings[r].spec.maintenance_window.clone())
                .or_else(|| {
                    status
                        .and_then(|s| s.desired.as_ref())
                        .and_then(|d| d.configuration.as_ref())
                        .and_then(|c| c.services.update_management.maintenance_window.clone())
                });
            let mut window = None;
            let mut ineligible = ineligible(vm, now, clock);
            if ineligible.is_none()
                && let Some(w) = &window_spec
            {
                match (Window::parse(w), window::time_zone(&vm.spec.time_zone)) {
                    (Ok(w), Ok(tz)) => window = Some((w, tz)),
                    (Err(e), _) | (_, Err(e)) => ineligible = Some(e),
                }
            }
            VmView {
                vm: vm.clone(),
                ring,
                ineligible,
                running: status_of(conditions, HEARTBEAT) == Some(true),
                window,
            }
        })
        .collect()
}

/// The facts of a view (borrowing from it).
pub fn facts(v: &VmView) -> VmFacts<'_> {
    let vm = &v.vm;
    let status = vm.status.as_ref();
    let config = status
        .and_then(|s| s.desired.as_ref())
        .and_then(|d| d.configuration.as_ref());
    let guest = status.and_then(|s| s.guest.as_ref());
    let img = &vm.spec.os.image;
    VmFacts {
        name: vm.metadata.name.as_deref().unwrap_or_default(),
        ring: v.ring,
        placement: Placement {
            region: vm.spec.placement.region.to_string(),
            zone: vm.spec.placement.zone.as_deref().map(String::from),
            availability_set: vm
                .spec
                .placement
                .availability_set
                .as_deref()
                .map(String::from),
            update_domain: vm.spec.placement.update_domain.unwrap_or(0),
        },
        ineligible: v.ineligible.clone(),
        running: v.running,
        window: v.window.clone(),
        reboot_setting: config.and_then(|c| c.services.update_management.reboot_setting),
        hotpatch: config.is_some_and(|c| c.services.update_management.hotpatch)
            && vm.spec.capabilities.contains(&Capability::Hotpatch),
        family: format!("{}/{}/{}", img.publisher, img.offer, img.sku),
        assessment: guest.and_then(|g| g.assessment.as_ref()),
        directive: status
            .and_then(|s| s.desired.as_ref())
            .and_then(|d| d.installation.as_deref()),
        result: guest.and_then(|g| g.installation.as_ref()),
        summary: status
            .and_then(|s| s.patch_status.as_ref())
            .and_then(|p| p.last_patch_installation_summary.as_ref()),
        healthy: guest.and_then(|g| g.healthy) != Some(false),
        hooks: config.and_then(|c| c.services.update_management.hooks.as_ref()),
        profile: status
            .and_then(|s| s.desired.as_ref())
            .map(|d| d.profile.as_str())
            .unwrap_or_default(),
        snapshots: config
            .map(|c| c.services.update_management.snapshots.as_slice())
            .unwrap_or_default(),
        approval: config.and_then(|c| c.services.update_management.approval.as_ref()),
        release_assessment: guest.and_then(|g| g.release_assessment.as_ref()),
        release_directive: status
            .and_then(|s| s.desired.as_ref())
            .and_then(|d| d.release_assessment.as_deref()),
    }
}

/// Whether a rollout phase lets the namespace's next rollout go.
pub fn finished(phase: Option<RolloutPhase>) -> bool {
    matches!(
        phase,
        Some(
            RolloutPhase::Succeeded
                | RolloutPhase::RolledBack
                | RolloutPhase::Halted
                | RolloutPhase::Aborted
        )
    )
}

/// The unfinished rollout of the namespace that goes before `me` (earlier release), if any.
pub fn blocked_by(me: &PatchRollout, all: &[Arc<PatchRollout>]) -> Option<String> {
    let key = |r: &PatchRollout| (r.spec.release_time.0, r.name_any());
    all.iter()
        .filter(|r| r.namespace() == me.namespace() && r.name_any() != me.name_any())
        .filter(|r| !finished(r.status.as_ref().and_then(|s| s.phase)))
        .filter(|r| key(r) < key(me))
        .min_by_key(|r| key(r))
        .map(|r| r.name_any())
}

/// Everything needed to decide one rollout, gathered from caches.
pub struct Gathered {
    pub rings: Vec<Arc<UpdateRing>>,
    pub ring_names: Vec<String>,
    pub views: Vec<VmView>,
    pub blocked_by: Option<String>,
}

pub fn gather(
    rollout: &PatchRollout,
    rollouts: &[Arc<PatchRollout>],
    rings: &[Arc<UpdateRing>],
    vms: &[Arc<VirtualMachine>],
    clock: &Clock,
) -> Gathered {
    let ns = rollout.namespace();
    let rings: Vec<Arc<UpdateRing>> = sorted_rings(
        &rings
            .iter()
            .filter(|r| r.namespace() == ns)
            .cloned()
            .collect::<Vec<_>>(),
    );
    let vms: Vec<Arc<VirtualMachine>> = vms
        .iter()
        .filter(|v| v.namespace() == ns)
        .cloned()
        .collect();
    let views = views(&vms, &rings, clock);
    Gathered {
        ring_names: rings.iter().map(|r| r.name_any()).collect(),
        rings,
        views,
        blocked_by: blocked_by(rollout, rollouts),
    }
}

/// Writes of this process that the caches may not show yet ("expectations"): a decision made on
/// a stale cache would otherwise start a VM twice or reuse a wave number.
#[derive(Clone, Debug, Default)]
pub struct Written {
    /// By VM name (in the rollout's namespace): the directive and summary last written by any
    /// rollout.
    pub vms: HashMap<String, (InstallationDirective, Option<LastPatchInstallationSummary>)>,
    /// The rollout status last written.
    pub status: Option<PatchRolloutStatus>,
}

/// Run the pure decision over gathered facts.
pub fn decide_gathered(
    rollout: &PatchRollout,
    g: &Gathered,
    now: Timestamp,
    settings: &Settings,
    expected: &Written,
) -> Outcome {
    let ring_facts: Vec<RingFacts> = g
        .rings
        .iter()
        .zip(&g.ring_names)
        .map(|(r, n)| RingFacts {
            name: n,
            spec: &r.spec,
        })
        .collect();
    let name = rollout.name_any();
    let vm_facts: Vec<VmFacts> = g
        .views
        .iter()
        .map(|v| {
            let mut f = facts(v);
            // What this process wrote and the cache has not shown yet.
            if let Some((d, s)) = expected.vms.get(f.name) {
                f.directive = Some(d);
                f.summary = s.as_ref();
            }
            f
        })
        .collect();
    super::decide(&Input {
        now,
        name: &name,
        generation: rollout.metadata.generation,
        spec: &rollout.spec,
        status: expected.status.as_ref().or(rollout.status.as_ref()),
        rings: &ring_facts,
        vms: &vm_facts,
        blocked_by: g.blocked_by.clone(),
        settings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ConfigurationProfileSpec, Environment, VirtualMachineStatus};
    use crate::logic::conditions::Conditions;

    fn vm(name: &str, mode: &str, onboarded: bool, heartbeat: bool) -> Arc<VirtualMachine> {
        let mut vm: VirtualMachine = serde_json::from_value(serde_json::json!({
            "apiVersion": "automend.io/v1alpha1",
            "kind": "VirtualMachine",
            "metadata": { "name": name, "namespace": "ns", "uid": format!("uid-{name}"), "labels": { "ring": "a" } },
            "spec": {
                "management": { "enabled": true, "profile": "production" },
                "os": { "type": "Linux", "image": { "publisher": "Canonical", "offer": "ubuntu-24_04-lts", "sku": "server" } },
                "placement": { "region": "westeurope" },
                "patchSettings": { "patchMode": mode },
            },
        }))
        .expect("vm");
        let now = jiff::Timestamp::now();
        let mut c = Conditions::new(&[], Some(1), now);
        c.set(HEARTBEAT, heartbeat, "x", "x");
        let mut status = VirtualMachineStatus {
            conditions: c.into_vec(),
            ..Default::default()
        };
        if onboarded {
            status.desired = Some(Box::new(crate::api::DesiredState {
                configuration: Some(Arc::new(crate::logic::resolve::resolve(
                    &ConfigurationProfileSpec::with_defaults(Environment::Production),
                ))),
                ..Default::default()
            }));
        }
        vm.status = Some(status);
        Arc::new(vm)
    }

    fn ring() -> Arc<UpdateRing> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "apiVersion": "automend.io/v1alpha1",
                "kind": "UpdateRing",
                "metadata": { "name": "a", "namespace": "ns" },
                "spec": { "order": 0, "selector": { "matchLabels": { "ring": "a" } } },
            }))
            .expect("ring"),
        )
    }

    #[test]
    fn eligibility_names_why_a_vm_stays_out_and_ring_status_counts_it() {
        let vms = vec![
            vm("ok", "AutomaticByPlatform", true, true),
            vm("image-default", "ImageDefault", true, true),
            vm("new", "AutomaticByPlatform", false, true),
            vm("off", "AutomaticByPlatform", true, false),
        ];
        let rings = vec![ring()];
        let v = views(&vms, &rings, &Clock::real());
        assert!(v.iter().all(|v| v.ring == Some(0)));
        assert_eq!(v[0].ineligible, None);
        assert!(v[0].running);
        assert!(
            v[1].ineligible
                .as_deref()
                .is_some_and(|r| r.contains("only AutomaticByPlatform")),
            "{:?}",
            v[1].ineligible
        );
        assert_eq!(
            v[2].ineligible.as_deref(),
            Some("not onboarded to a ConfigurationProfile yet")
        );
        // Off for less than 5 days: still eligible (patched when it returns), not running.
        assert_eq!(v[3].ineligible, None);
        assert!(!v[3].running);
        let st = crate::logic::rollout::ring_status(
            &rings,
            0,
            &v,
            Some("r".into()),
            jiff::Timestamp::now(),
        );
        assert_eq!(
            (st.total, st.eligible, st.healthy, st.unhealthy),
            (4, 2, 1, 1)
        );
        assert_eq!(st.current_rollout.as_deref(), Some("r"));
    }
}
