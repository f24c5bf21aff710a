//! Writes the acknowledgement tracker's decisions into the store, in order, batched.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, error};

use super::{StateOp, StateStore};

/// The tracker's end of the writer: where state writes go, and how far they are on disk.
#[derive(Debug)]
pub struct Recorder {
    /// State writes, in the order the tracker decided them.
    pub tx: mpsc::UnboundedSender<StateOp>,
    /// The highest [`StateOp::Owing`] registration id committed so far.
    pub durable: watch::Receiver<u64>,
}

/// The writer task: it alone writes the store, and it only hears from the tracker.
pub struct StateWriter;

impl StateWriter {
    /// Starts the writer task for a pipeline whose sinks are `sinks` (index → name). It ends
    /// when the [`Recorder`]'s sender is dropped, after committing what it received.
    pub fn start(store: Arc<StateStore>, sinks: Vec<String>) -> (Recorder, JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (durable_tx, durable) = watch::channel(0);
        let task = tokio::spawn(write_loop(store, Arc::new(sinks), rx, durable_tx));
        (Recorder { tx, durable }, task)
    }
}

async fn write_loop(
    store: Arc<StateStore>,
    sinks: Arc<Vec<String>>,
    mut rx: mpsc::UnboundedReceiver<StateOp>,
    durable: watch::Sender<u64>,
) {
    let mut ops = Vec::with_capacity(1024);
    // Acknowledgements (sinks' new states) committed so far; logged so tests can wait for
    // them to be durable.
    let mut recorded = 0u64;
    while rx.recv_many(&mut ops, 4096).await > 0 {
        let bases = ops
            .iter()
            .filter(|op| matches!(op, StateOp::Base { .. }))
            .count() as u64;
        let reg = ops
            .iter()
            .filter_map(|op| match op {
                StateOp::Owing { reg, .. } => Some(*reg),
                StateOp::Base { .. } => None,
            })
            .max();
        let batch = std::mem::take(&mut ops);
        let (store, sinks) = (store.clone(), sinks.clone());
        let result = tokio::task::spawn_blocking(move || store.apply(&batch, &sinks)).await;
        match result {
            Ok(Ok(())) => {
                recorded += bases;
                debug!(recorded, "delivered state recorded");
            }
            // Delivery goes on: a write that failed only means the next start knows less and
            // re-sends more (or, for a lost in-flight marker, may miss a change undone meanwhile).
            Ok(Err(e)) => error!(error = %e, "cannot record delivered state"),
            Err(e) => error!(error = %e, "state writer task failed"),
        }
        if let Some(reg) = reg {
            durable.send_replace(reg);
        }
    }
}
