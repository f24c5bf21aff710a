//! Fidelity against kube-rs: the client and runtime must see a real-looking API server.

mod common;

use std::time::Duration;

use common::*;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::core::{DynamicObject, GroupVersionKind};
use kube::discovery::{Discovery, pinned_kind};
use kube::runtime::watcher;
use kubesim::{KindSpec, SimConfig};
use serde_json::json;

/// Bounds a wait on the stream under test: a missing event fails the test instead of hanging.
async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within 20 s"))
}

fn cm_typed(name: &str) -> ConfigMap {
    serde_json::from_value(cm(name, "default", "v")).unwrap()
}

#[tokio::test]
async fn kube_client_lists_created_objects_cluster_wide_and_per_namespace() {
    let sim = start().await;
    let c = client(&sim).await;
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "default");
    cms.create(&PostParams::default(), &cm_typed("a"))
        .await
        .unwrap();
    sim.create("v1", "ConfigMap", cm("b", "kube-system", "x"))
        .unwrap();
    let names: Vec<_> = cms
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|c| c.metadata.name.unwrap())
        .collect();
    assert_eq!(names, ["a"]);
    let all: Api<ConfigMap> = Api::all(c);
    let list = all
        .list(&ListParams::default().labels("app=demo"))
        .await
        .unwrap();
    assert_eq!(list.items.len(), 2);
    assert_eq!(
        list.metadata.resource_version.unwrap(),
        sim.current_resource_version().to_string()
    );
}

#[tokio::test]
async fn paginated_list_shows_the_first_pages_snapshot_despite_writes_between_pages() {
    let sim = start().await;
    for i in 0..10 {
        sim.create("v1", "ConfigMap", cm(&format!("c{i:02}"), "default", "old"))
            .unwrap();
    }
    let api: Api<ConfigMap> = Api::namespaced(client(&sim).await, "default");
    let first = api.list(&ListParams::default().limit(4)).await.unwrap();
    assert_eq!(first.items.len(), 4);
    assert_eq!(first.metadata.remaining_item_count, Some(6));
    let rv = first.metadata.resource_version.clone().unwrap();
    // Writes between pages must not show up in later pages.
    sim.create("v1", "ConfigMap", cm("c05a", "default", "new"))
        .unwrap();
    sim.delete("v1", "ConfigMap", Some("default"), "c06")
        .unwrap();
    sim.merge_patch(
        "v1",
        "ConfigMap",
        Some("default"),
        "c07",
        json!({"data": {"k": "new"}}),
    )
    .unwrap();
    let mut names: Vec<String> = first
        .items
        .iter()
        .map(|c| c.metadata.name.clone().unwrap())
        .collect();
    let mut token = first.metadata.continue_.clone();
    while let Some(t) = token.filter(|t| !t.is_empty()) {
        let page = api
            .list(&ListParams::default().limit(4).continue_token(&t))
            .await
            .unwrap();
        assert_eq!(page.metadata.resource_version.as_deref(), Some(rv.as_str()));
        for c in &page.items {
            assert_eq!(c.data.as_ref().unwrap()["k"], "old");
        }
        names.extend(page.items.iter().map(|c| c.metadata.name.clone().unwrap()));
        token = page.metadata.continue_;
    }
    let want: Vec<String> = (0..10).map(|i| format!("c{i:02}")).collect();
    assert_eq!(names, want);
}

#[tokio::test]
async fn continue_token_older_than_the_history_is_410_expired() {
    let sim = start().await;
    for i in 0..3 {
        sim.create("v1", "ConfigMap", cm(&format!("c{i}"), "default", "v"))
            .unwrap();
    }
    let api: Api<ConfigMap> = Api::namespaced(client(&sim).await, "default");
    let first = api.list(&ListParams::default().limit(1)).await.unwrap();
    sim.create("v1", "ConfigMap", cm("later", "default", "v"))
        .unwrap();
    sim.compact();
    let err = api
        .list(
            &ListParams::default()
                .limit(1)
                .continue_token(first.metadata.continue_.as_deref().unwrap()),
        )
        .await
        .unwrap_err();
    match err {
        kube::Error::Api(s) => assert_eq!((s.code, s.reason.as_str()), (410, "Expired")),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn watch_delivers_added_modified_deleted_in_order() {
    let sim = start().await;
    let api: Api<ConfigMap> = Api::namespaced(client(&sim).await, "default");
    let rv = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut stream = api
        .watch(&WatchParams::default().timeout(30), &rv)
        .await
        .unwrap()
        .boxed();
    sim.create("v1", "ConfigMap", cm("w", "default", "1"))
        .unwrap();
    sim.merge_patch(
        "v1",
        "ConfigMap",
        Some("default"),
        "w",
        json!({"data": {"k": "2"}}),
    )
    .unwrap();
    api.delete("w", &DeleteParams::default()).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        match within("watch event", stream.try_next())
            .await
            .unwrap()
            .unwrap()
        {
            WatchEvent::Added(c) => seen.push(("ADDED", c.data.unwrap()["k"].clone())),
            WatchEvent::Modified(c) => seen.push(("MODIFIED", c.data.unwrap()["k"].clone())),
            WatchEvent::Deleted(c) => seen.push(("DELETED", c.data.unwrap()["k"].clone())),
            WatchEvent::Bookmark(_) => {}
            WatchEvent::Error(e) => panic!("{e:?}"),
        }
    }
    let want: Vec<(&str, String)> = vec![
        ("ADDED", "1".into()),
        ("MODIFIED", "2".into()),
        ("DELETED", "2".into()),
    ];
    assert_eq!(seen, want);
}

#[tokio::test]
async fn watch_resumed_from_a_resource_version_replays_only_later_changes() {
    let sim = start().await;
    sim.create("v1", "ConfigMap", cm("before", "default", "1"))
        .unwrap();
    let resume_at = sim.current_resource_version();
    sim.create("v1", "ConfigMap", cm("after1", "default", "1"))
        .unwrap();
    sim.create("v1", "ConfigMap", cm("after2", "default", "1"))
        .unwrap();
    let api: Api<ConfigMap> = Api::namespaced(client(&sim).await, "default");
    let mut stream = api
        .watch(&WatchParams::default(), &resume_at.to_string())
        .await
        .unwrap()
        .boxed();
    let mut names = Vec::new();
    while names.len() < 2 {
        if let WatchEvent::Added(c) = within("watch event", stream.try_next())
            .await
            .unwrap()
            .unwrap()
        {
            names.push(c.metadata.name.unwrap());
        }
    }
    assert_eq!(names, ["after1", "after2"]);
}

#[tokio::test]
async fn watch_from_a_compacted_resource_version_gets_a_410_error_event() {
    let sim = start().await;
    let old = sim.current_resource_version();
    sim.create("v1", "ConfigMap", cm("x", "default", "1"))
        .unwrap();
    sim.compact();
    let api: Api<ConfigMap> = Api::namespaced(client(&sim).await, "default");
    let mut stream = api
        .watch(&WatchParams::default(), &old.to_string())
        .await
        .unwrap()
        .boxed();
    match within("410 event", stream.try_next())
        .await
        .unwrap()
        .unwrap()
    {
        WatchEvent::Error(s) => {
            assert_eq!((s.code, s.reason.as_str()), (410, "Expired"));
            assert_eq!(
                s.message,
                format!("too old resource version: {old} ({})", old + 1)
            );
        }
        other => panic!("expected 410, got {other:?}"),
    }
    assert!(
        within("end of stream", stream.try_next())
            .await
            .unwrap()
            .is_none(),
        "stream closes after the error"
    );
}

#[tokio::test]
async fn watch_with_bookmarks_gets_periodic_bookmarks_with_the_current_revision() {
    let sim = start_with(SimConfig {
        bookmark_interval: Duration::from_millis(100),
        ..Default::default()
    })
    .await;
    let api: Api<Pod> = Api::all(client(&sim).await);
    sim.create("v1", "ConfigMap", cm("unrelated", "default", "1"))
        .unwrap();
    let rv = sim.current_resource_version();
    let mut stream = api
        .watch(
            &WatchParams {
                bookmarks: true,
                ..WatchParams::default()
            },
            "1",
        )
        .await
        .unwrap()
        .boxed();
    within("a bookmark", async {
        loop {
            if let WatchEvent::Bookmark(b) = stream.try_next().await.unwrap().unwrap() {
                assert_eq!(b.metadata.resource_version, rv.to_string());
                break;
            }
        }
    })
    .await;
}

#[tokio::test]
async fn runtime_watcher_with_streaming_lists_sees_initial_state_then_changes() {
    let sim = start().await;
    sim.create("v1", "ConfigMap", cm("a", "default", "1"))
        .unwrap();
    sim.create("v1", "ConfigMap", cm("b", "default", "1"))
        .unwrap();
    let api: Api<ConfigMap> = Api::namespaced(client(&sim).await, "default");
    let mut events = watcher(api, watcher::Config::default().streaming_lists()).boxed();
    let mut init = Vec::new();
    within("the initial list", async {
        loop {
            match events.try_next().await.unwrap().unwrap() {
                watcher::Event::Init => {}
                watcher::Event::InitApply(c) => init.push(c.metadata.name.unwrap()),
                watcher::Event::InitDone => break,
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await;
    assert_eq!(init, ["a", "b"]);
    sim.create("v1", "ConfigMap", cm("c", "default", "1"))
        .unwrap();
    match within("the new object", events.try_next())
        .await
        .unwrap()
        .unwrap()
    {
        watcher::Event::Apply(c) => assert_eq!(c.metadata.name.unwrap(), "c"),
        other => panic!("unexpected {other:?}"),
    }
    let watches: Vec<_> = sim.request_log().into_iter().filter(|r| r.watch).collect();
    assert!(
        watches
            .iter()
            .all(|r| r.param("sendInitialEvents") == Some("true")),
        "{watches:?}"
    );
    assert!(
        sim.request_log().iter().all(|r| r.verb != "list"),
        "streaming lists never LIST"
    );
}

#[tokio::test]
async fn runtime_watcher_recovers_from_dropped_watches_and_compaction() {
    let sim = start().await;
    let api: Api<ConfigMap> = Api::namespaced(client(&sim).await, "default");
    let mut events = watcher(api, watcher::Config::default()).boxed();
    within("the initial list", async {
        while !matches!(
            events.try_next().await.unwrap().unwrap(),
            watcher::Event::InitDone
        ) {}
    })
    .await;
    sim.create("v1", "ConfigMap", cm("one", "default", "1"))
        .unwrap();
    assert!(matches!(
        within("the new object", events.try_next())
            .await
            .unwrap()
            .unwrap(),
        watcher::Event::Apply(_)
    ));
    sim.drop_watches();
    sim.create("v1", "ConfigMap", cm("two", "default", "1"))
        .unwrap();
    sim.compact();
    // Whatever the path (error + relist, or plain resume), "two" must arrive.
    let got = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match events.next().await {
                Some(Ok(watcher::Event::Apply(c) | watcher::Event::InitApply(c)))
                    if c.metadata.name.as_deref() == Some("two") =>
                {
                    return true;
                }
                Some(_) => {}
                None => return false,
            }
        }
    })
    .await
    .unwrap();
    assert!(got);
}

#[tokio::test]
async fn discovery_resolves_builtin_and_extra_kinds_both_ways() {
    let sim = start_with(SimConfig {
        extra_kinds: vec![
            KindSpec::parse("example.com/v1/Widget").unwrap(),
            KindSpec::parse("example.com/v1alpha1/Gadget:gadgetz:cluster").unwrap(),
        ],
        ..Default::default()
    })
    .await;
    let c = client(&sim).await;
    let legacy = Discovery::new(c.clone()).run().await.unwrap();
    let aggregated = Discovery::new(c.clone()).run_aggregated().await.unwrap();
    for d in [&legacy, &aggregated] {
        for (g, v, k, plural, namespaced) in [
            ("", "v1", "Pod", "pods", true),
            ("", "v1", "Namespace", "namespaces", false),
            ("apps", "v1", "Deployment", "deployments", true),
            ("batch", "v1", "CronJob", "cronjobs", true),
            ("coordination.k8s.io", "v1", "Lease", "leases", true),
            ("events.k8s.io", "v1", "Event", "events", true),
            ("example.com", "v1", "Widget", "widgets", true),
            ("example.com", "v1alpha1", "Gadget", "gadgetz", false),
        ] {
            let (ar, caps) = d
                .resolve_gvk(&GroupVersionKind::gvk(g, v, k))
                .unwrap_or_else(|| panic!("{g}/{v}/{k} not discovered"));
            assert_eq!(ar.plural, plural);
            assert_eq!(
                caps.scope == kube::discovery::Scope::Namespaced,
                namespaced,
                "{k}"
            );
        }
    }
    let (ar, _) = pinned_kind(&c, &GroupVersionKind::gvk("example.com", "v1", "Widget"))
        .await
        .unwrap();
    let widgets: Api<DynamicObject> = Api::namespaced_with(c, "default", &ar);
    let w: DynamicObject = serde_json::from_value(json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w1"}, "spec": {"size": 3}})).unwrap();
    widgets.create(&PostParams::default(), &w).await.unwrap();
    assert_eq!(widgets.get("w1").await.unwrap().data["spec"]["size"], 3);
}

#[tokio::test]
async fn lease_server_side_apply_conflicts_between_managers_unless_forced() {
    let sim = start().await;
    let leases: Api<Lease> = Api::namespaced(client(&sim).await, "kube-system");
    let apply = |holder: &str| json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "leader"}, "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15}});
    let created = leases
        .patch(
            "leader",
            &PatchParams::apply("agent-a"),
            &Patch::Apply(apply("a")),
        )
        .await
        .unwrap();
    assert_eq!(created.spec.unwrap().holder_identity.as_deref(), Some("a"));
    let mf = created.metadata.managed_fields.unwrap();
    assert_eq!(
        (mf[0].manager.as_deref(), mf[0].operation.as_deref()),
        (Some("agent-a"), Some("Apply"))
    );
    let err = leases
        .patch(
            "leader",
            &PatchParams::apply("agent-b"),
            &Patch::Apply(apply("b")),
        )
        .await
        .unwrap_err();
    match err {
        kube::Error::Api(s) => {
            assert_eq!((s.code, s.reason.as_str()), (409, "Conflict"));
            assert!(
                s.message.contains("conflict with \"agent-a\""),
                "{}",
                s.message
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    let forced = leases
        .patch(
            "leader",
            &PatchParams::apply("agent-b").force(),
            &Patch::Apply(apply("b")),
        )
        .await
        .unwrap();
    assert_eq!(forced.spec.unwrap().holder_identity.as_deref(), Some("b"));
    // The same manager re-applying its own field is never a conflict.
    leases
        .patch(
            "leader",
            &PatchParams::apply("agent-b"),
            &Patch::Apply(apply("c")),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn replace_with_a_stale_resource_version_is_409_conflict() {
    let sim = start().await;
    let api: Api<ConfigMap> = Api::namespaced(client(&sim).await, "default");
    let c = api
        .create(&PostParams::default(), &cm_typed("x"))
        .await
        .unwrap();
    let mut stale = c.clone();
    let mut fresh = c.clone();
    fresh.data.as_mut().unwrap().insert("k".into(), "2".into());
    api.replace("x", &PostParams::default(), &fresh)
        .await
        .unwrap();
    stale.data.as_mut().unwrap().insert("k".into(), "3".into());
    match api
        .replace("x", &PostParams::default(), &stale)
        .await
        .unwrap_err()
    {
        kube::Error::Api(s) => assert_eq!((s.code, s.reason.as_str()), (409, "Conflict")),
        other => panic!("unexpected {other:?}"),
    }
    stale.metadata.resource_version = None;
    api.replace("x", &PostParams::default(), &stale)
        .await
        .expect("no resourceVersion means unconditional");
}

#[tokio::test]
async fn finalizers_hold_deletion_until_removed() {
    let sim = start().await;
    let api: Api<ConfigMap> = Api::namespaced(client(&sim).await, "default");
    let mut c = cm_typed("f");
    c.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    api.create(&PostParams::default(), &c).await.unwrap();
    api.delete("f", &DeleteParams::default()).await.unwrap();
    let terminating = api.get("f").await.unwrap();
    assert!(terminating.metadata.deletion_timestamp.is_some());
    api.patch(
        "f",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert!(api.get_opt("f").await.unwrap().is_none());
}

#[tokio::test]
async fn a_synthetic_kind_is_listed_page_by_page_without_being_stored() {
    let sim = start().await;
    sim.synthesize("v1", "ConfigMap", 1_234, |i| {
        serde_json::to_vec(&cm(&format!("cm-{i:05}"), "default", "v"))
            .unwrap()
            .into()
    })
    .unwrap();
    let cms: Api<ConfigMap> = Api::all(client(&sim).await);
    let (mut names, mut token, mut pages) = (Vec::new(), None::<String>, 0);
    loop {
        let mut lp = ListParams::default().limit(500);
        if let Some(t) = token.take() {
            lp = lp.continue_token(&t);
        }
        let page = cms.list(&lp).await.unwrap();
        pages += 1;
        names.extend(page.items.into_iter().map(|c| c.metadata.name.unwrap()));
        match page.metadata.continue_ {
            Some(t) if !t.is_empty() => token = Some(t),
            _ => break,
        }
    }
    assert_eq!(pages, 3);
    let expected: Vec<String> = (0..1_234).map(|i| format!("cm-{i:05}")).collect();
    assert_eq!(names, expected);
    assert!(sim.list("v1", "ConfigMap").is_empty(), "nothing is stored");
    // Selectors cannot be honoured without objects: refused, not silently ignored.
    let err = cms
        .list(&ListParams::default().labels("app=demo").limit(10))
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 400),
        "{err:?}"
    );
}
