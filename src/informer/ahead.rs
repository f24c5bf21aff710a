//! Reading a watch ahead of the informer: a task of its own polls the stream — which is
//! where each line is parsed — and hands the events over a bounded channel, in order.
//!
//! The informer's loop (transform, cache, diff, handlers) and the parse of the next watch
//! lines then run on two cores at once. The channel bounds how far the reader gets ahead
//! (a full channel stops it reading, which is the backpressure on the API server's stream);
//! dropping the returned stream ends the task and closes the watch.

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::api::EventStream;

/// Events handed over at once at most: only those parsed already (a batch never waits for
/// more), so a quiet watch's event is not held back.
const BATCH: usize = 32;

/// Batches waiting for the informer at most (`BATCH` events each; with the batch each side
/// holds, at most 128 events, a few MB of objects, are between the socket and the informer).
const AHEAD: usize = 2;

/// `stream`, polled by a task of its own up to `AHEAD` batches ahead of its reader.
///
/// The events cross in batches of what was ready, not one by one: while the informer is the
/// slower side the channel stays full, and one event at a time would wake the reader for
/// every event the informer takes; a batch wakes it once per `BATCH` events. Tokio runs a
/// task woken by another next on the waker's worker, so each of those wake-ups also made the
/// reader take a turn on the informer's core rather than parse beside it on the other.
pub(super) fn read_ahead(stream: EventStream) -> EventStream {
    let (tx, rx) = mpsc::channel::<Vec<_>>(AHEAD);
    let mut batches = stream.ready_chunks(BATCH);
    tokio::spawn(async move {
        loop {
            let batch = tokio::select! {
                // The reader is gone (the watch was abandoned): stop reading it.
                () = tx.closed() => return,
                batch = batches.next() => batch,
            };
            let Some(batch) = batch else { return };
            if tx.send(batch).await.is_err() {
                return;
            }
        }
    });
    ReceiverStream::new(rx)
        .flat_map(futures::stream::iter)
        .boxed()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use std::time::Instant;

    use crate::informer::api::{RawEvent, RequestError};
    use serde_json::json;

    /// A watch item: object `o{i}` added, arrived now.
    fn added(i: usize) -> (Instant, Result<RawEvent, RequestError>) {
        let o = json!({"metadata": {"name": format!("o{i}")}});
        (Instant::now(), Ok(RawEvent::Added(o)))
    }

    #[tokio::test]
    async fn events_arrive_in_order_and_the_end_of_the_stream_too() {
        let items: Vec<_> = (0..500).map(added).collect();
        let mut s = read_ahead(futures::stream::iter(items).boxed());
        for i in 0..500 {
            match s.next().await {
                Some((_, Ok(RawEvent::Added(o)))) => {
                    assert_eq!(o["metadata"]["name"], format!("o{i}"))
                }
                other => panic!("event {i}: {other:?}"),
            }
        }
        assert!(s.next().await.is_none());
    }

    #[tokio::test]
    async fn an_event_of_a_quiet_watch_is_handed_over_at_once_not_held_for_a_batch() {
        let inner = futures::stream::iter([added(0)])
            .chain(futures::stream::pending())
            .boxed();
        let mut s = read_ahead(inner);
        let first = tokio::time::timeout(std::time::Duration::from_secs(5), s.next())
            .await
            .expect("the lone event arrives without more behind it");
        assert!(matches!(first, Some((_, Ok(RawEvent::Added(_))))));
    }

    /// Marks when the stream it wraps is dropped.
    struct Dropped(Arc<AtomicBool>);

    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn dropping_the_reader_drops_a_silent_watch() {
        let dropped = Arc::new(AtomicBool::new(false));
        let guard = Dropped(dropped.clone());
        // One event, then silence forever (a quiet watch).
        let inner = futures::stream::iter([added(0)])
            .chain(futures::stream::pending())
            .map(move |e| {
                let _ = &guard;
                e
            })
            .boxed();
        let mut s = read_ahead(inner);
        assert!(matches!(s.next().await, Some((_, Ok(RawEvent::Added(_))))));
        drop(s);
        tokio::time::timeout(std::time::Duration::from_secs(10), async {
            while !dropped.load(Ordering::SeqCst) {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the watch is dropped once its reader is");
    }
}
