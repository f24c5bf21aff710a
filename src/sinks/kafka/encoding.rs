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

use std::borrow::Cow;
use std::ffi::{CStr, CString};
use std::time::UNIX_EPOCH;

use bytes::Bytes;

use super::config::CloudEventsMode;
use super::topic::TopicTemplate;
use crate::event::debezium::{self, KeyMode};
use crate::event::{Envelope, Op, cloudevents};

/// `content-type` of a structured CloudEvent.
const CLOUDEVENTS_JSON: &str = "application/cloudevents+json";

/// One Kafka message to produce. Header values borrow from the envelope: librdkafka copies
/// them when the message is enqueued, so none needs an allocation of its own.
pub struct Message<'a> {
    /// Rendered topic.
    pub topic: String,
    /// The record key (see the module doc).
    pub key: Bytes,
    /// Null for tombstones.
    pub payload: Option<Bytes>,
    /// Headers as described in the module doc, in that order.
    pub headers: Headers<'a>,
    /// Milliseconds since the epoch.
    pub timestamp: i64,
}

/// Headers of one message: names as C strings, which is how librdkafka takes them.
pub type Headers<'a> = Vec<(Cow<'static, CStr>, Cow<'a, str>)>;

/// `name: value`, both borrowed.
fn header<'a>(name: &'static CStr, value: &'a str) -> (Cow<'static, CStr>, Cow<'a, str>) {
    (Cow::Borrowed(name), Cow::Borrowed(value))
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
    pub fn encode<'a>(&self, e: &'a Envelope) -> (Message<'a>, Option<Message<'a>>) {
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
            headers: identity_headers(Vec::with_capacity(4), e),
            timestamp,
        });
        let mut headers = Vec::with_capacity(6);
        headers.push(header(c"op", e.op.as_str()));
        let mut headers = identity_headers(headers, e);
        let payload = match self.cloud_events {
            None => {
                headers.push(header(c"content-type", "application/json"));
                match &self.debezium {
                    Some(d) => d.value(e),
                    None => e.to_json().clone(),
                }
            }
            Some(CloudEventsMode::Structured) => {
                headers.push(header(c"content-type", CLOUDEVENTS_JSON));
                cloudevents::structured(e)
            }
            Some(CloudEventsMode::Binary) => {
                for (name, value) in cloudevents::attributes(e) {
                    let name = CString::new(format!("ce_{name}"))
                        .expect("CloudEvents attribute names have no NUL");
                    headers.push((Cow::Owned(name), Cow::Owned(value)));
                }
                // The binding maps `datacontenttype` to `content-type`.
                headers.push(header(c"content-type", cloudevents::DATA_CONTENT_TYPE));
                e.to_json().clone()
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

fn identity_headers<'a>(mut headers: Headers<'a>, e: &'a Envelope) -> Headers<'a> {
    headers.push(header(c"kind", &e.kind));
    headers.push(header(c"apiVersion", &e.api_version));
    if let Some(ns) = &e.namespace {
        headers.push(header(c"namespace", ns));
    }
    headers.push(header(c"name", &e.name));
    headers
}
