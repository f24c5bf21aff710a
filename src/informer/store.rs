//! The informer's local cache: the current state of every object, and for objects whose
//! latest changes were not emitted, the last emitted state that the next patch starts from.
//!
//! Objects are kept compact: each as its JSON encoding compressed with zstd, using a
//! dictionary trained on the informer's first objects (objects of one kind share most of
//! their keys and many values, so a 3-4 KB Pod packs into a few hundred bytes). A
//! `serde_json::Value` tree costs 5-8 times its JSON size. An update only decompresses its
//! previous state, whose bytes are diffed ([`Store::base_json`]); an object is decoded into
//! a tree only when someone reads the cache (or a sink asks for the previous state's tree).
//!
//! A list (the first one, or a re-list after 410 Gone) is collected in a [`Staging`] that
//! readers cannot see and replaces the whole map at once ([`Store::swap_in`]): the cache API
//! and the router's namespace lookups read the old cache until then, never a half-filled one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use bytes::Bytes;
use serde_json::Value;
use zstd::bulk::{Compressor, Decompressor};

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

/// One object, packed: `[codec tag][JSON length, u32 LE][zstd frame]`. Packed by any
/// thread with the store's codec ([`Store::pack_json`]), it is valid for the store whenever
/// it is put in: the codec's dictionary never changes once trained.
pub(super) type Packed = Box<[u8]>;

/// A cached object and, when it differs, its last emitted state.
#[derive(Debug)]
struct Stored {
    current: Packed,
    emitted: Option<Packed>,
    /// Changes with every write of the entry ([`Store::version`]).
    version: u64,
}

/// A thread-safe map from cache key (`namespace/name`) to [`Entry`].
///
/// Critical sections never await: readers (the cache API) and the single writer (the
/// informer task) hold the map lock only to move packed bytes; packing and unpacking happen
/// outside it.
#[derive(Debug, Default)]
pub struct Store {
    map: RwLock<HashMap<Box<str>, Stored>>,
    /// Shared with stagings: a staged object is packed once, the way the cache keeps it.
    codec: Arc<Codec>,
    /// Lists swapped in so far ([`Store::generation`]).
    generation: AtomicU64,
    /// The last entry version handed out ([`Store::version`]).
    versions: AtomicU64,
}

impl Store {
    /// A version no entry had before.
    fn next_version(&self) -> u64 {
        self.versions.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn stored(&self, current: Packed, emitted: Option<Packed>) -> Stored {
        Stored {
            current,
            emitted,
            version: self.next_version(),
        }
    }

    /// The version of `key`'s entry: it changes whenever the entry is written, so work done
    /// from the entry as it was (a diff from its base, on a watch's parse task) is still
    /// right when the version is the same. `None` when there is no entry.
    pub(super) fn version(&self, key: &str) -> Option<u64> {
        Some(self.map.read().expect("store lock").get(key)?.version)
    }

    /// [`Store::base_json`] and the entry's [`Store::version`].
    pub(super) fn versioned_base_json(&self, key: &str) -> Option<(Bytes, u64)> {
        let (packed, version) = {
            let map = self.map.read().expect("store lock");
            let s = map.get(key)?;
            (s.emitted.as_ref().unwrap_or(&s.current).clone(), s.version)
        };
        Some((self.codec.unpack_json(&packed), version))
    }

    /// Packs an object's compact JSON the way the cache keeps it, on the calling thread.
    pub(super) fn pack_json(&self, json: &[u8]) -> Packed {
        self.codec.pack_json(json)
    }

    /// The entry under `key`.
    pub fn get(&self, key: &str) -> Option<Entry> {
        let (current, emitted) = {
            let map = self.map.read().expect("store lock");
            let s = map.get(key)?;
            (s.current.clone(), s.emitted.clone())
        };
        Some(Entry {
            current: Arc::new(self.codec.unpack(&current)),
            emitted: emitted.map(|e| Arc::new(self.codec.unpack(&e))),
        })
    }

    /// The current state of `key` alone, decoding only that one object (the cache API).
    pub fn current(&self, key: &str) -> Option<Arc<Value>> {
        let packed = self
            .map
            .read()
            .expect("store lock")
            .get(key)?
            .current
            .clone();
        Some(Arc::new(self.codec.unpack(&packed)))
    }

    /// The state the next emitted patch of `key` starts from ([`Entry::base`]), as the
    /// compact JSON it is kept as, not decoded: what [`crate::event::diff::diff_json`] reads.
    pub fn base_json(&self, key: &str) -> Option<Bytes> {
        self.versioned_base_json(key).map(|(json, _)| json)
    }

    /// Inserts or replaces.
    pub fn insert(&self, key: String, entry: Entry) {
        let stored = self.stored(
            self.codec.pack(&entry.current),
            entry.emitted.map(|e| self.codec.pack(&e)),
        );
        self.map
            .write()
            .expect("store lock")
            .insert(key.into_boxed_str(), stored);
    }

    /// Replaces the current state of `key`. `keep_base`: the change is not emitted, so the
    /// entry's base (its emitted state, or else its current state) stays the base, without
    /// being decoded or packed again.
    pub fn update(&self, key: String, current: &Value, keep_base: bool) {
        let json = serde_json::to_vec(current).expect("a JSON value always serializes");
        self.update_json(key, &json, keep_base);
    }

    /// [`Store::update`] with the state given as its compact JSON (`serde_json::to_vec`).
    pub fn update_json(&self, key: String, current: &[u8], keep_base: bool) {
        self.update_packed(key, self.codec.pack_json(current), keep_base);
    }

    /// [`Store::update_json`] with the state already packed ([`Store::pack_json`]).
    pub(super) fn update_packed(&self, key: String, current: Packed, keep_base: bool) {
        let mut map = self.map.write().expect("store lock");
        let emitted = match map.remove(key.as_str()) {
            Some(old) if keep_base => Some(old.emitted.unwrap_or(old.current)),
            _ => None,
        };
        map.insert(key.into_boxed_str(), self.stored(current, emitted));
    }

    /// An empty staging area for a list, packing with this store's codec.
    pub(super) fn staging(&self) -> Staging {
        Staging {
            codec: self.codec.clone(),
            order: Vec::new(),
            entries: HashMap::new(),
        }
    }

    /// Replaces the whole cache with a completed list, at once. Objects whose JSON did not
    /// change keep their entry (and its emitted state); the others get the listed state with
    /// no emitted state, which the caller restores ([`Store::keep_base`]) when it decides not
    /// to emit the change. Returns what the caller must announce.
    pub(super) fn swap_in(&self, staged: Staging) -> Swapped {
        let Staging {
            codec: _,
            order,
            mut entries,
        } = staged;
        let mut changed = Vec::new();
        let mut map = self.map.write().expect("store lock");
        let mut old = std::mem::take(&mut *map);
        map.reserve(entries.len());
        for key in order {
            // A key staged twice (or removed again) is taken once, in its first position.
            let Some(current) = entries.remove(&key) else {
                continue;
            };
            match old.remove(&key) {
                // Same bytes, same codec: the same JSON; nothing to announce, base kept.
                Some(prev) if prev.current == current => {
                    map.insert(key, prev);
                }
                prev => {
                    if let Some(prev) = prev {
                        old.insert(key.clone(), prev);
                    }
                    map.insert(key.clone(), self.stored(current, None));
                    changed.push(key);
                }
            }
        }
        self.generation.fetch_add(1, Ordering::Release);
        drop(map);
        Swapped {
            codec: self.codec.clone(),
            changed,
            old,
        }
    }

    /// How many lists were swapped in so far: a reader that reads object by object and
    /// sees it change knows a whole new list came in meanwhile (and can read again).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Makes `base` (from [`Swapped::take_old`]) the state the next patch of `key` starts
    /// from again: the listed change of `key` was not emitted.
    pub(super) fn keep_base(&self, key: &str, base: PackedBase) {
        if let Some(s) = self.map.write().expect("store lock").get_mut(key) {
            s.emitted = Some(base.0);
            s.version = self.next_version();
        }
    }

    /// Removes and returns.
    pub fn remove(&self, key: &str) -> Option<Entry> {
        let s = self.map.write().expect("store lock").remove(key)?;
        Some(Entry {
            current: Arc::new(self.codec.unpack(&s.current)),
            emitted: s.emitted.map(|e| Arc::new(self.codec.unpack(&e))),
        })
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
            .map(|k| k.to_string())
            .collect()
    }

    /// Every current object (a snapshot, decoded).
    pub fn objects(&self) -> Vec<Arc<Value>> {
        let packed: Vec<Packed> = self
            .map
            .read()
            .expect("store lock")
            .values()
            .map(|s| s.current.clone())
            .collect();
        packed
            .iter()
            .map(|p| Arc::new(self.codec.unpack(p)))
            .collect()
    }

    /// Bytes of packed objects held (for tests and diagnostics).
    pub fn packed_bytes(&self) -> usize {
        self.map
            .read()
            .expect("store lock")
            .values()
            .map(|s| s.current.len() + s.emitted.as_ref().map_or(0, |e| e.len()))
            .sum()
    }
}

/// A list being collected: packed like the cache, invisible to its readers until
/// [`Store::swap_in`].
pub(super) struct Staging {
    codec: Arc<Codec>,
    /// Keys in list order (changes are announced in this order).
    order: Vec<Box<str>>,
    entries: HashMap<Box<str>, Packed>,
}

impl Staging {
    /// Adds (or replaces) one listed object.
    pub(super) fn insert(&mut self, key: String, obj: &Value) {
        let packed = self.codec.pack(obj);
        self.insert_packed(key, packed);
    }

    /// Adds (or replaces) one listed object, given as its compact JSON.
    pub(super) fn insert_json(&mut self, key: String, json: &[u8]) {
        let packed = self.codec.pack_json(json);
        self.insert_packed(key, packed);
    }

    /// Adds (or replaces) one listed object, packed already ([`Store::pack_json`]).
    pub(super) fn insert_packed(&mut self, key: String, packed: Packed) {
        let key = key.into_boxed_str();
        if self.entries.insert(key.clone(), packed).is_none() {
            self.order.push(key);
        }
    }

    /// Drops one object (deleted before the list completed).
    pub(super) fn remove(&mut self, key: &str) {
        self.entries.remove(key);
    }

    /// Objects staged.
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }
}

impl std::fmt::Debug for Staging {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Staging")
            .field("objects", &self.entries.len())
            .finish()
    }
}

/// The state a patch starts from, still packed (moved back by [`Store::keep_base`]).
pub(super) struct PackedBase(Packed);

/// What a swap replaced: the keys whose listed state is new or differs, and the previous
/// entries of those keys and of the keys the list no longer has.
pub(super) struct Swapped {
    codec: Arc<Codec>,
    /// New or changed keys, in list order.
    changed: Vec<Box<str>>,
    /// Previous entries of changed and vanished keys.
    old: HashMap<Box<str>, Stored>,
}

/// A previous entry, decoded for the comparison.
pub(super) struct OldEntry {
    /// Its state before the list.
    pub current: Arc<Value>,
    /// The state its next patch started from (its emitted state, else `current`).
    pub base: Arc<Value>,
    /// `base`, packed, for [`Store::keep_base`].
    pub packed_base: PackedBase,
}

impl Swapped {
    /// New or changed keys, in list order.
    pub(super) fn changed(&mut self) -> Vec<Box<str>> {
        std::mem::take(&mut self.changed)
    }

    /// Takes the previous entry of a changed key (`None`: the key is new).
    pub(super) fn take_old(&mut self, key: &str) -> Option<OldEntry> {
        let s = self.old.remove(key)?;
        let current = Arc::new(self.codec.unpack(&s.current));
        Some(match s.emitted {
            Some(e) => OldEntry {
                current,
                base: Arc::new(self.codec.unpack(&e)),
                packed_base: PackedBase(e),
            },
            None => OldEntry {
                base: current.clone(),
                current,
                packed_base: PackedBase(s.current),
            },
        })
    }

    /// The last known states of the objects the list no longer has, in key order (call
    /// after every changed key was taken).
    pub(super) fn vanished(self) -> impl Iterator<Item = Arc<Value>> {
        let codec = self.codec;
        let mut gone: Vec<_> = self.old.into_iter().collect();
        gone.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        gone.into_iter()
            .map(move |(_, s)| Arc::new(codec.unpack(&s.current)))
    }
}

/// zstd level: the fastest; the dictionary does the heavy lifting.
const LEVEL: i32 = 1;
/// Objects sampled before a dictionary is trained.
const TRAIN_AFTER: usize = 256;
/// Dictionary size.
const DICT_BYTES: usize = 32 * 1024;
const TAG_PLAIN: u8 = 0;
const TAG_DICT: u8 = 1;

/// Packs and unpacks objects; trains its dictionary on the first objects it packs.
///
/// Any thread may pack and unpack at once (the watch's parse tasks pack beside the
/// informer): each takes a set of zstd contexts from a pool and compresses outside any lock.
#[derive(Default)]
struct Codec {
    /// The first objects' JSON until the dictionary is trained.
    training: Mutex<Training>,
    /// The dictionary, once training was tried (`None` inside: training failed, objects
    /// are packed without one).
    dict: OnceLock<Option<Arc<[u8]>>>,
    /// Idle contexts; as many as ever were in use at once.
    pool: Mutex<Vec<Contexts>>,
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Codec").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Training {
    samples: Vec<Vec<u8>>,
}

/// One user's zstd contexts, made on first use.
#[derive(Default)]
struct Contexts {
    plain: Option<(Compressor<'static>, Decompressor<'static>)>,
    dict: Option<(Compressor<'static>, Decompressor<'static>)>,
}

impl Contexts {
    fn plain(&mut self) -> &mut (Compressor<'static>, Decompressor<'static>) {
        self.plain.get_or_insert_with(|| {
            (
                Compressor::new(LEVEL).expect("zstd context"),
                Decompressor::new().expect("zstd context"),
            )
        })
    }

    /// The contexts of `dict` (the codec's only dictionary).
    fn dict(&mut self, dict: &[u8]) -> &mut (Compressor<'static>, Decompressor<'static>) {
        self.dict.get_or_insert_with(|| {
            (
                Compressor::with_dictionary(LEVEL, dict).expect("zstd dictionary"),
                Decompressor::with_dictionary(dict).expect("zstd dictionary"),
            )
        })
    }
}

impl Codec {
    fn pack(&self, v: &Value) -> Packed {
        self.pack_json(&serde_json::to_vec(v).expect("a JSON value always serializes"))
    }

    /// The dictionary, once trained; samples `json` until then.
    fn dictionary(&self, json: &[u8]) -> Option<Arc<[u8]>> {
        if let Some(dict) = self.dict.get() {
            return dict.clone();
        }
        let mut training = self.training.lock().expect("codec lock");
        if self.dict.get().is_none() {
            training.samples.push(json.to_vec());
            if training.samples.len() >= TRAIN_AFTER {
                let samples = std::mem::take(&mut training.samples);
                let dict = zstd::dict::from_samples(&samples, DICT_BYTES)
                    .ok()
                    // A dictionary zstd cannot load is no dictionary.
                    .filter(|d| Compressor::with_dictionary(LEVEL, d).is_ok())
                    .map(Arc::from);
                let _ = self.dict.set(dict);
            }
        }
        self.dict.get().cloned().flatten()
    }

    /// Runs `f` with a set of contexts taken from the pool.
    fn with_contexts<T>(&self, f: impl FnOnce(&mut Contexts) -> T) -> T {
        let mut contexts = self
            .pool
            .lock()
            .expect("codec pool")
            .pop()
            .unwrap_or_default();
        let out = f(&mut contexts);
        self.pool.lock().expect("codec pool").push(contexts);
        out
    }

    /// Packs an object's compact JSON.
    fn pack_json(&self, json: &[u8]) -> Packed {
        let dict = self.dictionary(json);
        let (tag, frame) = self.with_contexts(|c| match &dict {
            Some(d) => (TAG_DICT, c.dict(d).0.compress(json)),
            None => (TAG_PLAIN, c.plain().0.compress(json)),
        });
        let frame = frame.expect("zstd compresses any input");
        let mut out = Vec::with_capacity(5 + frame.len());
        out.push(tag);
        out.extend_from_slice(&(json.len() as u32).to_le_bytes());
        out.extend_from_slice(&frame);
        out.into_boxed_slice()
    }

    fn unpack(&self, p: &[u8]) -> Value {
        serde_json::from_slice(&self.unpack_json(p)).expect("packed from a JSON value")
    }

    /// The JSON a packed object was made from.
    fn unpack_json(&self, p: &[u8]) -> Bytes {
        let len = u32::from_le_bytes([p[1], p[2], p[3], p[4]]) as usize;
        let json = self.with_contexts(|c| {
            let d = match p[0] {
                TAG_DICT => {
                    let dict = self.dict.get().cloned().flatten();
                    &mut c.dict(&dict.expect("packed with the dictionary")).1
                }
                _ => &mut c.plain().1,
            };
            d.decompress(&p[5..], len).expect("packed by this codec")
        });
        Bytes::from(json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(i: usize) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("p{i}"), "namespace": "n", "uid": format!("u{i}"),
                "resourceVersion": i.to_string(), "labels": {"app": "web", "z": i, "a": null}},
            "spec": {"containers": [{"name": "main", "image": "nginx", "ports": [{"containerPort": 80}]}]},
            "status": {"phase": "Running", "ratio": 0.5, "ready": true}})
    }

    #[test]
    fn an_entry_has_a_new_version_after_every_write_and_keeps_it_otherwise() {
        let store = Store::default();
        assert_eq!(store.version("k"), None);
        store.update_json("k".into(), b"{\"a\":1}", false);
        let v1 = store.version("k").unwrap();
        assert_eq!(store.version("k"), Some(v1), "reading does not change it");
        assert_eq!(store.versioned_base_json("k").unwrap().1, v1);
        store.update_json("k".into(), b"{\"a\":2}", true);
        let v2 = store.version("k").unwrap();
        assert_ne!(v1, v2);
        let (base, version) = store.versioned_base_json("k").unwrap();
        assert_eq!(
            (&base[..], version),
            (&b"{\"a\":1}"[..], v2),
            "the kept base"
        );
        // A list with the same state keeps the entry; one with another state replaces it.
        let mut same = store.staging();
        same.insert_json("k".into(), b"{\"a\":2}");
        store.swap_in(same);
        assert_eq!(store.version("k"), Some(v2));
        let mut other = store.staging();
        other.insert_json("k".into(), b"{\"a\":3}");
        let mut swapped = store.swap_in(other);
        let v3 = store.version("k").unwrap();
        assert_ne!(v3, v2);
        let old = swapped.take_old("k").unwrap();
        store.keep_base("k", old.packed_base);
        assert_ne!(store.version("k").unwrap(), v3, "keeping a base is a write");
        store.remove("k");
        assert_eq!(store.version("k"), None);
    }

    #[test]
    fn objects_packed_on_many_threads_at_once_come_back_identical() {
        let store = Arc::new(Store::default());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || {
                    // Across the dictionary's training (after 256 objects).
                    for i in 0..200 {
                        let json = serde_json::to_vec(&obj(t * 1000 + i)).unwrap();
                        let packed = store.pack_json(&json);
                        let key = format!("{t}/{i}");
                        store.update_packed(key.clone(), packed, false);
                        assert_eq!(&store.base_json(&key).unwrap()[..], &json[..]);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(store.len(), 800);
        assert!(
            store.codec.dict.get().is_some(),
            "the dictionary was trained"
        );
    }

    #[test]
    fn objects_come_back_identical_before_and_after_the_dictionary() {
        let store = Store::default();
        for i in 0..(TRAIN_AFTER * 2) {
            store.insert(
                format!("n/p{i}"),
                Entry {
                    current: Arc::new(obj(i)),
                    emitted: None,
                },
            );
        }
        for i in [0, TRAIN_AFTER - 1, TRAIN_AFTER, TRAIN_AFTER * 2 - 1] {
            let e = store.get(&format!("n/p{i}")).unwrap();
            assert_eq!(*e.current, obj(i));
            // Key order is kept too.
            assert_eq!(e.current.to_string(), obj(i).to_string());
        }
        assert_eq!(store.len(), TRAIN_AFTER * 2);
        assert_eq!(store.objects().len(), TRAIN_AFTER * 2);
        let json: usize = (0..TRAIN_AFTER * 2).map(|i| obj(i).to_string().len()).sum();
        assert!(
            store.packed_bytes() * 2 < json,
            "packed smaller than half the JSON"
        );
    }

    /// A store holding `k`.
    fn with_k(o: Value) -> Store {
        let store = Store::default();
        store.insert(
            "k".into(),
            Entry {
                current: Arc::new(o),
                emitted: None,
            },
        );
        store
    }

    #[test]
    fn a_staged_list_is_invisible_until_swapped_in_and_the_swap_counts_a_generation() {
        let store = with_k(obj(1));
        let mut staged = store.staging();
        staged.insert("k".into(), &obj(2));
        staged.insert("new".into(), &obj(3));
        assert_eq!(
            *store.current("k").unwrap(),
            obj(1),
            "readers see the old list"
        );
        assert!(store.current("new").is_none());
        assert_eq!(store.generation(), 0);
        let mut swapped = store.swap_in(staged);
        assert_eq!(store.generation(), 1);
        assert_eq!(*store.current("k").unwrap(), obj(2));
        let changed: Vec<String> = swapped.changed().iter().map(|k| k.to_string()).collect();
        assert_eq!(changed, ["k", "new"]);
        assert_eq!(*swapped.take_old("k").unwrap().current, obj(1));
        assert!(swapped.take_old("new").is_none());
        assert_eq!(swapped.vanished().count(), 0);
    }

    #[test]
    fn update_keeps_the_base_until_a_change_is_emitted() {
        let store = with_k(obj(1));
        store.update("k".into(), &obj(2), true);
        store.update("k".into(), &obj(3), true);
        assert_eq!(
            store.base_json("k").unwrap(),
            serde_json::to_vec(&obj(1)).unwrap()
        );
        assert_eq!(*store.get("k").unwrap().current, obj(3));
        store.update("k".into(), &obj(4), false);
        assert_eq!(
            store.base_json("k").unwrap(),
            serde_json::to_vec(&obj(4)).unwrap()
        );
        assert!(store.get("k").unwrap().emitted.is_none());
        assert_eq!(*store.remove("k").unwrap().current, obj(4));
        assert!(store.base_json("k").is_none());
    }
}
