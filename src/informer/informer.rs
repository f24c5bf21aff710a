//! One shared informer: its public face (cache, handlers, counters) and the task that drives
//! its list/watch state machine ([`super::machine`]) and brings what the machine yields into
//! the cache and to the handlers.
//!
//! Why not kube-runtime's `watcher`: it swallows BOOKMARK events, and the agent needs them —
//! the resourceVersion they carry is where a reconnect resumes, and their arrival is how the
//! idle timer and `/readyz` know a quiet watch is still alive. The machine follows its shape
//! (a private `State` and a `step`), the requests go through kube's `Api`.
//!
//! The per-event path is three calls, kept apart so each can be measured and replaced:
//! decode (in [`super::api`]), [`SharedInformer::prepare`] (the object transform), and
//! [`SharedInformer::diff`] (the patch against the last emitted state).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use json_patch::Patch;
use kube::Api;
use kube::core::ApiResource;
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::api::{KubeListWatch, ListWatch};
use super::config::InitialList;
use super::machine::{Change, Machine, Output, RestartReason, Settings, State};
use super::prepare::{Ahead, Preparer};
use super::store::{Entry, Staging, Store};
use super::{ChangedBy, Gone, Handler, InformerKey, RawObject};
use crate::event::changed_by::Managers;
use crate::event::diff;
use crate::event::object;
use crate::event::transform::ObjectTransform;
use crate::event::{Doc, SnapshotMark};

/// Page size of paginated lists (a 100k-object list never arrives in one answer).
const LIST_PAGE_SIZE: u32 = 500;

/// Counters an operator wants per informer; read by metrics and `/readyz`.
#[derive(Debug)]
pub struct InformerStats {
    /// The first list of this run has completed.
    pub synced: AtomicBool,
    /// Milliseconds since the informer started when the API server was last heard from
    /// (list page, watch event or bookmark); 0 = never.
    pub last_heard_ms: AtomicU64,
    /// Full re-lists after the first one (410 Gone).
    pub relists: AtomicU64,
    /// Open watches abandoned, by reason (each is followed by a new watch or a re-list).
    pub watch_restarts: RestartCounts,
    /// Watch events received (all types, bookmarks included).
    pub events_received: AtomicU64,
    /// Watch events (or listed items) that could not be decoded and were skipped.
    pub decode_errors: AtomicU64,
    /// Fast check for `problem`, read on every event.
    has_problem: AtomicBool,
    /// The last failure, until a request succeeds.
    problem: Mutex<Option<Problem>>,
    /// What `last_heard_ms` counts from.
    started: Instant,
}

impl Default for InformerStats {
    fn default() -> Self {
        Self {
            synced: AtomicBool::new(false),
            last_heard_ms: AtomicU64::new(0),
            relists: AtomicU64::new(0),
            watch_restarts: RestartCounts::default(),
            events_received: AtomicU64::new(0),
            decode_errors: AtomicU64::new(0),
            has_problem: AtomicBool::new(false),
            problem: Mutex::new(None),
            started: Instant::now(),
        }
    }
}

/// A failing informer's last error, for `/readyz` and the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// What failed and why (names the verb and the resource).
    pub message: String,
    /// It makes the informer not ready even after its first list (401/403: it is blind).
    pub blocking: bool,
}

impl InformerStats {
    /// The API server answered just now.
    pub(super) fn heard(&self) {
        let ms = self.started.elapsed().as_millis().max(1) as u64;
        self.last_heard_ms.store(ms, Ordering::Relaxed);
    }

    /// Time since the API server was last heard from, `None` before the first answer.
    pub fn since_last_heard(&self) -> Option<Duration> {
        match self.last_heard_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(
                self.started
                    .elapsed()
                    .saturating_sub(Duration::from_millis(ms)),
            ),
        }
    }

    /// The last failure, while requests keep failing.
    pub fn problem(&self) -> Option<Problem> {
        if !self.has_problem.load(Ordering::Acquire) {
            return None;
        }
        self.problem.lock().expect("problem lock").clone()
    }

    pub(super) fn set_problem(&self, message: String, blocking: bool) {
        *self.problem.lock().expect("problem lock") = Some(Problem { message, blocking });
        self.has_problem.store(true, Ordering::Release);
    }

    pub(super) fn clear_problem(&self) {
        if self.has_problem.swap(false, Ordering::AcqRel) {
            *self.problem.lock().expect("problem lock") = None;
        }
    }
}

/// Watch restarts by [`RestartReason`].
#[derive(Debug, Default)]
pub struct RestartCounts([AtomicU64; RestartReason::ALL.len()]);

impl RestartCounts {
    /// Restarts for this reason so far.
    pub fn get(&self, reason: RestartReason) -> u64 {
        self.0[reason.index()].load(Ordering::Relaxed)
    }

    /// Restarts for every reason.
    pub fn total(&self) -> u64 {
        RestartReason::ALL.iter().map(|r| self.get(*r)).sum()
    }

    pub(super) fn inc(&self, reason: RestartReason) {
        self.0[reason.index()].fetch_add(1, Ordering::Relaxed);
    }
}

/// How an informer lists and watches (from `watch:` and `resources[].initialList`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InformerSettings {
    /// `watch.idleTimeout`.
    pub idle_timeout: Duration,
    /// `resources[].initialList`.
    pub initial_list: InitialList,
}

impl Default for InformerSettings {
    fn default() -> Self {
        Self {
            idle_timeout: super::WatchConfig::default().idle_timeout,
            initial_list: InitialList::default(),
        }
    }
}

/// A list+watch of one resource type with its cache and handlers.
pub struct SharedInformer {
    key: InformerKey,
    resource: ApiResource,
    /// Where list and watch requests go.
    api: Box<dyn ListWatch>,
    settings: InformerSettings,
    /// The resource and its scope in messages, e.g. `configmaps in all namespaces`.
    target: String,
    transform: Arc<ObjectTransform>,
    /// The object-local part of preparing objects (the watch has its own copy).
    preparer: Preparer,
    store: Arc<Store>,
    handlers: Mutex<Vec<Arc<dyn Handler>>>,
    stats: InformerStats,
    /// Held while a change goes from the cache to the handlers, so that a re-sync against
    /// delivered state (leader takeover) never interleaves with live changes. It guards the
    /// resourceVersion the cache is at (the last list's, or the last watch event's): what a
    /// holder reads there is true of the cache it sees.
    processing: Arc<tokio::sync::Mutex<String>>,
    /// The cache was seeded from delivered state: first-list adds are real adds then.
    seeded: AtomicBool,
    /// Per cache key, the `managedFields` summaries `changedBy` is computed from (when
    /// changes are attributed): kept beside the cached object, never the full tree.
    managers: Mutex<HashMap<Box<str>, Attribution>>,
    task: Mutex<Option<(CancellationToken, JoinHandle<()>)>>,
}

/// An informer held still ([`SharedInformer::hold`]): no change reaches the cache or the
/// handlers until it is dropped.
pub struct Held(tokio::sync::OwnedMutexGuard<String>);

impl Held {
    /// The resourceVersion the cache is at: its last list's, or its last watch event's
    /// (empty before the first list). Every object missing from the cache was gone by then.
    pub fn resource_version(&self) -> &str {
        &self.0
    }
}

/// What an object's next change is attributed against.
#[derive(Debug)]
struct Attribution {
    /// The summary of the state last prepared (about to be cached).
    observed: Managers,
    /// The summary of the state last emitted; `None` before the first emission (an object
    /// seeded from delivered state: its writers since then are unknown).
    emitted: Option<Managers>,
}

impl SharedInformer {
    pub(super) fn new(
        key: InformerKey,
        resource: ApiResource,
        namespaced: bool,
        api: Api<RawObject>,
        transform: Arc<ObjectTransform>,
        settings: InformerSettings,
    ) -> Self {
        // The watch's parse tasks work ahead on the informer's cache.
        let store = Arc::new(Store::default());
        let api = KubeListWatch::new(
            &key,
            &resource,
            api,
            transform.drops_managed_fields(),
            transform.attributes_changes(),
            LIST_PAGE_SIZE,
            Preparer::new(&resource.api_version, &resource.kind, transform.clone())
                .with_cache(store.clone()),
        );
        let target = describe(&key, &resource, namespaced);
        Self::with_store(
            key,
            resource,
            target,
            Box::new(api),
            transform,
            settings,
            store,
        )
    }

    /// An informer over any [`ListWatch`] (tests script one); `target` names the resource
    /// in messages.
    #[cfg(test)]
    pub(super) fn with_api(
        key: InformerKey,
        resource: ApiResource,
        target: String,
        api: Box<dyn ListWatch>,
        transform: Arc<ObjectTransform>,
        settings: InformerSettings,
    ) -> Self {
        let store = Arc::new(Store::default());
        Self::with_store(key, resource, target, api, transform, settings, store)
    }

    /// [`Self::with_api`] over `store`, which `api` may share (its parse tasks work ahead on
    /// it).
    fn with_store(
        key: InformerKey,
        resource: ApiResource,
        target: String,
        api: Box<dyn ListWatch>,
        transform: Arc<ObjectTransform>,
        settings: InformerSettings,
        store: Arc<Store>,
    ) -> Self {
        Self {
            preparer: Preparer::new(&resource.api_version, &resource.kind, transform.clone()),
            key,
            resource,
            api,
            settings,
            target,
            transform,
            store,
            handlers: Mutex::new(Vec::new()),
            stats: InformerStats::default(),
            processing: Arc::new(tokio::sync::Mutex::new(String::new())),
            seeded: AtomicBool::new(false),
            managers: Mutex::new(HashMap::new()),
            task: Mutex::new(None),
        }
    }

    /// What this informer watches.
    pub fn key(&self) -> &InformerKey {
        &self.key
    }

    /// The resolved API resource (group, version, plural, ...).
    pub fn resource(&self) -> &ApiResource {
        &self.resource
    }

    /// How it lists and watches.
    pub fn settings(&self) -> InformerSettings {
        self.settings
    }

    /// The local cache.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Counters.
    pub fn stats(&self) -> &InformerStats {
        &self.stats
    }

    /// Time since the API server was last heard from, `None` before the first answer.
    pub fn since_last_heard(&self) -> Option<Duration> {
        self.stats.since_last_heard()
    }

    /// True once the first list has been delivered to the handlers.
    pub fn has_synced(&self) -> bool {
        self.stats.synced.load(Ordering::Acquire)
    }

    /// Seeds the cache with the state downstream last acknowledged (the delivered-state
    /// store), before `start`: the first list is then compared with it, so only what changed
    /// while the agent was away is emitted.
    pub fn seed(&self, objects: Vec<(String, Value)>) {
        if !objects.is_empty() {
            self.seeded.store(true, Ordering::Release);
        }
        for (key, object) in objects {
            self.store.insert(
                key,
                Entry {
                    current: Arc::new(object),
                    emitted: None,
                },
            );
        }
    }

    /// Pauses the delivery of changes to handlers until the guard is dropped (the cache keeps
    /// its state; the watch waits).
    pub async fn hold(&self) -> Held {
        Held(self.processing.clone().lock_owned().await)
    }

    /// Registers a handler. Register before `start` to see the initial list.
    pub fn add_handler(&self, handler: Arc<dyn Handler>) {
        self.handlers.lock().expect("handlers lock").push(handler);
    }

    /// Starts the list+watch loop (idempotent).
    pub fn start(self: &Arc<Self>) {
        let mut task = self.task.lock().expect("task lock");
        if task.is_some() {
            return;
        }
        let cancel = CancellationToken::new();
        let this = self.clone();
        let token = cancel.clone();
        let handle = tokio::spawn(async move { this.run(token).await });
        *task = Some((cancel, handle));
    }

    /// Stops watching — a handler call in progress is abandoned — and waits until the loop
    /// has ended; the cache stays readable.
    pub async fn stop(&self) {
        let task = self.task.lock().expect("task lock").take();
        if let Some((cancel, handle)) = task {
            cancel.cancel();
            let _ = handle.await;
        }
    }

    pub(super) fn handlers(&self) -> Vec<Arc<dyn Handler>> {
        self.handlers.lock().expect("handlers lock").clone()
    }

    /// Drives the state machine until `cancel`; every await (a request, a handler waiting
    /// for queue room) ends at once when it fires.
    async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let prepare = |obj: Value| self.prepare(obj);
        let observe = |key: &str, managers: Option<Managers>| self.observe(key, managers);
        let settings = Settings {
            idle_timeout: self.settings.idle_timeout,
            initial_list: self.settings.initial_list,
        };
        let mut machine = Machine::new(
            &*self.api,
            &prepare,
            &observe,
            &self.store,
            &self.stats,
            &self.target,
            settings,
        );
        let mut state = State::Empty;
        let mut first_list = true;
        loop {
            let (output, next) = tokio::select! {
                _ = cancel.cancelled() => return,
                step = machine.step(state) => step,
            };
            state = next;
            match output {
                Some(Output::Listed {
                    staged,
                    resource_version,
                }) => {
                    // `initialList` marks a snapshot add; after a restart from delivered
                    // state, an add in the first list is an object created while away.
                    let initial = first_list && !self.seeded.load(Ordering::Acquire);
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        () = self.swap_in(staged, resource_version, initial) => {}
                    }
                    if !first_list {
                        self.stats.relists.fetch_add(1, Ordering::Relaxed);
                    }
                    first_list = false;
                    self.stats.synced.store(true, Ordering::Release);
                }
                Some(Output::Changed(change)) => {
                    // Delivery latency starts when the event's line arrived, before parsing.
                    let arrived = machine.arrival();
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        () = super::arrived_at(arrived, self.apply(change)) => {}
                    }
                }
                Some(Output::Failed { error, retry_in }) if error.is_forbidden() => {
                    error!(informer = %self.key, %error, ?retry_in, "request forbidden");
                }
                Some(Output::Failed { error, retry_in }) => {
                    warn!(informer = %self.key, %error, ?retry_in, "request failed; retrying");
                }
                Some(Output::Restarted(RestartReason::Idle)) => {
                    info!(informer = %self.key, idle_timeout = ?self.settings.idle_timeout,
                        "watch silent for watch.idleTimeout (no event, no bookmark); opened it again");
                }
                Some(Output::Restarted(reason)) => {
                    debug!(informer = %self.key, reason = reason.as_str(), "watch restarted");
                }
                // Skipped events were counted (and logged) by the machine.
                Some(Output::Skipped) | None => {}
            }
        }
    }

    /// The one place objects are transformed, before they are cached, diffed or emitted
    /// (the object-local part by [`Preparer`], which the watch runs on its parse tasks).
    fn prepare(&self, obj: Value) -> Value {
        let (obj, managers) = self.preparer.transform(obj);
        if managers.is_some() {
            self.observe(&object::cache_key(&obj), managers);
        }
        obj
    }

    /// The informer's part of preparing `obj`: when changes are attributed, `managers` (the
    /// summary of its `managedFields`, taken before the transforms dropped them) becomes what
    /// its next change is attributed against. Called in the order changes arrive.
    fn observe(&self, key: &str, managers: Option<Managers>) {
        let Some(observed) = managers else { return };
        let mut known = self.managers.lock().expect("managers lock");
        match known.get_mut(key) {
            Some(a) => a.observed = observed,
            None => {
                known.insert(
                    key.into(),
                    Attribution {
                        observed,
                        emitted: None,
                    },
                );
            }
        }
    }

    /// Who changed `key` since its last emitted state (`created`: it is new, every writer
    /// counts); the state prepared last becomes the emitted one. `None` when not attributed
    /// or when the emitted state's writers are unknown.
    pub(super) fn attribute(&self, key: &str, created: bool) -> ChangedBy {
        let mut known = self.managers.lock().expect("managers lock");
        let a = known.get_mut(key)?;
        let changed = match (&a.emitted, created) {
            (_, true) => Some(a.observed.changed_since(None)),
            (Some(old), false) => Some(a.observed.changed_since(Some(old))),
            (None, false) => None,
        };
        a.emitted = Some(a.observed.clone());
        changed
    }

    /// Every writer of `key`'s cached state (what an add of it names), without changing
    /// what its next change is attributed against; `None` when not attributed.
    pub fn writers(&self, key: &str) -> ChangedBy {
        let known = self.managers.lock().expect("managers lock");
        known.get(key).map(|a| a.observed.changed_since(None))
    }

    fn forget(&self, key: &str) {
        self.managers.lock().expect("managers lock").remove(key);
    }

    /// The patch from `base` (last emitted) to `obj`; `None` when nothing worth emitting
    /// changed (only ignored paths, or nothing at all).
    fn diff(&self, base: &Value, obj: &Value) -> Option<Patch> {
        let patch = diff::diff(base, obj);
        (!diff::only_ignored_changes(&patch, &self.transform.ignore)).then_some(patch)
    }

    /// Swaps a completed list (at `resource_version`) in as the cache, then tells the
    /// handlers what it changed: changed → update, new → add, re-created under the same name
    /// (new uid) → delete + add, vanished → delete with `finalStateUnknown` (nobody will send
    /// its DELETED event), found gone at the list's resourceVersion.
    async fn swap_in(&self, staged: Staging, resource_version: String, initial: bool) {
        let mut at = self.processing.lock().await;
        *at = resource_version;
        let gone = Gone::Unseen { at: &at };
        let mut swapped = self.store.swap_in(staged);
        // The initial list is a snapshot: its adds are reads, marked once all are known.
        // Only their keys are collected: each object is decoded when its read is emitted,
        // so a list of a million objects never exists as decoded trees at once.
        let mut reads: Vec<_> = Vec::new();
        for key in swapped.changed() {
            let old = swapped.take_old(&key);
            if old.is_none() && initial {
                self.attribute(&key, true);
                reads.push(key);
                continue;
            }
            let Some(new) = self.store.current(&key).map(Doc::new) else {
                continue;
            };
            match old {
                None => {
                    let by = self.attribute(&key, true);
                    self.emit_add(&new, false, by).await;
                }
                Some(old) if object::uid(&old.current) != object::uid(&new) => {
                    self.emit_delete(&Doc::new(old.current), gone).await;
                    let by = self.attribute(&key, true);
                    self.emit_add(&new, initial, by).await;
                }
                Some(old) => match self.diff(&old.base, &new) {
                    Some(patch) => {
                        let by = self.attribute(&key, false);
                        self.emit_update(&Doc::new(old.base), &new, patch, by).await;
                    }
                    None => self.store.keep_base(&key, old.packed_base),
                },
            }
        }
        let last = reads.len().saturating_sub(1);
        for (i, key) in reads.iter().enumerate() {
            if let Some(obj) = self.store.current(key) {
                self.emit_read(&Doc::new(obj), SnapshotMark::at(i, last), true)
                    .await;
            }
        }
        for vanished in swapped.vanished() {
            self.forget(&object::cache_key(&vanished));
            self.emit_delete(&Doc::new(vanished), gone).await;
        }
        debug!(informer = %self.key, objects = self.store.len(), "list swapped in");
    }

    /// Brings one watch event into the cache and tells the handlers.
    async fn apply(&self, change: Change) {
        let mut at = self.processing.lock().await;
        match change {
            Change::Applied(doc, ahead) => {
                doc.ident().resource_version.clone_into(&mut at);
                self.upsert(doc, ahead).await
            }
            Change::Deleted(obj) => {
                object::resource_version(&obj).clone_into(&mut at);
                let key = object::cache_key(&obj);
                self.forget(&key);
                if self.store.remove(&key).is_some() {
                    self.emit_delete(&Doc::new(Arc::new(obj)), Gone::Seen).await;
                }
            }
        }
    }

    /// An ADDED or MODIFIED object: cache it, emit the add or the update. A watch's object
    /// comes as JSON and its name only ([`Doc::named`]); its tree is decoded only if a handler
    /// asks for it.
    async fn upsert(&self, new: Arc<Doc>, ahead: Option<Box<Ahead>>) {
        let key = new.ident().cache_key();
        // The parse task's work holds if the entry is the one it was done from.
        let (packed, ahead) = match ahead {
            Some(a) => {
                let Ahead {
                    packed,
                    version,
                    patch,
                } = *a;
                let current = self.store.version(&key) == version;
                (Some(packed), current.then_some((version, patch)))
            }
            None => (None, None),
        };
        let store = |key: String, json: &[u8], keep_base: bool| match packed {
            Some(packed) => self.store.update_packed(key, packed, keep_base),
            None => self.store.update_json(key, json, keep_base),
        };
        // The state the patch starts from is read as the compact JSON the cache keeps, and
        // diffed from its bytes: it is decoded only if a handler asks for its tree.
        let (base, patch) = match ahead {
            // No entry when the parse task looked, and none since: a new object.
            Some((None, _)) => (None, None),
            Some((Some(_), Some((base, patch)))) => (Some(base), Some(patch)),
            // Nothing ahead, or an entry whose bytes could not be diffed: diffed here.
            _ => (self.store.base_json(&key), None),
        };
        let Some(base) = base else {
            let by = self.attribute(&key, true);
            store(key, new.json(), false);
            self.emit_add(&new, false, by).await;
            return;
        };
        let base = Doc::from_json(base);
        // Encoded once (by the watch's parse task): compared with the base's bytes, packed
        // into the cache, and written into the envelope as it is.
        let json = new.json();
        let patch = patch.unwrap_or_else(|| {
            diff::diff_json(base.json(), json)
                .unwrap_or_else(|| diff::diff(base.value(), new.value()))
        });
        // Equal uids leave `/metadata/uid` untouched; only then is the base's name needed.
        if diff::touches(&patch, "/metadata/uid") && base.ident().uid != new.ident().uid {
            // Deleted and re-created under the same name while we were not watching: the
            // old one was gone by the new one's resourceVersion.
            if let Some(entry) = self.store.remove(&key) {
                let gone = Gone::Unseen {
                    at: &new.ident().resource_version,
                };
                self.emit_delete(&Doc::new(entry.current), gone).await;
            }
            return Box::pin(self.upsert(new, None)).await;
        }
        if diff::only_ignored_changes(&patch, &self.transform.ignore) {
            store(key, json, true);
            return;
        }
        let by = self.attribute(&key, false);
        store(key, json, false);
        self.emit_update(&base, &new, patch, by).await;
    }

    async fn emit_add(&self, obj: &Arc<Doc>, initial_list: bool, changed_by: ChangedBy) {
        for h in self.handlers() {
            h.on_add_by(obj, initial_list, changed_by.clone()).await;
        }
    }

    async fn emit_update(
        &self,
        old: &Arc<Doc>,
        new: &Arc<Doc>,
        patch: Patch,
        changed_by: ChangedBy,
    ) {
        // The patch moves into the last handler; only extra handlers pay for a copy.
        let handlers = self.handlers();
        if let Some((last, rest)) = handlers.split_last() {
            for h in rest {
                h.on_update_by(old, new, patch.clone(), changed_by.clone())
                    .await;
            }
            last.on_update_by(old, new, patch, changed_by).await;
        }
    }

    /// Hands a read of current state to the handlers (the initial list, a snapshot).
    pub(super) async fn emit_read(&self, obj: &Arc<Doc>, mark: SnapshotMark, initial_list: bool) {
        for h in self.handlers() {
            h.on_read(obj, mark, initial_list).await;
        }
    }

    async fn emit_delete(&self, last_known: &Arc<Doc>, gone: Gone<'_>) {
        for h in self.handlers() {
            h.on_delete(last_known, gone).await;
        }
    }
}

/// `configmaps in all namespaces`, `deployments.apps in namespace shop`, `nodes`: what
/// RBAC must allow.
fn describe(key: &InformerKey, resource: &ApiResource, namespaced: bool) -> String {
    let mut out = resource.plural.clone();
    if !resource.group.is_empty() {
        out.push('.');
        out.push_str(&resource.group);
    }
    match &key.namespace {
        Some(ns) => out.push_str(&format!(" in namespace {ns}")),
        None if namespaced => out.push_str(" in all namespaces"),
        None => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use async_trait::async_trait;
    use serde_json::json;
    use tokio::sync::mpsc;

    use super::*;
    use crate::event::transform::TransformConfig;
    use crate::informer::api::{RawEvent, RequestError};
    use crate::informer::testing::{Script, Then, cm, configmaps, page};

    /// Records every call as a line: `add a (initial)`, `update a 1→6`, `delete b`, `delete c
    /// (gone at 20)` (inferred, with the resourceVersion it was found gone at).
    struct Collect(mpsc::UnboundedSender<String>);

    #[async_trait]
    impl Handler for Collect {
        async fn on_add(&self, obj: &Arc<Doc>, initial_list: bool) {
            let tag = if initial_list { " (initial)" } else { "" };
            let _ = self.0.send(format!("add {}{tag}", object::name(obj)));
        }
        async fn on_update(&self, old: &Arc<Doc>, new: &Arc<Doc>, patch: Patch) {
            let mut replayed = (**old).clone();
            json_patch::patch(&mut replayed, &patch).expect("patch applies to the old state");
            assert_eq!(&replayed, &***new, "patch replays");
            let _ = self.0.send(format!(
                "update {} {}→{}",
                object::name(new),
                object::resource_version(old),
                object::resource_version(new)
            ));
        }
        async fn on_delete(&self, last: &Arc<Doc>, gone: Gone<'_>) {
            let tag = match gone {
                Gone::Unseen { at } => format!(" (gone at {at})"),
                Gone::Seen => String::new(),
            };
            let _ = self.0.send(format!("delete {}{tag}", object::name(last)));
        }
    }

    fn informer(script: Script) -> (Arc<SharedInformer>, mpsc::UnboundedReceiver<String>) {
        informer_over(Box::new(script))
    }

    fn informer_over(
        api: Box<dyn ListWatch>,
    ) -> (Arc<SharedInformer>, mpsc::UnboundedReceiver<String>) {
        let (key, resource) = configmaps();
        let transform = Arc::new(ObjectTransform::new(&TransformConfig::default(), "t").unwrap());
        let settings = InformerSettings {
            initial_list: InitialList::Paginate,
            ..InformerSettings::default()
        };
        let informer = Arc::new(SharedInformer::with_api(
            key,
            resource,
            "configmaps in all namespaces".into(),
            api,
            transform,
            settings,
        ));
        let (tx, rx) = mpsc::unbounded_channel();
        informer.add_handler(Arc::new(Collect(tx)));
        (informer, rx)
    }

    async fn take(rx: &mut mpsc::UnboundedReceiver<String>, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        for _ in 0..n {
            let line = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .unwrap_or_else(|_| panic!("only {out:?} within 10s"))
                .expect("handler alive");
            out.push(line);
        }
        out
    }

    /// Waits (bounded) until `f` holds.
    async fn until(what: &str, f: impl Fn() -> bool) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while !f() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{what} within 10s"));
    }

    fn with_uid(mut obj: Value, uid: &str) -> Value {
        obj["metadata"]["uid"] = json!(uid);
        obj
    }

    fn gone() -> (Vec<Result<RawEvent, RequestError>>, Then) {
        (vec![Err(RequestError::Gone("too old".into()))], Then::Hang)
    }

    /// Keeps the JSON of every object it is handed.
    struct Json(std::sync::Mutex<Vec<bytes::Bytes>>);

    #[async_trait]
    impl Handler for Json {
        async fn on_add(&self, obj: &Arc<Doc>, _: bool) {
            self.0.lock().unwrap().push(obj.json().clone());
        }
        async fn on_update(&self, _: &Arc<Doc>, new: &Arc<Doc>, _: Patch) {
            self.0.lock().unwrap().push(new.json().clone());
        }
        async fn on_delete(&self, _: &Arc<Doc>, _: Gone<'_>) {}
    }

    #[tokio::test]
    async fn objects_the_watch_prepared_are_cached_and_emitted_from_the_json_it_made() {
        // The watch's JSON, told apart from a second encoding of the tree by a member the
        // tree does not have.
        let prepared = |o: Value| {
            let mut marked = o.clone();
            marked["made"] = json!("by the watch");
            let json = bytes::Bytes::from(serde_json::to_vec(&marked).unwrap());
            Ok(RawEvent::Applied(crate::informer::prepare::Prepared {
                ident: crate::event::object::Ident::of(&o),
                json,
                managers: None,
                ahead: None,
            }))
        };
        let script = Script::default().list(Ok(page(&[], "1", None))).watch(Ok((
            vec![prepared(cm("a", "2")), prepared(cm("a", "3"))],
            Then::Hang,
        )));
        let (informer, mut rx) = informer(script);
        let json = Arc::new(Json(std::sync::Mutex::new(Vec::new())));
        informer.add_handler(json.clone());
        informer.start();
        assert_eq!(take(&mut rx, 2).await, ["add a", "update a 2→3"]);
        let seen = json.0.lock().unwrap().clone();
        assert_eq!(seen.len(), 2);
        for j in &seen {
            let v: Value = serde_json::from_slice(j).unwrap();
            assert_eq!(v["made"], "by the watch", "emitted as the watch encoded it");
        }
        let cached: Value =
            serde_json::from_slice(&informer.store().base_json("default/a").unwrap()).unwrap();
        assert_eq!(
            cached["made"], "by the watch",
            "cached as the watch encoded it"
        );
        assert_eq!(cached["metadata"]["resourceVersion"], "3");
        informer.stop().await;
    }

    /// Keeps every patch it is handed.
    struct Patches(std::sync::Mutex<Vec<Patch>>);

    #[async_trait]
    impl Handler for Patches {
        async fn on_add(&self, _: &Arc<Doc>, _: bool) {}
        async fn on_update(&self, _: &Arc<Doc>, _: &Arc<Doc>, patch: Patch) {
            self.0.lock().unwrap().push(patch);
        }
        async fn on_delete(&self, _: &Arc<Doc>, _: Gone<'_>) {}
    }

    #[tokio::test]
    async fn work_done_ahead_is_used_while_the_entry_is_unchanged_and_redone_once_it_changed() {
        let json = |o: &Value| bytes::Bytes::from(serde_json::to_vec(o).unwrap());
        // Packed by another store before its dictionary: a plain frame any store reads.
        let packer = Store::default();
        let with = |o: &Value, version: Option<u64>, patch: Option<(&Value, Patch)>| {
            Ok(RawEvent::Applied(crate::informer::prepare::Prepared {
                ident: crate::event::object::Ident::of(o),
                json: json(o),
                managers: None,
                ahead: Some(Box::new(Ahead {
                    packed: packer.pack_json(&json(o)),
                    version,
                    patch: patch.map(|(base, p)| (json(base), p)),
                })),
            }))
        };
        let (a2, a3, a4) = (cm("a", "2"), cm("a", "3"), cm("a", "4"));
        // Correct but coarser than the diff would be: tells the patch made ahead apart.
        let coarse: Patch = serde_json::from_value(json!([
            {"op": "replace", "path": "/metadata/resourceVersion", "value": "3"},
            {"op": "replace", "path": "/data", "value": {"rv": "3"}},
        ]))
        .unwrap();
        // Made from a state the entry no longer has: wrong for the entry as it is.
        let stale: Patch = serde_json::from_value(json!([
            {"op": "add", "path": "/stale", "value": true},
        ]))
        .unwrap();
        let script = Script::default().list(Ok(page(&[], "1", None))).watch(Ok((
            vec![
                // No entry when looked at, none since: an add. The entry is version 1 then.
                with(&a2, None, None),
                // Made from version 1, which the entry still is: used as made.
                with(&a3, Some(1), Some((&a2, coarse.clone()))),
                // Made from version 1 again, but the entry is version 2 now: made again.
                with(&a4, Some(1), Some((&a2, stale))),
                // No entry when looked at, but `a` has one since: an update, not an add.
                with(&cm("a", "5"), None, None),
            ],
            Then::Hang,
        )));
        let (informer, mut rx) = informer(script);
        let patches = Arc::new(Patches(std::sync::Mutex::new(Vec::new())));
        informer.add_handler(patches.clone());
        informer.start();
        // `Collect` checks that every patch replays from the old state to the new one.
        assert_eq!(
            take(&mut rx, 4).await,
            ["add a", "update a 2→3", "update a 3→4", "update a 4→5"]
        );
        let seen = patches.0.lock().unwrap().clone();
        assert_eq!(seen[0], coarse, "the patch made ahead, as made");
        assert_eq!(seen[1], diff::diff(&a3, &a4), "made again from the entry");
        let cached: Value =
            serde_json::from_slice(&informer.store().base_json("default/a").unwrap()).unwrap();
        assert_eq!(cached, cm("a", "5"), "cached as packed ahead");
        informer.stop().await;
    }

    #[tokio::test]
    async fn a_relist_announces_changes_deletes_and_recreations_from_the_swapped_in_list() {
        let script = Script::default()
            .list(Ok(page(
                &[cm("a", "1"), cm("b", "2"), cm("same", "3"), cm("gone", "4")],
                "10",
                None,
            )))
            .watch(Ok(gone()))
            .list(Ok(page(
                &[
                    cm("a", "1"),
                    cm("b", "12"),
                    with_uid(cm("same", "13"), "uid-same-2"),
                    cm("fresh", "14"),
                ],
                "20",
                None,
            )))
            .watch(Ok((vec![], Then::Hang)));
        let (informer, mut rx) = informer(script);
        informer.start();
        assert_eq!(
            take(&mut rx, 4).await,
            [
                "add a (initial)",
                "add b (initial)",
                "add same (initial)",
                "add gone (initial)"
            ]
        );
        assert_eq!(
            take(&mut rx, 5).await,
            [
                "update b 2→12",
                "delete same (gone at 20)",
                "add same",
                "add fresh",
                "delete gone (gone at 20)"
            ]
        );
        until("re-list counted", || {
            informer.stats().relists.load(Ordering::Relaxed) == 1
        })
        .await;
        assert_eq!(informer.store().len(), 4);
        assert_eq!(informer.stats().watch_restarts.get(RestartReason::Gone), 1);
        informer.stop().await;
        assert!(rx.try_recv().is_err(), "nothing else");
    }

    #[tokio::test]
    async fn a_watched_object_under_a_new_uid_is_a_delete_and_an_add_and_its_next_change_an_update()
    {
        let recreated = |rv: &str| with_uid(cm("a", rv), "uid-a-2");
        let script = Script::default()
            .list(Ok(page(&[cm("a", "1")], "10", None)))
            .watch(Ok((
                vec![
                    Ok(RawEvent::Modified(cm("a", "2"))),
                    // Deleted and re-created while the watch was away: only the uid tells.
                    Ok(RawEvent::Added(recreated("3"))),
                    Ok(RawEvent::Modified(recreated("4"))),
                ],
                Then::Hang,
            )));
        let (informer, mut rx) = informer(script);
        informer.start();
        assert_eq!(
            take(&mut rx, 5).await,
            [
                "add a (initial)",
                "update a 1→2",
                "delete a (gone at 3)",
                "add a",
                "update a 3→4"
            ]
        );
        assert_eq!(informer.hold().await.resource_version(), "4");
        let cached = informer.store().current("default/a").unwrap();
        assert_eq!(object::uid(&cached), "uid-a-2");
        informer.stop().await;
        assert!(rx.try_recv().is_err(), "nothing else");
    }

    #[tokio::test]
    async fn readers_see_the_old_cache_until_a_relist_is_complete() {
        let gate = Arc::new(tokio::sync::Notify::new());
        let script = Script::default()
            .list(Ok(page(&[cm("a", "1"), cm("b", "2")], "10", None)))
            .watch(Ok(gone()))
            .list(Ok(page(&[cm("a", "11")], "", Some("t"))))
            .list_after(gate.clone(), Ok(page(&[cm("c", "12")], "20", None)))
            .watch(Ok((vec![], Then::Hang)));
        let script = Arc::new(script);
        let (informer, mut rx) = informer_over(Box::new(script.clone()));
        informer.start();
        take(&mut rx, 2).await;
        until("the second page of the re-list is asked for", || {
            script.calls().iter().any(|c| c == "list(t)")
        })
        .await;
        // Half a re-list is in: readers still see the whole old list, nothing announced.
        let store = informer.store();
        assert_eq!(store.len(), 2);
        assert_eq!(
            object::resource_version(&store.current("default/a").unwrap()),
            "1"
        );
        assert!(store.current("default/b").is_some() && store.current("default/c").is_none());
        assert!(rx.try_recv().is_err(), "nothing emitted before the swap");
        gate.notify_one();
        assert_eq!(
            take(&mut rx, 3).await,
            ["update a 1→11", "add c", "delete b (gone at 20)"]
        );
        assert_eq!(store.len(), 2);
        assert!(store.current("default/b").is_none());
        informer.stop().await;
    }

    #[tokio::test]
    async fn a_seeded_informer_emits_only_what_changed_while_the_agent_was_away() {
        let script = Script::default()
            .list(Ok(page(
                &[cm("kept", "1"), cm("changed", "5"), cm("new", "6")],
                "10",
                None,
            )))
            .watch(Ok((vec![], Then::Hang)));
        let (informer, mut rx) = informer(script);
        let delivered = [cm("kept", "1"), cm("changed", "2"), cm("gone", "3")]
            .into_iter()
            .map(|o| {
                let o = informer.prepare(o);
                (object::cache_key(&o), o)
            })
            .collect();
        informer.seed(delivered);
        informer.start();
        assert_eq!(
            take(&mut rx, 3).await,
            ["update changed 2→5", "add new", "delete gone (gone at 10)"],
            "an add after a restart is not part of a snapshot"
        );
        until("synced", || informer.has_synced()).await;
        informer.stop().await;
        assert!(rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn a_change_confined_to_ignored_paths_at_a_relist_keeps_the_emitted_base() {
        let only_rv = |rv: &str| {
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "a", "namespace": "default", "uid": "u", "resourceVersion": rv},
                "data": {"k": "v"}})
        };
        let mut changed = only_rv("6");
        changed["data"]["k"] = json!("w");
        let script = Script::default()
            .list(Ok(page(&[only_rv("1")], "10", None)))
            .watch(Ok(gone()))
            .list(Ok(page(&[only_rv("5")], "20", None)))
            .watch(Ok((vec![Ok(RawEvent::Modified(changed))], Then::Hang)));
        let (informer, mut rx) = informer(script);
        informer.start();
        assert_eq!(take(&mut rx, 1).await, ["add a (initial)"]);
        // The re-list's resourceVersion-only change is not emitted; the next patch starts
        // from what was emitted (1), so it replays on the consumer's copy.
        assert_eq!(take(&mut rx, 1).await, ["update a 1→6"]);
        informer.stop().await;
    }

    #[tokio::test]
    async fn stopping_abandons_a_handler_call_that_waits_for_ever() {
        struct Stuck;
        #[async_trait]
        impl Handler for Stuck {
            async fn on_add(&self, _: &Arc<Doc>, _: bool) {
                std::future::pending::<()>().await
            }
            async fn on_update(&self, _: &Arc<Doc>, _: &Arc<Doc>, _: Patch) {}
            async fn on_delete(&self, _: &Arc<Doc>, _: Gone<'_>) {}
        }
        let script = Script::default()
            .list(Ok(page(&[cm("a", "1")], "10", None)))
            .watch(Ok((vec![], Then::Hang)));
        let (informer, mut rx) = informer(script);
        informer.add_handler(Arc::new(Stuck));
        informer.start();
        take(&mut rx, 1).await;
        tokio::time::timeout(Duration::from_secs(5), informer.stop())
            .await
            .expect("stop does not wait for a stuck handler");
    }

    #[test]
    fn resources_are_named_the_way_rbac_names_them() {
        let (mut key, mut resource) = configmaps();
        assert_eq!(
            describe(&key, &resource, true),
            "configmaps in all namespaces"
        );
        key.namespace = Some("shop".into());
        resource.group = "apps".into();
        resource.plural = "deployments".into();
        assert_eq!(
            describe(&key, &resource, true),
            "deployments.apps in namespace shop"
        );
        key.namespace = None;
        resource.group = String::new();
        resource.plural = "nodes".into();
        assert_eq!(describe(&key, &resource, false), "nodes");
    }
}
