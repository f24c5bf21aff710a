//! What a user can set for `type: file`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::sinks::default_queue_capacity;

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
    /// Events the sink's queue holds before coalescing / backpressure.
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
}
