//! The driver: one task per sink that drains the sink's bounded queue batch by batch, sends
//! with retries, and acknowledges. Acknowledgement happens here and only here.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error};

use super::dead_letter::DeadLetter;
use super::queue::SinkQueue;
use super::retry::{Outcome, RetryPolicy, send_with_retry};
use crate::event::Envelope;
use crate::sinks::Sink;

/// Told when an event has been accepted (or dead-lettered) by every sink it was routed to.
pub trait AckObserver: Send + Sync + 'static {
    /// `event` is delivered everywhere it had to go.
    fn delivered(&self, event: &Arc<Envelope>);
}

/// Per-sink counters, read by metrics and readiness.
#[derive(Debug)]
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
    /// Seconds from the change's arrival from the API server to the sink's acknowledgement.
    pub latency: Histogram,
}

impl Default for SinkStats {
    fn default() -> Self {
        Self {
            sent: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            failing: AtomicU64::new(0),
            // 10 µs … ~21 s: sub-millisecond deliveries need buckets below 100 µs.
            latency: Histogram::new(exponential_buckets(0.00001, 2.0, 22)),
        }
    }
}

/// A read-only view of one sink for metrics and health.
#[derive(Clone)]
pub struct SinkMonitor {
    /// The sink's configured name.
    pub name: String,
    /// Its queue.
    pub queue: Arc<SinkQueue>,
    /// Its counters.
    pub stats: Arc<SinkStats>,
    /// The sink, for health checks.
    pub sink: Arc<dyn Sink>,
}

/// A sink's queue plus its driver task.
pub struct SinkHandle {
    /// The sink's configured name.
    pub name: String,
    sink: Arc<dyn Sink>,
    queue: Arc<SinkQueue>,
    /// Counters.
    pub stats: Arc<SinkStats>,
    task: JoinHandle<()>,
}

impl SinkHandle {
    /// Queues an event (waiting for room, or coalescing when full; see [`SinkQueue`]).
    /// Returns false when the sink has shut down.
    pub async fn send(&self, event: Arc<Envelope>) -> bool {
        self.queue.push(event).await.is_ok()
    }

    /// Queues `deliver` for this sink, acknowledging the original change `ack` when done.
    pub async fn send_as(&self, deliver: Arc<Envelope>, ack: Arc<Envelope>) -> bool {
        self.queue.push_as(deliver, ack).await.is_ok()
    }

    /// Entries waiting in the queue.
    pub fn queue_depth(&self) -> usize {
        self.queue.len()
    }

    /// Changes merged into earlier queued changes of the same object.
    pub fn coalesced(&self) -> u64 {
        self.queue.coalesced()
    }

    /// What the ops server reads about this sink.
    pub fn monitor(&self) -> SinkMonitor {
        SinkMonitor {
            name: self.name.clone(),
            queue: self.queue.clone(),
            stats: self.stats.clone(),
            sink: self.sink.clone(),
        }
    }

    /// Closes the queue: the driver delivers what is queued, then ends.
    pub fn close(&self) {
        self.queue.close();
    }

    /// Waits for the driver to end (after `close`, or after `abandon` fired).
    pub async fn join(self) {
        let _ = self.task.await;
    }
}

/// Starts the driver for `sink` with a queue of `capacity` entries. `abandon` makes it give up
/// (shutdown grace period over); unacknowledged events are then re-emitted by the next run
/// from the delivered state. Rejected events are only logged; see
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
    let queue = Arc::new(SinkQueue::new(capacity));
    let stats = Arc::new(SinkStats::default());
    let task = tokio::spawn(drive(
        name.clone(),
        sink.clone(),
        queue.clone(),
        stats.clone(),
        observer,
        abandon,
        dead_letter,
    ));
    SinkHandle {
        name,
        sink,
        queue,
        stats,
        task,
    }
}

async fn drive(
    name: String,
    sink: Arc<dyn Sink>,
    queue: Arc<SinkQueue>,
    stats: Arc<SinkStats>,
    observer: Arc<dyn AckObserver>,
    abandon: CancellationToken,
    dead_letter: DeadLetter,
) {
    let policy = RetryPolicy::default();
    let batching = sink.batching();
    loop {
        let slots = tokio::select! {
            _ = abandon.cancelled() => break,
            b = queue.pop_batch(batching.max_events, batching.max_bytes, batching.max_wait) => b,
        };
        let Some(slots) = slots else { break };
        let batch: Vec<Arc<Envelope>> = slots.iter().filter_map(|s| s.deliver.clone()).collect();
        if !batch.is_empty() {
            let outcome =
                send_with_retry(sink.as_ref(), &name, &batch, policy, &stats, &abandon).await;
            match outcome {
                Outcome::Accepted => {
                    stats.sent.fetch_add(batch.len() as u64, Ordering::Relaxed);
                    for e in &batch {
                        stats.latency.observe(e.observed.elapsed().as_secs_f64());
                    }
                }
                Outcome::Rejected { indices, reason } => {
                    let rejected: Vec<&Arc<Envelope>> =
                        indices.iter().filter_map(|&i| batch.get(i)).collect();
                    // Dead-lettered, then acknowledged below like accepted events: a poison
                    // event must not hold up the queue behind it.
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
        }
        for slot in &slots {
            if slot.ack.ack_one() {
                observer.delivered(&slot.ack);
            }
        }
    }
    debug!(sink = %name, left = queue.len(), "sink driver stopped");
}
