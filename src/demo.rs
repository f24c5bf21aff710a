//! `lookout demo`: the simulator in-process playing a small cluster's story (a rollout, a
//! scale up, a ConfigMap edit, a Secret rotation, a crash-looping Pod), and the pipeline
//! printing its changes in the `text` format — a newcomer sees it work without a cluster.

use std::process::ExitCode;
use std::time::Duration;

use kubesim::loadgen::LoadGen;
use kubesim::story::Story;
use kubesim::{KubeSim, SimConfig};

use crate::config::{Config, Plan};

/// The demo's config, also shipped as `config/demo.yaml`.
pub const DEMO_CONFIG: &str = include_str!("../config/demo.yaml");

/// Demo knobs.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Stop after this long (e.g. `30s`); runs until Ctrl-C when absent.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Time between two beats of the story (each beat is one change or a few that belong
    /// together).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "700ms")]
    pub pace: Duration,
    /// Extra Pods of random apps seeded in other namespaces, as background noise.
    #[arg(long, default_value_t = 0)]
    pub pods: usize,
    /// Random changes per second to those Pods (adds, updates, deletes).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Seed of the story and the noise (same seed, same story).
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

/// Runs the demo.
pub async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let signal = crate::shutdown::signal();
    let config = Config::from_yaml_str(DEMO_CONFIG)?;
    crate::telemetry::init(config.log.format, &config.log.level);
    let plan = Plan::compile(config)?;
    let sim = KubeSim::start(SimConfig::default()).await?;
    let story = Story::seed(&sim, args.seed)?;
    let noise = LoadGen::seed(&sim, args.pods, args.seed, 2, 2)?;
    tracing::info!(url = %sim.url(), "demo: kubesim started; changes follow on stdout");
    let client = kube::Client::try_from(kube::Config::new(sim.url().parse()?))?;
    let story = story.start(args.pace);
    let churn = noise.start_churn(args.rate);
    let shutdown = async move {
        match args.duration {
            Some(d) => tokio::select! {
                _ = tokio::time::sleep(d) => {}
                _ = signal => {}
            },
            None => signal.await,
        }
    };
    let code = crate::cli::run_pipeline(plan, client, false, shutdown).await?;
    let beats = story.stop().await;
    let changes = churn.stop().await;
    tracing::info!(beats, changes, "demo finished");
    sim.shutdown().await;
    Ok(code)
}
