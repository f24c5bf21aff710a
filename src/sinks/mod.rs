//! Sinks: where change events go. One folder per sink with its config beside it; the shared
//! plumbing (queue, batching, retries, acknowledgement) lives once in [`util`].

pub mod blackhole;
pub mod file;
pub mod kafka;
pub mod stdout;
pub mod util;
pub mod webhook;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::event::Envelope;

pub use util::{AckObserver, Batching, DeadLetter, SinkHandle, SinkMonitor, SinkStats};

/// A destination for change events.
///
/// Implementations only deliver and classify their failures; queueing, batching, retries
/// with backoff and acknowledgement are done once, by the driver in [`util`].
#[async_trait]
pub trait Sink: Send + Sync + 'static {
    /// Delivers a batch. `Ok` means every event is durably accepted downstream (flushed,
    /// delivery-reported, answered 2xx), never merely buffered.
    async fn send(&self, batch: &[Arc<Envelope>]) -> Result<(), SinkError>;

    /// How the driver should group events for this sink.
    fn batching(&self) -> Batching {
        Batching::default()
    }

    /// Whether the sink can take events now (readiness).
    async fn healthcheck(&self) -> Result<(), SinkError> {
        Ok(())
    }
}

/// Why a batch was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// A transient failure (timeout, 5xx, broker down): the driver retries with backoff.
    #[error("{message}")]
    Retriable {
        /// What happened.
        message: String,
        /// The receiver asked to wait this long (e.g. `Retry-After`).
        retry_after: Option<Duration>,
    },
    /// Some events will never be accepted (4xx, message too large): the driver dead-letters
    /// them instead of retrying; the other events of the batch count as accepted.
    #[error("{message}")]
    Rejected {
        /// What happened.
        message: String,
        /// Indices into the batch of the rejected events; `None` = the whole batch.
        indices: Option<Vec<usize>>,
    },
}

impl SinkError {
    /// A retriable failure without a server-chosen delay.
    pub fn retriable(message: impl Into<String>) -> Self {
        SinkError::Retriable {
            message: message.into(),
            retry_after: None,
        }
    }
}

/// A problem in one sink's settings, relative to the sink entry (e.g. `format`).
#[derive(Debug)]
pub struct SinkConfigError {
    /// Key path below `sinks[i]`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// `debezium:` is only meaningful with `format: debezium` (`applies`).
pub(crate) fn check_debezium_options(
    debezium: Option<&crate::event::debezium::DebeziumOptions>,
    applies: bool,
) -> Result<(), SinkConfigError> {
    match debezium {
        Some(_) if !applies => Err(SinkConfigError {
            path: "debezium".into(),
            message: "only applies with `format: debezium`".into(),
        }),
        _ => Ok(()),
    }
}

/// Why a configured sink could not be started.
#[derive(Debug, thiserror::Error)]
#[error("sink `{name}`: {message}")]
pub struct SinkBuildError {
    /// The sink's name.
    pub name: String,
    /// What failed.
    pub message: String,
}

/// Everything a sink may need from the rest of the agent when it is built.
#[derive(Debug, Clone, Default)]
pub struct SinkContext {
    /// `cluster` from the config.
    pub cluster: String,
    /// The state directory, when configured (dead letters live below it).
    pub state_dir: Option<std::path::PathBuf>,
}

/// One entry of `sinks:`, selected by `type`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SinkConfig {
    /// One JSON envelope per line (or a human line) on standard output.
    Stdout(stdout::StdoutSinkConfig),
    /// One JSON envelope per line appended to a file.
    File(file::FileSinkConfig),
    /// Accepts and counts events, delivers nothing (benchmarks).
    Blackhole(blackhole::BlackholeSinkConfig),
    /// HTTP(S) requests to a URL: envelope JSON or CloudEvents, optionally signed.
    Webhook(Box<webhook::WebhookSinkConfig>),
    /// One message per change to Kafka, keyed by object uid.
    Kafka(Box<kafka::KafkaSinkConfig>),
}

impl SinkConfig {
    /// The sink's unique name.
    pub fn name(&self) -> &str {
        match self {
            SinkConfig::Stdout(c) => &c.name,
            SinkConfig::File(c) => &c.name,
            SinkConfig::Blackhole(c) => &c.name,
            SinkConfig::Webhook(c) => &c.name,
            SinkConfig::Kafka(c) => &c.name,
        }
    }

    /// Capacity of the sink's queue (events).
    pub fn queue_capacity(&self) -> usize {
        match self {
            SinkConfig::Stdout(c) => c.queue_capacity,
            SinkConfig::File(c) => c.queue_capacity,
            SinkConfig::Blackhole(c) => c.queue_capacity,
            SinkConfig::Webhook(c) => c.queue_capacity,
            SinkConfig::Kafka(c) => c.queue_capacity,
        }
    }

    /// Checks settings serde cannot.
    pub fn validate(&self) -> Result<(), SinkConfigError> {
        match self {
            SinkConfig::Stdout(c) => c.validate(),
            SinkConfig::File(c) => c.validate(),
            SinkConfig::Blackhole(_) => Ok(()),
            SinkConfig::Webhook(c) => c.validate(),
            SinkConfig::Kafka(c) => c.validate(),
        }
    }

    /// Builds the running sink.
    pub async fn build(&self, ctx: &SinkContext) -> Result<Arc<dyn Sink>, SinkBuildError> {
        match self {
            SinkConfig::Stdout(c) => Ok(Arc::new(c.build())),
            SinkConfig::File(c) => Ok(Arc::new(file::FileSink::open(c)?)),
            SinkConfig::Blackhole(c) => Ok(Arc::new(c.build())),
            SinkConfig::Webhook(c) => Ok(Arc::new(c.build()?)),
            SinkConfig::Kafka(c) => {
                let sink = c.build(ctx).map_err(|message| SinkBuildError {
                    name: c.name.clone(),
                    message,
                })?;
                sink.spawn_startup_probe();
                Ok(Arc::new(sink))
            }
        }
    }

    /// Where the driver puts the events this sink rejects for good.
    pub fn dead_letter(&self, ctx: &SinkContext) -> DeadLetter {
        match self {
            // Standard output and files never reject an event; no dead-letter file, and no
            // start-up complaint.
            SinkConfig::Stdout(c) => DeadLetter::log_only(&c.name),
            SinkConfig::File(c) => DeadLetter::log_only(&c.name),
            SinkConfig::Blackhole(c) => DeadLetter::log_only(&c.name),
            SinkConfig::Webhook(c) => {
                DeadLetter::resolve(&c.name, c.dead_letter.as_ref(), ctx.state_dir.as_deref())
            }
            SinkConfig::Kafka(c) => {
                DeadLetter::resolve(&c.name, c.dead_letter.as_ref(), ctx.state_dir.as_deref())
            }
        }
    }
}

/// Default capacity of a sink queue: enough to ride out a short hiccup without blocking the
/// informers, small enough to bound memory (events share their objects with the cache).
pub fn default_queue_capacity() -> usize {
    10_000
}
