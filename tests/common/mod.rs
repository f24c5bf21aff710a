//! Shared test harness: an in-process kubesim, the real `lookout` binary as a child process
//! reading it over HTTP, and a checker that replays every envelope's patch.
#![allow(dead_code)]

/// Every envelope a consumer here reads is validated against the published JSON Schemas.
#[path = "../../src/event/schema_check.rs"]
pub mod schema;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use kubesim::{KubeSim, SimConfig};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// Generous bound for anything the agent should do "soon" on a loaded 2-core machine.
pub const SOON: Duration = Duration::from_secs(20);

/// Starts a simulator on a free loopback port.
pub async fn sim() -> KubeSim {
    KubeSim::start(SimConfig::default())
        .await
        .expect("kubesim starts")
}

/// A running `lookout` process.
pub struct Agent {
    pub child: Child,
    events: mpsc::UnboundedReceiver<Value>,
    pub dir: tempfile::TempDir,
    pub stderr_path: PathBuf,
}

impl Agent {
    /// Starts `lookout run` against `sim` with `config` (YAML).
    pub async fn start(sim: &KubeSim, config: &str) -> Agent {
        Self::start_with_env(sim, config, &[]).await
    }

    /// As [`Agent::start`], with extra environment variables.
    pub async fn start_with_env(sim: &KubeSim, config: &str, env: &[(&str, &str)]) -> Agent {
        Self::start_with_kubeconfig(&sim.kubeconfig_yaml(), config, env).await
    }

    /// Starts `lookout run` with `config` against whatever `kubeconfig` (YAML) points at —
    /// possibly nothing yet.
    pub async fn start_with_kubeconfig(
        kubeconfig_yaml: &str,
        config: &str,
        env: &[(&str, &str)],
    ) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(&kubeconfig, kubeconfig_yaml).unwrap();
        let config_path = dir.path().join("lookout.yaml");
        std::fs::write(&config_path, config).unwrap();
        let stderr_path = dir.path().join("stderr.log");
        let stderr = std::fs::File::create(&stderr_path).unwrap();
        let mut cmd = Command::new(lookout_bin());
        cmd.arg("run")
            .arg("--config")
            .arg(&config_path)
            .env("KUBECONFIG", &kubeconfig)
            .env("RUST_LOG", "info,lookout=debug")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true);
        // `LOOKOUT_*` variables of the test run (LOOKOUT_SOAK_SECS, LOOKOUT_FAULT_SEEDS, ...)
        // steer the tests, not the agent, whose config would refuse them as unknown keys.
        for (k, _) in std::env::vars() {
            if k.starts_with("LOOKOUT_") {
                cmd.env_remove(k);
            }
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("lookout starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, events) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {line}"));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        Agent {
            child,
            events,
            dir,
            stderr_path,
        }
    }

    /// The agent's log so far (for failure messages).
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The next envelope, waiting up to `SOON`.
    pub async fn next(&mut self) -> Value {
        match tokio::time::timeout(SOON, self.events.recv()).await {
            Ok(Some(v)) => checked(v),
            Ok(None) => panic!("agent stdout closed; log:\n{}", self.stderr()),
            Err(_) => panic!("no event within {SOON:?}; log:\n{}", self.stderr()),
        }
    }

    /// The next envelope within `wait`, or `None` (timeout, or the agent's stdout closed).
    pub async fn try_next(&mut self, wait: Duration) -> Option<Value> {
        tokio::time::timeout(wait, self.events.recv())
            .await
            .ok()
            .flatten()
            .map(checked)
    }

    /// The next `n` envelopes.
    pub async fn take(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.next().await);
        }
        out
    }

    /// Everything the agent still emits for the changes made so far, then the barrier: creates
    /// a marker ConfigMap (the agent must watch ConfigMaps) and collects envelopes up to and
    /// including the marker's add. One informer hands its changes out in order, so anything
    /// still pending comes out before the marker; a quiet window would only show that
    /// nothing came *yet*.
    pub async fn until_barrier(&mut self, sim: &KubeSim) -> Vec<Value> {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let name = format!(
            "zz-barrier-{}",
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        sim.create("v1", "ConfigMap", configmap("default", &name, json!({})))
            .expect("create the barrier");
        let mut out = Vec::new();
        loop {
            let e = self.next().await;
            let done = e["op"] == "add" && e["name"] == name.as_str();
            out.push(e);
            if done {
                return out;
            }
        }
    }

    /// Asserts the agent has nothing more to emit for the changes made so far (see
    /// [`Agent::until_barrier`]); returns the barrier's envelope.
    pub async fn expect_nothing_more(&mut self, sim: &KubeSim) -> Value {
        let mut got = self.until_barrier(sim).await;
        let barrier = got.pop().expect("the barrier");
        assert!(
            got.is_empty(),
            "expected nothing before the barrier, got {got:#?}"
        );
        barrier
    }

    /// Sends SIGTERM and waits for the exit status.
    pub async fn terminate(mut self) -> (std::process::ExitStatus, Vec<Value>, String) {
        let pid = self.child.id().expect("running") as i32;
        signal(pid, libc::SIGTERM);
        let status = tokio::time::timeout(SOON, self.child.wait())
            .await
            .expect("exits after SIGTERM")
            .unwrap();
        let mut rest = Vec::new();
        while let Ok(Some(v)) =
            tokio::time::timeout(Duration::from_millis(200), self.events.recv()).await
        {
            rest.push(checked(v));
        }
        let log = self.stderr();
        (status, rest, log)
    }
}

/// The `lookout` binary under test: `$TEST_LOOKOUT_BIN` when set (a private copy, which
/// other worktrees' builds into a shared target directory cannot replace mid-run), else the
/// one cargo built for these tests.
pub fn lookout_bin() -> PathBuf {
    std::env::var_os("TEST_LOOKOUT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_lookout")))
}

/// `v`, once it validated against its schema (envelope, Debezium or CloudEvent).
pub fn checked(v: Value) -> Value {
    schema::any(&v);
    v
}

/// Sends a real signal to a process.
pub fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig})");
}

/// Replays envelopes per uid: every update's patch applied to the previous object must give
/// the new object; adds must not exist yet; deletes must exist.
#[derive(Default)]
pub struct Replay {
    pub objects: HashMap<String, Value>,
}

impl Replay {
    /// Checks one envelope and applies it.
    pub fn apply(&mut self, e: &Value) {
        let uid = e["uid"].as_str().expect("uid").to_string();
        assert_eq!(e["object"]["metadata"]["uid"], e["uid"], "uid field: {e}");
        if e["finalStateUnknown"] == true {
            // An inferred delete carries the resourceVersion it was found gone at: newer than
            // the last state known of its object.
            let rv = |v: &Value| v.as_str().and_then(|s| s.parse::<u64>().ok());
            assert!(
                rv(&e["resourceVersion"]) > rv(&e["object"]["metadata"]["resourceVersion"]),
                "resourceVersion field of an inferred delete: {e}"
            );
        } else {
            assert_eq!(
                e["object"]["metadata"]["resourceVersion"], e["resourceVersion"],
                "resourceVersion field: {e}"
            );
        }
        match e["op"].as_str().unwrap() {
            "add" => {
                assert!(e.get("patch").is_none(), "adds carry no patch: {e}");
                if let Some(existing) = self.objects.insert(uid, e["object"].clone()) {
                    panic!("add of an object that already exists ({existing}): {e}");
                }
            }
            "update" => {
                let prev = self
                    .objects
                    .get(&uid)
                    .unwrap_or_else(|| panic!("update of an object never added: {e}"));
                let patch: json_patch::Patch =
                    serde_json::from_value(e["patch"].clone()).expect("patch is RFC 6902");
                let mut doc = prev.clone();
                json_patch::patch(&mut doc, &patch).expect("patch applies");
                assert_eq!(
                    doc, e["object"],
                    "patch replay must give the new object: {e}"
                );
                self.objects.insert(uid, e["object"].clone());
            }
            "delete" => {
                assert!(
                    self.objects.remove(&uid).is_some(),
                    "delete of an unknown object: {e}"
                );
            }
            other => panic!("unknown op {other}"),
        }
    }

    /// Applies every envelope.
    pub fn apply_all(&mut self, events: &[Value]) {
        for e in events {
            self.apply(e);
        }
    }
}

/// A small ConfigMap.
pub fn configmap(ns: &str, name: &str, data: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": "demo"}},
        "data": data})
}

/// `lookout.yaml` watching the given `(apiVersion, kind)` pairs into the stdout sink.
pub fn stdout_config(resources: &[(&str, &str)]) -> String {
    let mut s = String::from("cluster: test\nresources:\n");
    for (av, k) in resources {
        s.push_str(&format!("  - apiVersion: {av}\n    kind: {k}\n"));
    }
    s.push_str("sinks:\n  - name: out\n    type: stdout\n");
    s.push_str("server:\n  listen: 127.0.0.1:0\n");
    s
}

/// The Kubernetes API fixtures checked into the repository (`testdata/k8s-api/`, see its
/// README for origin, version and licence).
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/k8s-api")
}

/// As [`stdout_config`], remembering delivered state in `state_dir`.
pub fn stdout_config_with_state(resources: &[(&str, &str)], state_dir: &Path) -> String {
    format!(
        "{}state:\n  dir: {}\nshutdown:\n  gracePeriod: 5s\n",
        stdout_config(resources),
        state_dir.display()
    )
}

/// What an at-least-once consumer reconstructs from a sink's output: objects by `uid`, each
/// at the newest `resourceVersion` seen. A change older than one already applied (a re-send
/// arriving after a newer change) is counted and ignored; a delete leaves a tombstone at its
/// resourceVersion, so a late re-sent add or update cannot resurrect the object.
///
/// resourceVersions are compared as numbers: kubesim's are. (A real API server's are opaque;
/// a real consumer orders by Kafka offset per key or by event time.)
#[derive(Debug, Default)]
pub struct AtLeastOnce {
    /// The live objects, by uid.
    pub objects: HashMap<String, Value>,
    /// The newest resourceVersion applied per uid (deletes included).
    newest: HashMap<String, u64>,
    /// Every (uid, resourceVersion) seen.
    seen: std::collections::HashSet<(String, String)>,
    /// Envelopes consumed.
    pub total: usize,
    /// Envelopes whose (uid, resourceVersion) had been consumed before.
    pub duplicates: usize,
    /// Envelopes older than a change already applied to their object.
    pub stale: usize,
}

impl AtLeastOnce {
    /// Consumes one envelope; false when it is a duplicate.
    pub fn consume(&mut self, e: &Value) -> bool {
        let uid = e["uid"].as_str().expect("uid").to_string();
        let rv_text = e["resourceVersion"].as_str().expect("resourceVersion");
        let rv: u64 = rv_text
            .parse()
            .unwrap_or_else(|_| panic!("kubesim resourceVersions are numbers: {e}"));
        self.total += 1;
        let fresh = self.seen.insert((uid.clone(), rv_text.to_string()));
        if !fresh {
            self.duplicates += 1;
        }
        if self.newest.get(&uid).is_some_and(|&held| held > rv) {
            self.stale += 1;
            return fresh;
        }
        self.newest.insert(uid.clone(), rv);
        match e["op"].as_str().expect("op") {
            "delete" => {
                self.objects.remove(&uid);
            }
            _ => {
                self.objects.insert(uid, e["object"].clone());
            }
        }
        fresh
    }

    /// Consumes every envelope.
    pub fn consume_all<'a>(&mut self, events: impl IntoIterator<Item = &'a Value>) {
        for e in events {
            self.consume(e);
        }
    }
}

/// The cluster's objects of a kind as the agent emits them (managedFields dropped), by uid.
pub fn cluster_state(sim: &KubeSim, api_version: &str, kind: &str) -> HashMap<String, Value> {
    sim.list(api_version, kind)
        .into_iter()
        .map(|mut o| {
            if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
                m.remove("managedFields");
            }
            (o["metadata"]["uid"].as_str().unwrap().to_string(), o)
        })
        .collect()
}

impl Agent {
    /// The ops server's address, from the agent's log line.
    pub async fn ops_addr(&self) -> String {
        let deadline = tokio::time::Instant::now() + SOON;
        loop {
            let log = self.stderr();
            if let Some(line) = log.lines().find(|l| l.contains("ops server listening")) {
                let addr = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("addr="))
                    .expect("addr field");
                return addr.to_string();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no ops server line:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the agent's log contains `needle`.
    pub async fn wait_log(&self, needle: &str) {
        let deadline = tokio::time::Instant::now() + SOON;
        while !self.stderr().contains(needle) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no `{needle}` in:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// GET a path on the ops server: (status, body).
    pub async fn ops_get(&self, path: &str) -> (u16, String) {
        let url = format!("http://{}{path}", self.ops_addr().await);
        let resp = reqwest::get(&url).await.expect("ops server answers");
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap())
    }

    /// Polls `/readyz` until it answers `want` (200 or 503); returns the body.
    pub async fn wait_ready(&self, want: u16, within: Duration) -> String {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let (status, body) = self.ops_get("/readyz").await;
            if status == want {
                return body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "/readyz stayed {status} (wanted {want}): {body}\nlog:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Parses Prometheus text into `(name{labels}, value)` rows, skipping comments.
pub fn parse_metrics(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').expect("sample line");
            (k.to_string(), v.parse::<f64>().expect("numeric value"))
        })
        .collect()
}

/// The value of the sample whose name and labels contain every fragment.
pub fn metric(rows: &[(String, f64)], fragments: &[&str]) -> Option<f64> {
    rows.iter()
        .find(|(k, _)| fragments.iter().all(|f| k.contains(f)))
        .map(|(_, v)| *v)
}

/// The sum of every sample whose name and labels contain every fragment (a counter split by
/// a label, e.g. `lookout_watch_restarts_total{reason}`).
pub fn metric_sum(rows: &[(String, f64)], fragments: &[&str]) -> f64 {
    rows.iter()
        .filter(|(k, _)| fragments.iter().all(|f| k.contains(f)))
        .map(|(_, v)| *v)
        .sum()
}

/// Requests that listed the collection at `path` from scratch: a first list page (no
/// `continue`), or a streaming list (a watch with `sendInitialEvents=true`).
pub fn initial_lists(log: &[kubesim::RequestRecord], path: &str) -> usize {
    log.iter()
        .filter(|r| r.path == path)
        .filter(|r| {
            (r.verb == "list" && r.param("continue").is_none())
                || (r.watch && r.param("sendInitialEvents") == Some("true"))
        })
        .count()
}

/// `config` with `initialList: <mode>` on every resource (written by [`stdout_config`]).
pub fn with_initial_list(config: &str, mode: &str) -> String {
    config.replace(
        "    kind: ",
        &format!(
            "    initialList: {mode}
    kind: "
        ),
    )
}

/// The envelopes a file sink wrote so far.
pub fn read_jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| checked(serde_json::from_str(l).expect("JSON line")))
        .collect()
}

/// Waits until the envelopes the file sink at `path` wrote satisfy `done`; returns them all.
pub async fn wait_jsonl_until(
    path: &Path,
    what: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + SOON;
    loop {
        let got = read_jsonl(path);
        if done(&got) {
            return got;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}: no {what} within {SOON:?}: {got:#?}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The envelopes before the first one about the object named `name`, checking it is there.
pub fn before_marker<'a>(events: &'a [Value], name: &str) -> &'a [Value] {
    let at = events
        .iter()
        .position(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("no envelope for {name}: {events:#?}"));
    &events[..at]
}

/// Waits until the file sink at `path` wrote an envelope about the object named `marker`
/// (a barrier change made after everything under test); returns the envelopes before it.
pub async fn until_marker(path: &Path, marker: &str) -> Vec<Value> {
    let all = wait_jsonl_until(path, marker, |es| es.iter().any(|e| e["name"] == marker)).await;
    before_marker(&all, marker).to_vec()
}

/// Waits until the file sink at `path` holds at least `n` envelopes; returns them all.
pub async fn wait_jsonl(path: &Path, n: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + SOON;
    loop {
        let got = read_jsonl(path);
        if got.len() >= n {
            return got;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} has {} envelopes, wanted {n}: {got:#?}",
            path.display(),
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
