//! Plumbing shared by every sink: the bounded queue, batching, retries with backoff (partial
//! retries included) and the hand-over of finished slots to the acknowledgement tracker.
//! Sinks never retry or acknowledge on their own.

mod batch;
mod dead_letter;
mod driver;
mod queue;
mod retry;

pub use batch::Batching;
pub use dead_letter::{DeadLetter, DeadLetterConfig, DeadLetterError};
pub use driver::{
    AckObserver, SinkHandle, SinkLane, SinkMonitor, SinkStats, spawn_driver,
    spawn_driver_with_dead_letter,
};
pub use queue::{Closed, SinkQueue, Slot};
