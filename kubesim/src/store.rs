//! The object store: every object of every kind, one global resourceVersion
//! counter (like etcd's revision), and a bounded history of change events that
//! watches replay from and paginated lists reconstruct snapshots from.
//!
//! Each stored object is serialized exactly once, at write time; lists and
//! watches only concatenate those bytes.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use serde_json::{Map, Value, json};
use tokio::sync::watch;

use crate::error::ApiError;
use crate::kinds::{KindId, Registry};
use crate::time::now_rfc3339;

/// `(namespace, name)`; the namespace is empty for cluster-scoped kinds. Ordered like etcd keys.
pub type ObjKey = (String, String);

/// One stored object version, immutable once written.
#[derive(Debug)]
pub struct StoredObj {
    /// The resourceVersion this version was written at.
    pub rv: u64,
    /// The object as JSON (unknown fields kept verbatim).
    pub value: Value,
    /// `value` serialized once; lists and watches concatenate this.
    pub bytes: Bytes,
}

impl StoredObj {
    fn new(rv: u64, value: Value) -> Arc<StoredObj> {
        let bytes = Bytes::from(serde_json::to_vec(&value).expect("JSON values always serialize"));
        Arc::new(StoredObj { rv, value, bytes })
    }

    /// `metadata.namespace` or "".
    pub fn namespace(&self) -> &str {
        meta_str(&self.value, "namespace").unwrap_or("")
    }

    /// `metadata.name` or "".
    pub fn name(&self) -> &str {
        meta_str(&self.value, "name").unwrap_or("")
    }
}

/// Watch event type of a stored change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Object created.
    Added,
    /// Object changed.
    Modified,
    /// Object removed.
    Deleted,
}

impl EventType {
    /// The wire name (`ADDED`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change in the history.
#[derive(Debug)]
pub struct HistEvent {
    /// Revision of the change (equals `obj.rv`).
    pub rv: u64,
    /// Kind of the changed object.
    pub kind: KindId,
    /// What happened.
    pub etype: EventType,
    /// The object after the change (for deletes: its final state, at the delete's rv).
    pub obj: Arc<StoredObj>,
    /// The object before the change; selectors need it to turn updates into ADDED/DELETED.
    pub prev: Option<Arc<StoredObj>>,
}

struct State {
    rv: u64,
    objects: Vec<BTreeMap<ObjKey, Arc<StoredObj>>>,
    /// Contiguous: `history[i].rv == compacted + 1 + i`.
    history: VecDeque<Arc<HistEvent>>,
    /// Highest revision no longer in the history.
    compacted: u64,
}

/// One page of a list.
#[derive(Debug)]
pub struct ListPage {
    /// Revision the page (and all following pages) reflects.
    pub rv: u64,
    /// Matching objects, in key order.
    pub items: Vec<Arc<StoredObj>>,
    /// Key of the last item when more items remain.
    pub next: Option<ObjKey>,
    /// How many matching items come after this page.
    pub remaining: usize,
}

/// The store. Shared by the HTTP server and the library API.
pub struct Store {
    /// Served kinds.
    pub registry: Arc<Registry>,
    state: Mutex<State>,
    rv_tx: watch::Sender<u64>,
    history_limit: usize,
}

/// Namespaces every cluster has.
pub const DEFAULT_NAMESPACES: &[&str] =
    &["default", "kube-system", "kube-public", "kube-node-lease"];

impl Store {
    /// A store with the default namespaces already created (as history events 1..=4).
    pub fn new(registry: Arc<Registry>, history_limit: usize) -> Store {
        let n = registry.kinds().len();
        let store = Store {
            registry,
            state: Mutex::new(State {
                rv: 0,
                objects: vec![BTreeMap::new(); n],
                history: VecDeque::new(),
                compacted: 0,
            }),
            rv_tx: watch::channel(0).0,
            history_limit: history_limit.max(1),
        };
        let ns_kind = store.registry.namespace_kind();
        for ns in DEFAULT_NAMESPACES {
            store
                .create(
                    ns_kind,
                    None,
                    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
                )
                .expect("default namespaces are valid");
        }
        store
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data (we never half-write), so ignore poison.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The newest resourceVersion.
    pub fn current_rv(&self) -> u64 {
        self.lock().rv
    }

    /// The highest revision whose event is gone from the history.
    pub fn compacted_rv(&self) -> u64 {
        self.lock().compacted
    }

    /// A receiver that changes whenever the revision advances.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.rv_tx.subscribe()
    }

    /// Drops all history: watches and continue tokens from older revisions now get 410.
    pub fn compact(&self) {
        let mut st = self.lock();
        st.compacted = st.rv;
        st.history.clear();
    }

    /// One object.
    pub fn get(&self, kind: KindId, ns: &str, name: &str) -> Option<Arc<StoredObj>> {
        self.lock().objects[kind]
            .get(&(ns.to_string(), name.to_string()))
            .cloned()
    }

    /// All objects of a kind (optionally in one namespace), current state, key order.
    pub fn all(&self, kind: KindId, ns: Option<&str>) -> (u64, Vec<Arc<StoredObj>>) {
        let st = self.lock();
        let items = st.objects[kind]
            .iter()
            .filter(|((n, _), _)| ns.is_none_or(|x| x == n))
            .map(|(_, o)| o.clone())
            .collect();
        (st.rv, items)
    }

    /// A page of a list at revision `at` (None: current). `filter` is applied before `limit`.
    ///
    /// # Errors
    /// 410 Expired when `at` is older than the history reaches back.
    pub fn list_page(
        &self,
        kind: KindId,
        ns: Option<&str>,
        at: Option<u64>,
        start_after: Option<&ObjKey>,
        limit: Option<usize>,
        filter: &dyn Fn(&StoredObj) -> bool,
    ) -> Result<ListPage, ApiError> {
        let st = self.lock();
        let at = at.unwrap_or(st.rv).min(st.rv);
        let reconstructed;
        let map: &BTreeMap<ObjKey, Arc<StoredObj>> = if at == st.rv {
            &st.objects[kind]
        } else {
            if at < st.compacted {
                return Err(ApiError::too_old(at, st.compacted));
            }
            reconstructed = snapshot_at(&st, kind, at);
            &reconstructed
        };
        let range = match start_after {
            Some(k) => {
                map.range::<ObjKey, _>((std::ops::Bound::Excluded(k), std::ops::Bound::Unbounded))
            }
            None => map.range::<ObjKey, _>(..),
        };
        let mut page = ListPage {
            rv: at,
            items: Vec::new(),
            next: None,
            remaining: 0,
        };
        for ((n, name), obj) in range {
            if ns.is_some_and(|x| x != n) || !filter(obj) {
                continue;
            }
            if limit.is_some_and(|l| page.items.len() >= l) {
                page.remaining += 1;
                continue;
            }
            if limit.is_some_and(|l| page.items.len() + 1 == l) {
                page.next = Some((n.clone(), name.clone()));
            }
            page.items.push(obj.clone());
        }
        if page.remaining == 0 {
            page.next = None;
        }
        Ok(page)
    }

    /// Up to `max` history events after `cursor`, and the revision the caller has then seen up to.
    ///
    /// # Errors
    /// `Err(compacted)` when events after `cursor` are no longer in the history.
    pub fn events_after(&self, cursor: u64, max: usize) -> Result<(Vec<Arc<HistEvent>>, u64), u64> {
        let st = self.lock();
        if cursor < st.compacted {
            return Err(st.compacted);
        }
        let start = (cursor - st.compacted) as usize;
        let evs: Vec<_> = st
            .history
            .range(start.min(st.history.len())..)
            .take(max)
            .cloned()
            .collect();
        let seen = evs.last().map_or(st.rv.max(cursor), |e| e.rv);
        Ok((evs, seen))
    }

    /// Creates an object. `ns` is the namespace from the URL (None for cluster-scoped or "take it from the body").
    pub fn create(
        &self,
        kind: KindId,
        ns: Option<&str>,
        mut obj: Value,
    ) -> Result<Arc<StoredObj>, ApiError> {
        let info = self.registry.get(kind).clone();
        check_type(&info, &obj)?;
        let meta = metadata_mut(&mut obj)?;
        let ns = if info.spec.namespaced {
            let body_ns = meta
                .get("namespace")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string);
            match (ns, body_ns) {
                (Some(u), Some(b)) if u != b => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                (Some(u), _) => u.to_string(),
                (None, Some(b)) => b,
                (None, None) => "default".to_string(),
            }
        } else {
            String::new()
        };
        let mut st = self.lock();
        let name = match meta
            .get("name")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        {
            Some(n) => n.to_string(),
            None => match meta
                .get("generateName")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
            {
                Some(prefix) => loop {
                    let candidate = generate_name(prefix);
                    if !st.objects[kind].contains_key(&(ns.clone(), candidate.clone())) {
                        break candidate;
                    }
                },
                None => {
                    return Err(ApiError::invalid(
                        &info.spec.group,
                        &info.spec.kind,
                        "",
                        "metadata.name",
                        "FieldValueRequired",
                        "Required value: name or generateName is required",
                    ));
                }
            },
        };
        validate_name(&info.spec.group, &info.spec.kind, &name)?;
        if info.spec.namespaced
            && !st.objects[self.registry.namespace_kind()]
                .contains_key(&(String::new(), ns.clone()))
        {
            return Err(ApiError::not_found("", "namespaces", &ns));
        }
        let key = (ns.clone(), name.clone());
        if st.objects[kind].contains_key(&key) {
            return Err(ApiError::already_exists(
                &info.spec.group,
                &info.spec.plural,
                &name,
            ));
        }
        meta.insert("name".into(), json!(name));
        if info.spec.namespaced {
            meta.insert("namespace".into(), json!(ns));
        } else {
            meta.remove("namespace");
        }
        for f in [
            "selfLink",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ] {
            meta.remove(f);
        }
        meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
        if obj.get("spec").is_some() {
            obj["metadata"]["generation"] = json!(1);
        }
        if info.spec.kind == "Namespace"
            && info.spec.group.is_empty()
            && obj.pointer("/status/phase").is_none()
        {
            obj["status"] = json!({"phase": "Active"});
        }
        Ok(self.commit(&mut st, kind, key, Some(obj), None))
    }

    /// Read-modify-write of one object: `f` gets the current object (None if absent) and returns the
    /// desired new object. Absent objects are created only when `f` returns one for `None`
    /// (server-side apply). Returns the stored object and whether it was created.
    ///
    /// Server-owned metadata is carried over; a `metadata.resourceVersion` in the result that differs
    /// from the current one is a 409 Conflict; an unchanged result writes nothing (no new revision).
    pub fn upsert(
        &self,
        kind: KindId,
        ns: &str,
        name: &str,
        f: impl FnOnce(Option<&Value>) -> Result<Value, ApiError>,
    ) -> Result<(Arc<StoredObj>, bool), ApiError> {
        let info = self.registry.get(kind).clone();
        let key = (ns.to_string(), name.to_string());
        let cur = self.lock().objects[kind].get(&key).cloned();
        let Some(cur) = cur else {
            let new = f(None)?;
            let created = self.create(
                kind,
                if info.spec.namespaced { Some(ns) } else { None },
                new,
            )?;
            return Ok((created, true));
        };
        let mut new = f(Some(&cur.value))?;
        check_type(&info, &new)?;
        let meta = metadata_mut(&mut new)?;
        match meta.get("name").and_then(Value::as_str) {
            Some(n) if n != name => {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )));
            }
            _ => {}
        }
        if info.spec.namespaced {
            match meta.get("namespace").and_then(Value::as_str) {
                Some(n) if !n.is_empty() && n != ns => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                _ => {}
            }
        }
        let mut st = self.lock();
        // Re-read under the lock: the closure ran unlocked, so a concurrent writer may have won.
        let Some(latest) = st.objects[kind].get(&key).cloned() else {
            return Err(ApiError::not_found(
                &info.spec.group,
                &info.spec.plural,
                name,
            ));
        };
        let wanted_rv = meta
            .get("resourceVersion")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty());
        if let Some(rv) = wanted_rv
            && rv != latest.rv.to_string()
        {
            return Err(ApiError::conflict(
                &info.spec.group,
                &info.spec.plural,
                name,
            ));
        }
        let old_meta = latest
            .value
            .get("metadata")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        meta.insert("name".into(), json!(name));
        if info.spec.namespaced {
            meta.insert("namespace".into(), json!(ns));
        } else {
            meta.remove("namespace");
        }
        meta.remove("selfLink");
        for f in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
        ] {
            match old_meta.get(f) {
                Some(v) => meta.insert(f.into(), v.clone()),
                None => meta.remove(f),
            };
        }
        if !meta.contains_key("managedFields")
            && let Some(mf) = old_meta.get("managedFields")
        {
            meta.insert("managedFields".into(), mf.clone());
        }
        meta.insert("resourceVersion".into(), json!(latest.rv.to_string()));
        if new == latest.value {
            return Ok((latest, false));
        }
        if spec_changed(&latest.value, &new)
            && let Some(g) = old_meta.get("generation").and_then(Value::as_i64)
        {
            new["metadata"]["generation"] = json!(g + 1);
        }
        let terminating = new.pointer("/metadata/deletionTimestamp").is_some();
        let no_finalizers = new
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_none_or(|f| f.is_empty());
        if terminating && no_finalizers {
            self.commit(&mut st, kind, key.clone(), Some(new), Some(latest));
            let last = st.objects[kind].get(&key).cloned().expect("just written");
            return Ok((self.commit(&mut st, kind, key, None, Some(last)), false));
        }
        Ok((
            self.commit(&mut st, kind, key, Some(new), Some(latest)),
            false,
        ))
    }

    /// Deletes an object (or marks it terminating while it has finalizers).
    /// `precondition_rv`/`precondition_uid` come from DeleteOptions.preconditions.
    pub fn delete(
        &self,
        kind: KindId,
        ns: &str,
        name: &str,
        precondition_rv: Option<&str>,
        precondition_uid: Option<&str>,
    ) -> Result<Arc<StoredObj>, ApiError> {
        let info = self.registry.get(kind).clone();
        let key = (ns.to_string(), name.to_string());
        let mut st = self.lock();
        let Some(cur) = st.objects[kind].get(&key).cloned() else {
            return Err(ApiError::not_found(
                &info.spec.group,
                &info.spec.plural,
                name,
            ));
        };
        if let Some(rv) = precondition_rv
            && rv != cur.rv.to_string()
        {
            return Err(ApiError::conflict(
                &info.spec.group,
                &info.spec.plural,
                name,
            ));
        }
        if let Some(uid) = precondition_uid
            && Some(uid) != meta_str(&cur.value, "uid")
        {
            return Err(ApiError::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} \"{name}\": Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    info.spec.plural,
                    meta_str(&cur.value, "uid").unwrap_or("")
                ),
            ));
        }
        let has_finalizers = cur
            .value
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        if has_finalizers {
            if cur.value.pointer("/metadata/deletionTimestamp").is_some() {
                return Ok(cur);
            }
            let mut v = cur.value.clone();
            v["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
            v["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            return Ok(self.commit(&mut st, kind, key, Some(v), Some(cur)));
        }
        if kind == self.registry.namespace_kind() {
            // The namespace controller would empty the namespace first; do it at once.
            for k in 0..st.objects.len() {
                if !self.registry.get(k).spec.namespaced {
                    continue;
                }
                let victims: Vec<_> = st.objects[k]
                    .iter()
                    .filter(|((n, _), _)| *n == name)
                    .map(|(k, o)| (k.clone(), o.clone()))
                    .collect();
                for (vk, vo) in victims {
                    self.commit(&mut st, k, vk, None, Some(vo));
                }
            }
        }
        Ok(self.commit(&mut st, kind, key, None, Some(cur)))
    }

    /// Writes one change at the next revision: stores it, appends it to the history, wakes watchers.
    /// `new == None` deletes (the event carries `prev` at the new revision).
    fn commit(
        &self,
        st: &mut State,
        kind: KindId,
        key: ObjKey,
        new: Option<Value>,
        prev: Option<Arc<StoredObj>>,
    ) -> Arc<StoredObj> {
        st.rv += 1;
        let rv = st.rv;
        let (etype, obj) = match new {
            Some(mut v) => {
                v["metadata"]["resourceVersion"] = json!(rv.to_string());
                let obj = StoredObj::new(rv, v);
                st.objects[kind].insert(key, obj.clone());
                (
                    if prev.is_some() {
                        EventType::Modified
                    } else {
                        EventType::Added
                    },
                    obj,
                )
            }
            None => {
                st.objects[kind].remove(&key);
                let mut v = prev
                    .as_ref()
                    .expect("delete has a previous object")
                    .value
                    .clone();
                v["metadata"]["resourceVersion"] = json!(rv.to_string());
                (EventType::Deleted, StoredObj::new(rv, v))
            }
        };
        st.history.push_back(Arc::new(HistEvent {
            rv,
            kind,
            etype,
            obj: obj.clone(),
            prev,
        }));
        while st.history.len() > self.history_limit {
            if let Some(e) = st.history.pop_front() {
                st.compacted = e.rv;
            }
        }
        self.rv_tx.send_replace(rv);
        obj
    }
}

/// State of one kind at an older revision: current objects with every later change undone.
fn snapshot_at(st: &State, kind: KindId, at: u64) -> BTreeMap<ObjKey, Arc<StoredObj>> {
    let mut undo: HashMap<ObjKey, Option<Arc<StoredObj>>> = HashMap::new();
    let start = (at - st.compacted) as usize;
    for e in st.history.range(start.min(st.history.len())..) {
        if e.kind != kind {
            continue;
        }
        let key = (e.obj.namespace().to_string(), e.obj.name().to_string());
        undo.entry(key).or_insert_with(|| e.prev.clone());
    }
    let mut map = st.objects[kind].clone();
    for (k, v) in undo {
        match v {
            Some(o) => map.insert(k, o),
            None => map.remove(&k),
        };
    }
    map
}

fn check_type(info: &crate::kinds::KindInfo, obj: &Value) -> Result<(), ApiError> {
    if !obj.is_object() {
        return Err(ApiError::bad_request(format!(
            "the object provided is unrecognized (must be of type {})",
            info.spec.kind
        )));
    }
    if let Some(av) = obj.get("apiVersion").and_then(Value::as_str)
        && av != info.api_version
    {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({av}) does not match the expected API version ({})",
            info.api_version
        )));
    }
    if let Some(k) = obj.get("kind").and_then(Value::as_str)
        && k != info.spec.kind
    {
        return Err(ApiError::bad_request(format!(
            "the kind in the data ({k}) does not match the expected kind ({})",
            info.spec.kind
        )));
    }
    Ok(())
}

fn metadata_mut(obj: &mut Value) -> Result<&mut Map<String, Value>, ApiError> {
    let o = obj
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("object must be a JSON object"))?;
    let m = o.entry("metadata").or_insert_with(|| json!({}));
    if m.is_null() {
        *m = json!({});
    }
    m.as_object_mut()
        .ok_or_else(|| ApiError::bad_request("metadata must be an object"))
}

fn meta_str<'a>(v: &'a Value, field: &str) -> Option<&'a str> {
    v.get("metadata")?.get(field)?.as_str()
}

/// Whether anything outside metadata and status changed (what bumps `metadata.generation`).
fn spec_changed(old: &Value, new: &Value) -> bool {
    let (Some(o), Some(n)) = (old.as_object(), new.as_object()) else {
        return old != new;
    };
    let outside = |k: &String| k != "metadata" && k != "status";
    o.keys().filter(|k| outside(k)).count() != n.keys().filter(|k| outside(k)).count()
        || o.iter()
            .filter(|(k, _)| outside(k))
            .any(|(k, v)| n.get(k) != Some(v))
}

fn generate_name(prefix: &str) -> String {
    use rand::Rng;
    // The alphabet apiserver's names.SimpleNameGenerator uses (no vowels, no confusables).
    const ALPHA: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    let suffix: String = (0..5)
        .map(|_| ALPHA[rng.random_range(0..ALPHA.len())] as char)
        .collect();
    let max_prefix = 253 - 5;
    format!("{}{suffix}", &prefix[..prefix.len().min(max_prefix)])
}

fn validate_name(group: &str, kind: &str, name: &str) -> Result<(), ApiError> {
    let ok = name.len() <= 253
        && name.split('.').all(|l| {
            let b = l.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        });
    if ok {
        return Ok(());
    }
    Err(ApiError::invalid(
        group,
        kind,
        name,
        "metadata.name",
        "FieldValueInvalid",
        &format!(
            "Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (Store, KindId) {
        let reg = Arc::new(Registry::new(&[]));
        let cm = reg.by_kind("v1", "ConfigMap").unwrap();
        (Store::new(reg, 100), cm)
    }

    fn cm(name: &str, v: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "default"}, "data": {"k": v}})
    }

    #[test]
    fn list_at_an_older_revision_undoes_later_changes() {
        let (s, k) = store();
        s.create(k, None, cm("a", "1")).unwrap();
        let at = s.current_rv();
        s.create(k, None, cm("b", "1")).unwrap();
        s.upsert(k, "default", "a", |c| {
            let mut v = c.unwrap().clone();
            v["data"]["k"] = json!("2");
            Ok(v)
        })
        .unwrap();
        let page = s
            .list_page(k, None, Some(at), None, None, &|_| true)
            .unwrap();
        assert_eq!(page.items.len(), 1);
        assert_eq!(page.items[0].value["data"]["k"], "1");
    }

    #[test]
    fn unchanged_update_writes_no_new_revision() {
        let (s, k) = store();
        s.create(k, None, cm("a", "1")).unwrap();
        let rv = s.current_rv();
        s.upsert(k, "default", "a", |c| Ok(c.unwrap().clone()))
            .unwrap();
        assert_eq!(s.current_rv(), rv);
    }

    #[test]
    fn history_beyond_the_limit_is_compacted() {
        let (s, k) = store();
        for i in 0..150 {
            s.create(k, None, cm(&format!("c{i}"), "x")).unwrap();
        }
        assert!(s.events_after(1, 10).is_err());
        assert!(s.events_after(s.current_rv() - 5, 10).unwrap().0.len() == 5);
    }
}
