//! `RawObject`: a Kubernetes object of any kind, kept as the JSON the API server sent.
//!
//! kube's `DynamicObject` parses `metadata` into a typed `ObjectMeta` (dropping fields a newer
//! server may add) and flattens the rest, which costs a second pass. `RawObject` parses the
//! wire bytes once into a `serde_json::Value` and copies out only the identity fields kube's
//! `Resource` trait needs.
//!
//! `RawObject<DropManagedFields>` skips `metadata.managedFields` while parsing: that list of
//! server-side-apply bookkeeping is a third of a typical object's bytes and, being hundreds of
//! tiny maps, about half of its parse cost; an agent that drops it anyway (the default
//! transform) never builds it.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::{ApiResource, DynamicResourceScope, Resource};
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::event::changed_by::Managers;
use crate::event::object;

/// What a [`RawObject`] keeps while parsing.
pub trait ParsePolicy: fmt::Debug + Clone + Send + Sync + 'static {
    /// Skip `metadata.managedFields`.
    const DROP_MANAGED_FIELDS: bool;
    /// Instead of skipping them, keep each entry's `manager`, `operation`, `subresource` and
    /// `time` (never `fieldsV1`): what `changedBy` attribution needs.
    const SUMMARIZE_MANAGED_FIELDS: bool = false;
}

/// Keep every field (the default).
#[derive(Debug, Clone, Copy, Default)]
pub struct KeepAll;

impl ParsePolicy for KeepAll {
    const DROP_MANAGED_FIELDS: bool = false;
}

/// Never build `metadata.managedFields`.
#[derive(Debug, Clone, Copy, Default)]
pub struct DropManagedFields;

impl ParsePolicy for DropManagedFields {
    const DROP_MANAGED_FIELDS: bool = true;
}

/// Keep only a summary of `metadata.managedFields` (see [`crate::event::changed_by`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct SummarizeManagedFields;

impl ParsePolicy for SummarizeManagedFields {
    const DROP_MANAGED_FIELDS: bool = true;
    const SUMMARIZE_MANAGED_FIELDS: bool = true;
}

/// An object as received, plus the identity fields kube's `Resource` trait asks for.
#[derive(Debug, Clone)]
pub struct RawObject<P: ParsePolicy = KeepAll> {
    /// The whole object, every field kept (but `metadata.managedFields` under
    /// [`DropManagedFields`]).
    pub value: Value,
    /// name / namespace / uid / resourceVersion only; the JSON is the source of truth.
    meta: ObjectMeta,
    /// When decoding began: the line's bytes were in hand, nothing of them parsed yet (a
    /// watch event's arrival, where delivery latency starts).
    pub arrived: std::time::Instant,
    policy: PhantomData<P>,
}

impl<P: ParsePolicy> RawObject<P> {
    /// Wraps a JSON object that arrived now.
    pub fn new(value: Value) -> Self {
        Self::arrived_at(value, std::time::Instant::now())
    }

    /// Wraps a JSON object whose bytes arrived at `arrived`.
    fn arrived_at(value: Value, arrived: std::time::Instant) -> Self {
        let meta = ObjectMeta {
            name: object::meta_str(&value, "name").map(str::to_string),
            namespace: object::namespace(&value).map(str::to_string),
            uid: object::meta_str(&value, "uid").map(str::to_string),
            resource_version: object::meta_str(&value, "resourceVersion").map(str::to_string),
            ..ObjectMeta::default()
        };
        Self {
            value,
            meta,
            arrived,
            policy: PhantomData,
        }
    }
}

impl<'de, P: ParsePolicy> Deserialize<'de> for RawObject<P> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // kube has read the whole watch line and parsed only its `type` so far.
        Self::deserialize_arrived(d, std::time::Instant::now())
    }
}

impl<P: ParsePolicy> RawObject<P> {
    /// Parses an object whose bytes were in hand at `arrived`.
    fn deserialize_arrived<'de, D: Deserializer<'de>>(
        d: D,
        arrived: std::time::Instant,
    ) -> Result<Self, D::Error> {
        let wrap = |value| RawObject::arrived_at(value, arrived);
        if P::DROP_MANAGED_FIELDS {
            // `any`, not `map`: a non-object then reaches the visitor, whose error does not
            // quote it (serde's default would put a Secret list's bad item into the log).
            d.deserialize_any(ObjectVisitor {
                metadata: false,
                summarize: P::SUMMARIZE_MANAGED_FIELDS,
            })
            .map(wrap)
        } else {
            Value::deserialize(d).map(wrap)
        }
    }
}

/// Builds a JSON object; for the top level, `metadata` is parsed without `managedFields`,
/// for `metadata` itself, `managedFields` is skipped.
struct ObjectVisitor {
    /// This is the `metadata` map.
    metadata: bool,
    /// Keep the summary of `managedFields` instead of skipping them.
    summarize: bool,
}

impl<'de> Visitor<'de> for ObjectVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a Kubernetes object")
    }

    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Value, E> {
        Err(E::custom("expected a Kubernetes object, found a string"))
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Value, E> {
        Err(E::custom("expected a Kubernetes object, found a boolean"))
    }

    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Value, E> {
        Err(E::custom("expected a Kubernetes object, found a number"))
    }

    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Value, E> {
        Err(E::custom("expected a Kubernetes object, found a number"))
    }

    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Value, E> {
        Err(E::custom("expected a Kubernetes object, found a number"))
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Value, E> {
        Err(E::custom("expected a Kubernetes object, found null"))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, _: A) -> Result<Value, A::Error> {
        Err(serde::de::Error::custom(
            "expected a Kubernetes object, found an array",
        ))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if self.metadata && key == "managedFields" {
                if self.summarize {
                    let managers: Managers = map.next_value()?;
                    out.insert(key, managers.to_value());
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            } else if !self.metadata && key == "metadata" {
                let v = map.next_value_seed(MetadataSeed(self.summarize))?;
                out.insert(key, v);
            } else {
                out.insert(key, map.next_value()?);
            }
        }
        Ok(Value::Object(out))
    }
}

/// `metadata`: a map without `managedFields` (or with their summary when `.0`; anything else
/// is taken as it is).
struct MetadataSeed(bool);

impl<'de> DeserializeSeed<'de> for MetadataSeed {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(MetadataVisitor(self.0))
    }
}

struct MetadataVisitor(bool);

macro_rules! pass_through {
    ($($f:ident($t:ty)),*) => {$(
        fn $f<E: serde::de::Error>(self, v: $t) -> Result<Value, E> {
            Ok(Value::from(v))
        }
    )*};
}

impl<'de> Visitor<'de> for MetadataVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("object metadata")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Value, A::Error> {
        ObjectVisitor {
            metadata: true,
            summarize: self.0,
        }
        .visit_map(map)
    }

    pass_through!(
        visit_bool(bool),
        visit_i64(i64),
        visit_u64(u64),
        visit_f64(f64),
        visit_str(&str),
        visit_string(String)
    );

    fn visit_unit<E: serde::de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Value, A::Error> {
        Value::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))
    }
}

impl<P: ParsePolicy> Serialize for RawObject<P> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.value.serialize(s)
    }
}

impl<P: ParsePolicy> Resource for RawObject<P> {
    type DynamicType = ApiResource;
    type Scope = DynamicResourceScope;

    fn kind(dt: &ApiResource) -> Cow<'_, str> {
        Cow::Borrowed(&dt.kind)
    }
    fn group(dt: &ApiResource) -> Cow<'_, str> {
        Cow::Borrowed(&dt.group)
    }
    fn version(dt: &ApiResource) -> Cow<'_, str> {
        Cow::Borrowed(&dt.version)
    }
    fn api_version(dt: &ApiResource) -> Cow<'_, str> {
        Cow::Borrowed(&dt.api_version)
    }
    fn plural(dt: &ApiResource) -> Cow<'_, str> {
        Cow::Borrowed(&dt.plural)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.meta
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.meta
    }
}

/// A watch event's object before it is parsed: its JSON text, cut out of the line by a
/// scan that builds nothing, and when the line arrived.
///
/// The watch reads `WatchEvent<Unparsed<P>>` so that the task reading the stream only cuts
/// out each line's object; the objects are then parsed ([`Self::parse`]) and prepared on tasks
/// of their own, several at once, and handed over in order (why: `super::prepare`).
#[derive(Debug, Clone)]
pub struct Unparsed<P: ParsePolicy = KeepAll> {
    json: Box<serde_json::value::RawValue>,
    arrived: std::time::Instant,
    /// Empty: kube's `Resource` asks for metadata, nothing reads it from a watch event.
    meta: ObjectMeta,
    policy: PhantomData<P>,
}

impl<P: ParsePolicy> Unparsed<P> {
    /// The object, parsed as `RawObject<P>` parses it; arrived when the line did.
    ///
    /// # Errors
    /// The JSON is not a Kubernetes object (the line itself was valid JSON).
    pub fn parse(self) -> Result<RawObject<P>, serde_json::Error> {
        let mut d = serde_json::Deserializer::from_str(self.json.get());
        let object = RawObject::deserialize_arrived(&mut d, self.arrived)?;
        d.end()?;
        Ok(object)
    }

    /// The object's JSON as the line carried it.
    pub fn json(&self) -> &str {
        self.json.get()
    }

    /// When the line arrived, before anything of it was parsed.
    pub fn arrived(&self) -> std::time::Instant {
        self.arrived
    }
}

impl<'de, P: ParsePolicy> Deserialize<'de> for Unparsed<P> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let arrived = std::time::Instant::now();
        Ok(Self {
            json: Deserialize::deserialize(d)?,
            arrived,
            meta: ObjectMeta::default(),
            policy: PhantomData,
        })
    }
}

impl<P: ParsePolicy> Resource for Unparsed<P> {
    type DynamicType = ApiResource;
    type Scope = DynamicResourceScope;

    fn kind(dt: &ApiResource) -> Cow<'_, str> {
        RawObject::<P>::kind(dt)
    }
    fn group(dt: &ApiResource) -> Cow<'_, str> {
        RawObject::<P>::group(dt)
    }
    fn version(dt: &ApiResource) -> Cow<'_, str> {
        RawObject::<P>::version(dt)
    }
    fn api_version(dt: &ApiResource) -> Cow<'_, str> {
        RawObject::<P>::api_version(dt)
    }
    fn plural(dt: &ApiResource) -> Cow<'_, str> {
        RawObject::<P>::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.meta
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.meta
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn drop_managed_fields_parses_everything_else_unchanged() {
        let obj = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "n", "uid": "u", "resourceVersion": "3",
                "managedFields": [{"manager": "kubelet", "fieldsV1": {"f:status": {}}}],
                "labels": {"a": "b"}},
            "spec": {"containers": [{"name": "c", "managedFields": 1}]}, "status": null});
        let text = serde_json::to_string(&obj).unwrap();
        let kept: RawObject = serde_json::from_str(&text).unwrap();
        assert_eq!(kept.value, obj);
        let trimmed: RawObject<DropManagedFields> = serde_json::from_str(&text).unwrap();
        let mut want = obj.clone();
        want["metadata"]
            .as_object_mut()
            .unwrap()
            .shift_remove("managedFields");
        assert_eq!(trimmed.value, want);
        assert_eq!(trimmed.meta().name.as_deref(), Some("p"));
        assert_eq!(trimmed.meta().resource_version.as_deref(), Some("3"));
    }

    #[test]
    fn summarize_keeps_who_and_when_of_each_entry_and_never_its_fields() {
        let obj = json!({"kind": "Pod", "metadata": {"name": "p",
            "managedFields": [{"manager": "kubelet", "operation": "Update", "subresource": "status",
                "time": "2024-05-01T10:00:00Z", "fieldsType": "FieldsV1",
                "fieldsV1": {"f:status": {"f:phase": {}}}}]}, "spec": {}});
        let parsed: RawObject<SummarizeManagedFields> =
            serde_json::from_str(&obj.to_string()).unwrap();
        assert_eq!(
            parsed.value["metadata"]["managedFields"],
            json!([{"manager": "kubelet", "operation": "Update", "subresource": "status",
                "time": "2024-05-01T10:00:00Z"}])
        );
        assert_eq!(
            Managers::of(&parsed.value),
            Managers::of(&obj),
            "the summary is the same as from the full entries"
        );
    }

    #[test]
    fn a_non_object_item_is_refused_without_quoting_it() {
        for bad in [
            r#""c2VjcmV0LXZhbHVl""#,
            "[\"c2VjcmV0LXZhbHVl\"]",
            "12345678",
            "true",
            "null",
        ] {
            let err =
                serde_json::from_str::<Vec<RawObject<DropManagedFields>>>(&format!("[{bad}]"))
                    .unwrap_err()
                    .to_string();
            assert!(err.contains("expected a Kubernetes object"), "{err}");
            assert!(
                !err.contains("c2VjcmV0") && !err.contains("12345678"),
                "{err}"
            );
        }
        // As a watch event (buffered by serde before the object is parsed) too.
        let event = r#"{"object":"c2VjcmV0LXZhbHVl","type":"ADDED"}"#;
        let err =
            serde_json::from_str::<kube::api::WatchEvent<RawObject<DropManagedFields>>>(event)
                .unwrap_err()
                .to_string();
        assert!(!err.contains("c2VjcmV0"), "{err}");
    }

    #[test]
    fn drop_managed_fields_tolerates_odd_metadata() {
        let trimmed: RawObject<DropManagedFields> =
            serde_json::from_str(r#"{"kind": "X", "metadata": null}"#).unwrap();
        assert_eq!(trimmed.value, json!({"kind": "X", "metadata": null}));
    }
}
