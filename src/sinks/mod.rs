//! Sinks: where change events go. One folder per sink with its config beside it; the shared
//! plumbing (queue, batching, retries, acknowledgement) lives once in [`util`].

pub mod blackhole;
pub mod file;
pub mod kafka;
pub mod options;
pub mod stdout;
pub mod util;
pub mod webhook;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::config::{Error, ErrorKind, Errors, join};
use crate::event::Envelope;

pub use options::{Accepts, Common, Format, Payload, SinkOptions, default_queue_capacity};
pub use util::{
    AckObserver, Batching, DeadLetter, SinkHandle, SinkLane, SinkMonitor, SinkStats, Slot,
};

/// A destination for change events.
///
/// Implementations only deliver and classify their failures; queueing, batching, retries
/// with backoff (including resending only what failed of a batch) and acknowledgement are done
/// once, by the driver in [`util`]. A sink keeps no memory of earlier attempts.
#[async_trait]
pub trait Sink: Send + Sync + 'static {
    /// Delivers a batch. `Ok` means every event is durably accepted downstream (flushed,
    /// delivery-reported, answered 2xx), never merely buffered. When only part of the batch
    /// got through, say which part did not with [`SinkError::Partial`]: the driver sends
    /// only that again.
    async fn send(&self, batch: &[Arc<Envelope>]) -> Result<(), SinkError>;

    /// The driver gave up on the sink (shutdown's grace period is over, or this replica lost
    /// the lease): drop whatever the sink still buffers so nothing is delivered after this.
    fn abandon(&self) {}

    /// How the driver should group events for this sink.
    fn batching(&self) -> Batching {
        Batching::default()
    }

    /// Whether `send` reads its events' object trees (`object` and `old` as `Value`s), not
    /// only their JSON (`Envelope::to_json`). A sink that does not lets the driver release
    /// the trees as soon as it holds the batch, instead of keeping them for as long as the
    /// delivery takes: thousands of events in flight to Kafka kept thousands of trees, most
    /// of the memory the pipeline touched. A released tree is decoded again when read, so a
    /// wrong `false` costs time, never correctness.
    fn reads_trees(&self) -> bool {
        true
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
    /// Part of the batch was delivered: `retry` failed transiently (the driver sends them
    /// again, with every later change of the same objects, so order per object holds),
    /// `rejected` will never be accepted (dead-lettered); every other event was delivered.
    #[error("{message}")]
    Partial {
        /// What happened.
        message: String,
        /// Indices into the batch to send again.
        retry: Vec<usize>,
        /// Indices into the batch rejected for good.
        rejected: Vec<usize>,
        /// The receiver asked to wait this long before the retry.
        retry_after: Option<Duration>,
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

/// Everything a sink may need from the rest of the agent when it is built.
#[derive(Debug, Clone, Default)]
pub struct SinkContext {
    /// `cluster` from the config.
    pub cluster: String,
    /// The state directory, when configured (dead letters live below it).
    pub state_dir: Option<std::path::PathBuf>,
}

/// One entry of `sinks:`: the options every sink has, and those of its `type`.
///
/// Decoded by [`SinkConfig::decode`] (the config loader, with full key paths) or through
/// `Deserialize` (any serde format; errors then name paths inside the entry only).
#[derive(Debug, Clone, Serialize)]
pub struct SinkConfig {
    /// `name`, `queueCapacity`, `format`, `cloudEventsMode`, `deadLetter`.
    #[serde(flatten)]
    pub options: SinkOptions,
    /// `type` and the type's own options.
    #[serde(flatten)]
    pub kind: SinkKind,
}

/// A sink type and its own options.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SinkKind {
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

/// The values of `type`.
const TYPES: &[&str] = &["stdout", "file", "blackhole", "webhook", "kafka"];

impl SinkKind {
    /// The `type` value.
    pub fn type_name(&self) -> &'static str {
        match self {
            SinkKind::Stdout(_) => "stdout",
            SinkKind::File(_) => "file",
            SinkKind::Blackhole(_) => "blackhole",
            SinkKind::Webhook(_) => "webhook",
            SinkKind::Kafka(_) => "kafka",
        }
    }

    /// What the type makes of the shared options.
    pub fn accepts(&self) -> Accepts {
        use options::Format::{Cloudevents, Debezium, Envelope, Text};
        match self {
            SinkKind::Stdout(_) => Accepts {
                formats: &[Envelope, Text, Debezium],
                rejects: false,
            },
            SinkKind::File(_) => Accepts {
                formats: &[Envelope, Debezium],
                rejects: false,
            },
            SinkKind::Blackhole(_) => Accepts {
                formats: &[Envelope],
                rejects: false,
            },
            SinkKind::Webhook(_) | SinkKind::Kafka(_) => Accepts {
                formats: &[Envelope, Cloudevents, Debezium],
                rejects: true,
            },
        }
    }
}

impl SinkConfig {
    /// The sink's unique name.
    pub fn name(&self) -> &str {
        &self.options.name
    }

    /// Decodes one `sinks[]` entry at key path `at`: `type` picks the own options, the
    /// other keys are split between [`SinkOptions`] and them.
    ///
    /// # Errors
    /// The first problem, at its full key path.
    pub fn decode(value: &figment::value::Value, at: &str) -> Result<Self, Error> {
        use crate::config::decode::{as_dict, decode_split};
        let type_at = join(at, "type");
        let type_name = match as_dict(value, at)?.get("type") {
            None => return Err(Error::new(type_at, ErrorKind::MissingKey)),
            Some(v) => v
                .as_str()
                .ok_or_else(|| Error::new(&type_at, ErrorKind::Type("expected a string".into())))?,
        };
        fn split<O: serde::de::DeserializeOwned>(
            value: &figment::value::Value,
            at: &str,
        ) -> Result<(SinkOptions, O), Error> {
            decode_split(value, at, &["type"])
        }
        let (options, kind) = match type_name {
            "stdout" => split(value, at).map(|(s, o)| (s, SinkKind::Stdout(o)))?,
            "file" => split(value, at).map(|(s, o)| (s, SinkKind::File(o)))?,
            "blackhole" => split(value, at).map(|(s, o)| (s, SinkKind::Blackhole(o)))?,
            "webhook" => split(value, at).map(|(s, o)| (s, SinkKind::Webhook(Box::new(o))))?,
            "kafka" => split(value, at).map(|(s, o)| (s, SinkKind::Kafka(Box::new(o))))?,
            other => {
                return Err(Error::new(
                    type_at,
                    ErrorKind::UnknownValue {
                        value: other.to_string(),
                        expected: TYPES.iter().map(|t| t.to_string()).collect(),
                    },
                ));
            }
        };
        Ok(Self { options, kind })
    }

    /// Checks every setting and builds the sink's client (an HTTP client, a Kafka
    /// producer); nothing is opened or connected yet. Paths are relative to the entry.
    ///
    /// # Errors
    /// Every problem found in the entry.
    pub fn compile(&self, ctx: &SinkContext) -> Result<CompiledSink, Errors> {
        let type_name = self.kind.type_name();
        let common = self.options.check(type_name, self.kind.accepts())?;
        let built = match &self.kind {
            SinkKind::Stdout(c) => Built::Ready(Arc::new(c.compile(&common))),
            SinkKind::Blackhole(c) => Built::Ready(Arc::new(c.compile())),
            SinkKind::File(c) => Built::File(c.compile()?, common.payload),
            SinkKind::Webhook(c) => Built::Ready(Arc::new(c.compile(&common)?)),
            SinkKind::Kafka(c) => Built::Kafka(Arc::new(c.compile(&common, ctx)?)),
        };
        Ok(CompiledSink {
            config: self.clone(),
            common,
            built,
        })
    }
}

impl<'de> Deserialize<'de> for SinkConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = <figment::value::Value as Deserialize>::deserialize(d)?;
        SinkConfig::decode(&value, "").map_err(serde::de::Error::custom)
    }
}

/// A sink whose settings are checked and whose client is built, ready to start.
pub struct CompiledSink {
    /// The entry it was compiled from (for `lookout check`).
    pub config: SinkConfig,
    /// Its shared options after defaults.
    pub common: Common,
    built: Built,
}

/// The part of a compiled sink that starts differently per type.
enum Built {
    /// Nothing left to do.
    Ready(Arc<dyn Sink>),
    /// A file to open for appending (not at compile time: `lookout check` creates nothing),
    /// and what its lines hold.
    File(file::FileSinkConfig, Payload),
    /// A producer whose brokers are probed once at start.
    Kafka(Arc<kafka::KafkaSink>),
}

/// A started sink and where the events it rejects go.
pub struct StartedSink {
    /// The running sink.
    pub sink: Arc<dyn Sink>,
    /// Its dead-letter target.
    pub dead_letter: DeadLetter,
}

impl CompiledSink {
    /// The sink's name.
    pub fn name(&self) -> &str {
        &self.common.name
    }

    /// Opens what the sink writes to and resolves its dead-letter file.
    ///
    /// # Errors
    /// The file sink's file cannot be opened (path relative to the entry).
    pub fn start(self, ctx: &SinkContext) -> Result<StartedSink, Error> {
        let name = self.common.name.as_str();
        let dead_letter = if self.config.kind.accepts().rejects {
            DeadLetter::resolve(
                name,
                self.common.dead_letter.as_ref(),
                ctx.state_dir.as_deref(),
            )
        } else {
            // Standard output and files never reject an event: no dead-letter file, and
            // no start-up complaint.
            DeadLetter::log_only(name)
        };
        let sink: Arc<dyn Sink> = match self.built {
            Built::Ready(sink) => sink,
            Built::File(c, payload) => Arc::new(file::FileSink::open(&c, payload)?),
            Built::Kafka(sink) => {
                sink.spawn_startup_probe();
                sink
            }
        };
        Ok(StartedSink { sink, dead_letter })
    }
}
