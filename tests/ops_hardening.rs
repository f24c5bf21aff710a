//! The cache API and the ops server under clients that misbehave: paging like the API
//! server, tokens that are empty or wrong, connections that send nothing, more connections
//! than the limit, and configs that would open the cache to anyone.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOKEN: &str = "a-long-enough-cache-token";

fn cache_config(token: Option<&str>) -> String {
    let token = token
        .map(|t| format!("    token: {t}\n"))
        .unwrap_or_default();
    format!(
        "{}  cache:\n    enabled: true\n{token}",
        stdout_config(&[("v1", "ConfigMap")])
    )
}

async fn get(addr: &str, path: &str, token: Option<&str>) -> (u16, Value) {
    let mut req = reqwest::Client::new().get(format!("http://{addr}{path}"));
    if let Some(t) = token {
        req = req.header("Authorization", format!("Bearer {t}"));
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn names(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn lists_are_paged_with_limit_and_continue_like_the_api_server() {
    let sim = sim().await;
    for i in 0..7 {
        sim.create(
            "v1",
            "ConfigMap",
            configmap("default", &format!("cm-{i}"), json!({})),
        )
        .unwrap();
    }
    let mut agent = Agent::start(&sim, &cache_config(Some(TOKEN))).await;
    agent.take(7).await;
    let addr = agent.ops_addr().await;
    let mut seen = Vec::new();
    let mut pages = Vec::new();
    let mut path = "/cache/v1/ConfigMap?limit=3".to_string();
    loop {
        let (status, page) = get(&addr, &path, Some(TOKEN)).await;
        assert_eq!(status, 200, "{page}");
        pages.push(names(&page).len());
        seen.extend(names(&page));
        match page["metadata"]["continue"].as_str() {
            Some(c) => path = format!("/cache/v1/ConfigMap?limit=3&continue={c}"),
            None => break,
        }
    }
    assert_eq!(pages, [3, 3, 1]);
    let mut all: Vec<String> = (0..7).map(|i| format!("cm-{i}")).collect();
    all.sort();
    assert_eq!(seen, all, "every object once, in key order");
    // Without a limit: one page of everything (under the page cap), no token.
    let (_, whole) = get(&addr, "/cache/v1/ConfigMap", Some(TOKEN)).await;
    assert_eq!(names(&whole), all);
    assert!(whole["metadata"].get("continue").is_none());
    // Selectors apply within pages; a forged token is refused.
    let (_, one) = get(
        &addr,
        "/cache/v1/ConfigMap?fieldSelector=metadata.name%3Dcm-4&limit=1",
        Some(TOKEN),
    )
    .await;
    assert!(names(&one).len() <= 1, "{one}");
    assert_eq!(
        get(&addr, "/cache/v1/ConfigMap?continue=zz", Some(TOKEN))
            .await
            .0,
        400
    );
    let (status, single) = get(&addr, "/cache/v1/ConfigMap/default/cm-3", Some(TOKEN)).await;
    assert_eq!(
        (status, single["metadata"]["name"].as_str()),
        (200, Some("cm-3"))
    );
}

#[tokio::test]
async fn wrong_partial_or_empty_bearer_tokens_are_refused() {
    let sim = sim().await;
    let agent = Agent::start(&sim, &cache_config(Some(TOKEN))).await;
    agent.wait_ready(200, SOON).await;
    let addr = agent.ops_addr().await;
    for t in [None, Some(""), Some("a-long-enough"), Some("wrong")] {
        assert_eq!(get(&addr, "/cache/v1/ConfigMap", t).await.0, 401, "{t:?}");
    }
    assert_eq!(get(&addr, "/cache/v1/ConfigMap", Some(TOKEN)).await.0, 200);
}

#[tokio::test]
async fn an_empty_cache_token_is_a_config_error_and_no_token_a_warning_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lookout.yaml");
    std::fs::write(
        &file,
        cache_config(Some("'${LOOKOUT_TEST_UNSET_CACHE_TOKEN:-}'")),
    )
    .unwrap();
    let out = std::process::Command::new(lookout_bin())
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("server.cache.token"), "{stderr}");

    let sim = sim().await;
    let agent = Agent::start(&sim, &cache_config(None)).await;
    agent.wait_ready(200, SOON).await;
    assert!(
        agent
            .stderr()
            .contains("cache API is enabled without server.cache.token"),
        "{}",
        agent.stderr()
    );
}

#[tokio::test]
async fn a_client_that_sends_nothing_is_cut_off_and_extra_connections_are_closed() {
    let sim = sim().await;
    let agent = Agent::start(&sim, &cache_config(Some(TOKEN))).await;
    agent.wait_ready(200, SOON).await;
    let addr = agent.ops_addr().await;

    // A silent client: closed after the header-read timeout (5 s), not held open.
    let started = Instant::now();
    let mut silent = TcpStream::connect(&addr).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(SOON, silent.read(&mut buf))
        .await
        .expect("the server closes a silent connection")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without an answer");
    let held = started.elapsed();
    assert!(held >= Duration::from_secs(4), "{held:?}");

    // 128 idle connections fill the limit; the next one is closed at once.
    let mut idle = Vec::new();
    for _ in 0..128 {
        idle.push(TcpStream::connect(&addr).await.unwrap());
    }
    // Accepts happen in order: give the server a moment's bound to take all 128.
    let mut extra = TcpStream::connect(&addr).await.unwrap();
    let _ = extra
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let n = tokio::time::timeout(Duration::from_secs(3), extra.read(&mut buf))
        .await
        .expect("the extra connection is closed, not queued")
        .unwrap_or(0);
    assert_eq!(n, 0, "no answer beyond the connection limit");
    drop(idle);
    // Once the server has seen them go (a moment: connections may still be refused until
    // then), probes are answered again.
    let deadline = tokio::time::Instant::now() + SOON;
    loop {
        let r = reqwest::get(format!("http://{addr}/healthz")).await;
        if r.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "probes stay refused"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
