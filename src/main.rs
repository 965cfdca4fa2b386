use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

/// Automend keeps fleets of virtual machines on best-practice configuration and patches them safely.
#[derive(Parser)]
#[command(name = "automend", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions, or write them one file each into a folder.
    Crds {
        /// Write `<name>.yaml` files into this folder instead of printing one stream (repeatable).
        #[arg(long)]
        out_dir: Vec<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crds { out_dir } => {
            let files = automend::api::crds_yaml().context("serializing the CRDs")?;
            match out_dir {
                Some(dir) => {
                    std::fs::create_dir_all(&dir)
                        .with_context(|| format!("creating {}", dir.display()))?;
                    for (name, body) in files {
                        let path = dir.join(name);
                        std::fs::write(&path, body)
                            .with_context(|| format!("writing {}", path.display()))?;
                    }
                }
                None => {
                    for (_, body) in files {
                        print!("{body}");
                    }
                }
            }
        }
    }
    Ok(())
}
