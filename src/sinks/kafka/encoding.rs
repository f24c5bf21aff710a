//! What goes on the wire for one change: topic, key, value, headers, timestamp.
//!
//! - key: the object's uid (or `namespace/name` with `key: namespacedName`), so one object's
//!   changes share a partition and stay in order; with `format: debezium` a JSON object
//!   (`{"uid": …}` or `{"namespace": …, "name": …}`), framed like the value;
//! - value: the envelope JSON, the CloudEvents structured JSON, or the Debezium change event;
//! - headers: `op`, `kind`, `apiVersion`, `namespace` (absent for cluster-scoped objects),
//!   `name`, `content-type`, and in CloudEvents binary mode the `ce_*` attributes of the
//!   CloudEvents Kafka protocol binding;
//! - timestamp: the envelope `time`.
//!
//! With `tombstones: true` a delete is followed by a tombstone: same key and topic, null
//! value, and only the identity headers (`kind`, `apiVersion`, `namespace`, `name`), no `op`
//! and no `ce_*`: it is not a change event of its own.

use std::time::UNIX_EPOCH;

use bytes::Bytes;
use rdkafka::message::{Header, OwnedHeaders};

use super::config::CloudEventsMode;
use super::topic::TopicTemplate;
use crate::event::debezium::{self, KeyMode};
use crate::event::{Envelope, Op, cloudevents};

/// `content-type` of a structured CloudEvent.
const CLOUDEVENTS_JSON: &str = "application/cloudevents+json";

/// One Kafka message to produce.
pub struct Message {
    /// Rendered topic.
    pub topic: String,
    /// The record key (see the module doc).
    pub key: Bytes,
    /// Null for tombstones.
    pub payload: Option<Bytes>,
    /// Headers as described in the module doc.
    pub headers: OwnedHeaders,
    /// Milliseconds since the epoch.
    pub timestamp: i64,
}

/// Turns envelopes into messages, per the sink's settings.
#[derive(Debug, Clone)]
pub struct Encoder {
    /// Parsed `topic`.
    pub topic: TopicTemplate,
    /// `None`: the value is the envelope (or the Debezium event), no `ce_*` headers.
    pub cloud_events: Option<CloudEventsMode>,
    /// `Some`: the value is a Debezium change event, the key a JSON object.
    pub debezium: Option<debezium::Encoding>,
    /// What the key names.
    pub key: KeyMode,
    /// Follow deletes with a tombstone.
    pub tombstones: bool,
}

impl Encoder {
    /// The message key of `e`.
    pub fn key(&self, e: &Envelope) -> Bytes {
        match (&self.debezium, self.key) {
            (Some(d), mode) => d.key(e, mode),
            (None, KeyMode::Uid) => Bytes::copy_from_slice(e.uid.as_bytes()),
            (None, KeyMode::NamespacedName) => Bytes::from(e.display_name()),
        }
    }

    /// The message for `e`, then its tombstone when one is due; both have the same key.
    pub fn encode(&self, e: &Envelope) -> (Message, Option<Message>) {
        let topic = self.topic.render(e);
        let key = self.key(e);
        let timestamp = e
            .time
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let tombstone = (self.tombstones && e.op == Op::Delete).then(|| Message {
            topic: topic.clone(),
            key: key.clone(),
            payload: None,
            headers: identity_headers(OwnedHeaders::new_with_capacity(4), e),
            timestamp,
        });
        let headers = OwnedHeaders::new_with_capacity(16).insert(Header {
            key: "op",
            value: Some(e.op.as_str()),
        });
        let headers = identity_headers(headers, e);
        let (payload, headers) = match self.cloud_events {
            None => (
                match &self.debezium {
                    Some(d) => d.value(e),
                    None => e.to_json().clone(),
                },
                content_type(headers, "application/json"),
            ),
            Some(CloudEventsMode::Structured) => (
                cloudevents::structured(e),
                content_type(headers, CLOUDEVENTS_JSON),
            ),
            Some(CloudEventsMode::Binary) => {
                let mut headers = headers;
                for (name, value) in cloudevents::attributes(e) {
                    headers = headers.insert(Header {
                        key: &format!("ce_{name}"),
                        value: Some(value.as_str()),
                    });
                }
                // The binding maps `datacontenttype` to `content-type`.
                let headers = content_type(headers, cloudevents::DATA_CONTENT_TYPE);
                (e.to_json().clone(), headers)
            }
        };
        let message = Message {
            topic,
            key,
            payload: Some(payload),
            headers,
            timestamp,
        };
        (message, tombstone)
    }
}

fn identity_headers(headers: OwnedHeaders, e: &Envelope) -> OwnedHeaders {
    let mut headers = headers
        .insert(Header {
            key: "kind",
            value: Some(&*e.kind),
        })
        .insert(Header {
            key: "apiVersion",
            value: Some(&*e.api_version),
        });
    if let Some(ns) = &e.namespace {
        headers = headers.insert(Header {
            key: "namespace",
            value: Some(ns.as_str()),
        });
    }
    headers.insert(Header {
        key: "name",
        value: Some(e.name.as_str()),
    })
}

fn content_type(headers: OwnedHeaders, value: &str) -> OwnedHeaders {
    headers.insert(Header {
        key: "content-type",
        value: Some(value),
    })
}
