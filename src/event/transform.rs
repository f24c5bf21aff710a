//! Transforms: what is done to objects before they are cached, diffed and emitted.
//!
//! Global transforms (`transforms:`) run in the informers, before the cache, so that what is
//! cached, diffed and emitted is the same thing: a redacted value can never reach a patch,
//! and dropped or projected-away fields cost no memory. Routes can reshape further
//! (`routes[].transforms`), for their sinks only.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::Sha256;

pub use super::pointer::{GlobError, PointerGlob};
use crate::config::{Error, Errors};

/// The transforms every transform list has: the global `transforms:` and each
/// `routes[].transforms`. Drop, keep-only and redact, in that order of declaration.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ShapeConfig {
    /// Pointer globs removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drop_paths: Vec<String>,
    /// When set, keep only these pointer globs (plus apiVersion, kind and the identity
    /// metadata): a projection (`[/metadata]` = metadata only). Globally it also shrinks
    /// the cache.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keep_paths: Vec<String>,
    /// Values to redact, by pointer glob.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redact: Vec<RedactRule>,
}

/// What the user can set under `transforms:`, besides the [`ShapeConfig`] keys.
///
/// Its `Deserialize` covers only its own keys: a `transforms:` map is split between the two
/// structs by the config loader (`config::decode`), so both keep `deny_unknown_fields`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TransformConfig {
    /// Drop `metadata.managedFields` (server-side-apply bookkeeping, often half the object).
    #[serde(default = "yes")]
    pub drop_managed_fields: bool,
    /// Replace each value of a Secret's `data` / `stringData` by a keyed hash, so changes stay
    /// visible but values never leave the cluster.
    #[serde(default = "yes")]
    pub redact_secrets: bool,
    /// Key of the redaction hash (HMAC-SHA256). Set it (from a Secret, via `${VAR}`) so that
    /// low-entropy values cannot be guessed from their hash; the default is the cluster name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redaction_key: Option<String>,
    /// JSON Pointer globs of changes that alone do not make an update worth emitting. A pointer
    /// also covers everything below it; `*` matches within one segment.
    #[serde(default = "default_ignore_paths")]
    pub ignore_paths: Vec<String>,
    /// Add the previous object as `old` to update envelopes.
    #[serde(default)]
    pub include_old: bool,
    /// Name the writers of each add and update (`changedBy`), read from `managedFields`
    /// before they are dropped.
    #[serde(default = "yes")]
    pub changed_by: bool,
    /// `dropPaths`, `keepPaths`, `redact`, applied to every object.
    #[serde(flatten, skip_deserializing)]
    pub shape: ShapeConfig,
}

impl Default for TransformConfig {
    fn default() -> Self {
        Self {
            drop_managed_fields: true,
            redact_secrets: true,
            redaction_key: None,
            ignore_paths: default_ignore_paths(),
            include_old: false,
            changed_by: true,
            shape: ShapeConfig::default(),
        }
    }
}

/// One redaction: every value at `path` is replaced.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RedactRule {
    /// Pointer glob, e.g. `/spec/template/spec/containers/*/env/*/value` or
    /// `/metadata/annotations/*token*`.
    pub path: String,
    /// `hash` (keyed HMAC, changes stay visible) or `mask` (a fixed string).
    #[serde(default)]
    pub with: RedactWith,
    /// The replacement for `with: mask`.
    #[serde(default = "default_mask")]
    pub mask: String,
}

/// How a redacted value is replaced.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RedactWith {
    /// `hmac-sha256:<hex>`.
    #[default]
    Hash,
    /// A fixed string.
    Mask,
}

fn yes() -> bool {
    true
}

fn default_mask() -> String {
    "***".to_string()
}

fn default_ignore_paths() -> Vec<String> {
    vec![
        "/metadata/resourceVersion".into(),
        "/metadata/managedFields".into(),
    ]
}

/// Fields a projection always keeps: without them an envelope has no identity.
const IDENTITY: &[&str] = &[
    "/apiVersion",
    "/kind",
    "/metadata/name",
    "/metadata/namespace",
    "/metadata/uid",
    "/metadata/resourceVersion",
    "/metadata/deletionTimestamp",
];

/// Drop, keep-only and redact, compiled.
#[derive(Debug, Clone, Default)]
pub struct Shape {
    drop: Vec<PointerGlob>,
    keep: Vec<PointerGlob>,
    redact: Vec<(PointerGlob, RedactWith, String)>,
    key: Vec<u8>,
}

/// Compiles the pointer globs of list `field`; each one that does not parse is recorded in
/// `errors` at `field[i]`.
pub fn globs(field: &str, list: &[String], errors: &mut Errors) -> Vec<PointerGlob> {
    list.iter()
        .enumerate()
        .filter_map(|(i, p)| {
            errors.take(PointerGlob::parse(p).map_err(|e| Error::new(format!("{field}[{i}]"), e)))
        })
        .collect()
}

impl ShapeConfig {
    /// Compiles the three lists; `key` keys the redaction hash.
    ///
    /// # Errors
    /// Every glob that does not parse, at its path in the list (`dropPaths[1]`).
    pub fn compile(&self, key: &[u8]) -> Result<Shape, Errors> {
        let mut errors = Errors::default();
        let drop = globs("dropPaths", &self.drop_paths, &mut errors);
        let mut keep = globs("keepPaths", &self.keep_paths, &mut errors);
        let redact_globs = self
            .redact
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                let glob = PointerGlob::parse(&r.path)
                    .map_err(|e| Error::new(format!("redact[{i}].path"), e));
                errors.take(glob).map(|g| (g, r.with, r.mask.clone()))
            })
            .collect();
        if !keep.is_empty() {
            keep.extend(
                IDENTITY
                    .iter()
                    .map(|p| PointerGlob::parse(p).expect("valid")),
            );
        }
        errors.finish(|| Shape {
            drop,
            keep,
            redact: redact_globs,
            key: key.to_vec(),
        })
    }
}

impl Shape {
    /// True when applying it changes nothing.
    pub fn is_identity(&self) -> bool {
        self.drop.is_empty() && self.keep.is_empty() && self.redact.is_empty()
    }

    /// Applies projection, then drops, then redactions, in place.
    pub fn apply(&self, obj: &mut Value) {
        if !self.keep.is_empty() {
            let mut kept = Value::Object(Map::new());
            for g in &self.keep {
                g.copy_into(obj, &mut kept);
            }
            *obj = kept;
        }
        for g in &self.drop {
            g.remove_from(obj);
        }
        for (g, with, mask) in &self.redact {
            g.for_each_mut(obj, &mut |v| {
                if !v.is_null() {
                    *v = Value::String(match with {
                        RedactWith::Hash => redact_hash(&self.key, v),
                        RedactWith::Mask => mask.clone(),
                    });
                }
            });
        }
    }
}

/// The compiled global transforms, applied by informers.
#[derive(Debug, Clone)]
pub struct ObjectTransform {
    drop_managed_fields: bool,
    changed_by: bool,
    redaction_key: Option<Vec<u8>>,
    shape: Shape,
    /// Changes confined to these paths are not emitted.
    pub ignore: Vec<PointerGlob>,
}

impl ObjectTransform {
    /// Compiles a config; `cluster` is the default redaction key.
    ///
    /// # Errors
    /// Every path that does not compile, relative to `transforms`.
    pub fn new(config: &TransformConfig, cluster: &str) -> Result<Self, Errors> {
        let mut errors = Errors::default();
        let ignore = globs("ignorePaths", &config.ignore_paths, &mut errors);
        let key = config
            .redaction_key
            .clone()
            .unwrap_or_else(|| cluster.to_string())
            .into_bytes();
        let shape = errors.absorb(config.shape.compile(&key));
        errors.finish(|| Self {
            drop_managed_fields: config.drop_managed_fields,
            changed_by: config.changed_by,
            redaction_key: config.redact_secrets.then_some(key),
            shape: shape.unwrap_or_default(),
            ignore,
        })
    }

    /// True when `metadata.managedFields` is dropped (the informers then never parse it).
    pub fn drops_managed_fields(&self) -> bool {
        self.drop_managed_fields
    }

    /// True when adds and updates name their writers (`transforms.changedBy`): informers
    /// then keep a summary of each object's `managedFields` (see [`super::changed_by`]).
    pub fn attributes_changes(&self) -> bool {
        self.changed_by
    }

    /// Applies the transforms in place.
    pub fn apply(&self, obj: &mut Value) {
        if self.drop_managed_fields
            && let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut)
        {
            meta.shift_remove("managedFields");
        }
        if let Some(key) = &self.redaction_key
            && is_secret(obj)
        {
            for field in ["data", "stringData"] {
                if let Some(map) = obj.get_mut(field).and_then(Value::as_object_mut) {
                    for v in map.values_mut() {
                        *v = Value::String(redact_hash(key, v));
                    }
                }
            }
        }
        if !self.shape.is_identity() {
            self.shape.apply(obj);
        }
    }
}

fn is_secret(obj: &Value) -> bool {
    obj.get("kind").and_then(Value::as_str) == Some("Secret")
        && obj.get("apiVersion").and_then(Value::as_str) == Some("v1")
}

/// `hmac-sha256:<hex>` of a value; the same value always gives the same string, so a
/// change of a value shows as a change without revealing either value.
pub fn redact_hash(key: &[u8], value: &Value) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    match value {
        Value::String(s) => mac.update(s.as_bytes()),
        other => mac.update(other.to_string().as_bytes()),
    }
    format!("hmac-sha256:{}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secret_values_are_replaced_by_stable_hashes() {
        let t = ObjectTransform::new(&TransformConfig::default(), "c1").unwrap();
        let mut s = json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "s", "managedFields": [{}]},
            "data": {"password": "aHVudGVyMg=="}, "stringData": {"x": "plain"}});
        t.apply(&mut s);
        let h = s["data"]["password"].as_str().unwrap().to_string();
        assert!(h.starts_with("hmac-sha256:"));
        assert!(!s.to_string().contains("aHVudGVyMg=="));
        assert!(!s.to_string().contains("plain"));
        assert!(s["metadata"].get("managedFields").is_none());
        let mut again = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {},
            "data": {"password": "aHVudGVyMg=="}});
        t.apply(&mut again);
        assert_eq!(again["data"]["password"], h.as_str());
    }

    #[test]
    fn non_secrets_keep_their_data() {
        let t = ObjectTransform::new(&TransformConfig::default(), "c1").unwrap();
        let mut cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {},
            "data": {"k": "v"}});
        t.apply(&mut cm);
        assert_eq!(cm["data"]["k"], "v");
    }

    #[test]
    fn metadata_only_projection_keeps_identity() {
        let config = TransformConfig {
            shape: ShapeConfig {
                keep_paths: vec!["/metadata/labels".into()],
                ..ShapeConfig::default()
            },
            ..TransformConfig::default()
        };
        let t = ObjectTransform::new(&config, "c").unwrap();
        let mut pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "n", "uid": "u", "resourceVersion": "1",
                "labels": {"a": "b"}, "annotations": {"big": "x"}},
            "spec": {"containers": []}, "status": {}});
        t.apply(&mut pod);
        assert_eq!(
            pod,
            json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"labels": {"a": "b"}, "name": "p", "namespace": "n", "uid": "u",
                "resourceVersion": "1"}})
        );
    }

    #[test]
    fn redaction_rules_hash_or_mask_matching_values() {
        let config = TransformConfig {
            shape: ShapeConfig {
                redact: vec![
                    RedactRule {
                        path: "/spec/containers/*/env/*/value".into(),
                        with: RedactWith::Mask,
                        mask: "***".into(),
                    },
                    RedactRule {
                        path: "/metadata/annotations/*token*".into(),
                        with: RedactWith::Hash,
                        mask: String::new(),
                    },
                ],
                drop_paths: vec!["/status".into()],
                ..ShapeConfig::default()
            },
            ..TransformConfig::default()
        };
        let t = ObjectTransform::new(&config, "c").unwrap();
        let mut pod = json!({"metadata": {"annotations": {"api-token": "s3cr3t", "note": "ok"}},
            "spec": {"containers": [{"env": [{"name": "PW", "value": "hunter2"}]}]},
            "status": {"phase": "Running"}});
        t.apply(&mut pod);
        assert_eq!(pod["spec"]["containers"][0]["env"][0]["value"], "***");
        assert!(
            pod["metadata"]["annotations"]["api-token"]
                .as_str()
                .unwrap()
                .starts_with("hmac-sha256:")
        );
        assert_eq!(pod["metadata"]["annotations"]["note"], "ok");
        assert!(pod.get("status").is_none());
        assert!(!pod.to_string().contains("hunter2") && !pod.to_string().contains("s3cr3t"));
    }
}
