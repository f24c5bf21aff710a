//! The `lookout` binary: parse the command line and hand over to the library.

use std::process::ExitCode;

use clap::Parser;

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
