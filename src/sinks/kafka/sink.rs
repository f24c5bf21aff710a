//! Produces batches to Kafka and reports success only on delivery reports.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use futures::future::join_all;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer, PurgeConfig};
use tracing::{error, info, warn};

use super::client::{ClientError, KafkaContext, client_config};
use super::config::KafkaSinkConfig;
use super::encoding::{Encoder, Message};
use super::topic::TopicTemplate;
use crate::event::Envelope;
use crate::sinks::{Batching, Common, Payload, Sink, SinkError};

/// How long a health check waits for broker metadata.
const HEALTHCHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// Events per batch: librdkafka batches per partition on its own, so large batches only
/// mean more messages in flight at once.
const MAX_BATCH_EVENTS: usize = 10_000;

/// Waiting for room in librdkafka's queue when no message of ours is in flight (another
/// batch's messages fill it); otherwise the oldest delivery is awaited instead.
const QUEUE_FULL_PAUSE: Duration = Duration::from_millis(10);

/// Attempts in a row whose messages all timed out although the brokers answered, before
/// the producer is replaced.
const STALLED_ATTEMPTS: u32 = 2;

type KafkaProducer = FutureProducer<KafkaContext>;

/// The Kafka sink. Many messages are in flight at once: a batch is enqueued whole, then its
/// delivery reports are awaited together.
pub struct KafkaSink {
    /// The sink's name, for logs.
    name: Arc<str>,
    /// Bootstrap brokers, for logs.
    brokers: String,
    /// Topic, value and headers of each message.
    encoder: Encoder,
    /// Kept to recreate the producer after a fatal error.
    client_config: ClientConfig,
    /// Replaced after a fatal (idempotence) error; cloning is cheap (an `Arc`).
    producer: RwLock<KafkaProducer>,
    /// Consecutive attempts that timed out while the brokers answered metadata requests.
    stalled: AtomicU32,
}

/// How one event's messages fared.
#[derive(Debug)]
enum Fate {
    /// Not yet known.
    Pending,
    /// Every message of the event (the change, and its tombstone) is delivered.
    Delivered,
    /// Some message failed with this error.
    Failed(KafkaError),
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
            .create_with_context(KafkaContext::new(&common.name))
            .map_err(ClientError::Librdkafka)?;
        Ok(Self {
            name: common.name.as_str().into(),
            brokers: config.brokers.join(","),
            encoder: Encoder {
                topic,
                cloud_events: common.payload.cloud_events(),
                debezium: match common.payload {
                    Payload::Debezium(d) => Some(d),
                    _ => None,
                },
                key: config.key,
                tombstones: config.tombstones,
            },
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
            .create_with_context::<_, KafkaProducer>(KafkaContext::new(&self.name))
        {
            Ok(fresh) => *self.producer.write().unwrap_or_else(|p| p.into_inner()) = fresh,
            Err(e) => error!(sink = %self.name, "cannot recreate the Kafka producer: {e}"),
        }
    }

    /// Enqueues `message` for event `index`, waiting for room when librdkafka's queue is
    /// full. Room is made by awaiting the oldest delivery of this batch, whose fate is
    /// recorded.
    async fn enqueue(
        &self,
        producer: &KafkaProducer,
        message: Message,
        index: usize,
        in_flight: &mut VecDeque<(usize, DeliveryFuture)>,
        fates: &mut [Fate],
    ) -> Result<(), KafkaError> {
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&message.topic)
            .key(message.key.as_ref())
            .headers(message.headers)
            .timestamp(message.timestamp);
        if let Some(payload) = &message.payload {
            record = record.payload(payload.as_ref());
        }
        loop {
            match producer.send_result(record) {
                Ok(delivery) => {
                    in_flight.push_back((index, delivery));
                    return Ok(());
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    match in_flight.pop_front() {
                        Some((j, delivery)) => record_fate(&mut fates[j], delivery.await),
                        None => tokio::time::sleep(QUEUE_FULL_PAUSE).await,
                    }
                }
                Err((error, _)) => return Err(error),
            }
        }
    }
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

fn record_fate(
    fate: &mut Fate,
    result: Result<
        rdkafka::producer::future_producer::OwnedDeliveryResult,
        futures::channel::oneshot::Canceled,
    >,
) {
    let outcome = match result {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((error, _message))) => Err(error),
        Err(_canceled) => Err(KafkaError::Canceled),
    };
    match (outcome, &*fate) {
        // The first failure of an event is the one reported.
        (_, Fate::Failed(_)) => {}
        (Ok(()), _) => *fate = Fate::Delivered,
        (Err(error), _) => *fate = Fate::Failed(error),
    }
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
        let mut fates: Vec<Fate> = batch.iter().map(|_| Fate::Pending).collect();
        let mut in_flight: VecDeque<(usize, DeliveryFuture)> = VecDeque::with_capacity(batch.len());
        for (i, e) in batch.iter().enumerate() {
            let (message, tombstone) = self.encoder.encode(e);
            let enqueued = self
                .enqueue(&producer, message, i, &mut in_flight, &mut fates)
                .await;
            let enqueued = match (enqueued, tombstone) {
                (Ok(()), Some(t)) => {
                    self.enqueue(&producer, t, i, &mut in_flight, &mut fates)
                        .await
                }
                (r, _) => r,
            };
            if let Err(error) = enqueued {
                fates[i] = Fate::Failed(error);
            }
        }
        // Every message is enqueued: now wait for all delivery reports together.
        let (indices, deliveries): (Vec<usize>, Vec<DeliveryFuture>) =
            in_flight.into_iter().unzip();
        for (i, result) in indices.into_iter().zip(join_all(deliveries).await) {
            record_fate(&mut fates[i], result);
        }

        let mut retriable: Vec<usize> = Vec::new();
        let mut rejected: Vec<usize> = Vec::new();
        for (i, fate) in fates.iter().enumerate() {
            match fate {
                Fate::Failed(error) if is_permanent(error) => rejected.push(i),
                Fate::Failed(_) => retriable.push(i),
                Fate::Pending => unreachable!("every event is delivered or failed by now"),
                Fate::Delivered => {}
            }
        }
        let fate_error = |i: usize| match &fates[i] {
            Fate::Failed(error) => error.to_string(),
            _ => String::new(),
        };

        if let Some(&first) = retriable.first() {
            self.recover_from_fatal(&producer);
            let all_timed_out = retriable.iter().all(|&i| {
                matches!(&fates[i], Fate::Failed(e)
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
            max_wait: Duration::ZERO,
            ..Batching::default()
        }
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
