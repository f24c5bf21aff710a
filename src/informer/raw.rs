//! `RawObject`: a Kubernetes object of any kind, kept as the JSON the API server sent.
//!
//! kube's `DynamicObject` parses `metadata` into a typed `ObjectMeta` (dropping fields a newer
//! server may add) and flattens the rest, which costs a second pass. `RawObject` parses the
//! wire bytes once into a `serde_json::Value` and copies out only the identity fields kube's
//! `Resource` trait needs.

use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::{ApiResource, DynamicResourceScope, Resource};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::event::object;

/// An object as received, plus the identity fields kube's `Resource` trait asks for.
#[derive(Debug, Clone)]
pub struct RawObject {
    /// The whole object, every field kept.
    pub value: Value,
    /// name / namespace / uid / resourceVersion only; the JSON is the source of truth.
    meta: ObjectMeta,
}

impl RawObject {
    /// Wraps a JSON object.
    pub fn new(value: Value) -> Self {
        let meta = ObjectMeta {
            name: object::meta_str(&value, "name").map(str::to_string),
            namespace: object::namespace(&value).map(str::to_string),
            uid: object::meta_str(&value, "uid").map(str::to_string),
            resource_version: object::meta_str(&value, "resourceVersion").map(str::to_string),
            ..ObjectMeta::default()
        };
        Self { value, meta }
    }
}

impl<'de> Deserialize<'de> for RawObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Value::deserialize(d).map(RawObject::new)
    }
}

impl Serialize for RawObject {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.value.serialize(s)
    }
}

impl Resource for RawObject {
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
