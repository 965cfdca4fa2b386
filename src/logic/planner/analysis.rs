//! Analysis of the planner for its tests and the benchmark (feature `bench`), not compiled into
//! the product: a lower bound on any plan's length, whole simulated rollouts, synthetic fleets.

use std::collections::HashMap;

use super::{Limits, Placement, State, Topology, simulate_from};

/// A lower bound on the number of steps any plan needs when every install takes one step and
/// succeeds, for every assignment of regions to phases that keeps pairs apart: the longest
/// region (or geo-pair of regions, which cannot overlap), and the ring's VMs over `max_unavailable`.
pub fn lower_bound(topo: &Topology, pairs: &[(String, String)], limits: Limits) -> usize {
    let regions = topo.regions.len();
    // Per region: zones run one after another, each at least as long as its deepest set.
    let mut zone_need: HashMap<(u16, u16), usize> = HashMap::new();
    let mut set_uds: HashMap<u32, (u16, Vec<u16>)> = HashMap::new();
    for n in &topo.nodes {
        if let Some(a) = topo.in_set(n) {
            let e = set_uds.entry(a).or_insert((n.region, Vec::new()));
            e.1.push(n.ud);
        }
        if let Some(z) = n.zone {
            zone_need.entry((n.region, z)).or_insert(1);
        }
    }
    let mut region_sets = vec![0usize; regions];
    for (a, (r, mut uds)) in set_uds {
        uds.sort_unstable();
        uds.dedup();
        // A set all in one update domain still needs two steps (never the whole set at once).
        let steps = if uds.len() == 1 && topo.avset_size[a as usize] >= 2 {
            2
        } else {
            uds.len()
        };
        region_sets[r as usize] = region_sets[r as usize].max(steps);
    }
    let mut region_zones = vec![0usize; regions];
    for ((r, _), need) in zone_need {
        region_zones[r as usize] += need;
    }
    let region_lb: Vec<usize> = (0..regions)
        .map(|r| region_zones[r].max(region_sets[r]))
        .collect();
    let mut lb = region_lb.iter().copied().max().unwrap_or(0);
    for (a, b) in pairs {
        let find = |x: &str| topo.regions.iter().position(|r| r == x);
        if let (Some(a), Some(b)) = (find(a), find(b))
            && a != b
        {
            lb = lb.max(region_lb[a] + region_lb[b]);
        }
    }
    // maxUnavailable bounds the whole ring: at most that many finish per step.
    lb.max(topo.len().div_ceil(limits.max_unavailable.max(1)))
}

/// Run a whole rollout in steps where every started VM finishes (with `outcome`) one step later.
/// Returns the number of steps, or None if it halted.
pub fn simulate(
    topo: &Topology,
    limits: Limits,
    outcome: impl FnMut(u32) -> State,
) -> Option<usize> {
    let sim = simulate_from(
        topo,
        vec![State::Waiting; topo.len()],
        limits,
        usize::MAX,
        outcome,
    );
    sim.finished.then_some(sim.waves.len())
}

/// A synthetic fleet: `regions` regions in geo-pairs, `zones` zones each, `sets` availability sets
/// (5 update domains, spread over the regions, regional), the rest zonal VMs in no set.
pub fn synthetic_fleet(
    vms: usize,
    regions: usize,
    zones: usize,
    sets: usize,
) -> (Vec<Placement>, Vec<(String, String)>) {
    let set_members = (vms / 4).max(sets * 2);
    let mut out = Vec::with_capacity(vms);
    for i in 0..vms {
        let region = format!("region-{:02}", i % regions.max(1));
        if i < set_members && sets > 0 {
            let set = i % sets;
            out.push(Placement {
                region: format!("region-{:02}", set % regions.max(1)),
                zone: None,
                availability_set: Some(format!("set-{set}")),
                update_domain: ((i / sets) % 5) as i32,
            });
        } else {
            out.push(Placement {
                region,
                zone: Some(format!("{}", (i / regions.max(1)) % zones.max(1) + 1)),
                availability_set: None,
                update_domain: 0,
            });
        }
    }
    let pairs = (0..regions / 2)
        .map(|p| {
            (
                format!("region-{:02}", 2 * p),
                format!("region-{:02}", 2 * p + 1),
            )
        })
        .collect();
    (out, pairs)
}
