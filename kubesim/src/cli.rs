//! Command-line flags and the entry point shared by the `kubesim` binary and `lookout sim`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::config::SimConfig;
use crate::kinds::KindSpec;
use crate::loadgen::LoadGen;
use crate::sim::KubeSim;

/// Flags of `kubesim` (flatten into another clap parser to expose the same simulator).
#[derive(Debug, Clone, clap::Args)]
pub struct Cli {
    /// Port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 0, env = "KUBESIM_PORT")]
    pub port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub listen: IpAddr,
    /// Extra kind to serve, as group/version/Kind[:plural][:cluster] (repeatable),
    /// e.g. `example.com/v1/Widget` or `example.com/v1/Gadget:gadgetz:cluster`.
    #[arg(long = "kind", value_name = "GROUP/VERSION/KIND[:PLURAL][:cluster]")]
    pub kinds: Vec<String>,
    /// Change events kept for watch resumption; older resourceVersions get 410 Expired.
    #[arg(long, default_value_t = 10_000)]
    pub history_limit: usize,
    /// Milliseconds between BOOKMARK events on watches that allow them.
    #[arg(long, default_value_t = 1000)]
    pub bookmark_interval_ms: u64,
    /// Realistic Pods to create at start.
    #[arg(long, default_value_t = 0)]
    pub seed_pods: usize,
    /// Pod changes per second (adds, updates, deletes) after seeding.
    #[arg(long, default_value_t = 0.0)]
    pub churn: f64,
    /// Random seed for the load generator.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Namespaces seeded pods spread over.
    #[arg(long, default_value_t = 3)]
    pub namespaces: usize,
    /// Nodes seeded pods spread over.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Where to write the kubeconfig (default: a file in the temp directory named after the port).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
}

impl Cli {
    /// The simulator configuration these flags describe.
    pub fn to_config(&self) -> Result<SimConfig, crate::error::Error> {
        let extra_kinds = self
            .kinds
            .iter()
            .map(|k| KindSpec::parse(k))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(SimConfig {
            addr: SocketAddr::new(self.listen, self.port),
            history_limit: self.history_limit,
            bookmark_interval: Duration::from_millis(self.bookmark_interval_ms.max(1)),
            extra_kinds,
            seed_pods: 0,
            seed: self.seed,
            seed_namespaces: self.namespaces,
            seed_nodes: self.nodes,
            ..SimConfig::default()
        })
    }
}

/// Runs a simulator until Ctrl-C/SIGTERM: starts it, seeds and churns pods, writes a kubeconfig
/// and prints where it is (stdout) with a `kubectl` hint.
pub async fn run_cli(args: Cli) -> anyhow::Result<()> {
    let cfg = args.to_config()?;
    let sim = KubeSim::start(cfg).await?;
    let lg = LoadGen::seed(&sim, args.seed_pods, args.seed, args.namespaces, args.nodes)?;
    let path = match &args.kubeconfig {
        Some(p) => p.clone(),
        None => std::env::temp_dir().join(format!("kubesim-{}.kubeconfig", sim.addr().port())),
    };
    sim.write_kubeconfig(&path)?;
    println!(
        "kubesim serving {} ({} pods seeded)",
        sim.url(),
        args.seed_pods
    );
    println!("kubeconfig: {}", path.display());
    println!("try: kubectl --kubeconfig {} get pods -A", path.display());
    let churn = (args.churn > 0.0).then(|| lg.start_churn(args.churn));
    shutdown_signal().await;
    if let Some(c) = churn {
        let n = c.stop().await;
        tracing::info!(changes = n, "churn stopped");
    }
    sim.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
