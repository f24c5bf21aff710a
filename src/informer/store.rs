//! The informer's local cache: the current state of every object, and for objects whose
//! latest changes were not emitted, the last emitted state that the next patch starts from.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use serde_json::Value;

/// One cached object.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The object as it is now (transformed).
    pub current: Arc<Value>,
    /// The last state emitted to handlers, when it differs from `current` (changes confined
    /// to ignored paths were suppressed since). Patches are computed from this state so a
    /// consumer replaying patches over emitted objects always lands on the emitted object.
    pub emitted: Option<Arc<Value>>,
}

impl Entry {
    /// The state the next emitted patch starts from.
    pub fn base(&self) -> &Arc<Value> {
        self.emitted.as_ref().unwrap_or(&self.current)
    }
}

/// A thread-safe map from cache key (`namespace/name`) to [`Entry`].
///
/// Critical sections never await: readers (the cache API) and the single writer (the
/// informer task) only hold the lock to clone an `Arc`.
#[derive(Debug, Default)]
pub struct Store {
    map: RwLock<HashMap<String, Entry>>,
}

impl Store {
    /// The entry under `key`.
    pub fn get(&self, key: &str) -> Option<Entry> {
        self.map.read().expect("store lock").get(key).cloned()
    }

    /// Inserts or replaces.
    pub fn insert(&self, key: String, entry: Entry) {
        self.map.write().expect("store lock").insert(key, entry);
    }

    /// Removes and returns.
    pub fn remove(&self, key: &str) -> Option<Entry> {
        self.map.write().expect("store lock").remove(key)
    }

    /// Number of cached objects.
    pub fn len(&self) -> usize {
        self.map.read().expect("store lock").len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// All keys (a snapshot).
    pub fn keys(&self) -> Vec<String> {
        self.map
            .read()
            .expect("store lock")
            .keys()
            .cloned()
            .collect()
    }

    /// Every current object (a snapshot).
    pub fn objects(&self) -> Vec<Arc<Value>> {
        self.map
            .read()
            .expect("store lock")
            .values()
            .map(|e| e.current.clone())
            .collect()
    }
}
