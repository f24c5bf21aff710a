//! The simulated cluster: kubesim in this process, seeded with realistic Pods, and the stream
//! of small real changes the benchmarks replay.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kubesim::loadgen::LoadGen;
use kubesim::{KubeSim, SimConfig};
use serde_json::{Value, json};

/// A running simulator with its seeded Pods.
pub struct Cluster {
    /// The simulator.
    pub sim: KubeSim,
    /// `(namespace, name)` of every seeded Pod.
    pub pods: Vec<(String, String)>,
    /// A kubeconfig pointing at it.
    pub kubeconfig: PathBuf,
    /// Updates made so far (makes every value unique).
    written: u64,
    /// Updates go round-robin over the first `touch` Pods (all by default).
    pub touch: usize,
}

impl Cluster {
    /// Starts kubesim (inside `rt`) with `pods` Pods and room for `history` events.
    pub fn start(rt: &tokio::runtime::Runtime, pods: usize, history: usize, dir: &Path) -> Cluster {
        let sim = rt
            .block_on(KubeSim::start(SimConfig {
                history_limit: history,
                ..SimConfig::default()
            }))
            .expect("kubesim starts");
        let _guard = rt.enter();
        let lg = LoadGen::seed(&sim, pods, 42, 8, 20).expect("seed pods");
        let pods = lg.live_pods().to_vec();
        let kubeconfig = dir.join(format!("kubeconfig-{}", sim.addr().port()));
        sim.write_kubeconfig(&kubeconfig).expect("write kubeconfig");
        Cluster {
            sim,
            pods,
            kubeconfig,
            written: 0,
            touch: usize::MAX,
        }
    }

    /// One small real change of the next Pod in turn (a label, an annotation or a status
    /// condition, like a controller or the kubelet makes); returns the object as written.
    pub fn update(&mut self) -> Value {
        let i = self.written;
        self.written += 1;
        let (ns, name) = &self.pods[(i as usize) % self.pods.len().min(self.touch).max(1)];
        let patch = match i % 3 {
            0 => json!({"metadata": {"labels": {"bench/revision": i.to_string()}}}),
            1 => {
                json!({"metadata": {"annotations": {"bench.lookout.dev/touched": format!("{i}")}}})
            }
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
        self.sim
            .merge_patch("v1", "Pod", Some(ns), name, patch)
            .expect("update pod")
    }

    /// Writes `n` updates as fast as kubesim takes them; returns how long it took and the
    /// resourceVersion the burst starts after.
    pub fn write_updates(&mut self, n: usize) -> (Duration, u64) {
        let from = self.sim.current_resource_version();
        let t = Instant::now();
        for _ in 0..n {
            self.update();
        }
        (t.elapsed(), from)
    }

    /// The first `n` watch events after resourceVersion `from`, byte for byte as kubesim
    /// serves them to any watcher (lookout and kubectl included): one
    /// `{"type":"MODIFIED","object":…}` line each, managedFields and all.
    pub fn watch_bytes(&self, rt: &tokio::runtime::Runtime, from: u64, n: usize) -> Vec<Vec<u8>> {
        use http_body_util::BodyExt;
        let addr = self.sim.addr();
        rt.block_on(async move {
            let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let (mut send, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .expect("handshake");
            tokio::spawn(conn);
            let req = http::Request::builder()
                .uri(format!("/api/v1/pods?watch=true&resourceVersion={from}"))
                .header("host", addr.to_string())
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .expect("request");
            let resp = send.send_request(req).await.expect("watch");
            assert_eq!(resp.status(), 200, "watch from {from}");
            let mut body = resp.into_body();
            let (mut buf, mut out) = (Vec::new(), Vec::with_capacity(n));
            let read = async {
                while out.len() < n {
                    let Some(Ok(frame)) = body.frame().await else {
                        break;
                    };
                    if let Ok(d) = frame.into_data() {
                        buf.extend_from_slice(&d);
                        while let Some(i) = buf.iter().position(|b| *b == b'\n') {
                            let line: Vec<u8> = buf.drain(..=i).collect();
                            if out.len() < n && !line.starts_with(br#"{"type":"BOOKMARK""#) {
                                out.push(line[..line.len() - 1].to_vec());
                            }
                        }
                    }
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(120), read).await;
            assert_eq!(out.len(), n, "watch replay from {from}");
            out
        })
    }

    /// The Pods as listed (wire bytes, managedFields included), and the total size of what
    /// the agent caches: the same objects without managedFields.
    pub fn list_bytes(&self, sample: usize) -> ListBytes {
        let mut out = ListBytes::default();
        for mut obj in self.sim.list("v1", "Pod") {
            let wire = serde_json::to_vec(&obj).expect("json");
            out.wire += wire.len();
            out.objects += 1;
            if out.sample.len() < sample {
                out.sample.push(wire);
            }
            if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.shift_remove("managedFields");
            }
            out.transformed += serde_json::to_vec(&obj).expect("json").len();
        }
        out
    }
}

/// Sizes of a list.
#[derive(Debug, Default)]
pub struct ListBytes {
    /// Objects listed.
    pub objects: usize,
    /// Bytes as served.
    pub wire: usize,
    /// Bytes after the agent's default transforms (what the cache holds).
    pub transformed: usize,
    /// The first objects as served.
    pub sample: Vec<Vec<u8>>,
}

/// A cluster too large to store: kubesim serves `pods` Pods as a paginated list, generating
/// each page when it is asked for (`KubeSim::synthesize`). Pod `i` is one of `templates`
/// realistic seeded Pods (managedFields and all) under its own name (`pod-0000042`) and uid.
pub struct Synthetic {
    /// The simulator.
    pub sim: KubeSim,
    /// A kubeconfig pointing at it.
    pub kubeconfig: PathBuf,
    /// The list's sizes, computed exactly from the templates.
    pub list: ListBytes,
}

impl Synthetic {
    /// Starts kubesim (inside `rt`) serving `pods` generated Pods.
    pub fn start(rt: &tokio::runtime::Runtime, pods: usize, templates: usize, dir: &Path) -> Self {
        let sim = rt
            .block_on(KubeSim::start(SimConfig::default()))
            .expect("kubesim starts");
        let _guard = rt.enter();
        LoadGen::seed(&sim, templates, 42, 8, 20).expect("seed template pods");
        const NAME: &str = "@@name@@";
        const UID: &str = "@@uid@@";
        let mut list = ListBytes::default();
        let mut shapes: Vec<String> = Vec::new();
        // Size of a template once its markers are replaced by a name and a uid (both fixed
        // width), as served and without managedFields.
        let fill = (name(0).len() + uid(0).len()) as isize - (NAME.len() + UID.len()) as isize;
        let mut sizes = Vec::new();
        for mut obj in sim.list("v1", "Pod") {
            obj["metadata"]["name"] = json!(NAME);
            obj["metadata"]["uid"] = json!(UID);
            let wire = serde_json::to_string(&obj).expect("json");
            if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.shift_remove("managedFields");
            }
            let trimmed = serde_json::to_vec(&obj).expect("json").len();
            sizes.push((wire.len() as isize + fill, trimmed as isize + fill));
            shapes.push(wire);
        }
        for i in 0..pods {
            let (wire, trimmed) = sizes[i % sizes.len()];
            list.objects += 1;
            list.wire += wire as usize;
            list.transformed += trimmed as usize;
        }
        sim.synthesize("v1", "Pod", pods, move |i| {
            shapes[i % shapes.len()]
                .replacen(NAME, &name(i), 1)
                .replacen(UID, &uid(i), 1)
                .into()
        })
        .expect("Pods are served");
        let kubeconfig = dir.join(format!("kubeconfig-{}", sim.addr().port()));
        sim.write_kubeconfig(&kubeconfig).expect("write kubeconfig");
        Synthetic {
            sim,
            kubeconfig,
            list,
        }
    }
}

/// The name of synthetic Pod `i`.
fn name(i: usize) -> String {
    format!("pod-{i:07}")
}

/// The uid of synthetic Pod `i`.
fn uid(i: usize) -> String {
    format!("00000000-0000-4000-8000-{i:012}")
}
