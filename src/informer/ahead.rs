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

/// Events parsed ahead of the informer at most (a few hundred KB of objects).
const AHEAD: usize = 64;

/// `stream`, polled by a task of its own `AHEAD` events ahead of its reader.
pub(super) fn read_ahead(mut stream: EventStream) -> EventStream {
    let (tx, rx) = mpsc::channel(AHEAD);
    tokio::spawn(async move {
        loop {
            let item = tokio::select! {
                // The reader is gone (the watch was abandoned): stop reading it.
                () = tx.closed() => return,
                item = stream.next() => item,
            };
            let Some(item) = item else { return };
            if tx.send(item).await.is_err() {
                return;
            }
        }
    });
    ReceiverStream::new(rx).boxed()
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
