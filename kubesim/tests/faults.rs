//! Fault injection, the admin paths, the request log, restarts and the load generator.

mod common;

use std::time::Duration;

use common::*;
use http_body_util::BodyExt;
use kubesim::loadgen::LoadGen;
use kubesim::{Faults, SimConfig, StopMode};
use serde_json::json;

const CMS: &str = "/api/v1/namespaces/default/configmaps";

#[tokio::test]
async fn throttling_faults_answer_429_with_retry_after_only_for_chosen_verbs() {
    let sim = start().await;
    sim.set_faults(Faults::throttle(1.0, 7).for_verbs(&["list"]));
    let r = http(&sim, "GET", CMS, None, "").await;
    assert_eq!(r.status, 429);
    assert_eq!(r.headers["retry-after"], "7");
    assert_eq!(r.json()["reason"], "TooManyRequests");
    sim.create("v1", "ConfigMap", cm("x", "default", "1"))
        .unwrap();
    assert_eq!(
        http(&sim, "GET", &format!("{CMS}/x"), None, "")
            .await
            .status,
        200,
        "get is not faulted"
    );
    sim.clear_faults();
    assert_eq!(http(&sim, "GET", CMS, None, "").await.status, 200);
}

#[tokio::test]
async fn faults_set_over_the_admin_path_fail_requests_with_500() {
    let sim = start().await;
    let r = http(
        &sim,
        "POST",
        "/_kubesim/faults",
        None,
        &json!({"error_rate": 1.0, "error_code": 500, "watch": false}).to_string(),
    )
    .await;
    assert_eq!(r.status, 200);
    let r = http(&sim, "GET", CMS, None, "").await;
    assert_eq!(
        (r.status, r.json()["reason"].as_str().unwrap()),
        (500, "InternalError")
    );
    let lines = watch_lines(&sim, &format!("{CMS}?watch=true&timeoutSeconds=1"), 1).await;
    assert!(
        lines.is_empty(),
        "watches are exempt and just time out: {lines:?}"
    );
    assert_eq!(
        http(&sim, "DELETE", "/_kubesim/faults", None, "")
            .await
            .status,
        200
    );
    assert_eq!(http(&sim, "GET", CMS, None, "").await.status, 200);
}

#[tokio::test]
async fn dropping_watches_ends_open_streams_abruptly() {
    let sim = start().await;
    let mut body = open_watch(&sim, &format!("{CMS}?watch=true")).await;
    sim.create("v1", "ConfigMap", cm("x", "default", "1"))
        .unwrap();
    assert!(
        body.frame().await.unwrap().unwrap().is_data(),
        "the watch is live"
    );
    sim.drop_watches();
    let end = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("stream ended promptly");
    assert!(
        matches!(end, Some(Err(_))),
        "an error (reset / incomplete chunked body), not a clean end: {end:?}"
    );
}

#[tokio::test]
async fn compacting_over_the_admin_path_expires_old_resource_versions() {
    let sim = start().await;
    let old = sim.current_resource_version();
    sim.create("v1", "ConfigMap", cm("x", "default", "1"))
        .unwrap();
    assert_eq!(
        http(&sim, "POST", "/_kubesim/compact", None, "")
            .await
            .status,
        200
    );
    let lines = watch_lines(&sim, &format!("{CMS}?watch=true&resourceVersion={old}"), 1).await;
    assert_eq!(lines[0]["object"]["code"], 410);
    let fresh = watch_lines(
        &sim,
        &format!(
            "{CMS}?watch=true&resourceVersion={}&timeoutSeconds=1",
            sim.current_resource_version()
        ),
        1,
    )
    .await;
    assert!(
        fresh.is_empty(),
        "current resourceVersion still watchable: {fresh:?}"
    );
}

#[tokio::test]
async fn a_hung_server_answers_once_resumed_and_a_resetting_one_closes_connections() {
    let sim = start().await;
    sim.stop_answering();
    let pending = tokio::spawn({
        let sim = sim.clone();
        async move { http(&sim, "GET", CMS, None, "").await.status }
    });
    // The request must not complete while hung; admin paths still answer.
    assert_eq!(
        http(&sim, "GET", "/_kubesim/state", None, "").await.status,
        200
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(300), async {
            while !pending.is_finished() {
                tokio::task::yield_now().await
            }
        })
        .await
        .is_err()
    );
    sim.resume_answering();
    assert_eq!(pending.await.unwrap(), 200);

    sim.stop_answering_with(StopMode::Reset);
    let (mut send, req) = connect(&sim, CMS).await;
    assert!(
        send.send_request(req).await.is_err(),
        "connection closed without an answer"
    );
    assert_eq!(
        http(&sim, "POST", "/_kubesim/resume", None, "")
            .await
            .status,
        200
    );
    assert_eq!(http(&sim, "GET", CMS, None, "").await.status, 200);
}

#[tokio::test]
async fn restart_keeps_the_port_and_optionally_the_state() {
    let sim = start().await;
    let addr = sim.addr();
    sim.create("v1", "ConfigMap", cm("kept", "default", "1"))
        .unwrap();
    sim.restart(true).await.unwrap();
    assert_eq!(sim.addr(), addr);
    assert_eq!(
        http(&sim, "GET", &format!("{CMS}/kept"), None, "")
            .await
            .status,
        200
    );
    sim.restart(false).await.unwrap();
    assert_eq!(sim.addr(), addr);
    assert_eq!(
        http(&sim, "GET", &format!("{CMS}/kept"), None, "")
            .await
            .status,
        404
    );
    assert_eq!(
        http(&sim, "GET", "/api/v1/namespaces/default", None, "")
            .await
            .status,
        200,
        "default namespaces come back"
    );
}

#[tokio::test]
async fn the_request_log_records_verbs_params_and_status_and_can_be_cleared() {
    let sim = start().await;
    http(
        &sim,
        "GET",
        &format!("{CMS}?labelSelector=app%3Dx&limit=5"),
        None,
        "",
    )
    .await;
    http(&sim, "GET", &format!("{CMS}/nope"), None, "").await;
    watch_lines(&sim, &format!("{CMS}?watch=true&timeoutSeconds=1"), 1).await;
    let log = sim.request_log();
    assert_eq!(log.len(), 3);
    assert_eq!(
        (
            log[0].verb.as_str(),
            log[0].param("labelSelector"),
            log[0].status
        ),
        ("list", Some("app=x"), 200)
    );
    assert_eq!((log[1].verb.as_str(), log[1].status), ("get", 404));
    assert!(log[2].watch && log[2].verb == "watch");
    let over_http = http(&sim, "GET", "/_kubesim/requests", None, "")
        .await
        .json();
    assert_eq!(
        over_http.as_array().unwrap().len(),
        3,
        "admin requests are logged after answering"
    );
    assert_eq!(over_http[0]["query"][0], json!(["labelSelector", "app=x"]));
    http(&sim, "DELETE", "/_kubesim/requests", None, "").await;
    assert_eq!(sim.request_log().len(), 1, "only the DELETE itself");
    sim.clear_request_log();
    assert!(sim.request_log().is_empty());
}

#[tokio::test]
async fn label_selector_watches_see_objects_enter_and_leave_the_selection() {
    let sim = start().await;
    let rv = sim.current_resource_version();
    sim.create("v1", "ConfigMap", cm("x", "default", "1"))
        .unwrap();
    sim.merge_patch(
        "v1",
        "ConfigMap",
        Some("default"),
        "x",
        json!({"metadata": {"labels": {"app": "other"}}}),
    )
    .unwrap();
    sim.merge_patch(
        "v1",
        "ConfigMap",
        Some("default"),
        "x",
        json!({"metadata": {"labels": {"app": "demo"}}}),
    )
    .unwrap();
    sim.merge_patch(
        "v1",
        "ConfigMap",
        Some("default"),
        "x",
        json!({"data": {"k": "2"}}),
    )
    .unwrap();
    let lines = watch_lines(
        &sim,
        &format!("{CMS}?watch=true&labelSelector=app%3Ddemo&resourceVersion={rv}"),
        4,
    )
    .await;
    let types: Vec<_> = lines.iter().map(|l| l["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["ADDED", "DELETED", "ADDED", "MODIFIED"]);
    assert_eq!(
        lines[1]["object"]["metadata"]["labels"]["app"], "demo",
        "DELETED carries the last matching state"
    );
}

#[tokio::test]
async fn field_selector_watches_filter_pods_by_node() {
    let sim = start().await;
    let pod = |name: &str, node: &str| json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"}, "spec": {"nodeName": node, "containers": []}});
    sim.create("v1", "Pod", pod("a", "n1")).unwrap();
    sim.create("v1", "Pod", pod("b", "n2")).unwrap();
    let lines = watch_lines(
        &sim,
        "/api/v1/watch/pods?fieldSelector=spec.nodeName%3Dn2",
        1,
    )
    .await;
    assert_eq!(lines[0]["object"]["metadata"]["name"], "b");
    let lines = watch_lines(
        &sim,
        "/api/v1/pods?watch=true&fieldSelector=metadata.name%3Da&resourceVersion=0",
        1,
    )
    .await;
    assert_eq!(lines[0]["object"]["metadata"]["name"], "a");
}

#[tokio::test]
async fn seeded_pods_are_realistic_and_deterministic_for_a_seed() {
    let a = start_with(SimConfig {
        seed_pods: 30,
        seed: 42,
        ..Default::default()
    })
    .await;
    let b = start_with(SimConfig {
        seed_pods: 30,
        seed: 42,
        ..Default::default()
    })
    .await;
    let names = |s: &kubesim::KubeSim| {
        s.list("v1", "Pod")
            .iter()
            .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&a).len(), 30);
    assert_eq!(names(&a), names(&b));
    let p = &a.list("v1", "Pod")[0];
    let size = serde_json::to_vec(p).unwrap().len();
    assert!((4000..=8192).contains(&size), "{size}");
    assert!(p["metadata"]["managedFields"].as_array().unwrap().len() >= 2);
    assert!(!a.list("v1", "Node").is_empty());
}

#[tokio::test]
async fn churn_produces_a_stream_of_changes_until_stopped() {
    let sim = start().await;
    let lg = LoadGen::seed(&sim, 20, 7, 2, 2).unwrap();
    let rv = sim.current_resource_version();
    let churn = lg.start_churn(500.0);
    let lines = watch_lines(
        &sim,
        &format!("/api/v1/pods?watch=true&resourceVersion={rv}"),
        50,
    )
    .await;
    assert!(lines.len() >= 50, "{}", lines.len());
    assert!(lines.iter().any(|l| l["type"] == "MODIFIED"));
    let made = churn.stop().await;
    assert!(made >= 50, "{made}");
    let after = sim.current_resource_version();
    tokio::task::yield_now().await;
    assert_eq!(
        sim.current_resource_version(),
        after,
        "no changes after stop"
    );
}

type Empty = http_body_util::Empty<bytes::Bytes>;

/// A raw HTTP/1 connection to the simulator, and a GET of `path` to send on it.
async fn connect(
    sim: &kubesim::KubeSim,
    path: &str,
) -> (
    hyper::client::conn::http1::SendRequest<Empty>,
    http::Request<Empty>,
) {
    let stream = tokio::net::TcpStream::connect(sim.addr()).await.unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .uri(path)
        .header("host", "x")
        .body(Empty::new())
        .unwrap();
    (send, req)
}

/// Opens a raw watch and returns its body (the caller reads frames).
async fn open_watch(sim: &kubesim::KubeSim, path: &str) -> hyper::body::Incoming {
    let (mut send, req) = connect(sim, path).await;
    send.send_request(req).await.unwrap().into_body()
}

#[tokio::test]
async fn frozen_watches_stay_open_and_silent_while_new_watches_work() {
    let sim = start().await;
    let path = format!("{CMS}?watch=true&allowWatchBookmarks=true");
    let mut body = open_watch(&sim, &path).await;
    sim.create("v1", "ConfigMap", cm("a", "default", "1"))
        .unwrap();
    assert!(
        body.frame().await.unwrap().unwrap().is_data(),
        "the watch is live"
    );
    let r = http(&sim, "POST", "/_kubesim/freeze-watches", None, "").await;
    assert_eq!(r.status, 200);
    sim.create("v1", "ConfigMap", cm("b", "default", "1"))
        .unwrap();
    // Bookmarks come every second: three seconds of nothing means frozen, not idle; and the
    // stream has not ended either (a frame or an end would complete the future).
    let frozen = tokio::time::timeout(Duration::from_secs(3), body.frame()).await;
    assert!(frozen.is_err(), "a frozen watch sends nothing: {frozen:?}");
    let fresh = watch_lines(&sim, &format!("{CMS}?watch=true&resourceVersion=0"), 2).await;
    let names: Vec<_> = fresh
        .iter()
        .map(|l| l["object"]["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "b"], "a watch opened after the freeze works");
}

#[tokio::test]
async fn streaming_lists_can_be_refused_like_a_server_without_the_watchlist_feature() {
    let sim = start().await;
    sim.create("v1", "ConfigMap", cm("a", "default", "1"))
        .unwrap();
    let streaming = format!(
        "{CMS}?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true"
    );
    let lines = watch_lines(&sim, &streaming, 2).await;
    assert_eq!(lines[0]["object"]["metadata"]["name"], "a");
    assert_eq!(
        lines[1]["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
    let r = http(
        &sim,
        "POST",
        "/_kubesim/streaming-lists?enabled=false",
        None,
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    let r = http(&sim, "GET", &streaming, None, "").await;
    assert_eq!(
        (r.status, r.json()["reason"].as_str()),
        (422, Some("Invalid"))
    );
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .contains("sendInitialEvents"),
        "{}",
        r.json()
    );
    let plain = watch_lines(&sim, &format!("{CMS}?watch=true&resourceVersion=0"), 1).await;
    assert_eq!(plain.len(), 1, "ordinary watches still work");
    sim.set_streaming_lists(true);
    assert_eq!(watch_lines(&sim, &streaming, 2).await.len(), 2);
}
