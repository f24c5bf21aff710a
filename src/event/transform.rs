//! Transforms: what is done to objects before they are cached, diffed and emitted.
//!
//! Global transforms (`transforms:`) run in the informers, before the cache, so that what is
//! cached, diffed and emitted is the same thing: a redacted value can never reach a patch,
//! and dropped or projected-away fields cost no memory. Routes can reshape further
//! (`routes[].transforms`), for their sinks only.
//!
//! Whether an object holds credentials is decided by the resource its informer watches (the
//! group and kind discovery resolved), never by the object's own `kind` field: a watch event
//! without `kind`, or a body that claims to be something else, is redacted all the same.
//! [`ObjectTransform::for_resource`] compiles the transform of one resource.

use std::sync::Arc;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::Sha256;

pub use super::pointer::{GlobError, PointerGlob};
use crate::config::{Error, ErrorKind, Errors};

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
    /// Replace each value of a Secret's `data` / `stringData`, its
    /// `kubectl.kubernetes.io/last-applied-configuration` annotation and any field a Secret
    /// does not define by a keyed hash, so changes stay visible but values never leave the
    /// agent. Decided by the watched resource (core `Secret`), not by the object's body.
    #[serde(default = "yes")]
    pub redact_secrets: bool,
    /// Key of the redaction hash (HMAC-SHA256). Without it, 32 random bytes are generated on
    /// first start and kept in `<state.dir>/redaction.key` (mode 0600); without a state
    /// directory, per process. Set it (from a Secret, via `${VAR}`) so that several agents
    /// hash alike.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redaction_key: Option<String>,
    /// More kinds that hold credentials (e.g. a CRD), with the paths whose values are hashed.
    /// Their last-applied-configuration annotation is hashed too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_kinds: Vec<SecretKindConfig>,
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
            secret_kinds: Vec::new(),
            ignore_paths: default_ignore_paths(),
            include_old: false,
            changed_by: true,
            shape: ShapeConfig::default(),
        }
    }
}

/// One entry of `transforms.secretKinds`: a kind whose objects carry credentials.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SecretKindConfig {
    /// The API group (`example.com`; `""` is the core group). Give this or `apiVersion`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// `group/version` (the version is ignored: every version of the kind is redacted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// The kind, as discovery names it (e.g. `DatabaseCredential`).
    pub kind: String,
    /// JSON Pointer globs whose values are replaced by keyed hashes (at least one).
    pub paths: Vec<String>,
}

impl SecretKindConfig {
    /// The group this entry names.
    fn group(&self) -> &str {
        match (&self.group, &self.api_version) {
            (Some(g), _) => g,
            (None, Some(av)) => av.rsplit_once('/').map_or("", |(g, _)| g),
            (None, None) => "",
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
    /// Keys its redaction hashes with `key` (the key resolved at start; see
    /// `crate::state::RedactionKey`).
    pub fn set_key(&mut self, key: &[u8]) {
        self.key = key.to_vec();
    }

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

/// The annotation `kubectl apply` writes: the whole applied manifest, values included.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// The top-level fields of a core Secret that carry no value; every other one is hashed.
const SECRET_FIELDS_WITHOUT_VALUES: &[&str] =
    &["apiVersion", "kind", "metadata", "type", "immutable"];

/// How the objects of one credential-holding resource are redacted.
#[derive(Debug, Clone, Default)]
struct SecretRule {
    /// Core `Secret`: every value of `data` and `stringData` and every field a Secret does
    /// not define.
    core: bool,
    /// Further paths to hash (`secretKinds`).
    paths: Vec<PointerGlob>,
}

impl SecretRule {
    fn apply(&self, key: &[u8], obj: &mut Value) {
        let hash = |v: &mut Value| {
            if !v.is_null() {
                *v = Value::String(redact_hash(key, v));
            }
        };
        if let Some(ann) = obj
            .get_mut("metadata")
            .and_then(|m| m.get_mut("annotations"))
            .and_then(|a| a.get_mut(LAST_APPLIED))
        {
            hash(ann);
        }
        if self.core
            && let Some(map) = obj.as_object_mut()
        {
            for (field, v) in map.iter_mut() {
                match (field.as_str(), v) {
                    (f, _) if SECRET_FIELDS_WITHOUT_VALUES.contains(&f) => {}
                    ("data" | "stringData", Value::Object(values)) => {
                        values.values_mut().for_each(hash);
                    }
                    // Anything else (a malformed `data`, a field Secrets do not have) may hold
                    // a value: hashed whole.
                    (_, v) => hash(v),
                }
            }
        }
        for g in &self.paths {
            g.for_each_mut(obj, &mut |v| hash(v));
        }
    }
}

/// The compiled global transforms, applied by informers. [`ObjectTransform::new`] compiles
/// the config; [`ObjectTransform::for_resource`] gives the transform of one resource.
#[derive(Debug, Clone)]
pub struct ObjectTransform {
    drop_managed_fields: bool,
    changed_by: bool,
    redact_secrets: bool,
    key: Arc<[u8]>,
    /// `secretKinds`: (group, kind, paths).
    secret_kinds: Vec<(String, String, Vec<PointerGlob>)>,
    /// Set by `for_resource` when the resource holds credentials.
    secret: Option<SecretRule>,
    shape: Shape,
    /// Changes confined to these paths are not emitted.
    pub ignore: Vec<PointerGlob>,
}

impl ObjectTransform {
    /// Compiles a config; `key` keys every redaction hash (see `crate::state::RedactionKey`;
    /// [`ObjectTransform::with_key`] replaces it once resolved at start).
    ///
    /// # Errors
    /// Every path that does not compile, relative to `transforms`.
    pub fn new(config: &TransformConfig, key: impl AsRef<[u8]>) -> Result<Self, Errors> {
        let mut errors = Errors::default();
        let ignore = globs("ignorePaths", &config.ignore_paths, &mut errors);
        let key: Arc<[u8]> = key.as_ref().into();
        let shape = errors.absorb(config.shape.compile(&key));
        let mut secret_kinds = Vec::new();
        for (index, k) in config.secret_kinds.iter().enumerate() {
            let at = |path: &str| format!("secretKinds[{index}].{path}");
            let invalid =
                |path: &str, message: String| Error::new(at(path), ErrorKind::Invalid(message));
            if k.group.is_some() == k.api_version.is_some() {
                errors.push(invalid(
                    "group",
                    "give exactly one of `group` and `apiVersion`".into(),
                ));
            }
            if let Some(av) = &k.api_version
                && (av.is_empty() || av.split('/').count() > 2)
            {
                errors.push(invalid(
                    "apiVersion",
                    format!("expected `version` or `group/version`, got `{av}`"),
                ));
            }
            if k.kind.trim().is_empty() {
                errors.push(Error::new(at("kind"), ErrorKind::Empty));
            }
            if k.paths.is_empty() {
                errors.push(invalid(
                    "paths",
                    "name at least one path whose values are hashed".into(),
                ));
            }
            let paths = globs(&at("paths"), &k.paths, &mut errors);
            secret_kinds.push((k.group().to_string(), k.kind.clone(), paths));
        }
        errors.finish(|| Self {
            drop_managed_fields: config.drop_managed_fields,
            changed_by: config.changed_by,
            redact_secrets: config.redact_secrets,
            key,
            secret_kinds,
            secret: None,
            shape: shape.unwrap_or_default(),
            ignore,
        })
    }

    /// The same transform with its redaction hashes keyed by `key`.
    pub fn with_key(&self, key: &[u8]) -> Self {
        let mut t = self.clone();
        t.key = key.into();
        t.shape.set_key(key);
        t
    }

    /// The transform of the resource `group` / `kind` (as discovery resolved them): the same
    /// transform, plus the redaction of credentials when the resource holds them (core
    /// `Secret` with `redactSecrets`, or a `secretKinds` entry).
    pub fn for_resource(&self, group: &str, kind: &str) -> Self {
        let mut rule = SecretRule {
            core: self.redact_secrets && group.is_empty() && kind == "Secret",
            paths: Vec::new(),
        };
        for (g, k, paths) in &self.secret_kinds {
            if g == group && k == kind {
                rule.paths.extend(paths.iter().cloned());
            }
        }
        let holds_credentials = rule.core || !rule.paths.is_empty();
        Self {
            secret: holds_credentials.then_some(rule),
            ..self.clone()
        }
    }

    /// True when this transform redacts credentials (a Secret or a `secretKinds` resource).
    pub fn redacts_credentials(&self) -> bool {
        self.secret.is_some()
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

    /// True when applying this transform needs the object's tree: it redacts or reshapes.
    /// Otherwise it only drops `managedFields` (or nothing) and perhaps summarizes them,
    /// which an object's JSON can be rewritten for without one
    /// ([`crate::event::recompact`]).
    pub fn needs_tree(&self) -> bool {
        self.secret.is_some() || !self.shape.is_identity()
    }

    /// Applies the transforms in place.
    pub fn apply(&self, obj: &mut Value) {
        if self.drop_managed_fields
            && let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut)
        {
            meta.shift_remove("managedFields");
        }
        if let Some(rule) = &self.secret {
            rule.apply(&self.key, obj);
        }
        if !self.shape.is_identity() {
            self.shape.apply(obj);
        }
    }
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

    fn secrets(config: &TransformConfig) -> ObjectTransform {
        ObjectTransform::new(config, "k1")
            .unwrap()
            .for_resource("", "Secret")
    }

    #[test]
    fn secret_values_are_replaced_by_stable_hashes() {
        let t = secrets(&TransformConfig::default());
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
    fn the_resource_decides_not_the_body() {
        let config = TransformConfig::default();
        // A Secret's watch event without apiVersion/kind, or claiming another kind.
        for mut body in [
            json!({"metadata": {"name": "s"}, "data": {"k": "c2VjcmV0"}}),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}, "data": {"k": "c2VjcmV0"}}),
        ] {
            secrets(&config).apply(&mut body);
            assert!(!body.to_string().contains("c2VjcmV0"), "{body}");
        }
        // A ConfigMap claiming to be a Secret keeps its data: it is a ConfigMap.
        let mut cm =
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {}, "data": {"k": "v"}});
        let t = ObjectTransform::new(&config, "k1").unwrap();
        t.for_resource("", "ConfigMap").apply(&mut cm);
        assert_eq!(cm["data"]["k"], "v");
        // A `Secret` kind of another group is not a core Secret.
        assert!(
            !t.for_resource("example.com", "Secret")
                .redacts_credentials()
        );
        assert!(t.for_resource("", "Secret").redacts_credentials());
    }

    #[test]
    fn last_applied_configuration_and_unknown_secret_fields_are_hashed() {
        let applied = r#"{"apiVersion":"v1","data":{"password":"aHVudGVyMg=="},"kind":"Secret","metadata":{"annotations":{},"name":"db","namespace":"default"},"stringData":{"token":"plain-token"},"type":"Opaque"}"#;
        let mut s = json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": "db", "annotations": {LAST_APPLIED: applied, "note": "kept"}},
            "data": {"password": "aHVudGVyMg=="}, "extra": {"hidden": "value-elsewhere"},
            "stringData": "not-a-map"});
        secrets(&TransformConfig::default()).apply(&mut s);
        let text = s.to_string();
        for leaked in [
            "aHVudGVyMg==",
            "plain-token",
            "value-elsewhere",
            "not-a-map",
        ] {
            assert!(!text.contains(leaked), "{leaked} in {text}");
        }
        assert!(
            s["metadata"]["annotations"][LAST_APPLIED]
                .as_str()
                .unwrap()
                .starts_with("hmac-sha256:")
        );
        assert_eq!(s["metadata"]["annotations"]["note"], "kept");
        assert_eq!(s["type"], "Opaque");
    }

    #[test]
    fn secret_kinds_hash_their_paths_and_last_applied_for_their_group_only() {
        let config = TransformConfig {
            secret_kinds: vec![SecretKindConfig {
                group: None,
                api_version: Some("db.example.com/v1".into()),
                kind: "Credential".into(),
                paths: vec!["/spec/password".into(), "/spec/keys/*".into()],
            }],
            ..TransformConfig::default()
        };
        let t = ObjectTransform::new(&config, "k").unwrap();
        let body = json!({"metadata": {"annotations": {LAST_APPLIED: "{\"spec\":{\"password\":\"pw1\"}}"}},
            "spec": {"user": "app", "password": "pw1", "keys": ["k-one", "k-two"]}});
        let mut cred = body.clone();
        t.for_resource("db.example.com", "Credential")
            .apply(&mut cred);
        let text = cred.to_string();
        assert!(
            !["pw1", "k-one", "k-two"].iter().any(|v| text.contains(v)),
            "{text}"
        );
        assert_eq!(cred["spec"]["user"], "app");
        let mut other = body.clone();
        t.for_resource("other.example.com", "Credential")
            .apply(&mut other);
        assert_eq!(other, body);
    }

    #[test]
    fn secret_kinds_entries_are_checked() {
        let entry = |group: Option<&str>, av: Option<&str>, paths: &[&str]| TransformConfig {
            secret_kinds: vec![SecretKindConfig {
                group: group.map(Into::into),
                api_version: av.map(Into::into),
                kind: "X".into(),
                paths: paths.iter().map(|p| p.to_string()).collect(),
            }],
            ..TransformConfig::default()
        };
        let path =
            |c: TransformConfig| ObjectTransform::new(&c, "k").unwrap_err().0[0].path.clone();
        assert_eq!(path(entry(None, None, &["/a"])), "secretKinds[0].group");
        assert_eq!(
            path(entry(Some("g"), Some("g/v1"), &["/a"])),
            "secretKinds[0].group"
        );
        assert_eq!(path(entry(Some("g"), None, &[])), "secretKinds[0].paths");
        assert_eq!(
            path(entry(Some("g"), None, &["/a", "b"])),
            "secretKinds[0].paths[1]"
        );
        assert_eq!(
            path(entry(None, Some("a/b/c"), &["/a"])),
            "secretKinds[0].apiVersion"
        );
    }

    #[test]
    fn the_key_changes_every_hash() {
        let v = json!("same value");
        assert_eq!(redact_hash(b"k1", &v), redact_hash(b"k1", &v));
        assert_ne!(redact_hash(b"k1", &v), redact_hash(b"k2", &v));
    }

    #[test]
    fn non_secrets_keep_their_data() {
        let t = ObjectTransform::new(&TransformConfig::default(), "c1").unwrap();
        let mut cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {},
            "data": {"k": "v"}});
        t.for_resource("", "ConfigMap").apply(&mut cm);
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
