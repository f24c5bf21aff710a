//! What a user can set for `type: kafka`.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

pub use crate::event::cloudevents::CloudEventsMode;
pub use crate::event::debezium::KeyMode;

use super::client::ClientError;
use super::sink::KafkaSink;
use super::topic::TopicTemplate;
use crate::config::{Error, ErrorKind, Errors};
use crate::sinks::{Common, SinkContext};

/// `type: kafka`. A message's value is the envelope JSON, a CloudEvents event or a Debezium
/// change event (`format`, `cloudEventsMode`, `debezium`: shared sink options; binary mode
/// puts the attributes in `ce_*` headers).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KafkaSinkConfig {
    /// Bootstrap brokers, `host:port`: a list, or one comma-separated string.
    #[serde(deserialize_with = "brokers_list")]
    pub brokers: Vec<String>,
    /// Topic name template; `{kind}`, `{namespace}`, `{group}` and `{cluster}` are replaced
    /// by normalized values (see `topic.rs`), e.g. `k8s.{kind}`.
    pub topic: String,
    /// After each delete, also send a null-value message with the same key, so log-compacted
    /// topics drop deleted objects (Debezium convention).
    #[serde(default)]
    pub tombstones: bool,
    /// What the message key names: the object's `uid` (default) or `namespacedName`. The key
    /// is the bare value for `envelope` and `cloudevents` (`<uid>`, `<namespace>/<name>`) and
    /// a JSON object for `debezium` (`{"uid": …}`, `{"namespace": …, "name": …}`).
    #[serde(default)]
    pub key: KeyMode,
    /// librdkafka properties passed through verbatim (`security.protocol`, `sasl.*`,
    /// `ssl.*`, `compression.type`, `linger.ms`, ...); they override the sink's defaults.
    #[serde(default)]
    pub properties: BTreeMap<String, PropertyValue>,
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
    /// Checks the brokers and the topic template and creates the producer (librdkafka judges
    /// the properties, so its message is shown). Brokers need not be reachable: the producer
    /// keeps reconnecting and the health check reports the outage.
    ///
    /// # Errors
    /// Every problem found, with key paths below the sink entry.
    pub fn compile(&self, common: &Common, ctx: &SinkContext) -> Result<KafkaSink, Errors> {
        let mut errors = Errors::default();
        if self.brokers.is_empty() {
            errors.push(Error::new(
                "brokers",
                ErrorKind::NoneGiven("broker (`host:port`)"),
            ));
        }
        let topic = errors.take(
            TopicTemplate::parse(&self.topic, &ctx.cluster)
                .map_err(|e| Error::new("topic", ErrorKind::Invalid(e.to_string()))),
        );
        let (Some(topic), true) = (topic, errors.0.is_empty()) else {
            return Err(errors);
        };
        KafkaSink::new(self, common, topic).map_err(|e| {
            Errors::from(match e {
                ClientError::Reserved { ref key, .. } => Error::new(
                    format!("properties.{key}"),
                    ErrorKind::Conflict(e.to_string()),
                ),
                ClientError::Librdkafka(e) => {
                    Error::new("properties", ErrorKind::Client(e.to_string()))
                }
            })
        })
    }
}
