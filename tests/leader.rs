//! Leader election on a Lease served by kubesim: two agents, one forwards; kill the leader and
//! the standby takes over within the lease duration, from the shared delivered state.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

fn config(state: &std::path::Path) -> String {
    format!(
        "cluster: test
resources:
  - apiVersion: v1
    kind: ConfigMap
sinks:
  - name: lake
    type: file
    path: ${{SINK_PATH}}
state:
  dir: {}
leaderElection:
  enabled: true
  leaseName: lookout-test
  leaseNamespace: default
  leaseDuration: 3s
  renewDeadline: 2s
  retryPeriod: 500ms
server:
  listen: 127.0.0.1:0
",
        state.display()
    )
}

/// Waits until the agent's state writer logged at least `n` acknowledgements recorded.
async fn wait_recorded(agent: &Agent, n: u64) {
    let deadline = tokio::time::Instant::now() + SOON;
    loop {
        let log = agent.stderr();
        let recorded = log
            .lines()
            .filter(|l| l.contains("delivered state recorded"))
            .filter_map(|l| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix("recorded="))
                    .and_then(|v| v.parse::<u64>().ok())
            })
            .max()
            .unwrap_or(0);
        if recorded >= n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{recorded} of {n} acknowledgements recorded:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the agent's ConfigMap cache holds at least `n` objects (its metric).
async fn wait_cached(agent: &Agent, n: usize) {
    let deadline = tokio::time::Instant::now() + SOON;
    loop {
        let rows = parse_metrics(&agent.ops_get("/metrics").await.1);
        let cached = metric(&rows, &["lookout_cached_objects", "ConfigMap"]).unwrap_or(0.0);
        if cached >= n as f64 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the standby caches {cached} of {n} objects:\n{}",
            agent.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_standby_takes_over_within_the_lease_duration_and_loses_nothing() {
    let sim = sim().await;
    let state = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let (a_out, b_out) = (out.path().join("a.jsonl"), out.path().join("b.jsonl"));
    let cfg = config(state.path());
    let a = Agent::start_with_env(
        &sim,
        &cfg,
        &[
            ("POD_NAME", "agent-a"),
            ("SINK_PATH", a_out.to_str().unwrap()),
        ],
    )
    .await;
    a.wait_log("acquired the lease").await;
    let b = Agent::start_with_env(
        &sim,
        &cfg,
        &[
            ("POD_NAME", "agent-b"),
            ("SINK_PATH", b_out.to_str().unwrap()),
        ],
    )
    .await;
    b.wait_log("standing by").await;

    for i in 0..3 {
        sim.create(
            "v1",
            "ConfigMap",
            configmap("default", &format!("c{i}"), json!({"v": "0"})),
        )
        .unwrap();
    }
    wait_jsonl(&a_out, 3).await;
    // The leader has recorded its acknowledgements (the state writer logs its running
    // total), and the standby has seen every change (warm) without forwarding any.
    wait_recorded(&a, 3).await;
    wait_cached(&b, 3).await;
    assert!(read_jsonl(&b_out).is_empty(), "a standby forwards nothing");
    let lease = sim
        .get(
            "coordination.k8s.io/v1",
            "Lease",
            Some("default"),
            "lookout-test",
        )
        .unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "agent-a");

    signal(a.child.id().unwrap() as i32, libc::SIGKILL);
    let killed = Instant::now();
    sim.create(
        "v1",
        "ConfigMap",
        configmap("default", "late", json!({"v": "0"})),
    )
    .unwrap();
    sim.merge_patch(
        "v1",
        "ConfigMap",
        Some("default"),
        "c1",
        json!({"data": {"v": "1"}}),
    )
    .unwrap();
    sim.delete("v1", "ConfigMap", Some("default"), "c2")
        .unwrap();

    let taken = wait_jsonl(&b_out, 3).await;
    let takeover = killed.elapsed();
    // A barrier made after the takeover's re-sync: anything else the new leader re-sends
    // is in its file before it.
    sim.create(
        "v1",
        "ConfigMap",
        configmap("default", "zz-barrier", json!({"v": "0"})),
    )
    .unwrap();
    let b_events = wait_jsonl_until(&b_out, "barrier", |es| {
        es.iter().any(|e| e["name"] == "zz-barrier")
    })
    .await;
    assert_eq!(
        before_marker(&b_events, "zz-barrier").len(),
        3,
        "only what changed since the last acknowledgement: {b_events:#?}"
    );
    let mut ops: Vec<String> = taken
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e["op"].as_str().unwrap(),
                e["name"].as_str().unwrap()
            )
        })
        .collect();
    ops.sort();
    assert_eq!(ops, vec!["add late", "delete c2", "update c1"]);
    assert!(
        takeover < Duration::from_secs(3 + 5),
        "takeover took {takeover:?}"
    );
    let lease = sim
        .get(
            "coordination.k8s.io/v1",
            "Lease",
            Some("default"),
            "lookout-test",
        )
        .unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "agent-b");
    assert_eq!(lease["spec"]["leaseTransitions"], 1);

    // Everything A and B forwarded, replayed, is the cluster.
    let mut consumer = AtLeastOnce::default();
    consumer.consume_all(read_jsonl(&a_out).iter().chain(b_events.iter()));
    assert_eq!(consumer.objects, cluster_state(&sim, "v1", "ConfigMap"));
    eprintln!("takeover after SIGKILL of the leader: {takeover:?}");
    let (status, _, log) = b.terminate().await;
    assert!(status.success(), "{log}");
    let lease = sim
        .get(
            "coordination.k8s.io/v1",
            "Lease",
            Some("default"),
            "lookout-test",
        )
        .unwrap();
    assert!(
        lease["spec"]
            .get("holderIdentity")
            .is_none_or(|h| h.is_null()),
        "released on shutdown: {lease}"
    );
}
