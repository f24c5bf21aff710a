//! Change events: the envelope (a public contract), diffs and object transforms.

pub mod changed_by;
pub mod cloudevents;
pub mod coalesce;
pub mod compact;
pub mod debezium;
pub mod diff;
pub mod doc;
pub mod envelope;
pub mod object;
pub mod pointer;
pub mod recompact;
#[cfg(test)]
pub(crate) mod schema_check;
pub mod transform;

pub use doc::Doc;
pub use envelope::{Envelope, EnvelopeBuilder, Op, SnapshotMark};
