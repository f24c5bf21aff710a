//! The options every sink has, declared once: `name`, `queueCapacity`, `format` (with
//! `cloudEventsMode`) and `deadLetter`. Each sink's folder declares only its own options; a
//! `sinks[]` entry is split between the two (see `config::decode`).

use serde::{Deserialize, Serialize};

use crate::config::{Error, ErrorKind, Errors};
pub use crate::event::cloudevents::CloudEventsMode;
pub use crate::event::debezium::DebeziumOptions;
use crate::sinks::util::DeadLetterConfig;

/// The keys every `sinks[]` entry may have besides `type` and its type's own keys.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SinkOptions {
    /// Unique sink name (used in routes, metrics, logs and the dead-letter file name).
    pub name: String,
    /// Events the sink's queue holds before the informers wait.
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
    /// What each event becomes: `envelope` (the JSON envelope; `json` is an alias),
    /// `cloudevents` (a CloudEvents 1.0 event) or `text` (a line for people). Which apply,
    /// and the default, depend on the sink type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<Format>,
    /// With `format: cloudevents`: `structured` (default; the event is the payload) or
    /// `binary` (attributes in transport headers, the envelope is the payload).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_events_mode: Option<CloudEventsMode>,
    /// With `format: debezium`: `schemas: true` frames each event (and Kafka key) for Kafka
    /// Connect's `JsonConverter` with `schemas.enable=true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debezium: Option<DebeziumOptions>,
    /// Where events the receiver rejects for good are kept (sinks that can reject events:
    /// webhook, kafka); default `<state.dir>/deadletter/<name>.jsonl`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<DeadLetterConfig>,
}

/// `format:` of a sink.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// The envelope JSON.
    #[serde(alias = "json")]
    Envelope,
    /// A CloudEvents 1.0 event (see [`CloudEventsMode`]).
    Cloudevents,
    /// One human-readable line per change.
    Text,
    /// A Debezium change event (see [`crate::event::debezium`]).
    Debezium,
}

impl Format {
    fn as_str(self) -> &'static str {
        match self {
            Format::Envelope => "envelope",
            Format::Cloudevents => "cloudevents",
            Format::Text => "text",
            Format::Debezium => "debezium",
        }
    }
}

/// What a sink type makes of the shared options.
#[derive(Debug, Clone, Copy)]
pub struct Accepts {
    /// The formats it can write; the first is the default.
    pub formats: &'static [Format],
    /// Whether it can reject an event for good (and so has a dead-letter file).
    pub rejects: bool,
}

/// What each event becomes, after defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Payload {
    /// The envelope JSON.
    Envelope,
    /// A CloudEvents event, in this mode.
    Cloudevents(CloudEventsMode),
    /// A line for people.
    Text,
    /// A Debezium change event, framed for Kafka Connect or not.
    Debezium(crate::event::debezium::Encoding),
}

impl Payload {
    /// One event as one JSON document (a JSONL line, a webhook item): the envelope, the
    /// CloudEvent in structured mode, or the Debezium change event. `Text` gives the
    /// envelope; line sinks render text themselves.
    pub fn encode(self, e: &crate::event::Envelope) -> bytes::Bytes {
        match self {
            Payload::Envelope | Payload::Text => e.to_json().clone(),
            Payload::Cloudevents(_) => crate::event::cloudevents::structured(e),
            Payload::Debezium(d) => d.value(e),
        }
    }

    /// Whether encoding reads the object trees, not only the envelope's JSON (see
    /// [`crate::sinks::Sink::reads_trees`]).
    pub fn reads_trees(self) -> bool {
        matches!(self, Payload::Text | Payload::Debezium(_))
    }

    /// The CloudEvents mode, `None` for other payloads.
    pub fn cloud_events(self) -> Option<CloudEventsMode> {
        match self {
            Payload::Cloudevents(mode) => Some(mode),
            _ => None,
        }
    }
}

/// A sink's shared options, checked against what its type accepts.
#[derive(Debug, Clone)]
pub struct Common {
    /// The sink's unique name.
    pub name: String,
    /// Capacity of its queue (events).
    pub queue_capacity: usize,
    /// What each event becomes.
    pub payload: Payload,
    /// `deadLetter` as configured (only for sinks that can reject).
    pub dead_letter: Option<DeadLetterConfig>,
}

impl Common {
    /// Shared options for code that builds a sink directly (tests, benchmarks): envelope
    /// payloads, the default queue capacity, no dead-letter file.
    pub fn named(name: &str) -> Self {
        Self {
            name: name.to_string(),
            queue_capacity: default_queue_capacity(),
            payload: Payload::Envelope,
            dead_letter: None,
        }
    }
}

impl SinkOptions {
    /// Checks the options against what the sink type accepts; paths are relative to the
    /// sink entry.
    ///
    /// # Errors
    /// Every problem found.
    pub fn check(&self, type_name: &str, accepts: Accepts) -> Result<Common, Errors> {
        let mut errors = Errors::default();
        if self.name.trim().is_empty() {
            errors.push(Error::new("name", ErrorKind::Empty));
        }
        if self.queue_capacity == 0 {
            errors.push(Error::new(
                "queueCapacity",
                ErrorKind::Invalid("must be at least 1".into()),
            ));
        }
        let format = self.format.unwrap_or(accepts.formats[0]);
        if !accepts.formats.contains(&format) {
            let choices: Vec<&str> = accepts.formats.iter().map(|f| f.as_str()).collect();
            errors.push(Error::new(
                "format",
                ErrorKind::Conflict(format!(
                    "a {type_name} sink writes {}; `{}` does not apply",
                    choices.join(" or "),
                    format.as_str()
                )),
            ));
        }
        if self.cloud_events_mode.is_some() && format != Format::Cloudevents {
            errors.push(Error::new(
                "cloudEventsMode",
                ErrorKind::Conflict("only applies with `format: cloudevents`".into()),
            ));
        }
        if self.debezium.is_some() && format != Format::Debezium {
            errors.push(Error::new(
                "debezium",
                ErrorKind::Conflict("only applies with `format: debezium`".into()),
            ));
        }
        if self.dead_letter.is_some() && !accepts.rejects {
            errors.push(Error::new(
                "deadLetter",
                ErrorKind::Conflict(format!(
                    "a {type_name} sink never rejects an event; remove `deadLetter`"
                )),
            ));
        }
        let payload = match format {
            Format::Envelope => Payload::Envelope,
            Format::Cloudevents => Payload::Cloudevents(self.cloud_events_mode.unwrap_or_default()),
            Format::Text => Payload::Text,
            Format::Debezium => Payload::Debezium(self.debezium.unwrap_or_default().into()),
        };
        errors.finish(|| Common {
            name: self.name.clone(),
            queue_capacity: self.queue_capacity,
            payload,
            dead_letter: self.dead_letter.clone(),
        })
    }
}

/// Default capacity of a sink queue: enough to ride out a short hiccup without blocking the
/// informers, small enough to bound memory (events share their objects with the cache).
pub fn default_queue_capacity() -> usize {
    10_000
}

#[cfg(test)]
mod tests {
    use super::*;

    const WEB: Accepts = Accepts {
        formats: &[Format::Envelope, Format::Cloudevents],
        rejects: true,
    };
    const TERMINAL: Accepts = Accepts {
        formats: &[Format::Envelope, Format::Text],
        rejects: false,
    };

    fn options(yaml: &str) -> SinkOptions {
        serde_yaml_ng::from_str(&format!("name: s\n{yaml}")).unwrap()
    }

    fn paths(e: Errors) -> Vec<String> {
        e.0.into_iter().map(|e| e.path).collect()
    }

    #[test]
    fn defaults_are_the_first_format_of_the_type() {
        let c = options("").check("webhook", WEB).unwrap();
        assert_eq!(c.payload, Payload::Envelope);
        assert_eq!(c.queue_capacity, 10_000);
        let c = options("format: json").check("stdout", TERMINAL).unwrap();
        assert_eq!(c.payload, Payload::Envelope);
        let c = options("format: cloudevents").check("kafka", WEB).unwrap();
        assert_eq!(c.payload, Payload::Cloudevents(CloudEventsMode::Structured));
    }

    #[test]
    fn options_that_do_not_apply_to_the_type_are_refused_all_at_once() {
        let e = options("format: text\ncloudEventsMode: binary\nqueueCapacity: 0")
            .check("webhook", WEB)
            .unwrap_err();
        assert_eq!(paths(e), ["queueCapacity", "format", "cloudEventsMode"]);
        let e = options("deadLetter: {path: /tmp/x}")
            .check("stdout", TERMINAL)
            .unwrap_err();
        assert_eq!(paths(e), ["deadLetter"]);
        let e = options("format: cloudevents")
            .check("stdout", TERMINAL)
            .unwrap_err();
        assert!(e.to_string().contains("envelope or text"), "{e}");
    }

    #[test]
    fn debezium_options_go_with_the_debezium_format_only() {
        const LAKE: Accepts = Accepts {
            formats: &[Format::Envelope, Format::Debezium],
            rejects: true,
        };
        let c = options("format: debezium\ndebezium: {schemas: true}")
            .check("kafka", LAKE)
            .unwrap();
        assert_eq!(
            c.payload,
            Payload::Debezium(crate::event::debezium::Encoding { schemas: true })
        );
        let e = options("debezium: {schemas: true}")
            .check("kafka", LAKE)
            .unwrap_err();
        assert_eq!(paths(e), ["debezium"]);
    }
}
