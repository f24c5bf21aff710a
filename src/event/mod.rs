//! Change events: the envelope (a public contract), diffs and object transforms.

pub mod cloudevents;
pub mod coalesce;
pub mod diff;
pub mod envelope;
pub mod object;
pub mod pointer;
pub mod transform;

pub use envelope::{Envelope, EnvelopeBuilder, Op};
