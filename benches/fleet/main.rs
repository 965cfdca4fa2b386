//! The fleet bench (`hack/bench.sh`, which starts a control plane of its own and runs this): on
//! that API server, with the release build of `automend`, in one run it measures
//! - onboarding: N VMs created at a fixed concurrency, the controller and the simulator running,
//!   until every VM is Configured; API requests per VM by verb and resource (the API server's
//!   own `apiserver_request_total`), the controller's reconciles, status writes and API requests
//!   per VM (`automend_api_requests_total`), CPU of the API server, controller and simulator;
//! - steady state: the same counters over a quiet minute with the fleet heartbeating;
//! - a rollout over the fleet: its first wave, the whole rollout, and what it cost;
//! - the write floor: the writes onboarding needs per VM, from a plain client at the same
//!   concurrency, and onboarding's ratio to it;
//! - controller memory (VmRSS) with N VMs and with 10,000, and the API server's CPU per guest
//!   request with 500, 2,000 and 10,000 guest identities in one namespace.
//!
//! Everything it prints is also written to `--out` (markdown).

mod probe;
mod work;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use automend::api::{PatchRollout, RolloutPhase, VmPhase};
use clap::Parser;
use kube::api::{Api, PostParams};
use kube::{Client, Config};
use probe::Requests;
use serde_json::json;

#[derive(Parser)]
struct Args {
    /// VMs to onboard (with simulated guests).
    #[arg(long, default_value_t = 2000)]
    vms: usize,
    /// VMs (without guests) for the memory and identity measurements.
    #[arg(long, default_value_t = 10_000)]
    big: usize,
    /// Requests in flight at once, for creating VMs and for the floor.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// The `automend` binary (release build).
    #[arg(long)]
    automend: PathBuf,
    /// The API server's process id (its CPU time is read from /proc).
    #[arg(long)]
    apiserver_pid: u32,
    /// Seconds of steady state to measure.
    #[arg(long, default_value_t = 60)]
    steady_seconds: u64,
    /// Folder for the controller's and the simulator's logs.
    #[arg(long)]
    logs: PathBuf,
    /// Markdown file the results are written to.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Measure only controller memory and the guest identity model (no onboarding, steady state,
    /// rollout or floor): the quick loop when working on memory.
    #[arg(long)]
    only_memory: bool,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// A process the bench started (the controller or the simulator), killed when dropped.
struct Proc {
    child: Child,
    port: u16,
}

impl Proc {
    fn spawn(args: &Args, name: &str, extra: &[&str]) -> anyhow::Result<Proc> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let log = std::fs::File::create(args.logs.join(format!("{name}.log")))?;
        let mut cmd = Command::new(&args.automend);
        // The controller's log names the fields of every VM status write (what each one was for).
        let log_level = if extra.first() == Some(&"controller") {
            "warn,automend::controller::vm=debug"
        } else {
            "warn"
        };
        cmd.args(extra)
            .env("RUST_LOG", log_level)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // A heap profiler for the memory measurement's controller, e.g.
        // AUTOMEND_BENCH_PRELOAD=/usr/lib/heaptrack/libheaptrack_preload.so with
        // DUMP_HEAPTRACK_OUTPUT=<file> (then `heaptrack_interpret < file`); the process stays
        // the one whose memory is measured.
        if let (Ok(lib), "controller-big") = (std::env::var("AUTOMEND_BENCH_PRELOAD"), name) {
            cmd.env("LD_PRELOAD", lib);
        }
        if extra.first() == Some(&"controller") {
            cmd.arg("--http-addr").arg(format!("127.0.0.1:{port}"));
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", args.automend.display()))?;
        Ok(Proc { child, port })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    async fn ready(&self) -> anyhow::Result<()> {
        for _ in 0..120 {
            if probe::controller_metrics(self.port).await.is_ok() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        anyhow::bail!("the controller did not serve /metrics within 60 s")
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every counter the bench compares before and after a step; a difference of two samples is
/// one too (per VM or per minute).
struct Counters {
    api: Requests,
    ctl: Requests,
    reconciles: f64,
    status_writes: f64,
    apiserver_cpu: f64,
    controller_cpu: f64,
    sim_cpu: f64,
}

struct Sample {
    at: Instant,
    counters: Counters,
}

async fn sample(
    client: &Client,
    args: &Args,
    ctl: &Proc,
    sim: Option<&Proc>,
) -> anyhow::Result<Sample> {
    let text = probe::controller_metrics(ctl.port).await?;
    Ok(Sample {
        at: Instant::now(),
        counters: Counters {
            api: probe::apiserver_requests(&probe::apiserver_metrics(client).await?),
            ctl: probe::controller_requests(&text),
            reconciles: probe::counter(&text, "automend_reconciles_total"),
            status_writes: probe::counter(&text, "automend_status_writes_total"),
            apiserver_cpu: probe::cpu_seconds(args.apiserver_pid)?,
            controller_cpu: probe::cpu_seconds(ctl.pid())?,
            sim_cpu: sim.map_or(Ok(0.0), |s| probe::cpu_seconds(s.pid()))?,
        },
    })
}

/// `b - a`, per `per` (VMs or minutes).
fn diff(a: &Sample, b: &Sample, per: f64) -> Counters {
    let (a, b) = (&a.counters, &b.counters);
    let scale = |r: Requests| r.into_iter().map(|(k, v)| (k, v / per)).collect();
    Counters {
        api: scale(probe::delta(&a.api, &b.api)),
        ctl: scale(probe::delta(&a.ctl, &b.ctl)),
        reconciles: (b.reconciles - a.reconciles) / per,
        status_writes: (b.status_writes - a.status_writes) / per,
        apiserver_cpu: (b.apiserver_cpu - a.apiserver_cpu) / per,
        controller_cpu: (b.controller_cpu - a.controller_cpu) / per,
        sim_cpu: (b.sim_cpu - a.sim_cpu) / per,
    }
}

/// The report, printed as it grows and written to `--out` at the end.
#[derive(Default)]
struct Report(String);

impl Report {
    fn write(&self, args: &Args) -> anyhow::Result<()> {
        if let Some(out) = &args.out {
            std::fs::write(out, &self.0)?;
            println!("\nwritten to {}", out.display());
        }
        Ok(())
    }

    fn line(&mut self, text: impl AsRef<str>) {
        println!("{}", text.as_ref());
        let _ = writeln!(self.0, "{}", text.as_ref());
    }

    fn requests(&mut self, title: &str, r: &Requests, unit: &str) {
        self.line(format!(
            "\n{title}\n\n| verb | resource | {unit} |\n| --- | --- | ---: |"
        ));
        let mut rows: Vec<_> = r.iter().filter(|(_, v)| **v >= 0.05).collect();
        rows.sort_by(|a, b| b.1.total_cmp(a.1));
        for ((verb, resource), v) in rows {
            self.line(format!("| {verb} | {resource} | {v:.2} |"));
        }
        let rest = r.values().filter(|v| **v < 0.05).fold(0.0, |a, v| a + v);
        if rest > 0.0 {
            self.line(format!("| (others, each under 0.05) | | {rest:.2} |"));
        }
        let writes = probe::writes(r);
        let total = r.values().fold(0.0, |a, v| a + v);
        self.line(format!(
            "| all writes | | {writes:.2} |\n| all requests | | {total:.2} |"
        ));
    }

    fn costs(&mut self, d: &Counters, unit: &str) {
        self.line(format!(
            "\n| {unit} | value |\n| --- | ---: |\n| controller reconciles | {:.2} |\n| controller status writes | {:.2} |\n| controller API writes | {:.2} |\n| controller API requests | {:.2} |\n| API server CPU (ms) | {:.2} |\n| controller CPU (ms) | {:.2} |\n| simulator CPU (ms) | {:.2} |",
            d.reconciles,
            d.status_writes,
            probe::writes(&d.ctl),
            d.ctl.values().fold(0.0, |a, v| a + v),
            d.apiserver_cpu * 1000.0,
            d.controller_cpu * 1000.0,
            d.sim_cpu * 1000.0
        ));
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1024.0 / 1024.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.logs)?;
    let config = Config::infer().await?;
    let client = Client::try_from(config.clone())?;
    let mut report = Report::default();
    let n = args.vms;
    report.line(format!(
        "# Fleet bench: {n} VMs onboarded, {} for memory and identity; concurrency {}; {} cores; guest authorization: {}",
        args.big,
        args.concurrency,
        std::thread::available_parallelism().map_or(0, |p| p.get()),
        if work::webhook_mode().is_some() {
            "webhook (the controller answers the API server's reviews of guests)"
        } else {
            "rbac (a Role and RoleBinding per VM)"
        }
    ));
    setup(&client).await?;
    if args.only_memory {
        identity_and_memory(&client, &config, &args, &mut report, None).await?;
        return report.write(&args);
    }

    // Onboarding, with the controller and the simulated guests.
    work::namespace(&client, "bench").await?;
    let pairs = "--region-pairs=eastus=westus,northeurope=westeurope";
    let ctl_args = [
        "controller",
        "--leader-elect=false",
        "--namespace=bench",
        "--release-cadence=off",
        pairs,
    ];
    let ctl = Proc::spawn(&args, "controller", &ctl_args)?;
    ctl.ready().await?;
    let sim = Proc::spawn(
        &args,
        "sim",
        &[
            "sim",
            "-n",
            "bench",
            "--heartbeat-interval=60s",
            "--observe-interval=60s",
        ],
    )?;
    let before = sample(&client, &args, &ctl, Some(&sim)).await?;
    let start = Instant::now();
    work::create_vms(&client, "bench", "vm", 0..n, args.concurrency).await?;
    let onboarding = work::wait_phase(&client, "bench", n, Duration::from_secs(1800), start, |p| {
        p == Some(&VmPhase::Configured)
    })
    .await?;
    let after = sample(&client, &args, &ctl, Some(&sim)).await?;
    let rss_n = probe::rss_bytes(ctl.pid())?;
    let sim_rss = probe::rss_bytes(sim.pid())?;
    let d = diff(&before, &after, n as f64);
    report.line(format!(
        "\n## Onboarding\n\n{n} VMs Configured in {:.1} s ({:.1} VMs/s).",
        onboarding.as_secs_f64(),
        n as f64 / onboarding.as_secs_f64()
    ));
    report.requests(
        "API server requests per VM (every client):",
        &d.api,
        "per VM",
    );
    report.requests("Controller requests per VM:", &d.ctl, "per VM");
    report.costs(&d, "per VM");
    report.line(format!(
        "\nController RSS with {n} VMs: {:.1} MiB ({:.1} KiB per VM). Simulator RSS: {:.1} MiB ({:.1} KiB per guest).",
        mib(rss_n),
        rss_n as f64 / 1024.0 / n as f64,
        mib(sim_rss),
        sim_rss as f64 / 1024.0 / n as f64
    ));

    // Steady state: the fleet heartbeats, nothing changes.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let a = sample(&client, &args, &ctl, Some(&sim)).await?;
    tokio::time::sleep(Duration::from_secs(args.steady_seconds)).await;
    let b = sample(&client, &args, &ctl, Some(&sim)).await?;
    let minutes = b.at.duration_since(a.at).as_secs_f64() / 60.0;
    let d = diff(&a, &b, minutes);
    report.line(format!(
        "\n## Steady state ({n} VMs, guests heartbeating every 60 s)"
    ));
    report.requests("API server requests per minute:", &d.api, "per minute");
    report.costs(&d, "per minute");

    // A rollout over the fleet.
    let a = sample(&client, &args, &ctl, Some(&sim)).await?;
    let rollout = rollout(&client, n).await;
    let b = sample(&client, &args, &ctl, Some(&sim)).await?;
    match rollout {
        Ok(r) => {
            report.line(format!(
                "\n## A rollout over the {n} VMs (one ring, maxUnavailable 10%)\n\nFirst wave ({} VMs) done in {:.1} s; the rollout {} in {:.1} s over {} waves, {} VMs patched.",
                r.first_wave,
                r.first_wave_done.as_secs_f64(),
                r.phase,
                r.done.as_secs_f64(),
                r.waves,
                r.patched
            ));
            let d = diff(&a, &b, r.patched.max(1) as f64);
            report.requests("API server requests per patched VM:", &d.api, "per VM");
            report.costs(&d, "per patched VM");
        }
        Err(e) => report.line(format!("\n## A rollout over the fleet\n\nfailed: {e:#}")),
    }
    sim.stop();
    ctl.stop();

    // The floor: the same writes per VM from a plain client.
    let payload = work::Payload::from(&work::sample(&client, "bench").await?)?;
    work::namespace(&client, "floor").await?;
    let start = Instant::now();
    // With the guest authorizer, someone must answer the API server's reviews of the floor's
    // guests: the controller's authorizer, in this process (its CPU is not the API server's).
    let authorizer = match work::webhook_mode() {
        Some(a) => {
            let bound = automend::controller::authorizer::bind(&a).await?;
            let mut registry = prometheus_client::registry::Registry::default();
            let metrics = automend::controller::metrics::Metrics::register(&mut registry, true);
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            tokio::spawn(automend::controller::authorizer::serve(
                bound,
                None,
                metrics,
                async {
                    let _ = rx.await;
                },
            ));
            Some(tx)
        }
        None => None,
    };
    let rbac = authorizer.is_none();
    let per_vm = work::floor(
        &client,
        &config,
        "floor",
        n,
        args.concurrency,
        &payload,
        rbac,
    )
    .await?;
    let floor = start.elapsed();
    drop(authorizer);
    let identity_objects = if rbac {
        "ServiceAccount, Role and RoleBinding"
    } else {
        "ServiceAccount"
    };
    report.line(format!(
        "\n## The write floor\n\n{per_vm} requests per VM (create the VM, its {identity_objects}; the controller's first status; the guest's TokenRequest, its Lease (created with its first renewal) and status; the controller's second status) for {n} VMs at concurrency {}: {:.1} s ({:.0} requests/s).\n\n**Onboarding / floor: {:.2}**",
        args.concurrency,
        floor.as_secs_f64(),
        (per_vm * n) as f64 / floor.as_secs_f64(),
        onboarding.as_secs_f64() / floor.as_secs_f64()
    ));

    identity_and_memory(&client, &config, &args, &mut report, Some(rss_n)).await?;
    report.write(&args)
}

/// The profile every bench VM names: a maintenance window open now.
async fn setup(client: &Client) -> anyhow::Result<()> {
    let hour = jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .hour();
    let start = format!("{:02}:00", (hour + 23) % 24);
    let profile: automend::api::ConfigurationProfile = serde_json::from_value(json!({
        "apiVersion": "automend.io/v1alpha1", "kind": "ConfigurationProfile",
        "metadata": { "name": "bench" },
        "spec": { "environment": "DevTest", "preferences": { "updateManagement": {
            "maintenanceWindow": { "start": start, "duration": "12h" } } } }
    }))?;
    match Api::all(client.clone())
        .create(&PostParams::default(), &profile)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

struct RolloutResult {
    first_wave: usize,
    first_wave_done: Duration,
    done: Duration,
    phase: String,
    waves: usize,
    patched: usize,
}

/// One ring over the fleet and a rollout released a minute ago; until it ends (15 minutes at
/// most).
async fn rollout(client: &Client, n: usize) -> anyhow::Result<RolloutResult> {
    let ring: automend::api::UpdateRing = serde_json::from_value(json!({
        "apiVersion": "automend.io/v1alpha1", "kind": "UpdateRing",
        "metadata": { "name": "all" },
        "spec": { "order": 0, "selector": { "matchLabels": { "automend.io/ring": "all" } },
                  "deferral": "0s", "deadline": "0s", "maxUnavailable": "10%",
                  "healthGate": { "maxFailedPercent": 10, "bakeTime": "0s", "healthyFor": "0s" } }
    }))?;
    Api::namespaced(client.clone(), "bench")
        .create(&PostParams::default(), &ring)
        .await?;
    let release = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(60);
    let rollout: PatchRollout = serde_json::from_value(json!({
        "apiVersion": "automend.io/v1alpha1", "kind": "PatchRollout",
        "metadata": { "name": "bench" },
        "spec": { "releaseTime": release.to_string(), "classifications": ["Critical", "Security"] }
    }))?;
    let api: Api<PatchRollout> = Api::namespaced(client.clone(), "bench");
    api.create(&PostParams::default(), &rollout).await?;
    let start = Instant::now();
    let mut first: Option<(usize, Duration)> = None;
    loop {
        let r = api.get("bench").await?;
        let st = r.status.unwrap_or_default();
        let ring = st.rings.first();
        if first.is_none()
            && let Some(w) = ring.and_then(|g| g.waves.first())
            && w.completed_time.is_some()
        {
            first = Some((w.members.len(), start.elapsed()));
        }
        let ended = matches!(
            st.phase,
            Some(RolloutPhase::Succeeded | RolloutPhase::Halted)
        );
        if ended || start.elapsed() > Duration::from_secs(900) {
            let waves = ring.map_or(0, |g| g.waves.len());
            anyhow::ensure!(
                waves > 0,
                "no wave started within {:?}: rollout {:?}, ring {:?}",
                start.elapsed(),
                st.phase,
                ring.map(|g| (g.phase, g.total))
            );
            let (first_wave, first_wave_done) = first.unwrap_or((0, start.elapsed()));
            return Ok(RolloutResult {
                first_wave,
                first_wave_done,
                done: start.elapsed(),
                phase: st
                    .phase
                    .map_or("-".into(), |p| format!("{p:?}"))
                    .to_lowercase(),
                waves,
                patched: ring.map_or(0, |g| (g.succeeded + g.failed) as usize).min(n),
            });
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// Controller memory up to `args.big` VMs (without guests) and the API server's CPU per guest
/// request at 500, 2,000 and `args.big` guest identities in one namespace.
async fn identity_and_memory(
    client: &Client,
    config: &Config,
    args: &Args,
    report: &mut Report,
    rss_n: Option<u64>,
) -> anyhow::Result<()> {
    work::namespace(client, "big").await?;
    let ctl = Proc::spawn(
        args,
        "controller-big",
        &[
            "controller",
            "--leader-elect=false",
            "--namespace=big",
            "--release-cadence=off",
        ],
    )?;
    ctl.ready().await?;
    let rss0 = probe::rss_bytes(ctl.pid())?;
    report.line(format!(
        "\n## Memory and guest identities (VMs without guests, namespace big)\n\nController RSS with no VM: {:.1} MiB.\n\n| VMs (identities) in the namespace | controller RSS | per VM | API server CPU per guest GET | per cluster-admin GET |\n| ---: | ---: | ---: | ---: | ---: |",
        mib(rss0)
    ));
    let requests = 3000;
    let mut have = 0;
    let mut sizes: Vec<usize> = [500, 2000, args.big]
        .into_iter()
        .filter(|s| *s <= args.big)
        .collect();
    sizes.dedup();
    for size in sizes {
        work::create_vms(client, "big", "id", have..size, args.concurrency).await?;
        have = size;
        // Every VM processed: its identity exists and its status says Pending (no guest).
        work::wait_phase(
            client,
            "big",
            size,
            Duration::from_secs(1800),
            Instant::now(),
            |p| p.is_some(),
        )
        .await?;
        tokio::time::sleep(Duration::from_secs(5)).await;
        let names: Vec<String> = (0..20).map(|i| format!("id-{i:05}")).collect();
        let c0 = probe::cpu_seconds(args.apiserver_pid)?;
        work::guest_gets(client, config, "big", &names, requests, args.concurrency).await?;
        let c1 = probe::cpu_seconds(args.apiserver_pid)?;
        work::admin_gets(client, "big", &names, requests, args.concurrency).await?;
        let c2 = probe::cpu_seconds(args.apiserver_pid)?;
        let rss = probe::rss_bytes(ctl.pid())?;
        report.line(format!(
            "| {size} | {:.1} MiB | {:.2} KiB | {:.3} ms | {:.3} ms |",
            mib(rss),
            rss as f64 / 1024.0 / size as f64,
            (c1 - c0) * 1000.0 / requests as f64,
            (c2 - c1) * 1000.0 / requests as f64
        ));
    }
    let rss = probe::rss_bytes(ctl.pid())?;
    report.line(format!(
        "\nController memory above its empty baseline, per VM at {} VMs: {:.2} KiB.",
        args.big,
        (rss.saturating_sub(rss0)) as f64 / 1024.0 / args.big as f64,
    ));
    if let Some(rss_n) = rss_n {
        report.line(format!(
            "(With {} onboarded VMs and guests: {:.1} MiB.)",
            args.vms,
            mib(rss_n)
        ));
    }
    ctl.stop();
    Ok(())
}
