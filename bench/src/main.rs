//! `lookout-bench`: the benchmark harness behind `make bench`.
//!
//! Every figure is measured in the same run, side by side, on this machine: the agent is the
//! real `lookout` binary as a child process (its own memory and threads), kubesim runs in this
//! process, and the bursts the agent consumes are pre-generated while the consumer is frozen
//! (SIGSTOP), so the API server's write path never limits what is measured. Ratios between
//! figures of one run are what to compare across machines, not absolute rates.

mod agent;
mod cluster;
mod floor;
mod kafka;
mod pipe;
mod report;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::json;

use agent::Agent;
use cluster::Cluster;
use report::{Report, Target};

/// Benchmarks lookout against kubesim, serde_json, kubectl and a raw Kafka producer.
#[derive(Debug, Parser, Clone)]
#[command(name = "lookout-bench")]
struct Args {
    /// Pods in the steady-state cluster.
    #[arg(long, default_value_t = 10_000)]
    pods: usize,
    /// Pods in the large cluster (initial sync, memory, scaling).
    #[arg(long, default_value_t = 100_000)]
    large_pods: usize,
    /// Updates in each throughput burst.
    #[arg(long, default_value_t = 100_000)]
    updates: usize,
    /// Updates in the kubectl burst (kubectl is slow; rates are per event).
    #[arg(long, default_value_t = 20_000)]
    kubectl_updates: usize,
    /// Changes per second of the latency run.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Seconds of the latency run.
    #[arg(long, default_value_t = 10)]
    latency_secs: u64,
    /// Messages of the Kafka comparison.
    #[arg(long, default_value_t = 50_000)]
    kafka_events: usize,
    /// Where `report.json` and `report.txt` go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// The lookout binary (default: next to this one).
    #[arg(long)]
    lookout: Option<PathBuf>,
    /// kubectl (default `$KUBECTL`, else `kubectl`).
    #[arg(long, env = "KUBECTL", default_value = "kubectl")]
    kubectl: PathBuf,
    /// The tansu broker (default `$TANSU`).
    #[arg(long, env = "TANSU")]
    tansu: Option<PathBuf>,
    /// Comma-separated sections to skip: throughput, kubectl, latency, large, kafka.
    #[arg(long, value_delimiter = ',')]
    skip: Vec<String>,
}

/// The sinks of the throughput runs: a blackhole and stdout (to /dev/null).
const SINKS: &str = "  - name: bh\n    type: blackhole\n  - name: out\n    type: stdout\n";
const BOTH: &[&str] = &["bh", "out"];
const LONG: Duration = Duration::from_secs(900);

fn main() {
    let args = Args::parse();
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
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = rt.enter();
    let mut r = Report::default();
    let skip = |s: &str| args.skip.iter().any(|k| k == s);
    let started = Instant::now();

    // Baseline: the agent synced on a cluster without Pods.
    eprintln!("baseline: agent on an empty cluster");
    let rss_empty = {
        let c = Cluster::start(&rt, 0, 1000, &dir);
        let mut a = agent::spawn(&lookout, &c.kubeconfig, &dir, "empty", SINKS, Stdio::null());
        wait_synced(&mut a);
        std::thread::sleep(Duration::from_millis(500));
        let (rss, _) = a.memory();
        a.shutdown();
        rt.block_on(c.sim.shutdown());
        rss
    };
    r.info("memory", "agent RSS, no objects", mib(rss_empty), "MiB");

    // The steady-state cluster.
    let history =
        args.updates + args.kubectl_updates + (args.rate * args.latency_secs) as usize + 10_000;
    eprintln!("cluster: {} pods", args.pods);
    let mut small = Cluster::start(&rt, args.pods, history, &dir);
    let small_list = small.list_bytes(0);
    let p = args.pods as u64;

    eprintln!(
        "throughput: sync {} pods, then a burst of {} updates",
        args.pods, args.updates
    );
    let mut a = agent::spawn(
        &lookout,
        &small.kubeconfig,
        &dir,
        "small",
        SINKS,
        Stdio::null(),
    );
    let synced = a.wait_emitted(BOTH, p, LONG).expect("initial sync");
    let sync_small = synced.duration_since(a.spawned).as_secs_f64();
    std::thread::sleep(Duration::from_millis(500));
    let (rss_small, _) = a.memory();
    a.freeze();
    let (wrote, lines) = small.write_updates(args.updates, 20_000);
    a.thaw();
    let burst_small = a
        .follow(
            BOTH,
            p,
            args.updates as u64,
            Duration::from_millis(10),
            LONG,
        )
        .expect("burst delivered");
    a.shutdown();
    let (floor_eps, floor_bps) = floor::parse_serialize(&lines, 3);
    let avg_line = lines.iter().map(Vec::len).sum::<usize>() / lines.len().max(1);
    drop(lines);

    r.info(
        "floor",
        format!("watch event size (bytes, managedFields incl.)"),
        avg_line as f64,
        "bytes",
    );
    r.info(
        "floor",
        "serde_json parse + serialize, 1 core",
        floor_eps,
        "events/s",
    );
    r.info(
        "floor",
        "serde_json parse + serialize, 1 core",
        floor_bps / 1e6,
        "MB/s",
    );
    r.info(
        "throughput",
        "kubesim write path (burst generation)",
        args.updates as f64 / wrote.as_secs_f64(),
        "writes/s",
    );
    r.info(
        "throughput",
        format!("lookout, {} pods, blackhole + stdout>/dev/null", args.pods),
        burst_small.rate,
        "events/s",
    );
    r.target(
        "throughput",
        "lookout / floor",
        burst_small.rate / floor_eps,
        "ratio",
        Target::AtLeast(0.5),
    );

    if !skip("kubectl") {
        eprintln!(
            "kubectl: sync {} pods, then a burst of {} updates",
            args.pods, args.kubectl_updates
        );
        match kubectl_burst(&args, &mut small, &dir) {
            Ok(rate) => {
                r.info(
                    "kubectl",
                    "kubectl get pods -A -w -o json (v1.20)",
                    rate,
                    "events/s",
                );
                r.target(
                    "kubectl",
                    "lookout / kubectl",
                    burst_small.rate / rate,
                    "ratio",
                    Target::AtLeast(10.0),
                );
            }
            Err(e) => r.skipped.push(("kubectl".into(), e)),
        }
    }

    if !skip("latency") {
        eprintln!(
            "latency: {} changes/s for {} s, stdout sink",
            args.rate, args.latency_secs
        );
        latency(&args, &lookout, &mut small, &dir, &mut r);
    }
    rt.block_on(small.sim.shutdown());
    drop(small);

    let mut large_rate = None;
    if !skip("large") {
        eprintln!("cluster: {} pods", args.large_pods);
        let mut large = Cluster::start(&rt, args.large_pods, args.updates + 10_000, &dir);
        let list = large.list_bytes(20_000);
        let lp = args.large_pods as u64;
        eprintln!(
            "initial sync of {} pods, then a burst of {} updates",
            args.large_pods, args.updates
        );
        let mut a = agent::spawn(
            &lookout,
            &large.kubeconfig,
            &dir,
            "large",
            SINKS,
            Stdio::null(),
        );
        let synced = a.wait_emitted(BOTH, lp, LONG).expect("initial sync");
        let sync = synced.duration_since(a.spawned).as_secs_f64();
        std::thread::sleep(Duration::from_millis(1000));
        let (rss, hwm) = a.memory();
        a.freeze();
        large.write_updates(args.updates, 0);
        a.thaw();
        let burst = a
            .follow(
                BOTH,
                lp,
                args.updates as u64,
                Duration::from_millis(10),
                LONG,
            )
            .expect("burst delivered");
        a.shutdown();
        rt.block_on(large.sim.shutdown());
        drop(large);
        let (_, list_floor_bps) = floor::parse_serialize(&list.sample, 3);
        let floor_secs = list.wire as f64 / list_floor_bps;
        r.info(
            "sync",
            format!("list bytes of {} pods (as served)", args.large_pods),
            list.wire as f64 / 1e6,
            "MB",
        );
        r.info(
            "sync",
            "cached JSON (managedFields dropped)",
            list.transformed as f64 / 1e6,
            "MB",
        );
        r.info(
            "sync",
            format!("initial sync wall time, {} pods", args.large_pods),
            sync,
            "s",
        );
        r.info(
            "sync",
            "floor (parse + serialize the same bytes) / sync time",
            floor_secs / sync,
            "ratio",
        );
        r.info("sync", "peak RSS (VmHWM)", mib(hwm), "MiB");
        r.info("sync", "RSS after sync", mib(rss), "MiB");
        let cache = rss.saturating_sub(rss_empty) as f64;
        r.target(
            "sync",
            "cache RSS (RSS - empty RSS) / cached JSON",
            cache / list.transformed as f64,
            "ratio",
            Target::AtMost(0.5),
        );
        r.info(
            "scaling",
            format!("lookout throughput, {} pods", args.pods),
            burst_small.rate,
            "events/s",
        );
        r.info(
            "scaling",
            format!("lookout throughput, {} pods", args.large_pods),
            burst.rate,
            "events/s",
        );
        r.info(
            "scaling",
            "throughput large / small cluster",
            burst.rate / burst_small.rate,
            "ratio",
        );
        let per_small = rss_small.saturating_sub(rss_empty) as f64 / args.pods as f64;
        let per_large = cache / args.large_pods as f64;
        r.info(
            "scaling",
            format!("RSS per object, {} pods", args.pods),
            per_small,
            "bytes",
        );
        r.info(
            "scaling",
            format!("RSS per object, {} pods", args.large_pods),
            per_large,
            "bytes",
        );
        r.info(
            "scaling",
            "cached JSON per object",
            list.transformed as f64 / list.objects as f64,
            "bytes",
        );
        r.info(
            "scaling",
            format!("initial sync wall time, {} pods", args.pods),
            sync_small,
            "s",
        );
        large_rate = Some(burst.rate);
    }
    let _ = small_list;

    if !skip("kafka") {
        eprintln!("kafka: lookout's Kafka sink vs a raw rdkafka producer, same broker");
        match kafka::compare(&args, &lookout, &rt, &dir) {
            Ok(figures) => {
                for (name, v, unit, t) in figures {
                    match t {
                        Some(t) => r.target("kafka", name, v, unit, t),
                        None => r.info("kafka", name, v, unit),
                    }
                }
            }
            Err(e) => r.skipped.push(("kafka".into(), e)),
        }
    }
    r.skipped.push((
        "scaling".into(),
        "1M objects not run: kubesim alone would hold ~25 GB for 1M realistic Pods (this machine has 23 GB)".into(),
    ));

    let table = r.table();
    println!("\n{table}");
    let machine = machine();
    let params = json!({
        "pods": args.pods, "large_pods": args.large_pods, "updates": args.updates,
        "kubectl_updates": args.kubectl_updates, "rate": args.rate, "latency_secs": args.latency_secs,
        "kafka_events": args.kafka_events, "seconds": started.elapsed().as_secs(),
        "large_throughput": large_rate,
    });
    std::fs::write(args.out.join("report.txt"), &table).expect("write report.txt");
    std::fs::write(
        args.out.join("report.json"),
        serde_json::to_string_pretty(&r.json(machine, params)).expect("json"),
    )
    .expect("write report.json");
    eprintln!("wrote {}", args.out.join("report.json").display());
}

fn wait_synced(a: &mut Agent) {
    let end = Instant::now() + LONG;
    while Instant::now() < end {
        if let Some(m) = a.metrics()
            && agent::metric(&m, "lookout_informer_synced", "").is_some_and(|v| v >= 1.0)
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("agent did not sync");
}

/// kubectl: list (printed), frozen while the burst is written, then timed from the first
/// object of the burst to the last, counted as they come through a pipe.
fn kubectl_burst(args: &Args, c: &mut Cluster, dir: &std::path::Path) -> Result<f64, String> {
    let stderr = std::fs::File::create(dir.join("kubectl.log")).map_err(|e| e.to_string())?;
    let mut child = Command::new(&args.kubectl)
        .args(["get", "pods", "-A", "-w", "-o", "json"])
        .env("KUBECONFIG", &c.kubeconfig)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", args.kubectl.display()))?;
    // `-o json` pretty-prints: a top-level object ends with a `}` line.
    let seen = pipe::follow(child.stdout.take().expect("piped"), |l| {
        (l == b"}\n").then_some(0)
    });
    let base = seen.wait_quiet(Duration::from_secs(2), LONG);
    let pid = child.id() as i32;
    agent::signal(pid, libc::SIGSTOP);
    c.write_updates(args.kubectl_updates, 0);
    agent::signal(pid, libc::SIGCONT);
    let n = args.kubectl_updates;
    let ok = seen.wait_for(base + n, LONG);
    let _ = child.kill();
    let _ = child.wait();
    if !ok {
        return Err(format!(
            "kubectl printed {} of {} objects",
            seen.len() - base,
            n
        ));
    }
    let t = seen.snapshot();
    let secs = t[base + n - 1].1.duration_since(t[base].1).as_secs_f64();
    Ok((n - 1) as f64 / secs)
}

/// A steady rate of changes; latency from the write to the envelope on the agent's stdout,
/// and the agent's own arrival-to-acknowledgement histogram for the same changes.
fn latency(
    args: &Args,
    lookout: &std::path::Path,
    c: &mut Cluster,
    dir: &std::path::Path,
    r: &mut Report,
) {
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
    std::thread::sleep(Duration::from_millis(500));
    let before = a.metrics().unwrap_or_default();
    let base = seen.len();
    let n = (args.rate * args.latency_secs) as usize;
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
    let achieved = n as f64 / t0.elapsed().as_secs_f64();
    seen.wait_for(base + n, Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(200));
    let after = a.metrics().unwrap_or_default();
    a.shutdown();
    let arrived: HashMap<u64, Instant> = seen.snapshot().into_iter().collect();
    let mut lat: Vec<f64> = written
        .iter()
        .filter_map(|(rv, w)| {
            arrived
                .get(rv)
                .map(|a| a.saturating_duration_since(*w).as_secs_f64() * 1e3)
        })
        .collect();
    let lost = n - lat.len();
    lat.sort_by(f64::total_cmp);
    r.info("latency", "achieved change rate", achieved, "changes/s");
    r.info(
        "latency",
        "end to end (write -> stdout line) p50",
        pipe::percentile(&lat, 50.0),
        "ms",
    );
    r.target(
        "latency",
        "end to end (write -> stdout line) p99",
        pipe::percentile(&lat, 99.0),
        "ms",
        Target::AtMost(5.0),
    );
    r.info(
        "latency",
        "end to end (write -> stdout line) max",
        lat.last().copied().unwrap_or(f64::NAN),
        "ms",
    );
    r.target(
        "latency",
        "changes never seen on stdout",
        lost as f64,
        "events",
        Target::AtMost(0.0),
    );
    let name = "lookout_delivery_latency_seconds";
    if let Some(q) =
        agent::histogram_quantiles_between(&before, &after, name, "sink=\"out\"", &[0.5, 0.99, 1.0])
    {
        r.info(
            "latency",
            "agent histogram (arrival -> ack) p50",
            q[0] * 1e3,
            "ms",
        );
        r.target(
            "latency",
            "agent histogram (arrival -> ack) p99",
            q[1] * 1e3,
            "ms",
            Target::AtMost(5.0),
        );
        r.info(
            "latency",
            "agent histogram (arrival -> ack) max bucket",
            q[2] * 1e3,
            "ms",
        );
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn machine() -> serde_json::Value {
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
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    json!({"cpu": model, "cpus": cpus, "memory_gib": mem_kb / 1024 / 1024, "kernel": kernel.trim(),
        "loadavg_at_end": load.trim()})
}
