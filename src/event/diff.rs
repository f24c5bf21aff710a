//! RFC 6902 diffs between two states of an object, and the "only ignored paths changed" test.

use std::fmt::Write;

use json_patch::jsonptr::{PointerBuf, Token};
use json_patch::{AddOperation, Patch, PatchOperation, RemoveOperation, ReplaceOperation};
use serde_json::{Map, Value};

use super::scan::{self, Kind, Malformed};
use super::transform::PointerGlob;

/// The JSON Patch that turns `old` into `new`: exactly the operations, in the order,
/// `json_patch::diff` gives (the envelope's `patch` is a public contract), computed faster.
///
/// `json_patch::diff` walks both trees to every leaf and pays an allocation per key on the
/// way back up (`PointerBuf::pop_back` splits the string off); an update of a Pod changes a
/// handful of leaves. Here an equal subtree is skipped after one comparison (it yields no
/// operation there either), and the path is one string truncated in place.
pub fn diff(old: &Value, new: &Value) -> Patch {
    let mut patch = Patch::default();
    let mut path = String::new();
    diff_value(old, new, &mut path, &mut patch);
    patch
}

fn pointer(path: &str) -> PointerBuf {
    PointerBuf::parse(path).expect("built from encoded tokens")
}

fn diff_value(old: &Value, new: &Value, path: &mut String, patch: &mut Patch) {
    match (old, new) {
        (Value::Object(o), Value::Object(n)) => {
            if o != n {
                diff_object(o, n, path, patch);
            }
        }
        (Value::Array(o), Value::Array(n)) => {
            if o != n {
                diff_array(o, n, path, patch);
            }
        }
        _ if old == new => {}
        _ => patch.0.push(PatchOperation::Replace(ReplaceOperation {
            path: pointer(path),
            value: new.clone(),
        })),
    }
}

fn diff_array(old: &[Value], new: &[Value], path: &mut String, patch: &mut Patch) {
    let at = path.len();
    let mut shift = 0usize;
    for idx in 0..old.len().max(new.len()) {
        // Writing to a String cannot fail.
        let _ = write!(path, "/{}", idx - shift);
        match (old.get(idx), new.get(idx)) {
            (Some(o), Some(n)) => diff_value(o, n, path, patch),
            (Some(_), None) => {
                shift += 1;
                patch.0.push(PatchOperation::Remove(RemoveOperation {
                    path: pointer(path),
                }));
            }
            (None, Some(n)) => patch.0.push(PatchOperation::Add(AddOperation {
                path: pointer(path),
                value: n.clone(),
            })),
            (None, None) => unreachable!("idx is below the longer length"),
        }
        path.truncate(at);
    }
}

fn diff_object(
    old: &Map<String, Value>,
    new: &Map<String, Value>,
    path: &mut String,
    patch: &mut Patch,
) {
    let at = path.len();
    for (key, n) in new {
        path.push('/');
        path.push_str(Token::new(key.as_str()).encoded());
        match old.get(key) {
            Some(o) => diff_value(o, n, path, patch),
            None => patch.0.push(PatchOperation::Add(AddOperation {
                path: pointer(path),
                value: n.clone(),
            })),
        }
        path.truncate(at);
    }
    for key in old.keys() {
        if !new.contains_key(key) {
            path.push('/');
            path.push_str(Token::new(key.as_str()).encoded());
            patch.0.push(PatchOperation::Remove(RemoveOperation {
                path: pointer(path),
            }));
            path.truncate(at);
        }
    }
}

/// [`diff`] of two objects given as their serialized JSON (the cache's form), without
/// parsing either into a tree: the same operations, in the same order.
///
/// Both are scanned side by side; a member or element whose bytes are equal on both sides is
/// skipped (equal text is an equal value), and only where bytes differ is either side read
/// further. Values are parsed only for the operations' values and for scalars whose bytes
/// differ (`1.0` and `1`, `"\u0041"` and `"A"`: compared as `serde_json` compares them).
/// Fast when both come from `serde_json`'s serialization, as the cache's do: equal
/// subtrees then have equal bytes.
///
/// # Errors
/// [`Malformed`] when either is not JSON (the caller may fall back to [`diff`]).
pub fn diff_json(old: &[u8], new: &[u8]) -> Result<Patch, Malformed> {
    let mut patch = Patch::default();
    let mut path = String::new();
    raw_value(scan::value(old)?, scan::value(new)?, &mut path, &mut patch)?;
    Ok(patch)
}

/// A value of a [`diff_json`] operation.
fn parse(v: &[u8]) -> Result<Value, Malformed> {
    serde_json::from_slice(v).map_err(|e| Malformed(e.column()))
}

fn raw_value(old: &[u8], new: &[u8], path: &mut String, patch: &mut Patch) -> Result<(), Malformed> {
    if old == new {
        return Ok(());
    }
    match (scan::kind(old), scan::kind(new)) {
        (Kind::Object, Kind::Object) => raw_object(old, new, path, patch),
        (Kind::Array, Kind::Array) => raw_array(old, new, path, patch),
        (Kind::Scalar, Kind::Scalar) if parse(old)? == parse(new)? => Ok(()),
        _ => {
            patch.0.push(PatchOperation::Replace(ReplaceOperation {
                path: pointer(path),
                value: parse(new)?,
            }));
            Ok(())
        }
    }
}

fn raw_array(old: &[u8], new: &[u8], path: &mut String, patch: &mut Patch) -> Result<(), Malformed> {
    let (old, new) = (scan::elements(old)?, scan::elements(new)?);
    let at = path.len();
    let mut shift = 0usize;
    for idx in 0..old.len().max(new.len()) {
        // Writing to a String cannot fail.
        let _ = write!(path, "/{}", idx - shift);
        match (old.get(idx), new.get(idx)) {
            (Some(o), Some(n)) => raw_value(o, n, path, patch)?,
            (Some(_), None) => {
                shift += 1;
                patch.0.push(PatchOperation::Remove(RemoveOperation {
                    path: pointer(path),
                }));
            }
            (None, Some(n)) => patch.0.push(PatchOperation::Add(AddOperation {
                path: pointer(path),
                value: parse(n)?,
            })),
            (None, None) => unreachable!("idx is below the longer length"),
        }
        path.truncate(at);
    }
    Ok(())
}

/// Members beyond this many are looked up through a hash map, not by a scan.
const LINEAR_MEMBERS: usize = 16;

fn raw_object(old: &[u8], new: &[u8], path: &mut String, patch: &mut Patch) -> Result<(), Malformed> {
    let (old, new) = (scan::members(old)?, scan::members(new)?);
    // Keys are compared as written: one serializer writes equal strings with equal escapes.
    let index: Option<std::collections::HashMap<&[u8], usize>> = (old.len() > LINEAR_MEMBERS)
        .then(|| old.iter().enumerate().map(|(i, (k, _))| (*k, i)).collect());
    let find = |key: &[u8], hint: usize| -> Option<usize> {
        if old.get(hint).is_some_and(|(k, _)| *k == key) {
            return Some(hint);
        }
        match &index {
            Some(index) => index.get(key).copied(),
            None => old.iter().position(|(k, _)| *k == key),
        }
    };
    let mut seen = vec![false; old.len()];
    let at = path.len();
    // Members usually keep their order: the next old member is tried first.
    let mut hint = 0;
    for (key, n) in &new {
        push_token(path, key)?;
        match find(key, hint) {
            Some(i) => {
                seen[i] = true;
                hint = i + 1;
                raw_value(old[i].1, n, path, patch)?;
            }
            None => patch.0.push(PatchOperation::Add(AddOperation {
                path: pointer(path),
                value: parse(n)?,
            })),
        }
        path.truncate(at);
    }
    for ((key, _), seen) in old.iter().zip(seen) {
        if !seen {
            push_token(path, key)?;
            patch.0.push(PatchOperation::Remove(RemoveOperation {
                path: pointer(path),
            }));
            path.truncate(at);
        }
    }
    Ok(())
}

/// Appends `/` and the key (as written between its quotes) as a pointer token.
fn push_token(path: &mut String, raw: &[u8]) -> Result<(), Malformed> {
    path.push('/');
    path.push_str(Token::new(scan::key(raw)?.as_ref()).encoded());
    Ok(())
}

/// The path a patch operation writes to.
pub fn op_path(op: &PatchOperation) -> String {
    match op {
        PatchOperation::Add(o) => o.path.to_string(),
        PatchOperation::Remove(o) => o.path.to_string(),
        PatchOperation::Replace(o) => o.path.to_string(),
        PatchOperation::Move(o) => o.path.to_string(),
        PatchOperation::Copy(o) => o.path.to_string(),
        PatchOperation::Test(o) => o.path.to_string(),
    }
}

/// True when every operation of `patch` touches only paths matched by `ignored`
/// (an empty patch counts as "nothing to emit" too).
pub fn only_ignored_changes(patch: &Patch, ignored: &[PointerGlob]) -> bool {
    patch.0.iter().all(|op| {
        let path = op_path(op);
        ignored.iter().any(|g| g.matches_prefix_of(&path))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn applying_the_diff_to_old_gives_new() {
        let old = json!({"a": 1, "b": [1, 2, 3], "c": {"d": "x"}});
        let new = json!({"a": 2, "b": [1, 3], "c": {"e": "y"}, "f": null});
        let p = diff(&old, &new);
        let mut doc = old.clone();
        json_patch::patch(&mut doc, &p).unwrap();
        assert_eq!(doc, new);
    }

    /// Objects that exercise every branch: nested changes, adds, removes, arrays growing and
    /// shrinking, type changes, keys that need escaping, equal subtrees.
    fn pairs() -> Vec<(Value, Value)> {
        vec![
            (json!({"a": 1}), json!({"a": 1})),
            (
                json!({"a": 1, "b": [1, 2, 3], "c": {"d": "x"}}),
                json!({"a": 2, "b": [1, 3], "c": {"e": "y"}, "f": null}),
            ),
            (json!([1, 2]), json!([0, 1, 2, 3])),
            (
                json!({"x/y": {"m~n": 1}, "": 2}),
                json!({"x/y": {"m~n": 3}, "": [2]}),
            ),
            (
                json!({"s": {"t": [{"u": 1}, {"v": 2}]}, "k": "same"}),
                json!({"s": {"t": [{"u": 1}, {"v": 3}, {"w": 4}]}, "k": "same"}),
            ),
            (json!({"n": 1}), json!({"n": 1.0})),
            (json!({"o": {"p": 1}}), json!({"o": [1]})),
            (json!("a"), json!({"a": 1})),
            (
                json!({"meta": {"labels": {"a": "1", "b": "2"}}, "spec": {"big": [1, 2, 3]}}),
                json!({"meta": {"labels": {"b": "2", "a": "1", "c": "3"}}, "spec": {"big": [1, 2, 3]}}),
            ),
        ]
    }

    #[test]
    fn the_diff_is_exactly_what_json_patch_computes() {
        for (old, new) in pairs() {
            let ours = diff(&old, &new);
            assert_eq!(ours, json_patch::diff(&old, &new), "{old} → {new}");
            assert_eq!(
                serde_json::to_string(&ours).unwrap(),
                serde_json::to_string(&json_patch::diff(&old, &new)).unwrap()
            );
            let mut doc = old.clone();
            json_patch::patch(&mut doc, &ours).unwrap();
            assert_eq!(doc, new);
        }
    }

    /// `json_patch::diff`, and the diff of the serialized forms (as the cache keeps them).
    fn check_json(old: &Value, new: &Value) {
        let want = json_patch::diff(old, new);
        let (o, n) = (
            serde_json::to_vec(old).unwrap(),
            serde_json::to_vec(new).unwrap(),
        );
        let ours = diff_json(&o, &n).unwrap();
        assert_eq!(ours, want, "{old} → {new}");
        assert_eq!(
            serde_json::to_string(&ours).unwrap(),
            serde_json::to_string(&want).unwrap()
        );
        // Pretty-printed input (whitespace between tokens) gives the same patch.
        let (o, n) = (
            serde_json::to_vec_pretty(old).unwrap(),
            serde_json::to_vec_pretty(new).unwrap(),
        );
        assert_eq!(diff_json(&o, &n).unwrap(), want, "pretty {old} → {new}");
    }

    #[test]
    fn the_diff_of_serialized_objects_is_exactly_what_json_patch_computes() {
        let mut pairs = pairs();
        pairs.extend([
            (json!({"n": -0.0}), json!({"n": 0.0})),
            (json!({"s": "A"}), json!({"s": "B", "t": "\u{00e9}\"/"})),
            (json!([{"a": 1}, 2]), json!([])),
            (json!({}), json!({"a": {"b": [null, true, false, 1e300, -3]}})),
            (json!({"a": {"b": [null, true, false, 1e300, -3]}}), json!({})),
        ]);
        // Objects with more members than a linear lookup handles, reordered.
        let many: Map<String, Value> = (0..40).map(|i| (format!("k{i}"), json!(i))).collect();
        let mut other: Map<String, Value> = many.clone().into_iter().rev().collect();
        other.insert("k3".into(), json!("changed"));
        other.shift_remove("k7");
        other.insert("new".into(), json!({"x": 1}));
        pairs.push((Value::Object(many), Value::Object(other)));
        pairs.push((pod(0), pod(1)));
        for (old, new) in pairs {
            check_json(&old, &new);
            check_json(&new, &old);
        }
    }

    /// A Pod shaped like the benchmark's (labels, annotations, status conditions).
    fn pod(revision: u32) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-1", "namespace": "shop", "uid": "u-1",
                "resourceVersion": (100 + revision).to_string(),
                "labels": {"app": "web", "bench/revision": revision.to_string()},
                "annotations": {"bench.lookout.dev/touched": "x"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web"}]},
            "spec": {"containers": [{"name": "main", "image": "nginx:1.27",
                "ports": [{"containerPort": 80, "protocol": "TCP"}],
                "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}],
                "nodeName": "node-3"},
            "status": {"phase": "Running", "conditions": [
                {"type": "Ready", "status": if revision % 2 == 0 { "True" } else { "False" },
                    "lastProbeTime": null, "lastTransitionTime": format!("2026-01-01T00:00:{revision:02}Z")},
                {"type": "PodScheduled", "status": "True", "lastProbeTime": null}]}})
    }

    #[test]
    fn a_malformed_side_is_an_error() {
        assert!(diff_json(b"{\"a\":1}", b"{\"a\":").is_err());
        assert!(diff_json(b"{\"a\":1} x", b"{}").is_err());
        assert!(diff_json(b"{\"a\":1}", b"{\"a\":tru}").is_err());
    }

    /// JSON trees of a few levels with a small alphabet of keys and values, so that two
    /// of them share members, arrays grow and shrink, and numbers differ only in type.
    fn tree() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            (-2i64..3).prop_map(Value::from),
            prop_oneof![Just(1.0f64), Just(-0.0), Just(0.5)].prop_map(Value::from),
            prop_oneof![Just("a"), Just("b"), Just("é~/\""), Just("")].prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 48, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::from),
                prop::collection::vec(
                    (prop_oneof![Just("a"), Just("b"), Just("c/d"), Just("e~f")], inner),
                    0..5
                )
                .prop_map(|kv| Value::Object(
                    kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
                )),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn any_two_trees_diff_as_json_patch_diffs_them(old in tree(), new in tree()) {
            check_json(&old, &new);
        }
    }

    #[test]
    fn resource_version_only_changes_are_ignored() {
        let old = json!({"metadata": {"resourceVersion": "1", "name": "a"}});
        let new = json!({"metadata": {"resourceVersion": "2", "name": "a"}});
        let ignored = vec![PointerGlob::parse("/metadata/resourceVersion").unwrap()];
        assert!(only_ignored_changes(&diff(&old, &new), &ignored));
        let new2 = json!({"metadata": {"resourceVersion": "2", "name": "b"}});
        assert!(!only_ignored_changes(&diff(&old, &new2), &ignored));
    }
}
