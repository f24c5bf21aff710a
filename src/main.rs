//! The `lookout` binary: parse the command line and hand over to the library.

use std::process::ExitCode;

use clap::Parser;

/// mimalloc: the pipeline allocates and frees many small JSON nodes on one thread and frees
/// envelopes on another; glibc's malloc spends a third of the agent's time on that (and keeps
/// freed memory resident), mimalloc a fraction.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = lookout::cli::Cli::parse();
    match lookout::cli::main(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("lookout: {e:#}");
            ExitCode::FAILURE
        }
    }
}
