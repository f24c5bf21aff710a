//! Produces batches to Kafka and reports success only on delivery reports.
//!
//! A batch is encoded and enqueued on the sink's own task, 256 events between yields: a few
//! microseconds an event, so a chunk holds a runtime worker about as long as a burst of watch
//! events does. It used to run on a blocking thread; on the two-core benchmark host that
//! thread, woken for every batch beside the runtime's two, librdkafka's and the broker's, cost
//! about as much as the encoding it moved (see BENCHMARKS.md, "Reading the figures"). Only
//! this task enqueues the batch: once it is dropped (the driver gave up), nothing more of it
//! is produced, and the sink's purge catches what librdkafka holds.
//!
//! Delivery reports arrive on librdkafka's polling thread through the producer context
//! ([`Deliveries`]): each one settles its event's fate in the batch it belongs to, and only
//! the last report of a batch wakes the task that sent it, rather than one wake-up per
//! message as a future per message would.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use rdkafka::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryResult, Producer, ProducerContext, PurgeConfig, ThreadedProducer};
use tokio::sync::Notify;
use tracing::{error, info, warn};

use super::client::{ClientError, KafkaContext, client_config};
use super::config::KafkaSinkConfig;
use super::encoding::{Encoder, Message};
use super::native::{Args, Topics};
use super::topic::TopicTemplate;
use crate::event::Envelope;
use crate::sinks::{Batching, Common, Payload, Sink, SinkError};

/// How long a health check waits for broker metadata.
const HEALTHCHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// Events per batch: librdkafka batches per partition on its own, so large batches only
/// mean more messages in flight at once.
const MAX_BATCH_EVENTS: usize = 10_000;

/// How long the sending task waits for room when librdkafka's queue is full.
const QUEUE_FULL_PAUSE: Duration = Duration::from_millis(1);

/// Attempts in a row whose messages all timed out although the brokers answered, before
/// the producer is replaced.
const STALLED_ATTEMPTS: u32 = 2;

pub(super) type KafkaProducer = ThreadedProducer<Deliveries>;

/// The Kafka sink. Many messages are in flight at once: a batch is enqueued whole, then the
/// sink waits until librdkafka has reported on every message of it.
pub struct KafkaSink {
    /// The sink's name, for logs.
    name: Arc<str>,
    /// Bootstrap brokers, for logs.
    brokers: String,
    /// Topic, value and headers of each message; shared with the producing thread.
    encoder: Arc<Encoder>,
    /// Kept to recreate the producer after a fatal error.
    client_config: ClientConfig,
    /// Replaced after a fatal (idempotence) error; cloning is cheap (an `Arc`).
    producer: RwLock<KafkaProducer>,
    /// Consecutive attempts that timed out while the brokers answered metadata requests.
    stalled: AtomicU32,
}

/// One `send`: what its messages' delivery reports settle.
#[derive(Debug)]
pub(super) struct Batch {
    /// Messages not yet reported on, plus one held by the sender until it has enqueued the
    /// whole batch, so the count reaches zero exactly once.
    outstanding: AtomicUsize,
    /// Failed messages by event index, in the order reported; every other enqueued event
    /// is delivered once `outstanding` is zero. Locked only when a message fails.
    failures: Mutex<Vec<(usize, KafkaError)>>,
    /// Notified once, when `outstanding` reaches zero.
    done: Notify,
}

impl Batch {
    fn new() -> Self {
        Self {
            outstanding: AtomicUsize::new(1),
            failures: Mutex::new(Vec::new()),
            done: Notify::new(),
        }
    }

    /// A message of event `index` failed with `error`.
    fn fail(&self, index: usize, error: KafkaError) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((index, error));
    }

    /// One message is settled; the last one wakes the sender.
    fn settle(&self) {
        if self.outstanding.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.done.notify_one();
        }
    }

    /// Releases the sender's hold, then waits until every message is reported on.
    async fn finished(&self) {
        self.settle();
        self.done.notified().await;
    }

    /// Each event's fate, by index: `None` when delivered, else its first failure (an
    /// event's change and its tombstone may both fail).
    fn fates(&self, events: usize) -> Vec<Option<KafkaError>> {
        let mut fates: Vec<Option<KafkaError>> = (0..events).map(|_| None).collect();
        let failures =
            std::mem::take(&mut *self.failures.lock().unwrap_or_else(|p| p.into_inner()));
        for (i, error) in failures {
            fates[i].get_or_insert(error);
        }
        fates
    }
}

/// The delivery opaque of one message: its batch and event, and the key and value
/// librdkafka reads without a copy until it reports on the message.
pub(super) struct Delivery {
    batch: Arc<Batch>,
    index: usize,
    key: Bytes,
    payload: Option<Bytes>,
}

impl Delivery {
    pub(super) fn key(&self) -> &[u8] {
        &self.key
    }

    /// `None` for a tombstone.
    pub(super) fn payload(&self) -> Option<&[u8]> {
        self.payload.as_deref()
    }
}

/// The producer context: librdkafka's logs through [`KafkaContext`], delivery reports into
/// their [`Batch`].
pub(super) struct Deliveries(KafkaContext);

impl ClientContext for Deliveries {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        self.0.log(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.0.error(error, reason);
    }
}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = Box<Delivery>;

    fn delivery(&self, result: &DeliveryResult<'_>, delivery: Box<Delivery>) {
        if let Err((error, _message)) = result {
            delivery.batch.fail(delivery.index, error.clone());
        }
        delivery.batch.settle();
    }
}

impl KafkaSink {
    /// Creates the producer; no broker needs to be reachable.
    ///
    /// # Errors
    /// librdkafka refuses the settings.
    pub fn new(
        config: &KafkaSinkConfig,
        common: &Common,
        topic: TopicTemplate,
    ) -> Result<Self, ClientError> {
        let client_config = client_config(config)?;
        let producer = client_config
            .create_with_context(Deliveries(KafkaContext::new(&common.name)))
            .map_err(ClientError::Librdkafka)?;
        Ok(Self {
            name: common.name.as_str().into(),
            brokers: config.brokers.join(","),
            encoder: Arc::new(Encoder {
                topic,
                cloud_events: common.payload.cloud_events(),
                debezium: match common.payload {
                    Payload::Debezium(d) => Some(d),
                    _ => None,
                },
                key: config.key,
                tombstones: config.tombstones,
            }),
            client_config,
            producer: RwLock::new(producer),
            stalled: AtomicU32::new(0),
        })
    }

    fn producer(&self) -> KafkaProducer {
        self.producer
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Checks the brokers once, in the background, so a wrong or unreachable `brokers` shows
    /// in the log right at startup rather than at the first event.
    pub fn spawn_startup_probe(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let producer = self.producer();
        let (name, brokers) = (self.name.clone(), self.brokers.clone());
        runtime.spawn(async move {
            match fetch_metadata(producer).await {
                Ok(n) => info!(sink = %name, brokers = %brokers, brokers_in_cluster = n,
                    "connected to Kafka"),
                Err(e) => error!(sink = %name, brokers = %brokers,
                    "cannot reach Kafka at startup: {e}; events stay queued and delivery is retried"),
            }
        });
    }

    /// After a fatal error (the idempotent producer lost track of its sequence numbers) the
    /// producer is unusable; a new one starts with a new producer id.
    fn recover_from_fatal(&self, producer: &KafkaProducer) {
        if let Some((code, reason)) = producer.client().fatal_error() {
            self.replace_producer(&format!("fatal producer error {code:?}: {reason}"));
        }
    }

    /// Messages that keep timing out while the brokers answer mean the producer is stuck,
    /// typically because a broker lost the idempotent producer's state (its sequence numbers
    /// no longer match, and librdkafka waits instead of failing). A new producer gets a new
    /// producer id and starts its sequences afresh.
    async fn recover_from_stall(&self, producer: &KafkaProducer, all_timed_out: bool) {
        if !all_timed_out || fetch_metadata(producer.clone()).await.is_err() {
            self.stalled.store(0, Ordering::Relaxed);
            return;
        }
        if self.stalled.fetch_add(1, Ordering::Relaxed) + 1 >= STALLED_ATTEMPTS {
            self.stalled.store(0, Ordering::Relaxed);
            self.replace_producer("messages keep timing out although the brokers answer");
        }
    }

    fn replace_producer(&self, why: &str) {
        warn!(sink = %self.name, "recreating the Kafka producer: {why}");
        match self
            .client_config
            .create_with_context::<_, KafkaProducer>(Deliveries(KafkaContext::new(&self.name)))
        {
            Ok(fresh) => *self.producer.write().unwrap_or_else(|p| p.into_inner()) = fresh,
            Err(e) => error!(sink = %self.name, "cannot recreate the Kafka producer: {e}"),
        }
    }
}

/// Events encoded and enqueued between two yields of the sending task.
const CHUNK: usize = 256;

/// Enqueues `messages` (each with its event's index) as part of `batch`, from `next` on.
/// Returns where to go on once librdkafka's queue has room again (its delivery reports make
/// room), or `None` once every message was enqueued or refused for good (its event's fate).
/// A message that was not enqueued keeps its key and value for the next attempt.
fn enqueue(
    producer: &KafkaProducer,
    messages: &mut [(usize, Message<'_>)],
    mut next: usize,
    batch: &Arc<Batch>,
) -> Option<usize> {
    // Topic handles and argument lists are made per call: they hold pointers librdkafka
    // lends, which do not cross the sending task's awaits.
    let mut topics = Topics::new(producer);
    let mut args = Args::default();
    // The event whose message was refused for good: its tombstone is not sent either.
    let mut failed = None;
    while let Some((index, message)) = messages.get_mut(next) {
        let index = *index;
        next += 1;
        if failed == Some(index) {
            continue;
        }
        // The key and value move into the opaque: it keeps them for librdkafka.
        let delivery = Box::new(Delivery {
            batch: batch.clone(),
            index,
            key: std::mem::take(&mut message.key),
            payload: message.payload.take(),
        });
        // Counted before the send: its report may come before `produce` returns.
        batch.outstanding.fetch_add(1, Ordering::AcqRel);
        if let Err(refusal) = args.produce(&mut topics, message, delivery) {
            batch.outstanding.fetch_sub(1, Ordering::AcqRel);
            if refusal.code == RDKafkaErrorCode::QueueFull {
                let Delivery { key, payload, .. } = *refusal.delivery;
                (message.key, message.payload) = (key, payload);
                return Some(next - 1);
            }
            batch.fail(index, KafkaError::MessageProduction(refusal.code));
            failed = Some(index);
        }
    }
    None
}

/// Broker metadata within [`HEALTHCHECK_TIMEOUT`]; the number of brokers on success.
async fn fetch_metadata(producer: KafkaProducer) -> Result<usize, String> {
    // A blocking librdkafka call: keep it off the async workers.
    tokio::task::spawn_blocking(move || {
        producer
            .client()
            .fetch_metadata(None, HEALTHCHECK_TIMEOUT)
            .map_err(|e| e.to_string())
            .and_then(|m| match m.brokers().len() {
                0 => Err("no broker in the cluster metadata".to_string()),
                n => Ok(n),
            })
    })
    .await
    .map_err(|e| format!("health check task failed: {e}"))?
}

/// Failures that repeat however often the message is sent: dead-letter the event.
/// Everything else (brokers down, timeouts, leader changes, authorization being fixed, a
/// topic not created yet) is retried.
fn is_permanent(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::MessageBatchTooLarge
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::InvalidTopic
                | RDKafkaErrorCode::PolicyViolation
        )
    )
}

#[async_trait]
impl Sink for KafkaSink {
    async fn send(&self, batch: &[Arc<Envelope>]) -> Result<(), SinkError> {
        let producer = self.producer();
        let pending = Arc::new(Batch::new());
        let mut messages = Vec::with_capacity(CHUNK * 2);
        for (c, chunk) in batch.chunks(CHUNK).enumerate() {
            // Each event's message, then its tombstone when one is due.
            for (i, e) in chunk.iter().enumerate() {
                let (message, tombstone) = self.encoder.encode(e);
                messages.push((c * CHUNK + i, message));
                messages.extend(tombstone.map(|t| (c * CHUNK + i, t)));
            }
            let mut next = 0;
            while let Some(at) = enqueue(&producer, &mut messages, next, &pending) {
                next = at;
                tokio::time::sleep(QUEUE_FULL_PAUSE).await;
            }
            messages.clear();
            tokio::task::yield_now().await;
        }
        // Every message is enqueued: now wait for the last delivery report.
        pending.finished().await;
        let fates = pending.fates(batch.len());

        let mut retriable: Vec<usize> = Vec::new();
        let mut rejected: Vec<usize> = Vec::new();
        for (i, fate) in fates.iter().enumerate() {
            match fate {
                Some(error) if is_permanent(error) => rejected.push(i),
                Some(_) => retriable.push(i),
                None => {}
            }
        }
        let fate_error = |i: usize| fates[i].as_ref().map(|e| e.to_string()).unwrap_or_default();

        if let Some(&first) = retriable.first() {
            self.recover_from_fatal(&producer);
            let all_timed_out = retriable.iter().all(|&i| {
                matches!(&fates[i], Some(e)
                    if e.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageTimedOut))
            });
            self.recover_from_stall(&producer, all_timed_out).await;
            let e = &batch[first];
            // The driver sends only these again (and later changes of their objects).
            return Err(SinkError::Partial {
                message: format!(
                    "{} of {} events not delivered to Kafka ({}), e.g. {} {} uid={}: {}",
                    retriable.len(),
                    batch.len(),
                    self.brokers,
                    e.kind,
                    e.display_name(),
                    e.uid,
                    fate_error(first)
                ),
                retry: retriable,
                rejected,
                retry_after: None,
            });
        }
        self.stalled.store(0, Ordering::Relaxed);
        if rejected.is_empty() {
            return Ok(());
        }
        for &i in &rejected {
            let e = &batch[i];
            error!(sink = %self.name, kind = %e.kind, namespace = e.namespace.as_deref().unwrap_or(""),
                name = %e.name, uid = %e.uid, bytes = e.to_json().len(), error = %fate_error(i),
                "Kafka rejected the event for good");
        }
        let first = rejected[0];
        Err(SinkError::Rejected {
            message: format!(
                "{} of {} events rejected by Kafka, e.g. uid={}: {}",
                rejected.len(),
                batch.len(),
                batch[first].uid,
                fate_error(first)
            ),
            indices: Some(rejected),
        })
    }

    /// Nothing this replica queued may reach the brokers after it gave up (lost lease,
    /// grace period over): purge what librdkafka still holds.
    fn abandon(&self) {
        self.producer()
            .purge(PurgeConfig::default().queue().inflight().non_blocking());
    }

    fn batching(&self) -> Batching {
        Batching {
            max_events: MAX_BATCH_EVENTS,
            // librdkafka bounds the bytes it holds itself (`queue.buffering.max.kbytes`).
            max_bytes: usize::MAX,
            max_wait: Duration::ZERO,
        }
    }

    fn reads_trees(&self) -> bool {
        self.encoder.debezium.is_some()
    }

    async fn healthcheck(&self) -> Result<(), SinkError> {
        fetch_metadata(self.producer())
            .await
            .map(|_| ())
            .map_err(|e| {
                warn!(sink = %self.name, brokers = %self.brokers, "Kafka health check failed: {e}");
                SinkError::retriable(format!("cannot reach Kafka brokers {}: {e}", self.brokers))
            })
    }
}
