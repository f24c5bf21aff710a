//! Plumbing shared by every sink: the bounded queue, batching, retries with backoff and
//! acknowledgement. Sinks never retry or acknowledge on their own.

mod batch;
mod driver;
mod queue;
mod retry;

pub use batch::Batching;
pub use driver::{AckObserver, SinkHandle, SinkMonitor, SinkStats, spawn_driver};
pub use queue::{Closed, SinkQueue, Slot};
pub use retry::RetryPolicy;
