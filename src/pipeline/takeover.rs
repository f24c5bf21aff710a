//! Starting to forward — at start for a single replica, on takeover for a new leader: open
//! the delivered state, start the state writer, the tracker and the drivers, then bring every
//! sink from what it holds to the informers' current state, with the informers paused so no
//! live change slips in between. Only then does the gate open.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::emit::Forwarding;
use super::{Intake, Parts, StateAccess};
use crate::backoff::BackoffPolicy;
use crate::delivery::{ObjectId, Tracker};
use crate::event::object;
use crate::event::{Doc, Envelope, Op, SnapshotMark, diff};
use crate::state::{SinkBase, StateError, StateStore, StateWriter};

/// Why this replica could not start forwarding.
#[derive(Debug, thiserror::Error)]
pub(super) enum TakeoverError {
    /// The previous leader still holds the state directory after the bound.
    #[error(
        "the state directory is still locked after {waited:?} (by the previous leader, or a \
         process stuck on it); giving the lease up"
    )]
    StillLocked {
        /// How long this replica waited.
        waited: Duration,
    },
    /// Shutdown (or the lease was lost) while taking over.
    #[error("stopped while taking over")]
    Stopped,
}

/// What exists while this replica forwards.
pub(super) struct Delivery {
    /// Published on the gate.
    pub(super) forwarding: Arc<Forwarding>,
    /// One driver per sink.
    pub(super) drivers: Vec<JoinHandle<()>>,
    /// The state writer, when there is a store; ends after the tracker is dropped.
    pub(super) writer: Option<JoinHandle<()>>,
}

impl Parts {
    /// Starts forwarding (see the module docs). `intake` is cancelled on shutdown or when the
    /// lease is lost (the queues are then closed, so this returns promptly); `abandon` makes
    /// the drivers give up.
    pub(super) async fn take_over(
        &self,
        intake: &CancellationToken,
        abandon: &CancellationToken,
    ) -> Result<Delivery, TakeoverError> {
        let store = match &self.state {
            StateAccess::Nothing => {
                if self.config.leader_election.enabled {
                    warn!("no state.dir: the new leader sends every object as an add (a snapshot)");
                }
                None
            }
            StateAccess::Open(store) => Some(store.clone()),
            StateAccess::OnTakeover(dir) => {
                let bound = self.config.leader_election.lease_duration;
                open_when_unlocked(dir, bound, intake).await?
            }
        };
        let sinks = self.sink_names();
        if let Some(store) = &store {
            let sources: Vec<String> = self.intakes.iter().map(|i| i.key.to_string()).collect();
            match store.retain(&sources, &sinks) {
                Ok(0) => {}
                Ok(removed) => info!(
                    removed,
                    "forgot delivered state of resources or sinks no longer configured"
                ),
                Err(e) => warn!(error = %e, "cannot tidy the delivered state"),
            }
        }
        let (recorder, writer) = match &store {
            Some(s) => {
                let (recorder, task) = StateWriter::start(s.clone(), sinks.clone());
                (Some(recorder), Some(task))
            }
            None => (None, None),
        };
        let tracker = Arc::new(Tracker::new(self.lanes.len(), recorder));
        let drivers = self
            .lanes
            .iter()
            .zip(&self.dead_letters)
            .map(|(lane, dl)| lane.spawn_driver(tracker.clone(), abandon.clone(), dl.clone()))
            .collect();
        let forwarding = Arc::new(Forwarding {
            router: self.router.clone(),
            tracker,
            queues: self.lanes.iter().map(|l| l.queue.clone()).collect(),
        });
        let delivery = Delivery {
            forwarding: forwarding.clone(),
            drivers,
            writer,
        };
        // Paused informers: their caches stay as they are, and no handler runs until the
        // comparison is done and the gate is open.
        let mut held = Vec::with_capacity(self.intakes.len());
        for intake in &self.intakes {
            held.push(intake.informer.hold().await);
        }
        for (i, held) in self.intakes.iter().zip(&held) {
            if intake.is_cancelled() {
                break;
            }
            // Whatever the cache lacks was gone by the resourceVersion it is at.
            let at = held.resource_version();
            if let Err(e) = reconcile(&forwarding, i, at, store.as_deref(), &sinks, intake).await {
                warn!(informer = %i.key, error = %e,
                    "cannot read the delivered state; sending every object as an add");
                let _ = reconcile(&forwarding, i, at, None, &sinks, intake).await;
            }
        }
        if !intake.is_cancelled() {
            self.gate.send_replace(Some(forwarding));
            self.ops.snapshots.set_forwarding(true);
        }
        drop(held);
        Ok(delivery)
    }
}

/// Opens the store, waiting while a previous leader still holds it — with a backoff (never
/// a tight loop) and for at most `bound` (the lease duration: a leader that could not renew
/// stops forwarding within its renew deadline and exits, releasing the lock). A store that
/// cannot be used otherwise is logged and forwarding goes on without it (a snapshot).
async fn open_when_unlocked(
    dir: &Path,
    bound: Duration,
    stop: &CancellationToken,
) -> Result<Option<Arc<StateStore>>, TakeoverError> {
    let started = Instant::now();
    let mut backoff = BackoffPolicy::LEASE.start();
    loop {
        match StateStore::open(dir, false) {
            Ok(s) => {
                if backoff.failures() > 0 {
                    info!(waited = ?started.elapsed(), "state directory released; taking over");
                }
                return Ok(Some(Arc::new(s)));
            }
            Err(StateError::Locked { path }) => {
                let waited = started.elapsed();
                if waited >= bound {
                    return Err(TakeoverError::StillLocked { waited });
                }
                if backoff.failures() == 0 {
                    warn!(path = %path.display(), bound = ?bound,
                        "the state directory is still locked (the previous leader is letting go); waiting");
                }
                let delay = backoff.next_delay().min(bound - waited);
                tokio::select! {
                    _ = stop.cancelled() => return Err(TakeoverError::Stopped),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
            Err(e) => {
                warn!(error = %e, "cannot open the delivered state; forwarding a full snapshot");
                return Ok(None);
            }
        }
    }
}

/// Brings every sink from what it holds of one informer's objects (`store`; nothing without
/// one) to the informer's cache, which is at resourceVersion `at`: the start-up comparison.
async fn reconcile(
    fwd: &Forwarding,
    intake: &Intake,
    at: &str,
    store: Option<&StateStore>,
    sinks: &[String],
    stop: &CancellationToken,
) -> Result<(), StateError> {
    let source = intake.key.to_string();
    let baseline = match store {
        Some(s) => Some(s.baseline(&source, sinks)?),
        None => None,
    };
    let known = match &baseline {
        Some(b) => b.keys()?,
        None => Default::default(),
    };
    // `initialList` marks the adds of a first start (nothing ever recorded for this informer).
    let first_start = known.is_empty();
    let cache = intake.informer.store();
    info!(informer = %intake.key, cached = cache.len(), delivered = known.len(),
        "resuming from delivered state");
    let nothing = vec![SinkBase::default(); sinks.len()];
    let mut seen = HashSet::new();
    let mut changed = 0usize;
    let keys = cache.keys();
    let last = keys.len().saturating_sub(1);
    for (index, key) in keys.into_iter().enumerate() {
        if stop.is_cancelled() {
            return Ok(());
        }
        let current = cache.get(&key).map(|e| e.current);
        let held = match &baseline {
            Some(b) if known.contains(&key) => b.get(&key)?,
            _ => nothing.clone(),
        };
        // A first start reads the whole cache: a snapshot, marked first … last.
        let read = first_start.then(|| SnapshotMark::at(index, last));
        changed += usize::from(reconcile_object(fwd, intake, &key, current, held, read, at).await);
        seen.insert(key);
    }
    if let Some(b) = &baseline {
        for key in known.iter().filter(|k| !seen.contains(*k)) {
            if stop.is_cancelled() {
                return Ok(());
            }
            // Gone while nobody watched: nobody will ever send its DELETED event.
            changed +=
                usize::from(reconcile_object(fwd, intake, key, None, b.get(key)?, None, at).await);
        }
    }
    if changed > 0 {
        info!(informer = %intake.key, objects = changed, "start-up comparison: changes queued");
    }
    Ok(())
}

/// `(uid, resourceVersion)`: equal for the same state of the same object.
fn version(obj: &Value) -> (&str, &str) {
    (object::uid(obj), object::resource_version(obj))
}

/// Brings every sink from what it holds of one object (`held`, by sink) to `current`
/// (`None`: gone). A sink owing nothing gets the change from its base to `current` as its
/// routes judge it; a sink that may hold a newer state than its base (a change was in flight
/// at a crash) gets the current state whatever the diff says (forced: it may be a duplicate,
/// never a loss). `read`: on a first start, the add is a read of the initial list, with its
/// place in it. A delete is inferred, found gone at `at` (the cache's resourceVersion): newer
/// than any state of the object a sink may hold, the one in flight at a crash included.
/// Returns whether anything was registered.
async fn reconcile_object(
    fwd: &Forwarding,
    intake: &Intake,
    key: &str,
    current: Option<Arc<Value>>,
    held: Vec<SinkBase>,
    read: Option<SnapshotMark>,
    at: &str,
) -> bool {
    let same = |base: &Option<Value>| match (base, &current) {
        (None, None) => true,
        (Some(b), Some(c)) => version(b) == version(c),
        _ => false,
    };
    if held.iter().all(|h| h.owing.is_empty() && same(&h.base)) {
        return false;
    }
    let router = &fwd.router;
    let ignore = router.ignore();
    let build = |op: Op, obj: Arc<Value>, old: Option<Arc<Value>>, patch| {
        Arc::new(intake.builder.build(op, obj, old, patch, Instant::now()))
    };
    let delete = |last: Value| {
        let last = Doc::new(Arc::new(last));
        Arc::new(intake.builder.build_unseen_delete(last, at, Instant::now()))
    };
    // Sinks holding the same base share its envelopes.
    let mut groups: Vec<(&Option<Value>, Vec<usize>)> = Vec::new();
    for (sink, h) in held.iter().enumerate() {
        match groups
            .iter_mut()
            .find(|(b, _)| b.as_ref().map(version) == h.base.as_ref().map(version))
        {
            Some((_, members)) => members.push(sink),
            None => groups.push((&h.base, vec![sink])),
        }
    }
    let mut targets: Vec<(usize, Arc<Envelope>)> = Vec::new();
    for (base, members) in groups {
        let owing = |s: usize| !held[s].owing.is_empty();
        // (envelope, whether its change is real for sinks that owe nothing)
        let mut changes: Vec<(Arc<Envelope>, bool)> = Vec::new();
        match (base, &current) {
            (None, None) => {}
            (Some(b), None) => changes.push((delete(b.clone()), true)),
            (None, Some(c)) => {
                let mut e = intake
                    .builder
                    .build(Op::Add, c.clone(), None, None, Instant::now());
                e.initial_list = read.is_some();
                e.snapshot = read;
                if read.is_none() {
                    // Created while nobody watched: every writer of the object made it.
                    e.changed_by = intake.informer.writers(key);
                }
                changes.push((Arc::new(e), true));
            }
            (Some(b), Some(c)) if object::uid(b) != object::uid(c) => {
                changes.push((delete(b.clone()), true));
                changes.push((build(Op::Add, c.clone(), None, None), true));
            }
            (Some(b), Some(c)) if version(b) == version(c) => {}
            (Some(b), Some(c)) => {
                let patch = diff::diff(b, c);
                let real = !diff::only_ignored_changes(&patch, ignore);
                changes.push((
                    build(
                        Op::Update,
                        c.clone(),
                        Some(Arc::new(b.clone())),
                        Some(patch),
                    ),
                    real,
                ));
            }
        }
        // A sink that may hold an incarnation of the object that was in flight and is gone
        // now (deleted, or re-created under a new uid) gets its delete from the marker.
        for &s in members.iter().filter(|&&s| owing(s)) {
            let known = base.as_ref().map(object::uid);
            let now = current.as_deref().map(object::uid);
            for id in &held[s].owing {
                if Some(object::uid(id)) != known && Some(object::uid(id)) != now {
                    targets.extend(router.route_to(&delete(id.clone()), &|t| t == s, true));
                }
            }
        }
        for (e, real) in changes {
            if real {
                targets.extend(router.route_to(&e, &|s| members.contains(&s) && !owing(s), false));
            }
            targets.extend(router.route_to(&e, &|s| members.contains(&s) && owing(s), true));
        }
    }
    let named = match (&current, held.iter().find_map(|h| h.base.clone())) {
        (Some(c), _) => intake
            .builder
            .build(Op::Add, c.clone(), None, None, Instant::now()),
        (None, Some(b)) => {
            intake
                .builder
                .build(Op::Delete, Arc::new(b), None, None, Instant::now())
        }
        (None, None) => match held.iter().find_map(|h| h.owing.first().cloned()) {
            Some(id) => intake
                .builder
                .build(Op::Delete, Arc::new(id), None, None, Instant::now()),
            None => return false,
        },
    };
    let object = ObjectId {
        source: intake.builder.source.clone(),
        key: key.into(),
    };
    debug!(informer = %intake.key, object = key,
        owing = ?held.iter().map(|h| h.owing.len()).collect::<Vec<_>>(),
        sends = ?targets.iter().map(|(s, e)| format!("{s}:{}:{}", e.op.as_str(), e.uid)).collect::<Vec<_>>(),
        "start-up comparison");
    let current = current.map(Doc::new);
    fwd.deliver(&object, current.as_deref(), &named, targets)
        .await;
    true
}
