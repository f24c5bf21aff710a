//! Durable change capture: restarts, crashes and re-lists against the delivered state, with
//! the real binary, real signals and kubesim over HTTP.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::*;
use rand::{Rng, SeedableRng};
use serde_json::json;

const CM: &[(&str, &str)] = &[("v1", "ConfigMap")];

#[tokio::test]
async fn a_clean_restart_of_an_idle_cluster_emits_nothing() {
    let sim = sim().await;
    for i in 0..5 {
        sim.create(
            "v1",
            "ConfigMap",
            configmap("default", &format!("c{i}"), json!({"i": i.to_string()})),
        )
        .unwrap();
    }
    let state = tempfile::tempdir().unwrap();
    let config = stdout_config_with_state(CM, state.path());
    let mut agent = Agent::start(&sim, &config).await;
    let first = agent.take(5).await;
    assert!(
        first
            .iter()
            .all(|e| e["op"] == "add" && e["initialList"] == true)
    );
    let (status, _, log) = agent.terminate().await;
    assert!(status.success(), "{log}");

    let mut again = Agent::start(&sim, &config).await;
    again.wait_ready(200, SOON).await;
    again.expect_nothing_more(&sim).await;
    assert!(
        again.stderr().contains("resuming from delivered state"),
        "{}",
        again.stderr()
    );
    let (status, rest, log) = again.terminate().await;
    assert!(status.success() && rest.is_empty(), "{rest:?} {log}");
}

#[tokio::test]
async fn a_restart_emits_exactly_the_changes_made_while_stopped() {
    let sim = sim().await;
    for i in 0..6 {
        sim.create(
            "v1",
            "ConfigMap",
            configmap("default", &format!("c{i}"), json!({"v": "0"})),
        )
        .unwrap();
    }
    let state = tempfile::tempdir().unwrap();
    let config = stdout_config_with_state(CM, state.path());
    let mut agent = Agent::start(&sim, &config).await;
    let mut replay = Replay::default();
    replay.apply_all(&agent.take(6).await);
    let (status, _, _) = agent.terminate().await;
    assert!(status.success());

    // While stopped: N = 2 adds, M = 3 updates (one object twice: still one change to
    // deliver), K = 2 deletes, and one object untouched.
    sim.create(
        "v1",
        "ConfigMap",
        configmap("default", "n1", json!({"v": "new"})),
    )
    .unwrap();
    sim.create(
        "v1",
        "ConfigMap",
        configmap("default", "n2", json!({"v": "new"})),
    )
    .unwrap();
    for name in ["c0", "c1", "c2"] {
        sim.merge_patch(
            "v1",
            "ConfigMap",
            Some("default"),
            name,
            json!({"data": {"v": "1"}}),
        )
        .unwrap();
    }
    sim.merge_patch(
        "v1",
        "ConfigMap",
        Some("default"),
        "c0",
        json!({"data": {"w": "2"}}),
    )
    .unwrap();
    sim.delete("v1", "ConfigMap", Some("default"), "c3")
        .unwrap();
    sim.delete("v1", "ConfigMap", Some("default"), "c4")
        .unwrap();

    let mut again = Agent::start(&sim, &config).await;
    let events = again.take(7).await;
    let barrier = again.expect_nothing_more(&sim).await;
    replay.apply_all(&events);
    let mut summary: Vec<String> = events
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e["op"].as_str().unwrap(),
                e["name"].as_str().unwrap()
            )
        })
        .collect();
    summary.sort();
    assert_eq!(
        summary,
        vec![
            "add n1",
            "add n2",
            "delete c3",
            "delete c4",
            "update c0",
            "update c1",
            "update c2"
        ]
    );
    for e in &events {
        match e["op"].as_str().unwrap() {
            "add" => assert!(e.get("initialList").is_none(), "created while away: {e}"),
            "delete" => assert_eq!(e["finalStateUnknown"], true, "{e}"),
            _ => {}
        }
    }
    replay.apply(&barrier);
    assert_eq!(replay.objects, cluster_state(&sim, "v1", "ConfigMap"));
    again.terminate().await;
}

/// What the crash test knows about the changes delivered so far.
#[derive(Default)]
struct Deliveries {
    consumer: AtLeastOnce,
    /// The newest resourceVersion delivered per uid (what a re-send may repeat).
    newest: HashMap<String, String>,
    /// Per round: duplicates received.
    duplicates_per_round: Vec<usize>,
}

impl Deliveries {
    /// Takes one envelope received in `round`; `resent` collects the uids re-sent in it.
    fn take(&mut self, e: &serde_json::Value, round: usize, resent: &mut HashSet<String>) {
        let uid = e["uid"].as_str().unwrap().to_string();
        let rv = e["resourceVersion"].as_str().unwrap().to_string();
        if self.duplicates_per_round.len() <= round {
            self.duplicates_per_round.resize(round + 1, 0);
        }
        if !self.consumer.consume(e) {
            // A re-send is of the newest change delivered for the object (its state was
            // not yet recorded as acknowledged), never of an older, acknowledged one...
            assert_eq!(
                self.newest.get(&uid),
                Some(&rv),
                "round {round}: re-sent an older change than the newest delivered: {e}"
            );
            // ... and at most once per object per restart.
            assert!(
                resent.insert(uid.clone()),
                "round {round}: {uid} re-sent twice after one restart: {e}"
            );
            self.duplicates_per_round[round] += 1;
        }
        self.newest.insert(uid, rv);
    }
}

#[tokio::test]
async fn sigkill_at_random_points_loses_nothing_and_resends_only_unacknowledged_changes() {
    let sim = sim().await;
    let state = tempfile::tempdir().unwrap();
    let config = stdout_config_with_state(CM, state.path());
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let mut d = Deliveries::default();
    let mut next_id = 0u32;
    let rounds = 6;
    for round in 0..rounds {
        let mut resent = HashSet::new();
        let mut agent = Agent::start(&sim, &config).await;
        // Churn for a random while, then SIGKILL without warning.
        let changes = rng.random_range(20..80);
        for _ in 0..changes {
            let live = sim.list("v1", "ConfigMap");
            let pick = rng.random_range(0..10);
            if live.len() < 3 || pick < 3 {
                next_id += 1;
                sim.create(
                    "v1",
                    "ConfigMap",
                    configmap("default", &format!("o{next_id}"), json!({"v": "0"})),
                )
                .unwrap();
            } else {
                let victim = live[rng.random_range(0..live.len())]["metadata"]["name"]
                    .as_str()
                    .unwrap()
                    .to_string();
                if pick < 5 {
                    sim.delete("v1", "ConfigMap", Some("default"), &victim)
                        .unwrap();
                } else {
                    let v: u32 = rng.random();
                    sim.merge_patch(
                        "v1",
                        "ConfigMap",
                        Some("default"),
                        &victim,
                        json!({"data": {"v": v.to_string()}}),
                    )
                    .unwrap();
                }
            }
            // Random pauses place the kill at random points of the agent's work; they are
            // the scenario, not a wait for anything.
            if rng.random_range(0..4) == 0 {
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..20))).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..300))).await;
        signal(agent.child.id().unwrap() as i32, libc::SIGKILL);
        let _ = agent.child.wait().await;
        // The process is dead: its stdout ends, and everything it wrote is read here.
        while let Some(e) = agent.try_next(SOON).await {
            d.take(&e, round, &mut resent);
        }
    }
    // A final, undisturbed run catches up with everything not yet acknowledged: once it has
    // synced, whatever it re-sends comes out before a barrier change made after that.
    let mut resent = HashSet::new();
    let mut agent = Agent::start(&sim, &config).await;
    agent.wait_ready(200, SOON).await;
    for e in agent.until_barrier(&sim).await {
        d.take(&e, rounds, &mut resent);
    }
    let want = cluster_state(&sim, "v1", "ConfigMap");
    // Zero lost: the output, replayed, is the cluster, object for object.
    assert_eq!(
        d.consumer
            .objects
            .keys()
            .collect::<std::collections::BTreeSet<_>>(),
        want.keys().collect(),
        "objects after replay vs cluster"
    );
    assert_eq!(
        d.consumer.objects, want,
        "replaying the sink output reconstructs the cluster"
    );
    // Bounded duplicates: at most one re-send per object per restart (asserted per
    // envelope above), so never more than the objects there are.
    let objects_ever = next_id as usize;
    for (round, dups) in d.duplicates_per_round.iter().enumerate() {
        assert!(
            *dups <= objects_ever,
            "round {round}: {dups} re-sends for {objects_ever} objects"
        );
    }
    eprintln!(
        "crash test: {} events delivered, {} duplicates (at-least-once re-sends) per round {:?}",
        d.consumer.total, d.consumer.duplicates, d.duplicates_per_round
    );
    agent.terminate().await;
}

#[tokio::test]
async fn a_corrupt_state_directory_exits_2_until_reset() {
    let sim = sim().await;
    let state = tempfile::tempdir().unwrap();
    std::fs::write(
        state.path().join("delivered.redb"),
        b"garbage, not a database",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    sim.write_kubeconfig(&kubeconfig).unwrap();
    let config = dir.path().join("c.yaml");
    std::fs::write(&config, stdout_config_with_state(CM, state.path())).unwrap();
    let out = tokio::process::Command::new(lookout_bin())
        .args(["run", "--config"])
        .arg(&config)
        .env("KUBECONFIG", &kubeconfig)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--reset-state") && stderr.contains("delivered.redb"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(state.path().join("delivered.redb")).unwrap(),
        b"garbage, not a database"
    );

    sim.create("v1", "ConfigMap", configmap("default", "x", json!({})))
        .unwrap();
    let mut child = tokio::process::Command::new(lookout_bin())
        .args(["run", "--reset-state", "--config"])
        .arg(&config)
        .env("KUBECONFIG", &kubeconfig)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(SOON, lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let event = checked(serde_json::from_str(&line).expect("an envelope"));
    assert_eq!(event["op"], "add", "{line}");
    signal(child.id().unwrap() as i32, libc::SIGTERM);
    assert!(child.wait().await.unwrap().success());
}
