//! Kafka: lookout's Kafka sink against a raw rdkafka producer, same broker (tansu), same
//! payloads, same librdkafka settings (the sink's defaults: idempotent, acks=all, zstd).

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lookout::event::{Envelope, EnvelopeBuilder, Op, diff};
use lookout::sinks::kafka::KafkaSinkConfig;
use lookout::sinks::util::spawn_driver;
use lookout::sinks::{AckObserver, Common, SinkContext};
use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::cluster::Cluster;
use crate::report::Target;
use crate::{Args, agent};

/// (name, value, unit, target) figures.
pub type Figures = Vec<(String, f64, &'static str, Option<Target>)>;

/// The Kafka sink's default librdkafka properties (`src/sinks/kafka/client.rs`).
const PROPERTIES: &[(&str, &str)] = &[
    ("client.id", "lookout-bench"),
    ("enable.idempotence", "true"),
    ("acks", "all"),
    ("compression.type", "zstd"),
    ("partitioner", "murmur2_random"),
    ("message.timeout.ms", "30000"),
];
const TOPIC: &str = "bench";

struct Broker(Child);

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the comparison, or says why it cannot run here.
pub fn compare(
    args: &Args,
    lookout: &Path,
    rt: &tokio::runtime::Runtime,
    dir: &Path,
) -> Result<Figures, String> {
    let tansu = args
        .tansu
        .clone()
        .filter(|p| p.exists())
        .ok_or("no tansu broker ($TANSU; `make tansu` builds it)")?;
    let port = agent::free_port().port();
    let url = format!("tcp://127.0.0.1:{port}");
    let log = std::fs::File::create(dir.join("tansu.log")).map_err(|e| e.to_string())?;
    let _broker = Broker(
        Command::new(&tansu)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start tansu: {e}"))?,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err("tansu did not listen".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = Command::new(&tansu)
        .args([
            "topic",
            "create",
            "--broker",
            &url,
            "--partitions",
            "3",
            TOPIC,
        ])
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "topic create: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let bootstrap = format!("127.0.0.1:{port}");
    let n = args.kafka_events;
    let pods = 2_000usize.min(n);
    let mut c = Cluster::start(rt, pods, n + 10_000, dir);

    // lookout: initial adds, then a frozen-then-released burst of n updates.
    let sinks = format!(
        "  - name: kafka\n    type: kafka\n    brokers: [\"{bootstrap}\"]\n    topic: {TOPIC}\n    queueCapacity: 10000\n"
    );
    let mut a = agent::spawn(lookout, &c.kubeconfig, dir, "kafka", &sinks, Stdio::null());
    a.wait_emitted(&["kafka"], pods as u64, Duration::from_secs(300))
        .ok_or("lookout did not deliver the initial list to Kafka")?;
    a.freeze();
    let before: Vec<Value> = c.sim.list("v1", "Pod");
    let mut objects = Vec::with_capacity(n);
    for _ in 0..n {
        objects.push(c.update());
    }
    a.thaw();
    let burst = a
        .follow(
            &["kafka"],
            pods as u64,
            n as u64,
            Duration::from_millis(10),
            Duration::from_secs(600),
        )
        .ok_or("lookout's Kafka burst did not complete")?;
    a.shutdown();
    rt.block_on(c.sim.shutdown());

    // The same changes as envelopes, as the agent made them (managedFields dropped, patch
    // from the previous state), produced by a bare rdkafka producer.
    let envelopes = envelopes(before, objects);
    let payloads: Vec<(String, Vec<u8>)> = envelopes
        .iter()
        .map(|e| (e.uid.clone(), e.to_json().to_vec()))
        .collect();
    let raw = raw_producer(&bootstrap, &payloads)?;
    let alone = sink_alone(rt, &bootstrap, envelopes)?;
    Ok(vec![
        (
            "raw rdkafka producer, same payloads".into(),
            raw,
            "events/s",
            None,
        ),
        (
            "Kafka sink + driver alone (envelopes pre-built)".into(),
            alone,
            "events/s",
            None,
        ),
        (
            "Kafka sink alone / raw producer".into(),
            alone / raw,
            "ratio",
            Some(Target::AtLeast(0.8)),
        ),
        (
            "lookout run end to end (kubesim -> tansu)".into(),
            burst.rate,
            "events/s",
            None,
        ),
        (
            "lookout end to end / raw producer".into(),
            burst.rate / raw,
            "ratio",
            Some(Target::AtLeast(0.8)),
        ),
    ])
}

fn strip(mut v: Value) -> Value {
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.shift_remove("managedFields");
    }
    v
}

/// Update envelopes of `objects`, each patched from the previous state of its Pod, encoded.
fn envelopes(before: Vec<Value>, objects: Vec<Value>) -> Vec<Arc<Envelope>> {
    let builder = EnvelopeBuilder {
        cluster: "bench".into(),
        api_version: "v1".into(),
        kind: "Pod".into(),
        plural: "pods".into(),
        source: "v1/Pod".into(),
        include_old: false,
    };
    let mut last: std::collections::HashMap<String, Arc<Value>> = before
        .into_iter()
        .map(|v| {
            let v = strip(v);
            (
                v["metadata"]["uid"].as_str().unwrap_or("").to_string(),
                Arc::new(v),
            )
        })
        .collect();
    objects
        .into_iter()
        .map(|o| {
            let o = Arc::new(strip(o));
            let uid = o["metadata"]["uid"].as_str().unwrap_or("").to_string();
            let old = last.insert(uid.clone(), o.clone());
            let patch = old.as_ref().map(|old| diff::diff(old, &o));
            let e = builder.build(Op::Update, o, old, patch, Instant::now());
            e.to_json();
            Arc::new(e)
        })
        .collect()
}

#[derive(Default)]
struct Counting {
    delivered: AtomicU64,
    failed: AtomicU64,
}

impl ClientContext for Counting {}

impl ProducerContext for Counting {
    type DeliveryOpaque = ();
    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        match r {
            Ok(_) => self.delivered.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.failed.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// Sends every payload as fast as librdkafka takes them; events/s from the first send to
/// the last delivery report.
fn raw_producer(bootstrap: &str, payloads: &[(String, Vec<u8>)]) -> Result<f64, String> {
    let mut cc = ClientConfig::new();
    for (k, v) in PROPERTIES {
        cc.set(*k, *v);
    }
    cc.set("bootstrap.servers", bootstrap);
    let producer: BaseProducer<Counting> = cc
        .create_with_context(Counting::default())
        .map_err(|e| e.to_string())?;
    let t = Instant::now();
    for (key, value) in payloads {
        let mut record = BaseRecord::to(TOPIC)
            .key(key.as_str())
            .payload(value.as_slice());
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    record = r;
                    producer.poll(Duration::from_millis(1));
                }
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer
        .flush(Duration::from_secs(120))
        .map_err(|e| e.to_string())?;
    let secs = t.elapsed().as_secs_f64();
    let ctx = producer.context();
    let ok = ctx.delivered.load(Ordering::Relaxed);
    if ok < payloads.len() as u64 {
        return Err(format!(
            "raw producer: {} of {} delivered ({} failed)",
            ok,
            payloads.len(),
            ctx.failed.load(Ordering::Relaxed)
        ));
    }
    Ok(payloads.len() as f64 / secs)
}

struct NoState;

impl AckObserver for NoState {
    fn delivered(&self, _event: &Arc<Envelope>) {}
}

/// lookout's Kafka sink behind its real driver (queue, batching, acknowledgement), fed
/// envelopes already encoded: the sink's own cost against the raw producer's.
fn sink_alone(
    rt: &tokio::runtime::Runtime,
    bootstrap: &str,
    envelopes: Vec<Arc<Envelope>>,
) -> Result<f64, String> {
    let config: KafkaSinkConfig = serde_json::from_value(serde_json::json!({
        "brokers": [bootstrap], "topic": TOPIC,
    }))
    .map_err(|e| e.to_string())?;
    let n = envelopes.len() as u64;
    rt.block_on(async move {
        let ctx = SinkContext {
            cluster: "bench".into(),
            state_dir: None,
        };
        let sink = config
            .compile(&Common::named("kafka"), &ctx)
            .map_err(|e| e.to_string())?;
        let h = spawn_driver(
            "kafka".into(),
            Arc::new(sink),
            // Room for every event: a full queue would coalesce changes of one Pod.
            n as usize,
            Arc::new(NoState),
            CancellationToken::new(),
        );
        let t = Instant::now();
        for e in envelopes {
            h.send(e).await;
        }
        let deadline = Instant::now() + Duration::from_secs(300);
        while h.stats.sent.load(Ordering::Relaxed) < n {
            if Instant::now() > deadline {
                return Err("the Kafka sink did not deliver every event".to_string());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let secs = t.elapsed().as_secs_f64();
        h.close();
        h.join().await;
        Ok(n as f64 / secs)
    })
}
