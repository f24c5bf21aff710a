//! A sink's bounded queue, which coalesces changes of one object when it is full.
//!
//! While there is room, every change is queued as it is, so a healthy sink sees every
//! intermediate state. When the queue is full (the sink is slow or down), a change of an object
//! that already waits in the queue is merged into that waiting entry: the sink will get one
//! event whose patch goes from the state it last received to the newest one. Memory then stays
//! bounded by the number of objects, not the number of changes, and the informers keep
//! running. A change of an object with nothing queued waits for room (backpressure).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::event::Envelope;
use crate::event::coalesce::{Merged, merge};

/// One queued entry.
#[derive(Debug)]
pub struct Slot {
    /// What the sink delivers; `None` when coalescing cancelled the change out (an add and a
    /// delete of an object the sink never saw).
    pub deliver: Option<Arc<Envelope>>,
    /// The original event this entry acknowledges when delivered (the newest one merged in).
    pub ack: Arc<Envelope>,
}

#[derive(Debug, Default)]
struct State {
    slots: VecDeque<(u64, Slot)>,
    /// Sequence number of the first slot in `slots`.
    next_seq: u64,
    /// Per object uid: the sequence number of its newest queued slot.
    newest: HashMap<String, u64>,
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
            state: Mutex::new(State::default()),
            readable: Notify::new(),
            writable: Notify::new(),
            coalesced: AtomicU64::new(0),
        }
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

    /// Queues `event`: appended when there is room, merged into the object's queued entry
    /// when full, else waits for room.
    pub async fn push(&self, event: Arc<Envelope>) -> Result<(), Closed> {
        self.push_as(event.clone(), event).await
    }

    /// Queues `deliver` (what this sink gets, possibly reshaped by a route) acknowledging
    /// `ack` (the original change) once delivered.
    pub async fn push_as(&self, deliver: Arc<Envelope>, ack: Arc<Envelope>) -> Result<(), Closed> {
        let event = deliver;
        loop {
            let writable = self.writable.notified();
            {
                let mut st = self.state.lock().expect("queue lock");
                if st.closed {
                    return Err(Closed);
                }
                if st.slots.len() < self.capacity {
                    let seq = st.next_seq + st.slots.len() as u64;
                    st.newest.insert(event.uid.clone(), seq);
                    st.slots.push_back((
                        seq,
                        Slot {
                            deliver: Some(event.clone()),
                            ack: ack.clone(),
                        },
                    ));
                    drop(st);
                    self.readable.notify_one();
                    return Ok(());
                }
                if let Some(&seq) = st.newest.get(&event.uid) {
                    let index = (seq - st.next_seq) as usize;
                    let (_, slot) = &mut st.slots[index];
                    slot.deliver = match merge(slot.deliver.as_ref(), &event) {
                        Merged::Into(e) => Some(Arc::new(e)),
                        Merged::Keep => Some(event.clone()),
                        Merged::Cancelled => None,
                    };
                    slot.ack = ack.clone();
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
                        Some((_, s)) => s.deliver.as_ref().map_or(0, |e| e.to_json().len()),
                        None => break,
                    };
                    if !batch.is_empty() && bytes + size > max_bytes {
                        return Some(finish(st, batch, &self.writable));
                    }
                    let (seq, slot) = st.slots.pop_front().expect("front exists");
                    st.next_seq = seq + 1;
                    if st.newest.get(&slot.ack.uid) == Some(&seq) {
                        st.newest.remove(&slot.ack.uid);
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

    /// No more pushes; the driver drains what is queued.
    pub fn close(&self) {
        self.state.lock().expect("queue lock").closed = true;
        self.readable.notify_waiters();
        self.readable.notify_one();
        self.writable.notify_waiters();
    }
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
    use crate::event::{EnvelopeBuilder, Op, diff};

    fn builder() -> EnvelopeBuilder {
        EnvelopeBuilder {
            cluster: "c".into(),
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            plural: "configmaps".into(),
            source: "v1/ConfigMap".into(),
            include_old: false,
        }
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
        let a = batch[0].deliver.as_ref().unwrap();
        let mut doc = (*obj("a", 1)).clone();
        json_patch::patch(&mut doc, a.patch.as_ref().unwrap()).unwrap();
        assert_eq!(
            doc,
            *obj("a", 49),
            "one patch from the last delivered state to the newest"
        );
        assert_eq!(batch[0].ack.resource_version, "49");
        assert_eq!(batch[1].ack.uid, "b");
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
        assert_eq!(first[0].ack.uid, "a");
        pusher.await.unwrap().unwrap();
        let second = q.pop_batch(1, usize::MAX, Duration::ZERO).await.unwrap();
        assert_eq!(second[0].ack.uid, "b");
    }

    #[tokio::test]
    async fn batches_respect_count_bytes_and_wait() {
        let q = Arc::new(SinkQueue::new(100));
        for i in 0..5 {
            q.push(update(&format!("o{i}"), 1, 2)).await.unwrap();
        }
        let size = q.state.lock().unwrap().slots[0]
            .1
            .deliver
            .as_ref()
            .unwrap()
            .to_json()
            .len();
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
        assert!(waited.len() >= 1);
        q.close();
        let mut rest = waited.len();
        while let Some(b) = q.pop_batch(10, usize::MAX, Duration::ZERO).await {
            rest += b.len();
        }
        assert_eq!(rest, 2, "close drains what is queued, then ends");
        assert!(q.push(update("x", 1, 2)).await.is_err());
    }
}
