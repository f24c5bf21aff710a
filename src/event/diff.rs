//! RFC 6902 diffs between two states of an object, and the "only ignored paths changed" test.

use std::borrow::Cow;
use std::fmt::Write;

use json_patch::jsonptr::{PointerBuf, Token};
use json_patch::{AddOperation, Patch, PatchOperation, RemoveOperation, ReplaceOperation};
use serde::Deserialize;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
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

/// The patch from `old`, given as compact JSON (how the cache keeps an object), to `new`:
/// exactly [`diff`]'s answer, read off `old`'s bytes in one pass without building its tree.
///
/// Building the previous state's tree (a map insert per member, a string per key) cost as
/// much as parsing the change itself; walking its bytes against `new` allocates only where
/// an operation is made. One pass can give `json_patch`'s order of operations only when the
/// members of every object both states have in common are in the same order (two states of
/// one object keep their order): `None` when they are not, or when `old` is not JSON, and
/// the caller diffs the trees instead.
pub fn diff_encoded(old: &[u8], new: &Value) -> Option<Patch> {
    let mut patch = Patch::default();
    let mut path = String::new();
    let mut de = serde_json::Deserializer::from_slice(old);
    Walk {
        new,
        path: &mut path,
        patch: &mut patch,
    }
    .deserialize(&mut de)
    .ok()?;
    de.end().ok()?;
    Some(patch)
}

/// One value of the old state being read, against its counterpart in `new`.
struct Walk<'a> {
    new: &'a Value,
    path: &'a mut String,
    patch: &'a mut Patch,
}

impl Walk<'_> {
    /// `old`'s value here is not `new`'s: replace it.
    fn replace(self) {
        self.patch.0.push(PatchOperation::Replace(ReplaceOperation {
            path: pointer(self.path),
            value: self.new.clone(),
        }));
    }

    /// Compares a scalar of the old state (as serde_json's own `Value` would hold it).
    fn scalar<E>(self, old: Value) -> Result<(), E> {
        if old != *self.new {
            self.replace();
        }
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<(), E> {
        self.scalar(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        self.scalar(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        self.scalar(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<(), E> {
        self.scalar(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        if self.new.as_str() != Some(v) {
            self.replace();
        }
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        self.scalar(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Value::Array(new) = self.new else {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            self.replace();
            return Ok(());
        };
        let at = self.path.len();
        let (mut idx, mut shift) = (0usize, 0usize);
        loop {
            let _ = write!(self.path, "/{}", idx - shift);
            let more = match new.get(idx) {
                Some(n) => seq
                    .next_element_seed(Walk {
                        new: n,
                        path: self.path,
                        patch: self.patch,
                    })?
                    .is_some(),
                None => {
                    let more = seq.next_element::<IgnoredAny>()?.is_some();
                    if more {
                        self.patch.0.push(PatchOperation::Remove(RemoveOperation {
                            path: pointer(self.path),
                        }));
                        shift += 1;
                    }
                    more
                }
            };
            self.path.truncate(at);
            if !more {
                break;
            }
            idx += 1;
        }
        // `idx` is the old array's length; what `new` has beyond it is added.
        for (i, n) in new.iter().enumerate().skip(idx) {
            let _ = write!(self.path, "/{}", i - shift);
            self.patch.0.push(PatchOperation::Add(AddOperation {
                path: pointer(self.path),
                value: n.clone(),
            }));
            self.path.truncate(at);
        }
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        let Value::Object(new) = self.new else {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            self.replace();
            return Ok(());
        };
        let at = self.path.len();
        // `new`'s members before `ahead` were matched or added; old members not in `new`
        // are removed after all of `new`'s (json_patch's order).
        let mut ahead = new.iter();
        let mut removed: Vec<PointerBuf> = Vec::new();
        while let Some(Key(key)) = map.next_key()? {
            // Usually the next member of `new`; else one further on (those skipped are not
            // in `old` before this one: added), or none (removed), or one before (the
            // members were reordered: one pass cannot give json_patch's order).
            let mut look = ahead.clone();
            let found = loop {
                match look.next() {
                    Some((k, n)) if *k == *key => break Some(n),
                    Some(_) => {}
                    None if new.contains_key(&*key) => {
                        return Err(serde::de::Error::custom("members reordered"));
                    }
                    None => break None,
                }
            };
            match found {
                Some(n) => {
                    for (k, skipped) in ahead.by_ref() {
                        if *k == *key {
                            break;
                        }
                        self.add(at, k, skipped);
                    }
                    self.path.push('/');
                    self.path.push_str(Token::new(&*key).encoded());
                    map.next_value_seed(Walk {
                        new: n,
                        path: self.path,
                        patch: self.patch,
                    })?;
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                    self.path.push('/');
                    self.path.push_str(Token::new(&*key).encoded());
                    removed.push(pointer(self.path));
                }
            }
            self.path.truncate(at);
        }
        for (k, n) in ahead {
            self.add(at, k, n);
        }
        self.patch.0.extend(
            removed
                .into_iter()
                .map(|path| PatchOperation::Remove(RemoveOperation { path })),
        );
        Ok(())
    }
}

impl Walk<'_> {
    /// Adds member `key` of `new` under the path's first `at` bytes.
    fn add(&mut self, at: usize, key: &str, value: &Value) {
        self.path.push('/');
        self.path.push_str(Token::new(key).encoded());
        self.patch.0.push(PatchOperation::Add(AddOperation {
            path: pointer(self.path),
            value: value.clone(),
        }));
        self.path.truncate(at);
    }
}

/// An object member's name, borrowed from the input when it has no escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
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
            match diff_encoded(&bytes, &new) {
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
        assert_eq!(diff_encoded(b"{\"a\":", &json!({"a": 1})), None);
        assert_eq!(diff_encoded(b"{} {}", &json!({})), None);
    }

    /// JSON trees of a few levels with a small alphabet of keys and values, so that two
    /// of them share members (also reordered), arrays grow and shrink, and numbers differ
    /// only in type.
    fn tree() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            (-2i64..3).prop_map(Value::from),
            prop_oneof![Just(1.0f64), Just(-0.0), Just(0.5), Just(1e300)].prop_map(Value::from),
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
            match diff_encoded(&bytes, &new) {
                Some(p) => prop_assert_eq!(p, reference),
                None => prop_assert_ne!(
                    serde_json::to_vec(&reordered_like(&old, &new)).unwrap(),
                    bytes
                ),
            }
            // Old members in `new`'s order always read in one pass.
            let aligned = reordered_like(&old, &new);
            let bytes = serde_json::to_vec(&aligned).unwrap();
            prop_assert_eq!(diff_encoded(&bytes, &new), Some(json_patch::diff(&aligned, &new)));
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
