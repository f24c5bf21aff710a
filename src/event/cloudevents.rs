//! CloudEvents 1.0 mapping of an envelope, shared by the Kafka and webhook sinks.
//!
//! | attribute         | value                                                                |
//! |-------------------|----------------------------------------------------------------------|
//! | `specversion`     | `1.0`                                                                |
//! | `id`              | the envelope `id` (UUID v7)                                          |
//! | `source`          | `k8s://<cluster>/<collection path>`, e.g. `k8s://prod/apis/apps/v1/namespaces/web/deployments` |
//! | `type`            | `io.k8s.<kind lowercased>.<op>`, e.g. `io.k8s.deployment.update`     |
//! | `subject`         | `<namespace>/<name>`, or `<name>` for cluster-scoped objects         |
//! | `time`            | the envelope `time`                                                  |
//! | `datacontenttype` | `application/json`                                                   |
//! | `partitionkey`    | the object `uid` (CloudEvents partitioning extension)                |
//! | `data`            | the whole envelope                                                   |

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::Envelope;

/// What a sink's payload is (`format:`), shared by the Kafka and webhook sinks.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EventFormat {
    /// The envelope JSON.
    #[default]
    Envelope,
    /// A CloudEvents 1.0 event (see [`CloudEventsMode`]).
    Cloudevents,
}

/// How CloudEvents travel (`cloudEventsMode:`), per the transport's protocol binding.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CloudEventsMode {
    /// The event as JSON (`application/cloudevents+json`; HTTP batches
    /// `application/cloudevents-batch+json`).
    #[default]
    Structured,
    /// Attributes in headers (`ce-*` over HTTP, `ce_*` on Kafka); the body/value is the
    /// envelope as `application/json`.
    Binary,
}

/// CloudEvents spec version.
pub const SPEC_VERSION: &str = "1.0";
/// Content type of `data`.
pub const DATA_CONTENT_TYPE: &str = "application/json";
/// Media type of one event in structured mode (JSON event format, section 3).
pub const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json";
/// Media type of a JSON batch of structured events (JSON event format, section 4).
pub const BATCH_CONTENT_TYPE: &str = "application/cloudevents-batch+json";

/// `io.k8s.<kind lowercased>.<op>`.
pub fn event_type(e: &Envelope) -> String {
    format!("io.k8s.{}.{}", e.kind.to_ascii_lowercase(), e.op.as_str())
}

/// `k8s://<cluster>/api/v1/namespaces/<ns>/<plural>` (the object's collection).
pub fn source(e: &Envelope) -> String {
    let group = e.group();
    let root = if group.is_empty() {
        format!("api/{}", e.api_version)
    } else {
        format!("apis/{}", e.api_version)
    };
    match &e.namespace {
        Some(ns) => format!("k8s://{}/{root}/namespaces/{ns}/{}", e.cluster, e.plural),
        None => format!("k8s://{}/{root}/{}", e.cluster, e.plural),
    }
}

/// The context attributes (name without any transport prefix, value), in spec order;
/// binary modes prefix them (`ce-` for HTTP, `ce_` for Kafka).
pub fn attributes(e: &Envelope) -> Vec<(&'static str, String)> {
    vec![
        ("specversion", SPEC_VERSION.to_string()),
        ("id", e.id.to_string()),
        ("source", source(e)),
        ("type", event_type(e)),
        ("subject", e.display_name()),
        ("time", e.time_rfc3339()),
        ("partitionkey", e.uid.clone()),
    ]
}

/// The structured-mode JSON object: attributes plus `data` (the envelope, embedded as is).
pub fn structured(e: &Envelope) -> Bytes {
    let envelope = e.to_json();
    let mut out = Vec::with_capacity(envelope.len() + 400);
    out.push(b'{');
    for (name, value) in attributes(e) {
        out.extend_from_slice(
            serde_json::to_string(name)
                .expect("strings serialize")
                .as_bytes(),
        );
        out.push(b':');
        out.extend_from_slice(
            serde_json::to_string(&value)
                .expect("strings serialize")
                .as_bytes(),
        );
        out.push(b',');
    }
    out.extend_from_slice(b"\"datacontenttype\":\"application/json\",\"data\":");
    out.extend_from_slice(envelope);
    out.push(b'}');
    Bytes::from(out)
}

/// A JSON batch (`application/cloudevents-batch+json`): an array of structured events.
pub fn structured_batch(events: &[Arc<Envelope>]) -> Bytes {
    let parts: Vec<Bytes> = events.iter().map(|e| structured(e)).collect();
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum::<usize>() + 2);
    out.push(b'[');
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(p);
    }
    out.push(b']');
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use serde_json::{Value, json};

    use super::*;
    use crate::event::{EnvelopeBuilder, Op};

    fn envelope(ns: Option<&str>) -> Envelope {
        let mut meta = json!({"name": "web", "uid": "u-1", "resourceVersion": "5"});
        if let Some(ns) = ns {
            meta["namespace"] = json!(ns);
        }
        EnvelopeBuilder {
            cluster: "prod".into(),
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            plural: "deployments".into(),
            source: "apps/v1/Deployment".into(),
            include_old: false,
        }
        .build(
            Op::Update,
            Arc::new(json!({ "metadata": meta })),
            None,
            None,
            Instant::now(),
        )
    }

    #[test]
    fn structured_event_carries_every_required_attribute_and_the_envelope() {
        let e = envelope(Some("shop"));
        let v: Value = serde_json::from_slice(&structured(&e)).unwrap();
        assert_eq!(v["specversion"], "1.0");
        assert_eq!(v["id"], e.id.to_string());
        assert_eq!(
            v["source"],
            "k8s://prod/apis/apps/v1/namespaces/shop/deployments"
        );
        assert_eq!(v["type"], "io.k8s.deployment.update");
        assert_eq!(v["subject"], "shop/web");
        assert_eq!(v["datacontenttype"], "application/json");
        assert_eq!(v["partitionkey"], "u-1");
        assert_eq!(v["data"]["uid"], "u-1");
        assert!(humantime::parse_rfc3339(v["time"].as_str().unwrap()).is_ok());
    }

    #[test]
    fn a_batch_is_an_array_of_structured_events() {
        let events = vec![Arc::new(envelope(Some("a"))), Arc::new(envelope(None))];
        let v: Value = serde_json::from_slice(&structured_batch(&events)).unwrap();
        let items = v.as_array().unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0]["id"], events[0].id.to_string());
        assert_eq!(items[1]["subject"], "web");
    }

    #[test]
    fn core_cluster_scoped_source_has_no_namespace() {
        let mut e = envelope(None);
        e.api_version = "v1".into();
        e.plural = "nodes".into();
        assert_eq!(source(&e), "k8s://prod/api/v1/nodes");
        assert_eq!(e.display_name(), "web");
    }
}
