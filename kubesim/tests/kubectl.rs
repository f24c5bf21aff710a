//! Fidelity against the real kubectl (v1.20 client-go): get (table and JSON),
//! selectors, watch, apply (strategic merge patch) and delete (which waits by watching).

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::*;
use kubesim::KubeSim;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

struct Kubectl {
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
}

impl Kubectl {
    fn new(sim: &KubeSim) -> Kubectl {
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        sim.write_kubeconfig(&kubeconfig).unwrap();
        Kubectl { dir, kubeconfig }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::from(kubesim::tools::kubectl_command(
            self.dir.path(),
            &self.kubeconfig,
        ));
        c.args(args).kill_on_drop(true);
        c
    }

    async fn run(&self, args: &[&str]) -> String {
        let out = tokio::time::timeout(Duration::from_secs(60), self.cmd(args).output())
            .await
            .expect("kubectl finished in time")
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}\n{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    fn write(&self, name: &str, content: &Value) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, serde_json::to_string_pretty(content).unwrap()).unwrap();
        p
    }
}

fn pod(name: &str, app: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default", "labels": {"app": app}},
        "spec": {"nodeName": "node-0", "containers": [{"name": "main", "image": "nginx"}]}, "status": {"phase": "Running"}})
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[tokio::test]
async fn kubectl_get_prints_a_table_and_json() {
    let sim = start().await;
    let k = Kubectl::new(&sim);
    sim.create("v1", "Pod", pod("web-1", "web")).unwrap();
    sim.create("v1", "Pod", pod("db-1", "db")).unwrap();
    let table = k.run(&["get", "pods"]).await;
    assert!(table.starts_with("NAME"), "{table}");
    assert!(table.contains("web-1") && table.contains("db-1"), "{table}");
    let all = k.run(&["get", "namespaces"]).await;
    assert!(all.contains("kube-system"), "{all}");
    let list: Value = serde_json::from_str(&k.run(&["get", "pods", "-o", "json"]).await).unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
    let one: Value =
        serde_json::from_str(&k.run(&["get", "pod", "web-1", "-o", "json"]).await).unwrap();
    assert_eq!(one["spec"]["nodeName"], "node-0");
    assert!(
        sim.request_log()
            .iter()
            .any(|r| r.verb == "list" && r.path == "/api/v1/namespaces/default/pods")
    );
}

#[tokio::test]
async fn kubectl_get_with_label_and_field_selectors_filters_server_side() {
    let sim = start().await;
    let k = Kubectl::new(&sim);
    sim.create("v1", "Pod", pod("web-1", "web")).unwrap();
    sim.create("v1", "Pod", pod("web-2", "web")).unwrap();
    sim.create("v1", "Pod", pod("db-1", "db")).unwrap();
    let out = k.run(&["get", "pods", "-l", "app=web", "-o", "name"]).await;
    assert_eq!(out.lines().collect::<Vec<_>>(), ["pod/web-1", "pod/web-2"]);
    let out = k
        .run(&["get", "pods", "-l", "app notin (web)", "-o", "name"])
        .await;
    assert_eq!(out.trim(), "pod/db-1");
    let out = k
        .run(&[
            "get",
            "pods",
            "-A",
            "--field-selector",
            "metadata.name=web-2",
            "-o",
            "name",
        ])
        .await;
    assert_eq!(out.trim(), "pod/web-2");
    assert!(
        sim.request_log()
            .iter()
            .any(|r| r.param("labelSelector") == Some("app=web"))
    );
}

#[tokio::test]
async fn kubectl_get_watch_streams_new_objects() {
    let sim = start().await;
    let k = Kubectl::new(&sim);
    sim.create("v1", "ConfigMap", cm("first", "default", "1"))
        .unwrap();
    let mut child = k
        .cmd(&["get", "configmaps", "-w"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(l) = lines.next_line().await.unwrap() {
            seen.push(l.clone());
            if l.contains("first") {
                // The initial list is printed; now a change must arrive through the watch.
                sim.create("v1", "ConfigMap", cm("second", "default", "1"))
                    .unwrap();
            }
            if l.contains("second") {
                return;
            }
        }
    })
    .await;
    let _ = child.kill().await;
    assert!(r.is_ok(), "kubectl -w printed {seen:?}");
    assert!(
        sim.request_log()
            .iter()
            .any(|r| r.watch && r.path.ends_with("/configmaps"))
    );
}

#[tokio::test]
async fn kubectl_apply_creates_then_patches_with_strategic_merge() {
    let sim = start().await;
    let k = Kubectl::new(&sim);
    let mut d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "web"}},
        "spec": {"containers": [{"name": "main", "image": "nginx:1", "env": [{"name": "A", "value": "1"}]}, {"name": "side", "image": "envoy"}]}}}});
    let f = k.write("d.json", &d);
    let out = k
        .run(&["apply", "--validate=false", "-f", path_str(&f)])
        .await;
    assert!(out.contains("created"), "{out}");
    let created = sim
        .get("apps/v1", "Deployment", Some("default"), "web")
        .unwrap();
    assert_eq!(created["metadata"]["generation"], 1);
    assert!(
        created["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
            .is_string()
    );
    d["spec"]["replicas"] = json!(3);
    d["spec"]["template"]["spec"]["containers"][0]["image"] = json!("nginx:2");
    d["spec"]["template"]["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .pop();
    let f = k.write("d.json", &d);
    let out = k
        .run(&["apply", "--validate=false", "-f", path_str(&f)])
        .await;
    assert!(out.contains("configured"), "{out}");
    let got = sim
        .get("apps/v1", "Deployment", Some("default"), "web")
        .unwrap();
    assert_eq!(got["spec"]["replicas"], 3);
    let containers = got["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    assert_eq!(containers.len(), 1, "{containers:?}");
    assert_eq!(containers[0]["image"], "nginx:2");
    assert_eq!(containers[0]["env"][0]["value"], "1");
    assert_eq!(got["metadata"]["generation"], 2);
    assert!(sim.request_log().iter().any(|r| r.verb == "patch"));
    let out = k
        .run(&["apply", "--validate=false", "-f", path_str(&f)])
        .await;
    assert!(out.contains("unchanged"), "{out}");
}

#[tokio::test]
async fn kubectl_delete_removes_the_object_and_returns() {
    let sim = start().await;
    let k = Kubectl::new(&sim);
    sim.create("v1", "ConfigMap", cm("doomed", "default", "1"))
        .unwrap();
    sim.create("v1", "Pod", pod("doomed-pod", "x")).unwrap();
    let out = k.run(&["delete", "configmap", "doomed"]).await;
    assert!(out.contains("deleted"), "{out}");
    assert!(
        sim.get("v1", "ConfigMap", Some("default"), "doomed")
            .is_none()
    );
    let out = k.run(&["delete", "pod", "doomed-pod", "--wait=true"]).await;
    assert!(out.contains("deleted"), "{out}");
    assert!(
        sim.get("v1", "Pod", Some("default"), "doomed-pod")
            .is_none()
    );
}
