//! Load generator: seeds realistic Pods (4-8 KB each, with managedFields,
//! labels, annotations, containers and status conditions, like a real cluster
//! returns) and churns them at a fixed rate. Deterministic for a given seed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::error::ApiError;
use crate::sim::KubeSim;
use crate::time::{format_unix, now_unix};

const NAMESPACES: &[&str] = &[
    "payments",
    "search",
    "monitoring",
    "ingress",
    "checkout",
    "batch",
    "auth",
    "catalog",
];
const APPS: &[&str] = &[
    "api",
    "web",
    "worker",
    "cache",
    "gateway",
    "indexer",
    "scheduler",
    "exporter",
];
const IMAGES: &[&str] = &[
    "registry.k8s.io/pause:3.9",
    "ghcr.io/example/api:1.42.0",
    "docker.io/library/nginx:1.25.3",
    "quay.io/prometheus/node-exporter:v1.7.0",
    "docker.io/library/redis:7.2.4",
];

/// What one churn step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A pod was created.
    Add,
    /// A pod got a small real change (condition, label or annotation).
    Update,
    /// A pod was deleted.
    Delete,
}

/// Seeds and churns Pods on a simulator.
pub struct LoadGen {
    sim: KubeSim,
    rng: StdRng,
    namespaces: Vec<String>,
    nodes: Vec<String>,
    live: Vec<(String, String)>,
    target: usize,
    next_id: u64,
}

impl LoadGen {
    /// Creates the namespaces and nodes, then `n` pods spread over them.
    pub fn seed(
        sim: &KubeSim,
        n: usize,
        seed: u64,
        namespaces: usize,
        nodes: usize,
    ) -> Result<LoadGen, ApiError> {
        let mut lg = LoadGen {
            sim: sim.clone(),
            rng: StdRng::seed_from_u64(seed),
            namespaces: (0..namespaces.max(1))
                .map(|i| match NAMESPACES.get(i) {
                    Some(n) => n.to_string(),
                    None => format!("team-{i}"),
                })
                .collect(),
            nodes: (0..nodes.max(1)).map(|i| format!("node-{i}")).collect(),
            live: Vec::with_capacity(n),
            target: n,
            next_id: 0,
        };
        for ns in &lg.namespaces {
            if sim.get("v1", "Namespace", None, ns).is_none() {
                sim.create("v1", "Namespace", json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": {"kubernetes.io/metadata.name": ns}}}))?;
            }
        }
        for node in &lg.nodes {
            if sim.get("v1", "Node", None, node).is_none() {
                sim.create("v1", "Node", node_template(node))?;
            }
        }
        for _ in 0..n {
            lg.add()?;
        }
        Ok(lg)
    }

    /// Names `(namespace, name)` of the pods that currently exist (as far as the generator knows).
    pub fn live_pods(&self) -> &[(String, String)] {
        &self.live
    }

    fn add(&mut self) -> Result<(), ApiError> {
        let id = self.next_id;
        self.next_id += 1;
        let ns = self.namespaces[self.rng.random_range(0..self.namespaces.len())].clone();
        let node = self.nodes[self.rng.random_range(0..self.nodes.len())].clone();
        let pod = pod_template(&mut self.rng, &ns, id, &node);
        let name = pod["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        self.sim.create("v1", "Pod", pod)?;
        self.live.push((ns, name));
        Ok(())
    }

    /// Makes one random change: adds while below the seeded population, otherwise mostly updates.
    pub fn step(&mut self) -> Result<Change, ApiError> {
        let roll = self.rng.random_range(0..100);
        if self.live.is_empty() || (self.live.len() < self.target && roll < 30) || roll < 10 {
            self.add()?;
            return Ok(Change::Add);
        }
        let i = self.rng.random_range(0..self.live.len());
        if roll < 22 {
            let (ns, name) = self.live.swap_remove(i);
            // Someone else may have deleted it; that still counts as churn.
            let _ = self.sim.delete("v1", "Pod", Some(&ns), &name);
            return Ok(Change::Delete);
        }
        let (ns, name) = self.live[i].clone();
        let n = self.rng.random_range(0..1_000_000u32);
        let patch = match roll % 3 {
            0 => json!({"metadata": {"labels": {"loadgen/revision": n.to_string()}}}),
            1 => {
                json!({"metadata": {"annotations": {"loadgen.kubesim.io/touched": format!("{n}")}}})
            }
            _ => {
                let ready = if n % 2 == 0 { "True" } else { "False" };
                let t = format_unix(now_unix());
                json!({"status": {"conditions": [
                    {"type": "PodReadyToStartContainers", "status": "True", "lastProbeTime": null, "lastTransitionTime": t},
                    {"type": "Initialized", "status": "True", "lastProbeTime": null, "lastTransitionTime": t},
                    {"type": "Ready", "status": ready, "lastProbeTime": null, "lastTransitionTime": t},
                    {"type": "ContainersReady", "status": ready, "lastProbeTime": null, "lastTransitionTime": t},
                    {"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": t}
                ]}})
            }
        };
        match self.sim.merge_patch("v1", "Pod", Some(&ns), &name, patch) {
            Ok(_) => Ok(Change::Update),
            Err(e) if e.code == 404 => {
                self.live.swap_remove(i);
                Ok(Change::Delete)
            }
            Err(e) => Err(e),
        }
    }

    /// Churns at `rate` changes per second on a background task until the handle is stopped.
    pub fn start_churn(mut self, rate: f64) -> ChurnHandle {
        let (tx, mut rx) = oneshot::channel::<()>();
        let count = Arc::new(AtomicU64::new(0));
        let counter = count.clone();
        let join = tokio::spawn(async move {
            if rate <= 0.0 {
                let _ = rx.await;
                return;
            }
            let start = tokio::time::Instant::now();
            // Tick at most every 10 ms and catch up in batches, so high rates need no busy loop.
            let period = Duration::from_secs_f64((1.0 / rate).max(0.01));
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    _ = &mut rx => return,
                    _ = tick.tick() => {}
                }
                let due = (start.elapsed().as_secs_f64() * rate) as u64;
                while counter.load(Ordering::Relaxed) < due {
                    if let Err(e) = self.step() {
                        tracing::warn!(error = %e, "churn step failed");
                    }
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        ChurnHandle {
            stop: Some(tx),
            join,
            count,
        }
    }
}

/// Controls a running churn task.
pub struct ChurnHandle {
    stop: Option<oneshot::Sender<()>>,
    join: JoinHandle<()>,
    count: Arc<AtomicU64>,
}

impl ChurnHandle {
    /// Changes made so far.
    pub fn changes(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Stops churning and waits for the task; returns the number of changes made.
    pub async fn stop(mut self) -> u64 {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.join).await;
        self.changes()
    }
}

impl Drop for ChurnHandle {
    fn drop(&mut self) {
        self.join.abort();
    }
}

fn node_template(name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
            "node.kubernetes.io/instance-type": "e2-standard-4", "topology.kubernetes.io/zone": "europe-west1-b"
        }},
        "spec": {"podCIDR": "10.244.0.0/24", "providerID": format!("kubesim://{name}")},
        "status": {
            "capacity": {"cpu": "4", "memory": "16393244Ki", "pods": "110"},
            "allocatable": {"cpu": "3920m", "memory": "13916188Ki", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready status"}],
            "addresses": [{"type": "InternalIP", "address": "10.0.0.10"}, {"type": "Hostname", "address": name}],
            "nodeInfo": {"kubeletVersion": "v1.31.0", "containerRuntimeVersion": "containerd://1.7.13", "osImage": "Ubuntu 22.04.4 LTS", "architecture": "amd64", "operatingSystem": "linux"}
        }
    })
}

/// A realistic Pod (about 5 KB serialized) as a real API server returns it, minus server-set metadata.
pub fn pod_template(rng: &mut impl Rng, ns: &str, id: u64, node: &str) -> Value {
    let app = APPS[rng.random_range(0..APPS.len())];
    let hash: String = (0..10)
        .map(|_| char::from(b"bcdfghjklmnpqrstvwxz2456789"[rng.random_range(0..27)]))
        .collect();
    let suffix: String = (0..5)
        .map(|_| char::from(b"bcdfghjklmnpqrstvwxz2456789"[rng.random_range(0..27)]))
        .collect();
    let name = format!("{app}-{hash}-{suffix}-{id}");
    let image = IMAGES[rng.random_range(0..IMAGES.len())];
    let ip = format!(
        "10.244.{}.{}",
        rng.random_range(0..255),
        rng.random_range(1..255)
    );
    let t = format_unix(now_unix() - rng.random_range(0..86_400));
    let cpu = format!("{}m", rng.random_range(1..20) * 50);
    let mem = format!("{}Mi", rng.random_range(1..16) * 64);
    let restarts = rng.random_range(0..3);
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "generateName": format!("{app}-{hash}-"),
            "namespace": ns,
            "labels": {
                "app": app,
                "app.kubernetes.io/name": app,
                "app.kubernetes.io/part-of": ns,
                "pod-template-hash": hash,
                "tier": if rng.random_bool(0.5) { "backend" } else { "frontend" }
            },
            "annotations": {
                "kubectl.kubernetes.io/restartedAt": t,
                "prometheus.io/scrape": "true",
                "prometheus.io/port": "9090",
                "cni.projectcalico.org/podIP": format!("{ip}/32")
            },
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{app}-{hash}"),
                "uid": format!("{:08x}-1111-4222-8333-{:012x}", rng.random::<u32>(), rng.random::<u64>() & 0xffff_ffff_ffff),
                "controller": true, "blockOwnerDeletion": true
            }],
            "managedFields": [
                {"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1", "time": t, "fieldsType": "FieldsV1",
                 "fieldsV1": {"f:metadata": {"f:generateName": {}, "f:labels": {".": {}, "f:app": {}, "f:app.kubernetes.io/name": {}, "f:app.kubernetes.io/part-of": {}, "f:pod-template-hash": {}, "f:tier": {}},
                   "f:ownerReferences": {".": {}, "k:{\"uid\":\"owner\"}": {}}},
                   "f:spec": {"f:containers": {"k:{\"name\":\"main\"}": {".": {}, "f:image": {}, "f:imagePullPolicy": {}, "f:name": {}, "f:ports": {".": {}, "k:{\"containerPort\":8080,\"protocol\":\"TCP\"}": {".": {}, "f:containerPort": {}, "f:name": {}, "f:protocol": {}}},
                     "f:resources": {".": {}, "f:limits": {".": {}, "f:memory": {}}, "f:requests": {".": {}, "f:cpu": {}, "f:memory": {}}}, "f:terminationMessagePath": {}, "f:terminationMessagePolicy": {}}},
                     "f:dnsPolicy": {}, "f:enableServiceLinks": {}, "f:restartPolicy": {}, "f:schedulerName": {}, "f:securityContext": {}, "f:terminationGracePeriodSeconds": {}}}},
                {"manager": "kubelet", "operation": "Update", "apiVersion": "v1", "time": t, "fieldsType": "FieldsV1", "subresource": "status",
                 "fieldsV1": {"f:status": {"f:conditions": {"k:{\"type\":\"ContainersReady\"}": {".": {}, "f:lastProbeTime": {}, "f:lastTransitionTime": {}, "f:status": {}, "f:type": {}},
                   "k:{\"type\":\"Initialized\"}": {".": {}, "f:lastProbeTime": {}, "f:lastTransitionTime": {}, "f:status": {}, "f:type": {}},
                   "k:{\"type\":\"Ready\"}": {".": {}, "f:lastProbeTime": {}, "f:lastTransitionTime": {}, "f:status": {}, "f:type": {}}},
                   "f:containerStatuses": {}, "f:hostIP": {}, "f:hostIPs": {}, "f:phase": {}, "f:podIP": {}, "f:podIPs": {".": {}, "k:{\"ip\":\"ip\"}": {".": {}, "f:ip": {}}}, "f:startTime": {}}}}
            ]
        },
        "spec": {
            "volumes": [
                {"name": "config", "configMap": {"name": format!("{app}-config"), "defaultMode": 420}},
                {"name": "kube-api-access", "projected": {"sources": [
                    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                    {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
                ], "defaultMode": 420}}
            ],
            "containers": [
                {
                    "name": "main", "image": image,
                    "args": ["--port=8080", "--log-level=info", format!("--service={app}")],
                    "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}, {"name": "metrics", "containerPort": 9090, "protocol": "TCP"}],
                    "env": [
                        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}},
                        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}},
                        {"name": "LOG_FORMAT", "value": "json"}
                    ],
                    "resources": {"limits": {"memory": mem}, "requests": {"cpu": cpu, "memory": mem}},
                    "volumeMounts": [{"name": "config", "mountPath": "/etc/app"}, {"name": "kube-api-access", "readOnly": true, "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}],
                    "livenessProbe": {"httpGet": {"path": "/healthz", "port": 8080, "scheme": "HTTP"}, "initialDelaySeconds": 10, "timeoutSeconds": 1, "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3},
                    "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080, "scheme": "HTTP"}, "timeoutSeconds": 1, "periodSeconds": 5, "successThreshold": 1, "failureThreshold": 3},
                    "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File", "imagePullPolicy": "IfNotPresent"
                },
                {
                    "name": "sidecar", "image": "docker.io/envoyproxy/envoy:v1.29.1",
                    "ports": [{"name": "admin", "containerPort": 9901, "protocol": "TCP"}],
                    "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}},
                    "volumeMounts": [{"name": "kube-api-access", "readOnly": true, "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}],
                    "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File", "imagePullPolicy": "IfNotPresent"
                }
            ],
            "restartPolicy": "Always", "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default", "serviceAccount": "default", "nodeName": node,
            "securityContext": {}, "schedulerName": "default-scheduler",
            "tolerations": [
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
            ],
            "priority": 0, "enableServiceLinks": true, "preemptionPolicy": "PreemptLowerPriority"
        },
        "status": {
            "phase": "Running",
            "conditions": [
                {"type": "PodReadyToStartContainers", "status": "True", "lastProbeTime": null, "lastTransitionTime": t},
                {"type": "Initialized", "status": "True", "lastProbeTime": null, "lastTransitionTime": t},
                {"type": "Ready", "status": "True", "lastProbeTime": null, "lastTransitionTime": t},
                {"type": "ContainersReady", "status": "True", "lastProbeTime": null, "lastTransitionTime": t},
                {"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": t}
            ],
            "hostIP": "10.0.0.10", "hostIPs": [{"ip": "10.0.0.10"}], "podIP": ip, "podIPs": [{"ip": ip}], "startTime": t,
            "containerStatuses": [
                {"name": "main", "state": {"running": {"startedAt": t}}, "lastState": {}, "ready": true, "restartCount": restarts,
                 "image": image, "imageID": format!("{image}@sha256:{:016x}{:016x}", rng.random::<u64>(), rng.random::<u64>()),
                 "containerID": format!("containerd://{:016x}{:016x}", rng.random::<u64>(), rng.random::<u64>()), "started": true},
                {"name": "sidecar", "state": {"running": {"startedAt": t}}, "lastState": {}, "ready": true, "restartCount": 0,
                 "image": "docker.io/envoyproxy/envoy:v1.29.1", "imageID": format!("docker.io/envoyproxy/envoy@sha256:{:016x}", rng.random::<u64>()),
                 "containerID": format!("containerd://{:016x}{:016x}", rng.random::<u64>(), rng.random::<u64>()), "started": true}
            ],
            "qosClass": "Burstable"
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_template_is_realistically_sized_and_deterministic() {
        let a = pod_template(&mut StdRng::seed_from_u64(7), "ns", 1, "node-0");
        let b = pod_template(&mut StdRng::seed_from_u64(7), "ns", 1, "node-0");
        assert_eq!(a["metadata"]["name"], b["metadata"]["name"]);
        let size = serde_json::to_vec(&a).unwrap().len();
        assert!((4000..=8192).contains(&size), "{size} bytes");
    }
}
