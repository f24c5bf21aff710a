//! What a user can set for `type: stdout`.

use serde::{Deserialize, Serialize};

use super::sink::StdoutSink;
use crate::sinks::default_queue_capacity;

/// `type: stdout`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StdoutSinkConfig {
    /// Unique sink name (used in routes, metrics and logs).
    pub name: String,
    /// `json` (one envelope per line, the default) or `text` (for terminals).
    #[serde(default)]
    pub format: StdoutFormat,
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
}

impl StdoutSinkConfig {
    /// The running sink.
    pub fn build(&self) -> StdoutSink {
        StdoutSink::new(self.format)
    }
}
