//! A randomized fault model of the whole agent: seeded and reproducible. Each seed drives the
//! real `lookout` binary against kubesim through random creates, updates and deletes of 30
//! objects of two kinds (ConfigMap and a Widget CRD in three namespaces), a random route set
//! (kinds, ops, `changed`, namespace include/exclude, sometimes a drop route) over a file sink
//! and one or two webhook receivers that go down (503, a closed port, or taking requests in
//! without ever answering) and come back, with
//! random SIGKILLs, SIGTERMs, restarts, and 410 re-lists (kubesim compaction).
//!
//! The oracle is written here, independently of the agent (routes are evaluated again from
//! the test's own model). After quiescence, for every sink and object:
//! - every envelope is a real state of the object (uid, resourceVersion and data as written),
//!   every update's patch turns its `old` into its `object`, and nothing reaches a sink whose
//!   routes can never select the object;
//! - the last state the sink received is the last state its routes select: exactly, for the
//!   changes made after the last disruption (the last start of the agent); for older changes,
//!   which a restart or a re-list judges as one change from what the sink held, in everything
//!   the routes look at (the whole object when a route takes every update, the `changed`
//!   paths otherwise);
//! - deletes are seen: a sink whose routes take deletes ends with the delete of every object
//!   it got and that is gone, and a sink whose routes do not never gets one.
//!
//! Seeds: `LOOKOUT_FAULT_SEED=<n>` runs one, `LOOKOUT_FAULT_SEEDS=<count>` or `<a>..<b>`
//! chooses the set (default 1..=24; `make soak` runs 200), `LOOKOUT_FAULT_JOBS` how many run at
//! once (default 2). A failing seed is printed with the command that replays it. Duplicates
//! (at-least-once re-sends) are counted and reported.

mod common;
#[path = "support/hook.rs"]
mod hook;

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Agent, signal};
use futures::StreamExt;
use hook::{Hook, Mode};
use kubesim::{KindSpec, KubeSim, SimConfig};
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

const NAMESPACES: [&str; 3] = ["ns-a", "ns-b", "ns-c"];
const KINDS: [(&str, &str); 2] = [("v1", "ConfigMap"), ("example.com/v1", "Widget")];
const OBJECTS: usize = 30;
const MODES: [&str; 2] = ["a", "b"];
const COLORS: [&str; 3] = ["red", "green", "blue"];
/// How long a seed may take to reach quiescence once the faults are over (sink retries back
/// off up to 30 s, but outages here are short).
const QUIESCENCE: Duration = Duration::from_secs(60);

/// One object of the model.
#[derive(Debug, Clone)]
struct Spec {
    api_version: &'static str,
    kind: &'static str,
    ns: &'static str,
    name: String,
}

/// One state an object had (`state: None`: deleted), and when the test wrote it.
#[derive(Debug, Clone)]
struct Version {
    state: Option<Value>,
    /// For a delete: the object as the API server deleted it (what a watch's DELETED event
    /// carries).
    gone: Option<Value>,
    at: Instant,
}

/// A route of the model (the test's own reading of the config it writes).
#[derive(Debug, Clone, Default)]
struct RouteSpec {
    drop: bool,
    kinds: Vec<&'static str>,
    ops: Vec<&'static str>,
    changed: Vec<&'static str>,
    include: Vec<&'static str>,
    exclude: Vec<&'static str>,
    sinks: Vec<usize>,
}

impl RouteSpec {
    fn matches_static(&self, kind: &str, ns: &str, op: &str) -> bool {
        (self.kinds.is_empty() || self.kinds.contains(&kind))
            && (self.include.is_empty() || self.include.contains(&ns))
            && !self.exclude.contains(&ns)
            && (self.ops.is_empty() || self.ops.contains(&op))
    }

    fn matches(&self, kind: &str, ns: &str, op: &str, prev: &Value, next: &Value) -> bool {
        if !self.matches_static(kind, ns, op) {
            return false;
        }
        op != "update"
            || self.changed.is_empty()
            || self
                .changed
                .iter()
                .any(|p| prev.pointer(p) != next.pointer(p))
    }

    fn yaml(&self, i: usize, sinks: &[String]) -> String {
        let list = |v: &[&str]| format!("[{}]", v.join(", "));
        let mut s = format!("  - name: r{i}\n");
        if self.drop {
            s.push_str("    drop: true\n");
        } else {
            let names: Vec<&str> = self.sinks.iter().map(|&k| sinks[k].as_str()).collect();
            let _ = writeln!(s, "    sinks: {}", list(&names));
        }
        if !self.kinds.is_empty() {
            let _ = writeln!(s, "    kinds: {}", list(&self.kinds));
        }
        if !self.ops.is_empty() {
            let _ = writeln!(s, "    ops: {}", list(&self.ops));
        }
        if !self.changed.is_empty() {
            let _ = writeln!(s, "    changed: {}", list(&self.changed));
        }
        if !self.include.is_empty() || !self.exclude.is_empty() {
            let _ = writeln!(
                s,
                "    namespaces: {{include: {}, exclude: {}}}",
                list(&self.include),
                list(&self.exclude)
            );
        }
        s
    }
}

/// The routes, as the agent is configured with them.
#[derive(Debug, Clone)]
struct Routes {
    routes: Vec<RouteSpec>,
    sinks: usize,
}

impl Routes {
    /// Does sink `s` get the change `prev` → `next` of an object of `kind` in `ns`?
    fn selects(
        &self,
        s: usize,
        kind: &str,
        ns: &str,
        prev: Option<&Value>,
        next: Option<&Value>,
    ) -> bool {
        let (op, p, n) = match (prev, next) {
            (None, Some(n)) => ("add", &Value::Null, n),
            (Some(p), Some(n)) => ("update", p, n),
            (Some(p), None) => ("delete", p, p),
            (None, None) => return false,
        };
        if self.routes.is_empty() {
            return true;
        }
        if self
            .routes
            .iter()
            .any(|r| r.drop && r.matches(kind, ns, op, p, n))
        {
            return false;
        }
        self.routes
            .iter()
            .any(|r| !r.drop && r.sinks.contains(&s) && r.matches(kind, ns, op, p, n))
    }

    /// Could sink `s` ever get any change of an object of `kind` in `ns`?
    fn ever(&self, s: usize, kind: &str, ns: &str, op: &str) -> bool {
        if self.routes.is_empty() {
            return true;
        }
        // Drop routes here have no ops or `changed`: they drop every change they match.
        if self
            .routes
            .iter()
            .any(|r| r.drop && r.matches_static(kind, ns, op))
        {
            return false;
        }
        self.routes
            .iter()
            .any(|r| !r.drop && r.sinks.contains(&s) && r.matches_static(kind, ns, op))
    }

    /// For updates of `kind` in `ns` to sink `s`: `None` when no route takes updates, `Some(
    /// None)` when one takes every update, else the union of the `changed` paths.
    fn watched(&self, s: usize, kind: &str, ns: &str) -> Option<Option<Vec<&'static str>>> {
        if !self.ever(s, kind, ns, "update") {
            return None;
        }
        if self.routes.is_empty() {
            return Some(None);
        }
        let mut paths = Vec::new();
        for r in self
            .routes
            .iter()
            .filter(|r| !r.drop && r.sinks.contains(&s) && r.matches_static(kind, ns, "update"))
        {
            if r.changed.is_empty() {
                return Some(None);
            }
            paths.extend(r.changed.iter().copied());
        }
        Some(Some(paths))
    }
}

fn random_routes(rng: &mut StdRng, sinks: usize) -> Routes {
    if rng.random_bool(0.15) {
        return Routes {
            routes: Vec::new(),
            sinks,
        };
    }
    let mut routes = Vec::new();
    if rng.random_bool(0.3) {
        routes.push(RouteSpec {
            drop: true,
            kinds: vec![KINDS.choose(rng).unwrap().1],
            include: vec![*NAMESPACES.choose(rng).unwrap()],
            ..RouteSpec::default()
        });
    }
    for s in 0..sinks {
        if s == 0 && rng.random_bool(0.5) {
            routes.push(RouteSpec {
                sinks: vec![0],
                ..RouteSpec::default()
            });
            continue;
        }
        for _ in 0..rng.random_range(1..=2) {
            let mut r = RouteSpec {
                sinks: vec![s],
                ..RouteSpec::default()
            };
            if rng.random_bool(0.6) {
                r.kinds = vec![KINDS.choose(rng).unwrap().1];
            }
            if rng.random_bool(0.5) {
                let all = ["add", "update", "delete"];
                r.ops = all
                    .iter()
                    .copied()
                    .filter(|_| rng.random_bool(0.6))
                    .collect();
                if r.ops.is_empty() {
                    r.ops = vec![*all.choose(rng).unwrap()];
                }
            }
            r.changed = match rng.random_range(0..4) {
                0 => vec!["/data/mode"],
                1 => vec!["/data/mode", "/data/color"],
                2 => vec!["/data/color"],
                _ => Vec::new(),
            };
            if rng.random_bool(0.4) {
                let mut ns = NAMESPACES.to_vec();
                ns.shuffle(rng);
                r.include = ns[..rng.random_range(1..=2)].to_vec();
            } else if rng.random_bool(0.3) {
                r.exclude = vec![*NAMESPACES.choose(rng).unwrap()];
            }
            // Another sink now and then on the same route.
            if sinks > 1 && rng.random_bool(0.2) {
                let other = (s + 1) % sinks;
                r.sinks.push(other);
            }
            routes.push(r);
        }
    }
    Routes { routes, sinks }
}

/// The outcome of one seed.
#[derive(Debug, Default)]
struct Tally {
    events: usize,
    duplicates: usize,
    kills: usize,
    terms: usize,
    relists: usize,
    outages: usize,
    writes: usize,
}

/// One seed's world: the cluster, the sinks, the agent, and the history of every object.
struct World {
    seed: u64,
    rng: StdRng,
    sim: KubeSim,
    specs: Vec<Spec>,
    history: Vec<Vec<Version>>,
    hooks: Vec<Hook>,
    lake: PathBuf,
    _state: tempfile::TempDir,
    _out: tempfile::TempDir,
    routes: Routes,
    config: String,
    agent: Option<Agent>,
    /// The logs of the agents that ran before the current one, for a failure report.
    logs: String,
    /// The last start of the agent that began forwarding (the last disruption).
    live_since: Instant,
    tally: Tally,
}

impl World {
    async fn new(seed: u64) -> World {
        let mut rng = StdRng::seed_from_u64(seed);
        let sim = KubeSim::start(SimConfig {
            extra_kinds: vec![KindSpec::new("example.com", "v1", "Widget", true)],
            ..SimConfig::default()
        })
        .await
        .expect("kubesim starts");
        for ns in NAMESPACES {
            sim.create(
                "v1",
                "Namespace",
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
            )
            .unwrap();
        }
        let specs = (0..OBJECTS)
            .map(|i| {
                let (api_version, kind) = KINDS[i % 2];
                Spec {
                    api_version,
                    kind,
                    ns: NAMESPACES[(i / 2) % 3],
                    name: format!("o{i}"),
                }
            })
            .collect();
        let sinks = rng.random_range(2..=3);
        let mut hooks = Vec::new();
        for _ in 1..sinks {
            hooks.push(Hook::start().await);
        }
        let routes = random_routes(&mut rng, sinks);
        let out = tempfile::tempdir().unwrap();
        let lake = out.path().join("lake.jsonl");
        let state = tempfile::tempdir().unwrap();
        let mut names = vec!["lake".to_string()];
        names.extend((1..sinks).map(|i| format!("hook{i}")));
        let mut config = format!(
            "cluster: model\nresources:\n  - apiVersion: v1\n    kind: ConfigMap\n  \
             - apiVersion: example.com/v1\n    kind: Widget\n\
             transforms:\n  includeOld: true\n\
             sinks:\n  - name: lake\n    type: file\n    path: {}\n    queueCapacity: {}\n",
            lake.display(),
            [5, 50, 1000].choose(&mut rng).unwrap()
        );
        for (i, h) in hooks.iter().enumerate() {
            let _ = write!(
                config,
                "  - name: hook{}\n    type: webhook\n    url: {}\n    timeout: 2s\n    \
                 queueCapacity: {}\n    batch: {{maxEvents: {}}}\n",
                i + 1,
                h.url(),
                [4, 20, 1000].choose(&mut rng).unwrap(),
                [1, 10].choose(&mut rng).unwrap()
            );
        }
        if !routes.routes.is_empty() {
            config.push_str("routes:\n");
            for (i, r) in routes.routes.iter().enumerate() {
                config.push_str(&r.yaml(i, &names));
            }
        }
        let _ = write!(
            config,
            "state:\n  dir: {}\nshutdown:\n  gracePeriod: 1s\nserver:\n  listen: 127.0.0.1:0\n",
            state.path().display()
        );
        World {
            seed,
            rng,
            sim,
            specs,
            history: vec![Vec::new(); OBJECTS],
            hooks,
            lake,
            _state: state,
            _out: out,
            routes,
            config,
            agent: None,
            logs: String::new(),
            live_since: Instant::now(),
            tally: Tally::default(),
        }
    }

    fn current(&self, i: usize) -> Option<&Value> {
        self.history[i].last().and_then(|v| v.state.as_ref())
    }

    /// One random write to one random object; the state it leaves is recorded.
    fn write(&mut self) {
        let i = self.rng.random_range(0..OBJECTS);
        let spec = self.specs[i].clone();
        let mut gone = None;
        let state = match self.current(i).cloned() {
            None => {
                let obj = json!({"apiVersion": spec.api_version, "kind": spec.kind,
                    "metadata": {"name": spec.name, "namespace": spec.ns},
                    "data": {"mode": *MODES.choose(&mut self.rng).unwrap(),
                        "color": *COLORS.choose(&mut self.rng).unwrap(),
                        "n": self.rng.random::<u32>().to_string()}});
                Some(self.sim.create(spec.api_version, spec.kind, obj).unwrap())
            }
            Some(_) if self.rng.random_bool(0.2) => {
                gone = Some(strip(
                    self.sim
                        .delete(spec.api_version, spec.kind, Some(spec.ns), &spec.name)
                        .unwrap(),
                ));
                None
            }
            Some(cur) => {
                let data = &cur["data"];
                let patch = match self.rng.random_range(0..10) {
                    0..4 => {
                        let mode = if data["mode"] == "a" { "b" } else { "a" };
                        json!({"data": {"mode": mode}})
                    }
                    4..7 => {
                        let others: Vec<&str> = COLORS
                            .iter()
                            .copied()
                            .filter(|c| data["color"] != *c)
                            .collect();
                        json!({"data": {"color": *others.choose(&mut self.rng).unwrap()}})
                    }
                    _ => json!({"data": {"n": self.rng.random::<u32>().to_string()}}),
                };
                Some(
                    self.sim
                        .merge_patch(
                            spec.api_version,
                            spec.kind,
                            Some(spec.ns),
                            &spec.name,
                            patch,
                        )
                        .unwrap(),
                )
            }
        };
        self.history[i].push(Version {
            state: state.map(strip),
            gone,
            at: Instant::now(),
        });
        self.tally.writes += 1;
    }

    async fn churn(&mut self, n: usize) {
        for _ in 0..n {
            self.write();
            if self.rng.random_bool(0.2) {
                tokio::time::sleep(Duration::from_millis(self.rng.random_range(0..20))).await;
            }
        }
    }

    /// Starts the agent and waits until it is up (its signal handlers are installed); it may
    /// still be comparing its caches with the delivered state, waiting for a sink that is down.
    async fn start(&mut self) {
        let agent = Agent::start(&self.sim, &self.config).await;
        self.agent = Some(agent);
        self.wait_log("ops server listening").await;
    }

    async fn wait_log(&self, needle: &str) {
        self.agent.as_ref().expect("running").wait_log(needle).await;
    }

    /// Waits until the running agent forwards (its start-up comparison is done): the last
    /// disruption.
    async fn wait_live(&mut self) {
        self.wait_log("watching; forwarding changes").await;
        self.live_since = Instant::now();
    }

    async fn kill(&mut self) {
        if let Some(mut agent) = self.agent.take() {
            signal(agent.child.id().unwrap() as i32, libc::SIGKILL);
            let _ = agent.child.wait().await;
            self.tally.kills += 1;
            let _ = write!(self.logs, "{}\n===== SIGKILL =====\n", agent.stderr());
        }
    }

    async fn terminate(&mut self) {
        if let Some(agent) = self.agent.take() {
            let (status, _, log) = agent.terminate().await;
            assert!(
                status.success(),
                "seed {}: SIGTERM did not exit 0:\n{log}",
                self.seed
            );
            self.tally.terms += 1;
            let _ = write!(self.logs, "{log}\n===== SIGTERM =====\n");
        }
    }

    /// Writes every agent's log of this seed to a file; returns its path.
    fn dump_logs(&self) -> PathBuf {
        let path = std::env::temp_dir().join(format!("lookout-fault-model-seed-{}.log", self.seed));
        let current = self.agent.as_ref().map(Agent::stderr).unwrap_or_default();
        let _ = std::fs::write(&path, format!("{}{current}", self.logs));
        path
    }

    /// The envelopes every sink has taken in so far (sink 0 is the file sink).
    fn received(&self) -> Vec<Vec<Value>> {
        let mut all = vec![read_lake(&self.lake)];
        all.extend(self.hooks.iter().map(Hook::received));
        all
    }

    async fn run(&mut self) {
        self.start().await;
        let steps = self.rng.random_range(8..=14);
        for _ in 0..steps {
            match self.rng.random_range(0..100) {
                0..40 => {
                    let n = self.rng.random_range(3..=15);
                    self.churn(n).await;
                }
                40..55 if !self.hooks.is_empty() => {
                    let h = self.rng.random_range(0..self.hooks.len());
                    let mode = match self.hooks[h].mode() {
                        Mode::Up => {
                            self.tally.outages += 1;
                            // 503; nothing listening; or taking requests in and never
                            // answering (the sender cannot know they arrived).
                            *[Mode::Unavailable, Mode::Closed, Mode::Swallow]
                                .choose(&mut self.rng)
                                .unwrap()
                        }
                        _ => Mode::Up,
                    };
                    self.hooks[h].set(mode).await;
                }
                55..70 => {
                    // SIGKILL at a random moment, the cluster changing while the agent is down;
                    // now and then during a start.
                    if self.rng.random_bool(0.25) {
                        self.kill().await;
                        self.agent = Some(Agent::start(&self.sim, &self.config).await);
                    }
                    tokio::time::sleep(Duration::from_millis(self.rng.random_range(0..300))).await;
                    self.kill().await;
                    let n = self.rng.random_range(0..=8);
                    self.churn(n).await;
                    self.start().await;
                }
                70..80 => {
                    self.terminate().await;
                    let n = self.rng.random_range(0..=8);
                    self.churn(n).await;
                    self.start().await;
                }
                80..90 => {
                    // History forgotten and watches dropped: the agent's next watch gets 410
                    // and re-lists.
                    self.sim.compact();
                    self.sim.drop_watches();
                    self.tally.relists += 1;
                }
                _ => {
                    let ms = self.rng.random_range(50..300);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
            }
        }
        // Quiescence: every receiver up, a fresh start (the last disruption), then changes
        // judged exactly, then nothing more.
        for h in &self.hooks {
            h.set(Mode::Up).await;
        }
        self.terminate().await;
        self.start().await;
        self.wait_live().await;
        let n = self.rng.random_range(10..=25);
        self.churn(n).await;
        let deadline = Instant::now() + QUIESCENCE;
        loop {
            let received = self.received();
            match check(self, &received) {
                Ok(dups) => {
                    self.tally.events = received.iter().map(Vec::len).sum();
                    self.tally.duplicates = dups;
                    break;
                }
                Err(why) if Instant::now() > deadline => {
                    let logs = self.dump_logs();
                    panic!(
                        "fault model seed {seed} failed: {why}\n\nroutes:\n{routes:#?}\n\nconfig:\n{config}\n\
                         every agent's log: {logs}\n\
                         replay with: LOOKOUT_FAULT_SEED={seed} cargo nextest run -p lookout --test fault_model",
                        seed = self.seed,
                        routes = self.routes.routes,
                        config = self.config,
                        logs = logs.display(),
                    );
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        self.terminate().await;
    }
}

/// An object as the agent emits it (managedFields dropped).
fn strip(mut obj: Value) -> Value {
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("managedFields");
    }
    obj
}

/// The file sink's envelopes; a line torn by a SIGKILL mid-write is skipped.
fn read_lake(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .map(common::checked)
        .collect()
}

/// Equal but for `metadata.resourceVersion` (which the agent ignores when diffing).
fn same_content(a: &Value, b: &Value) -> bool {
    let without_rv = |v: &Value| {
        let mut v = v.clone();
        if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("resourceVersion");
        }
        v
    };
    without_rv(a) == without_rv(b)
}

fn uid(v: &Value) -> &str {
    v["metadata"]["uid"].as_str().unwrap_or_default()
}

fn rv(v: &Value) -> &str {
    v["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or_default()
}

/// The oracle (see the module docs). Ok: the number of duplicates (a `uid` +
/// `resourceVersion` + op a sink had already received).
fn check(w: &World, received: &[Vec<Value>]) -> Result<usize, String> {
    let index: HashMap<(&str, &str, &str), usize> = w
        .specs
        .iter()
        .enumerate()
        .map(|(i, s)| ((s.kind, s.ns, s.name.as_str()), i))
        .collect();
    let mut duplicates = 0;
    for (s, events) in received.iter().enumerate() {
        let mut seen = HashSet::new();
        let mut by_object: Vec<Vec<&Value>> = vec![Vec::new(); OBJECTS];
        for e in events {
            let key = (
                e["kind"].as_str().unwrap_or_default(),
                e["namespace"].as_str().unwrap_or_default(),
                e["name"].as_str().unwrap_or_default(),
            );
            let Some(&i) = index.get(&key) else {
                return Err(format!(
                    "sink {s} got an envelope of an unknown object: {e}"
                ));
            };
            let spec = &w.specs[i];
            let op = e["op"].as_str().unwrap_or_default();
            if !w.routes.ever(s, spec.kind, spec.ns, op) {
                return Err(format!("sink {s}'s routes never select this {op}: {e}"));
            }
            real_state(&w.history[i], e).map_err(|why| format!("sink {s}: {why}: {e}"))?;
            if !seen.insert((e["uid"].to_string(), e["resourceVersion"].to_string(), op)) {
                duplicates += 1;
            }
            by_object[i].push(e);
        }
        for (i, got) in by_object.iter().enumerate() {
            judge(w, s, i, got).map_err(|why| {
                format!(
                    "sink {s}, {} {}/{}: {why}\nhistory: {:#?}\nreceived: {:#?}",
                    w.specs[i].kind,
                    w.specs[i].ns,
                    w.specs[i].name,
                    w.history[i]
                        .iter()
                        .map(|v| v.state.as_ref().map(|s| (
                            uid(s).to_string(),
                            rv(s).to_string(),
                            s["data"].clone()
                        )))
                        .collect::<Vec<_>>(),
                    got.iter()
                        .map(|e| (
                            e["op"].clone(),
                            e["uid"].clone(),
                            e["resourceVersion"].clone(),
                            e["object"]["data"].clone()
                        ))
                        .collect::<Vec<_>>()
                )
            })?;
        }
    }
    Ok(duplicates)
}

/// The envelope shows a state the object really had, and its patch replays.
fn real_state(history: &[Version], e: &Value) -> Result<(), String> {
    let live: Vec<&Value> = history.iter().filter_map(|v| v.state.as_ref()).collect();
    fn find<'a>(obj: &Value, states: &[&'a Value]) -> Option<&'a Value> {
        states
            .iter()
            .find(|s| uid(s) == uid(obj) && rv(s) == rv(obj))
            .copied()
    }
    let object = &e["object"];
    let mut known = live.clone();
    if e["op"] == "delete" {
        known.extend(history.iter().filter_map(|v| v.gone.as_ref()));
    }
    let Some(state) = find(object, &known) else {
        return Err("a state the object never had".into());
    };
    // A delete re-sent from an in-flight marker carries only the identity.
    if object.get("data").is_some() && object["data"] != state["data"] {
        return Err("data differs from the state with that resourceVersion".into());
    }
    if e["uid"] != object["metadata"]["uid"] {
        return Err("envelope uid differs from its object's".into());
    }
    if e["finalStateUnknown"] == true {
        // Inferred: the resourceVersion it was found gone at, newer than every state it had.
        let num = |v: &str| v.parse::<u64>().ok();
        let newest = live
            .iter()
            .filter(|s| uid(s) == uid(object))
            .filter_map(|s| num(rv(s)))
            .max();
        if e["resourceVersion"].as_str().and_then(num) <= newest {
            return Err("an inferred delete is not newer than every state of its object".into());
        }
    } else if e["resourceVersion"] != object["metadata"]["resourceVersion"] {
        return Err("envelope resourceVersion differs from its object's".into());
    }
    if e["op"] == "update" {
        let old = &e["old"];
        if find(old, &live).is_none() {
            return Err("`old` is not a state the object had".into());
        }
        let patch: json_patch::Patch = serde_json::from_value(e["patch"].clone())
            .map_err(|err| format!("patch is not RFC 6902: {err}"))?;
        let mut doc = old.clone();
        json_patch::patch(&mut doc, &patch)
            .map_err(|err| format!("patch does not apply: {err}"))?;
        if doc != *object {
            return Err("patch applied to `old` is not `object`".into());
        }
    }
    Ok(())
}

/// The last state sink `s` received of object `i` is the last state its routes select.
fn judge(w: &World, s: usize, i: usize, got: &[&Value]) -> Result<(), String> {
    let spec = &w.specs[i];
    let (kind, ns) = (spec.kind, spec.ns);
    let history = &w.history[i];
    // Each incarnation (uid) of the object, with its versions in order.
    let mut uids: Vec<(String, Vec<&Version>)> = Vec::new();
    let mut last_uid: Option<String> = None;
    for v in history {
        match &v.state {
            Some(st) => {
                let u = uid(st).to_string();
                match uids.iter_mut().find(|(x, _)| *x == u) {
                    Some((_, vs)) => vs.push(v),
                    None => uids.push((u.clone(), vec![v])),
                }
                last_uid = Some(u);
            }
            None => {
                if let Some(u) = &last_uid
                    && let Some((_, vs)) = uids.iter_mut().find(|(x, _)| x == u)
                {
                    vs.push(v);
                }
            }
        }
    }
    for (u, versions) in &uids {
        let evs: Vec<&&Value> = got.iter().filter(|e| e["uid"] == u.as_str()).collect();
        let last = evs.last();
        let final_state = versions.last().and_then(|v| v.state.as_ref());
        // Strict: the last change the routes select, judged change by change.
        let mut prev: Option<&Value> = None;
        let mut selected: Option<&Version> = None;
        for v in versions {
            if w.routes.selects(s, kind, ns, prev, v.state.as_ref()) {
                selected = Some(v);
            }
            prev = v.state.as_ref();
        }
        match final_state {
            None => {
                let deletes = w.routes.ever(s, kind, ns, "delete");
                if deletes && last.is_some_and(|e| e["op"] != "delete") {
                    return Err(format!("uid {u} is gone but its delete never came"));
                }
                if !deletes && evs.iter().any(|e| e["op"] == "delete") {
                    return Err(format!("uid {u}: a delete the routes never select"));
                }
            }
            Some(f) => {
                if last.is_some_and(|e| e["op"] == "delete") {
                    return Err(format!("uid {u} exists but the last event is a delete"));
                }
                if w.routes.ever(s, kind, ns, "add") && evs.is_empty() {
                    return Err(format!("uid {u}: the routes take adds but nothing came"));
                }
                if let Some(last) = last {
                    match w.routes.watched(s, kind, ns) {
                        // Equal but for the resourceVersion: a change undone while nobody
                        // watched leaves nothing to send (resourceVersion-only changes are
                        // no change).
                        Some(None) => {
                            let updated = versions.len() > 1;
                            if (updated || w.routes.ever(s, kind, ns, "add"))
                                && !same_content(&last["object"], f)
                            {
                                return Err(format!(
                                    "uid {u}: every update is routed here, but the last state received is {} not {}",
                                    last["resourceVersion"],
                                    rv(f)
                                ));
                            }
                        }
                        Some(Some(paths)) => {
                            for p in paths {
                                if last["object"].pointer(p) != f.pointer(p) {
                                    return Err(format!(
                                        "uid {u}: {p} is {:?} at the sink, {:?} in the cluster",
                                        last["object"].pointer(p),
                                        f.pointer(p)
                                    ));
                                }
                            }
                        }
                        None => {}
                    }
                }
            }
        }
        // Exactly, for changes made after the last disruption.
        if let Some(v) = selected
            && v.at > w.live_since
        {
            match &v.state {
                Some(st) => {
                    if last.and_then(|e| e["resourceVersion"].as_str()) != Some(rv(st)) {
                        return Err(format!(
                            "uid {u}: the last selected change (rv {}) came after the last start, \
                             but the last state received is {:?}",
                            rv(st),
                            last.map(|e| e["resourceVersion"].clone())
                        ));
                    }
                }
                // A delete: received last, or nothing of the object ever received (its add
                // and delete cancelled out in a full queue).
                None => {
                    if last.is_some_and(|e| e["op"] != "delete") {
                        return Err(format!(
                            "uid {u}: deleted after the last start, delete not received"
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

fn seeds() -> Vec<u64> {
    if let Some(one) = std::env::var("LOOKOUT_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return vec![one];
    }
    match std::env::var("LOOKOUT_FAULT_SEEDS") {
        Ok(spec) => match spec.split_once("..") {
            Some((a, b)) => {
                let (a, b): (u64, u64) = (
                    a.parse().expect("seed range"),
                    b.parse().expect("seed range"),
                );
                (a..=b).collect()
            }
            None => (1..=spec.parse::<u64>().expect("seed count")).collect(),
        },
        Err(_) => (1..=24).collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_faults_never_lose_a_change_a_route_selects_and_never_invent_one() {
    let seeds = seeds();
    let jobs: usize = std::env::var("LOOKOUT_FAULT_JOBS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let started = Instant::now();
    let runs = futures::stream::iter(seeds.clone())
        .map(|seed| async move {
            // Each seed on its own task, so one failing reports its seed and the rest go on.
            tokio::spawn(async move {
                let t = Instant::now();
                let mut w = World::new(seed).await;
                w.run().await;
                eprintln!(
                    "seed {seed}: {} sinks, {} routes, {:?}; {:?}",
                    w.routes.sinks,
                    w.routes.routes.len(),
                    t.elapsed(),
                    w.tally
                );
                w.tally
            })
            .await
            .map_err(|e| (seed, e))
        })
        .buffer_unordered(jobs.max(1))
        .collect::<Vec<_>>()
        .await;
    let mut failed = Vec::new();
    let mut total = Tally::default();
    for r in runs {
        match r {
            Ok(t) => {
                total.events += t.events;
                total.duplicates += t.duplicates;
                total.kills += t.kills;
                total.terms += t.terms;
                total.relists += t.relists;
                total.outages += t.outages;
                total.writes += t.writes;
            }
            Err((seed, e)) => {
                let why = e
                    .try_into_panic()
                    .ok()
                    .and_then(|p| {
                        p.downcast_ref::<String>()
                            .cloned()
                            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    })
                    .unwrap_or_default();
                eprintln!("{why}");
                failed.push(seed);
            }
        }
    }
    eprintln!(
        "fault model: {} seeds in {:?}: {} writes, {} envelopes delivered, {} duplicates, \
         {} SIGKILLs, {} SIGTERMs, {} re-lists, {} receiver outages",
        seeds.len(),
        started.elapsed(),
        total.writes,
        total.events,
        total.duplicates,
        total.kills,
        total.terms,
        total.relists,
        total.outages
    );
    assert!(failed.is_empty(), "failing seeds: {failed:?}");
}
