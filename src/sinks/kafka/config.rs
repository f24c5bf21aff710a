//! What a user can set for `type: kafka`.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

pub use crate::event::cloudevents::{CloudEventsMode, EventFormat as KafkaFormat};
pub use crate::event::debezium::{DebeziumOptions, KeyMode};

use super::client::{self, ClientError};
use super::sink::KafkaSink;
use super::topic::TopicTemplate;
use crate::sinks::util::DeadLetterConfig;
use crate::sinks::{SinkConfigError, SinkContext, default_queue_capacity};

/// `type: kafka`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KafkaSinkConfig {
    /// Unique sink name (used in routes, metrics and logs).
    pub name: String,
    /// Bootstrap brokers, `host:port`: a list, or one comma-separated string.
    #[serde(deserialize_with = "brokers_list")]
    pub brokers: Vec<String>,
    /// Topic name template; `{kind}`, `{namespace}`, `{group}` and `{cluster}` are replaced
    /// by normalized values (see `topic.rs`), e.g. `k8s.{kind}`.
    pub topic: String,
    /// What a message's value holds: the `envelope` JSON (default), a `cloudevents` event or
    /// a `debezium` change event.
    #[serde(default)]
    pub format: KafkaFormat,
    /// With `format: debezium`: Kafka Connect framing (`schemas: true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debezium: Option<DebeziumOptions>,
    /// What the message key names: the object's `uid` (default) or `namespacedName`. The key
    /// is the bare value for `envelope` and `cloudevents` (`<uid>`, `<namespace>/<name>`) and
    /// a JSON object for `debezium` (`{"uid": …}`, `{"namespace": …, "name": …}`).
    #[serde(default)]
    pub key: KeyMode,
    /// With `format: cloudevents`: `structured` (default; the value is the CloudEvents JSON
    /// with the envelope as `data`) or `binary` (attributes in `ce_*` headers, the value is
    /// the envelope).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_events_mode: Option<CloudEventsMode>,
    /// After each delete, also send a null-value message with the same key, so log-compacted
    /// topics drop deleted objects (Debezium convention).
    #[serde(default)]
    pub tombstones: bool,
    /// librdkafka properties passed through verbatim (`security.protocol`, `sasl.*`,
    /// `ssl.*`, `compression.type`, `linger.ms`, ...); they override the sink's defaults.
    #[serde(default)]
    pub properties: BTreeMap<String, PropertyValue>,
    /// Events the sink's queue holds before the informers wait.
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
    /// Where events Kafka rejects for good (e.g. larger than `message.max.bytes`) are kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<DeadLetterConfig>,
}

/// A librdkafka property value. YAML writes `linger.ms: 5` as a number and
/// `enable.idempotence: false` as a boolean; librdkafka wants strings, so any scalar is kept
/// as its string form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PropertyValue(pub String);

impl Serialize for PropertyValue {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for PropertyValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Scalar;
        impl Visitor<'_> for Scalar {
            type Value = PropertyValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PropertyValue, E> {
                Ok(PropertyValue(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<PropertyValue, E> {
                Ok(PropertyValue(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PropertyValue, E> {
                Ok(PropertyValue(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PropertyValue, E> {
                Ok(PropertyValue(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<PropertyValue, E> {
                Ok(PropertyValue(v.to_string()))
            }
        }
        d.deserialize_any(Scalar)
    }
}

/// A list of brokers, or one comma-separated string (handy in `LOOKOUT_*` environment
/// overrides).
fn brokers_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    let list = match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => s.split(',').map(str::to_string).collect(),
        OneOrMany::Many(v) => v,
    };
    Ok(list
        .into_iter()
        .map(|b| b.trim().to_string())
        .filter(|b| !b.is_empty())
        .collect())
}

impl KafkaSinkConfig {
    /// Checks what serde cannot: the topic template, conflicting settings, and the
    /// librdkafka properties (librdkafka itself judges them, so its message is shown).
    ///
    /// # Errors
    /// A [`SinkConfigError`] whose path is relative to the sink entry.
    pub fn validate(&self) -> Result<(), SinkConfigError> {
        let err = |path: &str, message: String| SinkConfigError {
            path: path.to_string(),
            message,
        };
        if self.brokers.is_empty() {
            return Err(err(
                "brokers",
                "at least one broker (`host:port`) is required".into(),
            ));
        }
        TopicTemplate::check(&self.topic).map_err(|e| err("topic", e.to_string()))?;
        if self.cloud_events_mode.is_some() && self.format != KafkaFormat::Cloudevents {
            return Err(err(
                "cloudEventsMode",
                "only applies to `format: cloudevents`".into(),
            ));
        }
        crate::sinks::check_debezium_options(
            self.debezium.as_ref(),
            self.format == KafkaFormat::Debezium,
        )?;
        if self.queue_capacity == 0 {
            return Err(err("queueCapacity", "must be at least 1".into()));
        }
        client::check(self).map_err(|e| match e {
            ClientError::Reserved { ref key, .. } => {
                err(&format!("properties.{key}"), e.to_string())
            }
            e => err("properties", e.to_string()),
        })
    }

    /// The CloudEvents mode in effect (`None` for `format: envelope`).
    pub fn cloud_events(&self) -> Option<CloudEventsMode> {
        match self.format {
            KafkaFormat::Envelope | KafkaFormat::Debezium => None,
            KafkaFormat::Cloudevents => Some(self.cloud_events_mode.unwrap_or_default()),
        }
    }

    /// The running sink. Brokers need not be reachable: the producer keeps reconnecting
    /// and the health check reports the outage.
    ///
    /// # Errors
    /// The topic template or the librdkafka settings are unusable.
    pub fn build(&self, ctx: &SinkContext) -> Result<KafkaSink, String> {
        let topic =
            TopicTemplate::parse(&self.topic, &ctx.cluster).map_err(|e| format!("topic: {e}"))?;
        KafkaSink::new(self, topic).map_err(|e| e.to_string())
    }
}
