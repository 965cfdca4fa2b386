//! The controller's Prometheus metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabel {
    pub controller: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabel {
    pub controller: String,
    /// `Error::metric_label`: api_<code>, api, finalizer, caches_stopped, cache_not_ready.
    pub error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    pub phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabel {
    /// allowed or no_opinion
    pub decision: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RolloutLabel {
    pub namespace: String,
    pub rollout: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RolloutPhaseLabel {
    pub namespace: String,
    pub rollout: String,
    pub phase: String,
}

#[derive(Clone)]
pub struct Metrics {
    pub reconciles: Family<ControllerLabel, Counter>,
    pub reconcile_errors: Family<ErrorLabel, Counter>,
    pub reconcile_duration: Family<ControllerLabel, Histogram>,
    pub status_writes: Family<ControllerLabel, Counter>,
    pub vms: Family<PhaseLabel, Gauge>,
    pub drift_detected: Counter,
    /// VMs onboarded (their first Configured with a profile); reported in batched Events.
    pub onboarded: Counter,
    pub remediation_attempts: Counter,
    pub remediated: Counter,
    pub remediation_failed: Counter,
    pub events: Family<EventLabel, Counter>,
    pub leader: Gauge,
    pub installs_started: Counter,
    pub rollout_phase: Family<RolloutPhaseLabel, Gauge>,
    pub slo_eligible: Family<RolloutLabel, Gauge>,
    pub slo_on_manifest: Family<RolloutLabel, Gauge>,
    pub slo_projected_to_meet: Family<RolloutLabel, Gauge>,
    /// Every request the controller's client makes (`kubeclient::CountLayer`).
    pub api_requests: Family<crate::kubeclient::ApiRequestLabel, Counter>,
    /// Reviews answered by the guest authorizer (`--guest-authorization=webhook`).
    pub guest_authorizations: Family<DecisionLabel, Counter>,
    /// 1 while the API server sends guest reviews to this controller, 0 once it is seen not to.
    /// Registered only under `--guest-authorization=webhook`: under `rbac` there is nothing to
    /// route, and a 0 would read as an outage.
    pub guest_authorizer_routed: Gauge,
}

impl Metrics {
    /// Register every metric; `guest_webhook` adds the guest authorizer's routing gauge.
    pub fn register(registry: &mut Registry, guest_webhook: bool) -> Self {
        let m = Metrics {
            reconciles: Family::default(),
            reconcile_errors: Family::default(),
            reconcile_duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 14))
            }),
            status_writes: Family::default(),
            vms: Family::default(),
            drift_detected: Counter::default(),
            onboarded: Counter::default(),
            remediation_attempts: Counter::default(),
            remediated: Counter::default(),
            remediation_failed: Counter::default(),
            events: Family::default(),
            leader: Gauge::default(),
            installs_started: Counter::default(),
            rollout_phase: Family::default(),
            slo_eligible: Family::default(),
            slo_on_manifest: Family::default(),
            slo_projected_to_meet: Family::default(),
            api_requests: Family::default(),
            guest_authorizations: Family::default(),
            guest_authorizer_routed: Gauge::default(),
        };
        registry.register(
            "reconciles",
            "Reconciles run, by controller",
            m.reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by controller",
            m.reconcile_errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one reconcile, by controller",
            m.reconcile_duration.clone(),
        );
        registry.register(
            "status_writes",
            "Status updates written (reconciles that changed nothing write nothing), by controller",
            m.status_writes.clone(),
        );
        registry.register(
            "virtual_machines",
            "Managed VirtualMachines by phase",
            m.vms.clone(),
        );
        registry.register(
            "drift_detected",
            "Drift episodes detected",
            m.drift_detected.clone(),
        );
        registry.register(
            "vms_onboarded",
            "VMs onboarded to a ConfigurationProfile (first Configured with it)",
            m.onboarded.clone(),
        );
        registry.register(
            "remediation_attempts",
            "Remediation attempts asked of guests",
            m.remediation_attempts.clone(),
        );
        registry.register(
            "remediated",
            "Drift episodes corrected",
            m.remediated.clone(),
        );
        registry.register(
            "remediation_failed",
            "VMs that failed remediation after maxAttempts",
            m.remediation_failed.clone(),
        );
        registry.register("events", "Events published, by reason", m.events.clone());
        registry.register(
            "leader",
            "1 while this replica is the elected leader",
            m.leader.clone(),
        );
        registry.register(
            "installs_started",
            "Installation directives written to VMs by rollouts",
            m.installs_started.clone(),
        );
        registry.register(
            "rollout_phase",
            "1 for the current phase of each PatchRollout",
            m.rollout_phase.clone(),
        );
        registry.register(
            "rollout_slo_eligible_vms",
            "VMs eligible for the rollout's SLO (in a ring, AutomaticByPlatform, supported, heartbeat within 5 days)",
            m.slo_eligible.clone(),
        );
        registry.register(
            "rollout_slo_on_manifest_vms",
            "Eligible VMs on the rollout's release manifest",
            m.slo_on_manifest.clone(),
        );
        registry.register(
            "rollout_slo_projected_to_meet",
            "1 when the rollout is projected to meet its SLO target",
            m.slo_projected_to_meet.clone(),
        );
        registry.register(
            "api_requests",
            "Requests the controller made to the API server, by verb and resource (watches count when they start)",
            m.api_requests.clone(),
        );
        registry.register(
            "guest_authorizations",
            "SubjectAccessReviews the guest authorizer answered, by decision (allowed, no_opinion)",
            m.guest_authorizations.clone(),
        );
        if guest_webhook {
            registry.register(
                "guest_authorizer_routed",
                "1 while the API server sends guest SubjectAccessReviews to this controller, 0 once a check finds it does not (--guest-authorization=webhook only)",
                m.guest_authorizer_routed.clone(),
            );
        }
        m
    }

    pub fn label(controller: &str) -> ControllerLabel {
        ControllerLabel {
            controller: controller.into(),
        }
    }
}
