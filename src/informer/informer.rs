//! One shared informer: list, then watch from the list's resourceVersion; resume the watch
//! after disconnects, re-list only when the server answers 410 Gone.
//!
//! Why not kube-runtime's `watcher`: it swallows BOOKMARK events, and the agent needs them —
//! the resourceVersion they carry is where a reconnect resumes, and their arrival is how
//! `/readyz` knows a quiet watch is still alive. The list/watch/410 state handling below
//! follows kube-runtime's; the requests go through kube's `Api`.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use futures::StreamExt;
use kube::Api;
use kube::api::{ListParams, WatchEvent, WatchParams};
use kube::core::ApiResource;
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::raw::{DropManagedFields, SummarizeManagedFields};
use super::store::{Entry, Store};
use super::{ChangedBy, Handler, InformerKey, ParsePolicy, RawObject};
use crate::event::SnapshotMark;
use crate::event::changed_by::Managers;
use crate::event::diff;
use crate::event::object;
use crate::event::transform::ObjectTransform;

/// Page size of the initial list (a 100k-object list never sits in memory at once).
const LIST_PAGE_SIZE: u32 = 500;
/// Server-side watch timeout; the server ends the stream after it and we resume from the
/// last resourceVersion (no re-list).
const WATCH_TIMEOUT_SECS: u32 = 290;

/// Counters an operator wants per informer; read by metrics and `/readyz`.
#[derive(Debug, Default)]
pub struct InformerStats {
    /// The first list of this run has completed.
    pub synced: AtomicBool,
    /// Milliseconds since the informer started when the API server was last heard from
    /// (list page, watch event or bookmark); 0 = never.
    pub last_heard_ms: AtomicU64,
    /// Full re-lists after the first one (410 Gone).
    pub relists: AtomicU64,
    /// Watch (re)connections after the first one.
    pub watch_restarts: AtomicU64,
    /// Watch events received (all types, bookmarks included).
    pub events_received: AtomicU64,
}

/// A list+watch of one resource type with its cache and handlers.
pub struct SharedInformer {
    key: InformerKey,
    resource: ApiResource,
    api: Api<RawObject>,
    /// The same resource, parsed without `metadata.managedFields` (when the transforms drop
    /// it anyway); list and watch go through it then.
    trimmed: Option<Api<RawObject<DropManagedFields>>>,
    /// The same, keeping only the summary of `managedFields` attribution needs (when the
    /// transforms drop them and `changedBy` is on).
    summarized: Option<Api<RawObject<SummarizeManagedFields>>>,
    /// Per cache key, the `managedFields` summary of the last emitted state: what the next
    /// change is attributed against.
    managers: Mutex<std::collections::HashMap<String, Managers>>,
    transform: Arc<ObjectTransform>,
    store: Store,
    handlers: Mutex<Vec<Arc<dyn Handler>>>,
    stats: InformerStats,
    started: Instant,
    /// Held while a change goes from the cache to the handlers, so that a re-sync against
    /// delivered state (leader takeover) never interleaves with live changes.
    processing: Arc<tokio::sync::Mutex<()>>,
    /// The cache was seeded from delivered state: first-list adds are real adds then.
    seeded: AtomicBool,
    task: Mutex<Option<(CancellationToken, JoinHandle<()>)>>,
}

impl SharedInformer {
    pub(super) fn new(
        key: InformerKey,
        resource: ApiResource,
        api: Api<RawObject>,
        transform: Arc<ObjectTransform>,
    ) -> Self {
        let (trimmed, summarized) = match (
            transform.drops_managed_fields(),
            transform.attributes_changes(),
        ) {
            (true, true) => (None, Some(reparsed(&api, &resource))),
            (true, false) => (Some(reparsed(&api, &resource)), None),
            (false, _) => (None, None),
        };
        Self {
            key,
            resource,
            api,
            trimmed,
            summarized,
            managers: Mutex::new(std::collections::HashMap::new()),
            transform,
            store: Store::default(),
            handlers: Mutex::new(Vec::new()),
            stats: InformerStats::default(),
            started: Instant::now(),
            processing: Arc::new(tokio::sync::Mutex::new(())),
            seeded: AtomicBool::new(false),
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
        match self.stats.last_heard_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(
                self.started
                    .elapsed()
                    .saturating_sub(Duration::from_millis(ms)),
            ),
        }
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
    pub async fn hold(&self) -> tokio::sync::OwnedMutexGuard<()> {
        self.processing.clone().lock_owned().await
    }

    /// Brings the handlers from `delivered` (what downstream last acknowledged) to the
    /// cache's current state: updates for what changed, adds for what is new, deletes
    /// (`finalStateUnknown`) for what is gone — the restart comparison, for a warm cache.
    /// Call with the guard from [`SharedInformer::hold`].
    pub async fn resync(
        &self,
        _held: &tokio::sync::OwnedMutexGuard<()>,
        delivered: Vec<(String, Value)>,
    ) {
        let snapshot = delivered.is_empty();
        let mut delivered: std::collections::HashMap<String, Value> =
            delivered.into_iter().collect();
        let keys = self.store.keys();
        let last = keys.len().saturating_sub(1);
        for (index, key) in keys.into_iter().enumerate() {
            let Some(entry) = self.store.get(&key) else {
                continue;
            };
            if snapshot {
                // No delivered state: everything is read again, a snapshot.
                let mark = match index {
                    i if i == last => SnapshotMark::Last,
                    0 => SnapshotMark::First,
                    _ => SnapshotMark::True,
                };
                self.emit_read(&entry.current, mark, true).await;
                self.store.insert(
                    key,
                    Entry {
                        current: entry.current.clone(),
                        emitted: None,
                    },
                );
                continue;
            }
            match delivered.remove(&key) {
                Some(old) if object::uid(&old) == object::uid(&entry.current) => {
                    let patch = diff::diff(&old, &entry.current);
                    if !diff::only_ignored_changes(&patch, &self.transform.ignore) {
                        let old = Arc::new(old);
                        for h in self.handlers() {
                            h.on_update(&old, &entry.current, patch.clone()).await;
                        }
                    }
                }
                Some(old) => {
                    self.emit_delete(&Arc::new(old), true).await;
                    for h in self.handlers() {
                        h.on_add(&entry.current, snapshot).await;
                    }
                }
                None => {
                    for h in self.handlers() {
                        h.on_add(&entry.current, snapshot).await;
                    }
                }
            }
            self.store.insert(
                key,
                Entry {
                    current: entry.current.clone(),
                    emitted: None,
                },
            );
        }
        for (_, gone) in delivered {
            self.emit_delete(&Arc::new(gone), true).await;
        }
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

    /// Stops watching and waits until the loop has ended; the cache stays readable.
    pub async fn stop(&self) {
        let task = self.task.lock().expect("task lock").take();
        if let Some((cancel, handle)) = task {
            cancel.cancel();
            let _ = handle.await;
        }
    }

    fn heard(&self) {
        let ms = self.started.elapsed().as_millis().max(1) as u64;
        self.stats.last_heard_ms.store(ms, Ordering::Relaxed);
    }

    pub(super) fn handlers(&self) -> Vec<Arc<dyn Handler>> {
        self.handlers.lock().expect("handlers lock").clone()
    }

    async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let mut backoff = new_backoff();
        // The resourceVersion to resume the watch from; None = (re-)list first.
        let mut resume: Option<String> = None;
        let mut first_list = true;
        let mut first_watch = true;
        loop {
            if cancel.is_cancelled() {
                return;
            }
            let rv = match resume.take() {
                Some(rv) => rv,
                None => {
                    let listed = tokio::select! {
                        _ = cancel.cancelled() => return,
                        r = self.list_and_sync(first_list) => r,
                    };
                    match listed {
                        Ok(rv) => {
                            if !first_list {
                                self.stats.relists.fetch_add(1, Ordering::Relaxed);
                            }
                            first_list = false;
                            self.stats.synced.store(true, Ordering::Release);
                            backoff = new_backoff();
                            rv
                        }
                        Err(e) => {
                            warn!(informer = %self.key, error = %e, "list failed; retrying");
                            if !sleep_or_cancel(&mut backoff, &cancel).await {
                                return;
                            }
                            continue;
                        }
                    }
                }
            };
            if !first_watch {
                self.stats.watch_restarts.fetch_add(1, Ordering::Relaxed);
            }
            first_watch = false;
            match self.watch_from(rv, &cancel).await {
                WatchEnd::Cancelled => return,
                WatchEnd::Resume(rv) => {
                    debug!(informer = %self.key, rv, "watch ended; resuming");
                    backoff = new_backoff();
                    resume = Some(rv);
                }
                WatchEnd::Retry(rv, why) => {
                    warn!(informer = %self.key, error = %why, "watch failed; resuming after backoff");
                    resume = Some(rv);
                    if !sleep_or_cancel(&mut backoff, &cancel).await {
                        return;
                    }
                }
                WatchEnd::Gone => {
                    info!(informer = %self.key, "watch history expired (410); re-listing");
                }
            }
        }
    }

    /// Lists every page, brings the cache and handlers in line with it, and returns the
    /// list's resourceVersion.
    async fn list_and_sync(&self, first_list: bool) -> Result<String, kube::Error> {
        // `initialList` marks a snapshot add; after a restart from delivered state, an add in
        // the first list is an object created while the agent was away.
        let initial = first_list && !self.seeded.load(Ordering::Acquire);
        let mut params = ListParams {
            label_selector: self.key.label_selector.clone(),
            field_selector: self.key.field_selector.clone(),
            limit: Some(LIST_PAGE_SIZE),
            ..ListParams::default()
        };
        let mut seen = HashSet::new();
        // The initial list is a snapshot: each read waits for the next one (or the end of the
        // list) to know whether it is the first, in between, or the last.
        let mut pending: Option<Arc<Value>> = None;
        let mut reads = 0usize;
        let rv = loop {
            let page = match self.list_page(&params).await {
                Ok(page) => page,
                // A continue token that outlived the server's history: start the list over
                // (objects already compared compare equal the second time).
                Err(kube::Error::Api(s)) if s.code == 410 && params.continue_token.is_some() => {
                    params.continue_token = None;
                    continue;
                }
                Err(e) => return Err(e),
            };
            self.heard();
            for mut obj in page.items {
                self.ensure_type_meta(&mut obj);
                let managers = self.prepare(&mut obj);
                seen.insert(object::cache_key(&obj));
                let _held = self.processing.lock().await;
                if let Some(read) = self.apply(obj, initial, managers).await
                    && let Some(previous) = pending.replace(read)
                {
                    let mark = if reads == 0 {
                        SnapshotMark::First
                    } else {
                        SnapshotMark::True
                    };
                    self.emit_read(&previous, mark, true).await;
                    reads += 1;
                }
            }
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => params.continue_token = Some(token),
                None => break page.metadata.resource_version.unwrap_or_default(),
            }
        };
        if let Some(last) = pending.take() {
            let _held = self.processing.lock().await;
            self.emit_read(&last, SnapshotMark::Last, true).await;
        }
        // Objects cached before this list that it no longer contains were deleted while the
        // watch was down: nobody will ever send their DELETED event.
        for key in self.store.keys() {
            if !seen.contains(&key)
                && let Some(entry) = self.store.remove(&key)
            {
                let _held = self.processing.lock().await;
                self.forget_managers(&key);
                self.emit_delete(&entry.current, true).await;
            }
        }
        debug!(informer = %self.key, objects = self.store.len(), rv, "list synced");
        Ok(rv)
    }

    async fn watch_from(&self, mut rv: String, cancel: &CancellationToken) -> WatchEnd {
        let params = WatchParams {
            label_selector: self.key.label_selector.clone(),
            field_selector: self.key.field_selector.clone(),
            timeout: Some(WATCH_TIMEOUT_SECS),
            bookmarks: true,
            ..WatchParams::default()
        };
        let stream = tokio::select! {
            _ = cancel.cancelled() => return WatchEnd::Cancelled,
            s = self.watch_stream(&params, &rv) => s,
        };
        let stream = match stream {
            Ok(s) => s,
            Err(kube::Error::Api(s)) if s.code == 410 => return WatchEnd::Gone,
            Err(e) => return WatchEnd::Retry(rv, e.to_string()),
        };
        self.heard();
        let mut stream = std::pin::pin!(stream);
        loop {
            let next = tokio::select! {
                _ = cancel.cancelled() => return WatchEnd::Cancelled,
                n = stream.next() => n,
            };
            let event = match next {
                None => return WatchEnd::Resume(rv),
                Some(Ok(e)) => e,
                Some(Err(e)) => return WatchEnd::Retry(rv, e.to_string()),
            };
            self.heard();
            self.stats.events_received.fetch_add(1, Ordering::Relaxed);
            match event {
                WatchEvent::Added(mut obj) | WatchEvent::Modified(mut obj) => {
                    rv = object::resource_version(&obj).to_string();
                    let managers = self.prepare(&mut obj);
                    let _held = self.processing.lock().await;
                    self.apply(obj, false, managers).await;
                }
                WatchEvent::Deleted(mut obj) => {
                    rv = object::resource_version(&obj).to_string();
                    self.prepare(&mut obj);
                    let key = object::cache_key(&obj);
                    let _held = self.processing.lock().await;
                    self.forget_managers(&key);
                    if self.store.remove(&key).is_some() {
                        self.emit_delete(&Arc::new(obj), false).await;
                    }
                }
                WatchEvent::Bookmark(b) => rv = b.metadata.resource_version,
                WatchEvent::Error(status) if status.code == 410 => return WatchEnd::Gone,
                WatchEvent::Error(status) => {
                    return WatchEnd::Retry(rv, format!("{} ({})", status.message, status.code));
                }
            }
        }
    }

    /// One list page, parsed the way the transforms allow.
    async fn list_page(&self, params: &ListParams) -> Result<Page, kube::Error> {
        match (&self.summarized, &self.trimmed) {
            (Some(api), _) => api.list(params).await.map(Page::from),
            (None, Some(api)) => api.list(params).await.map(Page::from),
            (None, None) => self.api.list(params).await.map(Page::from),
        }
    }

    /// A watch stream of plain JSON objects, parsed the way the transforms allow.
    async fn watch_stream(
        &self,
        params: &WatchParams,
        rv: &str,
    ) -> Result<
        futures::stream::BoxStream<'static, Result<WatchEvent<Value>, kube::Error>>,
        kube::Error,
    > {
        fn values<P: ParsePolicy>(
            s: impl futures::Stream<Item = Result<WatchEvent<RawObject<P>>, kube::Error>>
            + Send
            + 'static,
        ) -> futures::stream::BoxStream<'static, Result<WatchEvent<Value>, kube::Error>> {
            s.map(|r| {
                r.map(|e| match e {
                    WatchEvent::Added(o) => WatchEvent::Added(o.value),
                    WatchEvent::Modified(o) => WatchEvent::Modified(o.value),
                    WatchEvent::Deleted(o) => WatchEvent::Deleted(o.value),
                    WatchEvent::Bookmark(b) => WatchEvent::Bookmark(b),
                    WatchEvent::Error(s) => WatchEvent::Error(s),
                })
            })
            .boxed()
        }
        match (&self.summarized, &self.trimmed) {
            (Some(api), _) => api.watch(params, rv).await.map(values),
            (None, Some(api)) => api.watch(params, rv).await.map(values),
            (None, None) => self.api.watch(params, rv).await.map(values),
        }
    }

    /// API servers omit `apiVersion` and `kind` on list items; envelopes and transforms
    /// (Secret redaction) need them, so they are filled from the resource type.
    fn ensure_type_meta(&self, obj: &mut Value) {
        if let Some(map) = obj.as_object_mut() {
            if !map.contains_key("apiVersion") {
                map.insert(
                    "apiVersion".into(),
                    self.resource.api_version.clone().into(),
                );
            }
            if !map.contains_key("kind") {
                map.insert("kind".into(), self.resource.kind.clone().into());
            }
        }
    }

    /// The one place objects are transformed, before they are cached, diffed or emitted;
    /// returns the summary of their `managedFields` when changes are attributed (read before
    /// the transforms drop them).
    fn prepare(&self, obj: &mut Value) -> Option<Managers> {
        let managers = self
            .transform
            .attributes_changes()
            .then(|| Managers::of(obj));
        self.transform.apply(obj);
        managers
    }

    fn forget_managers(&self, key: &str) {
        self.managers.lock().expect("managers lock").remove(key);
    }

    /// Who changed `key` from its last emitted state to `new` (`None` when either summary is
    /// unknown: attribution off, or an object seeded from delivered state); remembers `new`
    /// as the state the next change is attributed against.
    fn attribute(&self, key: &str, new: Option<Managers>, created: bool) -> ChangedBy {
        let new = new?;
        let mut known = self.managers.lock().expect("managers lock");
        let changed = match known.get(key) {
            Some(old) if !created => Some(new.changed_since(Some(old))),
            _ if created => Some(new.changed_since(None)),
            _ => None,
        };
        known.insert(key.to_string(), new);
        changed
    }

    /// Brings one (transformed) object into the cache and tells the handlers what changed.
    /// An add of the initial list (`initial_list`) is not handed on but returned: the caller
    /// emits it as a read once it knows where the read stands in the list.
    async fn apply(
        &self,
        obj: Value,
        initial_list: bool,
        managers: Option<Managers>,
    ) -> Option<Arc<Value>> {
        let key = object::cache_key(&obj);
        // Only the state the patch starts from is decoded from the compact cache.
        let Some(base) = self.store.base(&key) else {
            let obj = Arc::new(obj);
            self.store.insert(
                key.clone(),
                Entry {
                    current: obj.clone(),
                    emitted: None,
                },
            );
            let changed_by = self.attribute(&key, managers, true);
            if initial_list {
                return Some(obj);
            }
            for h in self.handlers() {
                h.on_add_by(&obj, false, changed_by.clone()).await;
            }
            return None;
        };
        if object::uid(&base) != object::uid(&obj) {
            // Deleted and re-created under the same name while we were not watching.
            if let Some(entry) = self.store.remove(&key) {
                self.forget_managers(&key);
                self.emit_delete(&entry.current, true).await;
            }
            return Box::pin(self.apply(obj, initial_list, managers)).await;
        }
        let patch = diff::diff(&base, &obj);
        if diff::only_ignored_changes(&patch, &self.transform.ignore) {
            self.store.update(key, &obj, true);
            return None;
        }
        self.store.update(key.clone(), &obj, false);
        let changed_by = self.attribute(&key, managers, false);
        let obj = Arc::new(obj);
        // The patch moves into the last handler; only extra handlers pay for a copy.
        let handlers = self.handlers();
        if let Some((last, rest)) = handlers.split_last() {
            for h in rest {
                h.on_update_by(&base, &obj, patch.clone(), changed_by.clone())
                    .await;
            }
            last.on_update_by(&base, &obj, patch, changed_by).await;
        }
        None
    }

    pub(super) async fn emit_read(&self, obj: &Arc<Value>, mark: SnapshotMark, initial_list: bool) {
        for h in self.handlers() {
            h.on_read(obj, mark, initial_list).await;
        }
    }

    async fn emit_delete(&self, last_known: &Arc<Value>, final_state_unknown: bool) {
        for h in self.handlers() {
            h.on_delete(last_known, final_state_unknown).await;
        }
    }
}

/// The same resource as `api`, parsed under another policy.
fn reparsed<P: ParsePolicy>(api: &Api<RawObject>, resource: &ApiResource) -> Api<RawObject<P>> {
    let client = api.clone().into_client();
    match api.namespace() {
        Some(ns) => Api::namespaced_with(client, ns, resource),
        None => Api::all_with(client, resource),
    }
}

/// A list page as plain JSON objects.
struct Page {
    items: Vec<Value>,
    metadata: kube::core::ListMeta,
}

impl<P: ParsePolicy> From<kube::core::ObjectList<RawObject<P>>> for Page {
    fn from(l: kube::core::ObjectList<RawObject<P>>) -> Self {
        Page {
            items: l.items.into_iter().map(|o| o.value).collect(),
            metadata: l.metadata,
        }
    }
}

enum WatchEnd {
    /// Shutdown requested.
    Cancelled,
    /// The stream ended normally (server timeout): watch again from this resourceVersion.
    Resume(String),
    /// The stream broke: watch again from this resourceVersion after a backoff.
    Retry(String, String),
    /// 410 Gone: the resourceVersion is older than the server's history; re-list.
    Gone,
}

fn new_backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(30))
        .with_jitter()
        .without_max_times()
        .build()
}

/// Sleeps for the next backoff step; false when cancelled meanwhile.
async fn sleep_or_cancel(
    backoff: &mut impl Iterator<Item = Duration>,
    cancel: &CancellationToken,
) -> bool {
    let delay = backoff.next().unwrap_or(Duration::from_secs(30));
    tokio::select! {
        _ = cancel.cancelled() => false,
        _ = tokio::time::sleep(delay) => true,
    }
}
