//! RFC 6902 diffs between two states of an object, and the "only ignored paths changed" test.

use std::fmt::Write;

use json_patch::jsonptr::{PointerBuf, Token};
use json_patch::{AddOperation, Patch, PatchOperation, RemoveOperation, ReplaceOperation};
use serde_json::{Map, Value};

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
