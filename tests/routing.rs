//! Routes, transforms, server-side selectors and the cache API, against kubesim.

mod common;

use std::path::Path;

use common::*;
use serde_json::{Value, json};

fn summary(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            format!(
                "{} {} {}/{}",
                e["op"].as_str().unwrap(),
                e["kind"].as_str().unwrap(),
                e["namespace"].as_str().unwrap_or("-"),
                e["name"].as_str().unwrap()
            )
        })
        .collect()
}

fn deployment(ns: &str, name: &str, replicas: u32, image: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": image,
                    "env": [{"name": "PASSWORD", "value": "hunter2-plain"}]}]}}}})
}

fn namespace(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
}

fn file_sinks_config(dir: &Path, resources: &str, routes: &str, extra: &str) -> String {
    format!(
        "cluster: test
resources:
{resources}
sinks:
  - name: lake
    type: file
    path: {lake}
  - name: oncall
    type: file
    path: {oncall}
routes:
{routes}
server:
  listen: 127.0.0.1:0
{extra}",
        lake = dir.join("lake.jsonl").display(),
        oncall = dir.join("oncall.jsonl").display(),
    )
}

#[tokio::test]
async fn drop_routes_win_and_forward_routes_pick_sinks_by_kind_namespace_op_and_changed_paths() {
    let sim = sim().await;
    sim.create(
        "v1",
        "Namespace",
        namespace("shop", json!({"team": "payments"})),
    )
    .unwrap();
    sim.create(
        "v1",
        "Namespace",
        namespace("lab", json!({"team": "research"})),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = file_sinks_config(
        dir.path(),
        "  - apiVersion: apps/v1\n    kind: Deployment\n  - apiVersion: v1\n    kind: ConfigMap\n",
        "  - name: no-system
    drop: true
    namespaces: {include: [kube-*]}
  - name: everything-to-the-lake
    sinks: [lake]
  - name: oncall-deployments
    kinds: [Deploy*]
    apiVersions: [apps/*]
    ops: [update, delete]
    changed: [/spec]
    namespaces: {selector: team=payments, exclude: [lab]}
    sinks: [oncall]",
        "",
    );
    let agent = Agent::start(&sim, &config).await;
    agent.wait_ready(200, SOON).await;
    let lake = dir.path().join("lake.jsonl");
    let oncall = dir.path().join("oncall.jsonl");

    sim.create(
        "apps/v1",
        "Deployment",
        deployment("kube-system", "dns", 1, "dns:1"),
    )
    .unwrap();
    sim.create(
        "apps/v1",
        "Deployment",
        deployment("shop", "web", 1, "web:1"),
    )
    .unwrap();
    sim.create(
        "apps/v1",
        "Deployment",
        deployment("lab", "exp", 1, "exp:1"),
    )
    .unwrap();
    sim.create(
        "v1",
        "ConfigMap",
        configmap("shop", "cfg", json!({"a": "1"})),
    )
    .unwrap();
    // spec change in shop → on-call; status-only change → lake only; lab → lake only
    sim.merge_patch(
        "apps/v1",
        "Deployment",
        Some("shop"),
        "web",
        json!({"spec": {"replicas": 3}}),
    )
    .unwrap();
    sim.merge_patch(
        "apps/v1",
        "Deployment",
        Some("shop"),
        "web",
        json!({"status": {"readyReplicas": 3}}),
    )
    .unwrap();
    sim.merge_patch(
        "apps/v1",
        "Deployment",
        Some("lab"),
        "exp",
        json!({"spec": {"replicas": 2}}),
    )
    .unwrap();
    sim.merge_patch(
        "apps/v1",
        "Deployment",
        Some("kube-system"),
        "dns",
        json!({"spec": {"replicas": 2}}),
    )
    .unwrap();
    sim.delete("apps/v1", "Deployment", Some("shop"), "web")
        .unwrap();

    // A barrier both routes forward: every earlier Deployment change is in each file before
    // it (one informer, queue order), so the files are complete once it shows up.
    sim.create(
        "apps/v1",
        "Deployment",
        deployment("shop", "zz-marker", 1, "m:1"),
    )
    .unwrap();
    sim.merge_patch(
        "apps/v1",
        "Deployment",
        Some("shop"),
        "zz-marker",
        json!({"spec": {"replicas": 2}}),
    )
    .unwrap();
    let is_marker_update = |e: &Value| e["name"] == "zz-marker" && e["op"] == "update";
    let lake_all = wait_jsonl_until(&lake, "barrier", |es| {
        es.iter().any(is_marker_update)
            && es.iter().filter(|e| e["name"] != "zz-marker").count() >= 7
    })
    .await;
    let lake_events: Vec<Value> = lake_all
        .into_iter()
        .filter(|e| e["name"] != "zz-marker")
        .collect();
    let oncall_all =
        wait_jsonl_until(&oncall, "barrier", |es| es.iter().any(is_marker_update)).await;
    let oncall_events = before_marker(&oncall_all, "zz-marker").to_vec();
    // Order is kept per object (the replay below checks it), not across kinds.
    let mut got = summary(&lake_events);
    got.sort();
    assert_eq!(
        got,
        vec![
            "add ConfigMap shop/cfg",
            "add Deployment lab/exp",
            "add Deployment shop/web",
            "delete Deployment shop/web",
            "update Deployment lab/exp",
            "update Deployment shop/web",
            "update Deployment shop/web",
        ]
    );
    assert_eq!(
        summary(&oncall_events),
        vec!["update Deployment shop/web", "delete Deployment shop/web"]
    );
    assert_eq!(oncall_events[0]["object"]["spec"]["replicas"], 3);
    let mut replay = Replay::default();
    replay.apply_all(&lake_events);
}

#[tokio::test]
async fn conditions_on_the_object_select_events() {
    let sim = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let config = file_sinks_config(
        dir.path(),
        "  - apiVersion: apps/v1\n    kind: Deployment\n",
        "  - sinks: [lake]
    when:
      - {path: /spec/replicas, equals: 3}
  - sinks: [oncall]
    when:
      - {path: /metadata/labels/app, matches: '^web-'}
      - {path: /metadata/annotations, exists: false}",
        "",
    );
    let agent = Agent::start(&sim, &config).await;
    agent.wait_ready(200, SOON).await;
    sim.create(
        "apps/v1",
        "Deployment",
        deployment("default", "web-a", 3, "x:1"),
    )
    .unwrap();
    sim.create(
        "apps/v1",
        "Deployment",
        deployment("default", "web-b", 1, "x:1"),
    )
    .unwrap();
    sim.create(
        "apps/v1",
        "Deployment",
        deployment("default", "api", 3, "x:1"),
    )
    .unwrap();
    let mut annotated = deployment("default", "web-c", 1, "x:1");
    annotated["metadata"]["annotations"] = json!({"note": "x"});
    sim.create("apps/v1", "Deployment", annotated).unwrap();
    // A barrier both routes select: the files are complete once it shows up in each.
    sim.create(
        "apps/v1",
        "Deployment",
        deployment("default", "web-zz-marker", 3, "x:1"),
    )
    .unwrap();
    let lake = until_marker(&dir.path().join("lake.jsonl"), "web-zz-marker").await;
    let oncall = until_marker(&dir.path().join("oncall.jsonl"), "web-zz-marker").await;
    assert_eq!(
        summary(&lake),
        vec!["add Deployment default/web-a", "add Deployment default/api"]
    );
    assert_eq!(
        summary(&oncall),
        vec![
            "add Deployment default/web-a",
            "add Deployment default/web-b"
        ]
    );
}

#[tokio::test]
async fn route_transforms_reshape_only_their_sinks_and_keep_patches_replayable() {
    let sim = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let config = file_sinks_config(
        dir.path(),
        "  - apiVersion: apps/v1\n    kind: Deployment\n",
        "  - sinks: [lake]
    transforms:
      redact:
        - {path: /spec/template/spec/containers/*/env/*/value, with: mask}
  - sinks: [oncall]
    transforms:
      keepPaths: [/metadata/labels, /spec/replicas]",
        "",
    );
    let agent = Agent::start(&sim, &config).await;
    agent.wait_ready(200, SOON).await;
    sim.create(
        "apps/v1",
        "Deployment",
        deployment("default", "web", 1, "web:1"),
    )
    .unwrap();
    // An image change: the on-call projection does not see it, so it gets no update.
    sim.merge_patch("apps/v1", "Deployment", Some("default"), "web",
        json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "web:2", "env": [{"name": "PASSWORD", "value": "hunter2-plain"}]}]}}}})).unwrap();
    sim.merge_patch(
        "apps/v1",
        "Deployment",
        Some("default"),
        "web",
        json!({"spec": {"replicas": 5}}),
    )
    .unwrap();
    // A barrier both routes forward: every earlier change is in each file before it.
    sim.create(
        "apps/v1",
        "Deployment",
        deployment("default", "zz-marker", 1, "m:1"),
    )
    .unwrap();
    let lake = until_marker(&dir.path().join("lake.jsonl"), "zz-marker").await;
    let oncall = until_marker(&dir.path().join("oncall.jsonl"), "zz-marker").await;
    assert_eq!(lake.len(), 3, "{lake:#?}");
    let all = std::fs::read_to_string(dir.path().join("lake.jsonl")).unwrap();
    assert!(
        !all.contains("hunter2-plain"),
        "redacted in the lake: {all}"
    );
    assert_eq!(
        lake[0]["object"]["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"],
        "***"
    );
    assert_eq!(oncall.len(), 2, "{oncall:#?}");
    assert_eq!(oncall[0]["object"]["spec"], json!({"replicas": 1}));
    assert!(
        oncall[0]["object"]["metadata"]
            .get("creationTimestamp")
            .is_none()
    );
    let patch = oncall[1]["patch"].as_array().unwrap();
    assert!(
        patch.contains(&json!({"op": "replace", "path": "/spec/replicas", "value": 5})),
        "{patch:?}"
    );
    assert!(
        patch
            .iter()
            .all(|op| op["path"] == "/spec/replicas" || op["path"] == "/metadata/resourceVersion"),
        "{patch:?}"
    );
    Replay::default().apply_all(&oncall);
    Replay::default().apply_all(&lake);
}

#[tokio::test]
async fn ignore_paths_suppress_heartbeat_only_updates_but_not_real_changes() {
    let sim = sim().await;
    let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"},
        "status": {"conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": "2026-01-01T00:00:00Z"}]}});
    sim.create("v1", "Node", node).unwrap();
    let config = format!(
        "{}transforms:\n  ignorePaths: [/metadata/resourceVersion, /metadata/managedFields, /status/conditions/*/lastHeartbeatTime]\n",
        stdout_config(&[("v1", "Node")])
    );
    let mut agent = Agent::start(&sim, &config).await;
    let mut replay = Replay::default();
    replay.apply(&agent.next().await);
    for i in 1..5 {
        sim.merge_patch("v1", "Node", None, "n1", json!({"status": {"conditions": [
            {"type": "Ready", "status": "True", "lastHeartbeatTime": format!("2026-01-01T00:00:0{i}Z")}]}})).unwrap();
    }
    // The next real change is the barrier: a heartbeat-only update that leaked would come
    // out before it and fail the checks below.
    sim.merge_patch(
        "v1",
        "Node",
        None,
        "n1",
        json!({"status": {"conditions": [
        {"type": "Ready", "status": "False", "lastHeartbeatTime": "2026-01-01T00:00:09Z"}]}}),
    )
    .unwrap();
    let e = agent.next().await;
    assert_eq!(e["op"], "update");
    assert_eq!(e["object"]["status"]["conditions"][0]["status"], "False");
    replay.apply(&e);
}

#[tokio::test]
async fn selectors_from_config_are_sent_to_the_api_server() {
    let sim = sim().await;
    let config = "cluster: t
resources:
  - apiVersion: v1
    kind: Pod
    fieldSelector: spec.nodeName=${TEST_NODE_NAME}
  - apiVersion: v1
    kind: ConfigMap
    namespace: shop
    labelSelector: app in (web,api),!legacy
sinks:
  - name: out
    type: stdout
server:
  listen: 127.0.0.1:0
";
    sim.create("v1", "Namespace", namespace("shop", json!({})))
        .unwrap();
    let agent = Agent::start_with_env(&sim, config, &[("TEST_NODE_NAME", "node-7")]).await;
    agent.wait_ready(200, SOON).await;
    let log = sim.request_log();
    let pods: Vec<_> = log.iter().filter(|r| r.path == "/api/v1/pods").collect();
    assert!(
        pods.iter().any(
            |r| (r.verb == "list" || r.param("sendInitialEvents") == Some("true"))
                && r.param("fieldSelector") == Some("spec.nodeName=node-7")
        ),
        "{pods:#?}"
    );
    assert!(
        pods.iter()
            .any(|r| r.watch && r.param("fieldSelector") == Some("spec.nodeName=node-7"))
    );
    let cms: Vec<_> = log
        .iter()
        .filter(|r| r.path == "/api/v1/namespaces/shop/configmaps")
        .collect();
    assert!(
        cms.iter().any(
            |r| (r.verb == "list" || r.param("sendInitialEvents") == Some("true"))
                && r.param("labelSelector") == Some("app in (web,api),!legacy")
        ),
        "{cms:#?}"
    );
    assert!(
        cms.iter()
            .any(|r| r.watch && r.param("labelSelector") == Some("app in (web,api),!legacy"))
    );
}

#[tokio::test]
async fn secret_values_appear_in_no_sink_output_and_not_in_the_cache_api() {
    let sim = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{}  cache:\n    enabled: true\n",
        file_sinks_config(
            dir.path(),
            "  - apiVersion: v1\n    kind: Secret\n",
            "  - sinks: [lake, oncall]",
            ""
        )
    );
    let agent = Agent::start(&sim, &config).await;
    agent.wait_ready(200, SOON).await;
    let plain = "correct-horse-battery-staple";
    let b64 = "Y29ycmVjdC1ob3JzZS1iYXR0ZXJ5LXN0YXBsZQ==";
    sim.create(
        "v1",
        "Secret",
        json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "db", "namespace": "default"},
        "data": {"password": b64}, "stringData": {"plain": plain}}),
    )
    .unwrap();
    wait_jsonl(&dir.path().join("lake.jsonl"), 1).await;
    wait_jsonl(&dir.path().join("oncall.jsonl"), 1).await;
    let mut collected = String::new();
    for f in ["lake.jsonl", "oncall.jsonl"] {
        collected.push_str(&std::fs::read_to_string(dir.path().join(f)).unwrap());
    }
    collected.push_str(&agent.ops_get("/cache/v1/Secret").await.1);
    collected.push_str(&agent.ops_get("/cache/v1/Secret/default/db").await.1);
    collected.push_str(&agent.stderr());
    assert!(collected.contains("hmac-sha256:"), "{collected}");
    assert!(
        !collected.contains(plain) && !collected.contains(b64),
        "a secret value leaked:\n{collected}"
    );
}

/// An agent serving the cache API over six labelled ConfigMaps in two namespaces.
struct CacheApi {
    _sim: kubesim::KubeSim,
    agent: Agent,
    addr: String,
    client: reqwest::Client,
}

impl CacheApi {
    async fn start() -> CacheApi {
        let sim = sim().await;
        for (ns, name, labels) in [
            ("default", "a", json!({"app": "web", "tier": "front"})),
            ("default", "b", json!({"app": "web", "tier": "back"})),
            ("default", "c", json!({"app": "api", "tier": "back"})),
            ("default", "d", json!({"app": "db", "tier": "data"})),
            ("default", "f", json!({"app": "web-canary"})),
            ("other", "e", json!({"app": "demo"})),
        ] {
            if ns != "default" && sim.get("v1", "Namespace", None, ns).is_none() {
                sim.create("v1", "Namespace", namespace(ns, json!({})))
                    .unwrap();
            }
            let mut cm = configmap(ns, name, json!({"k": name}));
            cm["metadata"]["labels"] = labels;
            sim.create("v1", "ConfigMap", cm).unwrap();
        }
        let config = format!(
            "{}  cache:\n    enabled: true\n    token: s3cret\n",
            stdout_config(&[("v1", "ConfigMap")])
        );
        let agent = Agent::start(&sim, &config).await;
        agent.wait_ready(200, SOON).await;
        let addr = agent.ops_addr().await;
        CacheApi {
            _sim: sim,
            agent,
            addr,
            client: reqwest::Client::new(),
        }
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .client
            .get(format!("http://{}{path}", self.addr))
            .bearer_auth("s3cret")
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    }

    async fn list(&self, ns: &str, selector: &str) -> Value {
        let (status, list) = self
            .get(&format!(
                "/cache/v1/ConfigMap?namespace={ns}&labelSelector={}",
                urlencode(selector)
            ))
            .await;
        assert_eq!(status, 200, "{selector}: {list}");
        list
    }
}

/// `namespace/name` of every item of a list, sorted.
fn item_names(list: &Value) -> Vec<String> {
    let mut v: Vec<String> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            format!(
                "{}/{}",
                i["metadata"]["namespace"].as_str().unwrap(),
                i["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn the_cache_api_answers_label_selectors_as_written_by_hand() {
    let api = CacheApi::start().await;
    assert_eq!(
        reqwest::get(format!("http://{}/cache/v1/ConfigMap", api.addr))
            .await
            .unwrap()
            .status(),
        401
    );
    // Expected answers worked out by hand from the Kubernetes label-selector rules, not
    // by any selector code.
    let table: &[(&str, &str, &[&str])] = &[
        ("default", "app=web", &["default/a", "default/b"]),
        ("default", "app==web", &["default/a", "default/b"]),
        (
            "default",
            "app!=web",
            &["default/c", "default/d", "default/f"],
        ),
        (
            "",
            "app!=web",
            &["default/c", "default/d", "default/f", "other/e"],
        ),
        (
            "default",
            "tier in (back,data),app!=api",
            &["default/b", "default/d"],
        ),
        (
            "",
            "tier",
            &["default/a", "default/b", "default/c", "default/d"],
        ),
        ("default", "!tier", &["default/f"]),
        ("", "!tier", &["default/f", "other/e"]),
        (
            "",
            "app notin (web,api)",
            &["default/d", "default/f", "other/e"],
        ),
        (
            "",
            "tier notin (back)",
            &["default/a", "default/d", "default/f", "other/e"],
        ),
        ("", "app in (web-canary)", &["default/f"]),
        ("", "app=web,tier=front", &["default/a"]),
        ("", "app=nope", &[]),
        ("other", "", &["other/e"]),
        (
            "",
            "",
            &[
                "default/a",
                "default/b",
                "default/c",
                "default/d",
                "default/f",
                "other/e",
            ],
        ),
    ];
    for (ns, selector, want) in table {
        let got = item_names(&api.list(ns, selector).await);
        assert_eq!(got, *want, "selector {selector:?} in {ns:?}");
    }
    let (status, field) = api
        .get("/cache/v1/ConfigMap?fieldSelector=metadata.name%3Dc")
        .await;
    assert_eq!(
        (status, item_names(&field)),
        (200, vec!["default/c".to_string()])
    );
    let (status, field) = api
        .get("/cache/v1/ConfigMap?fieldSelector=metadata.namespace!%3Ddefault")
        .await;
    assert_eq!(
        (status, item_names(&field)),
        (200, vec!["other/e".to_string()])
    );
    let (status, one) = api.get("/cache/v1/ConfigMap/default/b").await;
    assert_eq!((status, one["data"]["k"].clone()), (200, json!("b")));
    assert_eq!(api.get("/cache/v1/ConfigMap/default/nope").await.0, 404);
    assert_eq!(api.get("/cache/v1/Pod").await.0, 404);
    assert_eq!(
        api.get("/cache/v1/ConfigMap?labelSelector=a%20in%20(")
            .await
            .0,
        400
    );
}

#[tokio::test]
async fn the_cache_api_answers_like_kubectl_for_the_same_selectors() {
    let api = CacheApi::start().await;
    let kubectl = kubesim::tools::KUBECTL.require();
    let kubeconfig = api.agent.dir.path().join("kubeconfig");
    for (ns, selector) in [
        ("default", "app=web"),
        ("default", "tier in (back,data),app!=api"),
        ("", "tier"),
        ("default", "!tier"),
        ("", "app notin (web,api)"),
    ] {
        let ours = api.list(ns, selector).await;
        let mut cmd = tokio::process::Command::new(&kubectl);
        cmd.env("HOME", api.agent.dir.path())
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["get", "configmaps", "-o", "json", "-l", selector]);
        if ns.is_empty() {
            cmd.arg("-A");
        } else {
            cmd.args(["-n", ns]);
        }
        let out = tokio::time::timeout(SOON, cmd.output())
            .await
            .expect("kubectl answers")
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let theirs: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            item_names(&ours),
            item_names(&theirs),
            "selector {selector} in {ns:?}"
        );
        for item in theirs["items"].as_array().unwrap() {
            let mut want = item.clone();
            want["metadata"]
                .as_object_mut()
                .unwrap()
                .remove("managedFields");
            let key = format!(
                "{}/{}",
                item["metadata"]["namespace"].as_str().unwrap(),
                item["metadata"]["name"].as_str().unwrap()
            );
            let (_, one) = api.get(&format!("/cache/v1/ConfigMap/{key}")).await;
            assert_eq!(one, want, "object {key}");
        }
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
