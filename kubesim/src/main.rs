//! `kubesim`: run a Kubernetes API server simulator. See `kubesim --help`.

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "kubesim",
    version,
    about = "Kubernetes API server simulator (plain HTTP on loopback)"
)]
struct Args {
    #[command(flatten)]
    cli: kubesim::Cli,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    kubesim::run_cli(Args::parse().cli).await
}
