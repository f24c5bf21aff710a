//! Nothing leaks: Secrets applied the way kubectl applies them (the whole manifest, `data`
//! in base64 and `stringData` in plain text, in the `last-applied-configuration`
//! annotation), updated and deleted, through every sink type and format, the cache API,
//! dead letters, the state store and the debug log — and neither a value nor its base64 is
//! found anywhere.

mod common;

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};

/// The values applied, before and after the update; each must never be seen again, neither
/// as it is nor in base64.
const VALUES: &[&str] = &[
    "first-password-Xq7",
    "first-token-Lm2",
    "second-password-Rt9",
    "second-token-Wv4",
];

fn b64(s: &str) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in s.as_bytes().chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Every form a value could leak in: plain, base64, and JSON-escaped inside the annotation.
fn forbidden() -> Vec<String> {
    VALUES
        .iter()
        .flat_map(|v| [v.to_string(), b64(v)])
        .collect()
}

/// Every request the webhook receiver got: its path, and the raw request (request line,
/// headers, body).
#[derive(Clone, Default)]
struct Recorded(Arc<Mutex<Vec<RawRequest>>>);

/// One request: its path, and the raw bytes.
type RawRequest = (String, Vec<u8>);

impl Recorded {
    fn text(&self) -> String {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(_, raw)| String::from_utf8_lossy(raw).into_owned())
            .collect()
    }

    /// True when a request to `path` carried a delete.
    fn saw_delete(&self, path: &str) -> bool {
        self.0
            .lock()
            .unwrap()
            .iter()
            .any(|(p, raw)| p == path && String::from_utf8_lossy(raw).contains("delete"))
    }
}

/// A receiver on loopback: `/reject` answers 400 (dead letters), every other path 200.
async fn receiver() -> (String, Recorded) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let recorded = Recorded::default();
    let rec = recorded.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let rec = rec.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let rec = rec.clone();
                    async move {
                        let path = req.uri().path().to_string();
                        let mut raw = format!("{} {path}\n", req.method()).into_bytes();
                        for (k, v) in req.headers() {
                            raw.extend_from_slice(format!("{k}: ").as_bytes());
                            raw.extend_from_slice(v.as_bytes());
                            raw.push(b'\n');
                        }
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        raw.extend_from_slice(&body);
                        raw.extend_from_slice(b"\n\n");
                        rec.0.lock().unwrap().push((path.clone(), raw));
                        let status = if path == "/reject" {
                            StatusCode::BAD_REQUEST
                        } else {
                            StatusCode::OK
                        };
                        Ok::<_, Infallible>(
                            Response::builder()
                                .status(status)
                                .body(Full::new(Bytes::new()))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (url, recorded)
}

/// A `lookout run` with stdout and stderr captured in files.
struct Run {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Run {
    fn start(dir: &Path, name: &str, sim: &kubesim::KubeSim, config: &str) -> Run {
        let kubeconfig = dir.join(format!("{name}.kubeconfig"));
        sim.write_kubeconfig(&kubeconfig).unwrap();
        let config_path = dir.join(format!("{name}.yaml"));
        std::fs::write(&config_path, config).unwrap();
        let stdout = dir.join(format!("{name}.stdout"));
        let stderr = dir.join(format!("{name}.stderr"));
        let child = Command::new(lookout_bin())
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .env("KUBECONFIG", &kubeconfig)
            // Everything at debug, kube's client and HTTP stack included.
            .env("RUST_LOG", "debug")
            .stdout(Stdio::from(std::fs::File::create(&stdout).unwrap()))
            .stderr(Stdio::from(std::fs::File::create(&stderr).unwrap()))
            .kill_on_drop(true)
            .spawn()
            .expect("lookout starts");
        Run {
            child,
            stdout,
            stderr,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    async fn ops_addr(&self) -> String {
        wait_for(
            &format!("ops server line in {}", self.stderr.display()),
            || {
                self.log()
                    .lines()
                    .find(|l| l.contains("ops server listening"))
                    .and_then(|l| {
                        l.split_whitespace()
                            .find_map(|w| w.strip_prefix("addr="))
                            .map(str::to_string)
                    })
            },
        )
        .await
    }

    async fn stop(mut self) -> (String, String) {
        let pid = self.child.id().expect("running") as i32;
        signal(pid, libc::SIGTERM);
        let status = tokio::time::timeout(SOON, self.child.wait())
            .await
            .expect("exits after SIGTERM")
            .unwrap();
        assert!(status.success(), "{status}: {}", self.log());
        (std::fs::read_to_string(&self.stdout).unwrap(), self.log())
    }
}

/// Polls `f` until it gives a value, within [`SOON`].
async fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + SOON;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited in vain for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The Secret manifest of step `step` (0: created, 1: updated).
fn manifest(step: usize) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "db", "namespace": "default"},
        "type": "Opaque",
        "data": {"password": b64(VALUES[2 * step])},
        "stringData": {"token": VALUES[2 * step + 1]}})
}

/// Applies step `step` with the real kubectl, which writes the manifest into the
/// `kubectl.kubernetes.io/last-applied-configuration` annotation.
fn apply(kubeconfig: &Path, dir: &Path, step: usize) {
    let file = dir.join(format!("secret-{step}.json"));
    std::fs::write(&file, manifest(step).to_string()).unwrap();
    let out = kubesim::tools::kubectl_command(dir, kubeconfig)
        .args(["apply", "--validate=false", "-f"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Every message of `topics` until each has shown the Secret's delete, raw bytes.
async fn kafka_bytes(bootstrap: &str, topics: &[&str]) -> String {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "leak-test")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut assignment = TopicPartitionList::new();
    for t in topics {
        assignment
            .add_partition_offset(t, 0, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut out = String::new();
    let mut deletes = std::collections::HashSet::new();
    let deadline = tokio::time::Instant::now() + SOON;
    while deletes.len() < topics.len() {
        let m = tokio::time::timeout_at(deadline, consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("Kafka: deletes seen on {deletes:?} only:\n{out}"))
            .expect("consume");
        let payload = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
        out.push_str(&String::from_utf8_lossy(m.key().unwrap_or_default()));
        out.push('\n');
        if let Some(h) = m.headers() {
            for h in h.iter() {
                out.push_str(&format!(
                    "{}: {}\n",
                    h.key,
                    String::from_utf8_lossy(h.value.unwrap_or_default())
                ));
            }
        }
        if payload.contains("\"delete\"") || payload.contains("secret.delete") {
            deletes.insert(m.topic().to_string());
        }
        out.push_str(&payload);
        out.push_str("\n\n");
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_applied_like_kubectl_leak_through_no_sink_format_cache_dead_letter_state_or_log() {
    let sim = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (hook, recorded) = receiver().await;
    let kafka = MockCluster::<DefaultProducerContext>::new(1).expect("mock cluster");
    for t in ["secrets-envelope", "secrets-ce"] {
        kafka.create_topic(t, 1, 1).unwrap();
    }
    let brokers = kafka.bootstrap_servers();
    let state = d.join("state");
    let token = "cache-token-0123456789";
    let common = |sinks: &str, state: &Path| {
        format!(
            "cluster: leak-test
resources:
  - apiVersion: v1
    kind: Secret
sinks:
{sinks}
transforms:
  includeOld: true
state:
  dir: {state}
server:
  listen: 127.0.0.1:0
  cache:
    enabled: true
    token: {token}
shutdown:
  gracePeriod: 5s
",
            state = state.display()
        )
    };
    let main = common(
        &format!(
            "  - {{name: out, type: stdout}}
  - {{name: file, type: file, path: {file}}}
  - {{name: envelope, type: webhook, url: {hook}/envelope, batch: {{maxEvents: 1}}}}
  - {{name: batched, type: webhook, url: {hook}/batched}}
  - {{name: structured, type: webhook, url: {hook}/structured, format: cloudevents}}
  - {{name: binary, type: webhook, url: {hook}/binary, format: cloudevents, cloudEventsMode: binary}}
  - {{name: rejected, type: webhook, url: {hook}/reject}}
  - {{name: lake, type: kafka, brokers: '{brokers}', topic: secrets-envelope, tombstones: true}}
  - {{name: lake-ce, type: kafka, brokers: '{brokers}', topic: secrets-ce, format: cloudevents, cloudEventsMode: binary}}",
            file = d.join("file.jsonl").display(),
        ),
        &state,
    );
    let text = common(
        "  - {name: out, type: stdout, format: text}",
        &d.join("state-text"),
    );
    let agent = Run::start(d, "main", &sim, &main);
    let text_agent = Run::start(d, "text", &sim, &text);
    let addr = agent.ops_addr().await;
    text_agent.ops_addr().await;
    let http = reqwest::Client::new();
    for run in [&agent, &text_agent] {
        let addr = run.ops_addr().await;
        let deadline = tokio::time::Instant::now() + SOON;
        loop {
            let ready = http.get(format!("http://{addr}/readyz")).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "not ready:\n{}",
                run.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    let kubeconfig = d.join("kubectl.kubeconfig");
    sim.write_kubeconfig(&kubeconfig).unwrap();
    let file = d.join("file.jsonl");
    let ops = |n: usize| {
        let file = file.clone();
        move || (read_jsonl(&file).len() >= n).then_some(())
    };
    apply(&kubeconfig, d, 0);
    wait_for("the add in the file sink", ops(1)).await;
    apply(&kubeconfig, d, 1);
    wait_for("the update in the file sink", || {
        read_jsonl(&file)
            .iter()
            .any(|e| e["op"] == "update" && e.get("old").is_some())
            .then_some(())
    })
    .await;

    // The cache API while the Secret exists: the list, one page, and the single object.
    let mut cache = String::new();
    for path in [
        "/cache/v1/Secret",
        "/cache/v1/Secret?limit=1",
        "/cache/v1/Secret/default/db",
    ] {
        let r = http
            .get(format!("http://{addr}{path}"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        cache.push_str(&r.text().await.unwrap());
    }
    assert!(cache.contains("hmac-sha256:"), "{cache}");

    let out = kubesim::tools::kubectl_command(d, &kubeconfig)
        .args(["delete", "secret", "db", "-n", "default"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl delete: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("the delete in the file sink", || {
        read_jsonl(&file)
            .iter()
            .any(|e| e["op"] == "delete")
            .then_some(())
    })
    .await;
    let dead_letters = state.join("deadletter/rejected.jsonl");
    wait_for("the webhooks' deliveries and dead letters", || {
        let dl = std::fs::read_to_string(&dead_letters).unwrap_or_default();
        (["/envelope", "/batched", "/structured", "/binary"]
            .iter()
            .all(|p| recorded.saw_delete(p))
            && dl.contains("delete"))
        .then_some(())
    })
    .await;
    let kafka_text = kafka_bytes(&brokers, &["secrets-envelope", "secrets-ce"]).await;
    wait_for("the text agent's delete", || {
        std::fs::read_to_string(&text_agent.stdout)
            .unwrap_or_default()
            .contains("delete")
            .then_some(())
    })
    .await;

    let (stdout_json, log) = agent.stop().await;
    let (stdout_text, text_log) = text_agent.stop().await;
    let redb = |p: PathBuf| String::from_utf8_lossy(&std::fs::read(p).unwrap()).into_owned();
    let places: Vec<(&str, String)> = vec![
        ("stdout json", stdout_json.clone()),
        ("stdout text", stdout_text.clone()),
        ("file sink", std::fs::read_to_string(&file).unwrap()),
        ("webhooks", recorded.text()),
        (
            "dead letters",
            std::fs::read_to_string(&dead_letters).unwrap(),
        ),
        ("kafka", kafka_text),
        ("cache API", cache),
        ("state store", redb(state.join("delivered.redb"))),
        (
            "text agent's state store",
            redb(d.join("state-text/delivered.redb")),
        ),
        ("debug log", log.clone()),
        ("text agent's debug log", text_log),
    ];
    for (place, text) in &places {
        for value in forbidden() {
            assert!(
                !text.contains(&value),
                "{value} leaked into the {place}:\n{text}"
            );
        }
    }

    // What was forwarded is still useful: every op, with old, the hashes changing.
    let events: Vec<Value> = stdout_json
        .lines()
        .map(|l| common::checked(serde_json::from_str(l).unwrap()))
        .collect();
    let ops: Vec<&str> = events.iter().map(|e| e["op"].as_str().unwrap()).collect();
    assert!(
        ops.contains(&"add") && ops.contains(&"update") && ops.contains(&"delete"),
        "{ops:?}"
    );
    let update = events.iter().find(|e| e["op"] == "update").unwrap();
    assert_ne!(
        update["old"]["data"]["password"],
        update["object"]["data"]["password"]
    );
    let annotation = update["object"]["metadata"]["annotations"][LAST_APPLIED]
        .as_str()
        .expect("the annotation is kept, hashed");
    assert!(annotation.starts_with("hmac-sha256:"), "{annotation}");
    assert!(stdout_text.lines().count() >= 3, "{stdout_text}");
    // At debug, the HTTP stack under kube's client logged too (requests to the API server).
    assert!(
        log.lines()
            .any(|l| l.contains("DEBUG") && l.contains("hyper_util")),
        "the log was not at debug level:\n{log}"
    );
}
