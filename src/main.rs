use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};

/// Automend keeps fleets of virtual machines on best-practice configuration and patches them safely.
#[derive(Parser)]
#[command(name = "automend", version, about)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions, or write them one file each into folders.
    Crds {
        /// Write `<name>.yaml` files into this folder instead of printing one stream (repeatable).
        #[arg(long)]
        out_dir: Vec<PathBuf>,
    },
    /// Run the controller.
    Controller(automend::controller::Settings),
    /// Simulate the guests of a namespace's VirtualMachines (demo, tests, benchmarks).
    Sim(automend::guest::sim::SimSettings),
    /// Run the guest agent on a Linux VM (apt or dnf, systemd), as the VM's own identity.
    Agent(Box<automend::agent::AgentArgs>),
    /// Print a kubeconfig for one VM's guest agent, with a short-lived token of its own identity.
    GuestKubeconfig(automend::kubeconfig::Args),
    /// Print the built-in image catalog (the format --image-catalog and the chart accept).
    Catalog,
    /// Enroll machines: create an Enrollment and print its token with a cloud-init or shell
    /// snippet (`enroll create`), or print another token for one (`enroll token`).
    Enroll {
        /// The namespace of the Enrollment and of the VMs it creates.
        #[arg(long, short = 'n', default_value = "default", global = true)]
        namespace: String,
        #[command(subcommand)]
        command: automend::plugin::enroll::EnrollCommand,
    },
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn write_crds(out_dirs: Vec<PathBuf>) -> anyhow::Result<()> {
    let files = automend::api::crds_yaml().context("serializing the CRDs")?;
    if out_dirs.is_empty() {
        for (_, body) in &files {
            print!("{body}");
        }
    }
    for dir in out_dirs {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for (name, body) in &files {
            let path = dir.join(name);
            std::fs::write(&path, body).with_context(|| format!("writing {}", path.display()))?;
        }
    }
    Ok(())
}

/// Errors are printed as one line with their causes, never with a backtrace.
fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Crds { out_dir } => write_crds(out_dir),
        Command::Controller(settings) => {
            init_logging(cli.log_format);
            tokio::runtime::Runtime::new()?.block_on(automend::controller::run(settings))
        }
        Command::Sim(settings) => {
            init_logging(cli.log_format);
            automend::clock::Clock::from_args(&settings.clock).map_err(anyhow::Error::msg)?;
            tokio::runtime::Runtime::new()?.block_on(async {
                let config = kube::Config::infer().await?;
                let client = automend::kubeclient::client_for(config.clone())?;
                let stats = automend::guest::sim::Stats::default();
                let stop = async {
                    let _ = tokio::signal::ctrl_c().await;
                };
                automend::guest::sim::run(client, config, settings, stats, stop).await;
                Ok(())
            })
        }
        Command::Agent(args) => {
            init_logging(cli.log_format);
            tokio::runtime::Runtime::new()?.block_on(automend::agent::run(*args))
        }
        Command::GuestKubeconfig(args) => {
            let yaml = tokio::runtime::Runtime::new()?.block_on(automend::kubeconfig::run(args))?;
            print!("{yaml}");
            Ok(())
        }
        Command::Enroll { namespace, command } => {
            let text = tokio::runtime::Runtime::new()?.block_on(async {
                let client = automend::kubeclient::client().await?;
                automend::plugin::enroll::run(client, &namespace, command).await
            })?;
            print!("{text}");
            Ok(())
        }
        Command::Catalog => {
            print!(
                "{}",
                serde_norway::to_string(&automend::logic::catalog::ImageCatalog::default())?
            );
            Ok(())
        }
    }
}
