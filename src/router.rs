//! Decides which sinks get an event and hands it to their queues.

use std::sync::Arc;

use crate::event::Envelope;
use crate::sinks::SinkHandle;

/// Fans events out to sink queues. With no routes configured every event goes to every sink.
pub struct Router {
    sinks: Vec<SinkHandle>,
}

impl Router {
    /// A router over the given sink queues.
    pub fn new(sinks: Vec<SinkHandle>) -> Self {
        Self { sinks }
    }

    /// The sink queues.
    pub fn sinks(&self) -> &[SinkHandle] {
        &self.sinks
    }

    /// Queues `event` on every sink it is routed to, waiting for room (backpressure).
    pub async fn dispatch(&self, event: Envelope) {
        let event = Arc::new(event);
        event.expect_acks(self.sinks.len());
        for sink in &self.sinks {
            if !sink.send(event.clone()).await {
                // The sink is shutting down; the event stays unacknowledged and the next run
                // re-emits it.
                tracing::debug!(sink = %sink.name, "sink queue closed; event not queued");
            }
        }
    }

    /// Closes every queue and waits for the drivers to deliver what was queued.
    pub async fn close_and_drain(self) {
        let sinks = self.sinks;
        for s in &sinks {
            s.close();
        }
        for s in sinks {
            s.join().await;
        }
    }
}
