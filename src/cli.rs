//! Command-line interface: `run`, `check`, `demo`, `sim`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Config, ConfigError};
use crate::pipeline::{Pipeline, PipelineError};

/// Exit status for configuration errors.
pub const EXIT_CONFIG: u8 = 2;

/// lookout: forwards Kubernetes changes (add / update / delete, with diffs) to Kafka,
/// webhooks and stdout.
#[derive(Debug, Parser)]
#[command(name = "lookout", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Watch the configured resources and forward their changes until SIGTERM.
    Run {
        /// Config file (YAML); `LOOKOUT_*` environment variables override it.
        #[arg(short, long, env = "LOOKOUT_CONFIG")]
        config: PathBuf,
        /// Delete the delivered-state store first (when it is unreadable or incompatible);
        /// every object is then sent again as an add.
        #[arg(long)]
        reset_state: bool,
    },
    /// Validate a config and print the effective config with secrets masked.
    Check {
        /// Config file (YAML).
        #[arg(short, long, env = "LOOKOUT_CONFIG")]
        config: PathBuf,
        /// Also ask the API server (from the kubeconfig) whether it serves every kind.
        #[arg(long)]
        server: bool,
    },
    /// Run the pipeline against an embedded, churning simulator and print changes.
    Demo(crate::demo::DemoArgs),
    /// Run the kubesim API-server simulator alone (same flags as the `kubesim` binary).
    Sim(kubesim::Cli),
}

/// Runs the CLI; returns the process exit status.
pub async fn main(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run {
            config,
            reset_state,
        } => {
            let shutdown = crate::shutdown::signal();
            let config = match load(&config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            crate::telemetry::init(config.log.format, &config.log.level);
            let client = crate::informer::client(&config.watch).await?;
            run_pipeline(config, client, reset_state, shutdown).await
        }
        Command::Check { config, server } => {
            let config = match load(&config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            if server {
                crate::telemetry::init(config.log.format, "warn");
                let client = crate::informer::client(&config.watch).await?;
                match crate::pipeline::verify_resources(&config, client).await {
                    Ok(()) => {}
                    // Not a configuration problem: the server could not be asked.
                    Err(
                        e @ PipelineError::Resource {
                            source: crate::informer::InformerError::Unreachable { .. },
                            ..
                        },
                    ) => {
                        eprintln!("lookout: {e}");
                        return Ok(ExitCode::FAILURE);
                    }
                    Err(e) => {
                        eprintln!("lookout: {e}");
                        return Ok(ExitCode::from(EXIT_CONFIG));
                    }
                }
            }
            print!("{}", config.to_masked_yaml());
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo(args) => crate::demo::run(args).await,
        Command::Sim(args) => {
            crate::telemetry::init(crate::config::LogFormat::Text, "info");
            kubesim::run_cli(args).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Builds and runs the pipeline until `shutdown`; config problems found while building
/// (a kind the server does not serve) exit 2. Building waits for an API server that cannot
/// be reached yet; `shutdown` ends that wait too (exit 0).
pub async fn run_pipeline(
    config: Config,
    client: kube::Client,
    reset_state: bool,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<ExitCode> {
    let mut shutdown = std::pin::pin!(shutdown);
    let built = tokio::select! {
        built = Pipeline::build(config, client, reset_state) => built,
        () = &mut shutdown => return Ok(ExitCode::SUCCESS),
    };
    match built {
        Ok(p) => match p.run(shutdown).await {
            crate::pipeline::RunOutcome::Stopped => Ok(ExitCode::SUCCESS),
            // Like client-go controllers: exit, and come back (restarted by Kubernetes) as a
            // fresh standby.
            crate::pipeline::RunOutcome::LostLeadership => Ok(ExitCode::FAILURE),
        },
        Err(e @ PipelineError::Resource { .. })
        | Err(e @ PipelineError::Sink { .. })
        | Err(e @ PipelineError::Transform(_))
        | Err(e @ PipelineError::State(_))
        | Err(e @ PipelineError::Listen { .. }) => {
            eprintln!("lookout: {e}");
            Ok(ExitCode::from(EXIT_CONFIG))
        }
    }
}

fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(Some(path)).map_err(|e: ConfigError| {
        eprintln!("lookout: {e}");
        ExitCode::from(EXIT_CONFIG)
    })
}
