//! Read-only accessors for Kubernetes objects kept as plain JSON.
//!
//! Objects stay `serde_json::Value` end to end so no field is ever dropped by a typed struct;
//! these helpers read the few metadata fields the pipeline needs.

use serde_json::Value;

/// `metadata.<field>` as a string, if present.
pub fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str()
}

/// `metadata.name` (empty when missing, which the API server never sends).
pub fn name(obj: &Value) -> &str {
    meta_str(obj, "name").unwrap_or_default()
}

/// `metadata.namespace`, absent for cluster-scoped objects.
pub fn namespace(obj: &Value) -> Option<&str> {
    meta_str(obj, "namespace").filter(|s| !s.is_empty())
}

/// `metadata.uid`.
pub fn uid(obj: &Value) -> &str {
    meta_str(obj, "uid").unwrap_or_default()
}

/// `metadata.resourceVersion`.
pub fn resource_version(obj: &Value) -> &str {
    meta_str(obj, "resourceVersion").unwrap_or_default()
}

/// The cache key of an object: `namespace/name`, or `name` when cluster-scoped
/// (the same key client-go's `MetaNamespaceKeyFunc` produces).
pub fn cache_key(obj: &Value) -> String {
    match namespace(obj) {
        Some(ns) => format!("{ns}/{}", name(obj)),
        None => name(obj).to_string(),
    }
}

/// Sets `metadata.resourceVersion` in place (used when only ignored fields changed).
pub fn set_resource_version(obj: &mut Value, rv: &str) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
    }
}
