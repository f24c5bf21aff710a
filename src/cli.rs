//! Command-line interface: `run`, `check`, `demo`, `sim`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Config, Plan};
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
    /// Validate a config and print the plan `run` would run (every setting after defaults,
    /// secrets masked).
    Check {
        /// Config file (YAML).
        #[arg(short, long, env = "LOOKOUT_CONFIG")]
        config: PathBuf,
        /// Also ask the API server (from the kubeconfig) whether it serves every kind.
        #[arg(long)]
        server: bool,
    },
    /// Run the pipeline against an embedded simulated cluster and print its changes.
    #[cfg(feature = "sim")]
    Demo(crate::demo::DemoArgs),
    /// Run the kubesim API-server simulator alone (same flags as the `kubesim` binary).
    #[cfg(feature = "sim")]
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
            let plan = match load(&config) {
                Ok(p) => p,
                Err(code) => return Ok(code),
            };
            crate::telemetry::init(plan.config.log.format, &plan.config.log.level);
            let client = crate::informer::client(&plan.config.watch).await?;
            run_pipeline(plan, client, reset_state, shutdown).await
        }
        Command::Check { config, server } => {
            let plan = match load(&config) {
                Ok(p) => p,
                Err(code) => return Ok(code),
            };
            if server {
                crate::telemetry::init(plan.config.log.format, "warn");
                let client = crate::informer::client(&plan.config.watch).await?;
                if let Err(e) = crate::pipeline::verify_resources(&plan, client).await {
                    eprintln!("lookout: {e}");
                    return Ok(exit_code(&e));
                }
            }
            print!("{}", plan.describe());
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(feature = "sim")]
        Command::Demo(args) => crate::demo::run(args).await,
        #[cfg(feature = "sim")]
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
    plan: Plan,
    client: kube::Client,
    reset_state: bool,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<ExitCode> {
    let mut shutdown = std::pin::pin!(shutdown);
    let built = tokio::select! {
        built = Pipeline::build(plan, client, reset_state) => built,
        () = &mut shutdown => return Ok(ExitCode::SUCCESS),
    };
    match built {
        Ok(p) => match p.run(shutdown).await {
            crate::pipeline::RunOutcome::Stopped => Ok(ExitCode::SUCCESS),
            // Like client-go controllers: exit, and come back (restarted by Kubernetes) as a
            // fresh standby.
            crate::pipeline::RunOutcome::LostLeadership
            | crate::pipeline::RunOutcome::TakeoverFailed => Ok(ExitCode::FAILURE),
        },
        Err(e) => {
            eprintln!("lookout: {e}");
            Ok(exit_code(&e))
        }
    }
}

/// 2 for what the configuration (or the state store it names) must fix; 1 for an API
/// server that cannot be reached or refuses us, which a restart may cure.
fn exit_code(e: &PipelineError) -> ExitCode {
    match e {
        PipelineError::Config(_) | PipelineError::State(_) => ExitCode::from(EXIT_CONFIG),
        PipelineError::Server { .. } => ExitCode::FAILURE,
    }
}

/// Loads and compiles the config at `path`; every problem is printed, one per line.
fn load(path: &std::path::Path) -> Result<Plan, ExitCode> {
    let fail = |e: &dyn std::fmt::Display| {
        eprintln!("{}", prefixed(e));
        ExitCode::from(EXIT_CONFIG)
    };
    let config = Config::load(Some(path)).map_err(|e| fail(&e))?;
    Plan::compile(config).map_err(|e| fail(&e))
}

/// `lookout: ` before every line.
fn prefixed(e: &dyn std::fmt::Display) -> String {
    e.to_string()
        .lines()
        .map(|l| format!("lookout: {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
