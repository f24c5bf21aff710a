//! The webhook sink: events as HTTP(S) requests (envelope JSON or CloudEvents), optionally
//! signed, with retries and dead letters done by the shared driver. User documentation:
//! `src/sinks/webhook/README.md`.

mod config;
mod encoding;
mod signature;
mod sink;
mod status;

#[cfg(test)]
mod tests;

pub use config::{
    CloudEventsMode, TlsConfig, ValueFrom, ValueRef, ValueSource, WebhookBatchConfig,
    WebhookMethod, WebhookSinkConfig,
};
pub use encoding::percent_encode;
pub use signature::{SIGNATURE_HEADER, SignatureError, TIMESTAMP_HEADER, sign, verify};
pub use sink::{MAX_RETRY_AFTER, WebhookSink, parse_retry_after};
pub use status::{DeadLetterStatuses, StatusEntry};
