//! The availability-first wave planner (DESIGN.md §5): a pure function from the fleet's state to
//! the VMs to start now, that never breaks these invariants, at any moment:
//!
//! 1. regions go in phases; geo-paired regions are never in one phase; a phase starts only after
//!    every VM of the previous phases finished (succeeded, or failed within the failure budget);
//! 2. within a region, VMs of one availability zone at a time;
//! 3. within an availability set, one update domain at a time, and never every member at once;
//! 4. at most `max_unavailable` of the ring's VMs patching at once (in or out of availability sets).
//!
//! [`check`] states the invariants independently of the planner; property tests drive random
//! fleets through whole rollouts with failures and check every step.

use std::collections::HashMap;

/// Where one VM sits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    pub region: String,
    pub zone: Option<String>,
    pub availability_set: Option<String>,
    pub update_domain: i32,
}

#[derive(Clone, Copy, Debug)]
struct Node {
    region: u16,
    zone: Option<u16>,
    avset: Option<u32>,
    ud: u16,
}

/// The fleet's fixed shape, indexed once: regions, their phases, zones and availability sets.
#[derive(Clone, Debug)]
pub struct Topology {
    pub regions: Vec<String>,
    /// Region ids of each phase, in order.
    pub phases: Vec<Vec<u16>>,
    region_phase: Vec<u16>,
    nodes: Vec<Node>,
    avset_size: Vec<u32>,
    /// VM ids per phase, in a stable order (region, zone, set, update domain, id).
    phase_members: Vec<Vec<u32>>,
}

/// Where a VM is in the rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    /// Not patched yet.
    Waiting,
    /// Installing, or installed and proving healthy.
    Patching,
    Succeeded,
    Failed,
    /// Not part of this rollout (ineligible); never blocks a phase.
    Skipped,
}

/// Limits of one ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// VMs in no availability set patching at once (at least 1).
    pub max_unavailable: usize,
    /// Failures tolerated; one more halts the rollout.
    pub max_failed: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// VM ids to start now.
    pub start: Vec<u32>,
    /// The phase being worked on (None when done).
    pub phase: Option<usize>,
    /// Failures exceed the budget: start nothing more.
    pub halted: bool,
    /// Every VM finished.
    pub done: bool,
}

/// Regions into phases so that no geo-pair shares one: a 2-colouring of the pair graph (more
/// phases only for an odd cycle), heaviest regions first, each into the lighter phase its partner
/// is not in. Returns the phases (region ids) and each region's phase.
fn colour_phases(
    regions: &[String],
    load: &[usize],
    partner: &[Vec<u16>],
) -> (Vec<Vec<u16>>, Vec<u16>) {
    let mut order: Vec<u16> = (0..regions.len() as u16).collect();
    order.sort_by(|a, b| {
        load[*b as usize]
            .cmp(&load[*a as usize])
            .then_with(|| regions[*a as usize].cmp(&regions[*b as usize]))
    });
    let mut region_phase = vec![u16::MAX; regions.len()];
    // Two phases (more only if the pairs form an odd cycle), so every region has a partner
    // phase to fall back on.
    let mut phase_load: Vec<usize> = vec![0; regions.len().min(2)];
    for r in order {
        let banned: Vec<u16> = partner[r as usize]
            .iter()
            .map(|p| region_phase[*p as usize])
            .filter(|p| *p != u16::MAX)
            .collect();
        let p = match (0..phase_load.len() as u16)
            .filter(|p| !banned.contains(p))
            .min_by_key(|p| (phase_load[*p as usize], *p))
        {
            Some(p) => p,
            None => {
                phase_load.push(0);
                (phase_load.len() - 1) as u16
            }
        };
        region_phase[r as usize] = p;
        phase_load[p as usize] += load[r as usize];
    }
    let mut phases: Vec<Vec<u16>> = vec![Vec::new(); phase_load.len()];
    for (r, p) in region_phase.iter().enumerate() {
        phases[*p as usize].push(r as u16);
    }
    phases.retain(|p| !p.is_empty());
    for (i, p) in phases.iter().enumerate() {
        for r in p {
            region_phase[*r as usize] = i as u16;
        }
    }
    (phases, region_phase)
}

impl Topology {
    /// Index a fleet. `pairs` are geo-pairs (region names); regions are placed in phases so that
    /// no pair shares one: a 2-colouring of the pair graph, balanced by VM count, largest first.
    pub fn new(vms: &[Placement], pairs: &[(String, String)]) -> Topology {
        let mut region_ids: HashMap<&str, u16> = HashMap::new();
        let mut regions: Vec<String> = Vec::new();
        let mut zone_ids: HashMap<(u16, &str), u16> = HashMap::new();
        let mut avset_ids: HashMap<(u16, &str), u32> = HashMap::new();
        let mut avset_size: Vec<u32> = Vec::new();
        let mut nodes = Vec::with_capacity(vms.len());
        for vm in vms {
            let r = *region_ids.entry(vm.region.as_str()).or_insert_with(|| {
                regions.push(vm.region.clone());
                (regions.len() - 1) as u16
            });
            let zone = vm.zone.as_deref().map(|z| {
                let next = zone_ids.len() as u16;
                *zone_ids.entry((r, z)).or_insert(next)
            });
            let avset = vm.availability_set.as_deref().map(|a| {
                let id = *avset_ids.entry((r, a)).or_insert_with(|| {
                    avset_size.push(0);
                    (avset_size.len() - 1) as u32
                });
                avset_size[id as usize] += 1;
                id
            });
            nodes.push(Node {
                region: r,
                zone,
                avset,
                ud: vm.update_domain.clamp(0, 1000) as u16,
            });
        }
        // Phases: colour the pair graph with two colours, heaviest regions first, each into the
        // lighter phase its partner is not in.
        let mut load = vec![0usize; regions.len()];
        for n in &nodes {
            load[n.region as usize] += 1;
        }
        let mut partner: Vec<Vec<u16>> = vec![Vec::new(); regions.len()];
        for (a, b) in pairs {
            if let (Some(&a), Some(&b)) = (region_ids.get(a.as_str()), region_ids.get(b.as_str()))
                && a != b
            {
                partner[a as usize].push(b);
                partner[b as usize].push(a);
            }
        }
        let (phases, region_phase) = colour_phases(&regions, &load, &partner);
        let mut phase_members: Vec<Vec<u32>> = vec![Vec::new(); phases.len()];
        for (id, n) in nodes.iter().enumerate() {
            phase_members[region_phase[n.region as usize] as usize].push(id as u32);
        }
        for m in &mut phase_members {
            m.sort_by_key(|id| {
                let n = nodes[*id as usize];
                (
                    n.region,
                    n.zone.map_or(u16::MAX, |z| z),
                    n.avset.map_or(u32::MAX, |a| a),
                    n.ud,
                    *id,
                )
            });
        }
        Topology {
            regions,
            phases,
            region_phase,
            nodes,
            avset_size,
            phase_members,
        }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The phase of a VM.
    pub fn phase_of(&self, vm: u32) -> usize {
        self.region_phase[self.nodes[vm as usize].region as usize] as usize
    }

    fn in_set(&self, n: &Node) -> Option<u32> {
        n.avset.filter(|a| self.avset_size[*a as usize] >= 2)
    }
}

/// The VMs to start now. `ready(vm)` says whether a waiting VM may start now (inside its
/// maintenance window, heartbeat present, ring not paused...).
pub fn plan(
    topo: &Topology,
    states: &[State],
    ready: &dyn Fn(u32) -> bool,
    limits: Limits,
) -> Plan {
    let failed = states.iter().filter(|s| **s == State::Failed).count();
    if failed > limits.max_failed {
        return Plan {
            start: Vec::new(),
            phase: None,
            halted: true,
            done: false,
        };
    }
    let busy = |s: State| matches!(s, State::Waiting | State::Patching);
    let Some(phase) = (0..topo.phase_members.len()).find(|p| {
        topo.phase_members[*p]
            .iter()
            .any(|v| busy(states[*v as usize]))
    }) else {
        return Plan {
            start: Vec::new(),
            phase: None,
            halted: false,
            done: true,
        };
    };
    let members = &topo.phase_members[phase];

    // What is patching now, in this phase (earlier phases are finished by construction).
    let mut zone_active: HashMap<u16, u16> = HashMap::new();
    let mut set_ud: HashMap<u32, u16> = HashMap::new();
    let mut set_patching: HashMap<u32, u32> = HashMap::new();
    let mut patching_now = 0usize;
    for v in members {
        if states[*v as usize] != State::Patching {
            continue;
        }
        patching_now += 1;
        let n = topo.nodes[*v as usize];
        if let Some(z) = n.zone {
            zone_active.insert(n.region, z);
        }
        if let Some(a) = topo.in_set(&n) {
            set_ud.insert(a, n.ud);
            *set_patching.entry(a).or_default() += 1;
        }
    }
    // Regions with no zone active pick the zone with the most VMs ready to start (then the first).
    let mut zone_ready: HashMap<(u16, u16), usize> = HashMap::new();
    for v in members {
        let n = topo.nodes[*v as usize];
        if let Some(z) = n.zone
            && !zone_active.contains_key(&n.region)
            && states[*v as usize] == State::Waiting
            && ready(*v)
        {
            *zone_ready.entry((n.region, z)).or_default() += 1;
        }
    }
    let mut best: Vec<((u16, u16), usize)> = zone_ready.into_iter().collect();
    best.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    for ((r, z), _) in best {
        zone_active.entry(r).or_insert(z);
    }

    let mut start = Vec::new();
    for v in &priority(topo, members, states, ready) {
        if patching_now >= limits.max_unavailable.max(1) {
            break;
        }
        let n = topo.nodes[*v as usize];
        if let Some(z) = n.zone
            && zone_active.get(&n.region) != Some(&z)
        {
            continue;
        }
        if let Some(a) = topo.in_set(&n) {
            let ud = *set_ud.entry(a).or_insert(n.ud);
            let patching = set_patching.entry(a).or_default();
            if ud != n.ud || *patching + 1 >= topo.avset_size[a as usize] {
                continue;
            }
            *patching += 1;
        }
        patching_now += 1;
        start.push(*v);
    }
    Plan {
        start,
        phase: Some(phase),
        halted: false,
        done: false,
    }
}

/// The VMs that may start now, longest remaining chains first, so that `max_unavailable` is
/// spent where the rollout would otherwise wait longest: members of availability sets with the
/// most update domains left (one per wave), then zonal VMs of the regions with the most zonal
/// VMs left (one zone per wave), then the rest. A fixed order instead (region by region) fills
/// every wave from the first regions and leaves the last ones to finish zone by zone alone.
fn priority(
    topo: &Topology,
    members: &[u32],
    states: &[State],
    ready: &dyn Fn(u32) -> bool,
) -> Vec<u32> {
    let mut region_left: HashMap<u16, usize> = HashMap::new();
    let mut set_uds_left: HashMap<u32, Vec<u16>> = HashMap::new();
    for v in members {
        if states[*v as usize] != State::Waiting {
            continue;
        }
        let n = topo.nodes[*v as usize];
        if let Some(a) = topo.in_set(&n) {
            let uds = set_uds_left.entry(a).or_default();
            if !uds.contains(&n.ud) {
                uds.push(n.ud);
            }
        } else if n.zone.is_some() {
            *region_left.entry(n.region).or_default() += 1;
        }
    }
    let candidates: Vec<u32> = members
        .iter()
        .copied()
        .filter(|v| states[*v as usize] == State::Waiting && ready(*v))
        .collect();
    let mut keyed: Vec<(u8, std::cmp::Reverse<usize>, usize)> = candidates
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let n = topo.nodes[*v as usize];
            let (class, left) = match (topo.in_set(&n), n.zone) {
                (Some(a), _) => (0, set_uds_left.get(&a).map_or(0, Vec::len)),
                (None, Some(_)) => (1, region_left.get(&n.region).copied().unwrap_or(0)),
                (None, None) => (2, 0),
            };
            (class, std::cmp::Reverse(left), i)
        })
        .collect();
    // Equal keys keep the members' own order (region, zone, set, update domain).
    keyed.sort_unstable();
    keyed.into_iter().map(|(_, _, i)| candidates[i]).collect()
}

/// Check the invariants on a state: Err names the first one broken.
pub fn check(topo: &Topology, states: &[State], limits: Limits) -> Result<(), String> {
    let patching: Vec<u32> = (0..states.len() as u32)
        .filter(|v| states[*v as usize] == State::Patching)
        .collect();
    let Some(phase) = patching.iter().map(|v| topo.phase_of(*v)).min() else {
        return Ok(());
    };
    for v in &patching {
        if topo.phase_of(*v) != phase {
            return Err(format!(
                "VMs of phases {phase} and {} patch together",
                topo.phase_of(*v)
            ));
        }
    }
    for (v, s) in states.iter().enumerate() {
        if topo.phase_of(v as u32) < phase && matches!(s, State::Waiting | State::Patching) {
            return Err(format!(
                "phase {phase} runs while VM {v} of phase {} is unfinished",
                topo.phase_of(v as u32)
            ));
        }
    }
    let mut zones: HashMap<u16, u16> = HashMap::new();
    let mut uds: HashMap<u32, u16> = HashMap::new();
    let mut counts: HashMap<u32, u32> = HashMap::new();
    for v in &patching {
        let n = topo.nodes[*v as usize];
        if let Some(z) = n.zone
            && *zones.entry(n.region).or_insert(z) != z
        {
            return Err(format!(
                "two zones of region {} patch together",
                topo.regions[n.region as usize]
            ));
        }
        if let Some(a) = topo.in_set(&n) {
            if *uds.entry(a).or_insert(n.ud) != n.ud {
                return Err(format!(
                    "two update domains of availability set {a} patch together"
                ));
            }
            *counts.entry(a).or_default() += 1;
        }
    }
    for (a, c) in counts {
        if c >= topo.avset_size[a as usize] {
            return Err(format!(
                "every member of availability set {a} patches at once"
            ));
        }
    }
    if patching.len() > limits.max_unavailable.max(1) {
        return Err(format!(
            "{} VMs patch at once (maxUnavailable {})",
            patching.len(),
            limits.max_unavailable
        ));
    }
    // Geo-pairs never share a phase is a property of the topology.
    Ok(())
}

/// Whether two regions are in one phase (for checking the pair rule).
pub fn same_phase(topo: &Topology, a: &str, b: &str) -> bool {
    let find = |r: &str| topo.regions.iter().position(|x| x == r);
    match (find(a), find(b)) {
        (Some(a), Some(b)) => topo.region_phase[a] == topo.region_phase[b],
        _ => false,
    }
}

/// A forward simulation from some states with every VM ready.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Simulation {
    /// The waves started, in order: the phase worked on and the VM ids.
    pub waves: Vec<(Option<usize>, Vec<u32>)>,
    /// Every VM finished (false: halted, stuck, or over `max_waves`).
    pub finished: bool,
}

/// Plan wave after wave from `states`, every VM ready: first the VMs patching now end as
/// `outcome` says, then the next wave is planned and started. At most `max_waves` waves.
pub fn simulate_from(
    topo: &Topology,
    mut states: Vec<State>,
    limits: Limits,
    max_waves: usize,
    mut outcome: impl FnMut(u32) -> State,
) -> Simulation {
    let mut sim = Simulation::default();
    while sim.waves.len() < max_waves {
        for (v, s) in states.iter_mut().enumerate() {
            if *s == State::Patching {
                *s = outcome(v as u32);
            }
        }
        let p = plan(topo, &states, &|_| true, limits);
        if p.done {
            sim.finished = true;
            break;
        }
        // Halted, or stuck (cannot happen when every VM is ready: tested).
        if p.halted || p.start.is_empty() {
            break;
        }
        for v in &p.start {
            states[*v as usize] = State::Patching;
        }
        sim.waves.push((p.phase, p.start));
    }
    sim
}

#[cfg(any(test, feature = "bench"))]
mod analysis;
#[cfg(any(test, feature = "bench"))]
pub use analysis::{lower_bound, simulate, synthetic_fleet};

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pl(region: &str, zone: Option<&str>, set: Option<&str>, ud: i32) -> Placement {
        Placement {
            region: region.into(),
            zone: zone.map(Into::into),
            availability_set: set.map(Into::into),
            update_domain: ud,
        }
    }

    #[test]
    fn pairs_are_never_in_one_phase() {
        let vms = vec![
            pl("weu", Some("1"), None, 0),
            pl("neu", Some("1"), None, 0),
            pl("eus", None, None, 0),
            pl("wus", None, None, 0),
        ];
        let pairs = vec![
            ("weu".to_string(), "neu".to_string()),
            ("eus".into(), "wus".into()),
        ];
        let t = Topology::new(&vms, &pairs);
        assert!(!same_phase(&t, "weu", "neu"));
        assert!(!same_phase(&t, "eus", "wus"));
        assert_eq!(t.phases.len(), 2);
    }

    #[test]
    fn an_availability_set_goes_one_update_domain_at_a_time_and_never_whole() {
        let vms = vec![
            pl("r", None, Some("s"), 0),
            pl("r", None, Some("s"), 0),
            pl("r", None, Some("s"), 1),
        ];
        let t = Topology::new(&vms, &[]);
        let limits = Limits {
            max_unavailable: 10,
            max_failed: 0,
        };
        let states = vec![State::Waiting; 3];
        let p = plan(&t, &states, &|_| true, limits);
        assert_eq!(
            p.start,
            vec![0, 1],
            "update domain 0 first, both members (the set keeps one)"
        );
        let all_one_ud = Topology::new(
            &[pl("r", None, Some("s"), 0), pl("r", None, Some("s"), 0)],
            &[],
        );
        let p = plan(&all_one_ud, &[State::Waiting; 2], &|_| true, limits);
        assert_eq!(p.start.len(), 1, "never the whole set");
        assert_eq!(simulate(&all_one_ud, limits, |_| State::Succeeded), Some(2));
    }

    #[test]
    fn one_zone_per_region_and_max_unavailable() {
        let vms: Vec<Placement> = (0..9)
            .map(|i| pl("r", Some(["1", "2", "3"][i % 3]), None, 0))
            .collect();
        let t = Topology::new(&vms, &[]);
        let limits = Limits {
            max_unavailable: 2,
            max_failed: 0,
        };
        let p = plan(&t, &[State::Waiting; 9], &|_| true, limits);
        assert_eq!(p.start.len(), 2);
        let zones: Vec<_> = p
            .start
            .iter()
            .map(|v| vms[*v as usize].zone.clone())
            .collect();
        assert_eq!(zones[0], zones[1]);
        assert_eq!(simulate(&t, limits, |_| State::Succeeded), Some(6));
    }

    #[test]
    fn max_unavailable_limits_the_whole_ring_sets_included() {
        // Six availability sets of five update domains and four loose VMs: with maxUnavailable 3,
        // never more than three patch at once (the sets alone would allow six).
        let mut vms: Vec<Placement> = (0..30)
            .map(|i| {
                pl(
                    "r",
                    None,
                    Some(["a", "b", "c", "d", "e", "f"][i % 6]),
                    (i / 6) as i32,
                )
            })
            .collect();
        vms.extend((0..4).map(|_| pl("r", None, None, 0)));
        let t = Topology::new(&vms, &[]);
        let limits = Limits {
            max_unavailable: 3,
            max_failed: 0,
        };
        let p = plan(&t, &vec![State::Waiting; vms.len()], &|_| true, limits);
        assert_eq!(p.start.len(), 3, "{:?}", p.start);
        let mut states = vec![State::Waiting; vms.len()];
        for v in &p.start {
            states[*v as usize] = State::Patching;
        }
        assert!(check(&t, &states, limits).is_ok());
        states[p.start[0] as usize] = State::Waiting;
        states.iter_mut().take(4).for_each(|s| *s = State::Patching);
        assert!(
            check(&t, &states, limits).is_err(),
            "four patching breaks the limit"
        );
    }

    #[test]
    fn failures_past_the_budget_halt() {
        let vms: Vec<Placement> = (0..10).map(|_| pl("r", None, None, 0)).collect();
        let t = Topology::new(&vms, &[]);
        let limits = Limits {
            max_unavailable: 2,
            max_failed: 1,
        };
        assert_eq!(
            simulate(&t, limits, |v| if v < 3 {
                State::Failed
            } else {
                State::Succeeded
            }),
            None
        );
        assert_eq!(
            simulate(&t, limits, |v| if v < 1 {
                State::Failed
            } else {
                State::Succeeded
            }),
            Some(5)
        );
    }

    #[test]
    fn not_ready_vms_wait_and_block_the_next_phase() {
        let vms = vec![pl("a", None, None, 0), pl("b", None, None, 0)];
        let t = Topology::new(&vms, &[("a".into(), "b".into())]);
        let limits = Limits {
            max_unavailable: 5,
            max_failed: 0,
        };
        let first = t.phases[0][0] as u32;
        let p = plan(&t, &[State::Waiting; 2], &|_| false, limits);
        assert!(p.start.is_empty() && p.phase == Some(0));
        let p = plan(&t, &[State::Waiting; 2], &|v| v != first, limits);
        assert!(p.start.is_empty(), "the second phase waits for the first");
    }

    #[derive(Debug, Clone)]
    struct Case {
        vms: Vec<Placement>,
        pairs: Vec<(String, String)>,
        max_unavailable: usize,
        max_failed: usize,
        fail: Vec<bool>,
        ready_seed: u64,
    }

    fn arb_case() -> impl Strategy<Value = Case> {
        (1usize..6, 1usize..4, 0usize..5, 1usize..60).prop_flat_map(|(regions, zones, sets, n)| {
            let vm = (
                0..regions,
                prop::option::of(0..zones),
                prop::option::of(0..sets.max(1)),
                0i32..4,
            )
                .prop_map(move |(r, z, s, ud)| Placement {
                    region: format!("r{r}"),
                    // Azure keeps availability sets regional; zonal VMs sit in no set most of the time.
                    zone: if s.is_some() && sets > 0 {
                        None
                    } else {
                        z.map(|z| z.to_string())
                    },
                    availability_set: if sets > 0 {
                        s.map(|s| format!("s{s}"))
                    } else {
                        None
                    },
                    update_domain: ud,
                });
            (
                prop::collection::vec(vm, n),
                Just(
                    (0..regions / 2)
                        .map(|p| (format!("r{}", 2 * p), format!("r{}", 2 * p + 1)))
                        .collect::<Vec<_>>(),
                ),
                1usize..5,
                0usize..4,
                prop::collection::vec(prop::bool::weighted(0.1), n),
                any::<u64>(),
            )
                .prop_map(
                    |(vms, pairs, max_unavailable, max_failed, fail, ready_seed)| Case {
                        vms,
                        pairs,
                        max_unavailable,
                        max_failed,
                        fail,
                        ready_seed,
                    },
                )
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        /// Random fleets, random readiness (windows), random failures and random completion order:
        /// the invariants hold after every start and every completion; pairs never share a phase;
        /// the rollout finishes or halts, and halts only past the failure budget.
        #[test]
        fn invariants_hold_at_every_step(case in arb_case()) {
            let t = Topology::new(&case.vms, &case.pairs);
            for (a, b) in &case.pairs {
                prop_assert!(!same_phase(&t, a, b), "pair {a}/{b} in one phase");
            }
            let limits = Limits { max_unavailable: case.max_unavailable, max_failed: case.max_failed };
            let mut states = vec![State::Waiting; t.len()];
            let mut rng = case.ready_seed;
            let mut next = move || { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; rng };
            let mut idle = 0;
            for _ in 0..10_000 {
                let r = next();
                let ready = move |v: u32| (r.rotate_left(v % 64) & 3) != 0;
                let p = plan(&t, &states, &ready, limits);
                if p.done { break; }
                if p.halted {
                    let failed = states.iter().filter(|s| **s == State::Failed).count();
                    prop_assert!(failed > case.max_failed);
                    break;
                }
                for v in &p.start {
                    prop_assert_eq!(states[*v as usize], State::Waiting);
                    prop_assert!(ready(*v));
                    states[*v as usize] = State::Patching;
                }
                if let Err(e) = check(&t, &states, limits) { prop_assert!(false, "after starting {:?}: {}", p.start, e); }
                // Some patching VMs finish, in random order.
                let mut finished = 0;
                for (v, state) in states.iter_mut().enumerate() {
                    if *state == State::Patching && next() % 3 != 0 {
                        *state = if case.fail[v] { State::Failed } else { State::Succeeded };
                        finished += 1;
                    }
                }
                if let Err(e) = check(&t, &states, limits) { prop_assert!(false, "after completions: {}", e); }
                idle = if p.start.is_empty() && finished == 0 { idle + 1 } else { 0 };
                prop_assert!(idle < 200, "no progress for 200 steps");
            }
        }

        /// With every VM ready and succeeding, the rollout always finishes, and never in fewer steps
        /// than the lower bound (which would make the bound wrong). Closeness to the bound is
        /// checked on a large fleet below and reported by the benchmark.
        #[test]
        fn all_ready_always_finishes_and_never_beats_the_bound(case in arb_case()) {
            let t = Topology::new(&case.vms, &case.pairs);
            let limits = Limits { max_unavailable: case.max_unavailable, max_failed: 0 };
            let steps = simulate(&t, limits, |_| State::Succeeded);
            prop_assert!(steps.is_some(), "stuck");
            let lb = lower_bound(&t, &case.pairs, limits);
            prop_assert!(steps.unwrap_or(0) >= lb, "beat the lower bound: {:?} < {}", steps, lb);
        }
    }

    #[test]
    fn a_large_fleet_finishes_close_to_the_lower_bound() {
        let (vms, pairs) = synthetic_fleet(20_000, 30, 3, 200);
        let t = Topology::new(&vms, &pairs);
        let limits = Limits {
            max_unavailable: 2_000,
            max_failed: 0,
        };
        let steps = simulate(&t, limits, |_| State::Succeeded).expect("finishes");
        let lb = lower_bound(&t, &pairs, limits);
        assert!(steps >= lb);
        // Longest chains first (availability sets with the most update domains left, regions
        // with the most zonal VMs left): within 10% of the bound. A fixed region-by-region order
        // took 1.6 times the bound here.
        assert!(
            (steps as f64) <= 1.1 * lb as f64,
            "{steps} steps for a lower bound of {lb}"
        );
    }
}
