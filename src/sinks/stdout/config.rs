//! What a user can set for `type: stdout`.

use serde::{Deserialize, Serialize};

use super::sink::StdoutSink;
use crate::event::debezium::DebeziumOptions;
use crate::sinks::{SinkConfigError, check_debezium_options, default_queue_capacity};

/// `type: stdout`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StdoutSinkConfig {
    /// Unique sink name (used in routes, metrics and logs).
    pub name: String,
    /// `json` (one envelope per line, the default), `text` (for terminals) or `debezium`
    /// (one Debezium change event per line).
    #[serde(default)]
    pub format: StdoutFormat,
    /// With `format: debezium`: Kafka Connect framing (`schemas: true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debezium: Option<DebeziumOptions>,
    /// Events the sink's queue holds before the informers wait.
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
}

/// Output format of the stdout sink.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StdoutFormat {
    /// One JSON envelope per line.
    #[default]
    Json,
    /// One human-readable line per change, with changed paths and old → new values.
    Text,
    /// One Debezium change event per line.
    Debezium,
}

impl StdoutSinkConfig {
    /// Checks what serde cannot.
    ///
    /// # Errors
    /// `debezium` without `format: debezium`.
    pub fn validate(&self) -> Result<(), SinkConfigError> {
        check_debezium_options(
            self.debezium.as_ref(),
            self.format == StdoutFormat::Debezium,
        )
    }

    /// The running sink.
    pub fn build(&self) -> StdoutSink {
        StdoutSink::new(self.format, self.debezium.unwrap_or_default().into())
    }
}
