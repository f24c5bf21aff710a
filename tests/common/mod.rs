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

    /// Asserts that no envelope arrives for `quiet`.
    pub async fn expect_quiet(&mut self, quiet: Duration) {
        if let Ok(Some(v)) = tokio::time::timeout(quiet, self.events.recv()).await {
            panic!("unexpected event: {v}");
        }
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
        assert_eq!(
            e["object"]["metadata"]["resourceVersion"], e["resourceVersion"],
            "resourceVersion field: {e}"
        );
        match e["op"].as_str().unwrap() {
            "add" => {
                assert!(e.get("patch").is_none(), "adds carry no patch: {e}");
                self.objects.insert(uid, e["object"].clone());
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

/// The Kubernetes fixtures directory, if present on this machine.
pub fn fixtures_dir() -> Option<PathBuf> {
    let candidates = [
        std::env::var("K8S_FIXTURES").ok().map(PathBuf::from),
        Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/k8s-api-testdata")),
        Some(PathBuf::from("/work/shared/fixtures/k8s-api-testdata")),
    ];
    candidates.into_iter().flatten().find(|p| p.is_dir())
}

/// As [`stdout_config`], remembering delivered state in `state_dir`.
pub fn stdout_config_with_state(resources: &[(&str, &str)], state_dir: &Path) -> String {
    format!(
        "{}state:\n  dir: {}\nshutdown:\n  gracePeriod: 5s\n",
        stdout_config(resources),
        state_dir.display()
    )
}

/// Applies an envelope the way an at-least-once consumer does: by `uid`, keeping the newest
/// `resourceVersion`; returns false for a duplicate (a `uid` + `resourceVersion` seen before).
pub fn consume_at_least_once(
    state: &mut HashMap<String, Value>,
    seen: &mut std::collections::HashSet<(String, String)>,
    e: &Value,
) -> bool {
    let uid = e["uid"].as_str().unwrap().to_string();
    let rv = e["resourceVersion"].as_str().unwrap().to_string();
    let fresh = seen.insert((uid.clone(), rv));
    match e["op"].as_str().unwrap() {
        "delete" => {
            state.remove(&uid);
        }
        _ => {
            state.insert(uid, e["object"].clone());
        }
    }
    fresh
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
