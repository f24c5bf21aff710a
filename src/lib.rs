//! lookout: a Kubernetes change-event forwarding agent.
//!
//! Data flows one way: [`informer`] (list+watch, cache, diff) → [`pipeline`] handlers build
//! [`event::Envelope`]s → [`router`] → sink queues ([`sinks::util`]) → [`sinks`] →
//! acknowledgement ([`delivery`]) → delivered state ([`state`]).

pub mod backoff;
pub mod cli;
pub mod config;
pub mod delivery;
#[cfg(feature = "sim")]
pub mod demo;
pub mod event;
pub mod informer;
pub mod leader;
pub mod pipeline;
pub mod router;
pub mod server;
pub mod shutdown;
pub mod sinks;
pub mod state;
pub mod telemetry;
