//! The Kafka sink against a real Kafka-protocol broker process (tansu): through the real sink
//! driver, and end to end (kubesim → `lookout run` → tansu).
//!
//! The broker binary comes from `$TANSU` (the Makefile exports it), else PATH; `make tansu`
//! builds it. Without it the tests fail and say so.

mod common;
#[path = "common/tansu.rs"]
mod tansu;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lookout::event::{Envelope, EnvelopeBuilder, Op};
use lookout::sinks::util::spawn_driver;
use lookout::sinks::{AckObserver, SinkConfig, SinkContext, Slot};
use rdkafka::Message as _;
use rdkafka::consumer::StreamConsumer;
use rdkafka::message::Headers;
use serde_json::{Value, json};
use tansu::{Tansu, free_port};

/// A consumer of this suite's topics from the beginning.
fn consumer(bootstrap: &str, topics: &[(&str, i32)]) -> StreamConsumer {
    tansu::consumer(bootstrap, "lookout-e2e", topics)
}
use tokio_util::sync::CancellationToken;

// ---------------------------------------------------------------- the broker

/// Sink and librdkafka logs on the test's output (`RUST_LOG` overrides).
fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("lookout=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

// ---------------------------------------------------------------- events and consumers

fn envelope(kind: &str, namespace: Option<&str>, uid: &str, op: Op, rv: u64) -> Arc<Envelope> {
    let mut meta =
        json!({"name": format!("obj-{uid}"), "uid": uid, "resourceVersion": rv.to_string()});
    if let Some(ns) = namespace {
        meta["namespace"] = json!(ns);
    }
    let api_version = if kind == "Deployment" {
        "apps/v1"
    } else {
        "v1"
    };
    let e = EnvelopeBuilder {
        cluster: "e2e".into(),
        api_version: api_version.into(),
        kind: kind.into(),
        plural: format!("{}s", kind.to_ascii_lowercase()).as_str().into(),
        source: format!("{api_version}/{kind}").as_str().into(),
        include_old: false,
    }
    .build(
        op,
        Arc::new(json!({"metadata": meta, "data": {"rv": rv}})),
        None,
        None,
        Instant::now(),
    );
    Arc::new(e)
}

async fn kafka_sink(yaml: &str) -> Arc<dyn lookout::sinks::Sink> {
    let config: SinkConfig = serde_yaml_ng::from_str(yaml).expect("sink config");
    let ctx = SinkContext {
        cluster: "e2e".into(),
        state_dir: None,
    };
    let compiled = config.compile(&ctx).expect("valid");
    compiled.start(&ctx).expect("sink starts").sink
}

/// Records acknowledged events.
#[derive(Default)]
struct Acks {
    ids: Mutex<HashSet<String>>,
    count: AtomicUsize,
}

impl AckObserver for Acks {
    fn delivered(&self, slot: Slot) {
        let event = slot.deliver;
        self.ids.lock().unwrap().insert(event.id.to_string());
        self.count.fetch_add(1, Ordering::SeqCst);
    }
}

#[derive(Debug, Clone)]
struct Received {
    partition: i32,
    offset: i64,
    key: String,
    value: Option<Value>,
    headers: HashMap<String, String>,
}

fn decode(m: &rdkafka::message::BorrowedMessage<'_>) -> Received {
    let headers = m
        .headers()
        .map(|h| {
            h.iter()
                .map(|h| {
                    let v = h.value.map(|v| String::from_utf8_lossy(v).into_owned());
                    (h.key.to_string(), v.unwrap_or_default())
                })
                .collect()
        })
        .unwrap_or_default();
    Received {
        partition: m.partition(),
        offset: m.offset(),
        key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
        value: m
            .payload()
            .map(|p| common::checked(serde_json::from_slice(p).expect("JSON value"))),
        headers,
    }
}

/// Reads until `expected` messages arrived or `within` passed.
async fn consume(
    bootstrap: &str,
    topics: &[(&str, i32)],
    expected: usize,
    within: Duration,
) -> Vec<Received> {
    let consumer = consumer(bootstrap, topics);
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    while out.len() < expected {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(Ok(m)) => out.push(decode(&m)),
            Ok(Err(e)) => eprintln!("consumer: {e}"),
            Err(_) => break,
        }
    }
    out
}

fn rv_of(m: &Received) -> u64 {
    m.value.as_ref().unwrap()["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

// ---------------------------------------------------------------- scenarios

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tansu_receives_every_change_keyed_by_uid_in_order_with_headers_and_tombstones() {
    init_logs();
    let broker = Tansu::start();
    let topics = [
        ("k8s.deployment", 3),
        ("k8s.configmap", 3),
        ("k8s.namespace", 1),
    ];
    for (t, p) in topics {
        broker.create_topic(t, p as u32);
    }
    let sink = kafka_sink(&format!(
        "type: kafka\nname: e2e\nbrokers: {}\ntopic: \"k8s.{{kind}}\"\ntombstones: true\n",
        broker.bootstrap()
    ))
    .await;
    let acks = Arc::new(Acks::default());
    let handle = spawn_driver(
        "e2e".into(),
        sink,
        10_000,
        acks.clone(),
        CancellationToken::new(),
    );

    // 12 objects, each: add, 5 updates, and for a third of them a delete.
    let mut sent = Vec::new();
    let mut rv = 0;
    let objects: Vec<(&str, Option<&str>, String)> = (0..12)
        .map(|i| match i % 3 {
            0 => (
                "Deployment",
                Some(if i % 2 == 0 { "shop" } else { "web" }),
                format!("d{i}"),
            ),
            1 => ("ConfigMap", Some("shop"), format!("c{i}")),
            _ => ("Namespace", None, format!("n{i}")),
        })
        .collect();
    for step in 0..7 {
        for (i, (kind, ns, uid)) in objects.iter().enumerate() {
            let op = match step {
                0 => Op::Add,
                6 if i % 3 == 0 => Op::Delete,
                6 => continue,
                _ => Op::Update,
            };
            rv += 1;
            let e = envelope(kind, *ns, uid, op, rv);
            sent.push(e.clone());
            assert!(handle.send(e).await);
        }
    }
    handle.close();
    tokio::time::timeout(Duration::from_secs(60), handle.join())
        .await
        .expect("driver drains");
    assert_eq!(acks.count.load(Ordering::SeqCst), sent.len());

    let deletes = sent.iter().filter(|e| e.op == Op::Delete).count();
    let got = consume(
        &broker.bootstrap(),
        &topics,
        sent.len() + deletes,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        got.len(),
        sent.len() + deletes,
        "every change and tombstone"
    );

    let mut by_key: HashMap<&str, Vec<&Received>> = HashMap::new();
    for m in &got {
        by_key.entry(&m.key).or_default().push(m);
    }
    for (kind, ns, uid) in &objects {
        let mut msgs = by_key.remove(uid.as_str()).expect("object's messages");
        assert!(
            msgs.iter().all(|m| m.partition == msgs[0].partition),
            "{uid}: one partition"
        );
        msgs.sort_by_key(|m| m.offset);
        let expected: Vec<&Arc<Envelope>> = sent.iter().filter(|e| &e.uid == uid).collect();
        let changes: Vec<&&Received> = msgs.iter().filter(|m| m.value.is_some()).collect();
        assert_eq!(changes.len(), expected.len(), "{uid}");
        for (m, e) in changes.iter().zip(&expected) {
            assert_eq!(
                rv_of(m),
                e.resource_version.parse::<u64>().unwrap(),
                "{uid}: in order"
            );
            assert_eq!(m.value.as_ref().unwrap()["id"], e.id.to_string());
            assert_eq!(m.headers["op"], e.op.as_str());
            assert_eq!(m.headers["kind"], *kind);
            assert_eq!(m.headers["name"], format!("obj-{uid}"));
            assert_eq!(m.headers.get("namespace").map(String::as_str), *ns);
        }
        if expected.last().unwrap().op == Op::Delete {
            let last = msgs.last().unwrap();
            assert!(last.value.is_none(), "{uid}: tombstone after the delete");
            assert!(!last.headers.contains_key("op"));
            assert_eq!(msgs[msgs.len() - 2].headers["op"], "delete");
        } else {
            assert!(msgs.iter().all(|m| m.value.is_some()));
        }
    }
    broker.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tansu_killed_for_20s_mid_stream_loses_nothing_and_duplicates_are_counted() {
    init_logs();
    let port = free_port();
    let broker = Tansu::start_on(port);
    let topic = "k8s.deployment";
    let topics = [(topic, 2)];
    broker.create_topic(topic, 2);
    // A short message timeout makes the outage visible to the driver (errors, retries);
    // with the default 30 s, librdkafka alone would ride out a 20 s outage.
    let sink = kafka_sink(&format!(
        "type: kafka\nname: e2e\nbrokers: {}\ntopic: \"k8s.{{kind}}\"\nproperties:\n  message.timeout.ms: 5000\n{}",
        broker.bootstrap(),
        std::env::var("KAFKA_EXTRA_PROPS").unwrap_or_default()
    ))
    .await;
    let acks = Arc::new(Acks::default());
    let handle = spawn_driver(
        "e2e".into(),
        sink,
        100_000,
        acks.clone(),
        CancellationToken::new(),
    );
    let stats = handle.stats.clone();
    let handle = Arc::new(tokio::sync::Mutex::new(handle));

    // A steady stream: 10 objects, one change every 5 ms.
    let sent: Arc<Mutex<Vec<Arc<Envelope>>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let (sent, stop, handle) = (sent.clone(), stop.clone(), handle.clone());
        tokio::spawn(async move {
            let mut rv = 0u64;
            while !stop.load(Ordering::SeqCst) {
                rv += 1;
                let op = if rv <= 10 { Op::Add } else { Op::Update };
                let e = envelope("Deployment", Some("shop"), &format!("u{}", rv % 10), op, rv);
                sent.lock().unwrap().push(e.clone());
                assert!(handle.lock().await.send(e).await);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    // Consumer A reads the first broker's log while it lives.
    let consumed_a: Arc<Mutex<Vec<Received>>> = Arc::default();
    let consumer_a = {
        let (consumed, bootstrap) = (consumed_a.clone(), broker.bootstrap());
        tokio::spawn(async move {
            let consumer = consumer(&bootstrap, &topics);
            loop {
                if let Ok(m) = consumer.recv().await {
                    consumed.lock().unwrap().push(decode(&m));
                }
            }
        })
    };

    tokio::time::sleep(Duration::from_secs(3)).await;
    // Give the consumer a moment to catch up with what is acknowledged, then kill.
    let acked_now = acks.count.load(Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(3);
    while consumed_a.lock().unwrap().len() < acked_now && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let errors_before_kill = stats.errors.load(Ordering::SeqCst);
    broker.kill();
    let killed_at = Instant::now();
    // Delivery reports already on their way when the broker died still land, until the
    // driver sees the outage: its first failed send means the batch in flight at the kill
    // has resolved, and nothing the dead broker confirmed is still to come.
    let deadline = Instant::now() + Duration::from_secs(30);
    while stats.errors.load(Ordering::SeqCst) == errors_before_kill {
        assert!(
            Instant::now() < deadline,
            "the driver never saw the broker go away"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let acked_before_kill: HashSet<String> = acks.ids.lock().unwrap().clone();
    consumer_a.abort();
    let consumed_a: Vec<Received> = consumed_a.lock().unwrap().clone();
    eprintln!(
        "killed tansu after {} events sent, {} acknowledged, {} consumed",
        sent.lock().unwrap().len(),
        acked_before_kill.len(),
        consumed_a.len()
    );

    tokio::time::sleep(Duration::from_secs(20).saturating_sub(killed_at.elapsed())).await;
    let errors_while_down = stats.errors.load(Ordering::SeqCst);
    let acked_while_down = acks.count.load(Ordering::SeqCst) - acked_before_kill.len();
    // Same port, empty memory storage: consumer B reads the new log from its start.
    let broker = Tansu::start_on(port);
    broker.create_topic(topic, 2);
    let restarted_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, Ordering::SeqCst);
    producer.await.unwrap();
    let handle = Arc::try_unwrap(handle)
        .ok()
        .expect("sole owner")
        .into_inner();
    handle.close();
    tokio::time::timeout(Duration::from_secs(120), handle.join())
        .await
        .expect("driver drains after the broker is back");
    let drained_in = restarted_at.elapsed();
    let sent: Vec<Arc<Envelope>> = sent.lock().unwrap().clone();
    assert_eq!(
        acks.count.load(Ordering::SeqCst),
        sent.len(),
        "every event acknowledged"
    );

    // What must be in the new log: everything not acknowledged before the kill.
    let a_ids: HashSet<String> = consumed_a
        .iter()
        .map(|m| {
            m.value.as_ref().unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    // Consumer B reads the new log until every event the sink still owed is there.
    let owed: HashSet<String> = sent
        .iter()
        .map(|e| e.id.to_string())
        .filter(|id| !a_ids.contains(id) && !acked_before_kill.contains(id))
        .collect();
    let consumer_b = consumer(&broker.bootstrap(), &topics);
    let mut consumed_b: Vec<Received> = Vec::new();
    let mut b_ids: HashSet<String> = HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !owed.is_subset(&b_ids) {
        match tokio::time::timeout_at(deadline, consumer_b.recv()).await {
            Ok(Ok(m)) => {
                let m = decode(&m);
                b_ids.insert(
                    m.value.as_ref().unwrap()["id"]
                        .as_str()
                        .unwrap()
                        .to_string(),
                );
                consumed_b.push(m);
            }
            Ok(Err(e)) => eprintln!("consumer: {e}"),
            Err(_) => break,
        }
    }
    // Whatever else is in the log (duplicates of earlier events) arrives right behind.
    while let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(2), consumer_b.recv()).await {
        let m = decode(&m);
        b_ids.insert(
            m.value.as_ref().unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
        consumed_b.push(m);
    }

    let missing: Vec<&Arc<Envelope>> = sent
        .iter()
        .filter(|e| !a_ids.contains(&e.id.to_string()) && !b_ids.contains(&e.id.to_string()))
        .collect();
    // Acknowledged by the first broker, then gone with its memory storage: the broker's
    // durability, not the sink's (a real cluster keeps acks=all messages).
    let lost_by_broker = missing
        .iter()
        .filter(|e| acked_before_kill.contains(&e.id.to_string()))
        .count();
    let lost_by_sink = missing.len() - lost_by_broker;
    let received = consumed_a.len() + consumed_b.len();
    let distinct = a_ids.union(&b_ids).count();
    let duplicates = received - distinct;
    eprintln!(
        "tansu kill/restart: sent={} received={} distinct={} duplicates={} lost_by_sink={} \
         lost_with_broker_memory={} (acknowledged before the kill, not yet consumed) \
         errors_while_down={} acked_while_down={} retries={} drained_in={:?}",
        sent.len(),
        received,
        distinct,
        duplicates,
        lost_by_sink,
        lost_by_broker,
        errors_while_down,
        acked_while_down,
        stats.retries.load(Ordering::SeqCst),
        drained_in
    );
    assert_eq!(lost_by_sink, 0, "events lost by the sink");
    assert_eq!(
        acked_while_down, 0,
        "nothing acknowledged while the broker was down"
    );
    assert!(errors_while_down > 0, "the outage reached the driver");

    // Per object, the new log's last change is the object's newest.
    let mut newest: HashMap<&str, u64> = HashMap::new();
    for e in &sent {
        newest.insert(&e.uid, e.resource_version.parse().unwrap());
    }
    let mut last_b: HashMap<&str, (i64, u64)> = HashMap::new();
    for m in &consumed_b {
        let entry = last_b.entry(&m.key).or_insert((-1, 0));
        if m.offset > entry.0 {
            *entry = (m.offset, rv_of(m));
        }
    }
    for (uid, rv) in newest {
        assert_eq!(
            last_b.get(uid).map(|x| x.1),
            Some(rv),
            "{uid}: newest change last"
        );
    }
    broker.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubesim_changes_reach_tansu_through_lookout_run_keyed_ordered_and_replayable() {
    init_logs();
    let broker = Tansu::start();
    let topic = "test.core.configmap";
    let topics = [(topic, 3)];
    broker.create_topic(topic, 3);

    let sim = common::sim().await;
    let cm = |name: &str, v: &str| common::configmap("default", name, json!({ "k": v }));
    sim.create("v1", "ConfigMap", cm("a", "1")).unwrap();
    sim.create("v1", "ConfigMap", cm("b", "1")).unwrap();
    let config = format!(
        "cluster: test\nresources:\n  - apiVersion: v1\n    kind: ConfigMap\n\
         sinks:\n  - name: kafka\n    type: kafka\n    brokers: {}\n\
         \x20   topic: \"{{cluster}}.{{group}}.{{kind}}\"\n    tombstones: true\n\
         server:\n  listen: 127.0.0.1:0\n",
        broker.bootstrap()
    );
    let agent = common::Agent::start(&sim, &config).await;

    // Wait for the initial list to be in Kafka before changing things, so every change is
    // a separate event (no coalescing in the agent, no ambiguity in the expected count).
    let initial = consume(&broker.bootstrap(), &topics, 2, common::SOON).await;
    assert_eq!(
        initial.len(),
        2,
        "initial list; agent log:\n{}",
        agent.stderr()
    );

    let patch = |name: &str, v: &str| {
        sim.merge_patch(
            "v1",
            "ConfigMap",
            Some("default"),
            name,
            json!({"data": {"k": v}}),
        )
        .unwrap();
    };
    sim.create("v1", "ConfigMap", cm("c", "1")).unwrap();
    patch("a", "2");
    patch("a", "3");
    sim.merge_patch(
        "v1",
        "ConfigMap",
        Some("default"),
        "c",
        json!({"metadata": {"labels": {"app": null, "tier": "web"}}}),
    )
    .unwrap();
    sim.delete("v1", "ConfigMap", Some("default"), "b").unwrap();
    patch("c", "2");
    sim.create("v1", "ConfigMap", cm("d", "1")).unwrap();
    patch("a", "4");
    sim.delete("v1", "ConfigMap", Some("default"), "a").unwrap();
    sim.create("v1", "ConfigMap", cm("b", "again")).unwrap();
    for i in 0..20 {
        patch("d", &i.to_string());
    }
    // 2 initial adds, 10 changes, 20 updates of d, 2 tombstones.
    let expected = 2 + 10 + 20 + 2;
    let got = consume(
        &broker.bootstrap(),
        &topics,
        expected,
        Duration::from_secs(60),
    )
    .await;
    let (status, _, log) = agent.terminate().await;
    assert!(status.success(), "lookout exits cleanly; log:\n{log}");
    assert_eq!(got.len(), expected, "every change arrived; log:\n{log}");

    // Per partition in offset order = per object in emission order (one object, one key,
    // one partition).
    let mut ordered = got.clone();
    ordered.sort_by_key(|m| (m.partition, m.offset));
    let mut replay = common::Replay::default();
    let mut last_op: HashMap<String, String> = HashMap::new();
    let mut partition_of: HashMap<String, i32> = HashMap::new();
    for m in &ordered {
        assert_eq!(
            *partition_of.entry(m.key.clone()).or_insert(m.partition),
            m.partition
        );
        match &m.value {
            Some(e) => {
                assert_eq!(e["uid"], m.key.as_str(), "keyed by uid");
                assert_eq!(m.headers["op"], e["op"].as_str().unwrap());
                assert_eq!(m.headers["kind"], "ConfigMap");
                assert_eq!(m.headers["namespace"], "default");
                assert_eq!(m.headers["name"], e["name"].as_str().unwrap());
                // Adds/updates/deletes replay: each patch turns the previous object into
                // the new one.
                replay.apply(e);
                last_op.insert(m.key.clone(), e["op"].as_str().unwrap().to_string());
            }
            None => {
                assert_eq!(
                    last_op.get(&m.key).map(String::as_str),
                    Some("delete"),
                    "a tombstone follows its delete"
                );
                last_op.insert(m.key.clone(), "tombstone".into());
            }
        }
    }
    let names: HashSet<&str> = replay
        .objects
        .values()
        .map(|o| o["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, HashSet::from(["b", "c", "d"]));
    assert_eq!(replay.objects.len(), 3);
    for o in replay.objects.values() {
        let live = sim
            .get(
                "v1",
                "ConfigMap",
                Some("default"),
                o["metadata"]["name"].as_str().unwrap(),
            )
            .unwrap();
        assert_eq!(o["data"], live["data"], "final state matches the cluster");
    }
    broker.kill();
}
