//! Actor attribution: who made a change, read from `metadata.managedFields`.
//!
//! Every write to the API server leaves a trace in the object's `managedFields`: one entry per
//! (manager, operation, subresource) with the time of that manager's last write that changed
//! something. Comparing the entries of the previous and the new state of an object tells who
//! made the change in between: the managers whose entry is new, or whose `time` advanced.
//!
//! Only four fields of each entry are needed, never the (large) `fieldsV1` ownership tree, so
//! informers keep a compact [`Managers`] summary per object beside the cached object, parsed
//! straight from the wire bytes ([`Managers`] implements `Deserialize` for the
//! `managedFields` array and skips everything else), and the full tree is never built when
//! the transforms drop it.
//!
//! Limits, as documented in the README (`changedBy`):
//! - `time` has second granularity: a second write by the same manager within the same second
//!   as its previous one does not advance it, and that write is not attributed;
//! - an `Update` by a manager of fields it already owned still advances its time (the API
//!   server records any write that changed something), so it is attributed;
//! - writes that change no managed field (the API server's own bookkeeping, a DELETE request)
//!   leave no trace and name nobody.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeStruct, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One `managedFields` entry, reduced to what attribution needs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ManagerEntry {
    /// `manager`: the field manager's name (`kubectl-client-side-apply`, `kubelet`, ...).
    pub manager: Arc<str>,
    /// `operation`: `Apply` (server-side apply) or `Update` (create, update, patch).
    pub operation: Arc<str>,
    /// `subresource`, e.g. `status`; `None` for the main resource.
    pub subresource: Option<Arc<str>>,
    /// `time` as Unix seconds (the API server writes whole seconds); `None` when absent.
    pub time: Option<i64>,
}

impl ManagerEntry {
    /// True when `other` is the entry of the same (manager, operation, subresource).
    fn same_writer(&self, other: &ManagerEntry) -> bool {
        self.manager == other.manager
            && self.operation == other.operation
            && self.subresource == other.subresource
    }

    /// `time` in the API server's format (`2024-01-02T03:04:05Z`).
    pub fn time_rfc3339(&self) -> Option<String> {
        self.time.map(format_time)
    }
}

/// The wire form, `{manager, operation, subresource?, time?}`: the `changedBy` items of the
/// lookout envelope and of Debezium's `source.changedBy`.
impl Serialize for ManagerEntry {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let n = 2 + usize::from(self.subresource.is_some()) + usize::from(self.time.is_some());
        let mut st = s.serialize_struct("ManagerEntry", n)?;
        st.serialize_field("manager", &*self.manager)?;
        st.serialize_field("operation", &*self.operation)?;
        if let Some(sub) = &self.subresource {
            st.serialize_field("subresource", &**sub)?;
        }
        if let Some(t) = self.time {
            st.serialize_field("time", &format_time(t))?;
        }
        st.end()
    }
}

/// A compact summary of an object's `metadata.managedFields`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Managers(pub Arc<[ManagerEntry]>);

impl Managers {
    /// The summary of `obj`'s `metadata.managedFields` (empty when there are none).
    pub fn of(obj: &Value) -> Managers {
        obj.pointer("/metadata/managedFields")
            .and_then(|list| Managers::deserialize(list).ok())
            .unwrap_or_default()
    }

    /// The summary as a compact `managedFields` list (entries without `fieldsV1`), to carry
    /// it inside a parsed object until the transforms drop it.
    pub fn to_value(&self) -> Value {
        serde_json::to_value(&*self.0).expect("entries always serialize")
    }

    /// True when the object has no entries.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The entries.
    pub fn entries(&self) -> &[ManagerEntry] {
        &self.0
    }

    /// Who made the change from `old` to `self`: every entry that is new, or whose time
    /// advanced, newest first. With no previous state (`old` = `None`: a created object)
    /// every entry counts.
    pub fn changed_since(&self, old: Option<&Managers>) -> Arc<[ManagerEntry]> {
        let mut out: Vec<ManagerEntry> = self
            .0
            .iter()
            .filter(|new| {
                let Some(old) = old else { return true };
                match old.0.iter().find(|o| o.same_writer(new)) {
                    None => true,
                    Some(o) => match (o.time, new.time) {
                        (Some(before), Some(now)) => now > before,
                        (None, Some(_)) => true,
                        _ => false,
                    },
                }
            })
            .cloned()
            .collect();
        out.sort_by_key(|e| std::cmp::Reverse(e.time));
        out.into()
    }
}

/// Merges the attribution of two successive changes coalesced into one: each writer once,
/// with its newest time.
pub fn merge(first: &[ManagerEntry], second: &[ManagerEntry]) -> Arc<[ManagerEntry]> {
    let mut out: Vec<ManagerEntry> = second.to_vec();
    for e in first {
        if !out.iter().any(|o| o.same_writer(e)) {
            out.push(e.clone());
        }
    }
    out.sort_by_key(|e| std::cmp::Reverse(e.time));
    out.into()
}

/// The newest time among `entries`, as a `SystemTime` (Debezium's `source.ts_ms`).
pub fn newest_time(entries: &[ManagerEntry]) -> Option<SystemTime> {
    entries
        .iter()
        .filter_map(|e| e.time)
        .max()
        .and_then(|s| u64::try_from(s).ok())
        .map(|s| UNIX_EPOCH + Duration::from_secs(s))
}

/// Unix seconds of an RFC 3339 time (`metav1.Time`).
pub fn parse_time(s: &str) -> Option<i64> {
    let t = humantime::parse_rfc3339_weak(s).ok()?;
    let secs = t.duration_since(UNIX_EPOCH).ok()?.as_secs();
    i64::try_from(secs).ok()
}

fn format_time(secs: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Manager names, operations and subresources repeat across every object of a cluster; each
/// distinct string is kept once. Bounded, because any client may name itself anything.
fn intern(s: &str) -> Arc<str> {
    const MAX_INTERNED: usize = 4096;
    static TABLE: OnceLock<Mutex<HashSet<Arc<str>>>> = OnceLock::new();
    let table = TABLE.get_or_init(Default::default);
    let mut set = table.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(found) = set.get(s) {
        return found.clone();
    }
    let fresh: Arc<str> = s.into();
    if set.len() < MAX_INTERNED {
        set.insert(fresh.clone());
    }
    fresh
}

/// Parses a `managedFields` array into its summary without building any entry's
/// `fieldsV1` (skipped as it is read).
impl<'de> Deserialize<'de> for Managers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct List;
        impl<'de> Visitor<'de> for List {
            type Value = Managers;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a managedFields list")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Managers, E> {
                Ok(Managers::default())
            }
            fn visit_none<E: de::Error>(self) -> Result<Managers, E> {
                Ok(Managers::default())
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Managers, A::Error> {
                let mut out = Vec::new();
                while let Some(e) = seq.next_element::<Option<WireEntry>>()? {
                    if let Some(e) = e.and_then(|e| e.0) {
                        out.push(e);
                    }
                }
                Ok(Managers(out.into()))
            }
        }
        d.deserialize_any(List)
    }
}

/// One entry from the wire; `None` for entries without manager and operation.
struct WireEntry(Option<ManagerEntry>);

impl<'de> Deserialize<'de> for WireEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Entry;
        impl<'de> Visitor<'de> for Entry {
            type Value = WireEntry;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a managedFields entry")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<WireEntry, A::Error> {
                let (mut manager, mut operation, mut subresource, mut time) =
                    (None, None, None, None);
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    match &*key {
                        "manager" => manager = map.next_value::<Option<String>>()?,
                        "operation" => operation = map.next_value::<Option<String>>()?,
                        "subresource" => subresource = map.next_value::<Option<String>>()?,
                        "time" => time = map.next_value::<Option<String>>()?,
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                let entry = ManagerEntry {
                    manager: intern(manager.as_deref().unwrap_or_default()),
                    operation: intern(operation.as_deref().unwrap_or_default()),
                    subresource: subresource.filter(|s| !s.is_empty()).map(|s| intern(&s)),
                    time: time.as_deref().and_then(parse_time),
                };
                let empty = entry.manager.is_empty() && entry.operation.is_empty();
                Ok(WireEntry((!empty).then_some(entry)))
            }
        }
        d.deserialize_map(Entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(entries: Value) -> Value {
        json!({"metadata": {"name": "a", "managedFields": entries}})
    }

    fn entry(manager: &str, op: &str, sub: Option<&str>, time: &str) -> Value {
        let mut e = json!({"manager": manager, "operation": op, "apiVersion": "v1",
            "time": time, "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {"f:labels": {}}}});
        if let Some(s) = sub {
            e["subresource"] = json!(s);
        }
        e
    }

    fn names(list: &[ManagerEntry]) -> Vec<String> {
        list.iter()
            .map(|e| {
                format!(
                    "{}/{}{}",
                    e.manager,
                    e.operation,
                    e.subresource
                        .as_deref()
                        .map(|s| format!("/{s}"))
                        .unwrap_or_default()
                )
            })
            .collect()
    }

    #[test]
    fn managers_whose_entry_is_new_or_whose_time_advanced_made_the_change() {
        let old = Managers::of(&obj(json!([
            entry("kubectl-create", "Update", None, "2024-05-01T10:00:00Z"),
            entry("deployer", "Apply", None, "2024-05-01T10:00:05Z"),
            entry("kubelet", "Update", Some("status"), "2024-05-01T10:00:06Z"),
        ])));
        let new = Managers::of(&obj(json!([
            entry("kubectl-create", "Update", None, "2024-05-01T10:00:00Z"),
            entry("deployer", "Apply", None, "2024-05-01T10:01:00Z"),
            entry("kubelet", "Update", Some("status"), "2024-05-01T10:00:06Z"),
            entry("kubectl-label", "Update", None, "2024-05-01T10:00:59Z"),
        ])));
        let changed = new.changed_since(Some(&old));
        assert_eq!(
            names(&changed),
            vec!["deployer/Apply", "kubectl-label/Update"],
            "newest first"
        );
        assert_eq!(
            changed[0].time_rfc3339().as_deref(),
            Some("2024-05-01T10:01:00Z")
        );
    }

    #[test]
    fn a_manager_writing_again_within_the_same_second_is_not_attributed() {
        let old = Managers::of(&obj(json!([entry(
            "deployer",
            "Apply",
            None,
            "2024-05-01T10:00:05Z"
        )])));
        let new = old.clone();
        assert!(new.changed_since(Some(&old)).is_empty());
    }

    #[test]
    fn the_same_manager_with_another_operation_or_subresource_is_another_writer() {
        let old = Managers::of(&obj(json!([entry(
            "ctl",
            "Update",
            None,
            "2024-05-01T10:00:05Z"
        )])));
        let new = Managers::of(&obj(json!([
            entry("ctl", "Update", None, "2024-05-01T10:00:05Z"),
            entry("ctl", "Update", Some("status"), "2024-05-01T10:00:05Z"),
            entry("ctl", "Apply", None, "2024-05-01T10:00:05Z"),
        ])));
        assert_eq!(
            names(&new.changed_since(Some(&old))),
            vec!["ctl/Update/status", "ctl/Apply"]
        );
    }

    #[test]
    fn a_created_object_is_attributed_to_every_writer_it_has() {
        let new = Managers::of(&obj(json!([entry(
            "kubectl-create",
            "Update",
            None,
            "2024-05-01T10:00:00Z"
        )])));
        assert_eq!(
            names(&new.changed_since(None)),
            vec!["kubectl-create/Update"]
        );
    }

    #[test]
    fn the_summary_parsed_from_the_wire_equals_the_one_read_from_a_value() {
        let v = obj(json!([
            entry("kubectl-create", "Update", None, "2024-05-01T10:00:00Z"),
            entry("kubelet", "Update", Some("status"), "2024-05-01T10:00:06Z"),
            {"manager": "no-time", "operation": "Apply"},
            {},
        ]));
        let wire = serde_json::to_string(&v["metadata"]["managedFields"]).unwrap();
        let parsed: Managers = serde_json::from_str(&wire).unwrap();
        assert_eq!(parsed, Managers::of(&v));
        assert_eq!(parsed.entries().len(), 3);
        assert_eq!(parsed.entries()[2].time, None);
        let none: Managers = serde_json::from_str("null").unwrap();
        assert!(none.is_empty());
    }

    #[test]
    fn entries_serialize_as_the_documented_changed_by_items() {
        let m = Managers::of(&obj(json!([
            entry("kubelet", "Update", Some("status"), "2024-05-01T10:00:06Z"),
            {"manager": "x", "operation": "Apply"},
        ])));
        assert_eq!(
            serde_json::to_value(m.entries()).unwrap(),
            json!([{"manager": "kubelet", "operation": "Update", "subresource": "status",
                "time": "2024-05-01T10:00:06Z"}, {"manager": "x", "operation": "Apply"}])
        );
    }

    #[test]
    fn coalesced_changes_name_each_writer_once_with_its_newest_time() {
        let a = Managers::of(&obj(json!([
            entry("x", "Update", None, "2024-05-01T10:00:00Z"),
            entry("y", "Apply", None, "2024-05-01T10:00:01Z"),
        ])));
        let b = Managers::of(&obj(json!([entry(
            "x",
            "Update",
            None,
            "2024-05-01T10:00:09Z"
        )])));
        let m = merge(a.entries(), b.entries());
        assert_eq!(names(&m), vec!["x/Update", "y/Apply"]);
        assert_eq!(m[0].time_rfc3339().as_deref(), Some("2024-05-01T10:00:09Z"));
        assert_eq!(
            newest_time(&m),
            Some(UNIX_EPOCH + Duration::from_secs(1_714_557_609))
        );
    }
}
