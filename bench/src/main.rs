//! `lookout-bench`: the benchmark harness behind `make bench`.
//!
//! Every figure is measured several times (`--runs`, at least 3) in one run of the harness,
//! side by side, on this machine; the table shows the median with min and max, and targets
//! (from issue 16) are judged on the median. The agent is the real `lookout` binary as a
//! child process (its own memory and threads); kubesim runs in this process. Bursts are
//! written while their consumers are frozen (SIGSTOP), so kubesim's write path never limits
//! what is measured, and every consumer of a burst (lookout, kubectl, the JSON floors) gets
//! the same events, byte for byte.
//!
//! `report.json` records every run's value, the commit, the machine and the load average
//! before and after; `--markdown BENCHMARKS.md` regenerates that file's tables from it.

mod agent;
mod cluster;
mod floor;
mod kafka;
mod pipe;
mod report;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{Value, json};

use agent::Agent;
use cluster::Cluster;
use report::{Report, Target};

/// The sections, in the fixed order they run in.
const ORDER: &[&str] = &[
    "baseline",
    "floor",
    "throughput",
    "kubectl",
    "latency",
    "sync",
    "scaling",
    "kafka",
];

/// Benchmarks lookout against kubesim, JSON floors, kubectl and a raw Kafka producer.
#[derive(Debug, Parser, Clone)]
#[command(name = "lookout-bench")]
struct Args {
    /// Times each figure is measured (the table shows the median, min and max).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Pods in the steady-state cluster.
    #[arg(long, default_value_t = 10_000)]
    pods: usize,
    /// Pods in the large cluster (initial sync, memory, scaling).
    #[arg(long, default_value_t = 100_000)]
    large_pods: usize,
    /// Pods of the generated cluster whose initial sync is measured for memory (1M: the
    /// issue's ≤ 1.5 GB figure); kubesim generates its list pages instead of storing them.
    #[arg(long, default_value_t = 1_000_000)]
    huge_pods: usize,
    /// Times the generated cluster's sync is measured (each takes minutes: 1 by default, the
    /// one exception to `--runs`; its min, median and max are then the same figure).
    #[arg(long, default_value_t = 1)]
    huge_runs: usize,
    /// Distinct realistic Pods the generated cluster's Pods are copies of (renamed).
    #[arg(long, default_value_t = 2_000)]
    huge_templates: usize,
    /// Updates in each throughput burst.
    #[arg(long, default_value_t = 50_000)]
    updates: usize,
    /// Events of each burst kubectl is timed over (the first ones; kubectl is slow).
    #[arg(long, default_value_t = 10_000)]
    kubectl_updates: usize,
    /// Changes per second of the latency runs.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Seconds of each latency run.
    #[arg(long, default_value_t = 5)]
    latency_secs: u64,
    /// Pods of the large cluster its bursts go round (0: as many as the steady cluster has,
    /// so both clusters get bursts of the same shape; `--large-touch 100000` touches every
    /// Pod once per burst, which is what made 100k Pods look 2x faster than 10k).
    #[arg(long, default_value_t = 0)]
    large_touch: usize,
    /// Pods of the Kafka cluster.
    #[arg(long, default_value_t = 2_000)]
    kafka_pods: usize,
    /// Messages of each Kafka run.
    #[arg(long, default_value_t = 30_000)]
    kafka_events: usize,
    /// Where `report.json` and `report.txt` go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// BENCHMARKS.md to regenerate the tables of (from the written report.json).
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// Only regenerate `--markdown` from this report.json; measure nothing.
    #[arg(long)]
    render: Option<PathBuf>,
    /// The lookout binary (default: next to this one).
    #[arg(long)]
    lookout: Option<PathBuf>,
    /// The floor binary (`make bench` builds bench/floor and sets it).
    #[arg(long, env = "BENCH_FLOOR")]
    floor: Option<PathBuf>,
    /// kubectl (default `$KUBECTL`, else `kubectl` on PATH).
    #[arg(long, env = "KUBECTL", default_value = "kubectl")]
    kubectl: PathBuf,
    /// The tansu broker (default `$TANSU`, else `tansu` on PATH).
    #[arg(long, env = "TANSU", default_value = "tansu")]
    tansu: PathBuf,
    /// Comma-separated sections to skip (baseline, floor, throughput, kubectl, latency,
    /// sync, scaling, kafka).
    #[arg(long, value_delimiter = ',')]
    skip: Vec<String>,
    /// Comma-separated sections to run (default: all).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

impl Args {
    fn runs(&self, section: &str) -> bool {
        (self.only.is_empty() || self.only.iter().any(|s| s == section))
            && !self.skip.iter().any(|s| s == section)
    }
}

/// The sinks of the throughput runs: a blackhole and stdout (to /dev/null).
const SINKS: &str = "  - name: bh\n    type: blackhole\n  - name: out\n    type: stdout\n";
const BOTH: &[&str] = &["bh", "out"];
const LONG: Duration = Duration::from_secs(900);

fn main() {
    let args = Args::parse();
    if let Some(report) = &args.render {
        let md = args
            .markdown
            .clone()
            .expect("--render needs --markdown FILE");
        render(report, &md);
        return;
    }
    assert!(args.runs >= 1, "--runs must be at least 1");
    for s in args.only.iter().chain(&args.skip) {
        assert!(
            ORDER.contains(&s.as_str()),
            "unknown section `{s}`; sections: {}",
            ORDER.join(", ")
        );
    }
    let lookout = args.lookout.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .expect("own path")
            .with_file_name("lookout")
    });
    assert!(
        lookout.exists(),
        "{} not found: build it first (cargo build --release --bin lookout)",
        lookout.display()
    );
    let dir = args.out.join("run");
    std::fs::create_dir_all(&dir).expect("create output dir");
    // The shared target directory may get another build of `lookout` while this runs: every
    // agent of this run starts from one private copy.
    let copy = dir.join("lookout");
    let _ = std::fs::remove_file(&copy);
    std::fs::copy(&lookout, &copy)
        .unwrap_or_else(|e| panic!("copy {} to {}: {e}", lookout.display(), copy.display()));
    let lookout = copy;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = rt.enter();
    let load_before = loadavg();
    let started = Instant::now();
    let mut r = Report::default();
    let n = args.runs;

    // ------------------------------------------------------------------ baseline
    let mut rss_empty = Vec::new();
    if args.runs("baseline") || args.runs("sync") || args.runs("scaling") {
        eprintln!("baseline: agent on an empty cluster, {n} runs");
        let c = Cluster::start(&rt, 0, 1000, &dir);
        for _ in 0..n {
            let mut a = agent::spawn(&lookout, &c.kubeconfig, &dir, "empty", SINKS, Stdio::null());
            wait_synced(&mut a);
            rss_empty.push(a.memory().0);
            a.shutdown();
        }
        rt.block_on(c.sim.shutdown());
        r.info(
            "baseline",
            "agent RSS, synced, no objects",
            rss_empty.iter().map(|b| mib(*b)).collect(),
            "MiB",
        );
    }
    let rss_empty_median = median_u64(&rss_empty);

    // ------------------------------------------------------------------ the steady cluster
    let small_needed = ["floor", "throughput", "kubectl", "latency"]
        .iter()
        .any(|s| args.runs(s));
    if small_needed {
        let history = n * args.updates + n * (args.rate * args.latency_secs) as usize + 10_000;
        eprintln!("cluster: {} pods", args.pods);
        let mut small = Cluster::start(&rt, args.pods, history, &dir);
        steady(&args, &lookout, &rt, &mut small, &dir, &mut r);
        if args.runs("latency") {
            eprintln!(
                "latency: {} changes/s, {} runs of {} s, stdout sink",
                args.rate, n, args.latency_secs
            );
            latency(&args, &lookout, &mut small, &dir, &mut r);
        }
        rt.block_on(small.sim.shutdown());
    }

    // ------------------------------------------------------------------ the large cluster
    if args.runs("sync") || args.runs("scaling") {
        large(&args, &lookout, &rt, &dir, rss_empty_median, &mut r);
    }

    if args.runs("sync") && args.huge_pods > 0 {
        huge(&args, &lookout, &rt, &dir, rss_empty_median, &mut r);
    }

    // ------------------------------------------------------------------ Kafka
    if args.runs("kafka") {
        eprintln!("kafka: lookout's Kafka sink vs a raw rdkafka producer, same broker, {n} runs");
        match kafka::compare(&args, &lookout, &rt, &dir) {
            Ok(figures) => {
                for (name, runs, unit, t) in figures {
                    match t {
                        Some(t) => r.target("kafka", name, runs, unit, t),
                        None => r.info("kafka", name, runs, unit),
                    }
                }
            }
            Err(e) => r.skipped.push(("kafka".into(), e)),
        }
    }

    let table = r.table();
    println!("\n{table}");
    let context = json!({
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "commit": git(&["rev-parse", "HEAD"]),
        "dirty": !git(&["status", "--porcelain", "--untracked-files=no"]).is_empty(),
        "machine": machine(),
        "loadavg_before": load_before,
        "loadavg_after": loadavg(),
        "seconds": started.elapsed().as_secs(),
        "full": args.only.is_empty() && args.skip.is_empty(),
        "order": ORDER.iter().filter(|s| args.runs(s)).collect::<Vec<_>>(),
        "params": {
            "runs": args.runs, "pods": args.pods, "large_pods": args.large_pods,
            "huge_pods": args.huge_pods, "huge_runs": args.huge_runs,
            "huge_templates": args.huge_templates,
            "updates": args.updates, "kubectl_updates": args.kubectl_updates, "rate": args.rate,
            "latency_secs": args.latency_secs, "kafka_pods": args.kafka_pods,
            "kafka_events": args.kafka_events,
        },
    });
    std::fs::write(args.out.join("report.txt"), &table).expect("write report.txt");
    let report_path = args.out.join("report.json");
    let full_run = args.only.is_empty() && args.skip.is_empty();
    if full_run && report_path.exists() {
        // The previous full run, kept to compare with (BENCHMARKS.md's "Against the previous
        // run"); a partial run's report is not a reference.
        let prev: Value = std::fs::read(&report_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null);
        if prev["context"]["full"] == true {
            std::fs::rename(&report_path, args.out.join("report.prev.json"))
                .expect("keep the previous report");
        }
    }
    std::fs::write(
        &report_path,
        serde_json::to_string_pretty(&r.json(context)).expect("json"),
    )
    .expect("write report.json");
    eprintln!("wrote {}", report_path.display());
    if let Some(md) = &args.markdown {
        if args.only.is_empty() && args.skip.is_empty() {
            render(&report_path, md);
        } else {
            eprintln!(
                "partial run (--only/--skip): {} left as it is; `lookout-bench --render {} --markdown {}` regenerates it",
                md.display(),
                report_path.display(),
                md.display()
            );
        }
    }
}

/// Regenerates the tables of `md` from `report` (a report.json).
fn render(report: &Path, md: &Path) {
    let json: Value = serde_json::from_slice(
        &std::fs::read(report).unwrap_or_else(|e| panic!("{}: {e}", report.display())),
    )
    .expect("report.json");
    let mut generated = report::markdown(&json);
    // The previous full run beside it (see `main`): how far every ratio moved since.
    let prev = report.with_file_name("report.prev.json");
    if let Some(prev) = std::fs::read(&prev)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
    {
        let compared = report::comparison(&prev, &json, 0.15);
        println!("\n{compared}");
        generated.push_str(&compared);
    }
    let doc = std::fs::read_to_string(md).unwrap_or_default();
    std::fs::write(md, report::splice(&doc, &generated))
        .unwrap_or_else(|e| panic!("{}: {e}", md.display()));
    eprintln!(
        "regenerated the tables of {} from {}",
        md.display(),
        report.display()
    );
}

/// Floor, throughput and kubectl on the steady cluster: `runs` bursts, each consumed first
/// by lookout and then (the same events) by kubectl; the floors parse the first burst's
/// bytes. Returns lookout's rate per run.
fn steady(
    args: &Args,
    lookout: &Path,
    rt: &tokio::runtime::Runtime,
    c: &mut Cluster,
    dir: &Path,
    r: &mut Report,
) {
    let n = args.runs;
    let p = args.pods as u64;
    eprintln!(
        "throughput: sync {} pods, then {n} bursts of {} updates{}",
        args.pods,
        args.updates,
        if args.runs("kubectl") {
            ", each also consumed by kubectl"
        } else {
            ""
        }
    );
    let mut a = agent::spawn(lookout, &c.kubeconfig, dir, "small", SINKS, Stdio::null());
    a.wait_settled(BOTH, p, LONG).expect("initial sync");
    let mut lookout_rates = Vec::new();
    let (mut agent_cpu, mut sim_cpu) = (Vec::new(), Vec::new());
    let mut writes = Vec::new();
    let mut kubectl_rates = Vec::new();
    let mut kubectl_error = None;
    let mut burst_bytes = Vec::new();
    let mut done = p;
    for run in 0..n {
        let mut kubectl = if args.runs("kubectl") && kubectl_error.is_none() {
            match Kubectl::start(args, c, dir) {
                Ok(k) => Some(k),
                Err(e) => {
                    kubectl_error = Some(e);
                    None
                }
            }
        } else {
            None
        };
        a.freeze();
        if let Some(k) = &kubectl {
            k.freeze();
        }
        let (wrote, from) = c.write_updates(args.updates);
        writes.push(args.updates as f64 / wrote.as_secs_f64());
        let rate = consume_burst(&mut a, done, args.updates, &mut agent_cpu, &mut sim_cpu);
        done += args.updates as u64;
        lookout_rates.push(rate);
        eprintln!("  run {run}: lookout {rate:.0} events/s");
        if let Some(k) = kubectl.as_mut() {
            match k.time_burst(args.kubectl_updates.min(args.updates)) {
                Ok(rate) => {
                    eprintln!("  run {run}: kubectl {rate:.0} events/s");
                    kubectl_rates.push(rate);
                }
                Err(e) => kubectl_error = Some(e),
            }
        }
        drop(kubectl);
        if run == 0 && (args.runs("floor") || args.runs("throughput")) {
            burst_bytes = c.watch_bytes(rt, from, args.updates);
        }
    }
    a.shutdown();

    let floors = if burst_bytes.is_empty() {
        None
    } else {
        match &args.floor {
            None => {
                r.skipped.push((
                    "floor".into(),
                    "no floor binary (--floor or $BENCH_FLOOR; `make bench` builds bench/floor)"
                        .into(),
                ));
                None
            }
            Some(bin) => match floor::measure(bin, dir, &burst_bytes, n) {
                Ok(f) => Some(f),
                Err(e) => {
                    r.skipped.push(("floor".into(), e));
                    None
                }
            },
        }
    };
    drop(burst_bytes);
    if let Some(f) = &floors
        && args.runs("floor")
    {
        r.info(
            "floor",
            "watch event size (as served, managedFields incl.)",
            vec![f.bytes as f64 / f.events.max(1) as f64],
            "bytes",
        );
        r.info(
            "floor",
            "serde_json (default features) parse + serialize, 1 core",
            f.serde_json.clone(),
            "events/s",
        );
        r.info(
            "floor",
            "sonic-rs parse + serialize, 1 core",
            f.sonic_rs.clone(),
            "events/s",
        );
        r.info(
            "floor",
            "simd-json parse + serialize, 1 core",
            f.simd_json.clone(),
            "events/s",
        );
    }
    if args.runs("throughput") {
        r.info(
            "throughput",
            "kubesim write path (burst generation)",
            writes,
            "writes/s",
        );
        r.info(
            "throughput",
            format!("lookout, {} pods, blackhole + stdout>/dev/null", args.pods),
            lookout_rates.clone(),
            "events/s",
        );
        BurstCpu::report(r, "throughput", agent_cpu, sim_cpu);
        if let Some(f) = &floors {
            r.target(
                "throughput",
                "lookout / serde_json floor (bar)",
                ratios(&lookout_rates, &f.serde_json),
                "ratio",
                Target::AtLeast(0.6),
            );
            r.target(
                "throughput",
                "lookout / serde_json floor (goal)",
                ratios(&lookout_rates, &f.serde_json),
                "ratio",
                Target::AtLeast(1.0),
            );
            r.info(
                "throughput",
                "lookout / sonic-rs floor",
                ratios(&lookout_rates, &f.sonic_rs),
                "ratio",
            );
            r.info(
                "throughput",
                "lookout / simd-json floor",
                ratios(&lookout_rates, &f.simd_json),
                "ratio",
            );
        }
    }
    if args.runs("kubectl") {
        if let Some(e) = kubectl_error {
            r.skipped.push(("kubectl".into(), e));
        } else {
            r.info(
                "kubectl",
                format!(
                    "kubectl get pods -A -w -o json, first {} events of each burst",
                    args.kubectl_updates.min(args.updates)
                ),
                kubectl_rates.clone(),
                "events/s",
            );
            r.target(
                "kubectl",
                "lookout / kubectl (same bursts)",
                ratios(&lookout_rates, &kubectl_rates),
                "ratio",
                Target::AtLeast(10.0),
            );
        }
    }
}

/// Per-run ratios `a[i] / b[i]`.
fn ratios(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x / y).collect()
}

/// `kubectl get pods -A -w -o json` with its own HOME and cache, counted through a pipe.
struct Kubectl {
    child: Child,
    seen: pipe::Seen,
    base: usize,
}

impl Kubectl {
    /// Starts it and waits until it has printed the initial list.
    fn start(args: &Args, c: &Cluster, dir: &Path) -> Result<Kubectl, String> {
        let home = dir.join("kubectl-home");
        std::fs::create_dir_all(&home).map_err(|e| e.to_string())?;
        let stderr = std::fs::File::create(dir.join("kubectl.log")).map_err(|e| e.to_string())?;
        let mut child = Command::new(&args.kubectl)
            .args(["get", "pods", "-A", "-w", "-o", "json", "--cache-dir"])
            .arg(home.join("cache"))
            .env("KUBECONFIG", &c.kubeconfig)
            .env("HOME", &home)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot start {} ({e}); `make kubectl` installs it",
                    args.kubectl.display()
                )
            })?;
        // `-o json` pretty-prints: a top-level object ends with a `}` line.
        let seen = pipe::follow(child.stdout.take().expect("piped"), |l| {
            (l == b"}\n").then_some(0)
        });
        // The list comes as one `PodList` per 500-object chunk (kubectl's `--chunk-size`);
        // it is printed when the output has been quiet for 2 s.
        let base = seen.wait_quiet(Duration::from_secs(2), LONG);
        if base == 0 {
            let _ = child.kill();
            return Err("kubectl printed nothing".into());
        }
        Ok(Kubectl { child, seen, base })
    }

    fn freeze(&self) {
        agent::signal(self.child.id() as i32, libc::SIGSTOP);
    }

    /// Thaws it and times the first `n` objects of the burst written while it was frozen.
    fn time_burst(&mut self, n: usize) -> Result<f64, String> {
        agent::signal(self.child.id() as i32, libc::SIGCONT);
        if !self.seen.wait_for(self.base + n, LONG) {
            return Err(format!(
                "kubectl printed {} of {n} objects of the burst",
                self.seen.len() - self.base
            ));
        }
        let t = self.seen.snapshot();
        let secs = t[self.base + n - 1]
            .1
            .duration_since(t[self.base].1)
            .as_secs_f64();
        Ok((n - 1) as f64 / secs)
    }
}

impl Drop for Kubectl {
    fn drop(&mut self) {
        agent::signal(self.child.id() as i32, libc::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Thaws `a` and follows its burst of `n` changes after `base` settled events on both sinks;
/// the burst's rate. Its CPU per event goes to `agent_cpu` and `sim_cpu` ([`BurstCpu`]).
fn consume_burst(
    a: &mut agent::Agent,
    base: u64,
    n: usize,
    agent_cpu: &mut Vec<f64>,
    sim_cpu: &mut Vec<f64>,
) -> f64 {
    let cpu = BurstCpu::start(a);
    a.thaw();
    let burst = a
        .follow(BOTH, base, n as u64, Duration::from_millis(10), LONG)
        .expect("burst delivered");
    cpu.stop(a, n, agent_cpu, sim_cpu);
    burst.rate
}

/// CPU used while a burst is consumed: by the agent, and by this process (kubesim serving
/// the watch; the harness only polls meanwhile). Per event, to tell a slower pipeline from
/// one that gets less of the machine.
struct BurstCpu {
    agent: Duration,
    sim: Duration,
}

impl BurstCpu {
    fn start(a: &agent::Agent) -> Self {
        BurstCpu {
            agent: a.cpu(),
            sim: agent::proc_cpu(std::process::id() as i32),
        }
    }

    fn stop(self, a: &agent::Agent, n: usize, agent: &mut Vec<f64>, sim: &mut Vec<f64>) {
        let per_event = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
        agent.push(per_event(a.cpu().saturating_sub(self.agent)));
        sim.push(per_event(
            agent::proc_cpu(std::process::id() as i32).saturating_sub(self.sim),
        ));
    }

    fn report(r: &mut Report, section: &'static str, agent: Vec<f64>, sim: Vec<f64>) {
        r.info(section, "lookout CPU per event (burst)", agent, "µs");
        r.info(
            section,
            "kubesim + harness CPU per event (burst)",
            sim,
            "µs",
        );
    }
}

/// Initial sync, memory and throughput on the large cluster, `runs` agents one after the
/// other; for the scaling ratio, each run's burst is paired with one on a steady-size
/// cluster alive beside it.
fn large(
    args: &Args,
    lookout: &Path,
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    rss_empty: u64,
    r: &mut Report,
) {
    let n = args.runs;
    eprintln!("cluster: {} pods", args.large_pods);
    // Each burst is consumed before the next is written: the history needs room for one.
    let mut c = Cluster::start(rt, args.large_pods, args.updates + 10_000, dir);
    // A burst's cost depends on how often it revisits a Pod (see BENCHMARKS.md): the large
    // cluster's bursts go round as many Pods as the steady cluster's, so only the size differs.
    c.touch = if args.large_touch > 0 {
        args.large_touch
    } else {
        args.pods
    };
    let list = c.list_bytes(0);
    let lp = args.large_pods as u64;
    let (mut sync, mut hwm, mut rss, mut ratio, mut per_object, mut rates) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let (mut agent_cpu, mut sim_cpu) = (vec![], vec![]);
    // The scaling ratio's other side: a steady-size cluster and its agent, alive beside the
    // large one, so that each run's two bursts are consumed back to back. Measured against
    // the throughput section's bursts instead, the two sides were minutes apart, and this
    // host's speed drifts over minutes (BENCHMARKS.md, "Reading the figures").
    let mut beside = args.runs("scaling").then(|| {
        eprintln!("  beside it: cluster of {} pods", args.pods);
        let mut s = Cluster::start(rt, args.pods, args.updates + 10_000, dir);
        s.touch = c.touch;
        let mut a = agent::spawn(lookout, &s.kubeconfig, dir, "beside", SINKS, Stdio::null());
        a.wait_settled(BOTH, args.pods as u64, LONG)
            .expect("initial sync");
        (s, a, args.pods as u64)
    });
    let (mut small_rates, mut small_cpu, mut small_sim) = (vec![], vec![], vec![]);
    for run in 0..n {
        eprintln!("  run {run}: initial sync of {} pods", args.large_pods);
        let mut a = agent::spawn(lookout, &c.kubeconfig, dir, "large", SINKS, Stdio::null());
        let synced = a.wait_settled(BOTH, lp, LONG).expect("initial sync");
        sync.push(synced.duration_since(a.spawned).as_secs_f64());
        // The cache is complete when both sinks acknowledged every add; RSS settles within
        // a second (allocator returns, no more list pages in flight).
        std::thread::sleep(Duration::from_secs(1));
        let (now, peak) = a.memory();
        rss.push(mib(now));
        hwm.push(mib(peak));
        let cache = now.saturating_sub(rss_empty) as f64;
        ratio.push(cache / list.transformed as f64);
        per_object.push(cache / args.large_pods as f64);
        if let Some((s, small, done)) = beside.as_mut() {
            // Both bursts are written while both agents are frozen; then one agent consumes
            // its burst and right after it the other, the order alternating from run to run.
            a.freeze();
            small.freeze();
            c.write_updates(args.updates);
            s.write_updates(args.updates);
            let large_first = run % 2 == 0;
            for large_turn in [large_first, !large_first] {
                if large_turn {
                    let rate =
                        consume_burst(&mut a, lp, args.updates, &mut agent_cpu, &mut sim_cpu);
                    rates.push(rate);
                } else {
                    let rate =
                        consume_burst(small, *done, args.updates, &mut small_cpu, &mut small_sim);
                    small_rates.push(rate);
                }
            }
            *done += args.updates as u64;
            eprintln!(
                "  run {run}: lookout {:.0} events/s ({} pods), {:.0} events/s ({} pods)",
                rates[run], args.large_pods, small_rates[run], args.pods
            );
        }
        a.shutdown();
    }
    if let Some((s, small, _)) = beside {
        small.shutdown();
        rt.block_on(s.sim.shutdown());
    }
    rt.block_on(c.sim.shutdown());
    if args.runs("sync") {
        r.info(
            "sync",
            format!("list bytes of {} pods (as served)", args.large_pods),
            vec![list.wire as f64 / 1e6],
            "MB",
        );
        r.info(
            "sync",
            "cached JSON (managedFields dropped)",
            vec![list.transformed as f64 / 1e6],
            "MB",
        );
        r.info(
            "sync",
            format!("initial sync wall time, {} pods", args.large_pods),
            sync,
            "s",
        );
        r.info("sync", "peak RSS (VmHWM)", hwm, "MiB");
        r.info("sync", "RSS after sync", rss, "MiB");
        r.target(
            "sync",
            "cache RSS (RSS - empty RSS) / cached JSON",
            ratio,
            "ratio",
            Target::AtMost(0.3),
        );
        r.info("sync", "cache RSS per object", per_object, "bytes");
    }
    if args.runs("scaling") && !rates.is_empty() {
        r.info(
            "scaling",
            format!(
                "lookout throughput, {} pods (bursts over {} of them)",
                args.large_pods,
                c.touch.min(args.large_pods)
            ),
            rates.clone(),
            "events/s",
        );
        BurstCpu::report(r, "scaling", agent_cpu, sim_cpu);
        r.info(
            "scaling",
            format!(
                "lookout throughput, {} pods, side by side (same burst size)",
                args.pods
            ),
            small_rates.clone(),
            "events/s",
        );
        r.info(
            "scaling",
            format!("lookout CPU per event ({} pods, burst)", args.pods),
            small_cpu,
            "µs",
        );
        r.info(
            "scaling",
            format!(
                "kubesim + harness CPU per event ({} pods, burst)",
                args.pods
            ),
            small_sim,
            "µs",
        );
        r.target(
            "scaling",
            format!(
                "throughput {} pods / {} pods (independent of size)",
                args.large_pods, args.pods
            ),
            ratios(&rates, &small_rates),
            "ratio",
            Target::Between(0.85, 1.15),
        );
    }
}

/// The initial sync of a cluster too large for kubesim to store (1M Pods): peak memory
/// against the 1.5 GB, and the cache's share of the cached JSON at that size.
fn huge(
    args: &Args,
    lookout: &Path,
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    rss_empty: u64,
    r: &mut Report,
) {
    let n = args.huge_runs.max(1);
    let pods = args.huge_pods;
    eprintln!(
        "cluster: {pods} generated pods (copies of {} seeded ones)",
        args.huge_templates
    );
    let c = cluster::Synthetic::start(rt, pods, args.huge_templates, dir);
    let (mut sync, mut hwm, mut rss, mut ratio) = (vec![], vec![], vec![], vec![]);
    for run in 0..n {
        eprintln!("  run {run}: initial sync of {pods} pods");
        let mut a = agent::spawn(lookout, &c.kubeconfig, dir, "huge", SINKS, Stdio::null());
        let synced = a
            .wait_settled(BOTH, pods as u64, LONG)
            .expect("initial sync of the generated cluster");
        sync.push(synced.duration_since(a.spawned).as_secs_f64());
        std::thread::sleep(Duration::from_secs(1));
        let (now, peak) = a.memory();
        rss.push(now as f64 / 1e9);
        hwm.push(peak as f64 / 1e9);
        ratio.push(now.saturating_sub(rss_empty) as f64 / c.list.transformed as f64);
        a.shutdown();
    }
    rt.block_on(c.sim.shutdown());
    let what = format!("{pods} generated pods");
    r.info(
        "sync",
        format!("list bytes of {what} (as served)"),
        vec![c.list.wire as f64 / 1e6],
        "MB",
    );
    r.info("sync", format!("initial sync wall time, {what}"), sync, "s");
    r.target(
        "sync",
        format!("peak RSS (VmHWM), {what}"),
        hwm,
        "GB",
        Target::AtMost(1.5),
    );
    r.info("sync", format!("RSS after sync, {what}"), rss, "GB");
    r.info(
        "sync",
        format!("cache RSS / cached JSON, {what}"),
        ratio,
        "ratio",
    );
}

fn wait_synced(a: &mut Agent) {
    let end = Instant::now() + LONG;
    while Instant::now() < end {
        a.assert_running();
        if let Some(m) = a.metrics()
            && agent::metric(&m, "lookout_informer_synced", "").is_some_and(|v| v >= 1.0)
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("agent did not sync");
}

/// `runs` windows of a steady change rate; per window: latency from the write to the
/// envelope on the agent's stdout, and the agent's own arrival → acknowledgement histogram
/// for the same changes (the difference between two scrapes).
fn latency(args: &Args, lookout: &Path, c: &mut Cluster, dir: &Path, r: &mut Report) {
    let sinks = "  - name: out\n    type: stdout\n";
    let mut a = agent::spawn(
        lookout,
        &c.kubeconfig,
        dir,
        "latency",
        sinks,
        Stdio::piped(),
    );
    let seen = pipe::follow(a.take_stdout().expect("piped"), pipe::envelope_rv);
    assert!(seen.wait_for(args.pods, LONG), "initial sync");
    let n = (args.rate * args.latency_secs) as usize;
    let (mut rate, mut p50, mut p99, mut max, mut lost, mut h50, mut h99, mut hmax) = (
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
    );
    for _ in 0..args.runs {
        let before = a.metrics().unwrap_or_default();
        let base = seen.len();
        let mut written = Vec::with_capacity(n);
        let t0 = Instant::now();
        for i in 0..n {
            let due = t0 + Duration::from_secs_f64(i as f64 / args.rate as f64);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            let obj = c.update();
            let rv: u64 = obj["metadata"]["resourceVersion"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .expect("rv");
            written.push((rv, Instant::now()));
        }
        rate.push(n as f64 / t0.elapsed().as_secs_f64());
        seen.wait_for(base + n, Duration::from_secs(60));
        // The last envelope is on stdout once the sink acknowledged it; the histogram is
        // scraped right after, with every change of the window in it.
        let after = a.metrics().unwrap_or_default();
        let arrived: HashMap<u64, Instant> = seen.snapshot().into_iter().collect();
        let mut lat: Vec<f64> = written
            .iter()
            .filter_map(|(rv, w)| {
                arrived
                    .get(rv)
                    .map(|a| a.saturating_duration_since(*w).as_secs_f64() * 1e3)
            })
            .collect();
        lost.push((n - lat.len()) as f64);
        lat.sort_by(f64::total_cmp);
        p50.push(pipe::percentile(&lat, 50.0));
        p99.push(pipe::percentile(&lat, 99.0));
        max.push(lat.last().copied().unwrap_or(f64::NAN));
        let q = agent::histogram_quantiles_between(
            &before,
            &after,
            "lookout_delivery_latency_seconds",
            "sink=\"out\"",
            &[0.5, 0.99, 1.0],
        )
        .unwrap_or(vec![f64::NAN; 3]);
        h50.push(q[0] * 1e3);
        h99.push(q[1] * 1e3);
        hmax.push(q[2] * 1e3);
    }
    a.shutdown();
    r.info("latency", "achieved change rate", rate, "changes/s");
    r.info("latency", "agent histogram (arrival -> ack) p50", h50, "ms");
    r.target(
        "latency",
        "agent histogram (arrival -> ack) p99",
        h99,
        "ms",
        Target::AtMost(1.0),
    );
    r.info(
        "latency",
        "agent histogram (arrival -> ack) max bucket",
        hmax,
        "ms",
    );
    r.info(
        "latency",
        "end to end (kubesim write -> stdout line) p50",
        p50,
        "ms",
    );
    r.info(
        "latency",
        "end to end (kubesim write -> stdout line) p99",
        p99,
        "ms",
    );
    r.info(
        "latency",
        "end to end (kubesim write -> stdout line) max",
        max,
        "ms",
    );
    r.target(
        "latency",
        "changes never seen on stdout",
        lost,
        "events",
        Target::AtMost(0.0),
    );
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn median_u64(v: &[u64]) -> u64 {
    let mut v = v.to_vec();
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn git(args: &[&str]) -> String {
    Command::new("git")
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(str::trim)
        .unwrap_or("unknown")
        .to_string();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kb: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    json!({"cpu": model, "cpus": cpus, "memory_gib": mem_kb / 1024 / 1024, "kernel": kernel.trim()})
}
