//! `kubectl automend`: the kubectl plugin (binary `kubectl-automend` on the PATH).
//!
//! `status` and `plan` read rollouts, rings and VMs and run the same decision code as the
//! controller; `pause`, `resume`, `expedite`, `promote`, `retry`, `abort` and `rollback` edit a
//! rollout's (or a ring's) spec after checking they can do what they say (`controls`); `assess`
//! asks for an on-demand assessment; `why` explains where a VM stands; `vm` shows one VM.

/// Print to stdout; a closed pipe (`kubectl automend status | head`) ends the output quietly
/// instead of panicking as `print!` does.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($arg)*);
    }};
}

/// `out!` with a newline.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

mod cluster;
mod controls;
pub mod enroll;
mod plan;
mod release;
mod tables;
mod views;
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
pub use controls::{Change, Verb};
pub use plan::plan_text;
pub use release::{exposed_text, manifest_text};
pub use tables::{rings_table, rollouts_table, table};
pub use views::{state_label, tree_text, vm_text};
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
        /// Follow the rollout (default: the unfinished one) as a tree of rings, waves and VMs,
        /// printed again on every change, until it finishes.
        #[arg(long, short = 'w')]
        watch: bool,
    },
    /// The waves the planner would run from now on in the rollout's current ring, and the
    /// release's manifest: packages, snapshot, and what was left out and why.
    Plan { rollout: String },
    /// The VMs still exposed to a CVE (their latest assessment offers an update that fixes it,
    /// where the repository's advisories name CVEs), and the rollouts that carry the fix.
    Exposed {
        /// A CVE id, e.g. CVE-2026-1234.
        cve: String,
    },
    /// Pause a rollout (or one ring with --ring): waves in flight finish, no new wave starts.
    Pause {
        rollout: Option<String>,
        #[arg(long)]
        ring: Option<String>,
    },
    /// Resume a paused rollout (or ring). A halted rollout is retried, rolled back or aborted.
    Resume {
        rollout: Option<String>,
        #[arg(long)]
        ring: Option<String>,
    },
    /// Skip the deferrals of the rings that have not started.
    Expedite { rollout: String },
    /// Promote the current ring: skip its deferral and the rest of its bake time (--skip-ring:
    /// pass over the ring; its VMs not yet patched are not patched by this rollout).
    Promote {
        rollout: Option<String>,
        #[arg(long)]
        skip_ring: bool,
    },
    /// Give the failed VMs another attempt; lifts a halt.
    Retry { rollout: String },
    /// Stop the rollout for good: nothing more is installed, nothing is rolled back.
    Abort { rollout: String },
    /// Return every VM the rollout installed on to the versions recorded before the install.
    Rollback { rollout: String },
    /// Ask a VM's guest for an on-demand patch assessment (it never installs).
    Assess {
        vm: String,
        /// Wait for the assessment and print it.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits.
        #[arg(long, default_value = "10m", value_parser = crate::logic::duration::parse)]
        timeout: Duration,
    },
    /// The VMs of a ring (selector, or share by stable hash), whether each takes part, and its
    /// state in the rollout (default: the unfinished one, else the most recent).
    Members {
        ring: String,
        #[arg(long)]
        rollout: Option<String>,
    },
    /// Why a VM is or is not being patched.
    Why {
        vm: String,
        /// The rollout to explain against (default: the unfinished one, else the most recent).
        #[arg(long)]
        rollout: Option<String>,
    },
    /// One VM: configuration, drift, patching and identity.
    Vm { vm: String },
    /// The image catalog the controller uses (the chart's ConfigMap, labelled
    /// automend.io/image-catalog).
    Catalog,
    /// Enroll machines: create an Enrollment and print its token with a cloud-init or shell
    /// snippet, or print another token for one.
    #[command(subcommand)]
    Enroll(enroll::EnrollCommand),
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
        Command::Status { rollout, watch } if watch => watch_tree(&c, rollout).await,
        Command::Status { rollout, .. } => status(&c, rollout).await,
        Command::Plan { rollout } => {
            let snap = c.all().await?;
            let r = pick(&snap.rollouts, Some(&rollout))?;
            out!("{}", plan_text(&r, &snap, &c.clock, &c.settings(&r), now));
            Ok(())
        }
        Command::Exposed { cve } => {
            let snap = c.all().await?;
            out!("{}", exposed_text(&cve, &snap.vms, &snap.rollouts));
            Ok(())
        }
        Command::Pause {
            ring: Some(ring), ..
        } => ring_pause(&c, &ring, true).await,
        Command::Resume {
            ring: Some(ring), ..
        } => ring_pause(&c, &ring, false).await,
        Command::Pause { rollout, .. } => control(&c, Verb::Pause, rollout.as_deref()).await,
        Command::Resume { rollout, .. } => control(&c, Verb::Resume, rollout.as_deref()).await,
        Command::Expedite { rollout } => control(&c, Verb::Expedite, Some(&rollout)).await,
        Command::Promote { rollout, skip_ring } => {
            control(&c, Verb::Promote { skip: skip_ring }, rollout.as_deref()).await
        }
        Command::Retry { rollout } => control(&c, Verb::Retry, Some(&rollout)).await,
        Command::Abort { rollout } => control(&c, Verb::Abort, Some(&rollout)).await,
        Command::Rollback { rollout } => control(&c, Verb::Rollback, Some(&rollout)).await,
        Command::Assess { vm, wait, timeout } => assess(&c, &vm, wait.then_some(timeout)).await,
        Command::Members { ring, rollout } => members(&c, &ring, rollout.as_deref()).await,
        Command::Why { vm, rollout } => {
            let snap = c.all().await?;
            let r = pick(&snap.rollouts, rollout.as_deref())?;
            out!(
                "{}",
                why_text(&vm, &r, &snap, &c.clock, &c.settings(&r), now)?
            );
            Ok(())
        }
        Command::Vm { vm } => {
            let obj = c.vm(&vm).await?;
            let renewed = c.lease_renewed(&vm).await?;
            out!("{}", vm_text(&obj, renewed, Timestamp::now()));
            Ok(())
        }
        Command::Catalog => {
            out!("{}", c.catalog().await?);
            Ok(())
        }
        Command::Enroll(cmd) => {
            out!("{}", enroll::run(c.client.clone(), &c.ns, cmd).await?);
            Ok(())
        }
    }
}

async fn status(c: &Cluster, rollout: Option<String>) -> anyhow::Result<()> {
    let rollouts = c.all().await?.rollouts;
    if rollouts.is_empty() {
        outln!("No PatchRollouts in namespace {}.", c.ns);
        return Ok(());
    }
    match rollout {
        Some(n) => out!("{}", rings_table(&*pick(&rollouts, Some(&n))?)),
        None => {
            out!("{}", rollouts_table(&rollouts));
            if let Ok(r) = pick(&rollouts, None) {
                outln!();
                out!("{}", rings_table(&r));
            }
        }
    }
    Ok(())
}

/// A rollout verb: refused with the reason when it cannot do what it says.
async fn control(c: &Cluster, verb: Verb, rollout: Option<&str>) -> anyhow::Result<()> {
    let rollouts = c.all().await?.rollouts;
    let r = pick(&rollouts, rollout)?;
    match controls::decide(verb, &r).map_err(anyhow::Error::msg)? {
        Change::Nothing(text) => outln!("{text}"),
        Change::Patch { spec, done } => {
            c.spec_patch_checked(&r, spec).await?;
            outln!("{done}");
        }
    }
    Ok(())
}

async fn ring_pause(c: &Cluster, ring: &str, paused: bool) -> anyhow::Result<()> {
    let current = c
        .rings()
        .get_opt(ring)
        .await?
        .ok_or_else(|| anyhow!("UpdateRing {ring:?} not found in namespace {}", c.ns))?;
    let verb = if paused { "paused" } else { "resumed" };
    if current.spec.paused == paused {
        outln!(
            "updatering/{ring} is {} paused",
            if paused { "already" } else { "not" }
        );
        return Ok(());
    }
    c.spec_patch(c.rings(), ring, serde_json::json!({ "paused": paused }))
        .await?;
    outln!("updatering/{ring} {verb}");
    Ok(())
}

async fn watch_tree(c: &Cluster, rollout: Option<String>) -> anyhow::Result<()> {
    let mut last = String::new();
    loop {
        let snap = c.all().await?;
        let r = pick(&snap.rollouts, rollout.as_deref())?;
        let now = c.clock.now();
        let states = views::states(&r, &snap, &c.clock, &c.settings(&r), now);
        let text = tree_text(&r, &states);
        if text != last {
            outln!("--- {}", Timestamp::now().strftime("%H:%M:%S"));
            out!("{text}");
            last = text;
        }
        if rollout::finished(r.status.as_ref().and_then(|s| s.phase)) {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

async fn assess(c: &Cluster, vm: &str, wait: Option<Duration>) -> anyhow::Result<()> {
    let current = c.vm(vm).await?;
    if !current.spec.management.enabled {
        bail!(
            "virtualmachine/{vm} is not managed (spec.management.enabled is false): no guest acts on an assessment request"
        );
    }
    let id = format!("{}", Timestamp::now().as_millisecond());
    let patch = serde_json::json!({
        "metadata": { "annotations": { crate::logic::vm::ASSESS_ANNOTATION: id } }
    });
    c.vms()
        .patch(vm, &PatchParams::default(), &Patch::Merge(patch))
        .await?;
    let running = current
        .status
        .as_ref()
        .and_then(|s| s.phase)
        .is_some_and(|p| p != crate::api::VmPhase::Pending);
    outln!(
        "virtualmachine/{vm}: on-demand assessment {id} requested (it never installs){}",
        if running {
            ""
        } else {
            "; the VM has no heartbeat, so its guest runs it when the VM returns"
        }
    );
    let Some(limit) = wait else {
        return Ok(());
    };
    let activity = format!("ondemand-{id}");
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let now = c.vm(vm).await?;
        if let Some(a) = now
            .status
            .as_ref()
            .and_then(|s| s.patch_status.as_ref())
            .and_then(|p| p.available_patch_summary.as_ref())
            .filter(|a| a.assessment_activity_id.as_deref() == Some(activity.as_str()))
            .filter(|a| a.status != crate::api::OperationStatus::InProgress)
        {
            outln!(
                "assessment {id}: {:?} — {} critical/security, {} other{}{}",
                a.status,
                a.critical_and_security_patch_count,
                a.other_patch_count,
                if a.reboot_pending {
                    ", reboot pending"
                } else {
                    ""
                },
                a.error.as_ref().map_or(String::new(), |e| format!(
                    ": {}",
                    crate::logic::text::safe(e, 512)
                ))
            );
            if a.status == crate::api::OperationStatus::Failed {
                bail!("the assessment failed");
            }
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "no answer to assessment {id} within {}; it stays requested",
                crate::logic::duration::format(limit)
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn members(c: &Cluster, ring: &str, rollout: Option<&str>) -> anyhow::Result<()> {
    let snap = c.all().await?;
    let rings = rollout::sorted_rings(&snap.rings);
    let Some(ri) = rings.iter().position(|r| r.name_any() == ring) else {
        bail!("UpdateRing {ring:?} not found in namespace {}", c.ns);
    };
    // Each VM's state in the rollout it would be patched by (none yet: no state).
    let picked = match rollout {
        Some(_) => Some(pick(&snap.rollouts, rollout)?),
        None => pick(&snap.rollouts, None).ok(),
    };
    let states = picked
        .as_ref()
        .map(|r| views::states(r, &snap, &c.clock, &c.settings(r), c.clock.now()));
    let rows: Vec<Vec<String>> = rollout::views(&snap.vms, &rings, &c.clock)
        .into_iter()
        .filter(|v| v.ring == Some(ri))
        .map(|v| {
            let name = v.vm.name_any();
            let eligible = if v.ineligible.is_none() { "yes" } else { "no" };
            let state = states
                .as_ref()
                .and_then(|s| s.get(&name))
                .map_or("-".into(), |(_, s)| state_label(s));
            vec![
                name,
                eligible.into(),
                v.ineligible.unwrap_or_default(),
                state,
            ]
        })
        .collect();
    if let Some(r) = &picked {
        outln!("rollout {}:", r.name_any());
    }
    out!("{}", table(&["VM", "ELIGIBLE", "WHY NOT", "STATE"], &rows));
    Ok(())
}
