//! The PatchRollout decision (DESIGN.md §2 and §5) as a pure function: a rollout, the rings of
//! its namespace and what is known of every VM, at a time, give the rollout's status, the
//! installation directives to write now, Events and when to look again.
//!
//! Everything needed to decide again is in the objects: a VM has started when its
//! `status.desired.installation` names this rollout; it finished when its guest reported that
//! (rollout, wave); failures are remembered in the rollout's waves. A restarted controller so
//! decides the same and never starts a VM twice.
//!
//! The kubectl plugin calls the same code for `plan` and `why`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::api::{
    Classification, Condition, GuestAssessment, GuestInstallation, InstallationDirective,
    LastPatchInstallationSummary, ManifestFamily, OperationStatus, PatchRolloutSpec,
    PatchRolloutStatus, PinnedPackage, RebootSetting, ReleaseManifest, RingPhase, RingProgress,
    RolloutPhase, SloStatus, UpdateRingSpec, Wave,
};

use super::decide::EventSpec;
use super::planner::{self, Limits, Placement, State, Topology};
use super::window::Window;

pub const HALTED: &str = "Halted";
pub const SLO_AT_RISK: &str = "SLOAtRisk";
pub const PAUSED: &str = "Paused";

/// A ring of the namespace, sorted by (order, name) by the caller.
#[derive(Clone, Debug)]
pub struct RingFacts<'a> {
    pub name: &'a str,
    pub spec: &'a UpdateRingSpec,
}

/// What the rollout needs to know of one VM.
#[derive(Clone, Debug)]
pub struct VmFacts<'a> {
    pub name: &'a str,
    /// Index into the rings, if the VM is in one.
    pub ring: Option<usize>,
    pub placement: Placement,
    /// Why the VM does not take part in rollouts (patch mode, image, management, heartbeat).
    pub ineligible: Option<String>,
    /// Heartbeat present now.
    pub running: bool,
    /// Its maintenance window (the ring's or the profile's), in its time zone; None: any time.
    pub window: Option<(Window, TimeZone)>,
    pub reboot_setting: Option<RebootSetting>,
    /// Hotpatch-capable and allowed by the profile: installs without a reboot.
    pub hotpatch: bool,
    /// Image family (publisher/offer/sku): the manifest pins versions per family.
    pub family: String,
    pub assessment: Option<&'a GuestAssessment>,
    pub directive: Option<&'a InstallationDirective>,
    pub result: Option<&'a GuestInstallation>,
    /// The VM's current `lastPatchInstallationSummary`.
    pub summary: Option<&'a LastPatchInstallationSummary>,
    /// The guest's own health report (agent checks and `spec.healthCheck`).
    pub healthy: bool,
}

/// Controller settings the decision depends on.
#[derive(Clone, Debug)]
pub struct Settings {
    pub pairs: Vec<(String, String)>,
    /// How long an installation is expected to take: none starts with less window left.
    pub expected_duration: Duration,
}

pub struct Input<'a> {
    pub now: Timestamp,
    pub name: &'a str,
    pub generation: Option<i64>,
    pub spec: &'a PatchRolloutSpec,
    pub status: Option<&'a PatchRolloutStatus>,
    pub rings: &'a [RingFacts<'a>],
    pub vms: &'a [VmFacts<'a>],
    /// An earlier rollout of the namespace that is still running: this one waits for it.
    pub blocked_by: Option<String>,
    pub settings: &'a Settings,
}

/// Where one VM stands in the rollout, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmState {
    /// Not taking part (reason).
    Skipped(String),
    /// Already has every package of the manifest.
    UpToDate,
    /// To be patched; `Some(reason)` when it may not start now.
    Waiting(Option<String>),
    /// Installing, or installed and proving healthy.
    Patching,
    Succeeded,
    Failed(String),
    /// Returned to the versions recorded before the install.
    RolledBack,
}

impl VmState {
    fn planner(&self) -> State {
        match self {
            VmState::Skipped(_) => State::Skipped,
            VmState::UpToDate | VmState::Succeeded => State::Succeeded,
            VmState::Waiting(_) => State::Waiting,
            VmState::Patching => State::Patching,
            VmState::Failed(_) | VmState::RolledBack => State::Failed,
        }
    }
}

/// A VM status write: the directive (when new) and the seed's installation summary.
#[derive(Clone, Debug, PartialEq)]
pub struct VmWrite {
    pub vm: usize,
    pub directive: InstallationDirective,
    pub summary: Option<LastPatchInstallationSummary>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub status: PatchRolloutStatus,
    pub writes: Vec<VmWrite>,
    pub events: Vec<EventSpec>,
    /// Look again after this long (virtual time), even if nothing changes.
    pub requeue_after: Option<Duration>,
    /// Every VM's state, by index (for `why` and tests).
    pub states: Vec<VmState>,
}

fn t(ts: Timestamp) -> Time {
    Time(ts)
}

fn dur(text: &str) -> Duration {
    super::duration::parse(text).unwrap_or(Duration::ZERO)
}

/// Add a std duration to a timestamp (saturating at the end of time).
pub fn add(ts: Timestamp, d: Duration) -> Timestamp {
    jiff::SignedDuration::try_from(d)
        .ok()
        .and_then(|d| ts.checked_add(d).ok())
        .unwrap_or(Timestamp::MAX)
}

/// Compare versions the way package managers roughly do: runs of digits numerically, the rest
/// by character, `~` before everything.
pub fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (None, None) => return Ordering::Equal,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let na = a.iter().take_while(|c| c.is_ascii_digit()).count();
                let nb = b.iter().take_while(|c| c.is_ascii_digit()).count();
                let (da, db) = (&a[..na], &b[..nb]);
                let strip = |d: &[u8]| -> Vec<u8> {
                    d.iter().skip_while(|c| **c == b'0').copied().collect()
                };
                let (sa, sb) = (strip(da), strip(db));
                let o = sa.len().cmp(&sb.len()).then_with(|| sa.cmp(&sb));
                if o != Ordering::Equal {
                    return o;
                }
                a = &a[na..];
                b = &b[nb..];
            }
            (x, y) => {
                let key = |c: Option<&u8>| -> i32 {
                    match c {
                        Some(b'~') => -1,
                        None => 0,
                        Some(c) if c.is_ascii_digit() => 1,
                        Some(c) if c.is_ascii_alphabetic() => 2 + i32::from(*c),
                        Some(c) => 300 + i32::from(*c),
                    }
                };
                let o = key(x).cmp(&key(y));
                if o != Ordering::Equal {
                    return o;
                }
                a = &a[1.min(a.len())..];
                b = &b[1.min(b.len())..];
            }
        }
    }
}

/// Whether `exclude` (exact names, or prefixes ending in `*`) excludes a package.
pub fn excluded(exclude: &[String], name: &str) -> bool {
    exclude.iter().any(|e| match e.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => e == name,
    })
}

/// Freeze the manifest: per image family, the newest version of every package in the rollout's
/// classifications that an eligible VM's assessment offers, minus the exclusions.
pub fn freeze_manifest(
    spec: &PatchRolloutSpec,
    vms: &[VmFacts<'_>],
    now: Timestamp,
) -> ReleaseManifest {
    let mut families: BTreeMap<&str, BTreeMap<&str, (&str, Classification)>> = BTreeMap::new();
    for vm in vms
        .iter()
        .filter(|v| v.ineligible.is_none() && v.ring.is_some())
    {
        let Some(a) = vm
            .assessment
            .filter(|a| a.status == OperationStatus::Succeeded)
        else {
            continue;
        };
        let fam = families.entry(vm.family.as_str()).or_default();
        for p in &a.packages {
            if !spec.classifications.contains(&p.classification) || excluded(&spec.exclude, &p.name)
            {
                continue;
            }
            let e = fam
                .entry(p.name.as_str())
                .or_insert((p.version.as_str(), p.classification));
            if compare_versions(&p.version, e.0).is_gt() {
                *e = (p.version.as_str(), p.classification);
            }
        }
    }
    ReleaseManifest {
        frozen_time: Some(t(now)),
        families: families
            .into_iter()
            .map(|(f, pkgs)| ManifestFamily {
                image_family: f.to_string(),
                packages: pkgs
                    .into_iter()
                    .map(|(n, (v, c))| PinnedPackage {
                        name: n.to_string(),
                        version: v.to_string(),
                        classification: Some(c),
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// The manifest's packages this VM needs: those its assessment reports installed at another
/// version (a package the VM does not have is never added). None: no assessment yet.
pub fn packages_for(manifest: &ReleaseManifest, vm: &VmFacts<'_>) -> Option<Vec<PinnedPackage>> {
    let a = vm
        .assessment
        .filter(|a| a.status == OperationStatus::Succeeded)?;
    let fam = manifest
        .families
        .iter()
        .find(|f| f.image_family == vm.family);
    Some(
        fam.map(|f| {
            f.packages
                .iter()
                .filter(|p| {
                    a.packages.iter().any(|q| {
                        q.name == p.name
                            && q.installed_version.as_deref() != Some(p.version.as_str())
                    })
                })
                .cloned()
                .collect()
        })
        .unwrap_or_default(),
    )
}

/// The seed's lastPatchInstallationSummary for a VM's installation of this rollout.
pub fn installation_summary(
    spec: &PatchRolloutSpec,
    directive: &InstallationDirective,
    assessment: Option<&GuestAssessment>,
    result: Option<&GuestInstallation>,
) -> LastPatchInstallationSummary {
    let available = assessment
        .map(|a| a.packages.as_slice())
        .unwrap_or_default();
    let excluded_count = available
        .iter()
        .filter(|p| excluded(&spec.exclude, &p.name))
        .count() as i32;
    let not_selected = available
        .iter()
        .filter(|p| {
            !excluded(&spec.exclude, &p.name) && !spec.classifications.contains(&p.classification)
        })
        .count() as i32;
    let finished = result.filter(|r| {
        r.rollout == directive.rollout
            && r.wave == directive.wave
            && r.rollback == directive.rollback
    });
    match finished {
        None => LastPatchInstallationSummary {
            status: OperationStatus::InProgress,
            installed_patch_count: 0,
            pending_patch_count: directive.packages.len() as i32,
            failed_patch_count: 0,
            excluded_patch_count: excluded_count,
            not_selected_patch_count: not_selected,
            maintenance_window_exceeded: false,
            start_time: None,
            last_modified_time: None,
            error: None,
        },
        Some(r) => {
            let done = r.installed.len() + r.failed.len();
            LastPatchInstallationSummary {
                status: r.status,
                installed_patch_count: r.installed.len() as i32,
                pending_patch_count: directive.packages.len().saturating_sub(done) as i32,
                failed_patch_count: r.failed.len() as i32,
                excluded_patch_count: excluded_count,
                not_selected_patch_count: not_selected,
                maintenance_window_exceeded: r.maintenance_window_exceeded,
                start_time: r.start_time.clone(),
                last_modified_time: r.finish_time.clone(),
                error: r.error.clone(),
            }
        }
    }
}

/// `maxUnavailable` of a ring of `total` VMs (a percentage rounds down, but at least 1).
pub fn max_unavailable(v: &IntOrString, total: usize) -> usize {
    match v {
        IntOrString::Int(n) => (*n).max(1) as usize,
        IntOrString::String(s) => {
            let pct: usize = s.trim_end_matches('%').parse().unwrap_or(10);
            (total * pct / 100).max(1)
        }
    }
}

/// Failures a ring tolerates: `maxFailedPercent` of its eligible members, rounded down.
pub fn max_failed(percent: i32, total: usize) -> usize {
    total * percent.clamp(0, 100) as usize / 100
}

fn rollout_paused(spec: &PatchRolloutSpec) -> bool {
    spec.paused
}

/// The state of one VM in this rollout, before planning.
fn vm_state(
    input: &Input<'_>,
    vm: &VmFacts<'_>,
    manifest: Option<&ReleaseManifest>,
    failed_before: &BTreeSet<&str>,
    healthy_for: Duration,
    wake: &mut Option<Timestamp>,
) -> VmState {
    let now = input.now;
    let mine = vm.directive.filter(|d| d.rollout == input.name);
    if let Some(d) = mine {
        if d.rollback {
            return VmState::RolledBack;
        }
        if failed_before.contains(vm.name) {
            return VmState::Failed("failed earlier in this rollout".into());
        }
        let result = vm
            .result
            .filter(|r| r.rollout == d.rollout && r.wave == d.wave && !r.rollback);
        let Some(r) = result else {
            return VmState::Patching;
        };
        match r.status {
            OperationStatus::Succeeded => {
                let finished = r.finish_time.as_ref().map_or(now, |f| f.0);
                let proven = add(finished, healthy_for);
                if now >= proven {
                    return VmState::Succeeded;
                }
                if !vm.healthy {
                    return VmState::Failed(
                        "the guest reported itself unhealthy after the install".into(),
                    );
                }
                // Installed and proving healthy (a VM without heartbeat may be rebooting: only
                // the end of healthyFor tells).
                *wake = Some(wake.map_or(proven, |w| w.min(proven)));
                return VmState::Patching;
            }
            OperationStatus::Failed
                if r.maintenance_window_exceeded
                    && r.installed.is_empty()
                    && r.failed.is_empty() =>
            {
                // Never started: retried in the next window.
            }
            _ => {
                return VmState::Failed(r.error.clone().unwrap_or_else(|| {
                    format!("{} package(s) failed to install", r.failed.len())
                }));
            }
        }
    } else if let Some(reason) = &vm.ineligible {
        return VmState::Skipped(reason.clone());
    }
    let Some(manifest) = manifest else {
        // Before the first ring starts; the ring explains the wait.
        return VmState::Waiting(None);
    };
    match packages_for(manifest, vm) {
        None => VmState::Waiting(Some("waiting for a successful patch assessment".into())),
        Some(p) if p.is_empty() && mine.is_none() => VmState::UpToDate,
        Some(_) => VmState::Waiting(None),
    }
}

/// Why a waiting VM may not start now (None: it may).
fn not_ready(input: &Input<'_>, vm: &VmFacts<'_>, wake: &mut Option<Timestamp>) -> Option<String> {
    if !vm.running {
        return Some("no heartbeat: the VM is not running (it is patched when it returns)".into());
    }
    if let Some(d) = vm.directive.filter(|d| d.rollout != input.name)
        && vm
            .result
            .is_none_or(|r| r.rollout != d.rollout || r.wave != d.wave || r.rollback != d.rollback)
    {
        return Some(format!("busy with rollout {}", d.rollout));
    }
    if let Some((w, tz)) = &vm.window
        && !w.may_start(tz, input.now, input.settings.expected_duration)
    {
        if let Some(next) = w.next_opening(tz, input.now) {
            *wake = Some(wake.map_or(next, |x| x.min(next)));
            return Some(format!(
                "outside its maintenance window (or less than {} left); next opening {}",
                super::duration::format(input.settings.expected_duration),
                next.to_zoned(tz.clone()).strftime("%Y-%m-%d %H:%M %Z")
            ));
        }
        return Some("its maintenance window never opens".into());
    }
    None
}

fn condition(
    old: &[Condition],
    generation: Option<i64>,
    now: Timestamp,
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
) -> Condition {
    let s = if status { "True" } else { "False" };
    let last = old
        .iter()
        .find(|c| c.type_ == type_ && c.status == s)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(t(now));
    Condition {
        type_: type_.into(),
        status: s.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: last,
    }
}

/// Decide the rollout.
pub fn decide(input: &Input<'_>) -> Outcome {
    let now = input.now;
    let spec = input.spec;
    let old = input.status.cloned().unwrap_or_default();
    let mut status = PatchRolloutStatus {
        observed_generation: input.generation,
        region_pairs: input
            .settings
            .pairs
            .iter()
            .map(|(a, b)| format!("{a}/{b}"))
            .collect(),
        ..old.clone()
    };
    let mut events = Vec::new();
    let mut writes = Vec::new();
    let mut wake: Option<Timestamp> = None;
    let release = spec.release_time.0;

    // Sticky failures, by VM.
    let failed_before: BTreeSet<&str> = old
        .rings
        .iter()
        .flat_map(|r| r.waves.iter())
        .flat_map(|w| w.failed_members.iter().map(String::as_str))
        .collect();

    let manifest_frozen = old.manifest.is_some();
    let mut manifest = old.manifest.clone();

    let mut states: Vec<VmState> = input
        .vms
        .iter()
        .map(|vm| {
            let healthy_for = vm.ring.map_or(Duration::ZERO, |r| {
                dur(&input.rings[r].spec.health_gate.healthy_for)
            });
            vm_state(
                input,
                vm,
                manifest.as_ref(),
                &failed_before,
                healthy_for,
                &mut wake,
            )
        })
        .collect();
    for (i, vm) in input.vms.iter().enumerate() {
        if vm.ring.is_none() && !matches!(states[i], VmState::Skipped(_)) {
            states[i] = VmState::Skipped("in no UpdateRing".into());
        }
    }

    let terminal = matches!(
        old.phase,
        Some(RolloutPhase::Succeeded | RolloutPhase::RolledBack)
    );
    let mut next_wave = input
        .vms
        .iter()
        .filter_map(|v| {
            v.directive
                .filter(|d| d.rollout == input.name)
                .map(|d| d.wave)
        })
        .chain(
            old.rings
                .iter()
                .flat_map(|r| r.waves.iter().map(|w| w.index)),
        )
        .max()
        .unwrap_or(0)
        + 1;

    // Ring by ring.
    let mut rings: Vec<RingProgress> = Vec::new();
    let mut previous_done: Option<Timestamp> = Some(release); // when the previous ring's bake ended
    let mut halted_ring: Option<usize> = None;
    // A halt is final: nothing new starts (only rolling back), even if the failures it counted
    // are later patched over by another rollout.
    let halted_before = old.phase == Some(RolloutPhase::Halted);
    let active = input.blocked_by.is_none()
        && now >= release
        && !terminal
        && !spec.rollback
        && !halted_before;
    for (ri, ring) in input.rings.iter().enumerate() {
        let prev = old
            .rings
            .iter()
            .find(|r| r.name == ring.name)
            .cloned()
            .unwrap_or_default();
        let mut p = RingProgress {
            name: ring.name.to_string(),
            ..prev.clone()
        };
        let members: Vec<usize> = (0..input.vms.len())
            .filter(|i| input.vms[*i].ring == Some(ri))
            .collect();
        let deferral = if spec.expedite {
            Duration::ZERO
        } else {
            dur(&ring.spec.deferral)
        };
        let not_before = previous_done.map(|d| add(release, deferral).max(d));
        p.start_not_before = not_before.map(t);
        // A deadline of 0s (Autopatch's Test ring) means "at once", not a deadline to track.
        let deadline = dur(&ring.spec.deadline);
        p.deadline = not_before
            .filter(|_| !deadline.is_zero())
            .map(|n| t(add(n, deadline)));
        let eligible: Vec<usize> = members
            .iter()
            .copied()
            .filter(|i| !matches!(states[*i], VmState::Skipped(_)))
            .collect();
        p.total = eligible.len() as i32;
        let limits = Limits {
            max_unavailable: max_unavailable(&ring.spec.max_unavailable, eligible.len()),
            max_failed: max_failed(ring.spec.health_gate.max_failed_percent, eligible.len()),
        };
        // The manifest is frozen from assessments: the first ring waits until every running,
        // eligible member of it has reported one.
        let unassessed = manifest.is_none()
            && eligible.iter().any(|i| {
                let vm = &input.vms[*i];
                vm.running
                    && !vm
                        .assessment
                        .is_some_and(|a| a.status == OperationStatus::Succeeded)
            });
        let may_start = active && !unassessed && not_before.is_some_and(|n| now >= n);
        if let Some(n) = not_before
            && now < n
        {
            wake = Some(wake.map_or(n, |w| w.min(n)));
        }
        // The first ring starting freezes the manifest.
        if may_start && manifest.is_none() {
            let m = freeze_manifest(spec, input.vms, now);
            let count: usize = m.families.iter().map(|f| f.packages.len()).sum();
            events.push(EventSpec {
                warning: false,
                reason: "ManifestFrozen",
                action: "Freeze",
                note: format!(
                    "release manifest frozen: {count} package version(s) over {} image famil(ies); every ring installs exactly these",
                    m.families.len()
                ),
            });
            manifest = Some(m);
            // States depended on the manifest.
            for (state, vm) in states.iter_mut().zip(input.vms) {
                if matches!(state, VmState::Waiting(_)) {
                    let healthy_for = vm.ring.map_or(Duration::ZERO, |r| {
                        dur(&input.rings[r].spec.health_gate.healthy_for)
                    });
                    *state = vm_state(
                        input,
                        vm,
                        manifest.as_ref(),
                        &failed_before,
                        healthy_for,
                        &mut wake,
                    );
                }
            }
        }
        if may_start && p.started_time.is_none() {
            p.started_time = Some(t(now));
            events.push(EventSpec {
                warning: false,
                reason: "RingStarted",
                action: "Start",
                note: format!("ring {} started ({} VMs)", ring.name, eligible.len()),
            });
        }
        let started = p.started_time.is_some();

        // Plan.
        let topo = Topology::new(
            &eligible
                .iter()
                .map(|i| input.vms[*i].placement.clone())
                .collect::<Vec<_>>(),
            &input.settings.pairs,
        );
        let planner_states: Vec<State> = eligible.iter().map(|i| states[*i].planner()).collect();
        let paused = ring.spec.paused || rollout_paused(spec);
        let mut reasons: HashMap<usize, String> = HashMap::new();
        for i in &eligible {
            if matches!(states[*i], VmState::Waiting(None))
                && let Some(r) = not_ready(input, &input.vms[*i], &mut wake)
            {
                reasons.insert(*i, r);
            }
        }
        let ready = |v: u32| {
            !paused && started && may_start && !reasons.contains_key(&eligible[v as usize])
        };
        let plan = planner::plan(&topo, &planner_states, &ready, limits);
        let failed_now: Vec<usize> = eligible
            .iter()
            .copied()
            .filter(|i| matches!(states[*i], VmState::Failed(_) | VmState::RolledBack))
            .collect();
        let mut new_wave: Vec<usize> = Vec::new();
        if !plan.halted && active {
            for v in &plan.start {
                let i = eligible[*v as usize];
                let vm = &input.vms[i];
                let Some(packages) = manifest.as_ref().and_then(|m| packages_for(m, vm)) else {
                    continue;
                };
                let window_end = vm
                    .window
                    .as_ref()
                    .and_then(|(w, tz)| w.current(tz, now))
                    .map(|(_, end)| t(end));
                let directive = InstallationDirective {
                    rollout: input.name.to_string(),
                    wave: next_wave,
                    packages,
                    window_end,
                    reboot_setting: vm.reboot_setting,
                    hotpatch_only: vm.hotpatch,
                    rollback: false,
                };
                let summary = installation_summary(spec, &directive, vm.assessment, None);
                writes.push(VmWrite {
                    vm: i,
                    directive,
                    summary: Some(summary),
                });
                states[i] = VmState::Patching;
                new_wave.push(i);
            }
        }
        // Explain why waiting VMs wait.
        for i in &eligible {
            if let VmState::Waiting(None) = states[*i] {
                let why = if !started || !may_start {
                    match not_before {
                        Some(n) if now >= n && unassessed && active => Some(format!(
                            "ring {} starts when its running VMs have reported a patch assessment (the manifest is frozen from them)",
                            ring.name
                        )),
                        Some(n) if now < n => Some(format!("ring {} starts at {}", ring.name, n)),
                        _ if input.blocked_by.is_some() => Some(format!(
                            "waiting for rollout {}",
                            input.blocked_by.clone().unwrap_or_default()
                        )),
                        _ => Some(format!("ring {} waits for the previous ring", ring.name)),
                    }
                } else if paused {
                    Some(if ring.spec.paused {
                        format!("ring {} is paused", ring.name)
                    } else {
                        "the rollout is paused".to_string()
                    })
                } else if plan.halted {
                    Some(format!("ring {} is halted", ring.name))
                } else {
                    reasons.get(i).cloned().or_else(|| {
                        Some(
                            "waiting for its turn: one zone per region, one update domain per availability set, maxUnavailable, region phases"
                                .into(),
                        )
                    })
                };
                states[*i] = VmState::Waiting(why);
            }
        }

        // Waves: the old record, waves found on the VMs that the record misses (a write that
        // did not reach the rollout's status), and the one started now.
        let mut waves: BTreeMap<i32, Wave> =
            prev.waves.iter().map(|w| (w.index, w.clone())).collect();
        for i in &members {
            if let Some(d) = input.vms[*i]
                .directive
                .filter(|d| d.rollout == input.name && !d.rollback)
                && !waves
                    .get(&d.wave)
                    .is_some_and(|w| w.members.iter().any(|m| m == input.vms[*i].name))
                && !new_wave.contains(i)
            {
                let w = waves.entry(d.wave).or_insert_with(|| Wave {
                    index: d.wave,
                    started_time: Some(t(now)),
                    ..Default::default()
                });
                w.members.push(input.vms[*i].name.to_string());
            }
        }
        if !new_wave.is_empty() {
            waves.insert(
                next_wave,
                Wave {
                    index: next_wave,
                    members: new_wave
                        .iter()
                        .map(|i| input.vms[*i].name.to_string())
                        .collect(),
                    started_time: Some(t(now)),
                    ..Default::default()
                },
            );
            next_wave += 1;
        }
        let by_name: HashMap<&str, usize> =
            members.iter().map(|i| (input.vms[*i].name, *i)).collect();
        for w in waves.values_mut() {
            let (mut ok, mut bad, mut busy) = (0, 0, 0);
            for m in &w.members {
                match by_name.get(m.as_str()).map(|i| &states[*i]) {
                    Some(VmState::Succeeded | VmState::UpToDate) => ok += 1,
                    Some(VmState::Failed(_) | VmState::RolledBack) => {
                        bad += 1;
                        if !w.failed_members.contains(m) {
                            w.failed_members.push(m.clone());
                        }
                    }
                    Some(VmState::Patching) => {
                        // Part of this wave only while its directive is this wave's.
                        let i = by_name[m.as_str()];
                        if input.vms[i]
                            .directive
                            .is_some_and(|d| d.rollout == input.name && d.wave == w.index)
                            || new_wave.contains(&i)
                        {
                            busy += 1;
                        }
                    }
                    _ => {}
                }
            }
            w.succeeded = ok;
            w.failed = bad;
            if busy == 0 && w.completed_time.is_none() {
                w.completed_time = Some(t(now));
            }
        }
        p.waves = waves.into_values().collect();
        p.succeeded = eligible
            .iter()
            .filter(|i| matches!(states[**i], VmState::Succeeded | VmState::UpToDate))
            .count() as i32;
        p.failed = failed_now.len() as i32;
        p.in_progress = eligible
            .iter()
            .filter(|i| states[**i] == VmState::Patching)
            .count() as i32;

        // Phase.
        let was = prev.phase;
        let all_done = plan.done || eligible.is_empty();
        let phase = if plan.halted {
            if halted_ring.is_none() {
                halted_ring = Some(ri);
            }
            RingPhase::Halted
        } else if !started {
            RingPhase::Waiting
        } else if all_done {
            let completed = prev.completed_time.as_ref().map_or(now, |c| c.0);
            if p.completed_time.is_none() {
                p.completed_time = Some(t(completed));
            }
            let bake_end = add(completed, dur(&ring.spec.health_gate.bake_time));
            if now >= bake_end {
                RingPhase::Succeeded
            } else {
                wake = Some(wake.map_or(bake_end, |w| w.min(bake_end)));
                RingPhase::Baking
            }
        } else if paused {
            RingPhase::Paused
        } else {
            RingPhase::Progressing
        };
        if !all_done {
            p.completed_time = None;
        }
        if phase == RingPhase::Halted
            && was != Some(RingPhase::Halted)
            && was != Some(RingPhase::RolledBack)
        {
            events.push(EventSpec {
                warning: true,
                reason: "RingHalted",
                action: "Halt",
                note: format!(
                    "ring {} halted: {} of {} VMs failed, more than maxFailedPercent {}% allows ({})",
                    ring.name,
                    failed_now.len(),
                    eligible.len(),
                    ring.spec.health_gate.max_failed_percent,
                    failed_now
                        .iter()
                        .take(5)
                        .map(|i| match &states[*i] {
                            VmState::Failed(r) => format!("{}: {r}", input.vms[*i].name),
                            _ => input.vms[*i].name.to_string(),
                        })
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            });
        }
        if phase == RingPhase::Succeeded && was != Some(RingPhase::Succeeded) {
            events.push(EventSpec {
                warning: false,
                reason: "RingSucceeded",
                action: "Complete",
                note: format!(
                    "ring {} passed its health gate: {} succeeded, {} failed of {}",
                    ring.name, p.succeeded, p.failed, p.total
                ),
            });
        }
        let late = p.deadline.as_ref().is_some_and(|d| {
            now > d.0 && !matches!(phase, RingPhase::Succeeded | RingPhase::Baking)
        });
        if late && !prev.deadline_missed {
            events.push(EventSpec {
                warning: true,
                reason: "RingDeadlineMissed",
                action: "Track",
                note: format!(
                    "ring {} has not finished by its deadline {}",
                    ring.name,
                    p.deadline
                        .as_ref()
                        .map(|d| d.0.to_string())
                        .unwrap_or_default()
                ),
            });
        }
        if let Some(d) = p.deadline.as_ref().map(|d| d.0)
            && now <= d
        {
            let d = add(d, Duration::from_secs(1));
            wake = Some(wake.map_or(d, |w| w.min(d)));
        }
        p.deadline_missed = late
            || (prev.deadline_missed && !matches!(phase, RingPhase::Succeeded | RingPhase::Baking));
        p.phase = Some(phase);
        previous_done = match phase {
            RingPhase::Succeeded => p
                .completed_time
                .as_ref()
                .map(|c| add(c.0, dur(&ring.spec.health_gate.bake_time))),
            _ => None,
        };
        rings.push(p);
    }
    // Rollback on failure: the halted ring's failed waves return to their recorded versions.
    // A VM to roll back installed something of this rollout, or is being rolled back already.
    let patched_here = |vm: &VmFacts<'_>| {
        vm.directive
            .is_some_and(|d| d.rollout == input.name && d.rollback)
            || vm
                .result
                .is_some_and(|r| r.rollout == input.name && !r.rollback && !r.installed.is_empty())
    };
    let rollback_set: Vec<usize> = if spec.rollback {
        (0..input.vms.len())
            .filter(|i| patched_here(&input.vms[*i]))
            .collect()
    } else if let Some(hr) = halted_ring.filter(|_| spec.rollback_on_failure) {
        let failed_waves: BTreeSet<i32> = rings[hr]
            .waves
            .iter()
            .filter(|w| w.failed > 0)
            .map(|w| w.index)
            .collect();
        (0..input.vms.len())
            .filter(|i| {
                let vm = &input.vms[*i];
                vm.ring == Some(hr)
                    && vm
                        .directive
                        .is_some_and(|d| d.rollout == input.name && failed_waves.contains(&d.wave))
                    && patched_here(vm)
            })
            .collect()
    } else {
        Vec::new()
    };
    let mut rolled_back = 0;
    for i in &rollback_set {
        let vm = &input.vms[*i];
        let (Some(d), Some(r)) = (vm.directive, vm.result) else {
            continue;
        };
        if d.rollout == input.name && d.rollback {
            if r.rollout == input.name && r.rollback && r.wave == d.wave {
                rolled_back += 1;
            }
            continue;
        }
        let directive = InstallationDirective {
            rollout: input.name.to_string(),
            wave: r.wave,
            packages: Vec::new(),
            window_end: None,
            reboot_setting: vm.reboot_setting,
            hotpatch_only: vm.hotpatch,
            rollback: true,
        };
        writes.push(VmWrite {
            vm: *i,
            directive,
            summary: None,
        });
    }
    if let Some(hr) = halted_ring
        && !rollback_set.is_empty()
        && rolled_back == rollback_set.len()
    {
        rings[hr].phase = Some(RingPhase::RolledBack);
    }

    // Summaries of finished installs (for VMs whose directive is this rollout's and not new).
    for (i, vm) in input.vms.iter().enumerate() {
        if writes.iter().any(|w| w.vm == i) {
            continue;
        }
        if let Some(d) = vm
            .directive
            .filter(|d| d.rollout == input.name && !d.rollback)
            && !terminal
        {
            let summary = installation_summary(spec, d, vm.assessment, vm.result);
            writes.push(VmWrite {
                vm: i,
                directive: d.clone(),
                summary: Some(summary),
            });
        }
    }

    // Rollout phase.
    let was = old.phase;
    let phase = if spec.rollback {
        RolloutPhase::RolledBack
    } else if terminal {
        was.unwrap_or(RolloutPhase::Succeeded)
    } else if input.blocked_by.is_some() || now < release {
        if now < release {
            wake = Some(wake.map_or(release, |w| w.min(release)));
        }
        RolloutPhase::Pending
    } else if halted_ring.is_some() || halted_before {
        RolloutPhase::Halted
    } else if rings.iter().all(|r| r.phase == Some(RingPhase::Succeeded)) {
        RolloutPhase::Succeeded
    } else if spec.paused {
        RolloutPhase::Paused
    } else {
        RolloutPhase::Progressing
    };
    // The rings as decided now, one per input ring (the record below may be the old one).
    let computed = rings.clone();
    if terminal {
        // Keep the record as it was, except the SLO below.
        rings = old.rings.clone();
    } else {
        for r in &mut rings {
            if spec.rollback && r.phase != Some(RingPhase::Succeeded) && r.started_time.is_some() {
                r.phase = Some(RingPhase::RolledBack);
            }
        }
    }
    status.rings = rings;
    status.phase = Some(phase);
    status.current_ring = status
        .rings
        .iter()
        .find(|r| !matches!(r.phase, Some(RingPhase::Succeeded)))
        .map(|r| r.name.clone());
    if !manifest_frozen {
        status.manifest = manifest;
    }
    if phase != was.unwrap_or(RolloutPhase::Pending) || was.is_none() {
        let (warning, reason, note) = match phase {
            RolloutPhase::Halted => (
                true,
                "RolloutHalted",
                format!(
                    "rollout halted in ring {}: failures exceed the health gate{}",
                    halted_ring.map(|r| input.rings[r].name).unwrap_or_default(),
                    if spec.rollback_on_failure {
                        "; the failed waves roll back"
                    } else {
                        ""
                    }
                ),
            ),
            RolloutPhase::Succeeded => (
                false,
                "RolloutSucceeded",
                "every ring passed its health gate".to_string(),
            ),
            RolloutPhase::RolledBack => (
                true,
                "RolloutRolledBack",
                format!(
                    "rolling back: {} VM(s) return to the versions recorded before the install",
                    rollback_set.len()
                ),
            ),
            RolloutPhase::Paused => (
                false,
                "RolloutPaused",
                "paused: waves in flight finish, no new wave starts".to_string(),
            ),
            RolloutPhase::Progressing => (false, "RolloutProgressing", "progressing".to_string()),
            RolloutPhase::Pending => (
                false,
                "RolloutPending",
                match &input.blocked_by {
                    Some(b) => format!("waiting for rollout {b} to finish"),
                    None => format!("waiting for the release time {release}"),
                },
            ),
        };
        if was.is_some() || phase != RolloutPhase::Pending {
            events.push(EventSpec {
                warning,
                reason,
                action: "Rollout",
                note,
            });
        }
    }

    // SLO: eligible VMs (in a ring, not skipped) on the manifest.
    let eligible: Vec<usize> = (0..input.vms.len())
        .filter(|i| input.vms[*i].ring.is_some() && !matches!(states[*i], VmState::Skipped(_)))
        .collect();
    let on = eligible
        .iter()
        .filter(|i| matches!(states[**i], VmState::Succeeded | VmState::UpToDate))
        .count();
    let within = dur(&spec.slo.within);
    let deadline = add(release, within);
    let target = spec.slo.target_percent.clamp(1, 100) as usize;
    let met = eligible.is_empty() || on * 100 >= target * eligible.len();
    // Projection: rings finish by their deadlines (the later of start-not-before and now, plus
    // the ring's deadline, plus bake) unless halted, rolled back or already late.
    let mut est = release;
    for (ring, r) in input.rings.iter().zip(&computed) {
        if r.phase == Some(RingPhase::Succeeded) {
            est = r
                .completed_time
                .as_ref()
                .map_or(est, |c| add(c.0, dur(&ring.spec.health_gate.bake_time)));
            continue;
        }
        let deferral = if spec.expedite {
            Duration::ZERO
        } else {
            dur(&ring.spec.deferral)
        };
        let start = add(release, deferral)
            .max(est)
            .max(r.started_time.as_ref().map_or(est, |s| s.0));
        let finish = add(start, dur(&ring.spec.deadline)).max(now);
        est = add(finish, dur(&ring.spec.health_gate.bake_time));
    }
    let projected = met
        || (!matches!(phase, RolloutPhase::Halted | RolloutPhase::RolledBack)
            && now <= deadline
            && est <= deadline);
    let percent = if eligible.is_empty() {
        "100%".to_string()
    } else {
        format!("{:.1}%", on as f64 * 100.0 / eligible.len() as f64)
    };
    let slo = SloStatus {
        eligible: eligible.len() as i32,
        on_manifest: on as i32,
        percent,
        deadline: Some(t(deadline)),
        projected_to_meet: Some(projected),
    };
    if !projected && old.slo.as_ref().and_then(|s| s.projected_to_meet) != Some(false) {
        events.push(EventSpec {
            warning: true,
            reason: "SLOAtRisk",
            action: "Project",
            note: format!(
                "the projection misses the target: {}% of {} eligible VMs on the manifest by {} (now {} on it)",
                target,
                eligible.len(),
                deadline,
                on
            ),
        });
    }
    if !met && now < deadline {
        wake = Some(wake.map_or(deadline, |w| w.min(deadline)));
    }
    status.slo = Some(slo);

    // Conditions.
    let generation = input.generation;
    let mut conds = Vec::new();
    conds.push(match halted_ring {
        Some(hr) => condition(
            &old.conditions,
            generation,
            now,
            HALTED,
            true,
            "FailureBudgetExceeded",
            format!(
                "ring {}: {} of {} VMs failed (maxFailedPercent {}){}",
                input.rings[hr].name,
                computed[hr].failed,
                computed[hr].total,
                input.rings[hr].spec.health_gate.max_failed_percent,
                if spec.rollback_on_failure {
                    "; failed waves rolled back"
                } else {
                    ""
                }
            ),
        ),
        None => condition(
            &old.conditions,
            generation,
            now,
            HALTED,
            false,
            "WithinBudget",
            "failures are within every ring's health gate".into(),
        ),
    });
    conds.push(condition(
        &old.conditions,
        generation,
        now,
        PAUSED,
        phase == RolloutPhase::Paused,
        if phase == RolloutPhase::Paused {
            "PausedByUser"
        } else {
            "NotPaused"
        },
        if phase == RolloutPhase::Paused {
            "spec.paused is true: no new wave starts".into()
        } else {
            "not paused".into()
        },
    ));
    conds.push(condition(
        &old.conditions,
        generation,
        now,
        SLO_AT_RISK,
        !projected,
        if projected {
            "OnTrack"
        } else {
            "ProjectedToMiss"
        },
        format!(
            "{} of {} eligible VMs on the manifest; target {}% by {}",
            on,
            eligible.len(),
            target,
            deadline
        ),
    ));
    status.conditions = conds;

    // Directive writes only when they differ from what the VM has.
    writes.retain(|w| {
        let vm = &input.vms[w.vm];
        vm.directive != Some(&w.directive)
            || (w.summary.is_some() && w.summary.as_ref() != vm.summary)
    });

    Outcome {
        status,
        writes,
        events,
        requeue_after: wake.map(|w| {
            Duration::try_from(w.duration_since(now))
                .unwrap_or(Duration::ZERO)
                .max(Duration::from_millis(1))
        }),
        states,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{AvailablePackage, HealthGate, MaintenanceWindow, SloTarget};

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    fn ring(order: i32, deferral: &str, bake: &str, max_failed: i32) -> UpdateRingSpec {
        UpdateRingSpec {
            order,
            selector: None,
            share: Some(25),
            deferral: deferral.into(),
            deadline: "48h".into(),
            max_unavailable: IntOrString::Int(2),
            paused: false,
            health_gate: HealthGate {
                max_failed_percent: max_failed,
                bake_time: bake.into(),
                healthy_for: "30m".into(),
            },
            maintenance_window: None,
        }
    }

    fn pkg(name: &str, version: &str, installed: &str, c: Classification) -> AvailablePackage {
        AvailablePackage {
            name: name.into(),
            version: version.into(),
            installed_version: Some(installed.into()),
            classification: c,
        }
    }

    struct SimVm {
        name: String,
        ring: usize,
        placement: Placement,
        assessment: GuestAssessment,
        directive: Option<InstallationDirective>,
        result: Option<GuestInstallation>,
        summary: Option<LastPatchInstallationSummary>,
        healthy: bool,
        running: bool,
        fail: bool,
        window: Option<(Window, TimeZone)>,
        ineligible: Option<String>,
        installs: Vec<(i32, Vec<PinnedPackage>)>,
    }

    struct World {
        now: Timestamp,
        spec: PatchRolloutSpec,
        status: Option<PatchRolloutStatus>,
        rings: Vec<(String, UpdateRingSpec)>,
        vms: Vec<SimVm>,
        events: Vec<EventSpec>,
        settings: Settings,
    }

    impl World {
        fn new(per_ring: usize, rings: Vec<(String, UpdateRingSpec)>) -> World {
            let mut vms = Vec::new();
            for (ri, _) in rings.iter().enumerate() {
                for i in 0..per_ring {
                    vms.push(SimVm {
                        name: format!("r{ri}-vm{i}"),
                        ring: ri,
                        placement: Placement {
                            region: if i % 2 == 0 {
                                "east".into()
                            } else {
                                "west".into()
                            },
                            zone: Some(format!("{}", i % 3 + 1)),
                            availability_set: None,
                            update_domain: 0,
                        },
                        assessment: GuestAssessment {
                            request_id: "a".into(),
                            status: OperationStatus::Succeeded,
                            start_time: None,
                            finish_time: None,
                            packages: vec![
                                pkg("libssl", "1.1", "1.0", Classification::Security),
                                pkg("kernel", "5.2", "5.0", Classification::Critical),
                                pkg("tool", "2.0", "1.0", Classification::Other),
                                pkg("secret-agent", "9", "8", Classification::Security),
                            ],
                            reboot_pending: false,
                            error: None,
                        },
                        directive: None,
                        result: None,
                        summary: None,
                        healthy: true,
                        running: true,
                        fail: false,
                        window: None,
                        ineligible: None,
                        installs: Vec::new(),
                    });
                }
            }
            World {
                now: ts("2026-11-10T18:00:00Z"),
                spec: PatchRolloutSpec {
                    release_time: Time(ts("2026-11-10T18:00:00Z")),
                    classifications: vec![Classification::Critical, Classification::Security],
                    expedite: false,
                    paused: false,
                    rollback_on_failure: false,
                    rollback: false,
                    exclude: vec!["secret-*".into()],
                    slo: SloTarget::default(),
                },
                status: None,
                rings,
                vms,
                events: Vec::new(),
                settings: Settings {
                    pairs: vec![("east".into(), "west".into())],
                    expected_duration: Duration::from_secs(1800),
                },
            }
        }

        fn decide(&self) -> Outcome {
            let rings: Vec<RingFacts> = self
                .rings
                .iter()
                .map(|(n, s)| RingFacts { name: n, spec: s })
                .collect();
            let vms: Vec<VmFacts> = self
                .vms
                .iter()
                .map(|v| VmFacts {
                    name: &v.name,
                    ring: Some(v.ring),
                    placement: v.placement.clone(),
                    ineligible: v.ineligible.clone(),
                    running: v.running,
                    window: v.window.clone(),
                    reboot_setting: Some(RebootSetting::IfRequired),
                    hotpatch: false,
                    family: "Canonical/ubuntu/22_04-lts".into(),
                    assessment: Some(&v.assessment),
                    directive: v.directive.as_ref(),
                    result: v.result.as_ref(),
                    summary: v.summary.as_ref(),
                    healthy: v.healthy,
                })
                .collect();
            decide(&Input {
                now: self.now,
                name: "release-2026-11",
                generation: Some(1),
                spec: &self.spec,
                status: self.status.as_ref(),
                rings: &rings,
                vms: &vms,
                blocked_by: None,
                settings: &self.settings,
            })
        }

        /// Decide, apply the writes and the status, then let every guest act.
        fn step(&mut self) -> Outcome {
            let out = self.decide();
            for w in &out.writes {
                let vm = &mut self.vms[w.vm];
                vm.directive = Some(w.directive.clone());
                if w.summary.is_some() {
                    vm.summary = w.summary.clone();
                }
            }
            self.status = Some(out.status.clone());
            self.events.extend(out.events.clone());
            let now = self.now;
            for vm in &mut self.vms {
                let Some(d) = vm.directive.clone() else {
                    continue;
                };
                if !vm.running
                    || vm.result.as_ref().is_some_and(|r| {
                        r.rollout == d.rollout && r.wave == d.wave && r.rollback == d.rollback
                    })
                {
                    continue;
                }
                vm.installs.push((d.wave, d.packages.clone()));
                vm.result = Some(GuestInstallation {
                    rollout: d.rollout.clone(),
                    wave: d.wave,
                    rollback: d.rollback,
                    status: if vm.fail {
                        OperationStatus::Failed
                    } else {
                        OperationStatus::Succeeded
                    },
                    start_time: Some(Time(now)),
                    finish_time: Some(Time(now)),
                    installed: if vm.fail || d.rollback {
                        vec![]
                    } else {
                        d.packages.clone()
                    },
                    failed: if vm.fail { d.packages.clone() } else { vec![] },
                    previous_versions: vec![],
                    reboot_pending: false,
                    maintenance_window_exceeded: false,
                    error: vm.fail.then(|| "dpkg failed".to_string()),
                });
            }
            out
        }

        fn run_until(&mut self, end: Timestamp, tick: Duration) {
            while self.now < end {
                self.step();
                self.now = add(self.now, tick);
            }
        }

        fn ring_phase(&self, i: usize) -> Option<RingPhase> {
            self.status
                .as_ref()
                .and_then(|s| s.rings.get(i))
                .and_then(|r| r.phase)
        }

        fn reasons(&self) -> Vec<&'static str> {
            self.events.iter().map(|e| e.reason).collect()
        }
    }

    fn four_rings() -> Vec<(String, UpdateRingSpec)> {
        vec![
            ("test".into(), ring(0, "0s", "1h", 10)),
            ("first".into(), ring(1, "24h", "1h", 10)),
            ("fast".into(), ring(2, "144h", "1h", 10)),
            ("broad".into(), ring(3, "216h", "1h", 10)),
        ]
    }

    #[test]
    fn version_comparison_is_numeric_and_tilde_sorts_first() {
        use std::cmp::Ordering::*;
        assert_eq!(compare_versions("1.10", "1.9"), Greater);
        assert_eq!(compare_versions("2.0~rc1", "2.0"), Less);
        assert_eq!(compare_versions("1.0-1ubuntu2", "1.0-1ubuntu10"), Less);
        assert_eq!(compare_versions("5.2", "5.2"), Equal);
        assert_eq!(compare_versions("001", "1"), Equal);
    }

    #[test]
    fn pending_before_release_then_the_first_ring_freezes_the_manifest() {
        let mut w = World::new(4, four_rings());
        w.now = ts("2026-11-10T17:00:00Z");
        let out = w.step();
        assert_eq!(out.status.phase, Some(RolloutPhase::Pending));
        assert!(out.writes.is_empty());
        assert!(out.status.manifest.is_none());
        assert_eq!(out.requeue_after, Some(Duration::from_secs(3600)));

        w.now = ts("2026-11-10T18:00:00Z");
        let out = w.step();
        assert_eq!(out.status.phase, Some(RolloutPhase::Progressing));
        let m = out.status.manifest.clone().expect("frozen");
        let names: Vec<_> = m.families[0]
            .packages
            .iter()
            .map(|p| (p.name.as_str(), p.version.as_str()))
            .collect();
        // Classification filter (no "tool"), exclusion (no "secret-agent").
        assert_eq!(names, vec![("kernel", "5.2"), ("libssl", "1.1")]);
        assert!(w.reasons().contains(&"ManifestFrozen"));
        assert!(w.reasons().contains(&"RingStarted"));
        // Only ring "test" VMs were started, with the manifest's versions.
        assert!(!out.writes.is_empty());
        for wr in &out.writes {
            assert_eq!(w.vms[wr.vm].ring, 0);
            assert_eq!(wr.directive.packages.len(), 2);
            let s = wr.summary.as_ref().expect("summary");
            assert_eq!(
                (
                    s.not_selected_patch_count,
                    s.excluded_patch_count,
                    s.pending_patch_count
                ),
                (1, 1, 2)
            );
        }
    }

    #[test]
    fn rings_honour_deferral_and_bake_and_later_rings_install_the_frozen_manifest() {
        let mut w = World::new(6, four_rings());
        // A newer libssl appears after the freeze: it must never be installed by this rollout.
        w.run_until(ts("2026-11-10T20:00:00Z"), Duration::from_secs(600));
        assert!(
            w.status
                .as_ref()
                .and_then(|s| s.manifest.as_ref())
                .is_some()
        );
        for vm in w.vms.iter_mut() {
            vm.assessment.packages[0].version = "1.2".into();
        }
        w.run_until(ts("2026-11-25T00:00:00Z"), Duration::from_secs(600));
        let st = w.status.clone().expect("status");
        assert_eq!(st.phase, Some(RolloutPhase::Succeeded), "{st:#?}");
        for vm in &w.vms {
            assert_eq!(vm.installs.len(), 1, "{} installed once", vm.name);
            assert!(
                vm.installs[0]
                    .1
                    .iter()
                    .any(|p| p.name == "libssl" && p.version == "1.1")
            );
        }
        let release = ts("2026-11-10T18:00:00Z");
        for (i, (_, spec)) in w.rings.iter().enumerate() {
            let r = &st.rings[i];
            let started = r.started_time.as_ref().expect("started").0;
            assert!(
                started >= add(release, dur(&spec.deferral)),
                "ring {i} deferral"
            );
            if i > 0 {
                let prev = st.rings[i - 1]
                    .completed_time
                    .as_ref()
                    .expect("prev completed")
                    .0;
                assert!(started >= add(prev, dur("1h")), "ring {i} bake time");
            }
        }
        assert_eq!(
            st.slo.as_ref().map(|s| (s.eligible, s.on_manifest)),
            Some((24, 24))
        );
        assert!(w.reasons().contains(&"RolloutSucceeded"));
    }

    #[test]
    fn expedite_skips_deferrals() {
        let mut w = World::new(2, four_rings());
        w.spec.expedite = true;
        w.run_until(ts("2026-11-11T06:00:00Z"), Duration::from_secs(600));
        assert_eq!(
            w.status.as_ref().and_then(|s| s.phase),
            Some(RolloutPhase::Succeeded)
        );
    }

    #[test]
    fn failures_past_the_budget_halt_with_event_and_condition_and_roll_back() {
        let mut w = World::new(6, four_rings());
        w.spec.rollback_on_failure = true;
        // The patch breaks ring "first": its VMs install fine but report themselves unhealthy.
        for vm in w.vms.iter_mut().filter(|v| v.ring == 1) {
            vm.healthy = false;
        }
        w.run_until(ts("2026-11-14T00:00:00Z"), Duration::from_secs(600));
        let st = w.status.clone().expect("status");
        assert_eq!(st.phase, Some(RolloutPhase::Halted));
        assert_eq!(w.ring_phase(0), Some(RingPhase::Succeeded));
        assert_eq!(w.ring_phase(1), Some(RingPhase::RolledBack));
        assert_eq!(w.ring_phase(2), Some(RingPhase::Waiting));
        assert!(w.reasons().contains(&"RingHalted"));
        assert!(w.reasons().contains(&"RolloutHalted"));
        let halted = st
            .conditions
            .iter()
            .find(|c| c.type_ == HALTED)
            .expect("condition");
        assert_eq!(halted.status, "True");
        assert!(halted.message.contains("first"), "{}", halted.message);
        // Budget: 10% of 6 is 0 failures, so the first failure halts; nothing beyond the first
        // wave that failed is installed, and the failed ones were rolled back.
        let started: Vec<_> = w
            .vms
            .iter()
            .filter(|v| v.ring == 1 && !v.installs.is_empty())
            .collect();
        assert!(!started.is_empty());
        for v in &started {
            assert!(
                v.directive.as_ref().is_some_and(|d| d.rollback),
                "{} rolled back",
                v.name
            );
        }
        assert!(
            w.vms
                .iter()
                .filter(|v| v.ring >= 2)
                .all(|v| v.installs.is_empty())
        );
    }

    #[test]
    fn unhealthy_after_install_counts_as_failure() {
        let mut w = World::new(4, vec![("test".into(), ring(0, "0s", "1h", 10))]);
        w.step();
        let started: Vec<usize> = (0..4).filter(|i| w.vms[*i].directive.is_some()).collect();
        w.vms[started[0]].healthy = false;
        w.now = add(w.now, Duration::from_secs(60));
        w.step();
        assert_eq!(w.ring_phase(0), Some(RingPhase::Halted));
        let wave = &w.status.as_ref().expect("status").rings[0].waves[0];
        assert_eq!(wave.failed_members, vec![w.vms[started[0]].name.clone()]);
        // Sticky: healthy again later does not undo the failure.
        w.vms[started[0]].healthy = true;
        w.now = add(w.now, Duration::from_secs(7200));
        w.step();
        assert_eq!(w.ring_phase(0), Some(RingPhase::Halted));
    }

    #[test]
    fn paused_rollout_or_ring_starts_nothing_new() {
        let mut w = World::new(6, vec![("test".into(), ring(0, "0s", "1h", 50))]);
        w.spec.paused = true;
        let out = w.step();
        assert!(out.writes.is_empty());
        assert_eq!(out.status.phase, Some(RolloutPhase::Paused));
        assert!(matches!(&out.states[0], VmState::Waiting(Some(r)) if r.contains("paused")));
        w.spec.paused = false;
        w.rings[0].1.paused = true;
        let out = w.step();
        assert!(out.writes.is_empty());
        assert_eq!(out.status.rings[0].phase, Some(RingPhase::Paused));
        w.rings[0].1.paused = false;
        let out = w.step();
        assert!(!out.writes.is_empty());
    }

    #[test]
    fn a_restarted_controller_starts_nothing_twice() {
        let mut w = World::new(6, four_rings());
        w.step();
        // The status write was lost (crash): decide again from the VMs alone.
        w.status = None;
        let out = w.decide();
        assert!(
            out.writes
                .iter()
                .all(|wr| w.vms[wr.vm].directive.as_ref() == Some(&wr.directive))
        );
        // The wave is recovered from the VMs.
        let waves = &out.status.rings[0].waves;
        assert_eq!(waves.len(), 1);
        assert!(!waves[0].members.is_empty());
    }

    #[test]
    fn windows_gate_starts_and_name_the_next_opening() {
        let mut w = World::new(2, vec![("test".into(), ring(0, "0s", "0s", 10))]);
        let win = Window::parse(&MaintenanceWindow {
            start: "02:00".into(),
            duration: "3h".into(),
            days_of_week: vec![],
        })
        .expect("window");
        let tz = super::super::window::time_zone("Asia/Tokyo").expect("tz");
        for v in &mut w.vms {
            v.window = Some((win.clone(), tz.clone()));
        }
        // 18:00Z is 03:00 in Tokyo: inside (2h left >= 30m). The two VMs are in paired regions:
        // one starts now.
        let out = w.step();
        assert_eq!(out.writes.len(), 1);
        assert!(
            out.writes
                .iter()
                .all(|wr| wr.directive.window_end == Some(Time(ts("2026-11-10T20:00:00Z"))))
        );
        // 20:30Z is 05:30 in Tokyo: closed.
        let mut w2 = World::new(1, vec![("test".into(), ring(0, "0s", "0s", 10))]);
        w2.vms[0].window = Some((win, tz));
        w2.now = ts("2026-11-10T20:30:00Z");
        w2.spec.release_time = Time(w2.now);
        let out = w2.step();
        assert!(out.writes.is_empty());
        assert!(
            matches!(&out.states[0], VmState::Waiting(Some(r)) if r.contains("maintenance window")),
            "{:?}",
            out.states[0]
        );
        // Next opening: 02:00 the next day in Tokyo, 17:00Z.
        assert_eq!(
            out.requeue_after,
            Some(Duration::from_secs(20 * 3600 + 30 * 60))
        );
    }

    #[test]
    fn ineligible_and_up_to_date_vms_do_not_block() {
        let mut w = World::new(3, vec![("test".into(), ring(0, "0s", "0s", 10))]);
        w.vms[0].ineligible = Some("patch mode ImageDefault".into());
        w.vms[1].assessment.packages.clear();
        w.run_until(ts("2026-11-11T00:00:00Z"), Duration::from_secs(600));
        let st = w.status.clone().expect("status");
        assert_eq!(st.phase, Some(RolloutPhase::Succeeded));
        assert!(w.vms[0].installs.is_empty() && w.vms[1].installs.is_empty());
        assert_eq!(st.slo.map(|s| (s.eligible, s.on_manifest)), Some((2, 2)));
    }

    #[test]
    fn powered_off_vm_is_patched_when_it_returns() {
        let mut w = World::new(3, vec![("test".into(), ring(0, "0s", "0s", 10))]);
        w.vms[2].running = false;
        w.run_until(ts("2026-11-11T00:00:00Z"), Duration::from_secs(600));
        assert_eq!(w.ring_phase(0), Some(RingPhase::Progressing));
        assert!(w.vms[2].installs.is_empty());
        w.vms[2].running = true;
        w.run_until(ts("2026-11-11T03:00:00Z"), Duration::from_secs(600));
        assert_eq!(w.vms[2].installs.len(), 1);
        assert_eq!(w.ring_phase(0), Some(RingPhase::Succeeded));
    }

    #[test]
    fn manual_rollback_returns_every_patched_vm() {
        let mut w = World::new(3, vec![("test".into(), ring(0, "0s", "0s", 10))]);
        w.run_until(ts("2026-11-11T00:00:00Z"), Duration::from_secs(600));
        assert_eq!(
            w.status.as_ref().and_then(|s| s.phase),
            Some(RolloutPhase::Succeeded)
        );
        w.spec.rollback = true;
        let out = w.step();
        assert_eq!(out.status.phase, Some(RolloutPhase::RolledBack));
        assert_eq!(
            out.writes.iter().filter(|wr| wr.directive.rollback).count(),
            3
        );
    }

    #[test]
    fn slo_projection_misses_when_halted() {
        let mut w = World::new(4, vec![("test".into(), ring(0, "0s", "0s", 0))]);
        w.vms[0].fail = true;
        w.run_until(ts("2026-11-11T00:00:00Z"), Duration::from_secs(600));
        let st = w.status.clone().expect("status");
        assert_eq!(st.slo.and_then(|s| s.projected_to_meet), Some(false));
        assert!(w.reasons().contains(&"SLOAtRisk"));
        assert_eq!(w.reasons().iter().filter(|r| **r == "SLOAtRisk").count(), 1);
    }

    #[test]
    fn waves_never_break_the_planner_invariants() {
        let mut w = World::new(12, four_rings());
        w.settings.pairs = vec![("east".into(), "west".into())];
        let mut t0 = w.now;
        while t0 < ts("2026-11-26T00:00:00Z") {
            w.step();
            // At every moment: VMs patching in one ring, one region phase, one zone per region.
            let patching: Vec<&SimVm> = w
                .vms
                .iter()
                .filter(|v| {
                    v.directive.as_ref().is_some_and(|d| !d.rollback)
                        && v.result
                            .as_ref()
                            .and_then(|r| r.finish_time.as_ref())
                            .is_some_and(|f| add(f.0, dur("30m")) > w.now)
                })
                .collect();
            let regions: BTreeSet<&str> = patching
                .iter()
                .map(|v| v.placement.region.as_str())
                .collect();
            assert!(
                regions.len() <= 1,
                "paired regions together at {}: {regions:?}",
                w.now
            );
            let zones: BTreeSet<&str> = patching
                .iter()
                .filter_map(|v| v.placement.zone.as_deref())
                .collect();
            assert!(zones.len() <= 1, "two zones of a region at {}", w.now);
            assert!(patching.len() <= 2, "maxUnavailable 2 exceeded");
            t0 = add(t0, Duration::from_secs(300));
            w.now = t0;
        }
        assert_eq!(
            w.status.as_ref().and_then(|s| s.phase),
            Some(RolloutPhase::Succeeded)
        );
    }

    #[test]
    fn the_first_ring_waits_for_its_assessments_before_freezing() {
        let mut w = World::new(2, vec![("test".into(), ring(0, "0s", "0s", 10))]);
        w.vms[1].assessment.status = OperationStatus::InProgress;
        let out = w.step();
        assert!(out.writes.is_empty());
        assert!(out.status.manifest.is_none());
        assert!(
            matches!(&out.states[0], VmState::Waiting(Some(r)) if r.contains("assessment")),
            "{:?}",
            out.states[0]
        );
        w.vms[1].assessment.status = OperationStatus::Succeeded;
        let out = w.step();
        assert!(out.status.manifest.is_some());
        assert!(!out.writes.is_empty());
    }

    #[test]
    fn directives_carry_window_end_reboot_setting_and_hotpatch() {
        let w = World::new(1, vec![("test".into(), ring(0, "0s", "0s", 10))]);
        let out = {
            let rings: Vec<RingFacts> = w
                .rings
                .iter()
                .map(|(n, s)| RingFacts { name: n, spec: s })
                .collect();
            let v = &w.vms[0];
            let facts = vec![VmFacts {
                name: &v.name,
                ring: Some(0),
                placement: v.placement.clone(),
                ineligible: None,
                running: true,
                window: None,
                reboot_setting: Some(RebootSetting::Never),
                hotpatch: true,
                family: "f".into(),
                assessment: Some(&v.assessment),
                directive: None,
                result: None,
                summary: None,
                healthy: true,
            }];
            decide(&Input {
                now: w.now,
                name: "r",
                generation: None,
                spec: &w.spec,
                status: None,
                rings: &rings,
                vms: &facts,
                blocked_by: None,
                settings: &w.settings,
            })
        };
        let d = &out.writes[0].directive;
        assert!(d.hotpatch_only);
        assert_eq!(d.reboot_setting, Some(RebootSetting::Never));
        assert_eq!(d.window_end, None, "no window: no end");
    }

    #[test]
    fn an_install_refused_at_the_window_end_is_retried_in_a_new_wave() {
        let mut w = World::new(1, vec![("test".into(), ring(0, "0s", "0s", 0))]);
        w.step();
        let first = w.vms[0].directive.clone().expect("directive");
        // The guest reports it could not start before the window ended.
        if let Some(r) = w.vms[0].result.as_mut() {
            r.status = OperationStatus::Failed;
            r.installed.clear();
            r.maintenance_window_exceeded = true;
        }
        w.vms[0].installs.clear();
        w.now = add(w.now, Duration::from_secs(60));
        let out = w.step();
        assert_ne!(
            out.status.phase,
            Some(RolloutPhase::Halted),
            "not a failure"
        );
        let again = w.vms[0].directive.clone().expect("directive");
        assert!(
            again.wave > first.wave,
            "a new wave: {} after {}",
            again.wave,
            first.wave
        );
        assert_eq!(w.vms[0].installs.len(), 1);
    }

    #[test]
    fn a_halted_rollout_starts_nothing_when_a_newer_one_takes_its_vms() {
        let mut w = World::new(
            4,
            vec![
                ("test".into(), ring(0, "0s", "0s", 0)),
                ("first".into(), ring(1, "0s", "0s", 0)),
            ],
        );
        // Ring test passes; ring first halts.
        w.vms[4].healthy = false;
        w.run_until(ts("2026-11-11T00:00:00Z"), Duration::from_secs(600));
        assert_eq!(
            w.status.as_ref().and_then(|s| s.phase),
            Some(RolloutPhase::Halted)
        );
        // A newer release patches every VM.
        for (i, vm) in w.vms.iter_mut().enumerate() {
            vm.healthy = true;
            let d = InstallationDirective {
                rollout: "newer".into(),
                wave: i as i32 + 1,
                ..Default::default()
            };
            vm.result = Some(GuestInstallation {
                rollout: "newer".into(),
                wave: d.wave,
                rollback: false,
                status: OperationStatus::Succeeded,
                start_time: Some(Time(w.now)),
                finish_time: Some(Time(w.now)),
                installed: Vec::new(),
                failed: Vec::new(),
                previous_versions: Vec::new(),
                reboot_pending: false,
                maintenance_window_exceeded: false,
                error: None,
            });
            vm.directive = Some(d);
        }
        w.now = add(w.now, Duration::from_secs(3600));
        let out = w.step();
        assert_eq!(out.status.phase, Some(RolloutPhase::Halted));
        assert!(
            out.writes.iter().all(|wr| wr.directive.rollout == "newer"),
            "the halted rollout wrote {:?}",
            out.writes
        );
    }

    #[test]
    fn a_finished_rollout_keeps_its_record_when_rings_change() {
        let mut w = World::new(2, vec![("test".into(), ring(0, "0s", "0s", 10))]);
        w.run_until(ts("2026-11-11T00:00:00Z"), Duration::from_secs(600));
        assert_eq!(
            w.status.as_ref().and_then(|s| s.phase),
            Some(RolloutPhase::Succeeded)
        );
        w.rings
            .insert(0, ("canary".into(), ring(0, "0s", "0s", 10)));
        w.rings.push(("late".into(), ring(5, "0s", "0s", 10)));
        let out = w.step();
        assert_eq!(out.status.phase, Some(RolloutPhase::Succeeded));
        assert_eq!(
            out.status.rings.len(),
            1,
            "the record is the one the rollout ran"
        );
        assert!(out.writes.is_empty());
    }
}
