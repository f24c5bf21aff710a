//! The per-event hot path, measured on one core: an informer (the library's, over real HTTP
//! from an in-process kubesim) consumes bursts of small real Pod changes and every update
//! becomes an envelope encoded to JSON, as a blackhole sink would (router and sink queues
//! left out). Everything runs on one current-thread runtime, kubesim's serving included, so
//! the figure is events per second of one core and compares with the single-core floor.
//!
//! ```text
//! cargo run --release --example hot_path -- [PODS] [UPDATES] [RUNS] [DUMP]
//! ```
//! Defaults: 1000 Pods, 20000 updates per burst, 3 bursts. With `DUMP`, the first burst's
//! watch lines (exactly as served: `{"type":"MODIFIED","object":…}`, managedFields and all)
//! are written to that file, one per line, for the floor binary (`bench/floor`).
//!
//! Profiling only the bursts: see [`hook`].
//!
//! Prints one line per burst and the median: `events/s`, and the raw HTTP read rate of the
//! same burst (kubesim serving + socket, no parse) so the agent's own share can be read off.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use json_patch::Patch;
use kubesim::loadgen::LoadGen;
use kubesim::{KubeSim, SimConfig};
use lookout::event::transform::{ObjectTransform, TransformConfig};
use lookout::event::{Doc, EnvelopeBuilder, Op};
use lookout::informer::{Gone, Handler, InformerFactory, InformerKey};
use serde_json::json;

/// The agent's allocator (see `src/main.rs`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Builds and encodes an envelope per change; counts them and their bytes.
struct Blackhole {
    builder: EnvelopeBuilder,
    events: AtomicU64,
    bytes: AtomicU64,
}

impl Blackhole {
    fn take(&self, e: lookout::event::Envelope) {
        let e = Arc::new(e);
        self.bytes
            .fetch_add(e.to_json().len() as u64, Ordering::Relaxed);
        self.events.fetch_add(1, Ordering::Relaxed);
    }
}

#[async_trait]
impl Handler for Blackhole {
    async fn on_add(&self, obj: &Arc<Doc>, initial_list: bool) {
        let mut e = self
            .builder
            .build_doc(Op::Add, obj.clone(), None, None, Instant::now());
        e.initial_list = initial_list;
        self.take(e);
    }
    async fn on_update(&self, old: &Arc<Doc>, new: &Arc<Doc>, patch: Patch) {
        let e = self.builder.build_doc(
            Op::Update,
            new.clone(),
            Some(old.clone()),
            Some(patch),
            Instant::now(),
        );
        self.take(e);
    }
    async fn on_delete(&self, last: &Arc<Doc>, gone: Gone<'_>) {
        let e = match gone {
            Gone::Seen => {
                self.builder
                    .build_doc(Op::Delete, last.clone(), None, None, Instant::now())
            }
            Gone::Unseen { at } => {
                self.builder
                    .build_unseen_delete(last.clone(), at, Instant::now())
            }
        };
        self.take(e);
    }
}

/// One small real change of Pod `i % pods` (label, annotation or status conditions), the
/// same mix the benchmark harness writes.
fn update(sim: &KubeSim, pods: &[(String, String)], i: u64) {
    let (ns, name) = &pods[(i as usize) % pods.len()];
    let patch = match i % 3 {
        0 => json!({"metadata": {"labels": {"bench/revision": i.to_string()}}}),
        1 => json!({"metadata": {"annotations": {"bench.lookout.dev/touched": format!("{i}")}}}),
        _ => {
            let ready = if (i / 3).is_multiple_of(2) {
                "False"
            } else {
                "True"
            };
            let t = format!("2026-01-01T00:{:02}:{:02}Z", (i / 60) % 60, i % 60);
            json!({"status": {"conditions": [
                {"type": "PodReadyToStartContainers", "status": "True", "lastProbeTime": null, "lastTransitionTime": "2026-01-01T00:00:00Z"},
                {"type": "Initialized", "status": "True", "lastProbeTime": null, "lastTransitionTime": "2026-01-01T00:00:00Z"},
                {"type": "Ready", "status": ready, "lastProbeTime": null, "lastTransitionTime": t},
                {"type": "ContainersReady", "status": ready, "lastProbeTime": null, "lastTransitionTime": t},
                {"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": "2026-01-01T00:00:00Z"}
            ]}})
        }
    };
    sim.merge_patch("v1", "Pod", Some(ns), name, patch)
        .expect("update pod");
}

/// Reads `n` watch lines after `from` over plain HTTP (no parse); the lines and the time.
async fn raw_watch(sim: &KubeSim, from: u64, n: usize) -> (Vec<Vec<u8>>, Duration) {
    let url = format!(
        "{}/api/v1/pods?watch=true&resourceVersion={from}",
        sim.url()
    );
    let client = reqwest::Client::new();
    let t = Instant::now();
    let mut resp = client.get(url).send().await.expect("watch");
    let (mut buf, mut out) = (Vec::new(), Vec::with_capacity(n));
    while out.len() < n {
        let Ok(Some(chunk)) = resp.chunk().await else {
            break;
        };
        buf.extend_from_slice(&chunk);
        let mut start = 0;
        while let Some(i) = buf[start..].iter().position(|b| *b == b'\n') {
            let line = &buf[start..start + i];
            if out.len() < n && !line.starts_with(br#"{"type":"BOOKMARK""#) {
                out.push(line.to_vec());
            }
            start += i + 1;
        }
        buf.drain(..start);
    }
    (out, t.elapsed())
}

/// Runs the shell command in the environment variable `var`, if set, with `$PID` set to this
/// process: profilers are switched on and off around the timed bursts this way
/// (`HOT_PATH_ON='echo enable > ctl'` with `perf record --control fifo:ctl -D -1`, or
/// `callgrind_control -i on $PID` under `valgrind --tool=callgrind --instr-atstart=no`).
fn hook(var: &str) {
    if let Ok(cmd) = std::env::var(var) {
        let _ = std::process::Command::new("sh")
            .args(["-c", &cmd])
            .env("PID", std::process::id().to_string())
            .status();
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, d: usize| args.get(i).map_or(d, |s| s.parse().expect("a number"));
    let (pods, updates, runs) = (arg(0, 1000), arg(1, 20_000), arg(2, 3));
    let dump = args.get(3).cloned();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let sim = KubeSim::start(SimConfig {
            history_limit: updates * runs + 10_000,
            ..SimConfig::default()
        })
        .await
        .expect("kubesim");
        let live = LoadGen::seed(&sim, pods, 42, 8, 20)
            .expect("seed")
            .live_pods()
            .to_vec();
        let kubeconfig = kube::config::Kubeconfig::from_yaml(&sim.kubeconfig_yaml()).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .unwrap();
        let client = kube::Client::try_from(config).unwrap();
        let transform =
            Arc::new(ObjectTransform::new(&TransformConfig::default(), "bench").unwrap());
        let factory = InformerFactory::new(client, transform);
        let key = InformerKey {
            api_version: "v1".into(),
            kind: "Pod".into(),
            namespace: None,
            label_selector: None,
            field_selector: None,
        };
        let informer = factory.informer(&key).await.expect("informer");
        let sink = Arc::new(Blackhole {
            builder: EnvelopeBuilder {
                cluster: "bench".into(),
                api_version: "v1".into(),
                kind: "Pod".into(),
                plural: "pods".into(),
                source: key.to_string().into(),
                include_old: false,
            },
            events: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        });
        informer.add_handler(sink.clone());
        let t = Instant::now();
        informer.start();
        while sink.events.load(Ordering::Relaxed) < pods as u64 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        eprintln!(
            "synced {pods} pods in {:.2}s; {updates} updates per burst, {runs} bursts",
            t.elapsed().as_secs_f64()
        );
        let mut rates = Vec::new();
        let mut raw_rates = Vec::new();
        let mut written = 0u64;
        for run in 0..runs {
            let from = sim.current_resource_version();
            // Nothing else runs on this thread while the burst is written.
            for _ in 0..updates {
                update(&sim, &live, written);
                written += 1;
            }
            let (e0, b0) = (
                sink.events.load(Ordering::Relaxed),
                sink.bytes.load(Ordering::Relaxed),
            );
            hook("HOT_PATH_ON");
            let t = Instant::now();
            while sink.events.load(Ordering::Relaxed) < e0 + updates as u64 {
                tokio::task::yield_now().await;
            }
            let secs = t.elapsed().as_secs_f64();
            hook("HOT_PATH_OFF");
            let rate = updates as f64 / secs;
            let (lines, raw) = raw_watch(&sim, from, updates).await;
            let raw_rate = updates as f64 / raw.as_secs_f64();
            let wire: usize = lines.iter().map(Vec::len).sum();
            eprintln!(
                "run {run}: {rate:.0} events/s ({:.0} envelope bytes/event, {:.0} wire bytes/event); raw HTTP read {raw_rate:.0} events/s",
                (sink.bytes.load(Ordering::Relaxed) - b0) as f64 / updates as f64,
                wire as f64 / updates as f64,
            );
            rates.push(rate);
            raw_rates.push(raw_rate);
            if run == 0
                && let Some(path) = &dump
            {
                let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
                for l in &lines {
                    f.write_all(l).unwrap();
                    f.write_all(b"\n").unwrap();
                }
            }
        }
        println!(
            "hot_path: {:.0} events/s median of {runs} (raw HTTP read {:.0} events/s)",
            median(rates),
            median(raw_rates)
        );
        informer.stop().await;
    });
}
