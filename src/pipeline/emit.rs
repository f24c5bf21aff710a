//! From an informer callback to sink queues: envelope → router → tracker → one slot per sink.
//!
//! Handlers reach the forwarding machinery through a watched value (the *gate*): `Some` while
//! this replica forwards, `None` before (standby, start-up comparison pending) and after
//! (shutdown, lost lease). Nothing here holds a lock across an await: a handler waiting for
//! room in a full queue holds only its own `Arc`, and closing the queues releases it at once.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use json_patch::Patch;
use serde_json::{Value, json};
use tokio::sync::watch;
use tracing::debug;

use crate::delivery::{ObjectId, Tracker};
use crate::event::{Doc, Envelope, EnvelopeBuilder, Op, SnapshotMark};
use crate::informer::{ChangedBy, Gone, Handler};
use crate::router::Router;
use crate::server::Metrics;
use crate::sinks::util::SinkQueue;

/// Everything a change needs on its way to the sinks while this replica forwards.
pub(super) struct Forwarding {
    /// Which sinks, in which shape.
    pub(super) router: Arc<Router>,
    /// Who owes what; the only owner of acknowledgement.
    pub(super) tracker: Arc<Tracker>,
    /// One queue per sink, by sink index.
    pub(super) queues: Vec<Arc<SinkQueue>>,
}

impl Forwarding {
    /// Routes one live change and queues it for its sinks.
    pub(super) async fn dispatch(&self, event: Envelope) {
        let event = Arc::new(event);
        let targets = self.router.route(&event);
        let state = (event.op != Op::Delete).then_some(&*event.object);
        self.deliver(&ObjectId::of(&event), state, &event, targets)
            .await;
    }

    /// Registers one change of `object` — after which its state is `state` (`None`: gone) —
    /// with the tracker for every target, then queues each target's envelope with its token.
    /// `named` is an envelope of the change (its identity names the object in in-flight
    /// markers). A sink may appear several times in `targets` (a delete, then an add of the
    /// re-created object), in the order it must receive them.
    pub(super) async fn deliver(
        &self,
        object: &ObjectId,
        state: Option<&Doc>,
        named: &Envelope,
        targets: Vec<(usize, Arc<Envelope>)>,
    ) {
        let sinks: Vec<usize> = targets.iter().map(|(s, _)| *s).collect();
        let tokens = self
            .tracker
            .register(object, state, &named.uid, || identity(named), &sinks);
        for ((sink, deliver), token) in targets.into_iter().zip(tokens) {
            if self.queues[sink]
                .push_with(deliver, Some(token))
                .await
                .is_err()
            {
                // Shutting down or no longer leading: the change stays owed, and the next run
                // (or leader) sends it.
                debug!(sink, object = %object.key, "sink queue closed; change not queued");
            }
        }
    }
}

/// The object's identity as an object: what a delete re-sent after a crash carries when
/// nothing more of the object is known.
pub(super) fn identity(e: &Envelope) -> Value {
    let mut metadata = json!({
        "name": e.name,
        "uid": e.uid,
        "resourceVersion": e.resource_version,
    });
    if let Some(ns) = &e.namespace {
        metadata["namespace"] = json!(ns);
    }
    json!({"apiVersion": &*e.api_version, "kind": &*e.kind, "metadata": metadata})
}

/// When the change arrived from the API server: the watch event's arrival (before parsing),
/// else now (list pages, re-syncs).
fn arrival() -> Instant {
    crate::informer::arrival().unwrap_or_else(Instant::now)
}

/// Turns one informer's callbacks into envelopes and forwards them (when this replica does).
pub(super) struct EmitHandler {
    /// Builds this informer's envelopes.
    pub(super) builder: EnvelopeBuilder,
    /// `Some` while this replica forwards.
    pub(super) gate: watch::Receiver<Option<Arc<Forwarding>>>,
    /// Counts observed changes (forwarded or not).
    pub(super) metrics: Arc<Metrics>,
}

impl EmitHandler {
    async fn emit(&self, envelope: Envelope) {
        self.metrics.observed(&envelope.kind, envelope.op);
        // Cloned out of the watch so no lock is held while the queues make us wait.
        let forwarding = self.gate.borrow().clone();
        if let Some(f) = forwarding {
            f.dispatch(envelope).await;
        }
    }
}

#[async_trait]
impl Handler for EmitHandler {
    async fn on_add(&self, obj: &Arc<Doc>, initial_list: bool) {
        self.on_add_by(obj, initial_list, None).await;
    }

    async fn on_update(&self, old: &Arc<Doc>, new: &Arc<Doc>, patch: Patch) {
        self.on_update_by(old, new, patch, None).await;
    }

    async fn on_delete(&self, last_known: &Arc<Doc>, gone: Gone<'_>) {
        let e = match gone {
            Gone::Seen => {
                self.builder
                    .build_doc(Op::Delete, last_known.clone(), None, None, arrival())
            }
            Gone::Unseen { at } => {
                self.builder
                    .build_unseen_delete(last_known.clone(), at, arrival())
            }
        };
        self.emit(e).await;
    }

    /// A read goes through the router and the tracker like any change: it becomes a sink's
    /// delivered state only once that sink acknowledges it.
    async fn on_read(&self, obj: &Arc<Doc>, mark: SnapshotMark, initial_list: bool) {
        let mut e = self
            .builder
            .build_doc(Op::Add, obj.clone(), None, None, arrival());
        e.snapshot = Some(mark);
        e.initial_list = initial_list;
        self.emit(e).await;
    }

    async fn on_add_by(&self, obj: &Arc<Doc>, initial_list: bool, changed_by: ChangedBy) {
        let mut e = self
            .builder
            .build_doc(Op::Add, obj.clone(), None, None, arrival());
        e.initial_list = initial_list;
        e.changed_by = changed_by;
        self.emit(e).await;
    }

    async fn on_update_by(
        &self,
        old: &Arc<Doc>,
        new: &Arc<Doc>,
        patch: Patch,
        changed_by: ChangedBy,
    ) {
        let mut e = self.builder.build_doc(
            Op::Update,
            new.clone(),
            Some(old.clone()),
            Some(patch),
            arrival(),
        );
        e.changed_by = changed_by;
        self.emit(e).await;
    }
}
