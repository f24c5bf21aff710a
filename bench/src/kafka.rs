//! Kafka: lookout's Kafka sink against a raw rdkafka producer, same broker (tansu), same
//! payloads, same librdkafka settings (the sink's defaults: idempotent, acks=all, zstd).

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lookout::event::{Envelope, EnvelopeBuilder, Op, diff};
use lookout::sinks::kafka::{DEFAULT_PROPERTIES, KafkaSinkConfig};
use lookout::sinks::util::spawn_driver;
use lookout::sinks::{AckObserver, Common, SinkContext, Slot};
use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::cluster::Cluster;
use crate::report::Target;
use crate::{Args, agent};

/// (name, value per run, unit, target) figures.
pub type Figures = Vec<(String, Vec<f64>, &'static str, Option<Target>)>;

const TOPIC: &str = "bench";

struct Broker(Child);

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the comparison `args.runs` times, or says why it cannot run here.
pub fn compare(
    args: &Args,
    lookout: &Path,
    rt: &tokio::runtime::Runtime,
    dir: &Path,
) -> Result<Figures, String> {
    let tansu = &args.tansu;
    let port = agent::free_port().port();
    let url = format!("tcp://127.0.0.1:{port}");
    let log = std::fs::File::create(dir.join("tansu.log")).map_err(|e| e.to_string())?;
    let broker = Broker(
        Command::new(tansu)
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
            .map_err(|e| {
                format!(
                    "cannot start {} ({e}): `make tansu` builds it",
                    tansu.display()
                )
            })?,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err("tansu did not listen".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = Command::new(tansu)
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
    let pods = args.kafka_pods.min(n);
    let runs = args.runs;
    let mut c = Cluster::start(rt, pods, runs * n + 10_000, dir);

    // lookout end to end with the Kafka sink and with the blackhole (the same pipeline,
    // nothing downstream): two agents on one cluster. Both list it; then each burst is written
    // while both are frozen and consumed by one agent and right after by the other, the order
    // alternating from run to run. Measured in blocks (every Kafka burst, then every blackhole
    // burst), the two sides of a ratio were minutes apart, and this host's speed drifts over
    // minutes: one build's blackhole CPU per event moved from 48 to 88 µs within an hour.
    let kafka_sink = format!(
        "  - name: kafka\n    type: kafka\n    brokers: [\"{bootstrap}\"]\n    topic: {TOPIC}\n    queueCapacity: 10000\n"
    );
    let blackhole = "  - name: bh\n    type: blackhole\n    queueCapacity: 10000\n";
    // The Kafka agent's index into `agents` and the per-agent figures below (the blackhole: 1).
    const KAFKA: usize = 0;
    let mut agents = [
        (
            agent::spawn(
                lookout,
                &c.kubeconfig,
                dir,
                "kafka",
                &kafka_sink,
                Stdio::null(),
            ),
            "kafka",
        ),
        (
            agent::spawn(lookout, &c.kubeconfig, dir, "bh", blackhole, Stdio::null()),
            "bh",
        ),
    ];
    for (a, sink) in &mut agents {
        a.wait_settled(&[*sink], pods as u64, Duration::from_secs(300))
            .ok_or(format!(
                "lookout did not deliver the initial list to {sink}"
            ))?;
    }
    // Per agent (Kafka, blackhole): rates and CPU per event of each burst; and the broker's
    // CPU per event over the Kafka bursts. Every process is frozen or idle outside its own
    // burst, so what it uses from its thaw to the burst's last envelope is the burst's.
    let mut rates = [Vec::new(), Vec::new()];
    let mut cpu = [Vec::new(), Vec::new()];
    let mut cpu_broker = Vec::new();
    let per_event = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
    let broker_cpu = || agent::proc_cpu(broker.0.id() as i32);
    let mut kept = None;
    for run in 0..runs {
        for (a, _) in &agents {
            a.freeze();
        }
        let before = (run == 0).then(|| c.sim.list("v1", "Pod"));
        let mut objects = Vec::with_capacity(n);
        for _ in 0..n {
            objects.push(c.update());
        }
        let order = if run % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let (a, sink) = &mut agents[i];
            let (agent0, broker0) = (a.cpu(), broker_cpu());
            a.thaw();
            let burst = a
                .follow(
                    &[*sink],
                    (pods + run * n) as u64,
                    n as u64,
                    Duration::from_millis(10),
                    Duration::from_secs(600),
                )
                .ok_or(format!("lookout's burst to {sink} did not complete"))?;
            let used = a.cpu().saturating_sub(agent0);
            a.freeze();
            rates[i].push(burst.rate);
            cpu[i].push(per_event(used));
            if i == KAFKA {
                cpu_broker.push(per_event(broker_cpu().saturating_sub(broker0)));
            }
        }
        if run == 0 {
            kept = before.map(|b| (b, objects));
        }
    }
    for (a, _) in agents {
        a.shutdown();
    }
    let [e2e_kafka, e2e_blackhole] = rates;
    let [cpu_kafka, cpu_blackhole] = cpu;
    rt.block_on(c.sim.shutdown());
    let (before, objects) = kept.expect("first burst kept");

    // The same changes as envelopes, as the agent made them (managedFields dropped, patch
    // from the previous state), produced by a bare rdkafka producer with the sink's key,
    // headers, value and timestamp, and by the sink alone behind its driver.
    let envelopes = envelopes(before, objects);
    let broker_pid = broker.0.id() as i32;
    let mut raw = Runs::default();
    let mut alone = Runs::default();
    for _ in 0..runs {
        raw.push(raw_producer(&bootstrap, &envelopes, broker_pid)?);
        alone.push(sink_alone(rt, &bootstrap, envelopes.clone(), broker_pid)?);
    }
    let ratio = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x / y).collect::<Vec<_>>();
    // What Kafka costs beyond the pipeline, per event: the sink alone and the broker. On a
    // host whose cores the agent and the broker fill (both agents do on two cores), the end to
    // end ratio can reach at most the blackhole agent's CPU per event over that plus Kafka's.
    // The sink alone's CPU includes the pushes into its queue, which the blackhole agent pays
    // too: the bound errs low by that much (about an eighth of the sink alone's samples).
    let reachable: Vec<f64> = (0..runs)
        .map(|i| cpu_blackhole[i] / (cpu_blackhole[i] + alone.cpu[i] + alone.broker[i]))
        .collect();
    Ok(vec![
        (
            "raw rdkafka producer, same keys, headers, values".into(),
            raw.rate.clone(),
            "events/s",
            None,
        ),
        (
            "Kafka sink + driver alone (envelopes pre-built)".into(),
            alone.rate.clone(),
            "events/s",
            None,
        ),
        (
            "Kafka sink alone / raw producer".into(),
            ratio(&alone.rate, &raw.rate),
            "ratio",
            Some(Target::AtLeast(0.8)),
        ),
        (
            format!("lookout run end to end, {pods} pods -> tansu"),
            e2e_kafka.clone(),
            "events/s",
            None,
        ),
        (
            format!("lookout run end to end, {pods} pods -> blackhole"),
            e2e_blackhole.clone(),
            "events/s",
            None,
        ),
        (
            "end to end: Kafka sink / blackhole sink".into(),
            ratio(&e2e_kafka, &e2e_blackhole),
            "ratio",
            Some(Target::AtLeast(0.8)),
        ),
        (
            "lookout CPU per event end to end, Kafka sink".into(),
            cpu_kafka,
            "µs",
            None,
        ),
        (
            "lookout CPU per event end to end, blackhole sink".into(),
            cpu_blackhole,
            "µs",
            None,
        ),
        (
            "tansu CPU per event (lookout's Kafka bursts)".into(),
            cpu_broker,
            "µs",
            None,
        ),
        (
            "raw producer CPU per event (its process: producing, librdkafka)".into(),
            raw.cpu,
            "µs",
            None,
        ),
        (
            "Kafka sink + driver alone, CPU per event".into(),
            alone.cpu,
            "µs",
            None,
        ),
        (
            "tansu CPU per event (the sink alone)".into(),
            alone.broker,
            "µs",
            None,
        ),
        (
            "end to end reachable: blackhole CPU / (it + sink alone + tansu)".into(),
            reachable,
            "ratio",
            None,
        ),
    ])
}

/// Per run: events/s, and CPU per event of the producing process and of the broker, from the
/// clock's start to the last delivery report.
#[derive(Default)]
struct Runs {
    rate: Vec<f64>,
    cpu: Vec<f64>,
    broker: Vec<f64>,
}

impl Runs {
    fn push(&mut self, (rate, cpu, broker): (f64, f64, f64)) {
        self.rate.push(rate);
        self.cpu.push(cpu);
        self.broker.push(broker);
    }
}

/// Measures from now: [`Clock::stop`] gives (events/s, µs of this process's CPU per event,
/// µs of the broker's CPU per event).
struct Clock {
    start: Instant,
    cpu: Duration,
    broker_pid: i32,
    broker: Duration,
}

impl Clock {
    fn start(broker_pid: i32) -> Self {
        Self {
            start: Instant::now(),
            cpu: agent::proc_cpu(std::process::id() as i32),
            broker_pid,
            broker: agent::proc_cpu(broker_pid),
        }
    }

    fn stop(self, events: u64) -> (f64, f64, f64) {
        let secs = self.start.elapsed().as_secs_f64();
        let cpu = agent::proc_cpu(std::process::id() as i32).saturating_sub(self.cpu);
        let broker = agent::proc_cpu(self.broker_pid).saturating_sub(self.broker);
        let per_event = |d: Duration| d.as_secs_f64() * 1e6 / events as f64;
        (events as f64 / secs, per_event(cpu), per_event(broker))
    }
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

/// Sends every envelope as the Kafka sink would (key = uid, the sink's six headers, the
/// envelope JSON as value, the envelope time as timestamp), as fast as librdkafka takes
/// them, from the first send to the last delivery report. Messages are built before the
/// clock starts.
fn raw_producer(
    bootstrap: &str,
    envelopes: &[Arc<Envelope>],
    broker_pid: i32,
) -> Result<(f64, f64, f64), String> {
    let mut cc = ClientConfig::new();
    // The sink's own defaults, so the two never drift apart.
    for (k, v) in DEFAULT_PROPERTIES {
        cc.set(*k, *v);
    }
    cc.set("client.id", "lookout-bench");
    cc.set("bootstrap.servers", bootstrap);
    let producer: BaseProducer<Counting> = cc
        .create_with_context(Counting::default())
        .map_err(|e| e.to_string())?;
    let messages: Vec<(&str, &[u8], OwnedHeaders, i64)> = envelopes
        .iter()
        .map(|e| {
            let mut h = OwnedHeaders::new_with_capacity(6)
                .insert(Header {
                    key: "op",
                    value: Some(e.op.as_str()),
                })
                .insert(Header {
                    key: "kind",
                    value: Some(&*e.kind),
                })
                .insert(Header {
                    key: "apiVersion",
                    value: Some(&*e.api_version),
                });
            if let Some(ns) = &e.namespace {
                h = h.insert(Header {
                    key: "namespace",
                    value: Some(ns.as_str()),
                });
            }
            let h = h
                .insert(Header {
                    key: "name",
                    value: Some(e.name.as_str()),
                })
                .insert(Header {
                    key: "content-type",
                    value: Some("application/json"),
                });
            let ts = e
                .time
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0);
            (e.uid.as_str(), &e.to_json()[..], h, ts)
        })
        .collect();
    let count = messages.len() as u64;
    // A new idempotent producer holds its first messages until it has a producer id, which
    // librdkafka requests on a timer: about 0.5 s against tansu, a third of a run. One
    // message delivered before the clock starts measures producing, not the producer's start.
    if let Some((key, value, _, _)) = messages.first() {
        send(&producer, BaseRecord::to(TOPIC).key(*key).payload(*value));
        producer
            .flush(Duration::from_secs(30))
            .map_err(|e| format!("raw producer warm-up: {e}"))?;
        producer.context().delivered.store(0, Ordering::Relaxed);
    }
    let clock = Clock::start(broker_pid);
    for (key, value, headers, ts) in messages {
        send(
            &producer,
            BaseRecord::to(TOPIC)
                .key(key)
                .payload(value)
                .headers(headers)
                .timestamp(ts),
        );
    }
    producer
        .flush(Duration::from_secs(120))
        .map_err(|e| e.to_string())?;
    let measured = clock.stop(count);
    let ctx = producer.context();
    let ok = ctx.delivered.swap(0, Ordering::Relaxed);
    if ok < count {
        return Err(format!(
            "raw producer: {ok} of {count} delivered ({} failed)",
            ctx.failed.load(Ordering::Relaxed)
        ));
    }
    Ok(measured)
}

/// Enqueues `record`, serving delivery reports while librdkafka's queue is full.
fn send(producer: &BaseProducer<Counting>, mut record: BaseRecord<'_, str, [u8]>) {
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

struct NoState;

impl AckObserver for NoState {
    fn delivered(&self, _slot: Slot) {}
}

/// lookout's Kafka sink behind its real driver (queue, batching, acknowledgement), fed
/// envelopes already encoded: the sink's own cost against the raw producer's.
fn sink_alone(
    rt: &tokio::runtime::Runtime,
    bootstrap: &str,
    envelopes: Vec<Arc<Envelope>>,
    broker_pid: i32,
) -> Result<(f64, f64, f64), String> {
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
            n as usize + 1,
            Arc::new(NoState),
            CancellationToken::new(),
        );
        // As for the raw producer: the producer's start (its producer id) before the clock.
        let warm_up = envelopes.first().cloned().ok_or("no envelopes")?;
        h.send(warm_up).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while h.stats.sent.load(Ordering::Relaxed) < 1 {
            if Instant::now() > deadline {
                return Err("the Kafka sink did not deliver its warm-up event".to_string());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let clock = Clock::start(broker_pid);
        for e in envelopes {
            h.send(e).await;
        }
        let deadline = Instant::now() + Duration::from_secs(300);
        while h.stats.sent.load(Ordering::Relaxed) < n + 1 {
            if Instant::now() > deadline {
                return Err("the Kafka sink did not deliver every event".to_string());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let measured = clock.stop(n);
        h.close();
        h.join().await;
        Ok(measured)
    })
}
