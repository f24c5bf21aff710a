//! The driver: one task per sink that drains the sink's bounded queue batch by batch, sends
//! with retries, and acknowledges. Acknowledgement happens here and only here.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error};

use super::batch::Batcher;
use super::dead_letter::DeadLetter;
use super::retry::{Outcome, RetryPolicy, send_with_retry};
use crate::event::Envelope;
use crate::sinks::Sink;

/// Told when an event has been accepted (or dead-lettered) by every sink it was routed to.
pub trait AckObserver: Send + Sync + 'static {
    /// `event` is delivered everywhere it had to go.
    fn delivered(&self, event: &Arc<Envelope>);
}

/// Per-sink counters, read by metrics and readiness.
#[derive(Debug, Default)]
pub struct SinkStats {
    /// Events accepted by the sink.
    pub sent: AtomicU64,
    /// Failed send attempts.
    pub errors: AtomicU64,
    /// Retries after failures.
    pub retries: AtomicU64,
    /// Events rejected for good (dead-lettered).
    pub rejected: AtomicU64,
    /// Rejected events written to the dead-letter file (less than `rejected` when there is
    /// no file or writing it failed).
    pub dead_lettered: AtomicU64,
    /// Batches sent.
    pub batches: AtomicU64,
    /// 1 while the sink is failing and retrying, else 0.
    pub failing: AtomicU64,
}

/// The sending side of a sink's queue plus its driver task.
pub struct SinkHandle {
    /// The sink's configured name.
    pub name: String,
    tx: Option<mpsc::Sender<Arc<Envelope>>>,
    /// Counters.
    pub stats: Arc<SinkStats>,
    task: JoinHandle<()>,
}

impl SinkHandle {
    /// Queues an event, waiting while the queue is full (backpressure).
    /// Returns false when the sink has shut down.
    pub async fn send(&self, event: Arc<Envelope>) -> bool {
        match &self.tx {
            Some(tx) => tx.send(event).await.is_ok(),
            None => false,
        }
    }

    /// Events waiting in the queue.
    pub fn queue_depth(&self) -> usize {
        self.tx
            .as_ref()
            .map(|tx| tx.max_capacity() - tx.capacity())
            .unwrap_or(0)
    }

    /// Closes the queue: the driver delivers what is queued, then ends.
    pub fn close(&mut self) {
        self.tx = None;
    }

    /// Waits for the driver to end (after `close`, or after `abandon` fired).
    pub async fn join(self) {
        let _ = self.task.await;
    }
}

/// Starts the driver for `sink` with a queue of `capacity` events. `abandon` makes it give up
/// retrying (shutdown grace period over); unacknowledged events are then re-emitted by the
/// next run from the delivered state. Rejected events are only logged; see
/// [`spawn_driver_with_dead_letter`].
pub fn spawn_driver(
    name: String,
    sink: Arc<dyn Sink>,
    capacity: usize,
    observer: Arc<dyn AckObserver>,
    abandon: CancellationToken,
) -> SinkHandle {
    let dead_letter = DeadLetter::log_only(&name);
    spawn_driver_with_dead_letter(name, sink, capacity, observer, abandon, dead_letter)
}

/// As [`spawn_driver`], writing rejected events to `dead_letter`.
pub fn spawn_driver_with_dead_letter(
    name: String,
    sink: Arc<dyn Sink>,
    capacity: usize,
    observer: Arc<dyn AckObserver>,
    abandon: CancellationToken,
    dead_letter: DeadLetter,
) -> SinkHandle {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let stats = Arc::new(SinkStats::default());
    let batcher = Batcher::new(rx, sink.batching());
    let task = tokio::spawn(drive(
        name.clone(),
        sink,
        batcher,
        stats.clone(),
        observer,
        abandon,
        dead_letter,
    ));
    SinkHandle {
        name,
        tx: Some(tx),
        stats,
        task,
    }
}

async fn drive(
    name: String,
    sink: Arc<dyn Sink>,
    mut batcher: Batcher,
    stats: Arc<SinkStats>,
    observer: Arc<dyn AckObserver>,
    abandon: CancellationToken,
    dead_letter: DeadLetter,
) {
    let policy = RetryPolicy::default();
    loop {
        let batch = tokio::select! {
            _ = abandon.cancelled() => break,
            b = batcher.next_batch() => b,
        };
        let Some(batch) = batch else { break };
        let outcome = send_with_retry(sink.as_ref(), &name, &batch, policy, &stats, &abandon).await;
        match outcome {
            Outcome::Accepted => {
                stats.sent.fetch_add(batch.len() as u64, Ordering::Relaxed);
            }
            Outcome::Rejected { indices, reason } => {
                let rejected: Vec<&Arc<Envelope>> =
                    indices.iter().filter_map(|&i| batch.get(i)).collect();
                // Dead-lettered, then acknowledged below like accepted events: a poison event
                // must not hold up the queue behind it.
                match dead_letter.write(&rejected, &reason).await {
                    Ok(written) => {
                        stats
                            .dead_lettered
                            .fetch_add(written as u64, Ordering::Relaxed);
                    }
                    Err(e) => error!(sink = %name, error = %e, events = rejected.len(),
                        "dead letters lost to the log only"),
                }
                stats
                    .rejected
                    .fetch_add(indices.len() as u64, Ordering::Relaxed);
                stats
                    .sent
                    .fetch_add((batch.len() - indices.len()) as u64, Ordering::Relaxed);
            }
            Outcome::Abandoned => break,
        }
        stats.batches.fetch_add(1, Ordering::Relaxed);
        for event in &batch {
            if event.ack_one() {
                observer.delivered(event);
            }
        }
    }
    debug!(sink = %name, left = batcher.queued(), "sink driver stopped");
}
