//! Files acknowledged events into the store, in acknowledgement order, batched.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, error};

use super::{StateStore, StateWrite};
use crate::event::object::cache_key;
use crate::event::{Envelope, Op};
use crate::sinks::AckObserver;

/// Receives acknowledgements from the sink drivers and writes them to the store.
///
/// An event reaches here when its last sink acknowledged it; drivers acknowledge in queue
/// order, so changes of one object arrive in order.
pub struct StateWriter {
    tx: mpsc::UnboundedSender<Arc<Envelope>>,
}

impl StateWriter {
    /// Starts the writer task. It ends when every `StateWriter` handle is dropped, after
    /// writing what it received.
    pub fn start(store: Arc<StateStore>) -> (Arc<StateWriter>, JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(write_loop(store, rx));
        (Arc::new(StateWriter { tx }), task)
    }
}

impl AckObserver for StateWriter {
    fn delivered(&self, event: &Arc<Envelope>) {
        let _ = self.tx.send(event.clone());
    }
}

async fn write_loop(store: Arc<StateStore>, mut rx: mpsc::UnboundedReceiver<Arc<Envelope>>) {
    let mut events = Vec::with_capacity(1024);
    // Records committed so far; logged so tests can wait for acknowledgements to be durable.
    let mut recorded = 0u64;
    while rx.recv_many(&mut events, 4096).await > 0 {
        let writes: Vec<StateWrite> = events
            .drain(..)
            .map(|e| {
                let key = cache_key(&e.object);
                match e.op {
                    Op::Delete => StateWrite::Delete {
                        source: e.source.clone(),
                        key,
                    },
                    Op::Add | Op::Update => StateWrite::Put {
                        source: e.source.clone(),
                        key,
                        object: e.object.clone(),
                    },
                }
            })
            .collect();
        let store = store.clone();
        let n = writes.len() as u64;
        let result = tokio::task::spawn_blocking(move || store.apply(&writes)).await;
        match result {
            Ok(Ok(())) => {
                recorded += n;
                debug!(recorded, "delivered state recorded");
            }
            // The events stay delivered downstream; a failed write only means the next start
            // re-sends them (at-least-once), so log loudly and carry on.
            Ok(Err(e)) => error!(error = %e, "cannot record delivered state"),
            Err(e) => error!(error = %e, "state writer task failed"),
        }
    }
}
