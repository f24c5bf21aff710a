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

/// The metadata that names one state of an object: read from its tree once, so that a state
/// held only as JSON (its tree let go on the task that parsed it) is named without decoding
/// it again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ident {
    /// `metadata.namespace`, absent for cluster-scoped objects.
    pub namespace: Option<String>,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.uid`.
    pub uid: String,
    /// `metadata.resourceVersion`.
    pub resource_version: String,
}

impl Ident {
    /// What names `obj` (empty fields where it has none, as the accessors above answer).
    pub fn of(obj: &Value) -> Ident {
        Ident {
            namespace: namespace(obj).map(str::to_string),
            name: name(obj).to_string(),
            uid: uid(obj).to_string(),
            resource_version: resource_version(obj).to_string(),
        }
    }

    /// [`cache_key`] of the object named.
    pub fn cache_key(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{ns}/{}", self.name),
            None => self.name.clone(),
        }
    }
}

/// Sets `metadata.resourceVersion` in place (used when only ignored fields changed).
pub fn set_resource_version(obj: &mut Value, rv: &str) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
    }
}
