//! RFC 6902 diffs between two states of an object, and the "only ignored paths changed" test.

use std::fmt::Write;

use json_patch::jsonptr::{PointerBuf, Token};
use json_patch::{AddOperation, Patch, PatchOperation, RemoveOperation, ReplaceOperation};
use serde_json::{Map, Value};

use super::compact;
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

/// The patch from `old` to `new`, both given as the compact JSON `serde_json` wrote:
/// exactly [`diff`]'s answer for their trees, found by comparing subtrees' bytes and
/// descending only into those that differ, without building either tree.
///
/// Building a state's tree (a map insert per member, a string per key) cost as much as
/// parsing the change itself; here an unchanged subtree costs a scan and a `memcmp`, and only
/// the values an operation carries are decoded, from `new`'s bytes (exact: serde_json's
/// `float_roundtrip` makes decoding what it encoded give the same numbers). Matching members
/// by their written names gives `json_patch`'s order of operations only when the members both
/// states have in common are in the same order (two states of one object keep it): `None`
/// when they are not, or when the bytes are not such JSON; the caller diffs the trees then.
pub fn diff_json(old: &[u8], new: &[u8]) -> Option<Patch> {
    let mut patch = Patch::default();
    let mut path = String::new();
    walk(old, new, &mut path, &mut patch)?;
    Some(patch)
}

fn walk(old: &[u8], new: &[u8], path: &mut String, patch: &mut Patch) -> Option<()> {
    if old == new {
        return Some(());
    }
    match (old.first()?, new.first()?) {
        (b'{', b'{') => walk_object(old, new, path, patch),
        (b'[', b'[') => walk_array(old, new, path, patch),
        // Different bytes from one writer are different values, but for numbers that
        // compare equal as values (`-0.0` and `0.0`): those are compared as values.
        (o, n) if is_number_start(*o) && is_number_start(*n) => {
            let old: Value = serde_json::from_slice(old).ok()?;
            let new: Value = serde_json::from_slice(new).ok()?;
            if old != new {
                replace(new, path, patch);
            }
            Some(())
        }
        _ => {
            replace(serde_json::from_slice(new).ok()?, path, patch);
            Some(())
        }
    }
}

fn is_number_start(c: u8) -> bool {
    c.is_ascii_digit() || c == b'-'
}

fn replace(value: Value, path: &str, patch: &mut Patch) {
    patch.0.push(PatchOperation::Replace(ReplaceOperation {
        path: pointer(path),
        value,
    }));
}

/// Appends the member name `name` (as written: quoted, maybe escaped) to `path`.
fn push_name(path: &mut String, name: &[u8]) -> Option<()> {
    let inner = name.get(1..name.len().checked_sub(1)?)?;
    if inner.contains(&b'\\') {
        let key: String = serde_json::from_slice(name).ok()?;
        push_key(path, &key);
    } else {
        push_key(path, std::str::from_utf8(inner).ok()?);
    }
    Some(())
}

fn push_key(path: &mut String, key: &str) {
    path.push('/');
    path.push_str(Token::new(key).encoded());
}

fn walk_object(old: &[u8], new: &[u8], path: &mut String, patch: &mut Patch) -> Option<()> {
    let old_members = compact::members(old)?;
    let new_members = compact::members(new)?;
    let at = path.len();
    // `new`'s members before `next` were matched or added; old members not in `new` are
    // removed after all of `new`'s (json_patch's order).
    let mut next = 0;
    let mut removed = Vec::new();
    for (old_name, old_value) in old_members {
        let name = &old[old_name];
        let found = new_members[next..]
            .iter()
            .position(|(k, _)| &new[k.clone()] == name);
        match found {
            Some(skip) => {
                for (k, v) in &new_members[next..next + skip] {
                    add(&new[k.clone()], &new[v.clone()], at, path, patch)?;
                }
                let (k, v) = &new_members[next + skip];
                push_name(path, &new[k.clone()])?;
                walk(&old[old_value], &new[v.clone()], path, patch)?;
                path.truncate(at);
                next += skip + 1;
            }
            None if new_members[..next]
                .iter()
                .any(|(k, _)| &new[k.clone()] == name) =>
            {
                // Reordered: one pass cannot give json_patch's order.
                return None;
            }
            None => {
                push_name(path, name)?;
                removed.push(pointer(path));
                path.truncate(at);
            }
        }
    }
    for (k, v) in &new_members[next..] {
        add(&new[k.clone()], &new[v.clone()], at, path, patch)?;
    }
    patch.0.extend(
        removed
            .into_iter()
            .map(|path| PatchOperation::Remove(RemoveOperation { path })),
    );
    Some(())
}

fn add(name: &[u8], value: &[u8], at: usize, path: &mut String, patch: &mut Patch) -> Option<()> {
    push_name(path, name)?;
    patch.0.push(PatchOperation::Add(AddOperation {
        path: pointer(path),
        value: serde_json::from_slice(value).ok()?,
    }));
    path.truncate(at);
    Some(())
}

fn walk_array(old: &[u8], new: &[u8], path: &mut String, patch: &mut Patch) -> Option<()> {
    let old_elements = compact::elements(old)?;
    let new_elements = compact::elements(new)?;
    let at = path.len();
    let mut shift = 0usize;
    for idx in 0..old_elements.len().max(new_elements.len()) {
        // Writing to a String cannot fail.
        let _ = write!(path, "/{}", idx - shift);
        match (old_elements.get(idx), new_elements.get(idx)) {
            (Some(o), Some(n)) => walk(&old[o.clone()], &new[n.clone()], path, patch)?,
            (Some(_), None) => {
                shift += 1;
                patch.0.push(PatchOperation::Remove(RemoveOperation {
                    path: pointer(path),
                }));
            }
            (None, Some(n)) => patch.0.push(PatchOperation::Add(AddOperation {
                path: pointer(path),
                value: serde_json::from_slice(&new[n.clone()]).ok()?,
            })),
            (None, None) => unreachable!("idx is below the longer length"),
        }
        path.truncate(at);
    }
    Some(())
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

/// True when an operation of `patch` writes to `path` (an RFC 6901 pointer) or to a
/// value that contains it.
pub fn touches(patch: &Patch, path: &str) -> bool {
    patch.0.iter().any(|op| {
        let at = op_path(op);
        path.strip_prefix(at.as_str())
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    })
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

    #[test]
    fn the_diff_read_off_the_old_bytes_is_the_tree_diff() {
        for (old, new) in pairs() {
            let bytes = serde_json::to_vec(&old).unwrap();
            match diff_json(&bytes, &serde_json::to_vec(&new).unwrap()) {
                Some(p) => assert_eq!(p, json_patch::diff(&old, &new), "{old} → {new}"),
                // Only reordered members may send the caller to the tree diff.
                None => assert_ne!(
                    serde_json::to_string(&old).unwrap(),
                    serde_json::to_string(&reordered_like(&old, &new)).unwrap(),
                    "{old} → {new}"
                ),
            }
        }
    }

    /// `old` with its members in the order `new` has them: equal text to `old` when the
    /// two orders agree.
    fn reordered_like(old: &Value, new: &Value) -> Value {
        match (old, new) {
            (Value::Object(o), Value::Object(n)) => {
                let mut m = Map::new();
                for (k, nv) in n {
                    if let Some(ov) = o.get(k) {
                        m.insert(k.clone(), reordered_like(ov, nv));
                    }
                }
                for (k, ov) in o {
                    if !n.contains_key(k) {
                        m.insert(k.clone(), ov.clone());
                    }
                }
                Value::Object(m)
            }
            (Value::Array(o), Value::Array(n)) => Value::Array(
                o.iter()
                    .enumerate()
                    .map(|(i, ov)| n.get(i).map_or(ov.clone(), |nv| reordered_like(ov, nv)))
                    .collect(),
            ),
            _ => old.clone(),
        }
    }

    #[test]
    fn bytes_that_are_not_json_send_the_caller_to_the_tree_diff() {
        assert_eq!(diff_json(b"{\"a\":", b"{\"a\":1}"), None);
        assert_eq!(diff_json(b"{} {}", b"{\"a\":1}"), None);
        assert_eq!(diff_json(b"{\"a\":2}", b"{\"a\":1"), None);
        assert_eq!(diff_json(b"{\"a\":2}", b"{\"a\":}"), None);
        assert_eq!(diff_json(b"{\"a\":2}", b""), None);
    }

    /// JSON trees of a few levels with a small alphabet of keys and values, so that two
    /// of them share members (also reordered), arrays grow and shrink, and numbers differ
    /// only in type.
    fn tree() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            (-2i64..3).prop_map(Value::from),
            prop_oneof![Just(1.0f64), Just(-0.0), Just(0.0), Just(0.5), Just(1e300)]
                .prop_map(Value::from),
            prop_oneof![Just("a"), Just("b"), Just("é~/\"\n"), Just("")].prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 48, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::from),
                prop::collection::vec(
                    (
                        prop_oneof![Just("a"), Just("b"), Just("c/d"), Just("e~f"), Just("\"\\")],
                        inner
                    ),
                    0..5
                )
                .prop_map(|kv| Value::Object(
                    kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
                )),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

        #[test]
        fn any_two_trees_diff_from_bytes_as_json_patch_diffs_them(old in tree(), new in tree()) {
            let reference = json_patch::diff(&old, &new);
            prop_assert_eq!(&diff(&old, &new), &reference);
            let bytes = serde_json::to_vec(&old).unwrap();
            let new_json = serde_json::to_vec(&new).unwrap();
            match diff_json(&bytes, &new_json) {
                Some(p) => prop_assert_eq!(p, reference),
                None => prop_assert_ne!(
                    serde_json::to_vec(&reordered_like(&old, &new)).unwrap(),
                    bytes
                ),
            }
            // Old members in `new`'s order always read in one pass.
            let aligned = reordered_like(&old, &new);
            let bytes = serde_json::to_vec(&aligned).unwrap();
            prop_assert_eq!(diff_json(&bytes, &new_json), Some(json_patch::diff(&aligned, &new)));
        }
    }

    #[test]
    fn a_patch_touches_a_path_it_writes_or_a_value_containing_it() {
        let p = |old: Value, new: Value| diff(&old, &new);
        let uid = "/metadata/uid";
        assert!(touches(
            &p(
                json!({"metadata": {"uid": "a"}}),
                json!({"metadata": {"uid": "b"}})
            ),
            uid
        ));
        assert!(touches(
            &p(json!({}), json!({"metadata": {"uid": "b"}})),
            uid
        ));
        assert!(touches(
            &p(json!({"metadata": 1}), json!({"metadata": {"uid": "b"}})),
            uid
        ));
        assert!(touches(
            &p(json!(1), json!({"metadata": {"uid": "b"}})),
            uid
        ));
        assert!(!touches(
            &p(
                json!({"metadata": {"uid": "a", "x": 1}}),
                json!({"metadata": {"uid": "a", "x": 2}})
            ),
            uid
        ));
        assert!(!touches(
            &p(
                json!({"metadata": {"uidx": 1}}),
                json!({"metadata": {"uidx": 2}})
            ),
            uid
        ));
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
