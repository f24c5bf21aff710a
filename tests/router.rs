//! Route evaluation through the public API: routes compiled from config, a `Router` deciding,
//! the acknowledgement tracker registering each change, recording sinks behind the real
//! queues and drivers, and what each sink received. No cluster involved.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use lookout::delivery::{ObjectId, Tracker};
use lookout::event::{Envelope, EnvelopeBuilder, Op, diff};
use lookout::router::{Route, RouteConfig, Router};
use lookout::sinks::{DeadLetter, Sink, SinkError, SinkLane};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const SINKS: &[&str] = &["lake", "oncall"];

/// A sink that keeps what it is given.
#[derive(Default)]
struct Recording(Mutex<Vec<Arc<Envelope>>>);

#[async_trait]
impl Sink for Recording {
    async fn send(&self, batch: &[Arc<Envelope>]) -> Result<(), SinkError> {
        self.0.lock().unwrap().extend(batch.iter().cloned());
        Ok(())
    }
}

fn compile(routes: &str) -> Result<Vec<Route>, String> {
    let configs: Vec<RouteConfig> = serde_yaml_ng::from_str(routes).expect("routes YAML");
    let names: Vec<String> = SINKS.iter().map(|s| s.to_string()).collect();
    configs
        .iter()
        .enumerate()
        .map(|(i, c)| Route::compile(c, i, &names, b"test-key").map_err(|e| e.to_string()))
        .collect()
}

/// Routes `events` through `routes` into the sinks' queues, each change registered with the
/// tracker; what each sink got, as `op kind ns/name` lines, and how many objects still have
/// a change some sink owes once every queue is drained (0: all acknowledged).
async fn route(routes: &str, events: Vec<Envelope>) -> (HashMap<&'static str, Vec<String>>, usize) {
    let routes = compile(routes).expect("routes compile");
    let tracker = Arc::new(Tracker::new(SINKS.len(), None));
    let recorders: Vec<Arc<Recording>> = SINKS.iter().map(|_| Arc::default()).collect();
    let lanes: Vec<SinkLane> = SINKS
        .iter()
        .zip(&recorders)
        .map(|(name, r)| SinkLane::new(name.to_string(), r.clone() as Arc<dyn Sink>, 100))
        .collect();
    let drivers: Vec<_> = lanes
        .iter()
        .map(|l| {
            l.spawn_driver(
                tracker.clone(),
                CancellationToken::new(),
                DeadLetter::log_only(&l.name),
            )
        })
        .collect();
    let router = Router::new(SINKS.len(), routes, Vec::new(), None);
    for e in events {
        let e = Arc::new(e);
        let targets = router.route(&e);
        let sinks: Vec<usize> = targets.iter().map(|(s, _)| *s).collect();
        let state = (e.op != Op::Delete).then_some(&*e.object);
        let tokens = tracker.register(&ObjectId::of(&e), state, &e.uid, || json!({}), &sinks);
        for ((s, deliver), token) in targets.into_iter().zip(tokens) {
            lanes[s]
                .queue
                .push_with(deliver, Some(token))
                .await
                .unwrap();
        }
    }
    for l in &lanes {
        l.queue.close();
    }
    for d in drivers {
        d.await.unwrap();
    }
    let got = SINKS
        .iter()
        .zip(&recorders)
        .map(|(name, r)| {
            let lines =
                r.0.lock()
                    .unwrap()
                    .iter()
                    .map(|e| format!("{} {} {}", e.op.as_str(), e.kind, e.display_name()))
                    .collect();
            (*name, lines)
        })
        .collect();
    (got, tracker.pending())
}

fn builder(api_version: &str, kind: &str) -> EnvelopeBuilder {
    EnvelopeBuilder {
        cluster: "test".into(),
        api_version: api_version.into(),
        kind: kind.into(),
        plural: format!("{}s", kind.to_lowercase()).as_str().into(),
        source: format!("{api_version}/{kind}").as_str().into(),
        include_old: false,
    }
}

fn object(kind: &str, ns: Option<&str>, name: &str, spec: Value) -> Value {
    let mut meta = json!({"name": name, "uid": format!("uid-{name}"), "resourceVersion": "1"});
    if let Some(ns) = ns {
        meta["namespace"] = json!(ns);
    }
    json!({"kind": kind, "metadata": meta, "spec": spec})
}

fn add(api_version: &str, kind: &str, ns: Option<&str>, name: &str, spec: Value) -> Envelope {
    builder(api_version, kind).build(
        Op::Add,
        Arc::new(object(kind, ns, name, spec)),
        None,
        None,
        Instant::now(),
    )
}

fn update(
    api_version: &str,
    kind: &str,
    ns: Option<&str>,
    name: &str,
    old: Value,
    new: Value,
) -> Envelope {
    let old = object(kind, ns, name, old);
    let mut new = object(kind, ns, name, new);
    new["metadata"]["resourceVersion"] = json!("2");
    let patch = diff::diff(&old, &new);
    builder(api_version, kind).build(
        Op::Update,
        Arc::new(new),
        Some(Arc::new(old)),
        Some(patch),
        Instant::now(),
    )
}

fn delete(api_version: &str, kind: &str, ns: Option<&str>, name: &str) -> Envelope {
    builder(api_version, kind).build(
        Op::Delete,
        Arc::new(object(kind, ns, name, json!({}))),
        None,
        None,
        Instant::now(),
    )
}

#[tokio::test]
async fn without_routes_every_sink_gets_every_event() {
    let (got, acks) = route(
        "[]",
        vec![
            add("v1", "ConfigMap", Some("a"), "x", json!({})),
            delete("v1", "ConfigMap", Some("a"), "x"),
        ],
    )
    .await;
    let want = vec!["add ConfigMap a/x", "delete ConfigMap a/x"];
    assert_eq!(got["lake"], want);
    assert_eq!(got["oncall"], want);
    assert_eq!(acks, 0, "acknowledged by both sinks");
}

#[tokio::test]
async fn a_drop_route_wins_over_every_forward_route() {
    let (got, _) = route(
        "
- sinks: [lake, oncall]
- drop: true
  namespaces: {include: [kube-*]}
",
        vec![
            add("v1", "ConfigMap", Some("kube-system"), "dns", json!({})),
            add("v1", "ConfigMap", Some("shop"), "cfg", json!({})),
        ],
    )
    .await;
    assert_eq!(got["lake"], vec!["add ConfigMap shop/cfg"]);
    assert_eq!(got["oncall"], vec!["add ConfigMap shop/cfg"]);
}

#[tokio::test]
async fn an_event_no_route_matches_goes_nowhere_and_is_acknowledged() {
    let (got, acks) = route(
        "
- sinks: [lake]
  kinds: [Deployment]
",
        vec![add("v1", "ConfigMap", Some("a"), "x", json!({}))],
    )
    .await;
    assert!(
        got["lake"].is_empty() && got["oncall"].is_empty(),
        "{got:?}"
    );
    assert_eq!(acks, 0, "routed nowhere: nothing owed");
}

#[tokio::test]
async fn kinds_and_api_versions_match_by_glob() {
    let (got, _) = route(
        "
- sinks: [lake]
  kinds: [Deploy*]
  apiVersions: [apps/*]
- sinks: [oncall]
  kinds: ['*Map']
",
        vec![
            add("apps/v1", "Deployment", Some("a"), "web", json!({})),
            add(
                "extensions/v1beta1",
                "Deployment",
                Some("a"),
                "old",
                json!({}),
            ),
            add("v1", "ConfigMap", Some("a"), "cfg", json!({})),
            add("apps/v1", "DaemonSet", Some("a"), "ds", json!({})),
        ],
    )
    .await;
    assert_eq!(got["lake"], vec!["add Deployment a/web"]);
    assert_eq!(got["oncall"], vec!["add ConfigMap a/cfg"]);
}

#[tokio::test]
async fn namespace_include_and_exclude_and_cluster_scoped_objects() {
    let (got, _) = route(
        "
- sinks: [lake]
  namespaces: {include: [shop, web-*], exclude: [web-test]}
- sinks: [oncall]
  namespaces: {exclude: [shop]}
",
        vec![
            add("v1", "ConfigMap", Some("shop"), "a", json!({})),
            add("v1", "ConfigMap", Some("web-prod"), "b", json!({})),
            add("v1", "ConfigMap", Some("web-test"), "c", json!({})),
            add("v1", "ConfigMap", Some("other"), "d", json!({})),
            add("v1", "Namespace", None, "shop", json!({})),
        ],
    )
    .await;
    // A non-empty include list never matches a cluster-scoped object; an exclude-only
    // filter does.
    assert_eq!(
        got["lake"],
        vec!["add ConfigMap shop/a", "add ConfigMap web-prod/b"]
    );
    assert_eq!(
        got["oncall"],
        vec![
            "add ConfigMap web-prod/b",
            "add ConfigMap web-test/c",
            "add ConfigMap other/d",
            "add Namespace shop"
        ]
    );
}

#[tokio::test]
async fn ops_and_changed_paths_select_updates() {
    let (got, _) = route(
        "
- sinks: [lake]
  ops: [update, delete]
- sinks: [oncall]
  changed: [/spec/replicas]
",
        vec![
            add(
                "apps/v1",
                "Deployment",
                Some("a"),
                "web",
                json!({"replicas": 1}),
            ),
            update(
                "apps/v1",
                "Deployment",
                Some("a"),
                "web",
                json!({"replicas": 1}),
                json!({"replicas": 3}),
            ),
            update(
                "apps/v1",
                "Deployment",
                Some("a"),
                "web",
                json!({"replicas": 3, "image": "x:1"}),
                json!({"replicas": 3, "image": "x:2"}),
            ),
            update(
                "apps/v1",
                "Deployment",
                Some("a"),
                "web",
                json!({"x": 1}),
                json!({}),
            ),
            update(
                "apps/v1",
                "Deployment",
                Some("a"),
                "web",
                Value::Null,
                json!({"replicas": 2}),
            ),
            delete("apps/v1", "Deployment", Some("a"), "web"),
        ],
    )
    .await;
    assert_eq!(
        got["lake"],
        vec![
            "update Deployment a/web",
            "update Deployment a/web",
            "update Deployment a/web",
            "update Deployment a/web",
            "delete Deployment a/web"
        ]
    );
    // `changed` filters updates only: the add and the delete pass; the image change and the
    // change elsewhere do not; a change above the path (the whole spec set) counts.
    let oncall: Vec<String> = got["oncall"].clone();
    assert_eq!(
        oncall,
        vec![
            "add Deployment a/web",
            "update Deployment a/web",
            "update Deployment a/web",
            "delete Deployment a/web"
        ]
    );
}

#[tokio::test]
async fn when_conditions_test_equals_exists_and_matches_and_all_must_hold() {
    let (got, _) = route(
        "
- sinks: [lake]
  when:
    - {path: /spec/replicas, equals: 3}
- sinks: [oncall]
  when:
    - {path: /spec/image, matches: '^web:'}
    - {path: /spec/paused, exists: false}
",
        vec![
            add(
                "apps/v1",
                "Deployment",
                Some("a"),
                "three",
                json!({"replicas": 3, "image": "web:1"}),
            ),
            add(
                "apps/v1",
                "Deployment",
                Some("a"),
                "three-text",
                json!({"replicas": "3"}),
            ),
            add(
                "apps/v1",
                "Deployment",
                Some("a"),
                "paused",
                json!({"image": "web:2", "paused": true}),
            ),
            add(
                "apps/v1",
                "Deployment",
                Some("a"),
                "null-paused",
                json!({"image": "web:2", "paused": null}),
            ),
            add(
                "apps/v1",
                "Deployment",
                Some("a"),
                "api",
                json!({"image": "api:1"}),
            ),
        ],
    )
    .await;
    assert_eq!(
        got["lake"],
        vec!["add Deployment a/three"],
        "equals compares JSON values"
    );
    assert_eq!(
        got["oncall"],
        vec!["add Deployment a/three", "add Deployment a/null-paused"],
        "a null value does not exist"
    );
}

#[tokio::test]
async fn a_sink_named_by_two_matching_routes_gets_the_event_once() {
    let (got, acks) = route(
        "
- sinks: [lake]
- sinks: [lake, oncall]
",
        vec![add("v1", "ConfigMap", Some("a"), "x", json!({}))],
    )
    .await;
    assert_eq!(got["lake"], vec!["add ConfigMap a/x"]);
    assert_eq!(got["oncall"], vec!["add ConfigMap a/x"]);
    assert_eq!(acks, 0, "owed once per sink, acknowledged once");
}

#[test]
fn routes_that_cannot_work_are_refused_with_their_key_path() {
    for (routes, path, why) in [
        ("- sinks: [nowhere]", "sinks[0]", "nowhere"),
        ("- kinds: [Pod]", "sinks", "at least one sink"),
        ("- drop: true\n  sinks: [lake]", "sinks", "drop"),
        (
            "- sinks: [lake]\n  when: [{path: /a, matches: '('}]",
            "when[0].matches",
            "regex",
        ),
        (
            "- sinks: [lake]\n  when: [{path: /a}]",
            "when[0]",
            "exactly one of",
        ),
        (
            "- sinks: [lake]\n  when: [{path: a, exists: true}]",
            "when[0].path",
            "/",
        ),
        (
            "- sinks: [lake]\n  namespaces: {selector: 'a in ('}",
            "namespaces.selector",
            "",
        ),
    ] {
        let err = compile(routes)
            .err()
            .unwrap_or_else(|| panic!("{routes} compiled"));
        assert!(err.contains(path) && err.contains(why), "{routes}: {err}");
    }
}
