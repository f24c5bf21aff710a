//! Discovery documents: legacy (`APIVersions`, `APIGroupList`, `APIResourceList`)
//! and aggregated (`apidiscovery.k8s.io/v2` `APIGroupDiscoveryList`).

use serde_json::{Value, json};

use crate::kinds::{KindInfo, Registry};

/// Media type of aggregated discovery responses (and what clients put in Accept to ask for it).
pub(crate) const AGGREGATED_CT: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// Whether an Accept header asks for aggregated discovery (v2 or v2beta1).
pub(crate) fn wants_aggregated(accept: &str) -> bool {
    accept.split(',').next().is_some_and(|first| {
        first.contains("as=APIGroupDiscoveryList") && first.contains("g=apidiscovery.k8s.io")
    })
}

const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

pub(crate) fn version() -> Value {
    json!({
        "major": "1",
        "minor": "31",
        "gitVersion": "v1.31.0-kubesim",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2024-08-13T00:00:00Z",
        "goVersion": "go1.22.5",
        "compiler": "gc",
        "platform": "linux/amd64"
    })
}

pub(crate) fn core_versions(server: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server}]
    })
}

fn group_entry(group: &str, versions: &[String]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    json!({"name": group, "versions": vs, "preferredVersion": vs[0].clone()})
}

pub(crate) fn groups(reg: &Registry) -> Value {
    let groups: Vec<Value> = reg
        .groups()
        .iter()
        .map(|(g, vs)| group_entry(g, vs))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

pub(crate) fn group(reg: &Registry, name: &str) -> Value {
    let vs = reg
        .groups()
        .into_iter()
        .find(|(g, _)| g == name)
        .map(|(_, v)| v)
        .unwrap_or_default();
    let mut g = group_entry(name, &vs);
    g["kind"] = json!("APIGroup");
    g["apiVersion"] = json!("v1");
    g
}

pub(crate) fn resources(reg: &Registry, group: &str, version: &str) -> Value {
    let mut list = Vec::new();
    for k in reg.in_group_version(group, version) {
        let mut r = json!({
            "name": k.spec.plural,
            "singularName": k.singular(),
            "namespaced": k.spec.namespaced,
            "kind": k.spec.kind,
            "verbs": VERBS,
        });
        if !k.short_names.is_empty() {
            r["shortNames"] = json!(k.short_names);
        }
        list.push(r);
        list.push(json!({
            "name": format!("{}/status", k.spec.plural),
            "singularName": "",
            "namespaced": k.spec.namespaced,
            "kind": k.spec.kind,
            "verbs": ["get", "patch", "update"],
        }));
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": list})
}

fn aggregated_resource(k: &KindInfo) -> Value {
    let mut r = json!({
        "resource": k.spec.plural,
        "responseKind": {"group": k.spec.group, "version": k.spec.version, "kind": k.spec.kind},
        "scope": if k.spec.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": k.singular(),
        "verbs": VERBS,
        "subresources": [{
            "subresource": "status",
            "responseKind": {"group": k.spec.group, "version": k.spec.version, "kind": k.spec.kind},
            "verbs": ["get", "patch", "update"]
        }]
    });
    if !k.short_names.is_empty() {
        r["shortNames"] = json!(k.short_names);
    }
    r
}

fn aggregated_group(reg: &Registry, group: &str, versions: &[String]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| {
            let res: Vec<Value> = reg
                .in_group_version(group, v)
                .map(aggregated_resource)
                .collect();
            json!({"version": v, "resources": res, "freshness": "Current"})
        })
        .collect();
    json!({"metadata": {"name": group, "creationTimestamp": null}, "versions": vs})
}

/// Aggregated discovery for `/api` (core) or `/apis` (all named groups).
pub(crate) fn aggregated(reg: &Registry, core: bool) -> Value {
    let items: Vec<Value> = if core {
        vec![aggregated_group(reg, "", &["v1".to_string()])]
    } else {
        reg.groups()
            .iter()
            .map(|(g, vs)| aggregated_group(reg, g, vs))
            .collect()
    };
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}
