//! Grouping queued events into batches.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::event::Envelope;

/// How a driver groups events before handing them to its sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    /// At most this many events per batch.
    pub max_events: usize,
    /// A batch's envelopes stay under this many bytes (a single larger event still goes
    /// alone, so it can be delivered or rejected rather than block the queue).
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

/// Reads a sink's queue batch by batch.
pub struct Batcher {
    rx: mpsc::Receiver<Arc<Envelope>>,
    batching: Batching,
    /// An event taken from the queue that did not fit the previous batch.
    carry: Option<Arc<Envelope>>,
}

impl Batcher {
    /// Batches from `rx` by `batching`.
    pub fn new(rx: mpsc::Receiver<Arc<Envelope>>, batching: Batching) -> Self {
        Self {
            rx,
            batching,
            carry: None,
        }
    }

    /// Events waiting (for the queue-depth metric).
    pub fn queued(&self) -> usize {
        self.rx.len() + usize::from(self.carry.is_some())
    }

    /// The next batch, or `None` when the queue is closed and drained.
    pub async fn next_batch(&mut self) -> Option<Vec<Arc<Envelope>>> {
        let first = match self.carry.take() {
            Some(e) => e,
            None => self.rx.recv().await?,
        };
        let max_events = self.batching.max_events.max(1);
        let mut bytes = first.to_json().len();
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + self.batching.max_wait;
        while batch.len() < max_events {
            let next = match self.rx.try_recv() {
                Ok(e) => e,
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    if self.batching.max_wait.is_zero() {
                        break;
                    }
                    match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                        Ok(Some(e)) => e,
                        Ok(None) | Err(_) => break,
                    }
                }
            };
            let size = next.to_json().len();
            if bytes + size > self.batching.max_bytes {
                self.carry = Some(next);
                break;
            }
            bytes += size;
            batch.push(next);
        }
        Some(batch)
    }
}
