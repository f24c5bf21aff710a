//! The delivery spine end to end, with the real binary, real signals, kubesim over HTTP and
//! webhook receivers on loopback: nothing lost to routes across a crash, a shutdown that
//! always ends, a leader that stops forwarding when its API server stops answering, and a
//! takeover that waits (bounded) for a state directory still held by the previous leader.

mod common;
#[path = "support/hook.rs"]
mod hook;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use hook::{Hook, Mode};
use serde_json::{Value, json};

/// Waits until `hook` took in an envelope for which `want` holds; returns it.
async fn wait_hook(hook: &Hook, agent: &Agent, what: &str, want: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + SOON;
    loop {
        if let Some(e) = hook.received().into_iter().find(|e| want(e)) {
            return e;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the webhook never got {what}; it got {:#?}\nlog:\n{}",
            hook.received(),
            agent.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the agent has seen `n` changes of `op` (its `events_observed` counter).
async fn wait_observed(agent: &Agent, op: &str, n: f64) {
    let deadline = tokio::time::Instant::now() + SOON;
    loop {
        let rows = parse_metrics(&agent.ops_get("/metrics").await.1);
        let seen = metric(
            &rows,
            &["lookout_events_observed_total", &format!("op=\"{op}\"")],
        );
        if seen.is_some_and(|v| v >= n) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the agent saw {seen:?} {op}s, wanted {n}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn kill(agent: &mut Agent) {
    signal(agent.child.id().unwrap() as i32, libc::SIGKILL);
}

fn mode_route_config(state: &Path, hook: &Hook, lake: Option<&Path>) -> String {
    let lake_sink = lake
        .map(|p| {
            format!(
                "  - name: lake\n    type: file\n    path: {}\n",
                p.display()
            )
        })
        .unwrap_or_default();
    let lake_route = lake
        .map(|_| "  - name: everything\n    sinks: [lake]\n".to_string())
        .unwrap_or_default();
    format!(
        "cluster: test
resources:
  - apiVersion: v1
    kind: ConfigMap
sinks:
{lake_sink}  - name: hook
    type: webhook
    url: {url}
    batch: {{maxEvents: 1}}
routes:
{lake_route}  - name: mode-changes
    changed: [/data/mode]
    sinks: [hook]
state:
  dir: {state}
shutdown:
  gracePeriod: 1s
server:
  listen: 127.0.0.1:0
",
        url = hook.url(),
        state = state.display(),
    )
}

fn is_mode(e: &Value, name: &str, mode: &str) -> bool {
    e["name"] == name && e["object"]["data"]["mode"] == mode && e["op"] != "delete"
}

async fn patch(sim: &kubesim::KubeSim, name: &str, data: Value) {
    sim.merge_patch(
        "v1",
        "ConfigMap",
        Some("default"),
        name,
        json!({"data": data}),
    )
    .unwrap();
}

/// The crash scenarios: a ConfigMap whose `/data/mode` change is owed to a webhook
/// (route `changed: [/data/mode]`) that answers 503; then (in each test) another change of
/// the object; SIGKILL; the webhook back up; a restart.
struct OwedModeChange {
    /// The cluster.
    sim: kubesim::KubeSim,
    /// The webhook that owes the mode change.
    hook: Hook,
    /// The state directory, kept across the restart.
    _state: tempfile::TempDir,
    /// The agent's config.
    config: String,
}

impl OwedModeChange {
    async fn new(lake: Option<&Path>) -> (OwedModeChange, Agent) {
        let sim = sim().await;
        let hook = Hook::start().await;
        let state = tempfile::tempdir().unwrap();
        let config = mode_route_config(state.path(), &hook, lake);
        sim.create(
            "v1",
            "ConfigMap",
            configmap("default", "app", json!({"mode": "a", "other": "1"})),
        )
        .unwrap();
        let agent = Agent::start(&sim, &config).await;
        wait_hook(&hook, &agent, "the add", |e| is_mode(e, "app", "a")).await;
        hook.set(Mode::Unavailable).await;
        patch(&sim, "app", json!({"mode": "b"})).await;
        let s = OwedModeChange {
            sim,
            hook,
            _state: state,
            config,
        };
        (s, agent)
    }

    /// SIGKILL (after giving an agent that records a change too early the time to do so), the
    /// webhook back up, a restart: the webhook must get the mode change.
    async fn crash_and_restart(&self, mut agent: Agent) -> Agent {
        tokio::time::sleep(Duration::from_millis(500)).await;
        kill(&mut agent);
        let _ = agent.child.wait().await;
        self.hook.set(Mode::Up).await;
        let again = Agent::start(&self.sim, &self.config).await;
        let e = wait_hook(&self.hook, &again, "the mode change", |e| {
            is_mode(e, "app", "b")
        })
        .await;
        assert_eq!(e["op"], "update", "{e}");
        again
    }
}

#[tokio::test]
async fn a_change_owed_to_a_down_webhook_survives_a_later_change_routed_nowhere_and_a_sigkill() {
    let (s, agent) = OwedModeChange::new(None).await;
    // The mode change is owed to the webhook, which keeps answering 503.
    let tried = s.hook.requests();
    let deadline = tokio::time::Instant::now() + SOON;
    while s.hook.requests() == tried {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the webhook was never tried"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A change no route wants.
    patch(&s.sim, "app", json!({"other": "2"})).await;
    wait_observed(&agent, "update", 2.0).await;
    let again = s.crash_and_restart(agent).await;
    let (status, _, log) = again.terminate().await;
    assert!(status.success(), "{log}");
}

#[tokio::test]
async fn a_change_owed_to_a_down_webhook_survives_another_sink_acknowledging_a_later_change_and_a_sigkill()
 {
    let out = tempfile::tempdir().unwrap();
    let lake = out.path().join("lake.jsonl");
    let (s, agent) = OwedModeChange::new(Some(&lake)).await;
    wait_jsonl(&lake, 2).await;
    // The lake acknowledges a later change of the same object; the webhook still owes the
    // mode change.
    patch(&s.sim, "app", json!({"other": "2"})).await;
    wait_jsonl(&lake, 3).await;
    let again = s.crash_and_restart(agent).await;
    let (status, _, log) = again.terminate().await;
    assert!(status.success(), "{log}");
    // The lake had everything: at most re-sent, never missing.
    let last = read_jsonl(&lake).pop().unwrap();
    assert_eq!(last["object"]["data"], json!({"mode": "b", "other": "2"}));
}

/// A ConfigMap `ghost` forwarded to a webhook, one event per request, by an agent with a state
/// directory: the scenarios of a delete made while the agent was down after a SIGKILL.
struct Ghost {
    sim: kubesim::KubeSim,
    hook: Hook,
    /// The state directory, kept across the restart.
    _state: tempfile::TempDir,
    config: String,
}

impl Ghost {
    /// The cluster, the webhook (up) and an agent forwarding; `ghost` does not exist yet.
    async fn start() -> (Ghost, Agent) {
        let sim = sim().await;
        let hook = Hook::start().await;
        let state = tempfile::tempdir().unwrap();
        let config = format!(
            "cluster: test\nresources:\n  - apiVersion: v1\n    kind: ConfigMap\n\
             sinks:\n  - name: hook\n    type: webhook\n    url: {}\n    batch: {{maxEvents: 1}}\n\
             state:\n  dir: {}\nserver:\n  listen: 127.0.0.1:0\n",
            hook.url(),
            state.path().display()
        );
        let agent = Agent::start(&sim, &config).await;
        agent.wait_log("watching; forwarding changes").await;
        let g = Ghost {
            sim,
            hook,
            _state: state,
            config,
        };
        (g, agent)
    }

    /// Creates `ghost` and waits until the webhook took its add in; its uid.
    async fn create(&self, agent: &Agent) -> String {
        let created = self
            .sim
            .create(
                "v1",
                "ConfigMap",
                configmap("default", "ghost", json!({"v": "1"})),
            )
            .unwrap();
        let uid = created["metadata"]["uid"].as_str().unwrap().to_string();
        wait_hook(&self.hook, agent, "the add", |e| e["uid"] == uid.as_str()).await;
        uid
    }

    /// SIGKILL; `ghost` deleted while the agent is down; the webhook up; a restart. Returns
    /// the new agent and the delete the webhook got.
    async fn kill_delete_restart(&self, mut agent: Agent, uid: &str) -> (Agent, Value) {
        kill(&mut agent);
        let _ = agent.child.wait().await;
        self.sim
            .delete("v1", "ConfigMap", Some("default"), "ghost")
            .unwrap();
        self.hook.set(Mode::Up).await;
        let again = Agent::start(&self.sim, &self.config).await;
        let e = wait_hook(&self.hook, &again, "the delete", |e| {
            e["uid"] == uid && e["op"] == "delete"
        })
        .await;
        assert_eq!(e["finalStateUnknown"], true, "{e}");
        assert_eq!(e["name"], "ghost");
        (again, e)
    }
}

#[tokio::test]
async fn a_change_the_sink_got_just_before_a_crash_is_followed_by_the_delete_made_while_the_agent_was_down()
 {
    let (g, agent) = Ghost::start().await;
    // The receiver takes the add in, but the agent never hears back: it cannot know.
    g.hook.set(Mode::Swallow).await;
    let uid = g.create(&agent).await;
    let (again, _) = g.kill_delete_restart(agent, &uid).await;
    let (status, _, log) = again.terminate().await;
    assert!(status.success(), "{log}");
}

/// The crash test's rare failure, made certain: the sink acknowledged the add (its base), took
/// in an update whose acknowledgement never came, and the object was deleted while the agent
/// was down. The inferred delete must carry a resourceVersion newer than the update's, or a
/// consumer ordering by resourceVersion drops it and keeps the object for ever.
#[tokio::test]
async fn a_delete_made_while_the_agent_was_down_is_newer_than_the_update_in_flight_at_the_crash() {
    let (g, agent) = Ghost::start().await;
    let uid = g.create(&agent).await;
    // The acknowledged add becomes the sink's base on disk (the scenario's pause).
    tokio::time::sleep(Duration::from_millis(500)).await;
    g.hook.set(Mode::Swallow).await;
    patch(&g.sim, "ghost", json!({"v": "2"})).await;
    let update = wait_hook(&g.hook, &agent, "the update", |e| e["op"] == "update").await;
    let (again, delete) = g.kill_delete_restart(agent, &uid).await;
    let rv = |e: &Value| {
        e["resourceVersion"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    assert!(
        rv(&delete) > rv(&update),
        "the delete ({delete}) is not newer than the update in flight ({update})"
    );
    // A consumer applying changes by resourceVersion ends with the object gone.
    let mut consumer = AtLeastOnce::default();
    consumer.consume_all(&g.hook.received());
    assert!(consumer.objects.is_empty(), "{:?}", consumer.objects);
    let (status, _, log) = again.terminate().await;
    assert!(status.success(), "{log}");
}

#[tokio::test]
async fn sigterm_with_a_dead_webhook_and_a_full_queue_exits_0_within_the_grace_period() {
    let sim = sim().await;
    let hook = Hook::start().await;
    let state = tempfile::tempdir().unwrap();
    let grace = Duration::from_secs(3);
    let config = format!(
        "cluster: test\nresources:\n  - apiVersion: v1\n    kind: ConfigMap\n\
         sinks:\n  - name: hook\n    type: webhook\n    url: {}\n    queueCapacity: 5\n    \
         batch: {{maxEvents: 1}}\n\
         state:\n  dir: {}\nshutdown:\n  gracePeriod: 3s\nserver:\n  listen: 127.0.0.1:0\n",
        hook.url(),
        state.path().display()
    );
    let mut agent = Agent::start(&sim, &config).await;
    agent.wait_log("watching; forwarding changes").await;
    // Dead: it accepts connections and never answers.
    hook.set(Mode::Swallow).await;
    for i in 0..30 {
        sim.create(
            "v1",
            "ConfigMap",
            configmap("default", &format!("c{i}"), json!({"i": i.to_string()})),
        )
        .unwrap();
    }
    // The queue is full and the informer waits for room.
    let deadline = tokio::time::Instant::now() + SOON;
    loop {
        let rows = parse_metrics(&agent.ops_get("/metrics").await.1);
        if metric(&rows, &["lookout_sink_queue_depth", "sink=\"hook\""]) == Some(5.0) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "queue never filled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = Instant::now();
    signal(agent.child.id().unwrap() as i32, libc::SIGTERM);
    let status = tokio::time::timeout(Duration::from_secs(20), agent.child.wait())
        .await
        .unwrap_or_else(|_| panic!("still running 20 s after SIGTERM:\n{}", agent.stderr()))
        .unwrap();
    let took = started.elapsed();
    eprintln!("SIGTERM with a dead webhook and a full queue: exited {status} after {took:?}");
    assert!(status.success(), "{status}\n{}", agent.stderr());
    assert!(
        took <= grace + Duration::from_secs(2),
        "shutdown took {took:?} (grace {grace:?})\n{}",
        agent.stderr()
    );
    assert!(
        agent.stderr().contains("grace period over"),
        "{}",
        agent.stderr()
    );
}

fn leader_config(state: &Path, lake: &Path) -> String {
    format!(
        "cluster: test
resources:
  - apiVersion: v1
    kind: ConfigMap
sinks:
  - name: lake
    type: file
    path: {lake}
state:
  dir: {state}
leaderElection:
  enabled: true
  leaseName: lookout-spine
  leaseNamespace: default
  leaseDuration: 3s
  renewDeadline: 2s
  retryPeriod: 500ms
shutdown:
  gracePeriod: 1s
server:
  listen: 127.0.0.1:0
",
        lake = lake.display(),
        state = state.display()
    )
}

fn lease_holder(sim: &kubesim::KubeSim) -> Value {
    sim.get(
        "coordination.k8s.io/v1",
        "Lease",
        Some("default"),
        "lookout-spine",
    )
    .map(|l| l["spec"]["holderIdentity"].clone())
    .unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_api_server_stops_answering_stops_forwarding_within_the_renew_deadline() {
    let sim = sim().await;
    let state = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let lake = out.path().join("lake.jsonl");
    let renew_deadline = Duration::from_secs(2);
    let mut agent = Agent::start_with_env(
        &sim,
        &leader_config(state.path(), &lake),
        &[("POD_NAME", "agent-a")],
    )
    .await;
    agent.wait_log("acquired the lease").await;
    sim.create("v1", "ConfigMap", configmap("default", "before", json!({})))
        .unwrap();
    wait_jsonl(&lake, 1).await;

    // New requests hang; the open watch keeps streaming, so a leader that does not notice
    // keeps forwarding.
    sim.stop_answering();
    let stopped = Instant::now();
    let mut created = Vec::new();
    let exit = loop {
        if let Some(status) = agent.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            stopped.elapsed() < renew_deadline + Duration::from_secs(8),
            "still running {:?} after the API server stopped answering:\n{}",
            stopped.elapsed(),
            agent.stderr()
        );
        let name = format!("late-{}", created.len());
        sim.create("v1", "ConfigMap", configmap("default", &name, json!({})))
            .unwrap();
        created.push((name, stopped.elapsed()));
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let exited_after = stopped.elapsed();
    sim.resume_answering();
    assert_eq!(exit.code(), Some(1), "{}", agent.stderr());
    assert!(
        agent.stderr().contains("could not renew the lease in time"),
        "{}",
        agent.stderr()
    );
    // Whatever was forwarded was created before the deadline (plus the time a change takes
    // from the watch to the file).
    let delivered: Vec<String> = read_jsonl(&lake)
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect();
    let last = created
        .iter()
        .filter(|(n, _)| delivered.contains(n))
        .map(|(_, at)| *at)
        .max();
    eprintln!(
        "API server stopped answering: {} changes made, last forwarded one made {last:?} after, \
         exit 1 after {exited_after:?}",
        created.len()
    );
    assert!(
        last.is_none_or(|at| at <= renew_deadline + Duration::from_millis(300)),
        "forwarded a change made {last:?} after the API server stopped answering"
    );
    assert!(
        exited_after <= renew_deadline + Duration::from_secs(3),
        "exited after {exited_after:?}"
    );
}

/// A replica about to lead while the state directory is held (the previous leader, still
/// letting go of it): the store opened by this test process.
struct HeldState {
    /// The cluster (one ConfigMap, `c0`).
    sim: kubesim::KubeSim,
    /// The store, held open.
    held: lookout::state::StateStore,
    /// The new leader.
    agent: Agent,
    /// Its file sink.
    lake: std::path::PathBuf,
    /// The state and output directories.
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

impl HeldState {
    async fn start(identity: &str) -> HeldState {
        let sim = sim().await;
        let state = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        let lake = out.path().join("lake.jsonl");
        let held = lookout::state::StateStore::open(state.path(), false).unwrap();
        sim.create("v1", "ConfigMap", configmap("default", "c0", json!({})))
            .unwrap();
        let agent = Agent::start_with_env(
            &sim,
            &leader_config(state.path(), &lake),
            &[("POD_NAME", identity)],
        )
        .await;
        HeldState {
            sim,
            held,
            agent,
            lake,
            _dirs: (state, out),
        }
    }
}

#[tokio::test]
async fn a_new_leader_waits_for_a_state_directory_still_held_and_takes_over_once_it_is_free() {
    let HeldState {
        sim: _sim,
        held,
        agent,
        lake,
        _dirs,
    } = HeldState::start("agent-b").await;
    agent.wait_log("the state directory is still locked").await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        read_jsonl(&lake).is_empty(),
        "nothing forwarded while waiting"
    );
    drop(held);
    wait_jsonl(&lake, 1).await;
    let log = agent.stderr();
    assert!(
        log.contains("state directory released; taking over"),
        "{log}"
    );
    assert_eq!(
        log.matches("the state directory is still locked").count(),
        1,
        "said once, no spinning: {log}"
    );
    let (status, _, log) = agent.terminate().await;
    assert!(status.success(), "{log}");
}

#[tokio::test]
async fn a_new_leader_gives_the_lease_up_when_the_state_directory_stays_held() {
    let HeldState {
        sim,
        held: _held,
        mut agent,
        lake,
        _dirs,
    } = HeldState::start("agent-c").await;
    agent.wait_log("acquired the lease").await;
    let acquired = Instant::now();
    let status = tokio::time::timeout(SOON, agent.child.wait())
        .await
        .expect("exits once the bound is over")
        .unwrap();
    let took = acquired.elapsed();
    assert_eq!(status.code(), Some(1), "{}", agent.stderr());
    // The bound is the lease duration (3 s).
    assert!(
        took >= Duration::from_millis(2500) && took <= Duration::from_secs(6),
        "{took:?}"
    );
    assert!(
        agent.stderr().contains("still locked after"),
        "{}",
        agent.stderr()
    );
    assert_eq!(lease_holder(&sim), Value::Null, "the lease was given up");
    assert!(read_jsonl(&lake).is_empty());
}
