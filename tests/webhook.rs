//! End to end through the webhook sink: kubesim over real HTTP → `lookout run` (a real
//! process) → webhook sink → a signed-request receiver on loopback.

mod common;

#[allow(dead_code)]
#[path = "../src/sinks/webhook/tests/receiver.rs"]
mod receiver;

use std::time::{Duration, SystemTime};

use common::*;
use lookout::sinks::webhook::verify;
use serde_json::{Value, json};

#[tokio::test]
async fn kubesim_changes_arrive_at_the_webhook_receiver_signed_and_replayable() {
    let sim = sim().await;
    sim.create(
        "v1",
        "ConfigMap",
        configmap("default", "a", json!({"k": "1"})),
    )
    .unwrap();
    let mut rx = receiver::Receiver::start(receiver::ok()).await;
    let config = format!(
        "cluster: test\nresources:\n  - apiVersion: v1\n    kind: ConfigMap\n\
         sinks:\n  - name: hook\n    type: webhook\n    url: {}\n    \
         secret: {{valueFrom: {{env: HOOK_SECRET}}}}\n    \
         batch: {{maxEvents: 10, maxWait: 100ms}}\n\
         server:\n  listen: 127.0.0.1:0\n",
        rx.url("http")
    );
    let agent = Agent::start_with_env(&sim, &config, &[("HOOK_SECRET", "e2e-secret")]).await;

    let mut replay = Replay::default();
    let mut events = receive(&mut rx, &agent, 1).await;
    sim.merge_patch(
        "v1",
        "ConfigMap",
        Some("default"),
        "a",
        json!({"data": {"k": "2"}}),
    )
    .unwrap();
    sim.create("v1", "ConfigMap", configmap("default", "b", json!({})))
        .unwrap();
    sim.delete("v1", "ConfigMap", Some("default"), "a").unwrap();
    events.extend(receive(&mut rx, &agent, 3).await);

    replay.apply_all(&events);
    let ops: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e["op"].as_str().unwrap(), e["name"].as_str().unwrap()))
        .collect();
    assert_eq!(
        ops,
        vec![("add", "a"), ("update", "a"), ("add", "b"), ("delete", "a")]
    );
    assert_eq!(events[0]["initialList"], true);
}

/// The next `n` envelopes, checking each request's signature and content type.
async fn receive(rx: &mut receiver::Receiver, agent: &Agent, n: usize) -> Vec<Value> {
    let mut events = Vec::new();
    while events.len() < n {
        let r = tokio::time::timeout(SOON, rx.requests.recv())
            .await
            .unwrap_or_else(|_| panic!("no request in time; log:\n{}", agent.stderr()))
            .expect("receiver alive");
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        verify(
            b"e2e-secret",
            r.header("x-lookout-timestamp").expect("timestamp"),
            r.header("x-lookout-signature").expect("signature"),
            &r.body,
            now,
            Duration::from_secs(300),
        )
        .expect("the signature verifies");
        assert_eq!(r.header("content-type"), Some("application/json"));
        let batch = r.json().as_array().expect("batches are arrays").clone();
        events.extend(batch.into_iter().map(checked));
    }
    events
}
