//! `meta.k8s.io/v1 Table` rendering, for `kubectl get` (which asks `Accept: ...;as=Table`).

use serde_json::{Value, json};

use crate::time::{human_age, now_unix, parse_rfc3339};

/// What each row's `object` holds (`includeObject` query parameter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IncludeObject {
    None,
    Metadata,
    Object,
}

impl IncludeObject {
    pub(crate) fn parse(v: Option<&str>) -> IncludeObject {
        match v {
            Some("None") => IncludeObject::None,
            Some("Object") => IncludeObject::Object,
            _ => IncludeObject::Metadata,
        }
    }
}

/// Whether an Accept header asks for a Table (client-go lists the Table types first).
pub(crate) fn wants_table(accept: &str) -> bool {
    accept
        .split(',')
        .next()
        .is_some_and(|first| first.contains("as=Table"))
}

fn columns() -> Value {
    json!([
        {"name": "Name", "type": "string", "format": "name", "description": "Name must be unique within a namespace. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names", "priority": 0},
        {"name": "Age", "type": "string", "format": "", "description": "CreationTimestamp is a timestamp representing the server time when this object was created. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata", "priority": 0}
    ])
}

fn row(obj: &Value, include: IncludeObject) -> Value {
    let name = obj.pointer("/metadata/name").cloned().unwrap_or(json!(""));
    let age = obj
        .pointer("/metadata/creationTimestamp")
        .and_then(Value::as_str)
        .and_then(parse_rfc3339)
        .map(|t| human_age(now_unix() - t))
        .unwrap_or_else(|| "<unknown>".into());
    let mut r = json!({"cells": [name, age]});
    match include {
        IncludeObject::None => {}
        IncludeObject::Metadata => {
            r["object"] = json!({
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": obj.get("metadata").cloned().unwrap_or(json!({}))
            })
        }
        IncludeObject::Object => r["object"] = obj.clone(),
    }
    r
}

/// A Table of `items` with list metadata.
pub(crate) fn table(
    items: &[&Value],
    rv: &str,
    cont: Option<&str>,
    include: IncludeObject,
) -> Value {
    let mut meta = json!({"resourceVersion": rv});
    if let Some(c) = cont {
        meta["continue"] = json!(c);
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": meta,
        "columnDefinitions": columns(),
        "rows": items.iter().map(|o| row(o, include)).collect::<Vec<_>>()
    })
}
