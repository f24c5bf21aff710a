//! A small cluster that does what people recognise, for `lookout demo`: a Deployment rollout
//! (new image → new ReplicaSet → Pods replaced one by one), a scale up and back down, a
//! ConfigMap edit, a Secret rotation and a crash-looping Pod, over and over. Deterministic for
//! a given seed; one beat every `pace`.
//!
//! Controllers are played by the story itself: it writes the Deployment, its ReplicaSets and
//! their Pods the way the deployment and ReplicaSet controllers and the kubelet would.

use std::collections::VecDeque;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::error::ApiError;
use crate::sim::KubeSim;
use crate::time::{format_unix, now_unix};

/// The namespace the story plays in.
pub const NAMESPACE: &str = "shop";
const APP: &str = "web";
const WORKER: &str = "worker";
const IMAGE: &str = "ghcr.io/example/web";

/// The story's state: what the "controllers" believe exists.
pub struct Story {
    sim: KubeSim,
    rng: StdRng,
    /// `web`'s image version (1.0, 1.1, ...).
    version: u32,
    /// The current ReplicaSet of `web` and its Pods.
    rs: String,
    /// The ReplicaSet a rollout in progress replaces.
    old_rs: Option<String>,
    pods: Vec<String>,
    /// The worker Pod that crash-loops, and its restarts so far.
    worker_pod: String,
    restarts: u64,
    /// Beats still to play; refilled with the next act when empty.
    beats: VecDeque<Beat>,
    /// Acts played, to vary the next one.
    acts: u64,
}

/// One beat of the story: a few writes that belong together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beat {
    /// `web-config`'s `LOG_LEVEL` changes.
    EditConfigMap,
    /// `web`'s Pod template gets the next image.
    NewImage,
    /// The ReplicaSet of the new template appears.
    NewReplicaSet,
    /// One Pod of the new ReplicaSet replaces one of the old.
    ReplacePod,
    /// The old ReplicaSet, now empty, is scaled to 0 and the rollout is complete.
    FinishRollout,
    /// `web` goes from 3 to 5 replicas.
    ScaleUp,
    /// `web` goes back to 3 replicas.
    ScaleDown,
    /// `web-db`'s password is rotated.
    RotateSecret,
    /// The worker's container exits and is restarted with back-off.
    CrashLoop,
}

impl Story {
    /// Creates the namespace and the starting objects: `web` (3 replicas) with its
    /// ReplicaSet and Pods, a `worker` Deployment whose Pod will crash-loop, `web-config` and
    /// `web-db`.
    pub fn seed(sim: &KubeSim, seed: u64) -> Result<Story, ApiError> {
        let mut story = Story {
            sim: sim.clone(),
            rng: StdRng::seed_from_u64(seed),
            version: 0,
            rs: String::new(),
            old_rs: None,
            pods: Vec::new(),
            worker_pod: String::new(),
            restarts: 0,
            beats: VecDeque::new(),
            acts: 0,
        };
        if sim.get("v1", "Namespace", None, NAMESPACE).is_none() {
            sim.create("v1", "Namespace", json!({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": NAMESPACE, "labels": {"kubernetes.io/metadata.name": NAMESPACE}}}))?;
        }
        sim.create(
            "v1",
            "ConfigMap",
            json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "web-config", "namespace": NAMESPACE, "labels": {"app": APP}},
            "data": {"LOG_LEVEL": "info", "CHECKOUT_TIMEOUT": "30s"}}),
        )?;
        let password = story.password();
        sim.create(
            "v1",
            "Secret",
            json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "web-db", "namespace": NAMESPACE, "labels": {"app": APP}},
            "type": "Opaque", "data": {"username": "d2Vi", "password": password}}),
        )?;
        sim.create("apps/v1", "Deployment", deployment(APP, &image(0), 3))?;
        story.rs = rs_name(APP, &image(0));
        sim.create(
            "apps/v1",
            "ReplicaSet",
            replica_set(APP, &story.rs, &image(0), 3),
        )?;
        for _ in 0..3 {
            let pod = story.new_pod(APP, &story.rs.clone(), &image(0))?;
            story.pods.push(pod);
        }
        let worker_image = "ghcr.io/example/worker:2.3";
        sim.create("apps/v1", "Deployment", deployment(WORKER, worker_image, 1))?;
        let worker_rs = rs_name(WORKER, worker_image);
        sim.create(
            "apps/v1",
            "ReplicaSet",
            replica_set(WORKER, &worker_rs, worker_image, 1),
        )?;
        story.worker_pod = story.new_pod(WORKER, &worker_rs, worker_image)?;
        Ok(story)
    }

    /// Plays the next beat; returns which.
    pub fn step(&mut self) -> Result<Beat, ApiError> {
        if self.beats.is_empty() {
            self.acts += 1;
            self.beats = act(self.acts);
        }
        let beat = self.beats.pop_front().expect("an act has beats");
        self.play(beat)?;
        Ok(beat)
    }

    fn play(&mut self, beat: Beat) -> Result<(), ApiError> {
        let ns = Some(NAMESPACE);
        match beat {
            Beat::EditConfigMap => {
                let level = ["debug", "info", "warn"][(self.acts % 3) as usize];
                self.sim.merge_patch(
                    "v1",
                    "ConfigMap",
                    ns,
                    "web-config",
                    json!({"data": {"LOG_LEVEL": level}}),
                )?;
            }
            Beat::RotateSecret => {
                let password = self.password();
                self.sim.merge_patch(
                    "v1",
                    "Secret",
                    ns,
                    "web-db",
                    json!({"data": {"password": password}}),
                )?;
            }
            Beat::NewImage => {
                self.version += 1;
                self.sim.merge_patch(
                    "apps/v1",
                    "Deployment",
                    ns,
                    APP,
                    json!({"spec": {"template":
                    {"spec": {"containers": [container(APP, &image(self.version))]}}}}),
                )?;
            }
            Beat::NewReplicaSet => {
                let img = image(self.version);
                let rs = rs_name(APP, &img);
                self.sim
                    .create("apps/v1", "ReplicaSet", replica_set(APP, &rs, &img, 0))?;
                self.old_rs = Some(std::mem::replace(&mut self.rs, rs));
            }
            Beat::ReplacePod => {
                let img = image(self.version);
                let rs = self.rs.clone();
                let new = self.new_pod(APP, &rs, &img)?;
                let old = self.pods.remove(0);
                let _ = self.sim.delete("v1", "Pod", ns, &old);
                self.pods.push(new);
                let updated = self.pods.iter().filter(|p| p.starts_with(&rs)).count();
                self.sim.merge_patch("apps/v1", "ReplicaSet", ns, &rs,
                    json!({"spec": {"replicas": updated}, "status": {"replicas": updated, "readyReplicas": updated}}))?;
                if let Some(old_rs) = &self.old_rs {
                    let left = self.pods.len() - updated;
                    self.sim.merge_patch("apps/v1", "ReplicaSet", ns, old_rs,
                        json!({"spec": {"replicas": left}, "status": {"replicas": left, "readyReplicas": left}}))?;
                }
                self.sim.merge_patch(
                    "apps/v1",
                    "Deployment",
                    ns,
                    APP,
                    json!({"status": {"updatedReplicas": updated}}),
                )?;
            }
            Beat::FinishRollout => {
                // Any Pod of the old template still running is replaced now.
                while self.pods.iter().any(|p| !p.starts_with(&self.rs)) {
                    self.play(Beat::ReplacePod)?;
                }
                if let Some(old_rs) = self.old_rs.take() {
                    self.sim.merge_patch("apps/v1", "ReplicaSet", ns, &old_rs,
                        json!({"spec": {"replicas": 0}, "status": {"replicas": 0, "readyReplicas": 0}}))?;
                }
                self.sim.merge_patch("apps/v1", "Deployment", ns, APP, json!({"status": {
                    "conditions": [{"type": "Progressing", "status": "True",
                        "reason": "NewReplicaSetAvailable",
                        "message": format!("ReplicaSet \"{}\" has successfully progressed.", self.rs)}]}}))?;
            }
            Beat::ScaleUp | Beat::ScaleDown => {
                let to = if beat == Beat::ScaleUp { 5 } else { 3 };
                self.sim.merge_patch(
                    "apps/v1",
                    "Deployment",
                    ns,
                    APP,
                    json!({"spec": {"replicas": to}}),
                )?;
                let (rs, img) = (self.rs.clone(), image(self.version));
                while self.pods.len() < to {
                    let pod = self.new_pod(APP, &rs, &img)?;
                    self.pods.push(pod);
                }
                while self.pods.len() > to {
                    let pod = self.pods.pop().expect("more pods than wanted");
                    let _ = self.sim.delete("v1", "Pod", ns, &pod);
                }
                self.sim.merge_patch("apps/v1", "ReplicaSet", ns, &rs,
                    json!({"spec": {"replicas": to}, "status": {"replicas": to, "readyReplicas": to}}))?;
                self.sim.merge_patch("apps/v1", "Deployment", ns, APP,
                    json!({"status": {"replicas": to, "readyReplicas": to, "availableReplicas": to}}))?;
            }
            Beat::CrashLoop => {
                // Back-off over, the container runs again; at the next beat it has crashed
                // and waits out a longer back-off.
                let t = format_unix(now_unix());
                let state = if self.restarts.is_multiple_of(2) {
                    json!({"waiting": {"reason": "CrashLoopBackOff",
                        "message": format!("back-off {}s restarting failed container", 10 << (self.restarts / 2).min(4))}})
                } else {
                    json!({"running": {"startedAt": t}})
                };
                self.restarts += 1;
                let worker = self.worker_pod.clone();
                self.sim.merge_patch("v1", "Pod", ns, &worker, json!({"status": {
                    "containerStatuses": [{"name": WORKER, "restartCount": self.restarts.div_ceil(2),
                        "state": state, "ready": false, "started": self.restarts.is_multiple_of(2),
                        "image": "ghcr.io/example/worker:2.3",
                        "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}}}]}}))?;
            }
        }
        Ok(())
    }

    /// A fresh base64 password.
    fn password(&mut self) -> String {
        let raw: String = (0..12)
            .map(|_| char::from(b"abcdefghjkmnpqrstuvwxyz23456789"[self.rng.random_range(0..31)]))
            .collect();
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, raw)
    }

    /// Creates a running Pod of ReplicaSet `rs`; returns its name.
    fn new_pod(&mut self, app: &str, rs: &str, image: &str) -> Result<String, ApiError> {
        let suffix: String = (0..5)
            .map(|_| char::from(b"bcdfghjklmnpqrstvwxz2456789"[self.rng.random_range(0..27)]))
            .collect();
        let name = format!("{rs}-{suffix}");
        let t = format_unix(now_unix());
        let ip = format!("10.244.1.{}", self.rng.random_range(2..250));
        self.sim.create(
            "v1",
            "Pod",
            json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NAMESPACE,
                "labels": {"app": app, "pod-template-hash": rs.rsplit('-').next().unwrap_or("")},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs,
                    "uid": format!("uid-{rs}"), "controller": true}]},
            "spec": {"containers": [container(app, image)], "nodeName": "node-1"},
            "status": {"phase": "Running", "podIP": ip, "startTime": t,
                "containerStatuses": [{"name": app, "ready": true, "started": true,
                    "restartCount": 0, "image": image, "state": {"running": {"startedAt": t}}}]}}),
        )?;
        Ok(name)
    }

    /// Plays a beat every `pace` on a background task until the handle is stopped.
    pub fn start(mut self, pace: Duration) -> StoryHandle {
        let (tx, mut rx) = oneshot::channel::<()>();
        let join = tokio::spawn(async move {
            let mut tick = tokio::time::interval(pace.max(Duration::from_millis(10)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            tick.tick().await;
            let mut beats = 0u64;
            loop {
                tokio::select! {
                    _ = &mut rx => return beats,
                    _ = tick.tick() => {}
                }
                match self.step() {
                    Ok(_) => beats += 1,
                    Err(e) => tracing::warn!(error = %e, "story beat failed"),
                }
            }
        });
        StoryHandle {
            stop: Some(tx),
            join,
        }
    }
}

/// Controls a running story.
pub struct StoryHandle {
    stop: Option<oneshot::Sender<()>>,
    join: JoinHandle<u64>,
}

impl StoryHandle {
    /// Stops the story; returns the beats played.
    pub async fn stop(mut self) -> u64 {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        (&mut self.join).await.unwrap_or(0)
    }
}

impl Drop for StoryHandle {
    fn drop(&mut self) {
        self.join.abort();
    }
}

/// The beats of act `n` (from 1): every kind of change once, the order varying.
fn act(n: u64) -> VecDeque<Beat> {
    use Beat::*;
    let mut beats = vec![
        EditConfigMap,
        NewImage,
        NewReplicaSet,
        ReplacePod,
        ReplacePod,
        ReplacePod,
        FinishRollout,
        CrashLoop,
        RotateSecret,
        ScaleUp,
        CrashLoop,
        ScaleDown,
    ];
    if n.is_multiple_of(2) {
        // Every other act scales first and rolls out afterwards.
        beats.rotate_left(8);
    }
    beats.into()
}

fn image(version: u32) -> String {
    format!("{IMAGE}:1.{version}")
}

/// `web-<hash of the template>`, like the deployment controller's `pod-template-hash`.
fn rs_name(app: &str, image: &str) -> String {
    let h = image.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let alphabet = b"bcdfghjklmnpqrstvwxz2456789";
    let hash: String = (0..9)
        .map(|i| char::from(alphabet[((h >> (i * 6)) % 27) as usize]))
        .collect();
    format!("{app}-{hash}")
}

fn container(app: &str, image: &str) -> Value {
    json!({"name": app, "image": image, "ports": [{"containerPort": 8080, "protocol": "TCP"}],
        "envFrom": [{"configMapRef": {"name": "web-config"}}],
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}})
}

fn deployment(app: &str, image: &str, replicas: usize) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": app, "namespace": NAMESPACE, "labels": {"app": app}},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": app}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
            "template": {"metadata": {"labels": {"app": app}}, "spec": {"containers": [container(app, image)]}}},
        "status": {"replicas": replicas, "readyReplicas": replicas, "updatedReplicas": replicas,
            "availableReplicas": replicas}})
}

fn replica_set(app: &str, name: &str, image: &str, replicas: usize) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": name, "namespace": NAMESPACE,
            "labels": {"app": app, "pod-template-hash": name.rsplit('-').next().unwrap_or("")},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": app,
                "uid": format!("uid-{app}"), "controller": true}]},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": app}},
            "template": {"metadata": {"labels": {"app": app}}, "spec": {"containers": [container(app, image)]}}},
        "status": {"replicas": replicas, "readyReplicas": replicas}})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_act_has_every_kind_of_change() {
        for n in 1..=2 {
            let beats = act(n);
            for b in [
                Beat::EditConfigMap,
                Beat::NewImage,
                Beat::NewReplicaSet,
                Beat::ReplacePod,
                Beat::FinishRollout,
                Beat::ScaleUp,
                Beat::ScaleDown,
                Beat::RotateSecret,
                Beat::CrashLoop,
            ] {
                assert!(beats.contains(&b), "act {n}: {b:?}");
            }
        }
    }

    #[test]
    fn replica_set_names_follow_the_template() {
        assert_eq!(rs_name("web", "a:1"), rs_name("web", "a:1"));
        assert_ne!(rs_name("web", "a:1"), rs_name("web", "a:2"));
        assert!(rs_name("web", "a:1").starts_with("web-"));
    }
}
