//! The driver: one task per sink that drains the sink's bounded queue batch by batch, waits
//! until the batch may be sent (its in-flight markers are on disk), sends with retries, and
//! hands every finished slot to its [`AckObserver`] — the acknowledgement tracker. This is the
//! only place slots are finished.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::future::BoxFuture;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error};

use super::dead_letter::DeadLetter;
use super::queue::{SinkQueue, Slot};
use super::retry::{Fate, send_with_retry};
use crate::event::Envelope;
use crate::sinks::Sink;

/// Where a driver hands its finished slots: in the agent, the acknowledgement tracker
/// ([`crate::delivery::Tracker`]); in tests, whatever counts deliveries.
pub trait AckObserver: Send + Sync + 'static {
    /// Resolves once the sink may receive these slots (the tracker: once their in-flight
    /// markers are on disk). Immediate by default.
    fn recorded<'a>(&'a self, slots: &'a [Slot]) -> BoxFuture<'a, ()> {
        let _ = slots;
        Box::pin(async {})
    }

    /// `slot` is done for its sink: delivered, or dead-lettered. Called in queue order. A slot the driver gave up on is never passed here.
    fn delivered(&self, slot: Slot);
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

/// One sink with its queue and counters: what the router pushes into and a driver drains.
#[derive(Clone)]
pub struct SinkLane {
    /// The sink's configured name.
    pub name: String,
    /// The sink.
    pub sink: Arc<dyn Sink>,
    /// Its queue.
    pub queue: Arc<SinkQueue>,
    /// Its counters.
    pub stats: Arc<SinkStats>,
}

impl SinkLane {
    /// A lane for `sink` with a queue of `capacity` entries; nothing drains it yet.
    pub fn new(name: String, sink: Arc<dyn Sink>, capacity: usize) -> Self {
        let queue = SinkQueue::new(capacity).releasing_trees(!sink.reads_trees());
        Self {
            name,
            sink,
            queue: Arc::new(queue),
            stats: Arc::new(SinkStats::default()),
        }
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

    /// Starts the driver: it drains the queue until the queue is closed and empty, or until
    /// `abandon` fires (slots then left unfinished are re-sent by the next run).
    pub fn spawn_driver(
        &self,
        observer: Arc<dyn AckObserver>,
        abandon: CancellationToken,
        dead_letter: DeadLetter,
    ) -> JoinHandle<()> {
        tokio::spawn(drive(self.clone(), observer, abandon, dead_letter))
    }
}

/// A sink's queue plus its driver task, for using one sink on its own (tests, benchmarks).
pub struct SinkHandle {
    /// The sink, its queue and counters.
    lane: SinkLane,
    /// The sink's configured name.
    pub name: String,
    /// Counters.
    pub stats: Arc<SinkStats>,
    /// The driver.
    task: JoinHandle<()>,
}

impl SinkHandle {
    /// Queues an event (waiting for room, or coalescing when full; see [`SinkQueue`]).
    /// Returns false when the sink has shut down.
    pub async fn send(&self, event: Arc<Envelope>) -> bool {
        self.lane.queue.push(event).await.is_ok()
    }

    /// Entries waiting in the queue.
    pub fn queue_depth(&self) -> usize {
        self.lane.queue.len()
    }

    /// Changes merged into earlier queued changes of the same object.
    pub fn coalesced(&self) -> u64 {
        self.lane.queue.coalesced()
    }

    /// What the ops server reads about this sink.
    pub fn monitor(&self) -> SinkMonitor {
        self.lane.monitor()
    }

    /// Closes the queue: the driver delivers what is queued, then ends.
    pub fn close(&self) {
        self.lane.queue.close();
    }

    /// Waits for the driver to end (after `close`, or after `abandon` fired).
    pub async fn join(self) {
        let _ = self.task.await;
    }
}

/// Starts a queue of `capacity` entries and its driver for `sink`. `abandon` makes it give up
/// (shutdown grace period over). Rejected events are only logged; see
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
    let lane = SinkLane::new(name.clone(), sink, capacity);
    let task = lane.spawn_driver(observer, abandon, dead_letter);
    SinkHandle {
        stats: lane.stats.clone(),
        lane,
        name,
        task,
    }
}

async fn drive(
    lane: SinkLane,
    observer: Arc<dyn AckObserver>,
    abandon: CancellationToken,
    dead_letter: DeadLetter,
) {
    let SinkLane {
        name,
        sink,
        queue,
        stats,
    } = lane;
    let batching = sink.batching();
    let reads_trees = sink.reads_trees();
    loop {
        let slots = tokio::select! {
            _ = abandon.cancelled() => break,
            b = queue.pop_batch(batching.max_events, batching.max_bytes, batching.max_wait) => b,
        };
        let Some(mut slots) = slots else { break };
        // What the queue could not let go of at a push (the newest entries, entries queued
        // for other sinks too) goes here, on the driver's task, when nothing else holds it.
        if !reads_trees {
            for slot in &mut slots {
                Envelope::release_trees(&mut slot.deliver);
            }
        }
        // A crash after the sink got a change must find the change marked in flight.
        tokio::select! {
            _ = abandon.cancelled() => break,
            _ = observer.recorded(&slots) => {}
        }
        let batch: Vec<Arc<Envelope>> = slots.iter().map(|s| s.deliver.clone()).collect();
        let report = send_with_retry(sink.as_ref(), &name, &batch, &stats, &abandon).await;
        let (fates, abandoned) = (report.fates, report.abandoned);
        record(&name, &stats, &dead_letter, &slots, &fates).await;
        stats.batches.fetch_add(1, Ordering::Relaxed);
        for (slot, fate) in slots.into_iter().zip(&fates) {
            // A poison event (rejected, dead-lettered) is finished like a delivered one: it
            // must not hold up the queue behind it.
            if *fate != Fate::Unsent {
                observer.delivered(slot);
            }
        }
        if abandoned {
            break;
        }
    }
    if abandon.is_cancelled() {
        sink.abandon();
    }
    debug!(sink = %name, left = queue.len(), "sink driver stopped");
}

/// Counts a finished batch and dead-letters what was rejected.
async fn record(
    name: &str,
    stats: &SinkStats,
    dead_letter: &DeadLetter,
    slots: &[Slot],
    fates: &[Fate],
) {
    let mut rejected: Vec<(&Arc<Envelope>, &str)> = Vec::new();
    for (slot, fate) in slots.iter().zip(fates) {
        let e = &slot.deliver;
        match fate {
            Fate::Delivered => {
                stats.sent.fetch_add(1, Ordering::Relaxed);
                stats.latency.observe(e.observed.elapsed().as_secs_f64());
            }
            Fate::Rejected(reason) => rejected.push((e, reason)),
            Fate::Unsent => {}
        }
    }
    if rejected.is_empty() {
        return;
    }
    stats
        .rejected
        .fetch_add(rejected.len() as u64, Ordering::Relaxed);
    // One reason per dead-letter write: group by reason, keeping queue order within a group.
    let mut groups: Vec<(&str, Vec<&Arc<Envelope>>)> = Vec::new();
    for (e, reason) in rejected {
        match groups.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, es)) => es.push(e),
            None => groups.push((reason, vec![e])),
        }
    }
    for (reason, events) in groups {
        match dead_letter.write(&events, reason).await {
            Ok(written) => {
                stats
                    .dead_lettered
                    .fetch_add(written as u64, Ordering::Relaxed);
            }
            Err(e) => error!(sink = %name, error = %e, events = events.len(),
                "dead letters lost to the log only"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::AtomicUsize;
    use std::time::Instant;

    use async_trait::async_trait;
    use bytes::Bytes;
    use serde_json::json;

    use super::*;
    use crate::event::{Doc, EnvelopeBuilder, Op};
    use crate::sinks::SinkError;

    /// Records, for each event it is sent, whether its object's and previous state's trees
    /// were at hand, and the object's JSON.
    struct Peek {
        reads_trees: bool,
        seen: Mutex<Vec<(bool, bool, Bytes)>>,
    }

    #[async_trait]
    impl Sink for Peek {
        async fn send(&self, batch: &[Arc<Envelope>]) -> Result<(), SinkError> {
            let mut seen = self.seen.lock().unwrap();
            for e in batch {
                let old = e.old.as_ref().expect("an update");
                seen.push((e.object.has_tree(), old.has_tree(), e.object.json().clone()));
            }
            Ok(())
        }

        fn reads_trees(&self) -> bool {
            self.reads_trees
        }
    }

    #[derive(Default)]
    struct Count(AtomicUsize);

    impl AckObserver for Count {
        fn delivered(&self, _: Slot) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// An update whose states are known both as trees and as JSON, as the informer makes them.
    fn update(v: u32) -> Arc<Envelope> {
        let state = |v: u32| {
            let tree =
                json!({"metadata": {"name": "a", "uid": "u", "resourceVersion": v.to_string()}});
            let json = Bytes::from(serde_json::to_vec(&tree).unwrap());
            Doc::with_json(Arc::new(tree), json)
        };
        let b = EnvelopeBuilder::test_configmaps();
        Arc::new(b.build_doc(
            Op::Update,
            state(v),
            Some(state(v - 1)),
            None,
            Instant::now(),
        ))
    }

    /// Sends `events` through a driver of a `Peek` sink; returns what it saw.
    async fn through(reads_trees: bool, events: Vec<Arc<Envelope>>) -> Vec<(bool, bool, Bytes)> {
        let sink = Arc::new(Peek {
            reads_trees,
            seen: Mutex::new(Vec::new()),
        });
        let count = Arc::new(Count::default());
        let n = events.len();
        let h = spawn_driver(
            "peek".into(),
            sink.clone(),
            10,
            count.clone(),
            CancellationToken::new(),
        );
        for e in events {
            assert!(h.send(e).await);
        }
        h.close();
        h.join().await;
        assert_eq!(
            count.0.load(Ordering::Relaxed),
            n,
            "every event acknowledged"
        );
        std::mem::take(&mut *sink.seen.lock().unwrap())
    }

    #[tokio::test]
    async fn a_sink_that_reads_only_json_is_sent_its_events_without_their_trees_and_the_same_json()
    {
        let shared = update(3);
        let seen = through(false, vec![update(2), shared.clone()]).await;
        let expected = |v: u32| {
            Bytes::from(format!(
                r#"{{"metadata":{{"name":"a","uid":"u","resourceVersion":"{v}"}}}}"#
            ))
        };
        assert_eq!(
            seen,
            vec![
                (false, false, expected(2)),
                // Someone else holds this envelope and may read its trees: they stay.
                (true, true, expected(3)),
            ]
        );
        assert_eq!(shared.object.value()["metadata"]["resourceVersion"], "3");
    }

    #[tokio::test]
    async fn a_sink_that_reads_trees_is_sent_them() {
        let seen = through(true, vec![update(2)]).await;
        assert_eq!(seen.len(), 1);
        assert!(seen[0].0 && seen[0].1, "both trees at hand");
    }
}
