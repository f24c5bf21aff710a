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
    /// File mode, octal, as a string (`"0640"` lets the group read). Default `"0600"`:
    /// envelopes are the cluster's objects. Applied at every start, to a new or an existing
    /// file alike; at most `"0666"` (no execute bits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Events the sink's queue holds before coalescing / backpressure.
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
}

/// The file sink's default mode: owner read/write only.
pub const DEFAULT_MODE: u32 = 0o600;

impl FileSinkConfig {
    /// The file mode to apply.
    ///
    /// # Errors
    /// `mode` is not an octal string up to `0666`.
    pub fn file_mode(&self) -> Result<u32, crate::sinks::SinkConfigError> {
        let Some(text) = &self.mode else {
            return Ok(DEFAULT_MODE);
        };
        u32::from_str_radix(text.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| m & !0o666 == 0)
            .ok_or_else(|| crate::sinks::SinkConfigError {
                path: "mode".into(),
                message: format!(
                    "expected an octal file mode up to \"0666\" (e.g. \"0640\"), got `{text}`"
                ),
            })
    }
}
