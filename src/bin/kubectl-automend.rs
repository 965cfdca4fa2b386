//! `kubectl-automend`: the kubectl plugin. Put it on the PATH and run `kubectl automend --help`.

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cli = automend::plugin::Cli::parse();
    tokio::runtime::Runtime::new()?.block_on(automend::plugin::run(cli))
}
