//! `cargo bench --features bench --bench planner`: the wave planner on a 100,000-VM fleet (30 regions in 15
//! geo-pairs, 3 zones, 1,000 availability sets with 5 update domains). Prints the time to index the
//! fleet, to plan one wave, and to plan a whole rollout (every install taking one step), and the
//! rollout's length against the lower bound the constraints allow.

use std::time::{Duration, Instant};

use automend::logic::planner::{
    Limits, State, Topology, lower_bound, plan, simulate, synthetic_fleet,
};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    // `cargo test --benches` runs this binary too; keep that quick.
    let quick = std::env::args().any(|a| a == "--test" || a == "--list");
    let (vms, regions, zones, sets) = if quick {
        (10_000, 30, 3, 100)
    } else {
        (100_000, 30, 3, 1_000)
    };
    let (fleet, pairs) = synthetic_fleet(vms, regions, zones, sets);
    let limits = Limits {
        max_unavailable: vms / 10,
        max_failed: 0,
    };

    let t0 = Instant::now();
    let topo = Topology::new(&fleet, &pairs);
    let index = t0.elapsed();

    let states = vec![State::Waiting; topo.len()];
    let runs: Vec<Duration> = (0..if quick { 3 } else { 21 })
        .map(|_| {
            let t = Instant::now();
            let p = plan(&topo, &states, &|_| true, limits);
            std::hint::black_box(p);
            t.elapsed()
        })
        .collect();
    let one = median(runs);

    let t1 = Instant::now();
    let steps = simulate(&topo, limits, |_| State::Succeeded).expect("the rollout finishes");
    let whole = t1.elapsed();
    let lb = lower_bound(&topo, &pairs, limits);

    println!(
        "planner: {vms} VMs, {regions} regions ({} phases), {zones} zones, {sets} availability sets",
        topo.phases.len()
    );
    println!("  index the fleet        {:>10.2?}", index);
    println!("  plan one wave (median) {:>10.2?}", one);
    println!("  plan a whole rollout   {:>10.2?}  ({steps} waves)", whole);
    println!(
        "  lower bound            {lb} waves; ratio {:.2}",
        steps as f64 / lb as f64
    );
}
