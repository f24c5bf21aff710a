//! Fault injection against the whole agent: API-server faults during churn, and a sink that
//! is down for a long time. `LOOKOUT_SOAK_SECS` lengthens the outage (`make soak` uses 60 s).

mod common;

#[allow(dead_code)]
#[path = "../src/sinks/webhook/tests/receiver.rs"]
mod receiver;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use kubesim::Faults;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

/// One random change to the ConfigMaps in `default`.
fn churn_step(sim: &kubesim::KubeSim, rng: &mut rand::rngs::StdRng, next_id: &mut u32) {
    let live = sim.list("v1", "ConfigMap");
    let pick = rng.random_range(0..10);
    if live.len() < 5 || pick < 2 {
        *next_id += 1;
        let _ = sim.create(
            "v1",
            "ConfigMap",
            configmap("default", &format!("o{next_id}"), json!({"v": "0"})),
        );
    } else {
        let victim = live[rng.random_range(0..live.len())]["metadata"]["name"]
            .as_str()
            .unwrap()
            .to_string();
        if pick < 3 {
            let _ = sim.delete("v1", "ConfigMap", Some("default"), &victim);
        } else {
            let v: u32 = rng.random();
            let _ = sim.merge_patch(
                "v1",
                "ConfigMap",
                Some("default"),
                &victim,
                json!({"data": {"v": v.to_string()}}),
            );
        }
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_faults_during_churn_lose_no_change_and_invent_none() {
    let sim = sim().await;
    let mut agent = Agent::start(&sim, &stdout_config(&[("v1", "ConfigMap")])).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut next_id = 0;
    let mut replay = Replay::default();
    let mut events = Vec::new();
    // Each phase: some churn under one fault, then the fault clears.
    for phase in 0..6 {
        match phase {
            0 => sim.drop_watches(),
            1 => {
                sim.drop_watches();
                sim.compact();
            }
            2 => sim.set_faults(Faults::fail(0.4)),
            3 => sim.set_faults(Faults::throttle(0.5, 1)),
            4 => sim.restart(true).await.unwrap(),
            _ => {
                sim.stop_answering();
                sim.drop_watches();
            }
        }
        for _ in 0..40 {
            churn_step(&sim, &mut rng, &mut next_id);
            if rng.random_range(0..5) == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        if phase == 5 {
            sim.compact();
            sim.resume_answering();
        }
        sim.clear_faults();
        while let Some(e) = agent.try_next(Duration::from_millis(300)).await {
            events.push(e);
        }
    }
    let want = cluster_state(&sim, "v1", "ConfigMap");
    let deadline = tokio::time::Instant::now() + SOON;
    loop {
        while let Some(e) = agent.try_next(Duration::from_millis(300)).await {
            events.push(e);
        }
        let mut consumer = AtLeastOnce::default();
        consumer.consume_all(&events);
        if consumer.objects == want || tokio::time::Instant::now() > deadline {
            assert_eq!(
                consumer.objects, want,
                "replaying the output reconstructs the cluster"
            );
            break;
        }
    }
    // No duplicates and no empty updates in one uninterrupted run; every patch replays.
    let mut seen = HashSet::new();
    for e in &events {
        assert!(
            seen.insert((
                e["uid"].to_string(),
                e["resourceVersion"].to_string(),
                e["op"].to_string()
            )),
            "duplicate: {e}"
        );
        if e["op"] == "update" {
            let patch = e["patch"].as_array().unwrap();
            assert!(
                patch
                    .iter()
                    .any(|op| op["path"] != "/metadata/resourceVersion"),
                "spurious update: {e}"
            );
        }
    }
    replay.apply_all(&events);
    agent.expect_nothing_more(&sim).await;
    let rows = parse_metrics(&agent.ops_get("/metrics").await.1);
    let relists = metric(&rows, &["lookout_relists_total"]).unwrap();
    let restarts = metric_sum(&rows, &["lookout_watch_restarts_total"]);
    eprintln!(
        "faults: {} events, {relists} re-lists, {restarts} watch restarts",
        events.len()
    );
    assert!(
        relists >= 1.0 && restarts >= 3.0,
        "the faults really hit: {relists} {restarts}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_down_for_a_long_time_keeps_memory_bounded_and_delivers_every_final_state() {
    let outage = Duration::from_secs(
        std::env::var("LOOKOUT_SOAK_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(12),
    );
    let sim = sim().await;
    for i in 0..50 {
        sim.create(
            "v1",
            "ConfigMap",
            configmap("default", &format!("c{i}"), json!({"v": "0"})),
        )
        .unwrap();
    }
    let down = Arc::new(AtomicBool::new(false));
    let flag = down.clone();
    let mut rx = receiver::Receiver::start(Arc::new(move |_| {
        if flag.load(Ordering::SeqCst) {
            (hyper::StatusCode::SERVICE_UNAVAILABLE, Vec::new())
        } else {
            (hyper::StatusCode::OK, Vec::new())
        }
    }))
    .await;
    let config = format!(
        "cluster: test\nresources:\n  - apiVersion: v1\n    kind: ConfigMap\n\
         sinks:\n  - name: hook\n    type: webhook\n    url: {}\n    queueCapacity: 100\n    \
         batch: {{maxEvents: 50, maxWait: 50ms}}\n\
         server:\n  listen: 127.0.0.1:0\n",
        rx.url("http")
    );
    let agent = Agent::start(&sim, &config).await;
    let mut got: Vec<Value> = Vec::new();
    let drain = |rx: &mut receiver::Receiver, got: &mut Vec<Value>| {
        while let Ok(r) = rx.requests.try_recv() {
            if r.status == hyper::StatusCode::OK {
                match r.json() {
                    Value::Array(items) => got.extend(items.into_iter().map(checked)),
                    one => got.push(checked(one)),
                }
            }
        }
    };
    let deadline = tokio::time::Instant::now() + SOON;
    while got.len() < 50 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "initial list not delivered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        drain(&mut rx, &mut got);
    }

    down.store(true, Ordering::SeqCst);
    let pid = agent.child.id().unwrap();
    let rss_before = rss_kib(pid);
    let mut rss_peak = rss_before;
    let started = tokio::time::Instant::now();
    let mut changes = 0u64;
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    // Many changes to the same 50 objects: far more changes than the queue holds.
    while started.elapsed() < outage {
        for _ in 0..200 {
            let i = rng.random_range(0..50);
            let v: u64 = rng.random();
            sim.merge_patch(
                "v1",
                "ConfigMap",
                Some("default"),
                &format!("c{i}"),
                json!({"data": {"v": v.to_string(), "pad": "x".repeat(512)}}),
            )
            .unwrap();
            changes += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        rss_peak = rss_peak.max(rss_kib(pid));
        drain(&mut rx, &mut got);
    }
    let rows = parse_metrics(&agent.ops_get("/metrics").await.1);
    let coalesced = metric(&rows, &["lookout_sink_coalesced_total", "sink=\"hook\""]).unwrap();
    let depth = metric(&rows, &["lookout_sink_queue_depth", "sink=\"hook\""]).unwrap();
    let relists = metric(&rows, &["lookout_relists_total"]).unwrap();
    assert_eq!(
        agent.ops_get("/readyz").await.0,
        503,
        "a failing sink is not ready"
    );
    down.store(false, Ordering::SeqCst);

    let want = cluster_state(&sim, "v1", "ConfigMap");
    // Retries back off up to 30 s, so recovery may take that long after the receiver is back.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        drain(&mut rx, &mut got);
        let mut consumer = AtLeastOnce::default();
        consumer.consume_all(&got);
        if consumer.objects == want {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "final states not delivered after the outage"
        );
    }
    agent.wait_ready(200, SOON).await;
    let growth = rss_peak.saturating_sub(rss_before);
    eprintln!(
        "sink outage {outage:?}: {changes} changes, {coalesced} coalesced, {relists} re-lists, queue depth {depth}, \
         RSS {rss_before} KiB → peak {rss_peak} KiB (+{growth} KiB), {} events delivered",
        got.len()
    );
    assert!(depth <= 150.0, "queue bounded: {depth}");
    assert!(coalesced > 0.0);
    // The queue holds at most ~capacity entries whatever the number of changes: memory must
    // not grow with the number of changes (each change here carries ~0.5 KB).
    assert!(
        growth < 64 * 1024,
        "RSS grew by {growth} KiB during the outage"
    );
}
