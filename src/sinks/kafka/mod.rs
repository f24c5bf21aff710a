//! The Kafka sink: one message per change, keyed by object uid, delivered with librdkafka's
//! idempotent producer. User documentation: `README.md` beside this file.

mod client;
mod config;
mod encoding;
mod native;
mod sink;
mod topic;

#[cfg(test)]
mod tests;

pub use client::DEFAULT_PROPERTIES;
pub use config::{CloudEventsMode, KafkaSinkConfig, KeyMode};
pub use sink::KafkaSink;
pub use topic::{TopicTemplate, TopicTemplateError};
