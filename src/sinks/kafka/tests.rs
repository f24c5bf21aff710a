//! Tests of the Kafka sink: config checks, encoding, and delivery against librdkafka's
//! in-process mock cluster (through the real driver where retries matter).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rdkafka::Message as _;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::config::PropertyValue;
use super::*;
use crate::config::Error;
use crate::event::{Envelope, EnvelopeBuilder, Op};
use crate::sinks::util::spawn_driver;
use crate::sinks::{
    AckObserver, Common, Payload, Sink, SinkConfig, SinkContext, SinkError, SinkKind, Slot,
};

// ---------------------------------------------------------------- fixtures

fn envelope(
    api_version: &str,
    kind: &str,
    namespace: Option<&str>,
    name: &str,
    uid: &str,
    op: Op,
    rv: u64,
) -> Arc<Envelope> {
    let mut meta = json!({"name": name, "uid": uid, "resourceVersion": rv.to_string()});
    if let Some(ns) = namespace {
        meta["namespace"] = json!(ns);
    }
    let plural = format!("{}s", kind.to_ascii_lowercase());
    let e = EnvelopeBuilder {
        cluster: "prod".into(),
        api_version: api_version.into(),
        kind: kind.into(),
        plural: plural.as_str().into(),
        source: format!("{api_version}/{kind}").as_str().into(),
        include_old: false,
    }
    .build(
        op,
        Arc::new(json!({"metadata": meta, "spec": {"rv": rv}})),
        None,
        None,
        Instant::now(),
    );
    Arc::new(e)
}

fn deployment(uid: &str, op: Op, rv: u64) -> Arc<Envelope> {
    envelope(
        "apps/v1",
        "Deployment",
        Some("shop"),
        &format!("web-{uid}"),
        uid,
        op,
        rv,
    )
}

fn config(brokers: &str, topic: &str) -> KafkaSinkConfig {
    KafkaSinkConfig {
        brokers: vec![brokers.to_string()],
        topic: topic.into(),
        tombstones: false,
        key: KeyMode::Uid,
        properties: BTreeMap::new(),
    }
}

/// The first problem compiling `config` reports.
fn check_error(config: &KafkaSinkConfig) -> Error {
    match config.compile(&Common::named("kafka"), &ctx()) {
        Ok(_) => panic!("compiles"),
        Err(mut e) => e.0.remove(0),
    }
}

fn set(config: &mut KafkaSinkConfig, key: &str, value: &str) {
    config
        .properties
        .insert(key.into(), PropertyValue(value.into()));
}

fn sink(config: &KafkaSinkConfig) -> Arc<KafkaSink> {
    sink_with(config, Payload::Envelope)
}

fn sink_with(config: &KafkaSinkConfig, payload: Payload) -> Arc<KafkaSink> {
    let common = Common {
        payload,
        ..Common::named("kafka")
    };
    let ctx = SinkContext {
        cluster: "prod".into(),
        state_dir: None,
    };
    Arc::new(config.compile(&common, &ctx).expect("sink builds"))
}

fn mock(topics: &[(&str, i32)]) -> MockCluster<'static, DefaultProducerContext> {
    let mock = MockCluster::new(1).expect("mock cluster");
    for (topic, partitions) in topics {
        mock.create_topic(topic, *partitions, 1).expect("topic");
    }
    mock
}

/// Counts acknowledged events.
#[derive(Default)]
struct CountAcks(AtomicUsize);

impl AckObserver for CountAcks {
    fn delivered(&self, _slot: Slot) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// One consumed message, decoded.
#[derive(Debug, Clone)]
struct Received {
    topic: String,
    partition: i32,
    offset: i64,
    key: String,
    value: Option<Value>,
    headers: HashMap<String, String>,
}

/// Reads `topics` from the beginning until `expected` messages arrived (or 20 s passed).
async fn consume(bootstrap: &str, topics: &[&str], expected: usize) -> Vec<Received> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "lookout-test")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut assignment = TopicPartitionList::new();
    for topic in topics {
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .expect("metadata");
        for p in metadata.topics()[0].partitions() {
            assignment
                .add_partition_offset(topic, p.id(), Offset::Beginning)
                .unwrap();
        }
    }
    consumer.assign(&assignment).expect("assign");
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while out.len() < expected {
        let m = match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(m) => m.expect("consume"),
            Err(_) => break,
        };
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
        out.push(Received {
            topic: m.topic().to_string(),
            partition: m.partition(),
            offset: m.offset(),
            key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
            value: m.payload().map(|p| {
                let v: Value = serde_json::from_slice(p).expect("JSON value");
                crate::event::schema_check::any(&v);
                v
            }),
            headers,
        });
    }
    out
}

// ---------------------------------------------------------------- config

fn ctx() -> SinkContext {
    SinkContext {
        cluster: "Prod East".into(),
        state_dir: None,
    }
}

#[test]
fn topic_placeholders_are_normalized_for_kafka() {
    let t = TopicTemplate::parse("{cluster}.{group}.{namespace}.{kind}", &ctx().cluster).unwrap();
    let e = deployment("u1", Op::Add, 1);
    assert_eq!(t.render(&e), "prod_east.apps.shop.deployment");
    let node = envelope("v1", "Node", None, "n1", "u2", Op::Add, 1);
    assert_eq!(t.render(&node), "prod_east.core._cluster.node");
    assert!(!t.is_fixed());
    assert!(TopicTemplate::parse("k8s-events", "c").unwrap().is_fixed());
}

#[test]
fn unknown_placeholders_and_illegal_topics_fail_the_config_check() {
    for (topic, expected) in [
        ("k8s.{resource}", "unknown placeholder `{resource}`"),
        ("k8s.{kind", "unbalanced"),
        ("k8s.kind}", "unbalanced"),
        ("k8s/{kind}", "not allowed"),
        ("", "must not be empty"),
    ] {
        let err = check_error(&config("localhost:9092", topic));
        assert_eq!(err.path, "topic", "{topic}");
        assert!(err.to_string().contains(expected), "{topic}: {err}");
    }
}

#[test]
fn bad_librdkafka_properties_fail_the_check_with_librdkafka_s_message() {
    let mut c = config("localhost:9092", "k8s.{kind}");
    set(&mut c, "no.such.property", "1");
    let err = check_error(&c);
    assert_eq!(err.path, "properties");
    assert!(
        err.to_string().contains("No such configuration property"),
        "{err}"
    );

    let mut c = config("localhost:9092", "k8s.{kind}");
    set(&mut c, "compression.type", "brotli");
    let err = check_error(&c);
    assert!(err.to_string().contains("compression.type"), "{err}");

    // Only judged when the client is created, not when the property is set.
    let mut c = config("localhost:9092", "k8s.{kind}");
    set(&mut c, "security.protocol", "SASL_PLAINTEXT");
    set(&mut c, "sasl.mechanism", "NOPE");
    let err = check_error(&c);
    eprintln!("{err}");
    assert!(err.to_string().contains("NOPE"), "{err}");
}

#[test]
fn sasl_scram_and_plain_settings_pass_the_check() {
    for mechanism in ["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"] {
        let mut c = config("localhost:9092", "k8s.{kind}");
        set(&mut c, "security.protocol", "SASL_SSL");
        set(&mut c, "sasl.mechanism", mechanism);
        set(&mut c, "sasl.username", "lookout");
        set(&mut c, "sasl.password", "secret");
        set(&mut c, "compression.type", "lz4");
        c.compile(&Common::named("kafka"), &ctx())
            .map(drop)
            .unwrap_or_else(|e| panic!("{mechanism}: {e}"));
    }
}

#[test]
fn brokers_belong_in_brokers_not_in_properties() {
    let mut c = config("localhost:9092", "k8s.{kind}");
    set(&mut c, "bootstrap.servers", "elsewhere:9092");
    let err = check_error(&c);
    assert_eq!(err.path, "properties.bootstrap.servers");
    assert!(err.to_string().contains("use `brokers`"));
    c.properties.clear();
    c.brokers.clear();
    assert_eq!(check_error(&c).path, "brokers");
}

#[test]
fn yaml_sink_entry_parses_with_scalars_as_property_strings() {
    let yaml = r#"
type: kafka
name: events
brokers: "b1:9092, b2:9092"
topic: "k8s.{group}.{kind}"
format: cloudevents
cloudEventsMode: binary
tombstones: true
properties:
  security.protocol: SASL_SSL
  sasl.mechanism: SCRAM-SHA-512
  linger.ms: 20
  enable.idempotence: true
deadLetter:
  path: /var/lib/lookout/kafka-rejected.jsonl
"#;
    let sc: SinkConfig = serde_yaml_ng::from_str(yaml).unwrap();
    let SinkKind::Kafka(c) = &sc.kind else {
        panic!("not kafka")
    };
    let common = sc.options.check("kafka", sc.kind.accepts()).unwrap();
    assert_eq!(c.brokers, ["b1:9092", "b2:9092"]);
    assert_eq!(c.properties["linger.ms"], PropertyValue("20".into()));
    assert_eq!(
        c.properties["enable.idempotence"],
        PropertyValue("true".into())
    );
    assert_eq!(common.payload.cloud_events(), Some(CloudEventsMode::Binary));
    assert!(c.tombstones);
    assert!(common.dead_letter.as_ref().unwrap().path.is_some());
    assert_eq!(sc.name(), "events");
    let err = serde_yaml_ng::from_str::<SinkConfig>(&format!("{yaml}\nbogus: 1")).unwrap_err();
    assert!(err.to_string().contains("bogus"), "{err}");
}

// ---------------------------------------------------------------- delivery (mock cluster)

#[tokio::test]
async fn messages_are_keyed_by_uid_and_carry_identity_headers() {
    let mock = mock(&[("k8s.deployment", 3), ("k8s.node", 1)]);
    let bootstrap = mock.bootstrap_servers();
    let sink = sink(&config(&bootstrap, "k8s.{kind}"));
    let dep = deployment("u1", Op::Update, 2);
    let node = envelope("v1", "Node", None, "n1", "u2", Op::Add, 1);
    sink.send(&[dep.clone(), node.clone()]).await.unwrap();

    let got = consume(&bootstrap, &["k8s.deployment", "k8s.node"], 2).await;
    assert_eq!(got.len(), 2);
    let d = got.iter().find(|m| m.topic == "k8s.deployment").unwrap();
    assert_eq!(d.key, "u1");
    assert_eq!(d.value.as_ref().unwrap()["uid"], "u1");
    assert_eq!(d.value.as_ref().unwrap()["op"], "update");
    assert_eq!(d.headers["op"], "update");
    assert_eq!(d.headers["kind"], "Deployment");
    assert_eq!(d.headers["apiVersion"], "apps/v1");
    assert_eq!(d.headers["namespace"], "shop");
    assert_eq!(d.headers["name"], "web-u1");
    assert_eq!(d.headers["content-type"], "application/json");
    let n = got.iter().find(|m| m.topic == "k8s.node").unwrap();
    assert_eq!(n.key, "u2");
    assert!(
        !n.headers.contains_key("namespace"),
        "cluster-scoped: no namespace header"
    );
}

#[tokio::test]
async fn deletes_are_followed_by_a_tombstone_only_when_enabled() {
    let mock = mock(&[("with", 1), ("without", 1)]);
    let bootstrap = mock.bootstrap_servers();
    let mut c = config(&bootstrap, "with");
    c.tombstones = true;
    let batch = [
        deployment("u1", Op::Add, 1),
        deployment("u1", Op::Delete, 2),
        deployment("u2", Op::Add, 3),
    ];
    sink(&c).send(&batch).await.unwrap();
    sink(&config(&bootstrap, "without"))
        .send(&batch)
        .await
        .unwrap();

    let with = consume(&bootstrap, &["with"], 4).await;
    let ops: Vec<(String, Option<String>)> = with
        .iter()
        .map(|m| (m.key.clone(), m.headers.get("op").cloned()))
        .collect();
    assert_eq!(
        ops,
        [
            ("u1".into(), Some("add".into())),
            ("u1".into(), Some("delete".into())),
            ("u1".into(), None),
            ("u2".into(), Some("add".into())),
        ]
    );
    let tombstone = &with[2];
    assert!(tombstone.value.is_none(), "tombstone has a null value");
    assert_eq!(tombstone.headers["kind"], "Deployment");
    let without = consume(&bootstrap, &["without"], 3).await;
    assert_eq!(without.len(), 3);
    assert!(without.iter().all(|m| m.value.is_some()));
}

#[tokio::test]
async fn each_object_s_changes_stay_in_one_partition_in_order() {
    let mock = mock(&[("k8s.deployment", 4)]);
    let bootstrap = mock.bootstrap_servers();
    let sink = sink(&config(&bootstrap, "k8s.{kind}"));
    let mut rv = 0;
    let mut batch = Vec::new();
    for round in 0..10 {
        for obj in 0..20 {
            rv += 1;
            let op = if round == 0 { Op::Add } else { Op::Update };
            batch.push(deployment(&format!("uid-{obj}"), op, rv));
        }
    }
    // Two batches, so order must also hold across sends.
    let (first, second) = batch.split_at(77);
    sink.send(first).await.unwrap();
    sink.send(second).await.unwrap();

    let got = consume(&bootstrap, &["k8s.deployment"], batch.len()).await;
    assert_eq!(got.len(), batch.len());
    let mut per_key: HashMap<&str, Vec<&Received>> = HashMap::new();
    for m in &got {
        per_key.entry(&m.key).or_default().push(m);
    }
    assert_eq!(per_key.len(), 20);
    let partitions: std::collections::HashSet<i32> = got.iter().map(|m| m.partition).collect();
    assert!(partitions.len() > 1, "keys spread over partitions");
    for (key, msgs) in per_key {
        assert!(
            msgs.iter().all(|m| m.partition == msgs[0].partition),
            "{key}"
        );
        let mut msgs = msgs;
        msgs.sort_by_key(|m| m.offset);
        let rvs: Vec<u64> = msgs
            .iter()
            .map(|m| {
                m.value.as_ref().unwrap()["resourceVersion"]
                    .as_str()
                    .unwrap()
                    .parse()
                    .unwrap()
            })
            .collect();
        assert!(rvs.windows(2).all(|w| w[0] < w[1]), "{key}: {rvs:?}");
        assert_eq!(rvs.len(), 10);
    }
}

#[tokio::test]
async fn topic_template_routes_each_kind_group_and_namespace() {
    let mock = mock(&[
        ("prod.apps.shop.deployment", 1),
        ("prod.core._cluster.node", 1),
        ("prod.core.kube-system.configmap", 1),
    ]);
    let bootstrap = mock.bootstrap_servers();
    let sink = sink(&config(&bootstrap, "{cluster}.{group}.{namespace}.{kind}"));
    sink.send(&[
        deployment("u1", Op::Add, 1),
        envelope("v1", "Node", None, "n1", "u2", Op::Add, 2),
        envelope(
            "v1",
            "ConfigMap",
            Some("kube-system"),
            "cm",
            "u3",
            Op::Add,
            3,
        ),
    ])
    .await
    .unwrap();
    let got = consume(
        &bootstrap,
        &[
            "prod.apps.shop.deployment",
            "prod.core._cluster.node",
            "prod.core.kube-system.configmap",
        ],
        3,
    )
    .await;
    let mut routes: Vec<(String, String)> = got.into_iter().map(|m| (m.topic, m.key)).collect();
    routes.sort();
    assert_eq!(
        routes,
        [
            ("prod.apps.shop.deployment".into(), "u1".into()),
            ("prod.core._cluster.node".into(), "u2".into()),
            ("prod.core.kube-system.configmap".into(), "u3".into()),
        ]
    );
}

#[tokio::test]
async fn cloudevents_binary_mode_puts_attributes_in_ce_headers() {
    let mock = mock(&[("ce", 1)]);
    let bootstrap = mock.bootstrap_servers();
    let c = config(&bootstrap, "ce");
    let e = deployment("u1", Op::Update, 7);
    sink_with(&c, Payload::Cloudevents(CloudEventsMode::Binary))
        .send(std::slice::from_ref(&e))
        .await
        .unwrap();

    let got = consume(&bootstrap, &["ce"], 1).await;
    let m = &got[0];
    assert_eq!(m.key, "u1");
    let h = &m.headers;
    assert_eq!(h["ce_specversion"], "1.0");
    assert_eq!(h["ce_id"], e.id.to_string());
    assert_eq!(
        h["ce_source"],
        "k8s://prod/apis/apps/v1/namespaces/shop/deployments"
    );
    assert_eq!(h["ce_type"], "io.k8s.deployment.update");
    assert_eq!(h["ce_subject"], "shop/web-u1");
    assert_eq!(h["ce_time"], e.time_rfc3339());
    assert_eq!(h["ce_partitionkey"], "u1");
    assert_eq!(h["content-type"], "application/json");
    assert_eq!(h["op"], "update");
    // The value is the envelope itself, not a CloudEvents JSON object.
    let v = m.value.as_ref().unwrap();
    assert_eq!(v["uid"], "u1");
    assert!(v.get("specversion").is_none());
}

#[tokio::test]
async fn cloudevents_structured_mode_wraps_the_envelope_in_data() {
    let mock = mock(&[("ce", 1)]);
    let bootstrap = mock.bootstrap_servers();
    let c = config(&bootstrap, "ce");
    sink_with(&c, Payload::Cloudevents(CloudEventsMode::Structured))
        .send(&[deployment("u1", Op::Add, 1)])
        .await
        .unwrap();
    let m = &consume(&bootstrap, &["ce"], 1).await[0];
    assert_eq!(m.headers["content-type"], "application/cloudevents+json");
    assert!(!m.headers.contains_key("ce_id"));
    let v = m.value.as_ref().unwrap();
    assert_eq!(v["specversion"], "1.0");
    assert_eq!(v["type"], "io.k8s.deployment.add");
    assert_eq!(v["data"]["uid"], "u1");
}

#[tokio::test]
async fn debezium_messages_are_keyed_by_a_json_uid_and_their_tombstones_too() {
    let mock = mock(&[("dbz", 1)]);
    let bootstrap = mock.bootstrap_servers();
    let mut c = config(&bootstrap, "dbz");
    c.tombstones = true;
    sink_with(&c, Payload::Debezium(Default::default()))
        .send(&[
            deployment("u1", Op::Add, 1),
            deployment("u1", Op::Delete, 2),
        ])
        .await
        .unwrap();
    let got = consume(&bootstrap, &["dbz"], 3).await;
    assert_eq!(got.len(), 3);
    for m in &got {
        assert_eq!(
            serde_json::from_str::<Value>(&m.key).unwrap(),
            json!({"uid": "u1"})
        );
    }
    assert_eq!(got[0].value.as_ref().unwrap()["op"], "c");
    assert_eq!(got[0].headers["op"], "add");
    let d = got[1].value.as_ref().unwrap();
    assert_eq!(d["op"], "d");
    assert_eq!(d["before"]["metadata"]["uid"], "u1");
    assert!(d["after"].is_null());
    assert!(got[2].value.is_none(), "tombstone after the delete");
}

#[tokio::test]
async fn connect_framing_and_namespaced_name_keys_when_asked() {
    let mock = mock(&[("framed", 1), ("named", 1)]);
    let bootstrap = mock.bootstrap_servers();
    let mut c = config(&bootstrap, "framed");
    c.key = KeyMode::NamespacedName;
    let framed = Payload::Debezium(crate::event::debezium::Encoding { schemas: true });
    sink_with(&c, framed)
        .send(&[deployment("u1", Op::Add, 1)])
        .await
        .unwrap();
    let m = &consume(&bootstrap, &["framed"], 1).await[0];
    let key: Value = serde_json::from_str(&m.key).unwrap();
    assert_eq!(
        key["payload"],
        json!({"namespace": "shop", "name": "web-u1"})
    );
    assert_eq!(key["schema"]["type"], "struct");
    let v = m.value.as_ref().unwrap();
    assert_eq!(v["payload"]["op"], "c");
    assert_eq!(v["payload"]["after"]["uid"], "u1");
    assert_eq!(v["schema"]["name"], "prod.apps.Deployment.Envelope");

    // The envelope format keeps bare keys: `namespace/name`.
    let mut c = config(&bootstrap, "named");
    c.key = KeyMode::NamespacedName;
    sink(&c)
        .send(&[deployment("u1", Op::Add, 1)])
        .await
        .unwrap();
    assert_eq!(
        consume(&bootstrap, &["named"], 1).await[0].key,
        "shop/web-u1"
    );
}

/// A mock cluster with `topic` (2 partitions), a sink config whose librdkafka queue holds
/// only 5 messages, and `n` updates of 7 objects.
fn queue_of_five(
    topic: &str,
    n: u64,
) -> (
    MockCluster<'static, DefaultProducerContext>,
    String,
    KafkaSinkConfig,
    Vec<Arc<Envelope>>,
) {
    let mock = mock(&[(topic, 2)]);
    let bootstrap = mock.bootstrap_servers();
    let mut c = config(&bootstrap, topic);
    set(&mut c, "queue.buffering.max.messages", "5");
    let batch = (0..n)
        .map(|i| deployment(&format!("u{}", i % 7), Op::Update, i))
        .collect();
    (mock, bootstrap, c, batch)
}

#[tokio::test]
async fn a_full_producer_queue_waits_for_room_instead_of_failing() {
    let (_mock, bootstrap, c, batch) = queue_of_five("small", 300);
    sink(&c).send(&batch).await.unwrap();
    assert_eq!(consume(&bootstrap, &["small"], 300).await.len(), 300);
}

/// Messages the brokers hold in `topic` (the sum of its partitions' high watermarks).
fn messages_in(bootstrap: &str, topic: &str) -> i64 {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "lookout-test-count")
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .expect("metadata");
    metadata.topics()[0]
        .partitions()
        .iter()
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p.id(), Duration::from_secs(5))
                .expect("watermarks")
                .1
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_given_up_while_producing_enqueues_nothing_after_the_purge() {
    // The small librdkafka queue keeps the producing thread waiting for room, mid-batch.
    let (_mock, bootstrap, c, batch) = queue_of_five("quit", 3000);
    let sink = sink(&c);
    let count = |b: String| async move {
        tokio::task::spawn_blocking(move || messages_in(&b, "quit"))
            .await
            .unwrap()
    };
    // Sending, until the first messages are on the broker.
    {
        let send = sink.send(&batch);
        tokio::pin!(send);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while count(bootstrap.clone()).await == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "nothing sent within 20 s"
            );
            tokio::select! {
                r = &mut send => panic!("3000 messages through a queue of 5 went at once: {r:?}"),
                () = tokio::time::sleep(Duration::from_millis(10)) => {}
            }
        }
        // The driver gives up: its send future is dropped, then the sink abandoned.
    }
    sink.abandon();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after_purge = count(bootstrap.clone()).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let later = count(bootstrap.clone()).await;
    assert!(
        after_purge < 3000,
        "the batch was given up before it was all sent"
    );
    assert_eq!(
        later, after_purge,
        "nothing of the batch is produced after the purge"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_in_flight_keep_their_bytes_after_the_sender_dropped_its_events() {
    // librdkafka is handed each value and key without a copy; a slow broker keeps the
    // messages in flight after the send was given up and every envelope dropped.
    let mock = mock(&[("own", 1)]);
    mock.broker_round_trip_time(1, Duration::from_millis(400))
        .expect("rtt");
    let bootstrap = mock.bootstrap_servers();
    let sink = sink(&config(&bootstrap, "own"));
    let batch: Vec<Arc<Envelope>> = (0..50)
        .map(|i| deployment(&format!("u{i}"), Op::Update, i))
        .collect();
    let expected: HashMap<String, Value> = batch
        .iter()
        .map(|e| {
            let value = serde_json::from_slice(e.to_json()).unwrap();
            (e.uid.to_string(), value)
        })
        .collect();
    let given_up = tokio::time::timeout(Duration::from_millis(100), sink.send(&batch)).await;
    assert!(given_up.is_err(), "a 400 ms broker delivered within 100 ms");
    drop(batch);
    // Reuse what the envelopes freed, with bytes that are not JSON.
    let scribbles: Vec<Vec<u8>> = (0..4000).map(|i| vec![0x55; 64 + (i % 8) * 64]).collect();

    let got = consume(&bootstrap, &["own"], 50).await;
    drop(scribbles);
    assert_eq!(got.len(), 50, "every enqueued message is delivered");
    for m in &got {
        assert_eq!(
            m.value.as_ref(),
            Some(&expected[&m.key]),
            "the value of {} is its envelope",
            m.key
        );
    }
}

#[tokio::test]
async fn an_oversized_event_is_dead_lettered_and_the_rest_delivered() {
    let mock = mock(&[("big", 1)]);
    let bootstrap = mock.bootstrap_servers();
    let mut c = config(&bootstrap, "big");
    set(&mut c, "message.max.bytes", "2000");
    set(&mut c, "compression.type", "none");
    let sink = sink(&c);
    let small = deployment("u1", Op::Add, 1);
    let huge = envelope(
        "v1",
        "ConfigMap",
        Some("shop"),
        &"x".repeat(5000),
        "u2",
        Op::Add,
        2,
    );
    let result = sink.send(&[small.clone(), huge, small.clone()]).await;
    match result {
        Err(SinkError::Rejected { indices, message }) => {
            assert_eq!(indices, Some(vec![1]), "{message}");
            assert!(message.contains("u2"), "{message}");
        }
        other => panic!("expected a rejection, got {other:?}"),
    }

    // Through the driver: counted as rejected, acknowledged, never retried.
    let observer = Arc::new(CountAcks::default());
    let handle = spawn_driver(
        "kafka".into(),
        sink,
        10,
        observer.clone(),
        CancellationToken::new(),
    );
    let huge = envelope(
        "v1",
        "ConfigMap",
        Some("shop"),
        &"y".repeat(5000),
        "u3",
        Op::Add,
        3,
    );
    assert!(handle.send(huge).await);
    assert!(handle.send(deployment("u4", Op::Add, 4)).await);
    handle.close();
    let stats = handle.stats.clone();
    tokio::time::timeout(Duration::from_secs(20), handle.join())
        .await
        .expect("driver finishes");
    assert_eq!(stats.rejected.load(Ordering::SeqCst), 1);
    assert_eq!(stats.sent.load(Ordering::SeqCst), 1);
    assert_eq!(stats.retries.load(Ordering::SeqCst), 0);
    assert_eq!(observer.0.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_then_up_loses_nothing_through_the_driver() {
    let mock = mock(&[("k8s.deployment", 2)]);
    let bootstrap = mock.bootstrap_servers();
    let mut c = config(&bootstrap, "k8s.{kind}");
    c.tombstones = true;
    // Fail fast while the broker is down, so the driver's retry path runs.
    set(&mut c, "message.timeout.ms", "1000");
    let sink = sink(&c);
    let observer = Arc::new(CountAcks::default());
    let handle = spawn_driver(
        "kafka".into(),
        sink.clone(),
        1000,
        observer.clone(),
        CancellationToken::new(),
    );
    let mut sent = Vec::new();
    for i in 0..50 {
        let e = deployment(&format!("u{}", i % 5), Op::Update, i);
        sent.push(e.clone());
        assert!(handle.send(e).await);
    }
    // Let the first batches through, then take the broker away.
    let deadline = Instant::now() + Duration::from_secs(10);
    while observer.0.load(Ordering::SeqCst) < 50 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    mock.broker_down(1).unwrap();
    assert!(
        sink.healthcheck().await.is_err(),
        "readiness fails while down"
    );
    for i in 50..150 {
        let op = if i % 30 == 29 { Op::Delete } else { Op::Update };
        let e = deployment(&format!("u{}", i % 5), op, i);
        sent.push(e.clone());
        assert!(handle.send(e).await);
    }
    let stats = handle.stats.clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    while stats.retries.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        stats.retries.load(Ordering::SeqCst) > 0,
        "the driver retried"
    );
    assert_eq!(stats.rejected.load(Ordering::SeqCst), 0);
    mock.broker_up(1).unwrap();
    handle.close();
    tokio::time::timeout(Duration::from_secs(60), handle.join())
        .await
        .expect("driver drains after the broker is back");
    assert_eq!(observer.0.load(Ordering::SeqCst), sent.len());
    sink.healthcheck().await.expect("healthy again");

    let tombstones = sent.iter().filter(|e| e.op == Op::Delete).count();
    let got = consume(&bootstrap, &["k8s.deployment"], sent.len() + tombstones).await;
    let received: std::collections::HashSet<String> = got
        .iter()
        .filter_map(|m| m.value.as_ref())
        .map(|v| v["id"].as_str().unwrap().to_string())
        .collect();
    let lost: Vec<_> = sent
        .iter()
        .filter(|e| !received.contains(&e.id.to_string()))
        .collect();
    assert!(lost.is_empty(), "lost {} events", lost.len());
    // Per object, the last message is its newest change (retries never reorder).
    let mut last: HashMap<&str, u64> = HashMap::new();
    for m in got.iter().filter(|m| m.value.is_some()) {
        let rv = m.value.as_ref().unwrap()["resourceVersion"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        last.insert(&m.key, rv);
    }
    for i in 0..5u64 {
        let newest = (0..150u64).filter(|rv| rv % 5 == i).max().unwrap();
        assert_eq!(last[format!("u{i}").as_str()], newest);
    }
    eprintln!(
        "broker down/up: {} sent, {} received (incl. duplicates), {} retries",
        sent.len(),
        got.len(),
        stats.retries.load(Ordering::SeqCst)
    );
}

#[tokio::test]
async fn healthcheck_fails_when_no_broker_answers() {
    let sink = sink(&config("127.0.0.1:1", "k8s"));
    let started = Instant::now();
    let err = sink.healthcheck().await.unwrap_err();
    assert!(matches!(err, SinkError::Retriable { .. }));
    assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));

    let mock = mock(&[]);
    sink_ok(&mock.bootstrap_servers()).await;
}

async fn sink_ok(bootstrap: &str) {
    sink(&config(bootstrap, "k8s"))
        .healthcheck()
        .await
        .expect("healthy");
}

#[test]
fn bad_properties_in_a_config_file_are_reported_at_their_sink_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lookout.yaml");
    std::fs::write(
        &path,
        "resources:\n  - apiVersion: v1\n    kind: ConfigMap\nsinks:\n  - type: stdout\n    name: out\n  \
         - type: kafka\n    name: k\n    brokers: [localhost:9092]\n    topic: k8s\n    \
         properties:\n      acks: sometimes\n",
    )
    .unwrap();
    let config = crate::config::Config::load_with_env(Some(&path), &|_| None, false).unwrap();
    let err = crate::config::Plan::compile(config)
        .unwrap_err()
        .0
        .remove(0);
    assert_eq!(err.path, "sinks[1].properties");
    assert!(err.to_string().contains("acks"), "{err}");
}
