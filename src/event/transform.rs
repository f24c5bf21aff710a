//! Transforms applied to every object before it is cached and diffed.
//!
//! They run before the cache so that what is cached, diffed and emitted is the same thing:
//! a value that was redacted can never reach a patch, and dropped fields cost no memory.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Sha256;

/// What the user can set under `transforms:`.
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
    /// JSON Pointer globs (`*` matches one segment) of changes that alone do not make an
    /// update worth emitting. A pointer also covers everything below it.
    #[serde(default = "default_ignore_paths")]
    pub ignore_paths: Vec<String>,
    /// Add the previous object as `old` to update envelopes.
    #[serde(default)]
    pub include_old: bool,
}

impl Default for TransformConfig {
    fn default() -> Self {
        Self {
            drop_managed_fields: true,
            redact_secrets: true,
            redaction_key: None,
            ignore_paths: default_ignore_paths(),
            include_old: false,
        }
    }
}

fn yes() -> bool {
    true
}

fn default_ignore_paths() -> Vec<String> {
    vec![
        "/metadata/resourceVersion".into(),
        "/metadata/managedFields".into(),
    ]
}

/// A JSON Pointer whose segments may be `*` (any one segment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PointerGlob {
    segments: Vec<String>,
}

/// A pointer glob that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("invalid JSON Pointer glob `{glob}`: {reason}")]
pub struct GlobError {
    glob: String,
    reason: &'static str,
}

impl PointerGlob {
    /// Parses `/a/*/b` (RFC 6901 escapes `~0` and `~1` allowed).
    pub fn parse(s: &str) -> Result<Self, GlobError> {
        if !s.starts_with('/') {
            return Err(GlobError {
                glob: s.into(),
                reason: "must start with `/`",
            });
        }
        let mut segments = Vec::new();
        for raw in s[1..].split('/') {
            if raw.contains('~') && !valid_escapes(raw) {
                return Err(GlobError {
                    glob: s.into(),
                    reason: "`~` must be followed by 0 or 1",
                });
            }
            segments.push(raw.replace("~1", "/").replace("~0", "~"));
        }
        Ok(Self { segments })
    }

    /// True when this glob equals `pointer` or a prefix of it, segment by segment.
    pub fn matches_prefix_of(&self, pointer: &str) -> bool {
        let mut parts = pointer.split('/').skip(1);
        for seg in &self.segments {
            match parts.next() {
                Some(p) if seg == "*" || unescape_eq(p, seg) => {}
                _ => return false,
            }
        }
        true
    }
}

fn valid_escapes(raw: &str) -> bool {
    let b = raw.as_bytes();
    b.iter()
        .enumerate()
        .all(|(i, c)| *c != b'~' || matches!(b.get(i + 1), Some(b'0') | Some(b'1')))
}

fn unescape_eq(escaped: &str, plain: &str) -> bool {
    if escaped.contains('~') {
        escaped.replace("~1", "/").replace("~0", "~") == plain
    } else {
        escaped == plain
    }
}

/// The compiled form of [`TransformConfig`], applied by informers.
#[derive(Debug, Clone)]
pub struct ObjectTransform {
    drop_managed_fields: bool,
    redaction_key: Option<Vec<u8>>,
    /// Changes confined to these paths are not emitted.
    pub ignore: Vec<PointerGlob>,
}

impl ObjectTransform {
    /// Compiles a validated config; `cluster` is the default redaction key.
    pub fn new(config: &TransformConfig, cluster: &str) -> Result<Self, GlobError> {
        let ignore = config
            .ignore_paths
            .iter()
            .map(|p| PointerGlob::parse(p))
            .collect::<Result<_, _>>()?;
        let redaction_key = config.redact_secrets.then(|| {
            config
                .redaction_key
                .clone()
                .unwrap_or_else(|| cluster.to_string())
                .into_bytes()
        });
        Ok(Self {
            drop_managed_fields: config.drop_managed_fields,
            redaction_key,
            ignore,
        })
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
                        *v = Value::String(redact(key, v));
                    }
                }
            }
        }
    }
}

fn is_secret(obj: &Value) -> bool {
    obj.get("kind").and_then(Value::as_str) == Some("Secret")
        && obj.get("apiVersion").and_then(Value::as_str) == Some("v1")
}

/// `hmac-sha256:<hex>` of a value; the same value always gives the same string, so a
/// change of a Secret value shows as a change without revealing either value.
fn redact(key: &[u8], value: &Value) -> String {
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
    fn globs_match_segments_and_prefixes() {
        let g = PointerGlob::parse("/status/conditions/*/lastHeartbeatTime").unwrap();
        assert!(g.matches_prefix_of("/status/conditions/3/lastHeartbeatTime"));
        assert!(!g.matches_prefix_of("/status/conditions/3/status"));
        assert!(!g.matches_prefix_of("/status/conditions"));
        let m = PointerGlob::parse("/metadata/managedFields").unwrap();
        assert!(m.matches_prefix_of("/metadata/managedFields/0/manager"));
        let esc = PointerGlob::parse("/metadata/annotations/a~1b").unwrap();
        assert!(esc.matches_prefix_of("/metadata/annotations/a~1b"));
        assert!(PointerGlob::parse("metadata").is_err());
        assert!(PointerGlob::parse("/a/~2").is_err());
    }

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
}
