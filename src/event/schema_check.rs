//! Test helper: validates what the sinks emit against the published JSON Schemas in
//! `schema/`. Used by the unit tests here and, through `#[path]`, by every integration test's
//! consumers (`tests/common`), so an undocumented or malformed field fails a test.
#![allow(dead_code)]

use std::sync::OnceLock;

use serde_json::Value;

/// `schema/envelope.schema.json`.
pub const ENVELOPE: &str = include_str!("../../schema/envelope.schema.json");
/// `schema/debezium.schema.json`.
pub const DEBEZIUM: &str = include_str!("../../schema/debezium.schema.json");

fn compile(text: &str, root_ref: Option<&str>) -> jsonschema::Validator {
    let mut schema: Value = serde_json::from_str(text).expect("schema file is JSON");
    if let Some(r) = root_ref {
        let map = schema.as_object_mut().expect("schema is an object");
        map.remove("oneOf");
        map.insert("$ref".into(), Value::String(r.into()));
    }
    jsonschema::draft202012::new(&schema).expect("schema compiles")
}

fn check(validator: &jsonschema::Validator, what: &str, v: &Value) {
    let errors: Vec<String> = validator
        .iter_errors(v)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{what} does not validate against its schema:\n- {}\n{}",
        errors.join("\n- "),
        serde_json::to_string_pretty(v).unwrap_or_default()
    );
}

/// Panics unless `v` is a valid lookout envelope.
pub fn envelope(v: &Value) {
    static V: OnceLock<jsonschema::Validator> = OnceLock::new();
    check(V.get_or_init(|| compile(ENVELOPE, None)), "envelope", v);
}

/// Panics unless `v` is a valid Debezium change event (plain or Connect-framed).
pub fn debezium(v: &Value) {
    static V: OnceLock<jsonschema::Validator> = OnceLock::new();
    check(
        V.get_or_init(|| compile(DEBEZIUM, None)),
        "Debezium change event",
        v,
    );
}

/// Panics unless `v` is a valid Kafka key of `format: debezium` (plain or framed).
pub fn debezium_key(v: &Value) {
    static PLAIN: OnceLock<jsonschema::Validator> = OnceLock::new();
    static FRAMED: OnceLock<jsonschema::Validator> = OnceLock::new();
    if v.get("payload").is_some() {
        let framed = FRAMED.get_or_init(|| compile(DEBEZIUM, Some("#/$defs/framedKey")));
        check(framed, "framed Debezium key", v);
    } else {
        let plain = PLAIN.get_or_init(|| compile(DEBEZIUM, Some("#/$defs/key")));
        check(plain, "Debezium key", v);
    }
}

/// Validates whatever a sink emitted, by its shape: a CloudEvent (its `data` is an
/// envelope), a Debezium change event (`source` + one-letter `op`, or Connect framing), or
/// an envelope.
pub fn any(v: &Value) {
    if v.get("specversion").is_some() {
        envelope(&v["data"]);
    } else if is_debezium(v) {
        debezium(v);
    } else {
        envelope(v);
    }
}

/// True for Debezium-shaped values.
pub fn is_debezium(v: &Value) -> bool {
    (v.get("schema").is_some() && v.get("payload").is_some())
        || (v.get("source").is_some_and(Value::is_object)
            && v["op"].as_str().is_some_and(|op| op.len() == 1))
}
