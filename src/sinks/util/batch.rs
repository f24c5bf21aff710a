//! How a sink wants its events grouped.

use std::time::Duration;

/// How a driver groups events before handing them to its sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    /// At most this many events per batch.
    pub max_events: usize,
    /// A batch's envelopes stay under this many bytes (a single larger event still goes
    /// alone, so it can be delivered or rejected rather than block the queue). `usize::MAX`:
    /// no byte bound, and the queue does not encode envelopes to measure them.
    pub max_bytes: usize,
    /// After the first event, wait at most this long for more; zero = take only what is
    /// already queued.
    pub max_wait: Duration,
}

impl Default for Batching {
    fn default() -> Self {
        Self {
            max_events: 1024,
            max_bytes: 8 * 1024 * 1024,
            max_wait: Duration::ZERO,
        }
    }
}
