//! What a user can set for `type: stdout`.

use serde::{Deserialize, Serialize};

use super::sink::{StdoutFormat, StdoutSink};
use crate::sinks::{Common, Payload};

/// `type: stdout`: no options of its own; `format: envelope` (one JSON envelope per line,
/// the default; `json` is an alias), `format: text` (a line per change for terminals) or
/// `format: debezium` (one Debezium change event per line) is one of the shared options.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdoutSinkConfig {}

impl StdoutSinkConfig {
    /// The sink.
    pub fn compile(&self, common: &Common) -> StdoutSink {
        StdoutSink::new(match common.payload {
            Payload::Text => StdoutFormat::Text,
            Payload::Debezium(d) => StdoutFormat::Debezium(d),
            Payload::Envelope | Payload::Cloudevents(_) => StdoutFormat::Json,
        })
    }
}
