//! A sink's bounded queue, which coalesces changes of one object when it is full.
//!
//! While there is room, every change is queued as it is, so a healthy sink sees every
//! intermediate state. When the queue is full (the sink is slow or down), a change of an object
//! that already waits in the queue is merged into that waiting entry: the sink will get one
//! event whose patch goes from the state it last received to the newest one. Memory then stays
//! bounded by the number of objects, not the number of changes, and the informers keep
//! running. A change of an object with nothing queued waits for room (backpressure).
//!
//! Each entry carries the acknowledgement tokens of every change it stands for (merged entries
//! keep all of theirs), so the tracker hears about each change once the entry is done.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::delivery::AckToken;
use crate::event::Envelope;
use crate::event::coalesce::{Merged, merge};

/// One queued entry.
#[derive(Debug)]
pub struct Slot {
    /// What the sink delivers (possibly several changes merged into one).
    pub deliver: Arc<Envelope>,
    /// The acknowledgement tokens of every change this entry stands for (none for events
    /// queued outside a pipeline, e.g. by tests).
    pub tokens: Vec<AckToken>,
}

/// Which queued entries may merge: changes of one object from one informer.
type ObjectKey = (Arc<str>, String);

#[derive(Debug, Default)]
struct State {
    /// The entries, oldest first, each with its sequence number and object.
    slots: VecDeque<(u64, ObjectKey, Slot)>,
    /// Sequence number of the first slot in `slots`.
    next_seq: u64,
    /// Per object: the sequence number of its newest queued slot.
    newest: HashMap<ObjectKey, u64>,
    /// Sequence number of the first slot whose trees were not yet let go of (with
    /// [`SinkQueue::releasing_trees`]).
    unreleased: u64,
    /// No more pushes.
    closed: bool,
}

/// Pushed into a closed queue.
#[derive(Debug, thiserror::Error)]
#[error("sink queue closed")]
pub struct Closed;

/// The queue between the router and one sink's driver.
#[derive(Debug)]
pub struct SinkQueue {
    capacity: usize,
    /// Let go of queued envelopes' trees as soon as nothing else holds them.
    release_trees: bool,
    state: Mutex<State>,
    readable: Notify,
    writable: Notify,
    coalesced: AtomicU64,
}

impl SinkQueue {
    /// A queue that holds `capacity` entries before it starts coalescing.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            release_trees: false,
            state: Mutex::new(State::default()),
            readable: Notify::new(),
            writable: Notify::new(),
            coalesced: AtomicU64::new(0),
        }
    }

    /// For a sink that reads only its events' JSON ([`crate::sinks::Sink::reads_trees`]):
    /// each push lets go of the object trees of the entries queued before it, as far as
    /// they are no longer shared ([`Envelope::release_trees`]).
    ///
    /// Why at push: a slow or unreachable sink (Kafka waits for the broker's
    /// acknowledgement of one batch before it takes the next; an outage stops it) leaves
    /// up to `queueCapacity` events queued, and a Pod's tree is several times its JSON. A
    /// Kafka agent whose broker was down held a full queue (10,000 events, most of them
    /// updates) in 769 MB before, in 410 MB after (`bench/outage-rss.sh`). Freeing a tree
    /// one push after it was made, while it is still in the core's cache, also costs about
    /// half what freeing it in the driver did (in `perf`), though the benchmark's
    /// throughput did not move with it.
    pub fn releasing_trees(mut self, release: bool) -> Self {
        self.release_trees = release;
        self
    }

    /// Entries waiting.
    pub fn len(&self) -> usize {
        self.state.lock().expect("queue lock").slots.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Changes merged into an earlier queued change of the same object so far.
    pub fn coalesced(&self) -> u64 {
        self.coalesced.load(Ordering::Relaxed)
    }

    /// Queues `event` without an acknowledgement token: appended when there is room, merged
    /// into the object's queued entry when full, else waits for room.
    pub async fn push(&self, event: Arc<Envelope>) -> Result<(), Closed> {
        self.push_with(event, None).await
    }

    /// Queues `deliver` (what this sink gets, possibly reshaped by a route) with the token
    /// that acknowledges the change once the entry is done. Fails at once when the queue is
    /// closed, also while waiting for room; the token is then dropped unacknowledged.
    pub async fn push_with(
        &self,
        deliver: Arc<Envelope>,
        token: Option<AckToken>,
    ) -> Result<(), Closed> {
        let event = deliver;
        let key: ObjectKey = (event.source.clone(), event.uid.clone());
        let mut token = token;
        loop {
            let writable = self.writable.notified();
            {
                let mut st = self.state.lock().expect("queue lock");
                if st.closed {
                    return Err(Closed);
                }
                if st.slots.len() < self.capacity {
                    if self.release_trees {
                        release_queued_trees(&mut st);
                    }
                    let seq = st.next_seq + st.slots.len() as u64;
                    st.newest.insert(key.clone(), seq);
                    st.slots.push_back((
                        seq,
                        key,
                        Slot {
                            deliver: event,
                            tokens: token.take().into_iter().collect(),
                        },
                    ));
                    drop(st);
                    self.readable.notify_one();
                    return Ok(());
                }
                if let Some(&seq) = st.newest.get(&key) {
                    let index = (seq - st.next_seq) as usize;
                    let (_, _, slot) = &mut st.slots[index];
                    slot.deliver = match merge(&slot.deliver, &event) {
                        Merged::Into(e) => e,
                        Merged::Keep => event,
                    };
                    slot.tokens.extend(token.take());
                    self.coalesced.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
            }
            writable.await;
        }
    }

    /// Takes up to `max` entries, waiting up to `max_wait` after the first for more;
    /// `None` once the queue is closed and empty.
    pub async fn pop_batch(
        &self,
        max: usize,
        max_bytes: usize,
        max_wait: Duration,
    ) -> Option<Vec<Slot>> {
        let mut batch: Vec<Slot> = Vec::new();
        let mut bytes = 0usize;
        let deadline = tokio::time::Instant::now() + max_wait;
        loop {
            let readable = self.readable.notified();
            {
                let mut st = self.state.lock().expect("queue lock");
                while batch.len() < max.max(1) {
                    let size = match st.slots.front() {
                        // Without a byte bound the envelope is not encoded here, under the
                        // lock the informer pushes through, but by the sink.
                        Some(_) if max_bytes == usize::MAX => 0,
                        Some((_, _, s)) => s.deliver.to_json().len(),
                        None => break,
                    };
                    if !batch.is_empty() && bytes + size > max_bytes {
                        return Some(finish(st, batch, &self.writable));
                    }
                    let (seq, key, slot) = st.slots.pop_front().expect("front exists");
                    st.next_seq = seq + 1;
                    if st.newest.get(&key) == Some(&seq) {
                        st.newest.remove(&key);
                    }
                    bytes += size;
                    batch.push(slot);
                }
                let full = batch.len() >= max.max(1);
                if full || (!batch.is_empty() && max_wait.is_zero()) {
                    return Some(finish(st, batch, &self.writable));
                }
                if st.closed {
                    return if batch.is_empty() {
                        None
                    } else {
                        Some(finish(st, batch, &self.writable))
                    };
                }
            }
            if batch.is_empty() {
                readable.await;
            } else if tokio::time::timeout_at(deadline, readable).await.is_err() {
                let st = self.state.lock().expect("queue lock");
                return Some(finish(st, batch, &self.writable));
            }
        }
    }

    /// True once [`SinkQueue::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.state.lock().expect("queue lock").closed
    }

    /// No more pushes (waiting pushers return [`Closed`] at once); the driver drains what is
    /// queued.
    pub fn close(&self) {
        self.state.lock().expect("queue lock").closed = true;
        self.readable.notify_waiters();
        self.readable.notify_one();
        self.writable.notify_waiters();
    }
}

/// Lets go of the trees of queued entries from the first not yet released on, stopping at
/// the first one still shared (its push has not returned yet, or it is queued for other
/// sinks too: their drivers release it).
fn release_queued_trees(st: &mut State) {
    let start = st.unreleased.max(st.next_seq);
    let first = (start - st.next_seq) as usize;
    let mut done = start;
    for (seq, _, slot) in st.slots.range_mut(first..) {
        if Arc::get_mut(&mut slot.deliver).is_none() {
            break;
        }
        Envelope::release_trees(&mut slot.deliver);
        done = *seq + 1;
    }
    st.unreleased = done;
}

fn finish(st: std::sync::MutexGuard<'_, State>, batch: Vec<Slot>, writable: &Notify) -> Vec<Slot> {
    drop(st);
    writable.notify_waiters();
    batch
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use serde_json::{Value, json};

    use super::*;
    use crate::event::{Doc, EnvelopeBuilder, Op, diff};

    fn builder() -> EnvelopeBuilder {
        EnvelopeBuilder::test_configmaps()
    }

    fn obj(uid: &str, v: u32) -> Arc<Value> {
        Arc::new(
            json!({"metadata": {"name": uid, "uid": uid, "resourceVersion": v.to_string()},
            "data": {"v": v}}),
        )
    }

    fn update(uid: &str, from: u32, to: u32) -> Arc<Envelope> {
        let patch = diff::diff(&obj(uid, from), &obj(uid, to));
        Arc::new(builder().build(
            Op::Update,
            obj(uid, to),
            Some(obj(uid, from)),
            Some(patch),
            Instant::now(),
        ))
    }

    #[tokio::test]
    async fn a_full_queue_coalesces_changes_of_queued_objects() {
        let q = SinkQueue::new(2);
        q.push(update("a", 1, 2)).await.unwrap();
        q.push(update("b", 1, 2)).await.unwrap();
        for v in 3..50 {
            q.push(update("a", v - 1, v)).await.unwrap();
        }
        assert_eq!(q.len(), 2, "memory bounded by objects, not changes");
        assert_eq!(q.coalesced(), 47);
        let batch = q.pop_batch(10, usize::MAX, Duration::ZERO).await.unwrap();
        let a = &batch[0].deliver;
        assert_eq!(
            replayed(&obj("a", 1), a),
            *obj("a", 49),
            "one patch from the last delivered state to the newest"
        );
        assert_eq!(a.resource_version, "49");
        assert_eq!(batch[1].deliver.uid, "b");
    }

    /// `base` with `e`'s patch applied.
    fn replayed(base: &Value, e: &Envelope) -> Value {
        let mut doc = base.clone();
        json_patch::patch(&mut doc, e.patch.as_ref().expect("an update")).unwrap();
        doc
    }

    /// An update as the informer makes it: both states known as JSON too, so their trees
    /// can go.
    fn encoded_update(uid: &str, from: u32, to: u32) -> Arc<Envelope> {
        let doc = |v| {
            let o = obj(uid, v);
            Doc::with_json(o.clone(), serde_json::to_vec(&*o).unwrap().into())
        };
        let patch = diff::diff(&obj(uid, from), &obj(uid, to));
        Arc::new(builder().build_doc(
            Op::Update,
            doc(to),
            Some(doc(from)),
            Some(patch),
            Instant::now(),
        ))
    }

    fn trees(slot: &Slot) -> (bool, bool) {
        let e = &slot.deliver;
        (e.object.has_tree(), e.old.as_ref().unwrap().has_tree())
    }

    #[tokio::test]
    async fn a_queue_for_json_only_sinks_lets_go_of_trees_queued_before_each_push() {
        let q = SinkQueue::new(10).releasing_trees(true);
        let a = encoded_update("a", 1, 2);
        let json = a.to_json().clone();
        q.push(a).await.unwrap();
        // Still shared with whoever pushed it (the router, another sink's queue): kept.
        let shared = encoded_update("b", 1, 2);
        q.push(shared.clone()).await.unwrap();
        q.push(encoded_update("c", 1, 2)).await.unwrap();
        let batch = q.pop_batch(10, usize::MAX, Duration::ZERO).await.unwrap();
        let kept: Vec<_> = batch.iter().map(trees).collect();
        assert_eq!(
            kept,
            [(false, false), (true, true), (true, true)],
            "a released; b shared, so b and everything after it wait for the driver"
        );
        assert_eq!(batch[0].deliver.to_json(), &json, "the JSON is what it was");
        assert_eq!(
            batch[0].deliver.object["data"]["v"], 2,
            "and the tree decodes again"
        );
    }

    /// An outage fills the queue; later changes merge into entries whose trees are gone.
    #[tokio::test]
    async fn a_full_queue_for_json_only_sinks_coalesces_into_released_entries() {
        let q = SinkQueue::new(2).releasing_trees(true);
        q.push(encoded_update("a", 1, 2)).await.unwrap();
        q.push(encoded_update("b", 1, 2)).await.unwrap();
        for v in 3..10 {
            q.push(encoded_update("a", v - 1, v)).await.unwrap();
        }
        assert_eq!(q.coalesced(), 7);
        let batch = q.pop_batch(10, usize::MAX, Duration::ZERO).await.unwrap();
        let a = &batch[0].deliver;
        assert_eq!(
            replayed(&obj("a", 1), a),
            *obj("a", 9),
            "one patch from the released base to the newest"
        );
        let json: Value = serde_json::from_slice(a.to_json()).unwrap();
        assert_eq!(json["object"], *obj("a", 9));
        assert_eq!(
            json["patch"],
            serde_json::to_value(a.patch.as_ref().unwrap()).unwrap()
        );
    }

    #[tokio::test]
    async fn a_queue_for_sinks_that_read_trees_keeps_them() {
        let q = SinkQueue::new(10);
        q.push(encoded_update("a", 1, 2)).await.unwrap();
        q.push(encoded_update("b", 1, 2)).await.unwrap();
        let batch = q.pop_batch(10, usize::MAX, Duration::ZERO).await.unwrap();
        assert_eq!(trees(&batch[0]), (true, true));
    }

    #[tokio::test]
    async fn a_full_queue_makes_a_new_object_wait_for_room() {
        let q = Arc::new(SinkQueue::new(1));
        q.push(update("a", 1, 2)).await.unwrap();
        let pusher = {
            let q = q.clone();
            tokio::spawn(async move { q.push(update("b", 1, 2)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !pusher.is_finished(),
            "b waits: nothing of b is queued to merge into"
        );
        let first = q.pop_batch(1, usize::MAX, Duration::ZERO).await.unwrap();
        assert_eq!(first[0].deliver.uid, "a");
        pusher.await.unwrap().unwrap();
        let second = q.pop_batch(1, usize::MAX, Duration::ZERO).await.unwrap();
        assert_eq!(second[0].deliver.uid, "b");
    }

    #[tokio::test]
    async fn batches_respect_count_bytes_and_wait() {
        let q = Arc::new(SinkQueue::new(100));
        for i in 0..5 {
            q.push(update(&format!("o{i}"), 1, 2)).await.unwrap();
        }
        let size = q.state.lock().unwrap().slots[0].2.deliver.to_json().len();
        assert_eq!(
            q.pop_batch(2, usize::MAX, Duration::ZERO)
                .await
                .unwrap()
                .len(),
            2
        );
        assert_eq!(
            q.pop_batch(10, size * 2, Duration::ZERO)
                .await
                .unwrap()
                .len(),
            2
        );
        let late = {
            let q = q.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                q.push(update("late", 1, 2)).await.unwrap();
            })
        };
        let waited = q
            .pop_batch(10, usize::MAX, Duration::from_millis(300))
            .await
            .unwrap();
        late.await.unwrap();
        assert!(!waited.is_empty());
        q.close();
        let mut rest = waited.len();
        while let Some(b) = q.pop_batch(10, usize::MAX, Duration::ZERO).await {
            rest += b.len();
        }
        assert_eq!(rest, 2, "close drains what is queued, then ends");
        assert!(q.push(update("x", 1, 2)).await.is_err());
    }

    fn tokens(t: &crate::delivery::Tracker, e: &Envelope) -> Option<AckToken> {
        let id = crate::delivery::ObjectId::of(e);
        t.register(&id, Some(&e.object), &e.uid, || json!({}), &[0])
            .pop()
    }

    #[tokio::test]
    async fn a_merged_entry_keeps_the_tokens_of_every_change_it_stands_for() {
        let tracker = crate::delivery::Tracker::new(1, None);
        let q = SinkQueue::new(1);
        for v in 2..6 {
            let e = update("a", v - 1, v);
            let token = tokens(&tracker, &e);
            q.push_with(e, token).await.unwrap();
        }
        let batch = q.pop_batch(10, usize::MAX, Duration::ZERO).await.unwrap();
        assert_eq!(batch.len(), 1);
        assert_eq!(batch[0].tokens.len(), 4, "one token per merged change");
        let id = crate::delivery::ObjectId::of(&batch[0].deliver);
        assert_eq!(tracker.owed(&id, 0), 4);
        for t in batch.into_iter().flat_map(|s| s.tokens) {
            tracker.ack(t);
        }
        assert_eq!(tracker.pending(), 0);
    }

    #[tokio::test]
    async fn an_add_then_a_delete_is_the_delete_with_both_tokens() {
        let tracker = crate::delivery::Tracker::new(1, None);
        let q = SinkQueue::new(1);
        let add = Arc::new(builder().build(Op::Add, obj("a", 1), None, None, Instant::now()));
        let del = Arc::new(builder().build(Op::Delete, obj("a", 1), None, None, Instant::now()));
        for e in [add, del] {
            let token = tokens(&tracker, &e);
            q.push_with(e, token).await.unwrap();
        }
        let batch = q.pop_batch(10, usize::MAX, Duration::ZERO).await.unwrap();
        assert_eq!(
            batch[0].deliver.op,
            Op::Delete,
            "the sink may hold the object from before a crash: it must hear it is gone"
        );
        assert_eq!(batch[0].tokens.len(), 2, "two changes to acknowledge");
    }

    #[tokio::test]
    async fn closing_the_queue_releases_a_pusher_waiting_for_room() {
        let q = Arc::new(SinkQueue::new(1));
        q.push(update("a", 1, 2)).await.unwrap();
        let pusher = {
            let q = q.clone();
            tokio::spawn(async move { q.push(update("b", 1, 2)).await })
        };
        tokio::task::yield_now().await;
        assert!(!pusher.is_finished(), "waits for room");
        q.close();
        let result = tokio::time::timeout(Duration::from_secs(5), pusher)
            .await
            .expect("released at once")
            .unwrap();
        assert!(result.is_err(), "closed: not queued");
        assert!(q.is_closed());
        assert_eq!(q.len(), 1, "what was queued stays for the driver to drain");
    }
}
