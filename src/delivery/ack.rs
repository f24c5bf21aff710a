//! The acknowledgement tracker.
//!
//! Per object and per sink it counts the changes the sink still owes (routed to it, not yet
//! acknowledged). A sink's *base* — what it is known to hold of an object, and what a restart
//! compares the cluster with for that sink — moves only when the sink owes nothing more of that
//! object, and then to the object's newest state:
//!
//! - a change routed to a sink is part of its base only once the sink acknowledged it and
//!   every earlier change of the object routed to it;
//! - a change not routed to a sink (filtered out, or routed nowhere at all) counts for that
//!   sink only in its turn: immediately when the sink owes nothing of the object, else together
//!   with the sink's last owed change. It never moves a base past a change still owed.
//!
//! Bases are kept per sink, not as one watermark per object: with routes, sinks hold different
//! states of one object (a file sink got the newest state, a webhook that was down still owes an
//! older change), and a single watermark would either lose the webhook's change or, for the
//! file sink, lose a later revert (a change undone while the agent was down compares equal to
//! the watermark and is never sent).
//!
//! Before a sink may receive a change of an object it did not owe anything of, the tracker
//! records an *in-flight marker* for (sink, object), and the sink's driver waits until it is on
//! disk ([`Tracker::recorded`]). A crash between delivery and acknowledgement then leaves the
//! marker, and the next start re-sends the object's current state to that sink even when the
//! comparison with its base shows no change (a delete made meanwhile is sent too): the sink
//! may get a change twice, never zero times.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::{mpsc, watch};

use crate::event::{Doc, Envelope};
use crate::sinks::{AckObserver, Slot};
use crate::state::{Recorder, StateOp};

/// One object as the delivered-state store files it: its informer and `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectId {
    /// The informer key (an envelope's `source`).
    pub source: Arc<str>,
    /// `namespace/name`, or `name` for cluster-scoped objects.
    pub key: Arc<str>,
}

impl ObjectId {
    /// The object an envelope is about.
    pub fn of(e: &Envelope) -> Self {
        Self {
            source: e.source.clone(),
            // The envelope's identity, not its object: reading the object could decode it.
            key: e.display_name().into(),
        }
    }
}

/// One sink's acknowledgement of one registered change. Travels in the sink queue's slot;
/// dropping it unacknowledged leaves the change owed (the next start re-sends it).
#[derive(Debug, Clone)]
pub struct AckToken {
    object: ObjectId,
    sink: usize,
    /// The in-flight marker this delivery depends on; 0 when nothing has to be on disk.
    needs: u64,
}

impl AckToken {
    /// The sink (its index in `sinks`) that acknowledges with this token.
    pub fn sink(&self) -> usize {
        self.sink
    }

    /// The object the change is about.
    pub fn object(&self) -> &ObjectId {
        &self.object
    }
}

/// What the tracker knows of one object while some sink owes a change of it.
#[derive(Debug)]
struct Entry {
    /// The newest registered state (`None`: deleted), as the store writes it; kept only
    /// when there is a store to write it to.
    latest: Option<Bytes>,
    /// Per sink: changes routed to it and not yet acknowledged.
    owed: Vec<u32>,
    /// Per sink, while it owes: the uids its in-flight marker names, each with the
    /// registration id that put it there (0 without a store).
    marker: Vec<Vec<(Arc<str>, u64)>>,
}

impl Entry {
    fn new(sinks: usize) -> Self {
        Self {
            latest: None,
            owed: vec![0; sinks],
            marker: vec![Vec::new(); sinks],
        }
    }

    fn settled(&self) -> bool {
        self.owed.iter().all(|&n| n == 0)
    }
}

#[derive(Debug)]
struct Inner {
    objects: HashMap<ObjectId, Entry>,
    /// The last registration id handed out; ids are allocated and sent to the state writer
    /// under this lock, so the writer sees them in order.
    last_reg: u64,
    /// The state writer; `None` without a state directory.
    tx: Option<mpsc::UnboundedSender<StateOp>>,
}

/// The one owner of acknowledgement (see the module docs).
#[derive(Debug)]
pub struct Tracker {
    sinks: usize,
    inner: Mutex<Inner>,
    /// The highest registration id the store has committed.
    durable: Option<watch::Receiver<u64>>,
}

impl Tracker {
    /// A tracker over `sinks` sinks, recording into `recorder` (the state writer) when given.
    pub fn new(sinks: usize, recorder: Option<Recorder>) -> Self {
        let (tx, durable) = match recorder {
            Some(r) => (Some(r.tx), Some(r.durable)),
            None => (None, None),
        };
        Self {
            sinks,
            inner: Mutex::new(Inner {
                objects: HashMap::new(),
                last_reg: 0,
                tx,
            }),
            durable,
        }
    }

    /// Registers a change of `object` whose state is `state` (`None`: deleted), routed to
    /// `targets` (sink indices; a sink may appear more than once, one token each; empty when
    /// routed nowhere). `uid` and `identity` (the object's identity, for a re-sent delete) name
    /// the object in in-flight markers. Returns one token per target, in order.
    ///
    /// Only the state's JSON is kept, and only with a store: a tree held here until every
    /// sink acknowledged would keep each in-flight object's tree alive, and the store writes
    /// JSON anyway.
    pub fn register(
        &self,
        object: &ObjectId,
        state: Option<&Doc>,
        uid: &str,
        identity: impl Fn() -> Value,
        targets: &[usize],
    ) -> Vec<AckToken> {
        // Encoded (when the state has no JSON yet) before the lock, which the drivers'
        // acknowledgements take too.
        let state = self
            .durable
            .as_ref()
            .and_then(|_| state.map(|d| d.json().clone()));
        let mut inner = self.inner.lock().expect("tracker lock");
        let Inner {
            objects,
            last_reg,
            tx,
        } = &mut *inner;
        let entry = objects
            .entry(object.clone())
            .or_insert_with(|| Entry::new(self.sinks));
        entry.latest = state;
        let mut tokens = Vec::with_capacity(targets.len());
        for &sink in targets {
            if entry.owed[sink] == 0 {
                entry.marker[sink].clear();
            }
            let marked = entry.marker[sink].iter().find(|(u, _)| **u == *uid);
            let needs = match marked {
                Some((_, reg)) => *reg,
                None => {
                    let reg = match tx {
                        Some(tx) => {
                            *last_reg += 1;
                            let _ = tx.send(StateOp::Owing {
                                reg: *last_reg,
                                sink,
                                source: object.source.clone(),
                                key: object.key.clone(),
                                identity: Arc::new(identity()),
                            });
                            *last_reg
                        }
                        None => 0,
                    };
                    entry.marker[sink].push((uid.into(), reg));
                    reg
                }
            };
            entry.owed[sink] += 1;
            tokens.push(AckToken {
                object: object.clone(),
                sink,
                needs,
            });
        }
        // Sinks that owe nothing of this object hold, as far as their routes are concerned,
        // its newest state: the change was judged for them and not sent.
        if let Some(tx) = tx {
            for sink in 0..self.sinks {
                if entry.owed[sink] == 0 {
                    let _ = tx.send(StateOp::Base {
                        sink,
                        source: object.source.clone(),
                        key: object.key.clone(),
                        state: entry.latest.clone(),
                    });
                }
            }
        }
        if entry.settled() {
            objects.remove(object);
        }
        tokens
    }

    /// One sink has one change: delivered, or rejected for good and dead-lettered.
    pub fn ack(&self, token: AckToken) {
        let mut inner = self.inner.lock().expect("tracker lock");
        let Inner { objects, tx, .. } = &mut *inner;
        let Some(entry) = objects.get_mut(&token.object) else {
            tracing::error!(object = %token.object.key, "acknowledgement of an unregistered change");
            return;
        };
        let owed = &mut entry.owed[token.sink];
        *owed = owed.saturating_sub(1);
        if *owed == 0 {
            entry.marker[token.sink].clear();
            if let Some(tx) = tx {
                let _ = tx.send(StateOp::Base {
                    sink: token.sink,
                    source: token.object.source.clone(),
                    key: token.object.key.clone(),
                    state: entry.latest.clone(),
                });
            }
        }
        if entry.settled() {
            objects.remove(&token.object);
        }
    }

    /// Resolves once every in-flight marker these tokens depend on is on disk, so the sink
    /// may receive their changes. Immediate without a state directory.
    pub async fn recorded<'a>(&self, tokens: impl IntoIterator<Item = &'a AckToken>) {
        let needs = tokens.into_iter().map(|t| t.needs).max().unwrap_or(0);
        if needs == 0 {
            return;
        }
        if let Some(durable) = &self.durable {
            let mut durable = durable.clone();
            // The writer gone means shutdown: nothing to wait for any more.
            let _ = durable.wait_for(|&d| d >= needs).await;
        }
    }

    /// Objects with a change some sink still owes.
    pub fn pending(&self) -> usize {
        self.inner.lock().expect("tracker lock").objects.len()
    }

    /// How many changes of `object` sink `sink` still owes.
    pub fn owed(&self, object: &ObjectId, sink: usize) -> u32 {
        let inner = self.inner.lock().expect("tracker lock");
        inner.objects.get(object).map_or(0, |e| e.owed[sink])
    }
}

/// The drivers hand their finished slots to the tracker: it is their only observer.
impl AckObserver for Tracker {
    fn recorded<'a>(&'a self, slots: &'a [Slot]) -> futures::future::BoxFuture<'a, ()> {
        Box::pin(Tracker::recorded(
            self,
            slots.iter().flat_map(|s| &s.tokens),
        ))
    }

    fn delivered(&self, slot: Slot) {
        for token in slot.tokens {
            self.ack(token);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A tracker over `sinks` sinks whose state writes land in a channel, and whose markers
    /// become durable when the test says so.
    fn tracker(
        sinks: usize,
    ) -> (
        Tracker,
        mpsc::UnboundedReceiver<StateOp>,
        watch::Sender<u64>,
    ) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (durable_tx, durable) = watch::channel(0);
        (
            Tracker::new(sinks, Some(Recorder { tx, durable })),
            rx,
            durable_tx,
        )
    }

    fn id(key: &str) -> ObjectId {
        ObjectId {
            source: "v1/ConfigMap".into(),
            key: key.into(),
        }
    }

    fn state(v: u32) -> Option<Arc<Doc>> {
        Some(Doc::new(Arc::new(
            json!({"metadata": {"resourceVersion": v.to_string()}}),
        )))
    }

    fn register(t: &Tracker, key: &str, v: u32, targets: &[usize]) -> Vec<AckToken> {
        t.register(&id(key), state(v).as_deref(), "uid", || json!({}), targets)
    }

    /// The (sink, resourceVersion) base writes in the channel so far; `None` = deleted.
    fn bases(rx: &mut mpsc::UnboundedReceiver<StateOp>) -> Vec<(usize, Option<String>)> {
        let mut out = Vec::new();
        while let Ok(op) = rx.try_recv() {
            if let StateOp::Base { sink, state, .. } = op {
                out.push((
                    sink,
                    state.map(|s| {
                        serde_json::from_slice::<Value>(&s).unwrap()["metadata"]["resourceVersion"]
                            .as_str()
                            .unwrap()
                            .to_string()
                    }),
                ));
            }
        }
        out
    }

    fn rv(v: u32) -> Option<String> {
        Some(v.to_string())
    }

    #[test]
    fn acknowledgements_out_of_order_across_sinks_move_each_sink_only_past_what_it_has() {
        let (t, mut rx, _durable) = tracker(2);
        let first = register(&t, "a", 1, &[0, 1]);
        let second = register(&t, "a", 2, &[0, 1]);
        assert!(bases(&mut rx).is_empty(), "both sinks owe");
        // Sink 1 acknowledges both before sink 0 acknowledges anything.
        t.ack(first[1].clone());
        assert!(bases(&mut rx).is_empty(), "sink 1 still owes version 2");
        t.ack(second[1].clone());
        assert_eq!(bases(&mut rx), vec![(1, rv(2))]);
        // Sink 0 acknowledges the newer change first (another batch, a retry): still owed.
        t.ack(second[0].clone());
        assert!(bases(&mut rx).is_empty(), "sink 0 still owes version 1");
        t.ack(first[0].clone());
        assert_eq!(bases(&mut rx), vec![(0, rv(2))]);
        assert_eq!(t.pending(), 0, "nothing owed, nothing kept");
    }

    #[test]
    fn a_change_routed_nowhere_waits_behind_a_change_still_owed() {
        let (t, mut rx, _durable) = tracker(2);
        let owed = register(&t, "a", 1, &[0]);
        assert_eq!(
            bases(&mut rx),
            vec![(1, rv(1))],
            "sink 1 was not routed the change: judged, not owed"
        );
        // A later change routed nowhere: sink 1 (owes nothing) moves to it; sink 0 does not
        // move past its owed change.
        register(&t, "a", 2, &[]);
        assert_eq!(bases(&mut rx), vec![(1, rv(2))]);
        assert_eq!(t.owed(&id("a"), 0), 1);
        // In its turn: once sink 0 has version 1, it holds all it is owed, up to version 2.
        t.ack(owed[0].clone());
        assert_eq!(bases(&mut rx), vec![(0, rv(2))]);
    }

    #[test]
    fn a_change_routed_nowhere_with_nothing_owed_moves_every_sink_at_once() {
        let (t, mut rx, _durable) = tracker(3);
        assert!(register(&t, "a", 7, &[]).is_empty());
        assert_eq!(bases(&mut rx), vec![(0, rv(7)), (1, rv(7)), (2, rv(7))]);
        assert_eq!(t.pending(), 0);
    }

    #[test]
    fn a_coalesced_slot_acknowledges_every_change_it_merged() {
        let (t, mut rx, _durable) = tracker(1);
        // Three changes queued for sink 0, merged by its full queue into one slot that keeps
        // the three tokens.
        let slot: Vec<AckToken> = (1..=3).flat_map(|v| register(&t, "a", v, &[0])).collect();
        bases(&mut rx);
        let (last, rest) = slot.split_last().unwrap();
        for token in rest {
            t.ack(token.clone());
        }
        assert!(bases(&mut rx).is_empty(), "one token of the slot still out");
        t.ack(last.clone());
        assert_eq!(bases(&mut rx), vec![(0, rv(3))]);
    }

    #[test]
    fn a_delete_becomes_the_base_of_the_sinks_that_acknowledged_it() {
        let (t, mut rx, _durable) = tracker(2);
        register(&t, "a", 1, &[0, 1])
            .into_iter()
            .for_each(|tok| t.ack(tok));
        bases(&mut rx);
        let tokens = t.register(&id("a"), None, "uid", || json!({}), &[0, 1]);
        t.ack(tokens[1].clone());
        assert_eq!(bases(&mut rx), vec![(1, None)]);
    }

    #[tokio::test]
    async fn a_sink_may_receive_a_change_only_once_its_in_flight_marker_is_on_disk() {
        let (t, mut rx, durable) = tracker(2);
        let first = register(&t, "a", 1, &[0, 1]);
        // A second change while sink 0 still owes: no new marker for it.
        let second = register(&t, "a", 2, &[0]);
        let markers: Vec<(u64, usize)> = std::iter::from_fn(|| rx.try_recv().ok())
            .filter_map(|op| match op {
                StateOp::Owing { reg, sink, .. } => Some((reg, sink)),
                _ => None,
            })
            .collect();
        assert_eq!(
            markers,
            vec![(1, 0), (2, 1)],
            "one marker per sink and owing period"
        );
        assert_eq!(second[0].needs, first[0].needs);
        let t = Arc::new(t);
        let waiter = {
            let t = t.clone();
            let tokens = first.clone();
            tokio::spawn(async move { t.recorded(&tokens).await })
        };
        tokio::task::yield_now().await;
        durable.send_replace(1);
        tokio::task::yield_now().await;
        assert!(
            !waiter.is_finished(),
            "sink 1's marker (2) is not on disk yet"
        );
        durable.send_replace(2);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("resolves once durable")
            .unwrap();
    }

    #[test]
    fn a_marker_names_every_incarnation_the_sink_may_hold() {
        let (t, mut rx, _durable) = tracker(1);
        t.register(
            &id("a"),
            state(1).as_deref(),
            "uid-1",
            || json!({"uid": 1}),
            &[0],
        );
        t.register(&id("a"), None, "uid-1", || json!({"uid": 1}), &[0]);
        t.register(
            &id("a"),
            state(3).as_deref(),
            "uid-2",
            || json!({"uid": 2}),
            &[0],
        );
        let named: Vec<Value> = std::iter::from_fn(|| rx.try_recv().ok())
            .filter_map(|op| match op {
                StateOp::Owing { identity, .. } => Some((*identity).clone()),
                _ => None,
            })
            .collect();
        assert_eq!(named, vec![json!({"uid": 1}), json!({"uid": 2})]);
    }

    #[test]
    fn without_a_store_nothing_is_recorded_and_nothing_waits() {
        let t = Tracker::new(1, None);
        let tokens = t.register(&id("a"), state(1).as_deref(), "u", || json!({}), &[0]);
        assert_eq!(tokens[0].needs, 0);
        assert_eq!(t.pending(), 1);
        t.ack(tokens[0].clone());
        assert_eq!(t.pending(), 0);
    }
}
