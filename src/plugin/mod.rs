//! `kubectl automend`: the kubectl plugin (binary `kubectl-automend` on the PATH).
//!
//! `status` and `plan` read rollouts, rings and VMs and run the same decision code as the
//! controller; `pause`, `resume`, `expedite` and `rollback` edit a rollout's (or a ring's) spec;
//! `assess` asks for an on-demand assessment; `why` explains where a VM stands.

mod cluster;
mod plan;
mod tables;
mod why;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::{Client, ResourceExt};

use crate::api::{PatchRollout, UpdateRing, VirtualMachine};
use crate::clock::{Clock, ClockArgs};
use crate::logic::rollout;

use cluster::{Cluster, pick};
pub use plan::plan_text;
pub use tables::{rings_table, rollouts_table, table};
pub use why::why_text;

/// What the plugin read from the namespace.
pub struct Snapshot {
    pub rollouts: Vec<Arc<PatchRollout>>,
    pub rings: Vec<Arc<UpdateRing>>,
    pub vms: Vec<Arc<VirtualMachine>>,
}

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
    match cli.command {
        Command::Status { rollout } => status(&c, rollout).await,
        Command::Plan { rollout } => {
            let snap = c.all().await?;
            let r = pick(&snap.rollouts, Some(&rollout))?;
            print!("{}", plan_text(&r, &snap, &c.clock, &c.settings(&r), now));
            Ok(())
        }
        Command::Pause { rollout, ring } => pause(&c, rollout, ring, true).await,
        Command::Resume { rollout, ring } => pause(&c, rollout, ring, false).await,
        Command::Expedite { rollout } => {
            c.spec_patch(
                c.rollouts(),
                &rollout,
                serde_json::json!({ "expedite": true }),
            )
            .await?;
            println!("patchrollout/{rollout} expedited: deferrals are skipped");
            Ok(())
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
            Ok(())
        }
        Command::Assess { vm } => assess(&c, &vm).await,
        Command::Members { ring } => members(&c, &ring).await,
        Command::Why { vm, rollout } => {
            let snap = c.all().await?;
            let r = pick(&snap.rollouts, rollout.as_deref())?;
            print!(
                "{}",
                why_text(&vm, &r, &snap, &c.clock, &c.settings(&r), now)?
            );
            Ok(())
        }
    }
}

async fn status(c: &Cluster, rollout: Option<String>) -> anyhow::Result<()> {
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
    Ok(())
}

async fn pause(
    c: &Cluster,
    rollout: Option<String>,
    ring: Option<String>,
    paused: bool,
) -> anyhow::Result<()> {
    let verb = if paused { "paused" } else { "resumed" };
    let spec = serde_json::json!({ "paused": paused });
    match ring {
        Some(ring) => {
            c.spec_patch(c.rings(), &ring, spec).await?;
            println!("updatering/{ring} {verb}");
        }
        None => {
            let rollouts = c.all().await?.rollouts;
            let r = pick(&rollouts, rollout.as_deref())?;
            c.spec_patch(c.rollouts(), &r.name_any(), spec).await?;
            println!("patchrollout/{} {verb}", r.name_any());
        }
    }
    Ok(())
}

async fn assess(c: &Cluster, vm: &str) -> anyhow::Result<()> {
    let id = format!("{}", Timestamp::now().as_second());
    let patch = serde_json::json!({
        "metadata": { "annotations": { crate::logic::vm::ASSESS_ANNOTATION: id } }
    });
    c.vms()
        .patch(vm, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map_err(|e| match e {
            kube::Error::Api(s) if s.code == 404 => {
                anyhow!("VirtualMachine {vm:?} not found in namespace {}", c.ns)
            }
            e => anyhow!(e),
        })?;
    println!("virtualmachine/{vm}: on-demand assessment {id} requested (it never installs)");
    Ok(())
}

async fn members(c: &Cluster, ring: &str) -> anyhow::Result<()> {
    let Snapshot { rings, vms, .. } = c.all().await?;
    let rings = rollout::sorted_rings(&rings);
    let Some(ri) = rings.iter().position(|r| r.name_any() == ring) else {
        bail!("UpdateRing {ring:?} not found in namespace {}", c.ns);
    };
    let rows: Vec<Vec<String>> = rollout::views(&vms, &rings, &c.clock)
        .into_iter()
        .filter(|v| v.ring == Some(ri))
        .map(|v| {
            let eligible = if v.ineligible.is_none() { "yes" } else { "no" };
            vec![
                v.vm.name_any(),
                eligible.into(),
                v.ineligible.unwrap_or_default(),
            ]
        })
        .collect();
    print!("{}", table(&["VM", "ELIGIBLE", "WHY NOT"], &rows));
    Ok(())
}
