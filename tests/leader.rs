//! Leader election on a Lease served by kubesim: two agents, one forwards; kill the leader and
//! the standby takes over within the lease duration, from the shared delivered state.

mod common;

use std::collections::{HashMap, HashSet};
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

async fn wait_log(agent: &Agent, needle: &str) {
    let deadline = tokio::time::Instant::now() + SOON;
    while !agent.stderr().contains(needle) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no `{needle}` in:\n{}",
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
    wait_log(&a, "acquired the lease").await;
    let b = Agent::start_with_env(
        &sim,
        &cfg,
        &[
            ("POD_NAME", "agent-b"),
            ("SINK_PATH", b_out.to_str().unwrap()),
        ],
    )
    .await;
    wait_log(&b, "standing by").await;

    for i in 0..3 {
        sim.create(
            "v1",
            "ConfigMap",
            configmap("default", &format!("c{i}"), json!({"v": "0"})),
        )
        .unwrap();
    }
    wait_jsonl(&a_out, 3).await;
    // Let the leader record its acknowledgements, and the standby see everything (warm).
    tokio::time::sleep(Duration::from_millis(700)).await;
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
    tokio::time::sleep(Duration::from_millis(500)).await;
    let b_events = read_jsonl(&b_out);
    assert_eq!(
        b_events.len(),
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
    let (mut consumer, mut seen) = (HashMap::new(), HashSet::new());
    for e in read_jsonl(&a_out).iter().chain(b_events.iter()) {
        consume_at_least_once(&mut consumer, &mut seen, e);
    }
    assert_eq!(consumer, cluster_state(&sim, "v1", "ConfigMap"));
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
