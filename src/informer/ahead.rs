//! Reading a watch ahead of the informer: a task of its own polls the stream — which is
//! where each line is parsed — and hands the events over a bounded channel, in order.
//!
//! The informer's loop (transform, cache, diff, handlers) and the parse of the next watch
//! lines then run on two cores at once. The channel bounds how far the reader gets ahead
//! (a full channel stops it reading, which is the backpressure on the API server's stream);
//! dropping the returned stream ends the task and closes the watch.
//!
//! The readers run on threads of their own ([`readers`]), not on the agent's runtime. There,
//! a task woken by another task runs next on the waker's worker, and cannot be stolen from
//! that slot: under a steady stream the informer, taking an event, wakes its reader waiting
//! for room, and the two then take turns on one core while the other idles. That is what
//! happened whenever nothing else woke on the informer's worker (measured with the Kafka
//! sink, whose deliveries wake its driver from librdkafka's thread: the reader ran on the
//! informer's thread 94 % of the time, against 2 % with the blackhole sink, and the pipeline
//! ran at half the speed).

use std::sync::OnceLock;

use futures::StreamExt;
use tokio::runtime::{Builder, Runtime};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::api::EventStream;

/// Events parsed ahead of the informer at most (a few hundred KB of objects).
const AHEAD: usize = 64;

/// The runtime every read-ahead task runs on: half the cores' worth of threads (at least
/// one), shared by all informers, started on first use and kept for the process's life.
fn readers() -> &'static Runtime {
    static READERS: OnceLock<Runtime> = OnceLock::new();
    READERS.get_or_init(|| {
        let threads = std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1));
        Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("watch-reader")
            .enable_all()
            .build()
            .expect("the watch readers' runtime starts")
    })
}

/// `stream`, polled by a task of its own `AHEAD` events ahead of its reader.
pub(super) fn read_ahead(mut stream: EventStream) -> EventStream {
    let (tx, rx) = mpsc::channel(AHEAD);
    readers().spawn(async move {
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_watch_is_parsed_on_the_readers_threads_not_the_agents_workers() {
        // Where each line would be parsed: the thread that polls the stream.
        let items: Vec<_> = (0..200).map(added).collect();
        let pollers = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
        let seen = pollers.clone();
        let inner = futures::stream::iter(items)
            .map(move |e| {
                let name = std::thread::current().name().unwrap_or("").to_string();
                seen.lock().unwrap().insert(name);
                e
            })
            .boxed();
        let mut s = read_ahead(inner);
        let mut n = 0;
        while s.next().await.is_some() {
            n += 1;
        }
        assert_eq!(n, 200);
        let pollers = pollers.lock().unwrap().clone();
        assert_eq!(
            pollers,
            ["watch-reader".to_string()].into(),
            "the stream was polled on {pollers:?}, not only on the readers' runtime"
        );
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
