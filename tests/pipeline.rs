//! The core pipeline end to end: kubesim over real HTTP → `lookout run` (a real process) →
//! stdout sink, one JSON envelope per line.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

fn ops_and_names(events: &[Value]) -> Vec<(String, String)> {
    events
        .iter()
        .map(|e| {
            (
                e["op"].as_str().unwrap().to_string(),
                e["name"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn every_op_arrives_as_one_envelope_in_order_with_replayable_patches() {
    let sim = sim().await;
    sim.create(
        "v1",
        "ConfigMap",
        configmap("default", "a", json!({"k": "1"})),
    )
    .unwrap();
    sim.create(
        "v1",
        "ConfigMap",
        configmap("default", "b", json!({"k": "1"})),
    )
    .unwrap();
    let mut agent = Agent::start(&sim, &stdout_config(&[("v1", "ConfigMap")])).await;
    let mut replay = Replay::default();

    let initial = agent.take(2).await;
    replay.apply_all(&initial);
    let names: BTreeSet<_> = initial
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, BTreeSet::from(["a", "b"]));
    for e in &initial {
        assert_eq!(e["op"], "add");
        assert_eq!(e["initialList"], true, "{e}");
        assert_eq!(e["cluster"], "test");
        assert_eq!(e["apiVersion"], "v1");
        assert_eq!(e["kind"], "ConfigMap");
        assert_eq!(e["namespace"], "default");
    }

    sim.create(
        "v1",
        "ConfigMap",
        configmap("default", "c", json!({"k": "1"})),
    )
    .unwrap();
    sim.merge_patch(
        "v1",
        "ConfigMap",
        Some("default"),
        "a",
        json!({"data": {"k": "2", "new": "x"}}),
    )
    .unwrap();
    sim.merge_patch(
        "v1",
        "ConfigMap",
        Some("default"),
        "a",
        json!({"metadata": {"labels": {"app": null, "tier": "web"}}}),
    )
    .unwrap();
    sim.delete("v1", "ConfigMap", Some("default"), "b").unwrap();
    sim.merge_patch(
        "v1",
        "ConfigMap",
        Some("default"),
        "c",
        json!({"data": null}),
    )
    .unwrap();

    let live = agent.take(5).await;
    replay.apply_all(&live);
    assert_eq!(
        ops_and_names(&live),
        vec![
            ("add".into(), "c".into()),
            ("update".into(), "a".into()),
            ("update".into(), "a".into()),
            ("delete".into(), "b".into()),
            ("update".into(), "c".into()),
        ]
    );
    assert!(
        live[0].get("initialList").is_none(),
        "live adds are not initial: {}",
        live[0]
    );
    assert_eq!(live[1]["object"]["data"], json!({"k": "2", "new": "x"}));
    assert_eq!(
        live[3]["object"]["metadata"]["name"], "b",
        "delete carries the last state"
    );
    assert!(live[3].get("finalStateUnknown").is_none());
    // Every envelope has a distinct time-ordered id.
    let ids: BTreeSet<_> = initial
        .iter()
        .chain(&live)
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 7);
    // The replayed state is the cluster's state.
    for name in ["a", "c"] {
        let live = sim.get("v1", "ConfigMap", Some("default"), name).unwrap();
        let uid = live["metadata"]["uid"].as_str().unwrap();
        let mut want = live.clone();
        want["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("managedFields");
        assert_eq!(replay.objects[uid], want);
    }
    assert_eq!(replay.objects.len(), 2);

    agent.expect_nothing_more(&sim).await;
    let (status, rest, log) = agent.terminate().await;
    assert!(status.success(), "SIGTERM exits 0: {status:?}\n{log}");
    assert!(rest.is_empty(), "nothing after shutdown: {rest:?}");
}

#[tokio::test]
async fn secret_values_never_leave_the_agent() {
    let sim = sim().await;
    let mut agent = Agent::start(&sim, &stdout_config(&[("v1", "Secret")])).await;
    // base64("hunter2-very-secret")
    let secret_b64 = "aHVudGVyMi12ZXJ5LXNlY3JldA==";
    sim.create(
        "v1",
        "Secret",
        json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "db", "namespace": "default"},
            "data": {"password": secret_b64}}),
    )
    .unwrap();
    let add = agent.next().await;
    sim.merge_patch(
        "v1",
        "Secret",
        Some("default"),
        "db",
        json!({"data": {"password": "bmV3LXNlY3JldC12YWx1ZQ=="}}),
    )
    .unwrap();
    let update = agent.next().await;
    let all = format!("{add}{update}");
    assert!(
        !all.contains(secret_b64) && !all.contains("bmV3LXNlY3JldC12YWx1ZQ=="),
        "{all}"
    );
    let before = add["object"]["data"]["password"].as_str().unwrap();
    let after = update["object"]["data"]["password"].as_str().unwrap();
    assert!(before.starts_with("hmac-sha256:"), "{before}");
    assert_ne!(before, after, "a changed value shows as a changed hash");
    assert_eq!(update["op"], "update");
}

#[tokio::test]
async fn two_consumers_of_one_resource_share_one_list_and_one_watch() {
    for mode in ["stream", "paginate"] {
        let sim = sim().await;
        // The same resource configured twice (two consumers) is watched once and emitted once.
        let config = with_initial_list(
            &stdout_config(&[("v1", "ConfigMap"), ("v1", "ConfigMap")]),
            mode,
        );
        let mut agent = Agent::start(&sim, &config).await;
        sim.create("v1", "ConfigMap", configmap("default", "x", json!({})))
            .unwrap();
        let e = agent.next().await;
        assert_eq!(e["name"], "x");
        agent.expect_nothing_more(&sim).await;
        let log = sim.request_log();
        let on_cm: Vec<_> = log
            .iter()
            .filter(|r| r.path == "/api/v1/configmaps")
            .collect();
        let lists = on_cm.iter().filter(|r| r.verb == "list").count();
        let watches: Vec<_> = on_cm.iter().filter(|r| r.watch).collect();
        assert_eq!(watches.len(), 1, "{mode}: requests: {on_cm:#?}");
        let w = watches[0];
        assert_eq!(w.param("allowWatchBookmarks"), Some("true"));
        if mode == "stream" {
            // A streaming list is the watch itself: no list request at all.
            assert_eq!(lists, 0, "requests: {on_cm:#?}");
            assert_eq!(w.param("sendInitialEvents"), Some("true"));
            assert_eq!(w.param("resourceVersionMatch"), Some("NotOlderThan"));
        } else {
            assert_eq!(lists, 1, "requests: {on_cm:#?}");
            assert!(w.param("resourceVersion").is_some_and(|rv| !rv.is_empty()));
        }
    }
}

#[tokio::test]
async fn shared_informer_hands_the_same_informer_and_every_change_to_each_handler() {
    use lookout::event::Doc;
    use lookout::event::transform::{ObjectTransform, TransformConfig};
    use lookout::informer::{Handler, InformerFactory, InformerKey};

    struct Collect(tokio::sync::mpsc::UnboundedSender<String>);
    #[async_trait::async_trait]
    impl Handler for Collect {
        async fn on_add(&self, obj: &Arc<Doc>, _: bool) {
            let _ = self.0.send(format!("add {}", obj["metadata"]["name"]));
        }
        async fn on_update(&self, _: &Arc<Doc>, new: &Arc<Doc>, _: json_patch::Patch) {
            let _ = self.0.send(format!("update {}", new["metadata"]["name"]));
        }
        async fn on_delete(&self, last: &Arc<Doc>, _: lookout::informer::Gone<'_>) {
            let _ = self.0.send(format!("delete {}", last["metadata"]["name"]));
        }
    }

    let sim = sim().await;
    let client = kube::Client::try_from(kube::Config::new(sim.url().parse().unwrap())).unwrap();
    let transform = Arc::new(ObjectTransform::new(&TransformConfig::default(), "t").unwrap());
    let factory = InformerFactory::new(client, transform);
    let key = InformerKey {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        namespace: Some("default".into()),
        label_selector: Some("app=demo".into()),
        field_selector: None,
    };
    let first = factory.informer(&key).await.unwrap();
    let second = factory.informer(&key).await.unwrap();
    assert!(Arc::ptr_eq(&first, &second));
    let (tx1, mut rx1) = tokio::sync::mpsc::unbounded_channel();
    let (tx2, mut rx2) = tokio::sync::mpsc::unbounded_channel();
    first.add_handler(Arc::new(Collect(tx1)));
    second.add_handler(Arc::new(Collect(tx2)));
    first.start();
    second.start();
    tokio::time::timeout(SOON, async {
        while !first.has_synced() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("initial list completes");
    sim.create("v1", "ConfigMap", configmap("default", "m", json!({})))
        .unwrap();
    sim.delete("v1", "ConfigMap", Some("default"), "m").unwrap();
    for rx in [&mut rx1, &mut rx2] {
        for want in ["add \"m\"", "delete \"m\""] {
            let got = tokio::time::timeout(SOON, rx.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(got, want);
        }
    }
    let path = "/api/v1/namespaces/default/configmaps";
    let log = sim.request_log();
    let requests: Vec<_> = log.iter().filter(|r| r.path == path).collect();
    assert_eq!(requests.len(), 1, "one streaming list+watch: {requests:#?}");
    assert_eq!(
        requests[0].param("labelSelector"),
        Some("app=demo"),
        "selector goes to the server"
    );
    assert!(first.has_synced());
    assert_eq!(first.store().len(), 0);
    factory.stop_all().await;
}

#[tokio::test]
async fn relist_after_410_emits_only_real_changes() {
    let sim = sim().await;
    for n in ["keep", "change", "gone", "same"] {
        sim.create(
            "v1",
            "ConfigMap",
            configmap("default", n, json!({"v": "1"})),
        )
        .unwrap();
    }
    let mut agent = Agent::start(&sim, &stdout_config(&[("v1", "ConfigMap")])).await;
    let mut replay = Replay::default();
    replay.apply_all(&agent.take(4).await);

    // The agent loses its watch; meanwhile objects change and the history is compacted, so
    // its resume answers 410 and it must re-list.
    sim.stop_answering();
    sim.drop_watches();
    sim.merge_patch(
        "v1",
        "ConfigMap",
        Some("default"),
        "change",
        json!({"data": {"v": "2"}}),
    )
    .unwrap();
    sim.delete("v1", "ConfigMap", Some("default"), "gone")
        .unwrap();
    sim.create(
        "v1",
        "ConfigMap",
        configmap("default", "fresh", json!({"v": "1"})),
    )
    .unwrap();
    // Deleted and re-created under the same name: a different object (uid).
    sim.delete("v1", "ConfigMap", Some("default"), "same")
        .unwrap();
    sim.create(
        "v1",
        "ConfigMap",
        configmap("default", "same", json!({"v": "1"})),
    )
    .unwrap();
    sim.compact();
    // The re-list comes after every change above: at least this resourceVersion.
    let rv = |v: &Value| v.as_str().unwrap().parse::<u64>().unwrap();
    let newest = sim
        .list("v1", "ConfigMap")
        .iter()
        .map(|o| rv(&o["metadata"]["resourceVersion"]))
        .max()
        .unwrap();
    sim.resume_answering();

    let mut events = agent.take(5).await;
    replay.apply_all(&events);
    agent.expect_nothing_more(&sim).await;
    events.sort_by_key(|e| {
        (
            e["name"].as_str().unwrap().to_string(),
            e["op"].as_str().unwrap() != "delete",
        )
    });
    let summary: Vec<String> = events
        .iter()
        .map(|e| {
            format!(
                "{} {}{}",
                e["op"].as_str().unwrap(),
                e["name"].as_str().unwrap(),
                if e["finalStateUnknown"] == true {
                    " (unknown)"
                } else {
                    ""
                }
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            "update change",
            "add fresh",
            "delete gone (unknown)",
            "delete same (unknown)",
            "add same",
        ]
    );
    assert_eq!(events[0]["object"]["data"]["v"], "2");
    // An inferred delete carries the re-list's resourceVersion: newer than every state of
    // its object (consumers ordering by resourceVersion apply it; (uid, resourceVersion)
    // names no earlier change), and no older than the last change before the re-list.
    for e in events.iter().filter(|e| e["finalStateUnknown"] == true) {
        let last_known = rv(&e["object"]["metadata"]["resourceVersion"]);
        assert!(rv(&e["resourceVersion"]) > last_known, "{e}");
        assert!(rv(&e["resourceVersion"]) >= newest, "newest {newest}: {e}");
    }
    let lists = initial_lists(&sim.request_log(), "/api/v1/configmaps");
    assert_eq!(lists, 2, "one initial list and one re-list");
}

#[tokio::test]
async fn a_dropped_watch_resumes_without_a_relist_or_duplicates() {
    let sim = sim().await;
    let mut agent = Agent::start(&sim, &stdout_config(&[("v1", "ConfigMap")])).await;
    sim.create(
        "v1",
        "ConfigMap",
        configmap("default", "a", json!({"v": "1"})),
    )
    .unwrap();
    assert_eq!(agent.next().await["op"], "add");
    for i in 2..6 {
        sim.drop_watches();
        sim.merge_patch(
            "v1",
            "ConfigMap",
            Some("default"),
            "a",
            json!({"data": {"v": i.to_string()}}),
        )
        .unwrap();
        let e = agent.next().await;
        assert_eq!(
            (e["op"].as_str(), e["object"]["data"]["v"].as_str()),
            (Some("update"), Some(i.to_string().as_str()))
        );
    }
    agent.expect_nothing_more(&sim).await;
    let lists = initial_lists(&sim.request_log(), "/api/v1/configmaps");
    assert_eq!(lists, 1, "reconnects resume the watch; only 410 re-lists");
}
