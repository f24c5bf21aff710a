//! Data lakes end to end: kubesim over real HTTP → `lookout run` (a real process) → Debezium
//! change events in a real Kafka-protocol broker (tansu) and on a webhook receiver, read back by
//! independent consumers that apply Debezium semantics (`after` replaces, `d` removes, `r`
//! upserts). Through adds, updates, deletes, a re-list after 410 and a snapshot on demand in
//! the middle of churn, the consumers rebuild the cluster's state exactly, and the `before` of
//! every `u` is the previous `after` of its key. Writers are named in `changedBy`.

mod common;

#[allow(dead_code)]
#[path = "../src/sinks/webhook/tests/receiver.rs"]
mod receiver;

#[path = "common/tansu.rs"]
mod tansu;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use common::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams};
use kubesim::KubeSim;
use serde_json::{Value, json};

/// A consumer applying Debezium semantics, keyed by the Kafka key (or `source.uid`).
#[derive(Default)]
struct Lake {
    /// key → the object (`after`).
    rows: HashMap<String, Value>,
    /// (uid, resourceVersion, op) seen: at-least-once delivery may repeat an event.
    seen: HashSet<(String, String, String)>,
    /// Updates whose `before` was checked against the previous `after`.
    updates: usize,
    /// `source.snapshot` of every read, in the order read (per key order is what is kept).
    reads: Vec<(String, u64)>,
    /// Tombstones seen.
    tombstones: usize,
}

impl Lake {
    /// Applies one change event (plain or Connect-framed); `key` is its Kafka key, or `None`
    /// for transports without one (then `source.uid`).
    fn apply(&mut self, key: Option<&str>, value: Option<&Value>) {
        let Some(v) = value else {
            let key = key.expect("tombstones have a key");
            assert!(
                !self.rows.contains_key(key),
                "a tombstone follows the delete of its key"
            );
            self.tombstones += 1;
            return;
        };
        let framed = v.get("payload").is_some();
        let p = if framed { &v["payload"] } else { v };
        let object = |x: &Value| -> Option<Value> {
            if x.is_null() {
                None
            } else if framed {
                Some(serde_json::from_str(x["object"].as_str().expect("object text")).unwrap())
            } else {
                Some(x.clone())
            }
        };
        let (before, after) = (object(&p["before"]), object(&p["after"]));
        let source = &p["source"];
        let uid = source["uid"].as_str().unwrap().to_string();
        let rv = source["resourceVersion"].as_str().unwrap().to_string();
        let op = p["op"].as_str().unwrap().to_string();
        if let Some(a) = &after {
            assert_eq!(a["metadata"]["uid"], source["uid"], "source.uid: {v}");
            assert_eq!(
                a["metadata"]["resourceVersion"], source["resourceVersion"],
                "source.resourceVersion: {v}"
            );
        }
        if !self.seen.insert((uid.clone(), rv, op.clone())) {
            return;
        }
        let key = key.map(str::to_string).unwrap_or(uid);
        match op.as_str() {
            "c" | "r" => {
                assert!(before.is_none(), "{op} has no before: {v}");
                if op == "r" {
                    let mark = source["snapshot"].as_str().unwrap().to_string();
                    self.reads.push((mark, p["ts_ms"].as_u64().unwrap()));
                }
                self.rows.insert(key, after.expect("c and r carry after"));
            }
            "u" => {
                assert_eq!(
                    before.as_ref(),
                    self.rows.get(&key),
                    "the before of a u is the previous after of its key: {v}"
                );
                self.updates += 1;
                self.rows.insert(key, after.expect("u carries after"));
            }
            "d" => {
                assert!(after.is_none(), "d has no after: {v}");
                assert!(before.is_some(), "d carries the last state: {v}");
                self.rows.remove(&key);
            }
            other => panic!("unknown op {other}: {v}"),
        }
    }

    /// The rebuilt state, by uid.
    fn by_uid(&self) -> HashMap<String, Value> {
        self.rows
            .values()
            .map(|o| {
                (
                    o["metadata"]["uid"].as_str().unwrap().to_string(),
                    o.clone(),
                )
            })
            .collect()
    }
}

/// The lake rebuilt from everything in the topic so far (each message validated against
/// `schema/debezium.schema.json`).
fn kafka_lake(records: &[tansu::Record]) -> Lake {
    let mut ordered = records.to_vec();
    ordered.sort_by_key(|r| (r.partition, r.offset));
    let mut lake = Lake::default();
    for r in &ordered {
        let key: Value = serde_json::from_slice(&r.key).expect("the key is JSON");
        schema::debezium_key(&key);
        let value = r
            .value
            .as_ref()
            .map(|v| checked(serde_json::from_slice(v).expect("the value is JSON")));
        lake.apply(Some(&key.to_string()), value.as_ref());
    }
    lake
}

/// Waits until the lake built by `build` holds exactly the cluster's ConfigMaps.
async fn until_rebuilt<F: std::future::Future<Output = Lake>>(
    sim: &KubeSim,
    agent: &Agent,
    what: &str,
    mut build: impl FnMut() -> F,
) -> Lake {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let lake = build().await;
        let want = cluster_state(sim, "v1", "ConfigMap");
        let got = lake.by_uid();
        if got == want {
            return lake;
        }
        if tokio::time::Instant::now() > deadline {
            let (w, g): (HashSet<_>, HashSet<_>) = (want.keys().collect(), got.keys().collect());
            panic!(
                "{what}: the lake does not rebuild the cluster: {} in the cluster, {} in the lake, \
                 missing {:?}, extra {:?}, differing {:?}\nlog:\n{}",
                want.len(),
                got.len(),
                w.difference(&g).collect::<Vec<_>>(),
                g.difference(&w).collect::<Vec<_>>(),
                want.keys()
                    .filter(|k| got.get(*k).is_some_and(|o| o != &want[*k]))
                    .collect::<Vec<_>>(),
                agent.stderr()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn cm(name: &str, v: &str) -> Value {
    configmap("default", name, json!({ "v": v }))
}

fn patch(sim: &KubeSim, name: &str, v: &str) {
    sim.merge_patch(
        "v1",
        "ConfigMap",
        Some("default"),
        name,
        json!({"data": {"v": v}}),
    )
    .unwrap();
}

async fn post_snapshot(agent: &Agent, body: Value) -> (u16, Value) {
    let url = format!("http://{}/snapshot", agent.ops_addr().await);
    let resp = reqwest::Client::new()
        .post(&url)
        .bearer_auth("snap-token")
        .json(&body)
        .send()
        .await
        .expect("ops server answers");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tansu_and_webhook_consumers_rebuild_the_cluster_from_debezium_events_through_relist_and_snapshot()
 {
    let broker = tansu::Tansu::start();
    let topic = "test.core.configmap";
    broker.create_topic(topic, 3);
    let mut hook = receiver::Receiver::start(receiver::ok()).await;

    let sim = sim().await;
    for n in ["a", "b", "c", "d", "e", "f"] {
        sim.create("v1", "ConfigMap", cm(n, "0")).unwrap();
    }
    let config = format!(
        "cluster: test\nresources:\n  - apiVersion: v1\n    kind: ConfigMap\n\
         sinks:\n\
         \x20 - name: lake\n    type: kafka\n    brokers: {}\n    topic: \"{{cluster}}.{{group}}.{{kind}}\"\n\
         \x20   format: debezium\n    tombstones: true\n\
         \x20 - name: hook\n    type: webhook\n    url: {}\n    format: debezium\n\
         \x20   debezium: {{schemas: true}}\n    batch: {{maxEvents: 20, maxWait: 50ms}}\n\
         server:\n  listen: 127.0.0.1:0\n  snapshot: {{enabled: true, token: snap-token}}\n",
        broker.bootstrap(),
        hook.url("http")
    );
    let agent = Agent::start(&sim, &config).await;
    let hooked: std::sync::Arc<std::sync::Mutex<Vec<Value>>> = Default::default();
    let drain_hook = {
        let hooked = hooked.clone();
        move |rx: &mut receiver::Receiver| {
            while let Ok(r) = rx.requests.try_recv() {
                let items = r.json().as_array().expect("batches are arrays").clone();
                hooked
                    .lock()
                    .unwrap()
                    .extend(items.into_iter().map(checked));
            }
        }
    };
    let webhook_lake = |hooked: &[Value]| {
        let mut lake = Lake::default();
        for v in hooked {
            lake.apply(None, Some(v));
        }
        lake
    };

    // The initial list: six reads.
    let collector = tansu::Collector::start(&broker.bootstrap(), topic, 3);
    let kafka = || std::future::ready(kafka_lake(&collector.records()));
    let lake = until_rebuilt(&sim, &agent, "initial list", kafka).await;
    assert_eq!(lake.reads.len(), 6, "the initial list arrives as reads");
    let mut initial: Vec<(String, u64)> = lake.reads.clone();
    initial.sort_by_key(|r| r.1);
    let marks: Vec<&str> = initial.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(
        (
            marks.iter().filter(|m| **m == "first").count(),
            marks.iter().filter(|m| **m == "last").count()
        ),
        (1, 1),
        "the initial list is a snapshot from first to last: {marks:?}"
    );

    // Live changes.
    sim.create("v1", "ConfigMap", cm("g", "0")).unwrap();
    patch(&sim, "a", "1");
    patch(&sim, "a", "2");
    sim.delete("v1", "ConfigMap", Some("default"), "b").unwrap();
    sim.merge_patch(
        "v1",
        "ConfigMap",
        Some("default"),
        "c",
        json!({"metadata": {"labels": {"tier": "web"}}}),
    )
    .unwrap();
    until_rebuilt(&sim, &agent, "live changes", kafka).await;

    // A re-list after 410: the watch breaks, things change, the history is compacted.
    sim.stop_answering();
    sim.drop_watches();
    patch(&sim, "d", "1");
    sim.delete("v1", "ConfigMap", Some("default"), "e").unwrap();
    sim.create("v1", "ConfigMap", cm("h", "0")).unwrap();
    sim.delete("v1", "ConfigMap", Some("default"), "f").unwrap();
    sim.create("v1", "ConfigMap", cm("f", "again")).unwrap();
    sim.compact();
    sim.resume_answering();
    until_rebuilt(&sim, &agent, "re-list after 410", kafka).await;

    // A snapshot on demand in the middle of churn.
    let churn = {
        let names = ["a", "c", "d", "g", "h"];
        let sim = &sim;
        async move {
            for i in 0..60 {
                patch(sim, names[i % names.len()], &format!("churn-{i}"));
                if i % 20 == 7 {
                    let n = format!("x{i}");
                    sim.create("v1", "ConfigMap", cm(&n, "0")).unwrap();
                }
                if i % 20 == 19 {
                    sim.delete("v1", "ConfigMap", Some("default"), &format!("x{}", i - 12))
                        .unwrap();
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    let snapshot = async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        post_snapshot(
            &agent,
            json!({"resources": [{"apiVersion": "v1", "kind": "ConfigMap"}]}),
        )
        .await
    };
    let ((), (status, answer)) = tokio::join!(churn, snapshot);
    assert_eq!(status, 202, "snapshot accepted: {answer}");
    assert_eq!(answer["resources"][0]["kind"], "ConfigMap");

    let lake = until_rebuilt(&sim, &agent, "snapshot in churn (Kafka)", kafka).await;
    let mut reads = lake.reads.clone();
    reads.sort_by_key(|r| r.1);
    let on_demand: Vec<&(String, u64)> = reads.iter().skip(6).collect();
    let marks: Vec<&str> = on_demand.iter().map(|r| r.0.as_str()).collect();
    assert!(
        marks.iter().filter(|m| **m == "first").count() == 1
            && marks.iter().filter(|m| **m == "last").count() == 1,
        "one first and one last read in the snapshot: {marks:?}"
    );
    let ts = |m: &str| on_demand.iter().find(|r| r.0 == m).unwrap().1;
    assert!(ts("first") <= ts("last"), "first is read before last");
    assert!(lake.updates > 60, "updates checked: {}", lake.updates);
    assert!(lake.tombstones >= 4, "tombstones: {}", lake.tombstones);

    // The webhook got the same history in Connect-framed form.
    let webhook = until_rebuilt(&sim, &agent, "snapshot in churn (webhook)", || {
        drain_hook(&mut hook);
        std::future::ready(webhook_lake(&hooked.lock().unwrap()))
    })
    .await;
    assert_eq!(webhook.reads.len(), lake.reads.len());

    let (status, _, log) = agent.terminate().await;
    assert!(status.success(), "lookout exits cleanly; log:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_state_directory_the_first_start_is_a_marked_snapshot_and_a_restart_sends_only_c_and_u()
 {
    let sim = sim().await;
    for n in ["a", "b", "c"] {
        sim.create("v1", "ConfigMap", cm(n, "0")).unwrap();
    }
    let state = tempfile::tempdir().unwrap();
    let config = format!(
        "cluster: test\nresources:\n  - apiVersion: v1\n    kind: ConfigMap\n\
         sinks:\n  - name: out\n    type: stdout\n    format: debezium\n\
         state:\n  dir: {}\nserver:\n  listen: 127.0.0.1:0\n",
        state.path().display()
    );

    // The first start compares the caches with an empty store: every object is read, and the
    // reads of the resource are bounded by first and last.
    let mut agent = Agent::start(&sim, &config).await;
    let mut reads = Vec::new();
    for _ in 0..3 {
        reads.push(agent.next().await);
    }
    let seen: Vec<(&str, &str)> = reads
        .iter()
        .map(|e| {
            (
                e["op"].as_str().unwrap(),
                e["source"]["snapshot"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(seen, vec![("r", "first"), ("r", "true"), ("r", "last")]);
    let (status, rest, log) = agent.terminate().await;
    assert!(status.success(), "log:\n{log}");
    assert!(rest.is_empty(), "only the three reads: {rest:#?}");

    // While the agent is away: a kube-rs client creates one, another one changes.
    let configmaps: kube::Api<ConfigMap> = kube::Api::namespaced(
        kube::Client::try_from(kube::Config::new(sim.url().parse().unwrap())).unwrap(),
        "default",
    );
    let created = serde_json::from_value(cm("d", "0")).unwrap();
    let creator = kube::api::PostParams {
        field_manager: Some("creator".into()),
        ..Default::default()
    };
    configmaps
        .create(&creator, &created)
        .await
        .expect("kube-rs creates");
    patch(&sim, "a", "1");

    // The restart sends only what changed, as changes: no snapshot.
    let mut agent = Agent::start(&sim, &config).await;
    let mut changes = [agent.next().await, agent.next().await];
    changes.sort_by_key(|e| e["op"].as_str().unwrap().to_string());
    let (status, rest, log) = agent.terminate().await;
    assert!(status.success(), "log:\n{log}");
    assert!(rest.is_empty(), "nothing but the two changes: {rest:#?}");
    let (add, update) = (&changes[0], &changes[1]);
    assert_eq!(add["op"], "c", "{add}");
    assert_eq!(add["after"]["metadata"]["name"], "d");
    assert_eq!(add["source"]["snapshot"], "false");
    assert_eq!(
        writers(&add["source"]["changedBy"]),
        vec!["creator/Update"],
        "an object created while the agent was away names its writer"
    );
    assert_eq!(update["op"], "u", "{update}");
    assert_eq!(update["before"]["data"]["v"], "0");
    assert_eq!(update["after"]["data"]["v"], "1");
    assert_eq!(update["source"]["snapshot"], "false");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_refuses_a_snapshot_with_503_and_the_leader_reads_it_to_its_sinks() {
    let sim = sim().await;
    sim.create("v1", "ConfigMap", cm("a", "0")).unwrap();
    let state = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let (a_out, b_out) = (out.path().join("a.jsonl"), out.path().join("b.jsonl"));
    let config = format!(
        "cluster: test\nresources:\n  - apiVersion: v1\n    kind: ConfigMap\n\
         sinks:\n  - name: lake\n    type: file\n    path: ${{SINK_PATH}}\n\
         state:\n  dir: {}\n\
         leaderElection:\n  enabled: true\n  leaseName: lookout-test\n  leaseNamespace: default\n\
         \x20 leaseDuration: 3s\n  renewDeadline: 2s\n  retryPeriod: 500ms\n\
         server:\n  listen: 127.0.0.1:0\n  snapshot: {{enabled: true, token: snap-token}}\n",
        state.path().display()
    );
    let start = |name: &'static str, path: &Path| {
        let path = path.to_str().unwrap().to_string();
        let (sim, config) = (&sim, &config);
        async move {
            Agent::start_with_env(sim, config, &[("POD_NAME", name), ("SINK_PATH", &path)]).await
        }
    };
    let leader = start("agent-a", &a_out).await;
    leader.wait_log("acquired the lease").await;
    let standby = start("agent-b", &b_out).await;
    standby.wait_log("standing by").await;
    wait_jsonl(&a_out, 1).await;

    let ask = json!({"resources": [{"apiVersion": "v1", "kind": "ConfigMap"}]});
    let (status, answer) = post_snapshot(&standby, ask.clone()).await;
    assert_eq!(status, 503, "a standby forwards nothing: {answer}");
    let (status, answer) = post_snapshot(&leader, ask).await;
    assert_eq!(status, 202, "{answer}");
    let lines = wait_jsonl(&a_out, 2).await;
    assert_eq!(lines[0]["initialList"], true);
    assert_eq!(
        (lines[1]["op"].as_str(), lines[1]["snapshot"].as_str()),
        (Some("add"), Some("last")),
        "the snapshot's one read: {:#?}",
        lines[1]
    );
    assert!(lines[1].get("initialList").is_none());
    assert!(read_jsonl(&b_out).is_empty(), "the standby wrote nothing");
    for agent in [standby, leader] {
        let (status, _, log) = agent.terminate().await;
        assert!(status.success(), "log:\n{log}");
    }
}

// ---------------------------------------------------------------- who changed it

/// kubectl against the simulator, with its own HOME and discovery cache.
struct Kubectl {
    dir: tempfile::TempDir,
    kubeconfig: std::path::PathBuf,
}

impl Kubectl {
    fn new(sim: &KubeSim) -> Kubectl {
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        sim.write_kubeconfig(&kubeconfig).unwrap();
        Kubectl { dir, kubeconfig }
    }

    fn run(&self, args: &[&str]) {
        let out = kubesim::tools::kubectl_command(self.dir.path(), &self.kubeconfig)
            .args(args)
            .output()
            .expect("kubectl runs");
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The writers an event names: `manager/operation[/subresource]`.
fn writers(changed_by: &Value) -> Vec<String> {
    changed_by
        .as_array()
        .unwrap_or_else(|| panic!("changedBy is an array: {changed_by}"))
        .iter()
        .map(|w| {
            let mut s = format!(
                "{}/{}",
                w["manager"].as_str().unwrap(),
                w["operation"].as_str().unwrap()
            );
            if let Some(sub) = w["subresource"].as_str() {
                s.push('/');
                s.push_str(sub);
            }
            s
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_by_names_kubectl_a_kube_rs_server_side_apply_manager_and_the_status_writer() {
    let sim = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("debezium.jsonl");
    let config = format!(
        "cluster: test\nresources:\n  - apiVersion: apps/v1\n    kind: Deployment\n\
         sinks:\n  - name: out\n    type: stdout\n\
         \x20 - name: lake\n    type: file\n    path: {}\n    format: debezium\n\
         server:\n  listen: 127.0.0.1:0\n",
        file.display()
    );
    let mut agent = Agent::start(&sim, &config).await;
    let kubectl = Kubectl::new(&sim);

    // 1. kubectl creates it by server-side apply (field manager `kubectl`).
    let manifest = dir.path().join("web.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  namespace: default\n\
         spec:\n  replicas: 1\n  selector: {matchLabels: {app: web}}\n\
         \x20 template:\n    metadata: {labels: {app: web}}\n\
         \x20   spec: {containers: [{name: main, image: nginx}]}\n",
    )
    .unwrap();
    kubectl.run(&[
        "apply",
        "--server-side",
        "--validate=false",
        "-f",
        manifest.to_str().unwrap(),
    ]);
    let created = agent.next().await;
    assert_eq!(created["op"], "add");
    assert_eq!(writers(&created["changedBy"]), vec!["kubectl/Apply"]);

    // 2. A deployer (a kube-rs client) scales it by server-side apply with its own field
    // manager.
    let deployments: kube::Api<Deployment> = kube::Api::namespaced(
        kube::Client::try_from(kube::Config::new(sim.url().parse().unwrap())).unwrap(),
        "default",
    );
    deployments
        .patch(
            "web",
            &PatchParams::apply("deployer").force(),
            &Patch::Apply(json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "web"}, "spec": {"replicas": 3}})),
        )
        .await
        .expect("kube-rs applies");
    let scaled = agent.next().await;
    assert_eq!(scaled["op"], "update");
    assert_eq!(writers(&scaled["changedBy"]), vec!["deployer/Apply"]);

    // 3. A controller (kube-rs) writes the status subresource (an Update of `status`).
    let status_writer = PatchParams {
        field_manager: Some("status-writer".into()),
        ..PatchParams::default()
    };
    deployments
        .patch_status(
            "web",
            &status_writer,
            &Patch::Merge(json!({"status": {"replicas": 3, "readyReplicas": 3}})),
        )
        .await
        .expect("kube-rs patches the status");
    let status = agent.next().await;
    assert_eq!(status["op"], "update");
    assert_eq!(
        writers(&status["changedBy"]),
        vec!["status-writer/Update/status"]
    );

    // 4. kubectl labels it (an Update by `kubectl-label`).
    kubectl.run(&["label", "deployment", "web", "-n", "default", "tier=web"]);
    let labelled = agent.next().await;
    assert_eq!(
        writers(&labelled["changedBy"]),
        vec!["kubectl-label/Update"]
    );

    // The Debezium form names the same writers in `source.changedBy`.
    let lines = wait_jsonl(&file, 4).await;
    let named: Vec<Vec<String>> = lines
        .iter()
        .map(|l| writers(&l["source"]["changedBy"]))
        .collect();
    assert_eq!(
        named,
        vec![
            vec!["kubectl/Apply".to_string()],
            vec!["deployer/Apply".into()],
            vec!["status-writer/Update/status".into()],
            vec!["kubectl-label/Update".into()],
        ]
    );
    let (status, _, log) = agent.terminate().await;
    assert!(status.success(), "log:\n{log}");
}
