//! Retrying a sink's `send` with exponential backoff and jitter (backon), honoring a delay
//! the receiver asked for.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::driver::SinkStats;
use crate::event::Envelope;
use crate::sinks::{Sink, SinkError};

/// Backoff bounds for retriable sink failures.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// First delay.
    pub min_delay: Duration,
    /// Delays never grow beyond this.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            min_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(30),
        }
    }
}

/// How a batch ended.
#[derive(Debug)]
pub enum Outcome {
    /// Every event accepted.
    Accepted,
    /// These events (indices) were rejected for good; the rest were accepted.
    Rejected {
        /// Indices into the batch.
        indices: Vec<usize>,
        /// The sink's reason.
        reason: String,
    },
    /// Shutdown's grace period ran out while retrying: nothing is acknowledged.
    Abandoned,
}

/// Sends `batch` until it is accepted or rejected, or `abandon` fires. Retriable failures
/// are retried forever: a receiver that is down must not lose events, and the bounded queue
/// in front of this call turns the wait into backpressure.
pub async fn send_with_retry(
    sink: &dyn Sink,
    sink_name: &str,
    batch: &[Arc<Envelope>],
    policy: RetryPolicy,
    stats: &SinkStats,
    abandon: &CancellationToken,
) -> Outcome {
    let mut backoff = ExponentialBuilder::default()
        .with_min_delay(policy.min_delay)
        .with_max_delay(policy.max_delay)
        .with_jitter()
        .without_max_times()
        .build();
    loop {
        let result = tokio::select! {
            _ = abandon.cancelled() => return Outcome::Abandoned,
            r = sink.send(batch) => r,
        };
        if result.is_ok() {
            stats.failing.store(0, Ordering::Relaxed);
        }
        match result {
            Ok(()) => return Outcome::Accepted,
            Err(SinkError::Rejected { message, indices }) => {
                let indices = indices.unwrap_or_else(|| (0..batch.len()).collect());
                return Outcome::Rejected {
                    indices,
                    reason: message,
                };
            }
            Err(SinkError::Retriable {
                message,
                retry_after,
            }) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                stats.retries.fetch_add(1, Ordering::Relaxed);
                stats.failing.store(1, Ordering::Relaxed);
                let computed = backoff.next().unwrap_or(policy.max_delay);
                let delay = retry_after.unwrap_or(computed);
                warn!(sink = sink_name, error = %message, events = batch.len(),
                    retry_in = ?delay, "sink send failed; retrying");
                tokio::select! {
                    _ = abandon.cancelled() => return Outcome::Abandoned,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}
