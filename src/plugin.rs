//! `kubectl automend`: the kubectl plugin (binary `kubectl-automend` on the PATH).
//!
//! `status` and `plan` read rollouts, rings and VMs and run the same decision code as the
//! controller; `pause`, `resume`, `expedite` and `rollback` edit a rollout's (or a ring's) spec;
//! `assess` asks for an on-demand assessment; `why` explains where a VM stands.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};

use crate::api::{PatchRollout, RolloutPhase, UpdateRing, VirtualMachine};
use crate::clock::{Clock, ClockArgs};
use crate::logic::planner::{self, Limits, State, Topology};
use crate::logic::rollout::{self, Settings, VmState, decide_gathered, gather};

/// kubectl automend: patch rollouts through update rings, from the command line.
#[derive(clap::Parser, Debug)]
#[command(name = "kubectl-automend", version, about)]
pub struct Cli {
    /// Namespace (default: the kubeconfig context's namespace).
    #[arg(long, short = 'n', global = true)]
    pub namespace: Option<String>,
    /// Expected length of an installation, as the controller's --install-duration.
    #[arg(long, global = true, default_value = "30m", value_parser = crate::logic::duration::parse)]
    pub install_duration: Duration,
    #[command(flatten)]
    pub clock: ClockArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Rollouts and their rings' progress, as tables.
    Status {
        /// A rollout (default: every rollout, and the rings of the most recent).
        rollout: Option<String>,
    },
    /// The waves the planner would run from now on in the rollout's current ring.
    Plan { rollout: String },
    /// Pause a rollout (or one ring with --ring): waves in flight finish, no new wave starts.
    Pause {
        rollout: Option<String>,
        #[arg(long)]
        ring: Option<String>,
    },
    /// Resume a paused rollout (or ring).
    Resume {
        rollout: Option<String>,
        #[arg(long)]
        ring: Option<String>,
    },
    /// Skip the rings' deferrals for this rollout.
    Expedite { rollout: String },
    /// Return every VM the rollout installed on to the versions recorded before the install.
    Rollback { rollout: String },
    /// Ask a VM's guest for an on-demand patch assessment (it never installs).
    Assess { vm: String },
    /// The VMs of a ring (selector, or share by stable hash) and whether each takes part.
    Members { ring: String },
    /// Why a VM is or is not being patched.
    Why {
        vm: String,
        /// The rollout to explain against (default: the unfinished one, else the most recent).
        #[arg(long)]
        rollout: Option<String>,
    },
}

fn ts(t: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>) -> String {
    t.map(|t| t.0.strftime("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_else(|| "-".into())
}

/// Left-aligned columns, like kubectl's tables.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<String>, out: &mut String| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                let _ = write!(l, "{c:<w$}   ", w = widths[i]);
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.iter().map(|h| h.to_string()).collect(), &mut out);
    for r in rows {
        line(r.clone(), &mut out);
    }
    out
}

/// The rollouts table.
pub fn rollouts_table(rollouts: &[Arc<PatchRollout>]) -> String {
    let rows: Vec<Vec<String>> = rollouts
        .iter()
        .map(|r| {
            let s = r.status.clone().unwrap_or_default();
            let slo = s.slo.clone().unwrap_or_default();
            vec![
                r.name_any(),
                s.phase
                    .map(|p| format!("{p:?}"))
                    .unwrap_or_else(|| "-".into()),
                ts(Some(&r.spec.release_time)),
                s.current_ring.unwrap_or_else(|| "-".into()),
                format!("{}/{}", slo.on_manifest, slo.eligible),
                if slo.percent.is_empty() {
                    "-".into()
                } else {
                    slo.percent
                },
                match slo.projected_to_meet {
                    Some(true) => "on track".into(),
                    Some(false) => "AT RISK".into(),
                    None => "-".into(),
                },
                [
                    r.spec.paused.then_some("paused"),
                    r.spec.expedite.then_some("expedite"),
                    r.spec.rollback.then_some("rollback"),
                ]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(","),
            ]
        })
        .collect();
    table(
        &[
            "ROLLOUT",
            "PHASE",
            "RELEASE",
            "RING",
            "PATCHED",
            "SLO",
            "PROJECTION",
            "FLAGS",
        ],
        &rows,
    )
}

/// The rings table of one rollout.
pub fn rings_table(r: &PatchRollout) -> String {
    let s = r.status.clone().unwrap_or_default();
    let rows: Vec<Vec<String>> = s
        .rings
        .iter()
        .map(|g| {
            vec![
                g.name.clone(),
                g.phase
                    .map(|p| format!("{p:?}"))
                    .unwrap_or_else(|| "-".into()),
                ts(g.start_not_before.as_ref()),
                ts(g.started_time.as_ref()),
                ts(g.completed_time.as_ref()),
                format!(
                    "{}{}",
                    ts(g.deadline.as_ref()),
                    if g.deadline_missed { " (missed)" } else { "" }
                ),
                format!("{}/{}", g.succeeded, g.total),
                g.failed.to_string(),
                g.in_progress.to_string(),
                g.waves.len().to_string(),
            ]
        })
        .collect();
    let mut out = format!(
        "Rollout {} ({}):\n",
        r.name_any(),
        s.phase
            .map(|p| format!("{p:?}"))
            .unwrap_or_else(|| "-".into())
    );
    out.push_str(&table(
        &[
            "RING",
            "PHASE",
            "NOT BEFORE",
            "STARTED",
            "COMPLETED",
            "DEADLINE",
            "SUCCEEDED",
            "FAILED",
            "IN PROGRESS",
            "WAVES",
        ],
        &rows,
    ));
    for c in s.conditions.iter().filter(|c| c.status == "True") {
        let _ = writeln!(out, "{}: {} ({})", c.type_, c.message, c.reason);
    }
    out
}

struct Cluster {
    client: Client,
    ns: String,
    clock: Clock,
    install_duration: Duration,
}

impl Cluster {
    fn rollouts(&self) -> Api<PatchRollout> {
        Api::namespaced(self.client.clone(), &self.ns)
    }
    fn rings(&self) -> Api<UpdateRing> {
        Api::namespaced(self.client.clone(), &self.ns)
    }
    fn vms(&self) -> Api<VirtualMachine> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    async fn all(&self) -> anyhow::Result<Snapshot> {
        let lp = ListParams::default();
        let mut rollouts: Vec<Arc<PatchRollout>> = self
            .rollouts()
            .list(&lp)
            .await
            .context("listing PatchRollouts")?
            .items
            .into_iter()
            .map(Arc::new)
            .collect();
        rollouts.sort_by_key(|r| (r.spec.release_time.0, r.name_any()));
        let rings = self
            .rings()
            .list(&lp)
            .await
            .context("listing UpdateRings")?
            .items
            .into_iter()
            .map(Arc::new)
            .collect();
        let vms = self
            .vms()
            .list(&lp)
            .await
            .context("listing VirtualMachines")?
            .items
            .into_iter()
            .map(Arc::new)
            .collect();
        Ok(Snapshot {
            rollouts,
            rings,
            vms,
        })
    }

    fn settings(&self, r: &PatchRollout) -> Settings {
        Settings {
            pairs: r
                .status
                .as_ref()
                .map(|s| {
                    s.region_pairs
                        .iter()
                        .filter_map(|p| p.split_once('/'))
                        .map(|(a, b)| (a.to_string(), b.to_string()))
                        .collect()
                })
                .unwrap_or_default(),
            expected_duration: self.install_duration,
        }
    }

    async fn spec_patch<K>(
        &self,
        api: Api<K>,
        name: &str,
        spec: serde_json::Value,
    ) -> anyhow::Result<()>
    where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
        <K as kube::Resource>::DynamicType: Default,
    {
        api.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "spec": spec })),
        )
        .await
        .map_err(|e| match e {
            kube::Error::Api(s) if s.code == 404 => anyhow!(
                "{} {name:?} not found in namespace {}",
                K::kind(&Default::default()),
                self.ns
            ),
            e => anyhow!(e),
        })?;
        Ok(())
    }
}

/// The rollout to act on: the named one, else the single unfinished one.
fn pick(rollouts: &[Arc<PatchRollout>], name: Option<&str>) -> anyhow::Result<Arc<PatchRollout>> {
    if let Some(n) = name {
        return rollouts
            .iter()
            .find(|r| r.name_any() == n)
            .cloned()
            .ok_or_else(|| anyhow!("PatchRollout {n:?} not found"));
    }
    let unfinished: Vec<&Arc<PatchRollout>> = rollouts
        .iter()
        .filter(|r| {
            !matches!(
                r.status.as_ref().and_then(|s| s.phase),
                Some(RolloutPhase::Succeeded | RolloutPhase::RolledBack)
            )
        })
        .collect();
    match unfinished.as_slice() {
        [one] => Ok((*one).clone()),
        [] => rollouts
            .last()
            .cloned()
            .ok_or_else(|| anyhow!("no PatchRollouts in this namespace")),
        many => bail!(
            "several unfinished rollouts ({}): name one",
            many.iter()
                .map(|r| r.name_any())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// What the plugin read from the namespace.
pub struct Snapshot {
    pub rollouts: Vec<Arc<PatchRollout>>,
    pub rings: Vec<Arc<UpdateRing>>,
    pub vms: Vec<Arc<VirtualMachine>>,
}

/// The plan preview: what starts now, then the waves that would follow if every VM were ready
/// and succeeded.
pub fn plan_text(
    rollout: &PatchRollout,
    snap: &Snapshot,
    clock: &Clock,
    settings: &Settings,
    now: Timestamp,
) -> String {
    let g = gather(rollout, &snap.rollouts, &snap.rings, &snap.vms, clock);
    let out = decide_gathered(rollout, &g, now, settings, &Default::default());
    let mut text = String::new();
    let Some(ring_name) = out.status.current_ring.clone() else {
        return format!("Rollout {}: every ring is done.\n", rollout.name_any());
    };
    let Some(ri) = g.ring_names.iter().position(|n| *n == ring_name) else {
        return format!(
            "Rollout {}: ring {ring_name} not found.\n",
            rollout.name_any()
        );
    };
    let ring = &g.rings[ri];
    let _ = writeln!(
        text,
        "Rollout {} — phase {:?}, current ring {} ({})",
        rollout.name_any(),
        out.status.phase.unwrap_or(RolloutPhase::Pending),
        ring_name,
        out.status
            .rings
            .iter()
            .find(|p| p.name == ring_name)
            .and_then(|p| p.phase)
            .map(|p| format!("{p:?}"))
            .unwrap_or_else(|| "-".into())
    );
    let started_now: Vec<&str> = out
        .writes
        .iter()
        .filter(|w| !w.directive.rollback && g.views[w.vm].ring == Some(ri))
        .filter(|w| {
            g.views[w.vm]
                .vm
                .status
                .as_ref()
                .and_then(|s| s.desired.as_ref())
                .and_then(|d| d.installation.as_ref())
                != Some(&w.directive)
        })
        .map(|w| {
            g.views[w.vm]
                .vm
                .metadata
                .name
                .as_deref()
                .unwrap_or_default()
        })
        .collect();
    let members: Vec<usize> = (0..g.views.len())
        .filter(|i| g.views[*i].ring == Some(ri))
        .collect();
    let eligible: Vec<usize> = members
        .iter()
        .copied()
        .filter(|i| !matches!(out.states[*i], VmState::Skipped(_)))
        .collect();
    let _ = writeln!(
        text,
        "Now: {}",
        if started_now.is_empty() {
            "nothing starts".to_string()
        } else {
            started_now.join(", ")
        }
    );
    // Forward simulation in the ring: everything ready, every VM succeeds.
    let topo = Topology::new(
        &eligible
            .iter()
            .map(|i| rollout::facts(&g.views[*i]).placement)
            .collect::<Vec<_>>(),
        &settings.pairs,
    );
    let mut states: Vec<State> = eligible.iter().map(|i| out.states[*i].planner()).collect();
    for i in &started_now {
        if let Some(p) = eligible
            .iter()
            .position(|e| g.views[*e].vm.metadata.name.as_deref() == Some(*i))
        {
            states[p] = State::Patching;
        }
    }
    let limits = Limits {
        max_unavailable: rollout::max_unavailable(&ring.spec.max_unavailable, eligible.len()),
        max_failed: rollout::max_failed(ring.spec.health_gate.max_failed_percent, eligible.len()),
    };
    let sim = planner::simulate_from(&topo, states, limits, 10_000, |_| State::Succeeded);
    for (wave, (phase, start)) in sim.waves.iter().enumerate() {
        let names: Vec<&str> = start
            .iter()
            .map(|v| {
                g.views[eligible[*v as usize]]
                    .vm
                    .metadata
                    .name
                    .as_deref()
                    .unwrap_or_default()
            })
            .collect();
        let _ = writeln!(
            text,
            "Then wave +{} (phase {}): {}",
            wave + 1,
            phase.map_or(0, |x| x + 1),
            names.join(", ")
        );
    }
    let waiting: Vec<String> = eligible
        .iter()
        .filter_map(|i| match &out.states[*i] {
            VmState::Waiting(Some(r)) => Some(format!(
                "  {}: {r}",
                g.views[*i].vm.metadata.name.as_deref().unwrap_or_default()
            )),
            _ => None,
        })
        .collect();
    if !waiting.is_empty() {
        let _ = writeln!(text, "Waiting:");
        for w in waiting {
            let _ = writeln!(text, "{w}");
        }
    }
    text
}

/// Why a VM is or is not being patched.
pub fn why_text(
    vm_name: &str,
    rollout: &PatchRollout,
    snap: &Snapshot,
    clock: &Clock,
    settings: &Settings,
    now: Timestamp,
) -> anyhow::Result<String> {
    let g = gather(rollout, &snap.rollouts, &snap.rings, &snap.vms, clock);
    let Some(i) = g
        .views
        .iter()
        .position(|v| v.vm.metadata.name.as_deref() == Some(vm_name))
    else {
        bail!("VirtualMachine {vm_name:?} not found");
    };
    let out = decide_gathered(rollout, &g, now, settings, &Default::default());
    let v = &g.views[i];
    let vm = &v.vm;
    let status = vm.status.clone().unwrap_or_default();
    let mut text = String::new();
    let _ = writeln!(
        text,
        "VirtualMachine {vm_name} — rollout {}",
        rollout.name_any()
    );
    let mode = status
        .patch_mode
        .or(vm.spec.patch_settings.patch_mode)
        .map(|m| format!("{m:?}"))
        .unwrap_or_else(|| "-".into());
    let _ = writeln!(text, "  patch mode:   {mode}");
    let _ = writeln!(
        text,
        "  eligibility:  {}",
        v.ineligible.clone().unwrap_or_else(|| "eligible".into())
    );
    let _ = writeln!(
        text,
        "  heartbeat:    {}",
        if v.running {
            "present"
        } else {
            "missing (not running)"
        }
    );
    let ring = v.ring.map(|r| g.ring_names[r].clone());
    let _ = writeln!(
        text,
        "  ring:         {}",
        ring.clone()
            .unwrap_or_else(|| "none (no ring selects it and no share takes it)".into())
    );
    if let Some(r) = v.ring
        && let Some(p) = out.status.rings.iter().find(|p| p.name == g.ring_names[r])
    {
        let spec = &g.rings[r].spec;
        let _ = writeln!(
            text,
            "  ring phase:   {}; not before {}; deferral {}{}; deadline {}",
            p.phase
                .map(|p| format!("{p:?}"))
                .unwrap_or_else(|| "-".into()),
            ts(p.start_not_before.as_ref()),
            spec.deferral,
            if rollout.spec.expedite {
                " (skipped: expedite)"
            } else {
                ""
            },
            ts(p.deadline.as_ref())
        );
        let _ = writeln!(
            text,
            "  health gate:  maxFailedPercent {}, healthyFor {}, bakeTime {}; {} failed of {}{}",
            spec.health_gate.max_failed_percent,
            spec.health_gate.healthy_for,
            spec.health_gate.bake_time,
            p.failed,
            p.total,
            if spec.paused { "; ring paused" } else { "" }
        );
    }
    match &v.window {
        Some((w, tz)) => {
            let local = now.to_zoned(tz.clone());
            let open = w.current(tz, now).map(|(_, end)| end);
            let _ = writeln!(
                text,
                "  window:       {:02}:{:02} for {} in {} (now {}): {}",
                w.hour,
                w.minute,
                crate::logic::duration::format(w.length),
                vm.spec.time_zone,
                local.strftime("%a %H:%M"),
                match open {
                    Some(end) =>
                        format!("open until {}", end.to_zoned(tz.clone()).strftime("%H:%M")),
                    None => format!(
                        "closed; next opening {}",
                        w.next_opening(tz, now)
                            .map(|t| t
                                .to_zoned(tz.clone())
                                .strftime("%a %Y-%m-%d %H:%M")
                                .to_string())
                            .unwrap_or_else(|| "never".into())
                    ),
                }
            );
        }
        None => {
            let _ = writeln!(text, "  window:       none (installs may start any time)");
        }
    }
    let verdict = match &out.states[i] {
        VmState::Skipped(r) => format!("not patched: {r}"),
        VmState::UpToDate => "already has every package of the release manifest".into(),
        VmState::Waiting(Some(r)) => format!("waiting: {r}"),
        VmState::Waiting(None) => "starts in the next wave".into(),
        VmState::Patching => {
            if out
                .writes
                .iter()
                .any(|w| w.vm == i && !w.directive.rollback)
            {
                "starts now".into()
            } else {
                "patching (installing, or proving healthy for healthyFor)".into()
            }
        }
        VmState::Succeeded => "patched and proven healthy".into(),
        VmState::Failed(r) => format!("failed: {r}"),
        VmState::RolledBack => "rolled back to the versions recorded before the install".into(),
    };
    let _ = writeln!(text, "  verdict:      {verdict}");
    Ok(text)
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let clock = Clock::from_args(&cli.clock).map_err(anyhow::Error::msg)?;
    let config = kube::Config::infer()
        .await
        .context("reading the kubeconfig")?;
    let ns = cli
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config).context("connecting to the cluster")?;
    let c = Cluster {
        client,
        ns,
        clock,
        install_duration: cli.install_duration,
    };
    let now = c.clock.now();
    let pausing = matches!(cli.command, Command::Pause { .. });
    match cli.command {
        Command::Status { rollout } => {
            let rollouts = c.all().await?.rollouts;
            if rollouts.is_empty() {
                println!("No PatchRollouts in namespace {}.", c.ns);
                return Ok(());
            }
            match rollout {
                Some(n) => print!("{}", rings_table(&*pick(&rollouts, Some(&n))?)),
                None => {
                    print!("{}", rollouts_table(&rollouts));
                    if let Ok(r) = pick(&rollouts, None) {
                        println!();
                        print!("{}", rings_table(&r));
                    }
                }
            }
        }
        Command::Plan { rollout } => {
            let snap = c.all().await?;
            let r = pick(&snap.rollouts, Some(&rollout))?;
            print!("{}", plan_text(&r, &snap, &c.clock, &c.settings(&r), now));
        }
        Command::Pause { rollout, ring } | Command::Resume { rollout, ring } => {
            let paused = pausing;
            let verb = if paused { "paused" } else { "resumed" };
            match (ring, rollout) {
                (Some(ring), _) => {
                    c.spec_patch(c.rings(), &ring, serde_json::json!({ "paused": paused }))
                        .await?;
                    println!("updatering/{ring} {verb}");
                }
                (None, name) => {
                    let rollouts = c.all().await?.rollouts;
                    let r = pick(&rollouts, name.as_deref())?;
                    c.spec_patch(
                        c.rollouts(),
                        &r.name_any(),
                        serde_json::json!({ "paused": paused }),
                    )
                    .await?;
                    println!("patchrollout/{} {verb}", r.name_any());
                }
            }
        }
        Command::Expedite { rollout } => {
            c.spec_patch(
                c.rollouts(),
                &rollout,
                serde_json::json!({ "expedite": true }),
            )
            .await?;
            println!("patchrollout/{rollout} expedited: deferrals are skipped");
        }
        Command::Rollback { rollout } => {
            c.spec_patch(
                c.rollouts(),
                &rollout,
                serde_json::json!({ "rollback": true }),
            )
            .await?;
            println!(
                "patchrollout/{rollout} rolling back: its VMs return to the versions recorded before the install"
            );
        }
        Command::Assess { vm } => {
            let id = format!("{}", Timestamp::now().as_second());
            c.vms()
                .patch(
                    &vm,
                    &PatchParams::default(),
                    &Patch::Merge(serde_json::json!({ "metadata": { "annotations": { crate::logic::vm::ASSESS_ANNOTATION: id } } })),
                )
                .await
                .map_err(|e| match e {
                    kube::Error::Api(s) if s.code == 404 => anyhow!("VirtualMachine {vm:?} not found in namespace {}", c.ns),
                    e => anyhow!(e),
                })?;
            println!(
                "virtualmachine/{vm}: on-demand assessment {id} requested (it never installs)"
            );
        }
        Command::Members { ring } => {
            let Snapshot { rings, vms, .. } = c.all().await?;
            let rings = rollout::sorted_rings(&rings);
            let Some(ri) = rings.iter().position(|r| r.name_any() == ring) else {
                bail!("UpdateRing {ring:?} not found in namespace {}", c.ns);
            };
            let rows: Vec<Vec<String>> = rollout::views(&vms, &rings, &c.clock)
                .into_iter()
                .filter(|v| v.ring == Some(ri))
                .map(|v| {
                    vec![
                        v.vm.name_any(),
                        if v.ineligible.is_none() {
                            "yes".into()
                        } else {
                            "no".into()
                        },
                        v.ineligible.unwrap_or_default(),
                    ]
                })
                .collect();
            print!("{}", table(&["VM", "ELIGIBLE", "WHY NOT"], &rows));
        }
        Command::Why { vm, rollout } => {
            let snap = c.all().await?;
            let r = pick(&snap.rollouts, rollout.as_deref())?;
            print!(
                "{}",
                why_text(&vm, &r, &snap, &c.clock, &c.settings(&r), now)?
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let t = table(
            &["A", "BB"],
            &[
                vec!["long-value".into(), "x".into()],
                vec!["s".into(), "yy".into()],
            ],
        );
        assert_eq!(t, "A            BB\nlong-value   x\ns            yy\n");
    }
}
