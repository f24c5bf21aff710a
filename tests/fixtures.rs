//! The Kubernetes project's own fixtures (every field of every served kind filled) pass
//! through the agent JSON-equal to what the API server stores, less the documented
//! transforms (managedFields dropped, Secret values hashed).

mod common;

use common::*;
use serde_json::Value;

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
async fn every_served_fixture_comes_out_of_the_agent_unchanged() {
    let dir = fixtures_dir();
    let sim = sim().await;
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|f| f.ends_with(".json"))
        .collect();
    files.sort();
    let mut served = Vec::new();
    for file in &files {
        let (api_version, kind) = gvk_of(file);
        if let Some(spec) = sim.kind_spec(&api_version, &kind) {
            served.push((file.clone(), api_version, kind, spec.namespaced));
        }
    }
    assert!(served.len() >= 15, "served fixtures: {served:?}");
    let resources: Vec<(&str, &str)> = served
        .iter()
        .map(|(_, av, k, _)| (av.as_str(), k.as_str()))
        .collect();
    let mut agent = Agent::start(&sim, &stdout_config(&resources)).await;
    // The initial list of the pre-existing namespaces comes first.
    let namespaces = sim.list("v1", "Namespace").len();
    let initial = agent.take(namespaces).await;
    assert!(initial.iter().all(|e| e["kind"] == "Namespace"));

    for (file, api_version, kind, namespaced) in &served {
        let mut obj: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join(file)).unwrap()).unwrap();
        let name = format!("fixture-{}", kind.to_lowercase());
        let meta = obj["metadata"].as_object_mut().unwrap();
        meta.insert("name".into(), name.clone().into());
        for f in [
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "generation",
            "selfLink",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generateName",
        ] {
            meta.remove(f);
        }
        // Finalizers would turn the clean-up delete into a pending deletion.
        meta.remove("finalizers");
        if *namespaced {
            meta.insert("namespace".into(), "default".into());
        } else {
            meta.remove("namespace");
        }
        sim.create(api_version, kind, obj)
            .unwrap_or_else(|e| panic!("{file}: {e:?}"));
        let ns = namespaced.then_some("default");
        let stored = sim.get(api_version, kind, ns, &name).unwrap();

        let e = agent.next().await;
        assert_eq!(
            (e["op"].as_str(), e["kind"].as_str(), e["name"].as_str()),
            (Some("add"), Some(kind.as_str()), Some(name.as_str())),
            "{file}"
        );
        let mut want = stored.clone();
        want["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("managedFields");
        if kind == "Secret" {
            for field in ["data", "stringData"] {
                if let Some(map) = want.get_mut(field).and_then(Value::as_object_mut) {
                    for (k, v) in map.iter_mut() {
                        let got = e["object"][field][k].as_str().unwrap_or_default();
                        assert!(
                            got.starts_with("hmac-sha256:"),
                            "{file}: {field}.{k} = {got}"
                        );
                        *v = got.into();
                    }
                }
            }
        }
        assert_eq!(e["object"], want, "{file}: the agent changed the object");
        assert!(
            e["object"].to_string().len() > 200,
            "{file}: fixture is substantial"
        );
    }
    eprintln!("fixtures through the agent: {}", served.len());
}
