//! Every Kubernetes API fixture (one JSON object per type, every field filled) whose kind kubesim
//! serves must come back JSON-equal through GET, LIST and WATCH: unknown fields and all.

mod common;

use common::*;
use serde_json::Value;

/// The fixtures checked into the repository (origin, version, licence: its README).
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/k8s-api");

/// Metadata the server owns; everything else must round-trip exactly.
const SERVER_SET: &[&str] = &[
    "uid",
    "resourceVersion",
    "creationTimestamp",
    "generation",
    "selfLink",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
];

fn strip_server_set(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        for f in SERVER_SET {
            m.remove(*f);
        }
    }
    v
}

/// `coordination.k8s.io.v1.Lease.json` → ("coordination.k8s.io/v1", "Lease").
fn gvk_of(file: &str) -> (String, String) {
    let stem = file.strip_suffix(".json").unwrap();
    let (rest, kind) = stem.rsplit_once('.').unwrap();
    let (group, version) = rest.rsplit_once('.').unwrap();
    let api_version = if group == "core" {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    (api_version, kind.to_string())
}

#[tokio::test]
async fn every_served_fixture_round_trips_through_get_list_and_watch() {
    let dir = std::fs::read_dir(FIXTURES).unwrap_or_else(|e| panic!("{FIXTURES}: {e}"));
    let sim = start().await;
    let mut files: Vec<String> = dir
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|f| f.ends_with(".json"))
        .collect();
    files.sort();
    let mut checked = Vec::new();
    for file in files {
        let (api_version, kind) = gvk_of(&file);
        let Some(spec) = sim.kind_spec(&api_version, &kind) else {
            continue;
        };
        let mut obj: Value =
            serde_json::from_str(&std::fs::read_to_string(format!("{FIXTURES}/{file}")).unwrap())
                .unwrap();
        let name = format!("fixture-{}", kind.to_lowercase());
        let meta = obj["metadata"].as_object_mut().unwrap();
        meta.insert("name".into(), name.clone().into());
        for f in SERVER_SET {
            meta.remove(*f);
        }
        if spec.namespaced {
            meta.insert("namespace".into(), "default".into());
        } else {
            meta.remove("namespace");
        }
        let collection = sim
            .collection_path(&api_version, &kind, Some("default"))
            .unwrap();
        let before = sim.current_resource_version();
        let created = http(&sim, "POST", &collection, None, &obj.to_string()).await;
        assert_eq!(
            created.status,
            201,
            "{file}: {}",
            String::from_utf8_lossy(&created.body)
        );
        let want = strip_server_set(&obj);
        assert_eq!(
            strip_server_set(&created.json()),
            want,
            "{file}: create response"
        );
        let got = http(&sim, "GET", &format!("{collection}/{name}"), None, "").await;
        assert_eq!(strip_server_set(&got.json()), want, "{file}: GET");
        let list = http(&sim, "GET", &collection, None, "").await.json();
        assert_eq!(list["kind"], format!("{kind}List"));
        let item = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["metadata"]["name"] == name.as_str())
            .expect("listed");
        assert_eq!(strip_server_set(item), want, "{file}: LIST");
        let ev = watch_lines(
            &sim,
            &format!("{collection}?watch=true&resourceVersion={before}"),
            1,
        )
        .await;
        assert_eq!(ev[0]["type"], "ADDED", "{file}");
        assert_eq!(strip_server_set(&ev[0]["object"]), want, "{file}: WATCH");
        checked.push(file);
    }
    eprintln!("fixtures checked: {checked:?}");
    assert!(
        checked.len() >= 20,
        "only {} fixtures served: {checked:?}",
        checked.len()
    );
}
