//! What a user can set for `type: blackhole`.

use serde::{Deserialize, Serialize};

use super::sink::BlackholeSink;

/// `type: blackhole`: no options of its own.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlackholeSinkConfig {}

impl BlackholeSinkConfig {
    /// The sink.
    pub fn compile(&self) -> BlackholeSink {
        BlackholeSink::default()
    }
}
