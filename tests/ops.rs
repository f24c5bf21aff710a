//! The ops server: Prometheus metrics that move, and readiness that tells the truth.

mod common;

use common::*;
use serde_json::json;

#[tokio::test]
async fn metrics_are_served_and_move_with_the_pipeline() {
    let sim = sim().await;
    let mut agent = Agent::start(&sim, &stdout_config(&[("v1", "ConfigMap")])).await;
    sim.create(
        "v1",
        "ConfigMap",
        configmap("default", "a", json!({"v": "1"})),
    )
    .unwrap();
    agent.next().await;
    sim.merge_patch(
        "v1",
        "ConfigMap",
        Some("default"),
        "a",
        json!({"data": {"v": "2"}}),
    )
    .unwrap();
    agent.next().await;
    let (status, body) = agent.ops_get("/metrics").await;
    assert_eq!(status, 200);
    let rows = parse_metrics(&body);
    let informer = "informer=\"v1/ConfigMap\"";
    assert_eq!(
        metric(
            &rows,
            &[
                "lookout_events_observed_total",
                "kind=\"ConfigMap\"",
                "op=\"add\""
            ]
        ),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        metric(&rows, &["lookout_events_observed_total", "op=\"update\""]),
        Some(1.0)
    );
    assert_eq!(
        metric(&rows, &["lookout_events_emitted_total", "sink=\"out\""]),
        Some(2.0)
    );
    assert_eq!(
        metric(&rows, &["lookout_cached_objects", informer]),
        Some(1.0)
    );
    assert_eq!(
        metric(&rows, &["lookout_informer_synced", informer]),
        Some(1.0)
    );
    assert_eq!(
        metric(&rows, &["lookout_relists_total", informer]),
        Some(0.0)
    );
    assert_eq!(
        metric(&rows, &["lookout_sink_queue_depth", "sink=\"out\""]),
        Some(0.0)
    );
    assert_eq!(
        metric(
            &rows,
            &["lookout_delivery_latency_seconds_count", "sink=\"out\""]
        ),
        Some(2.0)
    );
    let since = metric(&rows, &["lookout_seconds_since_last_watch_event", informer]).unwrap();
    assert!((0.0..5.0).contains(&since), "{since}");
    for family in [
        "lookout_watch_restarts_total",
        "lookout_sink_errors_total",
        "lookout_sink_retries_total",
        "lookout_sink_dead_letters_total",
        "lookout_sink_coalesced_total",
        "lookout_watch_events_received_total",
    ] {
        assert!(
            metric(&rows, &[family]).is_some(),
            "{family} missing:\n{body}"
        );
    }
    // A dropped watch shows up as a restart.
    sim.drop_watches();
    sim.merge_patch(
        "v1",
        "ConfigMap",
        Some("default"),
        "a",
        json!({"data": {"v": "3"}}),
    )
    .unwrap();
    agent.next().await;
    let rows = parse_metrics(&agent.ops_get("/metrics").await.1);
    assert!(metric_sum(&rows, &["lookout_watch_restarts_total", informer]) >= 1.0);
    assert_eq!(agent.ops_get("/healthz").await.0, 200);
}

#[tokio::test]
async fn readiness_goes_false_when_the_api_server_goes_quiet_and_recovers() {
    let sim = sim().await;
    let config = format!(
        "{}  readiness:\n    maxSilence: 3s\n",
        stdout_config(&[("v1", "ConfigMap")])
    );
    let agent = Agent::start(&sim, &config).await;
    agent.wait_ready(200, SOON).await;
    // The watch dies and the API server hangs every new request: no events, no bookmarks.
    sim.stop_answering();
    sim.drop_watches();
    let body = agent.wait_ready(503, SOON).await;
    assert!(
        body.contains("informer v1/ConfigMap has heard nothing from the API server"),
        "{body}"
    );
    sim.resume_answering();
    agent.wait_ready(200, SOON).await;
}
