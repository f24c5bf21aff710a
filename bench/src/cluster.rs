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
        }
    }

    /// One small real change of the next Pod in turn (a label, an annotation or a status
    /// condition, like a controller or the kubelet makes); returns the object as written.
    pub fn update(&mut self) -> Value {
        let i = self.written;
        self.written += 1;
        let (ns, name) = &self.pods[(i as usize) % self.pods.len()];
        let patch = match i % 3 {
            0 => json!({"metadata": {"labels": {"bench/revision": i.to_string()}}}),
            1 => {
                json!({"metadata": {"annotations": {"bench.lookout.dev/touched": format!("{i}")}}})
            }
            _ => {
                let ready = if (i / 3) % 2 == 0 { "False" } else { "True" };
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

    /// Writes `n` updates as fast as kubesim takes them; keeps the watch lines
    /// (`{"type":"MODIFIED","object":…}`) of the first `keep` for the floor measurement.
    pub fn write_updates(&mut self, n: usize, keep: usize) -> (Duration, Vec<Vec<u8>>) {
        let mut lines = Vec::with_capacity(keep.min(n));
        let t = Instant::now();
        for i in 0..n {
            let obj = self.update();
            if i < keep {
                lines.push(
                    serde_json::to_vec(&json!({"type": "MODIFIED", "object": obj})).expect("json"),
                );
            }
        }
        (t.elapsed(), lines)
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
