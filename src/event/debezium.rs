//! The Debezium encoding of an envelope (`format: debezium`): the change-event shape that
//! Kafka Connect sinks, Flink's `debezium-json` format and most lakehouse ingestion read.
//!
//! | Debezium field         | from the envelope                                               |
//! |------------------------|-----------------------------------------------------------------|
//! | `before`               | updates: the previously emitted object; deletes: the last known state; else `null` |
//! | `after`                | adds, reads, updates: the object; deletes: `null`               |
//! | `op`                   | `c` add, `u` update, `d` delete, `r` read (initial list, snapshot) |
//! | `ts_ms`                | when lookout saw the change (the envelope `time`)               |
//! | `source.version`       | lookout's version                                               |
//! | `source.connector`     | `lookout`                                                       |
//! | `source.name`          | the cluster (Debezium's logical server name)                    |
//! | `source.ts_ms`         | when the API server made the change, as far as the object tells: adds its `creationTimestamp`, attributed updates the newest `changedBy` time (whole seconds); else, and for reads and deletes, the envelope `time` |
//! | `source.snapshot`      | `first`, `true`, `last` on reads; `false` on changes            |
//! | `source.apiVersion`, `.kind`, `.namespace` (`null` when cluster-scoped), `.objectName`, `.uid`, `.resourceVersion` | the object's identity (on an inferred delete, `resourceVersion` is the one it was found gone at) |
//! | `source.finalStateUnknown` | `true` on deletes inferred at a re-list or a restart, else absent |
//! | `source.changedBy`     | the envelope's `changedBy`, when attributed                     |
//!
//! With `debezium.schemas: true` the value (and the Kafka key) are framed for Kafka Connect's
//! `JsonConverter` with `schemas.enable=true`: `{"schema": <Connect schema>, "payload": …}`.
//! A Connect schema cannot describe objects of arbitrary shape, so in the framed form
//! `before` and `after` are rows: the identity as columns and the whole object as JSON text
//! (`object`, semantic type `io.debezium.data.Json`, as Debezium's MongoDB connector carries
//! documents). `ExtractNewRecordState` then yields a flat row a JDBC or lakehouse sink can
//! write.

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::changed_by::{self, ManagerEntry};
use super::{Doc, Envelope, Op};

/// `connector` in `source`.
pub const CONNECTOR: &str = "lookout";

/// `debezium:` of a sink with `format: debezium`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DebeziumOptions {
    /// Frame values (and Kafka keys) as `{"schema": …, "payload": …}` for Kafka Connect's
    /// `JsonConverter` with `schemas.enable=true`.
    #[serde(default)]
    pub schemas: bool,
}

/// What identifies an object in a Kafka key (`key:` of the Kafka sink).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum KeyMode {
    /// The object's `uid`: a deleted and re-created object is a new key.
    #[default]
    Uid,
    /// `namespace` and `name`: a re-created object continues its predecessor's key, so a
    /// compacted topic keeps one record per name.
    NamespacedName,
}

/// Encodes envelopes as Debezium change events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Encoding {
    /// Connect framing (see [`DebeziumOptions::schemas`]).
    pub schemas: bool,
}

impl From<DebeziumOptions> for Encoding {
    fn from(o: DebeziumOptions) -> Self {
        Encoding { schemas: o.schemas }
    }
}

/// Debezium's `op`.
pub fn op(e: &Envelope) -> &'static str {
    if e.is_read() {
        return "r";
    }
    match e.op {
        Op::Add => "c",
        Op::Update => "u",
        Op::Delete => "d",
    }
}

/// Debezium's `source.snapshot`.
pub fn snapshot(e: &Envelope) -> &'static str {
    match (e.snapshot, e.is_read()) {
        (Some(mark), _) => mark.as_str(),
        (None, true) => "true",
        (None, false) => "false",
    }
}

/// `source.ts_ms`: when the API server made the change, as far as the object tells.
pub fn source_time(e: &Envelope) -> SystemTime {
    if e.is_read() {
        return e.time;
    }
    let told = match e.op {
        Op::Add => e
            .object
            .lookup("/metadata/creationTimestamp")
            .and_then(|t| t.as_str().and_then(changed_by::parse_time))
            .and_then(|s| u64::try_from(s).ok())
            .map(|s| UNIX_EPOCH + std::time::Duration::from_secs(s)),
        Op::Update => e.changed_by.as_deref().and_then(changed_by::newest_time),
        Op::Delete => None,
    };
    told.unwrap_or(e.time)
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The `source` block.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Source<'a> {
    version: &'static str,
    connector: &'static str,
    name: &'a str,
    #[serde(rename = "ts_ms")]
    ts_ms: u64,
    snapshot: &'static str,
    api_version: &'a str,
    kind: &'a str,
    namespace: Option<&'a str>,
    object_name: &'a str,
    uid: &'a str,
    resource_version: &'a str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    final_state_unknown: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    changed_by: Option<&'a [ManagerEntry]>,
}

/// The change event; `S` is how `before`/`after` are carried (objects, or framed rows).
#[derive(Serialize)]
struct Change<'a, S> {
    before: Option<S>,
    after: Option<S>,
    source: Source<'a>,
    op: &'static str,
    ts_ms: u64,
}

/// `before`/`after` in the framed form: identity columns and the object as JSON text.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Row<'a> {
    api_version: &'a str,
    kind: &'a str,
    namespace: Option<&'a str>,
    name: &'a str,
    uid: &'a str,
    resource_version: &'a str,
    object: &'a str,
}

impl<'a> Row<'a> {
    fn of(e: &'a Envelope, obj: &'a Doc) -> Row<'a> {
        let ident = obj.ident();
        Row {
            api_version: &e.api_version,
            kind: &e.kind,
            namespace: ident.namespace.as_deref().or(e.namespace.as_deref()),
            name: &e.name,
            uid: &e.uid,
            resource_version: &ident.resource_version,
            object: std::str::from_utf8(obj.json()).expect("serde_json writes UTF-8"),
        }
    }
}

/// A state as it goes into `before`/`after`: its JSON as written (what serializing its tree
/// would write, byte for byte), so a watched object's tree is never built for it.
fn raw(obj: &Doc) -> &RawValue {
    serde_json::from_slice(obj.json()).expect("a Doc's JSON is serde_json's")
}

#[derive(Serialize)]
struct Framed<'a, P> {
    schema: &'a Value,
    payload: P,
}

impl Encoding {
    /// The change event for `e` (a Kafka message value, a webhook item, a JSONL line).
    pub fn value(&self, e: &Envelope) -> Bytes {
        let (before, after): (Option<&Doc>, Option<&Doc>) = match e.op {
            Op::Add => (None, Some(&e.object)),
            Op::Update => (e.old.as_deref(), Some(&e.object)),
            Op::Delete => (Some(&e.object), None),
        };
        let source = Source {
            version: env!("CARGO_PKG_VERSION"),
            connector: CONNECTOR,
            name: &e.cluster,
            ts_ms: millis(source_time(e)),
            snapshot: snapshot(e),
            api_version: &e.api_version,
            kind: &e.kind,
            namespace: e.namespace.as_deref(),
            object_name: &e.name,
            uid: &e.uid,
            resource_version: &e.resource_version,
            final_state_unknown: e.final_state_unknown,
            changed_by: e.changed_by.as_deref(),
        };
        let (op, ts_ms) = (op(e), millis(e.time));
        let bytes = if self.schemas {
            let schema = value_schema(&schema_name(e));
            let payload = Change {
                before: before.map(|o| Row::of(e, o)),
                after: after.map(|o| Row::of(e, o)),
                source,
                op,
                ts_ms,
            };
            serde_json::to_vec(&Framed {
                schema: &schema,
                payload,
            })
        } else {
            serde_json::to_vec(&Change {
                before: before.map(raw),
                after: after.map(raw),
                source,
                op,
                ts_ms,
            })
        };
        Bytes::from(bytes.expect("a change event always serializes"))
    }

    /// The Kafka key for `e`: a JSON object naming the object by `mode`, framed like the
    /// value.
    pub fn key(&self, e: &Envelope, mode: KeyMode) -> Bytes {
        let payload = match mode {
            KeyMode::Uid => json!({"uid": e.uid}),
            KeyMode::NamespacedName => json!({"namespace": e.namespace, "name": e.name}),
        };
        let v = if self.schemas {
            json!({"schema": key_schema(&schema_name(e), mode), "payload": payload})
        } else {
            payload
        };
        Bytes::from(serde_json::to_vec(&v).expect("a key always serializes"))
    }
}

/// `<cluster>.<group>.<Kind>`, each part reduced to Avro name characters (`core` for the core
/// group), the prefix of the Connect schema names (`….Envelope`, `….Value`, `….Key`).
pub fn schema_name(e: &Envelope) -> String {
    let part = |s: &str| {
        let mut out: String = s
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        if !out.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
            out.insert(0, '_');
        }
        out
    };
    let group = match e.group() {
        "" => "core",
        g => g,
    };
    format!("{}.{}.{}", part(&e.cluster), part(group), part(&e.kind))
}

fn field(name: &str, ty: &str, optional: bool) -> Value {
    json!({"field": name, "type": ty, "optional": optional})
}

/// The fields of `source`; the same for every kind.
fn source_fields() -> &'static Value {
    static FIELDS: OnceLock<Value> = OnceLock::new();
    FIELDS.get_or_init(|| {
        let mut snapshot = field("snapshot", "string", true);
        snapshot["name"] = json!("io.debezium.data.Enum");
        snapshot["version"] = json!(1);
        snapshot["parameters"] = json!({"allowed": "true,first,last,false"});
        snapshot["default"] = json!("false");
        let changed_by = json!({"field": "changedBy", "type": "array", "optional": true,
            "items": {"type": "struct", "optional": false, "name": "io.lookout.kubernetes.ChangedBy",
                "fields": [field("manager", "string", false), field("operation", "string", false),
                    field("subresource", "string", true), field("time", "string", true)]}});
        json!([
            field("version", "string", false),
            field("connector", "string", false),
            field("name", "string", false),
            field("ts_ms", "int64", false),
            snapshot,
            field("apiVersion", "string", false),
            field("kind", "string", false),
            field("namespace", "string", true),
            field("objectName", "string", false),
            field("uid", "string", false),
            field("resourceVersion", "string", false),
            field("finalStateUnknown", "boolean", true),
            changed_by,
        ])
    })
}

/// The fields of a framed `before`/`after` row.
fn row_fields() -> &'static Value {
    static FIELDS: OnceLock<Value> = OnceLock::new();
    FIELDS.get_or_init(|| {
        let mut object = field("object", "string", false);
        object["name"] = json!("io.debezium.data.Json");
        object["version"] = json!(1);
        json!([
            field("apiVersion", "string", false),
            field("kind", "string", false),
            field("namespace", "string", true),
            field("name", "string", false),
            field("uid", "string", false),
            field("resourceVersion", "string", false),
            object,
        ])
    })
}

/// The Connect schema of a framed value.
fn value_schema(prefix: &str) -> Value {
    let row = |name: &str| {
        json!({"field": name, "type": "struct", "optional": true,
            "name": format!("{prefix}.Value"), "fields": row_fields()})
    };
    json!({"type": "struct", "optional": false, "name": format!("{prefix}.Envelope"), "version": 1,
    "fields": [
        row("before"),
        row("after"),
        {"field": "source", "type": "struct", "optional": false,
            "name": "io.lookout.kubernetes.Source", "fields": source_fields()},
        field("op", "string", false),
        field("ts_ms", "int64", true),
    ]})
}

/// The Connect schema of a framed key.
fn key_schema(prefix: &str, mode: KeyMode) -> Value {
    let fields = match mode {
        KeyMode::Uid => json!([field("uid", "string", false)]),
        KeyMode::NamespacedName => {
            json!([
                field("namespace", "string", true),
                field("name", "string", false)
            ])
        }
    };
    json!({"type": "struct", "optional": false, "name": format!("{prefix}.Key"), "fields": fields})
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use serde_json::json;

    use super::*;
    use crate::event::changed_by::Managers;
    use crate::event::{EnvelopeBuilder, SnapshotMark};

    fn builder() -> EnvelopeBuilder {
        EnvelopeBuilder {
            cluster: "prod".into(),
            ..EnvelopeBuilder::for_test("apps/v1", "Deployment")
        }
    }

    /// An update from 1 to 3 replicas (resourceVersion 7 → 8) by `writers`' managedFields.
    fn scaled(writers: Value) -> Envelope {
        let mut e = builder().build(
            Op::Update,
            obj("8", 3),
            Some(obj("7", 1)),
            None,
            Instant::now(),
        );
        let managers = Managers::of(&json!({"metadata": {"managedFields": writers}}));
        e.changed_by = Some(managers.changed_since(None));
        e
    }

    fn obj(rv: &str, replicas: u32) -> Arc<Value> {
        Arc::new(json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "shop", "uid": "u-1", "resourceVersion": rv,
                "creationTimestamp": "2024-05-01T10:00:00Z"},
            "spec": {"replicas": replicas}}))
    }

    /// Decodes and validates against `schema/debezium.schema.json` (values and keys).
    fn decode(b: &Bytes) -> Value {
        let v: Value = serde_json::from_slice(b).unwrap();
        if v.get("source").is_some()
            || v["schema"]["name"]
                .as_str()
                .is_some_and(|n| n.ends_with(".Envelope"))
        {
            crate::event::schema_check::debezium(&v);
        } else {
            crate::event::schema_check::debezium_key(&v);
        }
        v
    }

    #[test]
    fn an_update_carries_before_after_and_the_object_identity_in_source() {
        let e = scaled(json!([
            {"manager": "deployer", "operation": "Apply", "time": "2024-05-01T10:05:00Z"}]));
        let v = decode(&Encoding::default().value(&e));
        assert_eq!(v["op"], "u");
        assert_eq!(v["before"]["spec"]["replicas"], 1);
        assert_eq!(v["after"]["spec"]["replicas"], 3);
        let s = &v["source"];
        assert_eq!(s["connector"], "lookout");
        assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(s["name"], "prod");
        assert_eq!(s["snapshot"], "false");
        assert_eq!(s["apiVersion"], "apps/v1");
        assert_eq!(s["kind"], "Deployment");
        assert_eq!(s["namespace"], "shop");
        assert_eq!(s["objectName"], "web");
        assert_eq!(s["uid"], "u-1");
        assert_eq!(s["resourceVersion"], "8");
        assert!(s.get("finalStateUnknown").is_none());
        assert_eq!(s["changedBy"][0]["manager"], "deployer");
        // The API server's time of the write, to the second.
        assert_eq!(s["ts_ms"], 1_714_557_900_000u64);
        assert_eq!(v["ts_ms"], millis(e.time));
    }

    #[test]
    fn adds_deletes_and_reads_map_to_c_d_and_r() {
        let add = builder().build(Op::Add, obj("1", 1), None, None, Instant::now());
        let v = decode(&Encoding::default().value(&add));
        assert_eq!((v["op"].as_str(), v["before"].is_null()), (Some("c"), true));
        assert_eq!(v["after"]["metadata"]["uid"], "u-1");
        assert_eq!(
            v["source"]["ts_ms"], 1_714_557_600_000u64,
            "creationTimestamp"
        );

        // Inferred at a re-list at resourceVersion 12: `before` is the last state known, the
        // source carries the resourceVersion it was found gone at.
        let del = builder().build_unseen_delete(Doc::new(obj("2", 1)), "12", Instant::now());
        let v = decode(&Encoding::default().value(&del));
        assert_eq!(v["op"], "d");
        assert!(v["after"].is_null());
        assert_eq!(v["before"]["metadata"]["resourceVersion"], "2");
        assert_eq!(v["source"]["resourceVersion"], "12");
        assert_eq!(v["source"]["finalStateUnknown"], true);

        for (mark, want) in [
            (Some(SnapshotMark::First), "first"),
            (Some(SnapshotMark::True), "true"),
            (Some(SnapshotMark::Last), "last"),
        ] {
            let mut read = builder().build(Op::Add, obj("3", 1), None, None, Instant::now());
            read.snapshot = mark;
            read.time = UNIX_EPOCH + Duration::from_secs(2_000_000_000);
            let v = decode(&Encoding::default().value(&read));
            assert_eq!(v["op"], "r");
            assert_eq!(v["source"]["snapshot"], want);
            assert_eq!(
                v["source"]["ts_ms"], 2_000_000_000_000u64,
                "a read happens when it is read"
            );
        }
        let mut initial = builder().build(Op::Add, obj("3", 1), None, None, Instant::now());
        initial.initial_list = true;
        assert_eq!(op(&initial), "r");
        assert_eq!(snapshot(&initial), "true");
    }

    #[test]
    fn cluster_scoped_objects_have_a_null_namespace() {
        let node = Arc::new(json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "n1", "uid": "u-n", "resourceVersion": "4"}}));
        let mut b = builder();
        b.api_version = "v1".into();
        b.kind = "Node".into();
        let e = b.build(Op::Add, node, None, None, Instant::now());
        let v = decode(&Encoding::default().value(&e));
        assert!(v["source"]["namespace"].is_null());
        assert_eq!(schema_name(&e), "prod.core.Node");
        let key = decode(&Encoding::default().key(&e, KeyMode::NamespacedName));
        assert_eq!(key, json!({"namespace": null, "name": "n1"}));
    }

    #[test]
    fn keys_name_the_object_by_uid_or_by_namespace_and_name() {
        let e = builder().build(Op::Add, obj("1", 1), None, None, Instant::now());
        assert_eq!(
            decode(&Encoding::default().key(&e, KeyMode::Uid)),
            json!({"uid": "u-1"})
        );
        assert_eq!(
            decode(&Encoding::default().key(&e, KeyMode::NamespacedName)),
            json!({"namespace": "shop", "name": "web"})
        );
        let framed = decode(&Encoding { schemas: true }.key(&e, KeyMode::Uid));
        assert_eq!(framed["payload"], json!({"uid": "u-1"}));
        assert_eq!(framed["schema"]["name"], "prod.apps.Deployment.Key");
        assert_eq!(framed["schema"]["fields"][0]["field"], "uid");
    }

    /// Every payload field has a schema field and the other way round, with the type the
    /// JSON value has: what Connect's `JsonConverter` checks when it reads the message.
    fn check_connect(schema: &Value, payload: &Value, at: &str) {
        let ty = schema["type"].as_str().unwrap();
        if payload.is_null() {
            assert_eq!(schema["optional"], true, "{at}: null but not optional");
            return;
        }
        match ty {
            "struct" => {
                let fields = schema["fields"].as_array().unwrap();
                let obj = payload
                    .as_object()
                    .unwrap_or_else(|| panic!("{at}: not an object"));
                for k in obj.keys() {
                    assert!(
                        fields.iter().any(|f| f["field"] == k.as_str()),
                        "{at}.{k}: no schema field"
                    );
                }
                for f in fields {
                    let name = f["field"].as_str().unwrap();
                    let v = obj.get(name).cloned().unwrap_or(Value::Null);
                    check_connect(f, &v, &format!("{at}.{name}"));
                }
            }
            "array" => {
                for (i, item) in payload.as_array().unwrap().iter().enumerate() {
                    check_connect(&schema["items"], item, &format!("{at}[{i}]"));
                }
            }
            "string" => assert!(payload.is_string(), "{at}: not a string"),
            "int64" => assert!(payload.is_u64() || payload.is_i64(), "{at}: not an int"),
            "boolean" => assert!(payload.is_boolean(), "{at}: not a boolean"),
            other => panic!("{at}: unexpected type {other}"),
        }
    }

    #[test]
    fn framed_values_match_their_connect_schema_and_carry_rows() {
        let e = scaled(json!([
            {"manager": "kubelet", "operation": "Update", "subresource": "status",
             "time": "2024-05-01T10:05:00Z"},
            {"manager": "x", "operation": "Apply"}]));
        let framed = decode(&Encoding { schemas: true }.value(&e));
        let (schema, payload) = (&framed["schema"], &framed["payload"]);
        assert_eq!(schema["name"], "prod.apps.Deployment.Envelope");
        check_connect(schema, payload, "payload");
        assert_eq!(payload["op"], "u");
        assert_eq!(payload["after"]["uid"], "u-1");
        assert_eq!(payload["after"]["resourceVersion"], "8");
        assert_eq!(payload["before"]["resourceVersion"], "7");
        let after: Value = serde_json::from_str(payload["after"]["object"].as_str().unwrap())
            .expect("the object as JSON text");
        assert_eq!(after, *obj("8", 3));

        let del = builder().build_unseen_delete(Doc::new(obj("9", 3)), "12", Instant::now());
        let framed = decode(&Encoding { schemas: true }.value(&del));
        check_connect(&framed["schema"], &framed["payload"], "payload");
        assert!(framed["payload"]["after"].is_null());
    }

    #[test]
    fn states_known_only_as_json_encode_to_the_bytes_their_trees_encode_to() {
        let tree = scaled(json!([{"manager": "m", "operation": "Update"}]));
        let json = |v: &Arc<Value>| Bytes::from(serde_json::to_vec(&**v).unwrap());
        // As the informer hands a watched object over: JSON and its name, no tree.
        let mut named = tree.rederive(Op::Update, Some(Doc::from_json(json(&obj("7", 1)))), None);
        named.object = Doc::named(
            json(&obj("8", 3)),
            crate::event::object::Ident::of(&obj("8", 3)),
        );
        for schemas in [false, true] {
            let enc = Encoding { schemas };
            assert_eq!(enc.value(&named), enc.value(&tree), "schemas: {schemas}");
        }
        assert!(!named.object.has_tree() && !named.old.as_ref().unwrap().has_tree());
    }
}
