//! What a user can set for `type: blackhole`.

use serde::{Deserialize, Serialize};

use super::sink::BlackholeSink;
use crate::sinks::default_queue_capacity;

/// `type: blackhole`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BlackholeSinkConfig {
    /// Unique sink name (used in routes, metrics and logs).
    pub name: String,
    /// Events the sink's queue holds before coalescing / backpressure.
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
}

impl BlackholeSinkConfig {
    /// The running sink.
    pub fn build(&self) -> BlackholeSink {
        BlackholeSink::default()
    }
}
