//! The informer against kubesim over real HTTP, through the real binary: watches that heal
//! from a half-open connection, re-lists nobody sees half done, streaming and paginated
//! initial lists, and start-up against an API server that is not there yet.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use common::*;
use kubesim::{Faults, KubeSim, SimConfig};
use serde_json::{Value, json};

/// `watch.idleTimeout` of the healing test.
const IDLE: Duration = Duration::from_secs(5);

fn pod(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"containers": [{"name": "c", "image": "nginx"}]}})
}

/// `op name` of each envelope, per kind, in arrival order.
fn by_kind(events: &[Value]) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for e in events {
        out.entry(e["kind"].as_str().unwrap().to_string())
            .or_default()
            .push(format!(
                "{} {}",
                e["op"].as_str().unwrap(),
                e["name"].as_str().unwrap()
            ));
    }
    out
}

/// Creates `n` ConfigMaps in `default`, named and filled by `each(i)`.
fn create_configmaps(sim: &KubeSim, n: usize, each: impl Fn(usize) -> (String, Value)) {
    for i in 0..n {
        let (name, data) = each(i);
        sim.create("v1", "ConfigMap", configmap("default", &name, data))
            .unwrap();
    }
}

/// Every object the cache API has for `api_version/kind`, page after page.
async fn cache_list(agent: &Agent, kind_path: &str) -> Vec<Value> {
    let base = format!("http://{}/cache/{kind_path}", agent.ops_addr().await);
    let mut out = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let url = match &next {
            Some(c) => format!("{base}?continue={c}"),
            None => base.clone(),
        };
        let page: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
        out.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["metadata"]["continue"].as_str() {
            Some(c) => next = Some(c.to_string()),
            None => return out,
        }
    }
}

/// Merges `patch` into ConfigMap `default/<name>`.
fn patch_data(sim: &KubeSim, name: &str, patch: Value) {
    sim.merge_patch("v1", "ConfigMap", Some("default"), name, patch)
        .unwrap();
}

/// Makes the agent's watch fall out of the server's history: the watch drops while the
/// server hangs, `change` happens (so the agent's resourceVersion is older than the newest),
/// the history is compacted, and the resume answers 410.
async fn force_relist(sim: &KubeSim, change: impl FnOnce()) {
    let before = sim.current_resource_version();
    sim.stop_answering();
    sim.drop_watches();
    change();
    assert!(
        sim.current_resource_version() > before,
        "a change while the watch is down"
    );
    sim.compact();
    sim.resume_answering();
}

/// Polls `/metrics` until the sample matching `fragments` reaches `at_least`.
async fn wait_metric(agent: &Agent, fragments: &[&str], at_least: f64) -> f64 {
    let deadline = tokio::time::Instant::now() + SOON;
    loop {
        let rows = parse_metrics(&agent.ops_get("/metrics").await.1);
        let v = metric_sum(&rows, fragments);
        if v >= at_least {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{fragments:?} stayed at {v}; log:\n{}",
            agent.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_open_watch_heals_within_the_idle_timeout_without_a_relist_or_a_duplicate() {
    // kubesim sends a bookmark on every watch each second.
    let sim = sim().await;
    let config = format!(
        "{}  readiness:\n    maxSilence: 3s\nwatch:\n  idleTimeout: {}s\n",
        stdout_config(&[("v1", "ConfigMap"), ("v1", "Pod")]),
        IDLE.as_secs()
    );
    let mut agent = Agent::start(&sim, &config).await;
    agent.wait_ready(200, SOON).await;
    sim.clear_request_log();

    // Both watches go silent without closing, like connections a NAT forgot.
    let frozen_at = Instant::now();
    sim.freeze_watches();
    sim.create(
        "v1",
        "ConfigMap",
        configmap("default", "a", json!({"v": "1"})),
    )
    .unwrap();
    sim.create(
        "v1",
        "ConfigMap",
        configmap("default", "b", json!({"v": "1"})),
    )
    .unwrap();
    sim.create("v1", "Pod", pod("p")).unwrap();
    patch_data(&sim, "a", json!({"data": {"v": "2"}}));
    sim.delete("v1", "ConfigMap", Some("default"), "b").unwrap();
    // Readiness tells the truth meanwhile (maxSilence 3s < idleTimeout), but healing does not
    // wait for it.
    let body = agent.wait_ready(503, SOON).await;
    assert!(
        body.contains("has heard nothing from the API server"),
        "{body}"
    );

    let events = agent.take(5).await;
    let healed = frozen_at.elapsed();
    eprintln!(
        "healing: the fifth change arrived {:.2}s after the freeze (idleTimeout {}s, bookmarks every 1s)",
        healed.as_secs_f64(),
        IDLE.as_secs()
    );
    let kinds = by_kind(&events);
    assert_eq!(
        kinds["ConfigMap"],
        ["add a", "add b", "update a", "delete b"],
        "{events:#?}"
    );
    assert_eq!(kinds["Pod"], ["add p"]);
    assert!(
        healed <= IDLE + Duration::from_secs(5),
        "healed in {healed:?}, idleTimeout {IDLE:?}"
    );
    Replay::default().apply_all(&events);
    agent.wait_ready(200, SOON).await;
    agent.expect_nothing_more(&sim).await;

    let log = sim.request_log();
    for path in ["/api/v1/configmaps", "/api/v1/pods"] {
        assert_eq!(
            initial_lists(&log, path),
            0,
            "no re-list of {path}: {log:#?}"
        );
        assert!(
            log.iter().any(|r| r.path == path
                && r.watch
                && r.param("resourceVersion").is_some_and(|rv| !rv.is_empty())),
            "{path} watched again from its resourceVersion: {log:#?}"
        );
    }
    let rows = parse_metrics(&agent.ops_get("/metrics").await.1);
    for informer in ["informer=\"v1/ConfigMap\"", "informer=\"v1/Pod\""] {
        assert!(
            metric(
                &rows,
                &["lookout_watch_restarts_total", informer, "reason=\"idle\""]
            )
            .unwrap()
                >= 1.0,
            "{informer}"
        );
        assert_eq!(
            metric(&rows, &["lookout_relists_total", informer]),
            Some(0.0)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relist_under_churn_never_shows_the_cache_api_a_half_filled_cache() {
    // Three pages of 500, each answered after 300 ms: the re-list takes about a second.
    const STABLE: usize = 1200;
    // Every third stable object is probed: spread over all pages of the re-list, and few
    // enough to come back in one page of the cache API.
    const PROBED: usize = STABLE / 3;
    let sim = sim().await;
    for i in 0..STABLE {
        let mut o = configmap("default", &format!("stable-{i}"), json!({"gen": "1"}));
        if i % 3 == 0 {
            o["metadata"]["labels"]["probe"] = json!("yes");
        }
        sim.create("v1", "ConfigMap", o).unwrap();
    }
    let config = format!(
        "{}  cache:\n    enabled: true\n",
        with_initial_list(&stdout_config(&[("v1", "ConfigMap")]), "paginate")
    );
    let mut agent = Agent::start(&sim, &config).await;
    agent.take(STABLE).await;
    agent.wait_ready(200, SOON).await;

    let url = format!(
        "http://{}/cache/v1/ConfigMap?labelSelector=probe%3Dyes",
        agent.ops_addr().await
    );
    let stop = Arc::new(AtomicBool::new(false));
    let poller = tokio::spawn({
        let stop = stop.clone();
        async move {
            let client = reqwest::Client::new();
            let mut answers = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let list: Value = client
                    .get(&url)
                    .send()
                    .await
                    .expect("the cache API answers")
                    .json()
                    .await
                    .unwrap();
                assert!(list["metadata"].get("continue").is_none(), "one page");
                let probed = list["items"].as_array().unwrap();
                let second = probed.iter().filter(|o| o["data"]["gen"] == "2").count();
                answers.push((SystemTime::now(), probed.len(), second));
            }
            answers
        }
    });
    let churner = tokio::spawn({
        let sim = sim.clone();
        let stop = stop.clone();
        async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let name = format!("churn-{}", n % 20);
                if sim.get("v1", "ConfigMap", Some("default"), &name).is_some() {
                    let _ = sim.delete("v1", "ConfigMap", Some("default"), &name);
                } else {
                    let _ = sim.create("v1", "ConfigMap", configmap("default", &name, json!({})));
                }
                let _ = sim.merge_patch(
                    "v1",
                    "ConfigMap",
                    Some("default"),
                    &format!("churn-{}", (n + 7) % 20),
                    json!({"data": {"v": n.to_string()}}),
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    });
    sim.set_faults(Faults::delay(1.0, Duration::from_millis(300)).for_verbs(&["list"]));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let relist_from = SystemTime::now();
    // While the watch is down, every stable object changes: the re-list brings the second
    // generation, page by page.
    force_relist(&sim, || {
        for i in 0..STABLE {
            patch_data(&sim, &format!("stable-{i}"), json!({"data": {"gen": "2"}}));
        }
    })
    .await;
    wait_metric(&agent, &["lookout_relists_total"], 1.0).await;
    // Let a few answers come from the new cache too.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let answers = poller.await.unwrap();
    churner.await.unwrap();
    sim.clear_faults();

    let pages: Vec<SystemTime> = sim
        .request_log()
        .iter()
        .filter(|r| r.verb == "list" && r.time >= relist_from)
        .map(|r| r.time)
        .collect();
    assert!(pages.len() >= 3, "the re-list was paginated: {pages:?}");
    let (first, last) = (pages[0], *pages.last().unwrap());
    // The last page was asked for 300 ms before it was answered.
    let during = answers
        .iter()
        .filter(|(t, _, _)| *t >= first && *t <= last + Duration::from_millis(300))
        .count();
    eprintln!(
        "cache API: {} answers, {during} while the re-list was in progress",
        answers.len()
    );
    assert!(during >= 1, "the poller overlapped the re-list");
    for (t, probed, second) in &answers {
        assert_eq!(
            *probed, PROBED,
            "an answer at {t:?} had {probed} of the {PROBED} probed objects"
        );
        assert!(
            *second == 0 || *second == PROBED,
            "an answer at {t:?} mixed generations: {second} of {PROBED} re-listed"
        );
    }
    assert_eq!(
        answers.last().unwrap().2,
        PROBED,
        "the re-list was swapped in"
    );
    // And the cache ends equal to the cluster.
    let want = cluster_state(&sim, "v1", "ConfigMap");
    let deadline = tokio::time::Instant::now() + SOON;
    loop {
        while agent.try_next(Duration::from_millis(100)).await.is_some() {}
        let got: HashMap<String, Value> = cache_list(&agent, "v1/ConfigMap")
            .await
            .into_iter()
            .map(|o| (o["metadata"]["uid"].as_str().unwrap().to_string(), o))
            .collect();
        if got == want {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the cache never caught up: {} vs {} objects",
            got.len(),
            want.len()
        );
    }
}

/// Envelopes without what differs from run to run (`id`, `time`), by name.
fn comparable(events: Vec<Value>) -> Vec<Value> {
    let mut out: Vec<Value> = events
        .into_iter()
        .map(|mut e| {
            let m = e.as_object_mut().unwrap();
            m.remove("id");
            m.remove("time");
            e
        })
        .collect();
    out.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_and_paginated_initial_lists_give_identical_events() {
    const OBJECTS: usize = 1100;
    let sim = sim().await;
    create_configmaps(&sim, OBJECTS, |i| {
        (format!("o{i:04}"), json!({"i": i.to_string()}))
    });
    let base = stdout_config(&[("v1", "ConfigMap")]);
    let mut streamed = Agent::start(&sim, &with_initial_list(&base, "stream")).await;
    let mut paged = Agent::start(&sim, &with_initial_list(&base, "paginate")).await;
    let a = comparable(streamed.take(OBJECTS).await);
    let b = comparable(paged.take(OBJECTS).await);
    assert!(
        a.iter()
            .all(|e| e["op"] == "add" && e["initialList"] == true)
    );
    assert_eq!(a, b, "identical initial events");
    streamed.wait_ready(200, SOON).await;
    paged.wait_ready(200, SOON).await;
    // After the initial list, the streaming watch goes on carrying changes, like the
    // paginated informer's watch.
    patch_data(&sim, "o0007", json!({"data": {"i": "changed"}}));
    assert_eq!(
        comparable(vec![streamed.next().await]),
        comparable(vec![paged.next().await])
    );
    let log = sim.request_log();
    let streams = log
        .iter()
        .filter(|r| r.watch && r.param("sendInitialEvents") == Some("true"))
        .count();
    let pages = log.iter().filter(|r| r.verb == "list").count();
    assert_eq!(
        (streams, pages),
        (1, 3),
        "one streaming list, one list of 3 pages"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_refuses_streaming_lists_is_listed_page_by_page_instead() {
    let sim = sim().await;
    sim.set_streaming_lists(false);
    sim.create(
        "v1",
        "ConfigMap",
        configmap("default", "a", json!({"v": "1"})),
    )
    .unwrap();
    let mut agent = Agent::start(&sim, &stdout_config(&[("v1", "ConfigMap")])).await;
    let e = agent.next().await;
    assert_eq!(
        (e["op"].as_str(), e["name"].as_str()),
        (Some("add"), Some("a"))
    );
    assert_eq!(e["initialList"], true);
    force_relist(&sim, || {
        patch_data(&sim, "a", json!({"data": {"v": "2"}}));
    })
    .await;
    let e = agent.next().await;
    assert_eq!(
        (e["op"].as_str(), e["object"]["data"]["v"].as_str()),
        (Some("update"), Some("2"))
    );
    let log: Vec<_> = sim
        .request_log()
        .into_iter()
        .filter(|r| r.path == "/api/v1/configmaps")
        .collect();
    let refused: Vec<_> = log
        .iter()
        .filter(|r| r.param("sendInitialEvents").is_some())
        .collect();
    assert_eq!(refused.len(), 1, "asked once: {log:#?}");
    assert_eq!(refused[0].status, 422);
    assert_eq!(
        log.iter().filter(|r| r.verb == "list").count(),
        2,
        "the first list and the re-list, page by page: {log:#?}"
    );

    // `stream` insists: not ready, saying why, until the server serves streaming lists.
    let strict = Agent::start(
        &sim,
        &with_initial_list(&stdout_config(&[("v1", "ConfigMap")]), "stream"),
    )
    .await;
    let deadline = tokio::time::Instant::now() + SOON;
    let body = loop {
        let (status, body) = strict.ops_get("/readyz").await;
        if status == 503 && body.contains("cannot watch configmaps in all namespaces") {
            break body;
        }
        assert!(tokio::time::Instant::now() < deadline, "{status}: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(body.contains("sendInitialEvents"), "{body}");
    sim.set_streaming_lists(true);
    strict.wait_ready(200, Duration::from_secs(40)).await;
}

/// A loopback port nothing listens on (yet).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn kubeconfig_for(port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://127.0.0.1:{port}\n\
         contexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\n\
         users:\n- name: u\n  user: {{}}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_unreachable_at_start_is_retried_until_it_appears() {
    let port = free_port();
    let mut agent = Agent::start_with_kubeconfig(
        &kubeconfig_for(port),
        &stdout_config(&[("v1", "ConfigMap")]),
        &[],
    )
    .await;
    // Probes answer (liveness must not kill a pod that waits for its API server); readiness
    // says why it is not ready.
    let body = agent.wait_ready(503, SOON).await;
    assert!(
        body.contains("informer v1/ConfigMap is waiting for the API server"),
        "{body}"
    );
    assert_eq!(agent.ops_get("/healthz").await.0, 200);
    let deadline = tokio::time::Instant::now() + SOON;
    while !agent.stderr().contains("retrying") {
        assert!(tokio::time::Instant::now() < deadline, "{}", agent.stderr());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        agent.child.try_wait().unwrap().is_none(),
        "still running, not exit 2: {}",
        agent.stderr()
    );

    let sim = KubeSim::start(SimConfig {
        addr: ([127, 0, 0, 1], port).into(),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    sim.create("v1", "ConfigMap", configmap("default", "late", json!({})))
        .unwrap();
    // Backoff after failures is at most 30 s.
    let e = tokio::time::timeout(Duration::from_secs(45), agent.next())
        .await
        .expect("the agent came up with the API server");
    assert_eq!(e["name"], "late");
    agent.wait_ready(200, SOON).await;
    let (status, _, log) = agent.terminate().await;
    assert_eq!(status.code(), Some(0), "{log}");
}

#[tokio::test]
async fn sigterm_while_waiting_for_the_api_server_exits_0() {
    let agent = Agent::start_with_kubeconfig(
        &kubeconfig_for(free_port()),
        &stdout_config(&[("v1", "ConfigMap")]),
        &[],
    )
    .await;
    agent.wait_ready(503, SOON).await;
    let started = Instant::now();
    let (status, _, log) = agent.terminate().await;
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(started.elapsed() < Duration::from_secs(5), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_403_makes_the_informer_not_ready_naming_verb_and_resource_and_retries_slowly() {
    let sim = sim().await;
    sim.set_faults(Faults {
        error_rate: 1.0,
        error_code: 403,
        verbs: vec!["list".into(), "watch".into()],
        ..Faults::default()
    });
    let mut agent = Agent::start(&sim, &stdout_config(&[("v1", "ConfigMap")])).await;
    let deadline = tokio::time::Instant::now() + SOON;
    let body = loop {
        let (status, body) = agent.ops_get("/readyz").await;
        if status == 503 && body.contains("not allowed to") {
            break body;
        }
        assert!(tokio::time::Instant::now() < deadline, "{status}: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        body.contains("not allowed to watch configmaps in all namespaces"),
        "{body}"
    );
    assert!(agent.stderr().contains("request forbidden"));
    // Slow retries, not a tight loop: BackoffPolicy::FORBIDDEN starts at 5 s (jittered).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let attempts = sim
        .request_log()
        .iter()
        .filter(|r| r.path == "/api/v1/configmaps")
        .count();
    assert!(attempts <= 3, "{attempts} attempts in about 3 s");
    sim.clear_faults();
    sim.create("v1", "ConfigMap", configmap("default", "a", json!({})))
        .unwrap();
    let e = tokio::time::timeout(Duration::from_secs(40), agent.next())
        .await
        .expect("works once allowed");
    assert_eq!(e["name"], "a");
    agent.wait_ready(200, SOON).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_is_retried_no_sooner_than_the_server_asked() {
    let sim = sim().await;
    sim.set_faults(Faults::throttle(1.0, 2).for_verbs(&["list", "watch"]));
    let mut agent = Agent::start(&sim, &stdout_config(&[("v1", "ConfigMap")])).await;
    let deadline = tokio::time::Instant::now() + SOON;
    let throttled = loop {
        let times: Vec<SystemTime> = sim
            .request_log()
            .iter()
            .filter(|r| r.path == "/api/v1/configmaps" && r.status == 429)
            .map(|r| r.time)
            .collect();
        if times.len() >= 3 {
            break times;
        }
        assert!(tokio::time::Instant::now() < deadline, "{times:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for pair in throttled.windows(2) {
        let gap = pair[1].duration_since(pair[0]).unwrap();
        assert!(
            gap >= Duration::from_millis(1950),
            "Retry-After 2s honoured: {gap:?}"
        );
    }
    sim.clear_faults();
    sim.create("v1", "ConfigMap", configmap("default", "a", json!({})))
        .unwrap();
    assert_eq!(agent.next().await["name"], "a");
}
