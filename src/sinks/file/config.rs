//! What a user can set for `type: file`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::event::cloudevents::EventFormat;
use crate::event::debezium::DebeziumOptions;
use crate::sinks::{SinkConfigError, check_debezium_options, default_queue_capacity};

/// `type: file`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FileSinkConfig {
    /// Unique sink name.
    pub name: String,
    /// The JSONL file to append to (created if missing; its directory must exist).
    pub path: PathBuf,
    /// fsync after every batch before acknowledging it (durable, slower).
    #[serde(default)]
    pub fsync: bool,
    /// What a line holds: the `envelope` (default), a `debezium` change event or a
    /// `cloudevents` event (structured JSON).
    #[serde(default)]
    pub format: EventFormat,
    /// With `format: debezium`: Kafka Connect framing (`schemas: true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debezium: Option<DebeziumOptions>,
    /// Events the sink's queue holds before coalescing / backpressure.
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
}

impl FileSinkConfig {
    /// Checks what serde cannot.
    ///
    /// # Errors
    /// `debezium` without `format: debezium`.
    pub fn validate(&self) -> Result<(), SinkConfigError> {
        check_debezium_options(self.debezium.as_ref(), self.format == EventFormat::Debezium)
    }
}
