//! `Doc`: one state of an object, held as a tree, as its compact JSON, or both, each made
//! from the other only when first asked for.
//!
//! The cache keeps objects as compact JSON, and sinks mostly want compact JSON: an update's
//! previous state read from the cache is diffed from its bytes and never needs a tree unless
//! a sink asks for one (text output, coalescing, Debezium's `before`), and the new state's
//! encoding made for the cache is the one the envelope writes. Encoding an object and
//! decoding it again were, with parsing the change, most of an event's cost.

use std::borrow::Cow;
use std::fmt;
use std::ops::Deref;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use serde_json::Value;

use super::compact;
use super::object::Ident;

/// One state of an object (see the module documentation). Dereferences to the tree.
pub struct Doc {
    value: OnceLock<Arc<Value>>,
    /// `serde_json`'s compact encoding of `value`, byte for byte.
    json: OnceLock<Bytes>,
    /// What names it, read from the tree on first need unless given.
    ident: OnceLock<Ident>,
}

impl Doc {
    /// A state known as a tree; encoded on first need.
    pub fn new(value: Arc<Value>) -> Arc<Doc> {
        Arc::new(Doc {
            value: OnceLock::from(value),
            json: OnceLock::new(),
            ident: OnceLock::new(),
        })
    }

    /// A state known both ways: `json` must be `serde_json::to_vec(&value)`.
    pub fn with_json(value: Arc<Value>, json: Bytes) -> Arc<Doc> {
        Arc::new(Doc {
            value: OnceLock::from(value),
            json: OnceLock::from(json),
            ident: OnceLock::new(),
        })
    }

    /// A state known as compact JSON that `serde_json` wrote (the cache's); decoded on
    /// first need.
    pub fn from_json(json: Bytes) -> Arc<Doc> {
        Arc::new(Doc {
            value: OnceLock::new(),
            json: OnceLock::from(json),
            ident: OnceLock::new(),
        })
    }

    /// A state known as compact JSON that `serde_json` wrote and named by `ident` (read from
    /// the tree it was written from, which is gone): a watch's object, whose tree was let go
    /// on the task that parsed it. Decoded on first need, which the default envelope never has.
    pub fn named(json: Bytes, ident: Ident) -> Arc<Doc> {
        Arc::new(Doc {
            value: OnceLock::new(),
            json: OnceLock::from(json),
            ident: OnceLock::from(ident),
        })
    }

    /// What names this state: read from the tree when at hand, else from the JSON's bytes
    /// (a few members' spans; the tree is not built for it).
    pub fn ident(&self) -> &Ident {
        self.ident.get_or_init(|| {
            if let Some(v) = self.value.get() {
                return Ident::of(v);
            }
            let text = |field: &str| {
                self.lookup(&format!("/metadata/{field}"))
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            };
            Ident {
                namespace: Some(text("namespace")).filter(|ns| !ns.is_empty()),
                name: text("name"),
                uid: text("uid"),
                resource_version: text("resourceVersion"),
            }
        })
    }

    /// The value at the JSON Pointer `path`, as [`Value::pointer`] finds it: from the tree
    /// when at hand, else decoded from its span of the JSON alone (a route's `when` reads a
    /// field or two; decoding the whole object for them cost as much as parsing the change).
    pub fn lookup(&self, path: &str) -> Option<Cow<'_, Value>> {
        if let Some(v) = self.value.get() {
            return v.pointer(path).map(Cow::Borrowed);
        }
        let json = self.json();
        let span = compact::pointer(json, path)?;
        serde_json::from_slice(&json[span]).ok().map(Cow::Owned)
    }

    /// Lets go of the tree of a state known as JSON too, when `doc` is its only handle (a
    /// shared state keeps its tree: another holder may be reading it). Returns whether the
    /// tree went. Reading the tree afterwards decodes the JSON again.
    pub fn release_tree(doc: &mut Arc<Doc>) -> bool {
        match Arc::get_mut(doc) {
            Some(d) if d.json.get().is_some() => d.value.take().is_some(),
            _ => false,
        }
    }

    /// Whether the tree is at hand (made, or not released).
    pub fn has_tree(&self) -> bool {
        self.value.get().is_some()
    }

    /// The tree.
    pub fn value(&self) -> &Arc<Value> {
        self.value.get_or_init(|| {
            let json = self
                .json
                .get()
                .expect("a Doc is made with one of its forms");
            Arc::new(serde_json::from_slice(json).expect("written by serde_json"))
        })
    }

    /// The compact JSON.
    pub fn json(&self) -> &Bytes {
        self.json.get_or_init(|| {
            let value = self
                .value
                .get()
                .expect("a Doc is made with one of its forms");
            Bytes::from(serde_json::to_vec(&**value).expect("a JSON value always serializes"))
        })
    }
}

impl Deref for Doc {
    type Target = Value;

    fn deref(&self) -> &Value {
        self.value()
    }
}

impl PartialEq for Doc {
    fn eq(&self, other: &Doc) -> bool {
        match (self.json.get(), other.json.get()) {
            (Some(a), Some(b)) if a == b => true,
            _ => self.value() == other.value(),
        }
    }
}

impl fmt::Debug for Doc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.value.get(), self.json.get()) {
            (Some(v), _) => fmt::Debug::fmt(v, f),
            (None, Some(j)) => write!(f, "Doc({})", String::from_utf8_lossy(j)),
            (None, None) => f.write_str("Doc(?)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn each_form_is_made_from_the_other_and_they_agree() {
        let v = json!({"b": 1, "a": {"x": [1, "two", null]}});
        let from_tree = Doc::new(Arc::new(v.clone()));
        let from_json = Doc::from_json(Bytes::from(serde_json::to_vec(&v).unwrap()));
        assert_eq!(from_tree.json(), from_json.json());
        assert_eq!(**from_json.value(), v);
        assert_eq!(from_tree, from_json);
        // Key order is the tree's.
        assert_eq!(
            &from_tree.json()[..],
            br#"{"b":1,"a":{"x":[1,"two",null]}}"#
        );
    }

    #[test]
    fn a_tree_is_released_only_by_the_sole_holder_of_a_state_known_as_json() {
        let v = json!({"b": 1, "a": [true]});
        let mut tree_only = Doc::new(Arc::new(v.clone()));
        assert!(
            !Doc::release_tree(&mut tree_only),
            "no JSON to fall back on"
        );
        assert!(tree_only.has_tree());

        let mut both = Doc::new(Arc::new(v.clone()));
        both.json();
        let other = both.clone();
        assert!(
            !Doc::release_tree(&mut both),
            "another holder may read the tree"
        );
        drop(other);
        assert!(Doc::release_tree(&mut both));
        assert!(!both.has_tree());
        // Decoded again on demand, equal to what it was.
        assert_eq!(**both.value(), v);
        assert!(both.has_tree());
    }

    #[test]
    fn a_named_state_is_named_without_decoding_its_json_and_decodes_when_asked() {
        let v = json!({"metadata": {"namespace": "shop", "name": "a", "uid": "u1",
            "resourceVersion": "7"}, "data": {"k": "v"}});
        let ident = Ident::of(&v);
        assert_eq!(ident.cache_key(), "shop/a");
        let named = Doc::named(Bytes::from(serde_json::to_vec(&v).unwrap()), ident.clone());
        assert_eq!(named.ident(), &ident);
        assert!(!named.has_tree(), "naming it decoded nothing");
        assert_eq!(named["data"]["k"], "v");
        assert!(named.has_tree());
        // A state known as a tree is named from it.
        assert_eq!(Doc::new(Arc::new(v)).ident(), &ident);
    }

    #[test]
    fn a_state_known_as_json_is_looked_into_and_named_without_its_tree() {
        let v = json!({"metadata": {"name": "a", "uid": "u", "resourceVersion": "3",
            "labels": {"k": "v"}}, "spec": {"n": [1, 2]}});
        let doc = Doc::from_json(Bytes::from(serde_json::to_vec(&v).unwrap()));
        assert_eq!(doc.lookup("/spec/n/1").as_deref(), Some(&json!(2)));
        assert_eq!(
            doc.lookup("/metadata/labels").as_deref(),
            v.pointer("/metadata/labels")
        );
        assert_eq!(doc.lookup("/spec/missing"), None);
        assert_eq!(doc.ident(), &Ident::of(&v));
        assert_eq!(doc.ident().namespace, None, "cluster-scoped");
        assert!(!doc.has_tree());
        // With the tree at hand, the same answers from it.
        let tree = Doc::new(Arc::new(v.clone()));
        assert_eq!(tree.lookup("/spec/n/1").as_deref(), Some(&json!(2)));
    }
}
