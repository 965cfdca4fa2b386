//! `kubectl-automend`: the kubectl plugin. Put it on the PATH and run `kubectl automend --help`.

use std::process::ExitCode;

use clap::Parser;

/// Errors are printed as one line with their causes (`error: …: …`), never with a backtrace
/// (anyhow prints one for `RUST_BACKTRACE=1` when main returns its error).
fn main() -> ExitCode {
    let cli = automend::plugin::Cli::parse();
    let result = tokio::runtime::Runtime::new()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(automend::plugin::run(cli)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
