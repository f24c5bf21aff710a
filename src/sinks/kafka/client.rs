//! The librdkafka side: the sink's producer defaults, user properties on top, and a client
//! context that turns librdkafka's logs and errors into `tracing` events.

use std::sync::Arc;

use rdkafka::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use tracing::{debug, error, info, warn};

use super::config::KafkaSinkConfig;

/// Producer settings the sink starts from; `properties:` override any of them.
///
/// - `enable.idempotence`, `acks=all`: no duplicates or reordering from librdkafka's own
///   retries, and a message counts as delivered only once every in-sync replica has it.
/// - `compression.type=zstd`: envelopes are repetitive JSON and compress very well.
/// - `partitioner=murmur2_random`: the partition of a key is the one Java clients (Kafka
///   Streams, Connect) compute, so other producers of the same keys agree with us.
/// - `message.timeout.ms=30000`: an undeliverable message fails after 30 s instead of
///   librdkafka's 5 min, so the outage shows in the sink's error and retry counters and the
///   driver's backoff takes over; nothing is lost, the batch is sent again.
/// - `socket.keepalive.enable`: notice half-open connections through NATs and load balancers.
pub const DEFAULT_PROPERTIES: &[(&str, &str)] = &[
    ("client.id", "lookout"),
    ("enable.idempotence", "true"),
    ("acks", "all"),
    ("compression.type", "zstd"),
    ("partitioner", "murmur2_random"),
    ("message.timeout.ms", "30000"),
    ("socket.keepalive.enable", "true"),
];

/// Properties the sink sets from its own keys; setting them in `properties:` would be
/// ambiguous.
const RESERVED: &[(&str, &str)] = &[
    ("bootstrap.servers", "use `brokers`"),
    ("metadata.broker.list", "use `brokers`"),
];

/// Why the producer cannot be created.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A property the sink manages itself.
    #[error("`{key}` cannot be set in properties: {reason}")]
    Reserved {
        /// The property.
        key: String,
        /// What to do instead.
        reason: &'static str,
    },
    /// librdkafka refused the settings; its own message.
    #[error("{0}")]
    Librdkafka(#[source] KafkaError),
}

/// The sink's settings as a librdkafka configuration.
///
/// # Errors
/// A reserved property is set.
pub fn client_config(config: &KafkaSinkConfig) -> Result<ClientConfig, ClientError> {
    let mut cc = ClientConfig::new();
    for (key, value) in DEFAULT_PROPERTIES {
        cc.set(*key, *value);
    }
    for (key, value) in &config.properties {
        if let Some((_, reason)) = RESERVED.iter().find(|(k, _)| k == key) {
            return Err(ClientError::Reserved {
                key: key.clone(),
                reason,
            });
        }
        cc.set(key, &value.0);
    }
    cc.set("bootstrap.servers", config.brokers.join(","));
    // librdkafka would otherwise take its level from the `log` crate, which is not
    // installed: warnings would be dropped. The context forwards them to tracing.
    cc.set_log_level(RDKafkaLogLevel::Warning);
    Ok(cc)
}

/// Routes librdkafka's logs and errors to `tracing`, tagged with the sink's name.
#[derive(Clone)]
pub struct KafkaContext {
    sink: Arc<str>,
}

impl KafkaContext {
    /// A context for sink `name`.
    pub fn new(name: &str) -> Self {
        Self { sink: name.into() }
    }
}

impl ClientContext for KafkaContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        let sink = &*self.sink;
        // Connection failures also arrive through `error`, which reports them once.
        if facility == "FAIL" {
            debug!(sink, facility, "librdkafka: {message}");
            return;
        }
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => error!(sink, facility, "librdkafka: {message}"),
            RDKafkaLogLevel::Warning => warn!(sink, facility, "librdkafka: {message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                info!(sink, facility, "librdkafka: {message}")
            }
            RDKafkaLogLevel::Debug => debug!(sink, facility, "librdkafka: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let sink = &*self.sink;
        match error.rdkafka_error_code() {
            // Every broker unreachable: the one line an operator needs when brokers are
            // wrong or down. librdkafka keeps reconnecting on its own.
            Some(RDKafkaErrorCode::AllBrokersDown) => error!(
                sink,
                "cannot reach any Kafka broker ({reason}); retrying, events stay queued"
            ),
            // One connection failing is routine (broker restarts, idle disconnects); it
            // repeats with every reconnect attempt.
            Some(RDKafkaErrorCode::BrokerTransportFailure) => {
                warn!(sink, "Kafka connection failed: {reason}")
            }
            _ => error!(sink, error = %error, "Kafka client error: {reason}"),
        }
    }
}
